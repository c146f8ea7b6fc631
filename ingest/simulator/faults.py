"""Meter and collector faults: the kinds, their random schedule and the ground-truth record."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dcpue.ingest.simulator import _noise

MS_PER_DAY = 86_400_000


class FaultKind(StrEnum):
    STUCK = "stuck"  # the meter repeats its last value
    GAP = "gap"  # the point sends no samples
    SPIKE = "spike"  # one absurd value
    COUNTER_RESET = "counter_reset"  # an energy/water counter restarts near 0 (meter replaced)
    OUTAGE = "outage"  # the site's collector is down: no samples from any point


# probability per site and simulated day, and duration range [min]
FAULT_RATES: dict[FaultKind, float] = {
    FaultKind.GAP: 0.04,
    FaultKind.STUCK: 0.02,
    FaultKind.SPIKE: 0.03,
    FaultKind.COUNTER_RESET: 0.005,
    FaultKind.OUTAGE: 0.01,
}
FAULT_MINUTES: dict[FaultKind, tuple[float, float]] = {
    FaultKind.GAP: (2, 60),
    FaultKind.STUCK: (30, 240),
    FaultKind.SPIKE: (0, 0),
    FaultKind.COUNTER_RESET: (0, 0),
    FaultKind.OUTAGE: (10, 120),
}
SPIKE_FACTOR = 1000.0  # a spike reports value × this + this (e.g. a W/kW mix-up)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One injected fault. ``point`` is ``None`` for a site outage; samples with
    ``start_ms <= ts < end_ms`` are affected (a spike hits the first sample at or after
    ``start_ms``; a counter reset lasts until the next reset)."""

    site: str
    point: str | None
    kind: FaultKind
    start_ms: int
    end_ms: int
    origin: str = "random"  # "random" (scheduled by the seed) or "manual" (FleetSimulator.inject)


def random_faults(seed: int, site: str, day: int, points: list[str], counters: list[str]) -> list[FaultEvent]:
    """The random faults of ``site`` on UTC day number ``day`` (a pure function of its arguments)."""
    events: list[FaultEvent] = []
    for k, (kind, rate) in enumerate(FAULT_RATES.items()):
        if float(_noise.uniform(seed, 0xFA, site, day, k, 0)) >= rate:
            continue
        candidates = counters if kind is FaultKind.COUNTER_RESET else points
        if kind is not FaultKind.OUTAGE and not candidates:
            continue
        start = day * MS_PER_DAY + int(float(_noise.uniform(seed, 0xFA, site, day, k, 1)) * MS_PER_DAY)
        lo, hi = FAULT_MINUTES[kind]
        minutes = lo + (hi - lo) * float(_noise.uniform(seed, 0xFA, site, day, k, 2))
        point = None
        if kind is not FaultKind.OUTAGE:
            pick = int(float(_noise.uniform(seed, 0xFA, site, day, k, 3)) * len(candidates))
            point = candidates[min(pick, len(candidates) - 1)]
        events.append(FaultEvent(site, point, kind, start, start + int(minutes * 60_000), "random"))
    return events
