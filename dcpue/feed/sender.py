"""The feed sender: final windows in the result store → reports → a durable outbox → every destination.

* **Report cursors.** Per report type and site, the end of the last window turned into a report is kept
  in the outbox file (``meta``), committed in the same SQLite transaction as the reports. The engine
  finalises a site's windows in time order and never changes a final window, so each run reports
  exactly the final windows after the cursor; a crash before the commit redoes the run, after it
  finds nothing new. A first run starts at ``feed.start``, else at the start of the current day
  (month, for monthly reports) of the site's newest window; older history is sent by
  :meth:`FeedSender.backfill`.
* **Deterministic ids.** A report's id is its site code, type and period; the outbox keeps one row per
  (destination, id), so re-enqueueing never duplicates, and every attempt carries the id as
  ``Idempotency-Key``: the platform stores each report once.
* **Ordered, never given up.** Each destination's queue is served in period order (``order_ms`` = the
  period's end) by :class:`FeedDispatcher` threads with exponential backoff; a report is resent until the
  platform acknowledges it (2xx) or refuses it for good (4xx other than 408/425/429, kept as ``failed``).
  Reports pending longer than ``alert_after_s`` fire the ``FeedUndelivered`` alert.
* **File drop.** With ``feed.file_drop``, each final day of a site is also written as
  ``<directory>/<site code>/<YYYY-MM-DD>.json`` (and ``.csv``): its real-time, hourly and daily reports.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from dcpue import __version__
from dcpue.alerting.config import ReceiverKind
from dcpue.alerting.delivery import Dispatcher, Outcome, classify
from dcpue.alerting.outbox import Delivery, Outbox
from dcpue.analytics.alerts.lifecycle import AlertLifecycle
from dcpue.analytics.alerts.model import AlertEvent, Condition, Family, Severity
from dcpue.analytics.feed.reports import PARTS_OF, REPORT_WINDOWS, QualityRules, build_reports, csv_columns, flatten
from dcpue.errors import ConfigError
from dcpue.feed import signing
from dcpue.feed.config import FeedDestination, FeedSettings, TlsSettings
from dcpue.feed.formats import FeedFormat, get_format
from dcpue.ports import ResultStore
from dcpue.registry import Registry, Site
from dcpue.results import Scope

log = logging.getLogger(__name__)

KIND = "feed"
USER_AGENT = f"dcpue-feed/{__version__}"
_ORDER = ("realtime", "hourly", "daily", "monthly")  # a period's finer reports go before its coarser one


def _cursor_key(report_type: str, site: str) -> str:
    return f"cursor:{report_type}:{site}"


def _cursors(outbox: Outbox, report_type: str) -> dict[str, int]:
    """Site → end [UTC ms] of the last window of ``report_type`` turned into a report."""
    prefix = _cursor_key(report_type, "")
    return {key[len(prefix):]: int(value) for key, value in outbox.meta(prefix).items()}


def _local_floor_ms(ts_ms: int, tz: str, unit: str) -> int:
    t = pd.Timestamp(int(ts_ms), unit="ms", tz="UTC").tz_convert(tz)
    t = t.normalize() if unit == "day" else t.normalize().replace(day=1)
    return int(t.value // 1_000_000)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunResult:
    """What one :meth:`FeedSender.run_once` did."""

    reports: dict[str, int]  # report type -> reports newly built
    enqueued: int  # outbox rows newly added (reports × destinations)
    files: int  # file-drop days written


class FeedSender:
    """Builds due reports from ``store`` and queues them in ``outbox`` for every destination.

    Open the outbox before use. ``clock`` [unix s] is when reports are made (their ``generated_at`` and
    timeliness); ``wall_clock`` [unix s] stamps the queue (delivery ages, alerts). Sites without a platform
    site code or credit code cannot be reported and are listed in :attr:`skipped`.
    """

    def __init__(self, settings: FeedSettings, store: ResultStore, registry: Registry, outbox: Outbox, *,
                 tz: str = "Asia/Shanghai", target_pue: float = 1.2,
                 target_pue_by_site: Mapping[str, float] | None = None,
                 clock: Callable[[], float] = time.time, wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.tz = tz
        self.target_pue = target_pue
        self.target_pue_by_site = dict(target_pue_by_site or {})
        self.format: FeedFormat = get_format(settings.format)
        self._clock = clock
        self._wall_clock = wall_clock
        self.rules = QualityRules(settings.quality.min_coverage, settings.quality.consistency_tolerance,
                                  dict(settings.quality.on_time_s))
        wanted = set(settings.sites) or {s.id for s in registry.sites}
        unknown = sorted(wanted - {s.id for s in registry.sites})
        if unknown:
            raise ValueError(f"feed.sites names sites the registry does not have: {', '.join(unknown)}")
        self.sites: dict[str, Site] = {}
        self.skipped: dict[str, str] = {}
        for site in registry.sites:
            if site.id not in wanted:
                continue
            missing = [f for f in ("platform_site_code", "operator_credit_code") if not getattr(site, f)]
            if missing:
                self.skipped[site.id] = f"no {' and no '.join(missing)} in the registry"
            else:
                self.sites[site.id] = site
        self._start_ms = None
        if settings.start:
            self._start_ms = int(pd.Timestamp(settings.start, tz=tz).value // 1_000_000)
        self._lock = threading.Lock()

    # --- building ---------------------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _initial_cursor(self, report_type: str, newest_start_ms: int) -> int:
        if self._start_ms is not None:
            return self._start_ms
        return _local_floor_ms(newest_start_ms, self.tz, "month" if report_type == "monthly" else "day")

    def run_once(self, now_ms: int | None = None, report_types: Sequence[str] | None = None) -> RunResult:
        """Turn every final window after the cursors into reports and queue them; write file-drop days.

        ``report_types`` limits the run to those types (default: every configured one)."""
        with self._lock:
            now_ms = int(self._clock() * 1000) if now_ms is None else int(now_ms)
            built: dict[str, int] = {}
            enqueued = files = 0
            for report_type in _ORDER:
                if report_types is not None and report_type not in report_types:
                    continue
                # the file drop is driven by final days (it builds a day's finer reports itself)
                drop_day = self.settings.file_drop is not None and report_type == "daily"
                if report_type not in self.settings.reports and not drop_day:
                    continue
                n, added, written = self._run_type(report_type, now_ms)
                built[report_type] = n
                enqueued += added
                files += written
            return RunResult(built, enqueued, files)

    def _windows(self, window: str, start_ms: int | None, end_ms: int | None = None,
                 ids: Sequence[str] | None = None) -> pd.DataFrame:
        return self.store.query_windows(Scope.SITE.value, window, list(ids or self.sites), start_ms, end_ms)

    def _run_type(self, report_type: str, now_ms: int) -> tuple[int, int, int]:
        window = REPORT_WINDOWS[report_type]
        stored = _cursors(self.outbox, report_type)
        cursors = {sid: stored[sid] for sid in self.sites if sid in stored}
        new_cursors: dict[str, str] = {}
        missing = [sid for sid in self.sites if sid not in stored]
        if missing:  # a site's first run: from feed.start, else the start of the day (month) of its newest window
            latest = self.store.latest_windows(Scope.SITE.value, window)
            for sid, start in zip(latest["id"], latest["start_ms"], strict=True):
                if sid in missing:
                    cursors[sid] = self._initial_cursor(report_type, int(start))
                    new_cursors[_cursor_key(report_type, sid)] = str(cursors[sid])
        if not cursors:
            return 0, 0, 0
        frame = self._windows(window, min(cursors.values()), ids=sorted(cursors))
        frame = frame[frame["final"].astype(bool)]
        frame = frame[frame["start_ms"].to_numpy(np.int64) >= frame["id"].map(cursors).to_numpy(np.int64)]
        for sid, ends in frame.groupby("id", sort=False)["end_ms"]:
            new_cursors[_cursor_key(report_type, str(sid))] = str(int(ends.max()))
        due = frame.sort_values(["end_ms", "id"], kind="stable")
        if due.empty:
            if new_cursors:
                self.outbox.enqueue_many([], now_ms=self._wall_ms(), kind=KIND, meta=new_cursors)
            return 0, 0, 0
        parts = None
        if report_type in PARTS_OF:
            parts = self._windows(REPORT_WINDOWS[PARTS_OF[report_type]], int(due["start_ms"].min()),
                                  int(due["end_ms"].max()), ids=sorted(set(due["id"])))
        reports = build_reports(report_type, due, self.sites, tz=self.tz, generated_ms=now_ms,
                                target_pue=self.target_pue, parts=parts, rules=self.rules,
                                include_meters=self.settings.include_meters and report_type != "realtime",
                                target_pue_by_site=self.target_pue_by_site)
        files = self._file_drop(due, reports, now_ms) if report_type == "daily" and self.settings.file_drop else 0
        rows = []
        if report_type in self.settings.reports:
            order = due["end_ms"].to_numpy(np.int64)
            for report, order_ms in zip(reports, order, strict=True):
                body = self.format.render(report)
                rows += [(d.name, report["report_id"], body, int(order_ms)) for d in self.settings.destinations]
        added = self.outbox.enqueue_many(rows, now_ms=self._wall_ms(), kind=KIND, meta=new_cursors)
        if added:
            log.info("feed reports queued type=%s reports=%d rows=%d", report_type, len(reports), added)
        return len(reports), added, files

    def _file_drop(self, days: pd.DataFrame, daily: list[dict[str, Any]], now_ms: int) -> int:
        """Write each final day's file(s): the day's real-time, hourly and daily reports.

        ``days`` are the daily windows ``daily`` was built from (same order); the finer windows of all of
        them are read and turned into reports once, then bucketed by day."""
        drop = self.settings.file_drop
        assert drop is not None
        per_day: list[list[dict[str, Any]]] = [[] for _ in daily]
        spans = days[["id", "start_ms", "end_ms"]].rename(columns={"start_ms": "d_start", "end_ms": "d_end"})
        spans = spans.assign(day=np.arange(len(days)), d_start=spans["d_start"].astype(np.int64))
        for report_type in ("realtime", "hourly"):
            rows = self._windows(REPORT_WINDOWS[report_type], int(days["start_ms"].min()), int(days["end_ms"].max()),
                                 ids=sorted(set(days["id"])))
            if rows.empty:
                continue
            rows = rows.assign(row=np.arange(len(rows)), start_ms=rows["start_ms"].astype(np.int64))
            matched = pd.merge_asof(rows.sort_values("start_ms"), spans.sort_values("d_start"), left_on="start_ms",
                                    right_on="d_start", by="id", direction="backward")
            matched = matched[matched["end_ms"] <= matched["d_end"]].sort_values("row")
            reports = build_reports(report_type, rows.iloc[matched["row"].to_numpy()], self.sites, tz=self.tz,
                                    generated_ms=now_ms, target_pue=self.target_pue, rules=self.rules,
                                    target_pue_by_site=self.target_pue_by_site)
            for day, report in zip(matched["day"].to_numpy(np.int64), reports, strict=True):
                per_day[day].append(report)
        for day, reports in zip(daily, per_day, strict=True):
            reports.append(day)
            folder = Path(drop.directory) / day["site"]["site_code"]
            stem = pd.Timestamp(day["period"]["start"]).strftime("%Y-%m-%d")
            if "json" in drop.formats:
                _write_atomic(folder / f"{stem}.json",
                              json.dumps(reports, ensure_ascii=False, indent=1, allow_nan=False).encode() + b"\n")
            if "csv" in drop.formats:
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=csv_columns(("realtime", "hourly", "daily")),
                                        extrasaction="ignore", lineterminator="\n")
                writer.writeheader()
                writer.writerows(flatten(r) for r in reports)
                _write_atomic(folder / f"{stem}.csv", buf.getvalue().encode("utf-8"))
        return len(daily)

    def backfill(self, since_ms: int, report_types: Sequence[str] | None = None,
                 now_ms: int | None = None) -> RunResult:
        """Move the cursors back to ``since_ms`` [UTC ms] (never forward) and queue what is missing.

        Reports already in the outbox (pending, delivered or failed) are left as they are; the rest go
        into each destination's queue in period order, ahead of newer pending reports.
        """
        types = tuple(report_types or self.settings.reports)
        with self._lock:
            moved = {}
            for report_type in types:
                stored = _cursors(self.outbox, report_type)
                moved.update({_cursor_key(report_type, sid): str(int(since_ms)) for sid in self.sites
                              if stored.get(sid, since_ms + 1) > since_ms})
            self.outbox.enqueue_many([], now_ms=self._wall_ms(), kind=KIND, meta=moved)
        return self.run_once(now_ms, types)

    # --- status -----------------------------------------------------------------------------------------

    def status(self, now_ms: int | None = None) -> dict[str, Any]:
        """Queues per destination (pending, oldest pending age, overdue, next report, last error), cursors
        per report type and the sites that cannot be reported."""
        now_ms = self._wall_ms() if now_ms is None else int(now_ms)
        pending = self.outbox.pending_summary()
        destinations = []
        for d in self.settings.destinations:
            counts = self.outbox.counts(d.name)
            head = self.outbox.head(d.name)
            summary = pending.get(d.name)
            age_s = (now_ms - summary.oldest_since_ms) / 1000.0 if summary else 0.0
            destinations.append({
                "name": d.name, "url": d.url, "algorithm": d.algorithm, "pending": counts["pending"],
                "delivered": counts["delivered"], "failed": counts["failed"],
                "oldest_pending_age_s": age_s, "alert_after_s": d.alert_after_s,
                "overdue": bool(summary) and age_s >= d.alert_after_s,
                "next_report": head.idempotency_key if head else None,
                "last_error": head.last_error if head else None,
            })
        cursors = {}
        for report_type in self.settings.reports:
            stored = _cursors(self.outbox, report_type)
            ends = [stored[sid] for sid in self.sites if sid in stored]
            cursors[report_type] = {
                "sites_started": len(ends),
                "oldest_reported_until": pd.Timestamp(min(ends), unit="ms", tz="UTC").tz_convert(self.tz).isoformat()
                if ends else None,
                "newest_reported_until": pd.Timestamp(max(ends), unit="ms", tz="UTC").tz_convert(self.tz).isoformat()
                if ends else None,
            }
        return {"enabled": self.settings.enabled, "format": self.format.name, "reports": list(self.settings.reports),
                "sites": len(self.sites), "skipped_sites": dict(self.skipped), "destinations": destinations,
                "cursors": cursors,
                "file_drop": str(self.settings.file_drop.directory) if self.settings.file_drop else None}

    def overdue_conditions(self, now_ms: int) -> list[Condition]:
        """One ``FeedUndelivered`` condition per destination: breached while its oldest pending report has
        waited ``alert_after_s`` or longer."""
        pending = self.outbox.pending_summary()
        out = []
        for d in self.settings.destinations:
            summary = pending.get(d.name)
            age_s = (now_ms - summary.oldest_since_ms) / 1000.0 if summary else 0.0
            breach = summary is not None and age_s >= d.alert_after_s
            out.append(Condition(
                labels={"alertname": "FeedUndelivered", "site": "", "family": Family.DATA_QUALITY.value,
                        "severity": Severity.CRITICAL.value, "destination": d.name},
                ts_ms=now_ms, breach=breach, clear=not breach, value=age_s,
                annotations={"summary": f"feed reports to {d.name} undelivered for {age_s / 3600:.1f} h",
                             "description": f"{summary.count if summary else 0} report(s) pending for {d.name}; "
                                            f"resent with backoff until the platform acknowledges them",
                             "threshold": f"{d.alert_after_s:g} s"}))
        return out


def tls_context(tls: TlsSettings) -> ssl.SSLContext | bool:
    """The client's TLS: trust ``ca_file`` (else the system store), present ``cert_file``/``key_file`` when given."""
    if not tls.verify:
        return False
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class FeedDispatcher(Dispatcher):
    """The alert dispatcher's queue discipline (per destination, in order, backoff, rate limit) with the
    feed's request: canonical body, API key, HMAC-SHA256/SM3 signature with timestamp and nonce,
    ``Idempotency-Key`` = report id, HTTPS with an optional client certificate (mutual TLS)."""

    label = "feed"

    def __init__(self, outbox: Outbox, destinations: Sequence[FeedDestination], *, content_type: str,
                 **kwargs: Any) -> None:
        super().__init__(outbox, destinations, **kwargs)  # type: ignore[arg-type]
        self.content_type = content_type

    def _attempt(self, lane: Any, row: Delivery, now: float) -> Outcome:
        dest: FeedDestination = lane.receiver
        try:
            headers = {"Content-Type": self.content_type, "User-Agent": USER_AGENT, **dest.headers,
                       **signing.sign(row.body, secret=dest.secret_value(), api_key=dest.api_key_value(), now=now,
                                      report_id=row.idempotency_key, algorithm=dest.algorithm)}
        except (ValueError, signing.SignatureError) as exc:  # an unreadable key file: retried, it may come back
            return Outcome("retry", None, f"cannot sign: {exc}")
        if lane.client is None:
            try:
                context = tls_context(dest.tls)
            except (OSError, ssl.SSLError) as exc:  # a certificate file being replaced: try again later
                return Outcome("retry", None, f"TLS setup: {exc}")
            lane.client = httpx.Client(timeout=dest.timeout_s, follow_redirects=False, verify=context)
        try:
            response = lane.client.post(dest.url, content=row.body, headers=headers)
        except httpx.TimeoutException as exc:
            return Outcome("retry", None, f"timeout after {dest.timeout_s:g} s ({type(exc).__name__})")
        except httpx.TransportError as exc:  # refused, reset, TLS handshake, DNS
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            return Outcome("failed", None, f"{type(exc).__name__}: {exc}")
        return classify(ReceiverKind.WEBHOOK, response, now)


