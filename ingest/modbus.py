"""Modbus TCP devices: register decoding, device profiles, read planning and the reader.

Four tiers, each usable on its own (pure functions first, I/O last):

- :func:`decode_registers` turns 16-bit registers into a number for ``int16`` … ``float64`` in any of
  Telegraf's ``byte_order`` spellings, then applies ``value * scale + offset``.
- Device profiles are data: ``profiles/modbus/*.yaml`` (:func:`list_profiles`, :func:`load_profile`),
  each citing the public register map it was taken from.
- :func:`plan_reads` groups fields into as few contiguous reads as possible.
- :class:`ModbusDeviceConfig` (a :class:`~dcpue.ingest.device.DeviceConfig`) and its
  :class:`ModbusReader`, which reads over TCP with pymodbus (optional extra ``collectors``) and checks
  the first read for values a wrong byte/word order produces (:class:`RangeProblem`).

Addresses are 0-based protocol addresses, as they go on the wire: vendor maps that number registers
from 1 (``30001``, ``40001``, Schneider's ``3060``) are converted in the profile, which says how.
"""

from __future__ import annotations

import importlib.resources
import inspect
import itertools
import logging
import math
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from dcpue.errors import CollectorError, ConfigError, missing_extra
from dcpue.ingest.device import DeviceConfig, FieldValue
from dcpue.model import UNITS, Quality
from dcpue.yamlio import read_yaml

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125  # Modbus application protocol: at most 125 registers per read (FC 3 and 4)
DEFAULT_MAX_GAP = 10  # unused registers a read may span to join two fields [registers]
DEFAULT_PORT = 502
TINY_FLOAT = 1e-7  # nonzero floats smaller than this are taken for wrong byte order: no meter resolves them

# --- decoding ------------------------------------------------------------------------------------------

DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ByteOrder = Literal[
    "AB", "BA",
    "ABCD", "DCBA", "BADC", "CDAB",
    "ABCDEFGH", "HGFEDCBA", "BADCFEHG", "GHEFCDAB",
]  # fmt: skip
RegisterType = Literal["holding", "input"]

DTYPES: dict[str, np.dtype[Any]] = {
    "int16": np.dtype(">i2"),
    "uint16": np.dtype(">u2"),
    "int32": np.dtype(">i4"),
    "uint32": np.dtype(">u4"),
    "int64": np.dtype(">i8"),
    "uint64": np.dtype(">u8"),
    "float32": np.dtype(">f4"),
    "float64": np.dtype(">f8"),
}
"""Register data types and the big-endian numpy dtype each decodes to."""

# Telegraf's spellings, each reduced to (bytes swapped inside every word, word order reversed): the letters
# name the value's bytes from most (A) to least significant in the order they arrive on the wire. Because
# the two flags are independent of width, any spelling applies to any type ("CDAB" on a float64 is
# "GHEFCDAB", on an int16 it is "AB").
BYTE_ORDERS: dict[str, tuple[bool, bool]] = {
    "AB": (False, False),
    "BA": (True, False),
    "ABCD": (False, False),
    "DCBA": (True, True),
    "BADC": (True, False),
    "CDAB": (False, True),
    "ABCDEFGH": (False, False),
    "HGFEDCBA": (True, True),
    "BADCFEHG": (True, False),
    "GHEFCDAB": (False, True),
}
# (words, byte swap, word swap) -> the spelling shown to people; per width in the order alternatives are
# suggested: swapped words are by far the most common mistake, then swapped bytes, then both
_SPELLINGS = {
    (words, byte_swap, word_swap): name
    for words in (1, 2, 4)
    for byte_swap, word_swap in ((False, False), (False, True), (True, False), (True, True))
    for name, flags in BYTE_ORDERS.items()
    if len(name) == 2 * words and flags == (byte_swap, word_swap)
}

MODBUS_EXCEPTIONS: dict[int, str] = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}
"""Modbus exception codes and their names in the Modbus application protocol specification."""


def register_count(data_type: str) -> int:
    """How many 16-bit registers one value of ``data_type`` takes."""
    return _dtype(data_type).itemsize // 2


