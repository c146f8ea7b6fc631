"""What a kafka-python poll costs between steps: the benchmark's batches on Tansu, read by a bare consumer with the
worker's fetch settings that, between polls, sleeps, runs Python code or runs numpy for 0.4 s (a worker's step).

    PYTHONPATH=. .venv/bin/python bench/kafka_poll_cost.py --batches-cache /tmp/bench-batches

If the polls after the first take as long whatever the consumer does between them, their time is kafka-python's
own work on the records (unpacking, decompressing), not a wait for the broker or for the interpreter's lock.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.pipeline import _cached, make_batches


def main(argv: list[str] | None = None) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from tests.servers import run_tansu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches-cache", metavar="DIR")
    args = parser.parse_args(argv)
    _, batches, _ = _cached(args.batches_cache, make_batches, 200, 120, 1, racks=100)
    with run_tansu() as broker:
        servers = broker.bootstrap_servers
        KafkaAdminClient(bootstrap_servers=servers).create_topics([NewTopic("r", 4, 1)])
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=50, batch_size=1 << 20,
                                 compression_type="lz4", max_request_size=16 << 20)
        for site, blob, _ in batches:
            producer.send("r", blob, key=site.encode())
        producer.flush()
        work = np.random.default_rng(1).random(2_000_000)
        for between in ("sleep", "python", "numpy", "sleep", "python"):
            consumer = KafkaConsumer("r", bootstrap_servers=servers, group_id=None, auto_offset_reset="earliest",
                                     enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
                                     fetch_max_bytes=64 << 20, fetch_min_bytes=1 << 20, fetch_max_wait_ms=200)
            got, polls = 0, []
            while got < len(batches):
                started = time.perf_counter()
                records = consumer.poll(timeout_ms=2000, max_records=5000)
                took = time.perf_counter() - started
                n = sum(len(v) for v in records.values())
                got += n
                if n:
                    polls.append(round(took, 3))
                end = time.perf_counter() + 0.4
                if between == "sleep":
                    time.sleep(0.4)
                elif between == "python":
                    while time.perf_counter() < end:
                        sum(range(1000))
                else:
                    while time.perf_counter() < end:
                        np.sort(work)
            print(f"{between}: {len(polls)} polls, s each: {polls}, total {sum(polls):.2f}")
            consumer.close()


if __name__ == "__main__":
    main()
