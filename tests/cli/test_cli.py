"""The dcpue command as an operator runs it: batch PUE from an export, and clear errors with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.factories import T0, counter_series, power_series, simple_site

DCPUE = [sys.executable, "-m", "dcpue.cli"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    full_env.update(env or {})
    return subprocess.run([*DCPUE, *args], capture_output=True, text=True, timeout=120, env=full_env, cwd=cwd)


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, Path]:
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [simple_site("a")]}), encoding="utf-8")
    readings = pd.concat([counter_series("a", "facility.main", 150, 120), power_series("a", "it.ups", 100, 120,
                                                                                         step_min=5)])
    frame = pd.DataFrame({
        # local time without offset, as BMS exports usually are (taken in Asia/Shanghai)
        "timestamp": pd.to_datetime(readings["ts"], unit="ms", utc=True).dt.tz_convert("Asia/Shanghai")
        .dt.strftime("%Y-%m-%d %H:%M:%S"),
        "site": readings["site"], "point": readings["point"], "value": readings["value"],
    })
    bad = pd.DataFrame({"timestamp": ["yesterday", "2025-01-06 00:30:00"], "site": ["a", "a"],
                        "point": ["it.ups", "it.nowhere"], "value": ["1", "2"]})
    path = tmp_path / "export.csv"
    pd.concat([frame, bad]).to_csv(path, index=False)
    return path, sites


def test_batch_pue_from_a_csv_export(export, tmp_path):
    path, sites = export
    result = run("pue", str(path), "--sites", str(sites), "--window", "1h", "--format", "json",
                 "--rejects", str(tmp_path / "rejects.csv"), "--chart", str(tmp_path / "pue.png"))
    assert result.returncode == 0, result.stderr
    rows = [r for r in json.loads(result.stdout) if r["scope"] == "site"]
    assert [r["start_ms"] for r in rows] == [T0, T0 + 3_600_000]
    # 5-minute IT samples are integrated (gap limit follows the export's sampling interval)
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["pue"] == pytest.approx(1.5)
    assert "2 row(s)" in result.stderr
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects["reason"].tolist() == ["timestamp is not ISO-8601 or epoch milliseconds",
                                          "unknown point for this site"]
    png = (tmp_path / "pue.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_batch_pue_table_and_csv_formats(export):
    path, sites = export
    table = run("pue", str(path), "--sites", str(sites), "--window", "1h")
    assert table.returncode == 0
    assert "1.500" in table.stdout and "fleet" in table.stdout
    csv = run("pue", str(path), "--sites", str(sites), "--window", "1d", "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("scope,id,window,start,status")


def test_bad_registry_exits_non_zero_naming_file_site_and_point(tmp_path, export):
    path, _ = export
    doc = {"sites": [simple_site("a")]}
    doc["sites"][0]["points"][1]["unit"] = "kWh"
    sites = tmp_path / "broken.yaml"
    sites.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = run("pue", str(path), "--sites", str(sites))
    assert result.returncode == 2
    assert f"{sites}: site 'a' point 'it.ups'" in result.stderr
    assert "does not fit quantity 'power'" in result.stderr
    check = run("registry", "check", str(sites))
    assert check.returncode == 2 and "it.ups" in check.stderr


def test_bad_config_exits_non_zero_before_anything_starts(tmp_path):
    config = tmp_path / "dcpue.yaml"
    config.write_text("http:\n  port: 99999\n")
    result = run("demo", "--config", str(config), "--duration", "1")
    assert result.returncode == 2
    assert f"{config}" in result.stderr and "http.port" in result.stderr
    assert "live page" not in result.stdout  # nothing was started
    env_result = run("demo", "--duration", "1", env={"DCPUE_ENGINE__COVERAGE_THRESHOLD": "2"})
    assert env_result.returncode == 2 and "engine.coverage_threshold" in env_result.stderr


def test_batch_pue_reads_parquet_too(export, tmp_path):
    path, sites = export
    frame = pd.read_csv(path)
    frame = frame[frame["timestamp"] != "yesterday"]
    parquet = tmp_path / "export.parquet"
    frame.to_parquet(parquet)
    result = run("pue", str(parquet), "--sites", str(sites), "--window", "1h", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = [r for r in json.loads(result.stdout) if r["scope"] == "site"]
    assert rows[0]["pue"] == pytest.approx(1.5)


def test_demo_refuses_to_clear_a_store_it_did_not_write(tmp_path):
    from dcpue.results import conform_windows
    from dcpue.runtime.store import FileStore

    store_path = tmp_path / "production.sqlite"
    store = FileStore(store_path).setup()
    store.write_windows(conform_windows(pd.DataFrame({"scope": ["site"], "id": ["a"], "window": ["1m"],
                                                      "start_ms": [T0], "pue": [1.3]})))
    store.close()
    result = run("demo", "--store", str(store_path), "--duration", "1", "--port", "0")
    assert result.returncode == 2
    assert "not written by `dcpue demo`" in result.stderr
    reopened = FileStore(store_path).setup()
    assert len(reopened.query_windows("site", "1m")) == 1  # untouched
    reopened.close()


def test_bad_timestamps_in_an_export_are_rejected_with_reasons(tmp_path):
    from dcpue.runtime.files import read_readings_file
    from tests.factories import registry

    path = tmp_path / "x.csv"
    pd.DataFrame({"timestamp": ["1736092800", "inf", "1899-01-01T00:00:00Z", "2025-01-06T00:00:00+08:00"],
                  "site": "a", "point": "it.ups", "value": 1.0}).to_csv(path, index=False)
    frame, rejects = read_readings_file(path, registry(simple_site("a")))
    assert rejects["reason"].tolist() == ["timestamp looks like epoch seconds; expected milliseconds",
                                          "timestamp is not ISO-8601 or epoch milliseconds",
                                          "timestamp is outside 2000-01-01..2100-01-01"]
    assert frame["ts"].tolist() == [T0]


def test_unknown_timezone_is_a_configuration_error(export):
    path, sites = export
    result = run("pue", str(path), "--sites", str(sites), "--tz", "Asia/Shangai")
    assert result.returncode == 2
    assert "engine.timezone" in result.stderr and "unknown timezone 'Asia/Shangai'" in result.stderr


def test_serve_on_a_public_address_without_api_tokens_is_refused_before_connecting(tmp_path):
    # nothing listens on port 1: the refusal must come from the settings, not from a Kafka timeout
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    args = [sys.executable, "-m", "dcpue.cli", "serve", "--kafka", "127.0.0.1:1", "--host", "0.0.0.0",
            "--store", str(tmp_path / "view.sqlite"), "--duration", "1"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "http" in refused.stderr and "http.tokens" in refused.stderr
    assert not (tmp_path / "view.sqlite").exists()


def test_a_dcpue_process_collects_garbage_at_the_configured_threshold(monkeypatch):
    """`gc_gen0_threshold` (default 50,000) replaces Python's 700 for the young generation; 0 keeps Python's."""
    import gc

    from dcpue.cli import configure_gc
    from dcpue.settings import load_settings

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, before[1], before[2])
        configure_gc(load_settings(None))
        assert gc.get_threshold() == (50_000, before[1], before[2])
        monkeypatch.setenv("DCPUE_GC_GEN0_THRESHOLD", "20000")
        configure_gc(load_settings(None))
        assert gc.get_threshold()[0] == 20_000
        gc.set_threshold(700, before[1], before[2])
        configure_gc(load_settings(None, gc_gen0_threshold=0))
        assert gc.get_threshold()[0] == 700
    finally:
        gc.set_threshold(*before)


def test_dcpue_commands_apply_the_gc_threshold(export):
    """A command configures its process from its settings: here `dcpue pue`, in a child process."""
    path, sites = export
    code = ("import gc, sys\nfrom dcpue.cli import main\n"
            "rc = main(['pue', sys.argv[1], '--sites', sys.argv[2], '--format', 'csv'])\n"
            "print('threshold', gc.get_threshold()[0])\nsys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")} | {"DCPUE_GC_GEN0_THRESHOLD": "12345"}
    done = subprocess.run([sys.executable, "-c", code, str(path), str(sites)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "threshold 12345"
