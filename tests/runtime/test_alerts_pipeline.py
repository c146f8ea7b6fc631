"""Alerts in the running embedded pipeline: an injected plant fault reaches a real webhook receiver, signed,
once; the API shows it and takes a silence; a restart keeps the silence."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.runtime.embedded import EmbeddedPipeline, SimClock
from dcpue.runtime.store import FileStore
from dcpue.settings import load_settings
from tests.peers.webhook import webhook_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
START_MS = 1_782_864_000_000  # 2026-07-01T00:00Z
SECRET = "test-secret-42"


def build(tmp_path: Path, receiver_url: str, hours: float):
    settings = load_settings(None, http={"port": 0}, simulator={"speed": 7200},
                             store={"path": tmp_path / "dcpue.sqlite"},
                             alerts={"receivers": [{"name": "noc", "url": f"{receiver_url}/hook", "secret": SECRET}],
                                     "routes": [{"families": ["efficiency"], "receivers": ["noc"]}],
                                     "delivery": {"outbox_path": str(tmp_path / "outbox.sqlite")}})
    registry = generate_fleet(4, seed=7)
    simulator = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=60, faults=False)
    simulator.inject("ga-01", None, "cooling_degraded", START_MS + 3_600_000, duration_s=hours * 3600, magnitude=3.5)
    clock = SimClock(START_MS, settings.simulator.speed)
    store = FileStore(settings.store.path).setup()
    return EmbeddedPipeline(settings, registry, simulator, clock, store)


def test_an_injected_cooling_fault_is_notified_once_signed_and_can_be_silenced(tmp_path: Path):
    with webhook_receiver(secret=SECRET) as hook:
        pipeline = build(tmp_path, hook.url, hours=4)
        pipeline.start()
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not any(  # wait for the fault's end to be notified
                    r.json()["commonLabels"].get("site") == "ga-01" and r.json()["status"] == "resolved"
                    for r in hook.requests):
                assert not pipeline.errors, pipeline.errors
                time.sleep(0.5)
            api = f"http://127.0.0.1:{pipeline.http_port}/api/v1"
            alerts = httpx.get(f"{api}/alerts", timeout=10).json()
            silence = httpx.post(f"{api}/silences", timeout=10, json={
                "matchers": [["site", "=", "tr-02"]], "ends_at_ms": START_MS + 10 * 86_400_000,
                "created_by": "test", "comment": "retrofit"})
            bad = httpx.post(f"{api}/silences", timeout=10, json={"matchers": [["site", "=~", "("]],
                                                                   "ends_at_ms": START_MS + 1})
            deliveries = httpx.get(f"{api}/alerts/deliveries", timeout=10).json()
        finally:
            pipeline.stop()
    ga01 = [r for r in hook.requests if r.json()["commonLabels"].get("site") == "ga-01"]
    assert ga01, "no notification for the degraded site"
    body = ga01[0].json()
    assert body["status"] == "firing" and body["version"] == "4" and body["receiver"] == "noc"
    assert {a["labels"]["alertname"] for a in body["alerts"]} == {"PueAboveTarget"}
    assert all(r.signature_ok for r in hook.requests)  # every request carries a valid HMAC
    keys = [r.header("Idempotency-Key") for r in hook.requests]
    assert len(keys) == len(set(keys))  # nothing delivered twice
    statuses = [a["status"] for r in ga01 for a in r.json()["alerts"]]
    assert statuses == ["firing", "resolved"]  # one alert for the whole 4-hour fault, not one per window
    starts = {a["startsAt"] for r in ga01 for a in r.json()["alerts"]}
    assert len(starts) == 1 and starts.pop().startswith("2026-07-01T01:")  # the breach began with the fault

    assert not any(a["labels"]["site"] == "ga-01" and a["labels"]["alertname"] == "PueAboveTarget"
                   for a in alerts["active"])  # resolved: no longer active
    assert [e["status"] for e in alerts["events"]
            if e["site"] == "ga-01" and e["alertname"] == "PueAboveTarget"] == ["resolved", "firing"]  # newest first
    assert silence.status_code == 201 and silence.json()["created_by"] == "test"
    assert bad.status_code == 400
    assert "matchers.0: Value error, matcher site=~'(': invalid regular expression" in bad.json()["detail"]
    assert deliveries["count"] >= 1 and deliveries["deliveries"][0]["receiver"] == "noc"

    # the silence survives a restart of the pipeline
    again = build(tmp_path, "http://127.0.0.1:9", hours=1)
    try:
        assert [s["matchers"] for s in again.alerts.silences()] == [silence.json()["matchers"]]
    finally:
        again.alerts.close()
        again.store.close()
