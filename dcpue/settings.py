"""Settings: one frozen object built at the entry point from a YAML file and ``DCPUE_*`` variables.

Precedence, highest first: command-line options, environment (``DCPUE_ENGINE__TARGET_PUE=1.25``;
``__`` separates nesting levels), the config file (``--config`` or ``DCPUE_CONFIG``), defaults.
Library code receives the parts it needs; only :func:`load_settings` reads files or the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dcpue.alerting.config import DeliverySettings, Receiver, Route, check_routing
from dcpue.analytics.alerts.silences import MaintenanceWindow
from dcpue.analytics.retirement import Economics, RetirementCriteria
from dcpue.errors import ConfigError
from dcpue.feed.config import FeedSettings, TlsSettings
from dcpue.ingest.devices import AnyDevice
from dcpue.ingest.writeback import WritebackTarget
from dcpue.secrets import resolve_secret_files
from dcpue.yamlio import read_yaml
from dcpue.zones import TimeZoneName


class _Section(BaseModel):
    # allow_inf_nan: inf passes gt/ge bounds (engine.max_future_s: .inf crashed the worker at its first step)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class EngineSettings(_Section):
    """How the PUE engine forms windows and judges them."""

    target_pue: float = Field(1.2, gt=1.0)  # Guizhou 2023–2025 plan target for new large sites
    coverage_threshold: float = Field(0.9, gt=0, le=1)  # share of a window with valid data to report a figure
    max_gap_s: float = Field(300, gt=0)  # longer gaps between power samples are not integrated
    allowed_lateness_s: float = Field(120, ge=0)  # late readings within this still update their window
    close_timeout_s: float = Field(900, gt=0)  # a window waits at most this long for a silent point
    max_future_s: float = Field(300, ge=0)  # readings further ahead of the clock are dead-lettered
    spike_tolerance: float = Field(1.5, ge=1)  # counter deltas above rated_kw × dt × this are rejected
    hierarchy_tolerance: float = Field(0.05, ge=0)  # sub-meters vs facility meter
    timezone: TimeZoneName = "Asia/Shanghai"  # calendar of day and month windows (an IANA zone name)
    live_history_h: float = Field(6, gt=0)  # how much live (1 min) history the store keeps




class TopicSettings(_Section):
    readings: str = "dcpue.readings.v1"
    metrics: str = "dcpue.metrics.v1"
    dead_letters: str = "dcpue.deadletter.v1"
    alerts: str = "dcpue.alerts.v1"
    recommendations: str = "dcpue.recommendations.v1"
    state: str = "dcpue.state.v1"  # compacted, keyed by site: engine checkpoints for rebalance and restart
    group_state: str = "dcpue.groupstate.v1"  # compacted, one partition: the `dcpue aggregate` checkpoint
    health: str = "dcpue.health.v1"  # collector and device health (up, last error, spool), keyed by device
    silences: str = "dcpue.silences.v1"  # compacted, one partition: silences set through the API, keyed by id


class KafkaSettings(_Section):
    """Connection to Kafka (any broker speaking the Kafka protocol). Secrets come from env or file only."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "dcpue"
    group_id: str = "dcpue-analytics"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # read at start
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    partitions: int = Field(12, ge=1)  # readings topic; workers in one group scale up to this
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = Field(7 * 86_400_000, gt=0)
    linger_ms: int = Field(50, ge=0)
    compression_type: Literal["gzip", "lz4", "zstd", "none"] = "lz4"
    enable_idempotence: bool = True
    send_timeout_s: float = Field(30, gt=0)  # a collector batch is acknowledged only once Kafka has it
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    # how much a worker fetches per partition and per request: Kafka's 1 MiB per partition made a worker
    # catching up wait for a round trip every ~250 batches (docs/performance.md); the worker's buffer
    # holds at most this much per assigned partition
    max_partition_fetch_bytes: int = Field(8 << 20, ge=1 << 16)
    fetch_max_bytes: int = Field(64 << 20, ge=1 << 16)
    # an analytics worker's fetch of readings waits for this many bytes or this long, whichever comes first:
    # every step re-works the open windows of the sites it touches, so a worker fed live, a few batches at a
    # time, spent most of its CPU on steps (docs/performance.md); with a backlog the bytes are there at once.
    # Other consumers (aggregator, notify, the live page's feeder) fetch whatever is there. The wait is short:
    # a broker that answers with what it held when the fetch came (Tansu does) lets a record wait up to two of
    # them, and live latency has to stay well under 2 s (500 ms gave p99 2.5 s at 1,000 sites in real time).
    fetch_min_bytes: int = Field(1 << 20, ge=1)
    fetch_max_wait_ms: int = Field(200, ge=0, le=10_000)

    @model_validator(mode="after")
    def _secret_files(self) -> KafkaSettings:
        resolve_secret_files(self, "sasl_password")
        return self


