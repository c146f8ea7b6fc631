"""The README's demo command end to end: a real `dcpue demo` process, its API, and its page in Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dcpue.runtime.store import FileStore
from tests.helpers.browser import dump_dom, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SITES = 10


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def demo(tmp_path):
    store = tmp_path / "demo.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcpue.cli", "demo", "--sites", str(SITES), "--port", "0", "--quiet",
         "--store", str(store), "--duration", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    started = time.monotonic()
    try:
        line = proc.stdout.readline()
        match = re.search(r"live page at (http://\S+/)", line)
        assert match, f"no URL in first line {line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        yield proc, match.group(1), store, started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_demo_shows_live_pue_for_every_site_and_stops_cleanly(demo):
    proc, url, store_path, started = demo
    # within a minute every simulated site reports a live PUE
    deadline = started + 60
    sites: list[dict] = []
    while time.monotonic() < deadline:
        sites = get_json(url + "api/v1/sites")["sites"]  # type: ignore[index]
        if len(sites) == SITES and all(s["pue"] is not None for s in sites):
            break
        time.sleep(1)
    waited = time.monotonic() - started
    assert len(sites) == SITES
    assert all(s["pue"] is not None for s in sites), [(s["id"], s["status"]) for s in sites]
    print(f"all {SITES} sites had a live PUE after {waited:.1f} s")
    pues = sorted(s["pue"] for s in sites)
    assert pues[0] < 1.25 and pues[-1] > 1.6  # modern liquid sites and old rooms both present
    # occupancy by racks and utilization by power are separate figures
    assert all(s["occupancy"] is not None and s["it_utilization"] is not None for s in sites)

    # the page shows every site and a drawn PUE chart
    dom = dump_dom(url, budget_ms=8000)
    for s in sites:
        assert f'data-site="{s["id"]}"' in dom
    chart = re.search(r'<svg[^>]*id="pue-chart".*?</svg>|id="pue-chart".*?</svg>', dom, re.S)
    assert chart and "<path" in chart.group(0)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-page.png"
    screenshot(url, shot)
    assert shot.stat().st_size > 20_000

    status = get_json(url + "api/v1/status")
    # Ctrl-C: the pipeline drains what is on the bus and exits 0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped;" in out
    written = int(re.search(r"(\d+) windows written", out).group(1))
    assert written > 0
    store = FileStore(store_path).setup()
    try:
        live = store.query_windows("site", "1m")
        # nothing that was processed before the signal is missing from the store
        assert live["end_ms"].max() >= status["sim_time_ms"] - 10 * 60_000
        assert len(store.latest_windows("site", "1h")) == SITES
    finally:
        store.close()
