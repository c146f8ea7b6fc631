"""Writing cooling setpoints back to a BMS over Modbus TCP or BACnet/IP: opt in, bounded, rate-limited, rolled back.

dcpue's cooling recommendations are advisory. A site that wants them applied configures a write-back
target (``cooling.writeback`` per site, ``enabled: true``): a :class:`ModbusTarget` (holding registers;
``protocol: modbus``, the default) or a :class:`BacnetTarget` (``protocol: bacnet``: an object property
per setpoint, written at a BACnet command priority). :class:`SetpointWriter` then writes a
recommendation's setpoints to the BMS, whichever the protocol, but only

* when the recommendation is trusted (``ok``) and asks for a change;
* within the target's own hard ``bounds`` and ``max_step`` from what the BMS holds now (read back
  before every write), whatever the recommender said;
* no sooner than ``min_interval_s`` after the last write and at most ``max_writes_per_day`` a day;

and it reads every written setpoint back; a write that fails or reads back wrong is undone at once
(what the BMS held before is put back) and refused. For ``watch_s`` after a write it watches the
measured outcome (:meth:`SetpointWriter.watch`): a rack inlet above the limit, or facility water above
its class, puts the previous setpoints back at once and suspends writing for ``suspend_s``. Every
decision is returned as a :class:`WriteResult` with its reason, for the log and the record.

Only the transport differs between protocols (:class:`_ModbusLink`, :class:`_BacnetLink`): reading the
held setpoints, noting what undoing a write needs, writing with read-back, and undoing. On BACnet dcpue
writes at its own priority slot (default 10, below Manual Operator 8) and an undo restores that slot
as it found it: relinquished (NULL) if it was empty, so the BMS's own control takes over again, or the
value it held.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from dcpue.errors import CollectorError
from dcpue.ingest.bacnet import (
    BacnetClient,
    BacnetDeviceError,
    parse_device_address,
    parse_local_address,
    parse_object_id,
    priority_slot,
    require_bacpypes3,
)
from dcpue.ingest.modbus import decode_registers, encode_registers, register_count

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
DEFAULT_BACNET_PRIORITY = 10  # below Manual Operator (8): an operator's command always wins over dcpue
READ_BACK_TOLERANCE_K = 0.01  # BACnet values are read to 0.001 K; °F conversion adds a little more


class SetpointRegister(BaseModel):
    """Where a setpoint lives in a Modbus BMS: a holding register block and its encoding."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    address: int = Field(ge=0, le=65535)
    data_type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "int16"
    byte_order: str = "ABCD"
    scale: float = 0.1  # register × scale = °C (0.1 °C steps are common in BMS maps)


class _TargetLimits(BaseModel):
    """The safety rules every write-back target carries, whatever its protocol."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    timeout_s: float = Field(3.0, gt=0)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)  # hard limits, independent of the model
    max_step: dict[str, float] = Field(default_factory=dict)  # K per write (default 1)
    min_interval_s: float = Field(900.0, ge=0)
    max_writes_per_day: int = Field(24, ge=1)
    watch_s: float = Field(1800.0, ge=0)
    suspend_s: float = Field(86_400.0, ge=0)
    inlet_limit_c: float = 27.0  # a measured rack inlet above this within watch_s rolls back
    fw_limit_c: float | None = None  # facility water above this within watch_s rolls back

    @property
    def setpoints(self) -> frozenset[str]:
        """The setpoint names this target can write."""
        raise NotImplementedError


class ModbusTarget(_TargetLimits):
    """One site's BMS reached over Modbus TCP (``protocol: modbus``, the default; off unless ``enabled``)."""

    protocol: Literal["modbus"] = "modbus"
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    registers: dict[str, SetpointRegister] = Field(min_length=1)

    @property
    def setpoints(self) -> frozenset[str]:
        """The setpoint names this target can write."""
        return frozenset(self.registers)