class BusSettings(_Section):
    kind: Literal["embedded", "kafka"] = "embedded"
    max_pending_messages: int = Field(10_000, gt=0)  # embedded bus blocks producers beyond this
    # how often a worker checkpoints its state and commits its offsets (results are written every step)
    commit_interval_s: float = Field(5.0, ge=0)
    # reading batches a worker takes per step: each step's windowing has a fixed cost per site, so larger
    # steps carry more readings per second (docs/performance.md); more costs memory and step latency
    max_poll_records: int = Field(5_000, ge=1, le=1_000_000)
    topics: TopicSettings = TopicSettings()
    kafka: KafkaSettings = KafkaSettings()


class InfluxSettings(_Section):
    """InfluxDB v2 write API (InfluxDB 1.8+, 2.x, 3.x and compatible servers accept it)."""

    url: str = "http://127.0.0.1:8086"
    token: SecretStr = SecretStr("")
    token_file: Path | None = None  # read at start
    org: str = "dcpue"
    bucket: str = "dcpue"
    timeout_s: float = Field(10, gt=0)
    batch_size: int = Field(5_000, gt=0)  # lines per HTTP write request
    write_readings: bool = True  # also write raw readings (measurement `reading`) for Grafana drill-down
    # https:// URLs: ca_file verifies the server (default: the system trust store), cert_file/key_file for mutual TLS
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _secret_files(self) -> InfluxSettings:
        resolve_secret_files(self, "token")
        return self


class StoreSettings(_Section):
    kind: Literal["file", "influxdb"] = "file"
    path: Path = Path("dcpue-data/dcpue.sqlite")
    influxdb: InfluxSettings = InfluxSettings()


class HttpSettings(_Section):
    """The HTTP API and live page; who may use them (docs/api.md#authentication)."""

    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    # SHA-256 hex digests of the accepted API tokens, never the tokens: printf %s "$TOKEN" | sha256sum
    tokens: Annotated[tuple[str, ...], NoDecode] = ()  # NoDecode: a lone digest in the environment is no JSON
    tokens_file: Path | None = None  # one digest per line, re-read when it changes
    allow_anonymous: bool = False  # serve a non-loopback host without tokens (nothing else needs it)

    @field_validator("tokens", mode="before")
    @classmethod
    def _from_environment(cls, value: Any) -> Any:
        # DCPUE_HTTP__TOKENS='["<digest>", "<digest>"]' arrives as text; in a file one digest may stand alone
        if isinstance(value, str):
            import json

            try:
                parsed = json.loads(value)
            except ValueError:
                return [value]
            return parsed if isinstance(parsed, list) else [value]  # a digest of decimal digits parses as a number
        return value

    @field_validator("tokens")
    @classmethod
    def _digests(cls, tokens: tuple[str, ...]) -> tuple[str, ...]:
        from dcpue.web.auth import check_digest

        return tuple(check_digest(t, f"http.tokens[{i}]") for i, t in enumerate(tokens))

    @model_validator(mode="after")
    def _not_exposed_without_tokens(self) -> HttpSettings:
        from dcpue.web.auth import exposure_problem

        problem = exposure_problem(self.host, bool(self.tokens or self.tokens_file), self.allow_anonymous)
        if problem:
            raise ValueError(problem)
        return self


class SpoolSettings(_Section):
    """The collector's on-disk store-and-forward queue (see ``dcpue.ingest.spool``)."""

    path: Path = Path("dcpue-data/spool.sqlite")
    max_bytes: int = Field(1 << 30, ge=1 << 20)  # when full, the oldest records are dropped (counted, logged)
    fsync: bool = False  # true: every append survives power loss too (false: a process crash)


class CollectSettings(_Section):
    """``dcpue collect``: which devices to read, and how."""

    collector_id: str | None = None  # names this collector in health records; default: the host name
    max_concurrency: int = Field(16, ge=1, le=1024)  # device reads in flight at once
    metrics_port: int | None = Field(9108, ge=0, le=65535)  # Prometheus /metrics; null: off, 0: any free port
    metrics_host: str = "0.0.0.0"
    health_interval_s: float = Field(30, gt=0)  # how often the collector's own health record is sent
    drain_s: float = Field(10, ge=0)  # on shutdown, keep forwarding the spool this long (the rest stays on disk)
    spool: SpoolSettings = SpoolSettings()
    devices: tuple[AnyDevice, ...] = ()  # empty: `dcpue collect` runs the fleet simulator

    @field_validator("devices")
    @classmethod
    def _unique_names(cls, devices: tuple[AnyDevice, ...]) -> tuple[AnyDevice, ...]:
        seen: set[str] = set()
        for device in devices:
            if device.name in seen:
                raise ValueError(f"device name {device.name!r} is used twice (names key health and metrics)")
            seen.add(device.name)
        return devices


