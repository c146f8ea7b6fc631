"""Redfish collector: chassis power and temperatures from BMCs, and liquid-cooling equipment (CDUs, loops, leaks).

One reader per Redfish service. :meth:`RedfishReader.open` reads the service root, logs in and *discovers*
which resources exist; :meth:`RedfishReader.read` then GETs only the cached resource URLs (and, when the
device maps ``points``, only those that carry a mapped field), so a poll is a handful of GETs. The
resources are rediscovered after a 404 and every ``rediscover_polls`` polls.

What is read (``<C>``, ``<U>``, ``<S>``: the last URI segment, i.e. the ``Id``, of a chassis, cooling unit,
system; array entries by ``MemberId``; every name carries its unit):

- ``chassis.<C>.power_consumed_w``: legacy ``Power``, ``PowerControl[0].PowerConsumedWatts`` (further entries:
  ``chassis.<C>.power_control.<MemberId>.power_consumed_w``); ``chassis.<C>.power_supply.<MemberId>.input_power_w``
  and ``.output_power_w`` from ``PowerSupplies[]``
- ``chassis.<C>.environment.power_w``, ``.energy_kwh``, ``.temp_c`` ...: ``EnvironmentMetrics`` ``PowerWatts``,
  ``EnergykWh``, ``TemperatureCelsius`` ...
- ``chassis.<C>.sensor.<SensorId>``: ``Sensors/<SensorId>`` ``Reading``, unit from ``ReadingUnits``
- ``chassis.<C>.thermal.<MemberId>.temp_c`` and ``chassis.<C>.thermal.inlet_temp_c``: legacy ``Thermal``
- ``chassis.<C>.power_w``: the first source that exists of EnvironmentMetrics, the chassis total Power sensor,
  legacy PowerControl; ``chassis.<C>.energy_kwh``: EnvironmentMetrics, else the chassis EnergykWh sensor;
  ``chassis.<C>.inlet_temp_c``: the Intake temperature sensor, else legacy Thermal
- ``system.<S>.environment.*``: a ``ComputerSystem``'s ``EnvironmentMetrics``, when it links one
- ``cdu.<U>.health`` (0 OK, 1 Warning, 2 Critical), ``cdu.<U>.power_w``/``.energy_kwh`` (its EnvironmentMetrics),
  ``cdu.<U>.primary.<Id>.supply_temp_c`` ... (``CoolantConnector``: supply/return/delta temperature [°C],
  ``flow_lpm``, pressures [kPa], ``heat_removed_kw``; ``secondary.`` likewise), ``cdu.<U>.pump.<Id>.speed_pct``
- ``cdu.<U>.leak_detector.<Id>``: ``DetectorState`` 0 OK / 1 leak / NaN BAD unknown; ``cdu.<U>.leak_detected``: 1
  if any detector of the unit reports a leak
- ``cooling_loop.<Id>.coolant_level_pct``, ``.health`` ...: ``ThermalEquipment/CoolingLoops/<Id>``

Heat exchangers, immersion units and RPUs are read like CDUs under ``heat_exchanger.``, ``immersion_unit.`` and
``rpu.``. Which source wins for ``power_w``, ``energy_kwh`` and ``inlet_temp_c`` is decided at discovery (the first
candidate that answered with a number) and kept until the next discovery, so a flapping sensor never makes a
series jump between two meters; every candidate stays readable under its own name.

Connection problems (refused, timeout, TLS, wrong credentials) raise :class:`~dcpue.errors.CollectorError`; a
single resource that answers malformed JSON, an HTTP error, or lacks an expected property gives its fields as NaN
with :attr:`~dcpue.model.Quality.BAD` while the others are kept (the reason is in :attr:`RedfishReader.problems`);
when every resource of a poll fails, the read raises.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import unquote, urljoin, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from dcpue.errors import CollectorError, missing_extra
from dcpue.ingest.device import DeviceConfig, FieldValue
from dcpue.model import Quality
from dcpue.secrets import resolve_secret_files

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

ROOT = "/redfish/v1/"
DEFAULT_SESSIONS = "/redfish/v1/SessionService/Sessions"
_MAX_PAGES = 50  # Members@odata.nextLink pages followed per collection

# Redfish ReadingUnits (UCUM) -> dcpue unit spelling (dcpue.model.UNITS where it has one)
UCUM_UNITS: dict[str, str] = {
    "W": "W", "kW": "kW", "MW": "MW", "mW": "mW",
    "kW.h": "kWh", "W.h": "Wh", "MW.h": "MWh", "J": "J", "kJ": "kJ",
    "Cel": "°C", "%": "%",
    "L/min": "L/min", "L/s": "L/s", "m3/h": "m3/h", "m3/min": "m3/min", "[ft_i]3/min": "ft3/min", "ft3/min": "ft3/min",
    "kPa": "kPa", "Pa": "Pa", "mm[Hg]": "mmHg",
    "A": "A", "V": "V", "Hz": "Hz", "V.A": "VA", "{var}": "var", "var": "var", "A.h": "Ah",
    "{rev}/min": "rpm", "RPM": "rpm", "m": "m", "cm": "cm", "g/m3": "g/m3", "L": "L",
}
# Sensor ReadingType -> unit, for sensors that leave ReadingUnits out
READING_TYPE_UNITS: dict[str, str] = {
    "Temperature": "°C", "Humidity": "%", "Power": "W", "EnergykWh": "kWh", "EnergyWh": "Wh", "EnergyJoules": "J",
    "Voltage": "V", "Current": "A", "Frequency": "Hz", "Pressure": "Pa", "PressurekPa": "kPa", "PressurePa": "Pa",
    "LiquidFlowLPM": "L/min", "LiquidFlow": "L/s", "AirFlowCMM": "m3/min", "AirFlow": "ft3/min", "Percent": "%",
    "Rotational": "rpm", "Heat": "kW", "AbsoluteHumidity": "g/m3", "Altitude": "m", "ChargeAh": "Ah",
    "Barometric": "mmHg", "LiquidLevel": "cm", "ApparentVA": "VA", "ReactiveVAR": "var",
}
HEALTH_CODES: dict[str, float] = {"OK": 0.0, "Warning": 1.0, "Critical": 2.0}
LEAK_CODES: dict[str, float] = {"OK": 0.0, "Warning": 1.0, "Critical": 1.0}  # anything else: unknown -> NaN BAD
_OFFLINE_STATES = frozenset({"Absent", "Disabled", "UnavailableOffline", "StandbyOffline"})

# SensorExcerpt properties of EnvironmentMetrics / CoolantConnector / CoolingLoop: (property, suffix, unit)
ENVIRONMENT_PROPERTIES = (
    ("PowerWatts", "power_w", "W"),
    ("EnergykWh", "energy_kwh", "kWh"),
    ("TemperatureCelsius", "temp_c", "°C"),
    ("HumidityPercent", "humidity_pct", "%"),
    ("DewPointCelsius", "dew_point_c", "°C"),
    ("PowerLoadPercent", "power_load_pct", "%"),
)
CONNECTOR_PROPERTIES = (
    ("SupplyTemperatureCelsius", "supply_temp_c", "°C"),
    ("ReturnTemperatureCelsius", "return_temp_c", "°C"),
    ("DeltaTemperatureCelsius", "delta_temp_c", "°C"),
    ("FlowLitersPerMinute", "flow_lpm", "L/min"),
    ("SupplyPressurekPa", "supply_pressure_kpa", "kPa"),
    ("ReturnPressurekPa", "return_pressure_kpa", "kPa"),
    ("DeltaPressurekPa", "delta_pressure_kpa", "kPa"),
    ("HeatRemovedkW", "heat_removed_kw", "kW"),
)
COOLING_UNIT_COLLECTIONS = (("CDUs", "cdu"), ("HeatExchangers", "heat_exchanger"),
                            ("ImmersionUnits", "immersion_unit"), ("RPUs", "rpu"))

# derived chassis fields: role -> candidate source kinds, best first (see the module docstring)
PRECEDENCE: dict[str, tuple[str, ...]] = {
    "power_w": ("environment", "sensor", "power"),
    "energy_kwh": ("environment", "sensor"),
    "inlet_temp_c": ("sensor", "thermal"),
}


# --- configuration ------------------------------------------------------------------------------------------


class RedfishDeviceConfig(DeviceConfig):
    """A Redfish service (a BMC, a CDU controller): where it is, how to log in, what to read.

    ``url`` is the service's base URL, ``https://host[:port]`` (a trailing ``/redfish/v1`` is dropped).
    ``auth`` ``session`` (default) logs in once (``POST SessionService/Sessions``, ``X-Auth-Token``), logs in
    again once when the token is refused, and deletes the session on close; ``basic`` sends the credentials
    with every request. An empty ``username`` reads anonymously. TLS certificates are verified against the
    system trust store, or only against ``ca_file`` [PEM] when given; ``verify_tls: false`` turns checking off.
    ``chassis`` limits the chassis read to these ``Id`` s (default: all); cooling equipment is always read.
    ``timeout_s`` bounds every request [s].
    """

    protocol: Literal["redfish"] = "redfish"
    url: str
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: Path | None = None  # read at start
    auth: Literal["session", "basic"] = "session"
    verify_tls: bool = True
    ca_file: Path | None = None
    chassis: list[str] | None = None
    rediscover_polls: int = Field(360, ge=1, le=1_000_000)  # also rediscovered after any 404

    example_url: ClassVar[str] = "redfish://admin:secret@10.0.0.5:443"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be the service's base URL, https://host[:port] (got {value!r})")
        path = parts.path.rstrip("/")
        if path not in ("", "/redfish/v1", "/redfish"):
            raise ValueError(f"url must be the service's base URL https://host[:port], without a path (got {value!r})")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"url takes no query, fragment or credentials; use username/password (got {value!r})")
        return f"{parts.scheme}://{parts.netloc}"

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        resolve_secret_files(self, "password")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is set but verify_tls is false: drop one of them")
        if self.ca_file is not None and not self.url.startswith("https:"):
            raise ValueError("ca_file is set but url is plain http://")
        return self

    def make_reader(self) -> RedfishReader:
        """A reader for this service (no I/O until :meth:`RedfishReader.open`)."""
        return RedfishReader(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A config from ``redfish://user:pass@host[:port]`` (HTTPS) or ``redfish+http://host[:port]``.

        ``redfish+https://`` equals ``redfish://``. ``options`` set any other field (``auth``, ``verify_tls``,
        ``ca_file`` ...) and win over the URL; ``name`` defaults to ``redfish-<host>``, ``site`` to ``probe``.
        """
        parts = urlsplit(url)
        schemes = {"redfish": "https", "redfish+https": "https", "redfish+http": "http"}
        scheme = schemes.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise ValueError(f"a Redfish URL looks like {cls.example_url} or redfish+http://host:port "
                             f"(accepted schemes: {', '.join(schemes)}; got {url!r})")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        base = f"{scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        data: dict[str, Any] = {
            "name": "redfish-" + re.sub(r"[^A-Za-z0-9_.:-]", "-", parts.hostname),
            "site": "probe",
            "url": base + parts.path,
            "username": unquote(parts.username or ""),
            "password": unquote(parts.password or ""),
        }
        data.update(options)
        return cls(**data)


