"""Time-zone names in settings: one validated type for every ``timezone`` field."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator


def check_timezone(value: str) -> str:
    """Return ``value`` if it is an IANA zone name zoneinfo knows; ``ValueError`` naming the problem otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r} (use an IANA name such as 'Asia/Shanghai' or 'UTC')") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]
"""A ``str`` setting that must name a time zone (``Asia/Shanghai``)."""
