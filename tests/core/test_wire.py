"""The reading batch wire format: compact, versioned, and bad records rejected one by one."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcpue.errors import DecodeError
from dcpue.model import Quality
from dcpue.wire import decode_batch, encode_batch

TS = 1_736_092_800_000


def test_round_trip_keeps_every_reading():
    data = encode_batch("a", ["p1", "p2"], [TS, TS + 1000], [1.5, 2.5], [0, 2])
    batch = decode_batch(data)
    assert batch.site == "a" and not batch.rejects
    assert batch.readings["point"].tolist() == ["p1", "p2"]
    assert batch.readings["ts"].tolist() == [TS, TS + 1000]
    assert batch.readings["value"].tolist() == [1.5, 2.5]
    assert batch.readings["quality"].tolist() == [0, 2]


def test_one_message_carries_many_readings_compactly():
    # 1000 readings: 13-char point id (14 B) + int64 ts (9 B) + float64 (9 B) + quality (1 B) = 33 B each
    n = 1000
    data = encode_batch("gy-01", ["cool.chiller1"] * n, TS + np.arange(n) * 1000, np.linspace(0, 1, n))
    assert len(data) / n < 34
    assert len(decode_batch(data).readings) == n


def test_bad_records_are_rejected_individually_with_reasons():
    data = encode_batch("a", ["ok", "", "nan", "old", "ok2"], [TS, TS, TS, 1234, TS],
                        [1.0, 2.0, float("nan"), 3.0, 4.0])
    batch = decode_batch(data)
    assert batch.readings["point"].tolist() == ["ok", "ok2"]
    reasons = {r.index: r.reason for r in batch.rejects}
    assert reasons[1] == "point is empty"
    assert "not a finite number" in reasons[2]
    assert "outside 2000-01-01..2100-01-01" in reasons[3]


@pytest.mark.parametrize("slow_path", [False, True])
def test_nan_is_accepted_only_as_a_flagged_no_value(slow_path):
    down, bad = int(Quality.COLLECTOR_DOWN), int(Quality.BAD)
    records = {"point": ["down", "bad", "good", "inf"], "ts": [TS] * 4,
               "value": [float("nan"), float("nan"), float("nan"), float("inf")], "quality": [down, bad, 0, down]}
    if slow_path:  # a string ts elsewhere in the batch sends it record by record
        records = {k: [*v, "x" if k == "ts" else v[0]] for k, v in records.items()}
    raw = msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": "a", **records})
    batch = decode_batch(raw)
    assert batch.readings["point"].tolist() == ["down", "bad"]
    assert np.isnan(batch.readings["value"]).all()
    reasons = {r.index: r.reason for r in batch.rejects}
    assert "not a finite number" in reasons[2] and "not a finite number" in reasons[3]


def test_wrongly_typed_records_take_the_slow_path_and_keep_the_rest():
    raw = msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": "a",
                                  "point": ["p", "p", 7, "p"], "ts": [TS, "soon", TS, TS + 1],
                                  "value": [1.0, 2.0, 3.0, "hot"], "quality": [0, 0, 0, 0]})
    batch = decode_batch(raw)
    assert batch.readings["ts"].tolist() == [TS]
    reasons = [r.reason for r in batch.rejects]
    assert "ts 'soon' is not an integer" in reasons[0]
    assert "point 7 is not a non-empty string" in reasons[1]
    assert "value 'hot' is not a number" in reasons[2]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1garbage", "not a MessagePack message"),
        (msgspec.msgpack.encode([1, 2]), "top level is not a map"),
        (msgspec.msgpack.encode({"schema": "other", "v": 1, "site": "a"}), "schema is 'other'"),
        (msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 9, "site": "a"}), "unsupported"),
        (msgspec.msgpack.encode({"schema": "dcpue.readings", "v": 1, "site": "a", "point": ["p"], "ts": [],
                                 "value": [], "quality": []}), "different lengths"),
    ],
)
def test_messages_that_are_not_batches_raise_decode_error(payload, message):
    with pytest.raises(DecodeError, match=message):
        decode_batch(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        batch = decode_batch(data)
    except DecodeError:
        return
    assert len(batch.readings) + len(batch.rejects) >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(TS, TS + 10**9),
                          st.floats(allow_nan=False, allow_infinity=False, width=64)), max_size=50))
def test_valid_records_always_survive_a_round_trip(records):
    points = [r[0] for r in records]
    ts = np.array([r[1] for r in records], dtype=np.int64)
    values = np.array([r[2] for r in records], dtype=np.float64)
    batch = decode_batch(encode_batch("s", points, ts, values))
    assert not batch.rejects
    assert batch.readings["value"].tolist() == values.tolist()


def test_many_batches_become_one_frame_equal_to_their_frames_in_order():
    import pandas as pd

    from dcpue.wire import readings_of_batches

    batches = [decode_batch(encode_batch("a", ["p1", "p2"], [TS, TS + 1000], [1.5, 2.5], [0, 0])),
               decode_batch(encode_batch("b", ["p1", "", "p3"], [TS, TS, TS], [3.0, 4.0, 5.0], [0, 0, 0])),  # one bad
               decode_batch(encode_batch("c", [], [], [], []))]
    assert [len(b) for b in batches] == [2, 2, 0] and len(batches[1].rejects) == 1
    combined = readings_of_batches(batches)
    expected = pd.concat([b.readings for b in batches if len(b)], ignore_index=True)  # as the worker did
    # the same, with the names kept as Python strings (converting them all was a worker's largest cost)
    assert combined["site"].dtype == object and combined["point"].dtype == object
    pd.testing.assert_frame_equal(combined, expected.astype({"site": object, "point": object}))
    assert combined["site"].tolist() == ["a", "a", "b", "b"] and combined["point"].tolist() == ["p1", "p2", "p1", "p3"]
    assert readings_of_batches([]).empty


def test_windows_encoded_by_id_are_the_same_messages_as_encoded_one_id_at_a_time():
    """The metrics topic's batched encoder: one message per id, in order of first appearance, byte for
    byte what encoding each id's rows alone gives (missing figures and text included)."""
    import pandas as pd

    from dcpue.analytics.stream import StreamEngine
    from dcpue.wire import decode_windows, encode_windows, encode_windows_by_id
    from tests.factories import counter_series, power_series, registry, simple_site

    reg = registry(simple_site("a"), simple_site("b"), simple_site("c"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 200), power_series("a", "it.ups", 100, 200),
                          counter_series("b", "facility.main", 90, 130), power_series("c", "it.ups", 30, 170)],
                         ignore_index=True).sort_values("ts", kind="stable")
    engine = StreamEngine(reg)
    engine.add(readings)
    windows = engine.advance()
    windows = windows.sample(frac=1.0, random_state=3)  # ids interleaved
    windows.loc[windows.index[5], "id"] = None  # a row without an id is left out, as grouping by id leaves it
    assert windows["id"].nunique() >= 3 and windows["pue"].isna().any()
    expected = [(str(key), encode_windows(part)) for key, part in windows.groupby("id", sort=False)]
    assert encode_windows_by_id(windows) == expected
    assert encode_windows_by_id(windows.iloc[:0]) == []
    first_id, message = encode_windows_by_id(windows)[0]
    assert set(decode_windows(message)["id"]) == {first_id}


