"""A dcpue process for the crash test: enqueue one alert, then deliver until killed.

Run as ``python -m tests.alerting.dispatch_child OUTBOX URL SECRET`` from the repository root. It prints
``enqueued`` once the alert is in the outbox.
"""

from __future__ import annotations

import sys
import time

from dcpue.alerting.config import DeliverySettings, Receiver, Route
from dcpue.alerting.delivery import AlertDelivery
from tests.alerting.helpers import make_event

CRASH_EVENT = make_event(alertname="chw_supply_hot", rack="B07")


def delivery(outbox_path: str, url: str, secret: str) -> AlertDelivery:
    """The configuration both the killed process and its successor use."""
    receivers = [Receiver(name="noc", url=url, secret=secret, timeout_s=60)]
    return AlertDelivery(receivers, [Route(receivers=("noc",))],
                         DeliverySettings(outbox_path=outbox_path, poll_interval_s=0.05))


def main() -> None:
    outbox_path, url, secret = sys.argv[1:4]
    running = delivery(outbox_path, url, secret).start()
    running.notify([CRASH_EVENT])
    print("enqueued", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
