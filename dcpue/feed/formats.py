"""Platform formats: how a report becomes the bytes one platform accepts (``feed.format``).

dcpue's own format, ``dcpue-v1``, is the report as canonical JSON (docs/feed/v1/*.schema.json). A
province whose interface specification differs adds an adapter — an object with ``name``,
``content_type`` and ``render(report) -> bytes`` — by :func:`register_format` or, from another
package, an entry point in the group ``dcpue.feed_formats``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol

from dcpue.feed.signing import canonical_json


class FeedFormat(Protocol):
    """A platform's wire format for one report."""

    name: str
    content_type: str

    def render(self, report: Mapping[str, Any]) -> bytes:
        """The request body for ``report`` (a dict shaped as in :mod:`dcpue.analytics.feed.schema`)."""


class DcpueV1:
    """dcpue's format: the report itself, canonical JSON."""

    name = "dcpue-v1"
    content_type = "application/json; charset=utf-8"

    def render(self, report: Mapping[str, Any]) -> bytes:
        return canonical_json(report)


_FORMATS: dict[str, FeedFormat] = {"dcpue-v1": DcpueV1()}


def register_format(fmt: FeedFormat) -> None:
    """Make ``fmt`` available as ``feed.format: <fmt.name>``."""
    _FORMATS[fmt.name] = fmt


def get_format(name: str) -> FeedFormat:
    """The format called ``name``: registered ones, then the ``dcpue.feed_formats`` entry points."""
    if name in _FORMATS:
        return _FORMATS[name]
    for ep in entry_points(group="dcpue.feed_formats"):
        if ep.name == name:
            fmt = ep.load()
            fmt = fmt() if isinstance(fmt, type) else fmt
            register_format(fmt)
            return fmt
    raise ValueError(f"unknown feed format {name!r} (available: {', '.join(sorted(_FORMATS))}; "
                     "add one with dcpue.feed.formats.register_format or a dcpue.feed_formats entry point)")
