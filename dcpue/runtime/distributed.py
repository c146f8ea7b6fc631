"""Wiring of the distributed path: the same stages as the embedded pipeline on Kafka and InfluxDB.

* collector → readings topic (keyed by site), acknowledged by Kafka before the next poll;
* analytics workers (one consumer group over the readings partitions) → site rows to InfluxDB and
  to the metrics topic, engine checkpoints to the compacted state topic;
* one group worker → cluster and fleet rows from the metrics topic;
* with alerting on, each analytics worker also evaluates the alert rules of its sites (their alert
  state rides in the same checkpoints) → the alerts topic and InfluxDB; ``dcpue notify`` delivers
  them from the alerts topic; ``dcpue serve`` shows them and publishes silences on the silences topic.

``dcpue collect``, ``dcpue analyze`` and ``dcpue aggregate`` run one stage each (one process per
container); ``dcpue demo --kafka … --influx …`` runs all of them in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcpue.ports import read_to_end
from dcpue.registry import Registry
from dcpue.runtime.aggregator import GroupWorker
from dcpue.runtime.sinks import BusResultSink, FanoutSink
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import Settings

log = logging.getLogger(__name__)

AGGREGATE_GROUP_SUFFIX = "-aggregate"
NOTIFY_GROUP_SUFFIX = "-notify"


@dataclass
class Stage:
    """A running stage and what must be closed after it, in order."""

    worker: Any
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:  # noqa: BLE001 — close the rest regardless
                log.exception("closing %s failed", close)


def result_store(settings: Settings, registry: Registry) -> Any:
    """The configured store: InfluxDB (with readings and inventory) or the local file store."""
    if settings.store.kind == "influxdb":
        from dcpue.adapters.influxdb import InfluxSink

        sink = InfluxSink(settings.store.influxdb, registry.sites_table, registry.points_table).setup()
        sink.write_inventory(int(time.time() // 86_400) * 86_400_000)  # today's inventory point (UTC day)
        return sink
    from dcpue.runtime.store import FileStore

    return FileStore(settings.store.path).setup()


def analytics_stage(settings: Settings, registry: Registry, stores: list[Any],
                    clock: Callable[[], int] | None = None, emit_groups: bool = False,
                    shared: Sequence[Any] = ()) -> Stage:
    """A consumer-group analytics worker: readings → site rows (``stores`` + metrics topic), state → state topic.

    The stage closes ``stores`` when it is closed; ``shared`` sinks are written first and left open.
    """
    from dcpue.adapters.kafka import KafkaConsumerAdapter, KafkaProducerAdapter, KafkaStateStore

    kafka, topics = settings.bus.kafka, settings.bus.topics
    producer = KafkaProducerAdapter(kafka).setup()
    state = KafkaStateStore(kafka, topics.state, producer).setup()
    consumer = KafkaConsumerAdapter(kafka, [topics.readings], fill_fetches=True).setup()
    sink = FanoutSink(*shared, *stores, BusResultSink(producer, topics.metrics))
    alerts = alert_output = inputs = None
    if settings.alerts.enabled:
        from dcpue.adapters.kafka import KafkaTailConsumer
        from dcpue.analytics.alerts.engine import AlertEngine
        from dcpue.runtime.alerts import AlertOutput

        alerts = AlertEngine(registry, settings.engine, settings.alerts)
        # events → the alerts topic (for `dcpue notify` and `dcpue serve`) and InfluxDB (Grafana annotations)
        alert_output = AlertOutput(producer=producer, topic=topics.alerts, sinks=[*shared, *stores])
        inputs = KafkaTailConsumer(kafka, {topics.health: "latest", topics.silences: "earliest"}).setup()
    cooling = advice = None
    if settings.cooling.enabled:
        from dcpue.runtime.cooling import CoolingAdvisor, recommendation_writer, site_water_classes

        cooling = CoolingAdvisor(registry, settings.cooling, water_class=settings.alerts.water_class,
                                         site_water_classes=site_water_classes(settings))
        advice = recommendation_writer([*shared, *stores], producer, topics.recommendations)
    worker = AnalyticsWorker(registry, settings, consumer, sink, dead_letter_producer=producer, clock=clock,
                             emit_groups=emit_groups, state=state, alerts=alerts, alert_output=alert_output,
                             health=inputs, cooling=cooling, recommendation_output=advice,
                             overlap_writes=True)  # InfluxDB and Kafka answer while the next poll is computed
    return Stage(worker, [lambda: _final_checkpoint(worker), *([cooling.close] if cooling else []), consumer.close,
                          *([inputs.close] if inputs is not None else []), producer.close,
                          *[store.close for store in stores]])


def notify_stage(settings: Settings, history_path: Path | None) -> Stage:
    """``dcpue notify``: alert events from the alerts topic → history (``history_path``) and webhook outbox."""
    from dcpue.adapters.kafka import KafkaConsumerAdapter, KafkaProducerAdapter
    from dcpue.runtime.alerts import AlertHistory, AlertNotifier

    kafka, topics = settings.bus.kafka, settings.bus.topics
    delivery = None
    if settings.alerts.receivers:
        from dcpue.alerting.delivery import AlertDelivery

        delivery = AlertDelivery(settings.alerts.receivers, settings.alerts.routes, settings.alerts.delivery)
    history = AlertHistory(history_path).setup() if history_path is not None else None
    producer = KafkaProducerAdapter(kafka).setup()
    consumer = KafkaConsumerAdapter(kafka, [topics.alerts], group_id=kafka.group_id + NOTIFY_GROUP_SUFFIX).setup()

    def dead_letter(message: Any, reason: str) -> None:
        producer.send(topics.dead_letters, message.value, key=message.key,
                      headers=(("reason", reason.encode()), ("source_topic", message.topic.encode())))

    notifier = AlertNotifier(consumer, history, delivery, dead_letter=dead_letter)
    if delivery is not None:
        delivery.start()
    closers: list[Callable[[], None]] = [notifier.checkpoint, consumer.close, producer.close]
    if delivery is not None:
        closers.append(delivery.stop)
    if history is not None:
        closers.append(history.close)
    return Stage(notifier, closers)


def alert_view_stage(settings: Settings, history_path: Path) -> tuple[Stage, Any]:
    """``dcpue serve``'s alert view: the alerts and silences topics, read whole → a local history.

    Returns the stage and the :class:`~dcpue.runtime.alerts.AlertsApi` to serve; silences set through
    it are published on the silences topic, which every analytics worker applies.
    """
    from dcpue.adapters.kafka import KafkaProducerAdapter, KafkaTailConsumer
    from dcpue.runtime.alerts import AlertBoard, AlertFeed, AlertHistory, AlertsApi

    kafka, topics = settings.bus.kafka, settings.bus.topics
    history = AlertHistory(history_path).setup()
    board = AlertBoard(history)
    producer = KafkaProducerAdapter(kafka).setup()
    consumer = KafkaTailConsumer(kafka, {topics.alerts: "earliest", topics.silences: "earliest"}).setup()

    def publish(key: str, value: bytes) -> None:
        producer.send(topics.silences, value, key=key)
        producer.flush()

    api = AlertsApi(board, history, publish=publish)
    feed = AlertFeed(consumer, history, board, topics.alerts, topics.silences)
    return Stage(feed, [consumer.close, producer.close, history.close]), api


def aggregate_stage(settings: Settings, registry: Registry, stores: list[Any], shared: Sequence[Any] = ()) -> Stage:
    """The group worker: site rows from the metrics topic → cluster and fleet rows.

    Rows go to ``shared`` (left open) and ``stores`` (closed with the stage) and the metrics topic.
    """
    from dcpue.adapters.kafka import KafkaConsumerAdapter, KafkaProducerAdapter, KafkaStateStore

    kafka, topics = settings.bus.kafka, settings.bus.topics
    producer = KafkaProducerAdapter(kafka).setup()
    state = KafkaStateStore(kafka, topics.group_state, producer).setup()
    consumer = KafkaConsumerAdapter(kafka, [topics.metrics], group_id=kafka.group_id + AGGREGATE_GROUP_SUFFIX).setup()
    sink = FanoutSink(*shared, *stores, BusResultSink(producer, topics.metrics))
    worker = GroupWorker(registry, settings, consumer, sink, state=state)
    return Stage(worker, [lambda: _final_checkpoint(worker), consumer.close, producer.close,
                          *[store.close for store in stores]])


def view_stage(settings: Settings, store: Any, group_id: str) -> Stage:
    """``dcpue serve``'s feeder: every row on the metrics topic → ``store`` (closed with the stage)."""
    from dcpue.adapters.kafka import KafkaConsumerAdapter
    from dcpue.runtime.aggregator import MetricsView

    consumer = KafkaConsumerAdapter(settings.bus.kafka, [settings.bus.topics.metrics], group_id=group_id).setup()
    view = MetricsView(consumer, store, live_history_ms=int(settings.engine.live_history_h * 3_600_000))
    return Stage(view, [consumer.close, store.close])


