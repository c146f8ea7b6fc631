"""The alert lifecycle: conditions in, firing and resolved events out.

:class:`AlertLifecycle` keeps one small state per alert fingerprint and applies, in event time:

* ``for`` and hysteresis: inactive → pending on a breach, → firing once the breach has held without a
  break for ``for_ms``; firing → resolved once ``clear`` has held without a break for ``clear_for_ms``.
  Pending needs a continuous breach (anything else returns it to inactive); a value inside the
  hysteresis band keeps a firing alert firing and restarts its clear timer, as a new breach does.
* dedup: one firing and one resolved event per episode; ``sequence`` numbers a fingerprint's events.
* stale: a pending or firing alert whose rule sent nothing for ``stale_after_ms`` is dropped (pending)
  or resolved with a ``stale`` annotation (firing).
* inhibition: a firing alert labelled ``inhibits="site"`` (the "no data" rules) mutes the efficiency and
  safety alerts of its site; they are notified when it resolves if they are still firing.
* silences and maintenance windows (:class:`~dcpue.analytics.alerts.silences.SilenceSet`).

Every event is returned; ``silenced=True`` marks those that must not be notified. A firing event is
notified unless muted; a resolve is notified exactly when its firing was, so a receiver never keeps an
open incident nor gets a resolve it never saw open. See ``docs/alerting-lifecycle.md``. No I/O.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from dcpue.analytics.alerts.model import AlertEvent, Condition, Family, Status
from dcpue.analytics.alerts.silences import SilenceSet

__all__ = ["DEFAULT_STALE_AFTER_MS", "INHIBITS_LABEL", "AlertLifecycle"]

DEFAULT_STALE_AFTER_MS = 15 * 60_000
INHIBITS_LABEL = "inhibits"  # value "site": while firing, mutes the efficiency/safety alerts of its site
INHIBITABLE = frozenset({Family.EFFICIENCY.value, Family.SAFETY.value})
STATE_VERSION = 1

INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"


class _Alert(msgspec.Struct):
    """One fingerprint's state; kept after an episode ends so sequence numbers never repeat."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str = INACTIVE
    last_ts: int = 0  # newest condition applied [ms]; older or equal ones are ignored
    value: float = math.nan
    starts_at: int = 0  # first breach of the current episode [ms]
    fired_at: int = 0  # when ``for`` elapsed [ms]
    clear_since: int | None = None  # first clear of the current unbroken clear run [ms]
    inhibited_at: int = 0  # last update that found it inhibited [ms]; staleness counts from here too
    seq: int = 0  # sequence of the last event emitted
    notified: bool = False  # the current episode's firing reached receivers


class _State(msgspec.Struct):
    v: int
    now: int
    alerts: dict[str, _Alert]


class _Raw(msgspec.Struct):
    """An event before the notification decision (made once per update, on the final state)."""

    fp: str
    status: Status
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: int
    ends_at: int | None
    value: float


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode_state(blob: bytes) -> _State:
    try:
        state = msgspec.msgpack.decode(zlib.decompress(blob), type=_State)
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"not an alert lifecycle snapshot: {exc}") from exc
    if state.v != STATE_VERSION:
        raise ValueError(f"unsupported alert lifecycle snapshot (version {state.v}; expected {STATE_VERSION})")
    return state


