"""The embedded pipeline: collector → in-process bus → analytics worker → file store → HTTP.

Everything runs in one process with no servers to install. Each stage is a thread talking
through the same ports the distributed deployment uses (the bus is Kafka-shaped, the store
upserts like InfluxDB), so swapping adapters changes no stage.

Shutdown is orderly: the collector stops first, the worker drains and commits everything
already on the bus, and only then is the store closed, so nothing accepted is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from dcpue.ingest.base import Collector, publish_polls
from dcpue.ports import Producer
from dcpue.registry import Registry
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import Settings

if TYPE_CHECKING:
    from dcpue.runtime.alerts import AlertsApi

log = logging.getLogger(__name__)

ANALYTICS_GROUP = "dcpue-analytics"


@dataclass
class SimClock:
    """Maps wall time to simulated time: ``start_ms`` plus elapsed wall time × ``speed``."""

    start_ms: int
    speed: float
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._t0) * self.speed * 1000)


def build_alerting(settings: Settings, registry: Registry, history_path: Path,
                   producer: Producer | None) -> tuple[AlertsApi | None, Callable[[list[Any]], None] | None]:
    """The alert engine and where its events go: a history file, the alerts topic, webhook receivers.

    Returns (None, None) when ``alerts.enabled`` is false. Delivery runs only with receivers configured.
    """
    if not settings.alerts.enabled:
        return None, None
    from dcpue.analytics.alerts.engine import AlertEngine
    from dcpue.runtime.alerts import AlertHistory, AlertOutput, AlertsApi

    engine = AlertEngine(registry, settings.engine, settings.alerts)
    history = AlertHistory(history_path).setup()
    delivery = None
    if settings.alerts.receivers:
        from dcpue.alerting.delivery import AlertDelivery

        delivery = AlertDelivery(settings.alerts.receivers, settings.alerts.routes, settings.alerts.delivery)
    api = AlertsApi(engine, history, delivery)
    output = AlertOutput(history, producer, settings.bus.topics.alerts, delivery)
    return api, output


class EmbeddedPipeline:
    """Runs one collector, one analytics worker and the HTTP API in this process."""

    def __init__(self, settings: Settings, registry: Registry, collector: Collector, clock: SimClock,
                 store: FileStore, serve_http: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.collector = collector
        self.clock = clock
        self.store = store
        self.bus = InProcessBus(settings.bus.max_pending_messages)
        self.alerts, alert_output = build_alerting(settings, registry, Path(store.path).with_name("alerts.sqlite"),
                                                   self.bus.producer(send_timeout_s=None))
        self.cooling = None
        if settings.cooling.enabled:
            from dcpue.runtime.cooling import CoolingAdvisor, recommendation_writer, site_water_classes

            self.cooling = CoolingAdvisor(registry, settings.cooling, water_class=settings.alerts.water_class,
                                         site_water_classes=site_water_classes(settings))
        self.worker = AnalyticsWorker(
            registry, settings, self.bus.consumer([settings.bus.topics.readings], ANALYTICS_GROUP), store,
            clock=clock.now_ms,  # simulated time is "now" for the clock-skew check
            state=store, alerts=self.alerts.engine if self.alerts else None, alert_output=alert_output,
            health=self.bus.consumer([settings.bus.topics.health], "dcpue-alert-inputs") if self.alerts else None,
            cooling=self.cooling,
            recommendation_output=recommendation_writer([store], self.bus.producer(send_timeout_s=None),
                                                        settings.bus.topics.recommendations) if self.cooling else None,
        )
        self.feed = None
        if settings.feed.enabled:
            from dcpue.feed.sender import FeedService

            self.feed = FeedService.from_settings(
                settings, store, registry,
                alerts=alert_output,  # FeedUndelivered: history, alerts topic and webhooks like any alert
                report_clock=lambda: clock.now_ms() / 1000.0)  # reports are made "now" in simulated time
        self.serve_http = serve_http
        self.stop_event = threading.Event()
        self.collector_done = threading.Event()
        self.errors: list[BaseException] = []
        self.batches_sent = 0
        self.sim_now_ms = clock.start_ms
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self.http_port: int | None = None

    # -- stages --------------------------------------------------------------------------
    def _collect(self) -> None:
        run_collector(self, self.bus.producer(send_timeout_s=None))

    def _analyze(self) -> None:
        topic = self.settings.bus.topics.readings
        while not (self.collector_done.is_set() and self.bus.lag(ANALYTICS_GROUP, topic) == 0):
            self.worker.step(timeout_s=0.2)
            if self.collector_done.is_set():
                self.worker.checkpoint()  # draining: commit now, not at the next interval

    def status(self) -> dict[str, object]:
        """What the status endpoint and the terminal summary show."""
        return {
            "mode": "embedded",
            "sim_time_ms": self.sim_now_ms,
            "timezone": self.settings.engine.timezone,
            "speed": self.clock.speed,
            "sites": len(self.registry.sites),
            "batches_sent": self.batches_sent,
            "bus_lag": self.bus.lag(ANALYTICS_GROUP, self.settings.bus.topics.readings),
            "alerts_firing": sum(a.get("state") == "firing" for a in self.alerts.active()) if self.alerts else 0,
            **self.worker.status(),
        }

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.clock.start()
        self._spawn(self._collect, "collector")
        self._spawn(self._analyze, "analytics")
        if self.alerts is not None and self.alerts.delivery is not None:
            self.alerts.delivery.start()
        if self.feed is not None:
            self.feed.start()
        if self.serve_http:
            self._server, thread, self.http_port = serve_http(self.settings, self.store, self.registry, self.status,
                                                              self.stop_event, self.errors, alerts=self.alerts,
                                                              feed=self.feed.status if self.feed else None)
            self._threads.append(thread)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        self._threads.append(spawn_guarded(target, name, self.errors, self.stop_event))

    def stop(self, timeout_s: float = 300.0) -> bool:
        """Stop collecting, drain the bus into the store, stop HTTP, close the store.

        Returns False (and records an error) if the worker could not drain within ``timeout_s``;
        the store is then left open under the still-running worker rather than closed beneath it.
        """
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.name in ("dcpue-collector", "dcpue-analytics"):
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            if thread.name == "dcpue-http":
                thread.join(max(1.0, deadline - time.monotonic()))
        worker = next((t for t in self._threads if t.name == "dcpue-analytics"), None)
        if worker is not None and worker.is_alive():
            lag = self.bus.lag(ANALYTICS_GROUP, self.settings.bus.topics.readings)
            self.errors.append(RuntimeError(
                f"analytics did not drain within {timeout_s:g} s: {lag} batches not processed"))
            log.error("shutdown timed out with %d batches on the bus", lag)
            return False
        if self.cooling is not None:
            self.cooling.close()
        if self.feed is not None:
            try:
                self.feed.tick()  # the windows the drain just finalised; pending reports wait on disk
            except Exception:  # the reports are made again from the store at the next start
                log.exception("feed: last run before stopping failed")
            self.feed.stop()
        self.bus.close()
        self.store.close()
        if self.alerts is not None:
            self.alerts.close()
        return True

    def wait(self, duration_s: float | None, on_tick: Callable[[], None] | None = None,
             tick_s: float = 5.0) -> None:
        """Block until ``duration_s`` passed or the pipeline stopped, calling ``on_tick`` periodically."""
        wait_until(self.stop_event, duration_s, on_tick, tick_s)


def run_collector(pipeline: Any, producer: Producer) -> None:
    """The collector stage of a pipeline: poll onto the readings topic every 0.5 s until ``stop_event``.

    Keeps ``pipeline.sim_now_ms`` and ``pipeline.batches_sent`` current for the status, closes the
    collector and sets ``pipeline.collector_done`` when it ends (the producer stays the caller's).
    """
    try:
        pipeline.collector.setup()
        while not pipeline.stop_event.is_set():
            pipeline.sim_now_ms = pipeline.clock.now_ms()
            pipeline.batches_sent += publish_polls(pipeline.collector, producer,
                                                   pipeline.settings.bus.topics.readings, lambda: pipeline.sim_now_ms)
            pipeline.stop_event.wait(0.5)
    finally:
        pipeline.collector.close()
        pipeline.collector_done.set()


def spawn_guarded(target: Callable[[], None], name: str, errors: list[BaseException],
                  stop_event: threading.Event) -> threading.Thread:
    """Run ``target`` on a daemon thread ``dcpue-<name>``; if it dies, record why and stop the pipeline.

    A dying stage must stop the whole pipeline, not leave the others waiting for it.
    """
    def run() -> None:
        try:
            target()
        except BaseException as exc:
            log.exception("%s failed", name)
            errors.append(exc)
            stop_event.set()

    thread = threading.Thread(target=run, name=f"dcpue-{name}", daemon=True)
    thread.start()
    return thread


def serve_http(settings: Settings, store: FileStore, registry: Registry, status: Callable[[], dict[str, object]],
               stop_event: threading.Event, errors: list[BaseException],
               not_ready: Callable[[], str | None] | None = None, alerts: Any = None,
               feed: Callable[[], dict[str, Any]] | None = None,
               ) -> tuple[uvicorn.Server, threading.Thread, int | None]:
    """Start the HTTP API and live page on a thread; returns (server, thread, bound port or None).

    Raises ConfigError before starting anything when ``settings.http`` exposes a non-loopback host without
    tokens (a command-line ``--host`` bypasses the settings' own check) or its tokens file is unusable.
    """
    from dcpue.errors import ConfigError
    from dcpue.web.app import create_app
    from dcpue.web.auth import TokenAuth, exposure_problem, is_loopback

    http = settings.http
    problem = exposure_problem(http.host, bool(http.tokens or http.tokens_file), http.allow_anonymous)
    if problem:
        raise ConfigError(f"invalid settings: {problem}")
    auth = TokenAuth.from_settings(http)
    if auth is None and not is_loopback(http.host):
        log.warning("http.allow_anonymous: the API on %s:%s answers anyone without a token", http.host, http.port)
    app = create_app(store, registry, settings.engine, status=status, not_ready=not_ready, alerts=alerts,
                     retirement=settings.retirement, feed=feed, auth=auth)
    config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the CLI owns signals
    thread = threading.Thread(target=server.run, name="dcpue-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and not stop_event.is_set():
        time.sleep(0.05)
    port = None
    if server.started:
        sockets = [s for srv in server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1] if sockets else settings.http.port
    else:
        errors.append(RuntimeError(f"HTTP server did not start on {settings.http.host}:{settings.http.port}"))
        stop_event.set()
    return server, thread, port


def wait_until(stop_event: threading.Event, duration_s: float | None, on_tick: Callable[[], None] | None = None,
               tick_s: float = 5.0) -> None:
    """Block until ``duration_s`` passed or ``stop_event`` is set, calling ``on_tick`` every ``tick_s``."""
    end = None if duration_s is None else time.monotonic() + duration_s
    next_tick = time.monotonic() + tick_s
    while not stop_event.is_set():
        now = time.monotonic()
        if end is not None and now >= end:
            break
        if on_tick is not None and now >= next_tick:
            on_tick()
            next_tick = now + tick_s
        stop_event.wait(min(0.2, max(0.0, (end or now + 1) - now)))
