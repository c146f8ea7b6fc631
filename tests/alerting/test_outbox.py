"""The SQLite outbox: idempotent enqueue, restart survival, FIFO per receiver, state changes and the log."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dcpue.alerting.outbox import DeliveryStatus, Outbox, OutboxError


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite").open()
    yield box
    box.close()


def test_enqueue_is_idempotent_per_receiver_and_key(outbox: Outbox) -> None:
    assert outbox.enqueue("noc", "fp-1", b"{}", now_ms=1000, fingerprints=["fp"])
    assert not outbox.enqueue("noc", "fp-1", b'{"other": 1}', now_ms=2000)  # a replay: nothing changes
    assert outbox.enqueue("ding", "fp-1", b"{}", now_ms=1000)  # same event, another receiver
    row = outbox.get("noc", "fp-1")
    assert row is not None and row.body == b"{}" and row.created_ms == 1000 and row.fingerprints == ("fp",)
    assert outbox.counts() == {"pending": 2, "delivered": 0, "failed": 0}


def test_pending_rows_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        box.enqueue("noc", "a", b"1", now_ms=1)
        box.enqueue("noc", "b", b"2", now_ms=2)
        box.mark_delivered(box.head("noc").id, 5)
    with Outbox(path) as again:
        assert again.head("noc").idempotency_key == "b"
        assert not again.enqueue("noc", "a", b"1", now_ms=9)  # delivered rows still block a replay
        assert again.pending_receivers() == ["noc"]


def test_head_is_fifo_per_receiver_and_state_changes_only_touch_pending_rows(outbox: Outbox) -> None:
    for key in ("a", "b", "c"):
        outbox.enqueue("noc", key, key.encode(), now_ms=100)
    outbox.enqueue("ding", "x", b"x", now_ms=50)
    head = outbox.head("noc")
    assert head.idempotency_key == "a" and head.status == DeliveryStatus.PENDING and head.attempts == 0
    outbox.mark_retry(head.id, 200, next_attempt_ms=1200, error="HTTP 503", status_code=503)
    head = outbox.head("noc")
    assert (head.idempotency_key, head.attempts, head.next_attempt_ms, head.last_error) == ("a", 1, 1200, "HTTP 503")
    outbox.mark_delivered(head.id, 1300, 200)
    outbox.mark_failed(head.id, 1400, "late")  # no effect: the row is no longer pending
    done = outbox.get("noc", "a")
    assert (done.status, done.attempts, done.delivered_ms, done.last_status_code) == ("delivered", 2, 1300, 200)
    failing = outbox.head("noc")
    outbox.mark_failed(failing.id, 1500, "HTTP 400: bad", 400)
    assert outbox.head("noc").idempotency_key == "c"
    assert outbox.head("ding").idempotency_key == "x"


def test_delivery_log_filters_newest_first_and_requeue(outbox: Outbox) -> None:
    for i in range(5):
        outbox.enqueue("noc" if i % 2 == 0 else "ding", f"k{i}", b"{}", now_ms=i, alert_status="firing", site="gz-01")
    outbox.mark_failed(outbox.head("noc").id, 10, "HTTP 404", 404)
    assert [d.idempotency_key for d in outbox.deliveries()] == ["k4", "k3", "k2", "k1", "k0"]
    assert [d.idempotency_key for d in outbox.deliveries(limit=2, receiver="noc")] == ["k4", "k2"]
    [failed] = outbox.deliveries(status="failed")
    assert failed.idempotency_key == "k0" and failed.last_error == "HTTP 404"
    row = failed.as_dict()
    assert row["status"] == "failed" and "body" not in row and failed.as_dict(include_body=True)["body"] == "{}"
    with pytest.raises(ValueError, match=r"valid: \['pending', 'delivered', 'failed'\]"):
        outbox.deliveries(status="lost")
    assert outbox.requeue(failed.id, 20) and not outbox.requeue(failed.id, 21)
    assert outbox.head("noc").idempotency_key == "k0"
    assert outbox.counts("noc") == {"pending": 3, "delivered": 0, "failed": 0}


def test_prune_removes_only_finished_rows(outbox: Outbox) -> None:
    outbox.enqueue("noc", "old", b"{}", now_ms=1)
    outbox.enqueue("noc", "new", b"{}", now_ms=2)
    outbox.mark_delivered(outbox.head("noc").id, 3)
    assert outbox.prune(before_ms=10) == 1
    assert [d.idempotency_key for d in outbox.deliveries()] == ["new"]


def test_concurrent_enqueues_from_many_threads(outbox: Outbox) -> None:
    def work(n: int) -> None:
        for i in range(50):
            outbox.enqueue("noc", f"k{i}", b"{}", now_ms=n)  # every thread enqueues the same 50 keys

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outbox.counts()["pending"] == 50


def test_using_a_closed_outbox_raises(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(OutboxError, match="not open"):
        box.head("noc")
