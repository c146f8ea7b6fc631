"""The analytics worker alone: the pipeline benchmark's batches replayed into one worker, no broker, no servers.

    PYTHONPATH=. .venv/bin/python bench/worker_alone.py --sites 200 --minutes 120 --racks 100 \\
        --json bench/results/worker-alone.json

What `dcpue analyze` computes per message, measured without the machine's other processes and the network:
decoding, the registry check, the engine, the InfluxDB line protocol of every window row (built, not sent),
the metrics-topic messages (encoded, not sent) and the state checkpoints (encoded, not sent), every
``--commit-s`` seconds as the distributed worker does. The worker takes ``--per-poll`` messages a step (a
Kafka poll returns what its fetches hold, up to ``bus.max_poll_records``). Its CPU time per reading is the
figure to compare code revisions by: unlike the Kafka benchmark's rates it does not move with the broker,
VictoriaMetrics and whatever else shares the cores (docs/performance.md).

With ``--workers N`` (N > 1) the same batches are replayed into one worker and then into N workers at once,
each in its own process with the partitions Kafka's range assignor would give it (the sites split by the
producer's key hash, as on the benchmark's topic), alternately ``--repeat`` times. The ratio of their
throughputs (all readings over the time until the last worker is done) is the group's scaling with no broker
or VictoriaMetrics on the cores: what the workers themselves allow.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from queue import Empty
from typing import Any

from bench.pipeline import _machine, make_batches, report
from dcpue.adapters.lineprotocol import windows_to_lines
from dcpue.cli import configure_gc
from dcpue.ports import Message
from dcpue.runtime.sinks import BusResultSink, FanoutSink
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import load_settings


def partition_of(site: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives a message keyed by ``site``."""
    from kafka.partitioner.default import murmur2

    return (murmur2(site.encode()) & 0x7FFFFFFF) % partitions


def range_assignment(partitions: int, workers: int) -> list[list[int]]:
    """The partitions Kafka's range assignor gives each of ``workers`` consumers of one topic."""
    per, extra = divmod(partitions, workers)
    bounds = [k * per + min(k, extra) for k in range(workers + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(workers)]


class _ListConsumer:
    """The messages, ``per_poll`` at a time, on partitions by site as the benchmark's topic has them; only those
    of the ``owned`` partitions (all if ``None``)."""

    durable_offsets = True

    def __init__(self, batches: list[tuple[str, bytes, int]], per_poll: int, partitions: int = 4,
                 owned: list[int] | None = None) -> None:
        now = int(time.time() * 1000)
        placed = [(partition_of(site, partitions), offset, site, data, count)
                  for offset, (site, data, count) in enumerate(batches)]
        mine = [item for item in placed if owned is None or item[0] in owned]
        self.messages = [Message("readings", data, site, (), partition, offset, now)
                         for partition, offset, site, data, _ in mine]
        self.readings = sum(item[4] for item in mine)
        self.per_poll = per_poll
        self.position = 0

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        taken = self.messages[self.position:self.position + min(max_records, self.per_poll)]
        self.position += len(taken)
        return taken

    def commit(self) -> None:
        """Nothing to commit to."""

    def close(self) -> None:
        """Nothing to close."""


class _CountingProducer:
    """Takes the metrics-topic messages and counts their bytes."""

    def __init__(self) -> None:
        self.bytes = 0

    def send(self, topic: str, value: bytes, key: str | None = None, headers: tuple = ()) -> None:
        self.bytes += len(value)

    def flush(self, timeout_s: float | None = None) -> None:
        """Every message is taken at once."""

    def close(self, timeout_s: float | None = None) -> None:
        """Nothing to close."""


class _LineProtocolSink:
    """Builds the InfluxDB lines of every window row, as the InfluxDB sink does before sending them."""

    def __init__(self, sites: Any) -> None:
        self.sites = sites
        self.lines = 0

    def write_windows(self, windows: Any) -> None:
        self.lines += len(windows_to_lines(windows, self.sites))

    def write_dead_letters(self, letters: Any) -> None:
        """The benchmark's batches have none."""


class _CountingState:
    """Takes the checkpoints and counts their bytes."""

    def __init__(self) -> None:
        self.bytes = 0

    def save_states(self, states: dict[str, bytes]) -> None:
        self.bytes += sum(len(blob) for blob in states.values())

    def load_states(self, partitions: list[int] | None = None) -> dict[str, bytes]:
        return {}


def replay(registry: Any, batches: list[tuple[str, bytes, int]], per_poll: int, commit_s: float,
           partitions: int = 4, owned: list[int] | None = None, start: Any = None) -> dict[str, Any]:
    """One worker through the messages of the ``owned`` partitions; timed from ``start`` (a barrier all the
    group's workers wait at, if given) to its last checkpoint."""
    settings = load_settings(None, bus={"commit_interval_s": commit_s}, alerts={"enabled": False})
    configure_gc(settings)  # as `dcpue analyze` runs
    consumer, producer, lines, state = (_ListConsumer(batches, per_poll, partitions, owned), _CountingProducer(),
                                        _LineProtocolSink(registry.sites_table), _CountingState())
    readings = consumer.readings
    # as `dcpue analyze` runs it, but writing in step: its background writes overlap waiting, not CPU
    worker = AnalyticsWorker(registry, settings, consumer, FanoutSink(lines, BusResultSink(producer, "metrics")),
                             clock=lambda: 2**62, emit_groups=False, state=state)
    if start is not None:
        start.wait()
    cpu0, t0 = time.process_time(), time.perf_counter()
    while consumer.position < len(consumer.messages):
        worker.step(0.0)
    worker.checkpoint()
    t1 = time.perf_counter()
    elapsed, cpu = t1 - t0, time.process_time() - cpu0
    status = worker.status()
    assert status["readings"] == readings, f"the worker saw {status['readings']} of {readings} readings"
    return {"readings": readings, "batches": len(consumer.messages), "per_poll": per_poll, "commit_s": commit_s,
            "seconds": round(elapsed, 2), "cpu_s": round(cpu, 2),
            "readings_per_cpu_s": round(readings / cpu) if cpu > 0 else None,
            "cpu_us_per_reading": round(cpu / readings * 1e6, 3) if readings else None,
            "window_rows": status["windows_written"],
            "line_protocol_lines": lines.lines, "metrics_topic_bytes": producer.bytes,
            "checkpoint_bytes": state.bytes, "started": t0, "ended": t1}


def run(sites: int, minutes: int, racks: int, per_poll: int, commit_s: float) -> dict[str, Any]:
    """One worker through every batch."""
    registry, batches, _ = make_batches(sites, minutes, 1, racks=racks)
    result = replay(registry, batches, per_poll, commit_s)
    del result["started"], result["ended"]
    return result


def _in_process(queue: Any, start: Any, *args: Any) -> None:
    try:
        queue.put(replay(*args, start=start))
    except BaseException as exc:  # noqa: BLE001 — the parent reports it
        start.abort()  # the others, and the parent, stop waiting for this one at the barrier
        queue.put(exc)


def _group_run(registry: Any, batches: list[tuple[str, bytes, int]], per_poll: int, commit_s: float,
               workers: int, partitions: int) -> dict[str, Any]:
    """``workers`` worker processes (forked: the batches are shared, not copied) started together on their
    range-assigned partitions; the group's rate is every reading over the time until the last is done."""
    context = multiprocessing.get_context("fork")
    start, queue = context.Barrier(workers + 1), context.Queue()
    procs = [context.Process(target=_in_process, args=(queue, start, registry, batches, per_poll, commit_s,
                                                         partitions, owned))
             for owned in range_assignment(partitions, workers)]
    for proc in procs:
        proc.start()
    results: list[Any] = []
    try:
        start.wait(timeout=600)
        while len(results) < len(procs):
            try:
                results.append(queue.get(timeout=5))
            except Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs):
                    raise RuntimeError("a worker process died") from None
    except threading.BrokenBarrierError:  # a worker failed before the start: every one says why on the queue
        try:
            while len(results) < len(procs):
                results.append(queue.get(timeout=10))
        except Empty:
            pass
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    # the cause first: the others only saw the start called off
    failed = sorted((r for r in results if isinstance(r, BaseException)),
                    key=lambda exc: isinstance(exc, threading.BrokenBarrierError))
    if failed or len(results) < len(procs):
        raise RuntimeError(f"a worker failed: {failed[0]!r}" if failed else "a worker never reached the start")
    readings = sum(r["readings"] for r in results)
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {"workers": workers, "readings": readings, "seconds": round(wall, 2),
            "readings_per_s": round(readings / wall),
            "per_worker": [{k: r[k] for k in ("readings", "batches", "seconds", "cpu_s")} for r in results]}


