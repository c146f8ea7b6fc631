"""The API against its own OpenAPI document, with schemathesis, on a real uvicorn server on 127.0.0.1.

The app has every optional part (alerts with a webhook outbox, the provincial feed, token authentication)
over the hand-built fleet of conftest.py, whose faults (incomplete and meter-fault windows, a site without
data) put nulls where the schema must allow them. schemathesis generates a few requests per operation,
deterministically, and runs all its checks: no 5xx, status codes, content types, headers and bodies as
documented, invalid input refused and valid input accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import ignored_auth

from dcpue.feed.sender import FeedService
from dcpue.registry import parse_registry
from dcpue.runtime.embedded import build_alerting
from dcpue.runtime.store import FileStore
from dcpue.settings import EngineSettings, load_settings
from dcpue.web.app import create_app
from dcpue.web.auth import OPEN_PATHS, TokenAuth, hash_token

from .conftest import NOW_MS, REGISTRY_DOC, build_frames
from .serving import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "schemathesis-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 8  # per operation and phase; with the coverage phase's boundary cases the run stays under a minute


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the whole app: store, alerts (outbox, never sending), feed (outbox opened), auth."""
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    registry = parse_registry(REGISTRY_DOC, "<test registry>")
    store = FileStore(tmp / "results.sqlite").setup()
    store.write_windows(build_frames())
    store.write_dead_letters(pd.DataFrame({"topic": ["dcpue.readings.v1"], "key": ["gy-a"],
                                           "reason": ["unknown point 'it.pdu9'"],
                                           "payload": [{"point": "it.pdu9", "value": None, "ts_ms": NOW_MS}]}))
    settings = load_settings(
        None, engine={"target_pue": 1.2},
        alerts={"receivers": [{"name": "noc", "url": "http://127.0.0.1:9/hook"}],
                "routes": [{"receivers": ["noc"]}],
                "delivery": {"outbox_path": str(tmp / "outbox.sqlite")}},
        feed={"reports": ["daily"], "outbox_path": str(tmp / "feed-outbox.sqlite"),
              "destinations": [{"name": "gz", "url": "https://platform.example.gov.cn/reports", "secret": "s"}]})
    alerts, _ = build_alerting(settings, registry, tmp / "alerts.sqlite", producer=None)
    assert alerts is not None and alerts.delivery is not None
    alerts.delivery.outbox.open()  # the delivery log answers; no dispatcher, so nothing is ever sent
    alerts.add_silence({"matchers": [["site", "=", "gy-b"]], "starts_at_ms": NOW_MS,
                        "ends_at_ms": NOW_MS + 86_400_000, "created_by": "test", "comment": "retrofit"})
    feed = FeedService(settings.feed, store, registry, tz=settings.engine.timezone).open()
    status = {"mode": "embedded", "sim_time_ms": NOW_MS, "readings": 1234, "windows_written": 56,
              "dead_letters": 1, "bus_lag": 0, "errors": {}}
    app = create_app(store, registry, settings.engine, status=lambda: status, alerts=alerts,
                     retirement=settings.retirement, feed=feed.status, auth=TokenAuth([hash_token(TOKEN)]))
    try:
        with LiveServer(app) as server:
            yield server.url
    finally:
        feed.stop()
        alerts.delivery.outbox.close()
        alerts.close()
        store.close()


def _document() -> dict:
    """The app's OpenAPI document, built without a server: create_app does no I/O (the store is never opened).

    Loaded at import so pytest can collect one test per operation; ``test_the_server_publishes_this_document``
    checks that the running server publishes the same."""
    app = create_app(FileStore(Path("never-opened.sqlite")), parse_registry(REGISTRY_DOC, "<test registry>"),
                     EngineSettings(), auth=TokenAuth([hash_token(TOKEN)]))
    return app.openapi()


DOCUMENT = _document()
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]  # schemathesis' default for valid requests
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict({
    "seed": 20250601,
    "generation": {"max-examples": EXAMPLES, "deterministic": True},
    "operations": [
        # a known site, so the windows query itself is exercised (random ids are all 404)
        {"include-path": "/api/v1/sites/{site_id}/windows", "parameters": {"site_id": "gy-b"},
         # start/end: any string is schema-valid, but only times from 1970 to 2199 are accepted (422 otherwise)
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}},
        {"include-path": "/api/v1/retirement",  # as_of: as start/end above
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}},
        # a schema-valid silence can still be invalid: ends before it starts, a bad regular expression, or
        # matchers that all match the empty string (answered 400, as documented)
        {"include-path": "/api/v1/silences", "include-method": "POST",
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}}},
    ],
}))


def test_the_server_publishes_this_document(live_api):
    assert httpx.get(f"{live_api}/api/openapi.json", timeout=10).json() == DOCUMENT


def _send(case, base_url: str) -> httpx.Response:
    """Send ``case`` with httpx (schemathesis' own requests transport trips over urllib3-future, which
    grafana-client's niquests installs over urllib3), exactly as schemathesis serialises it."""
    kw = case.as_transport_kwargs(base_url=base_url, headers=AUTH)
    content = json.dumps(kw["json"]).encode() if "json" in kw else kw.get("data")
    with httpx.Client(timeout=30, follow_redirects=False) as client:
        return client.request(kw["method"], kw["url"], headers=kw["headers"], params=kw.get("params"),
                              cookies=kw.get("cookies") or None, content=content)


@schema.parametrize()
def test_every_operation_conforms_to_the_openapi_document(case, live_api):
    response = _send(case, live_api)
    # ignored_auth probes without the token through schemathesis' requests transport (see _send); the test
    # below makes the same probe on every operation
    case.validate_response(response, headers=AUTH, transport_kwargs={"base_url": live_api},
                           excluded_checks=[ignored_auth])


def test_every_documented_operation_refuses_a_request_without_an_accepted_token(live_api):
    document = httpx.get(f"{live_api}/api/openapi.json", timeout=10).json()
    operations = [(method.upper(), path) for path, item in document["paths"].items() for method in item]
    assert ("GET", "/metrics") in operations and len(operations) >= 15
    with httpx.Client(base_url=live_api, timeout=10) as client:
        for method, path in operations:
            url = path.replace("{site_id}", "gy-a").replace("{delivery_id}", "1").replace("{silence_id}", "x")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"},
                            {"Authorization": f"Basic {TOKEN}"}):
                r = client.request(method, url, headers=headers)
                if path in ("/healthz", "/readyz"):
                    assert r.status_code == 200, (method, path)
                    continue
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert r.json()["detail"]
            # and the same request with the token gets past authentication
            assert client.request(method, url, headers=AUTH).status_code != 401, (method, path)
    assert {"/healthz", "/readyz"} <= OPEN_PATHS
