"""Getting alert notifications out of the outbox and to their receivers, at least once and in order.

Three tiers: :func:`enqueue_events` (route, group and render events into the outbox), :class:`Dispatcher`
(drain the outbox over HTTP) and :class:`AlertDelivery` (both, wired from the configuration; what the
alert engine and the HTTP API hold).

The dispatcher's rules:

- one lane (thread, HTTP client, token bucket) per receiver: rows of a receiver go strictly in outbox
  order (a resolve never overtakes its firing), and a receiver that is down or hangs holds up only itself;
- a row is marked delivered only after a 2xx (for chat robots: a 2xx whose JSON ``errcode``/``code`` is
  0). A crash between the request and the mark re-sends the same body with the same ``Idempotency-Key``;
- connection errors, timeouts, 408, 429 and 5xx (and the robots' rate-limit codes) are retried with
  exponential backoff and full jitter — delay ∈ [0, min(cap, base·2^(n-1))] — or after ``Retry-After``;
  other 4xx are permanent: the row is failed, logged and kept in the delivery log;
- a row is given up after the receiver's ``max_attempts`` or ``max_age_s``, both counted from when it entered
  the queue — its creation, or an operator's retry (:meth:`AlertDelivery.retry`);
- ``max_per_minute`` is a token bucket per receiver: excess waits, nothing is dropped;
- DingTalk and Feishu signatures are computed per attempt, so their timestamps are always fresh.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC

import httpx

from dcpue import __version__
from dcpue.alerting import payloads, signing
from dcpue.alerting.config import DeliverySettings, Receiver, ReceiverKind, Route, check_routing, route
from dcpue.alerting.outbox import Delivery, DeliveryStatus, NotRetryable, Outbox
from dcpue.analytics.alerts.model import AlertEvent

log = logging.getLogger(__name__)

USER_AGENT = f"dcpue/{__version__}"
BACKOFF_BASE_S = 1.0
RETRYABLE_STATUS = frozenset({408, 429})
# Robot error codes that mean "slow down / try later" (the HTTP status is 200):
# DingTalk 130101 "send too fast, exceed 20 times per minute"; WeCom 45009 "api freq out of limit",
# -1 "system busy"; Feishu 11232 frequency limited. Other non-zero codes (bad signature 310000/19021,
# keyword or IP not allowed, bad payload) are permanent.
RETRYABLE_VENDOR_CODES = {
    ReceiverKind.DINGTALK: frozenset({130101, -1}),
    ReceiverKind.WECOM: frozenset({45009, -1}),
    ReceiverKind.FEISHU: frozenset({11232}),
}


# --- enqueue: route, group, render ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueued:
    """One notification put in (or already in) the outbox."""

    receiver: str
    idempotency_key: str
    created: bool  # False: (receiver, key) was already there — a replay, nothing added
    events: int


def group_idempotency_key(events: Sequence[AlertEvent]) -> str:
    """The key of a notification: the event's own key for one event, a digest of the members' keys for a group."""
    if len(events) == 1:
        return events[0].idempotency_key
    digest = hashlib.sha256(",".join(sorted(e.idempotency_key for e in events)).encode()).hexdigest()
    return f"g-{digest[:24]}"


def enqueue_events(outbox: Outbox, events: Iterable[AlertEvent], receivers: Sequence[Receiver],
                   routes: Sequence[Route], settings: DeliverySettings | None = None,
                   now_ms: int | None = None) -> list[Enqueued]:
    """Route ``events`` (silenced ones are skipped), group them per receiver and enqueue one body per group.

    Events of one call that go to the same receiver and share the ``settings.group_by`` label values make one
    message. The same events enqueued again (a replay) give the same keys and add nothing. Returns what was
    enqueued, in order.
    """
    settings = settings or DeliverySettings()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    by_name = {r.name: r for r in receivers}
    groups: dict[tuple[str, tuple[str, ...]], list[AlertEvent]] = {}
    for event in events:
        if event.silenced:
            log.debug("alert not notified (silenced) fingerprint=%s", event.fingerprint)
            continue
        names = route(event, routes)
        if not names:
            log.warning("alert matches no route fingerprint=%s alertname=%s site=%s", event.fingerprint,
                        event.labels.get("alertname"), event.site)
        for name in names:
            if name not in by_name:
                log.error("route names unknown receiver=%s (configured: %s)", name, sorted(by_name))
                continue
            group = (tuple(event.labels.get(k, "") for k in settings.group_by) if settings.group_by
                     else (event.idempotency_key,))
            groups.setdefault((name, group), []).append(event)
    done = []
    for (name, _), grouped in groups.items():
        known = outbox.enqueued_events(name, [e.idempotency_key for e in grouped])
        members = [e for e in grouped if e.idempotency_key not in known]  # already sent in another grouping
        if not members:
            log.info("alert events already in outbox receiver=%s count=%d", name, len(grouped))
            done.append(Enqueued(name, group_idempotency_key(grouped), False, len(grouped)))
            continue
        receiver = by_name[name]
        key = group_idempotency_key(members)
        body = payloads.render(receiver.kind, members, receiver=name, group_by=settings.group_by,
                               external_url=settings.external_url, timezone=settings.timezone)
        alertnames = {e.labels.get("alertname", "") for e in members}
        sites = {e.site for e in members}
        created = outbox.enqueue(
            name, key, body, now_ms=now_ms, kind=str(receiver.kind),
            alert_status=str(payloads.group_status(members)),
            site=sites.pop() if len(sites) == 1 else "*", alertname=alertnames.pop() if len(alertnames) == 1 else "*",
            fingerprints=[e.fingerprint for e in members], event_keys=[e.idempotency_key for e in members],
        )
        if not created:
            log.info("alert notification already in outbox receiver=%s key=%s", name, key)
        done.append(Enqueued(name, key, created, len(members)))
    return done


# --- pieces of the dispatcher ---------------------------------------------------------------------------


def backoff_delay(attempt: int, cap_s: float, base_s: float = BACKOFF_BASE_S,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = after the first failure) [s]: full jitter, uniform in
    [0, min(cap_s, base_s·2^(attempt-1))]."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` [s]: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class TokenBucket:
    """``rate_per_minute`` tokens a minute, at most ``capacity`` saved up; one token per request."""

    def __init__(self, rate_per_minute: float, capacity: int = 1) -> None:
        self.rate_per_s = rate_per_minute / 60.0
        self.capacity = float(capacity)
        self._tokens = float(capacity)
        self._updated: float | None = None

    def take(self, now: float) -> float:
        """Take a token at ``now`` [s] and return 0, or return how long [s] until one is available."""
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
            self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one HTTP attempt came to."""

    verdict: str  # "delivered", "retry" or "failed"
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def classify(kind: ReceiverKind, response: httpx.Response, now: float) -> Outcome:
    """Sort a response into delivered / retry / failed (see the module docstring)."""
    code = response.status_code
    if 200 <= code < 300:
        if kind == ReceiverKind.WEBHOOK:
            return Outcome("delivered", code)
        try:
            reply = response.json()
        except ValueError:
            return Outcome("delivered", code)  # a 2xx without JSON: nothing says it failed
        vendor_code = reply.get("errcode", reply.get("code", reply.get("StatusCode", 0))) if isinstance(
            reply, dict) else 0
        if not vendor_code:
            return Outcome("delivered", code)
        message = reply.get("errmsg", reply.get("msg", reply.get("StatusMessage", "")))
        error = f"{kind} error {vendor_code}: {str(message)[:300]}"
        verdict = "retry" if vendor_code in RETRYABLE_VENDOR_CODES.get(kind, ()) else "failed"
        return Outcome(verdict, code, error)
    error = f"HTTP {code}: {response.text[:300]}"
    if code in RETRYABLE_STATUS or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now) if code in (429, 503) else None
        return Outcome("retry", code, error, retry_after)
    return Outcome("failed", code, error)


