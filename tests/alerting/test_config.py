"""Receiver and route configuration, and the pure router."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dcpue.alerting.config import AlertRouting, DeliverySettings, Receiver, ReceiverKind, Route, check_routing, route
from dcpue.analytics.alerts.model import Family, Severity
from tests.alerting.helpers import make_event

YAML = """
receivers:
  - {name: noc, kind: webhook, url: "https://noc.example/hooks/dcpue", secret: "s3cret",
     headers: {Authorization: "Bearer abc"}}
  - {name: ops-ding, kind: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=t", secret: SECabc}
  - {name: gz-wecom, kind: wecom, url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"}
routes:
  - {families: [safety], severities: [critical], receivers: [ops-ding], continue: true}
  - {sites: [gz-01, gz-02], receivers: [gz-wecom]}
  - {receivers: [noc]}
delivery: {external_url: "https://dcpue.example", group_by: [site]}
"""


@pytest.fixture
def routing() -> AlertRouting:
    return AlertRouting.model_validate(yaml.safe_load(YAML))


def test_yaml_example_loads_into_frozen_models(routing: AlertRouting) -> None:
    noc, ding, wecom = routing.receivers
    assert (noc.kind, ding.kind, wecom.kind) == (ReceiverKind.WEBHOOK, ReceiverKind.DINGTALK, ReceiverKind.WECOM)
    assert noc.secret is not None and noc.secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(noc) and "s3cret" not in str(routing.model_dump())
    assert routing.routes[0].continue_ is True and routing.routes[1].continue_ is False
    assert routing.delivery.group_by == ("site",)
    with pytest.raises(ValidationError):
        noc.timeout_s = 1  # type: ignore[misc]


def test_first_matching_route_wins_unless_it_continues(routing: AlertRouting) -> None:
    routes = routing.routes
    hot = make_event(alertname="rack_inlet_hot", family=Family.SAFETY, severity=Severity.CRITICAL, site="gz-01")
    assert route(hot, routes) == ["ops-ding", "gz-wecom"]  # continue → the site route matches too
    warm = make_event(family=Family.SAFETY, severity=Severity.WARNING, site="gz-01")
    assert route(warm, routes) == ["gz-wecom"]  # first match wins: the catch-all is not reached
    elsewhere = make_event(site="sh-09")
    assert route(elsewhere, routes) == ["noc"]
    hot_elsewhere = make_event(family=Family.SAFETY, severity=Severity.CRITICAL, site="sh-09")
    assert route(hot_elsewhere, routes) == ["ops-ding", "noc"]


def test_route_lists_each_receiver_once_and_nothing_when_nothing_matches() -> None:
    routes = [Route(receivers=("a", "b"), continue_=True), Route(families=(Family.EFFICIENCY,), receivers=("b", "c"))]
    assert route(make_event(), routes) == ["a", "b", "c"]
    assert route(make_event(), [Route(sites=("other",), receivers=("a",))]) == []


def test_routes_must_name_configured_receivers() -> None:
    receivers = [Receiver(name="noc", url="https://x")]
    with pytest.raises(ValueError, match=r"unknown receivers \['nope'\]; configured receivers: \['noc'\]"):
        check_routing(receivers, [Route(receivers=("nope",))])
    with pytest.raises(ValueError, match="repeated"):
        check_routing(receivers * 2, [])
    with pytest.raises(ValidationError, match="unknown receivers"):
        AlertRouting.model_validate({"receivers": [{"name": "noc", "url": "https://x"}],
                                     "routes": [{"receivers": ["nope"]}]})


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "x", "url": "ftp://x"}, "must start with http"),
    ({"name": "x y", "url": "https://x"}, "letters, digits"),
    ({"name": "x", "url": "https://x", "kind": "slack"}, "'webhook', 'dingtalk', 'wecom' or 'feishu'"),
    ({"name": "x", "url": "https://x", "headers": {"Idempotency-Key": "1"}}, "set by dcpue"),
    ({"name": "x", "url": "https://x", "retries": 3}, "Extra inputs are not permitted"),
    ({"name": "x", "url": "https://x", "max_per_minute": 0}, "greater than or equal to 1"),
])
def test_receiver_errors_say_what_is_valid(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Receiver.model_validate(data)


def test_rate_limit_defaults_follow_the_vendor_limits() -> None:
    assert Receiver(name="d", kind="dingtalk", url="https://x").rate_per_minute == 20
    assert Receiver(name="w", kind="wecom", url="https://x").rate_per_minute == 20
    assert Receiver(name="f", kind="feishu", url="https://x").rate_per_minute == 100
    assert Receiver(name="h", url="https://x", max_per_minute=5).rate_per_minute == 5


def test_the_yaml_example_in_the_docs_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "alerting-delivery.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- config-example -->\s*```yaml\n(.*?)```", text, re.S)
    assert match, "docs/alerting-delivery.md lost its configuration example"
    routing = AlertRouting.model_validate(yaml.safe_load(match.group(1))["alerts"])
    assert [r.name for r in routing.receivers] == ["noc", "ops-ding", "gz-wecom", "lark"]
    assert route(make_event(site="sh-09", family=Family.DATA_QUALITY), routing.routes) == ["lark"]


def test_route_matchers_validate_families_and_severities() -> None:
    with pytest.raises(ValidationError, match="efficiency"):
        Route.model_validate({"families": ["power"], "receivers": ["x"]})
    with pytest.raises(ValidationError):
        Route.model_validate({"receivers": []})
    with pytest.raises(ValidationError, match="unknown timezone"):
        DeliverySettings(timezone="Mars/Olympus")
