"""The distributed commands as separate processes: topics create → collect → analyze → InfluxDB write API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.servers import tansu_broker, unique_name, victoria_metrics, victoria_metrics_flush  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dcpue(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcpue.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_collect_and_analyze_processes_fill_influxdb(tansu_broker, victoria_metrics, tmp_path):  # noqa: F811
    prefix = unique_name("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    env.update({
        "DCPUE_BUS__TOPICS__READINGS": f"{prefix}.readings.v1",
        "DCPUE_BUS__TOPICS__METRICS": f"{prefix}.metrics.v1",
        "DCPUE_BUS__TOPICS__DEAD_LETTERS": f"{prefix}.deadletter.v1",
        "DCPUE_BUS__KAFKA__GROUP_ID": f"{prefix}-analytics",
        "DCPUE_BUS__KAFKA__PARTITIONS": "4",
        "DCPUE_BUS__KAFKA__SESSION_TIMEOUT_MS": "3000",
        "DCPUE_BUS__KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        "DCPUE_STORE__INFLUXDB__BUCKET": prefix,
        "DCPUE_SIMULATOR__START": "2025-07-01",
    })
    kafka = tansu_broker.bootstrap_servers
    sites = str(tmp_path / "sites.yaml")
    assert dcpue("registry", "generate", "--sites", "4", "-o", sites, env=env).returncode == 0
    created = dcpue("topics", "create", "--kafka", kafka, env=env)
    assert created.returncode == 0, created.stderr
    assert f"{prefix}.readings.v1" in created.stdout
    collected = dcpue("collect", "--kafka", kafka, "--registry", sites, "--speed", "3600", "--duration", "4",
                      env=env)
    assert collected.returncode == 0, collected.stderr
    assert "batches delivered" in collected.stdout
    analyzed = dcpue("analyze", "--kafka", kafka, "--influx", victoria_metrics.url, "--registry", sites,
                     "--duration", "20", env=env)
    assert analyzed.returncode == 0, analyzed.stderr
    assert " 0 dead letters" in analyzed.stdout, analyzed.stdout
    victoria_metrics_flush(victoria_metrics.url)
    query = urllib.parse.urlencode({"match[]": 'pue_pue{scope="site",window="1h"}', "start": "2025-06-30T00:00:00Z"})
    with urllib.request.urlopen(f"{victoria_metrics.url}/api/v1/series?{query}", timeout=10) as response:
        series = json.loads(response.read())["data"]
    assert len({s["site"] for s in series}) == 4  # every simulated site has hourly PUE in the database
