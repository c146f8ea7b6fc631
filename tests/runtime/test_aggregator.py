"""The group worker on the in-process bus: site rows in, group rows out, checkpoint and resume."""

from __future__ import annotations

import pandas as pd
import pytest

from dcpue.analytics.stream import StreamEngine
from dcpue.runtime.aggregator import CHUNK_BYTES, GroupWorker, chunk_state, unchunk_state
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.sinks import BusResultSink
from dcpue.runtime.store import FileStore
from dcpue.settings import Settings
from tests.factories import GUI_AN, T0, counter_series, power_series, registry, simple_site


def test_chunked_state_round_trips_and_a_torn_write_leaves_the_previous_slot():
    blob = bytes(range(256)) * (CHUNK_BYTES // 100)  # about 2.6 chunks
    first = chunk_state(blob, slot=0)
    assert len(first) == 4 and unchunk_state(first) == blob
    # the next checkpoint goes to slot 1; a crash after its chunks but before its manifest keeps slot 0
    second = chunk_state(blob[::-1], slot=1)
    torn = {**first, **{k: v for k, v in second.items() if k != "__groups__"}}
    assert unchunk_state(torn) == blob
    assert unchunk_state({**torn, "__groups__": second["__groups__"]}) == blob[::-1]
    assert unchunk_state({k: v for k, v in first.items() if not k.endswith("/1")}) is None  # a chunk lost


def test_group_worker_writes_group_rows_and_resumes_from_its_checkpoint(tmp_path):
    reg = registry(simple_site("a", cluster="c"), simple_site("b", cluster="c"), clusters=[{**GUI_AN, "id": "c"}])
    settings = Settings(bus={"commit_interval_s": 0})
    bus = InProcessBus()
    metrics = settings.bus.topics.metrics
    bus.consumer([metrics], "agg")
    publish = BusResultSink(bus.producer(), metrics)
    engine = StreamEngine(reg, emit_groups=False)
    readings = pd.concat([counter_series("a", "facility.main", 150, 130), power_series("a", "it.ups", 100, 130),
                          counter_series("b", "facility.main", 300, 130), power_series("b", "it.ups", 200, 130)])
    first_half = readings[readings["ts"] < T0 + 60 * 60_000]
    engine.add(first_half)
    publish.write_windows(engine.advance())

    store = FileStore(tmp_path / "g.sqlite").setup()
    worker = GroupWorker(reg, settings, bus.consumer([metrics], "agg"), store, state=store)
    while worker.step(timeout_s=0.05):
        pass
    assert bus.lag("agg", metrics) == 0
    held = worker.groups.held_rows
    assert held > 0

    # a new worker (a restart) resumes with the same member rows and completes the hour
    resumed = GroupWorker(reg, settings, bus.consumer([metrics], "agg"), store, state=store)
    assert resumed.groups.held_rows == held
    engine.add(readings[readings["ts"] >= T0 + 60 * 60_000])
    publish.write_windows(engine.advance())
    while resumed.step(timeout_s=0.05):
        pass
    hour = store.query_windows("cluster", "1h").set_index("start_ms").loc[T0]
    assert bool(hour["final"])
    assert hour["pue"] == pytest.approx((150 + 300) / (100 + 200))
    store.close()
