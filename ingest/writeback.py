"""Writing cooling setpoints back to a BMS over Modbus TCP: opt in, bounded, rate-limited, rolled back.

dcpue's cooling recommendations are advisory. A site that wants them applied configures a
:class:`WritebackTarget` (``cooling.writeback`` per site, ``enabled: true``); :class:`SetpointWriter`
then writes a recommendation's setpoints to the BMS's holding registers, but only

* when the recommendation is trusted (``ok``) and asks for a change;
* within the target's own hard ``bounds`` and ``max_step`` from what the BMS holds now (read back
  before every write), whatever the recommender said;
* no sooner than ``min_interval_s`` after the last write and at most ``max_writes_per_day`` a day;

and it reads every written register back. For ``watch_s`` after a write it watches the measured
outcome (:meth:`SetpointWriter.watch`): a rack inlet above the limit, or facility water above its
class, puts the previous setpoints back at once and suspends writing for ``suspend_s``. Every
decision is returned as a :class:`WriteResult` with its reason, for the log and the record.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dcpue.errors import CollectorError
from dcpue.ingest.modbus import decode_registers, encode_registers, register_count

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class SetpointRegister(BaseModel):
    """Where a setpoint lives in the BMS: a holding register block and its encoding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: int = Field(ge=0, le=65535)
    data_type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "int16"
    byte_order: str = "ABCD"
    scale: float = 0.1  # register × scale = °C (0.1 °C steps are common in BMS maps)


