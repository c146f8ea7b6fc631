"""Cooling recommendations as Grafana annotations: the provisioned dashboard, and its queries on real data.

No Grafana runs here. What is checked instead:

* the checked-in dashboard JSON is exactly what ``dcpue.dashboards`` generates, and the provisioning wires
  it to the InfluxDB datasource Grafana is given;
* the exact InfluxQL each annotation (and panel, and the ``$site`` variable) carries, with ``$timeFilter``
  and ``$site`` substituted as Grafana does, returns the right rows from a real InfluxDB 1.x after the records
  went through ``InfluxSink.write_recommendations``. InfluxDB 1.6 has no v2 write API (1.8+ has), so the
  sink writes to a small relay on 127.0.0.1 that hands its request body, unchanged, to 1.6's ``/write``;
* the rows become the events Grafana would show: ``time``, the ``textColumn`` as text and every
  ``tagsColumn`` column as a tag (the mapping of Grafana's InfluxDB datasource, re-stated in
  :func:`grafana_events`).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from dcpue.adapters.influxdb import InfluxSink
from dcpue.analytics.cooling import Recommendation
from dcpue.dashboards.annotations import CHANGE_NAME, REFUSAL_NAME, recommendation_annotations
from dcpue.dashboards.build import generated, main
from dcpue.dashboards.cooling import (
    DEFAULT_DATASOURCE_UID,
    SAVING_QUERY,
    SETPOINT_QUERY,
    SITE_QUERY,
    cooling_dashboard,
)
from dcpue.settings import InfluxSettings
from tests.servers import InfluxV2Relay, influxdb1, unique_name  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DASHBOARDS = PROVISIONING / "dashboards"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"

T = int(pd.Timestamp("2024-07-20T14:00:00+08:00").value // 1_000_000)  # [ms]
QUARTER = 15 * 60_000  # [ms]


# --- the checked-in dashboard and its provisioning ----------------------------------------------------------


def test_checked_in_dashboards_are_what_the_code_generates() -> None:
    files = generated()
    assert {p.name for p in DASHBOARDS.glob("*.json")} == set(files)
    for name, text in files.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, (
            f"{name} is out of date: run `python -m dcpue.dashboards.build` from the repository root")


def test_build_writes_then_checks(tmp_path: Path) -> None:
    assert main(["--dir", str(tmp_path), "--check"]) == 1  # nothing there yet
    assert main(["--dir", str(tmp_path)]) == 0
    assert main(["--dir", str(tmp_path), "--check"]) == 0
    assert main(["--dir", str(tmp_path / "missing")]) == 2


def test_provisioning_loads_the_dashboard_with_the_provisioned_datasource() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = [v.split(":") for v in grafana["volumes"]]
    (target,) = [t for source, t, *_ in mounts if source == "./grafana/provisioning"]
    (provider,) = yaml.safe_load((DASHBOARDS / "dcpue.yaml").read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == f"{target}/dashboards"
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text(encoding="utf-8"))[
        "datasources"]
    assert datasource["uid"] == DEFAULT_DATASOURCE_UID and datasource["jsonData"]["version"] == "InfluxQL"

    dashboard = json.loads((DASHBOARDS / "dcpue-cooling.json").read_text(encoding="utf-8"))
    refs = [a["datasource"] for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    refs += [v["datasource"] for v in dashboard["templating"]["list"]]
    refs += [ref for p in dashboard["panels"] for ref in (p["datasource"], *(t["datasource"] for t in p["targets"]))]
    assert refs and all(ref == {"type": "influxdb", "uid": DEFAULT_DATASOURCE_UID} for ref in refs)
    assert [a["name"] for a in dashboard["annotations"]["list"][1:]] == [CHANGE_NAME, REFUSAL_NAME]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["site"]


def test_annotation_definitions() -> None:
    change, refusal = recommendation_annotations("my-influx")
    for annotation in (change, refusal):
        assert annotation["datasource"] == {"type": "influxdb", "uid": "my-influx"} and annotation["enable"]
        target = annotation["target"]
        assert target["rawQuery"] and target["fromAnnotations"]
        assert "$timeFilter" in target["query"] and '"site" =~ /^$site$/' in target["query"]
        assert target["textColumn"] == "reason" and target["tagsColumn"] == "site,loop,setpoint"
    assert change["iconColor"] != refusal["iconColor"] and change["name"] != refusal["name"]
    (plant,) = recommendation_annotations("x", site_variable="plant")[:1]
    assert "/^$plant$/" in plant["target"]["query"]
    with pytest.raises(ValueError, match="datasource_uid"):
        recommendation_annotations("")
    with pytest.raises(ValueError, match="site_variable"):
        recommendation_annotations("x", site_variable="$site")
    assert cooling_dashboard("other")["annotations"]["list"][1:] == recommendation_annotations("other")


# --- the queries on real data ----------------------------------------------------------------------------------


def _rec(site: str, ts_ms: int, current: dict[str, float], recommended: dict[str, float] | None, action: str,
         reason: str, saving_kw: float | None = None, saving_pct: float | None = None) -> dict[str, Any]:
    """A record as the cooling advisor publishes it: ``Recommendation.as_dict()`` plus ``confidence``."""
    ok = recommended is not None
    record = Recommendation(site=site, ts_ms=ts_ms, current=current, recommended=recommended, ok=ok, action=action,
                            reason=reason, model_version="5f0c2a9e1b7d4c3a", saving_kw=saving_kw,
                            saving_pct=saving_pct, predicted_pue=1.21 if ok else None,
                            rack_inlet_c_hi=25.1 if ok else None).as_dict()
    record["confidence"] = 0.95
    return record


GA_CHANGE = ("change: raise fw_supply 33.0 → 34.0 °C; predicted facility power 57,080.0 kW, saving 120.0 kW "
             "(0.21 %); hottest rack inlet 24.6 °C, upper bound 25.1 °C ≤ 26.0 °C")
GA_KEEP = ("keep: the current setpoints are already the best found (no candidate within one step saves 0.05 % or "
           "more); hottest rack inlet 24.8 °C, upper bound 25.3 °C ≤ 26.0 °C")
GA_REFUSAL = ("no recommendation: conditions outside the training data: dry_bulb_c = 45 °C is outside the "
              "training range 21.29–35.61 °C")
GY_CHANGE = ("change: lower supply_air 23.0 → 22.5 °C, raise chw_supply 16.0 → 16.5 °C; predicted facility power "
             "10,412.3 kW, saving 31.4 kW (0.30 %); hottest rack inlet 24.9 °C, upper bound 25.6 °C ≤ 26.0 °C")
GY_REFUSAL = "no recommendation: the model's held-out error for cooling_kw is 12.4 % (limit 10.0 %)"
GA = {"supply_air": 24.0, "fw_supply": 33.0}  # a liquid-cooled campus
GY = {"supply_air": 23.0, "chw_supply": 16.0, "fw_supply": 34.0}  # a hybrid site
RECORDS = [
    _rec("ga-01", T - 2 * 86_400_000, GA, {**GA, "fw_supply": 34.0}, "change", GA_CHANGE, 120.0, 0.21),  # too early
    _rec("ga-01", T, GA, {**GA, "fw_supply": 34.0}, "change", GA_CHANGE, 120.0, 0.21),
    _rec("ga-01", T + QUARTER, GA, dict(GA), "keep", GA_KEEP, 0.0, 0.0),
    _rec("ga-01", T + 2 * QUARTER, GA, None, "none", GA_REFUSAL),
    # fw_supply is "moved" by float noise only: not a setpoint the recommendation changes
    _rec("gy-04", T, GY, {"supply_air": 22.5, "chw_supply": 16.5, "fw_supply": 34.000000000000004}, "change",
         GY_CHANGE, 31.4, 0.30),
    _rec("gy-04", T + 2 * QUARTER, GY, None, "none", GY_REFUSAL),
]


@pytest.fixture(scope="module")
def database(influxdb1) -> Iterator[str]:  # noqa: F811
    """A fresh InfluxDB 1.x database holding :data:`RECORDS`, written by ``InfluxSink.write_recommendations``."""
    db = unique_name("grafana")
    _post(influxdb1.url, f"CREATE DATABASE {db}")
    with InfluxV2Relay(influxdb1.url) as relay:
        settings = InfluxSettings(url=relay.url, token="reader:reader", org="-",
                                  bucket=f"{db}/autogen")  # the 1.x form of the bucket
        sink = InfluxSink(settings).setup()
        try:
            sink.write_recommendations(RECORDS)
        finally:
            sink.close()
    assert relay.requests == [("/api/v2/write", {"org": "-", "bucket": f"{db}/autogen", "precision": "ms"})]
    yield db


def _post(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode({"q": q, "epoch": "ms", **({"db": db} if db else {})}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=data, method="POST"), timeout=10) as r:
        result = json.loads(r.read())["results"][0]
    assert "error" not in result, result
    return result


def escape_regex(value: str) -> str:
    """Grafana's ``escapeRegex`` (@grafana/data), applied to a variable's value inside ``/…/``."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def interpolate(query: str, start_ms: int, end_ms: int, site: str | list[str] | None,
                interval: str = "15m") -> str:
    """``query`` as Grafana sends it for an absolute time range: ``site`` is one site, several, or None (All)."""
    if site is None:
        value = ".*"  # the variable's allValue
    elif isinstance(site, str):
        value = escape_regex(site)
    else:  # a multi-value variable inside a regex: (a|b)
        value = "(" + "|".join(escape_regex(s) for s in site) + ")"
    return (query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
            .replace("$__interval", interval).replace("$site", value))


