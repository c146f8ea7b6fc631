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
from pathlib import Path
from typing import Any

from dcpue.analytics.alerts.model import AlertEvent
from dcpue.errors import SinkError
from dcpue.ports import Producer

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
                 delivery: Any = None, sink: Any = None) -> None:
        self.history = history
        self.producer = producer
        self.topic = topic
        self.delivery = delivery  # dcpue.alerting.delivery.AlertDelivery
        self.sink = sink  # a result sink with write_alerts (InfluxDB annotations)
        self.events_total = 0

    def __call__(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        if self.history is not None:
            self.history.write(events)
        if self.sink is not None and hasattr(self.sink, "write_alerts"):
            self.sink.write_alerts(events)
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
                 clock: Any = None) -> None:
        self.engine = engine  # dcpue.analytics.alerts.engine.AlertEngine
        self.history = history
        self.delivery = delivery
        self.clock = clock  # event-time clock [ms] for silences; default: the engine's newest event time
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
        return silence.model_dump(mode="json")

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now (``KeyError`` when unknown)."""
        with self.engine.lock:
            self.engine.silences.expire(silence_id, self._now())
            self._save()

    def close(self) -> None:
        """Stop delivery (pending rows stay in the outbox) and close the history."""
        if self.delivery is not None:
            self.delivery.stop()
        if self.history is not None:
            self.history.close()

    def _save(self) -> None:
        if self.history is not None:
            self.history.save_silences(self.engine.silences.snapshot())