class WritebackTarget(BaseModel):
    """One site's BMS for setpoint write-back (off unless ``enabled``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    timeout_s: float = Field(3.0, gt=0)
    registers: dict[str, SetpointRegister] = Field(min_length=1)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)  # hard limits, independent of the model
    max_step: dict[str, float] = Field(default_factory=dict)  # K per write (default 1)
    min_interval_s: float = Field(900.0, ge=0)
    max_writes_per_day: int = Field(24, ge=1)
    watch_s: float = Field(1800.0, ge=0)
    suspend_s: float = Field(86_400.0, ge=0)
    inlet_limit_c: float = 27.0  # a measured rack inlet above this within watch_s rolls back
    fw_limit_c: float | None = None  # facility water above this within watch_s rolls back


@dataclass
class WriteResult:
    """What the writer did with one recommendation or observation, and why."""

    site: str
    ts_ms: int
    action: str  # written, refused, rolled_back, none
    reason: str
    values: dict[str, float] = field(default_factory=dict)


class SetpointWriter:
    """Applies recommendations to one site's BMS within its :class:`WritebackTarget`'s limits."""

    def __init__(self, site: str, target: WritebackTarget) -> None:
        self.site = site
        self.target = target
        self._client: Any = None
        self._lock = threading.Lock()
        self._writes: list[int] = []  # event times of writes [ms]
        self._previous: dict[str, float] | None = None  # what a rollback puts back
        self._watch_until = -1
        self._suspended_until = -1
        self.log: list[WriteResult] = []

    # -- decisions ---------------------------------------------------------------------------------
    def apply(self, record: dict[str, Any]) -> WriteResult:
        """Write a recommendation record's setpoints (``Recommendation.as_dict()``) if every rule allows."""
        now = int(record["ts_ms"])
        wanted = record.get("recommended") or {}
        if not self.target.enabled:
            return self._note(now, "refused", "write-back is not enabled for this site")
        if not record.get("ok") or record.get("action") != "change" or not wanted:
            return self._note(now, "none", f"nothing to write ({record.get('action', 'no')} recommendation)")
        if now < self._suspended_until:
            return self._note(now, "refused", "write-back suspended after a rollback")
        unknown = sorted(set(wanted) - set(self.target.registers))
        if unknown:
            return self._note(now, "refused", f"no register configured for {', '.join(unknown)}")
        last = self._writes[-1] if self._writes else None
        if last is not None and now - last < self.target.min_interval_s * 1000:
            return self._note(now, "refused", f"rate limit: last write {(now - last) / 1000:.0f} s ago, "
                                              f"minimum {self.target.min_interval_s:g} s")
        if sum(t > now - DAY_MS for t in self._writes) >= self.target.max_writes_per_day:
            return self._note(now, "refused", f"rate limit: {self.target.max_writes_per_day} writes in 24 h")
        try:
            held = self.read()
            for name, value in wanted.items():
                lo, hi = self.target.bounds.get(name, (float("-inf"), float("inf")))
                step = self.target.max_step.get(name, 1.0)
                if not lo <= value <= hi:
                    return self._note(now, "refused", f"{name} {value:g} °C outside the site's bounds {lo:g}..{hi:g}")
                if abs(value - held[name]) > step + 1e-9:
                    return self._note(now, "refused", f"{name} {held[name]:g} → {value:g} °C is more than the "
                                                      f"{step:g} K allowed per write")
            self._write(wanted)
        except CollectorError as exc:
            return self._note(now, "refused", str(exc))
        self._previous = {name: held[name] for name in wanted}
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
        previous, self._previous = self._previous, None
        self._suspended_until = ts_ms + int(self.target.suspend_s * 1000)
        try:
            self._write(previous)
        except CollectorError as exc:
            log.error("site %s: rollback after %s FAILED: %s", self.site, breach, exc)
            return self._note(ts_ms, "rollback_failed", f"{breach}; writing back {previous} failed: {exc}", previous)
        log.warning("site %s: %s after a setpoint write: previous setpoints %s restored, write-back suspended",
                    self.site, breach, previous)
        return self._note(ts_ms, "rolled_back", f"{breach}: previous setpoints restored", previous)

    # -- Modbus ------------------------------------------------------------------------------------
    def read(self) -> dict[str, float]:
        """The setpoints the BMS holds now [°C]."""
        with self._lock:
            client = self._connect()
            out = {}
            for name, reg in self.target.registers.items():
                reply = client.read_holding_registers(reg.address, count=register_count(reg.data_type),
                                                      device_id=self.target.unit_id)
                if reply.isError():
                    self._drop()
                    raise CollectorError(f"{self._where()}: reading {name} at {reg.address} failed: {reply}")
                out[name] = float(decode_registers(reply.registers, reg.data_type, reg.byte_order, reg.scale))
            return out

    def _write(self, values: dict[str, float]) -> None:
        with self._lock:
            client = self._connect()
            for name, value in values.items():
                reg = self.target.registers[name]
                words = encode_registers(value, reg.data_type, reg.byte_order, reg.scale)
                reply = client.write_registers(reg.address, words, device_id=self.target.unit_id)
                if reply.isError():
                    self._drop()
                    raise CollectorError(f"{self._where()}: writing {name} = {value:g} failed: {reply}")
        back = self.read()
        wrong = {n: back[n] for n, v in values.items() if abs(back[n] - v) > self.target.registers[n].scale / 2 + 1e-9}
        if wrong:
            raise CollectorError(f"{self._where()}: read back {wrong} after writing {values}")

    def _connect(self) -> Any:
        if self._client is None:
            from pymodbus.client import ModbusTcpClient

            client = ModbusTcpClient(self.target.host, port=self.target.port, timeout=self.target.timeout_s, retries=0)
            if not client.connect():
                raise CollectorError(f"{self._where()}: cannot connect")
            self._client = client
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _where(self) -> str:
        return f"BMS of site {self.site} at {self.target.host}:{self.target.port} (unit {self.target.unit_id})"

    def _note(self, ts_ms: int, action: str, reason: str, values: dict[str, float] | None = None) -> WriteResult:
        result = WriteResult(self.site, ts_ms, action, reason, values or {})
        self.log.append(result)
        if action in ("written", "refused"):
            log.info("site %s setpoint write-back %s: %s", self.site, action, reason)
        return result
