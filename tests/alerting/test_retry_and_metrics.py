"""An operator's retry of a failed delivery (outbox, dispatcher, HTTP API) and the delivery Prometheus metrics.

The retry is checked end to end: a real receiver on 127.0.0.1 rejects a notification for good (HTTP 400), is
fixed, and ``POST /api/v1/alerts/deliveries/{id}/retry`` makes it arrive once more with the same body and
Idempotency-Key. The metrics are read the way Prometheus reads them: ``generate_latest`` text, parsed back.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dcpue.alerting import payloads
from dcpue.alerting.config import DeliverySettings, Receiver, Route
from dcpue.alerting.delivery import AlertDelivery, Dispatcher
from dcpue.alerting.metrics import register_delivery_metrics
from dcpue.alerting.outbox import DeliveryStatus, NotRetryable, Outbox, PendingSummary, UnknownDelivery
from dcpue.analytics.alerts.engine import AlertEngine
from dcpue.registry import Registry, parse_registry
from dcpue.runtime.alerts import AlertsApi
from dcpue.runtime.store import FileStore
from dcpue.settings import AlertSettings, EngineSettings
from dcpue.web.app import create_app
from tests.alerting.helpers import make_event, wait_until
from tests.peers.webhook import Reply, WebhookReceiver, webhook_receiver

NOW = 1_900_000_000.0  # a fixed "now" for the drain_once tests [unix s]
NOW_MS = int(NOW * 1000)
SECRET = "retry-secret"
REJECT = Reply(400, b'{"error":"unknown field"}')


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with webhook_receiver(secret=SECRET) as peer:
        yield peer


def failed_row(outbox: Outbox, key: str = "k1", now_ms: int = 1000) -> int:
    """Enqueue ``key`` for noc, fail one attempt with a 503 (rescheduled), then give it up on a 400."""
    outbox.enqueue("noc", key, b'{"n": 1}', now_ms=now_ms)
    row = outbox.get("noc", key)
    outbox.mark_retry(row.id, now_ms + 10, next_attempt_ms=now_ms + 500, error="HTTP 503: busy", status_code=503)
    outbox.mark_failed(row.id, now_ms + 600, "HTTP 400: unknown field", 400)
    return row.id


# --- the outbox ---------------------------------------------------------------------------------------


def test_outbox_retry_puts_a_failed_row_back_due_now_with_its_body_key_attempts_and_error(outbox: Outbox) -> None:
    delivery_id = failed_row(outbox)
    outbox.enqueue("noc", "k2", b'{"n": 2}', now_ms=2000)  # a newer row, pending
    row = outbox.retry(delivery_id, now_ms=5000)
    assert (row.id, row.status, row.idempotency_key, row.body) == (delivery_id, "pending", "k1", b'{"n": 1}')
    assert (row.attempts, row.last_error, row.last_status_code) == (2, "HTTP 400: unknown field", 400)
    assert (row.next_attempt_ms, row.updated_ms, row.created_ms) == (5000, 5000, 1000)
    assert (row.requeued_ms, row.requeued_attempts, row.attempts_since_requeue, row.pending_since_ms) == (
        5000, 2, 0, 5000)
    assert outbox.by_id(delivery_id) == row
    assert outbox.head("noc").id == delivery_id  # the older row goes first again
    assert outbox.counts("noc") == {"pending": 2, "delivered": 0, "failed": 0}
    assert row.as_dict()["requeued_ms"] == 5000 and "body" not in row.as_dict()


def test_outbox_retry_refuses_unknown_ids_and_rows_that_are_not_failed(outbox: Outbox) -> None:
    delivery_id = failed_row(outbox)
    with pytest.raises(UnknownDelivery, match="no alert delivery with id 999") as unknown:
        outbox.retry(999, now_ms=5000)
    assert isinstance(unknown.value, KeyError) and str(unknown.value).startswith("no alert delivery")
    outbox.retry(delivery_id, now_ms=5000)
    with pytest.raises(NotRetryable, match=f"alert delivery {delivery_id} is pending; only a failed") as pending:
        outbox.retry(delivery_id, now_ms=6000)
    assert isinstance(pending.value, ValueError)
    outbox.mark_delivered(delivery_id, 7000, 200)
    with pytest.raises(NotRetryable, match="is delivered"):
        outbox.retry(delivery_id, now_ms=8000)
    row = outbox.by_id(delivery_id)
    assert (row.status, row.requeued_ms, row.delivered_ms) == ("delivered", 5000, 7000)  # refusals changed nothing
    assert outbox.by_id(999) is None
    assert not outbox.requeue(delivery_id, 9000) and not outbox.requeue(999, 9000)


def test_an_outbox_file_from_before_the_retry_columns_opens_and_retries(tmp_path: Path) -> None:
    path = tmp_path / "old-outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL, idempotency_key TEXT NOT NULL,
        kind TEXT NOT NULL, body BLOB NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL, last_error TEXT,
        last_status_code INTEGER, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, delivered_ms INTEGER,
        alert_status TEXT NOT NULL DEFAULT '', site TEXT NOT NULL DEFAULT '', alertname TEXT NOT NULL DEFAULT '',
        fingerprints TEXT NOT NULL DEFAULT '[]', UNIQUE (receiver, idempotency_key))""")
    db.execute("INSERT INTO deliveries (receiver, idempotency_key, kind, body, status, attempts, next_attempt_ms,"
               " last_error, created_ms, updated_ms) VALUES ('noc', 'old', 'webhook', x'7b7d', 'failed', 3, 10,"
               " 'HTTP 404', 10, 20)")
    db.commit()
    db.close()
    with Outbox(path) as box:
        [old] = box.deliveries()
        assert (old.status, old.attempts, old.requeued_ms, old.requeued_attempts) == ("failed", 3, None, 0)
        assert old.pending_since_ms == 10
        row = box.retry(old.id, now_ms=100)
        assert (row.status, row.body, row.attempts, row.requeued_ms) == ("pending", b"{}", 3, 100)
    with Outbox(path) as again:  # the second open finds the columns there
        assert again.by_id(old.id).requeued_ms == 100


