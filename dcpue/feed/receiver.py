"""The reference receiver (``dcpue feed receive``): what a platform must check, as a real HTTP server.

``POST /api/v1/reports`` takes one report and answers:

* **401** unknown API key, missing or wrong signature, timestamp outside ±``tolerance_s``, replayed nonce;
* **403** a report for a site the key may not report (when the key lists its site codes);
* **400** a body that is not JSON; **422** a report that fails its JSON Schema (docs/feed/v1/) or whose
  ``report_id`` is not the one its site, type and period give;
* **201** ``{"status": "accepted"}`` for a new report (stored);
* **200** ``{"status": "duplicate"}`` for a report id already stored with the same content (a resend, or
  the same period's report made again: ``generated_at`` and the timeliness check do not count as content);
* **409** ``{"status": "conflict"}`` for a stored id with different content (never silently replaced).

``GET /api/v1/reports`` lists what was accepted (same API key), ``GET /healthz`` answers without one.
Accepted reports, the nonces of the replay window and a log of every answer are kept in one SQLite file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from dcpue.analytics.feed.reports import content_digest, report_id
from dcpue.analytics.feed.schema import REPORT_TYPES, json_schemas
from dcpue.feed import signing
from dcpue.yamlio import read_yaml

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reports (
        report_id TEXT PRIMARY KEY,
        report_type TEXT NOT NULL,
        site_code TEXT NOT NULL,
        credit_code TEXT NOT NULL,
        period_start TEXT NOT NULL,
        body BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL, report_id TEXT,
        status_code INTEGER NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL)""",
)


@dataclass(frozen=True)
class ReceiverKey:
    """One sender's credentials: API key, HMAC secret(s) (several during rotation), permitted site codes."""

    api_key: str
    secrets: tuple[str, ...]
    algorithms: tuple[str, ...] = signing.ALGORITHMS
    sites: tuple[str, ...] = ()  # empty: any site code

    @property
    def key_id(self) -> str:
        """A short, non-secret name of the key for logs (hash prefix)."""
        return hashlib.sha256(self.api_key.encode()).hexdigest()[:12]


def load_keys(path: str | Path) -> list[ReceiverKey]:
    """Read ``keys: [{api_key, secret | secrets, algorithms?, sites?}]`` from a YAML file."""
    data = read_yaml(Path(path), "receiver keys file") or {}
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: needs 'keys:', a list of {{api_key, secret}} entries")
    keys = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("api_key") or not (item.get("secret") or item.get("secrets")):
            raise ValueError(f"{path}: keys[{i}] needs api_key and secret (or secrets)")
        secrets_ = item.get("secrets") or [item["secret"]]
        algorithms = tuple(item.get("algorithms") or signing.ALGORITHMS)
        unknown = sorted(set(algorithms) - set(signing.ALGORITHMS))
        if unknown:
            raise ValueError(f"{path}: keys[{i}].algorithms: unknown {', '.join(unknown)} "
                             f"(valid: {', '.join(signing.ALGORITHMS)})")
        keys.append(ReceiverKey(str(item["api_key"]), tuple(str(s) for s in secrets_), algorithms,
                                tuple(str(s) for s in item.get("sites") or ())))
    return keys


