"""Prometheus self-monitoring of an API process (``GET /metrics``), read from its status at scrape time.

Nothing is counted twice: every scrape calls the same callables ``GET /api/v1/status``, ``/api/v1/feed`` and
``/api/v1/alerts`` answer from, and turns what they hold into metric families (:data:`STATUS_METRICS` maps
the status keys; a key the process does not report is left out). Labels are bounded: error kinds, alert
names and states, configured feed destinations and alert receivers. Each app gets its own
:class:`~prometheus_client.CollectorRegistry` from :func:`build_registry`, never the global one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusMetric:
    """How one numeric status key is exposed: ``name`` (counters without ``_total``), ``kind``, ``help``,
    and ``scale`` applied to the value (e.g. 1e-3 for ms → s)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    scale: float = 1.0


# status key → metric. Keys come from EmbeddedPipeline.status() / AnalyticsWorker.status() (dcpue demo) and
# from the views of `dcpue serve` (MetricsView, the alert and recommendation views).
STATUS_METRICS: dict[str, StatusMetric] = {
    "batches_sent": StatusMetric("dcpue_reading_batches_sent", "counter",
                                 "Reading batches the collector stage put on the bus (one per site and poll)"),
    "messages": StatusMetric("dcpue_bus_messages_consumed", "counter",
                             "Messages consumed from the bus: reading batches in the analytics worker, window-row "
                             "messages of the metrics topic in dcpue serve"),
    "readings": StatusMetric("dcpue_readings", "counter", "Readings accepted by the analytics worker "
                             "(known site and point, not ahead of the clock)"),
    "late_dropped": StatusMetric("dcpue_late_readings_dropped", "counter",
                                 "Readings dropped because their window had already closed"),
    "dead_letters": StatusMetric("dcpue_dead_letters", "counter",
                                 "Records dead-lettered by the analytics worker: undecodable, unknown site or point, "
                                 "timestamp ahead of the clock"),
    "windows_written": StatusMetric("dcpue_windows_written", "counter",
                                    "Window result rows (site, cluster, fleet) written to the result store"),
    "rows": StatusMetric("dcpue_view_rows_applied", "counter",
                         "Window rows applied to this dcpue serve view from the metrics topic"),
    "undecodable": StatusMetric("dcpue_view_undecodable_messages", "counter",
                                "Metrics-topic messages this dcpue serve view could not decode"),
    "alert_events": StatusMetric("dcpue_alert_events_read", "counter",
                                 "Alert events this dcpue serve view read from the alerts topic"),
    "malformed_alert_records": StatusMetric("dcpue_malformed_alert_records", "counter",
                                            "Alerts-topic records this dcpue serve view could not use"),
    "recommendations": StatusMetric("dcpue_recommendations_read", "counter",
                                    "Cooling recommendations this dcpue serve view read from its topic"),
    "cooling_trainings": StatusMetric("dcpue_cooling_trainings", "counter", "Cooling models trained"),
    "cooling_refusals": StatusMetric("dcpue_cooling_refusals", "counter",
                                     "Cooling recommendations refused (model error too large, outside the envelope)"),
    "bus_lag": StatusMetric("dcpue_bus_lag_messages", "gauge",
                            "Reading batches on the bus the analytics worker has not processed yet (consumer lag)"),
    "buffered_readings": StatusMetric("dcpue_engine_buffered_readings", "gauge",
                                      "Readings held by the PUE engine for windows not yet closed"),
    "open_windows": StatusMetric("dcpue_engine_open_windows", "gauge", "Windows the PUE engine holds open"),
    "last_write_s": StatusMetric("dcpue_store_last_write_duration_seconds", "gauge",
                                 "Duration of the last successful result-store write [s]"),
    "write_s": StatusMetric("dcpue_store_write_seconds", "counter",
                            "Time the analytics worker spent writing results (result store, dead letters, alerts, "
                            "recommendations), in the background or not [s]"),
    "write_latency_p50_s": StatusMetric("dcpue_write_latency_p50_seconds", "gauge",
                                        "Median time from a reading batch's send (Kafka CreateTime) to its results "
                                        "written, since the worker started"),
    "write_latency_p99_s": StatusMetric("dcpue_write_latency_p99_seconds", "gauge",
                                        "99th percentile of the time from a reading batch's send to its results "
                                        "written, since the worker started"),
    "newest_ts_ms": StatusMetric("dcpue_newest_reading_timestamp_seconds", "gauge",
                                 "Timestamp of the newest accepted reading [Unix s]", 1e-3),
    "newest_end_ms": StatusMetric("dcpue_view_newest_window_end_timestamp_seconds", "gauge",
                                  "End of the newest window this dcpue serve view holds [Unix s]", 1e-3),
    "sim_time_ms": StatusMetric("dcpue_simulated_time_seconds", "gauge",
                                "The demo's simulated clock [Unix s]", 1e-3),
    "cooling_models": StatusMetric("dcpue_cooling_models", "gauge", "Sites with a trained cooling model"),
}
SINK_ERRORS = "dcpue_sink_errors"  # from the status' "errors": {kind: count}
BUSY_SECONDS = "dcpue_worker_busy_seconds"  # from the status' "busy_s": {phase: seconds}
ERROR_KINDS = ("store_write", "state_write", "commit", "bad_checkpoint")  # AnalyticsWorker._count_error
FEED_STATES = ("pending", "delivered", "failed")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class StatusCollector(Collector):
    """Reads the process' status callables on every scrape (see the module doc); a source that raises is
    logged and left out of that scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]] | None = None,
                 feed: Callable[[], dict[str, Any]] | None = None, alerts: Any = None,
                 ready: Callable[[], str | None] | None = None, site_count: int = 0, auth: Any = None) -> None:
        self.status = status
        self.feed = feed
        self.alerts = alerts  # a dcpue.runtime.alerts.AlertsApi, or None
        self.ready = ready  # why the process is not ready (as /readyz), or None
        self.site_count = site_count
        self.auth = auth  # a dcpue.web.auth.TokenAuth, or None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on what the process reports; nothing to check in advance

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        for name, source in (("status", self._status), ("alerts", self._alerts), ("feed", self._feed)):
            try:
                families = list(source())
            except Exception as exc:  # noqa: BLE001 — one source failing must not fail the scrape
                log.warning("metrics: %s not readable: %s", name, exc)
                continue
            yield from families

    def _process(self) -> Iterator[Metric]:
        sites = GaugeMetricFamily("dcpue_registry_sites", "Sites in the registry")
        sites.add_metric([], self.site_count)
        yield sites
        if self.ready is not None:
            reason = self.ready()
            ready = GaugeMetricFamily("dcpue_ready", "1 when /readyz answers 200 (results complete enough to serve)")
            ready.add_metric([], 0 if reason else 1)
            yield ready
        if self.auth is not None:
            refused = CounterMetricFamily("dcpue_http_unauthorized_requests",
                                          "Requests refused with 401 (no or an unaccepted API token)")
            refused.add_metric([], self.auth.refused)
            yield refused

    def _status(self) -> Iterator[Metric]:
        if self.status is None:
            return
        info = self.status()
        mode = info.get("mode")
        if isinstance(mode, str):
            mode_family = GaugeMetricFamily("dcpue_mode", "The process' pipeline mode (value always 1)",
                                            labels=["mode"])
            mode_family.add_metric([mode], 1)
            yield mode_family
        for key, spec in STATUS_METRICS.items():
            value = _number(info.get(key))
            if value is None:
                continue
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(spec.name, spec.help) if spec.kind == "counter"
                else GaugeMetricFamily(spec.name, spec.help))
            family.add_metric([], value * spec.scale)
            yield family
        busy = info.get("busy_s")
        if isinstance(busy, dict):
            phases = CounterMetricFamily(
                BUSY_SECONDS, "The analytics worker's main thread by what it did [s]: poll (waiting for and "
                "fetching messages: spare time when the worker keeps up), decode, engine, alerts (alert rules and "
                "cooling advice), write (writing results, waiting for a background write, backing off after a "
                "failed one), checkpoint (state and offset commits), rebalance (partitions assigned or revoked, "
                "their state loaded)", labels=["phase"])
            for phase, seconds in busy.items():
                if _number(seconds) is not None:
                    phases.add_metric([str(phase)], float(seconds))
            yield phases
        errors = info.get("errors")
        if isinstance(errors, dict):
            sink = CounterMetricFamily(SINK_ERRORS, "Failures of the analytics worker by kind: store_write (result "
                                       "store), state_write (checkpoint), commit (offsets), bad_checkpoint",
                                       labels=["kind"])
            for kind in ERROR_KINDS:
                sink.add_metric([kind], float(errors.get(kind, 0)))
            for kind, count in sorted(errors.items()):  # a kind added later still shows
                if kind not in ERROR_KINDS:
                    sink.add_metric([str(kind)], float(count))
            yield sink

    def _alerts(self) -> Iterator[Metric]:
        if self.alerts is None:
            return
        active = self.alerts.active()
        by_name: dict[tuple[str, str, str], int] = {}
        for alert in active:
            labels = alert.get("labels", {})
            key = (str(labels.get("alertname", "")), str(labels.get("severity", "")), str(alert.get("state", "")))
            by_name[key] = by_name.get(key, 0) + 1
        family = GaugeMetricFamily("dcpue_alerts_active", "Pending and firing alerts by name, severity and state",
                                   labels=["alertname", "severity", "state"])
        for key, count in sorted(by_name.items()):
            family.add_metric(list(key), count)
        yield family
        firing = [a.get("labels", {}) for a in active if a.get("state") == "firing"]
        down = GaugeMetricFamily("dcpue_collector_devices_down",
                                 "Collector devices whose reads have been failing for alerts.device_down_for_s "
                                 "(firing CollectorDeviceDown alerts)")
        down.add_metric([], len({(lb.get("site"), lb.get("device")) for lb in firing
                                 if lb.get("alertname") == "CollectorDeviceDown"}))
        yield down
        silent = GaugeMetricFamily("dcpue_sites_without_data",
                                   "Sites silent for alerts.no_data_after_s (firing NoData alerts)")
        silent.add_metric([], len({lb.get("site") for lb in firing if lb.get("alertname") == "NoData"}))
        yield silent
        dropping = GaugeMetricFamily("dcpue_collector_spools_dropping",
                                     "Collectors whose spool is dropping data (firing SpoolDroppingData alerts)")
        dropping.add_metric([], len({lb.get("collector") for lb in firing
                                     if lb.get("alertname") == "SpoolDroppingData"}))
        yield dropping

    def _feed(self) -> Iterator[Metric]:
        if self.feed is None:
            return
        info = self.feed()
        reports = GaugeMetricFamily("dcpue_feed_outbox_reports",
                                    "Reports in the provincial feed's outbox per destination and state",
                                    labels=["destination", "state"])
        age = GaugeMetricFamily("dcpue_feed_oldest_pending_age_seconds",
                                "How long the oldest pending report of a destination has waited [s]; 0 when none",
                                labels=["destination"])
        overdue = GaugeMetricFamily("dcpue_feed_overdue",
                                    "1 when a destination's oldest pending report has waited its alert_after_s",
                                    labels=["destination"])
        for dest in info.get("destinations", []):
            name = str(dest.get("name", ""))
            for state in FEED_STATES:
                reports.add_metric([name, state], float(dest.get(state) or 0))
            age.add_metric([name], float(dest.get("oldest_pending_age_s") or 0.0))
            overdue.add_metric([name], 1.0 if dest.get("overdue") else 0.0)
        skipped = GaugeMetricFamily("dcpue_feed_skipped_sites", "Sites the feed cannot report (no platform code)")
        skipped.add_metric([], len(info.get("skipped_sites") or {}))
        yield from (reports, age, overdue, skipped)


def build_registry(status: Callable[[], dict[str, Any]] | None = None,
                   feed: Callable[[], dict[str, Any]] | None = None, alerts: Any = None,
                   ready: Callable[[], str | None] | None = None, site_count: int = 0,
                   auth: Any = None) -> CollectorRegistry:
    """A new registry with a :class:`StatusCollector` over these sources, and the alert-delivery metrics
    (:mod:`dcpue.alerting.metrics`) when ``alerts`` delivers webhooks in this process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status, feed, alerts, ready, site_count, auth))
    delivery = getattr(alerts, "delivery", None)
    if delivery is not None:
        from dcpue.alerting.metrics import register_delivery_metrics

        register_delivery_metrics(delivery, registry)
    return registry
