"""The durable alert outbox: one SQLite file (WAL) holding every notification until it is delivered or given up.

One row per (receiver, idempotency key) with the rendered body, so:

- enqueueing the same event (or group) twice — e.g. the worker replays its input after a crash — finds the
  existing row and adds nothing (``INSERT … ON CONFLICT DO NOTHING``);
- a process that dies with rows pending leaves them on disk; the next process's dispatcher sends them,
  oldest first per receiver, with the same body and ``Idempotency-Key``;
- delivered and failed rows stay as the delivery log (:meth:`Outbox.deliveries`) until pruned.

Rows move ``pending`` → ``delivered`` (a 2xx came back) or ``pending`` → ``failed`` (a permanent error, or
given up after ``max_attempts``/``max_age_s``); an operator's :meth:`Outbox.retry` moves ``failed`` → ``pending``
again (same body and key; the attempt budget counts afresh from the retry). ``synchronous=FULL`` by
default: an enqueued alert survives a power loss too. One connection, guarded by a lock, serves all threads;
run one dispatcher per file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from dcpue.errors import DcpueError, SinkError

log = logging.getLogger(__name__)


class OutboxError(SinkError):
    """The outbox file could not be read or written."""


class UnknownDelivery(DcpueError, KeyError):
    """No outbox row has this id (pruned, or never there)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown alert delivery"


class NotRetryable(DcpueError, ValueError):
    """The row cannot be retried: it is not ``failed``, or its receiver is no longer configured."""


class DeliveryDisabled(DcpueError):
    """No alert delivery runs in this process (no receivers configured)."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        receiver TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT,
        last_status_code INTEGER,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        alert_status TEXT NOT NULL DEFAULT '',
        site TEXT NOT NULL DEFAULT '',
        alertname TEXT NOT NULL DEFAULT '',
        fingerprints TEXT NOT NULL DEFAULT '[]',
        requeued_ms INTEGER,
        requeued_attempts INTEGER NOT NULL DEFAULT 0,
        order_ms INTEGER NOT NULL DEFAULT 0,
        UNIQUE (receiver, idempotency_key)
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (receiver, status, id)",
    # small key-value state kept with the queue (the feed's report cursors), written in the same transactions
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, id)",
    # every event (by its idempotency key) already in some body for a receiver: a replay that groups
    # events differently must not notify an event twice under a new group key
    """CREATE TABLE IF NOT EXISTS enqueued_events (
        receiver TEXT NOT NULL,
        event_key TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (receiver, event_key)
    ) WITHOUT ROWID""",
)

# Columns added after the first release: ALTER TABLE on open, so outbox files written before keep working.
_ADDED_COLUMNS = (("requeued_ms", "INTEGER"), ("requeued_attempts", "INTEGER NOT NULL DEFAULT 0"),
                  ("order_ms", "INTEGER NOT NULL DEFAULT 0"))
# after _ADDED_COLUMNS exist: the queue is served in (order_ms, id) order
_INDEXES = ("CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (receiver, status, order_ms, id)",)

_COLUMNS = ("id", "receiver", "idempotency_key", "kind", "body", "status", "attempts", "next_attempt_ms",
            "last_error", "last_status_code", "created_ms", "updated_ms", "delivered_ms", "alert_status", "site",
            "alertname", "fingerprints", "requeued_ms", "requeued_attempts")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM deliveries"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: a rendered notification for one receiver and its delivery state. Times [ms since epoch]."""

    id: int
    receiver: str
    idempotency_key: str
    kind: str
    body: bytes
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int
    last_error: str | None
    last_status_code: int | None
    created_ms: int
    updated_ms: int
    delivered_ms: int | None
    alert_status: str  # firing/resolved of the group
    site: str
    alertname: str
    fingerprints: tuple[str, ...]
    requeued_ms: int | None = None  # when an operator last retried the row (None: never)
    requeued_attempts: int = 0  # ``attempts`` at that retry

    @property
    def pending_since_ms(self) -> int:
        """When the row last entered the queue [ms since epoch]: its retry, else its creation."""
        return self.created_ms if self.requeued_ms is None else self.requeued_ms

    @property
    def attempts_since_requeue(self) -> int:
        """Requests made since the row last entered the queue (what ``max_attempts`` limits)."""
        return self.attempts - self.requeued_attempts

    def as_dict(self, include_body: bool = False) -> dict[str, Any]:
        """JSON-ready form for the delivery-log API; the body (UTF-8 text) only on request."""
        data = asdict(self)
        data["status"] = str(self.status)
        data["fingerprints"] = list(self.fingerprints)
        body = data.pop("body")
        if include_body:
            data["body"] = body.decode("utf-8", "replace")
        return data


