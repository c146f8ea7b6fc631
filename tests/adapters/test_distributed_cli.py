"""The distributed commands as separate processes: topics create → collect → analyze → InfluxDB write API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.helpers.feed import API_KEY, SECRET, ReceiverProcess
from tests.servers import distributed_env, tansu_broker, unique_name, victoria_metrics, victoria_metrics_flush  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dcpue(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcpue.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_for(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.3)


def log_ends(bootstrap: str, topic: str) -> dict:
    """Each partition's log end from the fetch high watermark (Tansu's ListOffsets LATEST is wrong)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30
        while any(consumer.highwater(tp) is None for tp in tps):
            assert time.monotonic() < deadline, f"no high watermark for {topic}"
            consumer.poll(timeout_ms=300, max_records=5000)
        return {tp: consumer.highwater(tp) for tp in tps}
    finally:
        consumer.close(autocommit=False)


class CommittedOffsets:
    """A consumer group's committed offsets, read without joining the group."""

    def __init__(self, bootstrap: str, group: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=group)

    def reached(self, ends: dict) -> bool:
        """True once every partition is committed up to its end in ``ends`` (the group wrote what it read)."""
        return all((self.consumer.committed(tp) or 0) >= end for tp, end in ends.items())

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def test_collect_and_analyze_processes_fill_influxdb(tansu_broker, victoria_metrics, tmp_path):  # noqa: F811
    prefix = unique_name("cli")
    env = distributed_env(prefix, DCPUE_STORE__INFLUXDB__BUCKET=prefix, DCPUE_SIMULATOR__START="2025-07-01",
                          DCPUE_STORE__PATH=str(tmp_path / "unused.sqlite"))
    kafka = tansu_broker.bootstrap_servers
    sites = str(tmp_path / "sites.yaml")
    assert dcpue("registry", "generate", "--sites", "4", "-o", sites, env=env).returncode == 0
    created = dcpue("topics", "create", "--kafka", kafka, env=env)
    assert created.returncode == 0, created.stderr
    assert f"{prefix}.readings.v1" in created.stdout
    collected = dcpue("collect", "--kafka", kafka, "--registry", sites, "--speed", "3600", "--duration", "4",
                      env=env)
    assert collected.returncode == 0, collected.stderr
    assert "records delivered to Kafka, 0 waiting" in collected.stdout
    # the worker runs until it has written and committed everything the collector delivered (at most 20 s),
    # then stops on SIGTERM as under a container runtime: checkpoint, commit, report
    analyze = subprocess.Popen([sys.executable, "-m", "dcpue.cli", "analyze", "--kafka", kafka, "--influx",
                                victoria_metrics.url, "--registry", sites, "--duration", "20"],
                               env={**env, "DCPUE_BUS__COMMIT_INTERVAL_S": "0.5"}, stdout=subprocess.PIPE,
                               stderr=(tmp_path / "analyze.log").open("w"), text=True)
    ends = log_ends(kafka, f"{prefix}.readings.v1")
    assert sum(ends.values()) > 0
    committed = CommittedOffsets(kafka, f"{prefix}-analytics")
    try:
        wait_for(lambda: committed.reached(ends) or analyze.poll() is not None, 25, "the worker to commit all")
    finally:
        committed.close()
        if analyze.poll() is None:
            analyze.terminate()
    out, _ = analyze.communicate(timeout=60)
    assert analyze.returncode == 0, (tmp_path / "analyze.log").read_text()
    assert " 0 dead letters" in out, out
    victoria_metrics_flush(victoria_metrics.url)
    query = urllib.parse.urlencode({"match[]": 'pue_pue{scope="site",window="1h"}', "start": "2025-06-30T00:00:00Z"})
    with urllib.request.urlopen(f"{victoria_metrics.url}/api/v1/series?{query}", timeout=10) as response:
        series = json.loads(response.read())["data"]
    assert len({s["site"] for s in series}) == 4  # every simulated site has hourly PUE in the database

    # `dcpue serve` builds its view from the metrics topic the worker published to and serves the API; with
    # feed.enabled it also sends the view's final windows to the provincial platform (the reference receiver)
    platform = ReceiverProcess(tmp_path).start()
    feed_config = tmp_path / "feed.yaml"
    feed_config.write_text(yaml.safe_dump({"feed": {
        "enabled": True, "start": "2025-07-01", "interval_s": 0.5, "reports": ["realtime", "hourly"],
        "outbox_path": str(tmp_path / "feed-outbox.sqlite"),
        "destinations": [{"name": "province", "url": f"{platform.url}/api/v1/reports", "api_key": API_KEY,
                          "secret": SECRET, "max_per_minute": 100_000}]}}), encoding="utf-8")
    serve = subprocess.Popen([sys.executable, "-m", "dcpue.cli", "serve", "--kafka", kafka, "--registry", sites,
                              "--port", "0", "--store", str(tmp_path / "view.sqlite"), "--duration", "30",
                              "--config", str(feed_config)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = serve.stdout.readline()
        url = first.split(" at ", 1)[1].split(" ", 1)[0]
        for _ in range(60):  # not ready until every view has read its topics to the end
            try:
                with urllib.request.urlopen(f"{url}readyz", timeout=5):
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and "view is still reading" in exc.read().decode()
            time.sleep(0.5)
        rows: list = []
        for _ in range(40):
            with urllib.request.urlopen(f"{url}api/v1/sites", timeout=5) as response:
                rows = json.loads(response.read())["sites"]
            if all(r["status_1h"] != "no_data" for r in rows):
                break
            time.sleep(0.5)
        assert len(rows) == 4 and all(r["status_1h"] != "no_data" for r in rows), rows
        assert any(r["pue_1h"] is not None for r in rows)
        received: list = []
        for _ in range(40):  # four simulated hours: every site's final hours and quarter hours reach the platform
            received = platform.received(report_type="hourly")["reports"]
            if len({r["report"]["site"]["site_id"] for r in received}) == 4:
                break
            time.sleep(0.5)
        assert len({r["report"]["site"]["site_id"] for r in received}) == 4, received
        with urllib.request.urlopen(f"{url}api/v1/feed", timeout=5) as response:
            feed = json.loads(response.read())
        assert feed["destinations"][0]["delivered"] >= len(received) and feed["destinations"][0]["failed"] == 0
    finally:
        serve.terminate()
        serve.wait(30)
        platform.stop()


def test_demo_runs_the_whole_distributed_path(tansu_broker, victoria_metrics, tmp_path):  # noqa: F811
    from dcpue.runtime.store import FileStore

    bucket = unique_name("demo")
    env = distributed_env(unique_name("demo"), DCPUE_STORE__INFLUXDB__BUCKET=bucket,
                          DCPUE_SIMULATOR__START="2025-07-01")
    store = tmp_path / "demo.sqlite"
    log = tmp_path / "demo.log"
    demo = subprocess.Popen([sys.executable, "-m", "dcpue.cli", "demo", "--kafka", tansu_broker.bootstrap_servers,
                             "--influx", victoria_metrics.url, "--sites", "4", "--duration", "25", "--port", "0",
                             "--store", str(store), "--quiet"], env=env, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)
    try:
        first = demo.stdout.readline()
        assert "live page at " in first, (first, log.read_text()[-3000:])
        url = first.split("live page at ", 1)[1].split()[0]

        def hourly_rows() -> bool:  # every site and the fleet have a 1 h PUE on the live page (at most 25 s)
            if demo.poll() is not None:
                return True
            try:
                with urllib.request.urlopen(f"{url}api/v1/sites", timeout=5) as response:
                    sites = json.loads(response.read())["sites"]
                with urllib.request.urlopen(f"{url}api/v1/fleet", timeout=5) as response:
                    fleet = json.loads(response.read())["fleet"]["1h"]
            except OSError:
                return False
            return (len(sites) == 4 and all(s["pue_1h"] is not None for s in sites)
                    and fleet is not None and fleet["pue"] is not None)

        wait_for(hourly_rows, 30, "hourly site and fleet rows on the live page")
    finally:
        if demo.poll() is None:
            demo.terminate()  # SIGTERM: the demo drains what is on the bus and stops as at --duration
    stdout = first + demo.communicate(timeout=150)[0]
    assert demo.returncode == 0, log.read_text()[-3000:]
    assert "via Kafka" in stdout and f"into InfluxDB {victoria_metrics.url}" in stdout
    assert " 0 dead letters" in stdout
    # the live page's store got site rows from the workers and fleet rows from the aggregator
    local = FileStore(store).setup()
    try:
        assert len(local.latest_windows("site", "1h")) == 4
        fleet = local.latest_windows("fleet", "1h")
        assert len(fleet) == 1 and fleet["pue"].notna().all()
    finally:
        local.close()
    victoria_metrics_flush(victoria_metrics.url)
    for scope in ("site", "fleet"):
        query = urllib.parse.urlencode({"match[]": f'pue_pue{{scope="{scope}",window="1h"}}',
                                        "start": "2025-06-30T00:00:00Z"})
        with urllib.request.urlopen(f"{victoria_metrics.url}/api/v1/series?{query}", timeout=10) as response:
            series = json.loads(response.read())["data"]
        assert series, f"no {scope} rows in InfluxDB"