WaterClass = Literal["W17", "W27", "W32", "W40", "W45", "W+"]


class SiteAlertSettings(_Section):
    """Per-site overrides of the alert rules."""

    target_pue: float | None = Field(None, gt=1.0)  # default: engine.target_pue
    water_class: WaterClass | None = None  # ASHRAE liquid-cooling class of the site's facility water


class AlertSettings(_Section):
    """Alert rules (docs/alerting.md gives each default's source)."""

    enabled: bool = True
    pue_window: Literal["15m", "1h"] = "15m"  # PUE of these closed windows is compared with the target
    pue_fire_margin: float = Field(0.05, ge=0)  # fire above target + this (1.25 for the 1.2 target) …
    pue_for_s: float = Field(1800, ge=0)  # … sustained this long
    pue_clear_margin: float = Field(0.02, ge=0)  # clear below target + this (1.22) …
    pue_clear_for_s: float = Field(900, ge=0)  # … sustained this long
    annual_clear_margin: float = Field(0.005, ge=0)  # the 12-month PUE clears at target − this
    annual_min_days: float = Field(7, gt=0)  # before a full year, project the year from this much data on
    inlet_recommended_c: float = 27.0  # ASHRAE TC9.9 recommended envelope, upper dry-bulb limit
    inlet_allowable_c: float = 32.0  # ASHRAE class A1 allowable upper limit
    inlet_hysteresis_c: float = Field(0.5, ge=0)
    inlet_for_s: float = Field(300, ge=0)
    water_class: WaterClass = "W40"  # default class: warm-water liquid cooling (supply up to 40 °C)
    water_hysteresis_c: float = Field(1.0, ge=0)
    water_for_s: float = Field(120, ge=0)
    stuck_after_s: float = Field(3600, gt=0)  # a power meter repeating one value this long is stuck
    no_data_after_s: float = Field(600, gt=0)  # a site silent this long (fleet time) is "no data"
    device_down_for_s: float = Field(300, ge=0)  # a collector's device failing this long
    spool_clear_after_s: float = Field(1800, gt=0)  # SpoolDroppingData clears after this long without drops
    sites: dict[str, SiteAlertSettings] = Field(default_factory=dict)
    # delivery (docs/alerting-delivery.md): where notifications go, and the outbox
    receivers: tuple[Receiver, ...] = ()
    routes: tuple[Route, ...] = ()
    delivery: DeliverySettings = DeliverySettings()
    # maintenance windows (docs/alerting-lifecycle.md): alerts of these sites are not notified meanwhile
    maintenance: tuple[MaintenanceWindow, ...] = ()

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertSettings:
        check_routing(self.receivers, self.routes)
        if self.pue_clear_margin > self.pue_fire_margin:
            raise ValueError("pue_clear_margin must not exceed pue_fire_margin (clear below where it fires)")
        if self.inlet_allowable_c <= self.inlet_recommended_c:
            raise ValueError("inlet_allowable_c must be above inlet_recommended_c")
        return self


class SimulatorSettings(_Section):
    sites: int = Field(12, ge=1, le=5000)
    seed: int = 7
    speed: float = Field(1440.0, gt=0)  # simulated seconds per wall second (1440: a day in a minute)
    sample_interval_s: float = Field(60, gt=0)  # simulated seconds between meter samples
    start: str | None = None  # ISO date of the simulated start; default: 30 days before now
    faults: bool = True


class CoolingSettings(_Section):
    """AI cooling recommendations in the analytics worker (advisory: nothing is written to a BMS)."""

    enabled: bool = False  # opt in: a site's model needs weeks of history with setpoint changes in it
    model_dir: str = "dcpue-data/cooling-models"  # versioned models and each site's training table
    freq: str = "15min"  # interval of the training table and of recommendations
    table_every_h: float = Field(1.0, gt=0)  # turn buffered readings into table rows this often [event h]
    min_history_days: float = Field(14.0, gt=0)  # train once a site has this much table
    history_days: float = Field(90.0, gt=0)  # keep this much table per site
    retrain_every_h: float = Field(24.0, gt=0)  # retrain a site's model this often [event h]
    max_relative_error: float = Field(0.1, gt=0)  # refuse when a target's held-out error is above this
    # stay this far below the 27 °C recommended inlet limit; unset: sized from each model's held-out
    # error (its 99th-percentile miss above the calibrated bound, at least 0.25 K)
    inlet_margin_k: float | None = Field(None, ge=0)
    # facility-water class of liquid loops; a site's alerts.sites.<id>.water_class wins, alerts.water_class if unset
    water_class: WaterClass | None = None
    # per site: write recommendations back to its BMS over Modbus or BACnet (off unless a target says enabled: true)
    writeback: dict[str, WritebackTarget] = {}