def _device_address(value: str) -> str:
    """A BACnet/IP device address in its normal form ``host:port`` (47808 when left out)."""
    host, port = parse_device_address(value)
    return f"{host}:{port}"


class BacnetPoint(BaseModel):
    """Where a setpoint lives in a BACnet BMS: an object's property, written at a command priority."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    object: str  # "analog-value,1": type,instance (analog-value, analog-output, large-analog-value)
    property: str = "present-value"
    # 8 (Manual Operator) … 16; 1–7 are life safety and critical equipment control, never dcpue's
    priority: int = Field(DEFAULT_BACNET_PRIORITY, ge=8, le=16)
    device: str | None = None  # this point's device when it is not the target's (IPv4[:port])

    @field_validator("object")
    @classmethod
    def _object_id(cls, value: str) -> str:
        kind, instance = parse_object_id(value)
        return f"{kind},{instance}"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None else _device_address(value)

    @field_validator("property")
    @classmethod
    def _property(cls, value: str) -> str:
        if not value or not all(part.isalnum() for part in value.split("-")):
            raise ValueError(f"{value!r} is not a BACnet property name like 'present-value'")
        return value


class BacnetTarget(_TargetLimits):
    """One site's BMS reached over BACnet/IP (``protocol: bacnet``; off unless ``enabled``).

    ``timeout_s`` [s] bounds one request attempt and ``retries`` more attempts follow a timeout (UDP);
    ``local_address`` is the UDP address the client binds (default: every interface, an ephemeral port).
    """

    protocol: Literal["bacnet"]
    device: str  # IPv4[:port] of the BACnet/IP device (port 47808 when left out)
    points: dict[str, BacnetPoint] = Field(min_length=1)
    retries: int = Field(2, ge=0, le=5)
    local_address: str = "0.0.0.0:0"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _device_address(value)

    @field_validator("local_address")
    @classmethod
    def _local_address(cls, value: str) -> str:
        return parse_local_address(value)

    @property
    def setpoints(self) -> frozenset[str]:
        """The setpoint names this target can write."""
        return frozenset(self.points)


def _protocol_of(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("protocol", "modbus"))  # configs from before BACnet name no protocol
    return str(getattr(value, "protocol", "modbus"))


WritebackTarget = Annotated[
    Annotated[ModbusTarget, Tag("modbus")] | Annotated[BacnetTarget, Tag("bacnet")],
    Discriminator(_protocol_of, custom_error_type="invalid_protocol",
                  custom_error_message="protocol must be 'modbus' or 'bacnet'"),
]
"""A site's write-back target, chosen by its ``protocol`` (``modbus`` when left out)."""


@dataclass
class WriteResult:
    """What the writer did with one recommendation or observation, and why."""

    site: str
    ts_ms: int
    action: str  # written, refused, rolled_back, rollback_failed, none
    reason: str
    values: dict[str, float] = field(default_factory=dict)


class _Link(Protocol):
    """A protocol's part of write-back: everything else is the same for all protocols."""

    noun: str

    def read(self) -> dict[str, float]: ...  # every configured setpoint the BMS holds now [°C]

    def snapshot(self, names: list[str], held: dict[str, float]) -> Any: ...  # what undoing a write needs

    def write(self, values: dict[str, float]) -> None: ...  # write, then read back; CollectorError if wrong

    def restore(self, snapshot: Any) -> dict[str, float]: ...  # undo; the setpoints in effect after [°C]

    def close(self) -> None: ...


