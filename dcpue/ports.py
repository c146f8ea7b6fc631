"""Small interfaces between the pure core and the outside world.

The embedded runtime (:mod:`dcpue.runtime`) implements them in-process; the Kafka and
InfluxDB adapters implement the same contracts for the distributed deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd


@dataclass(frozen=True, slots=True)
class Message:
    """A record on the bus. ``key`` is the site id for readings (one site stays on one partition)."""

    topic: str
    value: bytes
    key: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int = 0
    offset: int = -1
    timestamp_ms: int | None = None  # when the producer sent it (Kafka CreateTime), if the bus tells


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: str | None = None,
             headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Queue a record; may block when the bus applies backpressure."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Return once every queued record is acknowledged by the bus."""

    def close(self, timeout_s: float | None = None) -> None:
        """Disconnect, waiting up to ``timeout_s`` for queued records (0: drop them at once)."""


class Consumer(Protocol):
    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        """Return up to ``max_records`` records, waiting at most ``timeout_s`` for the first (a group consumer
        in the middle of a rebalance may wait longer, until it has its partitions again)."""

    def commit(self) -> None:
        """Mark every record returned so far as processed (call only after its results are written).

        A consumer may also offer ``positions()`` (where it stands now) and ``commit(positions)`` (mark the records
        returned up to then): the analytics worker then saves a due checkpoint while it polls and computes on."""

    def close(self) -> None: ...


def read_to_end(consumer: Consumer, polled: list[Message]) -> bool:
    """Whether ``consumer`` has read its topics to their end: its own ``caught_up()`` where it has one (Kafka:
    a group consumer may poll nothing while it joins), else whether its last poll, ``polled``, was empty."""
    check = getattr(consumer, "caught_up", None)
    return bool(check()) if check is not None else not polled


class ResultSink(Protocol):
    """Where analytics results are written: the local file store embedded, InfluxDB distributed."""

    def write_windows(self, windows: pd.DataFrame) -> None:
        """Upsert window results; the same (scope, id, window, start) overwrites (idempotent replay)."""

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        """Keep records that could not be used, with their reason (columns topic, key, reason, payload)."""


STATE_KEY_PART = "#"  # "site#days0": another record of the site's state, kept with the site's (not in site ids)


def days_key(site: str, slot: int) -> str:
    """The state key of one of ``site``'s two records of complete days (``slot`` 0 or 1), saved apart from its
    checkpoint."""
    return f"{site}{STATE_KEY_PART}days{slot}"


def state_key_site(key: str) -> str:
    """The site a state key belongs to: ``key`` itself, or what comes before :data:`STATE_KEY_PART`."""
    return key.split(STATE_KEY_PART, 1)[0]


class StateStore(Protocol):
    """Where a worker checkpoints its per-site engine state, written just before each offset commit.

    Keys are sites, or a site and a part (``site#days0``) for state of the site saved apart; a store that
    places sites (on partitions) places every key of a site where the site's is.
    """

    def save_states(self, states: dict[str, bytes]) -> None:
        """Replace the saved value of each key given."""

    def load_states(self, partitions: list[int] | None = None) -> dict[str, bytes]:
        """The newest saved value of each key (only of sites on ``partitions`` if the store can tell)."""


class ResultStore(ResultSink, Protocol):
    """A sink that can also be read back (the file store; InfluxDB is read with InfluxQL by Grafana)."""

    def dead_letters(self, limit: int = 100) -> pd.DataFrame:
        """The newest dead letters, newest first."""

    def query_windows(self, scope: str, window: str, ids: list[str] | None = None,
                      start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """Window results of one scope (site, cluster, fleet) and window length, oldest first."""

    def latest_windows(self, scope: str, window: str) -> pd.DataFrame:
        """The newest window per id of one scope and window length."""

    def close(self) -> None: ...
