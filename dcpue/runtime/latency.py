"""How long results take: a bounded histogram of latencies with quantiles good to a few per cent."""

from __future__ import annotations

import math

import numpy as np

_LOWEST_S = 0.001
_RATIO = 1.05  # bucket width: a quantile is reported as its bucket's upper edge, at most 5 % high
_BUCKETS = math.ceil(math.log(100_000 / _LOWEST_S) / math.log(_RATIO))  # up to ~28 h
_EDGES = _LOWEST_S * _RATIO ** np.arange(_BUCKETS + 1)


class LatencyHistogram:
    """Latencies [s] counted in log-spaced buckets from 1 ms to ~28 h (≈400 counters, whatever the count)."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_EDGES) + 1, dtype=np.int64)  # [0]: ≤ 1 ms; [-1]: beyond the last edge
        self.max_s = 0.0

    def add(self, seconds: np.ndarray | list[float]) -> None:
        """Count each latency (negative ones, from clocks a little apart, count as zero)."""
        values = np.maximum(np.asarray(seconds, dtype=np.float64), 0.0)
        if values.size == 0:
            return
        np.add.at(self.counts, np.searchsorted(_EDGES, values, side="left"), 1)
        self.max_s = max(self.max_s, float(values.max()))

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0–1) as the upper edge of its bucket (never above the largest seen); None if empty."""
        total = self.count
        if total == 0:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * total), side="left"))
        edge = float(_EDGES[index]) if index < len(_EDGES) else math.inf
        return min(edge, self.max_s)
