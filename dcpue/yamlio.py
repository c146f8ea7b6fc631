"""Reading the YAML files dcpue is configured with, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dcpue.errors import ConfigError


def read_yaml(path: Path, what: str) -> Any:
    """Parse ``path``; a missing or unreadable file or bad YAML is a :class:`ConfigError` naming the file and
    ``what`` it is."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path}: not valid YAML: collections nested too deeply") from None
