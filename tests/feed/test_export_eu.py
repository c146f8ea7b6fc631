"""`dcpue feed export-eu`: the EU 2024/1364 report of every site from a store the engine filled."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from dcpue.cli import main
from tests.helpers.retirement import filled_store as retirement_store
from tests.helpers.retirement import fleet, simulated_windows, write_registry


@pytest.fixture
def config(tmp_path):
    retirement_store(tmp_path / "store.sqlite").close()
    path = tmp_path / "dcpue.yaml"
    path.write_text(yaml.safe_dump({"registry": str(write_registry(tmp_path / "sites.yaml")),
                                    "store": {"path": str(tmp_path / "store.sqlite")}}), encoding="utf-8")
    return path


def test_export_eu_reports_the_stored_year_of_every_site(tmp_path, config, capsys):
    site = fleet().sites[0]
    info = tmp_path / "operator.yaml"
    info.write_text(yaml.safe_dump({site.id: {"total_floor_area_m2": 12_000.0, "data_centre_type": "enterprise"}}),
                    encoding="utf-8")
    assert main(["feed", "export-eu", "--year", "2024", "--config", str(config), "--operator-info", str(info)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert len(reports) == len(fleet().sites)
    by_key = {i["indicator"]: i for i in reports[0]["indicators"]}
    # the store holds 2024-11-01 … 2024-12-31 of 2024: energy-weighted over those ok days, coverage stated
    w = simulated_windows()
    days = w[(w["scope"] == "site") & (w["id"] == site.id) & (w["window"] == "1d") & (w["status"] == "ok")
             & (w["start_ms"] < 1735660800000)]
    assert by_key["pue"]["value"] == pytest.approx(days["total_kwh"].sum() / days["it_kwh"].sum(), rel=1e-12)
    assert by_key["coverage"]["value"] == pytest.approx(len(days) * 24 / (366 * 24))
    assert by_key["complete"]["value"] is False
    assert by_key["total_floor_area_m2"]["value"] == 12_000.0 and by_key["total_floor_area_m2"]["source"] == "operator"
    assert by_key["computer_room_floor_area_m2"]["value"] is None
    assert main(["feed", "export-eu", "--year", "2024", "--config", str(config), "--format", "csv",
                 "--site", site.id, "--site", fleet().sites[1].id]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["site_id"] for r in rows} == {site.id, fleet().sites[1].id}
    assert len(rows) == 2 * len(reports[0]["indicators"])


def test_export_eu_refuses_unknown_sites_and_operator_keys(tmp_path, config, capsys):
    assert main(["feed", "export-eu", "--year", "2024", "--config", str(config), "--site", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    info = tmp_path / "operator.yaml"
    info.write_text(yaml.safe_dump({fleet().sites[0].id: {"floor_space": 1}}), encoding="utf-8")
    assert main(["feed", "export-eu", "--year", "2024", "--config", str(config), "--operator-info", str(info)]) == 2
    err = capsys.readouterr().err
    assert "operator.yaml" in err and "floor_space" in err
