"""Pipeline benchmark (issue #10): simulator batches → bus → analytics worker(s) → store; docs/performance.md.

    PYTHONPATH=. .venv/bin/python bench/pipeline.py --mode kafka --sites 200 --minutes 30 --racks 100 \\
        --json bench/results/pipeline-kafka-racks.json

The batches (one per site and ``--batch-minutes`` of simulated readings, as a collector sends them; with
``--racks`` every site also meters each rack) are made first, outside the timed part.

* ``embedded``: through the in-process bus into one analytics worker writing to the file store.
* ``kafka``: produced to the Tansu broker; a bare kafka-python consumer reads and decodes them all (the
  practical limit); then ``--workers`` ``dcpue analyze`` processes in one consumer group read them and write
  to VictoriaMetrics' InfluxDB write endpoint until everything is committed.
* ``paced``: one ``dcpue analyze`` already in its group; the batches are produced at ``--rate`` readings/s
  (0: real time) while the worker's resident memory and CPU are sampled; at the end its latency from a
  batch's send to its results written (the worker's own histogram over every record's Kafka CreateTime).

The group runs the production timeouts (not the tests' fast ones). ``BENCH_PROFILE_WORKER=file`` runs the
first worker under cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.cli import configure_gc
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.settings import load_settings
from dcpue.wire import PollDecoder, encode_frame

START = int(pd.Timestamp("2025-07-01", tz="Asia/Shanghai").value // 1_000_000)


Batch = tuple[str, bytes, int]  # (site, encoded batch, readings in it)
COMMIT_INTERVAL_S = 1  # the workers' offset commits (and checkpoints)


def make_batches(sites: int, minutes: int, batch_minutes: int, seed: int = 7,
                 racks: int = 0, start_ms: int = START) -> tuple[Any, list[Batch], int]:
    """(registry, [(site, encoded batch, readings in it)], readings) for ``minutes`` of one-minute samples
    from ``start_ms``.

    ``racks`` > 0 meters every site rack by rack, as a province-wide feed of rack power does: the site's PDU
    points (its IT load at category 2; the UPS output on old sites without PDU meters) are replaced by
    ``racks`` rack-PDU power points, each its own boundary, sharing that load in fixed proportions.
    """
    registry = generate_fleet(sites, seed=seed)
    sim = FleetSimulator(registry, seed=seed, start_ms=start_ms, sample_interval_s=60, faults=False)
    sim.setup()
    if racks:
        registry, shares = _rack_metered(registry, racks, seed)
    batches, readings = [], 0
    for t in range(start_ms + batch_minutes * 60_000, start_ms + (minutes + 1) * 60_000, batch_minutes * 60_000):
        for site, frame in sim.poll(t):
            if racks:
                frame = _racks_of(frame, shares[site])
            batches.append((site, encode_frame(site, frame), len(frame)))
            readings += len(frame)
    return registry, batches, readings


RackShare = tuple[list[str], np.ndarray, bool]  # (IT points the racks share, each rack's share, points dropped)


def _rack_metered(registry: Any, racks: int, seed: int) -> tuple[Any, dict[str, RackShare]]:
    """The registry with each site's PDU IT points replaced by ``racks`` rack points (old sites without PDU
    meters keep their UPS points and gain the racks), and how each site's racks share that load."""
    from dcpue.registry import Point, Registry

    rng = np.random.default_rng(seed)
    sites, shares = [], {}
    for site in registry.sites:
        pdus = [p.id for p in site.points if p.role == "it" and p.it_category == 2]
        replaced = pdus or [p.id for p in site.points if p.role == "it"]
        weights = rng.uniform(0.5, 1.5, racks)
        shares[site.id] = (replaced, weights / weights.sum(), bool(pdus))
        rack_points = [Point(id=f"it.rack-{n:04d}", role="it", quantity="power", unit="kW", source="pdu",
                             it_category=2, collector="simulator") for n in range(racks)]
        kept = [p for p in site.points if p.id not in replaced or not pdus]  # old sites keep their UPS meters
        sites.append(site.model_copy(update={"points": (*kept, *rack_points)}))
    return Registry(clusters=registry.clusters, sites=tuple(sites)), shares


