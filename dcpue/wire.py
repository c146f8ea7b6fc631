"""Versioned wire format for reading batches, the payload of the readings topic.

One message carries many readings of one site, column-wise, encoded as MessagePack::

    {"schema": "dcpue.readings", "v": 1, "site": "gy-01",
     "point": [str, ...], "ts": [int ms, ...], "value": [float, ...], "quality": [int, ...]}

Decoding validates every record on its own: a malformed record is returned as a
:class:`Reject` with its reason while the rest of the batch is kept. Only a message
that is not a batch at all (not MessagePack, unknown schema or version, columns of
different lengths) raises :class:`~dcpue.errors.DecodeError`.

A value must be a finite number, except that a record flagged ``BAD`` or ``COLLECTOR_DOWN`` may
carry NaN: a collector says "this point has no usable value now" without inventing a zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from dcpue.errors import DecodeError
from dcpue.model import READING_COLUMNS, Quality, readings_frame

log = logging.getLogger(__name__)

SCHEMA = "dcpue.readings"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
# plausible timestamps: 2000-01-01 .. 2100-01-01 in ms
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000
MAX_QUALITY = int(max(Quality)) * 2 - 1
# a reading flagged with one of these may carry NaN: "no usable value", never a stand-in zero
NO_VALUE_FLAGS = int(Quality.BAD | Quality.COLLECTOR_DOWN)


class _BatchV1Raw(msgspec.Struct, forbid_unknown_fields=False):
    """Fast-path shape of a v1 batch, its columns left encoded: a site's collector sends the same point names at
    every poll (decoding them into new strings was half of decoding a batch), and numbers packed as msgspec packs
    them are read straight into arrays (:func:`_packed_columns`), never made into Python objects."""

    schema: str
    v: int
    site: str
    point: msgspec.Raw
    ts: msgspec.Raw
    value: msgspec.Raw
    quality: msgspec.Raw


class _BatchV1Columns(msgspec.Struct, forbid_unknown_fields=False):
    """The number columns of a v1 batch as lists, for a batch whose numbers are packed some other way."""

    ts: list[int]
    value: list[float]
    quality: list[int]


_encoder = msgspec.msgpack.Encoder()
_generic_decoder = msgspec.msgpack.Decoder()
_raw_decoder = msgspec.msgpack.Decoder(_BatchV1Raw)
_columns_decoder = msgspec.msgpack.Decoder(_BatchV1Columns)
_names_decoder = msgspec.msgpack.Decoder(tuple[str, ...])  # immutable: one is handed to every caller


@dataclass(frozen=True, slots=True)
class Reject:
    """One record that failed validation, with its position in the batch and the reason."""

    site: str
    index: int
    reason: str
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "index": self.index, "reason": self.reason, "record": self.record}


@dataclass(slots=True)
class DecodedBatch:
    """The valid readings of a batch, column by column, and the records rejected from it.

    ``readings`` builds the readings DataFrame; :func:`readings_of_batches` builds one for many batches at
    once, which is what a consumer of a whole poll should use (a DataFrame per small batch costs more than
    decoding it).
    """

    site: str
    points: np.ndarray  # object (str)
    ts: np.ndarray  # int64 [ms]
    value: np.ndarray  # float64
    quality: np.ndarray  # int64
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def readings(self) -> pd.DataFrame:
        return readings_frame(self.site, self.points, self.ts, self.value, self.quality)


def readings_of_batches(batches: list[DecodedBatch]) -> pd.DataFrame:
    """One readings DataFrame with the valid readings of every batch, in order; ``site`` and ``point`` are
    object columns of Python strings (the columns of :data:`READING_COLUMNS`, the numbers in their dtypes)."""
    if not batches:
        return readings_frame([], [], np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64))
    sites = np.repeat(np.array([b.site for b in batches], dtype=object), [len(b) for b in batches])
    # the names stay Python strings (object columns): converting millions of them to pandas' Arrow-backed
    # strings cost a worker more than decoding them, and what reads them compares, maps or formats them
    # the same either way; the numbers are already int64/float64/int64
    return pd.DataFrame({"site": pd.Series(sites, dtype=object, copy=False),
                         "point": pd.Series(np.concatenate([b.points for b in batches]), dtype=object, copy=False),
                         **{c: np.concatenate([getattr(b, c) for b in batches]) for c in ("ts", "value", "quality")}},
                        columns=list(READING_COLUMNS))


def encode_batch(site: str, point: Any, ts_ms: Any, value: Any, quality: Any = None) -> bytes:
    """Encode one site's readings as a v1 batch message.

    ``point``, ``ts_ms`` [ms since epoch, UTC], ``value`` (in each point's registry unit)
    and ``quality`` are equal-length sequences or arrays.
    """
    points = [str(p) for p in point]
    n = len(points)
    qualities = [0] * n if quality is None else np.asarray(quality, dtype=np.int64).tolist()
    return _encoder.encode(
        {
            "schema": SCHEMA,
            "v": VERSION,
            "site": site,
            "point": points,
            "ts": np.asarray(ts_ms, dtype=np.int64).tolist(),
            "value": np.asarray(value, dtype=np.float64).tolist(),
            "quality": qualities,
        }
    )


def encode_frame(site: str, frame: pd.DataFrame) -> bytes:
    """Encode the rows of a readings DataFrame (all of one site) as a v1 batch."""
    return encode_batch(site, frame["point"], frame["ts"], frame["value"], frame["quality"])


def decode_batch(data: bytes) -> DecodedBatch:
    """Decode a batch message, keeping every valid record and rejecting the others with a reason; a message
    that is not a batch raises :class:`~dcpue.errors.DecodeError` (a poll of one, :func:`decode_poll`)."""
    poll = decode_poll([data])
    if poll.errors[0] is not None:
        raise poll.errors[0]
    return DecodedBatch(poll.sites[0], poll.point, poll.ts, poll.value, poll.quality, poll.rejects[0])


def _bad_records(unnamed: np.ndarray | None, ts: np.ndarray, value: np.ndarray,
                 quality: np.ndarray) -> np.ndarray | None:
    """Which records of these columns are invalid (a boolean per record), or ``None`` if none is; ``unnamed``
    says which have an empty point name (``None``: none has)."""
    bad = (ts < TS_MIN_MS) | (ts >= TS_MAX_MS) | (quality < 0) | (quality > MAX_QUALITY)
    bad |= ~np.isfinite(value) & ~(np.isnan(value) & ((quality & NO_VALUE_FLAGS) != 0))
    if unnamed is not None:
        bad |= unnamed
    return bad if bad.any() else None


def _rejects(site: str, point: Sequence[str], ts: np.ndarray, value: np.ndarray, quality: np.ndarray,
             bad: np.ndarray, lo: int, hi: int) -> list[Reject]:
    """The :class:`Reject` of every bad record at positions ``lo``..``hi`` of the columns (one batch's records;
    ``point`` is that batch's list), with its position in the batch and its first problem."""
    rejects: list[Reject] = []
    for i in lo + np.flatnonzero(bad[lo:hi]):
        p, t, v, q = point[i - lo], int(ts[i]), float(value[i]), int(quality[i])
        reason = _first_reason(
            (not p, "point is empty"),
            (not TS_MIN_MS <= t < TS_MAX_MS, f"ts {t} is outside 2000-01-01..2100-01-01 (expected ms since epoch)"),
            (not math.isfinite(v) and not (math.isnan(v) and q & NO_VALUE_FLAGS),
             f"value {value[i]!r} is not a finite number"),
            (not 0 <= q <= MAX_QUALITY, f"quality {q} is not a valid flag set (0..{MAX_QUALITY})"),
        )
        rejects.append(Reject(site, int(i - lo), reason, {"point": p, "ts": t, "value": _jsonable(v), "quality": q}))
    return rejects


@dataclass(slots=True)
class DecodedPoll:
    """A poll's messages decoded together (:func:`decode_poll`).

    Per message: its site, its error if it is not a batch at all, its rejected records, how many valid readings
    it has and their point names. The valid readings of every message, message after message, in flat columns.
    """

    sites: list[str | None]
    errors: list[DecodeError | None]
    rejects: list[list[Reject]]
    counts: np.ndarray  # int64: valid readings per message
    points: list[tuple[str, ...]]  # per message: the names of its valid readings (shared with the decoder's cache)
    point: np.ndarray  # object (str), flat
    ts: np.ndarray  # int64 [ms], flat
    value: np.ndarray  # float64, flat
    quality: np.ndarray  # int64, flat

    def frame(self, include: np.ndarray | None = None) -> pd.DataFrame:
        """The readings DataFrame of the messages ``include`` selects (all if ``None``), in message order."""
        counts = self.counts if include is None else self.counts[include]
        sites = self.sites if include is None else [s for s, keep in zip(self.sites, include, strict=True) if keep]
        columns = [self.point, self.ts, self.value, self.quality]
        if include is not None and not include.all():
            rows = np.repeat(include, self.counts)
            columns = [c[rows] for c in columns]
        site = np.repeat(np.array(sites, dtype=object), counts)
        return pd.DataFrame({"site": pd.Series(site, dtype=object, copy=False),
                             "point": pd.Series(columns[0], dtype=object, copy=False),
                             "ts": columns[1], "value": columns[2], "quality": columns[3]},
                            columns=list(READING_COLUMNS))


class PollDecoder:
    """Decodes many batch messages at once (:meth:`decode`), keeping each site's last list of point names.

    What :func:`decode_batch` gives for each message, with the numbers of all of them converted and validated
    together (per message that cost more than decoding it): read straight from the messages' bytes where they are
    packed as msgspec packs Python's numbers, through lists otherwise. A site's point names are decoded only when
    their encoded bytes differ from its last batch's.
    """

    # the names kept, in bytes (encoded, and their array's references), at most (a bad producer could send any
    # number of sites and names); past it the names are forgotten and decoded again. 1,000 sites of 126 points
    # take about 3.5 MB
    MAX_CACHED_BYTES = 32 << 20

    def __init__(self) -> None:
        self._names: dict[str, _Names] = {}
        self._cached_bytes = 0

    def _point_names(self, site: str, raw: msgspec.Raw) -> _Names:
        last = self._names.get(site)
        if last is not None and last[0] == raw:
            return last
        names = _names_decoder.decode(raw)
        # a copy of the bytes: the Raw points into the message it came in
        entry = (raw.copy(), names, np.array(names, dtype=object).reshape(-1), all(names))
        if self._cached_bytes + _names_bytes(entry) > self.MAX_CACHED_BYTES:
            self._names.clear()
            self._cached_bytes = 0
        if last is not None and site in self._names:
            self._cached_bytes -= _names_bytes(last)
        self._names[site] = entry
        self._cached_bytes += _names_bytes(entry)
        return entry

    def decode(self, values: list[bytes]) -> DecodedPoll:
        """Decode ``values``; a message that is not a batch is reported in the result, never raised."""
        n = len(values)
        sites: list[str | None] = [None] * n
        errors: list[DecodeError | None] = [None] * n
        packed: list[_Packed] = []
        listed: dict[int, tuple[str, _Names, _BatchV1Columns]] = {}
        slow: dict[int, DecodedBatch] = {}
        for i, data in enumerate(values):
            try:
                try:
                    batch = _raw_decoder.decode(data)
                    # the names before the envelope: a name that is not UTF-8 makes the message "not MessagePack",
                    # as decode_batch says
                    names = self._point_names(batch.site, batch.point)
                    parts = _packed_columns(batch, len(names[1]))
                    columns = _columns_decoder.decode(data) if parts is None else None
                except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
                    slow[i] = _decode_slow(data)
                    continue
                _check_envelope(batch.schema, batch.v, batch.site)
                if columns is None:
                    packed.append((i, batch.site, names, *parts))  # type: ignore[misc]
                else:
                    _check_lengths(names[1], columns.ts, columns.value, columns.quality)
                    listed[i] = (batch.site, names, columns)
            except Exception as exc:  # noqa: BLE001 — a poison message must never stop the consumer
                errors[i] = _decode_error(exc, i)
        return _flatten(values, sites, errors, packed, listed, slow)


def decode_poll(values: list[bytes]) -> DecodedPoll:
    """Decode many batch messages at once (a :class:`PollDecoder` that keeps no names between calls)."""
    return PollDecoder().decode(values)


def _decode_error(exc: Exception, i: int) -> DecodeError:
    """``exc`` as the reason message ``i`` of a poll is dead-lettered with (an unexpected one also logged)."""
    if isinstance(exc, DecodeError):
        return exc
    log.error("unexpected decoder error in message %d of a poll", i, exc_info=exc)
    return DecodeError(f"decoder error: {type(exc).__name__}: {exc}")


# a site's last point names: (encoded, decoded, as an object array, whether none is empty)
_Names = tuple[msgspec.Raw, tuple[str, ...], np.ndarray, bool]
# a message's number columns as msgspec packs Python's ints and floats: (message, site, names, ts, value,
# quality), each column the bytes of its elements
_Packed = tuple[int, str, _Names, memoryview, memoryview, memoryview]


def _names_bytes(entry: _Names) -> int:
    return len(entry[0]) + entry[2].nbytes


_TAGGED_INT64 = np.dtype([("tag", "u1"), ("bits", ">u8")])  # uint 64 (0xcf) or int 64 (0xd3), big-endian
_TAGGED_FLOAT64 = np.dtype([("tag", "u1"), ("value", ">f8")])  # float 64 (0xcb)
_UINT64, _INT64, _FLOAT64, _FIXINT_END = 0xCF, 0xD3, 0xCB, 0x80


def _packed_elements(raw: msgspec.Raw, count: int, width: int) -> memoryview | None:
    """The elements of the MessagePack array ``raw`` if it has ``count`` of them in ``width`` bytes each, else
    ``None``. Which elements they are is judged from their tags for the whole poll (:func:`_unpack_columns`)."""
    view = memoryview(raw)
    if not view:
        return None
    head = view[0]
    if 0x90 <= head <= 0x9F:
        size, start = head - 0x90, 1
    elif head == 0xDC and len(view) >= 3:
        size, start = int.from_bytes(view[1:3], "big"), 3
    elif head == 0xDD and len(view) >= 5:
        size, start = int.from_bytes(view[1:5], "big"), 5
    else:
        return None
    return view[start:] if size == count and len(view) == start + width * count else None


def _packed_columns(batch: _BatchV1Raw, count: int) -> tuple[memoryview, memoryview, memoryview] | None:
    """The elements of a batch's ts, value and quality arrays if each has ``count`` elements of the width msgspec
    packs them in (9 bytes for an int of 2**32 or more and for a float, 1 byte for an int below 128)."""
    ts = _packed_elements(batch.ts, count, 9)
    value = _packed_elements(batch.value, count, 9) if ts is not None else None
    quality = _packed_elements(batch.quality, count, 1) if value is not None else None
    return None if quality is None else (ts, value, quality)  # type: ignore[return-value]


def _unpack_columns(packed: list[_Packed]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ts, value and quality of every packed message, and which messages (their positions in ``packed``)
    hold an element of another type than its width suggests; these must be decoded as lists.

    An array whose elements take 9 bytes each and whose every 9th byte is a 9-byte type's tag holds only that
    type: the first element starts at byte 0, and each one of 9 bytes ends where the next tag is read.
    """
    ts_rec = np.frombuffer(b"".join([entry[3] for entry in packed]), dtype=_TAGGED_INT64)
    value_rec = np.frombuffer(b"".join([entry[4] for entry in packed]), dtype=_TAGGED_FLOAT64)
    quality_bytes = np.frombuffer(b"".join([entry[5] for entry in packed]), dtype=np.uint8)
    ts = ts_rec["bits"].astype(np.int64)  # an int 64's bits as they are; a uint 64 of 2**63 or more turns negative
    tag = ts_rec["tag"]
    wrong = ~(((tag == _UINT64) & (ts >= 0)) | (tag == _INT64))
    wrong |= value_rec["tag"] != _FLOAT64
    wrong |= quality_bytes >= _FIXINT_END
    bad_messages = np.empty(0, dtype=np.int64)
    if wrong.any():
        ends = np.cumsum([len(entry[5]) for entry in packed])
        bad_messages = np.unique(np.searchsorted(ends, np.flatnonzero(wrong), side="right"))
    return ts, value_rec["value"].astype(np.float64), quality_bytes.astype(np.int64), bad_messages


def _flatten(values: list[bytes], sites: list[str | None], errors: list[DecodeError | None], packed: list[_Packed],
             listed: dict[int, tuple[str, _Names, _BatchV1Columns]], slow: dict[int, DecodedBatch]) -> DecodedPoll:
    """The poll's valid readings in flat columns: the well-formed batches validated together, those whose
    numbers are packed some other way converted from lists, the record-by-record ones (``slow``) put in their
    places."""
    n = len(values)
    fast = [(i, site, names) for i, site, names, *_ in packed]
    if packed:
        ts, value, quality, bad_messages = _unpack_columns(packed)
    else:
        ts, value, quality, bad_messages = (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64),
                                            np.empty(0, np.int64))
    for k in bad_messages.tolist():
        i, site, names = fast[k]
        try:
            listed[i] = (site, names, _columns_decoder.decode(values[i]))
        except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
            _judge_record_by_record(values, i, slow, errors)
    if listed or len(bad_messages):
        ts, value, quality, fast = _merge_listed(values, errors, slow, fast, ts, value, quality, listed)
    lengths = np.array([len(names[1]) for _, _, names in fast], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    # the sites' cached arrays of names joined: no Python string is looked at per reading
    point = np.concatenate([names[2] for _, _, names in fast]) if fast else np.empty(0, dtype=object)
    named = all([names[3] for _, _, names in fast])
    bad = _bad_records(None if named else point == "", ts, value, quality)
    rejects: list[list[Reject]] = [[] for _ in range(n)]
    counts = np.zeros(n, dtype=np.int64)
    points: list[tuple[str, ...]] = [() for _ in range(n)]
    for k, (i, site, (_, names, _, _)) in enumerate(fast):
        sites[i], points[i], counts[i] = site, names, lengths[k]
        if bad is not None and bad[starts[k]:starts[k + 1]].any():
            lo, hi = int(starts[k]), int(starts[k + 1])
            rejects[i] = _rejects(site, names, ts, value, quality, bad, lo, hi)
            points[i] = tuple(p for p, b in zip(names, bad[lo:hi], strict=True) if not b)
            counts[i] = len(points[i])
    if bad is not None:
        keep = ~bad
        point, ts, value, quality = point[keep], ts[keep], value[keep], quality[keep]
    if slow:  # rare: the record-by-record batches take their places among the others
        for i, decoded in slow.items():
            sites[i], rejects[i], points[i], counts[i] = (decoded.site, decoded.rejects, tuple(decoded.points.tolist()),
                                                          len(decoded))
        kept = np.concatenate([[0], np.cumsum([counts[i] for i, *_ in fast])])
        at = {i: k for k, (i, *_) in enumerate(fast)}
        columns = []
        for col, name in zip((point, ts, value, quality), ("points", "ts", "value", "quality"), strict=True):
            columns.append(np.concatenate([col[kept[at[i]]:kept[at[i] + 1]] if i in at else getattr(slow[i], name)
                                           for i in sorted([*at, *slow])]))
        point, ts, value, quality = columns
    return DecodedPoll(sites, errors, rejects, counts, points, point, ts, value, quality)


def _merge_listed(values: list[bytes], errors: list[DecodeError | None], slow: dict[int, DecodedBatch],
                  fast: list[tuple[int, str, _Names]], ts: np.ndarray, value: np.ndarray, quality: np.ndarray,
                  listed: dict[int, tuple[str, _Names, _BatchV1Columns]],
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str, _Names]]]:
    """The packed messages' columns and the listed ones' in message order (rare: a producer that packs numbers
    another way than msgspec), without the packed ones found to hold other types, now listed or in ``slow``. A
    listed message holding an integer beyond int64 goes to ``slow``."""
    segments: dict[int, tuple[str, _Names, np.ndarray, np.ndarray, np.ndarray]] = {}
    offset = 0
    for i, site, names in fast:
        end = offset + len(names[1])
        if i not in listed and i not in slow and errors[i] is None:  # not a packed one found to hold other types
            segments[i] = (site, names, ts[offset:end], value[offset:end], quality[offset:end])
        offset = end
    for i, (site, names, columns) in listed.items():
        try:
            segments[i] = (site, names, np.array(columns.ts, dtype=np.int64), np.array(columns.value, dtype=np.float64),
                           np.array(columns.quality, dtype=np.int64))
        except OverflowError:  # an integer beyond int64
            _judge_record_by_record(values, i, slow, errors)
    order = sorted(segments)
    merged = [np.concatenate([segments[i][k] for i in order]) if order else empty
              for k, empty in ((2, np.empty(0, np.int64)), (3, np.empty(0, np.float64)), (4, np.empty(0, np.int64)))]
    return merged[0], merged[1], merged[2], [(i, segments[i][0], segments[i][1]) for i in order]


def _judge_record_by_record(values: list[bytes], i: int, slow: dict[int, DecodedBatch],
                            errors: list[DecodeError | None]) -> None:
    """Message ``i`` decoded record by record into ``slow``, or its error into ``errors``."""
    try:
        slow[i] = _decode_slow(values[i])
    except Exception as exc:  # noqa: BLE001 — as in the decoding loop
        errors[i] = _decode_error(exc, i)


def _first_reason(*checks: tuple[bool, str]) -> str:
    return next(reason for failed, reason in checks if failed)


def _jsonable(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _check_envelope(schema: object, version: object, site: object) -> None:
    if schema != SCHEMA:
        raise DecodeError(f"not a readings batch: schema is {schema!r}, expected {SCHEMA!r}")
    # a list or map is unhashable, and True == 1: only a plain integer can name a version
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise DecodeError(f"unsupported readings batch version {version!r} (supported: {sorted(SUPPORTED_VERSIONS)})")
    if not isinstance(site, str) or not site:
        raise DecodeError("batch has no site")


def _check_lengths(*columns: object) -> int:
    if not all(isinstance(c, list | tuple) for c in columns):  # tuple: names from a PollDecoder's cache
        raise DecodeError("batch columns point, ts, value and quality must be lists")
    lengths = {len(c) for c in columns}  # type: ignore[arg-type]
    if len(lengths) != 1:
        raise DecodeError(f"batch columns have different lengths: {sorted(lengths)}")
    return lengths.pop()


def _decode_slow(data: bytes) -> DecodedBatch:
    """Record-by-record validation for batches whose columns hold values of the wrong type."""
    try:
        raw = _generic_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not a MessagePack message: {exc}") from None
    if not isinstance(raw, dict):
        raise DecodeError("not a readings batch: top level is not a map")
    _check_envelope(raw.get("schema"), raw.get("v"), raw.get("site"))
    site = raw["site"]
    cols = [raw.get(name) for name in ("point", "ts", "value", "quality")]
    n = _check_lengths(*cols)
    keep_point, keep_ts, keep_value, keep_quality = [], [], [], []
    rejects: list[Reject] = []
    for i in range(n):
        point, ts, value, quality = (col[i] for col in cols)  # type: ignore[index]
        reason = _record_problem(point, ts, value, quality)
        if reason is None:
            keep_point.append(point)
            keep_ts.append(ts)
            keep_value.append(float(value))
            keep_quality.append(quality)
        else:
            record = {"point": point, "ts": ts, "value": value, "quality": quality}
            rejects.append(Reject(site, i, reason, {k: _plain(v) for k, v in record.items()}))
    return DecodedBatch(site, np.asarray(keep_point, dtype=object).reshape(-1), np.asarray(keep_ts, np.int64),
                        np.asarray(keep_value, np.float64), np.asarray(keep_quality, np.int64), rejects)


def _plain(value: object) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _jsonable(value)
    return repr(value)


def _record_problem(point: object, ts: object, value: object, quality: object) -> str | None:
    if not isinstance(point, str) or not point:
        return f"point {point!r} is not a non-empty string"
    if isinstance(ts, bool) or not isinstance(ts, int):
        return f"ts {ts!r} is not an integer (expected ms since epoch)"
    if not TS_MIN_MS <= ts < TS_MAX_MS:
        return f"ts {ts} is outside 2000-01-01..2100-01-01 (expected ms since epoch)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"value {value!r} is not a number"
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= MAX_QUALITY:
        return f"quality {quality!r} is not a valid flag set (0..{MAX_QUALITY})"
    if not math.isfinite(value) and not (math.isnan(value) and quality & NO_VALUE_FLAGS):
        return f"value {value!r} is not a finite number"
    return None


# -- window results (the metrics topic) ----------------------------------------------------------
WINDOWS_SCHEMA = "dcpue.windows"
WINDOWS_VERSION = 1


def encode_windows(windows: pd.DataFrame) -> bytes:
    """Window results (the schema of :mod:`dcpue.results`) column-wise as MessagePack; NaN is kept."""
    from dcpue.results import conform_windows

    frame = conform_windows(windows)
    return _encode_window_columns({str(c): frame[c].tolist() for c in frame.columns})


def _encode_window_columns(columns: dict[str, list[Any]]) -> bytes:
    return _encoder.encode({"schema": WINDOWS_SCHEMA, "v": WINDOWS_VERSION, "columns": columns})


def encode_windows_by_id(windows: pd.DataFrame) -> list[tuple[str, bytes]]:
    """:func:`encode_windows` of each ``id``'s rows, in order of first appearance, as (id, message) pairs:
    the same bytes, with the frame conformed and each column turned into Python values once for all ids.
    Rows without an id are left out."""
    from dcpue.results import conform_windows

    windows = windows[windows["id"].notna()] if "id" in windows.columns else windows  # as groupby("id") drops them
    if windows.empty:
        return []
    frame = conform_windows(windows)
    codes, ids = pd.factorize(frame["id"].to_numpy(dtype=object))
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    ordered = frame.take(order)
    lists = {str(c): ordered[c].tolist() for c in ordered.columns}
    return [(str(ids[sorted_codes[lo]]), _encode_window_columns({name: part[lo:hi] for name, part in lists.items()}))
            for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)]


def decode_windows(data: bytes) -> pd.DataFrame:
    """Inverse of :func:`encode_windows`; raises :class:`~dcpue.errors.DecodeError` on anything else."""
    from dcpue.results import conform_windows

    try:
        obj = _generic_decoder.decode(data)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise DecodeError(f"not a MessagePack message: {exc}") from None
    if not isinstance(obj, dict) or obj.get("schema") != WINDOWS_SCHEMA:
        raise DecodeError(f"not a window batch (schema {obj.get('schema') if isinstance(obj, dict) else '?'!r})")
    if obj.get("v") != WINDOWS_VERSION:
        raise DecodeError(f"unsupported window batch version {obj.get('v')!r}")
    columns = obj.get("columns")
    if not isinstance(columns, dict) or len({len(v) for v in columns.values() if isinstance(v, list)}) > 1:
        raise DecodeError("window batch columns missing or of different lengths")
    try:
        return conform_windows(pd.DataFrame(columns))
    except (TypeError, ValueError, KeyError) as exc:
        raise DecodeError(f"window batch does not fit the result schema: {exc}") from None
