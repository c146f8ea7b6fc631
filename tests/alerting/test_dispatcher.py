"""The dispatcher step by step: ``drain_once(now)`` with a controlled clock against a real HTTP receiver.

Retry scheduling, Retry-After, giving up, the rate limit and vendor signatures are checked at exact times;
the requests themselves travel over real HTTP to the peer in tests/peers/webhook.py.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dcpue.alerting import payloads
from dcpue.alerting.config import Receiver, ReceiverKind
from dcpue.alerting.delivery import (
    Dispatcher,
    TokenBucket,
    backoff_delay,
    classify,
    parse_retry_after,
)
from dcpue.alerting.outbox import Outbox
from tests.alerting.helpers import make_event
from tests.peers.webhook import Reply, WebhookReceiver, webhook_receiver
from tests.servers import free_port

pytestmark = pytest.mark.integration

NOW = 1_900_000_000.0  # a fixed "now" [unix s]
NOW_MS = int(NOW * 1000)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as peer:
        yield peer


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


def dispatcher(outbox: Outbox, *receivers: Receiver, seed: int = 1) -> Dispatcher:
    return Dispatcher(outbox, receivers, rng=random.Random(seed), clock=lambda: NOW)


def enqueue(outbox: Outbox, receiver: str, *keys: str, kind: str = "webhook", now_ms: int = NOW_MS) -> None:
    for key in keys:
        body = payloads.render(kind, [make_event(rack=key)], receiver=receiver)
        outbox.enqueue(receiver, key, body, now_ms=now_ms, kind=kind)


# --- pure pieces ----------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (50, 30.0)]:
        delays = [backoff_delay(attempt, cap_s=30.0, rng=rng) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # spread over the whole range, not a fixed delay


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("Sun, 17 Mar 2030 17:47:00 GMT", 1_900_000_000.0) == pytest.approx(20.0)
    assert parse_retry_after("soon", NOW) is None and parse_retry_after(None, NOW) is None


def test_token_bucket_spaces_requests_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_minute=60, capacity=2)
    assert bucket.take(100.0) == 0 and bucket.take(100.0) == 0  # the burst
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0
    assert bucket.take(1000.0) == 0 and bucket.take(1000.0) == 0 and bucket.take(1000.0) > 0  # capped savings


@pytest.mark.parametrize(("kind", "status", "reply", "verdict"), [
    (ReceiverKind.WEBHOOK, 204, b"", "delivered"),
    (ReceiverKind.WEBHOOK, 503, b"", "retry"),
    (ReceiverKind.WEBHOOK, 408, b"", "retry"),
    (ReceiverKind.WEBHOOK, 404, b"", "failed"),
    (ReceiverKind.WEBHOOK, 301, b"", "failed"),
    (ReceiverKind.DINGTALK, 200, b'{"errcode":0,"errmsg":"ok"}', "delivered"),
    (ReceiverKind.DINGTALK, 200, b'{"errcode":130101,"errmsg":"send too fast"}', "retry"),
    (ReceiverKind.DINGTALK, 200, b'{"errcode":310000,"errmsg":"sign not match"}', "failed"),
    (ReceiverKind.WECOM, 200, b'{"errcode":45009,"errmsg":"api freq out of limit"}', "retry"),
    (ReceiverKind.FEISHU, 200, b'{"code":19021,"msg":"sign match fail"}', "failed"),
    (ReceiverKind.FEISHU, 200, b'{"code":11232,"msg":"frequency limited"}', "retry"),
    (ReceiverKind.FEISHU, 200, b'{"StatusCode":0,"StatusMessage":"success"}', "delivered"),
])
def test_classify(kind: ReceiverKind, status: int, reply: bytes, verdict: str) -> None:
    assert classify(kind, httpx.Response(status, content=reply), NOW).verdict == verdict


# --- drain_once over real HTTP --------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_delivered(hook: WebhookReceiver, outbox: Outbox) -> None:
    noc = Receiver(name="noc", url=hook.url + "/alerts", secret="s", backoff_max_s=300)
    enqueue(outbox, "noc", "a")
    hook.script(500)
    d = dispatcher(outbox, noc)
    assert d.drain_once(NOW) == 1
    row = outbox.get("noc", "a")
    assert row.status == "pending" and row.attempts == 1 and row.last_status_code == 500
    assert NOW_MS <= row.next_attempt_ms <= NOW_MS + 1000  # first retry: jitter in [0, 1 s]
    assert d.drain_once(NOW + 1.0) == 1
    assert outbox.get("noc", "a").status == "delivered"
    first, second = hook.wait_for(2)
    assert first.body == second.body and first.header("Idempotency-Key") == second.header("Idempotency-Key") == "a"
    assert d.stats() == {"noc": {"sent": 1, "failed": 0, "retried": 1}}


def test_429_retry_after_is_honoured(hook: WebhookReceiver, outbox: Outbox) -> None:
    noc = Receiver(name="noc", url=hook.url)
    enqueue(outbox, "noc", "a")
    hook.script(Reply(429, b"slow down", {"Retry-After": "7"}))
    d = dispatcher(outbox, noc)
    d.drain_once(NOW)
    row = outbox.get("noc", "a")
    assert row.next_attempt_ms == NOW_MS + 7000 and row.last_status_code == 429
    assert d.drain_once(NOW + 6.9) == 0 and len(hook.requests) == 1
    assert d.drain_once(NOW + 7.0) == 1 and outbox.get("noc", "a").status == "delivered"


def test_4xx_gives_up_logs_and_does_not_block_the_next_row(hook: WebhookReceiver, outbox: Outbox,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    noc = Receiver(name="noc", url=hook.url, burst=5)
    enqueue(outbox, "noc", "bad", "good")
    hook.script(Reply(400, b'{"error":"unknown field"}'))
    d = dispatcher(outbox, noc)
    with caplog.at_level(logging.ERROR, logger="dcpue.alerting.delivery"):
        assert d.drain_once(NOW) == 2
    bad, good = outbox.get("noc", "bad"), outbox.get("noc", "good")
    assert bad.status == "failed" and bad.attempts == 1 and bad.last_status_code == 400
    assert "HTTP 400" in bad.last_error and "unknown field" in bad.last_error
    assert good.status == "delivered"
    assert any("alert delivery failed receiver=noc key=bad status=400" in r.getMessage() for r in caplog.records)
    assert [d.idempotency_key for d in outbox.deliveries(status="failed")] == ["bad"]
    assert d.totals() == {"sent": 1, "failed": 1, "retried": 0}


def test_gives_up_after_max_attempts_or_max_age(hook: WebhookReceiver, outbox: Outbox) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    capped = Receiver(name="capped", url=nobody, max_attempts=2, backoff_max_s=1)
    old = Receiver(name="old", url=hook.url, max_age_s=60)
    enqueue(outbox, "capped", "a")
    enqueue(outbox, "old", "b", "c")
    hook.script(503)
    d = dispatcher(outbox, capped, old)
    d.drain_once(NOW)  # capped: attempt 1 refused; old: b answered 503
    d.drain_once(NOW + 2)  # capped: attempt 2 refused → given up; old: b delivered
    a = outbox.get("capped", "a")
    assert a.status == "failed" and a.attempts == 2 and "max_attempts=2" in a.last_error
    assert "ConnectError" in a.last_error
    assert outbox.get("old", "b").status == "delivered"
    d.drain_once(NOW + 61)  # c was created at NOW: older than max_age_s, given up without a request
    c = outbox.get("old", "c")
    assert c.status == "failed" and c.attempts == 0 and "max_age_s=60" in c.last_error


def test_rate_limit_makes_excess_wait_and_drops_nothing(hook: WebhookReceiver, outbox: Outbox) -> None:
    noc = Receiver(name="noc", url=hook.url, max_per_minute=60, burst=2)
    enqueue(outbox, "noc", "a", "b", "c", "d")
    d = dispatcher(outbox, noc)
    assert d.drain_once(NOW) == 2  # the burst
    assert d.drain_once(NOW + 0.5) == 0  # half a token
    assert d.drain_once(NOW + 1.0) == 1
    assert d.drain_once(NOW + 2.0) == 1
    assert [r.header("Idempotency-Key") for r in hook.wait_for(4)] == ["a", "b", "c", "d"]


def test_a_receiver_with_unanswered_requests_does_not_hold_up_another(hook: WebhookReceiver,
                                                                       outbox: Outbox) -> None:
    with webhook_receiver() as stuck:
        stuck.hold()
        slow = Receiver(name="slow", url=stuck.url, timeout_s=3)
        fast = Receiver(name="fast", url=hook.url)
        enqueue(outbox, "slow", "s1", now_ms=int(time.time() * 1000))
        enqueue(outbox, "fast", "f1", "f2", now_ms=int(time.time() * 1000))
        d = Dispatcher(outbox, [slow, fast], poll_interval_s=0.05).start()
        try:
            started = time.monotonic()
            hook.wait_for(2, timeout_s=2.5)
            assert time.monotonic() - started < 2.5  # well before the stuck receiver's timeout
            stuck.wait_for(1)
            assert outbox.get("slow", "s1").status == "pending"
        finally:
            stuck.release()
            d.stop()


def test_dingtalk_and_feishu_are_signed_afresh_on_every_attempt(hook: WebhookReceiver, outbox: Outbox) -> None:
    ding = Receiver(name="ding", kind="dingtalk", url=hook.url + "/robot/send?access_token=tok", secret="SECd")
    lark = Receiver(name="lark", kind="feishu", url=hook.url + "/open-apis/bot/v2/hook/x", secret="fs")
    enqueue(outbox, "ding", "d1", kind="dingtalk")
    enqueue(outbox, "lark", "l1", kind="feishu")
    hook.script(500, 500)
    d = dispatcher(outbox, ding, lark)
    d.drain_once(NOW)
    d.drain_once(NOW + 60)
    requests = hook.wait_for(4)
    dings = [r for r in requests if r.path.startswith("/robot/send")]
    larks = [r for r in requests if r.path.startswith("/open-apis")]
    assert len(dings) == len(larks) == 2
    for request, when in zip(dings, (NOW, NOW + 60), strict=True):
        query = parse_qs(urlsplit(request.path).query)
        ts = int(when * 1000)
        assert query["access_token"] == ["tok"] and query["timestamp"] == [str(ts)]
        assert query["sign"] == [payloads.dingtalk_sign("SECd", ts)]
        assert request.json()["msgtype"] == "markdown"
    for request, when in zip(larks, (NOW, NOW + 60), strict=True):
        body = request.json()
        assert body["timestamp"] == str(int(when)) and body["sign"] == payloads.feishu_sign("fs", int(when))
        assert body["msg_type"] == "interactive"
    assert outbox.counts()["delivered"] == 2


def test_vendor_error_codes_in_a_200_are_not_deliveries(hook: WebhookReceiver, outbox: Outbox) -> None:
    ding = Receiver(name="ding", kind="dingtalk", url=hook.url, backoff_max_s=1, burst=5)
    enqueue(outbox, "ding", "a", "b", kind="dingtalk")
    hook.script(Reply(200, json.dumps({"errcode": 130101, "errmsg": "send too fast"}).encode()),
                Reply(200, json.dumps({"errcode": 310000, "errmsg": "keywords not in content"}).encode()))
    d = dispatcher(outbox, ding)
    d.drain_once(NOW)
    assert outbox.get("ding", "a").status == "pending"  # rate-limited: retried
    d.drain_once(NOW + 1)  # a → keyword error: permanent
    a = outbox.get("ding", "a")
    assert a.status == "failed" and "310000" in a.last_error
    assert outbox.get("ding", "b").status == "delivered"
