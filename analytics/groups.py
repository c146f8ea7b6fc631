"""Cluster and fleet figures from site figures, wherever the site figures were computed.

A group window's PUE is Σ total ÷ Σ IT over its members (see :func:`group_metrics`); it needs the
newest row of every member for that window. :class:`GroupAggregator` keeps those rows and returns
the group rows that each batch of site rows changes. It runs inside the embedded engine and, in
the distributed deployment, as the second stage (``dcpue aggregate``) that reads the site rows all
workers publish. Feeding it the same row twice changes nothing (newest row per key wins), so a
replay after a restart is harmless.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from dcpue.analytics.pue import MetricParams, group_metrics
from dcpue.results import ROLLING_ANNUAL, Scope, conform_windows, empty_windows

DAY_MS = 86_400_000
# how far behind the most advanced member a group window is held for the slowest (per window length)
# (live 1 min windows briefly: at province scale they are most of the rows held)
HOUR_MS = 3_600_000
HOLD_MS = {"1m": HOUR_MS, "15m": 6 * HOUR_MS, "1h": 2 * DAY_MS, "1d": 7 * DAY_MS, "1mo": 62 * DAY_MS}
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
        self._held_after: dict[str, int] = {}  # window label → windows ending at or before this are closed
        self.late_rows = 0

    def add(self, site_rows: pd.DataFrame) -> pd.DataFrame:
        """Take site rows (other scopes are ignored); return the group rows they change.

        A group window is held until every member has closed it, but at most ``HOLD_MS[window]``
        behind the most advanced member (so a member that stopped reporting cannot hold memory
        forever). A window dropped that way is emitted once more, closed with the members that did
        report (``final`` true, ``coverage`` below 1); a member row that arrives after that is late
        and counted in :attr:`late_rows`, never turned into a partial figure.
        """
        rows = site_rows[site_rows["scope"] == Scope.SITE.value]
        if rows.empty:
            return empty_windows()
        closing = rows[rows["final"] & (rows["window"] != ROLLING_ANNUAL)]
        for site, end in closing.groupby("id")["end_ms"].max().items():
            self._closed[site] = max(self._closed.get(site, 0), int(end))
        # a member not heard from yet counts as closed nowhere: only the hold limit closes windows then
        closed = [self._closed.get(site, -(2**62)) for site in self._fleet_members.index]
        affected_parts, expired_parts = [], []
        for label, part in rows.groupby("window", sort=False):
            label = str(label)
            late = part["end_ms"].to_numpy() <= self._held_after.get(label, -(2**62))
            if late.any():
                self.late_rows += int(late.sum())
                part = part[~late]
                if part.empty:
                    continue
            recent = self._recent.get(label)
            merged = part if recent is None else pd.concat([recent, part]).drop_duplicates(
                ["id", "start_ms"], keep="last")
            if label == ROLLING_ANNUAL:
                # each site's annual window is keyed by its own day; group the newest per site
                merged = merged.sort_values("start_ms", kind="stable").drop_duplicates("id", keep="last")
                affected = merged.assign(start_ms=merged["start_ms"].max(), end_ms=merged["end_ms"].max())
                self._recent[label] = merged
                affected_parts.append(affected)
                continue
            affected_parts.append(merged[merged["start_ms"].isin(part["start_ms"].unique())])
            horizon = max(min(closed), max(closed) - HOLD_MS.get(label, DAY_MS))
            expired = (merged["end_ms"] <= horizon).to_numpy()
            if expired.any():
                expired_parts.append(merged[expired])
                self._held_after[label] = max(self._held_after.get(label, -(2**62)), int(horizon))
            self._recent[label] = merged[~expired]
        out = self._group(pd.concat(affected_parts, ignore_index=True)) if affected_parts else empty_windows()
        if expired_parts:
            ended = self._group(pd.concat(expired_parts, ignore_index=True))
            ended = ended[~ended["final"]].assign(final=True)  # closed without every member
            out = pd.concat([out, ended], ignore_index=True) if not out.empty else ended
        return out

    def _group(self, member_rows: pd.DataFrame) -> pd.DataFrame:
        out = [group_metrics(member_rows, members, scope, self.params)
               for members, scope in ((self._cluster_members, Scope.CLUSTER), (self._fleet_members, Scope.FLEET))
               if not members.empty]
        out = [o for o in out if not o.empty]
        return pd.concat(out, ignore_index=True) if out else empty_windows()

    def snapshot(self) -> bytes:
        """Everything needed to resume after a restart (zlib-compressed MessagePack)."""
        import msgspec

        recent = {label: {str(c): frame[c].tolist() for c in frame.columns} for label, frame in self._recent.items()}
        return zlib.compress(msgspec.msgpack.encode({"v": STATE_VERSION, "closed": self._closed, "recent": recent,
                                       "held_after": self._held_after, "late_rows": self.late_rows}), 3)

    def restore(self, blob: bytes) -> None:
        """Load a :meth:`snapshot`, replacing the current state."""
        import msgspec

        state = msgspec.msgpack.decode(zlib.decompress(blob))
        if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
            raise ValueError("unsupported group aggregator state")
        self._closed = {str(k): int(v) for k, v in state["closed"].items()}
        self._recent = {label: conform_windows(pd.DataFrame(cols)) for label, cols in state["recent"].items()}
        self._held_after = {str(k): int(v) for k, v in state["held_after"].items()}
        self.late_rows = int(state["late_rows"])

    @property
    def held_rows(self) -> int:
        """Member rows kept for windows that may still change (bounded by the one-day horizon)."""
        return int(np.sum([len(f) for f in self._recent.values()]))
