"""MQTT collector: subscribe to a broker and turn the messages devices push into :class:`FieldValue` s.

Push, not poll: :meth:`MqttReader.open` connects and subscribes, paho's own network thread receives
messages (and reconnects with backoff) into a bounded buffer, and each :meth:`MqttReader.read` drains
what arrived since the previous call. With QoS 1 and a persistent session (``clean_session: false``,
the default) the broker keeps messages published while the collector is away and delivers them when
it reconnects. See ``docs/collectors/mqtt.md`` for the configuration reference and delivery guarantees.

Decoding is pure and separate from the transport: :func:`parse_payload` turns one payload into a value
and an optional device timestamp, or raises :class:`ValueError` with the reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import ssl
import string
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from dcpue.errors import CollectorError, missing_extra
from dcpue.ingest.device import DeviceConfig, FieldValue
from dcpue.model import UNITS, Quality
from dcpue.secrets import resolve_secret_files

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = [
    "DROPPED_FIELD",
    "MALFORMED_FIELD",
    "MalformedPayload",
    "MqttDeviceConfig",
    "MqttReader",
    "MqttSubscription",
    "field_name",
    "parse_path",
    "parse_payload",
    "parse_time",
    "topic_matches",
]

DROPPED_FIELD = "mqtt_dropped_total"
"""Field with the number of messages dropped because the buffer was full (cumulative, unit "")."""
MALFORMED_FIELD = "mqtt_malformed_total"
"""Field with the number of payloads that could not be decoded (cumulative, unit "")."""

UNIT_SPELLINGS = frozenset({""} | {unit for spellings in UNITS.values() for unit in spellings})
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_PATH_TOKEN = re.compile(r"""\.([^.\[\]'"]+)|\[(-?\d+)\]|\[(['"])(.*?)\3\]""")
# plausible device clocks; a device whose clock was never set reports 1970 (or uptime seconds)
_EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
_LATEST_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
_PAYLOAD_KEEP = 4096  # characters of a malformed payload kept for the dead letter


# --- pure helpers: topics, paths, payloads ---------------------------------------------------------------


def validate_topic_filter(topic_filter: str) -> str:
    """Check an MQTT topic filter (``+`` one level, ``#`` the rest, last); raise :class:`ValueError` if invalid."""
    if not topic_filter or len(topic_filter.encode()) > 65535 or "\x00" in topic_filter:
        raise ValueError(f"invalid topic filter {topic_filter!r}: empty, too long or contains NUL")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (MQTT rules: wildcards do not match ``$``-topics at level 0)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, got = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


def _template_indices(template: str) -> list[int | None]:
    """The placeholders of a field template: ``{n}`` → n, ``{topic}`` → None; ValueError on anything else."""
    found: list[int | None] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid field template {template!r}: {exc}") from None
    for literal, name, spec, conversion in parsed:
        if _NAME_CHARS.search(literal):
            raise ValueError(f"invalid field template {template!r}: only letters, digits and _ . : - are allowed")
        if name is None:
            continue
        if spec or conversion or not (name.isdigit() or name == "topic"):
            raise ValueError(f"invalid field template {template!r}: placeholders are {{n}} (topic level n, "
                             f"0-based) or {{topic}} (the whole topic), got {{{name}}}")
        found.append(None if name == "topic" else int(name))
    return found


def field_name(template: str, topic: str) -> str | None:
    """The field name ``template`` gives for ``topic``, or None when the topic lacks a level it names.

    ``{n}`` is topic level n (0-based), ``{topic}`` the whole topic with ``/`` as ``_``; characters
    other than letters, digits and ``_ . : -`` in the substituted levels become ``_``.
    """
    levels = topic.split("/")
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        if name == "topic":
            parts.append(_NAME_CHARS.sub("_", topic.replace("/", "_")))
        elif int(name) < len(levels) and levels[int(name)]:
            parts.append(_NAME_CHARS.sub("_", levels[int(name)]))
        else:
            return None
    return "".join(parts)


def parse_path(path: str) -> tuple[str | int, ...]:
    """Parse a JSON path such as ``$.data.power``, ``data.power``, ``$.phases[1].w`` or ``$['a b'].c``.

    Returns the keys (str) and list indices (int) to follow; ``$`` alone is the whole document.
    """
    text = path.strip()
    rest = text[1:] if text.startswith("$") else text
    if rest and rest[0] not in ".[":
        rest = "." + rest
    keys: list[str | int] = []
    pos = 0
    while pos < len(rest):
        match = _PATH_TOKEN.match(rest, pos)
        if match is None:
            raise ValueError(f"invalid JSON path {path!r} at {rest[pos:]!r} "
                             "(use $.key.sub, key.sub, [0] for list items, ['odd key'] for other names)")
        dotted, index, _, quoted = match.groups()
        keys.append(dotted if dotted is not None else int(index) if index is not None else quoted)
        pos = match.end()
    if not text:
        raise ValueError("empty JSON path (use $ for the whole document)")
    return tuple(keys)


def _extract(doc: Any, keys: tuple[str | int, ...], path: str) -> Any:
    """Follow ``keys`` into ``doc``; ValueError naming where the path stops."""
    at = "$"
    for key in keys:
        if isinstance(key, int):
            if not isinstance(doc, list) or not -len(doc) <= key < len(doc):
                raise ValueError(f"{path} not found: {at} has no item [{key}]")
            doc, at = doc[key], f"{at}[{key}]"
        else:
            if not isinstance(doc, dict) or key not in doc:
                raise ValueError(f"{path} not found: {at} has no key {key!r}")
            doc, at = doc[key], f"{at}.{key}"
    return doc


def _to_number(obj: Any, what: str) -> float:
    """A finite float from a JSON value (number, bool, numeric string); ValueError otherwise."""
    if isinstance(obj, bool):
        return 1.0 if obj else 0.0
    if isinstance(obj, int | float):
        try:
            value = float(obj)
        except OverflowError:  # a JSON integer beyond float range
            value = math.inf
    elif isinstance(obj, str):
        try:
            value = float(obj.strip())
        except ValueError:
            raise ValueError(f"{what} is {_preview(obj)!r}, not a number") from None
    else:
        kind = {dict: "an object", list: "an array", type(None): "null"}.get(type(obj), type(obj).__name__)
        raise ValueError(f"{what} is {kind}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{what} is not finite ({value})")
    return value


def parse_time(obj: Any) -> int:
    """A device timestamp as epoch milliseconds [ms, UTC].

    Numbers (or numeric strings) are epoch seconds, or milliseconds / microseconds / nanoseconds when
    their size says so (≥ 1e11 / 1e14 / 1e17); strings are ISO 8601 (``2024-05-01T12:00:00Z``; no
    offset means UTC). Times before 2000 or after 2100 are rejected: the device clock is not set.
    """
    if isinstance(obj, str) and not re.fullmatch(r"\s*[-+]?\d+(\.\d*)?([eE][-+]?\d+)?\s*", obj):
        try:
            moment = datetime.fromisoformat(obj.strip())
        except ValueError:
            raise ValueError(f"time {_preview(obj)!r} is neither epoch seconds/ms nor ISO 8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = round(moment.timestamp() * 1000)
    else:
        number = _to_number(obj, "time")
        if isinstance(obj, bool):
            raise ValueError("time is a boolean, not a timestamp")
        size = abs(number)
        scale = 1e-6 if size >= 1e17 else 1e-3 if size >= 1e14 else 1.0 if size >= 1e11 else 1e3
        ms = round(number * scale)
    if not _EARLIEST_MS <= ms < _LATEST_MS:
        try:
            when = datetime.fromtimestamp(ms / 1000, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            when = "out of range"
        shown = repr(_preview(obj)) if isinstance(obj, str) else _preview(obj)
        raise ValueError(f"time {shown} is {when}, outside 2000..2100 (device clock not set?)")
    return ms


def parse_payload(subscription: MqttSubscription, payload: bytes) -> tuple[float, int | None]:
    """Decode one payload as ``subscription`` says: ``(value, device time [ms, UTC] or None)``.

    Raises :class:`ValueError` with the reason when the payload is not usable (not UTF-8, not a number,
    not JSON, path missing, value not finite, time unreadable).
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8 text") from None
    if subscription.format == "number":
        return _to_number(text, "payload"), None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON ({exc})") from None
    except RecursionError:  # a hostile payload ([[[[…); it must not take the other buffered messages down
        raise ValueError("payload is JSON nested too deeply") from None
    value = _to_number(_extract(doc, parse_path(subscription.value_path or "$"), subscription.value_path or "$"),
                       f"value at {subscription.value_path}")
    if subscription.time_path is None:
        return value, None
    return value, parse_time(_extract(doc, parse_path(subscription.time_path), subscription.time_path))


def _preview(obj: object, limit: int = 60) -> str:
    text = str(obj)
    return text if len(text) <= limit else text[:limit] + "…"


# --- configuration ------------------------------------------------------------------------------------


class MqttSubscription(BaseModel):
    """One topic filter and how its payloads become a field.

    ``field`` may name topic levels: with topic ``dc/+/rack/+/inlet``, ``rack_{3}_inlet_temp_c`` turns
    ``dc/bj1/rack/A01/inlet`` into ``rack_A01_inlet_temp_c``; ``{topic}`` is the whole topic.
    Several subscriptions may share a topic filter (e.g. one per JSON key of the same payload).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    topic: str  # topic filter: + matches one level, # (last) all the rest
    field: str = Field(min_length=1, max_length=128)
    format: Literal["number", "json"] = "number"
    value_path: str | None = None  # format json: where the value is ($.data.power, data.power, $.phases[0])
    time_path: str | None = None  # format json: device time, epoch s/ms or ISO 8601
    unit: str = ""  # as dcpue.model.UNITS spells it (W, kW, kWh, °C, %, m3/h, ...) or "" for none

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        return validate_topic_filter(value)

    @field_validator("value_path", "time_path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, value: str) -> str:
        if value not in UNIT_SPELLINGS:
            accepted = ", ".join(repr(u) for u in sorted(UNIT_SPELLINGS))
            raise ValueError(f"unknown unit {value!r} (accepted: {accepted})")
        return value

    @model_validator(mode="after")
    def _check_mapping(self) -> Self:
        if self.format == "json" and self.value_path is None:
            raise ValueError("format 'json' needs value_path (e.g. '$.data.power'; '$' for a bare JSON number)")
        if self.format == "number" and (self.value_path is not None or self.time_path is not None):
            raise ValueError("value_path and time_path need format 'json' (format 'number' takes the whole payload)")
        levels = self.topic.split("/")
        for index in _template_indices(self.field):
            if index is not None and levels[-1] != "#" and index >= len(levels):
                raise ValueError(f"field {self.field!r} names topic level {{{index}}}, but topic {self.topic!r} "
                                 f"has levels 0..{len(levels) - 1}")
        return self


class MqttDeviceConfig(DeviceConfig):
    """A broker and the topics one logical device publishes on.

    Defaults: port 1883 (8883 with ``tls``), QoS 1 with a persistent session (``clean_session`` false;
    true by default with QoS 0), ``client_id`` ``dcpue-<site>-<name>``, which must be unique on the
    broker and stable across restarts for the broker to keep the session.
    """

    protocol: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("", max_length=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # read at start
    tls: bool = False
    ca_file: str | None = None  # PEM bundle to verify the broker with; None: the system's CAs
    verify_tls: bool = True
    qos: Literal[0, 1] = 1
    clean_session: bool = False
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0, le=3600)  # first reconnect delay, doubled up to reconnect_max_s [s]
    reconnect_max_s: float = Field(60.0, gt=0, le=3600)
    buffer_size: int = Field(10_000, ge=1, le=10_000_000)  # messages held between reads; then the oldest go
    malformed_keep: int = Field(100, ge=0, le=100_000)  # last N malformed payloads kept for dead-lettering
    accept_retained: bool = False  # take retained messages replayed at subscribe even without time_path
    read_wait_s: float = Field(0.0, ge=0)  # read() first collects for this long [s]; dcpue probe's window
    subscriptions: list[MqttSubscription] = Field(min_length=1)

    example_url: ClassVar[str] = "mqtt://user:pass@broker:1883/dc/+/pdu/+/power?format=json&value_path=$.power&unit=W"

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "port" not in data and data.get("tls") in (True, "true", "1", 1):
                data["port"] = 8883
            if "clean_session" not in data and data.get("qos") in (0, "0"):
                data["clean_session"] = True
            if not data.get("client_id") and data.get("name") and data.get("site"):
                data["client_id"] = f"dcpue-{data['site']}-{data['name']}"
        return data

    @model_validator(mode="after")
    def _check_mqtt(self) -> Self:
        resolve_secret_files(self, "password")
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        if not self.tls and (self.ca_file is not None or not self.verify_tls):
            raise ValueError("ca_file and verify_tls need tls: true")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s ({self.reconnect_min_s}) exceeds reconnect_max_s "
                             f"({self.reconnect_max_s})")
        if self.read_wait_s > self.timeout_s:
            raise ValueError(f"read_wait_s ({self.read_wait_s}) must not exceed timeout_s ({self.timeout_s})")
        return self

    @property
    def broker(self) -> str:
        """``host:port`` of the broker."""
        return f"{self.host}:{self.port}"

    def for_probe(self) -> Self:
        """This device as ``dcpue probe --device`` should read it: same broker and topics, but a throwaway
        clean session with a random client id (probing with the collector's own id would take over its
        session and consume its queued messages), retained messages accepted, and ``read()`` collecting
        for ``timeout_s``."""
        return self.model_validate(self.model_dump() | _probe_settings(self.timeout_s))

    def declared_unit(self, field: str) -> str | None:
        """The unit of the first subscription whose field template can produce ``field``."""
        for sub in self.subscriptions:
            pattern = "".join(re.escape(literal) + ("" if name is None else r"[A-Za-z0-9_.:-]+")
                              for literal, name, _, _ in string.Formatter().parse(sub.field))
            if re.fullmatch(pattern, field):
                return sub.unit
        return None

    def make_reader(self) -> MqttReader:
        """A reader for this device (no I/O until :meth:`MqttReader.open`)."""
        return MqttReader(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A config for ``dcpue probe``: ``mqtt[s]://[user:pass@]host[:port]/topic/filter?format=json&value_path=…``.

        Query keys (or ``options``): ``field`` (default ``{topic}``), ``format``, ``value_path`` (implies
        json), ``time_path``, ``unit``, ``qos``, ``client_id``, ``ca_file``, ``verify_tls``; ``options``
        may also set any device field (``name``, ``site``, ``timeout_s``, ...). A probe uses a throwaway
        clean session and a random client id, accepts retained messages and collects for ``timeout_s``.
        ``#`` may be written as is or as ``%23``.
        """
        parts = urlsplit(url.replace("#", "%23"))
        shown = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if _port(parts) else ''}{parts.path}"
        if parts.scheme.lower() not in ("mqtt", "mqtts"):
            raise ValueError(f"{shown}: scheme must be mqtt:// or mqtts:// (TLS)")
        if not parts.hostname:
            raise ValueError(f"{shown}: no broker host")
        topic = unquote(parts.path[1:])
        if not topic:
            raise ValueError(f"{shown}: no topic filter (mqtt://host:port/<topic filter>)")
        sub_keys = {"field", "format", "value_path", "time_path", "unit"}
        device_keys = {"qos", "client_id", "ca_file", "verify_tls"}
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(query) - sub_keys - device_keys
        if unknown:
            raise ValueError(f"{shown}: unknown query keys {sorted(unknown)} (accepted: "
                             f"{', '.join(sorted(sub_keys | device_keys))})")
        query.update(options)
        sub = {"topic": topic, "field": "{topic}", **{k: query.pop(k) for k in sub_keys & set(query)}}
        if "value_path" in sub:
            sub.setdefault("format", "json")
        if "qos" in query:
            query["qos"] = int(query["qos"])
        timeout_s = float(query.get("timeout_s", cls.model_fields["timeout_s"].default))
        data: dict[str, Any] = {
            "name": _NAME_CHARS.sub("_", f"mqtt-{parts.hostname}")[:128],
            "site": "probe",
            "host": parts.hostname,
            "tls": parts.scheme.lower() == "mqtts",
            "interval_s": max(timeout_s, cls.model_fields["interval_s"].default),
            "subscriptions": [sub],
            **_probe_settings(timeout_s),
        }
        if _port(parts):
            data["port"] = parts.port
        if parts.username:
            data["username"] = unquote(parts.username)
        if parts.password is not None:
            data["password"] = unquote(parts.password)
        data.update(query)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"{shown}: {exc}") from None


def _probe_settings(timeout_s: float) -> dict[str, Any]:
    # a throwaway session: a probe must neither take over nor consume a running collector's session
    return {"clean_session": True, "client_id": f"dcpue-probe-{uuid.uuid4().hex[:12]}", "accept_retained": True,
            "read_wait_s": timeout_s}


def _port(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in MQTT URL: {exc}") from None


# --- the reader ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MalformedPayload:
    """A message that could not be decoded: where it came from, what it was, why it failed."""

    topic: str
    payload: bytes
    reason: str
    received_ms: int  # arrival time [ms, UTC]
    field: str | None  # the field it was for, when the topic gave one

    def letter(self) -> tuple[str, dict[str, object]]:
        """``(reason, JSON-able record)`` for the dead-letter topic; the payload as text (or hex), capped."""
        try:
            body: dict[str, object] = {"payload": self.payload.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"payload_hex": self.payload.hex()}
        key = next(iter(body))
        if len(str(body[key])) > _PAYLOAD_KEEP:
            body = {key: str(body[key])[:_PAYLOAD_KEEP], "payload_truncated": True}
        return self.reason, {"topic": self.topic, "field": self.field, "ts": self.received_ms, **body}


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise missing_extra("paho-mqtt", "collectors") from exc
    return mqtt


def _describe_os_error(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return "connection failed"


class MqttReader:
    """A subscription to one device's topics; see :class:`dcpue.ingest.device.DeviceReader`.

    Thread-safe between paho's network thread (which buffers messages) and the caller of :meth:`read`.
    """

    def __init__(self, config: MqttDeviceConfig) -> None:
        _paho()  # fail at configuration time, not at the first poll, when the extra is missing
        self.config = config
        self._filters = list(dict.fromkeys(s.topic for s in config.subscriptions))
        self._cond = threading.Condition()
        self._client: paho.Client | None = None
        self._buffer: deque[tuple[str, bytes, bool, int]] = deque(maxlen=config.buffer_size)
        self._bad: deque[MalformedPayload] = deque(maxlen=config.malformed_keep)
        self._untaken: deque[MalformedPayload] = deque(maxlen=config.malformed_keep)
        self._dropped = 0
        self._malformed_total = 0
        self._retained_skipped = 0
        self._connected = False
        self._subscribed = False
        self._session_present: bool | None = None
        self._problem: str | None = None
        self._closing = False

    # -- public state --

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker now."""
        with self._cond:
            return self._connected

    @property
    def session_present(self) -> bool | None:
        """Whether the broker resumed a stored session at the last connect (None before the first)."""
        with self._cond:
            return self._session_present

    @property
    def dropped(self) -> int:
        """Messages dropped (oldest first) because the buffer held ``buffer_size`` unread ones."""
        with self._cond:
            return self._dropped

    @property
    def malformed_total(self) -> int:
        """Payloads that could not be decoded since :meth:`open`."""
        with self._cond:
            return self._malformed_total

    @property
    def retained_skipped(self) -> int:
        """Retained messages replayed by the broker and skipped (no time_path, ``accept_retained`` false)."""
        with self._cond:
            return self._retained_skipped

    @property
    def buffered(self) -> int:
        """Messages received and not yet read."""
        with self._cond:
            return len(self._buffer)

    def malformed(self) -> list[MalformedPayload]:
        """The last ``malformed_keep`` payloads that could not be decoded, oldest first (not cleared)."""
        with self._cond:
            return list(self._bad)

    def take_malformed(self) -> list[tuple[str, dict[str, object]]]:
        """Malformed payloads not taken before, as ``(reason, record)`` pairs for the dead-letter topic."""
        with self._cond:
            taken, self._untaken = list(self._untaken), deque(maxlen=self.config.malformed_keep)
        return [bad.letter() for bad in taken]

    # -- lifecycle --

    def open(self) -> None:
        """Connect, log in and subscribe, waiting up to ``timeout_s``; raise :class:`CollectorError` on failure.

        Idempotent while open. The network thread keeps the connection up afterwards (reconnecting with
        backoff from ``reconnect_min_s`` to ``reconnect_max_s``).
        """
        if self._client is not None:
            return
        mqtt = _paho()
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout_s
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             clean_session=cfg.clean_session, protocol=mqtt.MQTTv311, reconnect_on_failure=True)
        client.suppress_exceptions = True  # a failing callback must not end the network thread
        client.connect_timeout = cfg.timeout_s
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        if cfg.username is not None:
            client.username_pw_set(cfg.username, None if cfg.password is None else cfg.password.get_secret_value())
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca_file, cert_reqs=ssl.CERT_REQUIRED if cfg.verify_tls else ssl.CERT_NONE)
            except (OSError, ValueError) as exc:
                raise CollectorError(self._message(f"cannot set up TLS with ca_file {cfg.ca_file!r}: {exc}")) from exc
            client.tls_insecure_set(not cfg.verify_tls)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        with self._cond:
            self._closing = False
            self._connected = self._subscribed = False
            self._problem = None
        try:  # the first TCP/TLS connect here, so an unreachable broker fails at once, with its cause
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except OSError as exc:
            raise CollectorError(self._message(f"broker {cfg.broker} unreachable: {_describe_os_error(exc)}")) from exc
        self._client = client
        client.loop_start()
        with self._cond:
            done = self._cond.wait_for(lambda: self._subscribed or self._problem is not None,
                                       max(deadline - time.monotonic(), 0.0))
            problem = self._problem if done else f"broker {cfg.broker} did not answer within {cfg.timeout_s:g} s"
            ok = self._subscribed and self._problem is None
        if not ok:
            self.close()
            raise CollectorError(self._message(problem or "not connected"))

    def read(self) -> list[FieldValue]:
        """Everything that arrived since the last call, plus the drop and malformed counters.

        Each value carries ``ts_ms``: the payload's own time when ``time_path`` maps one, else its
        arrival time. A payload that does not decode gives NaN flagged ``BAD`` (see :meth:`malformed`).
        Raises :class:`CollectorError` when the client is disconnected (or a subscription was refused)
        and nothing is buffered: messages that arrived before a disconnect are returned first.
        """
        if self._client is None:
            raise CollectorError(self._message("reader is not open"))
        with self._cond:
            if self.config.read_wait_s > 0:
                self._cond.wait_for(lambda: self._closing or self._problem is not None, self.config.read_wait_s)
            arrivals = list(self._buffer)
            self._buffer.clear()
            problem = self._problem
        if not arrivals and problem is not None:
            raise CollectorError(self._message(problem))
        values: list[FieldValue] = []
        for topic, payload, retain, received_ms in arrivals:
            values.extend(self._decode(topic, payload, retain, received_ms))
        with self._cond:
            values.append(FieldValue(DROPPED_FIELD, float(self._dropped), ""))
            values.append(FieldValue(MALFORMED_FIELD, float(self._malformed_total), ""))
        return values

    def close(self) -> None:
        """Disconnect (the broker keeps a persistent session) and stop the network thread; idempotent.

        Messages received but not yet read are not returned after this (they were acknowledged to the
        broker on arrival): read once more before closing to keep them.
        """
        client, self._client = self._client, None
        with self._cond:
            self._closing = True
            self._connected = False
            self._cond.notify_all()
        if client is None:
            return
        with contextlib.suppress(Exception):  # close never raises
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decoding --

    def _decode(self, topic: str, payload: bytes, retain: bool, received_ms: int) -> list[FieldValue]:
        out: list[FieldValue] = []
        for sub in self.config.subscriptions:
            if not topic_matches(sub.topic, topic):
                continue
            if retain and sub.time_path is None and not self.config.accept_retained:
                with self._cond:
                    self._retained_skipped += 1
                continue
            name = field_name(sub.field, topic)
            try:
                if name is None:
                    raise ValueError(f"topic {topic!r} has no level for field template {sub.field!r}")
                value, ts_ms = parse_payload(sub, payload)
            except ValueError as exc:
                self._keep_malformed(MalformedPayload(topic, payload, str(exc), received_ms, name))
                if name is not None:
                    out.append(FieldValue(name, math.nan, sub.unit, Quality.BAD, received_ms))
                continue
            out.append(FieldValue(name, value, sub.unit, Quality.GOOD, received_ms if ts_ms is None else ts_ms))
        return out

    def _keep_malformed(self, bad: MalformedPayload) -> None:
        with self._cond:
            self._malformed_total += 1
            self._bad.append(bad)
            self._untaken.append(bad)

    def _message(self, problem: str) -> str:
        return f"MQTT device {self.config.name!r} (site {self.config.site!r}): {problem}"

    # -- paho callbacks (network thread) --

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        broker = self.config.broker
        if reason.is_failure:
            user = self.config.username
            if reason.value in (134, 135) and user is None:  # MQTT 3.1.1 brokers answer 135 for both
                problem = f"broker {broker}: not authorised: anonymous login refused (set username and password)"
            elif reason.value == 134:
                problem = f"broker {broker}: not authorised: bad user name or password (user {user!r})"
            elif reason.value == 135:
                problem = f"broker {broker}: not authorised: bad user name or password, or user {user!r} not allowed"
            else:
                problem = f"broker {broker} refused the connection: {str(reason).lower()}"
            with self._cond:
                self._connected = False
                self._problem = problem
                first = not self._subscribed
                self._cond.notify_all()
            if first:  # open() fails: end the network thread now rather than after its first reconnect delay
                client.disconnect()
            return
        with self._cond:
            self._connected = True
            self._session_present = bool(flags.session_present)
            self._problem = None
        # always (re)subscribe: covers a session the broker lost and subscriptions changed since the last run
        client.subscribe([(topic, self.config.qos) for topic in self._filters])

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the cause is the exception being handled
        problem = f"broker {self.config.broker} unreachable: {_describe_os_error(sys.exception())}"
        with self._cond:
            self._connected = False
            self._problem = problem
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            if self._connected and not self._closing:
                self._problem = f"connection to broker {self.config.broker} lost ({str(reason).lower()})"
            self._connected = False
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        refused = [topic for topic, reason in zip(self._filters, reasons, strict=False) if reason.is_failure]
        with self._cond:
            if refused:
                self._problem = (f"broker {self.config.broker} refused the subscription to {', '.join(refused)} "
                                 "(check the broker's ACL for this user)")
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        received_ms = time.time_ns() // 1_000_000
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", "replace")
        with self._cond:
            if len(self._buffer) == self._buffer.maxlen:
                self._dropped += 1
            self._buffer.append((topic, bytes(message.payload), bool(message.retain), received_ms))
