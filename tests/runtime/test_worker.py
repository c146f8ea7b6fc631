"""The analytics worker: bad input is dead-lettered with its reason and the rest goes through."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from dcpue.errors import SinkError
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import Settings
from dcpue.wire import encode_batch, encode_frame
from tests.factories import T0, counter_series, power_series, registry, simple_site


@pytest.fixture
def setup(tmp_path):
    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0})  # commit after every step
    bus = InProcessBus()
    store = FileStore(tmp_path / "w.sqlite").setup()
    worker = AnalyticsWorker(reg, settings, bus.consumer([settings.bus.topics.readings], "g"), store)
    yield bus, store, worker, settings.bus.topics.readings
    store.close()


def test_good_and_bad_input_side_by_side(setup):
    bus, store, worker, topic = setup
    producer = bus.producer()
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)])
    producer.send(topic, encode_frame("a", readings), key="a")
    producer.send(topic, b"\x00not msgpack", key="a")
    producer.send(topic, encode_batch("a", ["it.ups", "no.such.point"], [readings["ts"].max() + 1] * 2,
                                      [100.0, float("inf")]), key="a")
    producer.send(topic, encode_batch("zz", ["x"], [readings["ts"].max()], [1.0]), key="zz")
    producer.send(topic, encode_batch("a", ["it.ups"], [readings["ts"].max()], [1.0]), key="b")
    while worker.step(timeout_s=0.05):
        pass
    assert bus.lag("g", topic) == 0  # committed after writing
    reasons = store.dead_letters()["reason"].tolist()
    assert any(r.startswith("not a MessagePack message") for r in reasons)
    assert any("not a finite number" in r for r in reasons)
    assert "unknown site zz" in reasons
    assert any("does not match batch site" in r for r in reasons)
    assert worker.stats.dead_letters == 4
    hour = store.query_windows("site", "1h")
    assert hour["pue"].iloc[0] == pytest.approx(1.5)


def test_the_worker_counts_its_steps_and_the_messages_they_carried(setup):
    """``steps`` counts the polls that brought messages (idle polls are not steps): messages ÷ steps is the
    poll size a worker gets, what its per-step cost is spread over."""
    bus, store, worker, topic = setup
    producer = bus.producer()
    readings = pd.concat([counter_series("a", "facility.main", 150, 30), power_series("a", "it.ups", 100, 30)])
    for minute in range(6):
        part = readings[(readings["ts"] - T0) // 300_000 == minute]
        producer.send(topic, encode_frame("a", part), key="a")
    taken = [worker.step(timeout_s=0.05, max_records=4) for _ in range(4)]
    assert taken == [4, 2, 0, 0]
    status = worker.status()
    assert (status["messages"], status["steps"]) == (6, 2)


def test_unknown_point_of_a_known_site_is_dead_lettered(setup):
    bus, store, worker, topic = setup
    bus.producer().send(topic, encode_batch("a", ["it.ups", "it.ghost"], [1_736_092_800_000] * 2, [1.0, 2.0]),
                        key="a")
    worker.step(timeout_s=0.1)
    letters = store.dead_letters()
    assert letters["reason"].tolist() == ["unknown point it.ghost for site a"]
    assert letters["payload"].iloc[0]["value"] == 2.0


def test_readings_from_a_clock_far_in_the_future_are_dead_lettered(setup):
    bus, store, worker, topic = setup
    now = 1_736_092_800_000
    worker.clock = lambda: now
    bus.producer().send(topic, encode_batch("a", ["it.ups", "it.ups"], [now, now + 2 * 86_400_000], [1.0, 1.0]),
                        key="a")
    worker.step(timeout_s=0.1)
    reasons = store.dead_letters()["reason"].tolist()
    assert len(reasons) == 1 and "ahead of the clock" in reasons[0]


def test_a_failing_store_keeps_results_and_commits_nothing_until_written(setup, monkeypatch):
    from dcpue.errors import SinkError

    bus, store, worker, topic = setup
    readings = pd.concat([counter_series("a", "facility.main", 150, 30), power_series("a", "it.ups", 100, 30)])
    bus.producer().send(topic, encode_frame("a", readings), key="a")
    real_write = store.write_windows
    failures = {"left": 2}

    def flaky(rows):
        if failures["left"]:
            failures["left"] -= 1
            raise SinkError("store unavailable")
        real_write(rows)

    monkeypatch.setattr(store, "write_windows", flaky)
    worker.step(timeout_s=0.1)
    assert bus.lag("g", topic) == 1  # nothing committed while the write fails
    worker.step(timeout_s=0.1)
    assert bus.lag("g", topic) == 1
    worker.step(timeout_s=0.1)
    assert bus.lag("g", topic) == 0
    live = store.query_windows("site", "1m")
    assert len(live) == 30  # every minute written, none lost to the failures
    assert worker.stats.errors["store_write"] == 2


def test_a_restarted_worker_resumes_its_day_totals_from_the_checkpoint(tmp_path):
    # worker 1 processes 5 hours and stops; worker 2 (same store, same group) processes the next 5 hours.
    # The batches hold minutes 0..599 (the sample at minute 600 is not sent), so 599 one-minute intervals
    # at 150 kW: the day window must hold 599 × 2.5 = 1497.5 kWh, as without the restart.
    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0})  # checkpoint at every step
    topic = settings.bus.topics.readings
    bus = InProcessBus()
    store = FileStore(tmp_path / "w.sqlite").setup()
    readings = pd.concat([counter_series("a", "facility.main", 150, 600), power_series("a", "it.ups", 100, 600)])
    def publish(bus: InProcessBus) -> None:
        for hour in range(10):
            part = readings[(readings["ts"] >= T0 + hour * 3_600_000) & (readings["ts"] < T0 + (hour + 1) * 3_600_000)]
            bus.producer().send(topic, encode_frame("a", part), key="a")

    bus.consumer([topic], "g")  # the group exists before anything is published
    publish(bus)
    first = AnalyticsWorker(reg, settings, bus.consumer([topic], "g"), store, state=store)
    for _ in range(5):
        first.step(timeout_s=0.1, max_records=1)
    second = AnalyticsWorker(reg, settings, bus.consumer([topic], "g"), store, state=store)
    while second.step(timeout_s=0.1, max_records=1):
        pass
    day = store.query_windows("site", "1d")
    assert day["facility_kwh"].iloc[0] == pytest.approx(599 * 2.5)
    assert second.stats.late_dropped == 0
    store.close()
    # the same restart without a checkpoint overwrites the day with the second worker's hours only
    other = FileStore(tmp_path / "no-state.sqlite").setup()
    bus = InProcessBus()
    bus.consumer([topic], "no-state")
    publish(bus)
    before = AnalyticsWorker(reg, settings, bus.consumer([topic], "no-state"), other)
    for _ in range(5):
        before.step(timeout_s=0.1, max_records=1)
    after = AnalyticsWorker(reg, settings, bus.consumer([topic], "no-state"), other)
    while after.step(timeout_s=0.1, max_records=1):
        pass
    assert other.query_windows("site", "1d")["facility_kwh"].iloc[0] < 1000
    other.close()


def test_an_idle_poll_does_not_hold_a_due_commit_back(tmp_path):
    """After a burst the results are committed when the commit interval is up, not when a long idle poll
    ends (the end of a burst, and the lag a reader sees, waits no longer than the interval)."""
    import time

    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0.3})
    bus = InProcessBus()
    store = FileStore(tmp_path / "w.sqlite").setup()
    topic = settings.bus.topics.readings
    worker = AnalyticsWorker(reg, settings, bus.consumer([topic], "g"), store)
    bus.producer().send(topic, encode_frame("a", power_series("a", "it.ups", 100, 30)), key="a")
    assert worker.step(timeout_s=0.05) == 1
    assert bus.lag("g", topic) == 1  # written, not yet committed: the interval is not up
    started = time.monotonic()
    assert worker.step(timeout_s=30.0) == 0
    waited = time.monotonic() - started
    assert bus.lag("g", topic) == 0
    assert waited < 5.0  # the interval (0.3 s) and a checkpoint, not the 30 s poll
    store.close()


def test_a_commit_that_keeps_failing_is_retried_at_the_poll_pace_not_in_a_spin(tmp_path, monkeypatch):
    """While the broker refuses commits (a rebalance), the overdue commit is retried once per idle poll."""
    import time

    from dcpue.errors import CommitError

    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0.05})
    bus = InProcessBus()
    store = FileStore(tmp_path / "w.sqlite").setup()
    topic = settings.bus.topics.readings
    consumer = bus.consumer([topic], "g")
    attempts = []

    def refuse():
        attempts.append(time.monotonic())
        raise CommitError("rebalance in progress")

    monkeypatch.setattr(consumer, "commit", refuse)
    worker = AnalyticsWorker(reg, settings, consumer, store)
    bus.producer().send(topic, encode_frame("a", power_series("a", "it.ups", 100, 30)), key="a")
    worker.step(timeout_s=0.01)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        worker.step(timeout_s=0.2)
    assert 2 <= len(attempts) <= 8  # about one a poll (0.2 s), not thousands
    assert bus.lag("g", topic) == 1
    store.close()


def _overlapping_worker(tmp_path, overlap: bool = True):
    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 3600})  # commits only when asked
    bus = InProcessBus()
    store = FileStore(tmp_path / "o.sqlite").setup()
    worker = AnalyticsWorker(reg, settings, bus.consumer([settings.bus.topics.readings], "g"), store,
                             overlap_writes=overlap)
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)])
    producer = bus.producer()
    for minute in range(0, 60, 10):  # six batches of ten minutes
        part = readings[(readings["ts"] >= T0 + minute * 60_000) & (readings["ts"] < T0 + (minute + 10) * 60_000)]
        producer.send(settings.bus.topics.readings, encode_frame("a", part), key="a")
    return bus, store, worker, settings.bus.topics.readings


def test_a_step_returns_while_its_results_are_written_and_a_checkpoint_waits_for_them(tmp_path):
    import threading

    bus, store, worker, topic = _overlapping_worker(tmp_path)
    real_write, release, writing = store.write_windows, threading.Event(), threading.Event()

    def held(rows):
        writing.set()
        assert release.wait(10)
        real_write(rows)

    store.write_windows = held
    assert worker.step(timeout_s=0.1, max_records=1) == 1
    assert writing.wait(10)  # the write started in the background and is held there...
    assert store.query_windows("site", "1m").empty  # ...while the step has returned
    release.set()
    while not worker._writing.done():
        time.sleep(0.01)
    time.sleep(2.0)  # written; noticed two seconds later
    assert worker.checkpoint()  # waits for it, then commits
    assert len(store.query_windows("site", "1m")) == 9 and bus.lag("g", topic) == 5
    # the latency runs to when the results were written, not to when the worker noticed
    assert worker.write_latency.count == 1 and worker.write_latency.max_s < 2.0
    store.close()


def test_the_main_threads_time_is_told_by_what_it_did(tmp_path):
    """``busy_s`` splits the main thread's time: a slow store shows as ``write`` (waiting for the background
    write, or writing), an idle poll as ``poll``, a slow checkpoint as ``checkpoint``; the phases never add up
    to more than the time that passed, and ``write_s`` counts every write wherever it ran."""
    bus, store, worker, topic = _overlapping_worker(tmp_path)
    real_write, real_commit = store.write_windows, worker.consumer.commit

    def slow_write(rows):
        time.sleep(0.3)
        real_write(rows)

    def slow_commit():
        time.sleep(0.2)
        real_commit()

    store.write_windows, worker.consumer.commit = slow_write, slow_commit
    started = time.perf_counter()
    assert worker.step(timeout_s=0.1, max_records=1) == 1  # its write goes to the background...
    assert worker.step(timeout_s=0.1, max_records=1) == 1  # ...and this step waits for it
    assert worker.step(timeout_s=0.25, max_records=1) == 1
    while worker.step(timeout_s=0.25, max_records=5):
        pass  # the last poll finds nothing: at least 0.25 s of poll
    assert worker.checkpoint()
    elapsed = time.perf_counter() - started
    busy = worker.status()["busy_s"]
    assert set(busy) == {"poll", "decode", "engine", "alerts", "write", "checkpoint", "rebalance"}
    assert busy["write"] >= 0.3 and busy["poll"] >= 0.25 and busy["checkpoint"] >= 0.2
    assert busy["decode"] > 0 and busy["engine"] > 0 and busy["alerts"] > 0
    assert sum(busy.values()) <= elapsed
    assert worker.stats.write_s >= 0.3 * 4  # four steps' writes (the last took three batches), each slow
    store.close()


def test_overlapped_writes_that_fail_lose_nothing_and_keep_their_order(tmp_path):
    import threading

    from dcpue.errors import SinkError

    bus, store, worker, topic = _overlapping_worker(tmp_path)
    real_write, calls = store.write_windows, []

    def flaky(rows):
        calls.append((threading.current_thread().name, int(rows["start_ms"].max())))
        if len(calls) == 2:  # the second step's write, in the background
            raise SinkError("store unavailable")
        real_write(rows)

    store.write_windows = flaky
    while worker.step(timeout_s=0.1, max_records=1):
        pass
    assert bus.lag("g", topic) == 6  # nothing committed before the checkpoint
    assert worker.checkpoint() and bus.lag("g", topic) == 0
    assert any(name.startswith("dcpue-writer") for name, _ in calls)
    assert worker.stats.errors["store_write"] == 1
    # the failed write was written again before any later one; every later write reaches further
    written = [end for _, end in calls[:1] + calls[2:]]
    assert written == sorted(written) and calls[2][1] == calls[1][1]
    # the store ends as that of a worker writing in step, without failures: nothing lost, nothing stale
    ref_bus, ref_store, ref_worker, _ = _overlapping_worker(tmp_path / "ref", overlap=False)
    while ref_worker.step(timeout_s=0.1, max_records=1):
        pass
    for window in ("1m", "15m", "1h"):
        pd.testing.assert_frame_equal(store.query_windows("site", window), ref_store.query_windows("site", window))
    assert len(store.query_windows("site", "1m")) == 59
    store.close()
    ref_store.close()


def test_a_background_write_that_crashes_loses_neither_its_results_nor_the_next_steps(tmp_path):
    """An error that is not a refused write (a bug, an unexpected client error) stops the worker, as it did before
    writes overlapped; the final checkpoint then writes everything computed, in order, before committing."""
    bus, store, worker, topic = _overlapping_worker(tmp_path)
    real_write, calls = store.write_windows, []

    def crashing(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("client bug")
        real_write(rows)

    store.write_windows = crashing
    with pytest.raises(RuntimeError, match="client bug"):
        while worker.step(timeout_s=0.1, max_records=1):
            pass
    store.write_windows = real_write
    assert worker.checkpoint() and bus.lag("g", topic) == 3  # three steps computed, all written, then committed
    ref_bus, ref_store, ref_worker, _ = _overlapping_worker(tmp_path / "ref", overlap=False)
    for _ in range(3):
        ref_worker.step(timeout_s=0.1, max_records=1)
    for window in ("1m", "1h"):
        pd.testing.assert_frame_equal(store.query_windows("site", window), ref_store.query_windows("site", window))
    worker.close()
    store.close()
    ref_store.close()


def _saving_worker(tmp_path, batches: int = 6):
    """A worker that writes in the background and is due a checkpoint at every step, its state in its store."""
    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0})
    bus = InProcessBus()
    store = FileStore(tmp_path / "s.sqlite").setup()
    topic = settings.bus.topics.readings
    worker = AnalyticsWorker(reg, settings, bus.consumer([topic], "g"), store, state=store, overlap_writes=True)
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)])
    span_ms = 60 // batches * 60_000
    for k in range(batches):
        part = readings[(readings["ts"] >= T0 + k * span_ms) & (readings["ts"] < T0 + (k + 1) * span_ms)]
        bus.producer().send(topic, encode_frame("a", part), key="a")
    return bus, store, worker, topic


def _saved_offset(store: FileStore) -> int:
    from dcpue.runtime.worker import Checkpoint

    return Checkpoint.decode(store.load_states()["a"]).offset


def test_a_due_checkpoint_is_saved_while_the_next_poll_is_computed_and_commits_only_what_it_holds(tmp_path):
    """With overlapped writes a due checkpoint is encoded at once and saved by the writer after the step's results;
    its positions are committed once both are done, after the next poll: that poll's records stay uncommitted."""
    import threading

    bus, store, worker, topic = _saving_worker(tmp_path)
    real_save, release, saving = store.save_states, threading.Event(), threading.Event()

    def held(states):
        saving.set()
        assert release.wait(10)
        deadline = time.monotonic() + 10
        while worker.consumer.positions()[topic] < 3:  # the next step polls while this save is held
            assert time.monotonic() < deadline, "the next step did not poll before the save was done"
            time.sleep(0.01)
        real_save(states)

    store.save_states = held
    assert worker.step(timeout_s=0.1, max_records=1) == 1
    assert saving.wait(10)  # the results are written, the checkpoint is being saved...
    assert bus.lag("g", topic) == 6 and store.load_states() == {}  # ...and nothing is committed before it is
    release.set()
    assert worker.step(timeout_s=0.1, max_records=2) == 2  # waits for the save after computing, then commits
    assert bus.lag("g", topic) == 5 and _saved_offset(store) == 1  # the first message only: what the save holds
    store.save_states = real_save
    while worker.step(timeout_s=0.1, max_records=1):
        pass
    assert bus.lag("g", topic) == 0 and _saved_offset(store) == 6
    assert worker.stats.errors.get("state_write", 0) == 0 and worker.status()["busy_s"]["checkpoint"] > 0
    # the results are those of a worker that writes and saves in step
    ref_bus, ref_store, ref_worker, _ = _saving_worker(tmp_path / "ref")
    ref_worker._defer_saves = False
    while ref_worker.step(timeout_s=0.1, max_records=1):
        pass
    for window in ("1m", "1h"):
        pd.testing.assert_frame_equal(store.query_windows("site", window), ref_store.query_windows("site", window))
    worker.close()
    ref_worker.close()
    store.close()
    ref_store.close()


