"""Tests of the fleet generator and the fleet simulator (dcpue.ingest.simulator)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import psychrolib
import pytest
import yaml

from dcpue.ingest.base import Collector
from dcpue.ingest.simulator import (
    FaultEvent,
    FaultKind,
    FleetSimulator,
    archetype_of,
    climate,
    faults,
    generate_fleet,
    plant,
)
from dcpue.model import READING_COLUMNS, CoolingSubsystem, Quantity, Role
from dcpue.registry import dump_registry, load_registry, parse_registry
from dcpue.wire import decode_batch, encode_frame

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000


def utc_ms(stamp: str) -> int:
    return int(pd.Timestamp(stamp).value // 1_000_000)


JAN = utc_ms("2024-01-08T00:00Z")
JUL = utc_ms("2024-07-08T00:00Z")
APR = utc_ms("2024-04-08T00:00Z")


@pytest.fixture(scope="module")
def fleet():
    return generate_fleet(12, seed=7)


def site_of(registry, kind: str, city: str | None = None):
    return next(s for s in registry.sites if archetype_of(s) == kind and (city is None or s.city == city))


def collect(frames: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(READING_COLUMNS))
    out = pd.concat([f for _, f in frames], ignore_index=True)
    return out.sort_values(["site", "point", "ts"], ignore_index=True)


def series(frame: pd.DataFrame, site: str, point: str) -> pd.Series:
    rows = frame[(frame["site"] == site) & (frame["point"] == point)]
    return pd.Series(rows["value"].to_numpy(), index=rows["ts"].to_numpy())


# -- fleet generation ---------------------------------------------------------------------------

def test_demo_registry_file_is_the_generated_fleet(fleet):
    path = REPO / "deploy" / "sites" / "guizhou-demo.yaml"
    assert path.read_text(encoding="utf-8") == dump_registry(fleet), (
        "deploy/sites/guizhou-demo.yaml drifted; regenerate with dump_registry(generate_fleet(12, seed=7))"
    )
    assert load_registry(path) == fleet


@pytest.mark.parametrize("n_sites,seed", [(1, 0), (4, 1), (12, 7), (12, 3), (40, 123)])
def test_generated_fleets_validate_and_have_every_archetype(n_sites, seed):
    registry = generate_fleet(n_sites, seed)
    assert parse_registry(yaml.safe_load(dump_registry(registry))) == registry  # round-trips and validates
    assert generate_fleet(n_sites, seed) == registry  # deterministic
    assert len(registry.sites) == n_sites
    kinds = {archetype_of(s) for s in registry.sites}
    if n_sites >= 4:
        assert kinds == {"liquid", "hybrid", "enterprise", "legacy"}
    for site in registry.sites:
        kind = archetype_of(site)
        per_rack = site.design_it_kw / site.racks_installed
        occupancy = site.racks_in_service / site.racks_installed
        subsystems = {p.cooling_subsystem for p in site.points if p.role is Role.COOLING}
        if kind == "legacy":
            assert per_rack == 2.5 and 30 <= site.racks_installed <= 300 and 0.3 <= occupancy <= 0.5
            assert 2008 <= site.commissioned <= 2014 and site.cluster is None
        if kind == "liquid":
            assert site.racks_installed >= 1000 and per_rack > 10 and 2019 <= site.commissioned <= 2024
            assert {CoolingSubsystem.CDU, CoolingSubsystem.PUMP, CoolingSubsystem.DRY_COOLER,
                    CoolingSubsystem.CRAH} <= subsystems and CoolingSubsystem.CHILLER not in subsystems
        if kind in ("enterprise", "legacy"):
            assert {CoolingSubsystem.CRAH, CoolingSubsystem.CHILLER} <= subsystems
            assert CoolingSubsystem.CDU not in subsystems
        if kind == "hybrid":
            assert {CoolingSubsystem.CRAH, CoolingSubsystem.CHILLER, CoolingSubsystem.CDU} <= subsystems
        assert (site.cluster == "gui-an") == (site.city == "Gui'an" and kind in ("liquid", "hybrid"))
        facility = [p for p in site.points if p.role is Role.FACILITY and p.quantity is Quantity.ENERGY]
        assert facility and facility[0].rated_kw and facility[0].unit == "kWh"
        assert len([p for p in site.points if p.role is Role.IT and p.it_category == 1]) >= 2
        assert len([p for p in site.points if p.tags.get("location") == "rack_inlet"]) >= 3
        assert any(p.quantity is Quantity.SETPOINT for p in site.points)
        has_tower = CoolingSubsystem.COOLING_TOWER in subsystems
        assert has_tower == any(p.role is Role.WATER for p in site.points)


def test_fleet_ids_cities_and_counter_options(fleet):
    ids = [s.id for s in fleet.sites]
    assert all(len(i) <= 6 and i[-2:].isdigit() for i in ids)
    assert {s.city for s in fleet.sites} <= set(climate.known_cities())
    facility = [p for s in fleet.sites for p in s.points if p.id == "facility.main"]
    assert any(p.rollover == 99_999_999 for p in facility) and any(p.rollover is None for p in facility)
    # a redundant switchgear meter on the revenue meter's boundary
    assert any(p.id == "facility.swgr" for s in fleet.sites for p in s.points)
    assert any(p.role is Role.RENEWABLE for s in fleet.sites for p in s.points)


# -- climate --------------------------------------------------------------------------------------

def test_climate_table_matches_published_guiyang_figures():
    guiyang = climate.city_climate("Guiyang")
    assert guiyang.t_mean_c[0] == pytest.approx(5.0, abs=0.5)
    assert guiyang.t_mean_c[6] == pytest.approx(24.0, abs=0.5)
    assert guiyang.t_mean_c.mean() == pytest.approx(15.3, abs=0.2)
    # higher cities are cooler in summer, Zunyi and Tongren warmer
    jul = {c: climate.city_climate(c).t_mean_c[6] for c in climate.known_cities()}
    assert jul["Bijie"] < jul["Guiyang"] and jul["Liupanshui"] < jul["Guiyang"]
    assert jul["Zunyi"] > jul["Guiyang"] and jul["Tongren"] > jul["Zunyi"]
    with pytest.raises(KeyError, match="known"):
        climate.city_climate("Atlantis")


def test_wet_bulb_interpolation_matches_psychrolib():
    psychrolib.SetUnitSystem(psychrolib.SI)
    pressure = psychrolib.GetStandardAtmPressure(1223.0)
    rng = np.random.default_rng(0)
    tdb = rng.uniform(-5, 35, 200)
    rh = rng.uniform(20, 100, 200)
    exact = np.array([psychrolib.GetTWetBulbFromRelHum(t, r / 100, pressure)
                      for t, r in zip(tdb, rh, strict=True)])
    error = np.abs(climate.wet_bulb_c(tdb, rh, pressure) - exact)
    # psychrolib switches to ice below 0 °C wet-bulb; the grid smooths that kink a little
    assert error[np.abs(exact) > 1.0].max() < 0.05
    assert error.max() < 0.35
    assert np.all(climate.wet_bulb_c(tdb, rh, pressure) <= tdb + 1e-9)


def test_weather_follows_normals_and_diurnal_cycle(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)
    ts = utc_ms("2024-01-01T00:00Z") + np.arange(0, 31 * DAY_MS, 10 * MIN_MS)
    state = sim.true_state(ts)
    site = site_of(fleet, "enterprise", "Guiyang")
    w = state[state["site"] == site.id]
    assert w["dry_bulb_c"].mean() == pytest.approx(climate.city_climate("Guiyang").t_mean_c[0], abs=2.0)
    local_hour = ((w["ts"] + 8 * HOUR_MS) % DAY_MS) // HOUR_MS
    by_hour = w.groupby(local_hour)["dry_bulb_c"].mean()
    assert by_hour.idxmin() in (5, 6, 7) and by_hour.idxmax() in (14, 15, 16)
    rh_by_hour = w.groupby(local_hour)["rh_pct"].mean()
    assert rh_by_hour[15] < rh_by_hour[6]  # RH is lowest in the warm afternoon
    assert (w["wet_bulb_c"] <= w["dry_bulb_c"] + 1e-9).all()


# -- the collector ----------------------------------------------------------------------------

def test_simulator_is_a_collector_and_frames_are_canonical(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    assert isinstance(sim, Collector)
    sim.setup()
    frames = sim.poll(JUL + 2 * HOUR_MS)
    sim.close()
    assert [s for s, _ in frames] == [s.id for s in fleet.sites]
    for site_id, frame in frames:
        assert list(frame.columns) == list(READING_COLUMNS)
        assert frame["ts"].dtype == np.int64 and frame["value"].dtype == np.float64
        assert frame["quality"].dtype == np.int64 and (frame["quality"] == 0).all()
        assert (frame["site"] == site_id).all()
        assert set(frame["point"]) == set(fleet.site(site_id).point_map)  # every point is simulated
        assert frame["ts"].min() == JUL and frame["ts"].max() == JUL + 2 * HOUR_MS
        assert np.isfinite(frame["value"]).all()
    assert sim.poll(JUL + 2 * HOUR_MS + 59_999) == []  # no new sample yet


def test_units_follow_the_registry(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    data = collect(sim.poll(JUL + 6 * HOUR_MS))
    truth = sim.true_state(np.arange(JUL, JUL + 6 * HOUR_MS + 1, MIN_MS))
    legacy = site_of(fleet, "legacy")
    assert legacy.point_map["lighting.main"].unit == "W"
    light_w = series(data, legacy.id, "lighting.main")
    true_kw = truth[truth["site"] == legacy.id]["lighting_kw"].to_numpy()
    np.testing.assert_allclose(light_w.to_numpy(), true_kw * 1000.0, rtol=0.01)
    # water counters: the m3 meter advances 1000× slower than the same flow in L would
    hybrid = site_of(fleet, "hybrid")
    assert hybrid.point_map["water.makeup"].unit == "m3"
    m3 = series(data, hybrid.id, "water.makeup")
    litres = truth[truth["site"] == hybrid.id]["makeup_l_per_s"].to_numpy()[1:].sum() * 60.0
    assert (m3.iloc[-1] - m3.iloc[0]) * 1000.0 == pytest.approx(litres, rel=1e-9)
    # IT feeds sum to the true IT power (category 1); PDU output (category 2) is a little lower
    ups = series(data, legacy.id, "it.ups-a") + series(data, legacy.id, "it.ups-b")
    np.testing.assert_allclose(ups.to_numpy(), truth[truth["site"] == legacy.id]["it_kw"], rtol=0.01)


def test_poll_round_trips_through_the_wire_format(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=True)
    for site_id, frame in sim.poll(JAN + DAY_MS):
        decoded = decode_batch(encode_frame(site_id, frame))
        assert decoded.rejects == []
        pd.testing.assert_frame_equal(decoded.readings.reset_index(drop=True), frame.reset_index(drop=True),
                                      check_dtype=False)
        assert decoded.readings["ts"].dtype == np.int64


def test_same_seed_same_readings_other_seed_other_readings(fleet):
    polls = [JAN + 5 * HOUR_MS, JAN + 11 * HOUR_MS]
    a, b, c = (FleetSimulator(fleet, seed=s, start_ms=JAN) for s in (7, 7, 8))
    for t in polls:
        fa, fb, fc = collect(a.poll(t)), collect(b.poll(t)), collect(c.poll(t))
        pd.testing.assert_frame_equal(fa, fb)
        assert not np.array_equal(fa["value"].to_numpy()[:1000], fc["value"].to_numpy()[:1000])


def test_readings_do_not_depend_on_how_polls_are_chunked(fleet):
    start = utc_ms("2024-03-01T00:00Z")
    end = start + 2 * DAY_MS

    def make():
        sim = FleetSimulator(fleet, seed=11, start_ms=start, faults=True)
        site = fleet.sites[2].id
        sim.inject(site, "it.ups-a", "stuck", start + 5 * HOUR_MS + 30_000, 3 * 3600)
        sim.inject(site, "facility.main", "counter_reset", start + 20 * HOUR_MS, 0)
        sim.inject(site, "env.supply-air", "spike", start + 26 * HOUR_MS, 0)
        sim.inject(site, None, "outage", start + 40 * HOUR_MS, 1800)
        sim.inject(site, "cool.crah-1", "gap", start + 47 * HOUR_MS, 3 * 3600)  # runs past the end
        # plant events, overlapping the meter faults above and each other
        sim.inject(site, None, "cooling_degraded", start + 3 * HOUR_MS + 30_000, 30 * 3600, magnitude=1.4)
        sim.inject(site, None, "hot_aisle", start + 10 * HOUR_MS, 4 * 3600)
        sim.inject(site, "env.rack-inlet-2", "hot_aisle", start + 12 * HOUR_MS, 40 * 3600, magnitude=3.0)
        liquid = site_of(fleet, "liquid").id
        sim.inject(liquid, None, "fw_supply_high", start + 23 * HOUR_MS, 3 * 3600)
        sim.inject(liquid, None, "cooling_degraded", start + 24 * HOUR_MS, 30 * 3600)  # runs past the end
        return sim

    one = make()
    whole = collect(one.poll(end))
    chunked = make()
    rng = np.random.default_rng(3)
    t, parts = start - 1, []
    while t < end:
        t = min(end, t + int(rng.integers(1, 500)) * 17_000)  # ragged steps, some without a new sample
        parts += chunked.poll(t)
    pd.testing.assert_frame_equal(whole, collect(parts))
    assert one.faults_log == chunked.faults_log
    assert len(one.faults_log) >= 9
    assert {FaultKind.COOLING_DEGRADED, FaultKind.HOT_AISLE, FaultKind.FW_SUPPLY_HIGH} <= {
        e.kind for e in one.faults_log}


# -- physics --------------------------------------------------------------------------------------

PUE_RANGES = {"liquid": (1.10, 1.25), "hybrid": (1.12, 1.35), "enterprise": (1.25, 1.50),
              "legacy": (1.6, 2.2)}


@pytest.mark.parametrize("seed", [7, 3])
def test_archetype_pue_comes_out_of_the_physics(seed):
    registry = generate_fleet(12, seed)
    sim = FleetSimulator(registry, seed=seed, start_ms=JAN, faults=False)
    # one week in each season, 10-minute resolution
    weeks = [utc_ms(f"2024-{m:02d}-10T00:00Z") for m in (1, 4, 7, 10)]
    ts = np.concatenate([w + np.arange(0, 7 * DAY_MS, 10 * MIN_MS) for w in weeks])
    state = sim.true_state(ts)
    # the energy balance is exact: grid import + PV = IT + cooling + losses + lighting
    parts = state["it_kw"] + state["cooling_kw"] + state["losses_kw"] + state["lighting_kw"]
    np.testing.assert_allclose(state["facility_kw"] + state["pv_kw"], parts)
    sums = state.groupby("site")[["facility_kw", "pv_kw", "it_kw"]].sum()
    pue = (sums["facility_kw"] + sums["pv_kw"]) / sums["it_kw"]
    for site in registry.sites:
        lo, hi = PUE_RANGES[archetype_of(site)]
        assert lo <= pue[site.id] <= hi, (site.id, archetype_of(site), pue[site.id])


def test_economizer_runs_more_in_january_than_july(fleet):
    site = site_of(fleet, "enterprise", "Guiyang")
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)

    def free_hours(month_start: int) -> float:
        ts = month_start + np.arange(0, 28 * DAY_MS, HOUR_MS)
        state = sim.true_state(ts)
        return float(state[state["site"] == site.id]["free_cooling"].sum())

    jan, jul = free_hours(utc_ms("2024-01-01T00:00Z")), free_hours(utc_ms("2024-07-01T00:00Z"))
    assert jan > 200 and jan > 3 * jul


def _day_totals(sim: FleetSimulator, site_id: str, day_start: int) -> tuple[float, float]:
    ts = day_start + np.arange(0, DAY_MS, 5 * MIN_MS)
    state = sim.true_state(ts)
    rows = state[state["site"] == site_id]
    return float(rows["cooling_kw"].sum() / 12.0), float(rows["rack_inlet_c"].mean())  # [kWh], [°C]


@pytest.mark.parametrize(
    "kind,name,delta,day",
    [
        ("enterprise", "chw_supply", 3.0, JUL),
        ("enterprise", "chw_supply", 3.0, APR),
        ("legacy", "chw_supply", 5.0, JUL),
        ("hybrid", "chw_supply", 2.0, JUL),
        ("hybrid", "fw_supply", 5.0, JUL),
        ("liquid", "fw_supply", 5.0, JUL),
        ("liquid", "supply_air", 2.0, JUL),
    ],
)
def test_higher_setpoints_save_cooling_energy(fleet, kind, name, delta, day):
    site = site_of(fleet, kind)
    sim = FleetSimulator(fleet, seed=7, start_ms=day, faults=False)
    before_kwh, before_inlet = _day_totals(sim, site.id, day)
    sim.set_setpoints(site.id, **{name: sim.get_setpoints(site.id)[name] + delta})
    after_kwh, after_inlet = _day_totals(sim, site.id, day)
    assert after_kwh < before_kwh
    assert after_inlet >= before_inlet


def _day_fan_kwh(sim: FleetSimulator, site_id: str, day_start: int) -> float:
    ts = day_start + np.arange(0, DAY_MS, 5 * MIN_MS)
    state = sim.true_state(ts)
    return float(state[state["site"] == site_id]["it_fan_kw"].sum() / 12.0)  # [kWh]


@pytest.mark.parametrize("kind,name", [("enterprise", "chw_supply"), ("enterprise", "supply_air"),
                                       ("liquid", "fw_supply"), ("liquid", "supply_air"),
                                       ("hybrid", "supply_air")])
def test_higher_setpoints_warm_the_rack_inlets(fleet, kind, name):
    site = site_of(fleet, kind)
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    before_kwh, before_inlet = _day_totals(sim, site.id, JUL)
    before_fan = _day_fan_kwh(sim, site.id, JUL)
    sim.set_setpoints(site.id, **{name: sim.get_setpoints(site.id)[name] + 2.0})
    after_kwh, after_inlet = _day_totals(sim, site.id, JUL)
    after_fan = _day_fan_kwh(sim, site.id, JUL)
    assert after_inlet > before_inlet
    assert after_fan > before_fan  # warmer inlets: the server fans speed up
    # a warmer setpoint never costs more cooling than removing the extra server-fan heat it causes
    # (raising supply air alone on a chilled-water site saves nothing and then pays for that heat)
    assert after_kwh <= before_kwh + (after_fan - before_fan)


def test_server_fan_factor_by_hand():
    inlet = np.array([10.0, 20.0, 24.0, 25.0, 27.0, 30.0, 32.0])
    factor = plant.it_fan_factor(inlet, np.ones(1))
    assert factor[:3].tolist() == [1.0, 1.0, 1.0]  # exactly 1 at or below T0 = 24 °C
    np.testing.assert_allclose(factor[3:], [1.0011, 1.0099, 1.0396, 1.0704], rtol=1e-12)  # 0.0011·ΔT²
    assert factor[4] == pytest.approx(1.01, abs=0.001) and 1.06 <= factor[6] <= 1.08  # +1 % at 27, +7 % at 32
    np.testing.assert_allclose(plant.it_fan_factor(inlet, np.full(1, 0.15)) - 1.0, 0.15 * (factor - 1.0))


def test_it_power_rises_with_the_inlet_above_t0_only(fleet):
    """Server fans: IT power (the UPS meters too) rises once the mean server inlet passes 24 °C and is
    unchanged below; warmer inlets lower PUE while the facility draws more (PUE is not ranked on alone)."""
    site = site_of(fleet, "enterprise")
    ts = JUL + np.arange(0, 6 * HOUR_MS + 1, MIN_MS)

    def run(**setpoints: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
        sim.set_setpoints(site.id, **setpoints)
        data = collect(sim.poll(int(ts[-1])))
        return sim.true_state(ts).query("site == @site.id").reset_index(drop=True), data

    cold, cold_data = run(supply_air=16.0, chw_supply=8.0)
    cool, _ = run(supply_air=18.0, chw_supply=8.0)
    warm, warm_data = run(supply_air=27.0, chw_supply=16.0)
    hotspot = plant.ARCHETYPES["enterprise"].hotspot_k
    assert (cool["rack_inlet_c"] + hotspot / 2 < plant.FAN_T0_C).all()
    assert cold["it_kw"].equals(cool["it_kw"]) and (cool["it_fan_kw"] == 0.0).all()  # below T0: no change
    server_inlet = warm["rack_inlet_c"] + hotspot / 2
    assert (server_inlet > 29.0).all()
    expected = 1.0 + plant.FAN_K_PER_K2 * (server_inlet - plant.FAN_T0_C) ** 2  # an all-air site
    # one fixed-point step: the fans follow the inlet before their own heat warmed it (≈ 0.02 K lower here)
    np.testing.assert_allclose(warm["it_kw"] / cool["it_kw"], expected, rtol=5e-4)
    assert (warm["it_kw"] / cool["it_kw"] <= expected).all()
    np.testing.assert_allclose(warm["it_kw"] - cool["it_kw"], warm["it_fan_kw"], rtol=1e-9)
    parts = warm["it_kw"] + warm["cooling_kw"] + warm["losses_kw"] + warm["lighting_kw"]
    np.testing.assert_allclose(warm["facility_kw"] + warm["pv_kw"], parts)  # the balance still closes
    ups = [series(d, site.id, "it.ups-a") + series(d, site.id, "it.ups-b") for d in (cold_data, warm_data)]
    assert (ups[1] / ups[0]).mean() == pytest.approx(expected.mean(), rel=2e-3)  # the meters see the fans

    # raising supply air alone on a chilled-water site: PUE falls, yet the site draws more
    base, _ = run()
    hot, _ = run(supply_air=sim_sp(fleet, site.id)["supply_air"] + 4.0)
    assert hot["facility_kw"].sum() > base["facility_kw"].sum()
    pue = [(x["facility_kw"].sum() + x["pv_kw"].sum()) / x["it_kw"].sum() for x in (base, hot)]
    assert pue[1] < pue[0]


def sim_sp(fleet, site_id: str) -> dict[str, float]:
    return FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False).get_setpoints(site_id)


def test_old_rooms_run_warmer_inlets_relative_to_supply_and_setpoint_points_report(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    legacy, liquid = site_of(fleet, "legacy"), site_of(fleet, "liquid")
    sim.set_setpoints(legacy.id, supply_air=20.0)
    with pytest.raises(ValueError, match="valid: "):
        sim.set_setpoints(legacy.id, fw_supply=35.0)
    with pytest.raises(ValueError, match="outside"):
        sim.set_setpoints(legacy.id, supply_air=60.0)
    data = collect(sim.poll(JUL + 3 * HOUR_MS))
    assert (series(data, legacy.id, "sp.supply-air") == 20.0).all()
    assert sim.get_setpoints(legacy.id)["supply_air"] == 20.0

    def rise(site):
        inlets = [p.id for p in site.points if p.tags.get("location") == "rack_inlet"]
        inlet = np.mean([series(data, site.id, p).mean() for p in inlets])
        return inlet - series(data, site.id, "env.supply-air").mean()

    assert rise(legacy) > rise(liquid) + 1.0


def test_true_state_evaluates_setpoint_schedules_without_changing_the_simulator(fleet):
    site, other = site_of(fleet, "hybrid"), site_of(fleet, "legacy")
    ts = JUL + np.arange(0, 4 * HOUR_MS, 5 * MIN_MS)
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    before = sim.get_setpoints(site.id)
    half = len(ts) // 2
    schedule = {"supply_air": np.where(np.arange(len(ts)) < half, 22.0, 25.0), "sp_chw_supply": 19.0}
    got = sim.true_state(ts, setpoints={site.id: schedule})
    assert sim.get_setpoints(site.id) == before  # an override is for this call only
    ref = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    parts = []
    for value, times in ((22.0, ts[:half]), (25.0, ts[half:])):
        ref.set_setpoints(site.id, supply_air=value, chw_supply=19.0)
        parts.append(ref.true_state(times))
    order = {s.id: i for i, s in enumerate(fleet.sites)}  # true_state lists sites in registry order
    want = pd.concat(parts).sort_values(["site", "ts"], key=lambda c: c.map(order) if c.name == "site" else c)
    want = want.reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert (got.loc[got["site"] == other.id, "sp:supply_air"] == 18.0).all()  # other sites keep theirs
    with pytest.raises(ValueError, match="valid: chw_supply, supply_air"):
        sim.true_state(ts, setpoints={other.id: {"fw_supply": 30.0}})
    with pytest.raises(ValueError, match="outside"):
        sim.true_state(ts, setpoints={site.id: {"supply_air": np.full(len(ts), 40.0)}})
    with pytest.raises(KeyError, match="unknown site"):
        sim.true_state(ts, setpoints={"zz-99": {"supply_air": 20.0}})


def test_true_state_for_some_sites_equals_the_call_for_all(fleet):
    ts = JUL + np.arange(0, 4 * HOUR_MS, 5 * MIN_MS)
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    site, other = site_of(fleet, "enterprise"), site_of(fleet, "liquid")
    sim.inject(site.id, None, "cooling_degraded", int(ts[5]), int(ts[20]), magnitude=1.3)
    override = {site.id: {"supply_air": 23.0}}
    full = sim.true_state(ts, setpoints=override)
    some = sim.true_state(ts, setpoints=override, sites=[other.id, site.id])
    want = pd.concat([full[full["site"] == other.id], full[full["site"] == site.id]], ignore_index=True)
    pd.testing.assert_frame_equal(some, want, check_exact=True)
    assert some["cooling_kw"].max() > 0


def _tower_site(fleet):
    return next(s for s in fleet.sites if archetype_of(s) == "enterprise"
                and any(p.id == "cool.tower-1" for p in s.points))


def test_only_sites_with_cooling_towers_have_a_condenser_water_setpoint(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    for site in fleet.sites:
        tower = any(p.id == "cool.tower-1" for p in site.points)
        assert ("cw_supply" in sim.get_setpoints(site.id)) == tower, site.id
        assert any(p.id == "sp.cw-supply" for p in site.points) == tower
    liquid = site_of(fleet, "liquid")
    with pytest.raises(ValueError, match="no setpoint 'cw_supply'"):
        sim.set_setpoints(liquid.id, cw_supply=20.0)
    site = _tower_site(fleet)
    sim.set_setpoints(site.id, cw_supply=22.5)
    data = collect(sim.poll(JUL + HOUR_MS))
    assert (series(data, site.id, "sp.cw-supply") == 22.5).all()
    measured = series(data, site.id, "env.cw-supply")
    truth = sim.true_state(measured.index.to_numpy()).query("site == @site.id")["cw_supply_c"].to_numpy()
    assert np.abs(measured.to_numpy() - truth).max() < 0.6  # 0.1 K sensor noise
    assert (truth >= 22.5 - 1e-9).all()


def test_condenser_water_trades_tower_fans_against_chiller_lift(fleet):
    """Cooling energy over the condenser-water setpoint has an interior minimum that moves up with the
    wet-bulb (the reason a fixed setpoint cannot be best all day), and the setpoint leaves the inlets alone."""
    site = _tower_site(fleet)
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    ts = JUL + np.arange(0, DAY_MS, 10 * MIN_MS)
    setpoints = np.arange(14.0, 30.5, 1.0)
    cooling, towers, chillers, inlets = [], [], [], []
    for cw in setpoints:
        st = sim.true_state(ts, setpoints={site.id: {"cw_supply": cw}}, sites=[site.id])
        cooling.append(st["cooling_kw"].to_numpy())
        towers.append(st["cooling_tower"].to_numpy())
        chillers.append(st["chiller"].to_numpy())
        inlets.append(st["rack_inlet_c"].to_numpy())
    cooling, towers, chillers = np.array(cooling), np.array(towers), np.array(chillers)
    np.testing.assert_array_equal(np.array(inlets), np.broadcast_to(inlets[0], (len(setpoints), len(ts))))
    assert (np.diff(towers, axis=0) <= 1e-12).all()  # a warmer setpoint: slower tower fans
    assert (np.diff(chillers, axis=0) >= -1e-12).all()  # ... and more chiller work
    daily = cooling.sum(axis=1)
    best = int(np.argmin(daily))
    assert 0 < best < len(setpoints) - 1  # an interior optimum over the day
    wet = st["wet_bulb_c"].to_numpy()
    best_each = setpoints[np.argmin(cooling, axis=0)]
    cool_hours, warm_hours = wet <= np.quantile(wet, 0.25), wet >= np.quantile(wet, 0.75)
    assert best_each[warm_hours].mean() > best_each[cool_hours].mean() + 1.0  # the optimum follows the wet-bulb
    # what holding the best fixed setpoint all day loses against the best setpoint at each time
    assert cooling.min(axis=0).sum() < 0.995 * daily[best]


def test_holding_design_condenser_water_all_year_leaves_no_free_cooling(fleet):
    site = _tower_site(fleet)
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)
    ts = JAN + np.arange(0, DAY_MS, 10 * MIN_MS)
    cold = sim.true_state(ts, setpoints={site.id: {"cw_supply": 14.0}}, sites=[site.id])
    design = sim.true_state(ts, setpoints={site.id: {"cw_supply": 29.5}}, sites=[site.id])
    assert cold["free_cooling"].mean() > 0.9
    assert design["free_cooling"].max() == 0.0
    assert design["cooling_kw"].sum() > 1.3 * cold["cooling_kw"].sum()


def test_rack_inlet_offsets_are_the_sensors_hot_spots(fleet):
    site = site_of(fleet, "enterprise")
    sim = FleetSimulator(fleet, seed=7, start_ms=JUL, faults=False)
    offsets = sim.rack_inlet_offsets(site.id)
    assert sorted(offsets) == sorted(p.id for p in site.points if p.tags.get("location") == "rack_inlet")
    assert all(0.0 <= v <= plant.ARCHETYPES["enterprise"].hotspot_k for v in offsets.values())
    data = collect(sim.poll(JUL + 6 * HOUR_MS))
    room = sim.true_state(np.arange(JUL, JUL + 6 * HOUR_MS + 1, MIN_MS)).query("site == @site.id")
    for point, offset in offsets.items():
        excess = series(data, site.id, point).to_numpy() - room["rack_inlet_c"].to_numpy()
        assert excess.mean() == pytest.approx(offset, abs=0.03)  # 0.1 K sensor noise averages out


def test_energy_counter_integrates_true_facility_power(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)
    data = collect(sim.poll(JAN + DAY_MS))
    truth = sim.true_state(np.arange(JAN, JAN + DAY_MS + 1, MIN_MS))
    for site in fleet.sites:
        counter = series(data, site.id, "facility.main")
        rollover = site.point_map["facility.main"].rollover
        delta = np.diff(counter.to_numpy())
        if rollover:
            delta = np.where(delta < 0, delta + rollover, delta)
        true_kw = truth[truth["site"] == site.id]["facility_kw"].to_numpy()
        np.testing.assert_allclose(delta, true_kw[1:] / 60.0, rtol=1e-6)
        assert (delta > 0).all()


def test_counter_rolls_over_at_its_maximum(fleet):
    raw = yaml.safe_load(dump_registry(fleet))
    raw["sites"] = raw["sites"][:1]
    main = next(p for p in raw["sites"][0]["points"] if p["id"] == "facility.main")
    main["rollover"] = 50_000.0  # kWh; a 25 MW campus wraps this several times a day
    registry = parse_registry(raw)
    sim = FleetSimulator(registry, seed=7, start_ms=JAN, faults=False)
    counter = series(collect(sim.poll(JAN + DAY_MS)), registry.sites[0].id, "facility.main").to_numpy()
    assert counter.max() < 50_000.0 and counter.min() >= 0.0
    drops = np.diff(counter) < 0
    assert drops.sum() >= 3
    wrapped = np.where(drops, np.diff(counter) + 50_000.0, np.diff(counter))
    truth = sim.true_state(np.arange(JAN, JAN + DAY_MS + 1, MIN_MS))["facility_kw"].to_numpy()
    np.testing.assert_allclose(wrapped, truth[1:] / 60.0, rtol=1e-6)


# -- faults ------------------------------------------------------------------------------------------

def test_injected_faults_show_up_and_are_logged(fleet):
    site = site_of(fleet, "enterprise")
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)
    t = JAN + 2 * HOUR_MS
    stuck = sim.inject(site.id, "it.ups-a", "stuck", t, 30 * 60)
    gap = sim.inject(site.id, "cool.crah-1", FaultKind.GAP, t, 20 * 60)
    spike = sim.inject(site.id, "it.ups-b", "spike", t + 10 * MIN_MS)
    reset = sim.inject(site.id, "facility.main", "counter_reset", t + HOUR_MS)
    outage = sim.inject(site.id, None, "outage", t + 2 * HOUR_MS, 15 * 60)
    with pytest.raises(ValueError, match="not a counter"):
        sim.inject(site.id, "it.ups-a", "counter_reset", t)
    data = collect(sim.poll(JAN + 6 * HOUR_MS))

    ups_a = series(data, site.id, "it.ups-a")
    window = ups_a[(ups_a.index >= t) & (ups_a.index < t + 30 * MIN_MS)]
    assert len(window) == 30 and window.nunique() == 1 and window.iloc[0] == ups_a[t - MIN_MS]
    assert ups_a[t + 30 * MIN_MS] != window.iloc[0]

    crah = series(data, site.id, "cool.crah-1")
    assert not ((crah.index >= t) & (crah.index < t + 20 * MIN_MS)).any()
    assert (t + 20 * MIN_MS) in crah.index

    ups_b = series(data, site.id, "it.ups-b")
    assert ups_b[t + 10 * MIN_MS] > 100 * ups_b.median()
    assert (ups_b.drop(t + 10 * MIN_MS) < 2 * ups_b.median()).all()

    counter = series(data, site.id, "facility.main")
    after = counter[counter.index >= t + HOUR_MS]
    assert counter[t + HOUR_MS - MIN_MS] > 1000 and after.iloc[0] < 5.0 + site.design_it_kw / 60.0
    assert (np.diff(after.to_numpy()) > 0).all()

    silent = data[(data["site"] == site.id) & (data["ts"] >= t + 2 * HOUR_MS) & (data["ts"] < t + 2 * HOUR_MS
                                                                                   + 15 * MIN_MS)]
    assert silent.empty
    others = data[(data["site"] != site.id) & (data["ts"] == t + 2 * HOUR_MS)]
    assert not others.empty
    assert len(sim.faults_log) == 5 and set(sim.faults_log) == {stuck, gap, spike, reset, outage}
    assert all(e.origin == "manual" for e in sim.faults_log)


def test_random_faults_are_rare_deterministic_and_logged(fleet):
    start = utc_ms("2024-05-01T00:00Z")
    days = 30
    sim = FleetSimulator(fleet, seed=7, start_ms=start, sample_interval_s=900, faults=True)
    for _ in sim.iter_poll(start + days * DAY_MS, step_s=86400):
        pass
    log = sim.faults_log
    assert 0 < len(log) < 0.3 * days * len(fleet.sites)
    assert {e.origin for e in log} == {"random"}
    assert all(start <= e.start_ms <= start + days * DAY_MS for e in log)
    assert len({e.kind for e in log}) >= 3
    again = FleetSimulator(fleet, seed=7, start_ms=start, sample_interval_s=900, faults=True)
    again.poll(start + days * DAY_MS)
    assert again.faults_log == log
    quiet = FleetSimulator(fleet, seed=7, start_ms=start, faults=False)
    quiet.poll(start + 2 * DAY_MS)
    assert quiet.faults_log == []


def test_counters_only_fall_at_resets_or_rollover(fleet):
    start = utc_ms("2024-05-01T00:00Z")
    sim = FleetSimulator(fleet, seed=7, start_ms=start, sample_interval_s=300, faults=True)
    tower_site = next(s for s in fleet.sites if "water.makeup" in s.point_map)
    sim.inject(tower_site.id, "water.makeup", "counter_reset", start + 3 * DAY_MS)
    data = collect(sim.poll(start + 10 * DAY_MS))
    log = sim.faults_log
    checked = 0
    for site in fleet.sites:
        for point in (p for p in site.points if p.is_counter):
            values = series(data, site.id, point.id)
            ts, step = values.index.to_numpy(), np.diff(values.to_numpy())
            mine = [e for e in log if e.site == site.id and e.point == point.id]
            allowed = np.zeros(len(step), dtype=bool)
            for e in mine:
                if e.kind is FaultKind.COUNTER_RESET:
                    allowed |= ts[1:] == ts[np.searchsorted(ts, e.start_ms)]
                if e.kind is FaultKind.SPIKE:  # the sample after a spike comes back down
                    allowed |= (ts[:-1] >= e.start_ms) & (ts[:-1] < e.start_ms + 300_000)
            if point.rollover:
                allowed |= np.isclose(step, -point.rollover, rtol=1e-3)
            assert (step[~allowed] >= 0).all(), (site.id, point.id)
            checked += 1
    assert checked >= len(fleet.sites)
    assert any(e.kind is FaultKind.COUNTER_RESET for e in log)


# -- plant events ---------------------------------------------------------------------------------

PLANT_KINDS = (FaultKind.COOLING_DEGRADED, FaultKind.HOT_AISLE, FaultKind.FW_SUPPLY_HIGH)


def test_plant_events_are_manual_only_and_change_no_existing_output(fleet, monkeypatch):
    # random rate 0, and appended after the meter faults: the draws of those keep their keys
    assert all(faults.FAULT_RATES[k] == 0.0 for k in PLANT_KINDS)
    assert list(faults.FAULT_RATES)[:5] == [FaultKind.GAP, FaultKind.STUCK, FaultKind.SPIKE,
                                           FaultKind.COUNTER_RESET, FaultKind.OUTAGE]
    day0 = JAN // DAY_MS

    def schedule() -> list[FaultEvent]:
        return [e for site in fleet.sites for day in range(day0, day0 + 120)
                for e in faults.random_faults(7, site.id, day, sorted(site.point_map),
                                              sorted(p.id for p in site.points if p.is_counter))]

    def day_of_readings() -> pd.DataFrame:
        return collect(FleetSimulator(fleet, seed=7, start_ms=JAN, faults=True).poll(JAN + DAY_MS))

    now, readings = schedule(), day_of_readings()
    assert len(now) > 100 and not {e.kind for e in now} & set(PLANT_KINDS)
    # the simulator as it was before plant events existed: only the five meter and collector faults
    meter_rates = {k: v for k, v in faults.FAULT_RATES.items() if k not in PLANT_KINDS}
    monkeypatch.setattr(faults, "FAULT_RATES", meter_rates)
    assert schedule() == now
    pd.testing.assert_frame_equal(day_of_readings(), readings, check_exact=True)
    # neutral plant events (ratio 1, rise 0 K) leave every reading as it was, too
    neutral = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=True)
    site = site_of(fleet, "hybrid").id
    neutral.inject(site, None, "cooling_degraded", JAN + HOUR_MS, 8 * 3600, magnitude=1.0)
    neutral.inject(site, None, "hot_aisle", JAN + HOUR_MS, 8 * 3600, magnitude=0.0)
    neutral.inject(site, None, "fw_supply_high", JAN + HOUR_MS, 8 * 3600, magnitude=0.0)
    pd.testing.assert_frame_equal(collect(neutral.poll(JAN + DAY_MS)), readings, check_exact=True)


def _with_and_without(fleet, start: int, end: int, inject) -> tuple[FleetSimulator, FleetSimulator,
                                                                      pd.DataFrame, pd.DataFrame]:
    """An event-free simulator and one with ``inject(sim)`` applied, and their readings up to ``end``."""
    base = FleetSimulator(fleet, seed=7, start_ms=start, faults=False)
    sick = FleetSimulator(fleet, seed=7, start_ms=start, faults=False)
    inject(sick)
    return base, sick, collect(base.poll(end)), collect(sick.poll(end))


def _others_unchanged(a: pd.DataFrame, b: pd.DataFrame, site_id: str) -> None:
    pd.testing.assert_frame_equal(a[a["site"] != site_id].reset_index(drop=True),
                                  b[b["site"] != site_id].reset_index(drop=True), check_exact=True)


def _counter_kw(values: pd.Series, rollover: float | None) -> np.ndarray:
    """Mean power [kW] of each one-minute step of an energy counter [kWh]."""
    step = np.diff(values.to_numpy())
    if rollover:
        step = np.where(step < 0, step + rollover, step)
    return step * 60.0


@pytest.mark.parametrize("kind", ["enterprise", "hybrid", "liquid", "legacy"])
def test_cooling_degraded_raises_pue_and_every_meter_follows(fleet, kind):
    site = site_of(fleet, kind)
    t0, t1, end = JUL + 8 * HOUR_MS, JUL + 14 * HOUR_MS, JUL + 20 * HOUR_MS
    base, sick, a, b = _with_and_without(
        fleet, JUL, end, lambda sim: sim.inject(site.id, None, "cooling_degraded", t0, 6 * 3600))
    event = sick.faults_log[0]
    assert (event.kind, event.point, event.magnitude, event.end_ms) == ("cooling_degraded", None, 1.6, t1)
    m = 1.6
    ts = np.arange(JUL, end + 1, MIN_MS)
    inside = (ts >= t0) & (ts < t1)
    ta = base.true_state(ts).query("site == @site.id").reset_index(drop=True)
    tb = sick.true_state(ts).query("site == @site.id").reset_index(drop=True)
    _others_unchanged(a, b, site.id)

    # hand check: facility import rises by (m − 1) × cooling power plus the transformer's extra load loss
    load = ta["facility_kw"] + ta["pv_kw"] - ta["tx_loss"]  # IT + cooling + UPS loss + lighting
    extra = (m - 1.0) * ta["cooling_kw"]
    arch = plant.ARCHETYPES[kind]
    rating = site.design_it_kw * arch.tx_ratio  # transformer constants are not jittered per site
    tx_extra = arch.tx_pk * ((load + extra) ** 2 - load**2) / rating
    expected = np.where(inside, extra + tx_extra, 0.0)
    np.testing.assert_allclose(tb["facility_kw"] - ta["facility_kw"], expected, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(tb["cooling_kw"], ta["cooling_kw"] * np.where(inside, m, 1.0), rtol=1e-12)
    assert (tb["tx_loss"] > ta["tx_loss"])[inside].all() and (tb["tx_loss"] == ta["tx_loss"])[~inside].all()
    for column in ("it_kw", "ups_loss", "lighting_kw", "pv_kw", "rack_inlet_c", "supply_air_c", "fw_supply_c"):
        assert tb[column].equals(ta[column]), column
    parts = tb["it_kw"] + tb["cooling_kw"] + tb["losses_kw"] + tb["lighting_kw"]
    np.testing.assert_allclose(tb["facility_kw"] + tb["pv_kw"], parts)  # the energy balance still closes

    # the meters: PUE from the facility counter and the UPS outputs rises by the hand-checked amount
    main = site.point_map["facility.main"]
    fa, fb = (_counter_kw(series(x, site.id, main.id), main.rollover) for x in (a, b))
    np.testing.assert_allclose(fb, tb["facility_kw"].to_numpy()[1:], rtol=1e-6)  # counter = ∫ power
    assert (fb > 0).all()
    it = (series(a, site.id, "it.ups-a") + series(a, site.id, "it.ups-b")).to_numpy()[1:]
    assert it.tolist() == (series(b, site.id, "it.ups-a") + series(b, site.id, "it.ups-b")).to_numpy()[1:].tolist()
    pv = series(a, site.id, "renewable.pv").to_numpy()[1:] if "renewable.pv" in site.point_map else 0.0 * it
    win = inside[1:]
    pue_a, pue_b = ((f[win] + pv[win]).sum() / it[win].sum() for f in (fa, fb))
    assert pue_b - pue_a == pytest.approx(expected[1:][win].sum() / it[win].sum(), rel=2e-3)
    assert pue_b - pue_a > 0.03
    np.testing.assert_allclose(fb[~win], fa[~win], rtol=1e-6)
    # after the event the counter stays ahead by exactly the extra energy [kWh]
    gap = series(b, site.id, main.id).iloc[-1] - series(a, site.id, main.id).iloc[-1]
    assert gap % (main.rollover or np.inf) == pytest.approx(expected.sum() / 60.0, rel=1e-6)

    for p in site.points:
        ra, rb = series(a, site.id, p.id).to_numpy(), series(b, site.id, p.id).to_numpy()
        if p.role is Role.COOLING:  # same meter noise, m × the power
            np.testing.assert_allclose(rb / ra, np.where(inside, m, 1.0), rtol=1e-12)
        elif p.id in ("facility.swgr", "losses.transformer"):
            column = "facility_kw" if p.id == "facility.swgr" else "tx_loss"
            np.testing.assert_allclose(rb / ra, (tb[column] / ta[column]).to_numpy(), rtol=1e-9)
        elif p.id == "water.makeup":  # the extra chiller work is rejected by the towers
            more = np.diff(rb) - np.diff(ra)  # [m3 or L] per step; rounding of the large counter aside
            assert (more > -1e-6).all() and np.abs(more[~win]).max() < 1e-6 and more[win].sum() > 0
        elif p.id != "facility.main":
            assert ra.tolist() == rb.tolist(), p.id  # IT, UPS loss, lighting, PV, sensors, setpoints


def test_hot_aisle_warms_only_the_rack_inlets(fleet):
    site = site_of(fleet, "enterprise")
    inlets = sorted(p.id for p in site.points if p.tags.get("location") == "rack_inlet")
    room_t, spot_t, end = JUL + 2 * HOUR_MS, JUL + 3 * HOUR_MS, JUL + 6 * HOUR_MS

    def inject(sim):
        sim.inject(site.id, None, "hot_aisle", room_t, 2 * 3600)  # every inlet, default 6 K
        sim.inject(site.id, inlets[1], "hot_aisle", spot_t, 2 * 3600, magnitude=3.0)  # one rack

    base, sick, a, b = _with_and_without(fleet, JUL, end, inject)
    assert [e.magnitude for e in sick.faults_log] == [6.0, 3.0]
    _others_unchanged(a, b, site.id)
    ts = np.arange(JUL, end + 1, MIN_MS)
    room = np.where((ts >= room_t) & (ts < room_t + 2 * HOUR_MS), 6.0, 0.0)
    spot = np.where((ts >= spot_t) & (ts < spot_t + 2 * HOUR_MS), 3.0, 0.0)
    for p in site.points:
        ra, rb = series(a, site.id, p.id).to_numpy(), series(b, site.id, p.id).to_numpy()
        if p.id in inlets:
            np.testing.assert_allclose(rb - ra, room + (spot if p.id == inlets[1] else 0.0), atol=1e-9)
        else:
            assert ra.tolist() == rb.tolist(), p.id  # energy, supply air, outdoor: unchanged
    ta = base.true_state(ts).query("site == @site.id").reset_index(drop=True)
    tb = sick.true_state(ts).query("site == @site.id").reset_index(drop=True)
    np.testing.assert_allclose(tb["rack_inlet_c"] - ta["rack_inlet_c"], room, atol=1e-9)  # the room figure
    assert tb.drop(columns="rack_inlet_c").equals(ta.drop(columns="rack_inlet_c"))
    with pytest.raises(ValueError, match="valid: env.rack-inlet-1"):
        sick.inject(site.id, "env.supply-air", "hot_aisle", end, 3600)


@pytest.mark.parametrize("kind", ["liquid", "hybrid"])
def test_fw_supply_high_moves_only_the_facility_water_sensor(fleet, kind):
    site = site_of(fleet, kind)
    t0, end = JUL + HOUR_MS, JUL + 4 * HOUR_MS
    base, sick, a, b = _with_and_without(
        fleet, JUL, end, lambda sim: sim.inject(site.id, None, "fw_supply_high", t0, 2 * 3600))
    assert sick.faults_log[0].magnitude == 8.0
    _others_unchanged(a, b, site.id)
    ts = np.arange(JUL, end + 1, MIN_MS)
    rise = np.where((ts >= t0) & (ts < t0 + 2 * HOUR_MS), 8.0, 0.0)
    for p in site.points:
        ra, rb = series(a, site.id, p.id).to_numpy(), series(b, site.id, p.id).to_numpy()
        if p.id == "env.fw-supply":
            np.testing.assert_allclose(rb - ra, rise, atol=1e-9)
        else:
            assert ra.tolist() == rb.tolist(), p.id  # the setpoint point sp.fw-supply included
    tb = sick.true_state(ts).query("site == @site.id")
    ta = base.true_state(ts).query("site == @site.id")
    np.testing.assert_allclose(tb["fw_supply_c"] - ta["fw_supply_c"], rise, atol=1e-9)
    with pytest.raises(ValueError, match="no fw_supply temperature sensor"):
        sick.inject(site_of(fleet, "enterprise").id, None, "fw_supply_high", end, 3600)


def test_plant_event_arguments_are_checked(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN, faults=False)
    site = site_of(fleet, "liquid").id
    assert sim.inject(site, None, "cooling_degraded", JAN, 60).magnitude == 1.6
    assert sim.inject(site, "env.rack-inlet-1", FaultKind.HOT_AISLE, JAN, 60).magnitude == 6.0
    assert sim.inject(site, "env.fw-supply", "fw_supply_high", JAN, 60, magnitude=-2.5).magnitude == -2.5
    assert sim.inject(site, "it.ups-a", "stuck", JAN, 60).magnitude == 0.0  # unused by meter faults
    assert FaultEvent(site, None, FaultKind.HOT_AISLE, 0, 1).magnitude == 6.0
    cases = [
        ((site, "cool.cdu-1", "cooling_degraded", JAN, 60), {}, "point=None"),
        ((site, None, "cooling_degraded", JAN, 60), {"magnitude": 0.0}, "positive power ratio"),
        ((site, None, "hot_aisle", JAN, 60), {"magnitude": float("nan")}, "finite rise"),
        ((site, None, "hot_aisle", JAN, 0), {}, "positive duration_s"),
        ((site, "sp.fw-supply", "fw_supply_high", JAN, 60), {}, "valid: env.fw-supply"),
        ((site, "it.ups-a", "stuck", JAN, 60), {"magnitude": 2.0}, "plant events only"),
        ((site, None, "meltdown", JAN, 60), {}, "valid: stuck, gap"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sim.inject(*args, **kwargs)


def test_simulation_is_fast(fleet):
    sim = FleetSimulator(fleet, seed=7, start_ms=JAN)
    sim.setup()
    t0 = time.perf_counter()
    frames = sim.poll(JAN + DAY_MS - MIN_MS)  # 12 sites × 1440 one-minute samples
    elapsed = time.perf_counter() - t0
    assert sum(len(f) for _, f in frames) > 12 * 1440 * 15
    assert elapsed < 1.0, f"12 sites × 1 day took {elapsed:.2f} s"
