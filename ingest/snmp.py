"""SNMP collector: UPSs, PDUs and sensors read over SNMP v2c or v3 with MIB field maps kept as data.

What a device exposes is described by *profiles* (``ingest/profiles/snmp/<name>.yaml``): for each MIB
object the numeric OID, the canonical field name carrying its unit (``output_power_w``), the unit, the
scale from the MIB's unit to that unit, and whether it is a Counter32/Counter64. Scalars are read with
GET, tables (per line, per outlet, per sensor) are walked column by column with GETBULK, and the rows
of ENTITY-SENSOR-MIB's self-describing sensor table are decoded with their type, scale and precision.
Shipped profiles: ``ups-mib`` (RFC 1628), ``xups-mib`` (Eaton PowerMIB), ``entity-sensor-mib``
(RFC 3433) and ``eaton-epdu-mib`` (Eaton ePDU); a profile may also be given as a path.

- A missing object (noSuchObject, noSuchInstance, endOfMibView) or a value the MIB marks as "not
  available" reads as NaN flagged :attr:`~dcpue.model.Quality.BAD`; the other fields are kept.
- Counters are unwrapped by :func:`unwrap_counter`: a decrease is a wrap only when the increase it
  implies is plausible, otherwise a reset. Per-OID state (kept per device for the life of the process,
  so it survives the engine re-creating a reader after a failed read) makes an energy counter field
  stay monotonic across 2^32 wraps; a reset is published as the decrease it is (flagged
  ``UNCERTAIN``), which the engine's counter handling books as a reset. After a collector restart
  the state is gone and a counter field restarts from the raw value: the first reading after the
  restart is lower than the last one before it whenever the counter had wrapped, and the engine books
  that one interval as a reset (or as a rollover if the registry point declares ``rollover``), never
  as negative energy.
- When several profiles give the same field, the first profile (in the configured order) with a good
  value wins, so ``[ups-mib, xups-mib]`` reads the standard MIB and lets the vendor MIB fill the gaps.

pysnmp (the ``collectors`` extra) is imported on first use. The reader keeps one private asyncio event
loop, so ``read`` may be called from any thread (never concurrently for one reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import math
import re
import string
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from dcpue.errors import CollectorError, ConfigError, missing_extra
from dcpue.ingest.device import DeviceConfig, FieldValue
from dcpue.model import Quality
from dcpue.secrets import resolve_secret_files
from dcpue.yamlio import read_yaml

__all__ = [
    "CounterKind",
    "CounterStep",
    "CounterUnwrapper",
    "EntitySensorTable",
    "Missing",
    "SensorColumn",
    "SensorType",
    "SnmpDeviceConfig",
    "SnmpField",
    "SnmpProfile",
    "SnmpReader",
    "SnmpTable",
    "decode_number",
    "entity_sensor_value",
    "list_profiles",
    "load_profile",
    "unwrap_counter",
]

PROFILE_PACKAGE = "dcpue.ingest"
PROFILE_DIR = ("profiles", "snmp")
WRAP_PLAUSIBLE_FRACTION = 0.1  # a wrap may imply an increase of at most 10 % of the counter's range
ENTITY_SENSOR_LIMIT = 1_000_000_000  # RFC 3433: -1e9 underflow, +1e9 overflow
MAX_WALK_REQUESTS = 10_000  # a table walk that needs more GETBULKs than this is a misbehaving agent
COLUMNS_PER_BULK = 8  # table columns walked together in one GETBULK

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
OID_PATTERN = r"^[0-2](\.(0|[1-9][0-9]*))+$"


# --- counters -------------------------------------------------------------------------------------


class CounterKind(StrEnum):
    """How a raw counter value relates to the previous one."""

    FIRST = "first"  # no previous value
    INCREASE = "increase"  # not lower than the previous value
    WRAP = "wrap"  # lower, and passing the counter's maximum implies a plausible increase
    RESET = "reset"  # lower, and a wrap would imply an implausible increase: the counter restarted


@dataclass(frozen=True, slots=True)
class CounterStep:
    """One step of a counter: its kind and the raw increase since the previous value (None if unknown)."""

    kind: CounterKind
    delta: int | None


def unwrap_counter(previous: int | None, current: int, bits: int = 32, max_delta: int | None = None) -> CounterStep:
    """Classify ``current`` against ``previous`` for an unsigned ``bits``-bit counter.

    A value below the previous one is a wrap only if ``current + 2**bits - previous`` (the increase a
    wrap implies) is at most ``max_delta`` [raw units], by default ``2**bits`` × 10 % (so the previous
    value was near the maximum); otherwise it is a reset (device restart, meter cleared), whose
    increase is unknown (``delta`` None). Raises ValueError for a value outside ``0 .. 2**bits - 1``.
    """
    span = 1 << bits
    for name, value in (("current", current), ("previous", previous)):
        if value is not None and not 0 <= value < span:
            raise ValueError(f"{name} value {value} is outside a {bits}-bit counter (0..{span - 1})")
    if previous is None:
        return CounterStep(CounterKind.FIRST, None)
    if current >= previous:
        return CounterStep(CounterKind.INCREASE, current - previous)
    implied = current + span - previous
    limit = int(span * WRAP_PLAUSIBLE_FRACTION) if max_delta is None else max_delta
    if implied <= limit:
        return CounterStep(CounterKind.WRAP, implied)
    return CounterStep(CounterKind.RESET, None)


class CounterUnwrapper:
    """Turns successive raw values of one counter into a total that stays monotonic across wraps.

    ``update(raw)`` returns ``(total, step)``: total is ``raw`` plus ``2**bits`` per wrap seen so far
    [raw units]. A reset starts over from the raw value (the total decreases: the reset stays visible).
    """

    def __init__(self, bits: int = 32, max_delta: int | None = None) -> None:
        self.bits = bits
        self.max_delta = max_delta
        self._previous: int | None = None
        self._offset = 0

    def update(self, raw: int) -> tuple[int, CounterStep]:
        """Account for the next raw value; raises ValueError (state unchanged) if it is not a valid counter value."""
        step = unwrap_counter(self._previous, raw, self.bits, self.max_delta)
        if step.kind is CounterKind.WRAP:
            self._offset += 1 << self.bits
        elif step.kind is CounterKind.RESET:
            self._offset = 0
        self._previous = raw
        return raw + self._offset, step


# --- value decoding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Missing:
    """An object the agent does not have (noSuchObject, noSuchInstance, endOfMibView) or an empty value."""

    reason: str


RawValue = int | bytes | Missing


def decode_number(raw: RawValue, scale: float = 1.0, valid_min: float | None = None,
                  valid_max: float | None = None) -> tuple[float, Quality]:
    """A raw SNMP value as a number in the field's unit: ``raw × scale``.

    Integers of every SNMP type come as ``int``; an OCTET STRING holding a decimal number (some
    agents send numbers as text) is parsed. A :class:`Missing` value, an empty string, or a raw value
    outside ``valid_min .. valid_max`` (the MIB's "not available" markers, e.g. -1), or one beyond
    float range before or after scaling, gives NaN with ``Quality.BAD``. Raises ValueError for text that
    is not a number.
    """
    if isinstance(raw, Missing):
        return math.nan, Quality.BAD
    if isinstance(raw, bytes):
        text = raw.decode("ascii", errors="replace").strip()
        if not text:
            return math.nan, Quality.BAD
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got the text {text[:40]!r}") from None
    else:
        try:
            number = float(raw)
        except OverflowError:  # an INTEGER beyond float range (BER integers have no length limit)
            return math.nan, Quality.BAD
    if not math.isfinite(number):
        return math.nan, Quality.BAD
    if (valid_min is not None and number < valid_min) or (valid_max is not None and number > valid_max):
        return math.nan, Quality.BAD
    divisor = 1.0 / scale
    exact = abs(scale) < 1.0 and abs(divisor - round(divisor)) < 1e-9  # 0.1, 0.001: divide, so 944 × 0.001 is 0.944
    value = number / round(divisor) if exact else number * scale
    return (value, Quality.GOOD) if math.isfinite(value) else (math.nan, Quality.BAD)


def entity_sensor_value(value: int, scale: int, precision: int) -> float:
    """An ENTITY-SENSOR-MIB reading in the base unit of its type (W, V, A, °C, ...), per RFC 3433.

    ``scale`` is the EntitySensorDataScale code (``units(9)`` = 10^0, each step a factor 10^3, so
    ``milli(8)`` = 10^-3 and ``kilo(10)`` = 10^3); ``precision`` 1..9 is the number of decimals of
    the fixed-point value (0 or negative: the value is an integer). Raises ValueError for a scale code
    outside 1..17 or a precision outside the MIB's -8..9.
    """
    if not 1 <= scale <= 17:
        raise ValueError(f"entPhySensorScale {scale} is not an EntitySensorDataScale code (1..17)")
    if not -8 <= precision <= 9:
        raise ValueError(f"entPhySensorPrecision {precision} is outside -8..9")
    decimals = precision if precision > 0 else 0
    return value * 10.0 ** (3 * (scale - 9) - decimals)


# --- profiles -------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_template(template: str, index_length: int) -> None:
    """A field template must name every index component, and only those, and yield a valid field name."""
    names = _template_fields(template)
    allowed = {"index"} | {f"idx[{k}]" for k in range(index_length)}
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"field {template!r}: unknown placeholder(s) {unknown} (use {{index}} or {{idx[k]}})")
    if "index" not in names and not all(f"idx[{k}]" in names for k in range(index_length)):
        raise ValueError(f"field {template!r} must contain {{index}} or every {{idx[k]}} for k < {index_length}, "
                         "or rows would share a field name")
    example = _format_field(template, tuple(range(1, index_length + 1)))
    if not FIELD_NAME.match(example):
        raise ValueError(f"field {template!r} gives {example!r}, not a lower_snake_case name")


def _format_field(template: str, index: tuple[int, ...]) -> str:
    parts = [str(i) for i in index]
    return template.format(index="_".join(parts), idx=parts)


def _template_regex(template: str) -> str:
    """A regex matching every name the template can produce."""
    pattern = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name == "index":
            pattern += r"\d+(?:_\d+)*"
        elif name is not None:
            pattern += r"\d+"
    return pattern


class SnmpField(_Model):
    """One MIB object read as one field (a scalar), or as one field per row (a table column).

    ``oid`` is numeric: a scalar's full instance (ending ``.0``) or a table column without its index.
    ``field`` is the canonical name carrying the unit; in a table, a template with ``{index}`` (the
    row index, components joined by ``_``) or ``{idx[k]}`` (its k-th component).
    """

    field: str = Field(min_length=1)
    object: str = Field(min_length=1)  # the MIB object's name, e.g. upsOutputPower
    oid: str = Field(pattern=OID_PATTERN)
    unit: str = ""  # dcpue.model.UNITS spelling for dcpue quantities (W, Wh, °C, %); V, A, Hz, s... otherwise
    scale: float = 1.0  # value [unit] = raw × scale
    counter_bits: Literal[32, 64] | None = None  # a counter wrapping at 2**bits: unwrapped by the reader
    valid_min: float | None = None  # raw values outside valid_min..valid_max read as NaN, BAD
    valid_max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_scale(self) -> Self:
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"{self.object}: scale must be a finite non-zero number")
        return self


class SnmpTable(_Model):
    """A conceptual table whose columns are walked with GETBULK; ``index`` names the INDEX objects."""

    table: str = Field(min_length=1)
    index: list[str] = Field(min_length=1)
    columns: list[SnmpField] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_columns(self) -> Self:
        for column in self.columns:
            _check_template(column.field, len(self.index))
        return self


class SensorColumn(_Model):
    """One column of a self-describing sensor table."""

    object: str = Field(min_length=1)
    oid: str = Field(pattern=OID_PATTERN)


class SensorType(_Model):
    """What a sensor type code becomes: the field name's suffix and the unit of the scaled value."""

    suffix: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: str = ""


class EntitySensorTable(_Model):
    """An ENTITY-SENSOR-MIB style table: each row says its type, SI scale and precision (RFC 3433).

    A row becomes the field ``<field with the index>_<suffix of its type>``.
    """

    table: str = Field(min_length=1)
    index: list[str] = Field(min_length=1)
    field: str = Field(min_length=1)
    type: SensorColumn
    scale: SensorColumn
    precision: SensorColumn
    value: SensorColumn
    oper_status: SensorColumn | None = None  # ok(1); any other status reads as NaN, BAD
    types: dict[int, SensorType] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_field(self) -> Self:
        _check_template(self.field + "_x", len(self.index))
        return self

    @property
    def columns(self) -> list[SensorColumn]:
        """The columns to walk, value first."""
        cols = [self.value, self.type, self.scale, self.precision]
        return cols + ([self.oper_status] if self.oper_status else [])


class SnmpProfile(_Model):
    """A MIB field map: which objects to read and what fields they become."""

    name: str = Field(min_length=1)
    mib: str = Field(min_length=1)
    reference: str = Field(min_length=1)  # the RFC or vendor document the OIDs come from
    source: str = Field(min_length=1)  # where the module text was checked
    description: str = ""
    scalars: list[SnmpField] = Field(default_factory=list)
    tables: list[SnmpTable] = Field(default_factory=list)
    entity_sensors: list[EntitySensorTable] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_profile(self) -> Self:
        if not (self.scalars or self.tables or self.entity_sensors):
            raise ValueError("a profile needs at least one scalar, table or entity_sensors table")
        names = [f.field for f in self.scalars] + [c.field for t in self.tables for c in t.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"field names used twice: {dupes}")
        for scalar in self.scalars:
            if not FIELD_NAME.match(scalar.field):
                raise ValueError(f"scalar field {scalar.field!r} is not a lower_snake_case name")
        oids = [f.oid for f in self.scalars] + [c.oid for t in self.tables for c in t.columns]
        oids += [c.oid for s in self.entity_sensors for c in s.columns]
        dupes = sorted({o for o in oids if oids.count(o) > 1})
        if dupes:
            raise ValueError(f"OIDs used twice: {dupes}")
        return self

    def field_patterns(self) -> list[tuple[re.Pattern[str], str]]:
        """``(regex of the field names, unit)`` for everything this profile can produce."""
        out = [(re.compile(re.escape(f.field)), f.unit) for f in self.scalars]
        out += [(re.compile(_template_regex(c.field)), c.unit) for t in self.tables for c in t.columns]
        for sensors in self.entity_sensors:
            for sensor_type in sensors.types.values():
                out.append((re.compile(_template_regex(f"{sensors.field}_{sensor_type.suffix}")), sensor_type.unit))
        return out

    def field_names(self) -> list[str]:
        """The names (or name templates) of every field, for messages and ``dcpue probe``."""
        names = [f.field for f in self.scalars] + [c.field for t in self.tables for c in t.columns]
        names += [f"{s.field}_<{'|'.join(t.suffix for t in s.types.values())}>" for s in self.entity_sensors]
        return names


def list_profiles() -> list[str]:
    """Names of the SNMP profiles shipped with dcpue."""
    folder = importlib.resources.files(PROFILE_PACKAGE).joinpath(*PROFILE_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.lru_cache(maxsize=64)
def _load_profile_cached(ref: str) -> SnmpProfile:
    if "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml")):
        data = read_yaml(Path(ref).expanduser(), "SNMP profile")
    else:
        resource = importlib.resources.files(PROFILE_PACKAGE).joinpath(*PROFILE_DIR, f"{ref}.yaml")
        if not resource.is_file():
            raise ConfigError(f"unknown SNMP profile {ref!r} (shipped: {', '.join(list_profiles())}; "
                              "or give the path of a profile YAML file)")
        data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    try:
        return SnmpProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"SNMP profile {ref!r} is invalid: {problems}") from None


