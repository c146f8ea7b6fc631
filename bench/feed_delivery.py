"""Feed throughput: build and queue the reports of a simulated store, then deliver them to the reference receiver.

    PYTHONPATH=. .venv/bin/python bench/feed_delivery.py [--json bench/results/feed-delivery.json]

Uses the feed tests' fixtures (two sites, two July days of one-minute readings → 384 real-time,
96 hourly and 4 daily reports) and ``dcpue feed receive`` started as a real process on 127.0.0.1,
once per signature algorithm. Reports wall-clock times on this machine; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from dcpue.feed.cli import _drain
from dcpue.feed.config import FeedSettings
from dcpue.feed.sender import FeedService
from tests.helpers.feed import API_KEY, SECRET, TZ, ReceiverProcess, engine_windows, filled_store, fleet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    engine_windows()
    tmp = Path(tempfile.mkdtemp(prefix="dcpue-feed-bench-"))
    store = filled_store(tmp / "store.sqlite")
    results = []
    with ReceiverProcess(tmp) as peer:
        for algorithm in ("hmac-sha256", "hmac-sm3"):
            (tmp / algorithm).mkdir()
            cfg = FeedSettings.model_validate({
                "enabled": True, "reports": ["realtime", "hourly", "daily"], "start": "2024-07-14",
                "outbox_path": str(tmp / algorithm / "outbox.sqlite"),
                "destinations": [{"name": "bench", "url": f"{peer.url}/api/v1/reports", "api_key": API_KEY,
                                  "secret": SECRET, "algorithm": algorithm, "max_per_minute": 1_000_000,
                                  "burst": 1000}]})
            service = FeedService(cfg, store, fleet(), tz=TZ).open()
            t0 = time.perf_counter()
            run = service.tick()
            t1 = time.perf_counter()
            _drain(service, 300)
            t2 = time.perf_counter()
            status = service.status()["destinations"][0]
            service.stop()
            results.append({"algorithm": algorithm, "reports": sum(run.reports.values()),
                            "build_and_queue_s": round(t1 - t0, 3), "deliver_s": round(t2 - t1, 3),
                            "delivered": status["delivered"], "pending": status["pending"],
                            "reports_per_s": round(status["delivered"] / (t2 - t1), 1)})
            print(results[-1])
        answers = peer.received()["answers"]
    store.close()
    out = {"command": "PYTHONPATH=. .venv/bin/python bench/feed_delivery.py --json bench/results/feed-delivery.json",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "receiver_answers": answers, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
