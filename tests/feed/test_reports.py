"""Feed reports: the engine's figures, the published schemas, the quality self-check, ids and site identity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from dcpue.analytics.feed import QualityRules, build_reports, csv_columns, flatten, json_schemas, report_id
from dcpue.errors import ConfigError
from dcpue.registry import credit_code_check_char, credit_code_problem, dump_registry, load_registry
from tests.helpers.feed import TZ, engine_windows, fleet, monthly_windows

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "docs" / "feed" / "v1"


def _sites():
    return {s.id: s for s in fleet().sites}


def _windows(window: str) -> pd.DataFrame:
    w = pd.concat([engine_windows(), monthly_windows()], ignore_index=True)
    return w[w["window"] == window].reset_index(drop=True)


def _published_validators():
    out = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        out[path.name.removesuffix(".schema.json")] = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return out


def _same(a, b) -> bool:
    return (a is None and (b is None or (isinstance(b, float) and math.isnan(b)))) or a == b


def test_published_schemas_are_the_generated_ones():
    published = {p.name.removesuffix(".schema.json"): json.loads(p.read_text(encoding="utf-8"))
                 for p in SCHEMA_DIR.glob("*.schema.json")}
    assert published == json_schemas(), "docs/feed/v1 drifted: regenerate with `dcpue feed schemas -o docs/feed/v1`"


@pytest.mark.parametrize("report_type,window,parts", [("realtime", "15m", None), ("hourly", "1h", None),
                                                      ("daily", "1d", "1h"), ("monthly", "1mo", "1d")])
def test_report_figures_are_the_engine_figures_and_valid_against_the_published_schema(report_type, window, parts):
    windows = _windows(window)
    generated = int(windows["end_ms"].max()) + 60_000
    reports = build_reports(report_type, windows, _sites(), tz=TZ, generated_ms=generated,
                            parts=_windows(parts) if parts else None)
    assert len(reports) == len(windows) > 0
    validator = _published_validators()[report_type]
    for report, row in zip(reports, windows.to_dict("records"), strict=True):
        validator.validate(report)
        json.dumps(report, allow_nan=False)  # no NaN anywhere
        f = report["figures"]
        assert report["status"] == row["status"] and report["final"] is True
        assert f["coverage"] == row["coverage"]
        if report_type == "realtime":
            for key in ("facility_kw", "it_kw", "pue", "facility_kwh", "it_kwh", "total_kwh"):
                assert _same(f[key], row[key]), key
        else:
            mapping = {"total": "total_kwh", "facility": "facility_kwh", "it": "it_kwh", "cooling": "cooling_kwh",
                       "renewable": "renewable_kwh", "reused_heat": "reused_kwh", "losses": "losses_kwh",
                       "lighting": "lighting_kwh"}
            for key, col in mapping.items():
                assert _same(f["energy_kwh"][key], row[col]), key
            for key in ("pue", "wue", "ref", "erf", "cue", "pue_gap"):
                assert _same(f[key], row[key]), key
            assert f["grade"] == row["grade"] and f["racks_in_service"] == row["racks_in_service"]
            assert f["occupancy_pct"] == pytest.approx(100 * row["occupancy"])
        site = fleet().sites[[s.id for s in fleet().sites].index(row["id"])]
        assert report["site"] == {"site_code": site.platform_site_code, "credit_code": site.operator_credit_code,
                                  "site_id": site.id, "name": site.name, "city": site.city}
        assert report["report_id"] == report_id(site.platform_site_code, report_type, row["start_ms"], TZ)
    ids = [r["report_id"] for r in reports]
    assert len(set(ids)) == len(ids)
    # the simulated windows are complete and the reports made a minute after the last one: all checks pass
    # for the newest period; older periods are honestly late
    newest = [r for r, e in zip(reports, windows["end_ms"], strict=True) if e == windows["end_ms"].max()]
    if report_type == "monthly":  # two days of July: incomplete, and its two days are all its energy
        checks = [{c["rule"]: c["passed"] for c in r["quality"]["checks"]} for r in reports]
        assert all(not c["completeness"] and not c["validity"] and c["consistency"] for c in checks)
        assert all(r["status"] == "incomplete" and r["figures"]["pue"] is None for r in reports)
    else:
        assert all(r["quality"]["passed"] for r in newest)


def test_daily_energy_is_consistent_with_its_hours_and_a_skewed_hour_fails_the_check():
    days, hours = _windows("1d"), _windows("1h")
    rules = QualityRules()
    ok = build_reports("daily", days, _sites(), tz=TZ, generated_ms=int(days["end_ms"].max()), parts=hours,
                       rules=rules)
    check = {r["report_id"]: next(c for c in r["quality"]["checks"] if c["rule"] == "consistency") for r in ok}
    assert all(c["passed"] and c["value"] < 1e-9 for c in check.values())
    # one hour of the first day of the first site reports 30 % more energy than the day contains
    first = days.iloc[0]
    skewed = hours.copy()
    inside = (skewed["id"] == first["id"]) & (skewed["start_ms"] >= first["start_ms"]) & (
        skewed["end_ms"] <= first["end_ms"])
    share = float(first["total_kwh"]) * 0.3
    idx = skewed.index[inside][5]
    skewed.loc[idx, "total_kwh"] += share
    bad = build_reports("daily", days.iloc[[0]], _sites(), tz=TZ, generated_ms=int(first["end_ms"]), parts=skewed)[0]
    c = next(c for c in bad["quality"]["checks"] if c["rule"] == "consistency")
    assert not c["passed"] and c["value"] == pytest.approx(0.3, rel=1e-9) and not bad["quality"]["passed"]
    # just within the 5 % tolerance passes, just beyond fails
    for deviation, passed in ((0.0499, True), (0.0501, False)):
        tweaked = hours.copy()
        tweaked.loc[idx, "total_kwh"] += float(first["total_kwh"]) * deviation
        r = build_reports("daily", days.iloc[[0]], _sites(), tz=TZ, generated_ms=int(first["end_ms"]),
                          parts=tweaked)[0]
        assert next(c for c in r["quality"]["checks"] if c["rule"] == "consistency")["passed"] is passed


def test_completeness_validity_and_timeliness_checks_on_their_documented_side():
    row = _windows("15m").iloc[[0]].copy()
    end = int(row["end_ms"].iloc[0])
    rules = QualityRules(min_coverage=0.9, on_time_s={"realtime": 900.0})

    def checks(frame, generated):
        r = build_reports("realtime", frame, _sites(), tz=TZ, generated_ms=generated, rules=rules)[0]
        return {c["rule"]: c for c in r["quality"]["checks"]}, r

    c, r = checks(row, end + 900_000)
    assert c["completeness"]["passed"] and c["timeliness"]["passed"] and c["validity"]["passed"]
    assert r["quality"]["passed"]
    c, r = checks(row, end + 900_001)
    assert not c["timeliness"]["passed"] and c["timeliness"]["value"] == pytest.approx(900.001)
    assert not r["quality"]["passed"]
    c, _ = checks(row, end - 1)
    assert not c["timeliness"]["passed"] and c["timeliness"]["detail"] == "period not over yet"
    thin = row.assign(coverage=0.9)
    assert checks(thin, end)[0]["completeness"]["passed"]
    thin = row.assign(coverage=0.8999, status="incomplete", pue=np.nan)
    c, r = checks(thin, end)
    assert not c["completeness"]["passed"] and not c["validity"]["passed"] and r["figures"]["pue"] is None
    assert r["status"] == "incomplete"


def test_report_ids_are_deterministic_and_unique_across_a_daylight_saving_change():
    berlin = "Europe/Berlin"
    # 2024-10-27 02:00–03:00 local happens twice in Berlin: the UTC-named quarter hours stay distinct
    starts = pd.date_range("2024-10-26T23:00:00Z", "2024-10-27T03:00:00Z", freq="15min", inclusive="left")
    ids = [report_id("S1", "realtime", int(t.value // 1_000_000), berlin) for t in starts]
    assert len(set(ids)) == len(ids) == 16
    assert ids[0] == "S1.realtime.20241026T2300Z"
    day = int(pd.Timestamp("2024-10-27", tz=berlin).value // 1_000_000)
    assert report_id("S1", "daily", day, berlin) == "S1.daily.20241027"
    assert report_id("S1", "monthly", day, berlin) == "S1.monthly.202410"
    assert report_id("S1", "daily", day, berlin) == report_id("S1", "daily", day, berlin)


def test_a_site_without_platform_codes_cannot_be_reported(tmp_path):
    site = fleet().sites[0].model_copy(update={"platform_site_code": None})
    with pytest.raises(ValueError, match=f"site '{site.id}' has no platform_site_code"):
        build_reports("hourly", _windows("1h").iloc[[0]], {site.id: site}, tz=TZ, generated_ms=0)


def test_unified_social_credit_codes_are_checked_as_gb_32100_says(tmp_path):
    # published examples of valid codes, then the same with one character changed
    for good in ("91350100M000100Y43", "911100001000080343"):
        assert credit_code_problem(good) is None
    assert "check character is '4'" in credit_code_problem("91350100M000100Y44")
    assert "18 characters" in credit_code_problem("9135010")
    assert "alphabet" in credit_code_problem("91350100M000100YI3")
    assert credit_code_check_char("91350100M000100Y4") == "3"
    registry = fleet().model_copy()
    text = dump_registry(registry).replace(registry.sites[0].operator_credit_code, "91350100M000100Y44", 1)
    path = tmp_path / "sites.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"operator_credit_code.*check character"):
        load_registry(path)


def test_meters_and_calibration_dates_travel_in_period_reports_when_asked():
    site = fleet().sites[0]
    points = tuple(p.model_copy(update={"meter_serial": f"SN-{i}", "accuracy_class": "0.5S",
                                        "calibrated": pd.Timestamp("2024-03-01").date()})
                   if p.role.value == "facility" else p for i, p in enumerate(site.points))
    site = site.model_copy(update={"points": points})
    hours = _windows("1h")
    r = build_reports("hourly", hours[hours["id"] == site.id].iloc[[0]], {site.id: site}, tz=TZ, generated_ms=0,
                      include_meters=True)[0]
    facility = [m for m in r["meters"] if m["role"] == "facility"]
    assert facility and all(m["calibrated"] == "2024-03-01" and m["accuracy_class"] == "0.5S" for m in facility)
    assert {m["role"] for m in r["meters"]} >= {"facility", "it"}
    _published_validators()["hourly"].validate(r)


def test_csv_rows_flatten_every_figure_under_stable_columns():
    hours = _windows("1h").iloc[:3]
    reports = build_reports("hourly", hours, _sites(), tz=TZ, generated_ms=0)
    cols = csv_columns(("hourly",))
    for r in reports:
        row = flatten(r)
        assert set(row) <= set(cols)
        assert row["energy_kwh.it"] == r["figures"]["energy_kwh"]["it"]
        assert row["quality.timeliness"] is False