@dataclass
class ReceiverStore:
    """The receiver's SQLite file: accepted reports, recent nonces and the answer log."""

    path: Path
    _db: sqlite3.Connection = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def nonce_seen(self, nonce: str, ts: int, keep_s: float) -> bool:
        """True if ``nonce`` was used before; records it and forgets nonces older than ``keep_s``."""
        with self._lock:
            self._db.execute("DELETE FROM nonces WHERE ts < ?", (int(time.time() - keep_s),))
            cur = self._db.execute("INSERT INTO nonces VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING", (nonce, ts))
            return cur.rowcount == 0

    def put(self, report: dict[str, Any], body: bytes, now_ms: int) -> str:
        """Store a report: ``accepted``, ``duplicate`` (same id, same content) or ``conflict``.

        Content is what the report says about its period (:func:`content_digest`): a report regenerated
        later, with another ``generated_at`` and timeliness check, is a duplicate; a changed figure is not."""
        digest = content_digest(report)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT sha256 FROM reports WHERE report_id = ?",
                                       (report["report_id"],)).fetchone()
                if row is not None:
                    outcome = "duplicate" if row[0] == digest else "conflict"
                else:
                    seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM reports").fetchone()[0]
                    self._db.execute("INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     (report["report_id"], report["report_type"], report["site"]["site_code"],
                                      report["site"]["credit_code"], report["period"]["start"], body, digest,
                                      now_ms, seq))
                    outcome = "accepted"
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcome

    def log(self, now_ms: int, rid: str | None, status_code: int, outcome: str, detail: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO answers (received_ms, report_id, status_code, outcome, detail)"
                             " VALUES (?, ?, ?, ?, ?)", (now_ms, rid, status_code, outcome, detail[:500]))

    def reports(self, site_code: str | None = None, report_type: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Accepted reports in arrival order, with their arrival sequence number."""
        sql, params = "SELECT seq, received_ms, body FROM reports WHERE 1=1", []
        if site_code:
            sql, params = sql + " AND site_code = ?", [*params, site_code]
        if report_type:
            sql, params = sql + " AND report_type = ?", [*params, report_type]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq LIMIT ?", (*params, int(limit))).fetchall()
        return [{"seq": seq, "received_ms": ms, "report": json.loads(body)} for seq, ms, body in rows]

    def answers(self) -> dict[str, int]:
        """How many requests got each outcome."""
        with self._lock:
            return dict(self._db.execute("SELECT outcome, COUNT(*) FROM answers GROUP BY outcome").fetchall())


def _validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for name, schema in json_schemas().items():
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        out[name] = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return out


def create_receiver_app(store: ReceiverStore, keys: Sequence[ReceiverKey], *,
                        tolerance_s: float = signing.DEFAULT_TOLERANCE_S, tz: str = "Asia/Shanghai",
                        clock: Callable[[], float] = time.time, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The receiver as an ASGI app (run it with uvicorn, or ``dcpue feed receive``)."""
    if not keys:
        raise ValueError("the receiver needs at least one API key")
    validators = _validators()
    app = FastAPI(title="dcpue feed reference receiver", version="1")

    def find_key(given: str | None) -> ReceiverKey | None:
        found = None
        for key in keys:  # compare with every key, in constant time each: no early exit on a match
            if given is not None and hmac.compare_digest(key.api_key.encode(), given.encode()):
                found = key
        return found

    def answer(now_ms: int, rid: str | None, code: int, outcome: str, detail: str) -> JSONResponse:
        store.log(now_ms, rid, code, outcome, detail)
        return JSONResponse({"status": outcome, "report_id": rid, "detail": detail}, status_code=code)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/reports")
    async def receive(request: Request) -> JSONResponse:
        now = clock()
        now_ms = int(now * 1000)
        body = await request.body()
        if len(body) > max_body_bytes:
            return answer(now_ms, None, 413, "rejected", f"body over {max_body_bytes} bytes")
        key = find_key(signing.header(request.headers, signing.API_KEY_HEADER))
        if key is None:
            return answer(now_ms, None, 401, "rejected", "unknown or missing API key")
        try:
            signing.verify(body, request.headers, key.secrets, now, tolerance_s=tolerance_s, algorithms=key.algorithms,
                           nonce_seen=lambda n, ts: store.nonce_seen(n, ts, 2 * tolerance_s))
        except signing.SignatureError as exc:
            return answer(now_ms, None, 401, "rejected", str(exc))
        try:
            report = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return answer(now_ms, None, 400, "rejected", f"body is not JSON: {exc}")
        except RecursionError:
            return answer(now_ms, None, 400, "rejected", "body is not JSON a report can be: nested too deeply")
        rid = report.get("report_id") if isinstance(report, dict) else None
        rtype = report.get("report_type") if isinstance(report, dict) else None
        if rtype not in validators:
            return answer(now_ms, rid, 422, "rejected",
                          f"report_type {rtype!r} is not one of {', '.join(REPORT_TYPES)}")
        error = jsonschema.exceptions.best_match(validators[rtype].iter_errors(report))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(report)"
            return answer(now_ms, rid, 422, "rejected", f"schema {rtype}: {where}: {error.message}"[:400])
        site_code = report["site"]["site_code"]
        if key.sites and site_code not in key.sites:
            return answer(now_ms, rid, 403, "rejected", f"this key may not report site {site_code}")
        try:  # the schema checks types, not that a date-time or a time zone is real
            zone = report["period"].get("timezone") or tz
            ZoneInfo(zone)
            start_ms = _parse_ms(report["period"]["start"])
            expected = report_id(site_code, rtype, start_ms, zone)
        except (ValueError, TypeError, OverflowError, KeyError, ZoneInfoNotFoundError) as exc:
            return answer(now_ms, rid, 422, "rejected", f"period: {type(exc).__name__}: {exc}"[:400])
        if rid != expected:
            return answer(now_ms, rid, 422, "rejected", f"report_id {rid!r} should be {expected!r}")
        outcome = store.put(report, body, now_ms)
        code = {"accepted": 201, "duplicate": 200, "conflict": 409}[outcome]
        detail = {"accepted": "stored", "duplicate": "already stored with the same content",
                  "conflict": "already stored with different content; not replaced"}[outcome]
        return answer(now_ms, rid, code, outcome, detail)

    @app.get("/api/v1/reports")
    def list_reports(request: Request, site_code: str | None = None, report_type: str | None = None,
                     limit: int = Query(1000, ge=1, le=100_000)) -> JSONResponse:
        if find_key(signing.header(request.headers, signing.API_KEY_HEADER)) is None:
            return JSONResponse({"detail": "unknown or missing API key"}, status_code=401)
        return JSONResponse({"reports": store.reports(site_code, report_type, limit), "answers": store.answers()})

    return app


def _parse_ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)
