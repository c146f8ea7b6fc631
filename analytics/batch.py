"""Batch PUE over a whole exported meter history (the ``dcpue pue`` command).

The same pure functions as the streaming engine, cut directly at the requested windows:
point integrals between window edges → flows → metrics, plus energy-weighted cluster and
fleet rows. Exports from a BMS are often sampled every 5–15 minutes, so the gap limit is
raised to 1.5 × the typical sampling interval of each file when that is longer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcpue.analytics.energy import EnergyParams, point_windows
from dcpue.analytics.pue import MetricParams, group_metrics, site_flows, window_metrics
from dcpue.analytics.stream import FLEET_ID, window_ends, window_starts
from dcpue.registry import Registry
from dcpue.results import WINDOWS, Scope, conform_windows, empty_windows
from dcpue.settings import EngineSettings


def typical_interval_s(readings: pd.DataFrame) -> float:
    """Median spacing [s] between consecutive samples of the same point (0 when unknown)."""
    if len(readings) < 2:
        return 0.0
    ordered = readings.sort_values(["site", "point", "ts"])
    same = (ordered["site"].to_numpy()[1:] == ordered["site"].to_numpy()[:-1]) & (
        ordered["point"].to_numpy()[1:] == ordered["point"].to_numpy()[:-1])
    steps = np.diff(ordered["ts"].to_numpy(np.int64))[same]
    steps = steps[steps > 0]
    return float(np.median(steps)) / 1000.0 if len(steps) else 0.0


def batch_windows(readings: pd.DataFrame, registry: Registry, window: str,
                  settings: EngineSettings = EngineSettings()) -> pd.DataFrame:
    """Window results for every site, cluster and the fleet over the span of ``readings``.

    ``window`` is one of :data:`dcpue.results.WINDOWS`. Windows at the ends of the data that
    are only partly covered come out ``incomplete``, as they should.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r} (valid: {', '.join(WINDOWS)})")
    if readings.empty:
        return empty_windows()
    max_gap_s = max(settings.max_gap_s, 1.5 * typical_interval_s(readings))
    tz = settings.timezone
    first = window_starts(np.array([readings["ts"].min()]), window, tz)[0]
    # a sample exactly on a boundary closes the window before it and opens nothing
    last_end = window_ends(window_starts(np.array([readings["ts"].max() - 1]), window, tz), window, tz)[0]
    edges = [first]
    while edges[-1] < last_end:
        edges.append(int(window_ends(np.array([edges[-1]]), window, tz)[0]))
    edges_ms = np.asarray(edges, dtype=np.int64)
    pw = point_windows(readings, registry.points_table, edges_ms, EnergyParams(max_gap_s, settings.spike_tolerance))
    flows = site_flows(pw, registry.points_table)
    if flows.empty:
        return empty_windows()
    starts = flows.index.get_level_values("start_ms").to_numpy(np.int64)
    ends = window_ends(starts, window, tz)
    params = MetricParams(settings.target_pue, settings.coverage_threshold, settings.hierarchy_tolerance)
    sites = window_metrics(flows, registry.sites_table, window, ends, (ends - starts) / 1000.0, params)
    sites["final"] = True
    clusters = registry.sites_table["cluster"]
    groups = [
        group_metrics(sites, clusters[clusters != ""], Scope.CLUSTER, params),
        group_metrics(sites, pd.Series(FLEET_ID, index=registry.sites_table.index), Scope.FLEET, params),
    ]
    return conform_windows(pd.concat([sites, *[g for g in groups if not g.empty]], ignore_index=True))
