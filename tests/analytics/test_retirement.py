"""Retirement assessment (issue #7): criteria, verdicts, score and the consolidation plan on synthetic fleets.

Ground truth is built into the fleet: every site but the baseline departs from a "healthy" site in
known ways, so which criteria it meets, its verdict and its savings are known before running.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dcpue.analytics.retirement import (
    CRITERIA,
    PLAN_COLUMNS,
    SITE_COLUMNS,
    STATUSES,
    VERDICTS,
    Economics,
    RetirementCriteria,
    assess,
    haversine_km,
    isolated,
    site_inputs,
)
from dcpue.registry import Cluster
from tests.factories import GUI_AN, registry, simple_site

YEAR = 2025
HUB = Cluster(**GUI_AN)  # 26.4 N, 106.4 E
NEAR = {"latitude": 26.45, "longitude": 106.45}  # ~7 km from the hub centre, outside the cluster
FAR = {"latitude": 28.9, "longitude": 104.1}  # ~360 km away, nobody near
# a healthy site: large (10,000 kW = 4,000 standard racks), young, 80 % occupied, PUE 1.25, near the hub,
# earning well (30,000 − 5,000 − energy 10,266 CNY per rack-year)
HEALTHY = {"racks_installed": 4000, "racks_in_service": 3200, "design_it_kw": 10000.0, "commissioned": 2020, **NEAR}
HEALTHY_FIG = {"annual_pue": 1.25, "it_kw_mean": 6000.0, "revenue_per_rack_cny_year": 30000.0}
ECON = Economics(electricity_price_cny_per_kwh=0.5, cost_per_rack_cny_year=5000.0)


def fleet(*specs: tuple[str, dict, dict], clusters: list[dict] | None = None):
    """Registry and figures from (site id, registry overrides, figure overrides) on top of the healthy site."""
    sites = [simple_site(sid, **{**HEALTHY, **reg}) for sid, reg, _ in specs]
    figures = pd.DataFrame([{"site": sid, **HEALTHY_FIG, **fig} for sid, _, fig in specs])
    return registry(*sites, clusters=[GUI_AN] if clusters is None else clusters), figures


def run(*specs, criteria=None, economics=ECON, history=None, **kw):
    reg, figures = fleet(*specs)
    inputs = site_inputs(reg, figures, as_of_year=YEAR, occupancy_history=history, criteria=criteria)
    return assess(inputs, reg.clusters, criteria, economics, **kw)


def statuses(result) -> dict[str, dict[str, str]]:
    return {row["site"]: {c: row[c] for c in CRITERIA} for row in result.sites.to_dict("records")}


ALONE = [
    # 30 %, with IT load and so energy cost per rack in service as the healthy site's
    ("low_occupancy", {"racks_in_service": 1200}, {"it_kw_mean": 2250.0}, "consolidate"),
    ("small", {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160}, {"it_kw_mean": 300.0},
     "consolidate"),
    ("old", {"commissioned": 2010}, {}, "keep"),
    ("inefficient", {}, {"annual_pue": 1.80}, "upgrade"),
    ("scattered", FAR, {}, "consolidate"),
    ("poor_benefit", {}, {"revenue_per_rack_cny_year": 12000.0}, "consolidate"),
]


def test_each_criterion_acts_alone_and_its_verdict_follows_the_rules():
    result = run(("healthy", {}, {}), *[(c, reg, fig) for c, reg, fig, _ in ALONE])
    got = statuses(result)
    assert got["healthy"] == dict.fromkeys(CRITERIA, "not_met")
    for criterion, *_ in ALONE:
        expected = {c: "met" if c == criterion else "not_met" for c in CRITERIA}
        assert got[criterion] == expected, criterion
    verdicts = result.sites.set_index("site")["verdict"]
    assert verdicts["healthy"] == "keep"
    assert {c: verdicts[c] for c, *_ in ALONE} == {c: v for c, _, _, v in ALONE}
    # score: the criterion's weight out of 100 (weights sum to 100 by default)
    weights = RetirementCriteria().weights
    scores = result.sites.set_index("site")["score"]
    assert scores["healthy"] == 0.0
    assert {c: scores[c] for c, *_ in ALONE} == {c: getattr(weights, c) for c, *_ in ALONE}
    assert list(result.sites.columns) == list(SITE_COLUMNS)
    assert set(result.sites[list(CRITERIA)].stack()) <= set(STATUSES)
    assert set(result.sites["verdict"]) <= set(VERDICTS)


def test_criteria_together_give_retire_and_every_criterion_met_scores_100():
    old_small_bad = {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160, "commissioned": 2010}
    result = run(
        ("osi", old_small_bad, {"annual_pue": 1.8, "it_kw_mean": 300.0}),  # old, small, inefficient
        ("osl", {**old_small_bad, "racks_in_service": 40}, {"it_kw_mean": 80.0}),  # old, small, low occupancy
        ("os", old_small_bad, {"it_kw_mean": 300.0}),  # old and small only: no retire reason
        ("all", {**old_small_bad, "racks_in_service": 40, **FAR},
         {"annual_pue": 1.9, "it_kw_mean": 80.0, "revenue_per_rack_cny_year": 1000.0}),
        ("young_small_bad", {**old_small_bad, "commissioned": 2021}, {"annual_pue": 1.8, "it_kw_mean": 300.0}),
    )
    sites = result.sites.set_index("site")
    assert sites.loc["osi", "verdict"] == "retire"
    assert sites.loc["osl", "verdict"] == "retire"
    assert sites.loc["os", "verdict"] == "consolidate"
    assert sites.loc["young_small_bad", "verdict"] == "consolidate"  # small and outside the hub: not worth a retrofit
    assert sites.loc["all", "verdict"] == "retire"
    assert sites.loc["all", "criteria_met"] == 6 and sites.loc["all", "score"] == 100.0
    assert (sites["verdict_certain"]).all()
    assert sites.loc["osi", "verdict_reason"] == "old and small, and inefficient, outside every hub cluster"
    assert sites.loc["young_small_bad", "verdict_reason"] == "small, outside every hub cluster"


def test_a_hub_member_is_never_retired_consolidated_or_moved():
    member = {"cluster": "gui-an", "design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 40,
              "commissioned": 2010, "latitude": 26.41, "longitude": 106.41}
    result = run(("member", member, {"annual_pue": 1.9, "it_kw_mean": 80.0}),
                 ("member_ok", {**member, "racks_in_service": 160}, {"annual_pue": 1.3, "it_kw_mean": 300.0}))
    sites = result.sites.set_index("site")
    assert sites.loc["member", "verdict"] == "upgrade"  # inefficient in the hub: retrofit, not retire
    assert sites.loc["member", "scattered"] == "not_met"
    assert sites.loc["member", "scattered_evidence"] == "member of hub cluster gui-an"
    assert sites.loc["member", "verdict_reason"] == (
        "inefficient (annual PUE 1.90 > 1.50), in hub cluster gui-an, so it stays; "
        "air-cooled: a liquid or hybrid cooling retrofit candidate")
    assert sites.loc["member_ok", "verdict"] == "keep"
    assert sites.loc["member_ok", "verdict_reason"] == "met (small, old) but no rule applies"
    assert result.plan.empty


def test_a_large_inefficient_site_outside_the_hubs_is_upgraded_for_its_size():
    """Outside every hub the reason names its size, never a missing cluster ("in hub cluster nan")."""
    big = {"design_it_kw": 10_000.0, "racks_installed": 4000, "racks_in_service": 3000, "commissioned": 2019}
    member = {"cluster": "gui-an", "design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160,
              "commissioned": 2020, "latitude": 26.41, "longitude": 106.41}  # a cluster column with a value
    sites = run(("big", big, {"annual_pue": 1.62, "it_kw_mean": 6000.0}),
                ("member", member, {"annual_pue": 1.3, "it_kw_mean": 300.0})).sites.set_index("site")
    assert sites.loc["big", "verdict"] == "upgrade"
    assert sites.loc["big", "verdict_reason"] == (
        "inefficient (annual PUE 1.62 > 1.50), 4,000 standard racks, large enough to retrofit; "
        "air-cooled: a liquid or hybrid cooling retrofit candidate")


# --- thresholds: the documented side of each boundary -----------------------------------------------

@pytest.mark.parametrize(("criterion", "reg", "fig", "expected"), [
    ("low_occupancy", {"racks_in_service": 2000}, {}, "not_met"),  # exactly 50 %: "< 50 %" is not met
    ("low_occupancy", {"racks_in_service": 1999}, {}, "met"),
    ("small", {"design_it_kw": 7500.0}, {}, "not_met"),  # exactly 3,000 standard racks: large
    ("small", {"design_it_kw": 7499.0}, {}, "met"),
    ("old", {"commissioned": 2015}, {}, "met"),  # exactly 10 years: "≥ 10" is met
    ("old", {"commissioned": 2016}, {}, "not_met"),
    ("old", {"commissioned": 2005, "refreshed": 2016}, {}, "not_met"),  # counted from the refresh
    ("inefficient", {}, {"annual_pue": 1.50}, "not_met"),  # exactly the GB 40879 limit: grade 3
    ("inefficient", {}, {"annual_pue": 1.5001}, "met"),
    ("inefficient", {}, {"annual_pue": 1.8, "months_observed": 10.8}, "met"),  # 0.9 of a year is enough
    ("inefficient", {}, {"annual_pue": 1.8, "months_observed": 365 * 24 / 730.5}, "met"),  # a rolling 365 days
    ("poor_benefit", {}, {"revenue_per_rack_cny_year": 5000.0, "electricity_price_cny_per_kwh": 0.0}, "not_met"),
    ("poor_benefit", {}, {"revenue_per_rack_cny_year": 4999.0, "electricity_price_cny_per_kwh": 0.0}, "met"),
])
def test_sites_at_a_threshold_are_classified_as_documented(criterion, reg, fig, expected):
    result = run(("s", reg, fig))
    assert result.sites.iloc[0][criterion] == expected, result.sites.iloc[0][f"{criterion}_evidence"]


def test_scattered_distance_at_the_threshold_is_not_met_and_beyond_it_is_met():
    reg, figures = fleet(("lone", FAR, {}))
    d = float(haversine_km(FAR["latitude"], FAR["longitude"], HUB.latitude, HUB.longitude))
    assert 300 < d < 400
    inputs = site_inputs(reg, figures, as_of_year=YEAR)
    at = assess(inputs, reg.clusters, RetirementCriteria(scattered_hub_km=d)).sites.iloc[0]
    beyond = assess(inputs, reg.clusters, RetirementCriteria(scattered_hub_km=d - 1e-6)).sites.iloc[0]
    assert at["scattered"] == "not_met" and "≤" in at["scattered_evidence"]
    assert beyond["scattered"] == "met"


def test_evidence_is_in_plain_words_with_the_numbers_and_the_threshold():
    history = pd.DataFrame({"site": "s", "month": [f"2024-{m:02d}" for m in range(1, 13)],
                            "occupancy_pct": [38.0] + [31.0] * 11})
    result = run(("s", {"commissioned": 2011, "design_it_kw": 3000.0}, {"annual_pue": 1.82}), history=history)
    row = result.sites.iloc[0]
    assert row["low_occupancy_evidence"] == "上架率 31 % < 50 % for 12 months (highest 38 %)"
    assert row["small_evidence"] == "1,200 standard racks < 3,000 (中小型; design IT 3,000 kW ÷ 2.5 kW)"
    assert row["old_evidence"] == "14 years since commissioning in 2011 ≥ 10"
    assert row["inefficient_evidence"] == ("annual PUE 1.82 > 1.50 (GB 40879-2021: beyond the limit value; "
                                           "0.62 above the 1.2 target)")
    assert row["grade"] == "beyond_limit"
    assert row["scattered_evidence"].startswith("7.") and row["scattered_evidence"].endswith("≤ 50 km")


# --- occupancy over a period and by power ---------------------------------------------------------

def months(values: list[float], start: str = "2024-01", site: str = "s") -> pd.DataFrame:
    period = pd.period_range(start, periods=len(values), freq="M").astype(str)
    return pd.DataFrame({"site": site, "month": period, "occupancy_pct": values})


def test_the_occupancy_trend_is_the_least_squares_slope_per_year():
    falling = months([60.0 - 2.0 * k for k in range(12)], site="f")  # −2 pp a month
    noisy = months([50.0, 56.0, 49.0, 58.0], site="n", start="2024-09")
    short = months([40.0, 45.0], site="s2", start="2024-11")
    history = pd.concat([falling, noisy, short], ignore_index=True)
    specs = [(sid, {"design_it_kw": 3000.0}, {"annual_pue": 1.3}) for sid in ("f", "n", "s2")]
    sites = run(*specs, history=history).sites.set_index("site")
    assert sites.loc["f", "occupancy_trend_pp_per_year"] == pytest.approx(-24.0)
    x, y = np.arange(4.0), np.array([50.0, 56.0, 49.0, 58.0])
    assert sites.loc["n", "occupancy_trend_pp_per_year"] == pytest.approx(12 * np.polyfit(x, y, 1)[0])
    assert np.isnan(sites.loc["s2", "occupancy_trend_pp_per_year"])  # two months are not a trend


@pytest.mark.parametrize(("values", "expected"), [
    ([31.0] * 12, "met"),
    ([31.0] * 11 + [50.0], "not_met"),  # one month at the bar breaks "sustained"
    ([31.0] * 5, "unknown"),  # low, but only 5 of the 12 months needed
    ([80.0] * 12 + [31.0] * 12, "met"),  # only the last 12 months count
    ([31.0] * 6 + [90.0] * 1, "not_met"),  # too short to be sustained, but already above the bar
])
def test_low_occupancy_must_be_sustained_over_the_months_of_history(values, expected):
    # the registry snapshot (80 %) is not what decides when there is history
    result = run(("s", {}, {}), history=months(values))
    assert result.sites.iloc[0]["low_occupancy"] == expected, result.sites.iloc[0]["low_occupancy_evidence"]
    assert result.sites.iloc[0]["occupancy_source"] == "history"


def test_without_history_the_snapshot_decides_unless_history_is_required():
    plain = run(("s", {"racks_in_service": 1200}, {}))
    strict = run(("s", {"racks_in_service": 1200}, {}), criteria=RetirementCriteria(occupancy_history_required=True))
    assert plain.sites.iloc[0]["low_occupancy"] == "met"
    assert "no monthly history" in plain.sites.iloc[0]["low_occupancy_evidence"]
    assert strict.sites.iloc[0]["low_occupancy"] == "unknown"


def test_occupancy_by_power_where_racks_in_service_are_missing_from_a_csv_table(tmp_path):
    reg, figures = fleet(("a", {"racks_installed": 100, "racks_in_service": 80}, {"it_kw_mean": 100.0}),
                         ("b", {"racks_installed": 100, "racks_in_service": 80}, {"it_kw_mean": 150.0}))
    path = tmp_path / "inputs.csv"
    site_inputs(reg, figures, as_of_year=YEAR).to_csv(path, index=False)
    table = pd.read_csv(path)
    table["racks_in_service"] = np.nan  # the operator's export has no in-service counts
    sites = assess(table, reg.clusters, economics=ECON).sites.set_index("site")
    # 100 kW ÷ (100 racks × 2.5 kW) = 40 % < 50 %; 150 kW ÷ 250 kW = 60 %
    assert sites.loc["a", "occupancy_pct"] == pytest.approx(40.0)
    assert sites.loc["b", "occupancy_pct"] == pytest.approx(60.0)
    assert sites["occupancy_source"].tolist() == ["power", "power"]
    assert sites.loc["a", "low_occupancy"] == "met" and sites.loc["b", "low_occupancy"] == "not_met"
    assert "by power (IT 100 kW ÷ (100 racks × 2.5 kW)" in sites.loc["a", "low_occupancy_evidence"]
    # without racks in service the margin per rack is undefined
    assert (sites["poor_benefit"] == "unknown").all()


# --- unknown is neither pass nor fail -------------------------------------------------------------

def test_missing_data_makes_a_criterion_unknown_never_met_or_not_met():
    reg, figures = fleet(("s", {}, {}))
    table = site_inputs(reg, figures, as_of_year=YEAR)
    table.loc[:, ["racks_in_service", "racks_installed", "it_kw_mean", "design_it_kw", "commissioned",
                  "annual_pue", "latitude", "longitude", "revenue_per_rack_cny_year"]] = np.nan
    row = assess(table, reg.clusters, economics=ECON).sites.iloc[0]
    assert [row[c] for c in CRITERIA] == ["unknown"] * 6
    assert row["criteria_unknown"] == 6 and row["criteria_met"] == 0
    assert row["score"] == 0.0 and row["score_max"] == 100.0
    assert row["verdict"] == "keep" and not row["verdict_certain"]
    assert set(row["verdict_alternatives"].split(", ")) == {"retire", "upgrade", "consolidate"}
    for c in CRITERIA:
        assert "unknown" in row[f"{c}_evidence"] or row[f"{c}_evidence"] == "location unknown", c


def test_unknown_criteria_never_trigger_a_verdict_but_are_reported_as_possible():
    # old and small with unknown PUE and occupancy: retire would need one of them met
    result = run(("s", {"commissioned": 2010, "design_it_kw": 500.0, "racks_installed": 200,
                        "racks_in_service": 160}, {"annual_pue": np.nan, "it_kw_mean": 300.0}),
                 economics=None)
    row = result.sites.iloc[0]
    assert row["inefficient"] == "unknown" and row["poor_benefit"] == "unknown"
    assert row["verdict"] == "consolidate" and not row["verdict_certain"]
    assert row["verdict_alternatives"] == "retire"
    weights = RetirementCriteria().weights
    assert row["score"] == pytest.approx(weights.small + weights.old)
    assert row["score_max"] == pytest.approx(weights.small + weights.old + weights.inefficient + weights.poor_benefit)


@pytest.mark.parametrize(("fig", "text"), [
    ({"annual_pue": 0.95}, "annual PUE unknown: 0.95 < 1 is a meter fault"),
    ({"annual_pue": 1.9, "months_observed": 8}, "annual PUE unknown: from 8 month(s) < 10.8"),
    ({"annual_pue": 1.9, "months_observed": 10.79}, "annual PUE unknown: from 10.79 month(s) < 10.8"),
])
def test_an_implausible_or_partial_annual_pue_is_unknown(fig, text):
    row = run(("s", {}, fig)).sites.iloc[0]
    assert row["inefficient"] == "unknown" and row["inefficient_evidence"] == text


def test_poor_benefit_is_met_on_partial_costs_only_when_the_known_costs_already_exceed_revenue():
    result = run(("over", {}, {"revenue_per_rack_cny_year": 4000.0}),  # 4,000 − 5,000 < 0 whatever energy costs
                 ("maybe", {}, {"revenue_per_rack_cny_year": 9000.0}),
                 economics=Economics(cost_per_rack_cny_year=5000.0))  # no electricity price
    sites = result.sites.set_index("site")
    assert sites.loc["over", "poor_benefit"] == "met"
    assert sites.loc["over", "poor_benefit_evidence"] == (
        "margin at most -1,000 CNY per rack-year < 0 (revenue 4,000 − cost 5,000; "
        "energy cost unknown (price, mean IT load or PUE))")
    assert sites.loc["maybe", "poor_benefit"] == "unknown"
    assert run(("s", {}, {}), economics=None).sites.iloc[0]["poor_benefit"] == "unknown"


def test_without_hub_clusters_scattered_is_unknown_unless_the_site_has_neighbours():
    reg, figures = fleet(("lone", FAR, {}), ("n1", {}, {}), ("n2", {"latitude": 26.46}, {}),
                         ("n3", {"latitude": 26.47}, {}), clusters=[])
    sites = assess(site_inputs(reg, figures, as_of_year=YEAR), [], economics=ECON).sites.set_index("site")
    assert sites.loc["lone", "scattered"] == "unknown"
    assert sites.loc[["n1", "n2", "n3"], "scattered"].tolist() == ["not_met"] * 3
    assert sites["nearest_cluster"].isna().all()


# --- geometry ---------------------------------------------------------------------------------------

def test_haversine_matches_the_sphere():
    assert haversine_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(6371.0088 * math.pi / 180)
    assert haversine_km(0.0, 0.0, 0.0, 90.0) == pytest.approx(6371.0088 * math.pi / 2)
    assert np.isnan(haversine_km(np.nan, 0.0, 1.0, 0.0))


def test_dbscan_isolation_on_a_known_geometry():
    # a triple within ~3 km, a pair ~11 km apart 200+ km away, a lone site, and one without coordinates
    lat = np.array([26.40, 26.42, 26.43, 28.50, 28.60, 24.90, np.nan])
    lon = np.array([106.40, 106.41, 106.43, 104.00, 104.00, 109.00, 104.0])
    got = isolated(lat, lon, eps_km=50.0, min_sites=3)
    np.testing.assert_array_equal(got[:6], [0, 0, 0, 1, 1, 1])
    assert np.isnan(got[6])
    # with pairs allowed, the pair is a group too
    np.testing.assert_array_equal(isolated(lat, lon, eps_km=50.0, min_sites=2)[:6], [0, 0, 0, 0, 0, 1])
    # and with a 5 km radius the triple still holds, the pair (11 km apart) no longer
    np.testing.assert_array_equal(isolated(lat, lon, eps_km=5.0, min_sites=2)[:6], [0, 0, 0, 1, 1, 1])


def test_a_far_site_grouped_with_others_is_not_scattered():
    far2 = {"latitude": FAR["latitude"] + 0.05, "longitude": FAR["longitude"]}
    far3 = {"latitude": FAR["latitude"] + 0.10, "longitude": FAR["longitude"]}
    sites = run(("f1", FAR, {}), ("f2", far2, {}), ("f3", far3, {}), ("lone", {"latitude": 24.0}, {})).sites
    sites = sites.set_index("site")
    assert sites.loc[["f1", "f2", "f3"], "scattered"].tolist() == ["not_met"] * 3
    assert "grouped with other sites" in sites.loc["f1", "scattered_evidence"]
    assert sites.loc["lone", "scattered"] == "met"


# --- the plan ---------------------------------------------------------------------------------------

def test_savings_equal_a_hand_computation_for_two_sites():
    small = {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160, **FAR}
    reg = registry(
        simple_site("a", **{**HEALTHY, **small}),
        simple_site("b", **{**HEALTHY, **small, "latitude": 24.0, "grid_emission_factor": 0.6}),
        clusters=[GUI_AN])
    figures = pd.DataFrame({"site": ["a", "b"], "annual_pue": [1.80, 1.45], "it_kw_mean": [100.0, 250.0],
                            "electricity_price_cny_per_kwh": [np.nan, 0.5]})
    result = assess(site_inputs(reg, figures, as_of_year=YEAR), reg.clusters,
                    economics=Economics(electricity_price_cny_per_kwh=0.6),
                    cluster_overrides={"gui-an": {"capacity_kw": 10000.0, "load_kw": 2000.0, "pue": 1.15}})
    plan = result.plan.set_index("site")
    # a: 100 kW × 8,760 h = 876,000 kWh IT; × (1.80 − 1.15) = 569,400 kWh; × 0.5366 kg/kWh = 305.54004 t; × 0.6 CNY
    assert plan.loc["a", "it_kwh_year"] == pytest.approx(876_000.0)
    assert plan.loc["a", "saved_kwh_year"] == pytest.approx(569_400.0)
    assert plan.loc["a", "saved_tco2_year"] == pytest.approx(305.54004)
    assert plan.loc["a", "saved_cost_cny_year"] == pytest.approx(341_640.0)
    # b: 250 kW × 8,760 = 2,190,000 kWh; × 0.30 = 657,000 kWh; × 0.6 kg/kWh = 394.2 t; × 0.5 CNY (its own price)
    assert plan.loc["b", "saved_kwh_year"] == pytest.approx(657_000.0)
    assert plan.loc["b", "saved_tco2_year"] == pytest.approx(394.2)
    assert plan.loc["b", "saved_cost_cny_year"] == pytest.approx(328_500.0)
    assert result.plan["site"].tolist() == ["b", "a"]  # largest saving first
    assert result.totals["saved_kwh_year"] == pytest.approx(1_226_400.0)
    assert result.totals["saved_tco2_year"] == pytest.approx(699.74004)
    assert result.totals["saved_cost_cny_year"] == pytest.approx(670_140.0)
    assert result.totals["moved_it_kw"] == pytest.approx(350.0)
    cl = result.clusters.iloc[0]
    assert (cl["capacity_kw"], cl["load_kw_before"], cl["spare_kw_before"]) == (10000.0, 2000.0, 8000.0)
    assert (cl["moved_in_kw"], cl["spare_kw_after"], cl["sites_in"]) == (350.0, 7650.0, 2)
    assert list(result.plan.columns) == list(PLAN_COLUMNS)


def test_the_plan_books_no_saving_on_a_pue_the_criteria_called_unknown_nor_room_from_a_negative_load():
    """A PUE from 2 months is unknown to the inefficiency criterion, so the plan cannot book a saving on it;
    a negative mean IT load (a meter fault) is unknown, so it cannot free room in a cluster for others."""
    small = {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160, **FAR}
    reg = registry(simple_site("short", **{**HEALTHY, **small}), simple_site("neg", **{**HEALTHY, **small}),
                   simple_site("a", **{**HEALTHY, **small}), simple_site("b", **{**HEALTHY, **small}),
                   clusters=[GUI_AN])
    figures = pd.DataFrame({"site": ["short", "neg", "a", "b"], "annual_pue": [2.5, 1.9, 1.8, 1.8],
                            "months_observed": [2.0, 12.0, 12.0, 12.0], "it_kw_mean": [50.0, -400.0, 60.0, 60.0]})
    result = assess(site_inputs(reg, figures, as_of_year=YEAR), reg.clusters,
                    cluster_overrides={"gui-an": {"capacity_kw": 1000.0, "load_kw": 900.0, "pue": 1.15}})
    sites, plan = result.sites.set_index("site"), result.plan.set_index("site")
    assert sites.loc["short", "inefficient"] == "unknown"
    assert np.isnan(plan.loc["short", "saved_kwh_year"])  # not 50 × 8,760 × (2.5 − 1.15)
    assert np.isnan(sites.loc["neg", "it_kw_mean"]) and pd.isna(plan.loc["neg", "destination"])
    cl = result.clusters.iloc[0]
    assert cl["spare_kw_before"] == 100.0 and cl["moved_in_kw"] <= 100.0  # 50 + 60 + 60 kW cannot all go in
    assert result.totals["saved_kwh_year"] == pytest.approx(plan["saved_kwh_year"].sum())


def test_cluster_figures_derive_from_member_sites():
    members = [("m1", {"cluster": "gui-an", "design_it_kw": 20000.0}, {"it_kw_mean": 10000.0, "annual_pue": 1.10}),
               ("m2", {"cluster": "gui-an", "design_it_kw": 10000.0}, {"it_kw_mean": 5000.0, "annual_pue": 1.40})]
    cl = run(*members).clusters.iloc[0]
    assert cl["members"] == 2
    assert cl["capacity_kw"] == 30000.0 and cl["load_kw_before"] == 15000.0 and cl["spare_kw_before"] == 15000.0
    assert cl["pue"] == pytest.approx((1.10 * 10000 + 1.40 * 5000) / 15000)  # energy-weighted, 1.2
    assert cl["occupancy_pct"] == pytest.approx(80.0)


def test_the_largest_saving_goes_first_and_a_site_that_fits_nowhere_gets_no_destination():
    small = {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160}
    result = run(("a", {**small, **FAR}, {"annual_pue": 2.00, "it_kw_mean": 100.0}),  # saves 100 × 0.85 = 85 kW
                 ("b", {**small, "latitude": 24.0}, {"annual_pue": 1.50, "it_kw_mean": 250.0}),  # 250 × 0.35 = 87.5
                 cluster_overrides={"gui-an": {"capacity_kw": 300.0, "load_kw": 0.0, "pue": 1.15}})
    plan = result.plan.set_index("site")
    assert plan.loc["b", "destination"] == "gui-an"
    assert plan.loc["a", "destination"] is None
    assert plan.loc["a", "note"] == "no hub cluster has 100 kW spare (largest spare now 50 kW)"
    assert plan.loc["a", "moved_it_kw"] == 0.0 and np.isnan(plan.loc["a", "saved_kwh_year"])
    assert result.totals["unplaced"] == 1.0
    assert result.clusters.iloc[0]["spare_kw_after"] == pytest.approx(50.0)


def test_the_nearest_cluster_with_room_is_chosen():
    clusters = [GUI_AN, {"id": "west", "name": "West", "latitude": 28.0, "longitude": 104.5}]
    small = {"design_it_kw": 500.0, "racks_installed": 200, "racks_in_service": 160, **FAR}  # nearer to west
    reg, figures = fleet(("a", small, {"it_kw_mean": 100.0}), clusters=clusters)
    inputs = site_inputs(reg, figures, as_of_year=YEAR)
    roomy = {"gui-an": {"capacity_kw": 1000.0, "pue": 1.1}, "west": {"capacity_kw": 1000.0, "pue": 1.2}}
    assert assess(inputs, reg.clusters, cluster_overrides=roomy).plan.iloc[0]["destination"] == "west"
    full = {**roomy, "west": {"capacity_kw": 99.0, "pue": 1.2}}
    plan = assess(inputs, reg.clusters, cluster_overrides=full).plan.iloc[0]
    assert plan["destination"] == "gui-an" and plan["distance_km"] > 300


def _plan_fleet(data):
    n = data.draw(st.integers(1, 10), label="sites")
    k = data.draw(st.integers(1, 3), label="clusters")
    clusters = [{"id": f"c{j}", "name": f"C{j}", "latitude": 24.0 + 2.0 * j, "longitude": 104.0 + j}
                for j in range(k)]
    sites, figs = [], []
    for i in range(n):
        sites.append(simple_site(
            f"s{i}", latitude=data.draw(st.floats(24.0, 29.0)), longitude=data.draw(st.floats(103.0, 109.0)),
            design_it_kw=500.0, racks_installed=200, racks_in_service=160, commissioned=2020))
        figs.append({"site": f"s{i}", "annual_pue": data.draw(st.floats(1.1, 2.2)),
                     "it_kw_mean": data.draw(st.one_of(st.floats(0.0, 400.0), st.just(np.nan)))})
    overrides = {c["id"]: {"capacity_kw": data.draw(st.floats(0.0, 1500.0)),
                           "load_kw": data.draw(st.floats(0.0, 500.0)), "pue": data.draw(st.floats(1.05, 1.5))}
                 for c in clusters}
    return registry(*sites, clusters=clusters), pd.DataFrame(figs), overrides


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_plan_never_exceeds_a_clusters_spare_capacity(data):
    reg, figures, overrides = _plan_fleet(data)
    result = assess(site_inputs(reg, figures, as_of_year=YEAR), reg.clusters, cluster_overrides=overrides)
    movers = result.sites.loc[result.sites["verdict"].isin(["retire", "consolidate"]), "site"]
    assert len(movers) == len(reg.sites)  # small and outside every cluster: all consolidate
    assert sorted(result.plan["site"]) == sorted(movers)  # every moving site appears exactly once
    cl = result.clusters.set_index("cluster")
    moved = result.plan.groupby("destination")["moved_it_kw"].sum().reindex(cl.index, fill_value=0.0)
    np.testing.assert_allclose(cl["moved_in_kw"], moved)
    assert (cl["moved_in_kw"] <= cl["spare_kw_before"] + 1e-6).all()
    assert (cl["spare_kw_after"] >= -1e-6).all()
    # greedy is not lazy: an unplaced site with a known load fits in no cluster's remaining spare
    unplaced = result.plan[result.plan["destination"].isna() & result.plan["it_kwh_year"].notna()]
    for it_kwh in unplaced["it_kwh_year"]:
        assert (cl["spare_kw_after"] < it_kwh / 8760 - 1e-9).all()


# --- interface and validation ------------------------------------------------------------------------

def test_to_dict_is_json_ready_and_nan_becomes_none():
    result = run(("s", {"commissioned": 2010, "design_it_kw": 500.0, "racks_installed": 200,
                        "racks_in_service": 40, **FAR}, {"it_kw_mean": 80.0, "annual_pue": np.nan}),
                 economics=None)
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(doc) == {"criteria", "totals", "sites", "plan", "clusters"}
    assert doc["sites"][0]["annual_pue"] is None
    assert doc["plan"][0]["saved_kwh_year"] is None
    assert doc["totals"]["saved_cost_cny_year"] is None  # no price: unknown, not 0
    assert doc["criteria"]["low_occupancy_below_pct"] == 50.0


def test_bad_configuration_fails_fast_naming_the_valid_options():
    reg, figures = fleet(("s", {}, {}))
    inputs = site_inputs(reg, figures, as_of_year=YEAR)
    with pytest.raises(ValueError, match="unknown cluster 'nope' \\(known: gui-an\\)"):
        assess(inputs, reg.clusters, cluster_overrides={"nope": {"pue": 1.2}})
    with pytest.raises(ValueError, match="valid: capacity_kw, load_kw, pue"):
        assess(inputs, reg.clusters, cluster_overrides={"gui-an": {"spare": 1.0}})
    with pytest.raises(ValidationError):
        RetirementCriteria(low_occupancy_pct=40)  # extra="forbid": a typo is an error
    with pytest.raises(ValueError, match="more than once: s"):
        site_inputs(reg, pd.concat([figures, figures]), as_of_year=YEAR)
    with pytest.raises(ValueError, match="YYYY-MM"):
        site_inputs(reg, as_of_year=YEAR, occupancy_history=pd.DataFrame(
            {"site": ["s"], "month": ["last spring"], "occupancy_pct": [40.0]}))
