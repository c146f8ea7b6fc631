"""The reading decoder and the worker's dead-lettering under hostile input.

tests/core/test_wire.py already throws random bytes at ``decode_batch`` and round-trips valid records;
these properties go further: batches whose records mix every MessagePack type (each judged against an
independent oracle, on the fast and the slow path), valid batches with corrupted bytes, and whole streams
of such messages through a real :class:`AnalyticsWorker` whose every record must end up either as a
reading or as a dead letter with a reason.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dcpue.errors import DecodeError
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import Settings
from dcpue.wire import TS_MAX_MS, TS_MIN_MS, decode_batch, encode_batch
from tests.factories import T0, registry, simple_site

from .profiles import fuzz

NO_VALUE = 4 | 8  # Quality.BAD | Quality.COLLECTOR_DOWN, spelled out: the oracle does not import the decoder's
MAX_Q = 15

# anything MessagePack can carry, biased towards values that are nearly valid
INT64 = st.integers(-(2**63), 2**64 - 1)
ANY_SCALAR = st.one_of(
    st.none(), st.booleans(), INT64, st.floats(), st.text(max_size=6), st.binary(max_size=4),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=1),
)
POINT = st.one_of(st.sampled_from(["it.ups", "facility.main", "cool.crah", "no.such", ""]), st.text(max_size=8),
                  ANY_SCALAR)
TS = st.one_of(st.integers(TS_MIN_MS - 5, TS_MIN_MS + 5), st.integers(TS_MAX_MS - 5, TS_MAX_MS + 5),
               st.integers(T0, T0 + 10**7), ANY_SCALAR)
VALUE = st.one_of(st.floats(), st.integers(-(2**63), 2**64 - 1), st.just(math.nan), ANY_SCALAR)
QUALITY = st.one_of(st.integers(-2, MAX_Q + 2), ANY_SCALAR)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def oracle(point: object, ts: object, value: object, quality: object) -> set[str]:
    """The columns of one record that make it invalid (empty: a good reading), per the wire format's contract."""
    bad = set()
    if not isinstance(point, str) or not point:
        bad.add("point")
    if not _is_int(ts) or not TS_MIN_MS <= ts < TS_MAX_MS:
        bad.add("ts")
    q_ok = _is_int(quality) and 0 <= quality <= MAX_Q
    if not q_ok:
        bad.add("quality")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (not math.isfinite(float(value)) and not (math.isnan(value) and q_ok and quality & NO_VALUE)):
        bad.add("value")
    return bad


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@fuzz(150)
@given(st.lists(st.tuples(POINT, TS, VALUE, QUALITY), max_size=12), st.booleans())
def test_every_record_is_kept_exactly_when_valid_and_rejected_with_its_reason_otherwise(records, all_valid_types):
    if all_valid_types:  # keep the columns well-typed so the fast (typed) path judges them
        records = [(p if isinstance(p, str) else "p", t if _is_int(t) and -(2**63) <= t < 2**63 else T0,
                    float(v) if isinstance(v, float) else 1.0, q if _is_int(q) and -(2**63) <= q < 2**63 else 0)
                   for p, t, v, q in records]
    columns = {name: [r[i] for r in records] for i, name in enumerate(("point", "ts", "value", "quality"))}
    raw = msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": "s", **columns})
    batch = decode_batch(raw)  # a well-formed envelope never raises, whatever the records hold
    verdicts = [oracle(*r) for r in records]
    good = [r for r, bad in zip(records, verdicts, strict=True) if not bad]
    assert len(batch) + len(batch.rejects) == len(records)
    assert sorted(r.index for r in batch.rejects) == [i for i, bad in enumerate(verdicts) if bad]
    assert batch.points.tolist() == [r[0] for r in good]
    assert batch.ts.tolist() == [r[1] for r in good]
    assert batch.quality.tolist() == [r[3] for r in good]
    assert all(_same(got, float(r[2])) for got, r in zip(batch.value.tolist(), good, strict=True))
    for reject in batch.rejects:
        assert reject.site == "s"
        assert reject.reason.split(" ", 1)[0] in verdicts[reject.index], (reject.reason, records[reject.index])
        json.dumps(reject.to_dict(), allow_nan=False, default=str)  # a dead letter is strict JSON


ENVELOPE_KEYS = st.sampled_from(["schema", "v", "site", "point", "ts", "value", "quality", "extra"])


