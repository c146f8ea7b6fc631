"""Alert state lives in the worker's per-site checkpoints: a restarted worker resolves what its predecessor
fired, with the same episode and the next sequence number; health records reach the device rules."""

from __future__ import annotations

import json
from pathlib import Path

from dcpue.analytics.alerts.engine import AlertEngine
from dcpue.analytics.alerts.model import AlertEvent
from dcpue.ingest.base import publish_polls
from dcpue.ingest.poller import DeviceHealth
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker, Checkpoint
from dcpue.settings import load_settings

START_MS = 1_782_864_000_000  # 2026-07-01T00:00Z
MIN = 60_000
REGISTRY = generate_fleet(4, seed=7)
SETTINGS = load_settings(None, alerts={"water_class": "W40"})


def simulator() -> FleetSimulator:
    sim = FleetSimulator(REGISTRY, seed=7, start_ms=START_MS, sample_interval_s=60, faults=False)
    sim.inject("ga-01", None, "cooling_degraded", START_MS + 60 * MIN, duration_s=2 * 3600, magnitude=3.5)
    sim.setup()
    return sim


def run_worker(store: FileStore, sim: FleetSimulator, from_min: int, to_min: int,
               health: list[dict[str, object]] = ()) -> tuple[AnalyticsWorker, list[AlertEvent]]:
    """A fresh worker on ``store`` fed ``sim``'s polls every 15 min of (from_min, to_min], then stopped cleanly."""
    bus = InProcessBus(10_000)
    topics = SETTINGS.bus.topics
    events: list[AlertEvent] = []
    worker = AnalyticsWorker(REGISTRY, SETTINGS, bus.consumer([topics.readings], "analytics"), store,
                             clock=lambda: START_MS + to_min * MIN, state=store,
                             alerts=AlertEngine(REGISTRY, SETTINGS.engine, SETTINGS.alerts), alert_output=events.extend,
                             health=bus.consumer([topics.health], "health"))
    producer = bus.producer()
    for record in health:
        producer.send(topics.health, json.dumps(record).encode() if isinstance(record, dict) else record)
    for minute in range(from_min + 15, to_min + 1, 15):
        publish_polls(sim, producer, topics.readings, lambda m=minute: START_MS + m * MIN)
        while worker.step(timeout_s=0.01):
            pass
    assert worker.checkpoint()
    return worker, events


def pue_alerts(events: list[AlertEvent]) -> list[AlertEvent]:
    return [e for e in events if e.site == "ga-01" and e.labels["alertname"] == "PueAboveTarget"]


def test_a_restarted_worker_resolves_the_alert_its_predecessor_fired(tmp_path: Path):
    sim = simulator()
    store = FileStore(tmp_path / "dcpue.sqlite").setup()
    _, before = run_worker(store, sim, 0, 150)
    assert [e.status.value for e in pue_alerts(before)] == ["firing"]
    saved = Checkpoint.decode(store.load_states()["ga-01"])
    assert saved.alerts and saved.state  # the site's alert state rides in its checkpoint

    _, after = run_worker(store, sim, 150, 300)  # a new worker and engine, the same store
    (resolve,) = pue_alerts(after)
    (fire,) = pue_alerts(before)
    assert resolve.status.value == "resolved" and resolve.fingerprint == fire.fingerprint
    assert resolve.starts_at_ms == fire.starts_at_ms and resolve.sequence == fire.sequence + 1
    assert resolve.ends_at_ms >= START_MS + 180 * MIN  # after the fault ended
    store.close()


