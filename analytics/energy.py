"""Energy per point and window: counters differenced, power integrated, gaps and faults kept out.

The core is :func:`point_windows`, vectorized over every (site, point) series at once:

* **counters** (``energy`` [kWh], ``water_volume`` [L]): the energy of an interval is the
  counter's increase. A decrease is a rollover when the point declares ``rollover`` and the
  previous value was within 10 % of it; otherwise it is a reset or meter replacement and the
  interval is dropped (never booked as negative or huge energy). An increase above
  ``rated_kw × Δt × spike_tolerance`` is rejected as a spike. Intervals longer than
  ``max_gap_s`` are still booked (the counter proves the energy was used) but count as uncovered.
* **power and other instantaneous quantities** [kW, °C, …]: trapezoidal integration between
  consecutive samples not further apart than ``max_gap_s``; longer gaps are neither integrated
  nor covered. Negative power or power above ``rated_kw × spike_tolerance`` makes a sample invalid.

Interval energy is spread over windows in proportion to time: a cumulative energy curve is
built per series and interpolated at the window edges, so windows of any length can be cut
from the same samples and their sums are consistent.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from dcpue.model import Quality, Quantity

T = TypeVar("T")
MS_PER_H = 3_600_000.0
ROLLOVER_NEAR = 0.9  # a decrease counts as rollover only if the previous value was above 90 % of the maximum


@dataclass(frozen=True, slots=True)
class EnergyParams:
    """Thresholds of :func:`point_windows` (see :class:`dcpue.settings.EngineSettings`)."""

    max_gap_s: float = 300.0
    spike_tolerance: float = 1.5


def point_windows(
    readings: pd.DataFrame,
    points: pd.DataFrame,
    edges_ms: np.ndarray,
    params: EnergyParams = EnergyParams(),
    names: bool = True,
) -> pd.DataFrame:
    """Integrate every series of ``readings`` over the windows between consecutive ``edges_ms``.

    ``readings``: readings DataFrame (site, point, ts [ms], value [point unit], quality).
    ``points``: :attr:`dcpue.registry.Registry.points_table` (indexed by site, point); readings
    of unknown points are ignored. Returns one row per (site, point, window) with
    ``integral`` (counters: increase [kWh or L]; others: time integral [kWh for power, °C·h …]),
    ``covered_s`` [s] of valid intervals no longer than ``max_gap_s`` (data quality), ``booked_s``
    [s] whose energy is in ``integral`` (counters also book long intervals), ``samples`` in the
    window, and counts of
    counter ``resets`` and rejected ``spikes`` whose interval ends in the window.

    The result also carries each point's ``pid`` (:func:`point_ids`); readings that already carry it skip
    looking the names up. ``names=False`` leaves the ``site`` and ``point`` columns out, for callers that
    go on by ``pid`` (:func:`~dcpue.analytics.pue.site_flows` does).
    """
    columns = point_window_columns(readings, points, edges_ms, params, names)
    if columns is None:
        return _empty_point_windows(names)
    return pd.DataFrame(columns, columns=[*(["site", "point"] if names else []), *_WINDOW_COLUMNS, "pid"])


_WINDOW_COLUMNS = ("start_ms", "integral", "covered_s", "booked_s", "samples", "resets", "spikes")


def point_window_columns(readings: pd.DataFrame, points: pd.DataFrame, edges_ms: np.ndarray,
                         params: EnergyParams = EnergyParams(), names: bool = True) -> dict[str, np.ndarray] | None:
    """:func:`point_windows` as a dict of column arrays (``None`` for no rows): for callers that filter and
    aggregate them further, without building a DataFrame of one row per (point, window) and copying it."""
    edges = np.asarray(edges_ms, dtype=np.int64)
    if len(edges) < 2 or readings.empty:
        return None
    if "pid" not in readings.columns:
        readings = readings.assign(pid=point_ids(points, readings))
    prepared = _prepare(readings, points)
    if prepared is None:
        return None
    series_id, ts, value, is_counter, rated, rollover, is_power, pid = prepared

    first = np.ones(len(ts), dtype=bool)
    first[1:] = series_id[1:] != series_id[:-1]
    prev_ts = np.roll(ts, 1)
    prev_value = np.roll(value, 1)
    dt_ms = (ts - prev_ts).astype(np.float64)
    dt_h = dt_ms / MS_PER_H
    short = (dt_ms > 0) & (dt_ms <= params.max_gap_s * 1000.0) & ~first

    # instantaneous quantities: a sample is valid unless it is an impossible power value
    sample_ok = ~(is_power & ((value < 0) | (value > rated * params.spike_tolerance)))  # NaN rated: no bound
    prev_ok = np.roll(sample_ok, 1)
    spikes = is_power & ~sample_ok & ~first

    # counters: increase, rollover, reset, spike
    delta = value - prev_value
    wrapped = (delta < 0) & (prev_value >= ROLLOVER_NEAR * rollover)  # NaN rollover compares False
    delta = np.where(wrapped, rollover - prev_value + value, delta)
    counter_reset = is_counter & ~first & (delta < 0)
    counter_spike = is_counter & ~first & (delta >= 0) & (delta > rated * dt_h * params.spike_tolerance)
    counter_ok = is_counter & ~first & (dt_ms > 0) & ~counter_reset & ~counter_spike

    trapezoid = 0.5 * (value + prev_value) * dt_h
    inst_ok = ~is_counter & short & sample_ok & prev_ok
    interval_energy = np.where(counter_ok, delta, np.where(inst_ok, trapezoid, 0.0))
    covered = np.where((counter_ok & short) | inst_ok, dt_ms / 1000.0, 0.0)
    booked = np.where(counter_ok | inst_ok, dt_ms / 1000.0, 0.0)
    interval_energy[first] = 0.0
    covered[first] = 0.0
    booked[first] = 0.0

    n_series = int(series_id[-1]) + 1
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(ts))  # exclusive
    e_at, c_at, b_at = _interp_at_edges(ts, series_id, (interval_energy, covered, booked), starts, ends, edges)

    n_windows = len(edges) - 1
    integral = np.diff(e_at, axis=1)
    covered_s = np.diff(c_at, axis=1)
    booked_s = np.diff(b_at, axis=1)

    window_of_sample = np.searchsorted(edges, ts, side="right") - 1
    in_range = (window_of_sample >= 0) & (window_of_sample < n_windows)
    flat = series_id[in_range] * n_windows + window_of_sample[in_range]
    size = n_series * n_windows
    samples = np.bincount(flat, minlength=size)
    resets = np.bincount(flat, weights=counter_reset[in_range], minlength=size)
    spike_count = np.bincount(flat, weights=(counter_spike | spikes)[in_range], minlength=size)

    series_pid = pid[starts]
    named = {"site": np.repeat(level_at(points.index, "site", series_pid), n_windows),
             "point": np.repeat(level_at(points.index, "point", series_pid), n_windows)} if names else {}
    return {
        **named,
        "start_ms": np.tile(edges[:-1], n_series),
        "window": np.tile(np.arange(n_windows, dtype=np.int64), n_series),  # position of start_ms among the edges
        "integral": integral.ravel(),
        "covered_s": covered_s.ravel(),
        "booked_s": booked_s.ravel(),
        "samples": samples.astype(np.int64),
        "resets": resets.astype(np.int64),
        "spikes": spike_count.astype(np.int64),
        "pid": np.repeat(series_pid, n_windows),
    }


def _empty_point_windows(names: bool = True) -> pd.DataFrame:
    named = {"site": pd.Series(dtype=object), "point": pd.Series(dtype=object)} if names else {}
    return pd.DataFrame(
        {
            **named,
            "start_ms": pd.Series(dtype=np.int64),
            "integral": pd.Series(dtype=np.float64),
            "covered_s": pd.Series(dtype=np.float64),
            "booked_s": pd.Series(dtype=np.float64),
            "samples": pd.Series(dtype=np.int64),
            "resets": pd.Series(dtype=np.int64),
            "spikes": pd.Series(dtype=np.int64),
            "pid": pd.Series(dtype=np.int64),
        }
    )


_BAD = int(Quality.BAD | Quality.COLLECTOR_DOWN)
_Prepared = tuple  # (series, ts, value, is_counter, rated_kw, rollover, is_power, pid), one entry per reading


def usable_quality(quality: np.ndarray) -> np.ndarray:
    """Whether each reading's ``quality`` flags let it be integrated (neither BAD nor COLLECTOR_DOWN)."""
    return (np.asarray(quality) & _BAD) == 0