def _racks_of(frame: pd.DataFrame, share: RackShare) -> pd.DataFrame:
    """One site's readings with the replaced points' total spread over the racks (same times, same quality)."""
    from dcpue.model import readings_frame

    replaced, weights, dropped = share
    it = frame[frame["point"].isin(replaced)]
    total = it.groupby("ts", sort=True)["value"].sum()
    if total.empty:
        return frame
    n = len(weights)
    ts = np.repeat(total.index.to_numpy(np.int64), n)
    values = np.outer(total.to_numpy(), weights).ravel()
    points = np.tile(np.array([f"it.rack-{k:04d}" for k in range(n)], dtype=object), len(total))
    site = str(frame["site"].iloc[0])
    racks_frame = readings_frame(np.full(len(ts), site, dtype=object), points, ts, values, 0)
    rest = frame[~frame["point"].isin(replaced)] if dropped else frame
    return pd.concat([rest, racks_frame], ignore_index=True)


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def report(result: dict[str, Any], path: str | None, indent: int = 2) -> None:
    """Print a benchmark's result as JSON and, with ``path``, write it there too."""
    print(json.dumps(result, indent=indent))
    if path:
        Path(path).write_text(json.dumps(result, indent=indent) + "\n", encoding="utf-8")


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: kB


def run_embedded(registry: Any, batches: list[Batch], readings: int, workdir: Path) -> dict[str, Any]:
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
    for site, data, _ in batches:
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


class _Distributed:
    """A broker, VictoriaMetrics, fresh topics, and `dcpue analyze` worker processes in one consumer group."""

    def __init__(self, registry: Any, workdir: Path, partitions: int, worker_env: dict[str, str] | None = None) -> None:
        from tests.servers import run_tansu, run_victoria_metrics

        self.workdir = workdir
        self.sites_file = workdir / "sites.yaml"
        from dcpue.registry import dump_registry

        self.sites_file.write_text(dump_registry(registry), encoding="utf-8")
        self._broker_cm, self._vm_cm = run_tansu(), run_victoria_metrics()
        self.partitions = partitions
        self.worker_env = worker_env or {}
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> _Distributed:
        from dcpue.adapters.kafka import KafkaProducerAdapter
        from dcpue.settings import KafkaSettings
        from tests.servers import distributed_env

        self.broker, self.vm = self._broker_cm.__enter__(), self._vm_cm.__enter__()
        self.prefix = f"bench{int(time.time())}"
        self.env = distributed_env(self.prefix, partitions=self.partitions, DCPUE_STORE__INFLUXDB__BUCKET=self.prefix,
                                   DCPUE_STORE__PATH=str(self.workdir / "unused.sqlite"), DCPUE_ALERTS__ENABLED="false",
                                   DCPUE_STORE__INFLUXDB__WRITE_READINGS="false",
                                   DCPUE_BUS__COMMIT_INTERVAL_S=str(COMMIT_INTERVAL_S))
        for fast in ("SESSION_TIMEOUT_MS", "HEARTBEAT_INTERVAL_MS", "MAX_POLL_INTERVAL_MS", "FETCH_MIN_BYTES"):
            self.env.pop(f"DCPUE_BUS__KAFKA__{fast}")  # the tests' fast settings: production defaults here
        self.env.update(self.worker_env)
        subprocess.run([*DCPUE, "topics", "create", "--kafka", self.broker.bootstrap_servers], env=self.env,
                       check=True, capture_output=True)
        self.topic = f"{self.prefix}.readings.v1"
        # the workers get their settings from self.env; this process is left alone (the smoke tests run in the
        # suite's process, where DCPUE_* variables would leak into every later test)
        self.producer = KafkaProducerAdapter(KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers)).setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_workers()
        self.producer.close()
        self._vm_cm.__exit__(*exc)
        self._broker_cm.__exit__(*exc)

    def start_workers(self, count: int) -> None:
        for n in range(count):
            with open(self.workdir / f"analyze-{n}.log", "wb") as log:  # the child keeps its own descriptor
                profile = os.environ.get("BENCH_PROFILE_WORKER")  # a cProfile file for the first worker
                wrap = ["-m", "cProfile", "-o", profile] if profile and n == 0 else []
                self.workers.append(subprocess.Popen(
                    [sys.executable, *wrap, *DCPUE[1:], "analyze", "--kafka", self.broker.bootstrap_servers,
                     "--influx", self.vm.url, "--registry", str(self.sites_file)],
                    env=self.env, stdout=subprocess.PIPE, stderr=log))

    def stop_workers(self) -> list[str]:
        """SIGTERM every worker (checkpoint, commit, exit); returns their summary lines."""
        lines = []
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                out, _ = worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate()
            lines.append(out.decode(errors="replace").strip())
        self.workers = []
        return lines

    def partitions_of_topic(self) -> list[Any]:
        """Every partition the topic was created with (metadata read just after creation may list fewer)."""
        from kafka import TopicPartition

        return [TopicPartition(self.topic, p) for p in range(self.partitions)]


