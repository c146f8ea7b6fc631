"""The HTTP API over a FileStore the test fills itself (see conftest for the fleet and its faults)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from dcpue.results import ALL_WINDOWS, WINDOW_COLUMNS
from dcpue.web.app import create_app

from .conftest import NOW_MS, PROFILE, TARGET


@pytest.fixture
def client(store, registry, engine_settings, status_info):
    return TestClient(create_app(store, registry, engine_settings, status=lambda: status_info))


def strict_json(response):
    """Parse as strict JSON: NaN/Infinity literals are not JSON and must never be sent."""
    def reject(token):
        raise AssertionError(f"invalid JSON literal {token} in {response.url}")
    return json.loads(response.text, parse_constant=reject)


def test_create_app_does_no_io_until_asked(registry, engine_settings, tmp_path):
    from dcpue.runtime.store import FileStore
    store = FileStore(tmp_path / "never-opened.sqlite")  # not set up: any query would fail
    app = create_app(store, registry, engine_settings)
    assert not (tmp_path / "never-opened.sqlite").exists()
    assert TestClient(app).get("/healthz").json()["status"] == "ok"


def test_healthz_and_readyz(client):
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_readyz_503_while_the_results_are_not_complete(store, registry, engine_settings):
    reason = ["view is still reading the metrics topic"]
    client = TestClient(create_app(store, registry, engine_settings, not_ready=lambda: reason[0]))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"] == reason[0]
    reason[0] = None
    assert client.get("/readyz").status_code == 200


def test_readyz_503_when_store_closed(client, store):
    store.close()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "not open" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    # data endpoints say why instead of a bare 500
    r = client.get("/api/v1/sites")
    assert r.status_code == 503 and "result store unavailable" in r.json()["detail"]


def test_sites_lists_every_registry_site_including_no_data(client, registry):
    body = strict_json(client.get("/api/v1/sites"))
    assert body["target_pue"] == TARGET
    assert [s["id"] for s in body["sites"]] == [s.id for s in registry.sites]
    new = next(s for s in body["sites"] if s["id"] == "new-d")
    assert new["status"] == "no_data"
    assert new["pue"] is None and new["pue_gap"] is None and new["it_kw"] is None
    assert new["it_utilization"] is None and new["occupancy"] is None  # no racks installed: no ratio
    assert new["status_1h"] == new["status_1d"] == new["status_12mo"] == "no_data"
    assert new["name"] == "New Build" and new["city"] == "Anshun" and new["cluster"] == "zunyi"


def test_sites_live_figures_and_gap(client, frames):
    sites = {s["id"]: s for s in strict_json(client.get("/api/v1/sites"))["sites"]}
    a = sites["gy-a"]
    live = frames[(frames["id"] == "gy-a") & (frames["window"] == "1m")].iloc[-1]
    assert a["status"] == "ok"
    assert a["start_ms"] == int(live["start_ms"]) and a["end_ms"] == NOW_MS
    assert a["pue"] == pytest.approx(live["pue"])
    assert a["pue_gap"] == pytest.approx(live["pue"] - TARGET)
    assert a["it_kw"] == pytest.approx(live["it_kw"]) and a["facility_kw"] == pytest.approx(live["facility_kw"])
    assert a["facility_kw"] / a["it_kw"] == pytest.approx(a["pue"])
    assert a["grade"] == "2" and a["it_category"] == 1 and a["coverage"] == 1.0
    assert a["cooling"] == "air" and a["target_pue"] == TARGET
    for w in ("1h", "1d", "12mo"):
        row = frames[(frames["id"] == "gy-a") & (frames["window"] == w)].iloc[-1]
        assert a[f"pue_{w}"] == pytest.approx(row["pue"]) and a[f"status_{w}"] == "ok"


def test_occupancy_and_utilization_are_separate_and_correct(client, frames):
    sites = {s["id"]: s for s in strict_json(client.get("/api/v1/sites"))["sites"]}
    # gy-b: 100 of 400 racks in service (25 %) but ~300 of 600 kW design IT load (~50 %)
    b = sites["gy-b"]
    assert b["racks_installed"] == 400 and b["racks_in_service"] == 100
    assert b["occupancy"] == pytest.approx(0.25)
    live_it = frames[(frames["id"] == "gy-b") & (frames["window"] == "1m")].iloc[-1]["it_kw"]
    assert b["it_utilization"] == pytest.approx(live_it / 600.0)
    assert 0.45 < b["it_utilization"] < 0.56
    a = sites["gy-a"]
    assert a["occupancy"] == pytest.approx(0.8)
    assert a["it_utilization"] == pytest.approx(a["it_kw"] / 1000.0)
    assert a["occupancy"] != pytest.approx(a["it_utilization"])


def test_invalid_windows_are_null_with_their_status(client):
    sites = {s["id"]: s for s in strict_json(client.get("/api/v1/sites"))["sites"]}
    b = sites["gy-b"]  # newest minute incomplete
    assert b["status"] == "incomplete" and b["pue"] is None and b["pue_gap"] is None
    assert b["coverage"] == pytest.approx(0.4) and b["grade"] is None
    c = sites["zy-c"]  # newest minute: IT meter read zero
    assert c["status"] == "meter_fault" and c["pue"] is None
    assert c["it_utilization"] is None  # an impossible IT figure yields no utilization
    assert c["pue_1d"] == pytest.approx(PROFILE["zy-c"][1], abs=0.05)  # longer windows still valid


def test_fleet_and_clusters(client, frames):
    body = strict_json(client.get("/api/v1/fleet"))
    assert body["target_pue"] == TARGET
    assert set(body["fleet"]) == set(body["clusters"]) == {"1m", "1h", "1d", "12mo"}
    live = body["fleet"]["1m"]
    assert live["scope"] == "fleet" and live["window"] == "1m" and live["status"] == "ok"
    assert live["pue"] == pytest.approx(live["facility_kwh"] / live["it_kwh"])  # energy-weighted
    assert list(live) == list(WINDOW_COLUMNS)
    clusters = {c["id"]: c for c in body["clusters"]["1m"]}
    assert set(clusters) == {"guian", "zunyi"}
    assert clusters["zunyi"]["status"] == "incomplete" and clusters["zunyi"]["pue"] is None
    assert body["fleet"]["12mo"]["pue"] == pytest.approx(
        frames[(frames["scope"] == "fleet") & (frames["window"] == "12mo")]["pue"].iloc[0])


def test_fleet_without_any_data(registry, engine_settings, tmp_path):
    from dcpue.runtime.store import FileStore
    store = FileStore(tmp_path / "empty.sqlite").setup()
    client = TestClient(create_app(store, registry, engine_settings))
    body = strict_json(client.get("/api/v1/fleet"))
    assert body["fleet"] == {"1m": None, "1h": None, "1d": None, "12mo": None}
    assert all(s["status"] == "no_data" for s in strict_json(client.get("/api/v1/sites"))["sites"])
    assert strict_json(client.get("/api/v1/sites/gy-a/windows?window=1m"))["rows"] == []
    store.close()


def test_site_windows_series(client, frames):
    r = client.get("/api/v1/sites/gy-a/windows", params={"window": "1m"})
    body = strict_json(r)
    assert body["site"] == "gy-a" and body["window"] == "1m" and body["count"] == 360
    rows = body["rows"]
    assert list(rows[0]) == list(WINDOW_COLUMNS)
    starts = [x["start_ms"] for x in rows]
    assert starts == sorted(starts) and starts[-1] == NOW_MS - 60_000
    assert rows[0]["cooling_chiller_kwh"] is None  # NaN in the store → null on the wire


def test_site_windows_limit_keeps_newest_and_time_filters(client):
    rows = strict_json(client.get("/api/v1/sites/gy-a/windows?window=1m&limit=5"))["rows"]
    assert [x["start_ms"] for x in rows] == [NOW_MS - 60_000 * k for k in range(5, 0, -1)]
    start = NOW_MS - 10 * 60_000
    by_ms = strict_json(client.get(f"/api/v1/sites/gy-a/windows?window=1m&start={start}"))
    assert by_ms["count"] == 10
    by_iso = strict_json(client.get("/api/v1/sites/gy-a/windows",
                                    params={"window": "1m", "start": "2025-06-01T11:50:00Z",
                                            "end": "2025-06-01T11:55:00"}))
    assert [x["start_ms"] for x in by_iso["rows"]] == [start + 60_000 * k for k in range(5)]


def test_site_windows_nan_rows_are_null(client):
    rows = strict_json(client.get("/api/v1/sites/gy-b/windows?window=1m"))["rows"]
    incomplete = [x for x in rows if x["status"] == "incomplete"]
    assert len(incomplete) == 21  # the 20-minute gap an hour ago plus the newest minute
    assert all(x["pue"] is None and x["pue_gap"] is None for x in incomplete)


def test_unknown_site_is_404_with_message(client):
    r = client.get("/api/v1/sites/nowhere/windows?window=1h")
    assert r.status_code == 404
    assert "unknown site 'nowhere'" in r.json()["detail"] and "/api/v1/sites" in r.json()["detail"]


def test_unknown_window_is_422_listing_valid_ones(client):
    r = client.get("/api/v1/sites/gy-a/windows?window=2h")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "'2h'" in detail and all(w in detail for w in ALL_WINDOWS)


@pytest.mark.parametrize("query", ["start=yesterday", "limit=0", "limit=abc",
                                   "start=%C2%B2"])  # "²": str.isdigit() says yes, int() says no (was a 500)
def test_bad_parameters_are_422(client, query):
    assert client.get(f"/api/v1/sites/gy-a/windows?window=1h&{query}").status_code == 422


def test_status_passes_through_with_target(client):
    body = strict_json(client.get("/api/v1/status"))
    assert body["target_pue"] == TARGET
    assert body["sim_time_ms"] == NOW_MS and body["readings_total"] == 123456
    assert body["lag_s"] is None  # NaN from the status callable → null
    assert body["site_count"] == 4


def test_status_without_callable(store, registry, engine_settings):
    body = TestClient(create_app(store, registry, engine_settings)).get("/api/v1/status").json()
    assert body == {"target_pue": TARGET, "site_count": 4}


def test_dead_letters(client):
    body = strict_json(client.get("/api/v1/dead-letters?limit=10"))
    assert body["count"] == 1
    letter = body["dead_letters"][0]
    assert letter["topic"] == "dcpue.readings.v1" and letter["key"] == "gy-a"
    assert letter["reason"] == "unknown point 'it.pdu9'"
    assert letter["payload"] == {"point": "it.pdu9", "value": None, "ts_ms": NOW_MS}  # NaN → null
    assert client.get("/api/v1/dead-letters?limit=0").status_code == 422


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="pue-chart"' in r.text and 'id="power-chart"' in r.text and "上架率" in r.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        got = client.get(f"/static/{asset}")
        assert got.status_code == 200 and kind in got.headers["content-type"]
    # offline: no external URLs in the page or its assets
    for text in (r.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_openapi_documents_the_endpoints(client):
    spec = client.get("/api/openapi.json").json()
    paths = spec["paths"]
    for path in ("/healthz", "/readyz", "/api/v1/sites", "/api/v1/fleet", "/api/v1/sites/{site_id}/windows",
                 "/api/v1/status", "/api/v1/dead-letters"):
        assert path in paths, path
    window_param = next(p for p in paths["/api/v1/sites/{site_id}/windows"]["get"]["parameters"]
                        if p["name"] == "window")
    assert window_param["schema"]["enum"] == list(ALL_WINDOWS)
    assert "SiteRow" in spec["components"]["schemas"] and "WindowRow" in spec["components"]["schemas"]


def test_recommendations_newest_first_per_site_and_unknown_site(client, store, registry):
    site = registry.sites[0].id
    records = [{"site": site, "ts_ms": NOW_MS - k * 3_600_000, "ok": k == 0, "action": "change" if k == 0 else "none",
                "reason": "change: …" if k == 0 else "no recommendation: out of distribution",
                "current": {"supply_air": 22.0}, "recommended": {"supply_air": 23.0} if k == 0 else None,
                "model_version": "v1"} for k in range(3)]
    store.write_recommendations(records)
    store.write_recommendations(records[:1])  # the same site and time again: overwritten, not added
    body = client.get("/api/v1/recommendations", params={"site": site, "limit": 2}).json()
    assert body["count"] == 2 and [r["ts_ms"] for r in body["recommendations"]] == [NOW_MS, NOW_MS - 3_600_000]
    assert body["recommendations"][0]["recommended"] == {"supply_air": 23.0}
    assert client.get("/api/v1/recommendations").json()["count"] == 3
    assert client.get("/api/v1/recommendations", params={"site": "nowhere"}).status_code == 404


# -- found by schemathesis (tests/web/test_schemathesis.py) ------------------------------------------------

@pytest.fixture
def alerts_client(store, registry, engine_settings, tmp_path):
    from dcpue.runtime.embedded import build_alerting
    from dcpue.settings import load_settings

    settings = load_settings(None, alerts={"receivers": [{"name": "noc", "url": "http://127.0.0.1:9/hook"}],
                                           "routes": [{"receivers": ["noc"]}],
                                           "delivery": {"outbox_path": str(tmp_path / "outbox.sqlite")}})
    alerts, _ = build_alerting(settings, registry, tmp_path / "alerts.sqlite", producer=None)
    alerts.delivery.outbox.open()
    yield TestClient(create_app(store, registry, engine_settings, alerts=alerts))
    alerts.delivery.outbox.close()
    alerts.close()


def test_delivery_log_filters_are_checked(alerts_client):
    assert alerts_client.get("/api/v1/alerts/deliveries?status=failed").json() == {"count": 0, "deliveries": []}
    assert alerts_client.get("/api/v1/alerts/deliveries?status=gone").status_code == 422  # was a 500
    assert alerts_client.get("/api/v1/alerts/deliveries?receiver=&status=pending").status_code == 200
    too_big = alerts_client.post(f"/api/v1/alerts/deliveries/{2**63}/retry")
    assert too_big.status_code == 422  # beyond SQLite's INTEGER: was a 500
    assert alerts_client.post(f"/api/v1/alerts/deliveries/{2**63 - 1}/retry").status_code == 404


@pytest.mark.parametrize("field,value", [("starts_at_ms", True), ("ends_at_ms", "1767225600000"),
                                         ("ends_at_ms", NOW_MS + 0.5), ("comment", 7), ("extra", 1)])
def test_a_silence_must_follow_its_documented_schema(alerts_client, field, value):
    body = {"matchers": [["site", "=", "gy-a"]], "starts_at_ms": NOW_MS, "ends_at_ms": NOW_MS + 3_600_000,
            "created_by": "test", field: value}
    r = alerts_client.post("/api/v1/silences", json=body)
    assert r.status_code == 400 and f"invalid silence: {field}" in r.json()["detail"], r.text
    del body[field]
    if field in ("starts_at_ms", "comment", "extra"):
        assert alerts_client.post("/api/v1/silences", json=body).status_code == 201


def test_a_silence_error_names_the_field_as_the_silence_model_does(alerts_client):
    r = alerts_client.post("/api/v1/silences", json={"matchers": [["site", "=~", "("]], "ends_at_ms": NOW_MS})
    assert r.status_code == 400
    assert "matchers.0: Value error, matcher site=~'(': invalid regular expression" in r.json()["detail"]
    assert "created_by: Field required" in r.json()["detail"]


def test_method_not_allowed_names_every_method_of_the_path(alerts_client):
    r = alerts_client.request("PUT", "/api/v1/silences")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_empty_site_filter_means_all_sites(client):
    assert client.get("/api/v1/recommendations?site=").status_code == 200