@fuzz(100)
@given(st.dictionaries(ENVELOPE_KEYS, st.one_of(ANY_SCALAR, st.lists(ANY_SCALAR, max_size=3)), max_size=8),
       st.booleans())
def test_a_broken_envelope_is_a_decode_error_naming_the_problem(envelope, start_valid):
    doc = ({"schema": "dcpue.readings", "v": 1, "site": "s", "point": [], "ts": [], "value": [], "quality": []}
           if start_valid else {})
    doc.update(envelope)
    try:
        raw = msgspec.msgpack.encode(doc)
    except (OverflowError, TypeError):
        return  # not representable in MessagePack at all
    try:
        batch = decode_batch(raw)
    except DecodeError as exc:
        assert str(exc)
        return
    # accepted: then the envelope really is a v1 batch of one site with equally long column lists
    assert doc["schema"] == "dcpue.readings" and doc["v"] == 1 and not isinstance(doc["v"], bool)
    assert isinstance(doc["site"], str) and doc["site"] and batch.site == doc["site"]
    lengths = {len(doc[c]) for c in ("point", "ts", "value", "quality")}
    assert lengths == {len(batch) + len(batch.rejects)}


def _valid_message() -> bytes:
    n = 6
    return encode_batch("s", [f"p{i}" for i in range(n)], T0 + np.arange(n) * 1000, np.linspace(1, 2, n),
                        [0, 1, 2, 4, 8, 0])


VALID = _valid_message()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and data:
            del data[i:i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@fuzz(200)
@given(corrupted())
def test_corrupted_messages_raise_decode_error_or_keep_only_valid_readings(data):
    started = time.perf_counter()
    try:
        batch = decode_batch(data)
    except DecodeError as exc:
        assert str(exc)
        return
    finally:
        assert time.perf_counter() - started < 5  # a length header claiming 2**32 items must not hang it
    assert all(isinstance(p, str) and p for p in batch.points.tolist())
    assert ((batch.ts >= TS_MIN_MS) & (batch.ts < TS_MAX_MS)).all()
    assert ((batch.quality >= 0) & (batch.quality <= MAX_Q)).all()
    finite = np.isfinite(batch.value)
    assert (finite | (np.isnan(batch.value) & ((batch.quality & NO_VALUE) != 0))).all()
    assert all(r.reason for r in batch.rejects)


# -- a poll decoded at once: the same as its messages decoded one by one ---------------------------------------


@st.composite
def poll_message(draw: st.DrawFn) -> bytes:
    """A message of a poll: hostile ones, and batches of a few sites whose point names repeat, change length or
    order, or hold a bad record (the decoder keeps each site's last names), some with a record of the wrong type
    or beyond int64 (judged record by record, in their places among the others)."""
    kind = draw(st.sampled_from(["hostile", "typed", "typed", "typed", "slow", "overflow", "envelope"]))
    if kind == "hostile":
        return draw(st.one_of(corrupted(), message().map(lambda km: km[1]), st.binary(max_size=20)))
    if kind == "envelope":  # a broken envelope, its names also broken (which one a decoder reports first matters)
        names = draw(st.sampled_from([["p0"], [b"\xff\xfe".decode("latin-1")], [1]]))
        raw = msgspec.msgpack.encode({"schema": draw(st.sampled_from(["dcpue.readings", "x"])), "v": 1,
                                      "site": draw(st.sampled_from(["", "a"])), "point": names, "ts": [T0],
                                      "value": [1.0], "quality": [0]})
        # the latin-1 name re-encoded as its raw bytes: a MessagePack str that is not UTF-8
        return raw.replace(b"\xa4\xc3\xbf\xc3\xbe", b"\xa2\xff\xfe")
    site = draw(st.sampled_from(["a", "b"]))
    names = draw(st.sampled_from([["p0", "p1", "p2"], ["p0", "p1", "p2"], ["p1", "p0", "p2"], ["p0", "p1"], [],
                                  ["p0", "", "p2"]]))
    n = len(names)
    ts = [T0 + draw(st.integers(-1, 10**6)) for _ in range(n)]
    value = [draw(st.one_of(st.floats(0, 100), st.just(math.nan), st.just(math.inf))) for _ in range(n)]
    quality = [draw(st.sampled_from([0, 0, 4, 16, -1])) for _ in range(n)]
    if kind == "overflow" and n:  # an integer beyond int64: the poll's batches are judged record by record
        ts[draw(st.integers(0, n - 1))] = 2**63 + 5
    if kind == "slow" and n:  # a value of the wrong type: this batch is judged record by record
        value[draw(st.integers(0, n - 1))] = "1.5"
    return msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": site, "point": names, "ts": ts,
                                   "value": value, "quality": quality})


