"""The analytics worker: a thin loop from the readings topic to the result store.

poll → decode → validate against the registry (dead-letter what fails) → engine → write →
commit. Offsets are committed only after the results they produced are written, so a crash
replays uncommitted batches; the store's upsert-by-key makes the replay idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from dcpue.analytics.energy import PointIds
from dcpue.analytics.stream import (
    StreamEngine,
    UnusableRecord,
    complete_gap,
    restore_site,
    snapshot_complete,
    snapshot_sites,
)
from dcpue.errors import CommitError, SinkError
from dcpue.ports import Consumer, Message, Producer, ResultSink, StateStore, days_key, state_key_site
from dcpue.registry import Registry
from dcpue.runtime.latency import LatencyHistogram
from dcpue.settings import Settings
from dcpue.wire import PollDecoder

log = logging.getLogger(__name__)

NO_DAY = -(2**63)  # older than any day start

DEAD_LETTER_COLUMNS = ["topic", "key", "reason", "payload"]
INPUTS_LOAD_S = 30.0  # longest a starting worker waits for the silences topic before evaluating alerts
SAVING_POLL_S = 0.1  # longest poll while a checkpoint is saved in the background (its commit follows the poll)


@dataclass
class WorkerStats:
    """Counters of one worker, for the status endpoint and self-monitoring."""

    messages: int = 0
    steps: int = 0  # steps that handled messages: messages / steps is the poll size the worker got
    readings: int = 0
    dead_letters: int = 0
    late_dropped: int = 0
    replayed_skipped: int = 0
    sites_restored: int = 0
    windows_written: int = 0
    last_write_s: float = 0.0
    write_s: float = 0.0  # every write of results, in the background or not
    newest_ts_ms: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # the main thread's time by what it did [s]: waiting for and fetching messages and alert inputs (poll),
    # decoding and checking them, the engine, alert rules and cooling advice, writing or waiting for a background
    # write (and backing off after a failed one), checkpoints and commits, partitions assigned or revoked (state
    # loaded). Where a worker that falls behind spends its time, and how much of it is spare (poll)
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUSY_PHASES, 0.0))


BUSY_PHASES = ("poll", "decode", "engine", "alerts", "write", "checkpoint", "rebalance")


def validate_against_registry(frame: pd.DataFrame, registry: Registry) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split readings into those of known (site, point) and dead letters for the rest, by the frame's ``pid``
    column (each reading's row in the registry's points table, -1 for an unknown point: :class:`PointIds`)."""
    ok = frame["pid"].to_numpy() >= 0
    if ok.all():
        return frame, pd.DataFrame(columns=DEAD_LETTER_COLUMNS)
    bad = frame[~ok]
    site_known = bad["site"].isin(registry.site_map.keys())
    reasons = np.where(site_known, "unknown point " + bad["point"].astype(str) + " for site " + bad["site"],
                       "unknown site " + bad["site"].astype(str))
    letters = pd.DataFrame(
        {
            "topic": "",
            "key": bad["site"].to_numpy(),
            "reason": reasons,
            "payload": bad[["point", "ts", "value", "quality"]].to_dict("records"),
        }
    )
    return frame[ok], letters


