"""The ``dcpue`` command: the only place that reads files, environment and arguments.

Subcommands:

* ``dcpue demo`` — simulated Guizhou fleet → analytics → store, with the live web page.
* ``dcpue pue READINGS --sites SITES.yaml`` — batch PUE from a meter export.
* ``dcpue registry check FILE`` / ``dcpue registry generate`` — validate or create a site registry.
* ``dcpue topics create`` / ``collect`` / ``analyze`` / ``aggregate`` / ``serve`` — the distributed path
  (Kafka and InfluxDB), one stage per process; see docs/distributed.md.
* ``dcpue retire`` — retirement assessment of every site from the result store (docs/retirement.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dcpue import __version__
from dcpue.errors import ConfigError, DcpueError
from dcpue.registry import Registry, dump_registry, load_registry
from dcpue.settings import Settings, load_settings

log = logging.getLogger("dcpue")

EXIT_CONFIG = 2


class _RedactQueryStrings(logging.Filter):
    """Blanks the query string of URLs that httpx logs ("HTTP Request: POST …"): DingTalk and WeCom
    robots carry their access token (and DingTalk its signature) in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(a) for a in record.args)
        return True


def _without_query(value: object) -> object:
    text = str(value)
    if "://" in text and "?" in text:
        return text.split("?", 1)[0] + "?<redacted>"
    return value


def configure_gc(settings: Settings) -> None:
    """Set the process's young-generation GC threshold from ``settings`` (0 leaves Python's)."""
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)


def _configure_process(settings: Settings) -> None:
    _configure_logging(settings.log_level)
    configure_gc(settings)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("httpx").addFilter(_RedactQueryStrings())
    if level != "DEBUG":
        # pymodbus logs every failed request at ERROR; the poller reports each device's failure once
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# -- demo ---------------------------------------------------------------------------------
def _demo_registry(settings: Settings) -> Registry:
    if settings.registry is not None:
        return load_registry(settings.registry)
    from dcpue.ingest.simulator import generate_fleet

    return generate_fleet(settings.simulator.sites, seed=settings.simulator.seed)