@fuzz(60)
@given(st.lists(st.lists(poll_message(), max_size=8), min_size=1, max_size=4))
def test_a_poll_decoded_at_once_is_its_messages_decoded_one_by_one(polls):
    from dcpue.wire import PollDecoder

    decoder = PollDecoder()  # one decoder across the polls, as a worker keeps it
    for values in polls:
        poll = decoder.decode(values)
        point, ts, value, quality = [], [], [], []
        for n, data in enumerate(values):
            try:
                batch = decode_batch(data)
            except DecodeError as exc:
                assert poll.errors[n] is not None and str(poll.errors[n]) == str(exc)
                assert poll.counts[n] == 0 and poll.points[n] == () and poll.rejects[n] == []
                continue
            assert poll.errors[n] is None and poll.sites[n] == batch.site
            assert [r.to_dict() for r in poll.rejects[n]] == [r.to_dict() for r in batch.rejects]
            assert poll.counts[n] == len(batch) and poll.points[n] == tuple(batch.points.tolist())
            point += batch.points.tolist()
            ts += batch.ts.tolist()
            value += batch.value.tolist()
            quality += batch.quality.tolist()
        assert poll.point.tolist() == point and poll.ts.tolist() == ts and poll.quality.tolist() == quality
        assert all(_same(a, b) for a, b in zip(poll.value.tolist(), value, strict=True))
        assert len(poll.value) == len(value)
        include = np.array([n % 2 == 0 for n in range(len(values))], dtype=bool)
        frame = poll.frame(include)
        rows = np.repeat(include, poll.counts)
        assert frame["point"].tolist() == poll.point[rows].tolist()
        assert frame["ts"].dtype == np.int64 and frame["quality"].dtype == np.int64 and frame["value"].dtype == float
        assert frame["ts"].tolist() == poll.ts[rows].tolist()
        assert frame["quality"].tolist() == poll.quality[rows].tolist()
        assert np.array_equal(frame["value"].to_numpy(), poll.value[rows], equal_nan=True)
        assert frame["site"].tolist() == [poll.sites[n] for n in range(len(values)) if include[n]
                                          for _ in range(poll.counts[n])]


# -- the worker: every record becomes a reading or a dead letter with a reason ------------------------------

NOW = T0 + 3_600_000
SITES = ("a", "zz")  # a is in the registry, zz is not


@st.composite
def message(draw: st.DrawFn) -> tuple[str | None, bytes]:
    kind = draw(st.sampled_from(["batch", "batch", "garbage", "corrupt"]))
    site = draw(st.sampled_from(SITES))
    key = draw(st.one_of(st.just(site), st.sampled_from([None, "a", "b"])))
    if kind == "garbage":
        return key, draw(st.binary(max_size=40))
    if kind == "corrupt":
        return key, draw(corrupted())
    records = draw(st.lists(st.tuples(POINT, st.one_of(st.integers(T0, NOW + 900_000), TS), VALUE, QUALITY),
                            max_size=5))
    columns = {name: [r[i] for r in records] for i, name in enumerate(("point", "ts", "value", "quality"))}
    return key, msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": site, **columns})


def _expected(messages: list[tuple[str | None, bytes]], max_future_ms: int) -> tuple[int, int]:
    """(readings, dead letters) the worker must produce, by the worker's documented rules."""
    known = {("a", p) for p in ("facility.main", "it.ups", "cool.crah")}
    readings = letters = 0
    for key, data in messages:
        try:
            batch = decode_batch(data)
        except DecodeError:
            letters += 1
            continue
        if key is not None and key != batch.site:
            letters += 1
            continue
        letters += len(batch.rejects)
        for point, ts in zip(batch.points.tolist(), batch.ts.tolist(), strict=True):
            if (batch.site, point) in known and ts <= NOW + max_future_ms:
                readings += 1
            else:
                letters += 1
    return readings, letters