def _final_checkpoint(worker: Any) -> None:
    try:
        if not worker.checkpoint():
            log.warning("stopping with results not written; the next worker replays them")
    finally:
        if hasattr(worker, "close"):
            worker.close()  # no background write may outlive the producer and stores closed next


class DistributedDemo:
    """``dcpue demo --kafka --influx``: collector, analytics and group worker on Kafka, in one process.

    Results go to InfluxDB (for Grafana, if ``store.kind`` is ``influxdb``) and to the local file
    store ``mirror`` that the live page reads; the mirror is closed last, by :meth:`stop`.
    """

    def __init__(self, settings: Settings, registry: Registry, collector: Any, clock: Any, mirror: Any,
                 serve_http: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.collector = collector
        self.clock = clock
        self.mirror = mirror
        self.stop_event = threading.Event()
        self.collector_done = threading.Event()
        self.errors: list[BaseException] = []
        self.batches_sent = 0
        self.sim_now_ms = clock.start_ms
        self.analytics: Stage | None = None
        self.groups: Stage | None = None
        self.alert_view: Stage | None = None
        self.notifier: Stage | None = None
        self._threads: list[threading.Thread] = []
        self.serve_http = serve_http
        self.http_port: int | None = None
        self._server: Any = None

    def start(self) -> None:
        from dcpue.adapters.kafka import create_topics
        from dcpue.runtime.embedded import serve_http, spawn_guarded

        create_topics(self.settings.bus.kafka, self.settings.bus.topics)
        influx = self.settings.store.kind == "influxdb"
        self.analytics = analytics_stage(self.settings, self.registry,
                                         [result_store(self.settings, self.registry)] if influx else [],
                                         clock=self.clock.now_ms, shared=[self.mirror])
        self.groups = aggregate_stage(self.settings, self.registry,
                                      [result_store(self.settings, self.registry)] if influx else [],
                                      shared=[self.mirror])
        alerts_api = None
        if self.settings.alerts.enabled:
            path = Path(self.mirror.path)
            self.alert_view, alerts_api = alert_view_stage(self.settings, path.with_name(f"{path.stem}.alerts.sqlite"))
            if self.settings.alerts.receivers:
                self.notifier = notify_stage(self.settings, None)
        self.clock.start()
        stages = [(self._collect, "collector"), (self._analyze, "analytics"), (self._aggregate, "groups")]
        stages += [(lambda s=stage: self._follow(s), name)  # type: ignore[misc]
                   for stage, name in ((self.alert_view, "alert-view"), (self.notifier, "notify")) if stage]
        for target, name in stages:
            self._threads.append(spawn_guarded(target, name, self.errors, self.stop_event))
        if self.serve_http:
            self._server, _, self.http_port = serve_http(self.settings, self.mirror, self.registry, self.status,
                                                         self.stop_event, self.errors, alerts=alerts_api)

    def wait(self, duration_s: float | None, on_tick: Callable[[], None] | None = None, tick_s: float = 5.0) -> None:
        """Block until ``duration_s`` passed or the demo stopped, calling ``on_tick`` periodically."""
        from dcpue.runtime.embedded import wait_until

        wait_until(self.stop_event, duration_s, on_tick, tick_s)

    def _collect(self) -> None:
        from dcpue.adapters.kafka import KafkaProducerAdapter
        from dcpue.runtime.embedded import run_collector

        producer = KafkaProducerAdapter(self.settings.bus.kafka).setup()
        try:
            run_collector(self, producer)
        finally:
            producer.close()

    def _analyze(self) -> None:
        assert self.analytics is not None
        worker = self.analytics.worker
        idle = 0
        while not (self.collector_done.is_set() and idle >= 3):  # drained: three empty polls after the collector
            idle = 0 if worker.step(timeout_s=0.5) else idle + 1
        self.analytics.close()

    def _aggregate(self) -> None:
        assert self.groups is not None
        worker = self.groups.worker
        analytics = next(t for t in self._threads if t.name == "dcpue-analytics")
        idle = 0
        while not (not analytics.is_alive() and idle >= 3):
            idle = 0 if worker.step(timeout_s=0.5) else idle + 1
        self.groups.close()

    def _follow(self, stage: Stage) -> None:
        """Step an alert stage until the analytics worker has stopped and three polls came back empty."""
        analytics = next(t for t in self._threads if t.name == "dcpue-analytics")
        idle = 0
        while not (not analytics.is_alive() and idle >= 3):
            idle = 0 if stage.worker.step(timeout_s=0.5) else idle + 1
        stage.close()

    def status(self) -> dict[str, object]:
        worker = self.analytics.worker.status() if self.analytics else {}
        groups = self.groups.worker.status() if self.groups else {}
        return {"mode": "distributed", "sim_time_ms": self.sim_now_ms, "timezone": self.settings.engine.timezone,
                "speed": self.clock.speed, "sites": len(self.registry.sites), "batches_sent": self.batches_sent,
                "bus_lag": None, **worker, "group_rows_written": groups.get("group_rows_written", 0)}

    def stop(self, timeout_s: float = 120.0) -> bool:
        """Stop collecting, let both workers drain and commit, then close everything."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._server is not None:
            self._server.should_exit = True
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self.errors.append(RuntimeError(f"did not drain within {timeout_s:g} s: {', '.join(alive)}"))
            return False
        time.sleep(0.3)  # let the HTTP thread finish its last response before the store closes
        self.mirror.close()
        return True


class RecommendationFeed:
    """``dcpue serve``'s view of the recommendations topic (read whole): records → the view store."""

    def __init__(self, consumer: Any, store: Any) -> None:
        self.consumer = consumer
        self.store = store
        self.records = 0
        self.malformed = 0
        self.caught_up = False  # the topic read to where it ended (checked on the polling thread)

    def not_ready(self) -> str | None:
        """Why the recommendations view is not complete yet (for ``/readyz``), or None."""
        return None if self.caught_up else "recommendation view is still reading the recommendations topic"

    def step(self, timeout_s: float = 0.5) -> int:
        import json

        messages = self.consumer.poll(timeout_s, 2000)
        records = []
        for message in messages:
            try:
                record = json.loads(message.value)
                if not isinstance(record, dict) or not {"site", "ts_ms"} <= record.keys():
                    raise ValueError("not a recommendation record")
                records.append(record)
            except ValueError as exc:
                self.malformed += 1
                log.warning("ignoring recommendation record at offset %s: %s", message.offset, exc)
        if records:
            self.store.write_recommendations(records)
            self.records += len(records)
        self.caught_up = self.caught_up or read_to_end(self.consumer, messages)  # once this poll's records are in
        return len(messages)

    def status(self) -> dict[str, int]:
        return {"recommendations": self.records, "malformed_recommendations": self.malformed}


def recommendation_view_stage(settings: Settings, store: Any) -> Stage:
    """The recommendations topic, read from its start, into ``store`` (left open: the caller owns it)."""
    from dcpue.adapters.kafka import KafkaTailConsumer

    consumer = KafkaTailConsumer(settings.bus.kafka, {settings.bus.topics.recommendations: "earliest"}).setup()
    return Stage(RecommendationFeed(consumer, store), [consumer.close])
