"""Checkpoint sizes of the analytics engine and the group aggregator for the 12-site demo fleet."""
import statistics as st
import sys
import time

import lz4.frame
import pandas as pd
from dcpue.analytics.groups import GroupAggregator
from dcpue.analytics.pue import MetricParams
from dcpue.analytics.stream import StreamEngine, snapshot_sites
from dcpue.ingest.simulator import FleetSimulator, generate_fleet

from dcpue.runtime.worker import Checkpoint
from dcpue.settings import EngineSettings

days = float(sys.argv[1]) if len(sys.argv) > 1 else 1
faults = (sys.argv[2] != "nofaults") if len(sys.argv) > 2 else True
silent = sys.argv[3] if len(sys.argv) > 3 else None   # a site that never reports (worst case for the aggregator)
registry = generate_fleet(12, seed=7)
sites = [s.id for s in registry.sites]
es = EngineSettings()
start = int(pd.Timestamp("2025-03-01", tz=es.timezone).value // 1_000_000)
sim = FleetSimulator(registry, seed=7, start_ms=start, sample_interval_s=60, faults=faults)
sim.setup()
engine = StreamEngine(registry, es, emit_groups=False)     # a worker: site rows only
groups = GroupAggregator(registry.sites_table, MetricParams(es.target_pue, es.coverage_threshold, es.hierarchy_tolerance))
rows_by_window = {}
minutes = int(days * 1440)
hourly = []   # (hour, per-site checkpoint bytes, group snapshot bytes, held rows)
t0 = time.time()
for k in range(1, minutes + 1):
    now = start + k * 60_000
    frames = [f for s, f in sim.poll(now) if s != silent]
    if frames:
        engine.add(pd.concat(frames, ignore_index=True))
    rows = engine.advance()
    if k > 60:   # count emitted rows once warmed up
        for w, n in rows["window"].value_counts().items():
            rows_by_window[w] = rows_by_window.get(w, 0) + int(n)
    groups.add(rows)
    if k % 60 == 0:
        blobs = snapshot_sites(engine, [s for s in sites if s != silent])
        cps = {s: len(Checkpoint(3, 123456789, b).encode()) for s, b in blobs.items()}
        g = groups.snapshot()
        hourly.append((k // 60, cps, len(g), groups.held_rows, len(lz4.frame.compress(b"".join(Checkpoint(3, 123456789, b).encode() for b in blobs.values())))))
print(f"simulated {days} d in {time.time() - t0:.0f} s; faults={faults} silent={silent}")
site_minutes = (minutes - 60) * (len(sites) - (1 if silent else 0))
print("rows per site-minute:", {w: round(n / site_minutes, 3) for w, n in sorted(rows_by_window.items())},
      "total", round(sum(rows_by_window.values()) / site_minutes, 2))
for h, cps, g, held, lz in hourly[:: max(1, len(hourly) // 12)] + [hourly[-1]]:
    v = list(cps.values())
    print(f"h{h:4d} site checkpoint bytes min {min(v)} median {int(st.median(v))} max {max(v)} sum {sum(v)} lz4(all) {lz} | group snapshot {g} B, held rows {held}")
allv = [x for _, cps, *_ in hourly for x in cps.values()]
print("over all hours: site checkpoint min", min(allv), "median", int(st.median(allv)), "max", max(allv))
gs = [g for _, _, g, _, _ in hourly]; hs = [h for _, _, _, h, _ in hourly]
print("group snapshot bytes: min", min(gs), "median", int(st.median(gs)), "max", max(gs), "; held rows min", min(hs), "median", int(st.median(hs)), "max", max(hs))
last = hourly[-1]
print("last: per site", last[1])
acc = {l: len(a) for l, a in engine._acc.items()}
complete = {l: len(c) for l, c in engine._complete.items()}   # complete days, apart from the running sums
print("engine acc rows:", acc, "complete:", complete, "open", len(engine._open), "buffer", len(engine._buffer))
print("group recent rows per window:", {l: len(f) for l, f in groups._recent.items()})