# --- pure parsing: one Redfish resource -> field values ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one resource gave: its values, and which of them may stand for a chassis-level quantity."""

    values: list[FieldValue]
    roles: dict[str, str] = field(default_factory=dict)  # role (power_w, energy_kwh, inlet_temp_c) -> field


def to_number(raw: object) -> float:
    """A JSON number as float; NaN for null, strings, booleans, ±Infinity, numbers beyond float range
    (Python's JSON parser reads ``Infinity`` and ``1e400`` as inf, a 400-digit integer as an int) and
    anything else."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return math.nan
    try:
        number = float(raw)
    except OverflowError:
        return math.nan
    return number if math.isfinite(number) else math.nan


def reading_unit(units: object, reading_type: object = None) -> str:
    """The dcpue unit of a Redfish sensor: its UCUM ``ReadingUnits``, else implied by its ``ReadingType``."""
    if isinstance(units, str) and units:
        return UCUM_UNITS.get(units, units)
    return READING_TYPE_UNITS.get(reading_type, "") if isinstance(reading_type, str) else ""


def detector_state_code(state: object) -> float:
    """``LeakDetector.DetectorState`` as 0 (OK) / 1 (leak: Warning or Critical); NaN when unknown."""
    return LEAK_CODES.get(state, math.nan) if isinstance(state, str) else math.nan


def health_code(health: object) -> float:
    """``Status.Health`` (or a Health-typed property) as 0 OK / 1 Warning / 2 Critical; NaN when absent."""
    return HEALTH_CODES.get(health, math.nan) if isinstance(health, str) else math.nan


def _value(name: str, raw: object, unit: str) -> FieldValue:
    number = to_number(raw)
    return FieldValue(name, number, unit, Quality.BAD if math.isnan(number) else Quality.GOOD)


def _excerpt(doc: dict[str, Any], prop: str) -> object:
    # a SensorExcerpt ({"Reading": ...}); a bare number is accepted too (some services flatten it)
    obj = doc.get(prop)
    return obj.get("Reading") if isinstance(obj, dict) else obj


def _health_value(name: str, doc: dict[str, Any]) -> FieldValue:
    status = doc.get("Status")
    code = health_code(status.get("Health") if isinstance(status, dict) else None)
    return FieldValue(name, code, "", Quality.BAD if math.isnan(code) else Quality.GOOD)


def _excerpts(doc: dict[str, Any], prefix: str, table: tuple[tuple[str, str, str], ...]) -> list[FieldValue]:
    return [_value(f"{prefix}.{suffix}", _excerpt(doc, prop), unit) for prop, suffix, unit in table if prop in doc]


def parse_environment(doc: dict[str, Any], prefix: str) -> Parsed:
    """``EnvironmentMetrics``: ``<prefix>.power_w`` [W], ``.energy_kwh`` [kWh], ``.temp_c`` [°C] ... when present."""
    values = _excerpts(doc, prefix, ENVIRONMENT_PROPERTIES)
    present = {v.field for v in values}
    roles = {role: f"{prefix}.{role}" for role in ("power_w", "energy_kwh") if f"{prefix}.{role}" in present}
    return Parsed(values, roles)


def parse_power(doc: dict[str, Any], prefix: str) -> Parsed:
    """Legacy ``Power``: ``PowerControl[].PowerConsumedWatts`` and ``PowerSupplies[]`` input/output [W]."""
    values: list[FieldValue] = []
    roles: dict[str, str] = {}
    controls = doc.get("PowerControl")
    for i, control in enumerate(controls if isinstance(controls, list) else []):
        if not isinstance(control, dict):
            continue
        member = _key(control.get("MemberId"), str(i))
        name = f"{prefix}.power_consumed_w" if i == 0 else f"{prefix}.power_control.{member}.power_consumed_w"
        values.append(_value(name, control.get("PowerConsumedWatts"), "W"))
        if i == 0:
            roles["power_w"] = name
    supplies = doc.get("PowerSupplies")
    for i, supply in enumerate(supplies if isinstance(supplies, list) else []):
        if not isinstance(supply, dict):
            continue
        base = f"{prefix}.power_supply.{_key(supply.get('MemberId'), str(i))}"
        if "PowerInputWatts" in supply:
            values.append(_value(f"{base}.input_power_w", supply.get("PowerInputWatts"), "W"))
        output = next((p for p in ("PowerOutputWatts", "LastPowerOutputWatts") if p in supply), None)
        if output is not None:
            values.append(_value(f"{base}.output_power_w", supply.get(output), "W"))
    return Parsed(values, roles)


_INLET_NAME = re.compile(r"inlet|intake", re.IGNORECASE)


def parse_thermal(doc: dict[str, Any], prefix: str) -> Parsed:
    """Legacy ``Thermal``: ``<prefix>.thermal.<MemberId>.temp_c`` and ``<prefix>.thermal.inlet_temp_c`` [°C].

    The inlet is the first ``Temperatures[]`` entry with ``PhysicalContext`` Intake, else the first whose
    ``Name`` says inlet or intake.
    """
    values: list[FieldValue] = []
    listed = doc.get("Temperatures")
    temps = [t for t in listed if isinstance(t, dict)] if isinstance(listed, list) else []
    for i, temp in enumerate(temps):
        values.append(_value(f"{prefix}.thermal.{_key(temp.get('MemberId'), str(i))}.temp_c",
                             temp.get("ReadingCelsius"), "°C"))
    inlet = next((t for t in temps if t.get("PhysicalContext") == "Intake"), None) or next(
        (t for t in temps if isinstance(t.get("Name"), str) and _INLET_NAME.search(t["Name"])), None)
    roles: dict[str, str] = {}
    if inlet is not None:
        name = f"{prefix}.thermal.inlet_temp_c"
        values.append(_value(name, inlet.get("ReadingCelsius"), "°C"))
        roles["inlet_temp_c"] = name
    return Parsed(values, roles)


def sensor_role(doc: dict[str, Any]) -> str | None:
    """Which chassis quantity a ``Sensor`` may stand for: ``power_w``, ``energy_kwh``, ``inlet_temp_c`` or None."""
    kind, context = doc.get("ReadingType"), doc.get("PhysicalContext")
    unit = reading_unit(doc.get("ReadingUnits"), kind)
    if context == "Chassis" and doc.get("ElectricalContext") in (None, "Total"):
        if kind == "Power" or (kind is None and unit == "W"):
            return "power_w"
        if kind == "EnergykWh" or (kind is None and unit == "kWh"):
            return "energy_kwh"
    if context == "Intake" and (kind == "Temperature" or unit == "°C"):
        return "inlet_temp_c"
    return None


def parse_sensor(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``Sensor``: its ``Reading`` as field ``prefix`` (``chassis.<C>.sensor.<Id>``), unit from ``ReadingUnits``."""
    value = _value(prefix, doc.get("Reading"), reading_unit(doc.get("ReadingUnits"), doc.get("ReadingType")))
    role = sensor_role(doc)
    return Parsed([value], {role: prefix} if role else {})


