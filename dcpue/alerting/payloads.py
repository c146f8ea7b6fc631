"""Notification bodies for a group of :class:`AlertEvent` going to one receiver (pure functions, no I/O).

Four formats, one per :class:`~dcpue.alerting.config.ReceiverKind`:

- **webhook** — the Alertmanager webhook payload, field for field as Alertmanager 0.2x sends it
  (``version: "4"``), so receivers written for Alertmanager work unchanged.
  https://prometheus.io/docs/alerting/latest/configuration/#webhook_config;
  ``notify/webhook/webhook.go`` (``Message``) and ``template/template.go`` (``Data``, ``Alert``) in
  https://github.com/prometheus/alertmanager.
- **dingtalk** — 钉钉 custom robot, ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; with a
  signing secret the URL gets ``timestamp`` [ms] and ``sign`` query parameters (:func:`dingtalk_signed_url`).
  https://open.dingtalk.com/document/orgapp/custom-robot-access,
  https://open.dingtalk.com/document/robots/customize-robot-security-settings.
- **wecom** — 企业微信 group robot, ``{"msgtype": "markdown", "markdown": {"content"}}``; content is at
  most 4096 bytes of UTF-8, so longer groups are cut with a note. https://developer.work.weixin.qq.com/document/path/91770.
- **feishu** — 飞书/Lark custom bot, ``{"msg_type": "interactive", "card": …}`` or ``{"msg_type": "text",
  "content": {"text"}}``; with a signing secret the body gets ``timestamp`` [s] and ``sign``
  (:func:`feishu_signed_body`). https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot.

Vendor signatures must be computed when the request is sent (DingTalk and Feishu reject timestamps more
than an hour off), so bodies stored in the outbox are unsigned and the dispatcher signs each attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from dcpue.analytics.alerts.model import AlertEvent, Status

ALERTMANAGER_VERSION = "4"  # what Alertmanager's webhook notifier sends
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: Alertmanager's endsAt of an alert still firing
WECOM_MAX_BYTES = 4096  # WeCom group robot: markdown content limit [B of UTF-8]
CHAT_MAX_BYTES = 18_000  # dcpue's cap on DingTalk/Feishu text [B]: Feishu refuses bodies over 20 KB

FIRING_WORD = "告警"
RESOLVED_WORD = "恢复"


# --- shared helpers -------------------------------------------------------------------------------------


def rfc3339(ms: int | None) -> str:
    """UTC RFC 3339 time as Go marshals ``time.Time`` (fraction without trailing zeros); None → zero time."""
    if ms is None:
        return ZERO_TIME
    seconds, millis = divmod(int(ms), 1000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        text += f".{millis:03d}".rstrip("0")
    return text + "Z"


def group_status(events: Sequence[AlertEvent]) -> Status:
    """``firing`` if any event of the group fires, else ``resolved`` (as Alertmanager decides)."""
    return Status.FIRING if any(e.status == Status.FIRING for e in events) else Status.RESOLVED


def common(maps: Sequence[dict[str, str]]) -> dict[str, str]:
    """Key/value pairs present with the same value in every map (``commonLabels``, ``commonAnnotations``)."""
    if not maps:
        return {}
    shared = dict(maps[0])
    for other in maps[1:]:
        shared = {k: v for k, v in shared.items() if other.get(k) == v}
    return shared


def format_value(value: float) -> str:
    """A measured value for people: up to 3 decimals, no trailing zeros; ``—`` when missing (NaN)."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (Chinese text kept as is)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _annotations(event: AlertEvent) -> dict[str, str]:
    # the measured value travels as an annotation, as Alertmanager payloads have no value field
    notes = dict(event.annotations)
    if "value" not in notes and math.isfinite(event.value):
        notes["value"] = format_value(event.value)
    return notes


# --- Alertmanager webhook -------------------------------------------------------------------------------


def group_labels(events: Sequence[AlertEvent], group_by: Sequence[str]) -> dict[str, str]:
    """The group's ``groupLabels``: the ``group_by`` labels the events share; empty ``group_by`` = all common."""
    shared = common([e.labels for e in events])
    if not group_by:
        return shared
    return {k: shared[k] for k in group_by if k in shared}


def group_key(receiver: str, labels: dict[str, str]) -> str:
    """Alertmanager-style ``groupKey``: route path, then the group labels sorted (``{}/{…}:{a="1", b="2"}``)."""
    body = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items()))
    return f'{{}}/{{receiver={json.dumps(receiver, ensure_ascii=False)}}}:{{{body}}}'