def test_a_background_checkpoint_that_fails_commits_nothing_and_its_sites_are_saved_again(tmp_path):
    bus, store, worker, topic = _saving_worker(tmp_path, batches=1)
    real_save, calls = store.save_states, []

    def failing_twice(states):
        calls.append(sorted(states))
        if len(calls) <= 2:
            raise SinkError("state store unavailable")
        real_save(states)

    store.save_states = failing_twice
    assert worker.step(timeout_s=0.1) == 1  # the only message: its site is not touched again
    assert worker.step(timeout_s=0.1) == 0  # the background save failed; its site, due again, failed in step
    assert worker.stats.errors["state_write"] == 2
    assert bus.lag("g", topic) == 1 and store.load_states() == {}  # the failed saves committed nothing
    worker.step(timeout_s=0.1)
    assert calls == [["a"]] * 3 and bus.lag("g", topic) == 0 and _saved_offset(store) == 1
    worker.close()
    store.close()


def test_a_background_checkpoint_is_not_sent_when_its_results_could_not_be_written(tmp_path):
    bus, store, worker, topic = _saving_worker(tmp_path, batches=2)
    real_write, real_save, events = store.write_windows, store.save_states, []

    def failing_once(rows):
        events.append("write")
        if events.count("write") == 1:
            raise SinkError("InfluxDB unavailable")
        real_write(rows)

    def save(states):
        events.append("save")
        real_save(states)

    store.write_windows, store.save_states = failing_once, save
    while worker.step(timeout_s=0.1, max_records=1) or worker._unwritten:
        pass
    # the failed write, written again, the next step's write, and only then a checkpoint (holding both steps)
    assert events[:4] == ["write", "write", "write", "save"]
    assert worker.stats.errors["store_write"] == 1 and "state_write" not in worker.stats.errors
    assert bus.lag("g", topic) == 0 and _saved_offset(store) == 2
    assert len(store.query_windows("site", "1m")) == 59
    worker.close()
    store.close()


