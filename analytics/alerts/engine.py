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
SITE_STATE_VERSION = 2


class AlertEngine:
    """Evaluates every rule on what one :meth:`observe` call brings and advances the lifecycle."""

    def __init__(self, registry: Registry, engine: EngineSettings, settings: AlertSettings,
                 silences: SilenceSet | None = None) -> None:
        self.settings = settings
        self.points = registry.points_table
        self.sites: set[str] = {s.id for s in registry.sites}  # the sites this engine answers for; see own()
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
        self.drops: dict[tuple[str, str], tuple[int, int]] = {}  # (site, collector) → (dropped, since)
        self.touched: set[str] = set()  # sites whose state changed since take_touched()

    def observe(self, readings: pd.DataFrame | None = None, windows: pd.DataFrame | None = None,
                health: Iterable[dict[str, object]] = (), settled: Iterable[str] | None = None) -> list[AlertEvent]:
        """Evaluate the rules on new ``readings`` (readings columns), ``windows`` (result rows) and
        ``health`` records; returns the firing/resolved events this brings (silenced ones flagged).

        ``settled``: the sites whose input is known to be current (no backlog on their partition); only
        they are judged for "no data", since a site still being replayed only looks silent. Default: all.
        """
        if not self.settings.enabled:
            return []
        with self.lock:
            return self._observe(readings, windows, health, settled)

    def _observe(self, readings: pd.DataFrame | None, windows: pd.DataFrame | None,
                 health: Iterable[dict[str, object]], settled: Iterable[str] | None) -> list[AlertEvent]:
        conditions: list[Condition] = []
        if readings is not None and not readings.empty:
            self.touched.update(readings["site"].unique().tolist())
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
            self.touched.update(windows.loc[windows["scope"] == "site", "id"].unique().tolist())
            conditions += rules.pue_above_target(windows, self.settings, self.targets)
            conditions += rules.annual_pue_projection(windows, self.settings, self.targets)
            graded, self.grades = rules.grade_worsening(windows, self.grades)
            conditions += graded
            conditions += rules.meter_faults(windows)
        records = list(health)
        if records:
            from_health, self.drops = rules.device_health(records, self.settings, self.drops)
            conditions += from_health
            self.touched.update(c.labels.get("site", "") for c in from_health)
        if self.first_ms is not None:
            judged = self.sites if settled is None else self.sites & set(settled)
            conditions += rules.no_data(self.last_seen, sorted(judged), self.now_ms, self.first_ms, self.settings,
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
        site, point = r["site"].to_numpy(object), r["point"].to_numpy(object)
        ts = r["ts"].to_numpy(np.float64)
        first = np.ones(len(r), dtype=bool)
        first[1:] = (site[1:] != site[:-1]) | (point[1:] != point[:-1])
        previous = np.empty(len(r))
        previous[1:] = ts[:-1]
        # a point's first sample of this batch follows its newest of the batches before (NaN: none)
        previous[first] = [self.point_last.get(key, np.nan) for key in zip(site[first], point[first], strict=True)]
        per_site = pd.Series(ts - previous, index=site).dropna()
        per_site = per_site[per_site > 0].groupby(level=0).median()
        for s, gap in per_site.items():
            self.gap_ms[str(s)] = 0.8 * self.gap_ms.get(str(s), float(gap)) + 0.2 * float(gap)
        last = np.r_[np.flatnonzero(first)[1:] - 1, len(r) - 1]
        self.point_last.update(zip(zip(site[last], point[last], strict=True), ts[last].astype(np.int64).tolist(),
                                   strict=True))

    def active(self) -> list[dict[str, object]]:
        """Pending and firing alerts, for the API."""
        with self.lock:
            return self.lifecycle.active()

    # -- the sites this engine answers for, and their state -------------------------------------------

    def own(self, sites: Iterable[str]) -> None:
        """Answer for ``sites`` too (a worker was assigned their partitions); "no data" covers them."""
        with self.lock:
            self.sites |= set(sites)

    def drop_sites(self, sites: Iterable[str]) -> None:
        """Stop answering for ``sites`` and forget their state (another worker restores it)."""
        gone = set(sites)
        with self.lock:
            self.sites -= gone
            self.touched -= gone
            for table in (self.last_seen, self.gap_ms, self.grades):
                for site in gone & table.keys():
                    del table[site]
            for keyed in (self.point_last, self.stuck, self.drops):
                for key in [k for k in keyed if k[0] in gone]:
                    del keyed[key]
            self.lifecycle.drop_sites(gone)

    def take_touched(self) -> set[str]:
        """The sites whose alert state changed since the last call (to be checkpointed)."""
        with self.lock:
            touched = self.touched | self.lifecycle.touched_sites
            self.touched, self.lifecycle.touched_sites = set(), set()
            return touched

    def snapshot_sites(self, sites: Iterable[str]) -> dict[str, bytes]:
        """Per site: its rules' state and alerts (plus the engine's clock), for :meth:`restore_site`."""
        with self.lock:
            wanted = set(sites)
            lifecycles = self.lifecycle.snapshot_sites(wanted)
            point_last: dict[str, list[list[object]]] = {}
            for (s, p), t in self.point_last.items():
                if s in wanted:
                    point_last.setdefault(s, []).append([p, t])
            stuck: dict[str, list[list[object]]] = {}
            for (s, p), (v, t) in self.stuck.items():
                if s in wanted:
                    stuck.setdefault(s, []).append([p, v, t])
            drops: dict[str, list[list[object]]] = {}
            for (s, c), (n, t) in self.drops.items():
                if s in wanted:
                    drops.setdefault(s, []).append([c, n, t])
            return {site: zlib.compress(json.dumps({
                "v": SITE_STATE_VERSION, "now_ms": self.now_ms, "first_ms": self.first_ms,
                "last_seen": self.last_seen.get(site), "gap_ms": self.gap_ms.get(site), "grade": self.grades.get(site),
                "point_last": point_last.get(site, []), "stuck": stuck.get(site, []), "drops": drops.get(site, []),
                "lifecycle": lifecycles[site].hex()}).encode()) for site in wanted}

    def restore_site(self, site: str, blob: bytes) -> None:
        """Take ``site`` over from a :meth:`snapshot_sites` blob (made by this or another engine)."""
        try:
            state = json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as exc:
            raise ValueError(f"not an alert engine site snapshot: {exc}") from exc
        if state.get("v") != SITE_STATE_VERSION:
            raise ValueError(f"unsupported alert site snapshot (version {state.get('v')}; expected "
                             f"{SITE_STATE_VERSION})")
        with self.lock:
            self.drop_sites({site})
            self.sites.add(site)
            self.now_ms = max(self.now_ms, int(state["now_ms"]))
            if state["first_ms"] is not None:
                self.first_ms = min(self.first_ms if self.first_ms is not None else state["first_ms"],
                                    int(state["first_ms"]))
            for table, value in ((self.last_seen, state["last_seen"]), (self.gap_ms, state["gap_ms"]),
                                 (self.grades, state["grade"])):
                if value is not None:
                    table[site] = value
            self.point_last.update({(site, p): int(t) for p, t in state["point_last"]})
            self.stuck.update({(site, p): (v, int(t)) for p, v, t in state["stuck"]})
            self.drops.update({(site, c): (int(n), int(t)) for c, n, t in state["drops"]})
            self.lifecycle.restore_site(site, bytes.fromhex(state["lifecycle"]))

    def snapshot(self) -> bytes:
        """Every site's state (see :meth:`snapshot_sites`), for :meth:`restore` after a restart."""
        with self.lock:
            sites = self.sites | self.last_seen.keys() | {""}
            blobs = self.snapshot_sites(sites)
            return zlib.compress(json.dumps({"v": SITE_STATE_VERSION, "sites": sorted(self.sites),
                                             "states": {s: b.hex() for s, b in blobs.items()}}).encode())

    def restore(self, blob: bytes) -> None:
        """Resume from :meth:`snapshot`."""
        state = json.loads(zlib.decompress(blob))
        if state.get("v") != SITE_STATE_VERSION:
            raise ValueError(f"unsupported alert engine snapshot (version {state.get('v')})")
        with self.lock:
            for site, hexed in state["states"].items():
                self.restore_site(site, bytes.fromhex(hexed))
            self.sites = set(state["sites"])
