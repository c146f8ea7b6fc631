"""Feed settings fail fast with the field named; secrets from files; the outbox keeps six months; formats plug in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dcpue.errors import ConfigError
from dcpue.feed.formats import get_format, register_format
from dcpue.feed.sender import FeedService
from dcpue.settings import load_settings
from tests.helpers.feed import TZ, filled_store, fleet


def _load(tmp_path: Path, feed: dict[str, object]):
    path = tmp_path / "dcpue.yaml"
    path.write_text(yaml.safe_dump({"feed": feed}), encoding="utf-8")
    return load_settings(path)


DEST = {"name": "gz", "url": "https://platform.example.gov.cn/reports", "secret": "s"}


@pytest.mark.parametrize("feed,field,message", [
    ({"keep_days": 90}, "feed.keep_days", "greater than or equal to 183"),
    ({"destinations": [{**DEST, "url": "ftp://x"}]}, "feed.destinations.0.url", "not an http(s) URL"),
    ({"destinations": [{**DEST, "algorithm": "md5"}]}, "feed.destinations.0.algorithm", "hmac-sm3"),
    ({"destinations": [{**DEST, "secret_file": "/nonexistent/secret"}]}, "feed.destinations.0",
     "give secret or secret_file, not both"),
    ({"destinations": [{**DEST, "secret": None, "secret_file": "/nonexistent/secret"}]}, "feed.destinations.0",
     "secret_file /nonexistent/secret"),
    ({"destinations": [{**DEST, "tls": {"cert_file": "/etc/hostname"}}]}, "feed.destinations.0.tls",
     "both cert_file and key_file"),
    ({"destinations": [DEST, DEST]}, "feed", "destination names must be unique"),
    ({"enabled": True}, "feed", "no destinations and no file_drop"),
    ({"quality": {"on_time_s": {"weekly": 1}}}, "feed.quality.on_time_s", "unknown report type(s) weekly"),
    ({"reports": ["yearly"]}, "feed.reports.0", "realtime"),
])
def test_bad_feed_settings_name_the_file_field_and_problem(tmp_path, feed, field, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, feed)
    text = str(err.value)
    assert str(tmp_path / "dcpue.yaml") in text and f"field '{field}" in text and message in text, text


def test_secrets_come_from_files_read_at_use_and_never_show_in_settings(tmp_path):
    (tmp_path / "key").write_text("the-api-key\n")
    (tmp_path / "secret").write_text("the-secret\n")
    settings = _load(tmp_path, {"destinations": [{"name": "gz", "url": DEST["url"],
                                                  "api_key_file": str(tmp_path / "key"),
                                                  "secret_file": str(tmp_path / "secret")}]})
    dest = settings.feed.destinations[0]
    assert dest.api_key_value() == "the-api-key" and dest.secret_value() == "the-secret"
    (tmp_path / "secret").write_text("rotated\n")
    assert dest.secret_value() == "rotated"  # read at each use: a rotated file is picked up
    inline = _load(tmp_path, {"destinations": [DEST]}).feed.destinations[0]
    assert inline.secret_value() == "s"
    assert "'s'" not in repr(inline) and "**********" in repr(inline)


def test_the_outbox_keeps_delivered_reports_for_keep_days_and_pending_ones_forever(tmp_path):
    store = filled_store(tmp_path / "store.sqlite")
    now = [1_800_000_000.0]
    settings = _load(tmp_path, {"reports": ["daily"], "start": "2024-07-14", "keep_days": 183,
                                "outbox_path": str(tmp_path / "outbox.sqlite"),
                                "destinations": [DEST, {**DEST, "name": "backup"}]}).feed
    service = FeedService(settings, store, fleet(), tz=TZ, clock=lambda: now[0]).open()
    try:
        assert service.tick().enqueued == 8
        for _ in range(2):  # two delivered to gz, the rest pending
            service.outbox.mark_delivered(service.outbox.head("gz").id, int(now[0] * 1000), 200)
    finally:
        service.stop()
    for days, left in ((182.9, 8), (183.1, 6)):  # the delivered rows go after 183 days, pending rows stay
        now[0] = 1_800_000_000.0 + days * 86_400
        service = FeedService(settings, store, fleet(), tz=TZ, clock=lambda: now[0]).open()
        try:
            assert sum(service.outbox.counts().values()) == left
            assert service.outbox.counts()["pending"] == 6
        finally:
            service.stop()
    store.close()


class _Envelope:
    """A province whose interface wants the report wrapped: {"version": …, "data": …}, form-encoded JSON."""

    name = "test-envelope"
    content_type = "application/vnd.test+json"

    def render(self, report):
        return json.dumps({"version": "GZ-1.0", "data": report}, sort_keys=True).encode()


def test_a_platform_format_plugs_in_without_touching_the_rest(tmp_path):
    register_format(_Envelope())
    assert get_format("test-envelope").content_type == "application/vnd.test+json"
    with pytest.raises(ValueError, match="unknown feed format 'nope'.*dcpue-v1"):
        get_format("nope")
    store = filled_store(tmp_path / "store.sqlite")
    settings = _load(tmp_path, {"reports": ["daily"], "start": "2024-07-14", "format": "test-envelope",
                                "outbox_path": str(tmp_path / "outbox.sqlite"), "destinations": [DEST]}).feed
    service = FeedService(settings, store, fleet(), tz=TZ).open()
    try:
        service.tick()
        body = json.loads(service.outbox.head("gz").body)
        assert body["version"] == "GZ-1.0" and body["data"]["report_type"] == "daily"
        assert service.dispatcher.content_type == "application/vnd.test+json"
    finally:
        service.stop()
        store.close()


def test_sites_without_platform_codes_are_listed_not_reported(tmp_path):
    registry = fleet().model_copy(update={"sites": (fleet().sites[0].model_copy(update={"platform_site_code": None}),
                                                    fleet().sites[1])})
    store = filled_store(tmp_path / "store.sqlite")
    settings = _load(tmp_path, {"reports": ["daily"], "start": "2024-07-14",
                                "outbox_path": str(tmp_path / "outbox.sqlite"), "destinations": [DEST]}).feed
    service = FeedService(settings, store, registry, tz=TZ).open()
    try:
        assert service.tick().reports == {"daily": 2}  # the second site's two days only
        assert service.status()["skipped_sites"] == {fleet().sites[0].id: "no platform_site_code in the registry"}
    finally:
        service.stop()
        store.close()
    with pytest.raises(ValueError, match="feed.sites names sites the registry does not have: nowhere"):
        FeedService(settings.model_copy(update={"sites": ("nowhere",)}), store, registry, tz=TZ)