@dataclass
class Counters:
    """Totals since start, per receiver (receivers are few and configured: a bounded label)."""

    sent: int = 0  # delivered (2xx)
    failed: int = 0  # given up: permanent error, max_attempts or max_age_s
    retried: int = 0  # attempts that failed and were rescheduled


@dataclass
class _Lane:
    receiver: Receiver
    bucket: TokenBucket
    counters: Counters = field(default_factory=Counters)
    client: httpx.Client | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Dispatcher:
    """Drains an open :class:`Outbox` to ``receivers``; ``start()``/``stop()`` run it on threads.

    ``drain_once(now)`` does the same work synchronously (for tests and tools): per receiver, every attempt
    that is due at ``now`` and allowed by the rate limit. ``clock`` gives unix time [s]; ``rng`` the jitter.
    Rows of receivers not in ``receivers`` stay pending (logged once). Subclasses deliver other queues
    (``label`` names them in logs and threads; :meth:`_attempt` makes one request).
    """

    label = "alert"

    def __init__(self, outbox: Outbox, receivers: Sequence[Receiver], *, backoff_base_s: float = BACKOFF_BASE_S,
                 poll_interval_s: float = 1.0, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        check_routing(receivers, ())
        self.outbox = outbox
        self.backoff_base_s = backoff_base_s
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._lanes = {r.name: _Lane(r, TokenBucket(r.rate_per_minute, r.burst)) for r in receivers}
        self._stop = threading.Event()
        self._warned: set[str] = set()

    # --- lifecycle ---

    def start(self) -> Dispatcher:
        """Start one delivery thread per receiver; pending rows from earlier runs go first."""
        self._warn_unknown()
        self._stop.clear()
        for name, lane in self._lanes.items():
            if lane.thread is None or not lane.thread.is_alive():
                lane.thread = threading.Thread(target=self._run, args=(lane,), name=f"{self.label}-delivery-{name}",
                                               daemon=True)
                lane.thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads (an attempt in flight finishes or times out first) and close the HTTP clients."""
        self._stop.set()
        for lane in self._lanes.values():
            lane.wake.set()
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(timeout_s)
                if lane.thread.is_alive():
                    log.warning("%s delivery thread did not stop receiver=%s", self.label, lane.receiver.name)
                lane.thread = None
        for lane in self._lanes.values():
            with lane.lock:
                if lane.client is not None:
                    lane.client.close()
                    lane.client = None

    def wake(self, receiver: str | None = None) -> None:
        """Look at the outbox now instead of at the next poll (call after enqueueing)."""
        for name, lane in self._lanes.items():
            if receiver is None or name == receiver:
                lane.wake.set()

    def drain_once(self, now: float | None = None) -> int:
        """Make every attempt due at ``now`` [unix s] (default: the clock), receiver after receiver.

        Returns the number of rows that changed (delivered, failed or rescheduled).
        """
        self._warn_unknown()
        changed = 0
        for lane in self._lanes.values():
            while True:
                wait = self._step(lane, self._clock() if now is None else now)
                if wait != 0:
                    break
                changed += 1
        return changed

    # --- metrics ---

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per receiver: ``{name: {"sent", "failed", "retried"}}``."""
        return {name: {"sent": lane.counters.sent, "failed": lane.counters.failed, "retried": lane.counters.retried}
                for name, lane in self._lanes.items()}

    def totals(self) -> dict[str, int]:
        """Counters summed over receivers: ``{"sent", "failed", "retried"}``."""
        result = {"sent": 0, "failed": 0, "retried": 0}
        for counts in self.stats().values():
            for k, v in counts.items():
                result[k] += v
        return result

    # --- the work ---

    def _warn_unknown(self) -> None:
        for name in self.outbox.pending_receivers():
            if name not in self._lanes and name not in self._warned:
                self._warned.add(name)
                log.warning("%s outbox has pending rows for a receiver not configured receiver=%s", self.label, name)

    def _run(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            try:
                wait = self._step(lane, self._clock())
            except Exception:  # the loop survives a bad row or a full disk; the row stays pending
                log.exception("%s delivery step failed receiver=%s", self.label, lane.receiver.name)
                wait = self.poll_interval_s
            if wait == 0:
                continue
            lane.wake.wait(self.poll_interval_s if wait is None else wait)
            lane.wake.clear()

    def _step(self, lane: _Lane, now: float) -> float | None:
        """Handle the receiver's head row once. 0: something changed, go on; > 0: wait that long [s]; None: idle."""
        with lane.lock:
            receiver = lane.receiver
            row = self.outbox.head(receiver.name)
            if row is None:
                return None
            now_ms = int(now * 1000)
            if row.next_attempt_ms > now_ms:
                return (row.next_attempt_ms - now_ms) / 1000.0
            if now_ms - row.pending_since_ms >= receiver.max_age_s * 1000:
                self._give_up(lane, row, now_ms, f"gave up: older than max_age_s={receiver.max_age_s:g} "
                              f"after {row.attempts} attempts; last error: {row.last_error}", attempted=False)
                return 0.0
            wait = lane.bucket.take(now)
            if wait > 0:
                return wait
            started = time.monotonic()
            outcome = self._attempt(lane, row, now)
            done_ms = now_ms + int((time.monotonic() - started) * 1000)
            attempts = row.attempts + 1
            budget_used = row.attempts_since_requeue + 1
            if outcome.verdict == "delivered":
                self.outbox.mark_delivered(row.id, done_ms, outcome.status_code)
                lane.counters.sent += 1
                log.info("%s delivered receiver=%s key=%s status=%s attempts=%d", self.label, receiver.name,
                         row.idempotency_key, outcome.status_code, attempts)
            elif outcome.verdict == "retry" and (receiver.max_attempts is None
                                                 or budget_used < receiver.max_attempts):
                delay = outcome.retry_after_s
                if delay is None:
                    delay = backoff_delay(attempts, receiver.backoff_max_s, self.backoff_base_s, self._rng)
                self.outbox.mark_retry(row.id, done_ms, now_ms + math.ceil(delay * 1000), outcome.error or "",
                                       outcome.status_code)
                lane.counters.retried += 1
                log.warning("%s delivery will be retried receiver=%s key=%s attempt=%d in_s=%.1f error=%s",
                            self.label, receiver.name, row.idempotency_key, attempts, delay, outcome.error)
            else:
                reason = outcome.error or "failed"
                if outcome.verdict == "retry":
                    reason = f"gave up after max_attempts={receiver.max_attempts}; last error: {reason}"
                self._give_up(lane, row, done_ms, reason, status_code=outcome.status_code)
            return 0.0

    def _give_up(self, lane: _Lane, row: Delivery, now_ms: int, reason: str, status_code: int | None = None,
                 attempted: bool = True) -> None:
        self.outbox.mark_failed(row.id, now_ms, reason, status_code, attempted=attempted)
        lane.counters.failed += 1
        log.error("%s delivery failed receiver=%s key=%s status=%s error=%s", self.label, lane.receiver.name,
                  row.idempotency_key, status_code, reason)

    def _attempt(self, lane: _Lane, row: Delivery, now: float) -> Outcome:
        receiver = lane.receiver
        url, body = receiver.url, row.body
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
                   **receiver.headers, signing.IDEMPOTENCY_HEADER: row.idempotency_key}
        secret = receiver.secret.get_secret_value() if receiver.secret is not None else None
        try:
            if secret and receiver.kind == ReceiverKind.WEBHOOK:
                headers.update(signing.sign(body, secret, now))
            elif secret and receiver.kind == ReceiverKind.DINGTALK:
                url = payloads.dingtalk_signed_url(url, secret, int(now * 1000))
            elif secret and receiver.kind == ReceiverKind.FEISHU:
                body = payloads.feishu_signed_body(body, secret, int(now))
        except ValueError as exc:  # a stored body that is not JSON cannot be signed: it would block the lane
            return Outcome("failed", None, f"cannot sign the stored body: {exc}")
        if lane.client is None:
            lane.client = httpx.Client(timeout=receiver.timeout_s, follow_redirects=False)
        try:
            response = lane.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Outcome("retry", None, f"timeout after {receiver.timeout_s:g} s ({type(exc).__name__})")
        except httpx.TransportError as exc:  # refused, reset, DNS; the URL is not logged (tokens live in it)
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:  # e.g. an invalid URL: no retry can fix it
            return Outcome("failed", None, f"{type(exc).__name__}: {exc}")
        return classify(receiver.kind, response, now)


# --- the orchestration tier -----------------------------------------------------------------------------


class AlertDelivery:
    """Outbox + dispatcher + routing, from the configuration: what the alert engine and the API hold.

    ``start()`` opens the outbox, prunes old log rows and starts the dispatcher; ``notify(events)`` routes
    and enqueues (idempotently) and wakes the dispatcher; ``deliveries()`` is the delivery log; ``stop()``.
    """

    def __init__(self, receivers: Sequence[Receiver], routes: Sequence[Route],
                 settings: DeliverySettings | None = None, *, backoff_base_s: float = BACKOFF_BASE_S,
                 clock: Callable[[], float] = time.time) -> None:
        check_routing(receivers, routes)
        self.receivers = tuple(receivers)
        self.routes = tuple(routes)
        self.settings = settings or DeliverySettings()
        self._clock = clock
        self.outbox = Outbox(self.settings.outbox_path)
        self.dispatcher = Dispatcher(self.outbox, self.receivers, backoff_base_s=backoff_base_s,
                                     poll_interval_s=self.settings.poll_interval_s, clock=clock)

    def start(self) -> AlertDelivery:
        """Open the outbox, drop log rows older than ``retention_days`` and start delivering."""
        self.outbox.open()
        pruned = self.outbox.prune(int((self._clock() - self.settings.retention_days * 86_400) * 1000))
        if pruned:
            log.info("alert delivery log pruned rows=%d", pruned)
        self.dispatcher.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the dispatcher and close the outbox; pending rows wait for the next start."""
        self.dispatcher.stop(timeout_s)
        self.outbox.close()

    def notify(self, events: Iterable[AlertEvent]) -> list[Enqueued]:
        """Route, render and enqueue ``events``; the dispatcher is woken for the receivers concerned."""
        done = enqueue_events(self.outbox, events, self.receivers, self.routes, self.settings,
                              now_ms=int(self._clock() * 1000))
        for receiver in {d.receiver for d in done if d.created}:
            self.dispatcher.wake(receiver)
        return done

    def deliveries(self, limit: int = 100, receiver: str | None = None,
                   status: DeliveryStatus | str | None = None) -> list[Delivery]:
        """The delivery log, newest first (see :meth:`Outbox.deliveries`)."""
        return self.outbox.deliveries(limit, receiver, status)

    def retry(self, delivery_id: int) -> Delivery:
        """Send a failed delivery again (an operator's retry): back to pending, due now; returns the row.

        Same body and ``Idempotency-Key``; ``max_attempts`` and ``max_age_s`` count afresh from now. Raises
        :class:`~dcpue.alerting.outbox.UnknownDelivery` (a KeyError) for an unknown id and
        :class:`~dcpue.alerting.outbox.NotRetryable` (a ValueError) when the row is not failed or its receiver
        is no longer configured (nothing would send it).
        """
        row = self.outbox.by_id(delivery_id)
        names = [r.name for r in self.receivers]
        if row is not None and row.receiver not in names:
            raise NotRetryable(f"alert delivery {delivery_id} is for receiver {row.receiver!r}, which is not "
                               f"configured (configured: {names}); nothing would send it")
        done = self.outbox.retry(delivery_id, int(self._clock() * 1000))
        self.dispatcher.wake(done.receiver)
        log.info("alert delivery retried by operator id=%d receiver=%s key=%s attempts=%d last_error=%s", done.id,
                 done.receiver, done.idempotency_key, done.attempts, done.last_error)
        return done

    def stats(self) -> dict[str, dict[str, int]]:
        """Per receiver: ``sent``, ``failed``, ``retried`` since start and ``pending`` rows now."""
        result = self.dispatcher.stats()
        for name, counts in result.items():
            counts["pending"] = self.outbox.counts(name)["pending"]
        return result