class AlertLifecycle:
    """Stateful, I/O-free alert lifecycle for every (rule, subject) fingerprint.

    ``silences``: mutes consulted at each update (the caller adds and expires them; it is not part of
    :meth:`snapshot`). ``stale_after_ms``: event time [ms] without conditions after which a pending or
    firing alert is dropped or resolved; keep it above the slowest rule's evaluation interval.
    """

    def __init__(self, silences: SilenceSet | None = None, *, stale_after_ms: int = DEFAULT_STALE_AFTER_MS) -> None:
        if stale_after_ms <= 0:
            raise ValueError(f"stale_after_ms must be positive, got {stale_after_ms}")
        self.silences = silences if silences is not None else SilenceSet()
        self.stale_after_ms = stale_after_ms
        self._now = 0  # event-time clock [ms]: newest condition ts or now_ms seen
        self._alerts: dict[str, _Alert] = {}
        self._live: set[str] = set()  # pending or firing fingerprints
        self.touched_sites: set[str] = set()  # sites whose alert state changed; the owner clears it

    @property
    def now_ms(self) -> int:
        """The lifecycle's clock [ms]: the newest condition timestamp or ``now_ms`` passed so far."""
        return self._now

    # -- the hot path --------------------------------------------------------------------------------

    def update(self, conditions: Iterable[Condition], now_ms: int) -> list[AlertEvent]:
        """Apply one evaluation round's conditions; return the events it caused, in order.

        ``now_ms`` [ms] is the evaluation time in the conditions' (event) time, normally their
        ``ts_ms``; it moves the clock forward when nothing arrives (staleness, silence expiry), never
        back. Conditions are applied in timestamp order; one not newer than the last applied for its
        fingerprint is ignored (replays and duplicates are no-ops). Mutes and inhibition are decided
        on the state at the end of the round.
        """
        batch = sorted(conditions, key=lambda c: c.ts_ms)
        self._now = max(self._now, now_ms, batch[-1].ts_ms if batch else now_ms)
        raw: list[_Raw] = []
        for cond in batch:
            self._apply(cond, raw)
        self._sweep_stale(raw)
        return self._decide(raw)

    def _apply(self, cond: Condition, raw: list[_Raw]) -> None:
        fp = cond.fingerprint
        st = self._alerts.get(fp)
        if st is None:
            if not cond.breach:
                return  # nothing to remember about a subject that never breached
            st = self._alerts[fp] = _Alert(labels=dict(cond.labels), annotations={})
        elif cond.ts_ms <= st.last_ts:
            return
        self.touched_sites.add(st.labels.get("site", ""))
        ts = cond.ts_ms
        st.last_ts, st.value, st.annotations = ts, cond.value, dict(cond.annotations)
        if st.state == INACTIVE:
            if not cond.breach:
                return
            st.state, st.starts_at, st.clear_since = PENDING, ts, None
            self._live.add(fp)
        if st.state == PENDING:
            if not cond.breach:  # pending needs an unbroken breach, the band included
                st.state = INACTIVE
                self._live.discard(fp)
            elif ts - st.starts_at >= cond.for_ms:
                st.state, st.fired_at = FIRING, ts
                raw.append(self._raw(fp, st, Status.FIRING, None))
            return
        if cond.breach or not cond.clear:  # a breach or the band: stay firing, restart the clear timer
            st.clear_since = None
            return
        if st.clear_since is None:
            st.clear_since = ts
        if ts - st.clear_since >= cond.clear_for_ms:
            raw.append(self._raw(fp, st, Status.RESOLVED, st.clear_since))
            self._end(fp, st)

    def _raw(self, fp: str, st: _Alert, status: Status, ends_at: int | None, note: str | None = None) -> _Raw:
        annotations = dict(st.annotations)
        if note:
            annotations["stale"] = note
        return _Raw(fp, status, dict(st.labels), annotations, st.starts_at, ends_at, st.value)

    def _end(self, fp: str, st: _Alert) -> None:
        st.state, st.clear_since = INACTIVE, None
        self._live.discard(fp)

    def _inhibited_sites(self) -> set[str]:
        return {
            self._alerts[fp].labels.get("site", "") for fp in self._live
            if self._alerts[fp].state == FIRING and self._alerts[fp].labels.get(INHIBITS_LABEL) == "site"
        }

    @staticmethod
    def _inhibitable(labels: dict[str, str], inhibited: set[str]) -> bool:
        return (labels.get("family") in INHIBITABLE and INHIBITS_LABEL not in labels
                and labels.get("site", "") in inhibited)

    def _sweep_stale(self, raw: list[_Raw]) -> None:
        # An inhibited alert is not made stale: its silence is what the inhibitor ("no data") explains,
        # and "resolved" would be false news. Its staleness counts from when inhibition last held.
        while True:
            inhibited = self._inhibited_sites()
            stale = []
            for fp in self._live:
                st = self._alerts[fp]
                if self._inhibitable(st.labels, inhibited):
                    st.inhibited_at = self._now
                elif self._now - max(st.last_ts, st.inhibited_at) >= self.stale_after_ms:
                    stale.append(fp)
            if not stale:
                return
            ended_inhibitor = False
            for fp in sorted(stale, key=lambda f: (self._alerts[f].last_ts, f)):
                st = self._alerts[fp]
                self.touched_sites.add(st.labels.get("site", ""))
                if st.state == FIRING:
                    note = (f"stale: no condition for {self.stale_after_ms // 1000} s since {_iso(st.last_ts)}; "
                            "resolved without a clear")
                    raw.append(self._raw(fp, st, Status.RESOLVED, st.last_ts, note))
                    ended_inhibitor |= st.labels.get(INHIBITS_LABEL) == "site"
                st.last_ts = max(st.last_ts, self._now)  # a late condition cannot reopen it from the past
                self._end(fp, st)
            if not ended_inhibitor:
                return

    def _muted(self, labels: dict[str, str], inhibited: set[str]) -> bool:
        return self._inhibitable(labels, inhibited) or bool(self.silences.silenced_by(labels, self._now))

    def _decide(self, raw: list[_Raw]) -> list[AlertEvent]:
        inhibited = self._inhibited_sites()
        events: list[AlertEvent] = []
        notified: dict[str, bool] = {}
        for r in raw:
            st = self._alerts[r.fp]
            if r.status is Status.FIRING:
                silenced = self._muted(r.labels, inhibited)
                notified[r.fp] = not silenced
            else:
                silenced = not notified.get(r.fp, st.notified)
                notified[r.fp] = False
            st.seq += 1
            events.append(AlertEvent(r.fp, r.status, r.labels, r.annotations, r.starts_at, r.ends_at, r.value,
                                     st.seq, silenced))
        for fp, flag in notified.items():
            self._alerts[fp].notified = flag
        self.touched_sites.update(e.labels.get("site", "") for e in events)
        # firing alerts nobody was told about whose mute has ended (silence expired, inhibitor resolved)
        waiting = [fp for fp in self._live if self._alerts[fp].state == FIRING and not self._alerts[fp].notified]
        for fp in sorted(waiting, key=lambda f: (self._alerts[f].starts_at, f)):
            st = self._alerts[fp]
            if not self._muted(st.labels, inhibited):
                st.seq += 1
                st.notified = True
                self.touched_sites.add(st.labels.get("site", ""))
                events.append(AlertEvent(fp, Status.FIRING, dict(st.labels), dict(st.annotations), st.starts_at,
                                         None, st.value, st.seq, False))
        return events

    # -- reading the state ---------------------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, oldest first, as plain dicts for the API.

        Keys: ``fingerprint``, ``state`` (pending/firing), ``labels``, ``annotations``, ``starts_at_ms``,
        ``fired_at_ms`` (None while pending), ``last_seen_ms``, ``value`` (None when NaN), ``silenced``
        (muted now), ``silenced_by`` (silence/window ids), ``inhibited``, ``notified``, ``sequence``.
        """
        inhibited = self._inhibited_sites()
        out = []
        for fp in sorted(self._live, key=lambda f: (self._alerts[f].starts_at, f)):
            st = self._alerts[fp]
            by = self.silences.silenced_by(st.labels, self._now)
            is_inhibited = self._inhibitable(st.labels, inhibited)
            out.append({
                "fingerprint": fp,
                "state": st.state,
                "labels": dict(st.labels),
                "annotations": dict(st.annotations),
                "starts_at_ms": st.starts_at,
                "fired_at_ms": st.fired_at if st.state == FIRING else None,
                "last_seen_ms": st.last_ts,
                "value": None if math.isnan(st.value) else st.value,
                "silenced": bool(by) or is_inhibited,
                "silenced_by": by,
                "inhibited": is_inhibited,
                "notified": st.notified if st.state == FIRING else False,
                "sequence": st.seq,
            })
        return out

    # -- persistence ---------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state (clock and every fingerprint), MessagePack + zlib, for :meth:`restore`."""
        state = _State(STATE_VERSION, self._now, self._alerts)
        return zlib.compress(msgspec.msgpack.encode(state), 6)

    def restore(self, blob: bytes) -> None:
        """Replace the state by a :meth:`snapshot`'s; silences and ``stale_after_ms`` stay as constructed."""
        state = _decode_state(blob)
        self._now = state.now
        self._alerts = state.alerts
        self._live = {fp for fp, st in state.alerts.items() if st.state != INACTIVE}

    # -- per-site state: it follows a site to whichever worker holds the site -------------------------

    def snapshot_sites(self, sites: Iterable[str]) -> dict[str, bytes]:
        """Per site of ``sites``: the state of its alerts and the clock, for :meth:`restore_site` anywhere."""
        by_site: dict[str, dict[str, _Alert]] = {site: {} for site in sites}
        for fp, st in self._alerts.items():
            alerts = by_site.get(st.labels.get("site", ""))
            if alerts is not None:
                alerts[fp] = st
        return {site: zlib.compress(msgspec.msgpack.encode(_State(STATE_VERSION, self._now, alerts)), 6)
                for site, alerts in by_site.items()}

    def restore_site(self, site: str, blob: bytes) -> None:
        """Replace ``site``'s alerts by a :meth:`snapshot_site`'s; the clock only moves forward."""
        state = _decode_state(blob)
        foreign = [fp for fp, st in state.alerts.items() if st.labels.get("site", "") != site]
        if foreign:
            raise ValueError(f"alert snapshot of site {site!r} holds alerts of other sites: {foreign[:3]}")
        self.drop_sites({site})
        self._now = max(self._now, state.now)
        self._alerts.update(state.alerts)
        self._live |= {fp for fp, st in state.alerts.items() if st.state != INACTIVE}

    def drop_sites(self, sites: set[str]) -> None:
        """Forget the alerts of ``sites`` (another worker holds them now)."""
        gone = [fp for fp, st in self._alerts.items() if st.labels.get("site", "") in sites]
        for fp in gone:
            del self._alerts[fp]
            self._live.discard(fp)