def test_pending_summary_counts_per_receiver_and_dates_a_retried_row_from_its_retry(outbox: Outbox) -> None:
    assert outbox.pending_summary() == {}
    outbox.enqueue("noc", "a", b"{}", now_ms=300)
    outbox.enqueue("noc", "b", b"{}", now_ms=400)
    outbox.enqueue("ding", "c", b"{}", now_ms=350)
    outbox.mark_delivered(outbox.head("ding").id, 360)
    delivery_id = failed_row(outbox, "d", now_ms=100)  # created first, failed
    assert outbox.pending_summary() == {"noc": PendingSummary(2, 300)}
    outbox.retry(delivery_id, now_ms=1000)
    assert outbox.pending_summary() == {"noc": PendingSummary(3, 300)}  # pending since 1000, not 100
    outbox.mark_delivered(outbox.by_id(delivery_id).id, 1100)
    outbox.mark_delivered(outbox.get("noc", "a").id, 1200)
    assert outbox.pending_summary() == {"noc": PendingSummary(1, 400)}


# --- the dispatcher after a retry: a fresh budget -----------------------------------------------------


@pytest.mark.integration
def test_a_retried_row_gets_a_fresh_age_and_attempt_budget(hook: WebhookReceiver, outbox: Outbox) -> None:
    noc = Receiver(name="noc", url=hook.url + "/hook", secret=SECRET, max_age_s=60, max_attempts=2, burst=10)
    for key in ("aged", "capped"):
        outbox.enqueue("noc", key, payloads.render("webhook", [make_event(rack=key)], receiver="noc"), now_ms=NOW_MS)
    clock = [NOW + 61]
    dispatcher = Dispatcher(outbox, [noc], backoff_base_s=0.001, clock=lambda: clock[0], rng=random.Random(1))
    assert dispatcher.drain_once() == 2  # both older than max_age_s: given up without a request
    aged, capped = outbox.get("noc", "aged"), outbox.get("noc", "capped")
    assert aged.status == capped.status == "failed" and not hook.requests

    outbox.retry(aged.id, int(clock[0] * 1000))
    assert dispatcher.drain_once() == 1  # its age counts from the retry: young again, sent
    assert outbox.get("noc", "aged").status == "delivered"
    [sent] = hook.wait_for(1)
    assert sent.header("Idempotency-Key") == "aged"  # (signed at the fake clock: the peer calls it stale)

    outbox.retry(capped.id, int(clock[0] * 1000))
    hook.script(503, 503, 503)
    assert dispatcher.drain_once() == 1  # attempt 1 since the retry: 503, rescheduled
    assert outbox.get("noc", "capped").status == "pending"
    clock[0] += 1
    assert dispatcher.drain_once() == 1  # attempt 2: 503 again; max_attempts=2 reached → given up
    capped = outbox.get("noc", "capped")
    assert (capped.status, capped.attempts, capped.requeued_attempts) == ("failed", 2, 0)
    assert "max_attempts=2" in capped.last_error

    outbox.retry(capped.id, int(clock[0] * 1000))
    assert dispatcher.drain_once() == 1  # attempt 3 overall, but 1 since the retry: 503 → rescheduled, not failed
    capped = outbox.get("noc", "capped")
    assert (capped.status, capped.attempts, capped.attempts_since_requeue) == ("pending", 3, 1)
    clock[0] += 1
    assert dispatcher.drain_once() == 1
    assert outbox.get("noc", "capped").status == "delivered"
    requests = hook.wait_for(5)
    assert [r.header("Idempotency-Key") for r in requests] == ["aged"] + ["capped"] * 4
    assert len({r.body for r in requests[1:]}) == 1 and len(hook.requests) == 5
    assert dispatcher.stats() == {"noc": {"sent": 2, "failed": 3, "retried": 2}}