class PendingSummary(NamedTuple):
    """A receiver's queue: pending rows and when the oldest of them entered it [ms since epoch]."""

    count: int
    oldest_since_ms: int


def _row(values: tuple[Any, ...]) -> Delivery:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["body"] = bytes(data["body"])
    data["status"] = DeliveryStatus(data["status"])
    data["fingerprints"] = tuple(json.loads(data["fingerprints"] or "[]"))
    return Delivery(**data)


class Outbox:
    """The outbox file. ``open()`` before use (creates it), ``close()`` after; also a context manager.

    ``fsync=True`` (SQLite ``synchronous=FULL``) survives power loss; False (``NORMAL``) a process crash.
    """

    def __init__(self, path: str | Path, fsync: bool = True, label: str = "alert") -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.label = label  # what the queue holds, for messages ("alert", "feed")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> Outbox:
        """Open (or create) the file; rows left by an earlier process are kept."""
        with self._lock:
            if self._db is not None:
                return self
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
                for statement in _SCHEMA:
                    db.execute(statement)
                _add_missing_columns(db)
                for statement in _INDEXES:
                    db.execute(statement)
                pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
            except (sqlite3.Error, OSError) as exc:
                raise OutboxError(f"{self.path}: cannot open the {self.label} outbox: {exc}") from exc
            self._db = db
        if pending:
            log.info("%s outbox reopened path=%s pending=%d", self.label, self.path, pending)
        return self

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _conn(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise OutboxError(f"{self.path}: {self.label} outbox is not open (call open())")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: {what} failed: {exc}") from exc

    # --- writing ------------------------------------------------------------------------------------

    def enqueue(self, receiver: str, idempotency_key: str, body: bytes, *, now_ms: int, kind: str = "webhook",
                alert_status: str = "", site: str = "", alertname: str = "",
                fingerprints: Sequence[str] = (), event_keys: Sequence[str] = ()) -> bool:
        """Add a pending delivery due now; False (and nothing changes) if (receiver, key) is already there.

        ``event_keys`` (the idempotency keys of the events in ``body``) are recorded in the same
        transaction, for :meth:`enqueued_events`.
        """
        with self._conn("enqueue") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT INTO deliveries (receiver, idempotency_key, kind, body, next_attempt_ms, created_ms,"
                    " updated_ms, alert_status, site, alertname, fingerprints)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (receiver, idempotency_key) DO NOTHING",
                    (receiver, idempotency_key, kind, body, now_ms, now_ms, now_ms, alert_status, site, alertname,
                     json.dumps(list(fingerprints))),
                )
                db.executemany("INSERT OR IGNORE INTO enqueued_events VALUES (?, ?, ?)",
                               [(receiver, key, now_ms) for key in event_keys])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return cursor.rowcount == 1

    def enqueue_many(self, rows: Sequence[tuple[str, str, bytes, int]], *, now_ms: int, kind: str,
                     meta: dict[str, str] | None = None) -> int:
        """Add pending deliveries ``(receiver, key, body, order_ms)`` due now, and set ``meta`` keys, in one
        transaction; rows whose (receiver, key) exists are left as they are. Returns how many were new.
        Each receiver's queue is served by ``order_ms``, then insertion order."""
        with self._conn("enqueue") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT INTO deliveries (receiver, idempotency_key, kind, body, next_attempt_ms, created_ms,"
                    " updated_ms, order_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (receiver, idempotency_key) DO NOTHING",
                    [(r, k, kind, b, now_ms, now_ms, now_ms, int(o)) for r, k, b, o in rows])
                added = db.total_changes - before
                db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                               list((meta or {}).items()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return added

    def meta(self, prefix: str) -> dict[str, str]:
        """Every value stored with :meth:`enqueue_many` whose key starts with ``prefix``, by key (one query)."""
        with self._conn("meta") as db:
            rows = db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
            return {str(k): str(v) for k, v in rows}

    def enqueued_events(self, receiver: str, event_keys: Sequence[str]) -> set[str]:
        """Which of ``event_keys`` are already in a delivery to ``receiver``."""
        if not event_keys:
            return set()
        found: set[str] = set()
        with self._conn("enqueued_events") as db:
            for start in range(0, len(event_keys), 500):
                chunk = list(event_keys[start:start + 500])
                rows = db.execute(f"SELECT event_key FROM enqueued_events WHERE receiver = ? AND event_key IN "
                                  f"({','.join('?' * len(chunk))})", (receiver, *chunk)).fetchall()
                found.update(r[0] for r in rows)
        return found

    def mark_delivered(self, delivery_id: int, now_ms: int, status_code: int | None = None) -> None:
        """Record a successful attempt: the row is done."""
        self._finish(delivery_id, DeliveryStatus.DELIVERED, now_ms, None, status_code, attempted=True)

    def mark_failed(self, delivery_id: int, now_ms: int, error: str, status_code: int | None = None,
                    attempted: bool = True) -> None:
        """Give the row up (kept in the log); ``attempted``: this call records a request that was sent."""
        self._finish(delivery_id, DeliveryStatus.FAILED, now_ms, error, status_code, attempted=attempted)

    def mark_retry(self, delivery_id: int, now_ms: int, next_attempt_ms: int, error: str,
                   status_code: int | None = None) -> None:
        """Record a failed attempt and when to try again [ms since epoch]."""
        with self._conn("mark_retry") as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_ms = ?, last_error = ?,"
                " last_status_code = ?, updated_ms = ? WHERE id = ? AND status = 'pending'",
                (next_attempt_ms, error[:1000], status_code, now_ms, delivery_id),
            )

    def _finish(self, delivery_id: int, status: DeliveryStatus, now_ms: int, error: str | None,
                status_code: int | None, attempted: bool) -> None:
        with self._conn(f"mark_{status}") as db:
            db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + ?, last_error = COALESCE(?, last_error),"
                " last_status_code = COALESCE(?, last_status_code), updated_ms = ?,"
                " delivered_ms = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_ms END"
                " WHERE id = ? AND status = 'pending'",
                (str(status), int(attempted), None if error is None else error[:1000], status_code, now_ms,
                 str(status), now_ms, delivery_id),
            )

    def retry(self, delivery_id: int, now_ms: int) -> Delivery:
        """Put a failed row back to pending, due at ``now_ms`` [ms since epoch] (an operator's retry); the row.

        Body, idempotency key, ``attempts`` and ``last_error`` are kept; ``requeued_ms``/``requeued_attempts``
        record the retry, so the receiver's ``max_attempts`` and ``max_age_s`` count afresh from it (a row
        given up for its age would otherwise be given up again without a request). Raises
        :class:`UnknownDelivery` (a KeyError) when no row has this id and :class:`NotRetryable` (a ValueError)
        when the row is not failed.
        """
        with self._conn("retry") as db:
            found = db.execute(f"{_SELECT} WHERE id = ?", (delivery_id,)).fetchone()
            if found is None:
                raise UnknownDelivery(f"no alert delivery with id {delivery_id} (pruned, or never there)")
            status = found[_COLUMNS.index("status")]
            if status != DeliveryStatus.FAILED:
                raise NotRetryable(f"alert delivery {delivery_id} is {status}; only a failed delivery can be retried")
            db.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?, updated_ms = ?, requeued_ms = ?,"
                " requeued_attempts = attempts WHERE id = ? AND status = 'failed'",
                (now_ms, now_ms, now_ms, delivery_id),
            )
            row = db.execute(f"{_SELECT} WHERE id = ?", (delivery_id,)).fetchone()
        return _row(row)

    def requeue(self, delivery_id: int, now_ms: int) -> bool:
        """:meth:`retry`, answering False instead of raising when the row is unknown or not failed."""
        try:
            self.retry(delivery_id, now_ms)
        except (UnknownDelivery, NotRetryable):
            return False
        return True

    def prune(self, before_ms: int) -> int:
        """Delete delivered and failed rows last updated before ``before_ms``; returns how many."""
        with self._conn("prune") as db:
            cursor = db.execute("DELETE FROM deliveries WHERE status != 'pending' AND updated_ms < ?", (before_ms,))
            db.execute("DELETE FROM enqueued_events WHERE created_ms < ?", (before_ms,))
            return cursor.rowcount

    # --- reading ------------------------------------------------------------------------------------

    def head(self, receiver: str) -> Delivery | None:
        """The first pending row of ``receiver`` (by ``order_ms``, then FIFO: later rows wait for it), or None."""
        with self._conn("head") as db:
            row = db.execute(f"{_SELECT} WHERE receiver = ? AND status = 'pending' ORDER BY order_ms, id LIMIT 1",
                             (receiver,)).fetchone()
        return None if row is None else _row(row)

    def get(self, receiver: str, idempotency_key: str) -> Delivery | None:
        """The row for (receiver, key), or None."""
        with self._conn("get") as db:
            row = db.execute(f"{_SELECT} WHERE receiver = ? AND idempotency_key = ?",
                             (receiver, idempotency_key)).fetchone()
        return None if row is None else _row(row)

    def by_id(self, delivery_id: int) -> Delivery | None:
        """The row with this id, or None."""
        with self._conn("by_id") as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (delivery_id,)).fetchone()
        return None if row is None else _row(row)

    def pending_summary(self) -> dict[str, PendingSummary]:
        """Per receiver with pending rows: how many, and the oldest one's ``pending_since_ms`` [ms since epoch].

        A retried row counts from its retry, not its creation: the age says how long the queue has been
        waiting, not how old the notification is.
        """
        with self._conn("pending_summary") as db:
            rows = db.execute("SELECT receiver, COUNT(*), MIN(COALESCE(requeued_ms, created_ms)) FROM deliveries"
                              " WHERE status = 'pending' GROUP BY receiver").fetchall()
        return {receiver: PendingSummary(int(count), int(oldest)) for receiver, count, oldest in rows}

    def pending_receivers(self) -> list[str]:
        """Receivers with at least one pending row."""
        with self._conn("pending_receivers") as db:
            return [r[0] for r in db.execute("SELECT DISTINCT receiver FROM deliveries WHERE status = 'pending'")]

    def deliveries(self, limit: int = 100, receiver: str | None = None,
                   status: DeliveryStatus | str | None = None) -> list[Delivery]:
        """The delivery log, newest first, optionally for one receiver and/or status."""
        if status is not None:
            try:
                status = DeliveryStatus(status)
            except ValueError:
                valid = [str(s) for s in DeliveryStatus]
                raise ValueError(f"unknown delivery status {status!r}; valid: {valid}") from None
        where, params = [], []
        if receiver is not None:
            where.append("receiver = ?")
            params.append(receiver)
        if status is not None:
            where.append("status = ?")
            params.append(str(status))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._conn("deliveries") as db:
            rows = db.execute(f"{_SELECT}{clause} ORDER BY id DESC LIMIT ?", (*params, int(limit))).fetchall()
        return [_row(r) for r in rows]

    def counts(self, receiver: str | None = None) -> dict[str, int]:
        """Rows per status (every status present, zero if none), optionally for one receiver."""
        clause, params = ("WHERE receiver = ?", (receiver,)) if receiver is not None else ("", ())
        with self._conn("counts") as db:
            found = dict(db.execute(f"SELECT status, COUNT(*) FROM deliveries {clause} GROUP BY status", params))
        return {str(s): int(found.get(str(s), 0)) for s in DeliveryStatus}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring an outbox file from an earlier release up to the current columns."""
    have = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in have:
            try:
                db.execute(f"ALTER TABLE deliveries ADD COLUMN {name} {declaration}")
            except sqlite3.OperationalError as exc:  # another process added it between our look and ours
                if "duplicate column" not in str(exc):
                    raise