def grafana_events(series: list[dict[str, Any]], target: dict[str, Any]) -> list[dict[str, Any]]:
    """Annotation events from an InfluxQL result, mapped as Grafana's InfluxDB datasource maps them.

    ``time`` → the marker, ``textColumn`` → text, each column named in ``tagsColumn`` (comma-separated) →
    its value as tags (a value holding commas gives several). Grafana's backend query path drops a row with a
    null in any selected column, so such a row fails here instead of vanishing.
    """
    tag_columns = target["tagsColumn"].replace(" ", "", 1).split(",")
    events = []
    for s in series:
        columns = s["columns"]
        for row in s["values"]:
            values = dict(zip(columns, row, strict=True))
            assert None not in row, f"a null in {values}: Grafana's backend path would drop this row"
            tags = [t for c in columns if c in tag_columns for t in str(values[c]).split(",")]
            events.append({"time": values["time"], "text": values[target["textColumn"]], "tags": tags})
    return sorted(events, key=lambda e: (e["time"], e["tags"]))


def run_annotation(influx_url: str, db: str, annotation: dict[str, Any], site: str | list[str] | None,
                   start_ms: int = T - 3_600_000, end_ms: int = T + 3_600_000) -> list[dict[str, Any]]:
    q = interpolate(annotation["target"]["query"], start_ms, end_ms, site)
    return grafana_events(_post(influx_url, q, db).get("series", []), annotation["target"])


