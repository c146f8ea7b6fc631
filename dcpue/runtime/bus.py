"""The embedded bus: an in-process, bounded, Kafka-shaped log with consumer groups.

Records are appended per topic with increasing offsets; each consumer group reads at its
own position and commits it explicitly, like Kafka with auto-commit off. Records stay
until every group that subscribed to the topic has committed past them, so a consumer
that fails before committing sees them again (at-least-once). Producers block when a
topic holds ``max_pending`` uncommitted records: backpressure instead of unbounded memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from dcpue.errors import DcpueError
from dcpue.ports import Message


@dataclass
class _Topic:
    records: deque[Message] = field(default_factory=deque)
    base_offset: int = 0  # offset of records[0]
    committed: dict[str, int] = field(default_factory=dict)  # group -> next offset to read after restart

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.records)


class InProcessBus:
    """A thread-safe in-process log shared by the producers and consumers of one process."""

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._topics: dict[str, _Topic] = {}
        self._cond = threading.Condition()
        self._closed = False

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic()
        return topic

    def append(self, topic: str, value: bytes, key: str | None, headers: tuple[tuple[str, bytes], ...],
               timeout_s: float | None) -> None:
        with self._cond:
            t = self._topic(topic)
            ok = self._cond.wait_for(
                lambda: self._closed
                or t.end_offset - min(t.committed.values(), default=t.base_offset) < self.max_pending,
                timeout=timeout_s,
            )
            if self._closed:
                raise DcpueError("bus is closed")
            if not ok:
                raise DcpueError(f"bus topic {topic!r} is full ({self.max_pending} uncommitted records)")
            t.records.append(Message(topic, value, key, headers, 0, t.end_offset, int(time.time() * 1000)))
            self._cond.notify_all()

    def read(self, topics: list[str], positions: dict[str, int], max_records: int, timeout_s: float) -> list[Message]:
        with self._cond:
            def available() -> bool:
                return self._closed or any(self._topic(n).end_offset > positions[n] for n in topics)

            self._cond.wait_for(available, timeout=timeout_s)
            out: list[Message] = []
            for name in topics:
                t = self._topic(name)
                start = max(positions[name], t.base_offset)
                while start < t.end_offset and len(out) < max_records:
                    out.append(t.records[start - t.base_offset])
                    start += 1
                positions[name] = start
            return out

    def register(self, group: str, topics: list[str]) -> dict[str, int]:
        """Join ``group`` to ``topics``; returns the committed position to start from."""
        with self._cond:
            positions = {}
            for name in topics:
                t = self._topic(name)
                positions[name] = t.committed.setdefault(group, t.base_offset)
            return positions

    def commit(self, group: str, positions: dict[str, int]) -> None:
        with self._cond:
            for name, offset in positions.items():
                t = self._topic(name)
                t.committed[group] = max(t.committed.get(group, 0), offset)
                floor = min(t.committed.values())
                while t.base_offset < floor and t.records:
                    t.records.popleft()
                    t.base_offset += 1
            self._cond.notify_all()

    def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` not yet committed by ``group``."""
        with self._cond:
            t = self._topic(topic)
            return t.end_offset - t.committed.get(group, t.base_offset)

    def producer(self, send_timeout_s: float | None = None) -> BusProducer:
        return BusProducer(self, send_timeout_s)

    def consumer(self, topics: list[str], group: str) -> BusConsumer:
        return BusConsumer(self, topics, group)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class BusProducer:
    """:class:`~dcpue.ports.Producer` over an :class:`InProcessBus`; ``send`` returns once the record is in the log."""

    def __init__(self, bus: InProcessBus, send_timeout_s: float | None) -> None:
        self._bus = bus
        self._timeout = send_timeout_s

    def send(self, topic: str, value: bytes, key: str | None = None,
             headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self._bus.append(topic, value, key, headers, self._timeout)

    def flush(self, timeout_s: float | None = None) -> None:
        """Nothing is buffered outside the log, so there is nothing to wait for."""

    def close(self, timeout_s: float | None = None) -> None:
        """The bus outlives its producers."""


class BusConsumer:
    """:class:`~dcpue.ports.Consumer` of one group; resumes from the group's last commit."""

    def __init__(self, bus: InProcessBus, topics: list[str], group: str) -> None:
        self._bus = bus
        self._topics = list(topics)
        self._group = group
        self._positions = bus.register(group, self._topics)

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        return self._bus.read(self._topics, self._positions, max_records, timeout_s)

    def positions(self) -> dict[str, int]:
        """Where this consumer stands (what :meth:`commit` would commit now), to commit later."""
        return dict(self._positions)

    def commit(self, positions: dict[str, int] | None = None) -> None:
        self._bus.commit(self._group, dict(self._positions) if positions is None else positions)

    def close(self) -> None:
        """Uncommitted records stay in the log for the group's next consumer."""