def parse_cooling_unit(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``CoolingUnit`` (CDU, heat exchanger ...): ``<prefix>.health`` (0 OK, 1 Warning, 2 Critical)."""
    return Parsed([_health_value(f"{prefix}.health", doc)])


def parse_connector(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``CoolantConnector``: supply/return/delta temperature [°C], flow [L/min], pressures [kPa], heat [kW]."""
    return Parsed(_excerpts(doc, prefix, CONNECTOR_PROPERTIES))


def parse_pump(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``Pump``: ``<prefix>.speed_pct`` [%] and ``<prefix>.health``."""
    values = [_health_value(f"{prefix}.health", doc)]
    if "PumpSpeedPercent" in doc:
        values.append(_value(f"{prefix}.speed_pct", _excerpt(doc, "PumpSpeedPercent"), "%"))
    return Parsed(values)


def parse_cooling_loop(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``CoolingLoop``: health, ``coolant_level_pct`` [%], ``coolant_level_status``/``coolant_quality`` (codes)."""
    values = [_health_value(f"{prefix}.health", doc)]
    if "CoolantLevelPercent" in doc:
        values.append(_value(f"{prefix}.coolant_level_pct", _excerpt(doc, "CoolantLevelPercent"), "%"))
    for prop, suffix in (("CoolantLevelStatus", "coolant_level_status"), ("CoolantQuality", "coolant_quality")):
        if prop in doc:
            code = health_code(doc.get(prop))
            values.append(FieldValue(f"{prefix}.{suffix}", code, "", Quality.BAD if math.isnan(code) else Quality.GOOD))
    return Parsed(values)


def parse_leak_detector(doc: dict[str, Any], prefix: str) -> Parsed:
    """A ``LeakDetector``: field ``prefix`` = 0 OK / 1 leak; NaN BAD when the state is unknown or it is offline."""
    status = doc.get("Status")
    state = status.get("State") if isinstance(status, dict) else None
    offline = isinstance(state, str) and state in _OFFLINE_STATES  # any JSON may come: a list does not hash
    code = math.nan if offline else detector_state_code(doc.get("DetectorState"))
    return Parsed([FieldValue(prefix, code, "", Quality.BAD if math.isnan(code) else Quality.GOOD)])


PARSERS: dict[str, Callable[[dict[str, Any], str], Parsed]] = {
    "environment": parse_environment,
    "power": parse_power,
    "thermal": parse_thermal,
    "sensor": parse_sensor,
    "cooling_unit": parse_cooling_unit,
    "connector": parse_connector,
    "pump": parse_pump,
    "cooling_loop": parse_cooling_loop,
    "leak_detector": parse_leak_detector,
}


def _key(raw: object, fallback: str) -> str:
    # a Redfish Id as one dot-free segment of a field name
    text = str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw) else fallback
    return re.sub(r"[^A-Za-z0-9_:-]", "_", text)


def _member_key(url: str) -> str:
    # a collection member's identity: the last segment of its URI, which Redfish makes equal to its Id; the URI
    # is used because it is known before the GET and stays the same with or without $expand (the DMTF mockup
    # has a sensor at .../Sensors/CPU1Temp whose Id says CPUTemp1)
    return _key(unquote(url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]), "_")