def alertmanager_payload(events: Sequence[AlertEvent], receiver: str, *, group_by: Sequence[str] = (),
                         external_url: str = "", max_alerts: int = 0) -> dict[str, Any]:
    """The Alertmanager webhook message (``version`` "4") for ``events`` sent to ``receiver``.

    ``generatorURL`` is the event's ``generator_url`` annotation, else ``external_url``; a finite
    ``value`` is added as the ``value`` annotation unless the rule set one. ``max_alerts`` > 0 keeps the
    first that many alerts and counts the rest in ``truncatedAlerts``, as Alertmanager's ``max_alerts``.
    """
    if not events:
        raise ValueError("a notification needs at least one event")
    kept = list(events[:max_alerts]) if max_alerts > 0 else list(events)
    alerts = [
        {
            "status": str(e.status),
            "labels": dict(e.labels),
            "annotations": _annotations(e),
            "startsAt": rfc3339(e.starts_at_ms),
            "endsAt": rfc3339(e.ends_at_ms if e.status == Status.RESOLVED else None),
            "generatorURL": e.annotations.get("generator_url", external_url),
            "fingerprint": e.fingerprint,
        }
        for e in kept
    ]
    labels = group_labels(kept, group_by)
    return {
        "receiver": receiver,
        "status": str(group_status(kept)),
        "alerts": alerts,
        "groupLabels": labels,
        "commonLabels": common([a["labels"] for a in alerts]),
        "commonAnnotations": common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "version": ALERTMANAGER_VERSION,
        "groupKey": group_key(receiver, labels),
        "truncatedAlerts": len(events) - len(kept),
    }


# --- chat text (DingTalk, WeCom, Feishu) ---------------------------------------------------------------


def _local(ms: int | None, tz: ZoneInfo) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S %z")


def title(events: Sequence[AlertEvent]) -> str:
    """One-line title: ``【告警】rule · site`` for one event, ``【告警 2 / 恢复 1】site`` for a group."""
    if len(events) == 1:
        e = events[0]
        word = FIRING_WORD if e.status == Status.FIRING else RESOLVED_WORD
        return f"【{word}】{e.labels.get('alertname', '?')} · {e.site or '?'}"
    firing = sum(e.status == Status.FIRING for e in events)
    parts = [f"{FIRING_WORD} {firing}" if firing else "", f"{RESOLVED_WORD} {len(events) - firing}"
             if len(events) - firing else ""]
    sites = {e.site for e in events}
    where = next(iter(sites)) if len(sites) == 1 else f"{len(sites)} 个站点"
    return f"【{' / '.join(p for p in parts if p)}】{where}"


def event_markdown(event: AlertEvent, tz: ZoneInfo) -> str:
    """One event as a markdown block: site, rule, severity, value, threshold, start and end (local time)."""
    firing = event.status == Status.FIRING
    icon, word = ("🔴", FIRING_WORD) if firing else ("✅", RESOLVED_WORD)
    notes = event.annotations
    lines = [
        f"**{icon} {word} · {event.labels.get('severity', '?').upper()} · {event.labels.get('alertname', '?')}**",
        f"- 站点：{event.site or '—'}",
        f"- 规则：{event.labels.get('alertname', '—')}",
        f"- 级别：{event.labels.get('severity', '—')}",
        f"- 当前值：{format_value(event.value)}",
        f"- 阈值：{notes.get('threshold', '—')}",
        f"- 开始：{_local(event.starts_at_ms, tz)}",
        f"- 结束：{_local(event.ends_at_ms, tz) if not firing else '—'}",
    ]
    if notes.get("summary"):
        lines.append(f"- 摘要：{notes['summary']}")
    return "\n".join(lines)


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode()[: max(limit, 0)].decode("utf-8", "ignore")


def fit_blocks(head: str, blocks: Sequence[str], limit: int, sep: str = "\n\n") -> str:
    """``head`` and as many whole ``blocks`` as fit in ``limit`` [B of UTF-8]; a note says how many were cut.

    The result never exceeds ``limit`` bytes; a first block too long on its own is cut mid-text.
    """
    full = sep.join([head, *blocks])
    if len(full.encode()) <= limit:
        return full
    kept: list[str] = []
    for i, block in enumerate(blocks):
        note = f"{sep}…（已截断：另有 {len(blocks) - i - 1} 条未显示，完整内容见 dcpue 告警记录）"
        candidate = sep.join([head, *kept, block])
        if len((candidate + note).encode()) > limit:
            break
        kept.append(block)
    omitted = len(blocks) - len(kept)
    note = f"{sep}…（已截断：另有 {omitted} 条未显示，完整内容见 dcpue 告警记录）"
    text = sep.join([head, *kept])
    if not kept and blocks:  # not even one whole block fits: show the start of the first
        note = f"{sep}…（已截断，完整内容见 dcpue 告警记录）"
        text = sep.join([head, blocks[0]])
    return _cut_utf8(text, limit - len(note.encode())) + note