@pytest.mark.integration
def test_recommendations_annotation_marks_each_advised_setpoint_move(influxdb1, database) -> None:  # noqa: F811
    change, _ = recommendation_annotations(DEFAULT_DATASOURCE_UID)
    # one site: its change at T, tagged with the setpoint it moves (supply_air stays: no marker); the keep at
    # T+15 min and the refusal are not in this annotation, the change two days earlier is outside the range
    assert run_annotation(influxdb1.url, database, change, "ga-01") == [
        {"time": T, "text": GA_CHANGE, "tags": ["ga-01", "facility_water", "fw_supply"]}]
    # gy-04 alone (a multi-value pick of one), and All: its two real moves, not the float-noise fw_supply
    gy = [{"time": T, "text": GY_CHANGE, "tags": ["gy-04", "air", "supply_air"]},
          {"time": T, "text": GY_CHANGE, "tags": ["gy-04", "chilled_water", "chw_supply"]}]
    assert run_annotation(influxdb1.url, database, change, ["gy-04"]) == gy
    everything = run_annotation(influxdb1.url, database, change, None)
    assert everything == sorted([*gy, {"time": T, "text": GA_CHANGE, "tags": ["ga-01", "facility_water", "fw_supply"]}],
                                key=lambda e: (e["time"], e["tags"]))
    # the text is plain words with the move and the predicted saving in kW and percent
    assert "raise fw_supply 33.0 → 34.0 °C" in everything[0]["text"] and "(0.21 %)" in everything[0]["text"]
    # the $timeFilter is what excludes the earlier change
    earlier = run_annotation(influxdb1.url, database, change, "ga-01", T - 3 * 86_400_000, T - 86_400_000)
    assert [e["time"] for e in earlier] == [T - 2 * 86_400_000]


