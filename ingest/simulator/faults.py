"""Meter, collector and plant faults: the kinds, their random schedule and the ground-truth record."""

from __future__ import annotations

import math
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
    # plant events: the physics changes, consistently in every meter of the site (manual only)
    COOLING_DEGRADED = "cooling_degraded"  # the cooling plant draws magnitude × its normal power
    HOT_AISLE = "hot_aisle"  # rack inlets read magnitude [K] above normal (containment failure)
    FW_SUPPLY_HIGH = "fw_supply_high"  # facility-water supply reads magnitude [K] above normal


PLANT_EVENTS = frozenset({FaultKind.COOLING_DEGRADED, FaultKind.HOT_AISLE, FaultKind.FW_SUPPLY_HIGH})
# size of a plant event when none is given: cooling power ratio [-], temperature rises [K]
DEFAULT_MAGNITUDE: dict[FaultKind, float] = {
    FaultKind.COOLING_DEGRADED: 1.6,
    FaultKind.HOT_AISLE: 6.0,
    FaultKind.FW_SUPPLY_HIGH: 8.0,
}

# probability per site and simulated day, and duration range [min]. Append only: the position of a
# kind keys its random draws, so reordering would change every seed's schedule. Plant events have
# rate 0: they are injected on demand only (FleetSimulator.inject), which leaves the schedule of
# the meter faults, and so every reading of a given seed, as it was before they existed.
FAULT_RATES: dict[FaultKind, float] = {
    FaultKind.GAP: 0.04,
    FaultKind.STUCK: 0.02,
    FaultKind.SPIKE: 0.03,
    FaultKind.COUNTER_RESET: 0.005,
    FaultKind.OUTAGE: 0.01,
    FaultKind.COOLING_DEGRADED: 0.0,
    FaultKind.HOT_AISLE: 0.0,
    FaultKind.FW_SUPPLY_HIGH: 0.0,
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
    """One injected fault. ``point`` is ``None`` for a site outage and for site-wide plant events;
    samples with ``start_ms <= ts < end_ms`` are affected (a spike hits the first sample at or
    after ``start_ms``; a counter reset lasts until the next reset).

    ``magnitude`` sizes a plant event: the cooling power ratio [-] of ``cooling_degraded``, the
    temperature rise [K] of ``hot_aisle`` and ``fw_supply_high``; left out (NaN) it is the kind's
    :data:`DEFAULT_MAGNITUDE`. Meter and collector faults have magnitude 0 (unused)."""

    site: str
    point: str | None
    kind: FaultKind
    start_ms: int
    end_ms: int
    origin: str = "random"  # "random" (scheduled by the seed) or "manual" (FleetSimulator.inject)
    magnitude: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.magnitude):  # frozen: fill in the default through object.__setattr__
            object.__setattr__(self, "magnitude", DEFAULT_MAGNITUDE.get(self.kind, 0.0))


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
