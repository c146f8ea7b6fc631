"""Streaming windows: readings in, live and rolled-up PUE windows out, late data handled.

:class:`StreamEngine` is stateful but does no I/O. Per site it keeps the raw readings of the
windows still open, the flows of base (live, 1 min by default) windows that may still change,
and running sums of finalized base windows for 15 min, hour, day and month windows (energy is
additive, so a day is the sum of its minutes). A base window is finalized once the site's
newest reading is ``allowed_lateness_s`` past its end; a reading that arrives for a finalized
window is counted as too late and dropped, while later-but-in-time readings simply update their
open window on the next :meth:`StreamEngine.advance`.

Every emitted row is keyed by (scope, id, window, start) and carries ``final``; a store that
upserts by key (the file store, InfluxDB) therefore ends with exactly one, final, row per window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dcpue.analytics.energy import (
    EnergyParams,
    level_at,
    point_ids,
    point_window_columns,
    site_rows,
    usable_quality,
)
from dcpue.analytics.groups import FLEET_ID, GroupAggregator
from dcpue.analytics.pue import (
    FLOW_COLUMNS,
    MetricParams,
    flow_of_points,
    rollup_flows,
    site_flows_of_columns,
    site_start_index,
    window_metrics,
)
from dcpue.model import readings_frame
from dcpue.registry import Registry
from dcpue.results import ROLLING_ANNUAL, WINDOWS, empty_windows
from dcpue.settings import EngineSettings

DAY_MS = 86_400_000
NEVER = -(2**62)  # "no reading yet" for a point's newest timestamp
NONE_YET = np.iinfo(np.int64).max  # "no reading yet" for a site's oldest timestamp
ANNUAL_DAYS = 365
_NO_POINT_WINDOWS = {  # what site flows read
    name: np.empty(0, np.int64 if name in ("pid", "start_ms", "window") else np.float64)
    for name in ("pid", "start_ms", "window", "integral", "covered_s", "booked_s")}
__all__ = ["FLEET_ID", "StreamEngine", "UnusableRecord", "complete_gap", "restore_site", "snapshot_complete",
           "snapshot_sites", "window_ends", "window_starts"]


# window bounds already converted, per (start or end, label, zone): a step asks for the bounds of the same few
# window starts again and again, and a conversion through pandas' time zones cost a live step of 5 sites a
# tenth of its time (raw reading times, each asked once, are converted without it)
_BOUNDS: dict[tuple[str, str, str], dict[int, int]] = {}
_BOUNDS_KEPT = 1 << 16  # per table (start or end, label, zone); forgotten all at once when full
_BOUNDS_ASKED = 4096  # more distinct times than this in one call are converted without the table


def _cached(kind: str, convert: Callable[[np.ndarray, str, str], np.ndarray], ts_ms: np.ndarray | pd.Series,
            label: str, tz: str) -> np.ndarray:
    """``convert(times, label, tz)`` of each distinct time once, through :data:`_BOUNDS`."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    uniq, inverse = np.unique(ts, return_inverse=True)
    if len(uniq) > _BOUNDS_ASKED:
        return convert(uniq, label, tz)[inverse]
    known = _BOUNDS.setdefault((kind, label, tz), {})
    bounds = [known.get(t) for t in uniq.tolist()]  # read once: another thread may clear the table meanwhile
    missing = [k for k, bound in enumerate(bounds) if bound is None]
    if missing:
        converted = convert(uniq[missing], label, tz).tolist()
        for k, bound in zip(missing, converted, strict=True):
            bounds[k] = bound
        if len(known) + len(missing) > _BOUNDS_KEPT:
            known.clear()
        known.update(zip(uniq[missing].tolist(), converted, strict=True))
    return np.array(bounds, dtype=np.int64)[inverse]


def window_starts(ts_ms: np.ndarray | pd.Series, label: str, tz: str = "UTC") -> np.ndarray:
    """Start [ms] of the ``label`` window (see :data:`dcpue.results.WINDOWS`) holding each timestamp.

    Days and months follow the calendar of ``tz`` (an operator's "day" is a local day).
    """
    return _cached("start", _window_starts, ts_ms, label, tz)


def _window_starts(uniq: np.ndarray, label: str, tz: str) -> np.ndarray:
    local = pd.to_datetime(uniq, unit="ms", utc=True).tz_convert(tz)
    freq = WINDOWS[label]
    if freq == "MS":
        naive = local.tz_localize(None).to_period("M").to_timestamp()
        floored = naive.tz_localize(tz, ambiguous=False, nonexistent="shift_forward")
    else:
        # in zones with daylight saving a local boundary can be ambiguous or missing: take standard time
        floored = local.floor(freq, ambiguous=False, nonexistent="shift_forward")
    return np.asarray(floored.as_unit("ms").asi8, dtype=np.int64)


def window_ends(starts_ms: np.ndarray | pd.Series, label: str, tz: str = "UTC") -> np.ndarray:
    """End [ms] of ``label`` windows starting at ``starts_ms``."""
    return _cached("end", _window_ends, starts_ms, label, tz)


def _window_ends(starts: np.ndarray, label: str, tz: str) -> np.ndarray:
    freq = WINDOWS[label]
    if freq == "1D":
        # the next local day's start: a local day lasts 23 to 25 hours, so 26 hours on is inside the next one
        # (pandas before 3 adds a fixed 24 hours for ``Day(1)``, which ends a 25-hour day an hour early)
        return _window_starts(starts + 26 * 3_600_000, label, tz)
    if freq == "MS":
        # the next month's start, as its start is taken (32 days on is inside it): adding a month in local time
        # raised where a clock change falls on local midnight (America/St_Johns before 2011, for one)
        return _window_starts(starts + 32 * DAY_MS, label, tz)
    local = pd.to_datetime(starts, unit="ms", utc=True).tz_convert(tz)
    return np.asarray((local + pd.Timedelta(freq)).as_unit("ms").asi8, dtype=np.int64)


@dataclass
class EngineCounters:
    """What the engine has seen; exposed as self-monitoring metrics."""

    accepted: int = 0
    late_dropped: int = 0
    late_by_site: dict[str, int] = field(default_factory=dict)