def test_a_background_checkpoint_that_crashes_stops_the_worker_and_the_final_checkpoint_saves_it_again(tmp_path):
    bus, store, worker, topic = _saving_worker(tmp_path, batches=3)
    real_save = store.save_states

    def crashing(states):
        raise RuntimeError("client bug")

    store.save_states = crashing
    assert worker.step(timeout_s=0.1, max_records=1) == 1
    while not worker._writing.done():
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="client bug"):
        worker.step(timeout_s=0.1, max_records=1)  # raised as the step begins, before it polls
    assert bus.lag("g", topic) == 3 and store.load_states() == {}
    store.save_states = real_save
    assert worker.checkpoint() and bus.lag("g", topic) == 2 and _saved_offset(store) == 1
    while worker.step(timeout_s=0.1, max_records=1):
        pass
    assert bus.lag("g", topic) == 0 and _saved_offset(store) == 3
    worker.close()
    store.close()


def _group_saving_worker(tmp_path):
    """:func:`_saving_worker` with a consumer that, like a group consumer, has rebalance callbacks."""
    from dcpue.runtime.bus import BusConsumer

    class GroupConsumer(BusConsumer):  # what the worker needs of a group consumer: the rebalance callbacks
        on_revoked = on_assigned = before_revoke = None

    bus, store, unused, topic = _saving_worker(tmp_path / "unused")
    unused.close()
    settings = Settings(bus={"commit_interval_s": 0})
    worker = AnalyticsWorker(registry(simple_site("a")), settings, GroupConsumer(bus, [topic], "g"), store,
                             state=store, overlap_writes=True)
    worker._on_assigned(None)
    return bus, store, worker, topic