def _sim_start_ms(settings: Settings) -> int:
    if settings.simulator.start:
        try:
            stamp = pd.Timestamp(settings.simulator.start)
        except ValueError as exc:
            raise ConfigError(f"field 'simulator.start': not a date: {exc}") from None
        stamp = stamp.tz_localize(settings.engine.timezone) if stamp.tzinfo is None else stamp
        return int(stamp.value // 1_000_000)
    day = 86_400_000
    return (int(time.time() * 1000) // day - 30) * day  # midnight UTC 30 days ago


def _simulator(settings: Settings, registry: Registry, start_ms: int) -> Any:
    from dcpue.ingest.simulator import FleetSimulator

    return FleetSimulator(registry, seed=settings.simulator.seed, start_ms=start_ms,
                          sample_interval_s=settings.simulator.sample_interval_s, faults=settings.simulator.faults)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the embedded pipeline on a simulated fleet until --duration or Ctrl-C."""
    from dcpue.runtime.embedded import EmbeddedPipeline, SimClock
    from dcpue.runtime.store import FileStore

    if args.influx and not args.kafka:
        raise ConfigError("--influx needs --kafka: the demo writes InfluxDB on the distributed path")
    distributed: dict[str, Any] = {}
    if args.kafka:
        distributed["bus"] = {"kind": "kafka", "kafka": {"bootstrap_servers": args.kafka}}
    store_options: dict[str, Any] = {"path": args.store}
    if args.influx:
        store_options.update(kind="influxdb", influxdb={"url": args.influx})
    settings = load_settings(args.config, registry=args.registry, log_level=args.log_level,
                             http={"port": args.port, "host": args.host},
                             store=store_options, **distributed,
                             simulator={"sites": args.sites, "speed": args.speed, "seed": args.seed,
                                        "faults": False if args.no_faults else None})
    _configure_process(settings)
    registry = _demo_registry(settings)
    store_path = Path(settings.store.path)
    _clear_demo_store(store_path)  # a fresh simulated timeline each run
    store = FileStore(store_path).setup()
    store.put_state("created_by", "dcpue demo")
    start_ms = _sim_start_ms(settings)
    simulator = _simulator(settings, registry, start_ms)
    clock = SimClock(start_ms, settings.simulator.speed)
    # the demo compresses time: each half-second poll carries 0.5 × speed simulated seconds of readings, and
    # a site whose batch lands in the worker's next step would look silent for that long
    poll_span_s = 0.5 * settings.simulator.speed
    if settings.alerts.no_data_after_s < 3 * poll_span_s:
        settings = settings.model_copy(update={"alerts": settings.alerts.model_copy(
            update={"no_data_after_s": 3 * poll_span_s})})
        log.info("demo at %g× speed: alerts.no_data_after_s raised to %g s (three polls)", settings.simulator.speed,
                 3 * poll_span_s)
    if settings.bus.kind == "kafka":
        from dcpue.runtime.distributed import DistributedDemo

        # a fresh simulated timeline needs fresh topics and consumer groups
        run = f"demo-{int(time.time())}"
        settings = settings.model_copy(update={"bus": settings.bus.model_copy(update={
            "topics": settings.bus.topics.model_copy(update={
                name: f"{value}.{run}" for name, value in settings.bus.topics.model_dump().items()}),
            "kafka": settings.bus.kafka.model_copy(update={"group_id": f"{settings.bus.kafka.group_id}-{run}"}),
        })})
        pipeline: Any = DistributedDemo(settings, registry, simulator, clock, store)
    else:
        pipeline = EmbeddedPipeline(settings, registry, simulator, clock, store)

    def _stop(signum: int, _frame: Any) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping, draining what is on the bus …", file=sys.stderr)
        pipeline.stop_event.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    pipeline.start()
    if pipeline.errors:
        pipeline.stop()
        print(f"dcpue demo: {pipeline.errors[0]}", file=sys.stderr)
        return 1
    url = f"http://{settings.http.host}:{pipeline.http_port}/"
    where = ""
    if settings.bus.kind == "kafka":
        run = settings.bus.topics.readings.rsplit(".", 1)[-1]
        where = f" via Kafka {settings.bus.kafka.bootstrap_servers} (topics dcpue.*.{run})"
        if settings.store.kind == "influxdb":
            where += f" into InfluxDB {settings.store.influxdb.url} bucket {settings.store.influxdb.bucket}"
    print(f"dcpue demo: {len(registry.sites)} simulated sites, {settings.simulator.speed:g}× real time{where}; "
          f"live page at {url}  (Ctrl-C to stop)", flush=True)
    summary = (lambda: None) if args.quiet else (lambda: _print_summary(store, pipeline.status(), settings))
    pipeline.wait(args.duration, on_tick=summary, tick_s=args.summary_every)
    pipeline.stop()
    status = pipeline.status()
    print(f"dcpue demo: stopped; {status.get('readings', 0)} readings, {status['windows_written']} windows written, "
          f"{status['dead_letters']} dead letters, store {store_path}", flush=True)
    if pipeline.errors:
        print(f"dcpue demo: failed: {pipeline.errors[0]!r}", file=sys.stderr)
        return 1
    return 0


def _clear_demo_store(path: Path) -> None:
    """Delete a store the demo wrote before; refuse to touch one that holds anything else."""
    from dcpue.runtime.store import FileStore

    if not path.exists():
        return
    existing = FileStore(path).setup()
    try:
        owner = existing.get_state("created_by")
        has_data = not existing.latest_windows("fleet", "1d").empty or not existing.latest_windows("site", "1m").empty
    finally:
        existing.close()
    if owner != "dcpue demo" and has_data:
        raise ConfigError(f"{path}: store holds data not written by `dcpue demo`; the demo clears its store at "
                          "start, so point it elsewhere with --store PATH")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _print_summary(store: Any, status: dict[str, Any], settings: Settings) -> None:
    sites = store.latest_windows("site", "1h").set_index("id")
    fleet = store.latest_windows("fleet", "1h")
    tz = settings.engine.timezone
    sim = pd.Timestamp(status["sim_time_ms"], unit="ms", tz="UTC").tz_convert(tz)
    fleet_pue = _fmt(fleet["pue"].iloc[0]) if not fleet.empty else "-"
    lines = [f"— simulated {sim:%Y-%m-%d %H:%M} ({tz}) · fleet PUE (1 h) {fleet_pue} · "
             f"target {settings.engine.target_pue:g} · "
             f"{status['readings']} readings · {status['dead_letters']} dead letters"]
    lines.append(f"  {'site':<8}{'PUE 1h':>8}{'gap':>8}{'grade':>14}{'IT kW':>10}{'status':>12}")
    for site_id, row in sites.iterrows():
        lines.append(f"  {site_id:<8}{_fmt(row['pue']):>8}{_fmt(row['pue_gap']):>8}{row['grade'] or '-':>14}"
                     f"{_fmt(row['it_kw'], 0):>10}{row['status']:>12}")
    print("\n".join(lines), flush=True)


# -- pue ----------------------------------------------------------------------------------
def cmd_pue(args: argparse.Namespace) -> int:
    """Batch PUE from a meter export."""
    from dcpue.analytics.batch import batch_windows
    from dcpue.runtime.files import read_readings_file

    settings = load_settings(args.config, log_level=args.log_level, engine={"timezone": args.tz})
    _configure_process(settings)
    registry = load_registry(args.sites)
    readings, rejects = read_readings_file(args.readings, registry, naive_tz=settings.engine.timezone)
    if not rejects.empty:
        print(f"dcpue pue: {len(rejects)} row(s) of {args.readings} not used; first: line "
              f"{rejects['line'].iloc[0]}: {rejects['reason'].iloc[0]}", file=sys.stderr)
        if args.rejects:
            rejects.to_csv(args.rejects, index=False)
    windows = batch_windows(readings, registry, args.window, settings.engine)
    columns = ["scope", "id", "window", "start", "status", "coverage", "it_category", "facility_kwh", "it_kwh",
               "cooling_kwh", "pue", "pue_gap", "grade", "ppue_cooling", "clf", "plf", "wue", "cue", "ref", "erf",
               "flags"]
    out = windows.assign(
        start=pd.to_datetime(windows["start_ms"], unit="ms", utc=True).dt.tz_convert(settings.engine.timezone)
        .dt.strftime("%Y-%m-%dT%H:%M%z"))
    if args.format == "json":
        records = json.loads(windows.to_json(orient="records"))
        text = json.dumps(records, ensure_ascii=False, indent=1)
    elif args.format == "csv":
        text = out[columns].to_csv(index=False)
    else:
        table = out[columns[:13]].copy()
        for col in ("coverage", "pue", "pue_gap"):
            table[col] = table[col].map(_fmt)
        for col in ("facility_kwh", "it_kwh", "cooling_kwh"):
            table[col] = table[col].map(lambda v: _fmt(v, 1))
        text = table.to_string(index=False)
    if args.output:
        Path(args.output).write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
    else:
        print(text)
    if args.chart:
        from dcpue.runtime.charts import pue_chart

        pue_chart(windows, args.chart, target=settings.engine.target_pue)
        print(f"dcpue pue: chart written to {args.chart}", file=sys.stderr)
    return 0


# -- distributed: topics, collect, analyze --------------------------------------------------
def _kafka_settings(args: argparse.Namespace) -> Settings:
    influx = getattr(args, "influx", None)
    settings = load_settings(args.config, log_level=args.log_level, registry=getattr(args, "registry", None),
                             bus={"kind": "kafka", "kafka": {"bootstrap_servers": args.kafka}},
                             store={"kind": "influxdb", "influxdb": {"url": influx}} if influx else {},
                             simulator={"sites": getattr(args, "sites", None), "speed": getattr(args, "speed", None)},
                             # validated with the rest: a public --host without API tokens is refused here,
                             # before anything connects to Kafka
                             http={"host": getattr(args, "host", None), "port": getattr(args, "port", None)})
    _configure_process(settings)
    return settings


def _stop_on_sigterm() -> None:
    """Containers stop processes with SIGTERM: treat it like Ctrl-C so the finally-blocks flush and close."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Create dcpue's topics (partitions and retention from settings)."""
    from dcpue.adapters.kafka import create_topics

    settings = _kafka_settings(args)
    created = create_topics(settings.bus.kafka, settings.bus.topics)
    print(f"created: {', '.join(created) or 'nothing (all topics exist)'}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Read the configured devices (or, with none configured, the simulated fleet) into Kafka via the spool."""
    from dcpue.adapters.kafka import KafkaProducerAdapter
    from dcpue.runtime.collect import CollectRuntime
    from dcpue.runtime.embedded import SimClock

    settings = _kafka_settings(args)
    devices = getattr(settings.collect, "devices", ())
    simulator = clock = None
    if devices:
        if settings.registry is None:
            raise ConfigError("dcpue collect: devices are configured but no site registry is given "
                              "(--registry or `registry:`): it says which unit each mapped point is in")
        registry = load_registry(settings.registry)
        from dcpue.ingest.poller import check_devices

        check_devices(devices, registry, str(args.config or os.environ.get("DCPUE_CONFIG") or "settings"))
    else:
        registry = _demo_registry(settings)
        start_ms = _sim_start_ms(settings)
        clock = SimClock(start_ms, settings.simulator.speed)
        simulator = _simulator(settings, registry, start_ms)
    runtime = CollectRuntime(settings, lambda: KafkaProducerAdapter(settings.bus.kafka).setup(), registry,
                             simulator=simulator, sim_now_ms=clock.now_ms if clock else None)
    _stop_on_sigterm()
    stop = threading.Event()
    runtime.start()
    if runtime.metrics_port is not None:
        print(f"dcpue collect: metrics on http://{settings.collect.metrics_host}:{runtime.metrics_port}/metrics",
              flush=True)
    if clock is not None:
        clock.start()
    try:
        runtime.run(stop, args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
    what = f"{runtime.batches} simulator batches" if simulator is not None else f"{len(devices)} devices"
    last = f", simulated time reached {simulator.last_polled_ms} ms" if simulator is not None else ""
    print(f"dcpue collect: {what} spooled, {runtime.forwarder.forwarded_total} records delivered to Kafka, "
          f"{runtime.spool.depth} waiting in {runtime.spool.path}{last}", flush=True)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Read one device once and print what it answered (and, for a configured device, what would be published)."""
    from dcpue.ingest.poller import field_values_to_readings, resolve_targets

    settings = load_settings(args.config, log_level=args.log_level, registry=args.registry)
    _configure_process(settings)
    if (args.url is None) == (args.device is None):
        raise ConfigError("dcpue probe: give either a device URL or --device NAME (a device of collect.devices)")
    if args.device is not None:
        device = next((d for d in settings.collect.devices if d.name == args.device), None)
        if device is None:
            known = ", ".join(d.name for d in settings.collect.devices) or "none configured"
            raise ConfigError(f"dcpue probe: no device named {args.device!r} in collect.devices (known: {known})")
        # a push device (MQTT) probed under the collector's own client id would take over its session
        for_probe = getattr(device, "for_probe", None)
        device = for_probe() if callable(for_probe) else device
    else:
        from dcpue.ingest.devices import device_from_url

        options: dict[str, Any] = {}
        for item in args.option or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"dcpue probe: option {item!r} is not key=value")
            options[key.strip()] = value
        if args.timeout is not None:
            options["timeout_s"] = args.timeout
            options.setdefault("interval_s", max(args.timeout, 10.0))
        device = device_from_url(args.url, **options)
    reader = device.make_reader()
    started = time.monotonic()
    try:
        reader.open()
        values = reader.read()
        malformed = list(getattr(reader, "malformed", lambda: [])())
    finally:
        reader.close()
    elapsed_ms = (time.monotonic() - started) * 1000
    now_ms = int(time.time() * 1000)
    if args.format == "json":
        out: dict[str, Any] = {"device": device.name, "protocol": device.protocol, "latency_ms": round(elapsed_ms, 1),
                               "fields": [{"field": v.field, "value": None if math.isnan(v.value) else v.value,
                                           "unit": v.unit, "quality": int(v.quality), "ts": v.ts_ms}
                                          for v in values]}
    else:
        print(f"{device.protocol} device {device.name}: {len(values)} fields in {elapsed_ms:.0f} ms")
        width = max((len(v.field) for v in values), default=5)
        for v in values:
            flags = "" if not v.quality else f"  [{v.quality!r}]"
            print(f"  {v.field:<{width}}  {_fmt(v.value, 4):>14} {v.unit}{flags}")
        for bad in malformed:
            print(f"  malformed payload: {getattr(bad, 'reason', bad)}")
    if device.points and settings.registry is not None:
        targets = resolve_targets(device, load_registry(settings.registry))
        frame, rejects = field_values_to_readings(device.site, values, targets, now_ms)
        if args.format == "json":
            out["publish"] = [{"site": r.site, "point": r.point, "value": None if math.isnan(r.value) else r.value,
                               "quality": int(r.quality)} for r in frame.itertuples()]
            out["rejects"] = [r.reason for r in rejects]
        else:
            print(f"would publish to site {device.site}:")
            for r in frame.itertuples():
                print(f"  {r.point:<{width}}  {_fmt(r.value, 4):>14}  quality {r.quality}")
            for r in rejects:
                print(f"  dead letter: {r.reason}")
    if args.format == "json":
        print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _run_stage(stage: Any, duration: float | None, before_close: Any = None) -> None:
    """Step ``stage`` until ``duration`` or Ctrl-C/SIGTERM; then checkpoint, commit and close it."""
    end = None if duration is None else time.monotonic() + duration
    _stop_on_sigterm()
    try:
        while end is None or time.monotonic() < end:
            stage.worker.step(timeout_s=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if before_close is not None:
            before_close()
        stage.close()


def cmd_analyze(args: argparse.Namespace) -> int:
    """Consume readings from Kafka in a consumer group and write site windows to InfluxDB (or the file store)."""
    from dcpue.runtime.distributed import analytics_stage, result_store

    settings = _kafka_settings(args)
    registry = _demo_registry(settings)
    stage = analytics_stage(settings, registry, [result_store(settings, registry)], emit_groups=args.groups)
    _run_stage(stage, args.duration)
    stats = stage.worker.status()
    print(f"dcpue analyze: {stats['messages']} batches in {stats['steps']} steps, {stats['readings']} readings, "
          f"{stats['windows_written']} windows written, {stats['dead_letters']} dead letters, "
          f"{stats['sites_restored']} sites restored from checkpoints{_latency_note(stats)}{_busy_note(stats)}",
          flush=True)
    return 0


def _busy_note(stats: dict[str, object]) -> str:
    busy = stats.get("busy_s")
    if not isinstance(busy, dict):
        return ""
    return "; main thread s: " + ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in busy.items())


def _latency_note(stats: dict[str, object]) -> str:
    if stats.get("write_latency_p50_s") is None:
        return ""
    return (f"; batch sent → results written: p50 {stats['write_latency_p50_s']:.3f} s, "
            f"p99 {stats['write_latency_p99_s']:.3f} s, max {stats['write_latency_max_s']:.3f} s")


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Second stage: site rows from the metrics topic → cluster and fleet rows (run exactly one)."""
    from dcpue.runtime.distributed import aggregate_stage, result_store

    settings = _kafka_settings(args)
    registry = _demo_registry(settings)
    stage = aggregate_stage(settings, registry, [result_store(settings, registry)])
    _run_stage(stage, args.duration)
    stats = stage.worker.status()
    print(f"dcpue aggregate: {stats['messages']} metrics batches, {stats['site_rows']} site rows, "
          f"{stats['group_rows_written']} group rows written", flush=True)
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    """Deliver alert events from the alerts topic to the configured webhook receivers (distributed path)."""
    from dcpue.runtime.distributed import notify_stage

    settings = _kafka_settings(args)
    if not settings.alerts.receivers:
        print("dcpue notify: no alerts.receivers configured: events are kept in the history only", file=sys.stderr)
    history = Path(args.history) if args.history else Path(settings.alerts.delivery.outbox_path).with_name(
        "alert-history.sqlite")
    stage = notify_stage(settings, history)
    notifier = stage.worker
    http = None
    if args.metrics_port is not None and notifier.delivery is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        from dcpue.alerting.metrics import register_delivery_metrics

        metrics = CollectorRegistry()
        register_delivery_metrics(notifier.delivery, metrics)
        http, _ = start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics)
        print(f"dcpue notify: metrics at http://{args.metrics_host}:{http.server_address[1]}/metrics", flush=True)
    print(f"dcpue notify: {settings.bus.topics.alerts} → {len(settings.alerts.receivers)} receivers "
          f"(outbox {settings.alerts.delivery.outbox_path}, history {history})", flush=True)
    try:
        _run_stage(stage, args.duration)
    finally:
        if http is not None:
            http.shutdown()
    stats = notifier.status()
    print(f"dcpue notify: {stats['alert_events']} alert events, {stats['malformed_alert_records']} malformed",
          flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """HTTP API and live page for the distributed path, from a local view of the metrics topic."""
    import threading
    import uuid

    from dcpue.runtime.distributed import alert_view_stage, recommendation_view_stage, view_stage
    from dcpue.runtime.embedded import serve_http, wait_until
    from dcpue.runtime.store import FileStore

    settings = _kafka_settings(args)
    registry = _demo_registry(settings)
    path = Path(args.store or settings.store.path)
    store = FileStore(path).setup()
    # one view per store: its own consumer group, so every instance sees every row, and a new (or wiped)
    # store gets a new group that reads the topic from its start
    view_id = store.get_state("view_id")
    if view_id is None:
        view_id = uuid.uuid4().hex[:12]
        store.put_state("view_id", view_id)
    group = f"{settings.bus.kafka.group_id}-api-{view_id}"
    stage = view_stage(settings, store, group)
    alert_stage, alerts = (alert_view_stage(settings, path.with_name(f"{path.stem}.alerts.sqlite"))
                           if settings.alerts.enabled else (None, None))
    advice_stage = recommendation_view_stage(settings, store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def status() -> dict[str, object]:
        return {"mode": "distributed-view", **stage.worker.status(), **advice_stage.worker.status(),
                **(alert_stage.worker.status() if alert_stage is not None else {})}

    feed = feed_alerts = None
    if settings.feed.enabled:  # reports from this view of the metrics topic (enable it in one serve instance)
        from dcpue.feed.sender import FeedService

        if settings.alerts.enabled:  # FeedUndelivered goes on the alerts topic: `dcpue notify` delivers it
            from dcpue.adapters.kafka import KafkaProducerAdapter
            from dcpue.runtime.alerts import AlertOutput

            feed_alerts = KafkaProducerAdapter(settings.bus.kafka).setup()
        feed = FeedService.from_settings(settings, store, registry, alerts=AlertOutput(
            producer=feed_alerts, topic=settings.bus.topics.alerts) if feed_alerts is not None else None).start()
    side_stages = [s for s in (alert_stage, advice_stage) if s is not None]

    def not_ready() -> str | None:  # every view read to the end of its topics: a restart serves no partial lists
        return next((reason for view in (stage, *side_stages) if (reason := view.worker.not_ready())), None)

    server, _thread, port = serve_http(settings, store, registry, status, stop, errors,
                                       not_ready=not_ready, alerts=alerts, feed=feed.status if feed else None)
    from dcpue.runtime.embedded import spawn_guarded

    def follow_side_topics() -> None:
        while not stop.is_set():
            for side in side_stages:
                side.worker.step(0.25)

    side_thread = spawn_guarded(follow_side_topics, "side-views", errors, stop)
    if errors:
        stop.set()
        if feed is not None:
            feed.stop()
        if feed_alerts is not None:
            feed_alerts.close()
        side_thread.join(5)
        for side in side_stages:
            side.close()
        stage.close()
        print(f"dcpue serve: {errors[0]}", file=sys.stderr)
        return 1
    print(f"dcpue serve: API and live page at http://{settings.http.host}:{port}/ from "
          f"{settings.bus.topics.metrics} (view in {path})", flush=True)

    def stop_http() -> None:
        server.should_exit = True
        wait_until(stop, 0.5)  # let the last response finish before the store closes
        if feed is not None:
            feed.stop()
        if feed_alerts is not None:
            feed_alerts.close()
        stop.set()
        side_thread.join(5)
        for side in side_stages:
            side.close()

    _run_stage(stage, args.duration, before_close=stop_http)
    print(f"dcpue serve: stopped; {stage.worker.status()['rows']} window rows applied", flush=True)
    return 0


# -- cooling ------------------------------------------------------------------------------
def _pairs(items: list[str] | None, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip().removeprefix("sp_")] = float(value)
        except ValueError:
            raise DcpueError(f"{what}: expected name=number, got {item!r}") from None
    return out


def _read_frame(path: str) -> pd.DataFrame:
    if path.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _columns(path: str) -> set[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    return set(pd.read_csv(path, nrows=0).columns)


def _cooling_model(path: str, site: str | None) -> Any:
    """A saved model: a ``.joblib``/``.json`` file, or the newest model of ``site`` in a directory."""
    from dcpue.analytics.cooling import CoolingModel

    target = Path(path)
    if target.is_dir():
        pattern = f"cooling-{site}-*.json" if site else "cooling-*.json"
        found = sorted(target.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            raise DcpueError(f"{target}: no cooling model{' of site ' + site if site else ''} (train one first)")
        target = found[-1]
    if not target.exists():
        raise DcpueError(f"{target}: no such model file")
    return CoolingModel.load(target)


def _envelope(model: Any, args: argparse.Namespace) -> Any:
    from dcpue.analytics.cooling import Envelope

    data: dict[str, Any] = {}
    if args.water_class:
        data["w_class"] = args.water_class
    if args.margin is not None:
        data["inlet_margin_k"] = args.margin
    return Envelope(**data)


def cmd_cooling_train(args: argparse.Namespace) -> int:
    """Train a site's cooling model from a readings export or a cooling table; save it versioned."""
    from dcpue.analytics.cooling import CoolingModel, readings_to_table

    if {"site", "point", "value"} <= _columns(args.input):  # a readings export
        from dcpue.runtime.files import read_readings_file

        settings = load_settings(args.config, log_level=args.log_level, registry=args.registry)
        _configure_process(settings)
        registry = _demo_registry(settings)
        if args.site not in registry.site_map:
            raise DcpueError(f"unknown site {args.site!r} in the registry")
        readings, rejects = read_readings_file(args.input, registry, naive_tz=settings.engine.timezone)
        if not rejects.empty:
            print(f"dcpue cooling train: {len(rejects)} row(s) of {args.input} not used; first: line "
                  f"{rejects['line'].iloc[0]}: {rejects['reason'].iloc[0]}", file=sys.stderr)
        table = readings_to_table(readings, registry.site_map[args.site], freq=args.freq)
    else:
        table = _read_frame(args.input)
    setpoints = None
    if args.setpoints:
        setpoints = tuple(n.strip().removeprefix("sp_") for n in args.setpoints.split(",") if n.strip())
    model = CoolingModel.train(table, site=args.site, setpoints=setpoints)
    path = model.save(args.models)
    print(f"dcpue cooling train: site {args.site}, {model.n_rows} rows, model {model.version} → {path}")
    for target, metrics in model.metrics.items():
        print(f"  {target:<14} held-out " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                       if isinstance(v, int | float)))
    return 0


def cmd_cooling_recommend(args: argparse.Namespace) -> int:
    """One recommendation for given conditions, or an hourly schedule for a weather-and-load table."""
    from dcpue.analytics.cooling import recommend, schedule

    model = _cooling_model(args.model, args.site)
    envelope = _envelope(model, args)
    current = _pairs(args.current, "--current")
    if args.hourly:
        plan = schedule(model, _read_frame(args.hourly), envelope, current)
        if args.output:
            plan.to_csv(args.output, index=False)
            ok = plan["ok"].mean() if len(plan) else 0.0
            print(f"dcpue cooling recommend: {len(plan)} hours, {ok:.0%} with a recommendation, "
                  f"predicted saving {plan['saving_kw'].sum():.0f} kWh → {args.output}")
        else:
            sys.stdout.write(plan.to_csv(index=False))
        return 0
    measured = _pairs(args.measured, "--measured")
    unknown = sorted(set(measured) - {"rack_inlet_c", "fw_supply_c"})
    if unknown:
        raise DcpueError(f"--measured: unknown outcome {unknown[0]!r} (valid: rack_inlet_c, fw_supply_c)")
    rec = recommend(model, _pairs(args.conditions, "--conditions"), current, envelope, site=model.site,
                    ts_ms=int(time.time() * 1000), measured=measured or None)
    print(json.dumps(rec.as_dict(), indent=2, ensure_ascii=False))
    return 0 if rec.ok else 3


def cmd_cooling_evaluate(args: argparse.Namespace) -> int:
    """Closed-loop evaluation on the simulator against fixed-setpoint baselines and hindsight."""
    from dcpue.runtime import cooling_eval

    argv = [*(["--quick"] if args.quick else []), "--seed", str(args.seed), "--draw", str(args.draw),
            "--workers", str(args.workers),
            *(["--site-types", *args.site_types] if args.site_types else []),
            *(["--seasons", *args.seasons] if args.seasons else []),
            *(["--json", args.json] if args.json else []), *(["--markdown", args.markdown] if args.markdown else []),
            *(["--inlet-margin", str(args.inlet_margin)] if args.inlet_margin is not None else []),
            *(["--no-feedback"] if args.no_feedback else []),
            *(["--step-hours", str(args.step_hours)] if args.step_hours else [])]
    return cooling_eval.main(argv)


# -- retire -------------------------------------------------------------------------------
RETIRE_EPILOG = """exit status: 0 assessed (also when the store holds no figures: every figure is then unknown);
1 the store is missing or unreadable, or an output file or the InfluxDB write fails; 2 configuration error (settings,
registry, --as-of, --price: the message names the file, the field and the problem)."""


def _as_of_ms(text: str | None, tz: str) -> int | None:
    """``--as-of``: a date or time; without an offset it is taken in ``tz`` (a date is its midnight)."""
    if not text:
        return None
    try:
        stamp = pd.Timestamp(text)
        stamp = stamp.tz_localize(tz) if stamp is not pd.NaT and stamp.tzinfo is None else stamp
        ms = None if stamp is pd.NaT else int(stamp.value // 1_000_000)
    except (ValueError, TypeError, OverflowError):  # OutOfBoundsDatetime is a ValueError
        ms = None
    if ms is None:
        raise ConfigError(f"--as-of {text!r}: not a date or time between 1677 and 2262 "
                          f"(e.g. 2025-01-01 or 2025-01-01T08:00+08:00)")
    return ms


def _width(text: str) -> int:
    """Terminal columns of ``text``: CJK characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _aligned(frame: pd.DataFrame, right: set[str]) -> str:
    """``frame`` as a plain-text table: ``right`` columns right-aligned, the others left-aligned."""
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(_width(row[k]) for row in cells) for k in range(len(frame.columns))]
    lines = []
    for row in cells:
        parts = []
        for k, (col, value) in enumerate(zip(frame.columns, row, strict=True)):
            pad = " " * (widths[k] - _width(value))
            parts.append(pad + value if col in right else value + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _n(value: Any, digits: int = 0) -> str:
    """A number with thousands separators; '-' when unknown."""
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):,.{digits}f}"


def _retire_table(result: Any) -> str:
    """The assessment as plain-text tables: sites, plan, totals."""
    a = result.assessment
    sites = a.sites
    period = result.to_dict()["period"]
    score = [f"{s:.0f}" + (f"–{m:.0f}" if m > s else "") for s, m in zip(sites["score"], sites["score_max"],
                                                                        strict=True)]
    table = pd.DataFrame({
        "site": sites["site"], "verdict": sites["verdict"] + sites["verdict_certain"].map({True: "", False: "?"}),
        "score": score, "met/unknown": [f"{m}/{u}" for m, u in zip(sites["criteria_met"], sites["criteria_unknown"],
                                                                     strict=True)],
        "PUE": sites["annual_pue"].map(lambda v: _n(v, 2)), "上架率 %": sites["occupancy_pct"].map(_n),
        "IT kW": sites["it_kw_mean"].map(_n), "why": sites["verdict_reason"],
    })
    lines = [f"Retirement assessment of {len(sites)} sites, figures of {period['start'][:10]} … {period['as_of'][:10]} "
             f"({period['timezone']}); '?': unknown criteria could change the verdict",
             _aligned(table, {"score", "met/unknown", "PUE", "上架率 %", "IT kW"})]
    plan = a.plan
    if len(plan):
        moves = pd.DataFrame({
            "site": plan["site"], "verdict": plan["verdict"], "to": plan["destination"].fillna("-"),
            "km": plan["distance_km"].map(_n), "IT kW": plan["moved_it_kw"].map(_n),
            "PUE": [f"{_n(p, 2)} → {_n(d, 2)}" for p, d in zip(plan["site_pue"], plan["destination_pue"], strict=True)],
            "saved kWh/yr": plan["saved_kwh_year"].map(_n), "tCO2/yr": plan["saved_tco2_year"].map(lambda v: _n(v, 1)),
            "CNY/yr": plan["saved_cost_cny_year"].map(_n), "note": plan["note"],
        })
        lines += ["", "Consolidation plan (saved = IT energy × (site PUE − destination PUE)):",
                  _aligned(moves, {"km", "IT kW", "saved kWh/yr", "tCO2/yr", "CNY/yr"})]
    t = a.totals
    verdicts = ", ".join(f"{_n(t[v])} {v}" for v in ("retire", "consolidate", "upgrade", "keep"))
    lines += ["", f"Totals: {_n(t['sites'])} sites: {verdicts}; {_n(t['moved_it_kw'])} kW IT load to move, "
              f"{_n(t['unplaced'])} without a destination; saves {_n(t['saved_kwh_year'])} kWh, "
              f"{_n(t['saved_tco2_year'], 1)} tCO2 and {_n(t['saved_cost_cny_year'])} CNY a year"]
    return "\n".join(lines)


def cmd_retire(args: argparse.Namespace) -> int:
    """Retirement assessment of every registry site from the result store: table, JSON or CSV; HTML and XLSX."""
    from dcpue.runtime.retirement import assess_store
    from dcpue.runtime.store import FileStore

    settings = load_settings(args.config, log_level=args.log_level, registry=args.registry,
                             store={"path": args.store, "influxdb": {"url": args.influx or None}})
    _configure_process(settings)
    if args.price is not None and not (math.isfinite(args.price) and args.price >= 0):
        raise ConfigError(f"--price {args.price}: the electricity price must be a number ≥ 0 [CNY/kWh]")
    tz = settings.engine.timezone
    as_of_ms = _as_of_ms(args.as_of, tz)
    if settings.registry is None:
        print(f"dcpue retire: no registry given (--registry or `registry:`): assessing the simulated demo fleet "
              f"({settings.simulator.sites} sites, seed {settings.simulator.seed})", file=sys.stderr)
    registry = _demo_registry(settings)
    path = Path(settings.store.path)
    if not path.is_file():
        raise DcpueError(f"{path}: no result store there (run `dcpue demo` or the pipeline first, "
                         "or give --store PATH)")
    store = FileStore(path).setup()
    try:
        result = assess_store(store, registry, settings.retirement, as_of_ms=as_of_ms, tz=tz,
                              price_cny_per_kwh=args.price)
    finally:
        store.close()
    strangers = sorted(set(result.figures.window) - {s.id for s in registry.sites})
    if strangers:
        print(f"dcpue retire: {path} holds figures of {len(strangers)} site(s) the registry does not have "
              f"({', '.join(strangers[:5])}{' …' if len(strangers) > 5 else ''}): is it the registry the store "
              "was written with?", file=sys.stderr)
    if not (result.figures.figures["months_observed"] > 0).any():
        print(f"dcpue retire: {path} holds no ok site window of {result.to_dict()['period']['start'][:10]} … "
              f"{result.to_dict()['period']['as_of'][:10]}: every figure from the store is unknown", file=sys.stderr)
    if args.format == "json":
        text = json.dumps(result.to_dict(), ensure_ascii=False, indent=1, allow_nan=False)
    elif args.format == "csv":
        text = result.assessment.sites.to_csv(index=False)
    else:
        text = _retire_table(result)
    written = []
    try:
        if args.output:
            Path(args.output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            written.append(args.output)
        else:
            print(text.rstrip("\n"))
        if args.html or args.xlsx:
            from dcpue.runtime.retirement_report import write_html, write_xlsx

            if args.html:
                written.append(str(write_html(result, args.html)))
            if args.xlsx:
                written.append(str(write_xlsx(result, args.xlsx)))
    except OSError as exc:
        raise DcpueError(f"writing {exc.filename or 'output'} failed: {exc.strerror or exc}") from exc
    if args.influx is not None:
        from dcpue.adapters.influxdb import InfluxSink

        influx = settings.store.influxdb
        sink = InfluxSink(influx).setup()
        try:
            sink.write_retirement(result, result.as_of_ms)
        finally:
            sink.close()
        written.append(f"InfluxDB {influx.url} bucket {influx.bucket} (measurement retirement)")
    if written:
        t = result.assessment.totals
        print(f"dcpue retire: {_n(t['sites'])} sites ({_n(t['retire'])} retire, {_n(t['consolidate'])} consolidate, "
              f"{_n(t['upgrade'])} upgrade, {_n(t['keep'])} keep) → {', '.join(written)}", file=sys.stderr)
    return 0


# -- registry -----------------------------------------------------------------------------
def cmd_registry_check(args: argparse.Namespace) -> int:
    registry = load_registry(args.file)
    points = sum(len(s.points) for s in registry.sites)
    print(f"{args.file}: ok — {len(registry.sites)} sites, {points} points, {len(registry.clusters)} clusters")
    return 0


def cmd_registry_generate(args: argparse.Namespace) -> int:
    from dcpue.ingest.simulator import generate_fleet

    text = dump_registry(generate_fleet(args.sites, seed=args.seed))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcpue", description="Data-center energy and PUE monitoring.")
    parser.add_argument("--version", action="version", version=f"dcpue {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML settings file (also DCPUE_CONFIG)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="simulated fleet with live PUE in the browser")
    demo.add_argument("--sites", type=int, help="number of simulated sites (default 12)")
    demo.add_argument("--speed", type=float, help="simulated seconds per real second (default 1440: a day a minute)")
    demo.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    demo.add_argument("--port", type=int, help="HTTP port (default 8600; 0 picks a free one)")
    demo.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    demo.add_argument("--seed", type=int, help="simulator seed (default 7)")
    demo.add_argument("--registry", help="site registry YAML instead of the generated fleet")
    demo.add_argument("--store", help="result store file (default dcpue-data/dcpue.sqlite)")
    demo.add_argument("--no-faults", action="store_true", help="simulate without injected meter faults")
    demo.add_argument("--kafka", help="run on the distributed path through this Kafka (host:port[,…])")
    demo.add_argument("--influx", help="with --kafka: also write results to InfluxDB at this URL")
    demo.add_argument("--quiet", action="store_true", help="no terminal summary")
    demo.add_argument("--summary-every", type=float, default=5.0, help="seconds between terminal summaries")
    demo.set_defaults(func=cmd_demo)

    pue = sub.add_parser("pue", parents=[common], help="batch PUE from a CSV/Parquet meter export")
    pue.add_argument("readings", help="long-form file: timestamp,site,point,value[,quality]")
    pue.add_argument("--sites", required=True, help="site registry YAML")
    pue.add_argument("--window", default="1d", choices=["1m", "15m", "1h", "1d", "1mo"])
    pue.add_argument("--format", default="table", choices=["table", "json", "csv"])
    pue.add_argument("--output", "-o", help="write the result here instead of stdout")
    pue.add_argument("--chart", help="also draw PUE per site against the target into this PNG")
    pue.add_argument("--rejects", help="write rows that could not be used (line, reason) to this CSV")
    pue.add_argument("--tz", help="timezone of timestamps without an offset and of day/month windows "
                     "(default: engine.timezone)")
    pue.set_defaults(func=cmd_pue)

    kafka_common = argparse.ArgumentParser(add_help=False, parents=[common])
    kafka_common.add_argument("--kafka", help="Kafka bootstrap servers host:port[,…] (bus.kafka.bootstrap_servers)")
    kafka_common.add_argument("--registry", help="site registry YAML (default: the simulated demo fleet)")
    kafka_common.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")

    topics = sub.add_parser("topics", help="Kafka topic tools")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topics_sub.add_parser("create", parents=[kafka_common], help="create dcpue's topics")
    create.set_defaults(func=cmd_topics_create)

    collect = sub.add_parser("collect", parents=[kafka_common],
                             help="devices of collect.devices (or, with none, the simulated fleet) → spool → Kafka")
    collect.add_argument("--sites", type=int, help="simulator: number of simulated sites (default 12)")
    collect.add_argument("--speed", type=float, help="simulator: simulated seconds per real second (default 1440)")
    collect.set_defaults(func=cmd_collect)

    probe = sub.add_parser(
        "probe", parents=[common], help="read one device once and print what dcpue would publish",
        description="Read a device once. URL forms: modbus://HOST[:502]/UNIT?profile=NAME, "
                    "snmp://COMMUNITY@HOST[:161]?profile=ups-mib (v3: snmp://USER@HOST?version=3&...), "
                    "redfish://USER:PASS@HOST[:443] (redfish+http:// for plain HTTP), "
                    "mqtt://[USER:PASS@]HOST[:1883]/TOPIC?format=json&value_path=...; "
                    "or --device NAME for a device of collect.devices in --config.")
    probe.add_argument("url", nargs="?", help="device URL (see above)")
    probe.add_argument("--device", help="probe this device of collect.devices (with --config) instead of a URL")
    probe.add_argument("--registry", help="site registry: with --device, also show the readings it would publish")
    probe.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                       help="a device setting for a URL probe (e.g. -o verify_tls=false); repeatable")
    probe.add_argument("--timeout", type=float, help="seconds to wait for the device (default 5)")
    probe.add_argument("--format", choices=["table", "json"], default="table")
    probe.set_defaults(func=cmd_probe)

    analyze = sub.add_parser("analyze", parents=[kafka_common],
                             help="consumer-group worker: Kafka readings → PUE windows → InfluxDB")
    analyze.add_argument("--influx", help="InfluxDB URL (store.influxdb.url); token/org/bucket from settings")
    analyze.add_argument("--groups", action="store_true",
                         help="also write cluster/fleet rows (only correct when this is the group's only worker; "
                              "otherwise run `dcpue aggregate`)")
    analyze.set_defaults(func=cmd_analyze)

    aggregate = sub.add_parser("aggregate", parents=[kafka_common],
                               help="second stage: site rows from all workers → cluster and fleet rows")
    aggregate.add_argument("--influx", help="InfluxDB URL (store.influxdb.url); token/org/bucket from settings")
    aggregate.set_defaults(func=cmd_aggregate)

    notify = sub.add_parser("notify", parents=[kafka_common],
                            help="deliver alert events from the alerts topic to webhook receivers")
    notify.add_argument("--history", help="alert history file (default: alert-history.sqlite beside the outbox)")
    notify.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus delivery metrics on this port (0 picks a free one)")
    notify.add_argument("--metrics-host", default="127.0.0.1", help="bind address of the metrics port")
    notify.set_defaults(func=cmd_notify)

    serve = sub.add_parser("serve", parents=[kafka_common],
                           help="HTTP API and live page from the metrics topic (distributed path)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8600; 0 picks a free one)")
    serve.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--store", help="local view file (default store.path)")
    serve.set_defaults(func=cmd_serve)

    cooling = sub.add_parser("cooling", help="AI cooling setpoints: train, recommend, evaluate")
    cooling_sub = cooling.add_subparsers(dest="cooling_command", required=True, metavar="ACTION")
    train = cooling_sub.add_parser("train", parents=[common], help="train a site's model from its history")
    train.add_argument("--site", required=True, help="site id")
    train.add_argument("--input", required=True,
                       help="readings export (site, point, ts, value[, quality]) or a cooling table (docs/cooling.md)"
                            ", CSV or Parquet")
    train.add_argument("--registry", help="site registry YAML (readings exports; default: the demo fleet)")
    train.add_argument("--freq", default="15min", help="interval of the training table (default 15min)")
    train.add_argument("--models", default="dcpue-data/cooling-models", help="model directory")
    train.add_argument("--setpoints", help="comma-separated setpoints to learn, e.g. supply_air,chw_supply "
                                           "(default: every setpoint column with data; one that never varied "
                                           "refuses the training)")
    train.set_defaults(func=cmd_cooling_train)
    rec = cooling_sub.add_parser("recommend", parents=[common], help="recommend setpoints with a trained model")
    rec.add_argument("--model", required=True, help="model file, or a directory (newest model of --site)")
    rec.add_argument("--site", help="site id when --model is a directory")
    rec.add_argument("--conditions", nargs="*", metavar="NAME=VALUE",
                     help="it_kw, dry_bulb_c, wet_bulb_c, rh_pct")
    rec.add_argument("--current", nargs="*", metavar="NAME=VALUE", help="current setpoints, e.g. supply_air=22")
    rec.add_argument("--measured", nargs="*", metavar="NAME=VALUE",
                     help="outcomes measured now: rack_inlet_c (hottest sensor), fw_supply_c; a plant hotter "
                          "than the model tightens the advice")
    rec.add_argument("--hourly", help="hourly table (ts, dry_bulb_c, wet_bulb_c, rh_pct, it_kw): print a schedule")
    rec.add_argument("--output", help="write the schedule CSV here")
    rec.add_argument("--water-class", help="ASHRAE liquid class of the facility-water loop (W17…W45)")
    rec.add_argument("--margin", type=float,
                     help="inlet margin below 27 °C [K] (default: sized from the model's held-out error)")
    rec.set_defaults(func=cmd_cooling_recommend)
    ev = cooling_sub.add_parser("evaluate", parents=[common],
                                help="closed-loop evaluation on the simulator (docs/cooling-evaluation.md)")
    ev.add_argument("--quick", action="store_true", help="one site type and one week (for a smoke run)")
    ev.add_argument("--site-types", nargs="+", help="liquid, hybrid, enterprise, legacy (default: all)")
    ev.add_argument("--seasons", nargs="+", help="representative weeks to run (default: all four)")
    ev.add_argument("--seed", type=int, default=7)
    ev.add_argument("--draw", type=int, default=0, help="another random draw of the step tests (default 0)")
    ev.add_argument("--workers", type=int, default=1, help="processes (one season each)")
    ev.add_argument("--json", help="write the report as JSON here")
    ev.add_argument("--markdown", help="write the table as Markdown here")
    ev.add_argument("--inlet-margin", type=float,
                    help="the recommender's inlet margin below 27 °C [K] (default: sized from each model)")
    ev.add_argument("--no-feedback", action="store_true",
                    help="do not pass the measured inlet and facility water to the recommender")
    ev.add_argument("--step-hours", type=int, help="hours between the history's step-test changes (default 4)")
    ev.set_defaults(func=cmd_cooling_evaluate)

    retire = sub.add_parser(
        "retire", parents=[common], help="retirement assessment of every site: verdicts, evidence, consolidation plan",
        description="Assess every registry site against the retirement criteria (docs/retirement.md) from the "
                    "figures in the result store, and plan moves into the hub clusters. Thresholds and economics "
                    "come from the `retirement:` settings.", epilog=RETIRE_EPILOG)
    retire.add_argument("--registry", help="site registry YAML (default: `registry:` of the settings, else the "
                        "simulated demo fleet)")
    retire.add_argument("--store", help="result store file (default: store.path, dcpue-data/dcpue.sqlite)")
    retire.add_argument("--as-of", help="end of the assessed period: a date or time, in engine.timezone unless it "
                        "has an offset (default: the end of the newest closed day in the store)")
    retire.add_argument("--price", type=float, metavar="CNY/kWh",
                        help="electricity price (overrides retirement.economics.electricity_price_cny_per_kwh)")
    retire.add_argument("--format", default="table", choices=["table", "json", "csv"])
    retire.add_argument("--output", "-o", help="write the table/JSON/CSV here instead of stdout")
    retire.add_argument("--html", metavar="FILE", help="also write the self-contained HTML report here")
    retire.add_argument("--xlsx", metavar="FILE", help="also write the XLSX workbook here")
    retire.add_argument("--influx", nargs="?", const="", metavar="URL",
                        help="also write the assessment to InfluxDB (measurement retirement, at its as-of time) at "
                             "URL, or at store.influxdb.url without one; token, org and bucket from store.influxdb")
    retire.set_defaults(func=cmd_retire)

    from dcpue.dashboards.cli import add_parser as add_dashboards_parser
    from dcpue.feed.cli import add_parser as add_feed_parser

    add_feed_parser(sub, common)
    add_dashboards_parser(sub, common)

    reg = sub.add_parser("registry", help="site registry tools")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    check = reg_sub.add_parser("check", help="validate a site registry")
    check.add_argument("file")
    check.set_defaults(func=cmd_registry_check)
    gen = reg_sub.add_parser("generate", help="write the simulated demo fleet as a registry")
    gen.add_argument("--sites", type=int, default=12)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--output", "-o")
    gen.set_defaults(func=cmd_registry_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dcpue`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"dcpue: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DcpueError as exc:
        print(f"dcpue: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
