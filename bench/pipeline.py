"""Pipeline throughput benchmark (issue #10), first cut: simulator batches → bus → analytics worker → store.

    PYTHONPATH=. .venv/bin/python bench/pipeline.py --mode embedded --sites 50 --minutes 120 \\
        --json bench/results/pipeline-embedded.json
    PYTHONPATH=. .venv/bin/python bench/pipeline.py --mode kafka --sites 50 --minutes 120 \\
        --json bench/results/pipeline-kafka.json

The batches (one per site and ``--batch-minutes`` of simulated readings, as a collector sends them) are
made first, outside the timed part.

* ``embedded``: they go through the in-process bus into one analytics worker writing to the file store.
* ``kafka``: the same batches are produced to the Tansu broker. A bare kafka-python consumer reads and
  decodes them all (the practical limit). Then ``dcpue analyze`` (a real worker process) reads them and
  writes to VictoriaMetrics' InfluxDB write endpoint until it has committed everything.

Reported: readings, seconds, readings/s, CPU seconds and peak resident memory of the measuring process
(for ``kafka``, of the worker process). Latency percentiles at half load and the 30-minute memory profile
of the issue are not measured yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.settings import load_settings
from dcpue.wire import decode_batch, encode_frame

START = int(pd.Timestamp("2025-07-01", tz="Asia/Shanghai").value // 1_000_000)


def make_batches(sites: int, minutes: int, batch_minutes: int, seed: int = 7) -> tuple[Any, list[tuple[str, bytes]], int]:
    """(registry, [(site, encoded batch)], readings) for ``minutes`` of simulated one-minute samples."""
    registry = generate_fleet(sites, seed=seed)
    sim = FleetSimulator(registry, seed=seed, start_ms=START, sample_interval_s=60, faults=False)
    sim.setup()
    batches, readings = [], 0
    for t in range(START + batch_minutes * 60_000, START + (minutes + 1) * 60_000, batch_minutes * 60_000):
        for site, frame in sim.poll(t):
            batches.append((site, encode_frame(site, frame)))
            readings += len(frame)
    return registry, batches, readings


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: kB


def run_embedded(registry: Any, batches: list[tuple[str, bytes]], readings: int, workdir: Path) -> dict[str, Any]:
    from dcpue.runtime.bus import InProcessBus
    from dcpue.runtime.store import FileStore
    from dcpue.runtime.worker import AnalyticsWorker

    settings = load_settings(None, bus={"commit_interval_s": 1}, alerts={"enabled": False})
    topic = settings.bus.topics.readings
    bus = InProcessBus(len(batches) + 1)
    producer = bus.producer()
    store = FileStore(workdir / "bench.sqlite").setup()
    worker = AnalyticsWorker(registry, settings, bus.consumer([topic], "bench"), store, clock=lambda: 2**62)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for site, data in batches:
        producer.send(topic, data, key=site)
    while bus.lag("bench", topic):
        worker.step(timeout_s=0.01)
        worker.checkpoint()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    status = worker.status()
    store.close()
    assert status["readings"] == readings, f"the worker saw {status['readings']} of {readings} readings"
    return {"mode": "embedded", "readings": readings, "batches": len(batches), "seconds": round(elapsed, 2),
            "readings_per_s": round(readings / elapsed), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "windows_written": status["windows_written"],
            "dead_letters": status["dead_letters"]}


def run_kafka(registry: Any, batches: list[tuple[str, bytes]], readings: int, workdir: Path) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    from dcpue.adapters.kafka import KafkaProducerAdapter
    from dcpue.registry import dump_registry
    from tests.servers import distributed_env, run_tansu, run_victoria_metrics

    sites_file = workdir / "sites.yaml"
    sites_file.write_text(dump_registry(registry), encoding="utf-8")
    with run_tansu() as broker, run_victoria_metrics() as vm:
        prefix = f"bench{int(time.time())}"
        env = distributed_env(prefix, partitions=4, DCPUE_STORE__INFLUXDB__BUCKET=prefix,
                              DCPUE_STORE__PATH=str(workdir / "unused.sqlite"), DCPUE_ALERTS__ENABLED="false",
                              DCPUE_STORE__INFLUXDB__WRITE_READINGS="false", DCPUE_BUS__COMMIT_INTERVAL_S="1")
        dcpue = [sys.executable, "-m", "dcpue.cli"]
        subprocess.run([*dcpue, "topics", "create", "--kafka", broker.bootstrap_servers], env=env, check=True,
                       capture_output=True)
        topic = f"{prefix}.readings.v1"
        os.environ.update({k: v for k, v in env.items() if k.startswith("DCPUE_")})
        settings = load_settings(None, bus={"kind": "kafka", "kafka": {"bootstrap_servers": broker.bootstrap_servers}})
        producer = KafkaProducerAdapter(settings.bus.kafka).setup()
        t0 = time.perf_counter()
        for site, data in batches:
            producer.send(topic, data, key=site)
        producer.flush()
        produce_s = time.perf_counter() - t0

        # the practical limit: a bare consumer reading and decoding everything
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, group_id=None,
                                 max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        decoded, t0 = 0, time.perf_counter()
        while sum(consumer.position(p) for p in parts) < sum(ends.values()):
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                for r in records:
                    decoded += len(decode_batch(r.value))  # decoded into columns, as the worker does
        raw_s = time.perf_counter() - t0
        consumer.close()

        log = open(workdir / "analyze.log", "wb")
        t0 = time.perf_counter()
        worker = subprocess.Popen([*dcpue, "analyze", "--kafka", broker.bootstrap_servers, "--influx", vm.url,
                                   "--registry", str(sites_file)], env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=f"{prefix}-analytics",
                                enable_auto_commit=False)
        first: tuple[float, int] | None = None  # (time, messages committed) at the worker's first commit
        try:
            while True:
                committed = sum((watcher.committed(p) or 0) for p in parts)
                if committed and first is None:
                    first = (time.perf_counter(), committed)
                if committed >= sum(ends.values()) or worker.poll() is not None:
                    break
                time.sleep(0.1)
            done = time.perf_counter()
            pipeline_s = done - t0
        finally:
            watcher.close()
            worker.send_signal(2)
            worker.wait(60)
            log.close()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the steady rate: messages committed after the first commit (start-up, group join and the first poll
    # excluded), in readings by the mean batch size
    steady = None
    if first is not None and done > first[0] and sum(ends.values()) > first[1]:
        steady = round((sum(ends.values()) - first[1]) * readings / len(batches) / (done - first[0]))
    return {"mode": "kafka", "readings": readings, "batches": len(batches), "produce_s": round(produce_s, 2),
            "steady_readings_per_s": steady,
            "steady_share_of_raw_rate": None if steady is None else round(steady / (decoded / raw_s), 3),
            "raw_consumer_s": round(raw_s, 2), "raw_consumer_readings_per_s": round(decoded / raw_s),
            "pipeline_s": round(pipeline_s, 2), "readings_per_s": round(readings / pipeline_s),
            "share_of_raw_rate": round((readings / pipeline_s) / (decoded / raw_s), 3),
            "worker_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "worker_peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "worker_exit": worker.returncode}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes of one-minute samples")
    parser.add_argument("--batch-minutes", type=int, default=1, help="simulated minutes per collector batch")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    registry, batches, readings = make_batches(args.sites, args.minutes, args.batch_minutes)
    prepare_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="dcpue-bench-") as tmp:
        run = run_embedded if args.mode == "embedded" else run_kafka
        result = run(registry, batches, readings, Path(tmp))
    result.update({"sites": args.sites, "minutes": args.minutes, "batch_minutes": args.batch_minutes,
                   "prepare_s": round(prepare_s, 2), "machine": _machine(),
                   "command": " ".join(["PYTHONPATH=. .venv/bin/python bench/pipeline.py", *(argv or sys.argv[1:])])})
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
