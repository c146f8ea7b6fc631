"""`dcpue cooling train|recommend` end to end: a simulated site's readings export with commissioning step
tests → a saved model → a recommendation, a refusal out of distribution and an hourly schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.registry import Registry, dump_registry

SITE = "xy-03"  # enterprise: supply-air, chilled-water and condenser-water setpoints
START_MS = 1_751_328_000_000  # 2025-07-01T00:00Z
HOUR = 3_600_000


def dcpue(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcpue.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Two weeks of one site at 5-min samples, setpoints stepped every 4 h within a safe range."""
    fleet = generate_fleet(4, seed=7)
    registry = Registry(clusters=fleet.clusters, sites=tuple(s for s in fleet.sites if s.id == SITE))
    folder = tmp_path_factory.mktemp("cooling")
    sites = folder / "sites.yaml"
    sites.write_text(dump_registry(registry), encoding="utf-8")
    sim = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=300, faults=False)
    sim.setup()
    rng = np.random.default_rng(3)
    frames = []
    for step in range(14 * 6):
        sim.set_setpoints(SITE, supply_air=float(rng.choice([20, 21, 22, 23, 24])),
                          chw_supply=float(rng.choice([12, 14, 16, 18])))
        frames += [frame for _, frame in sim.poll(START_MS + (step + 1) * 4 * HOUR)]
    readings = pd.concat(frames, ignore_index=True)
    export = folder / "history.csv"
    readings.rename(columns={"ts": "timestamp"})[["timestamp", "site", "point", "value", "quality"]].to_csv(
        export, index=False)
    truth = sim.true_state(np.arange(START_MS, START_MS + 14 * 24 * HOUR, HOUR))
    return export, sites, truth


