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
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from typing import Any

from bench.pipeline import _machine, make_batches
from dcpue.adapters.lineprotocol import windows_to_lines
from dcpue.ports import Message
from dcpue.runtime.sinks import BusResultSink, FanoutSink
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import load_settings


class _ListConsumer:
    """The messages, ``per_poll`` at a time, on 4 partitions by site as the benchmark's topic has them."""

    durable_offsets = True

    def __init__(self, batches: list[tuple[str, bytes, int]], per_poll: int) -> None:
        now = int(time.time() * 1000)
        self.messages = [Message("readings", data, site, (), zlib.crc32(site.encode()) % 4, offset, now)
                         for offset, (site, data, _) in enumerate(batches)]
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


def run(sites: int, minutes: int, racks: int, per_poll: int, commit_s: float) -> dict[str, Any]:
    registry, batches, readings = make_batches(sites, minutes, 1, racks=racks)
    settings = load_settings(None, bus={"commit_interval_s": commit_s}, alerts={"enabled": False})
    consumer, producer, lines, state = (_ListConsumer(batches, per_poll), _CountingProducer(),
                                        _LineProtocolSink(registry.sites_table), _CountingState())
    # as `dcpue analyze` runs it, but writing in step: its background writes overlap waiting, not CPU
    worker = AnalyticsWorker(registry, settings, consumer, FanoutSink(lines, BusResultSink(producer, "metrics")),
                             clock=lambda: 2**62, emit_groups=False, state=state)
    cpu0, t0 = time.process_time(), time.perf_counter()
    while consumer.position < len(consumer.messages):
        worker.step(0.0)
    worker.checkpoint()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    status = worker.status()
    assert status["readings"] == readings, f"the worker saw {status['readings']} of {readings} readings"
    return {"readings": readings, "batches": len(batches), "per_poll": per_poll, "commit_s": commit_s,
            "seconds": round(elapsed, 2), "cpu_s": round(cpu, 2), "readings_per_cpu_s": round(readings / cpu),
            "cpu_us_per_reading": round(cpu / readings * 1e6, 3), "window_rows": status["windows_written"],
            "line_protocol_lines": lines.lines, "metrics_topic_bytes": producer.bytes,
            "checkpoint_bytes": state.bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--racks", type=int, default=100)
    parser.add_argument("--per-poll", type=int, default=1000, help="messages a step takes")
    parser.add_argument("--commit-s", type=float, default=1.0, help="seconds between checkpoints (the benchmark's)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = {**run(args.sites, args.minutes, args.racks, args.per_poll, args.commit_s),
              "sites": args.sites, "minutes": args.minutes, "racks_per_site": args.racks, "machine": _machine(),
              "command": "PYTHONPATH=. .venv/bin/python bench/worker_alone.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")


if __name__ == "__main__":
    main()
