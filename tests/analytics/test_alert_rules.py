"""Every alert rule end to end: simulator fault → stream engine → alert engine → events.

The harness (:func:`run`) drives the seed-7 four-site demo fleet (``ga-01`` liquid, ``tr-02`` legacy,
``xy-03`` enterprise, ``gy-04`` hybrid) without random faults, injects plant, meter and collector faults
on demand, polls it in chunks, feeds each chunk to :class:`StreamEngine` and its readings and window rows
to :class:`AlertEngine`, and records every event with the simulated time of the batch that produced it.
Runs are cached per scenario, so the injection-free baseline each test compares against is computed once.

Each rule test checks that the injected site fires during the fault (not before the rule's ``for``), that
it resolves after the fault ends, and that the same site and rule stay quiet in the baseline. Times are
minutes from T0 (Monday 2024-07-08 00:00 Asia/Shanghai).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pandas as pd
import pytest

from dcpue.analytics.alerts import rules
from dcpue.analytics.alerts.engine import AlertEngine
from dcpue.analytics.alerts.model import AlertEvent, Status
from dcpue.analytics.stream import StreamEngine
from dcpue.ingest.poller import DeviceHealth
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.results import conform_windows
from dcpue.settings import AlertSettings, EngineSettings

T0 = int(pd.Timestamp("2024-07-08T00:00:00+08:00").value // 1_000_000)
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
FIRING, RESOLVED = Status.FIRING, Status.RESOLVED

REGISTRY = generate_fleet(4, seed=7)
ENGINE = EngineSettings()
# The simulated liquid and hybrid sites run warm-water loops (facility-water setpoints 35 and 32 °C), an ASHRAE
# W40 design: pinned, so the baselines stay quiet whatever the default class (at W32 ga-01 would always alert).
ALERTS = AlertSettings(water_class="W40")
TARGET = ENGINE.target_pue
PUE_FIRE, PUE_CLEAR = TARGET + ALERTS.pue_fire_margin, TARGET + ALERTS.pue_clear_margin  # 1.25, 1.22


# -- the harness ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """One ``FleetSimulator.inject`` call; times in minutes from T0."""

    site: str
    kind: str
    start_min: float
    minutes: float = 0
    magnitude: float | None = None
    point: str | None = None

    @property
    def start_ms(self) -> int:
        return T0 + int(self.start_min * MIN)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.minutes * MIN)


@dataclass
class Run:
    events: list[tuple[int, AlertEvent]]  # (end of the batch that produced it [ms], event)
    rows: pd.DataFrame  # site window rows as emitted (last version per key)
    sensors: pd.DataFrame  # every temperature reading (env.* points)
    inputs: list[tuple[int, pd.DataFrame, pd.DataFrame]]  # (chunk end, readings, window rows), for replays

    def of(self, alertname: str, site: str, **labels: str) -> list[tuple[int, AlertEvent]]:
        return [(t, e) for t, e in self.events if e.labels["alertname"] == alertname and e.site == site
                and all(e.labels.get(k) == v for k, v in labels.items())]

    def pue(self, site: str, window: str = "15m") -> pd.Series:
        """Final PUE of ``site``'s ``window`` rows, indexed by window end [min from T0]."""
        r = self.rows[(self.rows["id"] == site) & (self.rows["window"] == window) & self.rows["final"]]
        return pd.Series(r["pue"].to_numpy(), index=(r["end_ms"].to_numpy() - T0) // MIN)


@functools.cache
def run(faults: tuple[Fault, ...] = (), hours: float = 6, sample_s: int = 60, chunk_min: int = 15,
        observe_min: int | None = None) -> Run:
    """Simulate ``hours`` of the fleet with ``faults``, polled every ``chunk_min`` simulated minutes.

    The stream engine advances once per chunk; the alert engine sees the chunk's readings in batches of
    ``observe_min`` minutes (default: the whole chunk), the last batch with the chunk's window rows.
    """
    sim = FleetSimulator(REGISTRY, seed=7, start_ms=T0, sample_interval_s=sample_s, faults=False)
    sim.setup()
    for f in faults:
        sim.inject(f.site, f.point, f.kind, f.start_ms, f.minutes * 60, f.magnitude)
    stream = StreamEngine(REGISTRY, ENGINE, emit_groups=False)  # the rules read site rows only
    inputs, rows, sensors = [], [], []
    for t in range(T0 + chunk_min * MIN, T0 + int(hours * HOUR) + 1, chunk_min * MIN):
        readings = pd.concat([frame for _, frame in sim.poll(t)], ignore_index=True)
        stream.add(readings)
        windows = stream.advance()
        inputs.append((t, readings, windows))
        rows.append(windows[windows["scope"] == "site"])
        sensors.append(readings[readings["point"].str.startswith("env.")])
    all_rows = pd.concat(rows, ignore_index=True).drop_duplicates(["id", "window", "start_ms"], keep="last")
    return Run(replay(inputs, observe_min or chunk_min), all_rows, pd.concat(sensors, ignore_index=True), inputs)


def baseline(**kw: float) -> Run:
    return run((), **kw)


def replay(inputs: list[tuple[int, pd.DataFrame, pd.DataFrame]], observe_min: int,
           restart_after: int | None = None, alerts: AlertSettings = ALERTS) -> list[tuple[int, AlertEvent]]:
    """Feed recorded chunks to a fresh alert engine in ``observe_min`` batches; returns (batch end, event).

    ``restart_after``: after that chunk, snapshot the engine and go on with a new one restored from it.
    """
    engine = AlertEngine(REGISTRY, ENGINE, alerts)
    out = []
    step = observe_min * MIN
    for i, (t, readings, windows) in enumerate(inputs):
        # poll semantics: the batch ending at t + b·step holds the readings of (t + (b − 1)·step, t + b·step]
        batches = dict(tuple(readings.groupby((-((t - readings["ts"]) // step)).to_numpy())))
        for b in sorted(set(batches) | {0}):
            end, last = t + int(b) * step, b == 0
            out += [(end, e) for e in engine.observe(readings=batches.get(b), windows=windows if last else None)]
        if i == restart_after:
            blob = engine.snapshot()
            engine = AlertEngine(REGISTRY, ENGINE, alerts)
            engine.restore(blob)
    return out


def one_episode(events: list[tuple[int, AlertEvent]], fault: Fault, for_ms: int) -> tuple[int, AlertEvent, int,
                                                                                               AlertEvent]:
    """The single firing/resolve pair of one fingerprint, checked against the fault's timing."""
    statuses = [e.status for _, e in events]
    assert statuses == [FIRING, RESOLVED], [(minutes(t), e.status.value, e.value) for t, e in events]
    (t_fire, fire), (t_res, res) = events
    assert fire.starts_at_ms >= fault.start_ms  # the breach began with the fault …
    assert t_fire - fire.starts_at_ms >= for_ms  # … and was held for ``for`` before anyone was told …
    assert t_fire < fault.end_ms  # … while the fault lasted
    assert t_res >= fault.end_ms and res.ends_at_ms is not None and res.ends_at_ms >= fault.end_ms
    assert not fire.silenced and not res.silenced
    return t_fire, fire, t_res, res


def by_fingerprint(events: list[tuple[int, AlertEvent]]) -> dict[str, list[tuple[int, AlertEvent]]]:
    out: dict[str, list[tuple[int, AlertEvent]]] = {}
    for t, e in events:
        out.setdefault(e.fingerprint, []).append((t, e))
    return out


def minutes(ts_ms: int) -> float:
    return (ts_ms - T0) / MIN


def key(e: AlertEvent) -> tuple[object, ...]:
    """An event as comparable data (NaN values compare equal)."""
    value = None if math.isnan(e.value) else e.value
    return (e.fingerprint, e.status, e.labels, e.annotations, e.starts_at_ms, e.ends_at_ms, value, e.sequence,
            e.silenced)


# -- scenarios -----------------------------------------------------------------------------------------
# PLANT: one fault per rule, on different sites or at different times, so one run serves several tests.
PUE_HIGH = Fault("gy-04", "cooling_degraded", 60, 120, magnitude=2.4)  # gy-04 1.18 → 1.32
INLET_WARM = Fault("xy-03", "hot_aisle", 60, 90, magnitude=4.0)  # xy-03 inlets 23.8–24.8 → 27.8–28.8 °C
INLET_HOT = Fault("tr-02", "hot_aisle", 60, 90, magnitude=13.0)  # tr-02 inlets 20.4–21.2 → 33.4–34.2 °C
WATER_WARM = Fault("ga-01", "fw_supply_high", 60, 60, magnitude=8.0)  # ga-01 35 → 43 °C (W40: 40 °C)
STUCK_IT = Fault("ga-01", "stuck", 150, 90, point="it.ups-a")  # held 90 min > stuck_after_s (1 h)
STUCK_FACILITY = Fault("xy-03", "stuck", 120, 90, point="facility.main")  # energy stops counting: PUE < 1
SPIKE_CRAH = Fault("tr-02", "spike", 190, point="cool.crah-1")  # one sample ×1000: sub-meters > facility
SHORT_HOT = Fault("gy-04", "hot_aisle", 242, 10, magnitude=4.0)  # gy-04 inlets 25.7–26.8 → 29.7–30.8 °C
PLANT = (PUE_HIGH, INLET_WARM, INLET_HOT, WATER_WARM, STUCK_IT, STUCK_FACILITY, SPIKE_CRAH, SHORT_HOT)

# FLAP: gy-04's PUE swings around the fire threshold for four hours: a mild degradation (×1.5, PUE ≈ 1.23,
# inside the hysteresis band) all along, and 45-min bursts (×2.4 in all, PUE ≈ 1.32) every hour on top.
FLAP_BASE = Fault("gy-04", "cooling_degraded", 60, 225, magnitude=1.5)
FLAP_BURSTS = tuple(Fault("gy-04", "cooling_degraded", 60 * h, 45, magnitude=2.4 / 1.5) for h in (1, 2, 3, 4))
# … and ga-01, whose cooling degraded half an hour earlier (PUE 1.13 → 1.32), loses its collector for 44.5 min
OUTAGE_PUE = Fault("ga-01", "cooling_degraded", 30, 210, magnitude=4.0)
OUTAGE = Fault("ga-01", "outage", 80.5, 44.5)
FLAP = (FLAP_BASE, *FLAP_BURSTS, OUTAGE_PUE, OUTAGE)
# observed every simulated minute, as the live worker does on each poll
FLAP_RUN = {"observe_min": 1}

# DAYS: three local days at 5-min samples, polled every 6 h; gy-04 runs degraded on day 2 only (GB 40879 grade
# 2 → 3; day 3, cooler, is grade 1), ga-01 all along (its rolling year goes above target).
GRADE_DAY2 = Fault("gy-04", "cooling_degraded", 24 * 60, 24 * 60, magnitude=2.0)  # 1.20 → 1.33
ANNUAL_HIGH = Fault("ga-01", "cooling_degraded", 0, 78 * 60, magnitude=3.0)  # 1.13 → 1.26
DAYS = (GRADE_DAY2, ANNUAL_HIGH)
DAYS_RUN = {"hours": 78, "sample_s": 300, "chunk_min": 360}


# -- efficiency ----------------------------------------------------------------------------------------

def test_pue_above_target_fires_after_30_min_of_degraded_cooling_and_resolves_after_recovery():
    base, plant = baseline(), run(PLANT)
    assert base.pue("gy-04").max() < PUE_CLEAR  # the site meets the target on a normal day
    during = plant.pue("gy-04").loc[minutes(PUE_HIGH.start_ms) + 15:minutes(PUE_HIGH.end_ms)]
    assert during.min() > PUE_FIRE + 0.05  # the fault pushes its 15-min PUE clearly above target + 0.05

    t_fire, fire, t_res, res = one_episode(plant.of("PueAboveTarget", "gy-04"), PUE_HIGH,
                                           int(ALERTS.pue_for_s * 1000))
    assert minutes(fire.starts_at_ms) == 75  # the first degraded window (60–75) …
    assert minutes(t_fire) == 120  # … fires with the third (90–105), once it has closed (2 min late)
    assert fire.value == pytest.approx(during.loc[105])
    assert minutes(res.ends_at_ms) == 195 and minutes(t_res) == 225  # clear (< 1.22) held 15 min
    assert base.of("PueAboveTarget", "gy-04") == []


def test_pue_flapping_around_the_threshold_fires_and_resolves_once():
    base, flap = baseline(), run(FLAP, **FLAP_RUN)
    pue = flap.pue("gy-04").loc[75:285]  # the windows inside the four hours of swings
    above = pue > PUE_FIRE
    excursions = int((above & ~above.shift(fill_value=False)).sum())
    assert excursions == 4  # the PUE really crossed the fire threshold once per burst …
    assert pue[~above].min() > PUE_CLEAR and pue[~above].max() < PUE_FIRE  # … and fell back into the band

    events = flap.of("PueAboveTarget", "gy-04")
    assert [e.status for _, e in events] == [FIRING, RESOLVED]  # hysteresis: one pair, not one per burst
    (t_fire, fire), (t_res, res) = events
    assert minutes(t_fire) == 120 and minutes(res.ends_at_ms) >= 285
    assert base.of("PueAboveTarget", "gy-04") == []


def test_annual_pue_projection_fires_when_the_year_so_far_runs_above_target():
    # in its first year the rolling row is incomplete (coverage = days / 365) and the rule projects the year
    # from the energy so far once annual_min_days of data are in (7 by default; 2 here, for a 3-day run)
    base, days = baseline(**DAYS_RUN), run(DAYS, **DAYS_RUN)
    assert base.pue("ga-01", "1d").max() < TARGET - 0.05  # on course for the target normally …
    assert days.pue("ga-01", "1d").min() > TARGET + 0.05  # … well above it with the fault, every day
    early = ALERTS.model_copy(update={"annual_min_days": 2.0})

    def annual(inputs) -> list[tuple[int, AlertEvent]]:
        return [(t, e) for t, e in replay(inputs, 360, alerts=early)
                if e.site == "ga-01" and e.labels["alertname"] == "AnnualPueProjectedMiss"]

    assert annual(base.inputs) == []
    events = annual(days.inputs)
    assert [e.status for _, e in events] == [FIRING]
    first, event = events[0]
    assert first >= T0 + 2 * DAY and event.value > TARGET + 0.05  # not before 2 days of data


def test_annual_pue_projection_rule_on_rolling_year_rows():
    # the end-to-end test above cannot produce a valid 12mo row: feed the rule rows as the engine would
    # emit them after a full year, with the rolling figure drifting over and back under the target
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    out = []
    for day, pue in enumerate([1.19, 1.201, 1.21, 1.198, 1.196, 1.194]):
        end = T0 + (day + 1) * DAY
        row = conform_windows(pd.DataFrame({"scope": ["site"], "id": ["gy-04"], "window": ["12mo"],
                                            "start_ms": [end - 365 * DAY], "end_ms": [end], "final": [False],
                                            "status": ["ok"], "coverage": [1.0], "pue": [pue]}))
        out += [(day, e.status, e.value) for e in engine.observe(windows=row)]
    # fires above the target at once; 1.198 is inside the band (> 1.20 − 0.005); 1.194 clears it
    assert out == [(1, FIRING, 1.201), (5, RESOLVED, 1.194)]


def test_efficiency_grade_worsened_fires_at_the_end_of_the_worse_day_and_clears_the_day_after():
    base, days = baseline(**DAYS_RUN), run(DAYS, **DAYS_RUN)

    def grades(r: Run) -> list[str]:
        daily = r.rows[(r.rows["id"] == "gy-04") & (r.rows["window"] == "1d") & r.rows["final"]]
        return daily["grade"].tolist()

    assert grades(base) == ["2", "2", "1"]
    assert grades(days) == ["2", "3", "1"]

    events = days.of("EfficiencyGradeWorsened", "gy-04")
    assert [e.status for _, e in events] == [FIRING, RESOLVED], [(minutes(t), e.status) for t, e in events]
    (t_fire, fire), (t_res, res) = events
    assert fire.starts_at_ms == T0 + 2 * DAY  # day 2's row, judged when the day closed …
    assert T0 + 2 * DAY < t_fire <= T0 + 2 * DAY + 6 * HOUR  # … in the first poll after midnight
    assert fire.annotations["previous_grade"] == "2" and fire.annotations["grade"] == "3"
    assert res.ends_at_ms == T0 + 3 * DAY and t_res > T0 + 3 * DAY  # day 3 is grade 1: no longer worse
    assert base.of("EfficiencyGradeWorsened", "gy-04") == []


# -- safety --------------------------------------------------------------------------------------------

def inlet_points(site: str) -> list[str]:
    pts = REGISTRY.points_table.loc[site]
    return sorted(pts.index[pts["location"] == "rack_inlet"])


def test_rack_inlet_above_recommended_only_for_a_warm_aisle():
    base, plant = baseline(), run(PLANT)
    temps = base.sensors[(base.sensors["site"] == "xy-03") & base.sensors["point"].isin(inlet_points("xy-03"))]
    assert temps["value"].max() + INLET_WARM.magnitude < ALERTS.inlet_allowable_c
    assert temps["value"].min() + INLET_WARM.magnitude > ALERTS.inlet_recommended_c

    episodes = by_fingerprint(plant.of("RackInletAboveRecommended", "xy-03"))
    assert sorted(e.labels["point"] for (_, e), *_ in episodes.values()) == inlet_points("xy-03")
    for events in episodes.values():
        one_episode(events, INLET_WARM, int(ALERTS.inlet_for_s * 1000))
    assert plant.of("RackInletAboveAllowable", "xy-03") == []
    assert base.of("RackInletAboveRecommended", "xy-03") == []


def test_rack_inlet_above_allowable_and_recommended_for_a_hot_aisle():
    base, plant = baseline(), run(PLANT)
    temps = base.sensors[(base.sensors["site"] == "tr-02") & base.sensors["point"].isin(inlet_points("tr-02"))]
    assert temps["value"].max() < ALERTS.inlet_recommended_c - 5  # a cold legacy room normally
    assert temps["value"].min() + INLET_HOT.magnitude > ALERTS.inlet_allowable_c

    for alertname in ("RackInletAboveAllowable", "RackInletAboveRecommended"):
        episodes = by_fingerprint(plant.of(alertname, "tr-02"))
        assert len(episodes) == len(inlet_points("tr-02")), alertname
        for events in episodes.values():
            _, fire, _, _ = one_episode(events, INLET_HOT, int(ALERTS.inlet_for_s * 1000))
            assert fire.severity.value == ("critical" if alertname == "RackInletAboveAllowable" else "warning")
        assert base.of(alertname, "tr-02") == []


def test_rack_inlet_alerts_do_not_depend_on_batching():
    # event time: a backlog replayed in 15-min batches must alert as the live worker did, minute by minute
    inputs = run(PLANT).inputs
    i = next(i for i, (t, _, _) in enumerate(inputs) if t > SHORT_HOT.start_ms)

    def inlet_events(observe_min: int) -> list[tuple[object, ...]]:
        return sorted((e.labels["point"], e.status, e.starts_at_ms, e.ends_at_ms)
                      for _, e in replay(inputs[i - 1:i + 1], observe_min)
                      if e.site == "gy-04" and e.labels["alertname"] == "RackInletAboveRecommended")

    live = inlet_events(1)
    assert [(status, minutes(start)) for _, status, start, _ in live] == [(FIRING, 242), (RESOLVED, 242)] * 4
    assert inlet_events(15) == live


def test_facility_water_too_warm_on_a_liquid_site():
    base, plant = baseline(), run(PLANT)
    supply = base.sensors[(base.sensors["site"] == "ga-01") & (base.sensors["point"] == "env.fw-supply")]
    assert 32 < supply["value"].max() < 40 - ALERTS.water_hysteresis_c  # a W40 loop, normally in range

    events = plant.of("FacilityWaterTooWarm", "ga-01")
    assert {e.labels["point"] for _, e in events} == {"env.fw-supply"}
    _, fire, _, _ = one_episode(events, WATER_WARM, int(ALERTS.water_for_s * 1000))
    assert fire.value > 40
    assert base.of("FacilityWaterTooWarm", "ga-01") == []


def test_facility_water_ignores_setpoints():
    # the setpoint point sp.fw-supply shares the location tag "fw_supply" with the sensor: a 35 °C setpoint
    # is not a measured 35 °C supply, and must not alert even where the class limit is 32 °C
    readings = pd.DataFrame({"site": ["ga-01"], "point": ["sp.fw-supply"], "ts": [T0], "value": [35.0],
                             "quality": [0]})
    conditions = rules.facility_water_supply(readings, REGISTRY.points_table, ALERTS, {"": "W32"})
    assert conditions == []


# -- data quality --------------------------------------------------------------------------------------

def test_stuck_power_meter_fires_after_an_hour_and_resolves_when_it_moves_again():
    base, plant = baseline(), run(PLANT)
    events = plant.of("MeterFault", "ga-01", fault="stuck", point="it.ups-a")
    # the rule itself waits stuck_after_s (its breach is "unchanged for an hour"), so no lifecycle ``for``
    t_fire, fire, t_res, _ = one_episode(events, STUCK_IT, 0)
    # the value repeated is the one read at minute 149; the first poll an hour later is at 210
    assert minutes(t_fire) == 210 and fire.annotations["summary"].endswith("for 61 min")
    assert t_res == STUCK_IT.end_ms  # the first chunk with a fresh value
    assert {e.labels.get("point") for _, e in plant.of("MeterFault", "ga-01")} == {"it.ups-a"}
    assert base.of("MeterFault", "ga-01") == []


def test_meter_fault_pue_below_1_from_a_stuck_facility_counter():
    # a facility energy counter that stops counting makes the hour's PUE < 1 (status meter_fault)
    base, plant = baseline(), run(PLANT)
    hourly = plant.rows[(plant.rows["id"] == "xy-03") & (plant.rows["window"] == "1h")]
    flagged = hourly[hourly["flags"].str.contains("pue_below_1")]
    assert len(flagged) >= 1 and (flagged["status"] == "meter_fault").all()

    events = plant.of("MeterFault", "xy-03", fault="pue_below_1")
    _, fire, _, _ = one_episode(events, STUCK_FACILITY, 0)
    assert fire.starts_at_ms == flagged["end_ms"].min()  # judged on the closed hour
    assert base.of("MeterFault", "xy-03") == []


def test_meter_fault_hierarchy_from_a_sub_meter_spike():
    # one CRAH sample read ×1000 (a W/kW mix-up): the sub-meters exceed the facility meter for that hour
    base, plant = baseline(), run(PLANT)
    hourly = plant.rows[(plant.rows["id"] == "tr-02") & (plant.rows["window"] == "1h") & plant.rows["final"]]
    flagged = hourly[hourly["flags"].str.contains("hierarchy")]
    assert (flagged["end_ms"] == T0 + 4 * HOUR).all() and len(flagged) == 1

    events = plant.of("MeterFault", "tr-02", fault="hierarchy")
    assert [e.status for _, e in events] == [FIRING, RESOLVED]
    (_, fire), (_, res) = events
    assert fire.starts_at_ms == T0 + 4 * HOUR and res.ends_at_ms == T0 + 5 * HOUR
    assert fire.value > ENGINE.hierarchy_tolerance
    assert base.of("MeterFault", "tr-02") == []


def test_no_data_fires_for_a_silent_site_and_inhibits_its_efficiency_and_safety_alerts():
    base, flap = baseline(), run(FLAP, **FLAP_RUN)
    nodata = flap.of("NoData", "ga-01")
    assert [e.status for _, e in nodata] == [FIRING, RESOLVED], [(minutes(t), e.status) for t, e in nodata]
    (t_on, on), (t_off, off) = nodata
    assert minutes(t_on) == 90  # the last reading came at minute 80: silent for no_data_after_s (10 min)
    assert on.value == ALERTS.no_data_after_s
    assert minutes(t_off) == minutes(OUTAGE.end_ms) == 125  # the site reports again
    assert not on.silenced and not off.silenced  # the inhibitor itself is notified
    assert all(e.labels["alertname"] != "NoData" for _, e in flap.events if e.site != "ga-01")

    # PUE above target since minute 45: its third degraded window (60–75) closed with the last readings
    # before the outage and fires in the round that raised NoData, so it is held back …
    pue = flap.of("PueAboveTarget", "ga-01")
    assert [(minutes(t), e.status, e.silenced) for t, e in pue][:2] == [(90, FIRING, True), (125, FIRING, False)]
    assert minutes(pue[0][1].starts_at_ms) == 45 and pue[1][1].starts_at_ms == pue[0][1].starts_at_ms
    # … and notified once the site reports again (same episode); it resolves after the fault, notified
    assert [(e.status, e.silenced) for _, e in pue[2:]] == [(RESOLVED, False)]
    assert pue[2][1].ends_at_ms >= OUTAGE_PUE.end_ms
    # while NoData fires, nothing of the site reaches receivers but NoData itself: no storm, no stale resolves
    loud = [(minutes(t), e.labels["alertname"]) for t, e in flap.events
            if e.site == "ga-01" and t_on <= t < t_off and not e.silenced]
    assert loud == [(90, "NoData")]
    assert base.of("NoData", "ga-01") == []


def test_no_data_threshold_does_not_depend_on_batching():
    # event time: the same readings, observed every minute or in 15-min batches, go silent at the same time
    flap = run(FLAP, **FLAP_RUN)
    batched = [(minutes(t), e.status) for t, e in replay(flap.inputs, 15) if e.labels["alertname"] == "NoData"]
    assert batched[:1] == [(90, FIRING)]


def device_record(up: bool, minute: int, failures: int = 0) -> dict[str, object]:
    health = DeviceHealth("pdu-7", "modbus", "gy-04", up=up, consecutive_failures=failures,
                          last_error=None if up else "timed out after 2.0 s")
    return health.record("collector-gy", T0 + minute * MIN)


def collector_record(dropped: int, minute: int) -> dict[str, object]:
    # shaped as dcpue.runtime.collect health_record()
    return {"schema": "dcpue.health", "v": 1, "kind": "collector", "collector": "collector-gy",
            "ts": T0 + minute * MIN, "bus_up": dropped == 0, "bus_last_error": None, "spool_records": 1000,
            "spool_bytes": 64_000_000, "spool_max_bytes": 64_000_000, "spool_dropped_total": dropped,
            "forwarded_total": 5000, "devices": 3, "devices_down": 0, "sites": ["gy-04"]}


def test_collector_device_down_fires_after_5_min_and_resolves_when_up():
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    timeline = [(0, True), (1, False), (2, False), (4, False), (6, False), (7, False), (8, True), (9, True)]
    out = []
    for i, (minute, up) in enumerate(timeline):
        out += [(minute, e) for e in engine.observe(health=[device_record(up, minute, failures=i)])]
    assert [(m, e.status) for m, e in out] == [(6, FIRING), (8, RESOLVED)]
    (_, fire), (_, res) = out
    assert fire.labels == {"alertname": "CollectorDeviceDown", "site": "gy-04", "family": "data_quality",
                           "severity": "warning", "device": "pdu-7", "collector": "collector-gy"}
    assert fire.starts_at_ms == T0 + 1 * MIN and res.ends_at_ms == T0 + 8 * MIN

    # a blip shorter than device_down_for_s never fires
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    for minute, up in [(0, False), (3, False), (4, True), (5, False), (9, False), (10, True)]:
        assert engine.observe(health=[device_record(up, minute)]) == []


def test_spool_dropping_data_fires_on_an_increase_and_resolves_after_the_quiet_period():
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    quiet_min = int(ALERTS.spool_clear_after_s // 60)  # 30
    timeline = [(0, 0), (5, 0), (10, 12), (15, 40), (20, 40), (15 + quiet_min - 1, 40), (15 + quiet_min, 40),
                (60, 40)]
    out = []
    for minute, dropped in timeline:
        out += [(minute, e) for e in engine.observe(health=[collector_record(dropped, minute)])]
    assert [(m, e.status) for m, e in out] == [(10, FIRING), (15 + quiet_min, RESOLVED)]
    (_, fire), (_, res) = out
    assert fire.labels["alertname"] == "SpoolDroppingData" and fire.labels["collector"] == "collector-gy"
    assert fire.site == "gy-04"  # raised for the site whose data the collector drops, so it routes with it
    assert fire.starts_at_ms == T0 + 10 * MIN and res.ends_at_ms == T0 + (15 + quiet_min) * MIN
    assert res.value == 40


# -- persistence ---------------------------------------------------------------------------------------

@functools.cache
def uninterrupted() -> tuple[tuple[object, ...], ...]:
    return tuple((t, key(e)) for t, e in replay(run(FLAP, **FLAP_RUN).inputs, 15))


@pytest.mark.parametrize("restart_after", [3, 4, 6])  # chunks ending at minute 60, 75, 105
def test_snapshot_restore_mid_run_gives_the_same_events(restart_after):
    restarted = replay(run(FLAP, **FLAP_RUN).inputs, 15, restart_after=restart_after)
    assert tuple((t, key(e)) for t, e in restarted) == uninterrupted()
    cut = T0 + (restart_after + 1) * 15 * MIN
    assert sum(t > cut for t, _ in uninterrupted()) >= 3  # there is something after the restart to compare


@pytest.mark.parametrize("handover_after", [3, 5])  # chunks ending at minute 60 (ga-01 pending), 90 (NoData firing)
def test_a_site_handed_to_another_engine_mid_run_gives_the_same_events(handover_after):
    """Two engines share the fleet as two workers would; ga-01 moves from one to the other mid-episode."""
    inputs = run(FLAP, **FLAP_RUN).inputs
    left, right = AlertEngine(REGISTRY, ENGINE, ALERTS), AlertEngine(REGISTRY, ENGINE, ALERTS)
    left.drop_sites({"xy-03", "gy-04"})
    right.drop_sites({"ga-01", "tr-02"})
    split = []
    for i, (_t, readings, windows) in enumerate(inputs):
        for engine in (left, right):
            mine = sorted(engine.sites)
            split += [repr(key(e)) for e in engine.observe(readings=readings[readings["site"].isin(mine)],
                                                           windows=windows[windows["id"].isin(mine)])]
        if i == handover_after:
            assert "ga-01" in left.take_touched()
            blob = left.snapshot_sites({"ga-01"})["ga-01"]
            left.drop_sites({"ga-01"})
            right.restore_site("ga-01", blob)
            assert "ga-01" not in left.sites and "ga-01" in right.sites
    whole = [repr(key(e)) for _, e in replay(inputs, 15)]
    assert sorted(split) == sorted(whole)
    assert sum("'ga-01'" in k for k in whole) >= 4  # ga-01 has alerts on both sides of the handover


def test_a_site_snapshot_refuses_foreign_or_corrupt_state():
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    with pytest.raises(ValueError, match="not an alert engine site snapshot"):
        engine.restore_site("ga-01", b"garbage")
    blob = engine.snapshot_sites({"ga-01"})["ga-01"]
    engine.restore_site("ga-01", blob)  # its own, empty: fine


def test_no_data_judges_only_settled_sites():
    """A site whose partition still has a backlog only looks silent: it is not judged until it is settled."""
    inputs = run(FLAP, **FLAP_RUN).inputs
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    unsettled = [e for _, readings, windows in inputs
                 for e in engine.observe(readings=readings, windows=windows, settled={"tr-02", "xy-03", "gy-04"})]
    assert not [e for e in unsettled if e.labels["alertname"] == "NoData"]
    engine = AlertEngine(REGISTRY, ENGINE, ALERTS)
    settled = [e for _, readings, windows in inputs for e in engine.observe(readings=readings, windows=windows)]
    assert [e.site for e in settled if e.labels["alertname"] == "NoData"] == ["ga-01", "ga-01"]
