"""The generated dashboards are valid Grafana dashboard models, laid out and wired as documented, and
``dcpue dashboards push`` creates then updates them idempotently through grafana-client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dcpue.cli import main
from dcpue.dashboards.build import DASHBOARDS, dashboards
from dcpue.dashboards.common import DEFAULT_DATASOURCE_UID, PUE_STEPS, TARGET_PUE
from dcpue.dashboards.push import FOLDER_UID, datasource_model
from tests.peers.grafana import grafana_api

ROOT = Path(__file__).resolve().parents[2]


def _all() -> list[dict]:
    return list(dashboards().values())


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_dashboard_is_a_valid_grafana_model(name: str) -> None:
    data = dashboards()[name]
    # the SDK's own types read it back field by field: what it emits for each panel matches what it read
    parsed = model.Dashboard.from_json(json.loads(json.dumps(data)))
    again = json.loads(json.dumps(parsed, cls=JSONEncoder))
    assert again["uid"] == data["uid"] and again["title"] == data["title"]
    assert [p["type"] for p in again["panels"]] == [p["type"] for p in data["panels"]]
    assert [p["gridPos"] for p in again["panels"]] == [p["gridPos"] for p in data["panels"]]
    assert [v["name"] for v in again["templating"]["list"]] == [v["name"] for v in data["templating"]["list"]]
    assert data["editable"] is False and "dcpue" in data["tags"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_are_laid_out_without_overlap_and_read_the_provisioned_datasource(name: str) -> None:
    data = dashboards()[name]
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in data["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    for p in data["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["title"] and p.get("description"), "every panel says what it shows"
        assert p["datasource"] == {"type": "influxdb", "uid": DEFAULT_DATASOURCE_UID}
        assert p["targets"] and all(t["datasource"] == p["datasource"] and t["rawQuery"] for t in p["targets"])
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["query"])) - {"timeFilter", "__interval", "tag_site", "col"}
            assert used <= {v["name"] for v in data["templating"]["list"]}, (p["title"], used)
            assert "$timeFilter" in t["query"], f"{p['title']}: every query follows the dashboard's time range"
            if 'FROM "pue"' in t["query"] and "status" not in t["query"] and "coverage" not in t["query"]:
                pytest.fail(f"{p['title']}: a figure from pue without status = 'ok' (docs/influxdb.md)")


def test_pue_colours_follow_the_target_and_gb_40879_grades() -> None:
    assert PUE_STEPS[1] == (TARGET_PUE, "yellow") and [v for v, _ in PUE_STEPS[1:]] == [1.2, 1.3, 1.5]
    fleet = dashboards()["dcpue-fleet.json"]
    (geo,) = [p for p in fleet["panels"] if p["type"] == "geomap"]
    steps = geo["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (1.2, "yellow"), (1.3, "orange"),
                                                          (1.5, "red")]
    assert geo["options"]["layers"][0]["location"] == {"mode": "coords", "latitude": "latitude",
                                                       "longitude": "longitude"}
    assert [v["name"] for v in fleet["templating"]["list"]] == ["city", "cluster", "site"]
    site = dashboards()["dcpue-site.json"]
    assert [v["multi"] for v in site["templating"]["list"]] == [True, True, False]  # one site at a time


def test_the_checked_in_files_are_generated_and_the_cli_checks_them(tmp_path: Path, capsys) -> None:
    provisioned = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
    assert main(["dashboards", "build", "--check", "--dir", str(provisioned)]) == 0
    assert main(["dashboards", "build", "--check", "--dir", str(tmp_path)]) == 1
    assert main(["dashboards", "build", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(DASHBOARDS)


def test_push_creates_then_leaves_alone_then_updates(tmp_path: Path, capsys, monkeypatch) -> None:
    with grafana_api(token="glsa_secret") as (url, grafana):
        token = tmp_path / "token"
        token.write_text("glsa_secret\n")
        args = ["dashboards", "push", "--url", url, "--token-file", str(token), "--influx-url",
                "http://influxdb:8086", "--database", "dcpue"]
        assert main(args) == 0
        first = capsys.readouterr().out
        assert f"created: folder {FOLDER_UID}, datasource {DEFAULT_DATASOURCE_UID}, dashboard dcpue-fleet" in first
        assert set(grafana.dashboards) == {d["uid"] for d in _all()}
        assert all(e["folderUid"] == FOLDER_UID for e in grafana.dashboards.values())
        assert grafana.datasources[DEFAULT_DATASOURCE_UID]["jsonData"]["version"] == "InfluxQL"
        # the same push again changes nothing
        assert main(args) == 0
        second = capsys.readouterr().out
        assert "created" not in second and "updated" not in second and "unchanged: folder dcpue" in second
        assert {e["version"] for e in grafana.dashboards.values()} == {1}
        # someone edited a dashboard in Grafana: the push puts the code's version back
        grafana.dashboards["dcpue-site"]["dashboard"]["title"] = "edited by hand"
        grafana.datasources[DEFAULT_DATASOURCE_UID]["url"] = "http://elsewhere:8086"
        assert main(args) == 0
        third = capsys.readouterr().out
        assert f"updated: datasource {DEFAULT_DATASOURCE_UID}, dashboard dcpue-site" in third
        assert grafana.dashboards["dcpue-site"]["dashboard"]["title"] == "dcpue site"
        assert grafana.dashboards["dcpue-site"]["version"] == 2
        # a wrong token is refused with Grafana's answer, exit 1
        token.write_text("wrong\n")
        assert main(args) == 1
        assert "answered 401" in capsys.readouterr().err
    monkeypatch.delenv("DCPUE_GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", url]) == 2  # no token at all: configuration error


def test_datasource_token_goes_in_a_secure_header_only() -> None:
    ds = datasource_model("https://influx:8086", "dcpue", "s3cret")
    assert ds["secureJsonData"] == {"httpHeaderValue1": "Token s3cret"}
    assert "s3cret" not in json.dumps({k: v for k, v in ds.items() if k != "secureJsonData"})
    assert "secureJsonData" not in datasource_model("http://influx:8086", "dcpue", None)