def reject_future(frame: pd.DataFrame, now_ms: int, max_future_s: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off readings stamped more than ``max_future_s`` after ``now_ms`` (a skewed device clock)."""
    limit = now_ms + int(max_future_s * 1000)
    ahead = (frame["ts"] > limit).to_numpy()
    if not ahead.any():
        return frame, pd.DataFrame(columns=DEAD_LETTER_COLUMNS)
    bad = frame[ahead]
    letters = pd.DataFrame({
        "topic": "",
        "key": bad["site"].to_numpy(),
        "reason": [f"timestamp {ts} is {(ts - now_ms) / 1000:.0f} s ahead of the clock (limit {max_future_s:g} s)"
                   for ts in bad["ts"]],
        "payload": bad[["point", "ts", "value", "quality"]].to_dict("records"),
    })
    return frame[~ahead], letters


class _Results(NamedTuple):
    """What one step computed, to be written before its offsets are committed."""

    windows: pd.DataFrame
    dead: pd.DataFrame  # dead letters
    readings: pd.DataFrame
    events: list[Any]  # alert events
    advice: list[Any]  # cooling recommendations
    sent_ms: np.ndarray  # the producer send times of the messages behind them [ms]


_NOT_SAVED = "not saved"  # a background save not made (its results' write failed) or not finished (it raised)


@dataclass(slots=True)
class _Save:
    """The checkpoints of one commit, encoded when it was due, and what their outcome settles.

    ``positions``: the consumer's positions when they were encoded, for a save made in the background while the
    next poll is fetched and computed (None: commit the positions current when it is settled); ``outcome``: set
    by the writer thread (None: saved, a :class:`SinkError`, or ``_NOT_SAVED``)."""

    blobs: dict[str, bytes]
    plans: dict[str, tuple[int | None, int | None, int | None]]  # site → (newest complete day, write slot, named slot)
    touched: set[str]
    alerts_touched: set[str]
    positions: Any = None
    outcome: SinkError | str | None = _NOT_SAVED
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sending: bool = False
    _abandoned: bool = False

    def start_sending(self) -> bool:
        """The writer's: whether to send the checkpoints (not if the save was abandoned)."""
        with self._lock:
            self._sending = not self._abandoned
            return self._sending

    def abandon(self) -> bool:
        """Give the save up unless its checkpoints are being sent already; whether it was given up."""
        with self._lock:
            self._abandoned = not self._sending
            return self._abandoned


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A site's state and the bus position it includes: (partition, next offset) of that site.

    ``state`` is the PUE engine's (empty while the site sent nothing), ``alerts`` the alert engine's
    (empty without alerting), ``days_slot`` the days record (``site#days0`` or ``#days1``) holding the complete
    days the engine state left out (None: it left none out). Version 1 checkpoints (no alert state) are still read.
    """

    partition: int
    offset: int
    state: bytes
    alerts: bytes = b""
    days_slot: int | None = None

    def encode(self) -> bytes:
        import msgspec

        return msgspec.msgpack.encode({"v": 2, "p": self.partition, "o": self.offset, "s": self.state,
                                       "a": self.alerts, "d": self.days_slot})

    @staticmethod
    def decode(blob: bytes) -> Checkpoint:
        import msgspec

        obj = msgspec.msgpack.decode(blob)
        if not isinstance(obj, dict) or obj.get("v") not in (1, 2):
            raise ValueError("not a dcpue worker checkpoint (version 1 or 2)")
        slot = obj.get("d")
        return Checkpoint(int(obj["p"]), int(obj["o"]), bytes(obj["s"]), bytes(obj.get("a", b"")),
                          None if slot is None else int(slot))


@dataclass
class DaysRecords:
    """Where a site's complete days are saved apart: two records (``site#days0``, ``site#days1``), so a new one
    never replaces the one a checkpoint on the store may still need (a newer record can lack days the older
    checkpoint's replay needs: days older than a year are forgotten between them).

    ``acked``: slot → newest day of the record the store acknowledged in it; ``pinned``: the slots a checkpoint
    on the store may name (the newest acknowledged one's, and those of checkpoints sent since and not
    acknowledged). A new record goes to a slot not pinned; a checkpoint names the newest acknowledged record
    not being rewritten, and carries the days after it.
    """

    acked: dict[int, int] = field(default_factory=dict)
    # a holder that has had no checkpoint acknowledged yet knows neither slot is free: a predecessor's checkpoint,
    # even one of its saves landing late, may name either
    pinned: set[int] = field(default_factory=lambda: {0, 1})

    def plan(self, newest: int | None) -> tuple[int | None, int | None]:
        """(slot to write a new record to, or None; slot the checkpoint names, or None) for a site whose newest
        complete day is ``newest``."""
        write = None
        if newest is not None and newest > max(self.acked.values(), default=NO_DAY):
            write = next((slot for slot in (0, 1) if slot not in self.pinned), None)
        named = max((slot for slot in self.acked if slot != write), key=self.acked.__getitem__, default=None)
        return write, named

    def saved(self, write: int | None, newest: int | None, named: int | None) -> None:
        """The store acknowledged the checkpoint naming ``named`` and the record written to ``write``."""
        self.pinned = set() if named is None else {named}
        if write is not None and newest is not None:  # (a write is only planned for a site with a complete day)
            self.acked[write] = newest

    def failed(self, write: int | None, named: int | None) -> None:
        """The save failed: either of its records may or may not be on the store."""
        if named is not None:
            self.pinned.add(named)
        if write is not None:
            self.acked.pop(write, None)


@dataclass
class Backoff:
    """Exponential backoff between retries of a failed write: 0.1 s doubling up to ``max_s``."""

    max_s: float = 5.0
    delay_s: float = 0.0

    def wait(self) -> None:
        self.delay_s = min(self.max_s, max(0.1, self.delay_s * 2))
        time.sleep(self.delay_s)

    def reset(self) -> None:
        self.delay_s = 0.0


class AnalyticsWorker:
    """Consumes reading batches, keeps PUE windows current in the store.

    Results are written after every poll; every ``bus.commit_interval_s`` the state of the sites
    touched since is checkpointed and only then are the offsets committed, so a checkpoint always
    includes at least what the committed offsets say was processed. Each site's checkpoint carries
    the position of the last message it includes; a worker that takes the site over (restart or
    rebalance) restores it and skips that site's messages below that position, so a replay neither
    loses nor counts a reading twice. With ``overlap_writes`` (and a consumer that offers ``positions()``) a
    due checkpoint is encoded at once and saved by the writer thread after the step's results, while the next
    poll is fetched and computed; the positions of the step it holds are committed when that is done.

    If the store refuses a write, the results are kept, the consumer is paused (it stays in its
    group) and the write is retried with backoff; nothing is committed until it succeeds.

    With ``alerts`` (an :class:`~dcpue.analytics.alerts.engine.AlertEngine`) the worker answers for the
    alerts of every registry site on its partitions (silent ones included: "no data" needs them), their
    alert state travels in the same checkpoints, and ``health`` (a consumer of the collectors' health
    topic, read from its end, and of the silences topic, read whole; never committed) feeds the device
    and spool rules and the silences set through the API.
    """

    def __init__(self, registry: Registry, settings: Settings, consumer: Consumer, store: ResultSink,
                 dead_letter_producer: Producer | None = None, clock: Callable[[], int] | None = None,
                 emit_groups: bool = True, state: StateStore | None = None,
                 alerts: Any = None, alert_output: Callable[[list[Any]], None] | None = None,
                 health: Consumer | None = None, cooling: Any = None,
                 recommendation_output: Callable[[list[dict[str, Any]]], None] | None = None,
                 overlap_writes: bool = False) -> None:
        self.registry = registry
        self.settings = settings
        self.consumer = consumer
        self.store = store
        self.dead_letter_producer = dead_letter_producer
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.engine = StreamEngine(registry, settings.engine, emit_groups=emit_groups)
        self._point_ids = PointIds(self.engine.points)  # the engine's points table: the rows it expects
        self._decoder = PollDecoder()
        self.state = state
        self.alerts = alerts  # a dcpue.analytics.alerts.engine.AlertEngine, or None
        self.alert_output = alert_output  # where its events go (history, alerts topic, webhooks)
        self.health = health
        self._inputs_loaded = False  # the silences set before this worker started have been read
        self.cooling = cooling  # a dcpue.runtime.cooling.CoolingAdvisor, or None
        self.recommendation_output = recommendation_output  # store, InfluxDB, recommendations topic
        self._alert_sites: set[str] = set()  # sites whose alerts this worker answers for
        self._alerts_touched: set[str] = set()  # of those, changed since the last checkpoint
        self._grouped = hasattr(consumer, "on_revoked")  # partitions (and so sites) come and go
        self._site_partitions: dict[str, int] = {}  # registry site → readings partition (group consumers)
        if alerts is not None and self._grouped:
            alerts.drop_sites(set(alerts.sites))  # none until partitions are assigned
        self.stats = WorkerStats()
        self._touched: set[str] = set()  # sites changed since the last checkpoint
        self._owned: set[str] = set()  # sites whose state this worker holds
        self._restorable: dict[str, Checkpoint] = {}  # checkpoints of sites not yet seen since assignment
        self._restorable_days: dict[str, bytes] = {}  # and the days record each of those names
        self._days: dict[str, DaysRecords] = {}  # held sites' days records: checkpoints leave their days out
        self._position: dict[str, tuple[int, int]] = {}  # site → (partition, next offset) processed
        self._skip_before: dict[str, tuple[int, int]] = {}  # site → position its restored state includes
        self._durable_offsets = bool(getattr(consumer, "durable_offsets", False))
        self._last_prune_ms = 0
        self._unwritten: list[_Results] = []  # computed and not yet written, oldest first
        # with overlap_writes, the oldest of them may be being written in the background while the next poll is
        # fetched and computed; it stays in _unwritten until the write succeeded
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="dcpue-writer") if overlap_writes else None
        self._writing: Future[SinkError | float] | None = None
        # a checkpoint due while writes overlap is saved by the writer after the step's results, and its positions
        # committed here once both are done: the next poll is fetched and computed meanwhile
        # (a group consumer must also let the save land before its partitions go to another member: before_revoke)
        self._defer_saves = overlap_writes and hasattr(consumer, "positions") and (
            not hasattr(consumer, "on_revoked") or hasattr(consumer, "before_revoke"))
        self._saving: _Save | None = None
        self._commits_blocked = False  # set when a rebalance was not followed through (see _timed_rebalance)
        # from a batch's send (Kafka CreateTime) to its results written: what "live" PUE lags behind the collectors
        self.write_latency = LatencyHistogram()
        self._uncommitted = False
        self._last_commit = time.monotonic()
        self._backoff = Backoff()
        self._paused = False
        kafka = settings.bus.kafka
        # the wait must end before the group coordinator, missing this member's heartbeats while kafka-python's
        # network thread waits, drops it from the group (its partitions would then go on without it)
        self._revoke_wait_s = max(0.5, (kafka.session_timeout_ms - 2 * kafka.heartbeat_interval_ms) / 1000)
        if hasattr(consumer, "on_revoked"):  # a group consumer: state follows partition assignment
            consumer.on_revoked = self._timed_rebalance(self._on_revoked)  # type: ignore[attr-defined]
            consumer.on_assigned = self._timed_rebalance(self._on_assigned)  # type: ignore[attr-defined]
            if self._defer_saves:
                consumer.before_revoke = self._let_save_land  # type: ignore[attr-defined]
        else:
            self._on_assigned(None)

    def _timed_rebalance(self, callback: Callable[[list[int]], None]) -> Callable[[list[int]], None]:
        """``callback`` (run by the consumer inside a poll) with its time counted as ``rebalance``, not poll."""
        def timed(partitions: list[int]) -> None:
            busy = self.stats.busy_s
            started, settling = time.perf_counter(), busy["write"] + busy["checkpoint"]
            try:
                # a save in the background is settled first, committing nothing: the group has changed since its
                # positions were taken (the partitions' owners replay from the last commit; the checkpoints skip
                # what they hold)
                self._collect_write(commit=False)
            except BaseException:
                # interrupted (SIGTERM) or failed: the partitions are released below, but the consumer will not
                # rewind the ones it keeps, so its positions no longer match what is saved: commit nothing more
                self._commits_blocked = True
                raise
            finally:  # (the settling counted as write and checkpoint)
                try:
                    callback(partitions)
                finally:
                    busy["rebalance"] += (time.perf_counter() - started
                                          - (busy["write"] + busy["checkpoint"] - settling))
        return timed

    def _let_save_land(self) -> None:
        """Wait for a checkpoint being saved in the background (called by the consumer before its group rebalances,
        on the consumer's own thread while the main thread waits in a poll): the partitions' next owner reads the
        state topic once the group has rebalanced, and must find it there, not see it land later."""
        job, save = self._writing, self._saving
        if job is None or save is None:
            return
        log.info("the group rebalances: waiting for the checkpoint being saved")
        try:
            job.exception(timeout=self._revoke_wait_s)
        except TimeoutError:
            if save.abandon():  # its results are still being written: it is not sent (its sites stay due)
                log.warning("results still being written after %.1f s as the group rebalances: their checkpoint "
                            "is not sent", self._revoke_wait_s)
            else:
                log.warning("a checkpoint still being sent after %.1f s as the group rebalances: should it land "
                            "after its partitions' next owner read the state topic, that owner and its successors "
                            "may replay from an older one", self._revoke_wait_s)

    # -- the loop ------------------------------------------------------------------------------
    def step(self, timeout_s: float = 0.5, max_records: int | None = None) -> int:
        """Process one poll's worth of messages (at most ``max_records``, default ``bus.max_poll_records``);
        returns how many messages were handled."""
        if self._writing is not None and self._writing.done():
            self._collect_write()  # a background save done: commit its positions before the poll, not after
        if self._unwritten and self._writing is None and not self._write_all():  # a failed write first
            self._keep_membership()
            return 0
        if self._paused:
            self._resume()
        busy, polled = self.stats.busy_s, time.perf_counter()
        accounted = sum(busy.values())  # of the poll's time, what rebalancing (and settling a save) took
        health, health_letters = self._poll_alert_inputs()
        due_in = self.settings.bus.commit_interval_s - (time.monotonic() - self._last_commit)
        if self._uncommitted and due_in > 0:
            # an idle poll must not hold a coming commit back (the end of a burst waits no longer); an overdue
            # one (a commit that failed) keeps the whole timeout, so retries are paced by the poll
            timeout_s = min(timeout_s, due_in)
        if self._saving is not None:  # a background save's commit waits for this poll: an idle one is kept short
            timeout_s = min(timeout_s, SAVING_POLL_S)
        messages = self.consumer.poll(timeout_s, max_records or self.settings.bus.max_poll_records)
        decoding = time.perf_counter()
        busy["poll"] += decoding - polled - (sum(busy.values()) - accounted)
        if not messages and not health and not health_letters:
            self._collect_write()  # idle: the last step's write had its time
            if self._uncommitted and time.monotonic() - self._last_commit >= self.settings.bus.commit_interval_s:
                self.checkpoint()
            return 0
        frames, letters = self._decode(messages)
        letters += health_letters
        readings = (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)) if frames else None
        if readings is not None:
            readings, unknown = validate_against_registry(readings, self.registry)
            readings, future = reject_future(readings, self.clock(), self.settings.engine.max_future_s)
            for extra in (unknown, future):
                if not extra.empty:
                    extra["topic"] = self.settings.bus.topics.readings
                    letters.append(extra)
            # the points-table rows found while decoding go to the engine only, not to the other consumers
            pid = readings.pop("pid").to_numpy(np.int64)
        dead = pd.concat(letters, ignore_index=True) if letters else pd.DataFrame(columns=DEAD_LETTER_COLUMNS)
        computing = time.perf_counter()
        busy["decode"] += computing - decoding
        if readings is not None:
            late = self.engine.add(readings, pid)
            if late:
                self.stats.late_dropped += late
                log.warning("dropped %d readings older than their closed windows (per site: status late_by_site)",
                            late)
            self._touched.update(self.engine.sites_of(pid))
            self.stats.readings += len(readings)
            if not readings.empty:
                self.stats.newest_ts_ms = max(self.stats.newest_ts_ms, int(readings["ts"].max()))
        rows = self.engine.advance()
        observing = time.perf_counter()
        busy["engine"] += observing - computing
        events = (self.alerts.observe(readings=readings, windows=rows, health=health, settled=self._settled_sites())
                  if self.alerts is not None else [])
        advice = self.cooling.observe(readings) if self.cooling is not None else []
        busy["alerts"] += time.perf_counter() - observing
        sent_ms = np.fromiter((m.timestamp_ms for m in messages if m.timestamp_ms is not None), dtype=np.int64)
        # queued before the last step's write is collected: should that write raise, these are not lost either
        self._unwritten.append(_Results(rows, dead, readings if readings is not None else pd.DataFrame(), events,
                                        advice, sent_ms))
        self._collect_write()  # the last step's write, done while this step fetched and computed
        self._uncommitted = True
        self.stats.messages += len(messages)
        if messages:  # not a poll that brought only health records or silences
            self.stats.steps += 1
        commit_due = time.monotonic() - self._last_commit >= self.settings.bus.commit_interval_s
        if self._writer is not None and len(self._unwritten) == 1 and (not commit_due or self._defer_saves):
            save = None
            if commit_due:
                started = time.perf_counter()
                save = self._prepare_save(self.consumer.positions(), deferred=True)  # type: ignore[attr-defined]
                self.stats.busy_s["checkpoint"] += time.perf_counter() - started
            self._writing = self._writer.submit(self._write_results, self._unwritten[0], save)
        elif self._write_all() and commit_due:
            self.checkpoint()
        return len(messages)

    def _write_results(self, results: _Results, save: _Save | None = None) -> SinkError | float:
        """Write one step's results to every output: when they were written (Unix time [s]), or the error if
        one refused them (they are then kept). Then, if they were written, ``save``'s checkpoints (its outcome
        set on it)."""
        written = self._write_outputs(results)
        if save is not None and not isinstance(written, SinkError) and save.start_sending():
            save.outcome = self._save_states(save)
        return written

    def _write_outputs(self, results: _Results) -> SinkError | float:
        started = time.perf_counter()
        try:
            self.store.write_windows(results.windows)
            if not results.readings.empty and hasattr(self.store, "write_readings"):
                self.store.write_readings(results.readings)  # type: ignore[attr-defined]
            if not results.dead.empty:
                self._dead_letter(results.dead)
            if results.events and self.alert_output is not None:
                self.alert_output(results.events)
            if results.advice and self.recommendation_output is not None:
                self.recommendation_output(results.advice)
        except SinkError as exc:
            return exc
        finally:
            self.stats.write_s += time.perf_counter() - started
        self.stats.last_write_s = time.perf_counter() - started
        return time.time()

    def _written(self, outcome: SinkError | float) -> bool:
        """Account for the write of the oldest unwritten results: drop them if it succeeded, else keep them."""
        results = self._unwritten[0]
        if isinstance(outcome, SinkError):
            self._count_error("store_write")
            log.warning("store write failed, keeping %d rows and retrying: %s", len(results.windows), outcome)
            return False
        self._unwritten.pop(0)
        if results.sent_ms.size:  # to when they were written (in the background: not when that was noticed)
            self.write_latency.add(outcome - results.sent_ms / 1000.0)
        self.stats.windows_written += len(results.windows)
        self._prune_live()
        return True

    def _collect_write(self, commit: bool = True) -> None:
        """Wait for the background write, if one is running, and account for it; then settle the checkpoint saved
        with it, if any (and, with ``commit``, commit its positions)."""
        if self._writing is None:
            if self._saving is not None and self._writer is not None:
                # a save handed to the writer when an interruption came: what the writer still holds runs first
                self._writer.submit(lambda: None).result()
            self._settle_pending(commit=False)
        else:
            started = time.perf_counter()
            try:
                outcome = self._writing.result()
            except BaseException:
                # the write raised (not a refused write: a bug): it is over, its results stay queued for the final
                # checkpoint; interrupted while it runs (SIGTERM), it stays marked running and is waited for again
                if self._writing.done():
                    self._writing = None
                    self._settle_pending(commit=False, failed=True)
                raise
            finally:
                self.stats.busy_s["write"] += time.perf_counter() - started
            self._writing = None
            try:
                if self._written(outcome):
                    self._backoff.reset()
            finally:
                self._settle_pending(commit)

    def _settle_pending(self, commit: bool, failed: bool = False) -> None:
        """Settle the background save, if there is one (``failed``: its job raised, whatever it set)."""
        save, self._saving = self._saving, None
        if save is None:
            return
        if failed:
            save.outcome = _NOT_SAVED
        started = time.perf_counter()
        try:
            self._settle(save, commit)
        finally:
            self.stats.busy_s["checkpoint"] += time.perf_counter() - started

    def close(self) -> None:
        """Wait for a background write still running and stop the writer thread (after the last checkpoint)."""
        if self._writer is not None:
            if self._writing is not None:
                self._writing.exception()  # done, whatever its outcome: nothing writes after this returns
            self._writer.shutdown(wait=True)

    def _write_all(self) -> bool:
        """Write every pending result in order, here and now; on failure keep them, back off and return False."""
        self._collect_write()
        started = time.perf_counter()
        try:
            while self._unwritten:
                if not self._written(self._write_results(self._unwritten[0])):
                    self._backoff.wait()
                    return False
                self._backoff.reset()
            return True
        finally:
            self.stats.busy_s["write"] += time.perf_counter() - started

    def checkpoint(self) -> bool:
        """Save the touched sites' state, then commit the offsets; False if results are still unwritten."""
        if not self._write_all():
            return False
        started = time.perf_counter()
        try:
            return self._save_and_commit()
        finally:
            self.stats.busy_s["checkpoint"] += time.perf_counter() - started

    def _save_and_commit(self) -> bool:
        save = self._prepare_save()
        save.outcome = self._save_states(save)
        return self._settle(save)

    def _prepare_save(self, positions: Any = None, deferred: bool = False) -> _Save:
        """Encode the checkpoints of every site changed since the last save (they are then no longer "touched", the
        save holds them: with ``deferred``, as the save to settle once the writer has done it)."""
        if self.alerts is not None:
            self._alerts_touched |= self.alerts.take_touched() & self._alert_sites
        blobs: dict[str, bytes] = {}
        plans: dict[str, tuple[int | None, int | None, int | None]] = {}
        if self.state is not None and (self._touched or self._alerts_touched):
            plans = self._days_plans()
            records = snapshot_complete(self.engine, [site for site, plan in plans.items() if plan[1] is not None])
            blobs = ({site: cp.encode() for site, cp in self._checkpoints(plans).items()}
                     | {days_key(site, plans[site][1]): blob for site, (_, blob) in records.items()})
        save = _Save(blobs, plans, self._touched, self._alerts_touched, positions)
        if deferred:
            self._saving = save
        self._touched, self._alerts_touched = set(), set()
        return save

    def _save_states(self, save: _Save) -> SinkError | None:
        """Send ``save``'s checkpoints to the state store (None: acknowledged)."""
        if not save.blobs:
            return None
        try:
            self.state.save_states(save.blobs)  # type: ignore[union-attr]
        except SinkError as exc:
            return exc
        return None

    def _settle(self, save: _Save, commit: bool = True) -> bool:
        """Account for ``save``'s outcome: on success commit the offsets (``save.positions``, or the current ones;
        not with ``commit`` False); otherwise its sites stay due a checkpoint and nothing is committed. (Sites
        released since it was encoded have no days records here and are no longer due.)"""
        if save.outcome is not None:
            self._touched |= save.touched & self._owned
            self._alerts_touched |= save.alerts_touched & self._alert_sites
            # refused, or not sent (a save that raised may have sent part): either record may be on the store or not
            for site, (_, write, named) in save.plans.items():
                if site in self._days:
                    self._days[site].failed(write, named)
            if save.outcome is not _NOT_SAVED:
                self._count_error("state_write")
                log.warning("state checkpoint failed, offsets not committed: %s", save.outcome)
            return False
        for site, (newest, write, named) in save.plans.items():
            if site in self._days:
                self._days[site].saved(write, newest, named)
        if not commit:
            return True
        if self._commits_blocked:
            log.warning("offsets not committed: a rebalance was interrupted; the next owners replay from the last "
                        "commit")
            return False
        try:
            # only now: the results and the state of everything polled (up to the positions) are saved
            if save.positions is None:
                self.consumer.commit()
            else:
                self.consumer.commit(save.positions)  # type: ignore[call-arg]
        except CommitError as exc:
            self._count_error("commit")
            log.info("offsets not committed (%s); the checkpoint's positions keep the replay exact", exc)
            return False
        # a background save's positions may be behind what has been polled since
        self._uncommitted = save.positions is not None and self.consumer.positions() != save.positions  # type: ignore[attr-defined]
        self._last_commit = time.monotonic()
        return True

    def _days_plans(self) -> dict[str, tuple[int | None, int | None, int | None]]:
        """Per held site due a checkpoint: (its newest complete day, the days slot to write a new record to, the
        days slot its checkpoint names); see :class:`DaysRecords`."""
        plans = {}
        for site in self._engine_sites_due():
            newest = self.engine.newest_complete(site)
            plans[site] = (newest, *self._days.setdefault(site, DaysRecords()).plan(newest))
        return plans

    def _engine_sites_due(self) -> set[str]:
        """Held sites whose checkpoint is due: their engine state or their alert state changed (a checkpoint
        carries both, so one whose alerts alone changed is written with its engine state too)."""
        return (self._touched | (self._alerts_touched & self._alert_sites)) & self._owned

    def _checkpoints(self, plans: dict[str, tuple[int | None, int | None, int | None]]) -> dict[str, Checkpoint]:
        """The checkpoints of every site whose engine or alert state changed since the last one (``plans``: of
        :meth:`_days_plans`, for each held one)."""
        engine_sites = set(plans)
        named = {site: slot for site, (_, _, slot) in plans.items() if slot is not None}
        blobs = snapshot_sites(self.engine, engine_sites,
                               saved_through={site: self._days[site].acked[slot] for site, slot in named.items()})
        alert_sites = self._alerts_touched & self._alert_sites
        alert_blobs = self.alerts.snapshot_sites(alert_sites) if self.alerts is not None else {}
        out = {}
        for site in sorted(engine_sites | alert_sites):
            if site in blobs:
                partition, offset = self._position.get(site, (-1, -1))
                state, slot = blobs[site], named.get(site)
            else:  # not held yet, only its alerts changed: keep the engine state and position it was restored with
                held = self._restorable.get(site)
                partition, offset, state, slot = ((held.partition, held.offset, held.state, held.days_slot) if held
                                                  else (-1, -1, b"", None))
            out[site] = Checkpoint(partition, offset, state, alert_blobs.get(site, b""), slot)
            if site not in blobs and site in self._restorable:
                self._restorable[site] = out[site]
        return out

    # -- state follows the partitions ------------------------------------------------------------
    def _on_assigned(self, partitions: list[int] | None) -> None:
        """Load the checkpoints of the sites on newly assigned partitions (all of them if ``None``).

        Engine state is restored when a site's first message arrives; alert state at once, for every
        registry site on those partitions, so a silent site still raises "no data".
        """
        checkpoints = self.state.load_states(partitions) if self.state is not None else {}
        loaded = 0
        records: dict[str, dict[int, bytes]] = {}
        for key, blob in checkpoints.items():
            site = state_key_site(key)
            if site in self._owned or site not in self.registry.site_map:
                continue
            slot = next((slot for slot in (0, 1) if key == days_key(site, slot)), None)
            if slot is not None:
                records.setdefault(site, {})[slot] = blob
                continue
            if key != site:  # a part this version does not know
                continue
            try:
                self._restorable[site] = Checkpoint.decode(blob)
                loaded += 1
            except Exception as exc:  # noqa: BLE001 — a bad checkpoint means starting that site afresh
                self._count_error("bad_checkpoint")
                log.error("checkpoint of site %s unusable, starting it afresh: %s", site, exc)
        for site, checkpoint in self._restorable.items():  # only the days record each checkpoint names is kept
            named = records.get(site, {}).get(checkpoint.days_slot) if checkpoint.days_slot is not None else None
            if named is not None:
                self._restorable_days[site] = named
        if self.alerts is not None:
            gained = self._sites_on(partitions) - self._alert_sites
            self.alerts.own(gained)
            self._alert_sites |= gained
            for site in sorted(gained):
                self._restore_alerts(site, self._restorable.get(site))
        log.info("assigned partitions %s: %d site checkpoints available", partitions, loaded)

    def _settled_sites(self) -> set[str] | None:
        """Sites on partitions without backlog (None: every site; the consumer cannot tell)."""
        caught_up = getattr(self.consumer, "caught_up_partitions", None)
        if caught_up is None or not self._grouped:
            return None
        done = caught_up()
        return {site for site, partition in self._site_partitions.items() if partition in done}

    def _restore_alerts(self, site: str, checkpoint: Checkpoint | None) -> None:
        if checkpoint is None or not checkpoint.alerts or self.alerts is None:
            return
        try:
            self.alerts.restore_site(site, checkpoint.alerts)
        except ValueError as exc:
            self._count_error("bad_checkpoint")
            log.error("alert state of site %s unusable, starting its alerts afresh: %s", site, exc)

    def _sites_on(self, partitions: list[int] | None) -> set[str]:
        """The registry sites whose readings are keyed onto ``partitions`` (all if ``None``)."""
        sites = set(self.registry.site_map)
        partitions_for = getattr(self.consumer, "partitions_for", None)
        if partitions is None or partitions_for is None:
            return sites
        wanted = set(partitions)
        self._site_partitions = partitions_for(sites)
        return {site for site, partition in self._site_partitions.items() if partition in wanted}

    def _on_revoked(self, partitions: list[int]) -> None:
        """Forget the sites of the lost partitions.

        Called after the rebalance (the group no longer accepts our commits for them): their next
        owner restores the last checkpoint and replays from its position, so nothing is lost.
        """
        revoked = set(partitions)
        lost = {site for site, (partition, _) in self._position.items() if partition in revoked} & self._owned
        if lost:
            self.engine.drop_sites(lost)
        self._owned -= lost
        self._touched -= lost
        self._restorable.clear()
        self._restorable_days.clear()
        for site in lost:
            self._days.pop(site, None)
            self._position.pop(site, None)
            self._skip_before.pop(site, None)
        if self.alerts is not None:
            released = self._alert_sites & (self._sites_on(partitions) | lost)
            self.alerts.drop_sites(released)
            self._alert_sites -= released
            self._alerts_touched -= released
        log.info("revoked partitions %s: released %d sites", partitions, len(lost))

    def _take(self, site: str) -> None:
        """Start holding ``site``: restore its checkpoint if there is one."""
        checkpoint = self._restorable.pop(site, None)
        days = self._restorable_days.pop(site, None)
        if self.alerts is not None and site not in self._alert_sites:  # keyed onto a partition unexpectedly
            self.alerts.own({site})
            self._alert_sites.add(site)
            self._restore_alerts(site, checkpoint)
        self._days[site] = DaysRecords()  # no days record is written over until a checkpoint of ours is acknowledged
        if checkpoint is not None and checkpoint.state:  # (empty: saved for the site's alerts alone)
            try:
                try:
                    gap = complete_gap(checkpoint.state, days)
                except UnusableRecord as exc:  # an unreadable record costs its days, not the rest of the checkpoint
                    gap, days = f"its days record is unusable ({exc})", None
                if gap:  # a record missing, replaced or unreadable: the annual figure may lack days; the rest goes on
                    self._count_error("bad_checkpoint")
                    log.error("checkpoint of site %s: %s; the rolling annual figure lacks those days", site, gap)
                restore_site(self.engine, checkpoint.state, days)
                if self._durable_offsets and checkpoint.offset >= 0:
                    self._skip_before[site] = (checkpoint.partition, checkpoint.offset)
                    self._position[site] = (checkpoint.partition, checkpoint.offset)
                log.info("site %s restored from its checkpoint at partition %d offset %d", site,
                         checkpoint.partition, checkpoint.offset)
                self.stats.sites_restored += 1
            except Exception as exc:  # noqa: BLE001
                self.engine.drop_sites({site})  # nothing half restored stays: the site starts afresh, as logged
                self._skip_before.pop(site, None)
                self._count_error("bad_checkpoint")
                log.error("checkpoint of site %s unusable, starting it afresh: %s", site, exc)
        self._owned.add(site)

    def _keep_membership(self) -> None:
        """While results cannot be written, stop fetching but keep polling so the group keeps us.

        Paused again before every poll: a rebalance inside the poll may bring partitions that are not
        paused yet, and a record returned now would be skipped without being processed.
        """
        if not hasattr(self.consumer, "pause"):
            return
        self.consumer.pause()  # type: ignore[attr-defined]
        self._paused = True
        if self.consumer.poll(0.0):
            raise AssertionError("a paused consumer returned records")  # they would be lost: never go on

    def _poll_alert_inputs(self) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
        """Apply new silences; return new collector health records about this worker's sites, and dead
        letters for malformed records of either topic."""
        if self.health is None or self.alerts is None:
            return [], []
        from dcpue.runtime.alerts import apply_silence_record

        records: list[dict[str, Any]] = []
        letters: list[pd.DataFrame] = []
        for message in self._alert_input_messages():
            try:
                if message.topic == self.settings.bus.topics.silences:
                    with self.alerts.lock:
                        silence_id = apply_silence_record(self.alerts.silences, message.value)
                    log.info("silence %s applied from %s", silence_id, message.topic)
                    continue
                record = json.loads(message.value)
                if not isinstance(record, dict) or record.get("schema") != "dcpue.health":
                    raise ValueError("not a dcpue.health record")
                int(record.get("ts", "missing"))
            except (ValueError, TypeError) as exc:
                kind = "silence" if message.topic == self.settings.bus.topics.silences else "health"
                letters.append(pd.DataFrame([{"topic": message.topic, "key": message.key,
                                              "reason": f"{kind} record: {exc}",
                                              "payload": {"offset": message.offset,
                                                          "bytes_hex": message.value[:256].hex()}}]))
                continue
            if record.get("kind") == "device":
                if record.get("site") in self._alert_sites:
                    records.append(record)
            elif record.get("kind") == "collector":
                sites = [s for s in record.get("sites") or () if s in self._alert_sites]
                if sites:
                    records.append({**record, "sites": sites})
                elif not record.get("sites") and not self._grouped:  # names no site: one worker has all
                    records.append(record)
        return records, letters

    def _alert_input_messages(self) -> list[Message]:
        """New records of the alert inputs. The first call reads the silences topic to where it ended at start-up,
        so that no reading is evaluated before the silences set earlier: a restarted worker would notify them."""
        assert self.health is not None
        messages = self.health.poll(0.0, 1000)
        caught_up = getattr(self.health, "caught_up", None)
        if self._inputs_loaded or caught_up is None:
            return messages
        deadline = time.monotonic() + INPUTS_LOAD_S
        while not caught_up():
            if time.monotonic() > deadline:
                log.warning("the silences topic was not read to its end in %.0f s: going on, applying them as they "
                            "arrive", INPUTS_LOAD_S)
                break
            messages += self.health.poll(0.2, 1000)
        self._inputs_loaded = True
        return messages

    def _count_error(self, kind: str) -> None:
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1

    def _resume(self) -> None:
        self.consumer.resume()  # type: ignore[attr-defined]
        self._paused = False

    def _decode(self, messages: list[Message]) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        poll = self._decoder.decode([message.value for message in messages])
        letters: list[pd.DataFrame] = []
        include = poll.counts > 0
        for n, message in enumerate(messages):
            error, site = poll.errors[n], poll.sites[n]
            if error is not None:
                letters.append(pd.DataFrame([{
                    "topic": message.topic, "key": message.key, "reason": str(error),
                    "payload": {"offset": message.offset, "bytes_hex": message.value[:256].hex()},
                }]))
                continue
            if message.key is not None and message.key != site:
                letters.append(pd.DataFrame([{
                    "topic": message.topic, "key": message.key,
                    "reason": f"message key {message.key!r} does not match batch site {site!r}",
                    "payload": {"offset": message.offset, "site": site},
                }]))
                include[n] = False
                continue
            if not self._admit(site, message):
                include[n] = False
                continue
            if poll.rejects[n]:
                letters.append(pd.DataFrame([
                    {"topic": message.topic, "key": site, "reason": r.reason, "payload": r.to_dict()}
                    for r in poll.rejects[n]
                ]))
        if not include.any():
            return [], letters
        # one DataFrame for the whole poll: building one per small batch cost more than decoding them
        frame = poll.frame(include)
        frame["pid"] = np.concatenate([self._point_ids(poll.sites[n], poll.points[n]) for n in np.flatnonzero(include)])
        return [frame], letters

    def _admit(self, site: str, message: Message) -> bool:
        """Take the site over if new to this worker; False for a message its restored state already holds."""
        if site not in self._owned and site in self.registry.site_map:
            self._take(site)
        skip = self._skip_before.get(site)
        if skip is not None:
            if skip[0] == message.partition and message.offset < skip[1]:
                self.stats.replayed_skipped += 1
                return False
            del self._skip_before[site]  # past the checkpoint: from here on every message is new
        if message.key == site and message.offset >= 0:
            self._position[site] = (message.partition, message.offset + 1)
        return True

    def _dead_letter(self, letters: pd.DataFrame) -> None:
        self.stats.dead_letters += len(letters)
        self.store.write_dead_letters(letters)
        if self.dead_letter_producer is not None:
            topic = self.settings.bus.topics.dead_letters
            for row in letters.itertuples(index=False):
                self.dead_letter_producer.send(
                    topic, json.dumps(row.payload, default=str).encode(), key=row.key,
                    headers=(("reason", str(row.reason).encode()), ("source_topic", str(row.topic).encode())),
                )
        log.warning("dead-lettered records count=%d first_reason=%r", len(letters), letters["reason"].iloc[0])

    def _prune_live(self) -> None:
        """Keep only ``live_history_h`` of live windows; longer windows are kept."""
        newest = self.stats.newest_ts_ms
        every_ms = 600_000
        if newest - self._last_prune_ms < every_ms or not hasattr(self.store, "prune"):
            return
        self._last_prune_ms = newest
        horizon = newest - int(self.settings.engine.live_history_h * 3_600_000)
        self.store.prune(self.engine.base_label, horizon)  # type: ignore[attr-defined]

    def status(self) -> dict[str, object]:
        """Counters for the status endpoint."""
        cooling = self.cooling.status() if self.cooling is not None else {}
        latency = {"write_latency_p50_s": self.write_latency.quantile(0.5),
                   "write_latency_p99_s": self.write_latency.quantile(0.99),
                   "write_latency_max_s": self.write_latency.max_s} if self.write_latency.count else {}
        return {**self.stats.__dict__, "busy_s": dict(self.stats.busy_s), **self.engine.snapshot_counters(), **latency,
                **cooling}