DCPUE = [sys.executable, "-m", "dcpue.cli"]


def _proc_sample(pid: int) -> tuple[float, float]:
    """(resident MB, CPU seconds) of a live process, from /proc."""
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024.0, (int(fields[11]) + int(fields[12])) / ticks


def _cpu_of(dist: _Distributed) -> dict[str, float]:
    """CPU seconds so far of the workers (together), the broker, VictoriaMetrics and this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"workers": sum(_proc_sample(w.pid)[1] for w in dist.workers if w.poll() is None),
            "broker": _proc_sample(dist.broker.pid)[1], "victoria_metrics": _proc_sample(dist.vm.pid)[1],
            "benchmark": own.ru_utime + own.ru_stime}


def _rate_together(samples: list[tuple[float, tuple[int, ...]]], owned: list[list[int]],
                   formed: float | None) -> float | None:
    """Messages per second of the whole group while every worker had partitions: the sum of each worker's
    own rate, from its first commit after the group formed to the commit that finished its partitions.

    Both ends are commits of that worker, so the large first poll is not counted in the stretch (a slope fitted
    through the stepped committed offsets would count its commit and overstate). Since `dcpue analyze` saves its
    checkpoints in the background (2026-12-08), a commit may land after the worker computed its next poll: the
    stretch may then include up to one poll of each worker done before it, and the figure is an upper bound
    (the rate from the group's assignment is not affected). ``samples`` are (time, committed offset per
    partition); ``owned`` the partitions of each worker in the formed group. ``None`` when a worker has
    no such stretch (its partitions done in one commit)."""
    if formed is None or not owned or not samples:
        return None
    total = 0.0
    for partitions in owned:
        if not partitions:  # an idle member (more workers than partitions)
            continue
        series = [(t, sum(c[p] for p in partitions)) for t, c in samples]
        final = series[-1][1]
        at_formed = next((c for t, c in series if t >= formed), None)
        if at_formed is None:
            return None
        start = next(((t, c) for t, c in series if t >= formed and c > at_formed), None)
        end = next((t for t, c in series if c >= final), None)
        if start is None or end is None or end <= start[0] or final <= start[1]:
            return None
        total += (final - start[1]) / (end - start[0])
    return total


def _owned_partitions(log: Path) -> list[int] | None:
    """The partitions a worker's log says it was given last; ``None`` before its first assignment."""
    import re

    found = re.findall(r"assigned partitions \[([\d, ]*)\]", log.read_text(errors="replace"))
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else None


def _latency(summary: str) -> dict[str, float | None]:
    """The p50/p99/max send → written latency from a `dcpue analyze` summary line."""
    import re

    found = re.search(r"p50 ([\d.]+) s, p99 ([\d.]+) s, max ([\d.]+) s", summary)
    keys = ("latency_p50_s", "latency_p99_s", "latency_max_s")
    return dict(zip(keys, (float(v) for v in found.groups()), strict=True)) if found else dict.fromkeys(keys)