class FeedService:
    """Sender + dispatcher for a long-running process (``dcpue feed send``, ``demo``, ``serve``).

    ``start()`` opens the outbox, prunes delivered rows older than ``keep_days``, starts the dispatcher
    threads and a thread that runs the sender every ``interval_s`` and checks for overdue reports;
    ``alerts`` (optional) takes the ``FeedUndelivered`` events: an ``AlertOutput`` (history, alerts topic,
    webhooks) or ``AlertDelivery.notify``. ``stop()`` stops both; pending reports stay on disk.
    ``clock`` [unix s] times deliveries, signatures and alerts; ``report_clock`` (default: ``clock``) is
    when reports are made (their timeliness check), e.g. the simulated clock of ``dcpue demo``.
    """

    def __init__(self, settings: FeedSettings, store: ResultStore, registry: Registry, *, tz: str = "Asia/Shanghai",
                 target_pue: float = 1.2, target_pue_by_site: Mapping[str, float] | None = None,
                 alerts: Callable[[list[AlertEvent]], Any] | None = None, clock: Callable[[], float] = time.time,
                 report_clock: Callable[[], float] | None = None, backoff_base_s: float | None = None) -> None:
        self.settings = settings
        self.outbox = Outbox(settings.outbox_path, label="feed")
        self.sender = FeedSender(settings, store, registry, self.outbox, tz=tz, target_pue=target_pue,
                                 target_pue_by_site=target_pue_by_site, clock=report_clock or clock,
                                 wall_clock=clock)
        extra = {} if backoff_base_s is None else {"backoff_base_s": backoff_base_s}
        self.dispatcher = FeedDispatcher(self.outbox, settings.destinations,
                                         content_type=self.sender.format.content_type, clock=clock, **extra)
        self.alerts = alerts
        self.lifecycle = AlertLifecycle()
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_run: RunResult | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, store: ResultStore, registry: Registry, **kwargs: Any) -> FeedService:
        """The feed of a process's :class:`~dcpue.settings.Settings`: ``feed:``, the engine's time zone and
        target, per-site targets from ``alerts.sites``; ``kwargs`` as for the constructor. A ``feed.sites``
        entry the registry lacks raises :class:`~dcpue.errors.ConfigError`."""
        targets = {sid: s.target_pue for sid, s in settings.alerts.sites.items() if s.target_pue is not None}
        try:
            return cls(settings.feed, store, registry, tz=settings.engine.timezone,
                       target_pue=settings.engine.target_pue, target_pue_by_site=targets, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"feed: {exc}") from None

    def open(self) -> FeedService:
        self.outbox.open()
        pruned = self.outbox.prune(int((self._clock() - self.settings.keep_days * 86_400) * 1000))
        if pruned:
            log.info("feed outbox pruned delivered rows=%d keep_days=%d", pruned, self.settings.keep_days)
        return self

    def start(self) -> FeedService:
        self.open()
        self.dispatcher.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="feed-sender", daemon=True)
        self._thread.start()
        return self

    def tick(self) -> RunResult:
        """One sender run and overdue check (what the loop does every ``interval_s``)."""
        result = self.sender.run_once()
        self.last_run = result
        if result.enqueued:
            self.dispatcher.wake()
        now_ms = int(self._clock() * 1000)
        events = self.lifecycle.update(self.sender.overdue_conditions(now_ms), now_ms)
        for event in events:
            log.error("feed alert %s destination=%s status=%s", event.labels["alertname"],
                      event.labels.get("destination"), event.status)
        if events and self.alerts is not None:
            self.alerts(events)
        return result

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # the store or outbox may be briefly unavailable: try again next time
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("feed sender run failed")
            self._stop.wait(self.settings.interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.dispatcher.stop(timeout_s)
        self.outbox.close()

    def status(self) -> dict[str, Any]:
        """:meth:`FeedSender.status` plus delivery counters of this process and the sender's last error."""
        out = self.sender.status()
        stats = self.dispatcher.stats()
        for d in out["destinations"]:
            d["this_process"] = stats.get(d["name"], {})
        out["last_error"] = self.last_error
        return out
