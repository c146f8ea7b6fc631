"""``dcpue feed send|status|backfill|receive|schemas``: the provincial feed from the command line."""

from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dcpue.errors import ConfigError, DcpueError

FEED_EPILOG = """\
exit codes: 0 done (send --once/backfill: nothing left pending), 1 reports still pending or refused,
2 configuration error. Settings: the `feed:` section (docs/feed.md).
"""


def _settings(args: argparse.Namespace) -> Any:
    from dcpue.settings import load_settings

    return load_settings(args.config, log_level=args.log_level, registry=getattr(args, "registry", None),
                         store={"path": getattr(args, "store", None)})


def _service(args: argparse.Namespace, *, need_destinations: bool = True) -> tuple[Any, Any, Any]:
    """(settings, FeedService, store) from the settings; the store must exist."""
    from dcpue.cli import _configure_process, _demo_registry
    from dcpue.feed.sender import FeedService
    from dcpue.runtime.store import FileStore

    settings = _settings(args)
    _configure_process(settings)
    feed = settings.feed
    if need_destinations and not feed.destinations and feed.file_drop is None:
        raise ConfigError("feed: no destinations and no file_drop configured (the `feed:` section, docs/feed.md)")
    path = Path(settings.store.path)
    if not path.is_file():
        raise DcpueError(f"{path}: no result store there (run `dcpue demo` or the pipeline first, or give --store)")
    store = FileStore(path).setup()
    registry = _demo_registry(settings)
    try:
        service = FeedService.from_settings(settings, store, registry)
    except ConfigError:
        store.close()
        raise
    return settings, service, store