# --- the HTTP API, end to end -------------------------------------------------------------------------


def registry() -> Registry:
    return parse_registry({"version": 1, "sites": [{
        "id": "gz-01", "name": "GZ 01", "city": "Guangzhou", "cooling": "air", "latitude": 23.1, "longitude": 113.3,
        "commissioned": 2021, "racks_installed": 10, "racks_in_service": 5, "design_it_kw": 100.0,
        "points": [{"id": "facility.main", "role": "facility", "quantity": "energy", "unit": "kWh",
                    "source": "revenue_meter"},
                   {"id": "it.ups", "role": "it", "quantity": "power", "unit": "kW", "it_category": 1}]}]})


@pytest.fixture
def app_parts(tmp_path: Path) -> Iterator[tuple[FileStore, Registry, EngineSettings]]:
    store = FileStore(tmp_path / "results.sqlite").setup()
    yield store, registry(), EngineSettings()
    store.close()


def start_delivery(tmp_path: Path, hook: WebhookReceiver) -> AlertDelivery:
    """Delivery to the peer; an idle lane looks at the outbox only every 30 s unless woken (by notify or retry)."""
    noc = Receiver(name="noc", url=hook.url + "/hook", secret=SECRET)
    settings = DeliverySettings(outbox_path=str(tmp_path / "outbox.sqlite"), poll_interval_s=30, group_by=())
    return AlertDelivery([noc], [Route(receivers=("noc",))], settings).start()