class SetpointWriter:
    """Applies recommendations to one site's BMS within its write-back target's limits."""

    def __init__(self, site: str, target: ModbusTarget | BacnetTarget) -> None:
        self.site = site
        self.target = target
        self._link: _Link = _BacnetLink(site, target) if isinstance(target, BacnetTarget) else _ModbusLink(site, target)
        self._lock = threading.Lock()
        self._writes: list[int] = []  # event times of writes [ms]
        self._previous: dict[str, float] | None = None  # the setpoints a rollback puts back [°C]
        self._undo: Any = None  # what the link needs to put them back
        self._watch_until = -1
        self._suspended_until = -1
        self._pending_undo: Any = None  # an undo or rollback that failed: retried before anything else
        self.log: list[WriteResult] = []

    # -- decisions ---------------------------------------------------------------------------------
    def apply(self, record: dict[str, Any]) -> WriteResult:
        """Write a recommendation record's setpoints (``Recommendation.as_dict()``) if every rule allows."""
        now = int(record["ts_ms"])
        wanted = record.get("recommended") or {}
        if not self.target.enabled:
            return self._note(now, "refused", "write-back is not enabled for this site")
        if self._pending_undo is not None:  # the BMS may still hold a half or breached write: undo it first
            with self._lock:
                try:
                    self._link.restore(self._pending_undo)
                except CollectorError as exc:
                    return self._note(now, "refused", f"an earlier write still has to be undone and that failed "
                                                      f"again: {exc}")
                self._pending_undo = None
            log.warning("site %s: an earlier write that could not be undone is undone now", self.site)
            return self._note(now, "rolled_back", "an earlier write that could not be undone is undone now")
        if not record.get("ok") or record.get("action") != "change" or not wanted:
            return self._note(now, "none", f"nothing to write ({record.get('action', 'no')} recommendation)")
        if now < self._suspended_until:
            return self._note(now, "refused", "write-back suspended after a rollback")
        unknown = sorted(set(wanted) - self.target.setpoints)
        if unknown:
            return self._note(now, "refused", f"no {self._link.noun} configured for {', '.join(unknown)}")
        last = self._writes[-1] if self._writes else None
        if last is not None and now - last < self.target.min_interval_s * 1000:
            return self._note(now, "refused", f"rate limit: last write {(now - last) / 1000:.0f} s ago, "
                                              f"minimum {self.target.min_interval_s:g} s")
        if sum(t > now - DAY_MS for t in self._writes) >= self.target.max_writes_per_day:
            return self._note(now, "refused", f"rate limit: {self.target.max_writes_per_day} writes in 24 h")
        with self._lock:
            try:
                held = self._link.read()
                for name, value in wanted.items():
                    if not math.isfinite(held[name]) or not math.isfinite(value):
                        return self._note(now, "refused", f"{name}: the BMS holds {held[name]:g} and the advice is "
                                                          f"{value:g} °C; both must be numbers to check the step")
                    lo, hi = self.target.bounds.get(name, (float("-inf"), float("inf")))
                    step = self.target.max_step.get(name, 1.0)
                    if not lo <= value <= hi:
                        return self._note(now, "refused",
                                          f"{name} {value:g} °C outside the site's bounds {lo:g}..{hi:g}")
                    if abs(value - held[name]) > step + 1e-9:
                        return self._note(now, "refused", f"{name} {held[name]:g} → {value:g} °C is more than "
                                                          f"the {step:g} K allowed per write")
                undo = self._link.snapshot(list(wanted), held)
            except CollectorError as exc:
                return self._note(now, "refused", str(exc))
            try:
                self._link.write(wanted)
            except CollectorError as exc:
                return self._note(now, "refused", self._undo_failed_write(exc, undo))
        self._previous = {name: held[name] for name in wanted}
        self._undo = undo
        self._writes.append(now)
        self._watch_until = now + int(self.target.watch_s * 1000)
        return self._note(now, "written", "written and read back", dict(wanted))

    def watch(self, ts_ms: int, rack_inlet_c: float | None, fw_supply_c: float | None = None) -> WriteResult | None:
        """Check a measured outcome after a write; roll back on a breach within ``watch_s``."""
        if self._previous is None or ts_ms > self._watch_until:
            return None
        breach = None
        if rack_inlet_c is not None and rack_inlet_c > self.target.inlet_limit_c:
            breach = f"rack inlet {rack_inlet_c:.1f} °C above {self.target.inlet_limit_c:g} °C"
        elif fw_supply_c is not None and self.target.fw_limit_c is not None and fw_supply_c > self.target.fw_limit_c:
            breach = f"facility water {fw_supply_c:.1f} °C above {self.target.fw_limit_c:g} °C"
        if breach is None:
            return None
        previous, undo = self._previous, self._undo
        self._previous = self._undo = None
        self._suspended_until = ts_ms + int(self.target.suspend_s * 1000)
        try:
            with self._lock:
                restored = self._link.restore(undo)
        except CollectorError as exc:
            log.error("site %s: rollback after %s FAILED: %s", self.site, breach, exc)
            self._pending_undo = undo  # retried with the next recommendation
            return self._note(ts_ms, "rollback_failed", f"{breach}; writing back {previous} failed: {exc}", previous)
        log.warning("site %s: %s after a setpoint write: previous setpoints %s restored (now %s), "
                    "write-back suspended", self.site, breach, previous, restored)
        return self._note(ts_ms, "rolled_back", f"{breach}: previous setpoints restored", restored)

    def _undo_failed_write(self, exc: CollectorError, undo: Any) -> str:
        # a write can fail halfway or land but read back wrong (on BACnet: a higher priority holds the
        # point, so dcpue's command would wait in the priority array); put back what was there
        try:
            self._link.restore(undo)
        except CollectorError as again:
            log.error("site %s: undoing a failed setpoint write FAILED: %s", self.site, again)
            self._pending_undo = undo  # retried with the next recommendation
            return f"{exc}; undoing the write failed too (retried with the next recommendation): {again}"
        return f"{exc}; the write was undone"

    # -- transport ---------------------------------------------------------------------------------
    def read(self) -> dict[str, float]:
        """The setpoints the BMS holds now [°C]."""
        with self._lock:
            return self._link.read()

    def close(self) -> None:
        """Close the connection to the BMS (the next write opens a new one)."""
        with self._lock:
            self._link.close()

    def _note(self, ts_ms: int, action: str, reason: str, values: dict[str, float] | None = None) -> WriteResult:
        result = WriteResult(self.site, ts_ms, action, reason, values or {})
        self.log.append(result)
        if action in ("written", "refused"):
            log.info("site %s setpoint write-back %s: %s", self.site, action, reason)
        return result