def point_ids(points: pd.DataFrame, readings: pd.DataFrame) -> np.ndarray:
    """Each reading's row in ``points`` (a ``points_table``, sorted by site and point), -1 for unknown points.

    A ``pid`` column with these lets :func:`point_windows` work on integers instead of joining strings.
    """
    if readings.empty:
        return np.empty(0, dtype=np.int64)
    keys = pd.MultiIndex.from_arrays([readings["site"].to_numpy(object), readings["point"].to_numpy(object)])
    return np.asarray(points.index.get_indexer(keys), dtype=np.int64)


def site_rows(points: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Each site's run of rows ``[lo, hi)`` in a points table (sorted by site, so a site's points are one run)."""
    sites = points.index.get_level_values("site").to_numpy(object)
    if not len(sites):
        return {}
    starts = np.flatnonzero(np.r_[True, sites[1:] != sites[:-1]])
    ends = np.r_[starts[1:], len(sites)]
    return {str(sites[lo]): (lo, hi) for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)}


class PointIds:
    """:func:`point_ids` for one site's batch of point names at a time, as a consumer decodes them.

    A collector sends the same points in the same order at every poll, so each site's last list of names
    and its rows are kept: a batch like the last one costs one comparison of names, not a lookup of each.
    """

    def __init__(self, points: pd.DataFrame) -> None:
        names = points.index.get_level_values("point").to_numpy(object)
        self._runs = {site: (lo, pd.Index(names[lo:hi], dtype=object)) for site, (lo, hi) in site_rows(points).items()}
        self._last: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}

    def __call__(self, site: str, points: np.ndarray | Sequence[str]) -> np.ndarray:
        """Each of ``points``' row in the points table, -1 for points (or a site) it does not hold."""
        run = self._runs.get(site)
        if run is None:  # an unknown site: nothing kept for it (a bad producer could send any number)
            return np.full(len(points), -1, dtype=np.int64)
        names = points if isinstance(points, tuple) else tuple(points)  # kept as given: a tuple cannot change
        last = self._last.get(site)
        if last is not None and last[0] == names:  # tuples of str: compared in C, not element by element in numpy
            return last[1]
        at = run[1].get_indexer(np.asarray(names, dtype=object))
        ids = np.where(at >= 0, run[0] + at, -1).astype(np.int64)
        ids.flags.writeable = False  # handed out again for the next batch like this one
        self._last[site] = (names, ids)
        return ids


