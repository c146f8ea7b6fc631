"""The alert engine: what the analytics worker sees (readings, window rows, health records) → alert events.

Pure and I/O-free: it holds the rules' small state (last daily grade, when each power meter last
changed, each collector's drop count, when each site was last heard) and the lifecycle. Time is event
time: the newest reading or window end seen, so a replayed backlog alerts as it would have live.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

from dcpue.analytics.alerts import rules
from dcpue.analytics.alerts.lifecycle import AlertLifecycle
from dcpue.analytics.alerts.model import AlertEvent, Condition
from dcpue.analytics.alerts.silences import SilenceSet
from dcpue.registry import Registry
from dcpue.settings import AlertSettings, EngineSettings

STALE_AFTER_MS = 26 * 3_600_000


class AlertEngine:
    """Evaluates every rule on what one :meth:`observe` call brings and advances the lifecycle."""

    def __init__(self, registry: Registry, engine: EngineSettings, settings: AlertSettings,
                 silences: SilenceSet | None = None) -> None:
        self.settings = settings
        self.points = registry.points_table
        self.sites = [s.id for s in registry.sites]
        self.targets = {"": engine.target_pue,
                        **{site: o.target_pue for site, o in settings.sites.items() if o.target_pue is not None}}
        self.water_class = {"": settings.water_class,
                            **{site: o.water_class for site, o in settings.sites.items() if o.water_class}}
        self.silences = silences if silences is not None else SilenceSet()
        for window in settings.maintenance:
            if window.id not in self.silences:
                self.silences.add(window)
        # a rule reports a subject once per window it closes, the daily-grade rule once a day: an alert is
        # only "stale" (its subject gone) after a day and more without a condition
        self.lifecycle = AlertLifecycle(self.silences, stale_after_ms=STALE_AFTER_MS)
        # the API changes silences on its own thread while the worker evaluates: both take this lock
        self.lock = threading.RLock()
        self.now_ms = 0
        self.first_ms: int | None = None
        self.last_seen: dict[str, int] = {}
        self.gap_ms: dict[str, float] = {}  # smoothed time between a site's meter samples [ms]
        self.point_last: dict[tuple[str, str], int] = {}  # newest sample per (site, point) [ms]
        self.grades: dict[str, str] = {}
        self.stuck: dict[tuple[str, str], tuple[float, int]] = {}
        self.drops: dict[str, tuple[int, int]] = {}

    def observe(self, readings: pd.DataFrame | None = None, windows: pd.DataFrame | None = None,
                health: Iterable[dict[str, object]] = ()) -> list[AlertEvent]:
        """Evaluate the rules on new ``readings`` (readings columns), ``windows`` (result rows) and
        ``health`` records; returns the firing/resolved events this brings (silenced ones flagged)."""
        if not self.settings.enabled:
            return []
        with self.lock:
            return self._observe(readings, windows, health)

    def _observe(self, readings: pd.DataFrame | None, windows: pd.DataFrame | None,
                 health: Iterable[dict[str, object]]) -> list[AlertEvent]:
        conditions: list[Condition] = []
        if readings is not None and not readings.empty:
            newest = readings.groupby("site")["ts"].max()
            for site, ts in newest.items():
                self.last_seen[str(site)] = max(self.last_seen.get(str(site), 0), int(ts))
            self._learn_gaps(readings)
            self.now_ms = max(self.now_ms, int(newest.max()))
            if self.first_ms is None:
                self.first_ms = int(readings["ts"].min())
            conditions += rules.rack_inlet_temperature(readings, self.points, self.settings)
            conditions += rules.facility_water_supply(readings, self.points, self.settings, self.water_class)
            stuck, self.stuck = rules.stuck_meters(readings, self.points, self.stuck, self.settings)
            conditions += stuck
        if windows is not None and not windows.empty:
            conditions += rules.pue_above_target(windows, self.settings, self.targets)
            conditions += rules.annual_pue_projection(windows, self.settings, self.targets)
            graded, self.grades = rules.grade_worsening(windows, self.grades)
            conditions += graded
            conditions += rules.meter_faults(windows)
        records = list(health)
        if records:
            from_health, self.drops = rules.device_health(records, self.settings, self.drops)
            conditions += from_health
        if self.first_ms is not None:
            conditions += rules.no_data(self.last_seen, self.sites, self.now_ms, self.first_ms, self.settings,
                                        self.gap_ms)
        if not conditions:
            return []
        now = max([self.now_ms, *(c.ts_ms for c in conditions)])
        return self.lifecycle.update(conditions, now)

    def _learn_gaps(self, readings: pd.DataFrame) -> None:
        """How often each site's meters report [ms]: the median time between a point's samples, smoothed.

        Learned from the samples themselves, not from how they were batched, so NoData fires at the
        same event time whether the worker sees a minute or an hour of readings at once.
        """
        r = readings[["site", "point", "ts"]].drop_duplicates().sort_values(["site", "point", "ts"], kind="stable")
        previous = r.groupby(["site", "point"], sort=False)["ts"].shift().to_numpy(np.float64, copy=True)
        if self.point_last:
            known = pd.Series(self.point_last).reindex(pd.MultiIndex.from_arrays([r["site"], r["point"]]))
            first = np.isnan(previous)
            previous[first] = known.to_numpy(np.float64)[first]
        gaps = r["ts"].to_numpy(np.float64) - previous
        per_site = pd.Series(gaps, index=r["site"].to_numpy()).dropna()
        per_site = per_site[per_site > 0].groupby(level=0).median()
        for site, gap in per_site.items():
            self.gap_ms[str(site)] = 0.8 * self.gap_ms.get(str(site), float(gap)) + 0.2 * float(gap)
        last = r.groupby(["site", "point"], sort=False)["ts"].max()
        self.point_last.update(zip(last.index, last.to_numpy().tolist(), strict=True))

    def active(self) -> list[dict[str, object]]:
        """Pending and firing alerts, for the API."""
        with self.lock:
            return self.lifecycle.active()

    def snapshot(self) -> bytes:
        """Everything needed to resume after a restart (silences are saved by their owner)."""
        state = {"now_ms": self.now_ms, "first_ms": self.first_ms, "last_seen": self.last_seen, "gap_ms": self.gap_ms,
                 "point_last": [[s, p, t] for (s, p), t in self.point_last.items()],
                 "grades": self.grades, "stuck": [[s, p, v, t] for (s, p), (v, t) in self.stuck.items()],
                 "drops": {c: list(v) for c, v in self.drops.items()},
                 "lifecycle": self.lifecycle.snapshot().hex()}
        return zlib.compress(json.dumps(state).encode())

    def restore(self, blob: bytes) -> None:
        """Resume from :meth:`snapshot`."""
        state = json.loads(zlib.decompress(blob))
        self.now_ms, self.first_ms = state["now_ms"], state["first_ms"]
        self.last_seen = dict(state["last_seen"])
        self.gap_ms = dict(state.get("gap_ms", {}))
        self.point_last = {(s, p): int(t) for s, p, t in state.get("point_last", [])}
        self.grades = dict(state["grades"])
        self.stuck = {(s, p): (v, t) for s, p, v, t in state["stuck"]}
        self.drops = {c: (int(v[0]), int(v[1])) for c, v in state["drops"].items()}
        self.lifecycle.restore(bytes.fromhex(state["lifecycle"]))