@fuzz(25)
@given(st.lists(message(), min_size=1, max_size=8))
def test_the_worker_turns_every_record_into_a_reading_or_a_dead_letter_with_a_reason(messages):
    settings = Settings(bus={"commit_interval_s": 0})
    bus = InProcessBus()
    topic = settings.bus.topics.readings
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp) / "w.sqlite").setup()
        try:
            worker = AnalyticsWorker(registry(simple_site("a")), settings, bus.consumer([topic], "g"), store,
                                     clock=lambda: NOW)
            producer = bus.producer()
            for key, data in messages:
                producer.send(topic, data, key=key)
            while worker.step(timeout_s=0.01):
                pass
            letters = store.dead_letters()
        finally:
            store.close()
    readings, dead = _expected(messages, int(settings.engine.max_future_s * 1000))
    assert worker.stats.messages == len(messages)
    assert bus.lag("g", topic) == 0  # nothing left behind, everything committed
    assert worker.stats.readings == readings
    assert worker.stats.dead_letters == dead == len(letters)
    assert all(isinstance(r, str) and r for r in letters["reason"])
    assert not any(r.startswith("decoder error:") for r in letters["reason"])  # no unexpected exception


def test_a_step_whose_readings_are_all_bad_quality_gives_rows_not_a_crash():
    """Found by the long fuzz profile: a step where every reading of the touched sites was flagged BAD left
    nothing after the quality filter, and pandas' join on that empty frame returned the join keys as the index,
    which then clashed with the columns (ValueError in the worker's step)."""
    from dcpue.analytics.stream import StreamEngine
    from dcpue.model import Quality, readings_frame

    engine = StreamEngine(registry(simple_site("a")))
    engine.add(readings_frame(["a", "a"], ["it.ups", "facility.main"], [T0, T0 + 60_000], [1.0, 2.0],
                              int(Quality.BAD)))
    rows = engine.advance()
    assert set(rows.loc[rows["window"] == "1m", "status"]) <= {"no_data"}
    assert rows["pue"].isna().all()


# -- numbers packed as any MessagePack producer may pack them ------------------------------------------------


def _packed_array(draw: st.DrawFn, elements: list[bytes]) -> msgspec.Raw:
    n = len(elements)
    heads = [b"\xdc" + n.to_bytes(2, "big"), b"\xdd" + n.to_bytes(4, "big")] + ([bytes([0x90 | n])] if n < 16 else [])
    return msgspec.Raw(draw(st.sampled_from(heads)) + b"".join(elements))


# a column's elements as msgspec packs them (9 bytes a ts or value, 1 byte a quality), and elements of the same
# width not of the type it packs there, which the decoder must tell apart
TS_PLAIN = st.one_of(st.integers(T0, T0 + 10**7), st.integers(TS_MAX_MS - 2, TS_MAX_MS + 2)).map(msgspec.msgpack.encode)
TS_SAME_WIDTH = st.one_of(
    st.integers(2**63, 2**64 - 1).map(msgspec.msgpack.encode),  # uint 64 beyond int 64
    st.integers(-(2**63), 2**63 - 1).map(lambda v: b"\xd3" + v.to_bytes(8, "big", signed=True)),
    st.floats().map(lambda v: b"\xcb" + struct.pack(">d", v)))
VALUE_PLAIN = st.floats().map(lambda v: b"\xcb" + struct.pack(">d", v))
VALUE_SAME_WIDTH = st.one_of(
    st.integers(0, 2**64 - 1).map(lambda v: b"\xcf" + v.to_bytes(8, "big")),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: b"\xd3" + v.to_bytes(8, "big", signed=True)))
QUALITY_PLAIN = st.integers(0, MAX_Q + 2).map(msgspec.msgpack.encode)
QUALITY_SAME_WIDTH = st.sampled_from([b"\xff", b"\xe0", b"\xc0", b"\xc2", b"\xc3", b"\x80", b"\x90"])
# an element of another width: an int shorter or fixed-width, a float 32, any other type
OTHER_WIDTH = st.one_of(st.integers(-(2**63), 2**64 - 1).map(msgspec.msgpack.encode),
                        st.integers(0, 255).map(lambda v: b"\xcc" + v.to_bytes(1, "big")),
                        st.floats(width=32).map(lambda v: b"\xca" + struct.pack(">f", v)),
                        ANY_SCALAR.map(msgspec.msgpack.encode))