def run_kafka(registry: Any, batches: list[Batch], readings: int, workdir: Path,
              workers: int = 1, worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything produced first; then the bare consumer's rate; then ``workers`` `dcpue analyze` processes."""
    from kafka import KafkaConsumer

    with _Distributed(registry, workdir, partitions=max(4, 2 * workers), worker_env=worker_env) as dist:
        t0 = time.perf_counter()
        for site, data, _ in batches:
            dist.producer.send(dist.topic, data, key=site)
        dist.producer.flush()
        produce_s = time.perf_counter() - t0
        parts = dist.partitions_of_topic()

        # the practical limit: a bare consumer reading and decoding everything
        consumer = KafkaConsumer(bootstrap_servers=dist.broker.bootstrap_servers, enable_auto_commit=False,
                                 group_id=None, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        # done when every produced message is read: offsets are per record from 0, so the messages are counted
        # instead of asking for end offsets (Tansu answers ListOffsets per record batch, not per record)
        messages, decoded, t0 = len(batches), 0, time.perf_counter()
        read = 0
        decoder = PollDecoder()  # decoded into columns a poll at a time, as the worker does
        while read < messages:
            values = [r.value for records in consumer.poll(timeout_ms=500, max_records=10_000).values()
                      for r in records]
            read += len(values)
            decoded += int(decoder.decode(values).counts.sum())
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"the bare consumer read {read} of {messages} messages in 600 s")
        raw_s = time.perf_counter() - t0
        consumer.close()
        assert decoded == readings, f"the bare consumer decoded {decoded} of {readings} readings"

        t0 = time.perf_counter()
        dist.start_workers(workers)
        watcher = KafkaConsumer(bootstrap_servers=dist.broker.bootstrap_servers, group_id=f"{dist.prefix}-analytics",
                                enable_auto_commit=False)
        first: tuple[float, int] | None = None  # (time, messages committed) at the workers' first commit
        assigned: tuple[float, int] | None = None  # the same when the group first assigned partitions
        logs = [dist.workdir / f"analyze-{n}.log" for n in range(workers)]
        worker_assigned: dict[int, float] = {}  # worker → when its log first showed an assignment
        samples: list[tuple[float, tuple[int, ...]]] = []  # (time, committed per partition), every 0.1 s
        cpu_formed: dict[str, float] | None = None  # CPU seconds of every process when the whole group had work
        owned: list[list[int]] = []  # each worker's partitions then
        try:
            while True:
                per_partition = tuple((watcher.committed(p) or 0) for p in parts)
                committed = sum(per_partition)
                now = time.perf_counter()
                samples.append((now, per_partition))
                if committed and first is None:
                    first = (now, committed)
                for n, log in enumerate(logs):
                    if n not in worker_assigned and log.exists() and _owned_partitions(log) is not None:
                        worker_assigned[n] = now
                if assigned is None and worker_assigned:
                    assigned = (now, committed)
                if cpu_formed is None and len(worker_assigned) == workers:
                    cpu_formed = _cpu_of(dist)
                    owned = [_owned_partitions(log) or [] for log in logs]
                if committed >= messages or any(w.poll() is not None for w in dist.workers):
                    break
                time.sleep(0.1)
            done = time.perf_counter()
            cpu_done = _cpu_of(dist)
            pipeline_s = done - t0
        finally:
            watcher.close()
            exits = [w.poll() for w in dist.workers]
            summaries = dist.stop_workers()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the steady rate: messages committed after the first commit (start-up, group join and the first poll
    # excluded), in readings by the mean batch size
    steady = None
    if first is not None and done > first[0] and messages > first[1]:
        steady = round((messages - first[1]) * readings / len(batches) / (done - first[0]))
    # sustained by the group: from its first partition assignment (process start-up and the wait to join the
    # group excluded; a rebalance when the second worker joins included) to everything committed. The worker
    # logs the assignment (INFO, the default level) once it has loaded the partitions' checkpoints.
    grouped = None
    if assigned is not None and done > assigned[0]:
        grouped = round((messages - assigned[1]) * readings / len(batches) / (done - assigned[0]))
    per_message = readings / len(batches)
    formed = max(worker_assigned.values()) if len(worker_assigned) == workers else None
    together = _rate_together(samples, owned, formed)
    cpu_share = None
    if formed is not None and cpu_formed is not None and done > formed:
        cpu_share = {name: round((cpu_done[name] - cpu_formed[name]) / (done - formed), 2) for name in cpu_done}
    return {"mode": "kafka", "workers": workers, "readings": readings, "batches": len(batches),
            "produce_s": round(produce_s, 2), "steady_readings_per_s": steady,
            "group_formed_after_assignment_s": None if formed is None or assigned is None
            else round(formed - assigned[0], 2),
            "together_readings_per_s": None if together is None else round(together * per_message),
            "together_cores": cpu_share,
            "from_assignment_s": None if assigned is None else round(done - assigned[0], 2),
            "from_assignment_readings_per_s": grouped,
            "from_assignment_share_of_raw_rate": None if grouped is None else round(grouped / (decoded / raw_s), 3),
            "steady_share_of_raw_rate": None if steady is None else round(steady / (decoded / raw_s), 3),
            "raw_consumer_s": round(raw_s, 2), "raw_consumer_readings_per_s": round(decoded / raw_s),
            "pipeline_s": round(pipeline_s, 2), "readings_per_s": round(readings / pipeline_s),
            "share_of_raw_rate": round((readings / pipeline_s) / (decoded / raw_s), 3),
            "worker_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "worker_peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "worker_exit": exits,
            "worker_summaries": summaries}


def run_paced(registry: Any, batches: list[Batch], readings: int, workdir: Path, rate: float,
              sample_s: float, worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One worker already in its group; batches produced at ``rate`` readings/s (in order, as the collectors
    would send them); the worker's resident memory and CPU sampled every ``sample_s``; at the end its latency
    from a batch's send to its results written (the worker's own histogram, from each record's CreateTime)."""
    from kafka import KafkaConsumer

    with _Distributed(registry, workdir, partitions=4, worker_env=worker_env) as dist:
        parts = dist.partitions_of_topic()
        dist.start_workers(1)
        pid = dist.workers[0].pid
        log = workdir / "analyze-0.log"
        deadline = time.monotonic() + 60
        while "assigned partitions [0, 1, 2, 3]" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and dist.workers[0].poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        samples: list[dict[str, float]] = []
        t0 = time.perf_counter()
        next_sample = 0.0
        sent_readings = 0
        behind_max = 0.0
        for site, data, count in batches:
            due = sent_readings / rate
            now = time.perf_counter() - t0
            if due > now:
                time.sleep(due - now)
            else:
                behind_max = max(behind_max, now - due)
            dist.producer.send(dist.topic, data, key=site)
            sent_readings += count
            if now >= next_sample:
                assert dist.workers[0].poll() is None, f"the worker stopped: {log.read_text()[-2000:]}"
                rss, cpu = _proc_sample(pid)
                samples.append({"t_s": round(now, 1), "rss_mb": round(rss, 1), "cpu_s": round(cpu, 2)})
                next_sample += sample_s
        dist.producer.flush()
        produce_s = time.perf_counter() - t0
        watcher = KafkaConsumer(bootstrap_servers=dist.broker.bootstrap_servers, group_id=f"{dist.prefix}-analytics",
                                enable_auto_commit=False)
        try:  # offsets are per record from 0: everything is committed when they add up to the messages sent
            while sum((watcher.committed(p) or 0) for p in parts) < len(batches):
                assert dist.workers[0].poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
        finally:
            watcher.close()
        drained_s = time.perf_counter() - t0 - produce_s
        rss, cpu = _proc_sample(pid)
        samples.append({"t_s": round(time.perf_counter() - t0, 1), "rss_mb": round(rss, 1), "cpu_s": round(cpu, 2)})
        summary = dist.stop_workers()[0]
        state = _state_topic_tally(dist)
    warm = [s for s in samples if s["t_s"] >= min(120.0, produce_s / 4)] or samples
    return {"mode": "paced", "readings": readings, "batches": len(batches), "rate_readings_per_s": rate,
            "achieved_readings_per_s": round(readings / produce_s), "producer_behind_max_s": round(behind_max, 2),
            "produce_s": round(produce_s, 1), "drain_after_last_send_s": round(drained_s, 2),
            **_latency(summary), "worker_summary": summary,
            "rss_mb_first_after_warmup": warm[0]["rss_mb"], "rss_mb_last": samples[-1]["rss_mb"],
            "rss_mb_max": max(s["rss_mb"] for s in samples),
            "rss_growth_after_warmup": round(samples[-1]["rss_mb"] / warm[0]["rss_mb"] - 1, 3),
            "worker_cpu_share": round((samples[-1]["cpu_s"] - samples[0]["cpu_s"])
                                      / max(samples[-1]["t_s"] - samples[0]["t_s"], 1e-9), 3),
            "state_topic": state, "samples": samples}


def _state_topic_tally(dist: _Distributed) -> dict[str, Any]:
    """Every record the worker wrote to its state topic (the test broker does not compact): how many and how
    large, checkpoints (key: site) and days records (``site#days0``, ``site#days1``) apart."""
    from kafka import KafkaConsumer, TopicPartition

    from dcpue.ports import STATE_KEY_PART, state_key_site

    consumer = KafkaConsumer(bootstrap_servers=dist.broker.bootstrap_servers, enable_auto_commit=False)
    try:
        topic = f"{dist.prefix}.state.v1"
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        sizes: dict[str, list[int]] = {"checkpoints": [], "days_records": []}
        sites_with_days: set[str] = set()
        while True:
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                for r in records:
                    key = r.key.decode()
                    sizes["days_records" if STATE_KEY_PART in key else "checkpoints"].append(len(r.value))
                    if STATE_KEY_PART in key:
                        sites_with_days.add(state_key_site(key))
            if all(consumer.position(tp) >= (consumer.highwater(tp) or 0) for tp in tps):
                break
    finally:
        consumer.close()
    out: dict[str, Any] = {"sites_with_a_days_record": len(sites_with_days)}
    for kind, values in sizes.items():
        out[kind] = {"records": len(values), "bytes": sum(values),
                     "bytes_median": int(np.median(values)) if values else 0}
    return out


def _cached(directory: str | None, make: Any, *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``, pickled in ``directory`` under a name of its arguments and read from there when
    it is already (``directory`` None: just made)."""
    if directory is None:
        return make(*args, **kwargs)
    import hashlib
    import pickle

    key = hashlib.sha256(repr((make.__name__, args, sorted(kwargs.items()))).encode()).hexdigest()[:16]
    path = Path(directory) / f"batches-{key}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 — the benchmark's own file
    made = make(*args, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(made, f, protocol=pickle.HIGHEST_PROTOCOL)
    return made


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "kafka", "paced"], default="embedded",
                        help="embedded: in process, as fast as it goes; kafka: produce all, then the bare consumer, "
                             "then the workers as fast as they go; paced: one worker fed at --rate (latency, memory)")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes of one-minute samples")
    parser.add_argument("--racks", type=int, default=0, help="rack-PDU power points per site (0: the simulator's "
                        "~25 site meters and sensors only)")
    parser.add_argument("--batch-minutes", type=int, default=1, help="simulated minutes per collector batch")
    parser.add_argument("--workers", type=int, default=1, help="kafka mode: `dcpue analyze` processes in the group")
    parser.add_argument("--rate", type=float, default=10_000,
                        help="paced mode: readings/s sent (0: real time, the simulated minutes over as many minutes)")
    parser.add_argument("--sample-s", type=float, default=10, help="paced mode: seconds between memory samples")
    parser.add_argument("--worker-env", action="append", default=[], metavar="DCPUE_NAME=VALUE",
                        help="kafka and paced modes: a setting for the workers only (repeatable), e.g. "
                             "DCPUE_BUS__MAX_POLL_RECORDS=10000")
    parser.add_argument("--start", default="2025-07-01T00:00",
                        help="local time (Asia/Shanghai) of the first sample, e.g. 2025-07-01T23:45 to cross a day")
    parser.add_argument("--batches-cache", metavar="DIR",
                        help="keep the batches made for these arguments in DIR and use them again (runs alternating "
                             "two checkouts then replay the same batches without making them each time)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if any("=" not in item or not item.startswith("DCPUE_") for item in args.worker_env):
        parser.error("--worker-env takes DCPUE_NAME=VALUE")
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    if worker_env and args.mode == "embedded":
        parser.error("--worker-env is for the kafka and paced modes (embedded runs no worker process)")
    fixed = [n for n in worker_env if n.startswith(("DCPUE_BUS__TOPICS__", "DCPUE_BUS__KAFKA__PARTITIONS",
                                                      "DCPUE_BUS__KAFKA__GROUP_ID", "DCPUE_BUS__KAFKA__BOOTSTRAP"))]
    if fixed:
        parser.error(f"--worker-env cannot set {', '.join(fixed)}: the benchmark itself reads those topics")
    configure_gc(load_settings(None))  # the embedded worker and the bare consumer run as dcpue's processes do
    t0 = time.perf_counter()
    start_ms = int(pd.Timestamp(args.start, tz="Asia/Shanghai").value // 1_000_000)
    registry, batches, readings = _cached(args.batches_cache, make_batches, args.sites, args.minutes,
                                          args.batch_minutes, racks=args.racks, start_ms=start_ms)
    prepare_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="dcpue-bench-") as tmp:
        if args.mode == "embedded":
            result = run_embedded(registry, batches, readings, Path(tmp))
        elif args.mode == "kafka":
            result = run_kafka(registry, batches, readings, Path(tmp), workers=args.workers, worker_env=worker_env)
        else:
            rate = args.rate or readings / (args.minutes * 60.0)
            result = run_paced(registry, batches, readings, Path(tmp), rate=rate, sample_s=args.sample_s,
                               worker_env=worker_env)
    result.update({"sites": args.sites, "racks_per_site": args.racks, "minutes": args.minutes, "start": args.start,
                   "worker_env": worker_env,
                   "batch_minutes": args.batch_minutes,
                   "prepare_s": round(prepare_s, 2), "machine": _machine(),
                   "command": " ".join(["PYTHONPATH=. .venv/bin/python bench/pipeline.py", *(argv or sys.argv[1:])])})
    report(result, args.json, indent=1)
    return result


if __name__ == "__main__":
    main()
