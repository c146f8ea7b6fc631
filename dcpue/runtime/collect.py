"""``dcpue collect``: devices (or the fleet simulator) → spool → bus, with health and metrics.

Every record goes through the on-disk spool (:mod:`dcpue.ingest.spool`): a collector keeps polling
while the bus is away, replays in order when it returns and loses nothing across a restart.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dcpue.ingest.base import Collector, publish_polls
from dcpue.ingest.poller import HEALTH_SCHEMA, CollectorMetrics, DevicePoller
from dcpue.ingest.spool import Forwarder, Spool, SpoolingProducer
from dcpue.ports import Producer
from dcpue.registry import Registry
from dcpue.settings import Settings

log = logging.getLogger(__name__)


class CollectRuntime:
    """One collector process: a spool, its forwarder, and either a device poller or a simulated fleet.

    ``connect`` makes a producer for the bus (a fresh one after every bus failure).
    """

    def __init__(self, settings: Settings, connect: Callable[[], Producer], registry: Registry,
                 simulator: Collector | None = None, sim_now_ms: Callable[[], int] | None = None) -> None:
        collect = settings.collect
        self.settings = settings
        self.collector_id = collect.collector_id or socket.gethostname()
        self.spool = Spool(collect.spool.path, collect.spool.max_bytes, collect.spool.fsync)
        self.forwarder = Forwarder(self.spool, connect, send_timeout_s=settings.bus.kafka.send_timeout_s)
        self.producer = SpoolingProducer(self.spool, wake=self.forwarder.wake)
        self.metrics = CollectorMetrics()
        self.registry = registry
        self.simulator = simulator
        self.sim_now_ms = sim_now_ms
        self.poller: DevicePoller | None = None
        self.metrics_port: int | None = None
        self.batches = 0
        self._http: Any = None
        self._last_health = 0.0
        self._drops_reported = 0

    def start(self) -> CollectRuntime:
        """Open the spool (keeping what an earlier run left), start forwarding, metrics and polling."""
        collect = self.settings.collect
        self.spool.open()
        self.spool.on_drop = lambda now, total: self.metrics.spool_dropped.inc(now)
        self.forwarder.on_forwarded = self.metrics.forwarded.inc
        self.forwarder.on_bus_state = lambda up: self.metrics.bus_up.set(1 if up else 0)
        self.forwarder.start()
        if collect.metrics_port is not None:
            from prometheus_client import start_http_server

            self._http, _ = start_http_server(collect.metrics_port, addr=collect.metrics_host,
                                              registry=self.metrics.registry)
            self.metrics_port = self._http.server_address[1]
        if self.simulator is None:
            devices = list(getattr(collect, "devices", ()))
            self.poller = DevicePoller(devices, self.registry, self.producer, self.settings.bus.topics,
                                       collector_id=self.collector_id, max_concurrency=collect.max_concurrency,
                                       metrics=self.metrics).start()
        else:
            self.simulator.setup()
        log.info("collector %s started devices=%d spool=%s waiting=%d", self.collector_id,
                 len(self.poller.health) if self.poller else 0, self.spool.path, self.spool.depth)
        return self

    def step(self) -> None:
        """One turn of the main loop (about 0.5 s): simulator poll, gauges, periodic collector health."""
        if self.simulator is not None and self.sim_now_ms is not None:
            self.batches += publish_polls(self.simulator, self.producer, self.settings.bus.topics.readings,
                                          self.sim_now_ms)
        self.metrics.spool_records.set(self.spool.depth)
        self.metrics.spool_bytes.set(self.spool.bytes)
        now = time.monotonic()
        dropped = self.spool.dropped_total
        if now - self._last_health >= self.settings.collect.health_interval_s or dropped != self._drops_reported:
            self._last_health = now
            self._drops_reported = dropped
            self.send_health()

    def health_record(self) -> dict[str, object]:
        """The collector's own health record (spool, bus)."""
        return {"schema": HEALTH_SCHEMA, "v": 1, "kind": "collector", "collector": self.collector_id,
                "ts": time.time_ns() // 1_000_000, "bus_up": self.forwarder.bus_up,
                "bus_last_error": self.forwarder.last_error, "spool_records": self.spool.depth,
                "spool_bytes": self.spool.bytes, "spool_max_bytes": self.spool.max_bytes,
                "spool_dropped_total": self.spool.dropped_total, "forwarded_total": self.forwarder.forwarded_total,
                "devices": len(self.poller.health) if self.poller else 0,
                "devices_down": sum(not h.up for h in self.poller.health) if self.poller else 0,
                "sites": self.sites()}

    def sites(self) -> list[str]:
        """The sites this collector reads (its spool alert is raised for each of them)."""
        if self.poller is not None:
            return sorted({h.site for h in self.poller.health})
        return sorted(s.id for s in self.registry.sites) if self.simulator is not None else []

    def send_health(self) -> None:
        """Put the collector's health record on the health topic (through the spool, like everything)."""
        record = self.health_record()
        if self.poller is not None:
            self.poller.send_collector_health(record)
        else:
            self.producer.send(self.settings.bus.topics.health, json.dumps(record).encode(), key=self.collector_id)
            self.producer.flush()

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        """Step until ``stop`` is set or ``duration_s`` [s] passed."""
        end = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set() and (end is None or time.monotonic() < end):
            self.step()
            stop.wait(0.5)

    def close(self) -> None:
        """Stop polling, forward what the bus takes within ``collect.drain_s``, close the spool."""
        if self.poller is not None:
            self.poller.stop()
        if self.simulator is not None:
            self.simulator.close()
        try:
            self.send_health()
        except Exception:  # noqa: BLE001 - a failing last health record must not keep the spool open
            log.exception("could not spool the final health record")
        self.forwarder.stop(drain_s=self.settings.collect.drain_s)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("collector %s stopped forwarded=%d waiting=%d dropped_total=%d", self.collector_id,
                 self.forwarder.forwarded_total, self.spool.depth, self.spool.dropped_total)
        self.spool.close()
