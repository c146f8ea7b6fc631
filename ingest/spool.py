"""Store-and-forward: a bounded on-disk queue between a collector and the bus.

Everything a collector publishes is appended to the :class:`Spool` first (one SQLite transaction
per batch, WAL journal) and a :class:`Forwarder` thread sends it to the bus in order, deleting it
only once the bus acknowledged it. So:

- while the bus is unreachable, records accumulate on disk and are replayed oldest first when it
  returns; a collector killed at any moment loses nothing that was appended (delivery is
  at-least-once: a record acknowledged just before a crash may be sent again; the engine drops
  exact duplicates by (site, point, ts));
- the spool is bounded by ``max_bytes``: when full, the *oldest* records are dropped to make room,
  the drop is counted (persisted across restarts), logged at ERROR and reported on the health topic
  and as a metric, never silent.

``fsync=False`` (SQLite ``synchronous=NORMAL``) survives a process crash; ``fsync=True`` (``FULL``)
also survives power loss at the cost of one disk sync per append.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcpue.ports import Producer

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    " key TEXT, value BLOB NOT NULL, headers BLOB NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """A bus record waiting to be sent."""

    topic: str
    value: bytes
    key: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        """Bytes this record takes in the spool's budget (payload, key, topic and headers)."""
        return (len(self.value) + len(self.topic) + len(self.key or "")
                + sum(len(k) + len(v) for k, v in self.headers) + 32)


def _pack_headers(headers: tuple[tuple[str, bytes], ...]) -> bytes:
    # length-prefixed pairs: header values are arbitrary bytes
    out = bytearray()
    for name, value in headers:
        raw = name.encode()
        out += len(raw).to_bytes(4, "big") + raw + len(value).to_bytes(4, "big") + value
    return bytes(out)


def _unpack_headers(data: bytes) -> tuple[tuple[str, bytes], ...]:
    pairs, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        name = data[i + 4:i + 4 + n].decode()
        i += 4 + n
        m = int.from_bytes(data[i:i + 4], "big")
        pairs.append((name, data[i + 4:i + 4 + m]))
        i += 4 + m
    return tuple(pairs)