def test_a_poll_decoder_keeps_point_names_within_its_byte_budget(monkeypatch):
    """Each site's last names are kept to skip decoding them again, but only up to ``MAX_CACHED_BYTES`` of them
    (a bad producer could send any number of sites): past it they are forgotten, and decoding stays right."""
    from dcpue.wire import PollDecoder

    monkeypatch.setattr(PollDecoder, "MAX_CACHED_BYTES", 200)
    decoder = PollDecoder()
    messages = [encode_batch(f"s{k}", [f"point-{i}" for i in range(5)], [TS] * 5, [1.0] * 5) for k in range(50)]
    for _ in range(2):
        poll = decoder.decode(messages)
        assert poll.sites == [f"s{k}" for k in range(50)]
        assert all(names == tuple(f"point-{i}" for i in range(5)) for names in poll.points)
        assert decoder._cached_bytes <= 200 and len(decoder._names) < 50
    kept = sum(len(raw) + array.nbytes for raw, _, array, _ in decoder._names.values())
    assert kept == decoder._cached_bytes
    again = decoder.decode([messages[-1]])  # the same names again: handed out from the cache, unchangeable
    assert again.points[0] is decoder._names["s49"][1] and isinstance(again.points[0], tuple)
    changed = decoder.decode([encode_batch("s49", ["other"], [TS], [2.0])])  # a site's names replaced, not added
    assert changed.points == [("other",)]
    assert decoder._cached_bytes == sum(len(raw) + array.nbytes for raw, _, array, _ in decoder._names.values()) < kept


@pytest.mark.parametrize("envelope", [{"site": ""}, {"schema": "other"}])
def test_a_message_broken_in_its_envelope_and_its_names_is_reported_as_not_messagepack(envelope):
    """A point name that is not UTF-8 makes the whole message unreadable: that is its reason, not the envelope's
    (which a decoder would find first if it checked the envelope before decoding the names)."""
    doc = {"schema": "dcpue.readings", "v": 1, "site": "a", "point": ["p\u00ff"], "ts": [TS], "value": [1.0],
           "quality": [0]} | envelope
    data = msgspec.msgpack.encode(doc).replace(b"\xa3p\xc3\xbf", b"\xa2p\xff")  # the name's bytes: not UTF-8
    with pytest.raises(DecodeError, match="not a MessagePack message"):
        decode_batch(data)