class _ModbusLink:
    """Setpoints in holding registers (pymodbus, synchronous client); an undo writes the old values back."""

    noun = "register"

    def __init__(self, site: str, target: ModbusTarget) -> None:
        self.site, self.target = site, target
        self._client: Any = None

    def _guard(self, what: str, call: Any) -> Any:
        """``call()``; a timeout, a dropped link or a bad value becomes a CollectorError naming ``what``
        (pymodbus raises rather than answering an error reply then), so the writer refuses and undoes."""
        from pymodbus.exceptions import ModbusException

        try:
            return call()
        except (ModbusException, OSError, ValueError) as exc:
            self._drop()
            raise CollectorError(f"{self._where()}: {what} failed: {exc}") from exc

    def read(self) -> dict[str, float]:
        client = self._connect()
        out = {}
        for name, reg in self.target.registers.items():
            reply = self._guard(f"reading {name} at {reg.address}", lambda reg=reg: client.read_holding_registers(
                reg.address, count=register_count(reg.data_type), device_id=self.target.unit_id))
            if reply.isError():
                self._drop()
                raise CollectorError(f"{self._where()}: reading {name} at {reg.address} failed: {reply}")
            out[name] = float(self._guard(f"decoding {name}", lambda reply=reply, reg=reg: decode_registers(
                reply.registers, reg.data_type, reg.byte_order, reg.scale)))
        return out

    def snapshot(self, names: list[str], held: dict[str, float]) -> dict[str, float]:
        return {name: held[name] for name in names}

    def write(self, values: dict[str, float]) -> None:
        client = self._connect()
        for name, value in values.items():
            reg = self.target.registers[name]
            words = self._guard(f"encoding {name} = {value:g}", lambda reg=reg, value=value: encode_registers(
                value, reg.data_type, reg.byte_order, reg.scale))
            reply = self._guard(f"writing {name} = {value:g}", lambda reg=reg, words=words: client.write_registers(
                reg.address, words, device_id=self.target.unit_id))
            if reply.isError():
                self._drop()
                raise CollectorError(f"{self._where()}: writing {name} = {value:g} failed: {reply}")
        back = self.read()
        wrong = {n: back[n] for n, v in values.items() if abs(back[n] - v) > self.target.registers[n].scale / 2 + 1e-9}
        if wrong:
            raise CollectorError(f"{self._where()}: read back {wrong} after writing {values}")

    def restore(self, snapshot: dict[str, float]) -> dict[str, float]:
        # only registers that moved: one the BMS refused to write still holds its value and may refuse again
        now = self.read()
        moved = {n: v for n, v in snapshot.items()
                 if abs(now[n] - v) > self.target.registers[n].scale / 2 + 1e-9}
        if moved:
            self.write(moved)
        return dict(snapshot)

    def _connect(self) -> Any:
        if self._client is None:
            from pymodbus.client import ModbusTcpClient

            client = ModbusTcpClient(self.target.host, port=self.target.port, timeout=self.target.timeout_s, retries=0)
            if not self._guard("connecting", client.connect):
                raise CollectorError(f"{self._where()}: cannot connect")
            self._client = client
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self._drop()

    def _where(self) -> str:
        return f"BMS of site {self.site} at {self.target.host}:{self.target.port} (unit {self.target.unit_id})"


