"""``GET /api/v1/retirement`` over a file store filled with the PUE engine's windows of simulator readings."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from dcpue.runtime.retirement import assess_store
from dcpue.settings import EngineSettings, RetirementSettings
from tests.helpers.retirement import AS_OF_MS, TZ, filled_store, fleet, simulated_windows

SETTINGS = RetirementSettings.model_validate({"criteria": {"min_pue_months": 2, "inefficient_above_pue": 1.13},
                                             "economics": {"electricity_price_cny_per_kwh": 0.4}})
URL = "/api/v1/retirement"


@pytest.fixture
def store(tmp_path):
    s = filled_store(tmp_path / "store.sqlite")
    yield s
    s.close()


def client_for(store, settings: RetirementSettings = SETTINGS) -> TestClient:
    from dcpue.web.app import create_app

    return TestClient(create_app(store, fleet(), EngineSettings(timezone=TZ), retirement=settings))


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in the response: not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_assessment_as_json_equals_the_library_result(store):
    response = client_for(store).get(URL)
    assert response.status_code == 200
    body = strict_json(response.text)
    expected = json.loads(json.dumps(assess_store(store, fleet(), SETTINGS, tz=TZ).to_dict(), allow_nan=False))
    assert body["period"].pop("computed_ms") > 0
    expected["period"].pop("computed_ms")
    assert body == expected
    assert body["period"]["as_of_ms"] == AS_OF_MS and body["period"]["as_of"] == "2025-02-01T00:00:00+08:00"
    assert {s["site"]: s["verdict"] for s in body["sites"]} == {
        "ga-01": "keep", "tr-02": "retire", "xy-03": "consolidate", "gy-04": "upgrade"}
    tr = {s["site"]: s for s in body["sites"]}["tr-02"]
    assert tr["old_evidence"] == "17 years since commissioning in 2008 ≥ 10" and tr["cluster"] is None
    (hub,) = body["clusters"]
    assert 0 < hub["moved_in_kw"] <= hub["spare_kw_before"]
    assert body["totals"]["saved_cost_cny_year"] == pytest.approx(body["totals"]["saved_kwh_year"] * 0.4)


def test_answers_are_cached_until_a_new_day_closes(store):
    client = client_for(store)
    first = client.get(URL).json()
    assert client.get(URL).json()["period"]["computed_ms"] == first["period"]["computed_ms"]  # from the cache
    day = simulated_windows().query("scope == 'site' and window == '1d'").groupby("id").tail(1).copy()
    day["start_ms"] += 86_400_000
    day["end_ms"] += 86_400_000
    store.write_windows(day)  # the next day closes at every site
    again = client.get(URL).json()
    assert again["period"]["as_of_ms"] == AS_OF_MS + 86_400_000
    assert again["period"]["windows"] == {s.id: "1d" for s in fleet().sites}


def test_price_and_as_of_parameters(store):
    client = client_for(store)
    body = client.get(URL, params={"price": 0.55, "as_of": "2025-01-01T00:00:00+08:00"}).json()
    assert body["period"]["as_of"] == "2025-01-01T00:00:00+08:00"
    assert body["totals"]["saved_cost_cny_year"] == pytest.approx(body["totals"]["saved_kwh_year"] * 0.55)
    assert client.get(URL, params={"as_of": "someday"}).status_code == 422
    assert "as_of='someday' is not a time" in client.get(URL, params={"as_of": "someday"}).json()["detail"]
    for out_of_range in ("9999-12-31", "100000000000000000", "7258118400000"):  # past what pandas or 2199 hold
        answer = client.get(URL, params={"as_of": out_of_range})
        assert answer.status_code == 422 and "from 1970 to 2199" in answer.json()["detail"], out_of_range
    assert client.get(URL, params={"price": -1}).status_code == 422


def test_settings_that_do_not_fit_the_registry_say_so(store):
    bad = RetirementSettings.model_validate({"clusters": {"nowhere": {"capacity_kw": 1000}}})
    response = client_for(store, bad).get(URL)
    assert response.status_code == 500
    assert "retirement.clusters.nowhere" in response.json()["detail"]


def test_the_endpoint_is_in_the_openapi_schema(store):
    spec = client_for(store).get("/api/openapi.json").json()
    params = {p["name"] for p in spec["paths"][URL]["get"]["parameters"]}
    assert params == {"as_of", "price"}
