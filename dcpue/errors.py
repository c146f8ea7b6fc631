"""The dcpue exception hierarchy; adapters translate foreign errors into these at their boundary."""


class DcpueError(Exception):
    """Root of every error dcpue raises on purpose."""


class ConfigError(DcpueError):
    """Settings or a site registry are invalid; the message names the file, the field and the problem."""


class DecodeError(DcpueError):
    """A whole message could not be decoded (individual bad records are dead-lettered instead)."""


class CollectorError(DcpueError):
    """A device or data source could not be read."""


class SinkError(DcpueError):
    """A result could not be written to its destination."""


class MissingExtraError(DcpueError, ImportError):
    """An optional dependency is not installed; the message gives the pip extra to install."""


def missing_extra(package: str, extra: str) -> MissingExtraError:
    """Build the error raised when ``package`` (from the ``extra`` extra) is not importable."""
    return MissingExtraError(f"{package} is not installed; install it with: pip install 'dcpue[{extra}]'")


class CommitError(DcpueError):
    """The bus refused an offset commit (typically: the group is rebalancing). Nothing is lost: the
    partition's next owner resumes from the previous commit and the checkpoint's position."""
