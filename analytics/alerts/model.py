"""What every alerting part shares: families, severities, conditions and alerts.

A rule evaluation yields **conditions**: per (rule, labels) and evaluation time, whether the fire
threshold is breached and whether the clear threshold is met (hysteresis: a value between the two
keeps the current state). The lifecycle turns conditions into **alerts** with a stable fingerprint,
and emits an :class:`AlertEvent` when an alert starts firing and when it resolves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum


class Family(StrEnum):
    """Alert families are routed separately; a "no data" condition silences the others of its site."""

    EFFICIENCY = "efficiency"  # PUE against the target, projected annual PUE, GB 40879 grade
    SAFETY = "safety"  # rack inlet and facility-water temperatures
    DATA_QUALITY = "data_quality"  # meter faults, data gaps, collector down, spool dropping data


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Status(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


def fingerprint(labels: dict[str, str]) -> str:
    """Stable id of an alert: SHA-256 of its sorted labels, first 16 hex digits (as Alertmanager does)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule's verdict for one subject at one time.

    ``labels`` identify the subject and always carry ``alertname`` (the rule), ``site``, ``family`` and
    ``severity``. ``breach``: the fire threshold is crossed now; ``clear``: the clear threshold is met
    now (both False: inside the hysteresis band). ``value`` is what was compared [rule's unit];
    ``annotations`` (``summary``, ``description``, ``threshold``…) go into the notification.
    """

    labels: dict[str, str]
    ts_ms: int
    breach: bool
    clear: bool
    value: float = float("nan")
    for_ms: int = 0  # breach must hold this long before firing
    clear_for_ms: int = 0  # clear must hold this long before resolving
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A notification-worthy change: an alert started firing, or resolved.

    ``starts_at_ms`` is when the breach began (not when ``for`` elapsed); ``ends_at_ms`` is set on
    resolve. ``sequence`` counts this fingerprint's events (1 = first firing, 2 = its resolve, …): with
    the fingerprint and the episode start it makes the idempotency key of every delivery of this event
    (the start keeps a new episode's key new even if lost state restarted the sequence).
    """

    fingerprint: str
    status: Status
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at_ms: int
    ends_at_ms: int | None
    value: float
    sequence: int
    silenced: bool = False

    @property
    def site(self) -> str:
        return self.labels.get("site", "")

    @property
    def family(self) -> Family:
        return Family(self.labels["family"])

    @property
    def severity(self) -> Severity:
        return Severity(self.labels["severity"])

    @property
    def idempotency_key(self) -> str:
        return f"{self.fingerprint}-{self.starts_at_ms}-{self.sequence}"
