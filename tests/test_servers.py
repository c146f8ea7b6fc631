"""Smoke tests of the real test servers (tests/servers.py): each must do what the adapters rely on."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import influxdb_client
import pytest
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from tests.servers import (
    Server,
    _pid_alive,
    fast_consumer_config,
    influxdb1,
    run_influxdb1,
    run_tansu,
    run_victoria_metrics,
    tansu_broker,
    unique_name,
    victoria_metrics,
    victoria_metrics_flush,
)

__all__ = ["influxdb1", "tansu_broker", "victoria_metrics"]  # fixtures, imported for pytest

pytestmark = pytest.mark.integration

T0_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z, older than VictoriaMetrics' default 1-month retention


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- Tansu --------------------------------------------------------------------------------------------


def _create_topic(bootstrap: str, partitions: int = 4) -> str:
    topic = unique_name("dcpue.test")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.create_topics([NewTopic(topic, partitions, 1)])
        assert [t["error_code"] for t in result["topics"]] == [0], result
        described = admin.describe_topics([topic])[0]
        assert len(described["partitions"]) == partitions
    finally:
        admin.close()
    return topic


def _consume(consumer: KafkaConsumer, count: int, timeout_s: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    return got


def test_tansu_topic_keyed_produce_group_consume_commit(tansu_broker: Server) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topic = _create_topic(bootstrap)
    group = unique_name("dcpue-test-group")

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20)
    futures = [producer.send(topic, key=f"site-{i % 8}".encode(), value=f"{i}".encode()) for i in range(40)]
    producer.flush(10)
    meta = [f.get(timeout=10) for f in futures]
    producer.close()
    by_key: dict[int, set[int]] = {}
    for i, m in enumerate(meta):
        by_key.setdefault(i % 8, set()).add(m.partition)
    assert all(len(parts) == 1 for parts in by_key.values()), "a key must always map to one partition"
    assert {m.partition for m in meta} == {0, 1, 2, 3}

    started = time.monotonic()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **fast_consumer_config())
    got = _consume(consumer, 40, timeout_s=15)
    join_s = time.monotonic() - started
    assert sorted(int(r.value) for r in got) == list(range(40))
    assert join_s < 10, f"group join took {join_s:.1f} s: fast_consumer_config() no longer works"
    consumer.commit()
    committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    # the log end per partition, from the produce acks; not end_offsets(): Tansu answers ListOffsets
    # LATEST with the last batch's base offset + 1 (see docs/testing.md)
    log_end = {p: 1 + max(m.offset for m in meta if m.partition == p) for p in range(4)}
    assert committed == log_end
    assert {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()} == log_end
    consumer.close()

    # a new member of the same group resumes at the committed offsets: only the new record arrives
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topic, key=b"site-0", value=b"after-commit").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **fast_consumer_config())
    again = _consume(consumer, 1, timeout_s=15)
    more = _consume(consumer, 1, timeout_s=0.5)
    consumer.close()
    assert [r.value for r in again + more] == [b"after-commit"]


def test_tansu_rebalance_splits_partitions(tansu_broker: Server) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topic = _create_topic(bootstrap)
    group = unique_name("dcpue-test-group")
    first = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **fast_consumer_config())
    second = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **fast_consumer_config())
    stop = threading.Event()
    held: dict[int, set[Any]] = {0: set(), 1: set()}  # a consumer is not thread-safe: its own thread reads it

    failures: list[BaseException] = []

    def member(index: int, consumer: KafkaConsumer) -> None:
        try:
            while not stop.is_set():
                consumer.poll(timeout_ms=100)
                held[index] = consumer.assignment()
        except BaseException as exc:  # noqa: BLE001 — reported by the test, not lost with the thread
            failures.append(exc)

    # each member polls back to back on its own thread, as members in their own processes do: kafka-python 3.0.12
    # drops a join that completes while no poll waits for it, so two members polled in turn on one thread
    # went on rebalancing for over 60 s on a loaded machine (the first held 2 and 3, the second nothing)
    threads = [threading.Thread(target=member, args=(0, first))]
    try:
        threads[0].start()
        deadline = time.monotonic() + 20
        while len(held[0]) != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not failures and len(held[0]) == 4, (failures, held)
        threads.append(threading.Thread(target=member, args=(1, second)))
        threads[1].start()
        # mid-rebalance a member may still show its previous generation's partitions while the other shows its new
        # ones (both held 0 and 1 once): wait for two each, disjoint
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine, theirs = held[0], held[1]
            if len(mine) == 2 and len(theirs) == 2 and not mine & theirs:
                break
            time.sleep(0.05)
        assert not failures, failures
        assert len(held[0]) == len(held[1]) == 2, held
        assert sorted(tp.partition for tp in held[0] | held[1]) == [0, 1, 2, 3], held
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        first.close()
        second.close()


@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd"])
def test_tansu_compressed_idempotent_batches(tansu_broker: Server, compression: str) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topic = _create_topic(bootstrap)
    values = [(f"reading-{i}," * 30).encode() for i in range(30)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             compression_type=compression, linger_ms=50)
    for i, value in enumerate(values):
        producer.send(topic, key=f"site-{i % 3}".encode(), value=value)
    producer.flush(10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **fast_consumer_config())
    consumer.assign([TopicPartition(topic, p) for p in range(4)])
    got = _consume(consumer, len(values), timeout_s=10)
    consumer.close()
    assert sorted(r.value for r in got) == sorted(values)


# --- VictoriaMetrics ----------------------------------------------------------------------------------


def _vm_export(url: str, selector: str) -> list[dict[str, Any]]:
    status, body = _http("GET", f"{url}/api/v1/export?" + urllib.parse.urlencode({"match[]": selector}))
    assert status == 200, body
    return sorted((json.loads(line) for line in body.splitlines() if line), key=lambda s: s["metric"]["__name__"])


def test_victoria_metrics_influx_v2_write_read_back(victoria_metrics: Server) -> None:
    measurement = unique_name("pue")
    point = (
        influxdb_client.Point(measurement)
        .tag("site", "ga-01")
        .tag("window", "1h")
        .field("pue", 1.13)
        .field("it_power_kw", 3600.5)
        .time(T0_MS, influxdb_client.WritePrecision.MS)
    )
    # VictoriaMetrics ignores org, bucket and token; any values do
    with influxdb_client.InfluxDBClient(url=victoria_metrics.url, token="dummy", org="dcpue") as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="dcpue", record=point)
    victoria_metrics_flush(victoria_metrics.url)

    series = _vm_export(victoria_metrics.url, f'{{__name__=~"{measurement}_.*"}}')
    assert series == [
        {"metric": {"__name__": f"{measurement}_it_power_kw", "site": "ga-01", "window": "1h"},
         "values": [3600.5], "timestamps": [T0_MS]},
        {"metric": {"__name__": f"{measurement}_pue", "site": "ga-01", "window": "1h"},
         "values": [1.13], "timestamps": [T0_MS]},
    ]
    query = urllib.parse.urlencode({"query": f'{measurement}_pue{{site="ga-01"}}', "time": T0_MS / 1000})
    status, body = _http("GET", f"{victoria_metrics.url}/api/v1/query?{query}")
    assert status == 200
    assert [r["value"][1] for r in json.loads(body)["data"]["result"]] == ["1.13"]


def test_victoria_metrics_v1_write_adds_db_label(victoria_metrics: Server) -> None:
    measurement = unique_name("pue")
    line = f'{measurement},site=ga-02 pue=1.5,status="ok" {T0_MS * 1_000_000}'
    status, _ = _http("POST", f"{victoria_metrics.url}/write?db=dcpue", line.encode())
    assert status == 204
    victoria_metrics_flush(victoria_metrics.url)
    series = _vm_export(victoria_metrics.url, f'{{__name__=~"{measurement}_.*"}}')
    by_name = {s["metric"]["__name__"]: s for s in series}
    assert by_name[f"{measurement}_pue"]["metric"] == {"__name__": f"{measurement}_pue", "db": "dcpue",
                                                       "site": "ga-02"}
    assert by_name[f"{measurement}_pue"]["values"] == [1.5]
    # string fields are not stored as strings: VictoriaMetrics keeps numbers only
    assert by_name.get(f"{measurement}_status", {"values": [0]})["values"] == [0]


# --- InfluxDB 1.x -------------------------------------------------------------------------------------


def _influxql(url: str, q: str, db: str | None = None, method: str = "GET") -> dict[str, Any]:
    params = {"q": q, "epoch": "ms"} | ({"db": db} if db else {})
    status, body = _http(method, f"{url}/query?{urllib.parse.urlencode(params)}", b"" if method == "POST" else None)
    assert status == 200, body
    result = json.loads(body)["results"][0]
    assert "error" not in result, result
    return result


def test_influxdb1_v1_write_influxql_read_back(influxdb1: Server) -> None:
    db = unique_name("dcpue")
    _influxql(influxdb1.url, f'CREATE DATABASE "{db}"', method="POST")
    lines = (f'pue_1h,site=ga-01,cluster=gui-an pue=1.13,status="ok" {T0_MS}\n'
             f'pue_1h,site=ga-02,cluster=gui-an pue=1.42,status="ok" {T0_MS}\n')
    status, body = _http("POST", f"{influxdb1.url}/write?db={db}&precision=ms", lines.encode())
    assert status == 204, body
    result = _influxql(influxdb1.url, "SELECT pue, status, site FROM pue_1h WHERE cluster = 'gui-an' ORDER BY time",
                       db=db)
    (series,) = result["series"]
    assert series["columns"] == ["time", "pue", "status", "site"]
    assert sorted(series["values"], key=lambda v: v[3]) == [[T0_MS, 1.13, "ok", "ga-01"], [T0_MS, 1.42, "ok", "ga-02"]]
    status, body = _http("POST", f"{influxdb1.url}/write?db={db}", b"not line protocol")
    assert status == 400, "InfluxDB rejects bad line protocol (VictoriaMetrics would accept and drop it)"


def test_influxdb1_6_has_no_v2_write_endpoint(influxdb1: Server) -> None:
    """influxdb-client writes to /api/v2/write, which InfluxDB 1.6 lacks (1.8+ has it): write via /write."""
    with (
        influxdb_client.InfluxDBClient(url=influxdb1.url, token="user:pass", org="-") as client,
        pytest.raises(ApiException) as excinfo,
    ):
        client.write_api(write_options=SYNCHRONOUS).write(bucket="dcpue/autogen", record="m,site=a f=1")
    assert excinfo.value.status == 404


# --- lifecycle: no server outlives its fixture ----------------------------------------------------------


@pytest.mark.parametrize("run", [run_tansu, run_victoria_metrics, run_influxdb1],
                         ids=["tansu", "victoria-metrics", "influxdb1"])
def test_server_is_stopped_and_cleaned_up(run: Callable[[], AbstractContextManager[Server]]) -> None:
    with run() as server:
        assert _pid_alive(server.pid)
        assert server.workdir.is_dir()
    assert not _pid_alive(server.pid), f"{server.name} pid {server.pid} outlived its context"
    assert not server.workdir.exists()


def test_missing_binary_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.servers.victoria_metrics_binary", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="scripts/bootstrap test"), run_victoria_metrics():
        pass
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="victoria-metrics"), run_victoria_metrics():
        pass
