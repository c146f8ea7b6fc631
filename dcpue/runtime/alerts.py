"""Where alert events go once the engine produced them: history store, alerts topic, webhook delivery.

Every output is idempotent on the event's idempotency key (fingerprint, episode start, sequence), so a
worker that replays after a crash writes the same rows, publishes the same keys and enqueues nothing new.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dcpue.analytics.alerts.model import AlertEvent
from dcpue.errors import SinkError
from dcpue.ports import Producer, read_to_end

log = logging.getLogger(__name__)

ALERT_SCHEMA = "dcpue.alert"


def event_record(event: AlertEvent) -> dict[str, Any]:
    """The JSON form of an event (alerts topic, history, API)."""
    return {"schema": ALERT_SCHEMA, "v": 1, "idempotency_key": event.idempotency_key,
            "fingerprint": event.fingerprint, "status": event.status.value, "sequence": event.sequence,
            "alertname": event.labels.get("alertname", ""), "site": event.site,
            "family": event.labels.get("family", ""), "severity": event.labels.get("severity", ""),
            "labels": event.labels, "annotations": event.annotations, "starts_at_ms": event.starts_at_ms,
            "ends_at_ms": event.ends_at_ms, "value": None if math.isnan(event.value) else event.value,
            "silenced": event.silenced}


def event_from_record(record: dict[str, Any]) -> AlertEvent:
    """The event of an :func:`event_record` (as read back from the alerts topic); ``ValueError`` if malformed."""
    from dcpue.analytics.alerts.model import Status

    try:
        if record.get("schema") != ALERT_SCHEMA:
            raise ValueError(f"schema {record.get('schema')!r} is not {ALERT_SCHEMA}")
        value = record.get("value")
        return AlertEvent(str(record["fingerprint"]), Status(record["status"]),
                          {str(k): str(v) for k, v in record["labels"].items()},
                          {str(k): str(v) for k, v in record["annotations"].items()},
                          int(record["starts_at_ms"]),
                          None if record.get("ends_at_ms") is None else int(record["ends_at_ms"]),
                          math.nan if value is None else float(value), int(record["sequence"]),
                          bool(record.get("silenced", False)))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"alert record lacks or mistypes {exc}") from None


def silence_record(item: Any = None, removed_id: str | None = None) -> tuple[str, bytes]:
    """(key, value) for the silences topic: a silence or window as it is now, or the removal of an id."""
    if removed_id is not None:
        return removed_id, json.dumps({"id": removed_id, "removed": True}).encode()
    return item.id, json.dumps({**item.model_dump(mode="json"), "kind": type(item).__name__},
                               ensure_ascii=False).encode()


def apply_silence_record(silences: Any, value: bytes) -> str:
    """Apply a :func:`silence_record` value to a ``SilenceSet``; returns the id (``ValueError`` if malformed)."""
    from pydantic import ValidationError

    from dcpue.analytics.alerts.silences import MaintenanceWindow, Silence

    try:
        doc = json.loads(value)
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise ValueError("not a silence record")
        if doc.get("removed"):
            if doc["id"] in silences:
                silences.expire(doc["id"], silences.get(doc["id"]).starts_at_ms)  # not started: removed
            return doc["id"]
        kind = MaintenanceWindow if doc.pop("kind", "Silence") == "MaintenanceWindow" else Silence
        silences.add(kind.model_validate(doc))
        return doc["id"]
    except ValidationError as exc:
        raise ValueError(f"invalid silence record: {exc.errors()[0]['msg']}") from None


class AlertHistory:
    """Every alert event, in a SQLite file (the embedded store's companion); newest first on read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def setup(self) -> AlertHistory:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS alert_events (key TEXT PRIMARY KEY, ts_ms INTEGER, site TEXT,"
                   " status TEXT, record TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")
        self._db = db
        return self

    def write(self, events: list[AlertEvent]) -> None:
        """Keep ``events`` (a replayed event overwrites itself)."""
        if self._db is None:
            raise SinkError(f"{self.path}: alert history is not open")
        rows = [(e.idempotency_key, e.ends_at_ms or e.starts_at_ms, e.site, e.status.value,
                 json.dumps(event_record(e), ensure_ascii=False)) for e in events]
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO alert_events VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: writing {len(rows)} alert events failed: {exc}") from exc

    def recent(self, limit: int = 100, site: str | None = None) -> list[dict[str, Any]]:
        """The newest events (optionally of one site)."""
        if self._db is None:
            return []
        query = "SELECT record FROM alert_events"
        params: tuple[Any, ...] = ()
        if site:
            query += " WHERE site = ?"
            params = (site,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY ts_ms DESC, rowid DESC LIMIT ?", (*params, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def firing(self, site: str | None = None) -> list[dict[str, Any]]:
        """Alerts whose newest event is a firing one (what is open), oldest first: the active alerts of a
        process that has the events but not the engine (``dcpue serve``, ``dcpue notify``)."""
        if self._db is None:
            return []
        # newest event per fingerprint (latest episode, then highest sequence), chosen by SQLite
        query = (
            "SELECT record FROM (SELECT record, status, json_extract(record, '$.starts_at_ms') AS starts,"
            " ROW_NUMBER() OVER (PARTITION BY json_extract(record, '$.fingerprint') ORDER BY"
            " json_extract(record, '$.starts_at_ms') DESC, json_extract(record, '$.sequence') DESC) AS newest"
            " FROM alert_events" + (" WHERE site = ?" if site else "") + ")"
            " WHERE newest = 1 AND status = 'firing' ORDER BY starts"
        )
        with self._lock:
            rows = self._db.execute(query, (site,) if site else ()).fetchall()
        return [json.loads(r[0]) for r in rows]

    def save_silences(self, blob: bytes) -> None:
        """Keep the silences (a :meth:`SilenceSet.snapshot`) so they survive a restart."""
        if self._db is None:
            raise SinkError(f"{self.path}: alert history is not open")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES ('silences', ?)", (blob,))

    def load_silences(self) -> bytes | None:
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = 'silences'").fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class AlertOutput:
    """Sends each batch of events to the history, the alerts topic and the delivery outbox (each optional)."""

    def __init__(self, history: AlertHistory | None = None, producer: Producer | None = None, topic: str = "",
                 delivery: Any = None, sinks: Sequence[Any] = ()) -> None:
        self.history = history
        self.producer = producer
        self.topic = topic
        self.delivery = delivery  # dcpue.alerting.delivery.AlertDelivery
        self.sinks = [s for s in sinks if hasattr(s, "write_alerts")]  # InfluxDB: the alert measurement
        self.events_total = 0

    def __call__(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        if self.history is not None:
            self.history.write(events)
        for sink in self.sinks:
            sink.write_alerts(events)
        if self.producer is not None:
            for event in events:
                self.producer.send(self.topic, json.dumps(event_record(event), ensure_ascii=False).encode(),
                                   key=event.site or None)
            self.producer.flush()
        if self.delivery is not None:
            self.delivery.notify(events)
        self.events_total += len(events)
        for event in events:
            log.log(logging.INFO if event.silenced else logging.WARNING, "alert %s %s site=%s %s%s",
                    event.status.value, event.labels.get("alertname"), event.site,
                    event.annotations.get("summary", ""), " (silenced)" if event.silenced else "")


class AlertsApi:
    """What the HTTP API offers about alerts: active alerts, history, deliveries, silences."""

    def __init__(self, engine: Any, history: AlertHistory | None = None, delivery: Any = None,
                 clock: Any = None, publish: Callable[[str, bytes], None] | None = None) -> None:
        self.engine = engine  # an AlertEngine, or an AlertBoard where only the topics are seen
        self.history = history
        self.delivery = delivery
        self.clock = clock  # event-time clock [ms] for silences; default: the engine's newest event time
        self.publish = publish  # (key, value) → the silences topic, so every analytics worker applies them
        if history is not None:
            blob = history.load_silences()
            if blob:
                with engine.lock:
                    engine.silences.restore(blob)

    def _now(self) -> int:
        return int(self.clock()) if self.clock is not None else int(self.engine.now_ms)

    def active(self) -> list[dict[str, Any]]:
        return self.engine.active()

    def recent(self, limit: int = 100, site: str | None = None) -> list[dict[str, Any]]:
        return self.history.recent(limit, site) if self.history is not None else []

    def deliveries(self, limit: int = 100, receiver: str | None = None, status: str | None = None) -> list[dict]:
        if self.delivery is None:
            return []
        return [d.as_dict() for d in self.delivery.deliveries(limit, receiver, status)]

    def retry_delivery(self, delivery_id: int) -> dict[str, Any]:
        """Send a failed delivery again (same body and Idempotency-Key); the row, now pending, as in deliveries().

        Raises ``DeliveryDisabled`` without receivers, ``UnknownDelivery`` (a KeyError) for an unknown id and
        ``NotRetryable`` (a ValueError) when the row is not failed (all from :mod:`dcpue.alerting.outbox`).
        """
        from dcpue.alerting.outbox import DeliveryDisabled

        if self.delivery is None:
            raise DeliveryDisabled("alert delivery is not configured in this process (no alerts.receivers)")
        return self.delivery.retry(delivery_id).as_dict()

    def silences(self) -> list[dict[str, Any]]:
        now = self._now()
        with self.engine.lock:
            items = self.engine.silences.list()
        return [{**item.model_dump(mode="json"), "kind": type(item).__name__,
                 "active": item.active_at(now)} for item in items]

    def add_silence(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add a silence (``ValueError`` with the reason when invalid); starts now unless told otherwise."""
        from pydantic import ValidationError

        from dcpue.analytics.alerts.silences import Silence

        try:
            silence = Silence.model_validate({"starts_at_ms": self._now(), **data})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'silence'}: {e['msg']}"
                                 for e in exc.errors())
            raise ValueError(f"invalid silence: {problems}") from None
        with self.engine.lock:
            self.engine.silences.add(silence)
            self._save()
        if self.publish is not None:
            self.publish(*silence_record(silence))
        return silence.model_dump(mode="json")

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now (``KeyError`` when unknown)."""
        with self.engine.lock:
            expired = self.engine.silences.expire(silence_id, self._now())
            self._save()
        if self.publish is not None:
            self.publish(*(silence_record(expired) if expired is not None else silence_record(removed_id=silence_id)))

    def close(self) -> None:
        """Stop delivery (pending rows stay in the outbox) and close the history."""
        if self.delivery is not None:
            self.delivery.stop()
        if self.history is not None:
            self.history.close()

    def _save(self) -> None:
        if self.history is not None:
            self.history.save_silences(self.engine.silences.snapshot())


class AlertBoard:
    """What the alerts API needs of an engine, in a process that sees only the alerts and silences topics
    (``dcpue serve`` on the distributed path): the open alerts from the history, the silences, wall time."""

    def __init__(self, history: AlertHistory, clock: Callable[[], float] | None = None) -> None:
        from dcpue.analytics.alerts.silences import SilenceSet

        self.history = history
        self.silences = SilenceSet()
        self.lock = threading.RLock()
        self._clock = clock or (lambda: time.time() * 1000)

    @property
    def now_ms(self) -> int:
        return int(self._clock())

    def active(self) -> list[dict[str, Any]]:
        """Firing alerts (their newest event is a firing one), shaped like ``AlertLifecycle.active()``."""
        now = self.now_ms
        out = []
        for r in self.history.firing():
            with self.lock:
                by = self.silences.silenced_by(r["labels"], now)
            out.append({"fingerprint": r["fingerprint"], "state": "firing", "labels": r["labels"],
                        "annotations": r["annotations"], "starts_at_ms": r["starts_at_ms"], "value": r["value"],
                        "silenced": bool(by) or r["silenced"], "silenced_by": by, "notified": not r["silenced"],
                        "sequence": r["sequence"]})
        return out


class AlertFeed:
    """Applies the alerts and silences topics to a history and a silence set (``dcpue serve``'s alert view).

    ``consumer`` reads both topics from their start (a :class:`~dcpue.adapters.kafka.KafkaTailConsumer`);
    events are upserted by idempotency key, so reading a topic again changes nothing.
    """

    def __init__(self, consumer: Any, history: AlertHistory, board: AlertBoard, alerts_topic: str,
                 silences_topic: str) -> None:
        self.consumer = consumer
        self.history = history
        self.board = board
        self.alerts_topic, self.silences_topic = alerts_topic, silences_topic
        self.events = 0
        self.silence_records = 0
        self.malformed = 0
        self.caught_up = False  # both topics read to where they ended (checked on the polling thread)

    def not_ready(self) -> str | None:
        """Why the alert view is not complete yet (for ``/readyz``), or None."""
        return None if self.caught_up else "alert view is still reading the alerts and silences topics"

    def step(self, timeout_s: float = 0.5) -> int:
        """Apply one poll's records; returns how many."""
        messages = self.consumer.poll(timeout_s, 2000)
        events = []
        for message in messages:
            try:
                if message.topic == self.silences_topic:
                    with self.board.lock:
                        apply_silence_record(self.board.silences, message.value)
                    self.silence_records += 1
                else:
                    events.append(event_from_record(json.loads(message.value)))
            except ValueError as exc:
                self.malformed += 1
                log.warning("ignoring malformed record topic=%s offset=%s: %s", message.topic, message.offset, exc)
        if events:
            self.history.write(events)
            self.events += len(events)
        self.caught_up = self.caught_up or read_to_end(self.consumer, messages)  # once this poll's records are in
        return len(messages)

    def status(self) -> dict[str, int]:
        return {"alert_events": self.events, "silence_records": self.silence_records,
                "malformed_alert_records": self.malformed}


class AlertNotifier:
    """``dcpue notify``: the alerts topic (a consumer group) → history and delivery outbox, then commit.

    Offsets are committed only after the outbox holds the events, so a crash replays them; the outbox
    knows every event key it holds per receiver, so a replay notifies nothing twice. If the outbox or the
    history refuses, the events are kept and retried with backoff, and nothing is committed.
    """

    def __init__(self, consumer: Any, history: AlertHistory | None, delivery: Any,
                 dead_letter: Callable[[Any, str], None] | None = None) -> None:
        self.consumer = consumer
        self.history = history
        self.delivery = delivery
        self.dead_letter = dead_letter
        self.events = 0
        self.malformed = 0
        self._pending: list[AlertEvent] | None = None
        self._delay_s = 0.0

    def step(self, timeout_s: float = 0.5) -> int:
        """Poll, store and enqueue one batch; returns how many records were handled."""
        if self._pending is None:
            messages = self.consumer.poll(timeout_s, 500)
            if not messages:
                return 0
            events = []
            for message in messages:
                try:
                    events.append(event_from_record(json.loads(message.value)))
                except ValueError as exc:
                    self.malformed += 1
                    log.warning("alert record not usable offset=%s: %s", message.offset, exc)
                    if self.dead_letter is not None:
                        self.dead_letter(message, f"alert record: {exc}")
            self._pending = events
        events = self._pending
        try:
            if self.history is not None:
                self.history.write(events)
            if self.delivery is not None:
                self.delivery.notify(events)
            self.consumer.commit()
        except Exception as exc:  # noqa: BLE001 — keep the events; nothing is committed until this succeeds
            self._delay_s = min(5.0, max(0.1, self._delay_s * 2))
            log.warning("alert events not stored yet (%s); retrying in %.1f s", exc, self._delay_s)
            time.sleep(self._delay_s)
            return 0
        self._delay_s = 0.0
        self._pending = None
        self.events += len(events)
        return len(events)

    def checkpoint(self) -> bool:
        """Store what is pending and commit (used on shutdown)."""
        while self._pending is not None:
            if not self.step(0.0) and self._pending is not None:
                return False
        return True

    def status(self) -> dict[str, object]:
        stats: dict[str, object] = {"alert_events": self.events, "malformed_alert_records": self.malformed}
        if self.delivery is not None:
            stats["deliveries"] = self.delivery.stats()
        return stats
