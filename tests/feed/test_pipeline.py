"""The feed inside `dcpue demo`'s embedded pipeline: the streaming engine's windows reach the reference receiver
as they become final, the API shows the feed, and what the platform holds equals the stored windows."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.runtime.embedded import EmbeddedPipeline, SimClock
from dcpue.runtime.store import FileStore
from dcpue.settings import load_settings
from tests.helpers.feed import API_KEY, SECRET, ReceiverProcess
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
START_MS = 1_782_835_200_000  # 2026-07-01T00:00+08:00


def test_the_demo_pipeline_feeds_the_platform_with_the_stored_figures(tmp_path: Path):
    with ReceiverProcess(tmp_path) as peer:
        settings = load_settings(
            None, http={"port": 0}, simulator={"speed": 7200}, store={"path": tmp_path / "dcpue.sqlite"},
            feed={"enabled": True, "start": "2026-07-01", "interval_s": 0.5, "reports": ["realtime", "hourly"],
                  "outbox_path": str(tmp_path / "feed.sqlite"),
                  "destinations": [{"name": "province", "url": f"{peer.url}/api/v1/reports", "api_key": API_KEY,
                                    "secret": SECRET, "algorithm": "hmac-sm3", "max_per_minute": 100_000},
                                   {"name": "backup", "url": f"http://127.0.0.1:{free_port()}/down", "secret": SECRET,
                                    "alert_after_s": 1, "backoff_max_s": 0.5}]})
        registry = generate_fleet(3, seed=7)
        simulator = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=60, faults=False)
        store = FileStore(settings.store.path).setup()
        pipeline = EmbeddedPipeline(settings, registry, simulator, SimClock(START_MS, settings.simulator.speed), store)
        pipeline.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(peer.received(report_type="hourly")["reports"]) < 3 * 6:
                assert not pipeline.errors, pipeline.errors
                time.sleep(0.5)
            api = httpx.get(f"http://127.0.0.1:{pipeline.http_port}/api/v1/feed", timeout=10).json()
            events = httpx.get(f"http://127.0.0.1:{pipeline.http_port}/api/v1/alerts", timeout=10).json()["events"]
        finally:
            assert pipeline.stop()
        windows = FileStore(settings.store.path).setup()
        try:
            hourly = windows.query_windows("site", "1h")
            quarter = windows.query_windows("site", "15m")
        finally:
            windows.close()
        got = peer.received()
    assert api["destinations"][0]["name"] == "province" and api["destinations"][0]["failed"] == 0
    assert api["destinations"][0]["delivered"] + api["destinations"][0]["pending"] >= 18
    # the backup platform never answers: its queue waits, and FeedUndelivered is an alert like any other
    assert api["destinations"][1]["delivered"] == 0 and api["destinations"][1]["overdue"]
    undelivered = [e for e in events if e["alertname"] == "FeedUndelivered"]
    assert undelivered and undelivered[0]["status"] == "firing" and undelivered[0]["labels"]["destination"] == "backup"
    reports = [r["report"] for r in got["reports"]]
    assert got["answers"] == {"accepted": len(reports)} and len(reports) >= 18
    stored = {("hourly", r.id, r.start_ms): r for r in hourly.itertuples()} | {
        ("realtime", r.id, r.start_ms): r for r in quarter.itertuples()}
    for report in reports:
        row = stored[(report["report_type"], report["site"]["site_id"],
                      int(pd.Timestamp(report["period"]["start"]).value // 1_000_000))]
        assert row.final
        figures = report["figures"]
        it = figures["it_kwh"] if report["report_type"] == "realtime" else figures["energy_kwh"]["it"]
        assert it == row.it_kwh and (figures["pue"] == row.pue or (figures["pue"] is None and row.status != "ok"))
    # the simulated clock made the reports (not the wall clock of December)
    assert all(r["generated_at"].startswith("2026-07-0") for r in reports)
    assert not [e for e in undelivered if e["labels"]["destination"] == "province"]  # never fell behind
