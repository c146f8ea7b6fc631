"""Receivers and routes: where alert notifications go, as frozen pydantic models, and the pure router.

The settings owner embeds them as ``alerts.receivers`` / ``alerts.routes`` (and :class:`DeliverySettings`
as ``alerts.delivery``) and calls :func:`check_routing` from a model validator, so a route naming an
unknown receiver fails at start-up with the list of valid names. YAML::

    alerts:
      receivers:
        - {name: noc, kind: webhook, url: "https://noc.example/hooks/dcpue", secret: "…"}
        - {name: ops-ding, kind: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=…",
           secret: "SEC…"}
      routes:
        - {families: [safety], severities: [critical], receivers: [ops-ding], continue: true}
        - {receivers: [noc]}          # no matchers: catch-all

Routes are tried in order; the first match wins unless it says ``continue: true``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dcpue.analytics.alerts.model import AlertEvent, Family, Severity
from dcpue.secrets import resolve_secret_files
from dcpue.zones import TimeZoneName


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ReceiverKind(StrEnum):
    """Payload format and signature scheme of a receiver."""

    WEBHOOK = "webhook"  # Alertmanager webhook payload (version "4"), dcpue HMAC signature
    DINGTALK = "dingtalk"  # 钉钉 custom robot, markdown; ``timestamp``/``sign`` query parameters
    WECOM = "wecom"  # 企业微信 group robot, markdown (4096 bytes at most); no signature
    FEISHU = "feishu"  # 飞书/Lark custom bot, card or text; ``timestamp``/``sign`` in the body


# Vendor rate limits [messages/min]: DingTalk and WeCom robots take 20/min, Feishu custom bots 100/min
# (and 5/s). A plain webhook has no published limit.
DEFAULT_MAX_PER_MINUTE = {
    ReceiverKind.WEBHOOK: 600,
    ReceiverKind.DINGTALK: 20,
    ReceiverKind.WECOM: 20,
    ReceiverKind.FEISHU: 100,
}

# Set by the dispatcher on every request; a static header must not override them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "idempotency-key", "x-dcpue-timestamp",
                              "x-dcpue-signature"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Receiver(_Model):
    """One notification target.

    ``max_per_minute`` [1/min] caps requests (retries included) with a token bucket of ``burst``
    requests; excess waits, it is never dropped. Default: the vendor's limit (DingTalk, WeCom 20,
    Feishu 100, webhook 600). A delivery is given up (status ``failed``) after ``max_attempts`` requests
    (None: no limit) or once it is ``max_age_s`` [s] old, whichever comes first. Retries back off
    exponentially with full jitter from 1 s up to ``backoff_max_s`` [s].
    """

    name: str = Field(min_length=1, max_length=64)
    kind: ReceiverKind = ReceiverKind.WEBHOOK
    url: str
    secret: SecretStr | None = None  # webhook: dcpue HMAC key; dingtalk/feishu: the robot's signing secret
    secret_file: Path | None = None  # read at start
    timeout_s: float = Field(10.0, gt=0)
    max_per_minute: int | None = Field(None, ge=1)
    burst: int = Field(1, ge=1)
    max_attempts: int | None = Field(None, ge=1)
    max_age_s: float = Field(86_400.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"receiver name {value!r} must be letters, digits, '_', '.' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"receiver url must start with http:// or https://, got {value[:16]!r}…")
        return value

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers {clash} are set by dcpue; reserved: {sorted(RESERVED_HEADERS)}")
        return value

    @property
    def rate_per_minute(self) -> int:
        """The effective request limit [1/min]: ``max_per_minute`` or the kind's default."""
        return self.max_per_minute or DEFAULT_MAX_PER_MINUTE[self.kind]

    @model_validator(mode="after")
    def _secret_files(self) -> Receiver:
        resolve_secret_files(self, "secret")
        return self


class Route(_Model):
    """Send matching events to ``receivers``. Empty matcher lists match anything.

    ``continue`` (YAML key; ``continue_`` in Python): keep trying the following routes after a match.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    families: tuple[Family, ...] = ()
    severities: tuple[Severity, ...] = ()
    sites: tuple[str, ...] = ()
    receivers: tuple[str, ...] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue")

    def matches(self, event: AlertEvent) -> bool:
        """Whether ``event`` passes every non-empty matcher."""
        return ((not self.families or event.family in self.families)
                and (not self.severities or event.severity in self.severities)
                and (not self.sites or event.site in self.sites))


class DeliverySettings(_Model):
    """Where the outbox lives and how notifications are put together (``alerts.delivery``).

    ``group_by``: events of one batch with equal values of these labels go to a receiver in one message
    (chat robots allow about 20 messages a minute); empty: one message per event. ``timezone`` is used for
    the times shown in chat messages; webhook payloads carry UTC RFC 3339 times.
    """

    outbox_path: str = "dcpue-data/alert-outbox.sqlite"
    external_url: str = ""  # dcpue's own base URL: ``externalURL`` and the base of ``generatorURL``
    timezone: TimeZoneName = "Asia/Shanghai"
    group_by: tuple[str, ...] = ("site", "family")
    poll_interval_s: float = Field(1.0, gt=0)  # how often an idle dispatcher looks for new rows
    retention_days: float = Field(30.0, gt=0)  # delivered and failed rows are kept this long for the log



def check_routing(receivers: Sequence[Receiver], routes: Sequence[Route]) -> None:
    """Raise ValueError when receiver names repeat or a route names an unknown receiver."""
    names = [r.name for r in receivers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"receiver names must be unique; repeated: {duplicates}")
    for i, item in enumerate(routes):
        unknown = [n for n in item.receivers if n not in names]
        if unknown:
            raise ValueError(f"routes[{i}] names unknown receivers {unknown}; configured receivers: {names}")


class AlertRouting(_Model):
    """Receivers and routes together, validated against each other (a ready-made ``alerts`` section part)."""

    receivers: tuple[Receiver, ...] = ()
    routes: tuple[Route, ...] = ()
    delivery: DeliverySettings = DeliverySettings()

    @model_validator(mode="after")
    def _consistent(self) -> AlertRouting:
        check_routing(self.receivers, self.routes)
        return self


def route(event: AlertEvent, routes: Iterable[Route]) -> list[str]:
    """Receiver names for ``event``: routes in order, first match wins unless ``continue``; no duplicates.

    Pure: ``event.silenced`` is not looked at here (:func:`dcpue.alerting.delivery.enqueue_events` skips
    silenced events).
    """
    names: list[str] = []
    for item in routes:
        if not item.matches(event):
            continue
        names.extend(n for n in item.receivers if n not in names)
        if not item.continue_:
            break
    return names
