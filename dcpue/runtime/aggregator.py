"""The second stage of the distributed path: site rows from every worker → cluster and fleet rows.

Workers in a consumer group each see only their partitions' sites, so none of them can compute a
cluster or the fleet. Each publishes its site rows to the metrics topic; one ``GroupWorker``
(``dcpue aggregate``) reads all of them, keeps each member's newest row per window
(:class:`~dcpue.analytics.groups.GroupAggregator`) and writes the group rows. Replaying site rows
changes nothing (newest row per key wins), so at-least-once delivery is enough.
"""

from __future__ import annotations

import logging
import time

import msgspec
import pandas as pd

from dcpue.analytics.groups import GroupAggregator
from dcpue.analytics.pue import MetricParams
from dcpue.errors import CommitError, DecodeError, SinkError
from dcpue.ports import Consumer, Message, ResultSink, StateStore, read_to_end
from dcpue.registry import Registry
from dcpue.runtime.worker import Backoff
from dcpue.settings import Settings
from dcpue.wire import decode_windows

log = logging.getLogger(__name__)

STATE_KEY = "__groups__"
CHUNK_BYTES = 512 * 1024  # state records stay well below Kafka's default 1 MB message limit


def chunk_state(blob: bytes, slot: int) -> dict[str, bytes]:
    """Records holding ``blob`` in ``slot`` (0 or 1), then the manifest naming that slot.

    Two slots alternate, so a crash while writing the chunks of one leaves the other, which the
    manifest still names, intact. Keys: ``__groups__/<slot>/<n>`` and the manifest ``__groups__``.
    """
    chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    records = {f"{STATE_KEY}/{slot}/{n}": chunk for n, chunk in enumerate(chunks)}
    records[STATE_KEY] = msgspec.msgpack.encode({"slot": slot, "chunks": len(chunks), "bytes": len(blob)})
    return records


def unchunk_state(records: dict[str, bytes]) -> bytes | None:
    """The blob the manifest in ``records`` names, or None if there is none (or it is incomplete)."""
    manifest = records.get(STATE_KEY)
    if manifest is None:
        return None
    meta = msgspec.msgpack.decode(manifest)
    parts = [records.get(f"{STATE_KEY}/{meta['slot']}/{n}") for n in range(meta["chunks"])]
    if any(p is None for p in parts):
        return None
    blob = b"".join(parts)  # type: ignore[arg-type]
    return blob if len(blob) == meta["bytes"] else None


def decode_window_messages(messages: list[Message], stats: dict[str, int]) -> list[pd.DataFrame]:
    """Window batches of ``messages``; an undecodable one is logged, counted in ``stats`` and skipped.

    Only dcpue writes the metrics topic, so a bad record there is a bug or a foreign producer, not
    device data: it is reported loudly rather than dead-lettered.
    """
    frames = []
    for message in messages:
        try:
            frames.append(decode_windows(message.value))
        except DecodeError as exc:
            stats["undecodable"] += 1
            log.error("metrics record %s/%s undecodable, skipped: %s", message.partition, message.offset, exc)
    return frames