class Spool:
    """A durable FIFO of :class:`SpoolRecord` in one SQLite file, at most ``max_bytes`` [B] of records."""

    def __init__(self, path: Path, max_bytes: int, fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._count = 0
        self.on_drop: Callable[[int, int], None] | None = None  # (records dropped now, dropped in total)

    def open(self) -> Spool:
        """Open (or create) the spool file; records left by an earlier run are kept, in order."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        for statement in _SCHEMA:
            db.execute(statement)
        self._count, self._bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
        self._db = db
        if self._count:
            log.info("spool reopened path=%s records=%d bytes=%d", self.path, self._count, self._bytes)
        return self

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def depth(self) -> int:
        """Records waiting."""
        return self._count

    @property
    def bytes(self) -> int:
        """Bytes waiting [B], as counted against ``max_bytes``."""
        return self._bytes

    @property
    def dropped_total(self) -> int:
        """Records ever dropped because the spool was full (persisted across restarts)."""
        with self._lock:
            return self._counter("dropped")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("spool is not open")
        return self._db

    def _counter(self, name: str) -> int:
        row = self._conn().execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def append(self, records: list[SpoolRecord]) -> int:
        """Add ``records`` at the tail in one transaction; returns how many old records were dropped to fit.

        A batch bigger than the whole budget keeps only its newest records that fit.
        """
        if not records:
            return 0
        sizes = [r.size for r in records]
        incoming = sum(sizes)
        skip = 0
        while incoming > self.max_bytes and skip < len(records):  # keep the newest part of an oversize batch
            incoming -= sizes[skip]
            skip += 1
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                dropped, freed = self._make_room(db, incoming)
                dropped += skip
                db.executemany(
                    "INSERT INTO records (topic, key, value, headers, size) VALUES (?, ?, ?, ?, ?)",
                    [(r.topic, r.key, r.value, _pack_headers(r.headers), s)
                     for r, s in zip(records[skip:], sizes[skip:], strict=True)],
                )
                if dropped:
                    db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE"
                               " SET value = value + excluded.value", (dropped,))
                total = self._counter("dropped")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            old_dropped = dropped - skip
            self._count += (len(records) - skip) - old_dropped
            self._bytes += incoming - freed
        if dropped:
            log.error("spool full: dropped oldest records count=%d dropped_total=%d max_bytes=%d path=%s",
                      dropped, total, self.max_bytes, self.path)
            if self.on_drop is not None:
                self.on_drop(dropped, total)
        return dropped

    def _make_room(self, db: sqlite3.Connection, incoming: int) -> tuple[int, int]:
        """Delete the oldest records until ``incoming`` bytes fit; returns (records, bytes) deleted."""
        excess = self._bytes + incoming - self.max_bytes
        if excess <= 0:
            return 0, 0
        dropped = freed = 0
        last_seq = None
        for seq, size in db.execute("SELECT seq, size FROM records ORDER BY seq"):
            if freed >= excess:
                break
            freed += size
            dropped += 1
            last_seq = seq
        if last_seq is not None:
            db.execute("DELETE FROM records WHERE seq <= ?", (last_seq,))
        return dropped, freed

    def peek(self, limit: int = 500) -> list[tuple[int, SpoolRecord]]:
        """The oldest ``limit`` records with their sequence numbers, oldest first."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT seq, topic, key, value, headers FROM records ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(seq, SpoolRecord(topic, bytes(value), key, _unpack_headers(bytes(headers))))
                for seq, topic, key, value, headers in rows]

    def ack(self, up_to_seq: int) -> None:
        """Delete every record up to and including ``up_to_seq`` (they reached the bus)."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE seq <= ?",
                                         (up_to_seq,)).fetchone()
                db.execute("DELETE FROM records WHERE seq <= ?", (up_to_seq,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._count -= count
            self._bytes -= size


class SpoolingProducer:
    """A :class:`~dcpue.ports.Producer` that appends to a :class:`Spool` (the forwarder does the sending).

    :meth:`flush` returns at once: what was sent is on disk, which is the promise a collector needs.
    """

    def __init__(self, spool: Spool, wake: threading.Event | None = None) -> None:
        self.spool = spool
        self._pending: list[SpoolRecord] = []
        self._wake = wake

    def send(self, topic: str, value: bytes, key: str | None = None,
             headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self._pending.append(SpoolRecord(topic, value, key, headers))

    def flush(self, timeout_s: float | None = None) -> None:
        pending, self._pending = self._pending, []
        self.spool.append(pending)
        if self._wake is not None and pending:
            self._wake.set()

    def close(self, timeout_s: float | None = None) -> None:
        self.flush()


class Forwarder:
    """Sends the spool to the bus, oldest first, on its own thread; survives the bus going away.

    ``connect`` makes a fresh producer; after any failure the producer is dropped (its unacknowledged
    records stay in the spool) and a new one is made after an exponential backoff (0.5 s … ``max_backoff_s``).
    """

    def __init__(self, spool: Spool, connect: Callable[[], Producer], *, batch: int = 500,
                 max_backoff_s: float = 10.0, send_timeout_s: float = 30.0) -> None:
        self.spool = spool
        self.connect = connect
        self.batch = batch
        self.max_backoff_s = max_backoff_s
        self.send_timeout_s = send_timeout_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._hurry = threading.Event()  # cuts a backoff short while stopping
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self.bus_up = False
        self.forwarded_total = 0
        self.failures_total = 0
        self.last_error: str | None = None
        self.on_forwarded: Callable[[int], None] | None = None
        self.on_bus_state: Callable[[bool], None] | None = None

    def start(self) -> Forwarder:
        """Start the forwarding thread."""
        self._thread = threading.Thread(target=self._run, name="dcpue-forwarder", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop after trying for up to ``drain_s`` to empty the spool (what remains stays on disk)."""
        deadline = time.monotonic() + drain_s
        self._hurry.set()
        while self.spool.depth and time.monotonic() < deadline and self._thread is not None:
            self.wake.set()
            time.sleep(0.05)
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self.send_timeout_s + 5)
        self._drop_producer()

    def forward_once(self) -> int:
        """Send one batch from the head of the spool and delete it once acknowledged; returns the count."""
        rows = self.spool.peek(self.batch)
        if not rows:
            return 0
        if self._producer is None:
            self._producer = self.connect()
        for _, record in rows:
            self._producer.send(record.topic, record.value, key=record.key, headers=record.headers)
        self._producer.flush(self.send_timeout_s)
        self.spool.ack(rows[-1][0])
        self.forwarded_total += len(rows)
        if self.on_forwarded is not None:
            self.on_forwarded(len(rows))
        return len(rows)

    def _set_bus(self, up: bool) -> None:
        if up != self.bus_up:
            self.bus_up = up
            if up:
                log.info("bus reachable: forwarding spool records=%d", self.spool.depth)
            else:
                log.error("bus unreachable: spooling to disk error=%s records=%d", self.last_error, self.spool.depth)
            if self.on_bus_state is not None:
                self.on_bus_state(up)

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout_s=0)  # unacknowledged records are still in the spool
            except Exception:  # noqa: BLE001 - a broken producer must not stop the forwarder
                log.debug("closing a failed producer raised", exc_info=True)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                if self._producer is None:
                    self._producer = self.connect()
                sent = self.forward_once()
                self._set_bus(True)
                backoff = 0.0
                if not sent:
                    self.wake.wait(1.0)
                    self.wake.clear()
            except Exception as exc:  # noqa: BLE001 - any bus failure means: keep the records, retry later
                self.failures_total += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._drop_producer()
                self._set_bus(False)
                backoff = min(self.max_backoff_s, max(0.5, backoff * 2))
                if self._hurry.is_set():  # stopping: retry often until drain_s is over
                    self._stop.wait(0.2)
                else:
                    self._hurry.wait(backoff)