def level_at(index: pd.MultiIndex, name: str, rows: np.ndarray) -> np.ndarray:
    """The ``name`` level of ``index`` at positions ``rows``, as Python objects: through the level's codes, so
    only the level's distinct values are converted (not every row of a 100,000-point table at every step)."""
    level = index.names.index(name)
    return index.levels[level].to_numpy(object)[index.codes[level][rows]]


def _prepare(readings: pd.DataFrame, points: pd.DataFrame) -> _Prepared | None:
    """Drop BAD readings and those of unknown points, sort by (site, point, ts) (the points table's order), keep
    the last reading received per (site, point, ts) (a replay or a correction), convert to canonical units."""
    pid = readings["pid"].to_numpy(np.int64)
    ts = readings["ts"].to_numpy(np.int64)
    value = readings["value"].to_numpy(np.float64)
    keep = usable_quality(readings["quality"].to_numpy()) & (pid >= 0)
    if not keep.all():  # copies of every column only where some reading goes
        pid, ts, value = pid[keep], ts[keep], value[keep]
    if not len(pid):
        return None
    order = np.lexsort((ts, pid))  # stable: among equal (point, ts) the order received
    pid, ts = pid[order], ts[order]
    last = np.ones(len(pid), dtype=bool)  # a repeated (site, point, ts): the last one received wins
    last[:-1] = (pid[:-1] != pid[1:]) | (ts[:-1] != ts[1:])
    if not last.all():
        pid, ts, order = pid[last], ts[last], order[last]
    value = value[order]
    first = np.ones(len(pid), dtype=bool)
    first[1:] = pid[1:] != pid[:-1]
    series = np.cumsum(first) - 1
    factor, is_counter, rated_kw, rollover, is_power = _point_columns(points)
    return series, ts, value * factor[pid], is_counter[pid], rated_kw[pid], rollover[pid], is_power[pid], pid