# BACnet engineering units dcpue converts, as (to °C, from °C)
_TEMPERATURE_UNITS: dict[str, tuple[Any, Any]] = {
    "degrees-celsius": (lambda v: v, lambda c: c),
    "degrees-fahrenheit": (lambda v: (v - 32.0) * 5.0 / 9.0, lambda c: c * 9.0 / 5.0 + 32.0),
    "degrees-kelvin": (lambda v: v - 273.15, lambda c: c + 273.15),
}


@dataclass(frozen=True)
class _BacnetUndo:
    """What one point held before a write: its priority slot (``None``: empty) or, if the property is
    not commandable, its value."""

    commandable: bool
    slot_c: float | None
    held_c: float


class _BacnetLink:
    """Setpoints as BACnet object properties (bacpypes3 client); an undo restores dcpue's priority slot.

    Every value crosses this class in °C; the object's ``units`` (read once per connection) say how the
    device holds it (°C, °F or K; anything else is refused).
    """

    noun = "BACnet point"
    _NOT_COMMANDABLE: ClassVar[frozenset[str]] = frozenset(
        {"unknown-property", "property-is-not-an-array", "invalid-array-index"})

    def __init__(self, site: str, target: BacnetTarget) -> None:
        require_bacpypes3()  # fail at start-up with the install hint, not at the first write
        self.site, self.target = site, target
        self._client: BacnetClient | None = None
        self._units: dict[str, tuple[Any, Any]] = {}

    def _open(self) -> BacnetClient:
        if self._client is None:
            client = BacnetClient(self.target.local_address, self.target.timeout_s, self.target.retries)
            client.open()
            self._client = client
        return self._client

    def _device(self, name: str) -> str:
        return self.target.points[name].device or self.target.device

    def _convert(self, name: str) -> tuple[Any, Any]:
        if name not in self._units:
            point = self.target.points[name]
            units = str(self._open().read(self._device(name), point.object, "units"))
            if units not in _TEMPERATURE_UNITS:
                raise CollectorError(f"{self._where(name)}: units {units!r}, not a temperature; dcpue writes "
                                     f"setpoints in {', '.join(_TEMPERATURE_UNITS)}")
            self._units[name] = _TEMPERATURE_UNITS[units]
        return self._units[name]

    def _read_c(self, name: str) -> float:
        point = self.target.points[name]
        value = self._open().read(self._device(name), point.object, point.property)
        try:
            # REAL is float32 (22.3 arrives as 22.2999992): a millikelvin is far below any setpoint's resolution
            return round(float(self._convert(name)[0](float(value))), 3)
        except (TypeError, ValueError):
            raise CollectorError(f"{self._where(name)}: {point.property} is {value!r}, not a number") from None

    def _write_c(self, name: str, value_c: float | None) -> None:
        point = self.target.points[name]
        raw = None if value_c is None else float(self._convert(name)[1](value_c))
        self._open().write(self._device(name), point.object, point.property, raw, point.priority)

    def _slot_c(self, name: str) -> float | None:
        point = self.target.points[name]
        raw = priority_slot(self._open().read(self._device(name), point.object, "priority-array", point.priority))
        return None if raw is None else float(self._convert(name)[0](raw))

    def read(self) -> dict[str, float]:
        try:
            return {name: self._read_c(name) for name in self.target.points}
        except CollectorError:
            self.close()  # a fresh client (and units) next time
            raise

    def snapshot(self, names: list[str], held: dict[str, float]) -> dict[str, _BacnetUndo]:
        out = {}
        for name in names:
            if self.target.points[name].property != "present-value":
                out[name] = _BacnetUndo(False, None, held[name])
                continue
            try:
                out[name] = _BacnetUndo(True, self._slot_c(name), held[name])
            except BacnetDeviceError as exc:
                if exc.code not in self._NOT_COMMANDABLE:
                    raise
                out[name] = _BacnetUndo(False, None, held[name])  # a plain writable value: no priority array
        return out

    def write(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._write_c(name, value)
        for name, value in values.items():
            back = self._read_c(name)
            if abs(back - value) > READ_BACK_TOLERANCE_K:
                raise CollectorError(f"{self._where(name)}: reads {back:g} °C after writing {value:g} °C at "
                                     f"priority {self.target.points[name].priority}{self._held_by(name)}")

    def _held_by(self, name: str) -> str:
        point = self.target.points[name]
        try:
            current = self._open().read(self._device(name), point.object, "current-command-priority")
            level = priority_slot(current)
        except (CollectorError, TypeError):
            return ""  # an older device without current-command-priority
        return "" if level is None else f": priority {int(level)} holds the point"

    def restore(self, snapshot: dict[str, _BacnetUndo]) -> dict[str, float]:
        for name, undo in snapshot.items():
            self._write_c(name, undo.slot_c if undo.commandable else undo.held_c)
        for name, undo in snapshot.items():
            if undo.commandable:
                slot = self._slot_c(name)
                if not _same(slot, undo.slot_c):
                    raise CollectorError(f"{self._where(name)}: priority {self.target.points[name].priority} holds "
                                         f"{_shown(slot)} after restoring {_shown(undo.slot_c)}")
            elif abs(self._read_c(name) - undo.held_c) > READ_BACK_TOLERANCE_K:
                raise CollectorError(f"{self._where(name)}: does not read {undo.held_c:g} °C after restoring it")
        now = self.read()
        return {name: now[name] for name in snapshot}

    def close(self) -> None:
        client, self._client = self._client, None
        self._units.clear()
        if client is not None:
            client.close()

    def _where(self, name: str) -> str:
        point = self.target.points[name]
        return f"BMS of site {self.site}: {name} at {self._device(name)} {point.object} {point.property}"


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= READ_BACK_TOLERANCE_K


def _shown(value_c: float | None) -> str:
    return "NULL" if value_c is None else f"{value_c:g} °C"
