"""Events and waiting for the alert-delivery tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from dcpue.analytics.alerts.model import AlertEvent, Family, Severity, Status, fingerprint

# 2026-11-25 14:50:10.123 UTC (22:50:10 in Asia/Shanghai)
T0_MS = int(datetime(2026, 11, 25, 14, 50, 10, 123000, tzinfo=UTC).timestamp() * 1000)


def make_event(alertname: str = "pue_above_target", site: str = "gz-01", family: Family = Family.EFFICIENCY,
               severity: Severity = Severity.WARNING, value: float = 1.42, starts_at_ms: int = T0_MS,
               annotations: dict[str, str] | None = None, silenced: bool = False, **labels: str) -> AlertEvent:
    """A firing event (sequence 1) with the labels every condition carries."""
    all_labels = {"alertname": alertname, "site": site, "family": str(family), "severity": str(severity), **labels}
    notes = {"summary": f"{alertname} at {site}", "threshold": "1.30"} if annotations is None else annotations
    return AlertEvent(fingerprint=fingerprint(all_labels), status=Status.FIRING, labels=all_labels,
                      annotations=notes, starts_at_ms=starts_at_ms, ends_at_ms=None, value=value, sequence=1,
                      silenced=silenced)


def resolved(event: AlertEvent, ends_at_ms: int, value: float = 1.25) -> AlertEvent:
    """The resolve that follows ``event``."""
    return AlertEvent(fingerprint=event.fingerprint, status=Status.RESOLVED, labels=event.labels,
                      annotations=event.annotations, starts_at_ms=event.starts_at_ms, ends_at_ms=ends_at_ms,
                      value=value, sequence=event.sequence + 1)


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it is truthy; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