def load_profile(ref: str) -> SnmpProfile:
    """A shipped profile by name (``ups-mib``) or a profile YAML file by path; ConfigError if unusable."""
    return _load_profile_cached(ref.strip())


# --- configuration --------------------------------------------------------------------------------

AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "AES", "AES192", "AES256", "AES192C", "AES256C"]
SecLevel = Literal["noAuthNoPriv", "authNoPriv", "authPriv"]

_AUTH_ALIASES = {"SHA1": "SHA", "SHA128": "SHA"}
_PRIV_ALIASES = {"AES128": "AES"}
_SEC_LEVELS = {level.lower(): level for level in ("noAuthNoPriv", "authNoPriv", "authPriv")}
_V3_FIELDS = ("sec_name", "auth_password", "priv_password", "context_name")


def _normalize_version(value: Any) -> str:
    text = str(value).strip().lower()
    return {"2": "2c", "v2c": "2c", "v3": "3"}.get(text, text)


class SnmpDeviceConfig(DeviceConfig):
    """An SNMP agent: address, credentials, the profiles that say what to read, and tuning.

    v3 settings are named as in Telegraf's SNMP input. ``auth_protocol``: MD5, SHA, SHA224, SHA256,
    SHA384, SHA512 (``SHA-256`` is accepted too). ``priv_protocol``: DES, AES (AES-128), AES192,
    AES256 (Blumenthal key extension, as net-snmp) or AES192C, AES256C (Reeder key extension, as
    Cisco). ``sec_level`` defaults to what the given passwords allow. ``timeout_s`` bounds every
    request including its ``retries``; ``max_repetitions`` is the GETBULK row count per request.
    """

    protocol: Literal["snmp"] = "snmp"
    host: str = Field(min_length=1)
    port: int = Field(161, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    community: SecretStr = SecretStr("public")
    community_file: Path | None = None  # read at start, as the *_file twins below
    sec_name: str | None = None
    sec_level: SecLevel | None = None
    auth_protocol: AuthProtocol = "SHA"
    auth_password: SecretStr | None = None
    auth_password_file: Path | None = None
    priv_protocol: PrivProtocol = "AES"
    priv_password: SecretStr | None = None
    priv_password_file: Path | None = None
    context_name: str = ""
    profiles: list[str] = Field(min_length=1)
    retries: int = Field(1, ge=0, le=10)
    max_repetitions: int = Field(10, ge=1, le=100)
    max_oids_per_request: int = Field(32, ge=1, le=128)

    example_url: ClassVar[str] = "snmp://public@10.0.0.20:161?profile=ups-mib,xups-mib"

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return _normalize_version(value)

    @field_validator("auth_protocol", mode="before")
    @classmethod
    def _auth_protocol(cls, value: Any) -> Any:
        text = str(value).strip().upper().replace("-", "")
        return _AUTH_ALIASES.get(text, text)

    @field_validator("priv_protocol", mode="before")
    @classmethod
    def _priv_protocol(cls, value: Any) -> Any:
        text = str(value).strip().upper().replace("-", "")
        return _PRIV_ALIASES.get(text, text)

    @field_validator("sec_level", mode="before")
    @classmethod
    def _sec_level(cls, value: Any) -> Any:
        return value if value is None else _SEC_LEVELS.get(str(value).strip().lower(), value)

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @model_validator(mode="after")
    def _check_snmp(self) -> Self:
        resolve_secret_files(self, "community", "auth_password", "priv_password")
        if self.version == "3":
            self._check_v3()
        else:
            given = [name for name in _V3_FIELDS if getattr(self, name)]
            if self.sec_level is not None:
                given.append("sec_level")
            if given:
                raise ValueError(f"{', '.join(given)} only apply to SNMP version '3' (this device has version "
                                 f"'{self.version}')")
        profiles = []
        for ref in self.profiles:
            try:
                profiles.append(load_profile(ref))
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        unknown = [f for f in self.points if not any(p.fullmatch(f) for pr in profiles for p, _ in pr.field_patterns())]
        if unknown:
            known = ", ".join(n for pr in profiles for n in pr.field_names())
            raise ValueError(f"points: field(s) {unknown} are not produced by profiles {self.profiles} "
                             f"(fields: {known})")
        return self

    def _check_v3(self) -> None:
        if not self.sec_name:
            raise ValueError("SNMP v3 needs sec_name (the USM user name)")
        level = self.effective_sec_level
        if level in ("authNoPriv", "authPriv"):
            if self.auth_password is None:
                raise ValueError(f"sec_level {level} needs auth_password")
            if len(self.auth_password.get_secret_value()) < 8:
                raise ValueError("auth_password must have at least 8 characters (RFC 3414)")
        if level == "authPriv":
            if self.priv_password is None:
                raise ValueError("sec_level authPriv needs priv_password")
            if len(self.priv_password.get_secret_value()) < 8:
                raise ValueError("priv_password must have at least 8 characters (RFC 3414)")

    @property
    def effective_sec_level(self) -> SecLevel:
        """``sec_level``, or what the given passwords allow when it is not set."""
        if self.sec_level is not None:
            return self.sec_level
        if self.priv_password is not None:
            return "authPriv"
        return "authNoPriv" if self.auth_password is not None else "noAuthNoPriv"

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def declared_unit(self, field: str) -> str | None:
        """The unit the first profile producing ``field`` gives it."""
        for profile in self.loaded_profiles():
            for pattern, unit in profile.field_patterns():
                if pattern.fullmatch(field):
                    return unit
        return None

    def loaded_profiles(self) -> list[SnmpProfile]:
        """The configured profiles, in order."""
        return [load_profile(ref) for ref in self.profiles]

    def make_reader(self) -> SnmpReader:
        """A reader for this agent (no I/O until ``open``)."""
        return SnmpReader(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A config from ``snmp://community@host:port?profile=ups-mib,xups-mib`` and ``options``.

        v3: ``snmp://user@host?version=3&profile=...`` with the passwords and protocols as query
        parameters or (better, they stay out of shell history) as ``options``. Any other config field
        may be given either way; ``options`` win. ``name`` defaults to the host, ``site`` to ``probe``.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "snmp":
            raise ValueError(f"not an SNMP URL: {url!r} (expected {cls.example_url})")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r} (expected {cls.example_url})")
        values: dict[str, Any] = {"host": parts.hostname}
        try:
            if parts.port is not None:
                values["port"] = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            values["profiles" if key in ("profile", "profiles") else key] = value
        values.update(options)
        user = unquote(parts.username) if parts.username else None
        if user:
            version = _normalize_version(values.get("version", "2c"))
            values.setdefault("sec_name" if version == "3" else "community", user)
        values.setdefault("name", re.sub(r"[^A-Za-z0-9_.:-]", "_", f"snmp-{parts.hostname}-{values.get('port', 161)}"))
        values.setdefault("site", "probe")
        return cls.model_validate(values)


# --- reader ---------------------------------------------------------------------------------------


Oid = tuple[int, ...]
VarBinds = list[tuple[Oid, Any]]  # (OID, pysnmp value) pairs


def _oid_tuple(oid: str) -> Oid:
    return tuple(int(part) for part in oid.split("."))


def _oid_text(oid: Sequence[int]) -> str:
    return ".".join(str(part) for part in oid)


class _PduError(Exception):
    """The agent answered with a non-zero error-status (tooBig, genErr, ...)."""

    def __init__(self, status: str, code: int, oid: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.code = code
        self.oid = oid


_TOO_BIG = 1


# Counter unwrap state per device (name, host, port, context) and OID. It lives as long as the process,
# not the reader: the polling engine makes a new reader after every failed read, and a transient timeout
# must not turn the next value after a wrap into a reset. A collector restart loses it (module docstring).
_COUNTER_STATE: dict[tuple[str, str, int, str], dict[str, CounterUnwrapper]] = {}
_COUNTER_LOCK = threading.Lock()


def _counter_state(config: SnmpDeviceConfig) -> dict[str, CounterUnwrapper]:
    with _COUNTER_LOCK:
        return _COUNTER_STATE.setdefault((config.name, config.host, config.port, config.context_name), {})


class SnmpReader:
    """Reads one SNMP agent with the profiles of its config; see :class:`~dcpue.ingest.device.DeviceReader`.

    ``read`` returns one :class:`FieldValue` per field of the profiles (profile order), plus NaN/BAD for
    mapped points the agent did not deliver. ``counter_resets`` counts the counter resets seen.
    """

    def __init__(self, config: SnmpDeviceConfig) -> None:
        self.config = config
        self.profiles = config.loaded_profiles()
        self.counter_resets = 0  # resets seen by this reader (a reset reading is also flagged UNCERTAIN)
        self._counters = _counter_state(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hl: Any = None
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None
        self._context: Any = None
        self._close_requested = False

    # -- lifecycle

    def open(self) -> None:
        """Create the SNMP engine and resolve the host; no packet is sent yet. Idempotent."""
        if self._loop is not None:
            return
        self._hl = _import_pysnmp()
        if self.config.version == "3" and self.config.effective_sec_level == "authPriv":
            _require_crypto()
        self._close_requested = False
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._setup())
        except CollectorError:
            self._shutdown()
            raise
        except Exception as exc:
            self._shutdown()
            raise self._error(f"cannot set up SNMP: {_describe(exc)}") from exc

    def read(self) -> list[FieldValue]:
        """Read every profile once; fields in profile order. Opens first if needed."""
        if self._loop is None:
            self.open()
        assert self._loop is not None
        try:
            values = self._loop.run_until_complete(self._read_all())
        except CollectorError:
            raise
        except Exception as exc:  # pysnmp and asyncio errors are translated here, at the boundary
            raise self._error(f"read failed: {_describe(exc)}") from exc
        finally:
            if self._close_requested:
                self._shutdown()
        return values

    def close(self) -> None:
        """Release the engine and the event loop; idempotent, never raises."""
        loop = self._loop
        if loop is None:
            return
        if loop.is_running():  # a read is in progress on another thread: it closes when it returns
            self._close_requested = True
            return
        self._shutdown()

    def _shutdown(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            if self._engine is not None:
                self._engine.close_dispatcher()
        with contextlib.suppress(Exception):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        with contextlib.suppress(Exception):
            loop.close()
        self._engine = self._target = self._auth = self._context = None

    async def _setup(self) -> None:
        hl, cfg = self._hl, self.config
        self._engine = hl.SnmpEngine()
        per_try = cfg.timeout_s / (cfg.retries + 1)
        try:
            self._target = await hl.UdpTransportTarget.create((cfg.host, cfg.port), timeout=per_try,
                                                              retries=cfg.retries)
        except Exception as exc:
            raise self._error(f"cannot resolve host {cfg.host!r}: {_describe(exc)}") from exc
        if cfg.version == "3":
            self._auth = _usm_user(hl, cfg)
        else:
            self._auth = hl.CommunityData(cfg.community.get_secret_value(), mpModel=1)
        self._context = hl.ContextData(contextName=cfg.context_name)

    # -- errors

    def _error(self, problem: str) -> CollectorError:
        return CollectorError(f"SNMP device {self.config.name!r} ({self.config.address}): {problem}")

    def _indication_error(self, indication: Any) -> CollectorError:
        """Translate a pysnmp error indication (RequestTimedOut, WrongDigest, ...) into a clear message."""
        cfg = self.config
        kind = indication if isinstance(indication, str) else type(indication).__name__
        if kind == "RequestTimedOut":
            if cfg.version == "3":
                why = "timeout; unreachable, or the agent drops requests for this user or context_name"
            else:
                why = "timeout; wrong community or unreachable"
            return self._error(f"no response after {cfg.timeout_s:g} s and {cfg.retries} retries ({why})")
        if kind == "UnknownUserName":
            return self._error(f"SNMPv3 authentication failure: unknown user {cfg.sec_name!r}")
        if kind == "WrongDigest":
            return self._error(f"SNMPv3 authentication failure: wrong digest (auth_password or auth_protocol "
                               f"{cfg.auth_protocol} does not match the agent's user {cfg.sec_name!r})")
        if kind == "DecryptionError":
            return self._error(f"SNMPv3 decryption failure (priv_password or priv_protocol {cfg.priv_protocol} "
                               f"does not match the agent's user {cfg.sec_name!r})")
        if kind == "UnsupportedSecLevel":
            return self._error(f"SNMPv3 security level {cfg.effective_sec_level} is not supported for user "
                               f"{cfg.sec_name!r}")
        if kind == "NotInTimeWindow":
            return self._error("SNMPv3 message not in time window (agent engine boots/time out of step)")
        if kind == "UnknownEngineID":
            return self._error("SNMPv3 engine ID discovery failed (unknown engine ID)")
        if kind == "EncryptionError":
            return self._error(f"SNMPv3 encryption failed ({indication}); is the 'cryptography' package installed?")
        return self._error(f"SNMP error: {indication}")

    # -- requests

    async def _request(self, oids: Sequence[Oid], repetitions: int | None) -> VarBinds:
        """One GET (``repetitions`` None) or GETBULK; ``(oid, value)`` pairs in wire order."""
        hl = self._hl
        objects = [hl.ObjectType(hl.ObjectIdentity(_oid_text(oid))) for oid in oids]
        if repetitions is None:
            command = hl.get_cmd(self._engine, self._auth, self._target, self._context, *objects, lookupMib=False)
        else:
            command = hl.bulk_cmd(self._engine, self._auth, self._target, self._context, 0, repetitions, *objects,
                                  lookupMib=False)
        cfg = self.config
        try:
            # pysnmp times out on its own; this only guards against a request that never completes
            indication, status, index, var_binds = await asyncio.wait_for(command, cfg.timeout_s + 2.0)
        except TimeoutError:
            raise self._indication_error("RequestTimedOut") from None
        except CollectorError:
            raise
        except Exception as exc:
            raise self._error(f"SNMP request failed: {_describe(exc)}") from exc
        if indication:
            raise self._indication_error(indication)
        if status and int(status) != 0:
            position = int(index) - 1 if index else -1
            oid = _oid_text(oids[position]) if 0 <= position < len(oids) else None
            raise _PduError(status.prettyPrint(), int(status), oid)
        return [(_name_oid(name), value) for name, value in var_binds]

    async def _get(self, oids: Sequence[Oid]) -> dict[Oid, Any]:
        """GET in batches of ``max_oids_per_request``; a batch the agent finds tooBig is split."""
        out: dict[Oid, Any] = {}
        size = self.config.max_oids_per_request
        batches = [list(oids[i:i + size]) for i in range(0, len(oids), size)]
        while batches:
            batch = batches.pop(0)
            try:
                pairs = await self._request(batch, None)
            except _PduError as exc:
                if exc.code == _TOO_BIG and len(batch) > 1:
                    half = len(batch) // 2
                    batches[:0] = [batch[:half], batch[half:]]
                    continue
                where = f" at {exc.oid}" if exc.oid else ""
                raise self._error(f"agent answered {exc.status} to a GET{where}") from None
            if len(pairs) != len(batch):
                raise self._error(f"malformed response: {len(pairs)} values for {len(batch)} requested OIDs")
            for requested, (_, value) in zip(batch, pairs, strict=True):
                out[requested] = value
        return out

    async def _walk(self, columns: Sequence[Oid]) -> dict[Oid, VarBinds]:
        """Walk table columns with GETBULK; per column, ``(row index, value)`` in OID order."""
        rows: dict[Oid, VarBinds] = {c: [] for c in columns}
        cursor = {c: c for c in columns}
        active = list(columns)
        repetitions = self.config.max_repetitions
        requests = 0
        while active:
            requests += 1
            if requests > MAX_WALK_REQUESTS:
                raise self._error(f"table walk of {_oid_text(active[0])} did not end after {MAX_WALK_REQUESTS} "
                                  "requests")
            try:
                pairs = await self._request([cursor[c] for c in active], repetitions)
            except _PduError as exc:
                if exc.code == _TOO_BIG and repetitions > 1:
                    repetitions = max(1, repetitions // 2)
                    continue
                raise self._error(f"agent answered {exc.status} to a GETBULK of {_oid_text(active[0])}") from None
            if not pairs:
                raise self._error(f"malformed response: empty GETBULK response for {_oid_text(active[0])}")
            finished: set[Oid] = set()
            progressed = False
            for position, (oid, value) in enumerate(pairs):
                column = active[position % len(active)]
                if column in finished:
                    continue
                if _is_end_of_mib(value) or oid[:len(column)] != column or len(oid) == len(column):
                    finished.add(column)
                    continue
                if oid <= cursor[column]:
                    raise self._error(f"malformed response: OID {_oid_text(oid)} does not increase after "
                                      f"{_oid_text(cursor[column])}")
                rows[column].append((oid[len(column):], value))
                cursor[column] = oid
                progressed = True
            active = [c for c in active if c not in finished]
            if active and not progressed and not finished:
                raise self._error("malformed response: a GETBULK made no progress")
        return rows

    # -- reading

    async def _read_all(self) -> list[FieldValue]:
        scalar_oids = [_oid_tuple(f.oid) for p in self.profiles for f in p.scalars]
        column_oids: list[Oid] = []
        for profile in self.profiles:
            column_oids += [_oid_tuple(c.oid) for t in profile.tables for c in t.columns]
            column_oids += [_oid_tuple(c.oid) for s in profile.entity_sensors for c in s.columns]
        scalars = await self._get(list(dict.fromkeys(scalar_oids))) if scalar_oids else {}
        walked: dict[Oid, VarBinds] = {}
        unique_columns = list(dict.fromkeys(column_oids))
        for start in range(0, len(unique_columns), COLUMNS_PER_BULK):
            walked.update(await self._walk(unique_columns[start:start + COLUMNS_PER_BULK]))

        per_profile: list[list[FieldValue]] = []
        for profile in self.profiles:
            out: list[FieldValue] = []
            for spec in profile.scalars:
                out.append(self._decode(spec, spec.field, spec.oid, scalars[_oid_tuple(spec.oid)]))
            for table in profile.tables:
                for spec in table.columns:
                    column = _oid_tuple(spec.oid)
                    for index, value in walked[column]:
                        name = _format_field(spec.field, index)
                        out.append(self._decode(spec, name, _oid_text(column + index), value))
            for sensors in profile.entity_sensors:
                out += self._decode_sensors(sensors, walked)
            per_profile.append(out)
        return self._merge(per_profile)

    def _decode(self, spec: SnmpField, name: str, oid: str, value: Any) -> FieldValue:
        raw = self._python_value(value, spec.object, oid)
        quality = Quality.GOOD
        if spec.counter_bits is not None and isinstance(raw, int):
            unwrapper = self._counters.setdefault(oid, CounterUnwrapper(spec.counter_bits))
            try:
                raw, step = unwrapper.update(raw)
            except ValueError:
                return FieldValue(name, math.nan, spec.unit, Quality.BAD)
            if step.kind is CounterKind.RESET:
                self.counter_resets += 1
                quality = Quality.UNCERTAIN
        try:
            number, flag = decode_number(raw, spec.scale, spec.valid_min, spec.valid_max)
        except ValueError as exc:
            raise self._error(f"unexpected value for {spec.object} ({oid}): {exc}") from None
        return FieldValue(name, number, spec.unit, quality if flag is Quality.GOOD else flag)

    def _decode_sensors(self, sensors: EntitySensorTable, walked: dict[Oid, VarBinds]) -> list[FieldValue]:
        def column(col: SensorColumn) -> dict[Oid, RawValue]:
            return {index: self._python_value(value, col.object, _oid_text(_oid_tuple(col.oid) + index))
                    for index, value in walked[_oid_tuple(col.oid)]}

        values, types, scales = column(sensors.value), column(sensors.type), column(sensors.scale)
        precisions = column(sensors.precision)
        statuses = column(sensors.oper_status) if sensors.oper_status else {}
        out: list[FieldValue] = []
        for index, raw in values.items():
            type_code = types.get(index)
            sensor_type = sensors.types.get(type_code) if isinstance(type_code, int) else None
            if sensor_type is None:  # a type code the profile does not know: still shown, never mappable by unit
                sensor_type = _UNKNOWN_SENSOR
            name = f"{_format_field(sensors.field, index)}_{sensor_type.suffix}"
            scale, precision, status = scales.get(index), precisions.get(index), statuses.get(index, 1)
            usable = (isinstance(raw, int) and isinstance(scale, int) and isinstance(precision, int)
                      and status == 1 and abs(raw) < ENTITY_SENSOR_LIMIT and 1 <= scale <= 17
                      and -8 <= precision <= 9)
            if not usable:
                if isinstance(raw, bytes) and raw.strip():
                    raise self._error(f"unexpected value for {sensors.value.object} "
                                      f"({sensors.value.oid}.{_oid_text(index)}): expected an integer, got text")
                out.append(FieldValue(name, math.nan, sensor_type.unit, Quality.BAD))
                continue
            out.append(FieldValue(name, entity_sensor_value(raw, scale, precision), sensor_type.unit, Quality.GOOD))
        return out

    def _python_value(self, value: Any, obj: str, oid: str) -> RawValue:
        try:
            return _raw_value(value)
        except TypeError as exc:
            raise self._error(f"unexpected type for {obj} ({oid}): {exc}") from None

    def _merge(self, per_profile: Iterable[list[FieldValue]]) -> list[FieldValue]:
        """One value per field: the first good one in profile order, else the first; then the missing points."""
        chosen: dict[str, FieldValue] = {}
        for decoded in per_profile:
            for item in decoded:
                current = chosen.get(item.field)
                if current is None or (current.quality & Quality.BAD and not item.quality & Quality.BAD):
                    chosen[item.field] = item
        for name in self.config.points:
            if name not in chosen:  # a mapped field the agent did not deliver (e.g. an empty table)
                chosen[name] = FieldValue(name, math.nan, self._unit_of(name), Quality.BAD)
        return list(chosen.values())

    def _unit_of(self, name: str) -> str:
        for profile in self.profiles:
            for pattern, unit in profile.field_patterns():
                if pattern.fullmatch(name):
                    return unit
        return ""


# --- pysnmp plumbing ------------------------------------------------------------------------------


def _import_pysnmp() -> Any:
    try:
        import pysnmp.hlapi.v3arch.asyncio as hl
    except ImportError as exc:
        raise missing_extra("pysnmp", "collectors") from exc
    return hl


def _require_crypto() -> None:
    try:
        import cryptography  # noqa: F401  (pysnmp needs it for DES/AES privacy)
    except ImportError as exc:
        raise missing_extra("cryptography", "collectors") from exc


def _usm_user(hl: Any, cfg: SnmpDeviceConfig) -> Any:
    auth_protocols = {
        "MD5": hl.USM_AUTH_HMAC96_MD5, "SHA": hl.USM_AUTH_HMAC96_SHA, "SHA224": hl.USM_AUTH_HMAC128_SHA224,
        "SHA256": hl.USM_AUTH_HMAC192_SHA256, "SHA384": hl.USM_AUTH_HMAC256_SHA384,
        "SHA512": hl.USM_AUTH_HMAC384_SHA512,
    }
    priv_protocols = {
        "DES": hl.USM_PRIV_CBC56_DES, "AES": hl.USM_PRIV_CFB128_AES,
        "AES192": hl.USM_PRIV_CFB192_AES_BLUMENTHAL, "AES256": hl.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "AES192C": hl.USM_PRIV_CFB192_AES, "AES256C": hl.USM_PRIV_CFB256_AES,
    }
    level = cfg.effective_sec_level
    kwargs: dict[str, Any] = {}
    if level in ("authNoPriv", "authPriv"):
        assert cfg.auth_password is not None
        kwargs.update(authKey=cfg.auth_password.get_secret_value(), authProtocol=auth_protocols[cfg.auth_protocol])
    if level == "authPriv":
        assert cfg.priv_password is not None
        kwargs.update(privKey=cfg.priv_password.get_secret_value(), privProtocol=priv_protocols[cfg.priv_protocol])
    return hl.UsmUserData(cfg.sec_name, **kwargs)


_UNKNOWN_SENSOR = SensorType(suffix="value", unit="")
_MISSING_TYPES = {"NoSuchObject": "noSuchObject", "NoSuchInstance": "noSuchInstance",
                  "EndOfMibView": "endOfMibView", "Null": "null"}


def _raw_value(value: Any) -> RawValue:
    """A pysnmp value as int, bytes or Missing; TypeError for types that cannot be a measurement."""
    from pyasn1.type import univ

    kind = type(value).__name__
    if kind in _MISSING_TYPES:
        return Missing(_MISSING_TYPES[kind])
    if isinstance(value, univ.Integer):  # INTEGER, Integer32, Unsigned32, Gauge32, Counter32/64, TimeTicks
        return int(value)
    if isinstance(value, univ.OctetString) and kind not in ("IpAddress", "Opaque"):
        return bytes(value)
    raise TypeError(f"got {kind} {value.prettyPrint() if hasattr(value, 'prettyPrint') else value!r}, "
                    "expected a number")


def _name_oid(name: Any) -> Oid:
    """The OID of a response's variable name (an ObjectName, or an ObjectIdentity around one)."""
    return tuple(int(x) for x in (name.get_oid() if hasattr(name, "get_oid") else name))


def _is_end_of_mib(value: Any) -> bool:
    return type(value).__name__ == "EndOfMibView"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