def run_group(sites: int, minutes: int, racks: int, per_poll: int, commit_s: float, workers: int,
              repeat: int) -> dict[str, Any]:
    """One worker, then ``workers`` at once, alternately ``repeat`` times; their rates and the ratio of medians."""
    registry, batches, readings = make_batches(sites, minutes, 1, racks=racks)
    partitions = max(4, 2 * workers)  # as the Kafka benchmark's topic
    runs: dict[int, list[dict[str, Any]]] = {1: [], workers: []}
    for _ in range(repeat):
        for count in (1, workers):
            runs[count].append(_group_run(registry, batches, per_poll, commit_s, count, partitions))
    one = statistics.median(r["readings_per_s"] for r in runs[1])
    many = statistics.median(r["readings_per_s"] for r in runs[workers])
    return {"readings": readings, "batches": len(batches), "per_poll": per_poll, "commit_s": commit_s,
            "partitions": partitions, "workers": workers, "repeat": repeat,
            "one_worker_readings_per_s": round(one), "group_readings_per_s": round(many),
            "group_over_one": round(many / one, 3),
            "runs": {str(count): found for count, found in runs.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--racks", type=int, default=100)
    parser.add_argument("--per-poll", type=int, default=1000, help="messages a step takes")
    parser.add_argument("--commit-s", type=float, default=1.0, help="seconds between checkpoints (the benchmark's)")
    parser.add_argument("--workers", type=int, default=1,
                        help="above 1: one worker and then this many at once, each in its own process")
    parser.add_argument("--repeat", type=int, default=3, help="with --workers: how many times each, alternately")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    measured = (run_group(args.sites, args.minutes, args.racks, args.per_poll, args.commit_s, args.workers,
                          args.repeat) if args.workers > 1
                else run(args.sites, args.minutes, args.racks, args.per_poll, args.commit_s))
    result = {**measured,
              "sites": args.sites, "minutes": args.minutes, "racks_per_site": args.racks, "machine": _machine(),
              "command": "PYTHONPATH=. .venv/bin/python bench/worker_alone.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if v is not None and (args.workers > 1 or k not in ("workers", "repeat")))}
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
