"""GET /metrics: what a pipeline that ran reports, scraped over HTTP with its token, equals its status; the
feed's queues and the alert outbox appear; every app has its own registry."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dcpue.feed.sender import FeedService
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.runtime.embedded import EmbeddedPipeline, SimClock, build_alerting
from dcpue.runtime.store import FileStore
from dcpue.settings import load_settings
from dcpue.web.app import create_app
from dcpue.web.auth import TokenAuth, hash_token
from dcpue.web.metrics import STATUS_METRICS
from tests.helpers import feed as feed_fixtures

from .serving import LiveServer

TOKEN = "metrics-scraper-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_MS = 1_782_864_000_000  # 2026-07-01T00:00Z
HOUR_MS = 3_600_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def helps(text: str) -> dict[str, str]:
    return {family.name: family.documentation for family in text_string_to_metric_families(text)}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_metrics_of_a_pipeline_that_ran_equal_its_status(tmp_path: Path):
    speed = 7200.0  # two simulated hours per second; a poll carries an hour
    settings = load_settings(None, http={"port": 0, "tokens": [hash_token(TOKEN)]}, simulator={"speed": speed},
                             store={"path": tmp_path / "dcpue.sqlite"}, alerts={"no_data_after_s": 3 * 3600})
    registry = generate_fleet(3, seed=7)
    simulator = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=300, faults=False)
    silent = registry.sites[2].id
    simulator.inject(silent, None, "outage", START_MS + HOUR_MS, duration_s=48 * 3600)  # its collector is down
    pipeline = EmbeddedPipeline(settings, registry, simulator, SimClock(START_MS, speed),
                                FileStore(settings.store.path).setup())
    pipeline.start()
    try:
        url = f"http://127.0.0.1:{pipeline.http_port}/metrics"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                a["labels"]["alertname"] == "NoData" and a["state"] == "firing" for a in pipeline.alerts.active()):
            assert not pipeline.errors, pipeline.errors
            time.sleep(0.3)
        live = httpx.get(url, headers=AUTH, timeout=10)
        refused = httpx.get(url, timeout=10)
    finally:
        assert pipeline.stop()
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert live.status_code == 200 and live.headers["content-type"].startswith("text/plain")
    running = samples(live.text)
    assert running[("dcpue_readings_total", ())] > 0 and running[("dcpue_windows_written_total", ())] > 0

    # stopped: the counters hold still, so a scrape must repeat the status exactly
    status = pipeline.status()
    store = FileStore(settings.store.path).setup()
    app = create_app(store, registry, settings.engine, status=pipeline.status, alerts=pipeline.alerts,
                     auth=TokenAuth([hash_token(TOKEN)]))
    try:
        with LiveServer(app) as server:
            text = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=10).text
    finally:
        store.close()
    got = samples(text)
    for key, spec in STATUS_METRICS.items():
        name = spec.name + ("_total" if spec.kind == "counter" else "")
        if key in status:
            assert got[(name, ())] == pytest.approx(status[key] * spec.scale), key
        else:
            assert not any(n == name for n, _ in got), f"{name} without a {key} in the status"
    for key in ("readings", "windows_written", "dead_letters", "bus_lag", "batches_sent", "messages"):
        assert key in status, key  # the ones the issue asks for are really there
    assert got[("dcpue_bus_lag_messages", ())] == 0  # stop() drained the bus
    for kind in ("store_write", "state_write", "commit", "bad_checkpoint"):
        assert got[("dcpue_sink_errors_total", (("kind", kind),))] == status["errors"].get(kind, 0)
    assert set(status["busy_s"]) == {"poll", "decode", "engine", "alerts", "write", "checkpoint", "rebalance"}
    for phase, seconds in status["busy_s"].items():
        assert got[("dcpue_worker_busy_seconds_total", (("phase", phase),))] == pytest.approx(seconds), phase
    assert status["busy_s"]["engine"] > 0 and status["write_s"] > 0
    assert got[("dcpue_mode", (("mode", "embedded"),))] == 1
    assert got[("dcpue_registry_sites", ())] == 3 and got[("dcpue_ready", ())] == 1

    active = pipeline.alerts.active()
    firing_no_data = {a["labels"]["site"] for a in active
                      if a["labels"]["alertname"] == "NoData" and a["state"] == "firing"}
    assert firing_no_data == {silent}
    assert got[("dcpue_sites_without_data", ())] == 1
    assert got[("dcpue_collector_devices_down", ())] == 0
    by_labels = {labels: v for (name, labels), v in got.items() if name == "dcpue_alerts_active"}
    assert sum(by_labels.values()) == len(active)
    assert by_labels[(("alertname", "NoData"), ("severity", "critical"), ("state", "firing"))] == 1

    # 401s are counted; every family has a HELP text
    assert got[("dcpue_http_unauthorized_requests_total", ())] == 0  # this app refused nothing yet
    assert all(doc.strip() for doc in helps(text).values())


def test_feed_queues_and_alert_outbox(tmp_path: Path):
    store = feed_fixtures.filled_store(tmp_path / "store.sqlite")
    settings = load_settings(
        None, feed={"reports": ["daily"], "start": "2024-07-14", "outbox_path": str(tmp_path / "feed.sqlite"),
                    "destinations": [{"name": "gz", "url": "https://platform.example.gov.cn/r", "secret": "s",
                                      "alert_after_s": 3600},
                                     {"name": "backup", "url": "https://backup.example.gov.cn/r", "secret": "s"}]},
        alerts={"receivers": [{"name": "noc", "url": "http://127.0.0.1:9/hook"}], "routes": [{"receivers": ["noc"]}],
                "delivery": {"outbox_path": str(tmp_path / "outbox.sqlite")}})
    now = [1_800_000_000.0]
    service = FeedService(settings.feed, store, feed_fixtures.fleet(), tz=feed_fixtures.TZ,
                          clock=lambda: now[0]).open()
    alerts, _ = build_alerting(settings, feed_fixtures.fleet(), tmp_path / "alerts.sqlite", producer=None)
    alerts.delivery.outbox.open()
    try:
        assert service.tick().enqueued == 8  # two sites × two days, for each of two destinations
        service.outbox.mark_delivered(service.outbox.head("gz").id, int(now[0] * 1000), 200)
        now[0] += 7200  # the rest have waited two hours: overdue for gz (alert after 1 h)
        app = create_app(store, feed_fixtures.fleet(), settings.engine, feed=service.status, alerts=alerts)
        text = TestClient(app).get("/metrics").text
        status = service.status()
    finally:
        service.stop()
        alerts.delivery.outbox.close()
        alerts.close()
        store.close()
    got = samples(text)
    for dest in status["destinations"]:
        name = (("destination", dest["name"]),)
        for state in ("pending", "delivered", "failed"):
            assert got[("dcpue_feed_outbox_reports", (*name, ("state", state)))] == dest[state], (dest["name"], state)
        assert got[("dcpue_feed_oldest_pending_age_seconds", name)] == pytest.approx(dest["oldest_pending_age_s"])
        assert got[("dcpue_feed_overdue", name)] == (1 if dest["overdue"] else 0)
    assert got[("dcpue_feed_outbox_reports", (("destination", "gz"), ("state", "delivered")))] == 1
    assert got[("dcpue_feed_oldest_pending_age_seconds", (("destination", "gz"),))] == pytest.approx(7200)
    assert got[("dcpue_feed_overdue", (("destination", "gz"),))] == 1
    assert got[("dcpue_feed_overdue", (("destination", "backup"),))] == 0  # its alert_after_s is longer
    assert got[("dcpue_alert_outbox_pending", (("receiver", "noc"),))] == 0  # dcpue.alerting.metrics, registered


def test_each_app_has_its_own_registry(store, registry, engine_settings):
    first = create_app(store, registry, engine_settings, status=lambda: {"readings": 1})
    second = create_app(store, registry, engine_settings, status=lambda: {"readings": 2})
    assert samples(TestClient(first).get("/metrics").text)[("dcpue_readings_total", ())] == 1
    assert samples(TestClient(second).get("/metrics").text)[("dcpue_readings_total", ())] == 2


def test_a_failing_source_leaves_the_others_in_the_scrape(store, registry, engine_settings):
    def broken() -> dict:
        raise RuntimeError("outbox closed")

    app = create_app(store, registry, engine_settings, status=lambda: {"readings": 5}, feed=broken)
    r = TestClient(app).get("/metrics")
    assert r.status_code == 200 and samples(r.text)[("dcpue_readings_total", ())] == 5
    assert "dcpue_feed_outbox_reports" not in r.text
