"""`dcpue collect` against a real Kafka-protocol broker whose network link is cut and restored.

The collector (a real process, the simulated fleet as its source, so every reading it made can be
recomputed here) must keep polling through the outage, hold what it made in its spool, and deliver
every reading afterwards in order; killed mid-spool, its restart must deliver what the spool held.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from dcpue.adapters.kafka import create_topics
from dcpue.cli import _sim_start_ms
from dcpue.ingest.simulator import FleetSimulator
from dcpue.registry import load_registry
from dcpue.settings import KafkaSettings, TopicSettings, load_settings
from dcpue.wire import decode_batch
from tests.peers.netcut import kafka_behind_netcut
from tests.servers import distributed_env, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]
START = "2026-01-01"


@pytest.fixture(scope="module")
def kafka():
    with kafka_behind_netcut() as (netcut, server):
        yield netcut, server


def setup_run(tmp_path: Path, netcut, prefix: str) -> tuple[dict[str, str], str, TopicSettings]:
    env = distributed_env(prefix, partitions=2, DCPUE_SIMULATOR__START=START,
                          DCPUE_COLLECT__SPOOL__PATH=str(tmp_path / "spool.sqlite"),
                          DCPUE_BUS__KAFKA__SEND_TIMEOUT_S="3", DCPUE_COLLECT__DRAIN_S="30")
    sites = tmp_path / "sites.yaml"
    made = subprocess.run([sys.executable, "-m", "dcpue.cli", "registry", "generate", "--sites", "3", "-o",
                           str(sites)], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    topics = TopicSettings(**{name: f"{prefix}.{name}.v1" for name in TopicSettings.model_fields})
    create_topics(KafkaSettings(bootstrap_servers=netcut.address, partitions=2), topics)
    return env, str(sites), topics


def start_collector(netcut, sites: str, env: dict[str, str], duration: float, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dcpue.cli", "collect", "--kafka", netcut.address, "--registry", sites,
         "--speed", "3600", "--duration", str(duration)],
        env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)  # noqa: SIM115


def metrics_port(proc: subprocess.Popen[str]) -> int:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"metrics on http://[^:]+:(\d+)/metrics", line)
    assert match, line
    return int(match.group(1))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def topic_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of ``topic``, partition by partition in offset order (reads until 3 s of silence)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return [record.value for record in consumer]
    finally:
        consumer.close()


def readings_of(values: list[bytes]) -> pd.DataFrame:
    frames = [decode_batch(v).readings for v in values]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def expected_readings(sites: str, until_ms: int) -> pd.DataFrame:
    settings = load_settings(None, simulator={"start": START})
    start = _sim_start_ms(settings)
    sim = FleetSimulator(load_registry(sites), seed=settings.simulator.seed, start_ms=start,
                         sample_interval_s=settings.simulator.sample_interval_s, faults=settings.simulator.faults)
    frames = [frame for poll in sim.iter_poll(until_ms) for _, frame in poll]
    return pd.concat(frames, ignore_index=True)


def unique(frame: pd.DataFrame) -> set[tuple]:
    return set(frame[["site", "point", "ts", "value", "quality"]].itertuples(index=False, name=None))


def test_readings_made_while_the_bus_is_cut_off_all_arrive_in_order(kafka, tmp_path: Path):
    netcut, _ = kafka
    env, sites, topics = setup_run(tmp_path, netcut, unique_name("outage"))
    proc = start_collector(netcut, sites, env, duration=15, log=tmp_path / "collect.log")
    port = metrics_port(proc)
    wait_for(lambda: metric(port, "dcpue_spool_forwarded_records_total") > 0, 30, "first records delivered")
    netcut.cut()
    try:
        wait_for(lambda: metric(port, "dcpue_bus_up") == 0, 30, "the collector to notice the outage")
        wait_for(lambda: metric(port, "dcpue_spool_records") >= 10, 30, "records to pile up in the spool")
        held = metric(port, "dcpue_spool_records")
        time.sleep(3)
        assert metric(port, "dcpue_spool_records") > held  # still polling, still spooling
    finally:
        netcut.restore()
    wait_for(lambda: metric(port, "dcpue_bus_up") == 1, 60, "the collector to reconnect")
    out, _ = proc.communicate(timeout=120)
    log = (tmp_path / "collect.log").read_text()
    assert proc.returncode == 0, log
    assert "bus unreachable: spooling to disk" in log and "bus reachable: forwarding spool" in log
    assert " 0 waiting in " in out, out
    reached = int(re.search(r"simulated time reached (\d+) ms", out).group(1))

    got = readings_of(topic_values(netcut.address, topics.readings))
    want = expected_readings(sites, reached)
    assert unique(got) == unique(want)  # none lost, none invented
    for (_, _), series in got.groupby(["site", "point"], sort=False):  # in order, per point
        first_seen = series.drop_duplicates("ts")["ts"]
        assert first_seen.is_monotonic_increasing
    health = topic_values(netcut.address, topics.health)
    assert any(b'"kind": "collector"' in h and b'"bus_up": false' in h for h in health)  # the outage was reported


def test_a_collector_killed_mid_spool_delivers_the_spool_after_its_restart(kafka, tmp_path: Path):
    netcut, _ = kafka
    env, sites, topics = setup_run(tmp_path, netcut, unique_name("killed"))
    netcut.cut()  # the bus is away from the start: everything goes to the spool
    try:
        proc = start_collector(netcut, sites, env, duration=120, log=tmp_path / "first.log")
        port = metrics_port(proc)
        wait_for(lambda: metric(port, "dcpue_spool_records") >= 20, 60, "records to pile up in the spool")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with sqlite3.connect(tmp_path / "spool.sqlite") as db:
            held = [bytes(v) for (v,) in db.execute(
                "SELECT value FROM records WHERE topic = ? ORDER BY seq", (topics.readings,))]
        assert len(held) >= 10
    finally:
        netcut.restore()
    again = start_collector(netcut, sites, env, duration=4, log=tmp_path / "second.log")
    metrics_port(again)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, (tmp_path / "second.log").read_text()
    assert " 0 waiting in " in out, out
    delivered = topic_values(netcut.address, topics.readings)
    assert set(held) <= set(delivered)  # every batch the killed collector had spooled reached Kafka
    for site in {decode_batch(v).site for v in held}:  # ... in the order it was spooled (order is per key)
        of_site = [v for v in delivered if decode_batch(v).site == site]
        positions = [of_site.index(v) for v in held if decode_batch(v).site == site]
        assert positions == sorted(positions)
    killed_run = readings_of(held)
    want = expected_readings(sites, int(killed_run["ts"].max()))
    assert unique(killed_run) == unique(want)  # and the spool held everything the killed run had made


def _producer_threads() -> set[int]:
    """The network threads of kafka-python producers still running in this process (their idents)."""
    import threading

    from kafka.producer.sender import Sender

    return {t.ident for t in threading.enumerate() if isinstance(t, Sender) and t.is_alive()}


def test_a_forwarder_that_drops_its_producer_in_an_outage_leaves_no_producer_running(kafka, tmp_path: Path):
    """A forward that times out drops the producer with records still queued in it. kafka-python's close raised
    its timeout error then and left the producer's network thread running through the outage; if the producer
    was garbage-collected before the broker came back, its ``__del__`` close timed out too and nothing stopped
    the thread: one more for every outage, for the collector's lifetime."""
    from dcpue.adapters.kafka import KafkaProducerAdapter
    from dcpue.ingest.spool import Forwarder, Spool, SpoolRecord

    netcut, _ = kafka
    prefix = unique_name("drop")
    topics = TopicSettings(**{name: f"{prefix}.{name}.v1" for name in TopicSettings.model_fields})
    create_topics(KafkaSettings(bootstrap_servers=netcut.address, partitions=1), topics)
    topic = topics.readings
    settings = KafkaSettings(bootstrap_servers=netcut.address, send_timeout_s=1.0)
    before = _producer_threads()
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 24).open()
    forwarder = Forwarder(spool, lambda: KafkaProducerAdapter(settings).setup(), batch=5, max_backoff_s=0.5,
                          send_timeout_s=1.0).start()
    sent = 0

    def append(n: int) -> None:
        nonlocal sent
        spool.append([SpoolRecord(topic, i.to_bytes(4, "big"), key="k") for i in range(sent, sent + n)])
        sent += n
        forwarder.wake.set()

    try:
        append(5)
        wait_for(lambda: forwarder.forwarded_total == 5, 30, "the first records delivered")
        netcut.cut()
        try:
            append(20)
            # a forward that timed out with records queued in the producer, which is then dropped
            wait_for(lambda: "did not acknowledge records" in (forwarder.last_error or ""), 60,
                     "a forward to time out")
            # the dropped producer is stopped now, not once the broker is back (a new one fails to connect)
            wait_for(lambda: not _producer_threads() - before, 5, "the dropped producer's thread to end")
        finally:
            netcut.restore()
        wait_for(lambda: spool.depth == 0, 60, "the spool delivered after the outage")
    finally:
        forwarder.stop(drain_s=5)
        spool.close()
    assert not _producer_threads() - before  # a closed producer's thread has ended within its close
    got = {int.from_bytes(v, "big") for v in topic_values(netcut.address, topic)}
    assert got == set(range(sent))
