"""End to end over real HTTP and real time: AlertDelivery (outbox + dispatcher threads) against the webhook peer.

Covers: a firing and its resolve arrive once each, signed; a receiver that is down for a while gets
everything afterwards, in order; a dispatcher process SIGKILLed after the receiver got the request but
before the outbox marked it delivered → the next process resends the same body with the same
Idempotency-Key and adds no row; the rate limit spreads a burst; 429 Retry-After is waited out.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcpue.alerting.config import DeliverySettings, Receiver, Route
from dcpue.alerting.delivery import AlertDelivery
from dcpue.alerting.outbox import Outbox
from tests.alerting import dispatch_child
from tests.alerting.helpers import make_event, resolved, wait_until
from tests.peers.webhook import Reply, WebhookReceiver, webhook_receiver
from tests.servers import _die_with_parent

pytestmark = pytest.mark.integration

SECRET = "hook-secret"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with webhook_receiver(secret=SECRET) as peer:
        yield peer


def running(tmp_path: Path, hook: WebhookReceiver, **receiver: object) -> AlertDelivery:
    noc = Receiver.model_validate({"name": "noc", "url": hook.url + "/dcpue", "secret": SECRET, **receiver})
    settings = DeliverySettings(outbox_path=str(tmp_path / "outbox.sqlite"), poll_interval_s=0.05, group_by=(),
                                external_url="https://dcpue.example")
    return AlertDelivery([noc], [Route(receivers=("noc",))], settings).start()


def delivered(delivery: AlertDelivery, count: int) -> bool:
    return delivery.outbox.counts()["delivered"] >= count


def test_a_firing_and_its_resolve_arrive_once_each_signed(tmp_path: Path, hook: WebhookReceiver) -> None:
    delivery = running(tmp_path, hook)
    try:
        firing = make_event()
        [queued] = delivery.notify([firing])
        assert queued.created and queued.idempotency_key == f"{firing.fingerprint}-{firing.starts_at_ms}-1"
        hook.wait_for(1)
        assert not delivery.notify([firing])[0].created  # the engine replays the event: nothing new
        delivery.notify([resolved(firing, int(time.time() * 1000))])
        wait_until(lambda: delivered(delivery, 2), what="both deliveries marked")
        requests = hook.requests
        rows = delivery.deliveries()
    finally:
        delivery.stop()
    assert len(requests) == 2
    assert [r.json()["status"] for r in requests] == ["firing", "resolved"]
    assert [r.header("Idempotency-Key") for r in requests] == [f"{firing.fingerprint}-{firing.starts_at_ms}-1",
                                                                      f"{firing.fingerprint}-{firing.starts_at_ms}-2"]
    assert all(r.signature_ok for r in requests) and all(r.path == "/dcpue" for r in requests)
    assert requests[0].header("User-Agent").startswith("dcpue/")
    assert requests[1].json()["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert [d.status for d in rows] == ["delivered", "delivered"]


def test_a_receiver_down_for_a_while_gets_everything_afterwards_in_order(tmp_path: Path,
                                                                         hook: WebhookReceiver) -> None:
    first = make_event(rack="A01")
    events = [first, make_event(rack="A02"), resolved(first, int(time.time() * 1000)), make_event(rack="A03")]
    with hook.down():
        delivery = running(tmp_path, hook, backoff_max_s=0.3)
        delivery.notify(events)
        wait_until(lambda: delivery.outbox.head("noc").attempts >= 3, what="retries while the receiver is down")
        assert delivery.outbox.counts()["pending"] == 4
    try:
        requests = hook.wait_for(4)
        wait_until(lambda: delivered(delivery, 4), what="all four marked delivered")
        stats = delivery.stats()["noc"]
    finally:
        delivery.stop()
    assert [r.header("Idempotency-Key") for r in hook.requests] == [e.idempotency_key for e in events]
    assert [r.json()["alerts"][0]["status"] for r in requests] == ["firing", "firing", "resolved", "firing"]
    assert stats["sent"] == 4 and stats["retried"] >= 3 and stats["pending"] == 0


def test_a_dispatcher_killed_before_marking_is_followed_by_the_same_body_and_key(tmp_path: Path,
                                                                                   hook: WebhookReceiver) -> None:
    outbox_path = tmp_path / "outbox.sqlite"
    log_path = tmp_path / "child.log"
    hook.hold()  # the request arrives but is not answered: the sender cannot have marked it delivered
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.alerting.dispatch_child", str(outbox_path), hook.url, SECRET],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )
    try:
        wait_until(lambda: hook.requests or child.poll() is not None, timeout_s=20, what="the child's request")
        assert child.poll() is None, f"dispatcher child exited early:\n{log_path.read_text()}"
        with Outbox(outbox_path) as box:  # the child still has it open; WAL lets us read
            [row] = box.deliveries()
            assert row.status == "pending" and row.attempts == 0
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    hook.release()

    successor = dispatch_child.delivery(str(outbox_path), hook.url, SECRET).start()
    try:
        [replayed] = successor.notify([dispatch_child.CRASH_EVENT])  # the worker replays its input
        assert not replayed.created
        first, second = hook.wait_for(2)
        wait_until(lambda: delivered(successor, 1), what="the resend marked delivered")
        rows = successor.deliveries()
    finally:
        successor.stop()
    assert second.body == first.body
    key = dispatch_child.CRASH_EVENT.idempotency_key
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == key
    assert first.signature_ok and second.signature_ok
    assert len(rows) == 1 and rows[0].status == "delivered" and rows[0].attempts == 1
    assert len(hook.requests) == 2


def test_the_rate_limit_spreads_a_burst(tmp_path: Path, hook: WebhookReceiver) -> None:
    delivery = running(tmp_path, hook, max_per_minute=120)  # one request per 0.5 s, no burst
    try:
        delivery.notify([make_event(rack=f"R{i}") for i in range(4)])
        requests = hook.wait_for(4)
        wait_until(lambda: delivered(delivery, 4), what="all marked delivered")
    finally:
        delivery.stop()
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert all(gap >= 0.4 for gap in gaps) and requests[-1].at - requests[0].at >= 1.4, gaps
    assert len(hook.requests) == 4  # delayed, none dropped


def test_429_retry_after_is_waited_out(tmp_path: Path, hook: WebhookReceiver) -> None:
    hook.script(Reply(429, b'{"error":"slow down"}', {"Retry-After": "1"}))
    delivery = running(tmp_path, hook)
    try:
        delivery.notify([make_event()])
        first, second = hook.wait_for(2)
        wait_until(lambda: delivered(delivery, 1), what="delivered after the 429")
    finally:
        delivery.stop()
    assert second.at - first.at >= 0.9
    assert second.body == first.body


def test_a_replay_grouped_differently_sends_no_event_twice(tmp_path: Path, hook: WebhookReceiver) -> None:
    """Grouped by site, a replay that brings an already-sent event together with a new one sends only the new one."""
    noc = Receiver.model_validate({"name": "noc", "url": hook.url + "/dcpue", "secret": SECRET})
    settings = DeliverySettings(outbox_path=str(tmp_path / "outbox.sqlite"), poll_interval_s=0.05, group_by=("site",))
    delivery = AlertDelivery([noc], [Route(receivers=("noc",))], settings).start()
    try:
        first = make_event(alertname="PueAboveTarget")
        second = make_event(alertname="RackInletAboveRecommended")
        assert first.site == second.site and first.fingerprint != second.fingerprint
        delivery.notify([first])
        hook.wait_for(1)
        [again] = delivery.notify([first, second])  # the same site: one group, one new event in it
        assert again.created and again.events == 1
        hook.wait_for(2)
        assert not delivery.notify([second, first])[0].created  # and the whole batch once more: nothing
        time.sleep(0.3)
        requests = hook.requests
    finally:
        delivery.stop()
    assert [[a["labels"]["alertname"] for a in r.json()["alerts"]] for r in requests] == [
        ["PueAboveTarget"], ["RackInletAboveRecommended"]]
