"""How long a record waits in the broker with the worker's fetch settings, without the worker.

    PYTHONPATH=. .venv/bin/python bench/fetch_wait_latency.py --json bench/results/fetch-wait/consumer-alone.json

A producer sends 4.5 kB messages keyed by site at ``--rate`` a second (1,000 sites' one-minute batches arrive at
about 17 a second) to a 4-partition topic on the test broker (Tansu); a consumer polls with a fetch that waits
for ``fetch_min_bytes`` or ``fetch_max_wait_ms`` and then works 50 ms (a live worker's step), for each setting
in turn. The latency is from each record's CreateTime to the poll that returned it. A broker that completes a
waiting fetch with what arrived meanwhile keeps it under one wait plus a step; one that answers with what it
held when the fetch came lets a record wait for the next fetch too.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

import numpy as np

from bench.pipeline import _machine, report
from tests.servers import run_tansu

SETTINGS = [(1 << 20, 500), (1 << 20, 200), (1, 500)]  # (fetch_min_bytes, fetch_max_wait_ms)


def measure(bootstrap: str, min_bytes: int, max_wait_ms: int, rate: float, seconds: float) -> dict[str, Any]:
    """One setting: a fresh topic, the producer at ``rate``, the consumer for ``seconds``."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, compression_type="lz4", acks="all")
    # the partitions assigned by hand: no group to join (a fresh group per setting is slow to form on Tansu)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_min_bytes=min_bytes,
                             fetch_max_wait_ms=max_wait_ms, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(parts)
    consumer.seek_to_end(*parts)
    stop = threading.Event()

    def produce() -> None:
        sent, t0 = 0, time.perf_counter()
        while not stop.is_set():
            producer.send(topic, b"x" * 4500, key=f"site-{sent % 1000}".encode())
            sent += 1
            time.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))

    sender = threading.Thread(target=produce)
    sender.start()
    latency: list[float] = []
    polls: list[float] = []
    end = time.time() + seconds
    try:
        while time.time() < end:
            started = time.perf_counter()
            records = consumer.poll(timeout_ms=500, max_records=5000)
            polls.append(time.perf_counter() - started)
            now = time.time()
            latency += [now - r.timestamp / 1000 for batch in records.values() for r in batch]
            time.sleep(0.05)  # a live worker's step
    finally:
        stop.set()
        sender.join()
        consumer.close()
        producer.close()
    if not latency:
        raise RuntimeError(f"no record came back in {seconds} s (fetch_min_bytes {min_bytes}, wait {max_wait_ms} ms)")
    lat, poll = np.array(latency), np.array(polls)
    return {"fetch_min_bytes": min_bytes, "fetch_max_wait_ms": max_wait_ms, "records": len(lat),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 3), "latency_max_s": round(float(lat.max()), 3),
            "polls": len(poll), "poll_p50_s": round(float(np.percentile(poll, 50)), 3),
            "poll_max_s": round(float(poll.max()), 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=17.0, help="messages a second")
    parser.add_argument("--seconds", type=float, default=60.0, help="per setting")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    with run_tansu() as broker:
        runs = [measure(broker.bootstrap_servers, min_bytes, wait, args.rate, args.seconds)
                for min_bytes, wait in SETTINGS]
    result = {"broker": "tansu (memory storage)", "rate_messages_per_s": args.rate, "seconds_each": args.seconds,
              "runs": runs, "machine": _machine(),
              "command": "PYTHONPATH=. .venv/bin/python bench/fetch_wait_latency.py "
                         + " ".join(argv if argv is not None else [])}
    report(result, args.json)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