def test_a_rebalance_waits_for_a_background_checkpoint_and_commits_none_of_its_positions(tmp_path):
    """Before its partitions go to another member (kafka-python calls ``before_revoke`` before the group rejoins)
    the worker lets a checkpoint being saved land: the next owner reads the state topic after the rebalance and
    must find it. After the rebalance the save's positions are not committed: the group has changed since."""
    import threading

    bus, store, worker, topic = _group_saving_worker(tmp_path)
    consumer = worker.consumer
    real_save, release, events = store.save_states, threading.Event(), []

    def held(states):
        assert release.wait(10)
        real_save(states)
        events.append("saved")

    store.save_states = held
    assert worker.step(timeout_s=0.1, max_records=1) == 1  # its checkpoint is being saved, and held
    assert consumer.before_revoke is not None

    def rejoin():  # kafka-python's network thread, while the main thread waits in a poll
        consumer.before_revoke()
        events.append("rejoined")

    thread = threading.Thread(target=rejoin)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and events == []  # the rejoin waits for the save...
    release.set()
    thread.join(10)
    assert events == ["saved", "rejoined"]  # ...which landed first
    consumer.on_revoked([0])  # the adapter, after the rebalance: the save is settled, nothing committed
    assert bus.lag("g", topic) == 6 and _saved_offset(store) == 1
    assert worker._saving is None and worker._writing is None and "a" not in worker._owned
    worker.close()
    store.close()