@pytest.mark.integration
def test_refusals_annotation_shows_every_refusal_of_the_chosen_sites(influxdb1, database) -> None:  # noqa: F811
    _, refusal = recommendation_annotations(DEFAULT_DATASOURCE_UID)
    at = T + 2 * QUARTER
    # one marker per setpoint of the refused record, all at the same instant; gy-04's refusal filtered out
    assert run_annotation(influxdb1.url, database, refusal, "ga-01") == [
        {"time": at, "text": GA_REFUSAL, "tags": ["ga-01", "air", "supply_air"]},
        {"time": at, "text": GA_REFUSAL, "tags": ["ga-01", "facility_water", "fw_supply"]}]
    both = run_annotation(influxdb1.url, database, refusal, ["ga-01", "gy-04"])
    assert {e["tags"][0] for e in both} == {"ga-01", "gy-04"} and len(both) == 2 + 3
    assert all(e["text"].startswith("no recommendation:") for e in both)
    assert {e["text"] for e in both if e["tags"][0] == "gy-04"} == {GY_REFUSAL}


@pytest.mark.integration
def test_panel_and_variable_queries_read_the_records(influxdb1, database) -> None:  # noqa: F811
    sites = _post(influxdb1.url, SITE_QUERY, database)["series"][0]["values"]
    assert [v for _, v in sites] == ["ga-01", "gy-04"]

    q = interpolate(SETPOINT_QUERY, T - 3_600_000, T + 3_600_000, "ga-01")
    series = {(s["tags"]["site"], s["tags"]["setpoint"]): s for s in _post(influxdb1.url, q, database)["series"]}
    assert set(series) == {("ga-01", "fw_supply"), ("ga-01", "supply_air")}
    fw = {row[0]: dict(zip(series["ga-01", "fw_supply"]["columns"], row, strict=True))
          for row in series["ga-01", "fw_supply"]["values"]}
    assert (fw[T]["current"], fw[T]["recommended"]) == (33.0, 34.0)  # the advised move
    assert (fw[T + QUARTER]["current"], fw[T + QUARTER]["recommended"]) == (33.0, 33.0)  # keep
    assert (fw[T + 2 * QUARTER]["current"], fw[T + 2 * QUARTER]["recommended"]) == (33.0, None)  # refused

    q = interpolate(SAVING_QUERY, T - 3_600_000, T + 3_600_000, None)
    saving = {s["tags"]["site"]: s["values"] for s in _post(influxdb1.url, q, database)["series"]}
    assert saving == {"ga-01": [[T, 120.0], [T + QUARTER, 0.0]], "gy-04": [[T, 31.4]]}  # refusals left out