@pytest.mark.integration
def test_api_retry_sends_a_failed_delivery_again_once_with_the_same_body_and_key(
        tmp_path: Path, hook: WebhookReceiver, app_parts: tuple[FileStore, Registry, EngineSettings]) -> None:
    store, reg, engine_settings = app_parts
    delivery = start_delivery(tmp_path, hook)
    alerts = AlertsApi(AlertEngine(reg, engine_settings, AlertSettings()), None, delivery)
    client = TestClient(create_app(store, reg, engine_settings, alerts=alerts))
    try:
        hook.default = REJECT  # the receiver refuses the payload: a permanent error
        event = make_event()
        delivery.notify([event])
        wait_until(lambda: delivery.outbox.counts()["failed"] == 1, what="the rejected delivery marked failed")
        time.sleep(0.3)  # a failed row is not tried again by itself
        [rejected] = hook.requests
        [row] = client.get("/api/v1/alerts/deliveries", params={"status": "failed"}).json()["deliveries"]
        assert row["last_status_code"] == 400 and row["attempts"] == 1

        hook.default = Reply()  # fixed: accepts from now on
        answer = client.post(f"/api/v1/alerts/deliveries/{row['id']}/retry")
        assert answer.status_code == 200, answer.text
        retried = answer.json()
        assert (retried["id"], retried["status"], retried["idempotency_key"]) == (row["id"], "pending",
                                                                                  event.idempotency_key)
        assert retried["attempts"] == 1 and retried["last_error"] == row["last_error"]
        assert retried["requeued_ms"] is not None and "body" not in retried

        wait_until(lambda: delivery.outbox.counts()["delivered"] == 1, what="the retried delivery delivered")
        time.sleep(0.3)  # nothing else arrives
        first, second = hook.requests
        assert first is rejected
        assert second.body == first.body
        assert second.header("Idempotency-Key") == first.header("Idempotency-Key") == event.idempotency_key
        assert second.signature_ok and second.path == "/hook"
        [done] = client.get("/api/v1/alerts/deliveries").json()["deliveries"]
        assert (done["status"], done["attempts"], done["last_status_code"]) == ("delivered", 2, 200)

        again = client.post(f"/api/v1/alerts/deliveries/{row['id']}/retry")
        assert again.status_code == 409 and "is delivered; only a failed delivery" in again.json()["detail"]
        unknown = client.post("/api/v1/alerts/deliveries/4242/retry")
        assert unknown.status_code == 404 and "no alert delivery with id 4242" in unknown.json()["detail"]
        assert client.post("/api/v1/alerts/deliveries/0/retry").status_code == 422
        assert client.post("/api/v1/alerts/deliveries/abc/retry").status_code == 422
        assert len(hook.requests) == 2
    finally:
        delivery.stop()
    closed = client.post(f"/api/v1/alerts/deliveries/{row['id']}/retry")  # the outbox is closed now
    assert closed.status_code == 503 and "alert outbox unavailable" in closed.json()["detail"]


@pytest.mark.integration
def test_api_retry_refuses_a_receiver_that_is_no_longer_configured(
        tmp_path: Path, hook: WebhookReceiver, app_parts: tuple[FileStore, Registry, EngineSettings]) -> None:
    store, reg, engine_settings = app_parts
    delivery = start_delivery(tmp_path, hook)
    try:
        delivery.outbox.enqueue("retired-noc", "k", b"{}", now_ms=1000)
        orphan = delivery.outbox.get("retired-noc", "k")
        delivery.outbox.mark_failed(orphan.id, 2000, "HTTP 410: gone", 410)
        client = TestClient(create_app(store, reg, engine_settings, alerts=AlertsApi(None, None, delivery)))
        answer = client.post(f"/api/v1/alerts/deliveries/{orphan.id}/retry")
        assert answer.status_code == 409
        assert "'retired-noc', which is not configured (configured: ['noc'])" in answer.json()["detail"]
        assert delivery.outbox.by_id(orphan.id).status == DeliveryStatus.FAILED
    finally:
        delivery.stop()


def test_api_retry_without_delivery_or_alerting_says_so(app_parts: tuple[FileStore, Registry, EngineSettings]) -> None:
    store, reg, engine_settings = app_parts
    no_receivers = TestClient(create_app(store, reg, engine_settings, alerts=AlertsApi(None, None, None)))
    answer = no_receivers.post("/api/v1/alerts/deliveries/1/retry")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "alert delivery is not configured in this process (no alerts.receivers)"
    no_alerting = TestClient(create_app(store, reg, engine_settings))
    answer = no_alerting.post("/api/v1/alerts/deliveries/1/retry")
    assert answer.status_code == 404 and answer.json()["detail"] == "alerting is not running in this process"


