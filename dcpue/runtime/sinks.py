"""Result sinks that combine or forward: several stores at once, and window rows onto the bus."""

from __future__ import annotations

import pandas as pd

from dcpue.ports import Producer
from dcpue.wire import encode_windows_by_id


class BusResultSink:
    """Publishes window rows to the metrics topic, one message per id, keyed by it.

    Site rows are keyed by site (so they share the partition number of the site's readings),
    cluster and fleet rows by the group id. :meth:`write_windows` returns once the bus
    acknowledged every message, so offsets committed after it never skip a published row.
    """

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def write_windows(self, windows: pd.DataFrame) -> None:
        if windows.empty:
            return
        for key, message in encode_windows_by_id(windows):
            self.producer.send(self.topic, message, key=key)
        self.producer.flush()

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        """Dead letters have their own topic; nothing to do here."""


class FanoutSink:
    """Writes to every sink in order; a failure of any one is a failure of the write (retried whole).

    Every sink upserts by key, so writing again to those that already succeeded is harmless.
    """

    def __init__(self, *sinks: object) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def write_windows(self, windows: pd.DataFrame) -> None:
        for sink in self.sinks:
            sink.write_windows(windows)  # type: ignore[attr-defined]

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        for sink in self.sinks:
            sink.write_dead_letters(letters)  # type: ignore[attr-defined]

    def write_readings(self, readings: pd.DataFrame) -> None:
        for sink in self.sinks:
            if hasattr(sink, "write_readings"):
                sink.write_readings(readings)

    def prune(self, window: str, older_than_ms: int) -> int:
        """Prune live windows in the sinks that keep a bounded history (the local file store)."""
        return sum(sink.prune(window, older_than_ms) for sink in self.sinks if hasattr(sink, "prune"))

    def close(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()
