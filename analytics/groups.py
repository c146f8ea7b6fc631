"""Cluster and fleet figures from site figures, wherever the site figures were computed.

A group window's PUE is Σ total ÷ Σ IT over its members (see :func:`group_metrics`); it needs the
newest row of every member for that window. :class:`GroupAggregator` keeps those rows and returns
the group rows that each batch of site rows changes. It runs inside the embedded engine and, in
the distributed deployment, as the second stage (``dcpue aggregate``) that reads the site rows all
workers publish. Feeding it the same row twice changes nothing (newest row per key wins), so a
replay after a restart is harmless.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dcpue.analytics.pue import MetricParams, group_metrics

from dcpue.results import ROLLING_ANNUAL, Scope, conform_windows, empty_windows

DAY_MS = 86_400_000
FLEET_ID = "fleet"
STATE_VERSION = 1


class GroupAggregator:
    """Keeps members' newest rows per window; emits cluster and fleet rows for the windows touched."""

    def __init__(self, sites: pd.DataFrame, params: MetricParams = MetricParams()) -> None:
        """``sites`` is :attr:`dcpue.registry.Registry.sites_table` (index site id, column ``cluster``)."""
        self.params = params
        clusters = sites["cluster"]
        self._cluster_members = clusters[clusters != ""]
        self._fleet_members = pd.Series(FLEET_ID, index=sites.index)
        self._recent: dict[str, pd.DataFrame] = {}  # window label → newest site rows
        self._closed: dict[str, int] = {}  # site → end of its newest final (non-rolling) window

    def add(self, site_rows: pd.DataFrame) -> pd.DataFrame:
        """Take site rows (other scopes are ignored); return the group rows they change."""
        rows = site_rows[site_rows["scope"] == Scope.SITE.value]
        if rows.empty:
            return empty_windows()
        closing = rows[rows["final"] & (rows["window"] != ROLLING_ANNUAL)]
        for site, end in closing.groupby("id")["end_ms"].max().items():
            self._closed[site] = max(self._closed.get(site, 0), int(end))
        # keep member rows until the slowest site has closed them (bounded to a day behind the fastest)
        closed = list(self._closed.values())
        horizon = max(min(closed), max(closed) - DAY_MS) if closed else -(2**62)
        affected_parts = []
        for label, part in rows.groupby("window", sort=False):
            recent = self._recent.get(label)
            merged = part if recent is None else pd.concat([recent, part]).drop_duplicates(
                ["id", "start_ms"], keep="last")
            if label == ROLLING_ANNUAL:
                # each site's annual window is keyed by its own day; group the newest per site
                affected = merged.sort_values("start_ms", kind="stable").drop_duplicates("id", keep="last")
                affected = affected.assign(start_ms=affected["start_ms"].max(), end_ms=affected["end_ms"].max())
            else:
                affected = merged[merged["start_ms"].isin(part["start_ms"].unique())]
            affected_parts.append(affected)
            self._recent[str(label)] = merged[merged["end_ms"] > horizon]
        affected = pd.concat(affected_parts, ignore_index=True)
        out = [group_metrics(affected, members, scope, self.params)
               for members, scope in ((self._cluster_members, Scope.CLUSTER), (self._fleet_members, Scope.FLEET))
               if not members.empty]
        out = [o for o in out if not o.empty]
        return pd.concat(out, ignore_index=True) if out else empty_windows()

    def snapshot(self) -> bytes:
        """Everything needed to resume after a restart, as MessagePack."""
        import msgspec

        recent = {label: {str(c): frame[c].tolist() for c in frame.columns} for label, frame in self._recent.items()}
        return msgspec.msgpack.encode({"v": STATE_VERSION, "closed": self._closed, "recent": recent})

    def restore(self, blob: bytes) -> None:
        """Load a :meth:`snapshot`, replacing the current state."""
        import msgspec

        state = msgspec.msgpack.decode(blob)
        if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
            raise ValueError("unsupported group aggregator state")
        self._closed = {str(k): int(v) for k, v in state["closed"].items()}
        self._recent = {label: conform_windows(pd.DataFrame(cols)) for label, cols in state["recent"].items()}

    @property
    def held_rows(self) -> int:
        """Member rows kept for windows that may still change (bounded by the one-day horizon)."""
        return int(np.sum([len(f) for f in self._recent.values()]))
