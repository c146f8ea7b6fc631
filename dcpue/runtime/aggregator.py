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

import pandas as pd

from dcpue.analytics.groups import GroupAggregator
from dcpue.analytics.pue import MetricParams
from dcpue.errors import DecodeError, SinkError
from dcpue.ports import Consumer, ResultSink, StateStore
from dcpue.registry import Registry
from dcpue.settings import Settings
from dcpue.wire import decode_windows

log = logging.getLogger(__name__)

STATE_KEY = "__groups__"


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
        self._backoff_s = 0.0
        if hasattr(consumer, "on_assigned"):
            consumer.on_assigned = self._on_assigned  # type: ignore[attr-defined]
            consumer.on_revoked = self._on_revoked  # type: ignore[attr-defined]
        else:
            self._restore()

    def _restore(self) -> None:
        if self.state is None:
            return
        partitions = None
        if hasattr(self.state, "partition_of"):
            partitions = [self.state.partition_of(STATE_KEY)]  # type: ignore[attr-defined]
        blob = self.state.load_states(partitions).get(STATE_KEY)
        if blob is not None:
            self.groups.restore(blob)
            log.info("group aggregator resumed with %d member rows", self.groups.held_rows)

    def _on_assigned(self, partitions: list[int]) -> None:
        total = self.consumer.partition_count() if hasattr(self.consumer, "partition_count") else None  # type: ignore[attr-defined]
        self.complete_assignment = total is None or len(partitions) >= total
        if not self.complete_assignment:
            log.error("this aggregator holds %d of %d metrics partitions: another instance shares its group; "
                      "writing no group figures until it holds all (run exactly one aggregator)",
                      len(partitions), total)
        self._restore()

    def _on_revoked(self, partitions: list[int]) -> None:
        if self._unwritten is None and self._uncommitted and self.complete_assignment:
            try:
                self.checkpoint()
            except Exception as exc:  # noqa: BLE001 — the next owner replays from the last commit
                log.warning("checkpoint at revocation failed: %s", exc)
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
        frames = []
        for message in messages:
            try:
                frames.append(decode_windows(message.value))
            except DecodeError as exc:
                self.stats["undecodable"] += 1
                log.error("metrics record %s/%s undecodable, skipped: %s", message.partition, message.offset, exc)
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
            self._backoff_s = min(5.0, max(0.1, self._backoff_s * 2))
            log.warning("group rows not written, retrying in %.1f s: %s", self._backoff_s, exc)
            time.sleep(self._backoff_s)
            return False
        self.stats["group_rows_written"] += len(self._unwritten)
        self._unwritten = None
        self._backoff_s = 0.0
        return True

    def checkpoint(self) -> bool:
        """Save the member rows, then commit; False while group rows are still unwritten."""
        if self._unwritten is not None and not self._write():
            return False
        if self.state is not None and self.complete_assignment:
            self.state.save_states({STATE_KEY: self.groups.snapshot()})
        self.consumer.commit()
        self._uncommitted = False
        self._last_commit = time.monotonic()
        return True

    def status(self) -> dict[str, object]:
        return {**self.stats, "member_rows_held": self.groups.held_rows,
                "complete_assignment": self.complete_assignment}

