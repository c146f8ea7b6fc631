"""The embedded result store: one SQLite file, idempotent upserts, safe to read while written.

It plays the part InfluxDB plays in the distributed deployment: a window written twice
(same scope, id, window and start) overwrites itself, so replaying input never adds a
second point. WAL journaling keeps readers (the web API) off the writer's back, and every
write is a committed transaction, so a crash loses nothing already written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dcpue.errors import SinkError
from dcpue.results import KEY_COLUMNS, WINDOW_COLUMNS, WINDOW_DTYPES, conform_windows, empty_windows

_SQL_TYPES = {np.int64: "INTEGER", str: "TEXT", bool: "INTEGER", np.float64: "REAL"}


class FileStore:
    """SQLite-backed :class:`~dcpue.ports.ResultStore`. Open with :meth:`setup`, close with :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def setup(self) -> FileStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        columns = ", ".join(f'"{c}" {_SQL_TYPES[WINDOW_DTYPES[c]]}' for c in WINDOW_COLUMNS)
        keys = ", ".join(KEY_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS windows ({columns}, PRIMARY KEY ({keys}))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (received_ms INTEGER, topic TEXT, key TEXT, reason TEXT,"
            " payload TEXT)"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS engine_state (site TEXT PRIMARY KEY, state BLOB)")
        conn.execute("CREATE TABLE IF NOT EXISTS recommendations (site TEXT, ts_ms INTEGER, record TEXT,"
                     " PRIMARY KEY (site, ts_ms))")
        self._conn = conn
        return self

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SinkError(f"{self.path}: store is not open (call setup())")
        return self._conn

    def write_windows(self, windows: pd.DataFrame) -> None:
        """Upsert window results (same key overwrites)."""
        if windows.empty:
            return
        frame = conform_windows(windows)
        frame["final"] = frame["final"].astype(np.int64)
        rows = list(frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None))
        placeholders = ", ".join("?" * len(WINDOW_COLUMNS))
        cols = ", ".join(f'"{c}"' for c in WINDOW_COLUMNS)
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN")
                db.executemany(f"INSERT OR REPLACE INTO windows ({cols}) VALUES ({placeholders})", rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise SinkError(f"{self.path}: writing {len(rows)} windows failed: {exc}") from exc

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        """Keep unusable records; ``letters`` has columns topic, key, reason, payload (JSON-able)."""
        if letters.empty:
            return
        now = int(time.time() * 1000)
        rows = [
            (now, str(r.topic), None if r.key is None else str(r.key), str(r.reason),
             json.dumps(r.payload, ensure_ascii=False, default=str))
            for r in letters.itertuples(index=False)
        ]
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN")
                db.executemany("INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise SinkError(f"{self.path}: writing {len(rows)} dead letters failed: {exc}") from exc

    def dead_letters(self, limit: int = 100) -> pd.DataFrame:
        """The newest dead letters, newest first."""
        with self._lock:
            frame = pd.read_sql_query(
                "SELECT * FROM dead_letters ORDER BY rowid DESC LIMIT ?", self._db(), params=(limit,)
            )
        frame["payload"] = frame["payload"].map(json.loads)
        return frame

    def query_windows(self, scope: str, window: str, ids: list[str] | None = None,
                      start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """Window results of one scope and window length, oldest first, optionally filtered."""
        sql = "SELECT * FROM windows WHERE scope = ? AND window = ?"
        params: list[object] = [scope, window]
        if ids:
            sql += f" AND id IN ({', '.join('?' * len(ids))})"
            params += ids
        if start_ms is not None:
            sql += " AND start_ms >= ?"
            params.append(start_ms)
        if end_ms is not None:
            sql += " AND start_ms < ?"
            params.append(end_ms)
        sql += " ORDER BY id, start_ms"
        return self._read(sql, params)

    def latest_windows(self, scope: str, window: str) -> pd.DataFrame:
        """The newest window per id of one scope and window length."""
        sql = (
            "SELECT w.* FROM windows w JOIN (SELECT id, MAX(start_ms) AS s FROM windows"
            " WHERE scope = ? AND window = ? GROUP BY id) m ON w.id = m.id AND w.start_ms = m.s"
            " WHERE w.scope = ? AND w.window = ? ORDER BY w.id"
        )
        return self._read(sql, [scope, window, scope, window])

    def prune(self, window: str, older_than_ms: int) -> int:
        """Delete windows of one length that start before ``older_than_ms``; returns how many."""
        with self._lock:
            cur = self._db().execute("DELETE FROM windows WHERE window = ? AND start_ms < ?", (window, older_than_ms))
            return cur.rowcount

    def write_recommendations(self, records: list[dict[str, object]]) -> None:
        """Keep cooling recommendations (``Recommendation.as_dict()``); the same site and time overwrites."""
        if not records:
            return
        rows = [(str(r["site"]), int(r["ts_ms"]), json.dumps(r, ensure_ascii=False)) for r in records]  # type: ignore[call-overload]
        with self._lock:
            try:
                self._db().executemany("INSERT OR REPLACE INTO recommendations VALUES (?, ?, ?)", rows)
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: writing {len(rows)} recommendations failed: {exc}") from exc

    def recommendations(self, site: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        """The newest recommendations, newest first (optionally of one site)."""
        query, params = "SELECT record FROM recommendations", []
        if site:
            query, params = query + " WHERE site = ?", [site]
        with self._lock:
            rows = self._db().execute(query + " ORDER BY ts_ms DESC LIMIT ?", [*params, limit]).fetchall()
        return [json.loads(r[0]) for r in rows]

    def get_state(self, key: str) -> str | None:
        with self._lock:
            row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_state(self, key: str, value: str) -> None:
        with self._lock:
            self._db().execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def save_states(self, states: dict[str, bytes]) -> None:
        """Checkpoint per-site engine state (:class:`~dcpue.ports.StateStore`)."""
        if not states:
            return
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO engine_state VALUES (?, ?)", list(states.items()))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise SinkError(f"{self.path}: saving engine state failed: {exc}") from exc

    def load_states(self, partitions: list[int] | None = None) -> dict[str, bytes]:
        """Every saved site state (the file store serves one worker, so ``partitions`` is ignored)."""
        with self._lock:
            return dict(self._db().execute("SELECT site, state FROM engine_state").fetchall())

    def _read(self, sql: str, params: list[object]) -> pd.DataFrame:
        with self._lock:
            frame = pd.read_sql_query(sql, self._db(), params=params)
        if frame.empty:
            return empty_windows()
        frame["final"] = frame["final"].astype(bool)
        for col, dtype in WINDOW_DTYPES.items():
            if dtype is str:
                frame[col] = frame[col].fillna("")
            elif dtype is np.int64:
                frame[col] = frame[col].fillna(0)
        return frame.astype(WINDOW_DTYPES)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