PerTableCache = dict[int, tuple[weakref.ref[pd.DataFrame], Any]]


def per_table(cache: PerTableCache, table: pd.DataFrame, build: Callable[[pd.DataFrame], T]) -> T:
    """``build(table)``, made once per table object and kept in ``cache`` while the table lives (a registry's
    points table is made once and read at every step; tests make many tables)."""
    cached = cache.get(id(table))
    if cached is not None and cached[0]() is table:
        return cached[1]
    made = build(table)
    for key in [k for k, (ref, _) in cache.items() if ref() is None]:  # tables gone
        del cache[key]
    cache[id(table)] = (weakref.ref(table), made)
    return made


_POINT_COLUMNS: PerTableCache = {}


def _point_columns(points: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """A points table's (factor, is_counter, rated_kw, rollover, is_power) arrays, made once per table (comparing
    its quantities cost a step a few ms)."""
    return per_table(_POINT_COLUMNS, points, lambda table: (
        table["factor"].to_numpy(np.float64), table["is_counter"].to_numpy(bool),
        table["rated_kw"].to_numpy(np.float64), table["rollover"].to_numpy(np.float64),
        table["quantity"].to_numpy(object) == Quantity.POWER.value))


def _interp_at_edges(ts: np.ndarray, series_id: np.ndarray, values: tuple[np.ndarray, ...], starts: np.ndarray,
                     ends: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Evaluate each series' cumulative curves of ``values`` (one array per curve, one value per sample at
    ``ts``, each series' sum restarting at its start), interpolated linearly between samples, at every edge,
    clamped at the series' ends; one (series × edge) array per curve.

    The first sample after an edge is the series' start plus its samples at or before the edge: counted per
    (series, edge) with one bincount over the samples, not a search per (series, edge). The running totals
    restart per series only where they are read (the same subtraction as restarting them everywhere).
    """
    n_series, n_edges = len(starts), len(edges)
    edges_before = np.searchsorted(edges, ts, side="left")  # edges < ts: a sample is at or before edge j ≥ this
    at_or_before = np.bincount(series_id * (n_edges + 1) + edges_before, minlength=n_series * (n_edges + 1))
    pos = starts[:, None] + np.cumsum(at_or_before.reshape(n_series, n_edges + 1)[:, :n_edges], axis=1)
    right = np.minimum(pos, (ends - 1)[:, None])  # pos ≥ start and pos - 1 ≤ end - 1 hold already
    left = np.maximum(pos - 1, starts[:, None])
    t_left, t_right = ts[left], ts[right]
    span_lr = (t_right - t_left).astype(np.float64)
    frac = np.zeros((n_series, n_edges))
    np.divide(edges[None, :] - t_left, span_lr, out=frac, where=span_lr > 0)
    np.clip(frac, 0.0, 1.0, out=frac)
    out = []
    for curve in values:
        total = np.cumsum(curve)
        before_series = (total[starts] - curve[starts])[:, None]  # the running total before each series
        at_left = total[left] - before_series
        out.append(at_left + frac * ((total[right] - before_series) - at_left))
    return out
