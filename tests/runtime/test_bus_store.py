"""The embedded adapters: a Kafka-shaped in-process bus and an idempotent one-file store."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from dcpue.errors import DcpueError
from dcpue.results import conform_windows
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.store import FileStore


def test_uncommitted_records_are_redelivered_to_the_group():
    bus = InProcessBus()
    producer = bus.producer()
    for i in range(5):
        producer.send("t", str(i).encode(), key="a")
    first = bus.consumer(["t"], "g")
    assert [m.value for m in first.poll(0.1)] == [b"0", b"1", b"2", b"3", b"4"]
    # crash before commit: a new consumer of the group sees everything again
    second = bus.consumer(["t"], "g")
    assert len(second.poll(0.1)) == 5
    second.commit()
    assert bus.lag("g", "t") == 0
    assert bus.consumer(["t"], "g").poll(0.05) == []


def test_groups_read_independently_and_records_are_freed_after_all_commit():
    bus = InProcessBus()
    bus.consumer(["t"], "a")
    b = bus.consumer(["t"], "b")
    bus.producer().send("t", b"x")
    assert len(b.poll(0.1)) == 1
    b.commit()
    assert bus.lag("a", "t") == 1  # group a has not read it yet, so it is kept


def test_a_full_topic_applies_backpressure():
    bus = InProcessBus(max_pending=2)
    consumer = bus.consumer(["t"], "g")
    producer = bus.producer(send_timeout_s=0.1)
    producer.send("t", b"1")
    producer.send("t", b"2")
    with pytest.raises(DcpueError, match="full"):
        producer.send("t", b"3")
    # once the consumer commits, the blocked producer proceeds
    consumer.poll(0.1)
    done = threading.Event()
    threading.Thread(target=lambda: (bus.producer(send_timeout_s=5).send("t", b"3"), done.set())).start()
    consumer.commit()
    assert done.wait(2)


def window_rows(pue: float, final: bool) -> pd.DataFrame:
    return conform_windows(pd.DataFrame({
        "scope": ["site"], "id": ["a"], "window": ["1h"], "start_ms": [1_000], "end_ms": [3_601_000],
        "pue": [pue], "final": [final], "status": ["ok"], "facility_kwh": [150.0],
    }))


def test_store_upserts_by_key_so_replays_do_not_add_points(tmp_path):
    store = FileStore(tmp_path / "s.sqlite").setup()
    store.write_windows(window_rows(1.6, False))
    store.write_windows(window_rows(1.5, True))
    store.write_windows(window_rows(1.5, True))  # replay
    rows = store.query_windows("site", "1h")
    assert len(rows) == 1
    assert rows["pue"].iloc[0] == 1.5 and bool(rows["final"].iloc[0])
    store.close()
    # everything written survives reopening the file
    reopened = FileStore(tmp_path / "s.sqlite").setup()
    assert reopened.latest_windows("site", "1h")["pue"].tolist() == [1.5]
    reopened.close()


def test_store_keeps_nan_as_missing_and_dead_letters_with_reasons(tmp_path):
    store = FileStore(tmp_path / "s.sqlite").setup()
    store.write_windows(window_rows(np.nan, False))
    assert np.isnan(store.query_windows("site", "1h")["pue"].iloc[0])
    store.write_dead_letters(pd.DataFrame([{"topic": "t", "key": "a", "reason": "value is not a number",
                                            "payload": {"value": "hot"}}]))
    letters = store.dead_letters()
    assert letters["reason"].tolist() == ["value is not a number"]
    assert letters["payload"].iloc[0] == {"value": "hot"}
    store.close()
