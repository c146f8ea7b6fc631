"""The ``retirement`` measurement: its line protocol, and the queries of docs/influxdb.md that a Grafana table
runs, on a real InfluxDB 1.6 after ``dcpue retire --influx`` wrote two days' assessments through
``InfluxSink.write_retirement``. InfluxDB 1.6 has no v2 write API (1.8+ has), so the sink writes to a small relay
on 127.0.0.1 that hands the request body, unchanged, to 1.6's ``/write``."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dcpue.adapters.lineprotocol import retirement_to_lines
from dcpue.analytics.retirement import CRITERIA
from dcpue.cli import main
from dcpue.registry import parse_registry
from dcpue.runtime.retirement import assess_store
from dcpue.settings import RetirementSettings
from tests.helpers.retirement import AS_OF_MS, TZ, filled_store, fleet, simulated_windows, write_registry
from tests.servers import InfluxV2Relay, influxdb1, unique_name  # noqa: F401

DOCS = Path(__file__).resolve().parents[2] / "docs" / "influxdb.md"
NAME = 'Tongren "Legacy" Room, 铜仁 \\ 02'
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def assessment(tmp_path_factory):
    """tr-02 renamed with quotes, a comma and a backslash; xy-03 without any stored window."""
    raw = fleet().model_dump(mode="json")
    raw["sites"][1]["name"] = NAME
    windows = simulated_windows()
    store = filled_store(tmp_path_factory.mktemp("lp") / "s.sqlite", windows[windows["id"] != "xy-03"])
    settings = RetirementSettings.model_validate({"criteria": {"min_pue_months": 2}})
    result = assess_store(store, parse_registry(raw), settings, tz=TZ, price_cny_per_kwh=0.5)
    store.close()
    return result


def test_one_point_per_site_with_tags_site_verdict_cluster(assessment):
    sites = assessment.assessment.sites.set_index("site")
    lines = retirement_to_lines(assessment, AS_OF_MS)
    assert len(lines) == 4 and all(line.endswith(f" {AS_OF_MS}") for line in lines)
    by_site = {re.match(r"retirement,site=([^,]+)", line).group(1): line for line in lines}
    for site_id, line in by_site.items():
        cluster = ",cluster=gui-an" if site_id == "ga-01" else ""  # no hub cluster: no tag
        assert line.startswith(f"retirement,site={site_id},verdict={sites.loc[site_id, 'verdict']}{cluster} ")
        assert f"criteria_met={sites.loc[site_id, 'criteria_met']}i," in line
        assert f"score={float(sites.loc[site_id, 'score'])}," in line
        for c in CRITERIA:
            assert f'{c}="{sites.loc[site_id, c]}"' in line and f"{c}_evidence=" in line
    assert 'site_name="Tongren \\"Legacy\\" Room, 铜仁 \\\\ 02"' in by_site["tr-02"]
    assert "annual_pue=" not in by_site["xy-03"] and "it_kw_mean=" not in by_site["xy-03"]  # unknown: left out
    assert 'inefficient="unknown"' in by_site["xy-03"]
    assert set(assessment.assessment.plan["site"]) == {"tr-02", "xy-03"}  # xy-03 cannot be sized: not placed
    for site_id, line in by_site.items():
        assert ('destination="gui-an"' in line) == (site_id == "tr-02")
        assert ("saved_kwh_year=" in line) == (site_id == "tr-02")
        assert ("plan_note=" in line) == (site_id in ("tr-02", "xy-03"))
    assert 'plan_note="mean IT load unknown: the move cannot be sized"' in by_site["xy-03"]
    assert retirement_to_lines(assessment.assessment, AS_OF_MS) == lines  # a bare Assessment too


# --- InfluxDB 1.6 ------------------------------------------------------------------------------------------


@pytest.fixture
def relay(influxdb1) -> Iterator[InfluxV2Relay]:  # noqa: F811
    with InfluxV2Relay(influxdb1.url) as server:
        yield server


def query(url: str, db: str, q: str) -> list[dict]:
    data = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=data, method="POST"), timeout=10) as r:
        result = json.loads(r.read())["results"][0]
    assert "error" not in result, result
    return result.get("series", [])


def documented_queries() -> list[str]:
    section = DOCS.read_text(encoding="utf-8").split("## `retirement`", 1)[1].split("\n## ", 1)[0]
    return [" ".join(line for line in block.splitlines() if not line.startswith("--"))
            for block in re.findall(r"```influxql\n(.*?)```", section, flags=re.S)]


@pytest.mark.integration
def test_grafana_table_queries_read_what_dcpue_retire_wrote(influxdb1, relay, tmp_path, monkeypatch):  # noqa: F811
    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    db = unique_name("retire")
    query(influxdb1.url, "", f"CREATE DATABASE {db}")
    filled_store(tmp_path / "store.sqlite").close()
    registry = write_registry(tmp_path / "sites.yaml")
    influx = {"influxdb": {"token": "reader:reader", "org": "-", "bucket": f"{db}/autogen"}}
    yesterday, today = tmp_path / "a.yaml", tmp_path / "b.yaml"
    yesterday.write_text(yaml.safe_dump({"store": influx}), encoding="utf-8")  # default thresholds
    today.write_text(yaml.safe_dump({"store": influx, "retirement": {
        "criteria": {"min_pue_months": 2, "inefficient_above_pue": 1.13}}}), encoding="utf-8")
    url = relay.url
    common = ["retire", "--registry", str(registry), "--store", str(tmp_path / "store.sqlite"), "--price", "0.5",
              "--format", "json", "--influx", url]
    assert main([*common, "--config", str(yesterday), "--as-of", "2025-01-31"]) == 0
    for _ in range(2):  # the same assessment written twice overwrites its points
        assert main([*common, "--config", str(today), "--output", str(tmp_path / "today.json")]) == 0
    assert len(relay.bodies) == 3
    expected = json.loads((tmp_path / "today.json").read_text(encoding="utf-8"))
    sites = {s["site"]: s for s in expected["sites"]}
    raw = query(influxdb1.url, db, "SELECT count(score) FROM retirement")[0]["values"][0][1]
    assert raw == 8  # two days × four sites

    queries = documented_queries()
    assert len(queries) == 3 and all("FROM retirement" in q for q in queries)
    now = "'" + pd.Timestamp(AS_OF_MS + 3_600_000, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ") + "'"
    table, counts, savings = (query(influxdb1.url, db, q.replace("now()", now)) for q in queries)

    # the table: one row per site, the newest assessment's values (the verdicts of gy-04 and tr-02 changed)
    rows = {s["tags"]["site"]: dict(zip(s["columns"], s["values"][0], strict=True)) for s in table}
    assert set(rows) == set(sites) and all(len(s["values"]) == 1 for s in table)
    for site_id, row in rows.items():
        assert row["time"] == AS_OF_MS
        for column in ("verdict", "score", "criteria_met", "criteria_unknown", "verdict_reason",
                       "inefficient_evidence"):
            assert row[column] == sites[site_id][column], (site_id, column)
        assert row["annual_pue"] == pytest.approx(sites[site_id]["annual_pue"])
        assert row["site_name"] == sites[site_id]["name"]
        assert row["cluster"] == sites[site_id]["cluster"]  # tag: null where the site has no hub cluster
    assert rows["gy-04"]["verdict"] == "upgrade" and rows["xy-03"]["verdict"] == "consolidate"
    assert rows["tr-02"]["saved_kwh_year"] == pytest.approx(expected["totals"]["saved_kwh_year"] -
                                                          rows["xy-03"]["saved_kwh_year"])

    # sites per verdict, and the fleet's savings, over the newest day's snapshot
    per_verdict = {s["tags"]["verdict"]: s["values"][0][1] for s in counts}
    assert per_verdict == {"retire": 1, "consolidate": 1, "upgrade": 1, "keep": 1}
    (fleet_row,) = savings
    got = dict(zip(fleet_row["columns"], fleet_row["values"][0], strict=True))
    assert got["saved_kwh_year"] == pytest.approx(expected["totals"]["saved_kwh_year"])
    assert got["saved_tco2_year"] == pytest.approx(expected["totals"]["saved_tco2_year"])
    assert got["saved_cost_cny_year"] == pytest.approx(expected["totals"]["saved_kwh_year"] * 0.5)