@st.composite
def packed_any_way(draw: st.DrawFn) -> tuple[bytes, list[tuple]]:
    """A batch whose numbers are packed as msgspec packs them, but for a few elements (if any) of the same width
    and another type, or of another width, under any array header; and its records as a generic MessagePack
    decoder reads them."""
    n = draw(st.integers(0, 18))
    names = [draw(st.sampled_from(["p0", "p1", "cool.crah", "p0", ""])) for _ in range(n)]
    columns = []
    for plain, same_width in ((TS_PLAIN, TS_SAME_WIDTH), (VALUE_PLAIN, VALUE_SAME_WIDTH),
                              (QUALITY_PLAIN, QUALITY_SAME_WIDTH)):
        column = [draw(plain) for _ in range(n)]
        for _ in range(draw(st.sampled_from([0, 0, 1, 2])) if n else 0):
            column[draw(st.integers(0, n - 1))] = draw(same_width)
        if n and draw(st.integers(0, 4)) == 0:
            column[draw(st.integers(0, n - 1))] = draw(OTHER_WIDTH)
        columns.append(column)
    arrays = [_packed_array(draw, column) for column in columns]
    doc = {"schema": "dcpue.readings", "v": 1, "site": "s", "point": names, "ts": arrays[0], "value": arrays[1],
           "quality": arrays[2]}
    data = msgspec.msgpack.encode(doc)
    plain = msgspec.msgpack.decode(data)
    return data, list(zip(plain["point"], plain["ts"], plain["value"], plain["quality"], strict=True))


def _as_recorded(x: object) -> object:
    """A record's field as a dead letter's JSON shows it."""
    if x is None or isinstance(x, bool | int | str):
        return x
    return x if isinstance(x, float) and math.isfinite(x) else repr(x)


def _same_recorded_value(recorded: object, v: object) -> bool:
    """A rejected record's value as its dead letter shows it: a number as read (an integer as a float where the
    batch's values were read as floats), what is not finite by its repr, another type as :func:`_as_recorded`."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return recorded == _as_recorded(v)
    number = float(v)
    return float(recorded) == number if math.isfinite(number) else recorded == repr(number)


@fuzz(200)
@given(st.lists(st.lists(st.one_of(packed_any_way(), st.builds(lambda: (VALID, None))), min_size=1, max_size=5),
                min_size=1, max_size=3))
def test_numbers_packed_any_way_msgpack_allows_are_read_as_their_values(polls):
    """The decoder reads numbers packed as msgspec packs them straight from their bytes, and any other packing as
    lists: polls mixing both (one decoder, as a worker keeps it, its names cache shared by every way of packing)
    keep exactly the valid records, each with the value a generic decoder reads, and reject the others with the
    values it reads."""
    from dcpue.wire import PollDecoder

    decoder = PollDecoder()
    for messages in polls:
        _check_poll(decoder.decode([data for data, _ in messages]), messages)


def _check_poll(poll, messages: list[tuple[bytes, list[tuple] | None]]) -> None:
    ts, value, quality = [], [], []
    for n, (data, records) in enumerate(messages):
        if records is None:  # the msgspec-packed batch, as decoded on its own
            records = [tuple(column) for column in zip(*(msgspec.msgpack.decode(data)[c] for c in
                                                         ("point", "ts", "value", "quality")), strict=True)]
        verdicts = [oracle(*r) for r in records]
        good = [r for r, bad in zip(records, verdicts, strict=True) if not bad]
        assert poll.errors[n] is None and poll.counts[n] == len(good)
        assert [r.index for r in poll.rejects[n]] == [k for k, bad in enumerate(verdicts) if bad]
        for reject in poll.rejects[n]:
            point, t, v, q = records[reject.index]
            assert reject.reason.split(" ", 1)[0] in verdicts[reject.index]
            # as read, not as another type's bytes
            assert (reject.record["ts"], reject.record["quality"]) == (_as_recorded(t), _as_recorded(q))
            assert _same_recorded_value(reject.record["value"], v), (reject.record, v)
        assert poll.points[n] == tuple(r[0] for r in good)
        ts += [r[1] for r in good]
        value += [float(r[2]) for r in good]
        quality += [r[3] for r in good]
    assert poll.ts.tolist() == ts and poll.quality.tolist() == quality
    assert len(poll.value) == len(value) and all(_same(a, b) for a, b in zip(poll.value.tolist(), value, strict=True))
