"""Prometheus metrics of alert delivery: a custom collector read at scrape time, nothing kept twice.

Per receiver (a configured name, so a bounded label):

- ``dcpue_alert_deliveries_total{receiver, outcome}`` — counter since the process started: ``sent`` (a 2xx
  came back), ``failed`` (given up: permanent error, ``max_attempts`` or ``max_age_s``), ``retried`` (an
  attempt that failed and was rescheduled by the dispatcher; an operator's retry is not counted here);
- ``dcpue_alert_outbox_pending{receiver}`` — rows waiting in the outbox now;
- ``dcpue_alert_outbox_oldest_pending_age_seconds{receiver}`` — how long the oldest of them has waited [s]
  since it entered the queue (created, or retried by an operator); 0 when none is pending.

The gauges also cover receivers that have pending rows but are no longer configured (nothing sends those).
Wire it into a process with :func:`register_delivery_metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dcpue.alerting.outbox import OutboxError
from dcpue.errors import missing_extra

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise missing_extra("prometheus-client", "collectors") from exc

if TYPE_CHECKING:
    from dcpue.alerting.delivery import AlertDelivery

log = logging.getLogger(__name__)

DELIVERIES = "dcpue_alert_deliveries"  # exposed as dcpue_alert_deliveries_total
PENDING = "dcpue_alert_outbox_pending"
OLDEST_AGE = "dcpue_alert_outbox_oldest_pending_age_seconds"
OUTCOMES = ("sent", "failed", "retried")


class DeliveryMetricsCollector(Collector):
    """Reads ``delivery``'s dispatcher counters and its outbox on every scrape.

    ``clock`` gives unix time [s] for the age gauge (default :func:`time.time`). While the outbox is closed
    (delivery stopped) or unreadable, a scrape still returns the counters and leaves the gauges out.
    """

    def __init__(self, delivery: AlertDelivery, clock: Callable[[], float] = time.time) -> None:
        self.delivery = delivery
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (the registry checks names without touching the outbox)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """One sample per receiver and outcome, and the two outbox gauges per receiver."""
        deliveries, pending, oldest = self._families()
        stats = self.delivery.dispatcher.stats()  # the counters of AlertDelivery.stats(), without outbox I/O
        for receiver, counts in stats.items():
            for outcome in OUTCOMES:
                deliveries.add_metric([receiver, outcome], counts[outcome])
        yield deliveries
        try:
            summary = self.delivery.outbox.pending_summary()
        except OutboxError as exc:
            log.debug("alert outbox not readable for metrics: %s", exc)
            return
        now_ms = self._clock() * 1000
        for receiver in sorted(set(stats) | set(summary)):
            queue = summary.get(receiver)
            pending.add_metric([receiver], queue.count if queue else 0)
            oldest.add_metric([receiver], max(0.0, now_ms - queue.oldest_since_ms) / 1000 if queue else 0.0)
        yield pending
        yield oldest

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(DELIVERIES, "Alert notifications per receiver and outcome since start: sent (2xx), "
                                "failed (given up), retried (attempt failed, rescheduled)",
                                labels=["receiver", "outcome"]),
            GaugeMetricFamily(PENDING, "Alert notifications waiting in the outbox", labels=["receiver"]),
            GaugeMetricFamily(OLDEST_AGE, "Time the oldest pending alert notification has waited in the outbox "
                              "since it was queued or retried [s]; 0 when none is pending", labels=["receiver"]),
        )


def register_delivery_metrics(delivery: AlertDelivery, registry: CollectorRegistry) -> DeliveryMetricsCollector:
    """Register a :class:`DeliveryMetricsCollector` for ``delivery`` in ``registry``; returns it (to unregister).

    Raises ValueError (from prometheus-client) when the registry already has these metric names.
    """
    collector = DeliveryMetricsCollector(delivery)
    registry.register(collector)
    return collector