def _drain(service: Any, max_s: float) -> None:
    """Deliver what is due, waiting out rate limits and short backoffs, for at most ``max_s`` seconds."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        service.dispatcher.drain_once()
        heads = [service.outbox.head(d.name) for d in service.settings.destinations]
        due = [h.next_attempt_ms for h in heads if h is not None]
        if not due:
            return
        # the head is due now but the rate limit held it back: wait about one token
        token_s = min(60.0 / d.max_per_minute for d in service.settings.destinations)
        wait_s = max(min(0.05, token_s), (min(due) - time.time() * 1000) / 1000.0)
        if time.monotonic() + wait_s > deadline:
            return
        time.sleep(min(wait_s, 0.5))


def _summary(status: dict[str, Any]) -> tuple[str, bool]:
    lines, clear = [], True
    for d in status["destinations"]:
        clear &= d["pending"] == 0 and d["failed"] == 0
        line = (f"  {d['name']:<12} delivered {d['delivered']:>6}  pending {d['pending']:>6}  failed {d['failed']:>4}"
                f"{'  OVERDUE' if d['overdue'] else ''}")
        if d["pending"]:
            line += f"  next {d['next_report']}"
            if d["last_error"]:
                line += f" (last error: {d['last_error'][:120]})"
        lines.append(line)
    for rtype, c in status["cursors"].items():
        lines.append(f"  {rtype:<9} reported until {c['newest_reported_until'] or '—'} ({c['sites_started']} sites)")
    if status["skipped_sites"]:
        lines.append(f"  not reported: {', '.join(f'{k} ({v})' for k, v in status['skipped_sites'].items())}")
    return "\n".join(lines), clear


def cmd_send(args: argparse.Namespace) -> int:
    """Build due reports and deliver them: once (``--once``) or until SIGTERM/SIGINT."""
    _, service, store = _service(args)
    try:
        if args.once:
            service.open()
            try:
                result = service.tick()
                _drain(service, args.max_seconds)
                text, clear = _summary(service.status())
            finally:
                service.stop()
            print(f"dcpue feed send: {sum(result.reports.values())} new reports, {result.enqueued} queued, "
                  f"{result.files} file-drop days\n{text}")
            return 0 if clear else 1
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        service.start()
        print(f"dcpue feed send: running (every {service.settings.interval_s:g} s); Ctrl-C to stop", file=sys.stderr)
        stop.wait()
        service.stop()
        return 0
    finally:
        store.close()


def cmd_status(args: argparse.Namespace) -> int:
    """The outbox and cursors: what was delivered, what waits, what was refused."""
    _, service, store = _service(args, need_destinations=False)
    try:
        service.open()
        status = service.sender.status()
        service.outbox.close()
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps(status, ensure_ascii=False, indent=1))
        return 0
    text, clear = _summary(status)
    print(f"feed ({status['format']}, {status['sites']} sites):\n{text}")
    return 0 if clear else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    """Queue every report since ``--since`` that is not in the outbox yet, then deliver like ``send --once``."""
    settings, service, store = _service(args)
    try:
        stamp = pd.Timestamp(args.since)
        stamp = stamp.tz_localize(settings.engine.timezone) if stamp.tzinfo is None else stamp
    except ValueError as exc:
        store.close()
        raise ConfigError(f"--since {args.since!r}: not a date or time ({exc})") from None
    try:
        service.open()
        try:
            result = service.sender.backfill(int(stamp.value // 1_000_000), args.type or None)
            if not args.no_send:
                _drain(service, args.max_seconds)
            text, clear = _summary(service.status())
        finally:
            service.stop()
    finally:
        store.close()
    print(f"dcpue feed backfill since {stamp.isoformat()}: {sum(result.reports.values())} reports built, "
          f"{result.enqueued} queued\n{text}")
    return 0 if clear or args.no_send else 1


def cmd_receive(args: argparse.Namespace) -> int:
    """Run the reference receiver until SIGTERM/SIGINT."""
    import ssl

    import uvicorn

    from dcpue.feed.receiver import ReceiverStore, create_receiver_app, load_keys

    try:
        keys = load_keys(args.keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    store = ReceiverStore(Path(args.db))
    app = create_receiver_app(store, keys, tolerance_s=args.tolerance_s)
    extra: dict[str, Any] = {}
    if args.tls_cert:
        extra = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
        if args.tls_client_ca:
            extra.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    print(f"dcpue feed receive: http{'s' if args.tls_cert else ''}://{args.host}:{args.port}/api/v1/reports "
          f"(store {args.db})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **extra)
    finally:
        store.close()
    return 0


def cmd_export_eu(args: argparse.Namespace) -> int:
    """The EU Delegated Regulation 2024/1364 annual report of each site, from the stored windows (docs/feed/)."""
    from dcpue.analytics.feed.eu import eu_annual_report, eu_report_to_csv
    from dcpue.cli import _configure_process, _demo_registry
    from dcpue.runtime.store import FileStore
    from dcpue.yamlio import read_yaml

    settings = _settings(args)
    _configure_process(settings)
    registry = _demo_registry(settings)
    known = {s.id: s for s in registry.sites}
    wanted = args.site or list(known)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ConfigError(f"--site: not in the registry: {', '.join(unknown)}")
    info: dict[str, Any] = {}
    if args.operator_info:
        loaded = read_yaml(Path(args.operator_info), "operator info file") or {}
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ConfigError(f"{args.operator_info}: needs a mapping of site id → {{indicator key: value}}")
        info = loaded
    path = Path(settings.store.path)
    if not path.is_file():
        raise DcpueError(f"{path}: no result store there (run the pipeline first, or give --store)")
    tz = settings.engine.timezone
    start = int(pd.Timestamp(year=args.year, month=1, day=1, tz=tz).value // 1_000_000)
    end = int(pd.Timestamp(year=args.year + 1, month=1, day=1, tz=tz).value // 1_000_000)
    store = FileStore(path).setup()
    reports = []
    try:
        for sid in wanted:
            windows = pd.concat([store.query_windows("site", w, [sid], start, end) for w in ("1mo", "1d")],
                                ignore_index=True)
            try:
                reports.append(eu_annual_report(known[sid], windows, args.year, tz=tz,
                                                operator_info=info.get(sid)))
            except ValueError as exc:
                raise ConfigError(f"{args.operator_info or 'operator info'}: site {sid}: {exc}") from None
    finally:
        store.close()
    if args.format == "csv":  # one table for all sites: each site's rows under a leading site_id column
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for i, (sid, r) in enumerate(zip(wanted, reports, strict=True)):
            rows = list(csv.reader(io.StringIO(eu_report_to_csv(r))))
            if i == 0:
                writer.writerow(["site_id", *rows[0]])
            writer.writerows([sid, *row] for row in rows[1:])
        text = out.getvalue()
    else:
        text = json.dumps(reports, ensure_ascii=False, indent=1, allow_nan=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"dcpue feed export-eu: {len(reports)} site report(s) for {args.year} → {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write the JSON Schema of every report type (as published in docs/feed/v1/)."""
    from dcpue.analytics.feed.schema import json_schemas

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, ensure_ascii=False, indent=2) + "\n",
                                                 encoding="utf-8")
    print(f"dcpue feed schemas: {len(json_schemas())} schemas → {out}", file=sys.stderr)
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dcpue feed …`` to the main parser."""
    feed = sub.add_parser("feed", help="provincial monitoring platform: send, status, backfill, receive",
                          description="Reports for the provincial online monitoring platform (docs/feed.md).",
                          epilog=FEED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = feed.add_subparsers(dest="feed_command", required=True, metavar="ACTION")
    source = argparse.ArgumentParser(add_help=False, parents=[common])
    source.add_argument("--registry", help="site registry YAML (default: `registry:`, else the demo fleet)")
    source.add_argument("--store", help="result store file (default: store.path)")

    send = fsub.add_parser("send", parents=[source], help="build due reports and deliver them",
                           epilog=FEED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    send.add_argument("--once", action="store_true", help="one run, deliver what is due, print the status, exit")
    send.add_argument("--max-seconds", type=float, default=60.0, help="with --once: stop delivering after this")
    send.set_defaults(func=cmd_send)

    status = fsub.add_parser("status", parents=[source], help="what was delivered, what waits, what was refused")
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(func=cmd_status)

    back = fsub.add_parser("backfill", parents=[source], help="queue every report since a date, then deliver",
                           epilog=FEED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    back.add_argument("--since", required=True, help="date or time (engine.timezone unless it has an offset)")
    back.add_argument("--type", action="append", choices=["realtime", "hourly", "daily", "monthly"],
                      help="only these report types (repeatable; default: feed.reports)")
    back.add_argument("--no-send", action="store_true", help="only queue; a running `feed send` delivers")
    back.add_argument("--max-seconds", type=float, default=300.0, help="stop delivering after this")
    back.set_defaults(func=cmd_backfill)

    recv = fsub.add_parser("receive", help="run the reference receiver (verifies signatures, schema, replays)")
    recv.add_argument("--host", default="127.0.0.1")
    recv.add_argument("--port", type=int, default=8700)
    recv.add_argument("--db", default="dcpue-data/feed-received.sqlite", help="where accepted reports are kept")
    recv.add_argument("--keys", required=True, help="YAML: keys: [{api_key, secret, algorithms?, sites?}]")
    recv.add_argument("--tolerance-s", type=float, default=300.0, help="accepted clock skew / replay window [s]")
    recv.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    recv.add_argument("--tls-key", help="… and this private key (PEM)")
    recv.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    recv.set_defaults(func=cmd_receive)

    eu = fsub.add_parser("export-eu", parents=[source],
                         help="EU Delegated Regulation 2024/1364 annual report (JSON or CSV) per site")
    eu.add_argument("--year", type=int, required=True, help="reporting calendar year (engine.timezone)")
    eu.add_argument("--site", action="append", help="only this site id (repeatable; default: every site)")
    eu.add_argument("--operator-info", metavar="YAML",
                    help="what dcpue cannot measure, per site id: {site: {floor_area_m2: …, …}} (docs/feed/)")
    eu.add_argument("--format", choices=["json", "csv"], default="json")
    eu.add_argument("--output", "-o")
    eu.set_defaults(func=cmd_export_eu)

    schemas = fsub.add_parser("schemas", help="write the JSON Schemas of the report types")
    schemas.add_argument("--output", "-o", default="docs/feed/v1")
    schemas.set_defaults(func=cmd_schemas)