def _chat_text(events: Sequence[AlertEvent], timezone: str, limit: int) -> str:
    tz = ZoneInfo(timezone)
    return fit_blocks(f"### {title(events)}", [event_markdown(e, tz) for e in events], limit)


def dingtalk_payload(events: Sequence[AlertEvent], *, timezone: str = "Asia/Shanghai") -> dict[str, Any]:
    """DingTalk custom robot markdown message (unsigned; see :func:`dingtalk_signed_url`)."""
    return {"msgtype": "markdown",
            "markdown": {"title": title(events), "text": _chat_text(events, timezone, CHAT_MAX_BYTES)}}


def wecom_payload(events: Sequence[AlertEvent], *, timezone: str = "Asia/Shanghai") -> dict[str, Any]:
    """WeCom group robot markdown message; ``content`` is at most 4096 bytes (cut with a note)."""
    return {"msgtype": "markdown", "markdown": {"content": _chat_text(events, timezone, WECOM_MAX_BYTES)}}


def feishu_payload(events: Sequence[AlertEvent], *, timezone: str = "Asia/Shanghai",
                   style: str = "interactive") -> dict[str, Any]:
    """Feishu custom bot message: a card with a red (firing) or green (resolved) header, or plain text.

    Unsigned; see :func:`feishu_signed_body`.
    """
    if style == "text":
        tz = ZoneInfo(timezone)
        text = fit_blocks(title(events), [event_markdown(e, tz).replace("**", "") for e in events], CHAT_MAX_BYTES)
        return {"msg_type": "text", "content": {"text": text}}
    if style != "interactive":
        raise ValueError(f"unknown feishu style {style!r}; valid: 'interactive', 'text'")
    tz = ZoneInfo(timezone)
    body = fit_blocks("", [event_markdown(e, tz) for e in events], CHAT_MAX_BYTES).lstrip("\n")
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {"title": {"tag": "plain_text", "content": title(events)},
                       "template": "red" if group_status(events) == Status.FIRING else "green"},
            "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": body}}],
        },
    }


# --- vendor signatures ----------------------------------------------------------------------------------


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk ``sign``: base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")), before URL-encoding.

    ``timestamp_ms`` [ms since the epoch] must be within an hour of DingTalk's clock.
    """
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """``url`` with fresh ``timestamp`` and ``sign`` query parameters (any earlier ones replaced, not stacked)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("timestamp", "sign")]
    query += [("timestamp", str(timestamp_ms)), ("sign", dingtalk_sign(secret, timestamp_ms))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu ``sign``: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")); ``timestamp_s`` [s]."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_signed_body(body: bytes, secret: str, timestamp_s: int) -> bytes:
    """The JSON ``body`` with ``timestamp`` (a string, as in Feishu's examples) and ``sign`` fields set."""
    payload = json.loads(body)
    payload["timestamp"] = str(timestamp_s)
    payload["sign"] = feishu_sign(secret, timestamp_s)
    return dumps(payload)


# --- dispatch by receiver kind --------------------------------------------------------------------------


def render(kind: str, events: Sequence[AlertEvent], *, receiver: str, group_by: Sequence[str] = (),
           external_url: str = "", timezone: str = "Asia/Shanghai") -> bytes:
    """The unsigned request body for a receiver of ``kind`` (``webhook``, ``dingtalk``, ``wecom``, ``feishu``)."""
    if not events:
        raise ValueError("a notification needs at least one event")
    if kind == "webhook":
        return dumps(alertmanager_payload(events, receiver, group_by=group_by, external_url=external_url))
    if kind == "dingtalk":
        return dumps(dingtalk_payload(events, timezone=timezone))
    if kind == "wecom":
        return dumps(wecom_payload(events, timezone=timezone))
    if kind == "feishu":
        return dumps(feishu_payload(events, timezone=timezone))
    raise ValueError(f"unknown receiver kind {kind!r}; valid: webhook, dingtalk, wecom, feishu")
