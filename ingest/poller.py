"""The polling engine: reads every configured device on its own schedule and publishes readings.

- Each device is read every ``interval_s`` (fixed rate, each poll shifted by a random jitter of up to
  ``jitter_s``), on a bounded thread pool (``max_concurrency``). A device whose previous read has not
  returned is not read again (the overrun is counted), so a slow or dead device occupies at most one
  worker and never delays the others; readers bound every network call by ``timeout_s``.
- Values are converted from the device's unit to the unit the registry declares for the point they
  are mapped to (:func:`field_values_to_readings`); a value that cannot be converted is dead-lettered
  with the reason, never published wrongly.
- When a read fails, every point of the device is published as NaN flagged ``COLLECTOR_DOWN`` (the
  engine leaves it out of every figure and sees the gap as what it is), and the device's health
  record says why.
- Health per device (up, last success, last error, latency) goes to the health topic after every
  read and to Prometheus metrics; the collector's own record (spool depth, drops, bus state) too.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from dcpue.errors import CollectorError, ConfigError
from dcpue.ingest.device import DeviceConfig, DeviceReader, FieldValue
from dcpue.model import Quality, Quantity, readings_frame, unit_factor
from dcpue.ports import Producer
from dcpue.registry import Registry
from dcpue.settings import TopicSettings
from dcpue.wire import encode_frame

log = logging.getLogger(__name__)

HEALTH_SCHEMA = "dcpue.health"


@dataclass(frozen=True, slots=True)
class PointTarget:
    """Where a device field goes: a registry point, with what converting into its unit needs."""

    point: str
    quantity: Quantity
    unit: str


@dataclass(frozen=True, slots=True)
class FieldReject:
    """A device value that could not be published, and why."""

    field: str
    point: str
    value: float
    unit: str
    reason: str


def field_values_to_readings(site: str, values: Iterable[FieldValue], targets: dict[str, PointTarget],
                             ts_ms: int) -> tuple[pd.DataFrame, list[FieldReject]]:
    """Turn one read of a device into a readings frame of ``site`` in the registry's units.

    ``targets`` maps field names to points; unmapped fields are left out. A value whose unit does not
    fit the point's quantity becomes a :class:`FieldReject`. ``ts_ms`` [ms, UTC] stamps values that
    carry no timestamp of their own.
    """
    points: list[str] = []
    stamps: list[int] = []
    converted: list[float] = []
    flags: list[int] = []
    rejects: list[FieldReject] = []
    for fv in values:
        target = targets.get(fv.field)
        if target is None:
            continue
        try:
            factor = unit_factor(target.quantity, fv.unit) / unit_factor(target.quantity, target.unit)
        except ValueError as exc:
            rejects.append(FieldReject(fv.field, target.point, fv.value, fv.unit,
                                       f"field {fv.field!r} → point {target.point!r}: {exc}"))
            continue
        points.append(target.point)
        stamps.append(ts_ms if fv.ts_ms is None else fv.ts_ms)
        converted.append(fv.value * factor)
        flags.append(int(fv.quality))
    frame = readings_frame(site, np.asarray(points, dtype=object), np.asarray(stamps, dtype=np.int64),
                           np.asarray(converted, dtype=np.float64), np.asarray(flags, dtype=np.int64))
    return frame, rejects


def down_readings(site: str, targets: dict[str, PointTarget], ts_ms: int) -> pd.DataFrame:
    """Every mapped point of a device that could not be read, as NaN flagged ``COLLECTOR_DOWN``."""
    points = sorted({t.point for t in targets.values()})
    return readings_frame(site, np.asarray(points, dtype=object), ts_ms, np.nan, int(Quality.COLLECTOR_DOWN))


def resolve_targets(device: DeviceConfig, registry: Registry) -> dict[str, PointTarget]:
    """The registry points ``device.points`` names; raises :class:`ValueError` naming what is missing, or a
    field whose declared unit cannot be converted to its point's (volts mapped to a power point)."""
    site = registry.site_map.get(device.site)
    if site is None:
        raise ValueError(f"device {device.name!r}: site {device.site!r} is not in the registry")
    by_id = {p.id: p for p in site.points}
    targets = {}
    for field_name, point_id in device.points.items():
        point = by_id.get(point_id)
        if point is None:
            raise ValueError(f"device {device.name!r}: field {field_name!r} maps to point {point_id!r}, "
                             f"which site {device.site!r} does not have")
        unit = device.declared_unit(field_name)
        if unit is not None:
            try:
                unit_factor(point.quantity, unit)
            except ValueError as exc:
                raise ValueError(f"device {device.name!r}: field {field_name!r} is in {unit or 'no unit'!r}, "
                                 f"point {point_id!r} measures {point.quantity.value}: {exc}") from None
        targets[field_name] = PointTarget(point.id, point.quantity, point.unit)
    return targets