def test_a_checkpoint_whose_results_are_still_being_written_when_the_group_rebalances_is_not_sent(tmp_path):
    """The wait before the rejoin is bounded (heartbeats stop meanwhile); a checkpoint not yet being sent by then is
    given up, so it cannot land after the partitions' next owner read the state topic. Its sites stay due."""
    import threading

    bus, store, worker, topic = _group_saving_worker(tmp_path)
    real_write, release, saves = store.write_windows, threading.Event(), []
    store.save_states = lambda states: saves.append(sorted(states))

    def held(rows):
        assert release.wait(10)
        real_write(rows)

    store.write_windows = held
    worker._revoke_wait_s = 0.2
    assert worker.step(timeout_s=0.1, max_records=1) == 1
    started = time.monotonic()
    worker.consumer.before_revoke()
    assert 0.2 <= time.monotonic() - started < 2  # waited its bound, no more
    release.set()
    worker.consumer.on_revoked([])  # kept its partitions: the save is settled, not sent, nothing committed
    assert saves == [] and bus.lag("g", topic) == 6 and worker._touched == {"a"}
    assert worker.checkpoint() and saves == [["a"]] and bus.lag("g", topic) == 5
    worker.close()
    store.close()


def test_a_worker_whose_rebalance_was_interrupted_commits_nothing_more(tmp_path):
    """Settling a background save inside the revocation raised (a bug, or SIGTERM while waiting): the partitions are
    released, but the consumer will not rewind those it keeps; a commit of its positions could pass readings whose
    state was dropped, so the worker commits nothing more (the next owners replay from the last commit)."""
    bus, store, worker, topic = _group_saving_worker(tmp_path)

    def crashing(rows):
        raise RuntimeError("client bug")

    store.write_windows = crashing
    assert worker.step(timeout_s=0.1, max_records=1) == 1
    with pytest.raises(RuntimeError, match="client bug"):
        worker.consumer.on_revoked([0])
    assert "a" not in worker._owned  # released all the same
    store.write_windows = FileStore.write_windows.__get__(store)
    assert not worker.checkpoint() and bus.lag("g", topic) == 6
    worker.close()
    store.close()


