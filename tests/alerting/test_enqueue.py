"""enqueue_events: routing, grouping, silencing and idempotent replays into the outbox (no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcpue.alerting.config import DeliverySettings, Receiver, Route
from dcpue.alerting.delivery import enqueue_events, group_idempotency_key
from dcpue.alerting.outbox import Outbox
from dcpue.analytics.alerts.model import Family, Severity
from tests.alerting.helpers import T0_MS, make_event, resolved

RECEIVERS = [Receiver(name="noc", url="https://noc.example"),
             Receiver(name="ding", kind="dingtalk", url="https://oapi.dingtalk.com/robot/send?access_token=t")]
ROUTES = [Route(families=(Family.SAFETY,), receivers=("ding",), continue_=True), Route(receivers=("noc",))]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


def test_events_are_grouped_per_receiver_and_group_labels(outbox: Outbox) -> None:
    hot_a = make_event(alertname="rack_inlet_hot", family=Family.SAFETY, severity=Severity.CRITICAL, rack="A01")
    hot_b = make_event(alertname="rack_inlet_hot", family=Family.SAFETY, severity=Severity.CRITICAL, rack="A02")
    pue = make_event()
    other_site = make_event(site="sh-09")
    done = enqueue_events(outbox, [hot_a, hot_b, pue, other_site], RECEIVERS, ROUTES,
                          DeliverySettings(group_by=("site", "family")), now_ms=T0_MS)
    assert [(d.receiver, d.events) for d in done] == [("ding", 2), ("noc", 2), ("noc", 1), ("noc", 1)]
    ding = outbox.get("ding", done[0].idempotency_key)
    assert ding.kind == "dingtalk" and json.loads(ding.body)["msgtype"] == "markdown"
    assert ding.alertname == "rack_inlet_hot" and ding.site == "gz-01" and ding.alert_status == "firing"
    noc_group = json.loads(outbox.get("noc", done[1].idempotency_key).body)
    assert noc_group["groupLabels"] == {"site": "gz-01", "family": "safety"} and len(noc_group["alerts"]) == 2
    assert done[2].idempotency_key == pue.idempotency_key  # a group of one keeps the event's own key
    assert done[0].idempotency_key == group_idempotency_key([hot_b, hot_a])  # independent of order


def test_a_replayed_batch_adds_nothing_and_silenced_events_are_not_sent(outbox: Outbox) -> None:
    firing = make_event()
    batch = [firing, resolved(make_event(rack="B1"), T0_MS + 1000), make_event(rack="C1", silenced=True)]
    first = enqueue_events(outbox, batch, RECEIVERS, ROUTES, DeliverySettings(group_by=()), now_ms=T0_MS)
    again = enqueue_events(outbox, batch, RECEIVERS, ROUTES, DeliverySettings(group_by=()), now_ms=T0_MS + 5)
    assert [d.created for d in first] == [True, True] and [d.created for d in again] == [False, False]
    assert outbox.counts()["pending"] == 2
    assert [d.idempotency_key for d in first] == [firing.idempotency_key, batch[1].idempotency_key]


def test_events_matching_no_route_are_logged(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    assert enqueue_events(outbox, [make_event(site="x")], RECEIVERS, [Route(sites=("y",), receivers=("noc",))]) == []
    assert "matches no route" in caplog.text