def _link(doc: dict[str, Any], name: str) -> str | None:
    obj = doc.get(name)
    target = obj.get("@odata.id") if isinstance(obj, dict) else None
    return target if isinstance(target, str) and target else None


def _roles(kind: str, parsed: Parsed | None) -> list[tuple[str, str, str, FieldValue]]:
    # (role, kind, field, value) for each chassis quantity a parsed resource may stand for
    if parsed is None:
        return []
    by_name = {v.field: v for v in parsed.values}
    return [(role, kind, name, by_name[name]) for role, name in parsed.roles.items()]


def _bad(name: str, unit: str = "") -> FieldValue:
    return FieldValue(name, math.nan, unit, Quality.BAD)


# --- the discovered plan -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Resource:
    url: str
    kind: str  # key of PARSERS
    prefix: str
    fields: dict[str, str]  # field -> unit, as discovered


@dataclass(slots=True)
class _Derived:
    field: str
    sources: tuple[str, ...]
    how: Literal["copy", "any_leak"]
    unit: str = ""


@dataclass(slots=True)
class _Plan:
    resources: list[_Resource] = field(default_factory=list)
    derived: list[_Derived] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_points: dict[str, str] = field(default_factory=dict)  # mapped field -> point, not on the device
    active: list[_Resource] = field(default_factory=list)
    active_derived: list[_Derived] = field(default_factory=list)
    polls: int = 0
    stale: bool = False


