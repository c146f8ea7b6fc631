"""Secrets from files: a secret setting ``x`` may instead be given as ``x_file``, the path of a file holding it.

That is how Kubernetes and Docker hand secrets to a process (a mounted Secret), and it keeps them out of the
environment, where ``/proc/<pid>/environ``, crash reports and child processes can see them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, SecretStr


def read_secret_file(path: str | Path, field: str) -> str:
    """The secret held in ``path``, without the line break an editor or ``echo`` leaves at its end.

    Raises ValueError naming ``<field>_file`` and the path when the file cannot be read or is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{field}_file {path}: {reason}") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError(f"{field}_file {path}: the file is empty")
    return text


def resolve_secret_files(model: BaseModel, *fields: str) -> None:
    """Fill each secret ``field`` of a validated (frozen) ``model`` from its ``<field>_file``, when that is set.

    Giving ``field`` and ``field_file`` with different secrets is an error (the same one is what a model
    rebuilt from its own dump carries); so is a file that cannot be read (at load, not at first use). Call from
    a ``model_validator(mode="after")``.
    """
    for field in fields:
        path = getattr(model, f"{field}_file")
        if path is None:
            continue
        secret = read_secret_file(path, field)
        inline = getattr(model, field)
        if field in model.model_fields_set and (inline is None or inline.get_secret_value() != secret):
            raise ValueError(f"give {field} or {field}_file, not both")
        object.__setattr__(model, field, SecretStr(secret))  # frozen: set once, at load
