"""Which parts of a site's checkpoint take the bytes, and what one extra 1d accumulator row costs."""
import msgspec
import pandas as pd
from dcpue.analytics.stream import StreamEngine, snapshot_sites
from dcpue.ingest.simulator import FleetSimulator, generate_fleet

from dcpue.settings import EngineSettings

registry = generate_fleet(12, seed=7)
es = EngineSettings()
start = int(pd.Timestamp("2025-03-01", tz=es.timezone).value // 1_000_000)
sim = FleetSimulator(registry, seed=7, start_ms=start, faults=True); sim.setup()
engine = StreamEngine(registry, es, emit_groups=False)
for k in range(1, 121):
    engine.add(pd.concat([f for _, f in sim.poll(start + k * 60_000)], ignore_index=True)); engine.advance()
for site in ("ga-04", "as-07"):
    state = msgspec.msgpack.decode(snapshot_sites(engine, [site])[site])
    parts = {k: len(msgspec.msgpack.encode(v)) for k, v in state.items()}
    parts.update({f"acc.{l}": len(msgspec.msgpack.encode(v)) for l, v in state["acc"].items()})
    print(site, "total", len(msgspec.msgpack.encode(state)), parts, "buffer rows", len(state["buffer"]["data"][0]) if state["buffer"]["data"] else 0,
          "acc.1d columns", len(state["acc"]["1d"]["columns"]))
    one = state["acc"]["1d"]
    two = {"columns": one["columns"], "data": [col * 2 for col in one["data"]]}
    print("  one more 1d row adds", len(msgspec.msgpack.encode(two)) - len(msgspec.msgpack.encode(one)), "bytes")