def byte_order_spelling(byte_order: str, data_type: str) -> str:
    """``byte_order`` spelled for the width of ``data_type`` (``"CDAB"`` on a float64 → ``"GHEFCDAB"``)."""
    byte_swap, word_swap = _flags(byte_order)
    words = register_count(data_type)
    return _SPELLINGS[(words, byte_swap, word_swap and words > 1)]


def decode_registers(
    registers: ArrayLike,
    data_type: str,
    byte_order: str = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> float | np.ndarray:
    """Decode Modbus registers into ``value * scale + offset``.

    ``registers``: the 16-bit register values [0, 65535] of one value, as read (length
    :func:`register_count`), or a 2-D array with one value per row; returns a float or a float64
    array of the rows. ``byte_order``: any key of :data:`BYTE_ORDERS`. 64-bit integers beyond 2**53
    lose precision in the float64 result (an energy counter in Wh reaches that at 9 PWh).
    """
    dtype = _dtype(data_type)
    byte_swap, word_swap = _flags(byte_order)
    words = dtype.itemsize // 2
    regs = np.asarray(registers)
    if regs.size and not np.issubdtype(regs.dtype, np.integer):
        raise ValueError(f"registers must be integers, got {regs.dtype}")
    single = regs.ndim == 1
    rows = regs.reshape(1, -1) if single else regs
    if rows.ndim != 2 or rows.shape[1] != words:
        raise ValueError(f"{data_type} takes {words} register(s) per value, got shape {regs.shape}")
    if rows.size and (rows.min() < 0 or rows.max() > 0xFFFF):
        raise ValueError("registers are 16-bit: every value must be within 0..65535")
    # Modbus sends each register high byte first, so '>u2' gives the bytes in wire order
    octets = rows.astype(">u2").view(np.uint8).reshape(len(rows), words, 2)
    if byte_swap:
        octets = octets[:, :, ::-1]
    if word_swap:
        octets = octets[:, ::-1, :]
    raw = np.ascontiguousarray(octets).reshape(len(rows), dtype.itemsize).view(dtype)[:, 0]
    values = raw.astype(np.float64) * scale + offset
    return float(values[0]) if single else values


def encode_registers(value: float, data_type: str, byte_order: str = "ABCD", scale: float = 1.0,
                     offset: float = 0.0) -> list[int]:
    """The registers that :func:`decode_registers` reads back as ``value`` (for writing a setpoint).

    Integer types round ``(value - offset) / scale`` to the nearest integer and raise ``ValueError``
    when it does not fit the type.
    """
    dtype = _dtype(data_type)
    raw = (float(value) - offset) / scale
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        raw = round(raw)
        if not info.min <= raw <= info.max:
            raise ValueError(f"{value} does not fit {data_type} with scale {scale:g}")
    octets = np.array([raw], dtype=dtype).view(np.uint8).reshape(dtype.itemsize // 2, 2)
    byte_swap, word_swap = _flags(byte_order)
    if word_swap:
        octets = octets[::-1, :]
    if byte_swap:
        octets = octets[:, ::-1]
    return np.ascontiguousarray(octets).view(">u2").reshape(-1).astype(int).tolist()


def _dtype(data_type: str) -> np.dtype[Any]:
    try:
        return DTYPES[data_type]
    except KeyError:
        raise ValueError(f"unknown Modbus data type {data_type!r} (valid: {', '.join(DTYPES)})") from None


def _flags(byte_order: str) -> tuple[bool, bool]:
    try:
        return BYTE_ORDERS[byte_order]
    except KeyError:
        raise ValueError(f"unknown byte order {byte_order!r} (valid: {', '.join(BYTE_ORDERS)})") from None


def _orders_for(data_type: str) -> list[str]:
    """The distinct byte orders of ``data_type``'s width (2 for 16-bit types, 4 otherwise)."""
    words = register_count(data_type)
    return [name for (w, *_), name in _SPELLINGS.items() if w == words]


# --- profiles --------------------------------------------------------------------------------------------

DIAGNOSTIC_UNITS = ("V", "A", "Hz")
"""Electrical units a profile may use besides :data:`dcpue.model.UNITS`: such fields are read and shown
by ``dcpue probe`` and make good sanity anchors (50 Hz, 230 V), but map to no registry quantity."""
ALLOWED_UNITS = frozenset({"", *DIAGNOSTIC_UNITS, *(u for units in UNITS.values() for u in units)})
FIELD_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
PROFILE_DIR = ("profiles", "modbus")


class RegisterSource(BaseModel):
    """Where a profile's register map comes from: the public document, and what it was checked against."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    title: str = Field(min_length=1)
    document: str = Field(min_length=1)  # document number / revision / date
    url: str = Field(min_length=1)
    cross_checked: list[str] = Field(default_factory=list)
    notes: str = ""


class ModbusField(BaseModel):
    """One value of a device: where it lives, how it is encoded and what is plausible.

    ``address`` is the 0-based protocol address. ``byte_order`` and ``unit_id`` default to the device's.
    The decoded value is ``raw * scale + offset`` in ``unit``; ``range`` ([min, max], same unit) is what
    the device can plausibly report: values outside it are flagged BAD (see :class:`ModbusReader`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=128, pattern=FIELD_NAME_PATTERN)
    register_type: RegisterType
    address: int = Field(ge=0, le=0xFFFF)
    type: DataType
    byte_order: ByteOrder | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    valid_range: tuple[float, float] | None = Field(None, alias="range")
    unit_id: int | None = Field(None, ge=0, le=255)
    description: str = ""

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in ALLOWED_UNITS:
            raise ValueError(f"unknown unit {unit!r} (valid: {', '.join(sorted(ALLOWED_UNITS - {''}))} or '')")
        return unit

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.words > 0x10000:
            raise ValueError(f"{self.type} at address {self.address} runs past the last register 65535")
        if self.valid_range is not None:
            lo, hi = self.valid_range
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"range must be [min, max] with finite min <= max, got [{lo}, {hi}]")
        return self

    @property
    def words(self) -> int:
        """Registers the value occupies."""
        return register_count(self.type)

    def plausible(self, value: float) -> bool:
        """Whether ``value`` lies in the field's range (any finite value without one; NaN and ±inf never)."""
        if not math.isfinite(value):
            return False
        if self.valid_range is None:
            return True
        return self.valid_range[0] <= value <= self.valid_range[1]


class ModbusProfile(BaseModel):
    """A device's register map as data (``profiles/modbus/<name>.yaml``).

    ``addressing`` says how the vendor's numbering became the 0-based addresses used here;
    ``max_read`` is the most registers the device answers in one read (≤ 125); ``max_gap`` the unused
    registers a read may span to join fields (a device may refuse reads over holes in its map).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    description: str = ""
    source: RegisterSource
    addressing: str = Field(min_length=1)
    byte_order: ByteOrder = "ABCD"
    max_read: int = Field(MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)
    max_gap: int = Field(DEFAULT_MAX_GAP, ge=0, le=MAX_READ_REGISTERS - 1)
    fields: list[ModbusField] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for f in self.fields:
            if f.name in seen:
                raise ValueError(f"field name {f.name!r} appears twice")
            seen.add(f.name)
        return self


def list_profiles() -> list[str]:
    """Names of the shipped Modbus profiles (``profiles/modbus/*.yaml``), sorted."""
    directory = importlib.resources.files("dcpue.ingest").joinpath(*PROFILE_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in directory.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> ModbusProfile:
    """Load a shipped profile by name, or a profile YAML file by path (``*.yaml``/``*.yml`` or with a ``/``).

    Raises :class:`~dcpue.errors.ConfigError` naming the file, the field and the problem.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        return _load_profile_file(Path(text), expect_name=None)
    shipped = list_profiles()
    if text not in shipped:
        raise ConfigError(f"unknown Modbus profile {text!r} (shipped: {', '.join(shipped)}; or give a path to a "
                          "profile YAML file)")
    resource = importlib.resources.files("dcpue.ingest").joinpath(*PROFILE_DIR, f"{text}.yaml")
    with importlib.resources.as_file(resource) as path:
        return _load_profile_file(path, expect_name=text)


def _load_profile_file(path: Path, expect_name: str | None) -> ModbusProfile:
    data = read_yaml(path, "Modbus profile")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a Modbus profile must be a mapping, got {type(data).__name__}")
    try:
        profile = ModbusProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid Modbus profile: {_explain(exc, data)}") from None
    if expect_name is not None and profile.name != expect_name:
        raise ConfigError(f"{path}: profile name {profile.name!r} differs from its file name {expect_name!r}")
    return profile


def _explain(exc: ValidationError, data: Any) -> str:
    """Validation errors as ``fields[3] (active_power_total_w).type: <problem>``, separated by ``; ``."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        where = []
        for i, part in enumerate(loc):
            if isinstance(part, int) and i > 0 and loc[i - 1] == "fields":
                where[-1] = f"fields[{part}]"
                raw = data.get("fields") if isinstance(data, dict) else None
                if isinstance(raw, list) and part < len(raw) and isinstance(raw[part], dict) and "name" in raw[part]:
                    where[-1] += f" ({raw[part]['name']})"
            else:
                where.append(str(part))
        lines.append(f"{'.'.join(where) or '(top level)'}: {err['msg']}")
    return "; ".join(lines)


# --- read planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers of ``register_type`` from ``address`` on ``unit_id``."""

    unit_id: int
    register_type: str
    address: int
    count: int
    fields: tuple[ModbusField, ...]

    def __str__(self) -> str:
        return f"unit {self.unit_id} {self.register_type} registers {self.address}..{self.address + self.count - 1}"

    def __repr__(self) -> str:
        names = ", ".join(f.name for f in self.fields)
        return f"ReadBlock({self}, fields: {names})"


def plan_reads(
    fields: Iterable[ModbusField],
    unit_id: int = 1,
    max_gap: int = DEFAULT_MAX_GAP,
    max_count: int = MAX_READ_REGISTERS,
) -> list[ReadBlock]:
    """Group fields into as few contiguous reads as possible, per (unit id, register type).

    Two fields share a read when the unused registers between them are at most ``max_gap`` and the read
    stays within ``max_count`` registers (≤ 125). ``unit_id`` applies to fields without their own.
    Blocks come out ordered by unit id, register type and address; greedy left-to-right is optimal here.
    """
    if not 1 <= max_count <= MAX_READ_REGISTERS:
        raise ValueError(f"max_count must be within 1..{MAX_READ_REGISTERS}, got {max_count}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    keyed = sorted(
        ((unit_id if f.unit_id is None else f.unit_id, f.register_type, f.address, i, f) for i, f in enumerate(fields)),
        key=lambda t: t[:4],
    )
    blocks: list[ReadBlock] = []
    for (unit, rtype), group in itertools.groupby(keyed, key=lambda t: t[:2]):
        members: list[ModbusField] = []
        start = end = 0
        for *_, address, _, f in group:
            if members and (address - end > max_gap or max(end, address + f.words) - start > max_count):
                blocks.append(ReadBlock(unit, rtype, start, end - start, tuple(members)))
                members = []
            if not members:
                start = end = address
            members.append(f)
            end = max(end, address + f.words)
        blocks.append(ReadBlock(unit, rtype, start, end - start, tuple(members)))
    return blocks


# --- first-read sanity check -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeProblem:
    """A value a correctly configured device would not report, with what the other byte orders give.

    ``alternatives`` are the (byte order, value) pairs of the other orders that decode to a plausible
    value; when there is one, the configured byte/word order is almost certainly wrong.
    """

    field: str
    value: float
    valid_range: tuple[float, float] | None
    unit: str
    register_type: str
    address: int
    data_type: str
    byte_order: str
    tiny: bool
    alternatives: tuple[tuple[str, float], ...]

    def message(self, device: str = "") -> str:
        """The problem in words, with what to do about it."""
        where = f"{self.register_type} register {self.address} ({self.data_type}, byte order {self.byte_order})"
        prefix = f"device {device!r}: " if device else ""
        if math.isnan(self.value):
            what = "is not a number (meters send NaN for a quantity they do not measure, or the order is wrong)"
        elif self.tiny:
            what = (f"is a {self.data_type} nearer 0 than {TINY_FLOAT:g} yet not 0 (no meter resolves that; "
                    "swapped bytes or words typically decode to such values)")
        elif self.valid_range is not None:
            lo, hi = self.valid_range
            what = f"is outside its plausible range [{lo:g}, {hi:g}] {self.unit}".rstrip()
        else:
            what = "is not finite"
        text = f"{prefix}field {self.field!r} read {self.value:.6g} from {where}, which {what}."
        if self.alternatives:
            options = ", ".join(f"with byte_order {order} it reads {value:.6g}" for order, value in self.alternatives)
            best = self.alternatives[0][0]
            text += (f" The byte/word order is probably wrong: {options}, which is plausible; set "
                     f"`byte_order: {best}` on the device (or on this field).")
        else:
            text += (" No other byte order gives a plausible value either: check the register type, the "
                     "address (vendor maps often number registers from 1: try one lower) and the scale.")
        return text

    def __str__(self) -> str:
        return self.message()


def sanity_check(field: ModbusField, registers: Sequence[int], byte_order: str | None = None) -> RangeProblem | None:
    """Check one field's registers: a :class:`RangeProblem` if its value is implausible, else None.

    Implausible: outside ``field.range``, NaN, or a float whose raw magnitude is below
    :data:`TINY_FLOAT` but not 0. A float decoded in the wrong byte/word order has an essentially random
    exponent: most land far above any range or in that tiny band (which a range including 0 would let
    through); some land inside the range and cannot be told from a real reading, so the check catches
    most wrong orders, not all — which is why it reports every field of the first read. ``byte_order``
    defaults to the field's own, else ABCD.
    """
    order = byte_order or field.byte_order or "ABCD"
    raw = decode_registers(list(registers), field.type, order)
    value = raw * field.scale + field.offset
    tiny = _tiny(raw, field.type)
    if field.plausible(value) and not tiny:
        return None
    spelled = byte_order_spelling(order, field.type)
    alternatives = []
    for other in _orders_for(field.type):
        if other == spelled:
            continue
        other_raw = decode_registers(list(registers), field.type, other)
        other_value = other_raw * field.scale + field.offset
        if field.plausible(other_value) and not _tiny(other_raw, field.type):
            alternatives.append((other, other_value))
    return RangeProblem(field=field.name, value=value, valid_range=field.valid_range, unit=field.unit,
                        register_type=field.register_type, address=field.address, data_type=field.type,
                        byte_order=spelled, tiny=tiny, alternatives=tuple(alternatives))


def suggest_byte_order(fields: Sequence[ModbusField],
                       registers: dict[str, Sequence[int]]) -> tuple[str, int, int] | None:
    """A device-wide byte order that makes more fields plausible than the configured ones, if any.

    ``registers`` maps field names to their registers. Returns ``(byte order, fields plausible with it,
    fields plausible as configured)``, or None when no order beats the configuration. All of a device's
    fields normally share one order, so this tells a wrong order from a few odd values.
    """
    configured = sum(sanity_check(f, registers[f.name], f.byte_order) is None for f in fields)
    best: tuple[str, int] | None = None
    for order in _orders_for("float32"):
        score = sum(sanity_check(f, registers[f.name], order) is None for f in fields)
        if score > configured and (best is None or score > best[1]):
            best = (order, score)
    return None if best is None else (best[0], best[1], configured)


def _tiny(raw: float, data_type: str) -> bool:
    """A nonzero float below :data:`TINY_FLOAT` in magnitude (raw, before scale)."""
    return data_type.startswith("float") and raw != 0 and abs(raw) < TINY_FLOAT


# --- device configuration --------------------------------------------------------------------------------


class ModbusDeviceConfig(DeviceConfig):
    """A Modbus TCP device: where it is and which registers to read.

    ``profile`` is a shipped profile name (:func:`list_profiles`) or a path to a profile YAML file;
    ``fields`` add fields or replace the profile's field of the same name (a whole definition each).
    ``byte_order`` replaces the profile's default byte order (fields that set their own keep it);
    ``max_gap`` replaces the profile's (:func:`plan_reads`). The profile is loaded and checked when the
    config is built, so a bad name or file fails at start-up, not at the first poll.
    """

    protocol: Literal["modbus"] = "modbus"
    host: str = Field(min_length=1)
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    profile: str | None = None
    fields: list[ModbusField] = Field(default_factory=list)
    byte_order: ByteOrder | None = None
    max_gap: int | None = Field(None, ge=0, le=MAX_READ_REGISTERS - 1)

    example_url: ClassVar[str] = "modbus://192.0.2.10:502/1?profile=eastron-sdm630"

    _profile: ModbusProfile | None = PrivateAttr(None)
    _resolved: tuple[ModbusField, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        profile = None
        if self.profile is not None:
            try:
                profile = load_profile(self.profile)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        elif not self.fields:
            raise ValueError(f"modbus device {self.name!r}: give a `profile` (shipped: {', '.join(list_profiles())}) "
                             "or inline `fields`")
        by_name = {f.name: f for f in (profile.fields if profile else [])}
        seen: set[str] = set()
        for f in self.fields:
            if f.name in seen:
                raise ValueError(f"modbus device {self.name!r}: field {f.name!r} is defined twice")
            seen.add(f.name)
            by_name[f.name] = f  # a device's own definition replaces the profile's
        default_order = self.byte_order or (profile.byte_order if profile else "ABCD")
        self._profile = profile
        self._resolved = tuple(
            f.model_copy(update={"byte_order": f.byte_order or default_order,
                                 "unit_id": self.unit_id if f.unit_id is None else f.unit_id})
            for f in by_name.values()
        )
        unknown = sorted(set(self.points) - set(by_name))
        if unknown:
            raise ValueError(f"modbus device {self.name!r}: points name unknown field(s) {', '.join(unknown)} "
                             f"(fields: {', '.join(by_name)})")
        return self

    @property
    def profile_data(self) -> ModbusProfile | None:
        """The loaded profile, if the device uses one."""
        return self._profile

    @property
    def resolved_fields(self) -> tuple[ModbusField, ...]:
        """Every field read from the device, with ``byte_order`` and ``unit_id`` filled in."""
        return self._resolved

    def declared_unit(self, field: str) -> str | None:
        """The unit the profile (or an inline field) gives ``field``."""
        return next((f.unit for f in self._resolved if f.name == field), None)

    @property
    def effective_max_gap(self) -> int:
        """The ``max_gap`` read planning uses [registers]."""
        if self.max_gap is not None:
            return self.max_gap
        return self._profile.max_gap if self._profile else DEFAULT_MAX_GAP

    @property
    def max_read(self) -> int:
        """The most registers one read asks for (the profile's limit, else 125)."""
        return self._profile.max_read if self._profile else MAX_READ_REGISTERS

    def plan(self) -> list[ReadBlock]:
        """The read requests one poll of this device makes."""
        return plan_reads(self._resolved, self.unit_id, self.effective_max_gap, self.max_read)

    def make_reader(self) -> ModbusReader:
        """A :class:`ModbusReader` for this device (no I/O until :meth:`ModbusReader.open`)."""
        _import_pymodbus()
        return ModbusReader(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A config from ``modbus://host[:port][/unit_id][?profile=NAME&byte_order=CDAB&...]`` (or ``modbus+tcp://``).

        Query parameters and ``options`` (which win) set any other config field; ``name`` defaults to one
        built from the address and ``site`` to ``"probe"``.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("modbus", "modbus+tcp"):
            raise ValueError(f"not a Modbus URL: {url!r} (expected {cls.example_url})")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r} (expected {cls.example_url})")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the path of {url!r} must be the unit id (0..255), got {path!r}")
        values: dict[str, Any] = {"host": parts.hostname, "port": port}
        if path:
            values["unit_id"] = int(path)
        values.update(parse_qsl(parts.query, keep_blank_values=False))
        values.update(options)
        unit = values.get("unit_id", 1)
        values.setdefault("name", re.sub(r"[^A-Za-z0-9_.:-]", "_", f"modbus-{parts.hostname}-{port}-{unit}"))
        values.setdefault("site", "probe")
        return cls.model_validate(values)


# --- reader ----------------------------------------------------------------------------------------------


def _import_pymodbus() -> Any:
    try:
        import pymodbus.client
        import pymodbus.exceptions  # noqa: F401  (the reader needs both)
    except ImportError as exc:
        raise missing_extra("pymodbus", "collectors") from exc
    return pymodbus


class ModbusReader:
    """Reads a :class:`ModbusDeviceConfig`'s fields over Modbus TCP (sync pymodbus client).

    Every network operation (the TCP connect, each read request) is bounded by the device's
    ``timeout_s``; one poll makes one request per :class:`ReadBlock`. Failures raise
    :class:`~dcpue.errors.CollectorError` naming device, ``host:port`` and the problem; after a timeout or
    a broken reply the connection is dropped (a late reply must not be taken for the next request's) and
    the next :meth:`read` reconnects.

    Implausible values (:func:`sanity_check`, on every read) are published with ``Quality.BAD``, value
    kept for audit, rather than failing the device: one bad field (a wrong override, a meter quirk) must
    not take the device's good fields down with it, and BAD values never enter a figure. The first
    successful read also records a :class:`RangeProblem` per implausible field in :attr:`problems` and
    logs it once as a warning, with the byte orders that would have decoded it plausibly. When one byte
    order for the whole device makes more fields plausible than the configured ones
    (:func:`suggest_byte_order`), it becomes :attr:`suggested_byte_order` and from then on every field
    whose value that order would change is flagged BAD too: with the device's order wrong, a value that
    merely looks plausible (2 W for 2500 W) is garbage as well. Values equal in every order (zeros) keep
    their quality. The check runs again when the reader is rebuilt with a corrected configuration.
    """

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.config = config
        self.fields = config.resolved_fields
        self.blocks = config.plan()
        self.problems: list[RangeProblem] = []
        self.suggested_byte_order: str | None = None
        self.last_registers: dict[str, tuple[int, ...]] = {}
        self._checked = False
        self._client: Any = None
        self._unit_kw = "device_id"
        self._exceptions: tuple[type[Exception], type[Exception], type[Exception]] | None = None

    def __repr__(self) -> str:
        return f"ModbusReader({self._where()}, {len(self.fields)} fields in {len(self.blocks)} reads)"

    def _where(self) -> str:
        c = self.config
        return f"modbus device {c.name!r} at {c.host}:{c.port} (unit {c.unit_id})"

    def _error(self, problem: str) -> CollectorError:
        return CollectorError(f"{self._where()}: {problem}")

    @property
    def connected(self) -> bool:
        """Whether a connection is open."""
        return self._client is not None

    def open(self) -> None:
        """Connect (idempotent); :class:`~dcpue.errors.CollectorError` if the device cannot be reached."""
        if self._client is not None:
            return
        pymodbus = _import_pymodbus()
        c = self.config
        # the socket is made here, not by pymodbus, whose connect() swallows the reason it failed
        try:
            sock = socket.create_connection((c.host, c.port), timeout=c.timeout_s)
        except ConnectionRefusedError as exc:
            raise self._error(f"connection refused: nothing listens on port {c.port}, or a firewall rejects "
                              "it (Modbus TCP is normally port 502)") from exc
        except TimeoutError as exc:
            raise self._error(f"TCP connect timed out after {c.timeout_s:g} s: host down, unreachable or "
                              "filtered") from exc
        except socket.gaierror as exc:
            raise self._error(f"cannot resolve host {c.host!r}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise self._error(f"cannot connect: {exc.strerror or exc}") from exc
        try:
            client = pymodbus.client.ModbusTcpClient(c.host, port=c.port, timeout=c.timeout_s, retries=0)
        except Exception:
            sock.close()
            raise
        client.socket = sock  # ModbusTcpClient.connect() keeps an existing socket
        params = inspect.signature(client.read_holding_registers).parameters
        self._unit_kw = "device_id" if "device_id" in params else "slave"  # pymodbus < 3.10 says slave=
        ex = pymodbus.exceptions
        self._exceptions = (ex.ConnectionException, ex.ModbusIOException, ex.ModbusException)
        self._client = client

    def close(self) -> None:
        """Drop the connection; idempotent, never raises."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must never raise
                log.debug("modbus close failed device=%s", self.config.name, exc_info=True)

    def read(self) -> list[FieldValue]:
        """Read every field once (connecting first if needed); values in the device's own units."""
        self.open()
        raw_by_field: dict[str, tuple[int, ...]] = {}
        for block in self.blocks:
            registers = self._read_block(block)
            for f in block.fields:
                start = f.address - block.address
                raw_by_field[f.name] = tuple(registers[start:start + f.words])
        self.last_registers = raw_by_field
        values = self._decode(raw_by_field)
        problems = {f.name: sanity_check(f, raw_by_field[f.name], f.byte_order) for f in self.fields}
        if not self._checked:
            self._checked = True
            self._first_read_check([p for p in problems.values() if p is not None], raw_by_field)
        suspect = self.suggested_byte_order
        out = []
        for f in self.fields:
            value = values[f.name]
            bad = problems[f.name] is not None or (
                suspect is not None and _differs(value, raw_by_field[f.name], f, suspect))
            out.append(FieldValue(f.name, value, f.unit, Quality.BAD if bad else Quality.GOOD))
        return out

    def _first_read_check(self, problems: list[RangeProblem], raw_by_field: dict[str, tuple[int, ...]]) -> None:
        self.problems = problems
        for problem in problems:
            log.warning("modbus first-read check: %s", problem.message(self.config.name))
        suggestion = suggest_byte_order(self.fields, raw_by_field) if problems else None
        if suggestion is not None:
            order, score, configured = suggestion
            self.suggested_byte_order = order
            log.warning("modbus first-read check: device %r: byte_order %s makes %d of %d fields plausible "
                        "(as configured: %d); set `byte_order: %s` on the device. Until then every field it "
                        "would change is flagged BAD", self.config.name, order, score, len(self.fields),
                        configured, order)

    def _decode(self, raw_by_field: dict[str, tuple[int, ...]]) -> dict[str, float]:
        """All fields' values, one vectorised decode per (type, byte order)."""
        groups: dict[tuple[str, str], list[ModbusField]] = {}
        for f in self.fields:
            groups.setdefault((f.type, f.byte_order or "ABCD"), []).append(f)
        values: dict[str, float] = {}
        for (data_type, order), members in groups.items():
            matrix = np.array([raw_by_field[f.name] for f in members], dtype=np.int64)
            raw = decode_registers(matrix, data_type, order)
            scaled = raw * np.array([f.scale for f in members]) + np.array([f.offset for f in members])
            values.update(zip((f.name for f in members), scaled.tolist(), strict=True))
        return values

    def _read_block(self, block: ReadBlock) -> list[int]:
        assert self._client is not None and self._exceptions is not None
        connection_error, io_error, modbus_error = self._exceptions
        what = f"{block} ({', '.join(f.name for f in block.fields)})"
        method = (self._client.read_holding_registers if block.register_type == "holding"
                  else self._client.read_input_registers)
        try:
            response = method(block.address, count=block.count, **{self._unit_kw: block.unit_id})
        except io_error as exc:
            self.close()
            if "no response" in str(exc).lower():
                raise self._error(f"no response within {self.config.timeout_s:g} s reading {what} (a gateway "
                                  f"stays silent for a unit id it does not know: is unit {block.unit_id} "
                                  "right?)") from exc
            raise self._error(f"invalid response reading {what}: {exc}") from exc
        except connection_error as exc:
            self.close()
            raise self._error(f"connection lost reading {what}: {exc}") from exc
        except modbus_error as exc:
            self.close()
            raise self._error(f"Modbus error reading {what}: {exc}") from exc
        except OSError as exc:
            self.close()
            raise self._error(f"network error reading {what}: {exc.strerror or exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            raise self._error(f"Modbus exception {code} {MODBUS_EXCEPTIONS.get(code, 'UNKNOWN')} reading "
                              f"{what}{_exception_hint(code, block)}")
        registers = list(getattr(response, "registers", None) or [])
        if len(registers) != block.count:
            self.close()
            kind = "short" if len(registers) < block.count else "oversized"
            raise self._error(f"{kind} response reading {what}: asked for {block.count} registers, "
                              f"got {len(registers)}")
        return registers


def _differs(value: float, registers: Sequence[int], f: ModbusField, byte_order: str) -> bool:
    """Whether ``f``'s registers decode to something other than ``value`` in ``byte_order``."""
    other = decode_registers(list(registers), f.type, byte_order, f.scale, f.offset)
    return not (other == value or (math.isnan(other) and math.isnan(value)))


def _exception_hint(code: int | None, block: ReadBlock) -> str:
    if code == 2:
        return (": the device has no such registers; check the register type (holding/input), the addresses "
                "(0-based here) and the profile, or lower max_gap so reads do not span holes in the map")
    if code == 1:
        fc = 3 if block.register_type == "holding" else 4
        return f": the device does not support reading {block.register_type} registers (function code {fc})"
    if code in (10, 11):
        return f": the gateway cannot reach unit {block.unit_id}; check unit_id and the serial side of the gateway"
    return ""
