"""``dcpue retire`` as an operator runs it: a registry, a result store filled with the PUE engine's windows of
simulator readings, a settings file; every format and file output, and configuration errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
import yaml

from dcpue.analytics.retirement import SITE_COLUMNS
from dcpue.cli import main
from tests.helpers.retirement import filled_store, write_registry

CONFIG = {"engine": {"timezone": "Asia/Shanghai"},
          "retirement": {"criteria": {"min_pue_months": 2, "inefficient_above_pue": 1.13},
                         "economics": {"electricity_price_cny_per_kwh": 0.4}}}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Read-only for the tests: they write their outputs under their own tmp_path."""
    tmp_path = tmp_path_factory.mktemp("retire")
    filled_store(tmp_path / "store.sqlite").close()
    config = tmp_path / "dcpue.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return {"dir": tmp_path, "store": tmp_path / "store.sqlite", "registry": write_registry(tmp_path / "sites.yaml"),
            "config": config}


def retire(setup: dict[str, Path], *args: str, config: Path | None = None) -> list[str]:
    return ["retire", "--registry", str(setup["registry"]), "--store", str(setup["store"]),
            "--config", str(config or setup["config"]), *args]


def test_table_shows_every_site_the_plan_and_the_totals(setup, capsys):
    assert main(retire(setup)) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:6]}
    assert rows == {"ga-01": "keep", "tr-02": "retire", "xy-03": "consolidate", "gy-04": "upgrade"}
    assert "Consolidation plan" in out and "1.80 → 1.13" in out
    assert "Totals: 4 sites: 1 retire, 1 consolidate, 1 upgrade, 1 keep" in out
    assert "2024-02-01 … 2025-02-01 (Asia/Shanghai)" in out  # 12 months to the newest closed day


def test_json_is_the_assessment_with_its_period_and_the_price_option_wins(setup, capsys):
    assert main(retire(setup, "--format", "json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["period"]["as_of"] == "2025-02-01T00:00:00+08:00"
    assert data["criteria"]["inefficient_above_pue"] == 1.13  # from the settings file
    plan = {p["site"]: p for p in data["plan"]}
    assert plan["tr-02"]["saved_cost_cny_year"] == pytest.approx(plan["tr-02"]["saved_kwh_year"] * 0.4)
    assert main(retire(setup, "--format", "json", "--price", "0.6", "--as-of", "2025-01-01")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["period"]["as_of"] == "2025-01-01T00:00:00+08:00"
    plan = {p["site"]: p for p in data["plan"]}
    assert plan["tr-02"]["saved_cost_cny_year"] == pytest.approx(plan["tr-02"]["saved_kwh_year"] * 0.6)
    assert {s["site"]: s["verdict"] for s in data["sites"]}["tr-02"] == "retire"


def test_csv_html_and_xlsx_files(setup, capsys, tmp_path):
    out = tmp_path
    assert main(retire(setup, "--format", "csv", "--output", str(out / "sites.csv"), "--html", str(out / "r.html"),
                       "--xlsx", str(out / "r.xlsx"))) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4 sites (1 retire, 1 consolidate, 1 upgrade, 1 keep)" in captured.err
    table = pd.read_csv(out / "sites.csv")
    assert list(table.columns) == list(SITE_COLUMNS) and len(table) == 4
    page = (out / "r.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count('class="site-marker"') == 4
    assert openpyxl.load_workbook(out / "r.xlsx").sheetnames == ["Summary", "Sites", "Plan", "Clusters", "Criteria"]


def test_an_empty_store_gives_unknowns_not_a_failure(setup, capsys, tmp_path):
    empty = tmp_path / "empty.sqlite"
    filled_store(empty, pd.DataFrame()).close()
    argv = retire(setup, "--format", "json", "--as-of", "2025-02-01")
    argv[argv.index("--store") + 1] = str(empty)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "holds no ok site window" in captured.err
    sites = json.loads(captured.out)["sites"]
    assert all(s["annual_pue"] is None and s["inefficient"] == "unknown" for s in sites)


@pytest.mark.parametrize(("retirement", "field", "problem"), [
    ({"criteria": {"old_at_least_years": -1}}, "retirement.criteria.old_at_least_years", "greater than 0"),
    ({"criteria": {"old_years": 8}}, "retirement.criteria.old_years", "unknown setting"),
    ({"economics": {"electricity_price_cny_per_kwh": "cheap"}},
     "retirement.economics.electricity_price_cny_per_kwh", "valid number"),
    ({"occupancy_history": "guess"}, "retirement.occupancy_history", "'racks', 'power' or 'none'"),
    ({"months": 6}, "retirement.months", "fewer than criteria.occupancy_months (12)"),
    ({"clusters": {"nowhere": {"capacity_kw": 1000}}}, "retirement.clusters.nowhere", "unknown hub cluster"),
])
def test_bad_settings_exit_2_naming_the_file_and_the_field(setup, capsys, tmp_path, retirement, field, problem):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"retirement": retirement}), encoding="utf-8")
    assert main(retire(setup, config=config)) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and problem in err
    if "clusters" not in retirement:  # checked against the registry, after the file loaded
        assert str(config) in err


def test_bad_options_and_a_missing_store(setup, capsys, tmp_path):
    assert main(retire(setup, "--as-of", "soon")) == 2
    assert "--as-of 'soon': not a date" in capsys.readouterr().err
    assert main(retire(setup, "--as-of", "9999-12-31")) == 2  # a date pandas cannot hold: no traceback
    assert "--as-of '9999-12-31': not a date or time between 1677 and 2262" in capsys.readouterr().err
    assert main(retire(setup, "--price", "-1")) == 2
    assert "--price -1.0" in capsys.readouterr().err
    argv = retire(setup)
    argv[argv.index("--store") + 1] = str(tmp_path / "nothing.sqlite")
    assert main(argv) == 1
    assert "nothing.sqlite: no result store there" in capsys.readouterr().err
    assert not (tmp_path / "nothing.sqlite").exists()  # never created by looking
    assert main(retire(setup, "--influx", "http://127.0.0.1:9")) == 1  # nothing listens there
    assert "InfluxDB write of 4 points (request 1 of 1) to http://127.0.0.1:9 failed" in capsys.readouterr().err


def test_the_installed_command_and_the_environment(setup):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    env["DCPUE_RETIREMENT__CRITERIA__SMALL_BELOW_RACKS"] = "10"  # environment beats the file
    done = subprocess.run([sys.executable, "-m", "dcpue.cli", *retire(setup, "--format", "json")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sites = {s["site"]: s for s in json.loads(done.stdout)["sites"]}
    assert sites["tr-02"]["small"] == "not_met" and sites["tr-02"]["verdict"] != "retire"


def test_a_store_of_another_registry_is_pointed_out(setup, capsys, tmp_path):
    raw = yaml.safe_load(setup["registry"].read_text(encoding="utf-8"))
    raw["sites"] = [s for s in raw["sites"] if s["id"] != "xy-03"]
    registry = tmp_path / "three.yaml"
    registry.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    argv = retire(setup, "--format", "csv")
    argv[argv.index("--registry") + 1] = str(registry)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "holds figures of 1 site(s) the registry does not have (xy-03)" in captured.err
    assert "xy-03" not in captured.out and len(captured.out.splitlines()) == 1 + 3
