"""The collector runtime when its spool fills up during an outage: the drop is counted and reported at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.collect import CollectRuntime
from dcpue.settings import load_settings

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z


class Bus:
    """An in-process bus that can be made unreachable."""

    def __init__(self) -> None:
        self.bus = InProcessBus(max_pending=1_000_000)
        self.down = threading.Event()

    def connect(self):
        if self.down.is_set():
            raise ConnectionRefusedError("bus unreachable (test)")
        return self.bus.producer()


def test_a_full_spool_drops_the_oldest_and_reports_it_on_the_health_topic(tmp_path: Path):
    settings = load_settings(None, collect={"spool": {"path": tmp_path / "spool.sqlite", "max_bytes": 1 << 20},
                                            "metrics_port": None, "collector_id": "c1", "drain_s": 5})
    registry = generate_fleet(12, seed=7)
    simulator = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=60)
    clock = {"now": START_MS}
    bus = Bus()
    bus.down.set()
    runtime = CollectRuntime(settings, bus.connect, registry, simulator=simulator, sim_now_ms=lambda: clock["now"])
    runtime.start()
    try:
        for _ in range(200):  # simulated hours pile up on disk while the bus is away
            clock["now"] += 3_600_000
            runtime.step()
            if runtime.spool.dropped_total:
                break
        dropped = runtime.spool.dropped_total
        assert dropped > 0, "the 1 MiB spool never filled"
        assert runtime.spool.bytes <= 1 << 20
        assert runtime.metrics.spool_dropped._value.get() == dropped
        bus.down.clear()  # the bus returns: the backlog, and the report of the drop, go out
    finally:
        runtime.close()
    assert runtime.spool.depth == 0
    consumer = bus.bus.consumer([settings.bus.topics.health], group="check")
    records = [json.loads(m.value) for m in consumer.poll(1.0, max_records=100_000)]
    collector = [r for r in records if r["kind"] == "collector"]
    assert any(r["spool_dropped_total"] == dropped and not r["bus_up"] for r in collector)  # sent when it dropped
    readings = bus.bus.consumer([settings.bus.topics.readings], group="check")
    assert len(readings.poll(1.0, max_records=100_000)) > 0  # what fitted was delivered
