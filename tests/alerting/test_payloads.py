"""Payload formats: the Alertmanager webhook message field for field, the chat robots' messages and signatures.

Expected values are written out by hand (times, field names) or computed here independently with
hashlib/hmac/base64 straight from the vendors' documented recipes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest

from dcpue.alerting import payloads
from dcpue.analytics.alerts.model import Family, Severity
from tests.alerting.helpers import T0_MS, make_event, resolved

ALERT_FIELDS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
MESSAGE_FIELDS = {"receiver", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
                  "version", "groupKey", "truncatedAlerts"}


# --- Alertmanager webhook -------------------------------------------------------------------------------


def test_alertmanager_message_for_one_firing_alert_is_exactly_what_alertmanager_sends() -> None:
    event = make_event()
    body = json.loads(payloads.render("webhook", [event], receiver="noc", group_by=("site", "family"),
                                      external_url="https://dcpue.example"))
    assert body == {
        "receiver": "noc",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "pue_above_target", "site": "gz-01", "family": "efficiency",
                       "severity": "warning"},
            "annotations": {"summary": "pue_above_target at gz-01", "threshold": "1.30", "value": "1.42"},
            "startsAt": "2026-11-25T14:50:10.123Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://dcpue.example",
            "fingerprint": event.fingerprint,
        }],
        "groupLabels": {"site": "gz-01", "family": "efficiency"},
        "commonLabels": {"alertname": "pue_above_target", "site": "gz-01", "family": "efficiency",
                         "severity": "warning"},
        "commonAnnotations": {"summary": "pue_above_target at gz-01", "threshold": "1.30", "value": "1.42"},
        "externalURL": "https://dcpue.example",
        "version": "4",
        "groupKey": '{}/{receiver="noc"}:{family="efficiency", site="gz-01"}',
        "truncatedAlerts": 0,
    }
    assert len(event.fingerprint) == 16


def test_alertmanager_group_status_common_labels_and_resolve_times() -> None:
    firing = make_event(site="gz-01", alertname="rack_inlet_hot", family=Family.SAFETY, severity=Severity.CRITICAL,
                        rack="A01", value=31.5, annotations={"summary": "A01 hot", "threshold": "27"})
    cleared = resolved(make_event(site="gz-01", alertname="rack_inlet_hot", family=Family.SAFETY,
                                  severity=Severity.CRITICAL, rack="A02",
                                  annotations={"summary": "A02 hot", "threshold": "27"}), T0_MS + 60_000)
    body = payloads.alertmanager_payload([firing, cleared], "noc", group_by=("site", "family"))
    assert set(body) == MESSAGE_FIELDS and all(set(a) == ALERT_FIELDS for a in body["alerts"])
    assert body["status"] == "firing"  # any firing alert makes the group firing
    assert [a["status"] for a in body["alerts"]] == ["firing", "resolved"]
    assert body["alerts"][1]["endsAt"] == "2026-11-25T14:51:10.123Z"
    assert body["commonLabels"] == {"alertname": "rack_inlet_hot", "site": "gz-01", "family": "safety",
                                    "severity": "critical"}
    assert body["commonAnnotations"] == {"threshold": "27"}
    assert body["groupLabels"] == {"site": "gz-01", "family": "safety"}
    only_resolved = payloads.alertmanager_payload([cleared], "noc")
    assert only_resolved["status"] == "resolved"
    assert only_resolved["groupLabels"] == cleared.labels  # no group_by: grouped by all labels (Alertmanager "...")


@pytest.mark.parametrize(("ms", "text"), [
    (T0_MS, "2026-11-25T14:50:10.123Z"),
    (T0_MS - 123, "2026-11-25T14:50:10Z"),  # Go drops a zero fraction
    (T0_MS - 23, "2026-11-25T14:50:10.1Z"),  # … and trailing zeros
    (0, "1970-01-01T00:00:00Z"),
    (None, "0001-01-01T00:00:00Z"),
])
def test_rfc3339_as_go_marshals_time(ms: int | None, text: str) -> None:
    assert payloads.rfc3339(ms) == text


def test_alertmanager_max_alerts_counts_the_rest_as_truncated() -> None:
    events = [make_event(rack=f"A{i:02d}") for i in range(5)]
    body = payloads.alertmanager_payload(events, "noc", max_alerts=2)
    assert len(body["alerts"]) == 2 and body["truncatedAlerts"] == 3


def test_rule_value_annotation_and_generator_url_are_kept() -> None:
    event = make_event(value=float("nan"), annotations={"value": "n/a", "generator_url": "https://grafana/d/x"})
    [alert] = payloads.alertmanager_payload([event], "noc", external_url="https://dcpue")["alerts"]
    assert alert["annotations"]["value"] == "n/a" and alert["generatorURL"] == "https://grafana/d/x"
    nan_event = make_event(value=float("nan"))
    [alert] = payloads.alertmanager_payload([nan_event], "noc")["alerts"]
    assert "value" not in alert["annotations"]  # a missing value is not invented


def test_render_refuses_unknown_kinds_and_empty_groups() -> None:
    with pytest.raises(ValueError, match="valid: webhook, dingtalk, wecom, feishu"):
        payloads.render("slack", [make_event()], receiver="x")
    with pytest.raises(ValueError, match="at least one event"):
        payloads.render("webhook", [], receiver="x")


# --- chat robots ----------------------------------------------------------------------------------------


def test_dingtalk_markdown_carries_site_rule_severity_value_threshold_and_times() -> None:
    event = make_event()
    body = json.loads(payloads.render("dingtalk", [event, resolved(event, T0_MS + 3_600_000)], receiver="ding"))
    assert set(body) == {"msgtype", "markdown"} and body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"title", "text"}
    assert body["markdown"]["title"] == "【告警 1 / 恢复 1】gz-01"
    text = body["markdown"]["text"]
    for expected in ("告警", "恢复", "站点：gz-01", "规则：pue_above_target", "级别：warning", "当前值：1.42",
                     "当前值：1.25", "阈值：1.30", "开始：2026-11-25 22:50:10 +0800",
                     "结束：2026-11-25 23:50:10 +0800"):
        assert expected in text


def test_dingtalk_signature_matches_the_documented_recipe_and_is_url_encoded() -> None:
    secret, ts = "SEC0123456789abcdef", 1764082210123
    url = payloads.dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=tok", secret, ts)
    # recipe: string_to_sign = f"{timestamp}\n{secret}"; HMAC-SHA256 keyed by secret; base64; urlencode
    expected = base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest())
    query = parse_qs(urlsplit(url).query)
    assert query == {"access_token": ["tok"], "timestamp": [str(ts)], "sign": [expected.decode()]}
    raw_sign = urlsplit(url).query.split("sign=")[1]
    assert not set(raw_sign) & {"+", "/", "="} and unquote_plus(raw_sign) == expected.decode()


def test_dingtalk_signing_replaces_an_earlier_signature_instead_of_stacking() -> None:
    once = payloads.dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=tok", "s", 1)
    twice = payloads.dingtalk_signed_url(once, "s", 2)
    query = parse_qs(urlsplit(twice).query)
    assert query["timestamp"] == ["2"] and len(query["sign"]) == 1


def test_wecom_markdown_is_cut_to_4096_bytes_with_a_note() -> None:
    many = [make_event(rack=f"机柜-{i:03d}", annotations={"summary": "冷通道温度过高，请检查空调与盲板" * 3,
                                                        "threshold": "27"}) for i in range(40)]
    content = json.loads(payloads.render("wecom", many, receiver="wx"))["markdown"]["content"]
    assert len(content.encode()) <= payloads.WECOM_MAX_BYTES
    assert "已截断" in content and "条未显示" in content
    assert content.count("告警 ·") < 40
    short = json.loads(payloads.render("wecom", many[:2], receiver="wx"))
    assert set(short) == {"msgtype", "markdown"} and short["msgtype"] == "markdown"
    assert "已截断" not in short["markdown"]["content"] and short["markdown"]["content"].count("告警 ·") == 2


def test_a_single_block_longer_than_the_limit_is_cut_on_a_character_boundary() -> None:
    text = payloads.fit_blocks("### 标题", ["告" * 3000], 4096)
    assert len(text.encode()) <= 4096 and text.endswith("完整内容见 dcpue 告警记录）")
    text.encode().decode()  # valid UTF-8


def test_feishu_card_and_text_messages() -> None:
    event = make_event()
    card = json.loads(payloads.render("feishu", [event], receiver="lark"))
    assert card["msg_type"] == "interactive"
    assert card["card"]["header"]["template"] == "red"
    assert card["card"]["header"]["title"] == {"tag": "plain_text", "content": "【告警】pue_above_target · gz-01"}
    [element] = card["card"]["elements"]
    assert element["tag"] == "div" and element["text"]["tag"] == "lark_md"
    assert "阈值：1.30" in element["text"]["content"]
    green = payloads.feishu_payload([resolved(event, T0_MS + 1000)])
    assert green["card"]["header"]["template"] == "green"
    text = payloads.feishu_payload([event], style="text")
    assert text["msg_type"] == "text"
    assert "站点：gz-01" in text["content"]["text"] and "**" not in text["content"]["text"]
    with pytest.raises(ValueError, match="valid: 'interactive', 'text'"):
        payloads.feishu_payload([event], style="post")


def test_feishu_signature_matches_the_documented_recipe() -> None:
    secret, ts = "feishu-secret", 1764082210
    body = payloads.feishu_signed_body(payloads.render("feishu", [make_event()], receiver="lark"), secret, ts)
    signed = json.loads(body)
    # recipe: key = f"{timestamp}\n{secret}", HMAC-SHA256 of an empty message, base64
    expected = base64.b64encode(hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()).decode()
    assert signed["timestamp"] == str(ts) and signed["sign"] == expected
    assert signed["msg_type"] == "interactive" and "card" in signed