# --- Prometheus metrics -------------------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the registry's exposition text, parsed back: {(sample name, labels): value}."""
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def counts(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], receiver: str = "noc") -> dict[str, float]:
    return {outcome: value(samples, "dcpue_alert_deliveries_total", receiver=receiver, outcome=outcome)
            for outcome in ("sent", "failed", "retried")}


@pytest.mark.integration
def test_delivery_metrics_follow_sends_retries_failures_and_the_queue(tmp_path: Path, hook: WebhookReceiver) -> None:
    noc = Receiver(name="noc", url=hook.url + "/hook", secret=SECRET)
    settings = DeliverySettings(outbox_path=str(tmp_path / "outbox.sqlite"), poll_interval_s=0.05, group_by=())
    delivery = AlertDelivery([noc], [Route(receivers=("noc",))], settings, backoff_base_s=0.01)
    registry = CollectorRegistry()
    register_delivery_metrics(delivery, registry)  # before start: registering reads no outbox
    with pytest.raises(ValueError, match="Duplicated"):
        register_delivery_metrics(delivery, registry)
    delivery.start()
    try:
        samples = scrape(registry)
        assert counts(samples) == {"sent": 0, "failed": 0, "retried": 0}
        assert value(samples, "dcpue_alert_outbox_pending", receiver="noc") == 0
        assert value(samples, "dcpue_alert_outbox_oldest_pending_age_seconds", receiver="noc") == 0

        hook.script(503)  # the first request will get a 503 …
        hook.hold()  # … once released; until then it stays unanswered, the row pending
        delivery.notify([make_event(rack="A01")])
        hook.wait_for(1)
        time.sleep(0.25)
        first = scrape(registry)
        time.sleep(0.1)
        later = scrape(registry)
        assert value(first, "dcpue_alert_outbox_pending", receiver="noc") == 1
        age = value(first, "dcpue_alert_outbox_oldest_pending_age_seconds", receiver="noc")
        assert 0.25 <= age < 10
        assert value(later, "dcpue_alert_outbox_oldest_pending_age_seconds", receiver="noc") >= age + 0.1
        hook.release()
        wait_until(lambda: delivery.outbox.counts()["delivered"] == 1, what="delivered after the 503")
        samples = scrape(registry)
        assert counts(samples) == {"sent": 1, "failed": 0, "retried": 1}
        assert value(samples, "dcpue_alert_outbox_pending", receiver="noc") == 0
        assert value(samples, "dcpue_alert_outbox_oldest_pending_age_seconds", receiver="noc") == 0

        hook.default = REJECT
        delivery.notify([make_event(rack="A02")])
        wait_until(lambda: delivery.outbox.counts()["failed"] == 1, what="the rejected delivery marked failed")
        assert counts(scrape(registry)) == {"sent": 1, "failed": 1, "retried": 1}
        hook.default = Reply()
        [failed] = delivery.deliveries(status="failed")
        delivery.retry(failed.id)
        wait_until(lambda: delivery.outbox.counts()["delivered"] == 2, what="the operator's retry delivered")
        assert counts(scrape(registry)) == {"sent": 2, "failed": 1, "retried": 1}  # operator retries: not "retried"

        # rows of a receiver no longer configured wait forever: the gauges show them
        delivery.outbox.enqueue("retired-noc", "k", b"{}", now_ms=int((time.time() - 120) * 1000))
        samples = scrape(registry)
        assert value(samples, "dcpue_alert_outbox_pending", receiver="retired-noc") == 1
        assert 120 <= value(samples, "dcpue_alert_outbox_oldest_pending_age_seconds", receiver="retired-noc") < 130
        assert value(samples, "dcpue_alert_deliveries_total", receiver="retired-noc", outcome="sent") is None
        assert len(hook.requests) == 4
    finally:
        delivery.stop()
    stopped = scrape(registry)  # the outbox is closed: counters still there, gauges left out
    assert counts(stopped) == {"sent": 2, "failed": 1, "retried": 1}
    assert not any(name.startswith("dcpue_alert_outbox") for name, _ in stopped)
