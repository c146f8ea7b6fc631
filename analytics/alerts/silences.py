"""Silences and maintenance windows: operator-defined mutes of alert notifications.

A :class:`Silence` mutes the alerts whose labels match all of its matchers (Alertmanager semantics:
``=``, ``!=``, ``=~``, ``!~``; regular expressions match the whole value; a missing label is the empty
string) from ``starts_at_ms`` until ``ends_at_ms``. A :class:`MaintenanceWindow` mutes the alerts of some
sites either once (between two instants) or every week on some days between two local times of a
timezone. :class:`SilenceSet` holds both kinds and answers "which mutes cover these labels at this time".

Muting hides notifications only; the lifecycle keeps evaluating muted alerts (see
``docs/alerting-lifecycle.md``). Times are event time [ms since the Unix epoch]. Pure, no I/O.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from dcpue.zones import TimeZoneName

__all__ = ["WEEKDAYS", "MaintenanceWindow", "Matcher", "Mute", "Silence", "SilenceSet"]

Op = Literal["=", "!=", "=~", "!~"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
_DAY_NAMES = {name: i for i, name in enumerate(WEEKDAYS)} | {
    name: i for i, name in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
SNAPSHOT_VERSION = 1


def _new_id() -> str:
    return uuid.uuid4().hex


class Matcher(BaseModel):
    """One label test. Also built from a ``(label, op, value)`` tuple, e.g. ``("site", "=~", "gz-.*")``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    label: str = Field(min_length=1)
    op: Op
    value: str
    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_tuple(cls, data: Any) -> Any:
        if isinstance(data, tuple | list):
            if len(data) != 3:
                raise ValueError(f"a matcher is (label, op, value), e.g. ('site', '=', 'gz-01'); got {data!r}")
            label, op, value = data
            return {"label": label, "op": op, "value": value}
        return data

    @model_validator(mode="after")
    def _check_regex(self) -> Matcher:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self}: invalid regular expression: {exc}") from exc
        return self

    def model_post_init(self, context: Any, /) -> None:
        if self.op in ("=~", "!~"):
            with contextlib.suppress(re.error):  # reported by _check_regex, which pydantic runs after this
                self._regex = re.compile(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` pass this test (a missing label counts as ``""``)."""
        got = labels.get(self.label, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = self._regex.fullmatch(got) is not None  # type: ignore[union-attr]
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value!r}"


class Silence(BaseModel):
    """Mutes alerts matching all ``matchers`` for ``starts_at_ms <= t < ends_at_ms`` [ms]."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str = Field(default_factory=_new_id, min_length=1)
    matchers: tuple[Matcher, ...] = Field(min_length=1)
    starts_at_ms: int
    ends_at_ms: int
    created_by: str = Field(min_length=1)
    comment: str = ""

    @model_validator(mode="after")
    def _check(self) -> Silence:
        if self.ends_at_ms <= self.starts_at_ms:
            raise ValueError(f"silence {self.id}: ends_at_ms ({self.ends_at_ms}) must be after starts_at_ms "
                             f"({self.starts_at_ms})")
        # as Alertmanager: a silence whose every matcher also matches absent labels would mute everything
        if all(m.matches({}) for m in self.matchers):
            raise ValueError(f"silence {self.id}: at least one matcher must not match the empty string "
                             f"(got {', '.join(map(str, self.matchers))}); e.g. add ('site', '=', '<site id>')")
        return self

    def active_at(self, now_ms: int) -> bool:
        """Whether the silence is in force at ``now_ms`` [ms]."""
        return self.starts_at_ms <= now_ms < self.ends_at_ms

    def matches(self, labels: Mapping[str, str], now_ms: int) -> bool:
        """Whether this silence mutes an alert with ``labels`` at ``now_ms`` [ms]."""
        return self.active_at(now_ms) and all(m.matches(labels) for m in self.matchers)

    def state_at(self, now_ms: int) -> Literal["pending", "active", "expired"]:
        """Alertmanager's silence states at ``now_ms`` [ms]."""
        if now_ms < self.starts_at_ms:
            return "pending"
        return "active" if now_ms < self.ends_at_ms else "expired"


def _parse_hhmm(text: str, field: str) -> int:
    match = re.fullmatch(r"(\d{2}):(\d{2})", text)
    if not match or int(match[1]) > 24 or int(match[2]) > 59 or (int(match[1]) == 24 and int(match[2]) != 0):
        raise ValueError(f"{field} must be a local time 'HH:MM' from 00:00 to 24:00, got {text!r}")
    return int(match[1]) * 60 + int(match[2])


class MaintenanceWindow(BaseModel):
    """Mutes every alert of ``sites`` (optionally only those matching ``matchers``) during maintenance.

    One-off: no ``weekdays``; the window is ``starts_at_ms <= t < ends_at_ms`` [ms]. Weekly: ``weekdays``
    (``"mon"``…``"sun"`` or 0–6, Monday = 0) with local ``start_time``/``end_time`` ``"HH:MM"`` in
    ``timezone``; an ``end_time`` at or before ``start_time`` runs past midnight into the next day
    (``"22:00"``–``"02:00"``), ``"00:00"``–``"24:00"`` is the whole day. The recurrence applies from
    ``starts_at_ms`` and until ``ends_at_ms`` if given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str = Field(default_factory=_new_id, min_length=1)
    sites: tuple[str, ...] = Field(min_length=1)
    starts_at_ms: int
    ends_at_ms: int | None = None
    weekdays: tuple[int, ...] = ()
    start_time: str | None = None
    end_time: str | None = None
    timezone: TimeZoneName = "UTC"
    matchers: tuple[Matcher, ...] = ()
    created_by: str = ""
    comment: str = ""
    _zone: ZoneInfo | None = PrivateAttr(default=None)
    _minutes: tuple[int, int] = PrivateAttr(default=(0, 0))

    @field_validator("weekdays", mode="before")
    @classmethod
    def _weekdays(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        out = []
        for day in value:
            if isinstance(day, str) and day.strip().lower() in _DAY_NAMES:
                out.append(_DAY_NAMES[day.strip().lower()])
            elif isinstance(day, int) and not isinstance(day, bool) and 0 <= day <= 6:
                out.append(day)
            else:
                raise ValueError(f"unknown weekday {day!r}; use one of {', '.join(WEEKDAYS)} or 0-6 (Monday = 0)")
        return tuple(sorted(set(out)))


    @model_validator(mode="after")
    def _check(self) -> MaintenanceWindow:
        if self.ends_at_ms is not None and self.ends_at_ms <= self.starts_at_ms:
            raise ValueError(f"maintenance window {self.id}: ends_at_ms ({self.ends_at_ms}) must be after "
                             f"starts_at_ms ({self.starts_at_ms})")
        if self.weekdays:
            if self.start_time is None or self.end_time is None:
                raise ValueError(f"maintenance window {self.id}: a weekly window needs start_time and end_time "
                                 "('HH:MM', local to timezone)")
            start = _parse_hhmm(self.start_time, "start_time")
            end = _parse_hhmm(self.end_time, "end_time")
            if start == 24 * 60:
                raise ValueError(f"maintenance window {self.id}: start_time must be before 24:00")
            if start == end:
                raise ValueError(f"maintenance window {self.id}: start_time and end_time are equal "
                                 f"({self.start_time}); for a whole day use '00:00'-'24:00'")
        else:
            if self.start_time is not None or self.end_time is not None:
                raise ValueError(f"maintenance window {self.id}: start_time/end_time need weekdays; "
                                 "for a one-off window give only starts_at_ms and ends_at_ms")
            if self.ends_at_ms is None:
                raise ValueError(f"maintenance window {self.id}: a one-off window needs ends_at_ms "
                                 "(or give weekdays, start_time and end_time for a weekly one)")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._zone = ZoneInfo(self.timezone)
        if self.weekdays and self.start_time and self.end_time:
            with contextlib.suppress(ValueError):  # reported by _check, which pydantic runs after this
                self._minutes = (_parse_hhmm(self.start_time, "start_time"), _parse_hhmm(self.end_time, "end_time"))

    def active_at(self, now_ms: int) -> bool:
        """Whether ``now_ms`` [ms] falls inside the window (an occurrence of it, for a weekly one)."""
        if now_ms < self.starts_at_ms or (self.ends_at_ms is not None and now_ms >= self.ends_at_ms):
            return False
        if not self.weekdays:
            return True
        local = datetime.fromtimestamp(now_ms / 1000, tz=self._zone)
        day, minute = local.weekday(), local.hour * 60 + local.minute
        start, end = self._minutes
        if start < end:
            return day in self.weekdays and start <= minute < end
        # past midnight: the evening part belongs to the listed day, the morning part to the day after it
        return (day in self.weekdays and minute >= start) or ((day - 1) % 7 in self.weekdays and minute < end)

    def matches(self, labels: Mapping[str, str], now_ms: int) -> bool:
        """Whether this window mutes an alert with ``labels`` at ``now_ms`` [ms]."""
        return (labels.get("site", "") in self.sites and all(m.matches(labels) for m in self.matchers)
                and self.active_at(now_ms))


Mute = Silence | MaintenanceWindow


class SilenceSet:
    """The silences and maintenance windows in force, keyed by id (one namespace for both kinds)."""

    def __init__(self, items: Iterable[Mute] = ()) -> None:
        self._items: dict[str, Mute] = {}
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, mute_id: object) -> bool:
        return mute_id in self._items

    def add(self, item: Mute) -> str:
        """Add ``item``, or replace the one with the same id (an edit); returns its id."""
        if not isinstance(item, Silence | MaintenanceWindow):
            raise TypeError(f"expected a Silence or a MaintenanceWindow, got {type(item).__name__}")
        self._items[item.id] = item
        return item.id

    def get(self, mute_id: str) -> Mute:
        """The silence or window with this id; ``KeyError`` if unknown."""
        try:
            return self._items[mute_id]
        except KeyError:
            raise KeyError(f"no silence or maintenance window with id {mute_id!r}") from None

    def expire(self, mute_id: str, now_ms: int) -> Mute | None:
        """End ``mute_id`` at ``now_ms`` [ms] (kept, expired, for the record); one not yet started is
        removed. Returns the expired item, or None when it was removed."""
        item = self.get(mute_id)
        if now_ms <= item.starts_at_ms:
            del self._items[mute_id]
            return None
        if item.ends_at_ms is not None and item.ends_at_ms <= now_ms:
            return item  # already over
        # rebuilt (not model_copy) so the private compiled state matches the fields
        expired = type(item).model_validate({**item.model_dump(), "ends_at_ms": now_ms})
        self._items[mute_id] = expired
        return expired

    def list(self) -> list[Mute]:
        """Every item, expired ones included, by start then id."""
        return sorted(self._items.values(), key=lambda m: (m.starts_at_ms, m.id))

    def active_at(self, now_ms: int) -> list[Mute]:
        """The items in force at ``now_ms`` [ms] (whatever their labels)."""
        return [m for m in self.list() if m.active_at(now_ms)]

    def silenced_by(self, labels: Mapping[str, str], now_ms: int) -> list[str]:
        """Ids of the items muting an alert with ``labels`` at ``now_ms`` [ms], sorted."""
        return sorted(mute_id for mute_id, m in self._items.items() if m.matches(labels, now_ms))

    def prune(self, before_ms: int) -> int:
        """Forget items that ended at or before ``before_ms`` [ms]; returns how many."""
        old = [k for k, m in self._items.items() if m.ends_at_ms is not None and m.ends_at_ms <= before_ms]
        for k in old:
            del self._items[k]
        return len(old)

    def snapshot(self) -> bytes:
        """Every item as JSON (UTF-8), for :meth:`restore`."""
        doc = {
            "v": SNAPSHOT_VERSION,
            "silences": [m.model_dump(mode="json") for m in self.list() if isinstance(m, Silence)],
            "windows": [m.model_dump(mode="json") for m in self.list() if isinstance(m, MaintenanceWindow)],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def restore(self, blob: bytes) -> None:
        """Replace every item by those of a :meth:`snapshot` (validated again)."""
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("v") != SNAPSHOT_VERSION:
            version = doc.get("v") if isinstance(doc, dict) else "?"
            raise ValueError(f"unsupported silence snapshot (version {version}; expected {SNAPSHOT_VERSION})")
        items: list[Mute] = [Silence.model_validate(d) for d in doc["silences"]]
        items += [MaintenanceWindow.model_validate(d) for d in doc["windows"]]
        self._items = {m.id: m for m in items}
