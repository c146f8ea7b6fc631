"""Metrics-topic message sizes (one message per site per minute) and group rows per minute, 12-site demo."""
import statistics as st

import pandas as pd
from dcpue.analytics.groups import GroupAggregator
from dcpue.analytics.pue import MetricParams
from dcpue.analytics.stream import StreamEngine
from dcpue.ingest.simulator import FleetSimulator, generate_fleet

from dcpue.settings import EngineSettings
from dcpue.wire import encode_windows

registry = generate_fleet(12, seed=7)
es = EngineSettings()
start = int(pd.Timestamp("2025-03-01", tz=es.timezone).value // 1_000_000)
sim = FleetSimulator(registry, seed=7, start_ms=start, faults=True); sim.setup()
engine = StreamEngine(registry, es, emit_groups=False)
groups = GroupAggregator(registry.sites_table, MetricParams(es.target_pue, es.coverage_threshold, es.hierarchy_tolerance))
sizes, gsizes, grows = [], [], []
for k in range(1, 181):
    engine.add(pd.concat([f for _, f in sim.poll(start + k * 60_000)], ignore_index=True))
    rows = engine.advance()
    g = groups.add(rows)
    if k > 60:
        sizes += [len(encode_windows(part)) for _, part in rows.groupby("id")]
        gsizes += [len(encode_windows(part)) for _, part in g.groupby("id")]
        grows.append(len(g))
print("site message bytes (one site, one minute): min", min(sizes), "median", int(st.median(sizes)), "max", max(sizes))
print("group message bytes: min", min(gsizes), "median", int(st.median(gsizes)), "max", max(gsizes))
print("group rows per minute (all 12 sites' rows in one batch): min", min(grows), "median", st.median(grows), "max", max(grows))