def test_train_then_recommend_then_refuse_out_of_distribution(history, tmp_path: Path):
    export, sites, truth = history
    models = tmp_path / "models"
    # the history held the condenser water at the simulator's 18 °C: a model of it cannot be learned
    no_cw = dcpue("cooling", "train", "--site", SITE, "--input", str(export), "--registry", str(sites),
              "--models", str(models))
    assert no_cw.returncode != 0 and "setpoint cw_supply never varied" in no_cw.stderr, no_cw.stderr
    assert "--setpoints" in no_cw.stderr and not models.exists()
    trained = dcpue("cooling", "train", "--site", SITE, "--input", str(export), "--registry", str(sites),
                    "--models", str(models), "--setpoints", "supply_air,chw_supply")
    assert trained.returncode == 0, trained.stderr
    meta = json.loads(next(models.glob(f"cooling-{SITE}-*.json")).read_text(encoding="utf-8"))
    assert meta["setpoints"] == ["supply_air", "chw_supply"]
    assert "held-out" in trained.stdout and len(list(models.glob(f"cooling-{SITE}-*.joblib"))) == 1

    row = truth.iloc[len(truth) // 2]
    conditions = [f"it_kw={row['it_kw']:.1f}", f"dry_bulb_c={row['dry_bulb_c']:.1f}",
                  f"wet_bulb_c={row['wet_bulb_c']:.1f}", f"rh_pct={row['rh_pct']:.0f}"]
    advised = dcpue("cooling", "recommend", "--model", str(models), "--site", SITE, "--conditions", *conditions,
                    "--current", "supply_air=21", "chw_supply=14")
    record = json.loads(advised.stdout)
    assert record["site"] == SITE and record["model_version"], record
    assert advised.returncode == (0 if record["ok"] else 3)
    if record["ok"]:  # within one step of the current setpoints and predicted inside the inlet limit
        assert abs(record["recommended"]["supply_air"] - 21) <= 1.0 + 1e-9
        assert abs(record["recommended"]["chw_supply"] - 14) <= 1.0 + 1e-9
        assert record["rack_inlet_c_hi"] <= 27.0 - 1.0 + 1e-9

    # the hottest inlet measured 3 K above what the model expects: the advice is held to it
    hot = float(record["rack_inlet_c"]) + 3.0
    held = dcpue("cooling", "recommend", "--model", str(models), "--site", SITE, "--conditions", *conditions,
                 "--current", "supply_air=21", "chw_supply=14", "--measured", f"rack_inlet_c={hot:.2f}")
    tightened = json.loads(held.stdout)
    if tightened["ok"]:
        assert f"held to the measured hottest rack inlet {hot:.1f} °C" in tightened["reason"], tightened["reason"]
        assert tightened["rack_inlet_c_hi"] <= tightened["limits"]["inlet_limit_c"] + 1e-9
    else:  # too hot for any step: the way back goes cooler
        assert tightened["toward_safety"]["supply_air"] <= 21 and tightened["toward_safety"]["chw_supply"] <= 14
    bad = dcpue("cooling", "recommend", "--model", str(models), "--site", SITE, "--conditions", *conditions,
                "--current", "supply_air=21", "chw_supply=14", "--measured", "return_air_c=30")
    assert bad.returncode != 0 and "--measured: unknown outcome 'return_air_c'" in bad.stderr

    refused = dcpue("cooling", "recommend", "--model", str(models), "--site", SITE, "--conditions",
                    f"it_kw={row['it_kw'] * 3:.1f}", "dry_bulb_c=45", "wet_bulb_c=30", "rh_pct=40",
                    "--current", "supply_air=21", "chw_supply=14")
    assert refused.returncode == 3
    out = json.loads(refused.stdout)
    assert not out["ok"] and out["recommended"] is None and out["reason"].startswith("no recommendation")

    hourly = truth.iloc[:24][["ts", "dry_bulb_c", "wet_bulb_c", "rh_pct", "it_kw"]]
    table = tmp_path / "day.csv"
    hourly.to_csv(table, index=False)
    plan_file = tmp_path / "plan.csv"
    planned = dcpue("cooling", "recommend", "--model", str(models), "--site", SITE, "--hourly", str(table),
                    "--current", "supply_air=21", "chw_supply=14", "--output", str(plan_file))
    assert planned.returncode == 0, planned.stderr
    plan = pd.read_csv(plan_file)
    assert len(plan) == 24 and {"sp_supply_air", "sp_chw_supply", "ok", "reason"} <= set(plan.columns)
    assert (plan["sp_supply_air"].diff().abs().fillna(0) <= 1.0 + 1e-9).all()  # max step between hours


def test_train_refuses_a_history_without_setpoint_changes(tmp_path: Path):
    table = pd.DataFrame({"ts": np.arange(2000) * 900_000, "it_kw": 100 + np.arange(2000) % 7,
                          "dry_bulb_c": 20.0 + np.arange(2000) % 5, "wet_bulb_c": 15.0, "rh_pct": 60.0,
                          "sp_supply_air": 22.0, "cooling_kw": 30.0, "facility_kw": 140.0, "rack_inlet_c": 25.0})
    path = tmp_path / "flat.csv"
    table.to_csv(path, index=False)
    refused = dcpue("cooling", "train", "--site", "flat-01", "--input", str(path), "--models", str(tmp_path / "m"))
    assert refused.returncode != 0
    assert "supply_air" in refused.stderr and not (tmp_path / "m").exists()


def test_evaluate_passes_its_options_to_the_evaluation(monkeypatch: pytest.MonkeyPatch):
    from dcpue import cli
    from dcpue.runtime import cooling_eval

    seen: list[list[str]] = []
    monkeypatch.setattr(cooling_eval, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["cooling", "evaluate", "--quick", "--step-hours", "2", "--no-feedback", "--inlet-margin", "0.5",
                     "--seasons", "oct", "--draw", "1"]) == 0
    config = cooling_eval.config_from_args(cooling_eval.build_parser().parse_args(seen[0]))
    assert (config.explore_block_h, config.feedback, config.inlet_margin_k, config.seasons, config.draw) == (
        2, False, 0.5, ("oct",), 1)
    assert config.site_types == ("enterprise",)