class StreamEngine:
    """Incremental PUE windows for every site of a registry."""

    ROLLUPS = ("15m", "1h", "1d", "1mo")
    # how long complete windows are kept after their end: days for the rolling annual figure (complete quarters,
    # hours and months were emitted final, and nothing reads them again: they are forgotten)
    KEEP_COMPLETE_MS = {"1d": (ANNUAL_DAYS + 1) * DAY_MS}

    def __init__(self, registry: Registry, settings: EngineSettings = EngineSettings(),
                 emit_groups: bool = True) -> None:
        """``emit_groups=False`` leaves cluster and fleet rows out: a worker that sees only some sites
        (one of several in a Kafka consumer group) must not write partial group figures."""
        self.emit_groups = emit_groups
        self.registry = registry
        self.points = registry.points_table
        self.sites = registry.sites_table
        self.base_label = "1m"
        self.base_ms = 60_000
        self.lateness_ms = int(settings.allowed_lateness_s * 1000)
        self.close_timeout_ms = int(settings.close_timeout_s * 1000)
        self.max_gap_ms = int(settings.max_gap_s * 1000)
        self.energy_params = EnergyParams(settings.max_gap_s, settings.spike_tolerance)
        self.metric_params = MetricParams(settings.target_pue, settings.coverage_threshold,
                                          settings.hierarchy_tolerance)
        self.tz = settings.timezone
        self.counters = EngineCounters()
        # the buffered readings of known points, by their row in the points table (``pid``) and no names: the
        # per-step work concatenates, sorts and masks numbers only; names come back from the points table
        # for checkpoints
        self._buffer = _empty_buffer()
        self._pending: list[pd.DataFrame] = []
        site_of_point = self.points.index.get_level_values("site").to_numpy(object)
        self._site_ids = np.asarray(pd.unique(site_of_point), dtype=object)
        self._site_code = {site: code for code, site in enumerate(self._site_ids)}
        # the site code of each point row; position len(points) stands for -1 (an unknown point): no site
        self._pid_site = np.append(pd.Index(self._site_ids).get_indexer(site_of_point), len(self._site_ids))
        self._max_ts: dict[str, int] = {}
        self._point_last = np.full(len(self.points), NEVER, dtype=np.int64)  # newest reading per point (by pid)
        flow_pids = self.points.index.get_indexer(flow_of_points(self.points).index)
        # only energy-balance points are integrated (the flows): a sensor's readings are counted, not buffered
        self._is_flow_pid = np.zeros(len(self.points) + 1, dtype=bool)  # the last entry: an unknown point (-1)
        self._is_flow_pid[flow_pids] = True
        # a site is in the energy balance from its first reading of any point on, and has windows (of no
        # coverage, until its meters report) once any point reported a usable value: per site code, the oldest
        # reading accepted and whether a sensor gave a usable one (the flow points' own are in the buffer)
        self._first_ts = np.full(len(self._site_ids) + 1, NONE_YET, dtype=np.int64)
        self._sensor_seen = np.zeros(len(self._site_ids) + 1, dtype=bool)
        self._flow_pids: dict[str, np.ndarray] = {
            str(site): flow_pids[self._pid_site[flow_pids] == code] for code, site in enumerate(self._site_ids)}
        self._site_rows = site_rows(self.points)
        self._final_until: dict[str, int] = {}  # base windows before this are folded and immutable
        self._open = _SiteRows()  # base-window flows that may still change
        # sums of the rollup windows still taking base windows (a site's current quarter, hour, day, month)
        self._acc: dict[str, _SiteRows] = {label: _SiteRows() for label in self.ROLLUPS}
        self._prune_due: set[str] = set()  # sites whose running sums or closed range changed since the last prune
        # complete days, per site: the rolling annual figure and checkpoints read them, a step only
        # its own sites' (a worker running for a year holds 366 days of every site; reading them all at every
        # step made a live step 3.4 times as slow as on its first day)
        self._complete: dict[str, _CompleteSums] = {label: _CompleteSums() for label in self.KEEP_COMPLETE_MS}
        self._dirty: set[str] = set()
        self._groups = GroupAggregator(self.sites, self.metric_params) if emit_groups else None

    # -- input -------------------------------------------------------------------------------
    def add(self, readings: pd.DataFrame, pid: np.ndarray | None = None) -> int:
        """Accept readings (any order, any sites of the registry); returns how many were too late.

        ``pid``: each reading's row in the registry's points table (-1 for an unknown point) if the caller
        has it already (:class:`~dcpue.analytics.energy.PointIds`); looked up otherwise.
        """
        if readings.empty:
            return 0
        pid = point_ids(self.points, readings) if pid is None else np.asarray(pid, dtype=np.int64)
        if len(pid) != len(readings):
            raise ValueError(f"{len(pid)} points-table rows for {len(readings)} readings")
        codes = self._pid_site[pid]
        unknown = pid < 0  # dead-lettered by the worker; the engine still counts them by their site name
        final_until = np.array([*(self._final_until.get(s, np.nan) for s in self._site_ids), np.nan])[codes]
        if unknown.any():
            final_until[unknown] = readings["site"][unknown].map(self._final_until).to_numpy(np.float64)
        late = readings["ts"].to_numpy(np.int64) < final_until  # NaN (site not started) compares False
        n_late = int(late.sum())
        if n_late:
            self.counters.late_dropped += n_late
            for site, count in readings.loc[late, "site"].value_counts().items():
                self.counters.late_by_site[site] = self.counters.late_by_site.get(site, 0) + int(count)
            readings, pid, codes, unknown = readings[~late], pid[~late], codes[~late], unknown[~late]
        if readings.empty:
            return n_late
        self.counters.accepted += len(readings)
        ts = readings["ts"].to_numpy(np.int64)
        newest = np.full(len(self._site_ids) + 1, NEVER, dtype=np.int64)
        np.maximum.at(newest, codes, ts)
        newest_by_site = {str(self._site_ids[c]): int(newest[c]) for c in np.flatnonzero(newest[:-1] > NEVER)}
        if unknown.any():
            for site, value in readings[unknown].groupby("site")["ts"].max().items():
                newest_by_site[site] = max(newest_by_site.get(site, NEVER), int(value))
        for site, value in newest_by_site.items():
            self._max_ts[site] = max(self._max_ts.get(site, value), value)
        known = ~unknown
        np.maximum.at(self._point_last, pid[known], ts[known])
        self._dirty.update(newest_by_site)
        # readings of points the registry does not know, and of sensors, are counted above but never integrated
        flows = self._is_flow_pid[pid]
        np.minimum.at(self._first_ts, codes[known], ts[known])
        sensors = known & ~flows
        if sensors.any():
            usable = usable_quality(readings["quality"].to_numpy(np.int64)[sensors])
            self._sensor_seen[codes[sensors][usable]] = True
        self._pending.append(_buffer_frame(pid[flows], ts[flows], readings["value"].to_numpy(np.float64)[flows],
                                           readings["quality"].to_numpy(np.int64)[flows]))
        return n_late

    def sites_of(self, pid: np.ndarray) -> list[str]:
        """The distinct sites of points-table rows ``pid`` (an unknown point, -1, has none), by site code: no
        hashing of a name per reading."""
        present = np.bincount(self._pid_site[np.asarray(pid, dtype=np.int64)], minlength=len(self._site_ids) + 1)
        return self._site_ids[present[:-1] > 0].tolist()

    # -- output ------------------------------------------------------------------------------
    def advance(self) -> pd.DataFrame:
        """Recompute what new readings touched, finalize what lateness allows; return rows to upsert."""
        if not self._dirty:
            return empty_windows()
        self._merge_pending()
        dirty = sorted(self._dirty)
        self._dirty.clear()

        base = self._recompute_base(dirty)
        self._finalize(dirty)
        parts: list[tuple[pd.DataFrame, str, np.ndarray]] = []
        if not base.empty:
            parts.append((base, self.base_label, self._base_ends(base)))
            for label in self.ROLLUPS:
                flows = self._rollup_flows(label, base.index)
                if not flows.empty:
                    parts.append((flows, label, window_ends(flows.index.get_level_values("start_ms"), label, self.tz)))
        annual = self._annual_flows(dirty)
        if not annual.empty:
            ends = self._annual_end(annual.index.get_level_values("start_ms").to_numpy(np.int64))
            parts.append((annual, ROLLING_ANNUAL, ends))
        if not parts:
            return empty_windows()
        site_rows = self._metrics(
            pd.concat([p[0] for p in parts]),
            np.concatenate([np.full(len(p[0]), p[1], dtype=object) for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
        site_rows.loc[site_rows["window"] == ROLLING_ANNUAL, "final"] = False  # a rolling figure never closes
        groups = self._groups.add(site_rows) if self._groups is not None else None
        self._prune_buffer()
        self._prune_accumulators()
        return pd.concat([site_rows, groups], ignore_index=True) if groups is not None and not groups.empty \
            else site_rows

    def _merge_pending(self) -> None:
        if self._pending:
            self._buffer = pd.concat([self._buffer, *self._pending], ignore_index=True)
            self._pending = []

    def _recompute_base(self, dirty: list[str]) -> pd.DataFrame:
        """Recompute the flows of every open base window of the dirty sites; returns them."""
        codes = self._buffer_site_codes()
        buf_mask = self._site_mask(dirty)[codes]
        buf, codes = self._buffer[buf_mask], codes[buf_mask]
        lo_by_site = {}
        for site in dirty:  # from the closed windows on, or from the site's oldest reading of any point
            first = self._first_ts[self._site_code[site]] if site in self._site_code else NONE_YET
            if site in self._final_until:
                lo_by_site[site] = self._final_until[site]
            elif first < NONE_YET:
                lo_by_site[site] = int(first) // self.base_ms * self.base_ms
        rows = []
        # sites usually advance together; group them by their first open window to share edges
        by_lo: dict[int, list[str]] = {}
        for site, lo in lo_by_site.items():
            by_lo.setdefault(lo, []).append(site)
        for lo, sites in by_lo.items():
            hi = max(self._max_ts[s] for s in sites) // self.base_ms * self.base_ms + self.base_ms
            edges = np.arange(lo, hi + 1, self.base_ms, dtype=np.int64)
            part = buf[self._site_mask(sites)[codes]] if len(by_lo) > 1 else buf
            pw = point_window_columns(part, self.points, edges, self.energy_params, names=False)
            # a site whose sensors reported has its windows even where its meters have not (no coverage there)
            seen = np.array([site for site in sites if self._sensor_seen[self._site_code[site]]], dtype=object)
            if pw is None and not len(seen):
                continue
            starts = edges[:-1]
            flows = site_flows_of_columns(_NO_POINT_WINDOWS if pw is None else pw, self.points,
                                          also=(np.repeat(seen, len(starts)), np.tile(starts, len(seen))),
                                          starts=starts)
            if flows.empty:
                continue
            # a window opens with the first interval inside it, i.e. once the site has a reading newer than its
            # start (the flows come for every window any site of the group opened)
            opened = flows.index.get_level_values("start_ms").to_numpy(np.int64) < _by_site(
                flows.index, self._max_ts, np.int64, 0)
            rows.append(flows if opened.all() else flows[opened])
        if not rows:
            return pd.DataFrame()
        flows = pd.concat(rows)
        self._open.put(flows)  # each site's open windows, all of them recomputed
        return flows

    def _site_mask(self, sites: list[str] | set[str]) -> np.ndarray:
        """A boolean per site code (plus one False for "no site"): is it one of ``sites``."""
        mask = np.zeros(len(self._site_ids) + 1, dtype=bool)
        mask[[self._site_code[s] for s in sites if s in self._site_code]] = True
        return mask

    def _buffer_site_codes(self) -> np.ndarray:
        """The site code of each buffered reading."""
        return self._pid_site[self._buffer["pid"].to_numpy(np.int64)]

    def _base_ends(self, flows: pd.DataFrame) -> np.ndarray:
        return flows.index.get_level_values("start_ms").to_numpy(np.int64) + self.base_ms

    def _metrics(self, flows: pd.DataFrame, label: str | np.ndarray, ends: np.ndarray) -> pd.DataFrame:
        starts = flows.index.get_level_values("start_ms").to_numpy(np.int64)
        now = _by_site(flows.index, self._max_ts, np.int64, 0)
        elapsed_ms = np.clip(np.minimum(ends, now) - starts, self.base_ms, None)
        rows = window_metrics(flows, self.sites, label, ends, elapsed_ms / 1000.0, self.metric_params)
        final_until = _by_site(flows.index, self._final_until, np.int64, -1)
        rows["final"] = ends <= final_until
        return rows

    def _finalize(self, dirty: list[str]) -> None:
        """Fold base windows whose end is past each site's watermark into the rollup sums.

        A site's watermark waits for its slowest energy-balance point: a window closes once every
        point has reported past its end (so the interval that crosses the end is known), or once the
        site's newest reading is ``close_timeout_s`` past it (a silent point's part is then a gap);
        either way ``allowed_lateness_s`` later.
        """
        # only dirty sites can close windows: their watermarks, once per site (a site meters up to thousands of
        # points), over their own open windows
        opened = self._open.frame(dirty)
        if opened.empty:
            return
        starts = opened.index.get_level_values("start_ms").to_numpy(np.int64)
        watermarks = {site: self._watermark(site) for site in dirty}
        closing = starts + self.base_ms <= _by_site(opened.index, watermarks, np.float64, -np.inf)
        if not closing.any():
            return
        done = opened[closing]
        self._open.put(opened[~closing], sites=dirty)
        for site, last_start in done.reset_index().groupby("site")["start_ms"].max().items():
            self._final_until[site] = int(last_start) + self.base_ms
            self._prune_due.add(str(site))
        ts = done.index.get_level_values("start_ms").to_numpy(np.int64)
        for label in self.ROLLUPS:
            # a flow NaN on both sides stays NaN (min_count=1)
            self._acc[label].add(rollup_flows(done, window_starts(ts, label, self.tz)))

    def _watermark(self, site: str) -> int:
        newest = self._max_ts.get(site, 0)
        flow_pids = self._flow_pids.get(site)
        slowest = int(self._point_last[flow_pids].min()) if flow_pids is not None and len(flow_pids) else newest
        return max(min(slowest, newest), newest - self.close_timeout_ms) - self.lateness_ms

    def _prune_accumulators(self) -> None:
        """Take complete windows out of the running sums: quarters, hours and months are forgotten (emitted
        final), days move to the complete sums, where those older than ``KEEP_COMPLETE_MS`` are dropped (a
        site's, whenever it completes another)."""
        # only the sites whose sums or closed range changed: the others' sums were pruned when they last did
        due, self._prune_due = self._prune_due, set()
        for label in self.ROLLUPS:
            acc = self._acc[label].frame(due)
            if acc.empty:
                continue
            final_until = _by_site(acc.index, self._final_until, np.float64, np.nan)
            complete = window_ends(acc.index.get_level_values("start_ms"), label, self.tz) <= final_until
            if not complete.any():
                continue
            self._acc[label].put(acc[~complete], sites=due)
            if label in self._complete:
                done = acc[complete]
                self._complete[label].add(done)
                sites = done.index.get_level_values("site").unique().tolist()
                self._complete[label].forget_before(
                    {site: self._final_until[site] - self.KEEP_COMPLETE_MS[label] for site in sites},
                    lambda starts, label=label: window_ends(starts, label, self.tz))

    def _combined(self, label: str, keys: pd.MultiIndex) -> pd.DataFrame:
        """Folded sums plus still-open base windows, for the given (site, start) windows of ``label``."""
        parts = []
        sites = keys.get_level_values("site").unique()
        acc = self._acc[label].frame(sites)
        if not acc.empty:
            parts.append(acc[acc.index.isin(keys)])
        opened = self._open.frame(sites)
        if not opened.empty:
            open_starts = window_starts(opened.index.get_level_values("start_ms"), label, self.tz)
            open_keys = pd.MultiIndex.from_arrays([opened.index.get_level_values("site"), open_starts])
            mask = open_keys.isin(keys)
            if mask.any():
                parts.append(rollup_flows(opened[mask], open_starts[mask]))
        parts = [p for p in parts if not p.empty]
        if not parts:
            return pd.DataFrame()
        return rollup_flows(pd.concat(parts))

    def _rollup_flows(self, label: str, touched: pd.Index) -> pd.DataFrame:
        """Flows of the ``label`` windows that contain any of the ``touched`` base windows."""
        keys = pd.MultiIndex.from_arrays(
            [touched.get_level_values("site"), window_starts(touched.get_level_values("start_ms"), label, self.tz)],
            names=["site", "start_ms"],
        ).unique()
        return self._combined(label, keys)

    def _annual_end(self, starts: np.ndarray) -> np.ndarray:
        """End of the rolling annual window starting at ``starts``: 365 local days later."""
        return window_ends(window_starts(starts + (ANNUAL_DAYS - 1) * DAY_MS + DAY_MS // 2, "1d", self.tz), "1d",
                           self.tz)

    def _annual_flows(self, dirty: list[str]) -> pd.DataFrame:
        """The rolling annual figure per site: the 365 local days ending with the site's current day.

        All dirty sites at once: each site's closed days from its own start onwards plus its open windows,
        summed per site (a loop over sites cost about 10 ms each, per step)."""
        sites = [s for s in dirty if s in self._max_ts]
        if not sites:
            return pd.DataFrame()
        newest, at = np.unique(np.array([self._max_ts[s] for s in sites], dtype=np.int64), return_inverse=True)
        today = _window_starts(newest, "1d", self.tz)[at]  # raw times, seldom asked again: not kept in _BOUNDS
        starts = pd.Series(window_starts(today - (ANNUAL_DAYS - 1) * DAY_MS + DAY_MS // 2, "1d", self.tz),
                           index=sites)
        since_by_site = dict(zip(sites, starts.tolist(), strict=True))
        parts = [self._complete["1d"].sums_since(since_by_site)]
        days = self._acc["1d"].frame(sites)
        if not days.empty:
            since = _by_site(days.index, since_by_site, np.float64, np.nan)
            keep = days.index.get_level_values("start_ms").to_numpy(np.int64) >= since
            parts.append(days[keep])
        parts.append(self._open.frame(sites))
        parts = [p for p in parts if not p.empty]
        if not parts:
            return pd.DataFrame()
        flows = pd.concat(parts)
        flows = rollup_flows(flows, starts.reindex(flows.index.get_level_values("site")).to_numpy(np.int64))
        return flows

    def _prune_buffer(self) -> None:
        """Drop the readings of closed windows, except each series' last usable one (not BAD): the start of
        the interval that crosses into the open range, which is all an open window needs of the past."""
        if self._buffer.empty or not self._final_until:
            return
        buf = self._buffer
        final_until = np.array([*(self._final_until.get(s, -np.inf) for s in self._site_ids), -np.inf])
        ts = buf["ts"].to_numpy(np.int64)
        old = ts < final_until[self._buffer_site_codes()]
        if not old.any():
            return
        pid = buf["pid"].to_numpy(np.int64)
        usable = np.flatnonzero(old & usable_quality(buf["quality"].to_numpy(np.int64)))
        # each series' newest usable reading, of equal times the last received: its newest time, then the last
        # row at that time (two passes over the rows; sorting them cost a backlog step several times more)
        newest = np.full(len(self._pid_site), np.iinfo(np.int64).min)
        np.maximum.at(newest, pid[usable], ts[usable])
        at_newest = usable[ts[usable] == newest[pid[usable]]]
        last_row = np.full(len(self._pid_site), -1, dtype=np.int64)
        np.maximum.at(last_row, pid[at_newest], at_newest)
        keep = ~old
        keep[last_row[last_row >= 0]] = True
        self._buffer = buf[keep].reset_index(drop=True)

    def drop_sites(self, sites: set[str]) -> None:
        """Forget everything about ``sites`` (another worker took them over, or a checkpoint replaces them)."""
        self._merge_pending()
        if not self._buffer.empty:
            self._buffer = self._buffer[~self._site_mask(sites)[self._buffer_site_codes()]].reset_index(drop=True)

        self._open.drop(sites)
        for acc in self._acc.values():
            acc.drop(sites)
        self._prune_due -= sites
        for complete in self._complete.values():
            complete.drop(sites)
        for site in sites:
            self._max_ts.pop(site, None)
            self._final_until.pop(site, None)
            if site in self._site_code:
                self._first_ts[self._site_code[site]] = NONE_YET
                self._sensor_seen[self._site_code[site]] = False
            lo, hi = self._site_rows.get(site, (0, 0))
            self._point_last[lo:hi] = NEVER
        self._dirty -= sites

    def newest_complete(self, site: str) -> int | None:
        """The start of ``site``'s newest complete window kept (a day of the annual figure), None if none."""
        newest = [n for sums in self._complete.values() if (n := sums.newest(site)) is not None]
        return max(newest) if newest else None

    def snapshot_counters(self) -> dict[str, object]:
        """Counters for self-monitoring."""
        return {
            "accepted": self.counters.accepted,
            "late_dropped": self.counters.late_dropped,
            "late_by_site": dict(self.counters.late_by_site),
            "buffered_readings": len(self._buffer),
            "open_windows": len(self._open),
        }


def _by_site(index: pd.MultiIndex, values: dict[str, object], dtype: object, default: object) -> np.ndarray:
    """``values[site]`` for each row of a (site, …) index, ``default`` for sites not in ``values``: looked up once
    per distinct site through the index's codes (mapping the site level row by row cost a step a tenth)."""
    level = index.names.index("site")
    lookup = np.array([values.get(site, default) for site in index.levels[level].tolist()], dtype=dtype)
    return lookup[index.codes[level]] if len(lookup) else np.empty(len(index), dtype=dtype)


# -- state snapshots ----------------------------------------------------------------------------
# A site's engine state, so a restarted or rebalanced worker resumes without shortening its day and
# month figures. Encoded with MessagePack (never pickle: a state blob may come from a shared topic).

# 4: the complete days up to a mark may be left out, to a record of their own (snapshot_complete) written
# only when they change; 3: complete days apart from the running sums, as raw arrays (a year of days is most
# of a site's state); 2: columns as raw numeric arrays and coded text; versions 1 (lists of values) to 3 are
# still read. A reader of version 3 rejects version 4: it would have taken the days after the mark for all.
STATE_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)


def _int_categories(values: np.ndarray) -> np.ndarray:
    """The ``np.min_scalar_type`` of each integer as a category: 0–3 unsigned 8–64 bit, 4–7 signed 8–64 bit."""
    unsigned = np.searchsorted(np.array([255, 65_535, 2**32 - 1], dtype=np.uint64),
                               np.maximum(values, 0).astype(np.uint64))
    signed = 4 + (values < -128).astype(int) + (values < -32_768) + (values < -(2**31))
    return np.where(values >= 0, unsigned, signed)


_SCALAR_TYPES = [np.dtype(t) for t in ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8")]
# the type an integer column takes in a checkpoint: np.result_type of the min_scalar_type of its min and max
_RESULT_TYPES = np.array([[np.result_type(a, b).str for b in _SCALAR_TYPES] for a in _SCALAR_TYPES], dtype=object)


def _local_codes(codes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For codes sorted into runs (one per site) beginning at ``starts``: each code's number in order of first
    appearance within its run; every run's distinct codes in that order, one run after the other; and where
    each run's begin in those (plus their end)."""
    run = np.repeat(np.arange(len(starts), dtype=np.int64), np.diff(np.r_[starts, len(codes)]))
    span = int(codes.max(initial=0)) + 2
    # runs are contiguous, so numbering the (run, code) pairs by first appearance numbers each run's codes
    # consecutively from the number of its first element
    numbers, pairs = pd.factorize(run * span + (codes + 1))
    offsets = numbers[starts]
    return numbers - offsets[run], pairs % span - 1, np.r_[offsets, len(pairs)]


def _frames_to_objs(frame: pd.DataFrame, wanted: set[str]) -> dict[str, dict[str, object]]:
    """The rows of each site of ``wanted`` in ``frame`` as plain msgpack-able data, site → object: numeric
    columns as one raw array block per type (integers per site in the smallest type that holds them),
    text columns as codes into the site's values. Each column is read, ordered, typed and coded once for
    all sites (encoding a frame per site cost as much as computing at rack scale; typing and coding a
    column per site cost most of a checkpoint)."""
    if frame.empty:
        return {}
    flat = frame.reset_index() if frame.index.names != [None] else frame
    site_codes, site_names = pd.factorize(flat["site"])
    keep = np.isin(np.asarray(site_names, dtype=object), list(wanted))[site_codes]
    order = np.flatnonzero(keep)
    if not len(order):
        return {}
    order = order[np.argsort(site_codes[order], kind="stable")]
    sorted_codes = site_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    columns = [str(c) for c in flat.columns]
    numeric: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (position, values, per-site type if integer)
    text: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for position, name in enumerate(flat.columns):
        values = flat[name]
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            array = values.to_numpy()[order]
            types = None
            if array.dtype.kind in "iu":  # quality fits a byte, timestamps do not
                types = _RESULT_TYPES[_int_categories(np.minimum.reduceat(array, starts)),
                                      _int_categories(np.maximum.reduceat(array, starts))]
            numeric.append((position, array, types))
        else:
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            local, used, used_starts = _local_codes(codes[order], starts)
            text.append((position, local, used, used_starts, np.asarray(uniques.astype(object), dtype=object)))
    # a site's blocks depend on its integer columns' types only: lay them out once per combination of those
    # (most sites share one); a block of columns of one type at every site is stacked once for all sites
    int_types = [types for _, _, types in numeric if types is not None]
    combos = np.stack(int_types, axis=1) if int_types else np.empty((len(starts), 0), dtype=object)
    layouts: dict[tuple[str, ...], list[tuple[str, list[int], list[np.ndarray], bool]]] = {}
    stacked: dict[tuple[int, ...], np.ndarray] = {}
    out = {}
    for k, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        combo = tuple(combos[k])
        layout = layouts.get(combo)
        if layout is None:
            layout = layouts[combo] = _block_layout(numeric, combo)
        blocks = []
        for dtype, positions, arrays, fixed in layout:
            if fixed:  # the same type at every site: a slice of the columns stacked for all sites
                key = tuple(positions)
                if key not in stacked:
                    stacked[key] = np.stack(arrays, dtype=dtype, casting="unsafe")
                raw = stacked[key][:, lo:hi].tobytes()
            else:
                raw = np.stack([a[lo:hi] for a in arrays], dtype=dtype, casting="unsafe").tobytes()
            blocks.append([dtype, positions, raw])
        coded = []
        for position, local, used, used_starts, uniques in text:
            site_local = local[lo:hi]
            site_used = used[used_starts[k]:used_starts[k + 1]]
            gap = np.flatnonzero(site_used < 0)  # a missing value (code -1) keeps code -1 and no entry in the values
            if len(gap):
                site_local = np.where(site_local == gap[0], -1, site_local - (site_local > gap[0]))
                site_used = np.delete(site_used, gap[0])
            coded.append([position, site_local.astype("<i4").tobytes(), [uniques[i] for i in site_used]])
        out[str(site_names[sorted_codes[lo]])] = {"columns": columns, "rows": hi - lo, "coded": coded,
                                                  "blocks": blocks}
    return out


def _block_layout(numeric: list[tuple[int, np.ndarray, np.ndarray | None]],
                  int_types: tuple[str, ...]) -> list[tuple[str, list[int], list[np.ndarray], bool]]:
    """The blocks of a site whose integer columns take ``int_types``: (type, column positions, columns, whether
    every column of the block has that type at every site), blocks in order of their first column."""
    types = iter(int_types)
    blocks: dict[str, tuple[list[int], list[np.ndarray], list[bool]]] = {}
    for position, array, per_site in numeric:
        dtype = array.dtype.str if per_site is None else next(types)
        positions, arrays, fixed = blocks.setdefault(dtype, ([], [], []))
        positions.append(position)
        arrays.append(array)
        fixed.append(per_site is None)
    return [(dtype, positions, arrays, all(fixed)) for dtype, (positions, arrays, fixed) in blocks.items()]


def _obj_to_frame(obj: dict[str, object], index: list[str] | None) -> pd.DataFrame:
    rows = obj.get("rows", 0)
    if "data" in obj:  # version 1: a list of values per column
        frame = pd.DataFrame(dict(zip(obj["columns"], obj["data"], strict=True)))  # type: ignore[arg-type]
    else:
        data: dict[int, np.ndarray] = {}
        for dtype, positions, raw in obj["blocks"]:  # type: ignore[union-attr]
            block = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(len(positions), rows)
            block = block.astype(np.int64) if block.dtype.kind in "iu" else block.copy()
            data.update(zip(positions, block, strict=True))
        for position, codes, values in obj["coded"]:  # type: ignore[union-attr]
            data[position] = np.asarray([*values, None], dtype=object)[np.frombuffer(codes, dtype="<i4")]  # -1: None
        columns = obj["columns"]
        frame = pd.DataFrame({name: data[i] for i, name in enumerate(columns)}, index=range(rows))  # type: ignore[arg-type]
    return frame.set_index(index) if index and not frame.empty else frame


class _PerSite:
    """Flow sums by (site, window start), each site's rows kept apart as arrays, sorted by start: read site by
    site (a step's sites, a checkpoint's), never as one frame of every site."""

    def __init__(self) -> None:
        self._starts: dict[str, np.ndarray] = {}  # site → window starts [ms], ascending
        self._values: dict[str, np.ndarray] = {}  # site → (windows × flow columns)
        self._columns = pd.Index(FLOW_COLUMNS)

    def __len__(self) -> int:
        # the values copied in one call first: the status page counts them from another thread while a step
        # replaces sites (iterating the dict itself could meet it changing size)
        return sum(map(len, list(self._starts.values())))

    @property
    def empty(self) -> bool:
        return not self._starts  # a site is held only while it has rows

    def frame(self, sites: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows of ``sites`` (all if ``None``), indexed (site, start_ms), the sites in the order given."""
        held = list(self._starts) if sites is None else [str(s) for s in sites if s in self._starts]
        if not held:
            return pd.DataFrame(np.empty((0, len(self._columns))), columns=self._columns,
                                index=site_start_index(np.empty(0, object), np.empty(0, np.int64),
                                                       np.empty(0, np.int64)))
        counts = [len(self._starts[site]) for site in held]
        index = site_start_index(np.array(held, dtype=object), np.repeat(np.arange(len(held)), counts),
                                 np.concatenate([self._starts[site] for site in held]))
        return pd.DataFrame(np.concatenate([self._values[site] for site in held]), index=index,
                            columns=self._columns)

    def drop(self, sites: set[str]) -> None:
        """Forget ``sites``."""
        for site in sites:
            self._starts.pop(site, None)
            self._values.pop(site, None)


class _SiteRows(_PerSite):
    """Sums that still change (open base windows, running rollup sums): a step reads and replaces its own
    sites' rows (filtering and rebuilding one frame of every site's rows at every step cost a live step of 5
    sites of 1,000 nearly half its time)."""

    def put(self, rows: pd.DataFrame, sites: Iterable[str] | None = None) -> None:
        """Replace the rows of ``sites`` (default: those in ``rows``) with ``rows`` (indexed (site, start_ms));
        a site of ``sites`` without any in ``rows`` is left with none."""
        if sites is not None:
            self.drop(set(sites))
        if rows.empty:
            return
        names = rows.index.get_level_values("site").to_numpy(object)
        starts = rows.index.get_level_values("start_ms").to_numpy(np.int64)
        codes, uniques = pd.factorize(names)
        order = np.lexsort((starts, codes))
        bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
        values = (rows if rows.columns.equals(self._columns) else rows.reindex(columns=self._columns))
        values = values.to_numpy(np.float64)[order]
        starts = starts[order]
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            site = str(uniques[codes[order[lo]]])
            self._starts[site], self._values[site] = starts[lo:hi], values[lo:hi]

    def add(self, rows: pd.DataFrame) -> None:
        """Add ``rows`` (one per (site, start_ms)) to the sums of the same windows, as rows of their own for
        windows not held yet; a flow NaN on both sides stays NaN."""
        if rows.empty:
            return
        sites = rows.index.get_level_values("site").unique()
        held = self.frame(sites)
        self.put(rollup_flows(pd.concat([held, rows])) if not held.empty else rows)


class _CompleteSums(_PerSite):
    """The sums of complete windows of one length (days), per site, oldest first: appended once a window
    completes, never changed."""

    def __init__(self) -> None:
        super().__init__()
        self._annual: dict[str, tuple[int, np.ndarray]] = {}  # site → (since, sums from then on), until it changes

    def add(self, rows: pd.DataFrame) -> None:
        """Append complete windows (indexed (site, start_ms), flow columns), each newer than the site's others."""
        sites = rows.index.get_level_values("site").to_numpy(object)
        starts = rows.index.get_level_values("start_ms").to_numpy(np.int64)
        codes, names = pd.factorize(sites)
        order = np.lexsort((starts, codes))
        bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
        values = rows.reindex(columns=self._columns).to_numpy(np.float64)[order]
        starts = starts[order]
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            site = str(names[codes[order[lo]]])
            if site in self._starts:
                self._starts[site] = np.concatenate([self._starts[site], starts[lo:hi]])
                self._values[site] = np.concatenate([self._values[site], values[lo:hi]])
            else:
                self._starts[site], self._values[site] = starts[lo:hi], values[lo:hi]
            self._annual.pop(site, None)

    def forget_before(self, until: dict[str, int], ends_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """Drop each site's windows that ended at or before ``until[site]`` (``ends_of``: starts → ends)."""
        for site, limit in until.items():
            starts = self._starts.get(site)
            if starts is None:
                continue
            keep = ends_of(starts) > limit
            if not keep.all():
                self._starts[site], self._values[site] = starts[keep], self._values[site][keep]
                self._annual.pop(site, None)

    def newest(self, site: str) -> int | None:
        """The start of ``site``'s newest window (None: it has none)."""
        starts = self._starts.get(site)
        return int(starts[-1]) if starts is not None and len(starts) else None

    def encode(self, site: str, after: int | None = None) -> dict[str, object] | None:
        """``site``'s windows (those that start after ``after`` if given; None if none) for a checkpoint: column
        names, starts and sums as raw little-endian arrays (a copy of the memory each, where coding them as a
        frame cost a checkpoint of a year of days 7 ms a site)."""
        starts = self._starts.get(site)
        if starts is None:
            return None
        values = self._values[site]
        if after is not None:
            newer = starts > after
            if not newer.any():
                return None
            starts, values = starts[newer], values[newer]
        return {"columns": [str(c) for c in self._columns], "starts": starts.astype("<i8").tobytes(),
                "sums": np.ascontiguousarray(values, dtype="<f8").tobytes()}

    def _decode(self, obj: dict[str, object] | None) -> tuple[np.ndarray, np.ndarray]:
        """Starts and sums (in this version's flow columns) of an :meth:`encode` object (none if None)."""
        if obj is None:
            return np.empty(0, np.int64), np.empty((0, len(self._columns)))
        columns = pd.Index([str(c) for c in obj["columns"]])  # type: ignore[union-attr]
        starts = np.frombuffer(obj["starts"], dtype="<i8").astype(np.int64)  # type: ignore[arg-type]
        sums = np.frombuffer(obj["sums"], dtype="<f8").reshape(len(starts), len(columns)).astype(np.float64)  # type: ignore[arg-type]
        if not columns.equals(self._columns):  # written by a version with other flows: theirs by name
            sums = pd.DataFrame(sums, columns=columns).reindex(columns=self._columns).to_numpy(np.float64)
        return starts, sums

    def restore(self, site: str, obj: dict[str, object] | None, saved: dict[str, object] | None = None,
                through: int | None = None) -> None:
        """Replace ``site``'s windows with those of :meth:`encode` (none if ``obj`` is None), after the windows
        of ``saved`` (another :meth:`encode` object) that start at or before ``through``."""
        self.drop({site})
        starts, sums = self._decode(obj)
        if saved is not None and through is not None:
            earlier, earlier_sums = self._decode(saved)
            keep = (earlier <= through) & (earlier < (starts[0] if len(starts) else np.iinfo(np.int64).max))
            starts, sums = np.concatenate([earlier[keep], starts]), np.concatenate([earlier_sums[keep], sums])
        if len(starts):
            self._starts[site], self._values[site] = starts, sums

    def drop(self, sites: set[str]) -> None:
        """Forget ``sites``."""
        super().drop(sites)
        for site in sites:
            self._annual.pop(site, None)

    def sums_since(self, since: dict[str, int]) -> pd.DataFrame:
        """Per site of ``since`` holding windows that start at or after ``since[site]``: their sum (NaN where
        every one is NaN, as :func:`~dcpue.analytics.pue.rollup_flows` sums), indexed (site, since). Kept until
        the site's windows or its ``since`` change: the annual figure asks at every step, a day changes once."""
        sites, starts, sums = [], [], []
        for site, start in since.items():
            if site not in self._starts:
                continue
            cached = self._annual.get(site)
            if cached is None or cached[0] != start:
                chosen = self._values[site][self._starts[site] >= start]
                if not len(chosen):
                    continue
                total = np.where(np.isnan(chosen), 0.0, chosen).sum(axis=0)
                total[np.isnan(chosen).all(axis=0)] = np.nan
                cached = self._annual[site] = (start, total)
            sites.append(site)
            starts.append(start)
            sums.append(cached[1])
        if not sites:
            return pd.DataFrame()
        index = pd.MultiIndex.from_arrays([np.array(sites, dtype=object), np.array(starts, dtype=np.int64)],
                                          names=["site", "start_ms"])
        return pd.DataFrame(np.stack(sums), index=index, columns=self._columns)


def _buffer_frame(pid: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> pd.DataFrame:
    """Buffered readings: each one's points-table row, time, value and quality."""
    return pd.DataFrame({"pid": pid, "ts": ts, "value": value, "quality": quality})


def _empty_buffer() -> pd.DataFrame:
    return _buffer_frame(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64),
                         np.empty(0, np.int64))


def _named_buffer(engine: StreamEngine, sites: set[str]) -> pd.DataFrame:
    """The buffered readings of ``sites`` as a readings frame, in the order buffered: what a checkpoint stores.
    Site and point names are categoricals over the points table's names (codes, not a string per reading)."""
    rows = np.flatnonzero(engine._site_mask(sites)[engine._buffer_site_codes()])
    buf = engine._buffer
    pid = buf["pid"].to_numpy(np.int64)[rows]
    index = engine.points.index
    names = {level: pd.Categorical.from_codes(index.codes[index.names.index(level)][pid],
                                              categories=index.levels[index.names.index(level)])
             for level in ("site", "point")}
    return pd.DataFrame({**names, "ts": buf["ts"].to_numpy(np.int64)[rows],
                         "value": buf["value"].to_numpy(np.float64)[rows],
                         "quality": buf["quality"].to_numpy(np.int64)[rows]})


def snapshot_sites(engine: StreamEngine, sites: set[str] | list[str],
                   saved_through: Mapping[str, int] | None = None) -> dict[str, bytes]:
    """Everything the engine knows about each of ``sites``, encoded per site; see :func:`restore_site`.

    A site in ``saved_through`` has its complete windows up to that start saved apart (a record of
    :func:`snapshot_complete`): they are left out, and the mark is kept, so restoring needs that record.
    Each state frame is encoded once for all of ``sites`` (not filtered and encoded once per site), so
    checkpointing many sites after every worker step stays cheap.
    """
    import msgspec

    wanted = set(sites)
    engine._merge_pending()

    empty = {"columns": [], "rows": 0, "coded": [], "blocks": []}
    buffers = _frames_to_objs(_named_buffer(engine, wanted), wanted)
    opened = _frames_to_objs(engine._open.frame(wanted), wanted)
    accs = {label: _frames_to_objs(acc.frame(wanted), wanted) for label, acc in engine._acc.items()}
    seen = {site: lo + np.flatnonzero(engine._point_last[lo:hi] > NEVER)
            for site in wanted for lo, hi in [engine._site_rows.get(site, (0, 0))]}
    names = level_at(engine.points.index, "point", np.concatenate([np.empty(0, np.int64), *seen.values()])).tolist()
    point_last: dict[str, dict[str, int]] = {}
    at = 0
    for site, rows in seen.items():  # the names were looked up once for every site
        if len(rows):
            point_last[site] = dict(zip(names[at:at + len(rows)], engine._point_last[rows].tolist(), strict=True))
        at += len(rows)
    out = {}
    marks = saved_through or {}
    for site in wanted:
        after = marks.get(site)
        state = {
            "v": STATE_VERSION,
            "site": site,
            "max_ts": engine._max_ts.get(site),
            "final_until": engine._final_until.get(site),
            "point_last": point_last.get(site, {}),
            "buffer": buffers.get(site, empty),
            "open": opened.get(site, empty),
            "acc": {label: parts.get(site, empty) for label, parts in accs.items()},
            "complete": {label: sums.encode(site, after) for label, sums in engine._complete.items()},
            "complete_through": after,
        }
        code = engine._site_code.get(site)
        if code is not None:  # what the buffer of energy-balance points does not tell (optional: newer than v2)
            state["first_ts"] = int(engine._first_ts[code]) if engine._first_ts[code] < NONE_YET else None
            state["sensors_seen"] = bool(engine._sensor_seen[code])
        out[site] = msgspec.msgpack.encode(state)
    return out


def snapshot_complete(engine: StreamEngine, sites: set[str] | list[str]) -> dict[str, tuple[int, bytes]]:
    """Per site of ``sites`` holding complete windows (the days of the annual figure): the start of its newest
    and a record of them all, for :func:`restore_site` with a checkpoint of :func:`snapshot_sites` whose
    ``saved_through`` mark is at or before that start. Written apart, when a day completes, a year of days
    is not carried by every checkpoint."""
    import msgspec

    out = {}
    for site in sites:
        newest = engine.newest_complete(site)
        if newest is not None:
            out[site] = (newest, msgspec.msgpack.encode({
                "v": STATE_VERSION, "kind": "complete", "site": site, "through": newest,
                "complete": {label: sums.encode(site) for label, sums in engine._complete.items()}}))
    return out


class UnusableRecord(ValueError):
    """A record of complete windows (:func:`snapshot_complete`) that cannot be used: the checkpoint's other
    state still can."""


def _decode_complete(record: bytes | None, site: str) -> dict[str, object] | None:
    """The record of ``site``'s complete windows, checked whole (its arrays too) before anything uses it."""
    import msgspec

    if record is None:
        return None
    try:
        obj = msgspec.msgpack.decode(record)
        if not isinstance(obj, dict) or obj.get("kind") != "complete" or obj.get("v") not in _READABLE_VERSIONS:
            raise ValueError("not a record of complete windows")
        if obj["site"] != site:
            raise ValueError(f"a record of site {obj['site']!r}, not {site!r}")
        obj["through"] = int(obj["through"])
        if not isinstance(obj["complete"], dict):
            raise ValueError("no windows")
        for windows in obj["complete"].values():
            _CompleteSums()._decode(windows)
    except Exception as exc:  # noqa: BLE001 — whatever is wrong with it, the record is what cannot be used
        raise UnusableRecord(f"{type(exc).__name__}: {exc}") from exc
    return obj


def complete_gap(blob: bytes, complete: bytes | None) -> str | None:
    """Why the complete windows a checkpoint left out are not those of ``complete`` (None: they are, or it left
    none out); :class:`UnusableRecord` if ``complete`` cannot be read. :func:`restore_site` restores the rest;
    the annual figure then lacks the missing days.

    The record a checkpoint names holds exactly the windows up to its mark: a record newer than the mark
    has replaced it (a writer that did not know the checkpoint) and may lack old windows forgotten since.
    """
    import msgspec

    state = msgspec.msgpack.decode(blob)
    mark = state.get("complete_through") if isinstance(state, dict) else None
    if mark is None:
        return None
    record = _decode_complete(complete, state["site"])
    if record is None:
        return f"its complete windows up to {mark} were saved apart, and that record is missing"
    if record["through"] < mark:
        return f"its complete windows up to {mark} were saved apart, and that record reaches {record['through']} only"
    if record["through"] > mark:
        return (f"its complete windows up to {mark} were saved apart, and that record was replaced by one up to "
                f"{record['through']}, which may lack the oldest of them")
    return None


def restore_site(engine: StreamEngine, blob: bytes, complete: bytes | None = None) -> str:
    """Load a site's state from :func:`snapshot_sites` into ``engine`` (replacing what it had); returns the site.

    ``complete``: the site's record of :func:`snapshot_complete` that a checkpoint leaving its complete windows
    out names; its windows after the checkpoint's mark are not taken (the checkpoint has its own, or the replay
    after it makes them again). :class:`UnusableRecord` if it cannot be read, before anything is changed.
    """
    import msgspec

    state = msgspec.msgpack.decode(blob)
    if not isinstance(state, dict) or state.get("v") not in _READABLE_VERSIONS or state.get("kind") is not None:
        raise ValueError(f"unsupported engine state (version {state.get('v') if isinstance(state, dict) else '?'})")
    site = state["site"]
    mark = state.get("complete_through")
    saved = _decode_complete(complete, site) if mark is not None else None
    engine.drop_sites({site})  # what the engine held of the site goes, also where the checkpoint has nothing
    if state["max_ts"] is not None:
        engine._max_ts[site] = int(state["max_ts"])
    if state["final_until"] is not None:
        engine._final_until[site] = int(state["final_until"])
    code = engine._site_code.get(site)  # None: a site gone from the registry, whose readings are not integrated
    if code is not None:
        first = state.get("first_ts")
        engine._first_ts[code] = int(first) if first is not None else NONE_YET
        engine._sensor_seen[code] = bool(state.get("sensors_seen", False))
    if state["point_last"]:
        points = list(state["point_last"])
        pids = point_ids(engine.points, pd.DataFrame({"site": [site] * len(points), "point": points}))
        stamps = np.array([int(state["point_last"][p]) for p in points], dtype=np.int64)
        engine._point_last[pids[pids >= 0]] = stamps[pids >= 0]  # a point gone from the registry waits for nothing
    buffer = _obj_to_frame(state["buffer"], None)
    if not buffer.empty:
        buffer = readings_frame(buffer["site"], buffer["point"], buffer["ts"], buffer["value"], buffer["quality"])
        pid = point_ids(engine.points, buffer)
        if "first_ts" not in state and code is not None and (pid >= 0).any():
            # a checkpoint from before sensors were left out of the buffer: its buffer holds them
            sensor = (pid >= 0) & ~engine._is_flow_pid[pid]
            engine._first_ts[code] = int(buffer["ts"].to_numpy(np.int64)[pid >= 0].min())
            engine._sensor_seen[code] = bool((sensor & usable_quality(buffer["quality"].to_numpy(np.int64))).any())
        known = engine._is_flow_pid[pid]  # a point gone from the registry is not integrated any more, a sensor never
        engine._buffer = pd.concat([engine._buffer, _buffer_frame(
            pid[known], buffer["ts"].to_numpy(np.int64)[known], buffer["value"].to_numpy(np.float64)[known],
            buffer["quality"].to_numpy(np.int64)[known])], ignore_index=True)

    def rows(obj: dict[str, object]) -> pd.DataFrame:
        """The checkpoint's rows of the site (what the engine held of it was dropped above)."""
        incoming = _obj_to_frame(obj, ["site", "start_ms"])
        if not incoming.empty:
            incoming.index = incoming.index.set_levels(incoming.index.levels[1].astype(np.int64), level=1)
        return incoming

    engine._open.put(rows(state["open"]))
    for label in engine.ROLLUPS:
        if label in engine._complete:
            engine._complete[label].restore(site, state.get("complete", {}).get(label),
                                            saved["complete"].get(label) if saved else None, mark)
        engine._acc[label].put(rows(state["acc"][label]))
    # before version 3 every sum was a running one: the next step moves the complete ones out
    engine._prune_due.add(site)
    return site