class RetirementClusterOverride(_Section):
    """What a hub cluster can take, where its member sites in the registry do not say (e.g. planned capacity)."""

    capacity_kw: float | None = Field(None, ge=0)  # [kW] IT capacity
    load_kw: float | None = Field(None, ge=0)  # [kW] mean IT load now
    pue: float | None = Field(None, ge=1.0)  # [–] annual PUE


class RetirementSettings(_Section):
    """``dcpue retire`` and ``GET /api/v1/retirement`` (docs/retirement.md: each default and its source)."""

    criteria: RetirementCriteria = RetirementCriteria()  # thresholds and score weights
    economics: Economics = Economics()  # electricity price, revenue and cost per rack (all optional)
    months: int = Field(12, ge=1, le=120)  # rolling period of the figures read from the store [months]
    # monthly 上架率 history from the stored windows: by rack count (power where a window has none), by power
    # (IT kW ÷ racks installed × 2.5 kW), or none (the registry's current rack counts decide)
    occupancy_history: Literal["racks", "power", "none"] = "racks"
    clusters: dict[str, RetirementClusterOverride] = Field(default_factory=dict)  # per hub-cluster id

    @field_validator("months")
    @classmethod
    def _long_enough(cls, months: int, info: Any) -> int:
        criteria = info.data.get("criteria")
        if criteria is not None and months < criteria.occupancy_months:
            raise ValueError(f"{months} months of figures are fewer than criteria.occupancy_months "
                             f"({criteria.occupancy_months}): low 上架率 could never be sustained long enough")
        return months


class Settings(BaseSettings):
    """Everything a dcpue process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="DCPUE_", env_nested_delimiter="__", frozen=True, extra="forbid", validate_default=True
    )

    registry: Path | None = None  # site registry YAML; None: the simulator generates a demo fleet
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Python's young-generation garbage-collection threshold (container allocations between collections); 0:
    # Python's own (700), at which a worker spent 14-15 % of its CPU collecting (docs/performance.md, seventh series)
    gc_gen0_threshold: int = Field(50_000, ge=0, le=10_000_000)
    engine: EngineSettings = EngineSettings()
    bus: BusSettings = BusSettings()
    store: StoreSettings = StoreSettings()
    http: HttpSettings = HttpSettings()
    collect: CollectSettings = CollectSettings()
    alerts: AlertSettings = AlertSettings()
    cooling: CoolingSettings = CoolingSettings()
    retirement: RetirementSettings = RetirementSettings()
    feed: FeedSettings = FeedSettings()  # the provincial online monitoring platform (docs/feed.md)
    simulator: SimulatorSettings = SimulatorSettings()


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"{source}: field '{field}': {msg}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from the config file, ``DCPUE_*`` environment and ``overrides``.

    ``overrides`` are nested dicts of already-typed values (e.g. from CLI flags); ``None`` values
    are ignored. Raises :class:`ConfigError` naming the file, the field and the problem.
    """
    config_file = config_file or os.environ.get("DCPUE_CONFIG")
    file_data: dict[str, Any] = {}
    source = "environment/options"
    if config_file:
        path = Path(config_file)
        source = f"{path} (or DCPUE_* environment)"
        loaded = read_yaml(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config file must be a mapping of settings")
        odd = [key for key in (loaded or {}) if not isinstance(key, str)]
        if odd:  # pydantic-settings fails on these with a bare TypeError
            raise ConfigError(f"{path}: setting names must be text, got {odd[0]!r}")
        file_data = loaded or {}
    clean = _drop_none(overrides)
    try:
        # environment beats the file, explicit options beat both
        data = _deep_merge(_deep_merge(file_data, _env_layer()), clean)
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def _env_layer() -> dict[str, Any]:
    """``DCPUE_*`` variables as a nested dict (``__`` nests), so they can be merged over the file."""
    layer: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}  # which variable set a value, to name both sides of a clash
    for name, value in sorted(os.environ.items()):
        if not name.startswith("DCPUE_") or name == "DCPUE_CONFIG":
            continue
        path = name.removeprefix("DCPUE_").lower().split("__")
        node = layer
        for i, part in enumerate(path):
            here = node.get(part)
            last = i == len(path) - 1
            if here is not None and (last or not isinstance(here, dict)):  # a value and a section, or twice
                prefix = tuple(path[:i + 1])
                other = next(var for key, var in origin.items() if key[:i + 1] == prefix)
                raise ConfigError(f"environment: {other} and {name} both set '{'.'.join(prefix)}'")
            if last:
                node[part] = value
                origin[tuple(path)] = name
            else:
                node = node.setdefault(part, {})
    return layer