def check_devices(devices: Iterable[DeviceConfig], registry: Registry, source: str) -> None:
    """Check every device's mapping against ``registry`` before anything is polled.

    Raises :class:`~dcpue.errors.ConfigError` listing each problem with ``source`` (the config file)
    and the device's position, e.g. ``collectors.yaml: field 'collect.devices.2.points': …``.
    """
    problems = []
    for i, device in enumerate(devices):
        try:
            resolve_targets(device, registry)
        except ValueError as exc:
            problems.append(f"{source}: field 'collect.devices.{i}.points': {exc}")
    if problems:
        raise ConfigError("invalid collector configuration:\n  " + "\n  ".join(problems))


@dataclass
class DeviceHealth:
    """What the collector knows about one device's recent reads."""

    device: str
    protocol: str
    site: str
    up: bool = False
    last_success_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None
    latency_ms: float | None = None
    consecutive_failures: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    overruns: int = 0  # polls skipped because the previous read had not returned

    def record(self, collector: str, now_ms: int) -> dict[str, object]:
        """The health-topic record."""
        return {"schema": HEALTH_SCHEMA, "v": 1, "kind": "device", "collector": collector, "ts": now_ms,
                **asdict(self)}


@dataclass
class _Slot:
    config: DeviceConfig
    targets: dict[str, PointTarget]
    health: DeviceHealth
    reader: DeviceReader | None = None
    busy: bool = False
    started: float = 0.0
    base: float = 0.0  # monotonic time of poll number 0
    n: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class DevicePoller:
    """Polls ``devices`` and sends their readings, dead letters and health through ``producer``.

    ``producer`` is normally a :class:`~dcpue.ingest.spool.SpoolingProducer`; sends are serialised
    here, so it need not be thread-safe. ``metrics`` (a :class:`CollectorMetrics`) is optional.
    """

    def __init__(self, devices: list[DeviceConfig], registry: Registry, producer: Producer, topics: TopicSettings,
                 *, collector_id: str = "collector", max_concurrency: int = 16,
                 metrics: CollectorMetrics | None = None, wall_ms: Callable[[], int] | None = None,
                 seed: int | None = None) -> None:
        self.topics = topics
        self.producer = producer
        self.collector_id = collector_id
        self.metrics = metrics
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._rng = random.Random(seed)
        self._slots = [_Slot(d, resolve_targets(d, registry), DeviceHealth(d.name, d.protocol, d.site))
                       for d in devices if d.enabled]
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="dcpue-device")
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stuck_after_s = 2.0  # × timeout_s + 1 s: a read still running then is reported as hung

    @property
    def health(self) -> list[DeviceHealth]:
        """Current health of every enabled device."""
        return [slot.health for slot in self._slots]

    def start(self) -> DevicePoller:
        """Start the scheduler thread; the first poll of each device comes within its jitter."""
        now = time.monotonic()
        for slot in self._slots:
            slot.base = now + self._rng.uniform(0, slot.config.effective_jitter_s)
        self._thread = threading.Thread(target=self._schedule, name="dcpue-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, wait briefly for reads in progress, close every reader."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots:
            with slot.lock:
                self._close_reader(slot)

    def _schedule(self) -> None:
        queue = [(slot.base, i) for i, slot in enumerate(self._slots)]
        heapq.heapify(queue)
        while not self._stop.is_set() and queue:
            due, i = queue[0]
            now = time.monotonic()
            if due > now:
                self._stop.wait(min(due - now, 1.0))
                continue
            heapq.heappop(queue)
            slot = self._slots[i]
            self._dispatch(slot, now)
            heapq.heappush(queue, (self._next_due(slot, now), i))

    def _next_due(self, slot: _Slot, now: float) -> float:
        interval = slot.config.interval_s
        slot.n = max(slot.n + 1, math.floor((now - slot.base) / interval) + 1)  # missed slots are skipped
        return slot.base + slot.n * interval + self._rng.uniform(0, slot.config.effective_jitter_s)

    def _dispatch(self, slot: _Slot, now: float) -> None:
        if slot.busy:
            slot.health.overruns += 1
            hung_for = now - slot.started
            # a read is many bounded calls (a Redfish discovery: tens of GETs), so allow two intervals too
            limit = max(self.stuck_after_s * slot.config.timeout_s + 1, 2 * slot.config.interval_s)
            if hung_for > limit:
                self._failed(slot, f"read still running after {hung_for:.1f} s (timeout_s {slot.config.timeout_s})",
                             hung_for, close=False)
            return
        slot.busy = True
        slot.started = now
        self._pool.submit(self._poll, slot)

    def _poll(self, slot: _Slot) -> None:
        try:
            with slot.lock:
                started = time.monotonic()
                try:
                    if slot.reader is None:
                        reader = slot.config.make_reader()
                        reader.open()
                        slot.reader = reader
                    values = slot.reader.read()
                except CollectorError as exc:
                    self._failed(slot, str(exc), time.monotonic() - started)
                    return
                except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the other devices
                    log.exception("device %s: unexpected error", slot.config.name)
                    self._failed(slot, f"internal error: {type(exc).__name__}: {exc}", time.monotonic() - started)
                    return
                self._succeeded(slot, values, time.monotonic() - started)
        finally:
            slot.busy = False

    def _succeeded(self, slot: _Slot, values: list[FieldValue], elapsed_s: float) -> None:
        now_ms = self._wall_ms()
        health = slot.health
        if not health.up and health.reads_failed:
            log.info("device %s is back after %d failed reads", health.device, health.consecutive_failures)
        health.up, health.last_success_ms, health.latency_ms = True, now_ms, elapsed_s * 1000
        health.consecutive_failures = 0
        health.reads_ok += 1
        frame, rejects = field_values_to_readings(slot.config.site, values, slot.targets, now_ms)
        letters = [self._letter(slot, r.reason, {"field": r.field, "point": r.point, "value": r.value,
                                                 "unit": r.unit, "ts": now_ms}) for r in rejects]
        letters += [self._letter(slot, reason, payload) for reason, payload in _malformed(slot.reader)]
        self._send(slot, frame, letters, now_ms)
        if self.metrics is not None:
            self.metrics.observe(health, len(frame), len(letters))

    def _failed(self, slot: _Slot, error: str, elapsed_s: float, close: bool = True) -> None:
        now_ms = self._wall_ms()
        health = slot.health
        if health.up or health.consecutive_failures == 0:
            log.error("device %s (%s) failed: %s", health.device, health.protocol, error)
        else:
            log.debug("device %s still failing: %s", health.device, error)
        health.up, health.last_error, health.last_error_ms = False, error, now_ms
        health.latency_ms = elapsed_s * 1000
        health.consecutive_failures += 1
        health.reads_failed += 1
        if close:
            self._close_reader(slot)  # the next poll reconnects
        frame = down_readings(slot.config.site, slot.targets, now_ms) if slot.targets else None
        self._send(slot, frame, [], now_ms)
        if self.metrics is not None:
            self.metrics.observe(health, 0 if frame is None else len(frame), 0)

    def _letter(self, slot: _Slot, reason: str, payload: dict[str, object]) -> tuple[str, dict[str, object]]:
        log.warning("device %s: dead-lettered: %s", slot.config.name, reason)
        return reason, {"device": slot.config.name, "site": slot.config.site, **payload}

    def _send(self, slot: _Slot, frame: pd.DataFrame | None, letters: list[tuple[str, dict[str, object]]],
              now_ms: int) -> None:
        site = slot.config.site
        with self._send_lock:
            if frame is not None and len(frame):
                self.producer.send(self.topics.readings, encode_frame(site, frame), key=site)
            for reason, payload in letters:
                self.producer.send(self.topics.dead_letters, json.dumps(payload, default=str).encode(), key=site,
                                   headers=(("reason", reason.encode()),
                                            ("source_topic", f"collector:{slot.config.name}".encode())))
            self.producer.send(self.topics.health,
                               json.dumps(slot.health.record(self.collector_id, now_ms)).encode(),
                               key=slot.config.name)
            self.producer.flush()

    def send_collector_health(self, record: dict[str, object]) -> None:
        """Publish the collector's own health record (spool, bus) on the health topic."""
        with self._send_lock:
            self.producer.send(self.topics.health, json.dumps(record).encode(), key=self.collector_id)
            self.producer.flush()

    @staticmethod
    def _close_reader(slot: _Slot) -> None:
        reader, slot.reader = slot.reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - close must never take the poller down
                log.debug("device %s: close raised", slot.config.name, exc_info=True)


def _malformed(reader: DeviceReader | None) -> list[tuple[str, dict[str, object]]]:
    """Payloads a push reader (MQTT) could not use since the last call: (reason, payload) pairs."""
    take = getattr(reader, "take_malformed", None)
    return list(take()) if callable(take) else []


class CollectorMetrics:
    """Prometheus metrics of one collector process (own registry: several collectors can share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ("device", "protocol", "site")
        self.up = Gauge("dcpue_device_up", "1 if the last read of the device succeeded", labels,
                        registry=self.registry)
        self.last_success = Gauge("dcpue_device_last_success_timestamp_seconds",
                                  "Unix time of the last successful read", labels, registry=self.registry)
        self.latency = Gauge("dcpue_device_read_duration_seconds", "Duration of the last read", labels,
                             registry=self.registry)
        self.reads = Counter("dcpue_device_reads_total", "Reads by result", (*labels, "result"),
                             registry=self.registry)
        self.readings = Counter("dcpue_collector_readings_total", "Readings published (including down markers)",
                                registry=self.registry)
        self.dead_letters = Counter("dcpue_collector_dead_letters_total", "Values dead-lettered by the collector",
                                    registry=self.registry)
        self.spool_records = Gauge("dcpue_spool_records", "Records waiting in the spool", registry=self.registry)
        self.spool_bytes = Gauge("dcpue_spool_bytes", "Bytes waiting in the spool", registry=self.registry)
        self.spool_dropped = Counter("dcpue_spool_dropped_records_total",
                                     "Records dropped because the spool was full", registry=self.registry)
        self.forwarded = Counter("dcpue_spool_forwarded_records_total", "Records the bus acknowledged",
                                 registry=self.registry)
        self.bus_up = Gauge("dcpue_bus_up", "1 if the last send to the bus succeeded", registry=self.registry)

    def observe(self, health: DeviceHealth, readings: int, letters: int) -> None:
        """Update the device's metrics after one read."""
        labels = (health.device, health.protocol, health.site)
        self.up.labels(*labels).set(1 if health.up else 0)
        if health.last_success_ms is not None:
            self.last_success.labels(*labels).set(health.last_success_ms / 1000)
        if health.latency_ms is not None:
            self.latency.labels(*labels).set(health.latency_ms / 1000)
        self.reads.labels(*labels, "ok" if health.up else "error").inc()
        self.readings.inc(readings)
        self.dead_letters.inc(letters)
