"""The analytics worker: a thin loop from the readings topic to the result store.

poll → decode → validate against the registry (dead-letter what fails) → engine → write →
commit. Offsets are committed only after the results they produced are written, so a crash
replays uncommitted batches; the store's upsert-by-key makes the replay idempotent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dcpue.analytics.stream import StreamEngine, restore_site, snapshot_sites
from dcpue.errors import DecodeError, SinkError
from dcpue.ports import Consumer, Message, Producer, ResultSink, StateStore
from dcpue.registry import Registry
from dcpue.settings import Settings
from dcpue.wire import decode_batch

log = logging.getLogger(__name__)

DEAD_LETTER_COLUMNS = ["topic", "key", "reason", "payload"]


@dataclass
class WorkerStats:
    """Counters of one worker, for the status endpoint and self-monitoring."""

    messages: int = 0
    readings: int = 0
    dead_letters: int = 0
    late_dropped: int = 0
    windows_written: int = 0
    last_write_s: float = 0.0
    newest_ts_ms: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def validate_against_registry(frame: pd.DataFrame, registry: Registry) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split readings into those of known (site, point) and dead letters for the rest."""
    known = registry.points_table.index
    keys = pd.MultiIndex.from_arrays([frame["site"], frame["point"]])
    ok = keys.isin(known)
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


class AnalyticsWorker:
    """Consumes reading batches, keeps PUE windows current in the store.

    If the store refuses a write, the results are kept and retried with backoff before anything
    else is polled, and nothing is committed until they are written: the bus holds the backlog.
    """

    def __init__(self, registry: Registry, settings: Settings, consumer: Consumer, store: ResultSink,
                 dead_letter_producer: Producer | None = None, clock: Callable[[], int] | None = None,
                 emit_groups: bool = True, state: StateStore | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.consumer = consumer
        self.store = store
        self.dead_letter_producer = dead_letter_producer
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.engine = StreamEngine(registry, settings.engine, emit_groups=emit_groups)
        self.state = state
        if state is not None:  # resume where the last checkpoint left off
            for blob in state.load_states().values():
                restore_site(self.engine, blob)
        self._touched: set[str] = set()
        self.stats = WorkerStats()
        self._last_prune_ms = 0
        self._unwritten: tuple[pd.DataFrame, pd.DataFrame] | None = None  # results not yet written
        self._backoff_s = 0.0

    def step(self, timeout_s: float = 0.5, max_records: int = 500) -> int:
        """Process one poll's worth of messages; returns how many messages were handled."""
        if self._unwritten is not None and not self._write_and_commit():
            return 0
        messages = self.consumer.poll(timeout_s, max_records)
        if not messages:
            return 0
        frames, letters = self._decode(messages)
        if frames:
            readings = pd.concat(frames, ignore_index=True)
            readings, unknown = validate_against_registry(readings, self.registry)
            readings, future = reject_future(readings, self.clock(), self.settings.engine.max_future_s)
            for extra in (unknown, future):
                if not extra.empty:
                    extra["topic"] = messages[0].topic
                    letters.append(extra)
            self.stats.late_dropped += self.engine.add(readings)
            self._touched.update(readings["site"].unique())
            self.stats.readings += len(readings)
            if not readings.empty:
                self.stats.newest_ts_ms = max(self.stats.newest_ts_ms, int(readings["ts"].max()))
        rows = self.engine.advance()
        dead = pd.concat(letters, ignore_index=True) if letters else pd.DataFrame(columns=DEAD_LETTER_COLUMNS)
        self._unwritten = (rows, dead)
        self.stats.messages += len(messages)
        self._write_and_commit()
        return len(messages)

    def _write_and_commit(self) -> bool:
        """Write the pending results; commit the bus position only once they are written."""
        assert self._unwritten is not None
        rows, dead = self._unwritten
        started = time.perf_counter()
        try:
            self.store.write_windows(rows)
            if not dead.empty:
                self._dead_letter(dead)
            if self.state is not None and self._touched:
                # state at least as new as the offsets about to be committed; replayed input after it is
                # either merged (open windows) or dropped as too late (closed ones), never counted twice
                self.state.save_states(snapshot_sites(self.engine, self._touched))
                self._touched = set()
        except SinkError as exc:
            self.stats.errors["store_write"] = self.stats.errors.get("store_write", 0) + 1
            self._backoff_s = min(5.0, max(0.1, self._backoff_s * 2))
            log.warning("store write failed, keeping %d rows and retrying in %.1f s: %s", len(rows),
                        self._backoff_s, exc)
            time.sleep(self._backoff_s)
            return False
        self._backoff_s = 0.0
        self._unwritten = None
        self.stats.last_write_s = time.perf_counter() - started
        self.stats.windows_written += len(rows)
        self.consumer.commit()  # only now: everything the polled messages produced is written
        self._prune_live()
        return True
    def _decode(self, messages: list[Message]) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        frames: list[pd.DataFrame] = []
        letters: list[pd.DataFrame] = []
        for message in messages:
            try:
                batch = decode_batch(message.value)
            except Exception as exc:  # noqa: BLE001 — a poison message must never stop the worker
                if not isinstance(exc, DecodeError):
                    log.exception("unexpected decoder error at offset %s", message.offset)
                    exc = DecodeError(f"decoder error: {type(exc).__name__}: {exc}")
                letters.append(pd.DataFrame([{
                    "topic": message.topic, "key": message.key, "reason": str(exc),
                    "payload": {"offset": message.offset, "bytes_hex": message.value[:256].hex()},
                }]))
                continue
            if message.key is not None and message.key != batch.site:
                letters.append(pd.DataFrame([{
                    "topic": message.topic, "key": message.key,
                    "reason": f"message key {message.key!r} does not match batch site {batch.site!r}",
                    "payload": {"offset": message.offset, "site": batch.site},
                }]))
                continue
            if batch.rejects:
                letters.append(pd.DataFrame([
                    {"topic": message.topic, "key": batch.site, "reason": r.reason, "payload": r.to_dict()}
                    for r in batch.rejects
                ]))
            if not batch.readings.empty:
                frames.append(batch.readings)
        return frames, letters

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
        return {**self.stats.__dict__, **self.engine.snapshot_counters()}
