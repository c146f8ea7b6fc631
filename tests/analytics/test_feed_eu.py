"""The Delegated Regulation (EU) 2024/1364 annual report; every expected number is worked out by hand beside it."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dcpue.analytics.feed.eu import CSV_COLUMNS, EU_FIELDS, OPERATOR_KEYS, eu_annual_report, eu_report_to_csv
from dcpue.results import conform_windows
from tests.factories import point, registry, simple_site, site

TZ = "Asia/Shanghai"
NAN = float("nan")
# days per month of 2025: hours of the year 365 × 24 = 8760
DAYS_2025 = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

REG = registry(
    site("dc1", [
        point("facility.main", "facility", "energy", "kWh"),
        point("it.ups", "it", it_category=1),
        point("pv", "renewable"),
        point("water.main", "water", "water_volume", "L"),
        point("heat.export", "reused_heat"),
    ]),
    simple_site("dc2"),  # facility, IT and a CRAH: no renewable, water or reused-heat meter
)
DC1, DC2 = REG.site("dc1"), REG.site("dc2")


def edges_ms(freq: str, periods: int, start: str = "2025-01-01", tz: str = TZ) -> list[int]:
    return [int(t.value // 1_000_000) for t in pd.date_range(start, periods=periods + 1, freq=freq, tz=tz)]


def month_rows(site_id: str = "dc1", **columns: list[float] | float) -> list[dict[str, object]]:
    """Twelve final ok monthly windows of 2025; ``columns`` give per-month values (a list) or one value for all."""
    edges = edges_ms("MS", 12)
    rows = []
    for m in range(12):
        row: dict[str, object] = {"scope": "site", "id": site_id, "window": "1mo", "start_ms": edges[m],
                                  "end_ms": edges[m + 1], "final": True, "status": "ok", "coverage": 1.0,
                                  "it_category": 1}
        row.update({k: (v[m] if isinstance(v, list) else v) for k, v in columns.items()})
        rows.append(row)
    return rows


def by_key(report: dict) -> dict[str, dict]:
    return {item["indicator"]: item for item in report["indicators"]}


# Months 1–6: IT 1,000 kWh, total 1,500 kWh (PUE 1.5); months 7–12: IT 3,000, total 3,300 (PUE 1.1).
# Energy-weighted PUE = (6 × 1,500 + 6 × 3,300) / (6 × 1,000 + 6 × 3,000) = 28,800 / 24,000 = 1.2;
# the mean of the monthly ratios would be (1.5 + 1.1) / 2 = 1.3.
IT = [1000.0] * 6 + [3000.0] * 6
TOTAL = [1500.0] * 6 + [3300.0] * 6
# on-site PV 100 kWh a month; water 2,000 L a month; reused heat 300 kWh a month, covered only in months 1–6
DC1_MONTHS = dict(
    it_kwh=IT, total_kwh=TOTAL, facility_kwh=[t - 100.0 for t in TOTAL], renewable_kwh=100.0, water_l=2000.0,
    reused_kwh=300.0, pue=[t / i for t, i in zip(TOTAL, IT, strict=True)],
    wue=[2000.0 / i for i in IT], ref=[100.0 / t for t in TOTAL],
    erf=[300.0 / t for t in TOTAL[:6]] + [NAN] * 6,  # the heat meter was not covered from July
)


def full_year() -> pd.DataFrame:
    return conform_windows(pd.DataFrame(month_rows(**DC1_MONTHS)))


def test_twelve_months_give_energy_weighted_annual_kpis():
    report = eu_annual_report(DC1, full_year(), 2025, tz=TZ,
                              operator_info={"renewable_go_energy_kwh": 0, "renewable_ppa_energy_kwh": 0})
    k = by_key(report)
    assert report["completeness"]["complete"] is True
    assert report["completeness"]["hours_covered"] == 8760.0
    assert report["completeness"]["gaps"] == []
    assert report["warnings"] == []
    assert k["total_energy_kwh"]["value"] == pytest.approx(28_800.0)
    assert k["it_energy_kwh"]["value"] == pytest.approx(24_000.0)
    assert k["pue"]["value"] == pytest.approx(1.2)  # not 1.3, the mean of the monthly ratios
    assert k["pue"]["coverage"] == 1.0
    # WIN = 12 × 2,000 L = 24 m3; WUE = 24,000 L / 24,000 kWh = 1.0 L/kWh
    assert k["water_input_m3"]["value"] == pytest.approx(24.0)
    assert k["wue_l_per_kwh"]["value"] == pytest.approx(1.0)
    # ERES-TOT = 12 × 100 (on-site) + 0 + 0 = 1,200 kWh; REF = 1,200 / 28,800 = 0.041667
    assert k["onsite_renewable_energy_kwh"]["value"] == pytest.approx(1200.0)
    assert k["renewable_energy_kwh"]["value"] == pytest.approx(1200.0)
    assert k["ref"]["value"] == pytest.approx(1200.0 / 28_800.0)
    # heat reuse covered January–June only: EREUSE = 6 × 300 = 1,800 kWh over 181 days;
    # ERF = 1,800 / (6 × 1,500) = 0.2 over the same months, coverage 181 × 24 / 8,760
    assert k["reused_energy_kwh"]["value"] == pytest.approx(1800.0)
    assert k["erf"]["value"] == pytest.approx(0.2)
    assert k["erf"]["coverage"] == pytest.approx(181 * 24 / 8760)
    assert k["total_energy_kwh"]["source"] == "dcpue"
    assert k["it_energy_kwh"]["symbol"] == "EIT" and k["it_energy_kwh"]["annex"] == "II(1)(e)"


def test_missing_and_incomplete_months_reduce_coverage_and_are_not_scaled_up():
    rows = month_rows(**DC1_MONTHS)
    del rows[2]  # March: no row at all
    rows[9]["status"] = "incomplete"  # November (index 10 before the deletion): measured, but not ok
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ,
                              operator_info={"renewable_go_energy_kwh": 0, "renewable_ppa_energy_kwh": 0})
    k, c = by_key(report), report["completeness"]
    # covered: 365 − 31 (March) − 30 (November) = 304 days = 7,296 h
    assert c["hours_covered"] == pytest.approx(7296.0)
    assert c["coverage"] == pytest.approx(7296 / 8760)
    assert c["complete"] is False
    assert c["windows_by_status"] == {"ok": 10, "incomplete": 1}
    assert [(g["start"], g["end"], g["hours"]) for g in c["gaps"]] == [
        ("2025-03-01T00:00:00+08:00", "2025-04-01T00:00:00+08:00", 744.0),
        ("2025-11-01T00:00:00+08:00", "2025-12-01T00:00:00+08:00", 720.0),
    ]
    assert any(w.startswith("partial year") for w in report["warnings"])
    # EDC over the ten ok months: 28,800 − 1,500 (March) − 3,300 (November) = 24,000 kWh, as measured;
    # EIT = 24,000 − 1,000 − 3,000 = 20,000; scaled to a year it would have been 24,000 × 8,760 / 7,296
    assert k["total_energy_kwh"]["value"] == pytest.approx(24_000.0)
    assert k["it_energy_kwh"]["value"] == pytest.approx(20_000.0)
    assert k["total_energy_kwh"]["coverage"] == pytest.approx(7296 / 8760)
    assert k["pue"]["value"] == pytest.approx(24_000 / 20_000)
    assert k["coverage"]["value"] == pytest.approx(7296 / 8760)
    assert k["complete"]["value"] is False
    # zero guarantees of origin and PPAs can be added to any period: REF = 10 × 100 / 24,000
    assert k["ref"]["value"] == pytest.approx(1000.0 / 24_000.0)


def test_annual_operator_figures_are_not_mixed_with_a_partial_metered_year():
    rows = month_rows(**DC1_MONTHS)[:11]  # December missing
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ,
                              operator_info={"renewable_go_energy_kwh": 5000, "renewable_ppa_energy_kwh": 0})
    k = by_key(report)
    assert k["renewable_go_energy_kwh"]["value"] == 5000.0
    assert k["onsite_renewable_energy_kwh"]["value"] == pytest.approx(1100.0)
    assert k["renewable_energy_kwh"]["value"] is None  # 1,100 kWh over 11 months + 5,000 kWh over a year
    assert k["ref"]["value"] is None
    assert "renewable_energy_kwh" in report["not_measured"] and "ref" in report["not_measured"]
    # the same statement with the whole year metered: ERES-TOT = 1,200 + 5,000; REF = 6,200 / 28,800
    k = by_key(eu_annual_report(DC1, full_year(), 2025, tz=TZ,
                                operator_info={"renewable_go_energy_kwh": 5000, "renewable_ppa_energy_kwh": 0}))
    assert k["renewable_energy_kwh"]["value"] == pytest.approx(6200.0)
    assert k["ref"]["value"] == pytest.approx(6200.0 / 28_800.0)
    # an annual water statement over eleven metered months of IT energy is no WUE (dc2 has no water meter)
    eleven = conform_windows(pd.DataFrame(month_rows("dc2", it_kwh=IT, total_kwh=TOTAL)[:11]))
    k = by_key(eu_annual_report(DC2, eleven, 2025, tz=TZ, operator_info={"water_input_m3": 36.0}))
    assert k["water_input_m3"]["value"] == 36.0 and k["water_input_m3"]["coverage"] == 1.0
    assert k["wue_l_per_kwh"]["value"] is None
    assert "partial year" in k["wue_l_per_kwh"]["note"]


def test_operator_values_are_marked_operator_and_absent_ones_are_null_and_listed():
    windows = conform_windows(pd.DataFrame(month_rows("dc2", it_kwh=IT, total_kwh=TOTAL, facility_kwh=TOTAL)))
    info = {"total_floor_area_m2": 2400.0, "computer_room_floor_area_m2": 1100, "data_centre_type": "colocation",
            "installed_it_power_demand_kw": 800, "water_input_m3": 36.0, "potable_water_input_m3": 12.0,
            "reused_energy_kwh": 0, "operation_start": "2019-06-01"}
    report = eu_annual_report(DC2, windows, 2025, tz=TZ, operator_info=info)
    k = by_key(report)
    for key, value in info.items():
        assert k[key]["value"] == value, key
        assert k[key]["source"] == "operator", key
        assert key not in report["not_measured"]
    assert k["municipality"] == {**k["municipality"], "value": "Guiyang", "source": "registry"}
    # no water meter at dc2: the operator's 36 m3 over a fully metered year, WUE = 36,000 L / 24,000 kWh = 1.5
    assert k["wue_l_per_kwh"]["value"] == pytest.approx(1.5)
    assert k["erf"]["value"] == 0.0  # zero reused heat is zero over any period
    absent = {"owner_name", "operator_name", "contact", "country", "temperature_set_point_c", "ict_capacity_servers",
              "ict_capacity_storage", "incoming_data_traffic", "outgoing_data_traffic", "renewable_go_energy_kwh",
              "renewable_ppa_energy_kwh", "onsite_renewable_energy_kwh", "renewable_energy_kwh", "ref"}
    assert set(report["not_measured"]) == absent
    for key in absent:
        assert k[key]["value"] is None and k[key]["source"] is None
    assert "give it as operator_info 'temperature_set_point_c'" in k["temperature_set_point_c"]["note"]


def test_without_operator_info_installed_it_power_is_not_taken_from_the_design_capacity():
    k = by_key(eu_annual_report(DC2, conform_windows(pd.DataFrame(month_rows("dc2", it_kwh=IT, total_kwh=TOTAL))),
                                2025, tz=TZ))
    assert k["installed_it_power_demand_kw"]["value"] is None
    assert "design_it_kw = 500 kW" in k["installed_it_power_demand_kw"]["note"]
    assert k["water_input_m3"]["value"] is None and k["wue_l_per_kwh"]["value"] is None


def test_a_metered_figure_wins_over_the_operator_and_a_small_site_is_warned():
    report = eu_annual_report(DC1, full_year(), 2025, tz=TZ,
                              operator_info={"water_input_m3": 99.0, "installed_it_power_demand_kw": 400})
    k = by_key(report)
    assert k["water_input_m3"]["value"] == pytest.approx(24.0)
    assert k["water_input_m3"]["source"] == "dcpue"
    assert any("'water_input_m3' ignored" in w for w in report["warnings"])
    assert any("below the regulation's 500 kW threshold" in w for w in report["warnings"])


@pytest.mark.parametrize("info, message", [
    ({"floor_area": 10}, "unknown operator_info key"),
    ({"data_centre_type": "hyperscale"}, "enterprise, colocation, co-hosting"),
    ({"total_floor_area_m2": float("nan")}, "finite number"),
    ({"total_floor_area_m2": "2400"}, "finite number"),
    ({"water_input_m3": -1.0}, "cannot be negative"),
])
def test_bad_operator_info_fails_fast(info, message):
    with pytest.raises(ValueError, match=message):
        eu_annual_report(DC1, full_year(), 2025, tz=TZ, operator_info=info)


def test_only_this_sites_final_rows_of_one_window_inside_the_year_count():
    edges_2024 = edges_ms("MS", 1, start="2024-12-01")
    days = edges_ms("D", 10)  # ten daily windows: fewer ok hours than the twelve months
    noise = pd.DataFrame([{"it_category": 1, **row} for row in [
        {"scope": "site", "id": "dc2", "window": "1mo", "start_ms": edges_ms("MS", 1)[0],
         "end_ms": edges_ms("MS", 1)[1], "final": True, "status": "ok", "it_kwh": 1e6, "total_kwh": 9e6},
        {"scope": "fleet", "id": "fleet", "window": "1mo", "start_ms": edges_ms("MS", 1)[0],
         "end_ms": edges_ms("MS", 1)[1], "final": True, "status": "ok", "it_kwh": 1e6, "total_kwh": 9e6},
        {"scope": "site", "id": "dc1", "window": "1mo", "start_ms": edges_2024[0], "end_ms": edges_2024[1],
         "final": True, "status": "ok", "it_kwh": 1e6, "total_kwh": 9e6},
        {"scope": "site", "id": "dc1", "window": "12mo", "start_ms": edges_ms("D", 1, start="2025-12-31")[0],
         "end_ms": edges_ms("D", 1, start="2025-12-31")[1], "final": False, "status": "ok",
         "it_kwh": 1e6, "total_kwh": 9e6},
        *({"scope": "site", "id": "dc1", "window": "1d", "start_ms": days[d], "end_ms": days[d + 1], "final": True,
           "status": "ok", "it_kwh": 1e6, "total_kwh": 9e6} for d in range(10)),
    ]])
    report = eu_annual_report(DC1, conform_windows(pd.concat([pd.DataFrame(month_rows(**DC1_MONTHS)), noise])),
                              2025, tz=TZ)
    k = by_key(report)
    assert k["window"]["value"] == "1mo"
    assert k["total_energy_kwh"]["value"] == pytest.approx(28_800.0)
    # asking for the daily windows gives their figures: 10 × 9e6 / (10 × 1e6), over 240 of 8,760 hours
    daily = by_key(eu_annual_report(DC1, conform_windows(noise), 2025, tz=TZ, window="1d"))
    assert daily["pue"]["value"] == pytest.approx(9.0)
    assert daily["hours_covered"]["value"] == pytest.approx(240.0)
    with pytest.raises(ValueError, match="unknown window"):
        eu_annual_report(DC1, conform_windows(noise), 2025, tz=TZ, window="1y")


def test_a_window_that_may_still_change_is_not_counted():
    rows = month_rows(**DC1_MONTHS)
    rows[11]["final"] = False  # December is still open
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ)
    assert report["completeness"]["windows_by_status"] == {"ok": 11, "not_final": 1}
    # 28,800 − 3,300 (December) = 25,500 kWh
    assert by_key(report)["total_energy_kwh"]["value"] == pytest.approx(25_500.0)


def test_windows_on_another_calendar_are_left_out_with_a_warning():
    # months cut in UTC: December 2025 ends 2026-01-01T00:00Z = 08:00 in Shanghai, past the year's end
    rows = month_rows(**DC1_MONTHS)
    utc = edges_ms("MS", 12, tz="UTC")
    for m, row in enumerate(rows):
        row["start_ms"], row["end_ms"] = utc[m], utc[m + 1]
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ)
    assert any("cross the year's edge" in w for w in report["warnings"])
    # only the UTC months January–November count (334 days = 8,016 h); uncovered are January 1 00:00–08:00
    # local, before the first UTC month, and December 1 08:00 to the year's end (744 − 8 = 736 h)
    assert report["completeness"]["hours_covered"] == pytest.approx(8016.0)
    assert report["completeness"]["gaps"] == [
        {"start": "2025-01-01T00:00:00+08:00", "end": "2025-01-01T08:00:00+08:00", "hours": 8.0},
        {"start": "2025-12-01T08:00:00+08:00", "end": "2026-01-01T00:00:00+08:00", "hours": 736.0},
    ]
    # December's 3,300 kWh are left out, not split: 28,800 − 3,300
    assert by_key(report)["total_energy_kwh"]["value"] == pytest.approx(25_500.0)


def test_it_energy_below_the_ups_output_is_warned():
    rows = month_rows(**DC1_MONTHS)
    rows[0]["it_category"] = 2
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ)
    assert by_key(report)["it_measurement_categories"]["value"] == "1,2"
    assert any("category 1, 2" in w for w in report["warnings"])


def test_the_report_survives_a_strict_json_round_trip():
    rows = month_rows(**DC1_MONTHS)
    rows[4].update(status="meter_fault", pue=NAN, wue=NAN, ref=NAN, erf=NAN)  # NaN ratios in the input
    report = eu_annual_report(DC1, conform_windows(pd.DataFrame(rows)), 2025, tz=TZ)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    numbers = [i["value"] for i in report["indicators"] if isinstance(i["value"], float)]
    assert numbers and all(math.isfinite(v) for v in numbers)


def test_csv_has_one_row_per_indicator_and_parses():
    report = eu_annual_report(DC1, full_year(), 2025, tz=TZ, operator_info={"data_centre_type": "enterprise"})
    rows = list(csv.DictReader(io.StringIO(eu_report_to_csv(report))))
    assert len(rows) == len(report["indicators"]) == len(EU_FIELDS)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["indicator"] for r in rows] == [f.key for f in EU_FIELDS]
    got = {r["indicator"]: r for r in rows}
    assert float(got["pue"]["value"]) == pytest.approx(1.2)
    assert got["pue"]["annex"] == "III" and got["pue"]["source"] == "derived"
    assert got["data_centre_type"]["value"] == "enterprise" and got["data_centre_type"]["source"] == "operator"
    assert got["owner_name"]["value"] == "" and got["owner_name"]["source"] == ""
    assert got["complete"]["value"] == "true"
    # names with commas survive quoting
    assert got["data_centre_type"]["name"] == "Type: enterprise, colocation or co-hosting (Art. 2)"


def test_every_operator_key_is_a_field_and_reported():
    assert set(OPERATOR_KEYS) <= {f.key for f in EU_FIELDS}
    assert {"total_energy_kwh", "it_energy_kwh", "pue", "ref"}.isdisjoint(OPERATOR_KEYS)


def test_the_doc_table_lists_every_field_in_order():
    doc = (Path(__file__).parents[2] / "docs" / "feed" / "eu-2024-1364.md").read_text(encoding="utf-8")
    keys = [line.split("|")[4].strip().strip("`") for line in doc.splitlines()
            if line.startswith("| ") and line.count("|") == 10 and "`" in line.split("|")[4]]
    assert keys == [f.key for f in EU_FIELDS]
