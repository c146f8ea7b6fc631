"""Reading the YAML files dcpue is configured with, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dcpue.errors import ConfigError


def read_yaml(path: Path, what: str) -> Any:
    """Parse ``path``; a missing file or bad YAML is a :class:`ConfigError` naming the file and ``what`` it is."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