class GroupWorker:
    """Consumes site rows, writes cluster and fleet rows; checkpoints its member rows before committing."""

    def __init__(self, registry: Registry, settings: Settings, consumer: Consumer, sink: ResultSink,
                 state: StateStore | None = None) -> None:
        engine = settings.engine
        self.settings = settings
        self.consumer = consumer
        self.sink = sink
        self.state = state
        self._sites = registry.sites_table
        self._params = MetricParams(engine.target_pue, engine.coverage_threshold, engine.hierarchy_tolerance)
        self.groups = GroupAggregator(self._sites, self._params)
        self.stats = {"messages": 0, "site_rows": 0, "group_rows_written": 0, "undecodable": 0, "store_errors": 0}
        self.complete_assignment = True  # False while this instance holds only some metrics partitions
        self._unwritten: pd.DataFrame | None = None
        self._uncommitted = False
        self._last_commit = time.monotonic()
        self._backoff = Backoff()
        self._slot = 0
        if hasattr(consumer, "on_assigned"):
            consumer.on_assigned = self._on_assigned  # type: ignore[attr-defined]
            consumer.on_revoked = self._on_revoked  # type: ignore[attr-defined]
        else:
            self._restore()

    def _restore(self) -> None:
        if self.state is None:
            return
        records = {k: v for k, v in self.state.load_states().items() if k.startswith(STATE_KEY)}
        blob = unchunk_state(records)
        if blob is not None:
            self.groups.restore(blob)
            self._slot = 1 - int(msgspec.msgpack.decode(records[STATE_KEY])["slot"])
            log.info("group aggregator resumed with %d member rows", self.groups.held_rows)
        elif records:
            log.error("group aggregator checkpoint incomplete; starting afresh (group windows refill as sites report)")

    def _on_assigned(self, partitions: list[int]) -> None:
        total = self.consumer.partition_count() if hasattr(self.consumer, "partition_count") else None  # type: ignore[attr-defined]
        self.complete_assignment = total is None or len(partitions) >= total
        if not self.complete_assignment:
            log.error("this aggregator holds %d of %d metrics partitions: another instance shares its group; "
                      "writing no group figures until it holds all (run exactly one aggregator)",
                      len(partitions), total)
        self._restore()

    def _on_revoked(self, partitions: list[int]) -> None:
        self.groups = GroupAggregator(self._sites, self._params)  # restored from the checkpoint on assignment

    def step(self, timeout_s: float = 0.5, max_records: int = 500) -> int:
        """Process one poll of site rows; returns the number of messages handled."""
        if self._unwritten is not None and not self._write():
            return 0
        messages = self.consumer.poll(timeout_s, max_records)
        due = time.monotonic() - self._last_commit >= self.settings.bus.commit_interval_s
        if not messages:
            if self._uncommitted and due:
                self.checkpoint()
            return 0
        frames = decode_window_messages(messages, self.stats)
        self.stats["messages"] += len(messages)
        self._uncommitted = True
        if frames and self.complete_assignment:
            rows = pd.concat(frames, ignore_index=True)
            self.stats["site_rows"] += int((rows["scope"] == "site").sum())
            self._unwritten = self.groups.add(rows)
            if not self._write():
                return len(messages)
        if due:
            self.checkpoint()
        return len(messages)

    def _write(self) -> bool:
        assert self._unwritten is not None
        try:
            self.sink.write_windows(self._unwritten)
        except SinkError as exc:
            self.stats["store_errors"] += 1
            log.warning("group rows not written, retrying: %s", exc)
            self._backoff.wait()
            return False
        self.stats["group_rows_written"] += len(self._unwritten)
        self._unwritten = None
        self._backoff.reset()
        return True

    def checkpoint(self) -> bool:
        """Save the member rows, then commit; False while group rows are still unwritten.

        Nothing is committed while this instance holds only some partitions: it did not process what
        it polled, so whoever ends up with all of them must read it again.
        """
        if self._unwritten is not None and not self._write():
            return False
        if not self.complete_assignment:
            return False
        if self.state is not None:
            try:
                self.state.save_states(chunk_state(self.groups.snapshot(), self._slot))
                self._slot = 1 - self._slot
            except SinkError as exc:
                log.warning("aggregator checkpoint failed, offsets not committed: %s", exc)
                return False
        try:
            self.consumer.commit()
        except CommitError as exc:
            log.info("offsets not committed (%s); replaying site rows is harmless", exc)
            return False
        self._uncommitted = False
        self._last_commit = time.monotonic()
        return True

    def status(self) -> dict[str, object]:
        return {**self.stats, "member_rows_held": self.groups.held_rows,
                "complete_assignment": self.complete_assignment}



class MetricsView:
    """Keeps a local store current from the metrics topic, for the HTTP API of ``dcpue serve``.

    Each API instance reads every window row (site, cluster, fleet) in its own consumer group and
    upserts it into its own file store, so instances scale out without sharing anything; a new
    instance rebuilds its view from what the topic retains.
    """

    def __init__(self, consumer: Consumer, store: ResultSink, live_window: str = "1m",
                 live_history_ms: int = 6 * 3_600_000) -> None:
        self.consumer = consumer
        self.store = store
        self.live_window = live_window
        self.live_history_ms = live_history_ms
        self.stats = {"messages": 0, "rows": 0, "undecodable": 0, "newest_end_ms": 0}
        self.caught_up = False  # set once the consumer has read to the end of the topic

    def not_ready(self) -> str | None:
        """Why the view cannot be served yet (for ``/readyz``), or None."""
        return None if self.caught_up else "view is still reading the metrics topic"

    def step(self, timeout_s: float = 0.5, max_records: int = 500) -> int:
        """Apply one poll of window rows to the store; returns the number of messages."""
        messages = self.consumer.poll(timeout_s, max_records)
        frames = decode_window_messages(messages, self.stats)
        if frames:
            rows = pd.concat(frames, ignore_index=True)
            self.store.write_windows(rows)
            self.stats["rows"] += len(rows)
            newest = int(rows["end_ms"].max())
            if newest > self.stats["newest_end_ms"]:
                self.stats["newest_end_ms"] = newest
                if hasattr(self.store, "prune"):
                    self.store.prune(self.live_window, newest - self.live_history_ms)
        if messages:
            self.stats["messages"] += len(messages)
            try:
                self.consumer.commit()
            except CommitError as exc:
                log.info("view offsets not committed (%s); re-applying rows is harmless", exc)
        self.caught_up = self.caught_up or read_to_end(self.consumer, messages)  # once this poll's rows are in
        return len(messages)

    def checkpoint(self) -> bool:
        """Nothing to save beyond the store itself (kept for the stage interface)."""
        return True

    def status(self) -> dict[str, object]:
        return dict(self.stats)