class _ResourceError(CollectorError):
    """One resource could not be read (HTTP error, malformed JSON); the connection itself works."""

    def __init__(self, device: str, url: str, problem: str, status: int | None = None) -> None:
        super().__init__(f"redfish device {device!r}: {url}: {problem}")
        self.detail = f"{url}: {problem}"
        self.status = status


# --- the reader ------------------------------------------------------------------------------------------------


class RedfishReader:
    """Reads one Redfish service; see :class:`RedfishDeviceConfig`. Use ``open``/``read``/``close`` or ``with``.

    :attr:`problems` lists what the last read (or discovery) could not read, for ``dcpue probe`` and logs;
    :attr:`requests` counts the HTTP requests made [count].
    """

    def __init__(self, config: RedfishDeviceConfig) -> None:
        self.config = config
        self.problems: tuple[str, ...] = ()
        self.requests = 0
        self._client: httpx.Client | None = None
        self._httpx: Any = None
        self._token: str | None = None
        self._session_url: str | None = None
        self._sessions_url = DEFAULT_SESSIONS
        self._plan: _Plan | None = None
        self._expand = False  # the service offers $expand of collection members

    # lifecycle

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect, read the service root, log in (session auth) and discover the resources to read."""
        self._connect()
        if self._plan is None:
            self._plan, _ = self._discover()

    def read(self) -> list[FieldValue]:
        """Read every discovered resource once; opens (and discovers) first when needed.

        Returns the device's fields in its own units; raises :class:`CollectorError` when the service cannot
        be reached or every resource failed.
        """
        self._connect()
        plan = self._plan
        if plan is None or plan.stale or plan.polls >= self.config.rediscover_polls:
            if plan is not None:
                log.debug("device %s: rediscovering (stale=%s polls=%d)", self.config.name, plan.stale, plan.polls)
            plan, values = self._discover()
            self._plan = plan
            problems: list[str] = []
        else:
            values, problems = self._poll(plan)
        plan.polls += 1
        values.extend(self._derive(plan, values))
        values.extend(_bad(name) for name in plan.missing_points)
        self.problems = tuple(plan.problems + problems)
        return values

    def close(self) -> None:
        """Delete the session (if any) and close the connection; idempotent, never raises."""
        client, self._client = self._client, None
        token, session_url = self._token, self._session_url
        self._token = self._session_url = None
        self._plan = None
        if client is None:
            return
        try:
            if token and session_url:
                client.delete(session_url, headers={"X-Auth-Token": token})
                self.requests += 1
        except Exception:  # noqa: BLE001 - the session times out on the BMC anyway
            log.debug("device %s: session delete failed", self.config.name, exc_info=True)
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                log.debug("device %s: client close failed", self.config.name, exc_info=True)

    # connection

    def _error(self, url: str, problem: str) -> CollectorError:
        return CollectorError(f"redfish device {self.config.name!r}: {url}: {problem}")

    def _connect(self) -> None:
        if self._client is not None:
            return
        try:
            import httpx
        except ImportError:
            raise missing_extra("httpx", "collectors") from None
        self._httpx = httpx
        cfg = self.config
        verify: bool | ssl.SSLContext = cfg.verify_tls
        if cfg.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(cfg.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise self._error(cfg.url, f"ca_file {str(cfg.ca_file)!r} cannot be used: {exc}") from exc
        auth = None
        if cfg.auth == "basic" and cfg.username:
            auth = httpx.BasicAuth(cfg.username, cfg.password.get_secret_value())
        # trust_env=False: no proxy or CA settings leak in from the environment; the config says it all
        self._client = httpx.Client(verify=verify, auth=auth, timeout=httpx.Timeout(cfg.timeout_s),
                                    trust_env=False, follow_redirects=True,
                                    headers={"Accept": "application/json", "OData-Version": "4.0"})
        try:
            root = self._get_json(ROOT, auth=False)
            self._sessions_url = self._find_sessions_url(root)
            self._expand = self._offers_expand(root)
            if cfg.auth == "session" and cfg.username:
                self._login()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _offers_expand(root: dict[str, Any]) -> bool:
        features = root.get("ProtocolFeaturesSupported")
        expand = features.get("ExpandQuery") if isinstance(features, dict) else None
        return isinstance(expand, dict) and expand.get("NoLinks") is True and expand.get("Levels") is True

    @staticmethod
    def _find_sessions_url(root: dict[str, Any]) -> str:
        links = root.get("Links")
        return (_link(links, "Sessions") if isinstance(links, dict) else None) or DEFAULT_SESSIONS

    def _url(self, path: str) -> str:
        return urljoin(self.config.url + "/", path)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        httpx = self._httpx
        url = self._url(path)
        assert self._client is not None
        self.requests += 1
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise self._error(url, f"timed out after {self.config.timeout_s:g} s (timeout_s)") from exc
        except httpx.HTTPError as exc:
            raise self._error(url, self._describe(exc)) from exc

    def _describe(self, exc: BaseException) -> str:
        chain: list[BaseException] = []
        cur: BaseException | None = exc
        while cur is not None and len(chain) < 10:
            chain.append(cur)
            cur = cur.__cause__ or cur.__context__
        text = " ".join(str(e) for e in chain)
        verify = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
        if verify is not None or "CERTIFICATE_VERIFY_FAILED" in text:
            reason = getattr(verify, "verify_message", None) or "certificate verify failed"
            how = (f"it does not chain to ca_file {str(self.config.ca_file)!r}" if self.config.ca_file else
                   "set ca_file: /path/to/bmc-ca.pem (the BMC's certificate or its CA, PEM) in the device config")
            return (f"TLS certificate verification failed ({reason}): {how}; "
                    "only on a trusted management network, verify_tls: false turns checking off")
        if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
            return "connection refused (nothing listens on that port: is the URL's host/port the Redfish service?)"
        unresolved = next((e for e in chain if isinstance(e, socket.gaierror)), None)
        if unresolved is not None:
            return f"cannot resolve the host name ({unresolved}); check the url"
        ssl_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        if ssl_error is not None:
            return f"TLS handshake failed ({ssl_error}); does the port speak HTTPS?"
        if isinstance(exc, self._httpx.RemoteProtocolError):
            return f"the server broke the HTTP exchange ({exc}); an https:// service addressed as http://?"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _login(self) -> None:
        cfg = self.config
        body = {"UserName": cfg.username, "Password": cfg.password.get_secret_value()}
        resp = self._send("POST", self._sessions_url, json=body, auth=None)
        url = self._url(self._sessions_url)
        if resp.status_code in (401, 403):
            raise self._error(url, f"HTTP {resp.status_code}: wrong credentials (session login as {cfg.username!r} "
                                   "refused); check username/password")
        if not resp.is_success:
            raise self._error(url, f"session login failed: HTTP {resp.status_code} {resp.reason_phrase}; "
                                   "auth: basic may work if the service has no session support")
        token = resp.headers.get("X-Auth-Token")
        if not token:
            raise self._error(url, "session login answered without an X-Auth-Token header; try auth: basic")
        location = resp.headers.get("Location")
        if not location:
            try:
                location = _link({"s": resp.json()}, "s")
            except ValueError:
                location = None
        self._token = token
        self._session_url = self._url(location) if location else None

    def _get_json(self, path: str, *, auth: bool = True) -> dict[str, Any]:
        headers = {"X-Auth-Token": self._token} if auth and self._token else {}
        resp = self._send("GET", path, headers=headers)
        if resp.status_code == 401 and auth and self._token is not None:
            self._login()  # the session expired (BMC reboot, idle timeout): log in once more
            resp = self._send("GET", path, headers={"X-Auth-Token": self._token})
        url = self._url(path)
        if resp.status_code in (401, 403):
            who = f"as {self.config.username!r}" if self.config.username else "anonymously"
            raise self._error(url, f"HTTP {resp.status_code}: wrong credentials (access {who} refused; "
                                   f"check username/password{' and auth' if self.config.username else ''})")
        name = self.config.name
        if not resp.is_success:
            raise _ResourceError(name, url, f"HTTP {resp.status_code} {resp.reason_phrase}", resp.status_code)
        try:
            doc = resp.json()
        except ValueError as exc:
            raise _ResourceError(name, url, f"malformed JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise _ResourceError(name, url, f"malformed JSON (a {type(doc).__name__}, not an object)")
        return doc

    # discovery

    def _members(self, path: str) -> Iterator[tuple[str, dict[str, Any] | None]]:
        # (member URL, member document if the collection came expanded)
        page: str | None = path
        for n in range(_MAX_PAGES):
            if page is None:
                return
            doc = None
            if n == 0 and self._expand:
                try:  # one GET for the whole collection instead of one per member
                    doc = self._get_json(f"{page}?$expand=.($levels=1)")
                except _ResourceError:
                    self._expand = False  # advertised, but refused: ask plainly from now on
            if doc is None:
                doc = self._get_json(page)
            for member in doc.get("Members") or []:
                if isinstance(member, dict) and isinstance(member.get("@odata.id"), str):
                    yield member["@odata.id"], (member if len(member) > 1 else None)
            nxt = doc.get("Members@odata.nextLink")
            page = nxt if isinstance(nxt, str) and nxt else None

    def _discover(self) -> tuple[_Plan, list[FieldValue]]:
        plan = _Plan()
        values: list[FieldValue] = []
        root = self._get_json(ROOT)  # a broken root is fatal: there is nothing to discover
        self._discover_chassis(root, plan, values)
        self._discover_systems(root, plan, values)
        self._discover_thermal_equipment(root, plan, values)
        self._plan_active(plan)
        for problem in plan.problems:
            log.debug("device %s: %s", self.config.name, problem)
        return plan, values

    def _add(self, plan: _Plan, values: list[FieldValue], url: str, kind: str, prefix: str,
             doc: dict[str, Any] | None = None) -> Parsed | None:
        if doc is None:
            try:
                doc = self._get_json(url)
            except _ResourceError as exc:
                plan.problems.append(str(exc))
                return None
        parsed = PARSERS[kind](doc, prefix)
        plan.resources.append(_Resource(url, kind, prefix, {v.field: v.unit for v in parsed.values}))
        values.extend(parsed.values)
        return parsed

    def _get_or_note(self, plan: _Plan, url: str) -> dict[str, Any] | None:
        try:
            return self._get_json(url)
        except _ResourceError as exc:
            plan.problems.append(str(exc))
            return None

    def _discover_chassis(self, root: dict[str, Any], plan: _Plan, values: list[FieldValue]) -> None:
        collection = _link(root, "Chassis")
        wanted = set(self.config.chassis) if self.config.chassis is not None else None
        seen: list[str] = []
        for url, expanded in self._members(collection) if collection else ():
            doc = expanded or self._get_or_note(plan, url)
            if doc is None:
                continue
            cid = _member_key(url)
            seen.append(cid)
            if wanted is not None and cid not in wanted:
                continue
            prefix = f"chassis.{cid}"
            candidates: list[tuple[str, str, str, FieldValue]] = []  # (role, kind, field, discovered value)
            for link_name, kind, sub in (("Power", "power", prefix), ("Thermal", "thermal", prefix),
                                         ("EnvironmentMetrics", "environment", f"{prefix}.environment")):
                target = _link(doc, link_name)
                if target:
                    candidates += _roles(kind, self._add(plan, values, target, kind, sub))
            for sensor_url, expanded in self._safe_members(plan, _link(doc, "Sensors")):
                sid = _member_key(sensor_url)
                candidates += _roles("sensor", self._add(plan, values, sensor_url, "sensor",
                                                         f"{prefix}.sensor.{sid}", expanded))
            subsystem = _link(doc, "ThermalSubsystem")
            sub_doc = self._get_or_note(plan, subsystem) if subsystem else None
            if sub_doc is not None and _link(sub_doc, "LeakDetection"):
                self._discover_leak(plan, values, _link(sub_doc, "LeakDetection") or "", prefix)
            self._choose_sources(plan, prefix, candidates)
        if wanted is not None and (unknown := sorted(wanted - set(seen))):
            raise self._error(self._url(collection or ROOT), f"chassis {', '.join(unknown)} not found; "
                                                             f"the service has: {', '.join(seen) or 'none'}")

    @staticmethod
    def _choose_sources(plan: _Plan, prefix: str, candidates: list[tuple[str, str, str, FieldValue]]) -> None:
        for role, order in PRECEDENCE.items():
            found = [(kind, name, value) for r, kind, name, value in candidates if r == role and kind in order]
            sensors = [name for kind, name, _ in found if kind == "sensor"]
            if len(sensors) > 1:
                plan.problems.append(f"{prefix}.{role}: {len(sensors)} sensors could be it ({', '.join(sensors)}); "
                                     "none of them is used for it, map the one you want by its own name")
                found = [c for c in found if c[0] != "sensor"]
            if not found:
                continue
            found.sort(key=lambda c: order.index(c[0]))
            kind, name, value = next((c for c in found if c[2].quality == Quality.GOOD), found[0])
            plan.derived.append(_Derived(f"{prefix}.{role}", (name,), "copy", value.unit))

    def _discover_systems(self, root: dict[str, Any], plan: _Plan, values: list[FieldValue]) -> None:
        collection = _link(root, "Systems")
        try:
            members = list(self._members(collection)) if collection else []
        except _ResourceError as exc:
            plan.problems.append(str(exc))
            return
        for url, _ in members:
            doc = self._get_or_note(plan, url)
            env = _link(doc, "EnvironmentMetrics") if doc else None
            if doc is not None and env:
                self._add(plan, values, env, "environment", f"system.{_member_key(url)}.environment")

    def _discover_thermal_equipment(self, root: dict[str, Any], plan: _Plan, values: list[FieldValue]) -> None:
        equipment = _link(root, "ThermalEquipment")
        te = self._get_or_note(plan, equipment) if equipment else None
        if te is None:
            return
        for collection_name, kind_prefix in COOLING_UNIT_COLLECTIONS:
            collection = _link(te, collection_name)
            for url, expanded in self._safe_members(plan, collection):
                doc = expanded or self._get_or_note(plan, url)
                if doc is None:
                    continue
                prefix = f"{kind_prefix}.{_member_key(url)}"
                self._add(plan, values, url, "cooling_unit", prefix, doc)
                env = _link(doc, "EnvironmentMetrics")
                if env:
                    self._add(plan, values, env, "environment", prefix)
                self._discover_connectors(plan, values, doc, prefix)
                for pump_url, pump in self._safe_members(plan, _link(doc, "Pumps")):
                    self._add(plan, values, pump_url, "pump", f"{prefix}.pump.{_member_key(pump_url)}", pump)
                leak = _link(doc, "LeakDetection")
                if leak:
                    self._discover_leak(plan, values, leak, prefix)
        for url, expanded in self._safe_members(plan, _link(te, "CoolingLoops")):
            doc = expanded or self._get_or_note(plan, url)
            if doc is None:
                continue
            prefix = f"cooling_loop.{_member_key(url)}"
            self._add(plan, values, url, "cooling_loop", prefix, doc)
            self._discover_connectors(plan, values, doc, prefix)

    def _safe_members(self, plan: _Plan, collection: str | None) -> list[tuple[str, dict[str, Any] | None]]:
        if not collection:
            return []
        try:
            return list(self._members(collection))
        except _ResourceError as exc:
            plan.problems.append(str(exc))
            return []

    def _discover_connectors(self, plan: _Plan, values: list[FieldValue], doc: dict[str, Any], prefix: str) -> None:
        for side in ("Primary", "Secondary"):
            for url, expanded in self._safe_members(plan, _link(doc, f"{side}CoolantConnectors")):
                self._add(plan, values, url, "connector", f"{prefix}.{side.lower()}.{_member_key(url)}", expanded)

    def _discover_leak(self, plan: _Plan, values: list[FieldValue], url: str, prefix: str) -> None:
        doc = self._get_or_note(plan, url)
        detectors: list[str] = []
        for det_url, expanded in self._safe_members(plan, _link(doc, "LeakDetectors") if doc else None):
            did = _member_key(det_url)
            if self._add(plan, values, det_url, "leak_detector", f"{prefix}.leak_detector.{did}", expanded):
                detectors.append(f"{prefix}.leak_detector.{did}")
        if detectors:
            plan.derived.append(_Derived(f"{prefix}.leak_detected", tuple(detectors), "any_leak"))

    def _plan_active(self, plan: _Plan) -> None:
        # with points mapped, poll only the resources that carry them (and the sources of mapped derived fields)
        known = {name for res in plan.resources for name in res.fields} | {d.field for d in plan.derived}
        points = self.config.points
        for name, point in points.items():
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                plan.problems.append(f"field {name!r} (mapped to point {point!r}) is not on this device{hint}")
                plan.missing_points[name] = point
        if not points:
            plan.active, plan.active_derived = list(plan.resources), list(plan.derived)
            return
        plan.active_derived = [d for d in plan.derived if d.field in points]
        needed = set(points) | {s for d in plan.active_derived for s in d.sources}
        plan.active = [res for res in plan.resources if needed.intersection(res.fields)]

    # polling

    def _poll(self, plan: _Plan) -> tuple[list[FieldValue], list[str]]:
        values: list[FieldValue] = []
        problems: list[str] = []
        failed = 0
        first_failure = ""
        for res in plan.active:
            try:
                doc = self._get_json(res.url)
            except _ResourceError as exc:
                failed += 1
                first_failure = first_failure or exc.detail
                problems.append(str(exc))
                plan.stale = plan.stale or exc.status == 404  # moved or gone: rediscover next poll
                values.extend(_bad(name, unit) for name, unit in res.fields.items())
                continue
            parsed = PARSERS[res.kind](doc, res.prefix)
            values.extend(parsed.values)
            got = {v.field for v in parsed.values}
            missing = [name for name in res.fields if name not in got]
            if missing:
                problems.append(f"{self._url(res.url)}: no {', '.join(missing)} in the answer")
                values.extend(_bad(name, res.fields[name]) for name in missing)
        if plan.active and failed == len(plan.active):
            plan.stale = True
            raise CollectorError(f"redfish device {self.config.name!r}: all {failed} resources failed, "
                                 f"first {first_failure}")
        return values, problems

    def _derive(self, plan: _Plan, values: list[FieldValue]) -> list[FieldValue]:
        by_name = {v.field: v for v in values}
        out: list[FieldValue] = []
        for derived in plan.active_derived:
            sources = [by_name.get(s) for s in derived.sources]
            if derived.how == "copy":
                src = sources[0]
                out.append(_bad(derived.field, derived.unit) if src is None else
                           FieldValue(derived.field, src.value, src.unit, src.quality, src.ts_ms))
                continue
            states = [s.value if s is not None else math.nan for s in sources]
            if any(v == 1.0 for v in states):
                out.append(FieldValue(derived.field, 1.0, ""))
            elif all(v == 0.0 for v in states):
                out.append(FieldValue(derived.field, 0.0, ""))
            else:
                out.append(_bad(derived.field))
        return out
