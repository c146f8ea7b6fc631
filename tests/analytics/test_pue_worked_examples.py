"""Worked examples for the PUE engine; every expected number is computed by hand in the comment above it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcpue.analytics.batch import batch_windows
from dcpue.analytics.energy import EnergyParams, point_windows
from dcpue.analytics.pue import grade
from dcpue.model import Quality, readings_frame
from dcpue.settings import EngineSettings
from tests.factories import GUI_AN, MIN, T0, counter_series, point, power_series, registry, simple_site, site

HOUR = 60 * MIN


def one(windows: pd.DataFrame, scope: str = "site", ident: str = "a", start: int = T0) -> pd.Series:
    rows = windows[(windows["scope"] == scope) & (windows["id"] == ident) & (windows["start_ms"] == start)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_constant_power_gives_the_energy_ratio():
    # facility 150 kW, IT 100 kW, CRAH 40 kW for one hour:
    # facility 150 kWh, IT 100 kWh → PUE 1.5; CLF 40/100 = 0.4; pPUE(cooling) (100+40)/100 = 1.4
    reg = registry(simple_site("a"))
    readings = pd.concat([
        counter_series("a", "facility.main", 150, 60),
        power_series("a", "it.ups", 100, 60),
        power_series("a", "cool.crah", 40, 60),
    ])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "ok"
    assert row["coverage"] == pytest.approx(1.0)
    assert row["facility_kwh"] == pytest.approx(150.0)
    assert row["it_kwh"] == pytest.approx(100.0)
    assert row["pue"] == pytest.approx(1.5)
    assert row["clf"] == pytest.approx(0.4)
    assert row["ppue_cooling"] == pytest.approx(1.4)
    assert row["pue_gap"] == pytest.approx(0.3)
    assert row["grade"] == "3"  # GB 40879 grade 3 is PUE ≤ 1.50, inclusive


def test_grade_boundaries_follow_gb40879():
    # grade 1 ≤ 1.20 < grade 2 ≤ 1.30 < grade 3 ≤ 1.50 < beyond limit
    assert list(grade(np.array([1.10, 1.20, 1.21, 1.30, 1.45, 1.50, 1.51, np.nan]))) == [
        "1", "1", "2", "2", "3", "3", "beyond_limit", ""]


def test_energy_counter_with_reset_is_never_booked_as_negative_or_huge():
    # 150 kW read every minute for an hour; at minute 30 the meter is replaced and restarts at 5.0 kWh.
    # The interval 29→30 is unknown and dropped: 59 intervals × 2.5 kWh = 147.5 kWh over 59 min.
    # Mean facility power over its booked time is still 150 kW, so PUE = 150 / 100 = 1.5.
    values = 1000 + 150 * np.arange(61) / 60.0
    values[30:] = 5.0 + 150 * np.arange(31) / 60.0
    counter = readings_frame("a", "facility.main", T0 + np.arange(61) * MIN, values)
    reg = registry(simple_site("a"))
    pw = point_windows(counter, reg.points_table, np.array([T0, T0 + HOUR]))
    assert pw["integral"].iloc[0] == pytest.approx(147.5)
    assert pw["covered_s"].iloc[0] == pytest.approx(59 * 60)
    assert pw["resets"].iloc[0] == 1
    readings = pd.concat([counter, power_series("a", "it.ups", 100, 60), power_series("a", "cool.crah", 40, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "ok"
    assert row["coverage"] == pytest.approx(59 / 60)
    assert row["facility_kwh"] == pytest.approx(147.5)
    assert row["pue"] == pytest.approx(1.5)


def test_point_windows_without_names_are_the_same_rows_keyed_by_pid():
    """``names=False`` (the streaming engine's call) gives the same figures, with the points-table row
    (``pid``) as the only key of a point."""
    reg = registry(simple_site("a"), simple_site("b"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 90), power_series("b", "it.ups", 100, 90),
                          power_series("a", "cool.crah", 40, 90)], ignore_index=True)
    edges = T0 + np.arange(0, 91, 15) * MIN
    named = point_windows(readings, reg.points_table, edges)
    bare = point_windows(readings, reg.points_table, edges, names=False)
    assert "site" not in bare.columns and "point" not in bare.columns and len(bare) == 3 * 6
    empty = point_windows(readings.head(0), reg.points_table, edges, names=False)
    assert empty.empty and list(empty.columns) == list(bare.columns)  # the same shape when nothing came
    pd.testing.assert_frame_equal(bare, named.drop(columns=["site", "point"]))
    keys = reg.points_table.index[named["pid"].to_numpy()]
    assert list(zip(named["site"], named["point"], strict=True)) == list(keys)


def test_site_flows_given_their_window_starts_are_those_found_among_the_point_windows():
    """The streaming engine hands site flows the windows' starts (and each point window's position among them)
    instead of having them searched for among the rows: the same flows, for meters with gaps, a site whose
    meters come in only later, and a site with nothing but ``also`` pairs."""
    from dcpue.analytics.energy import point_window_columns
    from dcpue.analytics.pue import site_flows_of_columns

    reg = registry(simple_site("a"), simple_site("b"), simple_site("c"))
    it_with_gap = power_series("a", "it.ups", np.r_[np.full(30, 100.0), np.full(61, 120.0)], 90)
    readings = pd.concat([counter_series("a", "facility.main", 150, 90), it_with_gap.drop(index=range(40, 55)),
                          power_series("b", "cool.crah", 40, 30, start_ms=T0 + 50 * MIN)], ignore_index=True)
    edges = T0 + np.arange(0, 91, 15) * MIN
    starts = edges[:-1]
    columns = point_window_columns(readings, reg.points_table, edges, names=False)
    also = (np.repeat(np.array(["c"], dtype=object), len(starts)), starts)
    searched = site_flows_of_columns(columns, reg.points_table, also=also)
    given = site_flows_of_columns(columns, reg.points_table, also=also, starts=starts)
    assert sorted(set(searched.index.get_level_values("site"))) == ["a", "b", "c"]
    pd.testing.assert_frame_equal(given, searched, check_exact=True)
    columns["window"] = np.roll(columns["window"], 1)  # positions that are not the rows' own: other flows
    assert not site_flows_of_columns(columns, reg.points_table, also=also, starts=starts).equals(searched)


def test_point_ids_of_a_batch_match_the_points_table_lookup_for_repeated_and_changed_batches():
    """PointIds gives what point_ids gives (-1 for an unknown point or site), for a batch like the site's
    last one (kept) as for a changed one (looked up again)."""
    from dcpue.analytics.energy import PointIds, point_ids

    reg = registry(simple_site("a"), simple_site("b"))
    points = reg.points_table
    ids = PointIds(points)

    def expected(site_id, names):
        return point_ids(points, pd.DataFrame({"site": [site_id] * len(names), "point": names}))

    batches = [("a", ["it.ups", "facility.main", "cool.crah"]), ("b", ["cool.crah", "it.ups"]),
               ("a", ["it.ups", "facility.main", "cool.crah"]),  # as before: the kept rows
               ("a", ["facility.main", "nope", "it.ups"]),  # changed, with an unknown point
               ("a", ["facility.main", "nope", "it.ups"]), ("zz", ["it.ups"]), ("b", [])]
    for site_id, names in batches:
        got = ids(site_id, np.asarray(names, dtype=object))
        assert got.tolist() == expected(site_id, names).tolist(), (site_id, names)
    assert ids("a", np.asarray(["it.ups", "facility.main", "cool.crah"], dtype=object)).min() >= 0
    assert (ids("zz", np.asarray(["it.ups"], dtype=object)) == -1).all()
    # a caller that reuses its array for other names gets their rows, not the kept ones
    reused = np.asarray(["it.ups", "cool.crah"], dtype=object)
    first = ids("b", reused).tolist()
    reused[0] = "facility.main"
    assert ids("b", reused).tolist() == expected("b", ["facility.main", "cool.crah"]).tolist() != first
    assert ids("b", ["it.ups", "cool.crah"]).tolist() == first  # a list is taken too


def test_counter_rollover_is_booked_as_the_wrapped_increase():
    # rollover at 10,000 kWh: 9,998.75 → 1.25 is an increase of 2.5 kWh (150 kW for one minute)
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000, rollover=10_000),
        point("it.ups", "it", it_category=1),
    ]))
    values = (9_990.0 + 150 * np.arange(11) / 60.0) % 10_000
    counter = readings_frame("a", "facility.main", T0 + np.arange(11) * MIN, values)
    pw = point_windows(counter, reg.points_table, np.array([T0, T0 + 10 * MIN]))
    assert pw["integral"].iloc[0] == pytest.approx(25.0)  # 10 minutes × 2.5 kWh
    assert pw["resets"].iloc[0] == 0


def test_counter_spike_above_rated_power_is_rejected():
    # rated 1000 kW × 1.5 tolerance allows at most 25 kWh a minute; one reading jumps by 5,000 kWh and back.
    # Both intervals around it are dropped (spike, then a decrease = reset): 8 of 10 intervals remain.
    reg = registry(simple_site("a"))
    values = 1000 + 150 * np.arange(11) / 60.0
    values[5] += 5_000
    counter = readings_frame("a", "facility.main", T0 + np.arange(11) * MIN, values)
    pw = point_windows(counter, reg.points_table, np.array([T0, T0 + 10 * MIN]))
    assert pw["integral"].iloc[0] == pytest.approx(8 * 2.5)
    assert pw["spikes"].iloc[0] == 1
    assert pw["resets"].iloc[0] == 1


def test_gap_below_the_coverage_threshold_marks_the_window_incomplete():
    # IT meter silent from minute 10 to minute 20 of the hour: the 10-minute interval exceeds max_gap (5 min),
    # so IT coverage is 50/60 = 0.833 < 0.9 → incomplete, and no PUE is reported as a number.
    reg = registry(simple_site("a"))
    it = power_series("a", "it.ups", 100, 60)
    it = it[(it["ts"] <= T0 + 10 * MIN) | (it["ts"] >= T0 + 20 * MIN)]
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), it, power_series("a", "cool.crah", 40, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "incomplete"
    assert row["coverage"] == pytest.approx(50 / 60)
    assert np.isnan(row["pue"])
    assert np.isnan(row["pue_gap"])
    assert row["grade"] == ""
    assert row["it_kwh"] == pytest.approx(50 / 60 * 100)  # what was measured, kept for audit


def test_short_gap_within_threshold_does_not_bias_pue():
    # IT misses 4 minutes (two 3-minute intervals are fine, max_gap 5 min) — nothing is lost;
    # facility misses minutes 30..37 (8 min > max_gap for power): facility coverage 52/60 = 0.867 would be incomplete,
    # so use a counter: a long counter interval is booked (energy proven) but counted as uncovered.
    reg = registry(simple_site("a"))
    fac = counter_series("a", "facility.main", 150, 60)
    fac = fac[(fac["ts"] <= T0 + 30 * MIN) | (fac["ts"] >= T0 + 36 * MIN)]  # one 6-minute interval
    readings = pd.concat([fac, power_series("a", "it.ups", 100, 60), power_series("a", "cool.crah", 40, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    # booked 150 kWh (the counter proves it), covered 54 of 60 minutes = 0.9 → still ok
    assert row["facility_kwh"] == pytest.approx(150.0)
    assert row["coverage"] == pytest.approx(0.9)
    assert row["status"] == "ok"
    assert row["pue"] == pytest.approx(1.5)


def test_several_it_meters_are_summed_and_the_highest_complete_category_is_used():
    # UPS A 60 kW + UPS B 40 kW (category 1) = 100 kW; PDUs (category 2) 45 + 50 = 95 kW.
    # Category 2 is covered, so PUE = 150 / 95 = 1.578947…; it_category = 2.
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000),
        point("it.ups-a", "it", it_category=1), point("it.ups-b", "it", it_category=1),
        point("it.pdu-1", "it", it_category=2), point("it.pdu-2", "it", it_category=2),
    ]))
    readings = pd.concat([
        counter_series("a", "facility.main", 150, 60),
        power_series("a", "it.ups-a", 60, 60), power_series("a", "it.ups-b", 40, 60),
        power_series("a", "it.pdu-1", 45, 60), power_series("a", "it.pdu-2", 50, 60),
    ])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["it_category"] == 2
    assert row["it_kwh"] == pytest.approx(95.0)
    assert row["pue"] == pytest.approx(150 / 95)
    # without the PDUs the UPS outputs are summed: category 1, PUE 150 / 100
    ups_only = readings[~readings["point"].str.startswith("it.pdu")]
    row = one(batch_windows(ups_only, reg, "1h"))
    assert row["it_category"] == 1
    assert row["it_kwh"] == pytest.approx(100.0)
    assert row["pue"] == pytest.approx(1.5)


def test_redundant_meters_on_one_boundary_follow_source_precedence():
    # revenue meter says 150 kW, switchgear meter on the same boundary says 160 kW: the revenue meter wins.
    # If the revenue meter is silent, the switchgear meter is used instead (160 / 100 = 1.6).
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", source="revenue_meter", rated_kw=1000,
              boundary="grid"),
        point("facility.swgr", "facility", source="switchgear", boundary="grid"),
        point("it.ups", "it", it_category=1),
    ]))
    both = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "facility.swgr", 160, 60),
                      power_series("a", "it.ups", 100, 60)])
    assert one(batch_windows(both, reg, "1h"))["pue"] == pytest.approx(1.5)
    no_revenue = both[both["point"] != "facility.main"]
    assert one(batch_windows(no_revenue, reg, "1h"))["pue"] == pytest.approx(1.6)


def test_partial_pue_and_the_iso_30134_family():
    # One hour: grid 130 kW + PV 20 kW = total 150 kW; IT 100; chiller 25 + CRAH 15 = cooling 40;
    # losses 6; lighting 4; reused heat 30 kW; water 180 L/h.
    # PUE = 150/100 = 1.5; pPUE = 140/100 = 1.4; CLF 0.4; PLF 0.06; OLF 0.04; WUE = 180/100 = 1.8 L/kWh;
    # REF = 20/150 = 0.1333; ERF = 30/150 = 0.2; CUE = 130 × 0.5366 / 100 = 0.69758 kgCO2/kWh.
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000),
        point("it.ups", "it", it_category=1),
        point("cool.chiller", "cooling", cooling_subsystem="chiller"),
        point("cool.crah", "cooling", cooling_subsystem="crah"),
        point("elec.losses", "losses"), point("elec.lighting", "lighting"),
        point("pv", "renewable"), point("heat.export", "reused_heat"),
        point("water.main", "water", "water_volume", "L"),
    ]))
    readings = pd.concat([
        counter_series("a", "facility.main", 130, 60),
        power_series("a", "it.ups", 100, 60),
        power_series("a", "cool.chiller", 25, 60), power_series("a", "cool.crah", 15, 60),
        power_series("a", "elec.losses", 6, 60), power_series("a", "elec.lighting", 4, 60),
        power_series("a", "pv", 20, 60), power_series("a", "heat.export", 30, 60),
        counter_series("a", "water.main", 180, 60, start_kwh=50_000),  # +3 L a minute
    ])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "ok"
    assert row["total_kwh"] == pytest.approx(150.0)
    assert row["pue"] == pytest.approx(1.5)
    assert row["ppue_cooling"] == pytest.approx(1.4)
    assert row["clf"] == pytest.approx(0.4)
    assert row["cooling_chiller_kwh"] == pytest.approx(25.0)
    assert row["plf"] == pytest.approx(0.06)
    assert row["olf"] == pytest.approx(0.04)
    assert row["wue"] == pytest.approx(1.8)
    assert row["ref"] == pytest.approx(20 / 150)
    assert row["erf"] == pytest.approx(0.2)
    assert row["cue"] == pytest.approx(130 * 0.5366 / 100)
    # children 100 + 40 + 6 + 4 = 150 = total: the meter hierarchy balances
    assert row["hierarchy_error"] == pytest.approx(0.0, abs=1e-9)
    assert "hierarchy" not in row["flags"]


def test_sub_meters_exceeding_the_facility_meter_are_a_hierarchy_finding():
    # IT 100 + CRAH 70 = 170 kW of children under a 150 kW facility meter: +13 % > 5 % tolerance
    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60),
                          power_series("a", "cool.crah", 70, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["hierarchy_error"] == pytest.approx(20 / 150)
    assert "hierarchy" in row["flags"]


def test_pue_below_one_is_flagged_as_a_meter_fault_never_emitted():
    # facility 90 kW under IT 100 kW is physically impossible: meter fault, PUE not reported
    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 90, 60), power_series("a", "it.ups", 100, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "meter_fault"
    assert np.isnan(row["pue"])
    assert "pue_below_1" in row["flags"]


def test_zero_it_energy_is_a_meter_fault():
    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 90, 60), power_series("a", "it.ups", 0.0, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "meter_fault"
    assert "it_energy_zero" in row["flags"]
    assert np.isnan(row["pue"])


def test_bad_quality_readings_never_enter_a_figure():
    # an IT reading of 10,000 kW flagged BAD is ignored; the neighbouring intervals become uncovered (2 of 60 min)
    reg = registry(simple_site("a"))
    it = power_series("a", "it.ups", 100, 60)
    it.loc[it.index[30], ["value", "quality"]] = [10_000.0, int(Quality.BAD)]
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), it])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["pue"] == pytest.approx(1.5)
    assert row["coverage"] == pytest.approx(1.0)  # a 2-minute interval still bridges the missing sample


def test_fleet_pue_is_energy_weighted_not_an_average_of_ratios():
    # site a: 150/100 = 1.5; site b: 1100/1000 = 1.1. Average of ratios would be 1.3;
    # the fleet figure is (150 + 1100) / (100 + 1000) = 1.13636…
    reg = registry(simple_site("a", cluster="gui-an"),
                   site("b", [point("facility.main", "facility", "energy", "kWh", rated_kw=5000),
                              point("it.ups", "it", it_category=1)], cluster="gui-an"),
                   clusters=[GUI_AN])
    readings = pd.concat([
        counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60),
        power_series("a", "cool.crah", 40, 60),
        counter_series("b", "facility.main", 1100, 60), power_series("b", "it.ups", 1000, 60),
    ])
    windows = batch_windows(readings, reg, "1h")
    fleet = one(windows, "fleet", "fleet")
    cluster = one(windows, "cluster", "gui-an")
    assert fleet["pue"] == pytest.approx(1250 / 1100)
    assert cluster["pue"] == pytest.approx(1250 / 1100)
    assert fleet["coverage"] == pytest.approx(1.0)


def test_daily_windows_follow_the_local_calendar():
    # Asia/Shanghai is UTC+8: a day window starts at 16:00 UTC of the previous day
    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 120), power_series("a", "it.ups", 100, 120)])
    windows = batch_windows(readings, reg, "1d", EngineSettings())
    row = one(windows)
    assert pd.Timestamp(row["start_ms"], unit="ms", tz="UTC") == pd.Timestamp("2025-01-05T16:00Z")
    assert row["status"] == "incomplete"  # two hours of a day


def test_duplicate_readings_are_idempotent():
    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)])
    once = one(batch_windows(readings, reg, "1h"))
    twice = one(batch_windows(pd.concat([readings, readings]), reg, "1h"))
    assert twice["facility_kwh"] == pytest.approx(once["facility_kwh"])
    assert twice["pue"] == pytest.approx(once["pue"])


def test_negative_power_samples_are_invalid():
    reg = registry(simple_site("a"))
    it = power_series("a", "it.ups", 100, 10)
    it.loc[it.index[5], "value"] = -100.0
    pw = point_windows(it, reg.points_table, np.array([T0, T0 + 10 * MIN]), EnergyParams(max_gap_s=60))
    # the sample at minute 5 invalidates intervals 4→5 and 5→6: 8 of 10 minutes integrate 100 kW
    assert pw["integral"].iloc[0] == pytest.approx(8 * 100 / 60)
    assert pw["covered_s"].iloc[0] == pytest.approx(8 * 60)


def test_summed_meters_missing_different_minutes_do_not_bias_pue():
    # UPS A 60 kW all hour; UPS B 40 kW but silent for the last 6 minutes (one 6-min gap > max_gap).
    # Per meter mean power: 60 + 40 = 100 kW, so PUE = 150 / 100 = 1.5 even though B booked 54 minutes.
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000),
        point("it.ups-a", "it", it_category=1), point("it.ups-b", "it", it_category=1),
    ]))
    b = power_series("a", "it.ups-b", 40, 60)
    b = b[b["ts"] <= T0 + 54 * MIN]
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups-a", 60, 60), b])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "ok"  # IT coverage 54/60 = 0.9
    assert row["it_kwh"] == pytest.approx(60 + 40 * 54 / 60)  # what was measured
    assert row["it_kw"] == pytest.approx(100.0)
    assert row["pue"] == pytest.approx(1.5)


def test_wue_from_a_water_flow_meter_is_in_litres():
    # 0.18 m3/h of make-up water = 180 L/h against 100 kW IT → WUE 1.8 L/kWh
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000),
        point("it.ups", "it", it_category=1),
        point("water.makeup", "water", "flow", "m3/h"),
    ]))
    readings = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60),
                          power_series("a", "water.makeup", 0.18, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["water_l"] == pytest.approx(180.0)
    assert row["wue"] == pytest.approx(1.8)


def test_a_silent_renewable_meter_makes_pue_incomplete_not_low():
    # grid 130 kW + PV 20 kW; the PV meter is silent: total energy is unknown, so no PUE (not 1.3)
    reg = registry(site("a", [
        point("facility.main", "facility", "energy", "kWh", rated_kw=1000),
        point("it.ups", "it", it_category=1), point("pv", "renewable"),
    ]))
    readings = pd.concat([counter_series("a", "facility.main", 130, 60), power_series("a", "it.ups", 100, 60)])
    row = one(batch_windows(readings, reg, "1h"))
    assert row["status"] == "incomplete"
    assert np.isnan(row["pue"])
    with_pv = pd.concat([readings, power_series("a", "pv", 20, 60)])
    assert one(batch_windows(with_pv, reg, "1h"))["pue"] == pytest.approx(1.5)
