"""Rolling retirement figures read back from a file store filled with the PUE engine's windows of simulator
readings (tests/helpers/retirement.py), checked against sums over the stored rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dcpue.runtime.retirement import (
    HOURS_PER_MONTH,
    assess_store,
    figures_from_store,
    newest_data_ms,
    period_start_ms,
)
from dcpue.settings import RetirementSettings
from tests.helpers.retirement import AS_OF, AS_OF_MS, START_MS, TZ, filled_store, fleet, simulated_windows

DAY_MS = 86_400_000


@pytest.fixture
def store(tmp_path):
    s = filled_store(tmp_path / "store.sqlite")
    yield s
    s.close()


def site_rows(window: str) -> pd.DataFrame:
    w = simulated_windows()
    return w[(w["scope"] == "site") & (w["window"] == window)]


def test_annual_pue_is_energy_weighted_from_the_stored_daily_windows(store):
    figs = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ)
    hourly_peaks = figures_from_store(store, AS_OF_MS, tz=TZ, peak_window="1h").figures.set_index("site")
    assert figs.window == {s.id: "1d" for s in fleet().sites}
    assert figs.start_ms == int(pd.Timestamp("2024-02-01", tz=TZ).value // 1_000_000)
    got = figs.figures.set_index("site")
    assert list(got.index) == [s.id for s in fleet().sites]  # registry order
    daily = site_rows("1d")
    assert (daily["status"] == "ok").all() and (daily["coverage"] == 1.0).all()
    for site_id, rows in daily.groupby("id"):
        hours = (rows["end_ms"] - rows["start_ms"]).sum() / 3_600_000
        assert got.loc[site_id, "annual_pue"] == pytest.approx(rows["total_kwh"].sum() / rows["it_kwh"].sum(),
                                                               rel=1e-9)
        assert got.loc[site_id, "it_kw_mean"] == pytest.approx(rows["it_kwh"].sum() / hours, rel=1e-9)
        assert got.loc[site_id, "months_observed"] == pytest.approx(92 * 24 / HOURS_PER_MONTH)
        assert got.loc[site_id, "it_kw_peak"] == pytest.approx(rows["it_kw"].max())  # the peak day
        hourly = site_rows("1h").query("id == @site_id")
        assert hourly_peaks.loc[site_id, "it_kw_peak"] == pytest.approx(hourly["it_kw"].max())
        assert hourly["it_kw"].max() > rows["it_kw"].max()  # an hour peaks above any day's mean
        water = rows[rows["wue"].notna()]
        if len(water):  # Σ water ÷ Σ IT energy
            assert got.loc[site_id, "wue"] == pytest.approx(water["water_l"].sum() / water["it_kwh"].sum(), rel=1e-9)
        else:
            assert np.isnan(got.loc[site_id, "wue"])
    assert got["wue"].notna().sum() == 2  # the sites with a cooling tower meter water


def test_hourly_windows_give_the_same_energy_weighted_pue(store):
    daily = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ).figures.set_index("site")
    store.prune("1d", AS_OF_MS)  # only hourly windows left
    hourly = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ)
    assert set(hourly.window.values()) == {"1h"}
    pd.testing.assert_series_equal(hourly.figures.set_index("site")["annual_pue"], daily["annual_pue"], rtol=2e-3)


def test_windows_that_are_not_ok_carry_no_figure(tmp_path):
    windows = simulated_windows().copy()
    bad = (windows["id"] == "tr-02") & (windows["window"] == "1d") & (windows["start_ms"] < START_MS + 10 * DAY_MS)
    windows.loc[bad, ["status", "pue"]] = ["incomplete", 9.9]  # a figure that must never count
    windows.loc[(windows["id"] == "tr-02") & (windows["window"] == "1h"), "status"] = "meter_fault"
    store = filled_store(tmp_path / "s.sqlite", windows)
    got = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ).figures.set_index("site").loc["tr-02"]
    ok = site_rows("1d").query("id == 'tr-02' and start_ms >= @START_MS + 10 * @DAY_MS")
    assert got["annual_pue"] == pytest.approx(ok["total_kwh"].sum() / ok["it_kwh"].sum(), rel=1e-9)
    assert got["months_observed"] == pytest.approx(82 * 24 / HOURS_PER_MONTH)
    assert got["it_kw_peak"] == pytest.approx(ok["it_kw"].max())  # no ok hourly window: the daily peak
    store.close()


def test_a_registry_site_without_data_is_unknown_not_zero(tmp_path):
    windows = simulated_windows()
    store = filled_store(tmp_path / "s.sqlite", windows[windows["id"] != "xy-03"])
    got = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ).figures.set_index("site").loc["xy-03"]
    assert got[["annual_pue", "it_kw_mean", "it_kw_peak", "wue"]].isna().all()
    assert got["months_observed"] == 0.0
    store.close()


def test_the_period_ends_at_as_of_and_reaches_back_whole_months(store):
    as_of = int(pd.Timestamp("2025-01-01", tz=TZ).value // 1_000_000)
    assert period_start_ms(as_of, 1, TZ) == int(pd.Timestamp("2024-12-01", tz=TZ).value // 1_000_000)
    figs = figures_from_store(store, as_of, months=1, registry=fleet(), tz=TZ)
    dec = site_rows("1d").query("id == 'tr-02' and start_ms >= @figs.start_ms and end_ms <= @as_of")
    assert len(dec) == 31
    got = figs.figures.set_index("site").loc["tr-02"]
    assert got["annual_pue"] == pytest.approx(dec["total_kwh"].sum() / dec["it_kwh"].sum(), rel=1e-9)
    assert got["months_observed"] == pytest.approx(31 * 24 / HOURS_PER_MONTH)


def test_occupancy_history_by_racks_and_by_power(tmp_path):
    windows = simulated_windows().copy()
    # the registry said 12 racks in service at tr-02 until mid-December, then 24 (time-weighted per month)
    early = (windows["id"] == "tr-02") & (windows["start_ms"] < int(pd.Timestamp("2024-12-16", tz=TZ).value // 10**6))
    windows.loc[early, "racks_in_service"] = 12
    # November keeps only 10 of its 30 days: below half of the month, so it is left out
    gap = (windows["id"] == "xy-03") & (windows["start_ms"] >= START_MS + 10 * DAY_MS) & (
        windows["start_ms"] < START_MS + 30 * DAY_MS)
    store = filled_store(tmp_path / "s.sqlite", windows[~gap])
    racks = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ).occupancy_history
    by = racks.set_index(["site", "month"])["occupancy_pct"]
    assert by["tr-02", "2024-11"] == pytest.approx(100 * 12 / 55)
    assert by["tr-02", "2024-12"] == pytest.approx(100 * (15 * 12 + 16 * 24) / 31 / 55)
    assert by["tr-02", "2025-01"] == pytest.approx(100 * 24 / 55)
    assert by["ga-01", "2025-01"] == pytest.approx(100 * 2770 / 3130)
    assert ("xy-03", "2024-11") not in by.index and ("xy-03", "2024-12") in by.index
    assert len(racks) == 3 * 4 - 1

    power = figures_from_store(store, AS_OF_MS, registry=fleet(), tz=TZ, occupancy="power").occupancy_history
    jan = site_rows("1d").query("id == 'xy-03' and start_ms >= @AS_OF_MS - 31 * @DAY_MS")
    got = power.set_index(["site", "month"])["occupancy_pct"]["xy-03", "2025-01"]
    assert got == pytest.approx(100 * jan["it_kwh"].sum() / (31 * 24) / (240 * 2.5), rel=1e-9)
    assert figures_from_store(store, AS_OF_MS, tz=TZ, occupancy="none").occupancy_history.empty
    store.close()


def test_newest_data_counts_an_open_day_only_up_to_its_start(store):
    assert newest_data_ms(store) == AS_OF_MS
    day = site_rows("1d").query("id == 'ga-01'").tail(1).copy()
    day[["start_ms", "end_ms", "final"]] = [AS_OF_MS, AS_OF_MS + DAY_MS, False]
    store.write_windows(day)
    assert newest_data_ms(store) == AS_OF_MS


def test_assess_store_wires_settings_figures_and_the_core(store):
    settings = RetirementSettings.model_validate({
        "criteria": {"min_pue_months": 2, "inefficient_above_pue": 1.7},
        "economics": {"electricity_price_cny_per_kwh": 0.4}, "occupancy_history": "none"})
    result = assess_store(store, fleet(), settings, tz=TZ, price_cny_per_kwh=0.5)
    assert result.as_of_ms == AS_OF_MS  # the newest data, not the wall clock
    sites = result.assessment.sites.set_index("site")
    assert sites.loc["tr-02", "inefficient"] == "met" and sites.loc["tr-02", "verdict"] == "retire"
    assert sites.loc["tr-02", "occupancy_source"] == "racks"
    assert sites.loc["ga-01", "age_years"] == AS_OF.year - 2022
    plan = result.assessment.plan.set_index("site")
    figures = result.figures.figures.set_index("site")
    tr = plan.loc["tr-02"]
    assert tr["moved_it_kw"] == pytest.approx(figures.loc["tr-02", "it_kw_mean"])
    assert tr["saved_cost_cny_year"] == pytest.approx(tr["saved_kwh_year"] * 0.5)  # --price wins over the file
    assert tr["saved_kwh_year"] == pytest.approx(figures.loc["tr-02", "it_kw_mean"] * 8760
                                                 * (figures.loc["tr-02", "annual_pue"] - tr["destination_pue"]))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["period"]["as_of"] == "2025-02-01T00:00:00+08:00"
    assert data["period"]["start"] == "2024-02-01T00:00:00+08:00"
    assert {"criteria", "totals", "sites", "plan", "clusters"} <= set(data)