@pytest.mark.parametrize("queued", [False, True])
def test_a_checkpoint_interrupted_while_handed_to_the_writer_is_saved_by_the_final_checkpoint(tmp_path, queued):
    """SIGTERM (KeyboardInterrupt) while a due checkpoint is handed to the writer, before or after the job was queued:
    its sites are no longer marked changed, so the final checkpoint must take them up again (or know the job saved
    them), or it would commit what was never saved; a job still queued is done before anything else is saved."""
    bus, store, worker, topic = _saving_worker(tmp_path, batches=3)
    real_submit = worker._writer.submit

    def interrupted(*args, **kwargs):
        worker._writer.submit = real_submit
        if queued:
            real_submit(*args, **kwargs)
        raise KeyboardInterrupt

    worker._writer.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        worker.step(timeout_s=0.1, max_records=1)
    assert bus.lag("g", topic) == 3
    assert worker.checkpoint()  # as `dcpue analyze` stops
    assert bus.lag("g", topic) == 2 and _saved_offset(store) == 1
    assert len(store.query_windows("site", "1m")) == 19  # the step's results written before the commit
    worker.close()
    store.close()


class _RecordingStore(FileStore):
    """The file store, remembering the keys of every save; ``fail_next`` makes the next save fail, ``land_only``
    makes it fail after saving only the keys it names (as Kafka may acknowledge some records of a save)."""

    def __init__(self, path) -> None:  # noqa: ANN001
        super().__init__(path)
        self.saves: list[list[str]] = []
        self.fail_next = False
        self.land_only: Callable[[str], bool] | None = None

    def save_states(self, states: dict[str, bytes]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise SinkError("state store down")
        if self.land_only is not None:
            landed, self.land_only = {k: v for k, v in states.items() if self.land_only(k)}, None
            super().save_states(landed)
            raise SinkError(f"only {sorted(landed)} acknowledged")
        self.saves.append(list(states))
        super().save_states(states)


def _days_fleet(days: int, batch_hours: int = 2) -> tuple:
    reg = registry(simple_site("a"))
    minutes = days * 24 * 60 + 240
    readings = pd.concat([counter_series("a", "facility.main", 150, minutes),
                          power_series("a", "it.ups", 100, minutes)])
    parts = [part for _, part in readings.groupby((readings["ts"] - T0) // (batch_hours * 3_600_000))]
    return reg, parts


def _run_worker(reg, parts, store, bus, steps=None):  # noqa: ANN001, ANN202
    settings = Settings(bus={"commit_interval_s": 0})
    worker = AnalyticsWorker(reg, settings, bus.consumer([settings.bus.topics.readings], "g"), store, state=store)
    taken = 0
    while (steps is None or taken < steps) and worker.step(timeout_s=0.1, max_records=1):
        taken += 1
    return worker


def _published(parts) -> InProcessBus:  # noqa: ANN001
    bus = InProcessBus()
    topic = Settings().bus.topics.readings
    bus.consumer([topic], "g")
    for part in parts:
        bus.producer().send(topic, encode_frame("a", part), key="a")
    return bus


def _assert_as_uninterrupted(store: FileStore, reg, parts, tmp_path, windows: tuple[str, ...]) -> None:  # noqa: ANN001
    """``store``'s site windows equal those of one worker that ran through ``parts`` without a stop."""
    whole = FileStore(tmp_path / "whole.sqlite").setup()
    try:
        _run_worker(reg, parts, whole, _published(parts))
        for window in windows:
            got, want = store.query_windows("site", window), whole.query_windows("site", window)
            assert len(got) == len(want) > 0
            np.testing.assert_allclose(got["facility_kwh"], want["facility_kwh"], rtol=1e-12)
    finally:
        whole.close()


def test_a_sites_days_are_saved_apart_once_a_day_and_checkpoints_leave_them_out(tmp_path):
    """A year of daily sums is most of a site's state: it is written when a day completes, under the site's
    ``#days`` key, and the checkpoints written at every commit carry only what that record does not hold. A
    worker restarted from them gives the figures of one that never stopped, the rolling annual one included."""
    import msgspec

    from dcpue.runtime.worker import Checkpoint

    reg, parts = _days_fleet(3, batch_hours=4)
    store = _RecordingStore(tmp_path / "w.sqlite").setup()
    bus = _published(parts)
    first = _run_worker(reg, parts, store, bus, steps=14)  # 56 hours: two days complete
    days_saves = [[key for key in keys if "#" in key] for keys in store.saves]
    # once per completed day, not with every checkpoint; the second day's record does not replace the first's,
    # which the checkpoint acknowledged before it still names
    assert len(store.saves) == 14 and [keys for keys in days_saves if keys] == [["a#days0"], ["a#days1"]]
    checkpoint = Checkpoint.decode(store.load_states()["a"])
    state = msgspec.msgpack.decode(checkpoint.state)
    assert state["complete_through"] == first.engine.newest_complete("a") == T0 + 24 * 3_600_000
    assert state["complete"]["1d"] is None  # both days are in the record, not in the checkpoint
    assert checkpoint.days_slot == 1
    record = msgspec.msgpack.decode(store.load_states()["a#days1"])
    assert np.frombuffer(record["complete"]["1d"]["starts"], dtype="<i8").tolist() == [T0, T0 + 24 * 3_600_000]

    second = _run_worker(reg, parts, store, bus)
    assert second.stats.sites_restored == 1 and second.stats.errors.get("bad_checkpoint", 0) == 0
    _assert_as_uninterrupted(store, reg, parts, tmp_path, ("1d", "12mo"))
    annual = store.query_windows("site", "12mo").iloc[-1]
    assert annual["facility_kwh"] == pytest.approx(store.query_windows("site", "1d")["facility_kwh"].sum(), rel=1e-12)
    store.close()


def test_a_failed_days_record_is_written_again_and_the_checkpoint_keeps_the_day_meanwhile(tmp_path):
    import msgspec

    from dcpue.runtime.worker import Checkpoint

    reg, parts = _days_fleet(2)
    store = _RecordingStore(tmp_path / "w.sqlite").setup()
    bus = _published(parts)
    worker = _run_worker(reg, parts, store, bus, steps=12)  # 24 hours: the first day not yet closed
    while worker.engine.newest_complete("a") is None:
        store.fail_next = True  # the save of the step that completes the day fails, offsets stay uncommitted
        worker.step(timeout_s=0.1, max_records=1)
    assert worker.stats.errors["state_write"] >= 1
    assert "a#days0" not in store.load_states()
    worker.step(timeout_s=0.1, max_records=1)  # the next commit writes both
    assert "a#days0" in store.saves[-1]
    state = msgspec.msgpack.decode(Checkpoint.decode(store.load_states()["a"]).state)
    assert state["complete_through"] is None and len(state["complete"]["1d"]["starts"]) == 8  # the day, carried
    worker.step(timeout_s=0.1, max_records=1)
    checkpoint = Checkpoint.decode(store.load_states()["a"])
    state = msgspec.msgpack.decode(checkpoint.state)
    assert state["complete_through"] == T0 and state["complete"]["1d"] is None and checkpoint.days_slot == 0
    store.close()


def test_a_days_record_that_lands_without_its_checkpoint_leaves_the_previous_checkpoint_whole(tmp_path,
                                                                                              monkeypatch):
    """Catching up, one commit can span days enough that the oldest kept days are forgotten meanwhile. If its new
    days record lands and its checkpoint does not, the worker that takes over restores the previous checkpoint:
    the record that one names must still hold the days it left out. A year shrunk to 2 days makes it short."""
    from dcpue.analytics import stream

    monkeypatch.setattr(stream, "ANNUAL_DAYS", 2)
    monkeypatch.setattr(stream.StreamEngine, "KEEP_COMPLETE_MS", {"1d": 3 * 86_400_000})
    reg, parts = _days_fleet(9, batch_hours=6)
    store = _RecordingStore(tmp_path / "w.sqlite").setup()
    bus = _published(parts)
    first = _run_worker(reg, parts, store, bus, steps=4 * 4 + 2)  # day 4, 12:00, one step a 6-hour batch
    assert first.engine.newest_complete("a") == T0 + 3 * 86_400_000
    store.land_only = lambda key: "#" in key  # four days in one step: the days record lands, the checkpoint not
    assert first.step(timeout_s=0.1, max_records=4 * 4) == 4 * 4
    assert first.stats.errors["state_write"] == 1
    second = _run_worker(reg, parts, store, bus)  # the first one is gone; the next takes over from the store
    assert second.stats.sites_restored == 1 and not second.stats.errors.get("bad_checkpoint")
    _assert_as_uninterrupted(store, reg, parts, tmp_path, ("12mo",))
    store.close()


def test_an_unreadable_days_record_costs_its_days_not_the_rest_of_the_checkpoint(tmp_path):
    reg, parts = _days_fleet(2, batch_hours=4)
    store = _RecordingStore(tmp_path / "w.sqlite").setup()
    bus = _published(parts)
    _run_worker(reg, parts, store, bus, steps=10)  # 40 hours: a day complete and in its record
    (key,) = [key for key in store.load_states() if "#" in key]
    store.save_states({key: b"\x00not a record"})
    second = _run_worker(reg, parts, store, bus)
    assert second.stats.sites_restored == 1 and second.stats.errors["bad_checkpoint"] == 1
    # the running day went on from the checkpoint: the second day's total is whole, as without the restart
    _assert_as_uninterrupted(store, reg, parts, tmp_path, ("1d",))
    store.close()


def test_a_days_record_never_replaces_one_a_checkpoint_on_the_store_may_name():
    from dcpue.runtime.worker import DaysRecords

    days = DaysRecords()  # a new holder: a checkpoint of a predecessor, even one landing late, may name either record
    assert days.plan(None) == (None, None)  # no complete day: nothing to write, nothing to name
    assert days.plan(1) == (None, None)  # so the first checkpoint carries its days and writes no record
    days.saved(None, 1, None)
    assert days.plan(1) == (0, None)  # now a record, and the checkpoint still carries the day itself
    days.saved(0, 1, None)
    assert days.plan(1) == (None, 0)  # from now on the checkpoint leaves day 1 to record 0
    days.saved(None, 1, 0)
    assert days.plan(2) == (1, 0)  # a new day goes to the other record; the checkpoint still names record 0
    days.saved(1, 2, 0)
    assert days.plan(2) == (None, 1)
    days.failed(None, 1)  # that checkpoint may or may not be on the store: records 0 and 1 are both pinned
    assert days.plan(3) == (None, 1)  # so day 3 waits, carried by the checkpoint
    days.saved(None, 3, 1)  # acknowledged: only record 1 is named now
    assert days.plan(3) == (0, 1)
    days.failed(0, 1)  # record 0 may hold day 2's or day 3's record: named by nothing until written again
    assert days.acked == {1: 2} and days.plan(3) == (0, 1)


def test_a_checkpoint_that_fails_halfway_through_its_restore_leaves_nothing_of_it_behind(tmp_path):
    """The site starts afresh, as the log says: no running sums, windows or clock of the broken checkpoint stay in
    the engine, and the failure is counted once."""
    import msgspec

    from dcpue.runtime.worker import Checkpoint

    reg, parts = _days_fleet(1)
    store = _RecordingStore(tmp_path / "w.sqlite").setup()
    bus = _published(parts)
    _run_worker(reg, parts, store, bus, steps=4)
    saved = Checkpoint.decode(store.load_states()["a"])
    state = msgspec.msgpack.decode(saved.state)
    assert state["max_ts"] is not None and state["open"]["rows"] > 0
    state["acc"]["1d"] = {"columns": ["facility_kwh"], "rows": 3, "coded": [], "blocks": [[b"\x00", [0]]]}
    store.save_states({"a": Checkpoint(saved.partition, saved.offset, msgspec.msgpack.encode(state)).encode()})
    settings = Settings(bus={"commit_interval_s": 0})
    second = AnalyticsWorker(reg, settings, bus.consumer([settings.bus.topics.readings], "g"), store, state=store)
    second._take("a")  # noqa: SLF001 (what its first message does)
    assert second.stats.sites_restored == 0 and second.stats.errors == {"bad_checkpoint": 1}
    engine = second.engine
    assert "a" not in engine._max_ts and "a" not in engine._final_until  # noqa: SLF001
    assert engine._open.empty and all(acc.empty for acc in engine._acc.values())  # noqa: SLF001
    store.close()