def test_health_records_reach_the_device_rule_and_malformed_ones_are_dead_lettered(tmp_path: Path):
    store = FileStore(tmp_path / "dcpue.sqlite").setup()
    down = [DeviceHealth("pdu-7", "modbus", "gy-04", up=False, consecutive_failures=n,
                         last_error="timed out").record("collector-gy", START_MS + n * MIN) for n in range(1, 9)]
    foreign = DeviceHealth("pdu-9", "modbus", "nowhere", up=False).record("collector-x", START_MS + 8 * MIN)
    worker, events = run_worker(store, simulator(), 0, 30, health=[*down, foreign, b"{not json"])
    fired = [e for e in events if e.labels["alertname"] == "CollectorDeviceDown"]
    assert [(e.site, e.labels["device"], e.status.value) for e in fired] == [("gy-04", "pdu-7", "firing")]
    assert worker.stats.dead_letters == 1
    letters = store.dead_letters(10)
    assert letters["reason"].str.startswith("health record: ").sum() == 1
    store.close()


def test_history_firing_is_the_newest_event_per_fingerprint_when_it_fires(tmp_path: Path):
    from dcpue.runtime.alerts import AlertHistory
    from tests.alerting.helpers import make_event, resolved

    history = AlertHistory(tmp_path / "alerts.sqlite").setup()
    first = make_event(alertname="PueAboveTarget", site="ga-01", starts_at_ms=START_MS)
    second = make_event(alertname="RackInletAboveRecommended", site="tr-02", starts_at_ms=START_MS + MIN)
    history.write([first, second, resolved(first, START_MS + 30 * MIN)])
    assert [r["fingerprint"] for r in history.firing()] == [second.fingerprint]
    again = make_event(alertname="PueAboveTarget", site="ga-01", starts_at_ms=START_MS + 60 * MIN)
    history.write([again])  # a new episode of the resolved alert opens it again
    assert [r["fingerprint"] for r in history.firing()] == [second.fingerprint, first.fingerprint]
    assert [r["site"] for r in history.firing(site="ga-01")] == ["ga-01"]
    history.close()


def test_a_checkpoint_of_a_held_site_whose_alerts_alone_changed_keeps_its_engine_state(tmp_path: Path):
    """A site that sends no readings for a while but whose device goes down changes only its alert state: its
    checkpoint must still carry its engine state and position, or a restarted worker starts it afresh."""
    store = FileStore(tmp_path / "dcpue.sqlite").setup()
    sim = simulator()
    bus = InProcessBus(10_000)
    topics = SETTINGS.bus.topics
    worker = AnalyticsWorker(REGISTRY, SETTINGS, bus.consumer([topics.readings], "analytics"), store,
                             clock=lambda: START_MS + 30 * MIN, state=store,
                             alerts=AlertEngine(REGISTRY, SETTINGS.engine, SETTINGS.alerts),
                             alert_output=lambda e: None, health=bus.consumer([topics.health], "health"))
    producer = bus.producer()
    for minute in (15, 30):
        publish_polls(sim, producer, topics.readings, lambda m=minute: START_MS + m * MIN)
        while worker.step(timeout_s=0.01):
            pass
    assert worker.checkpoint()
    before = Checkpoint.decode(store.load_states()["gy-04"])
    assert before.state and before.offset > 0
    for n in range(1, 9):  # only health records now: gy-04's device rule changes, no readings
        producer.send(topics.health, json.dumps(DeviceHealth(
            "pdu-7", "modbus", "gy-04", up=False, consecutive_failures=n,
            last_error="timed out").record("c", START_MS + (30 + n) * MIN)).encode())
    worker.step(timeout_s=0.01)
    assert worker.checkpoint()
    after = Checkpoint.decode(store.load_states()["gy-04"])
    assert after.alerts != before.alerts  # the device rule's state changed and was saved
    assert (after.partition, after.offset, after.state) == (before.partition, before.offset, before.state)
    restarted = AnalyticsWorker(REGISTRY, SETTINGS, bus.consumer([topics.readings], "analytics"), store,
                                clock=lambda: START_MS + 30 * MIN, state=store,
                                alerts=AlertEngine(REGISTRY, SETTINGS.engine, SETTINGS.alerts),
                                alert_output=lambda e: None)
    restarted._take("gy-04")  # noqa: SLF001 (what its first message would do)
    assert restarted.stats.sites_restored == 1 and not restarted.stats.errors.get("bad_checkpoint")
    store.close()
