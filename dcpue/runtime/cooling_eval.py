"""Closed-loop evaluation of the cooling recommender on the fleet simulator (issue #6).

For each site type (liquid, hybrid, enterprise = air with chillers, legacy = old air room) and a
representative week of each season (the week from the 15th of January, April, July and October,
local time, Guizhou climate), five ways of running the plant are simulated on the same weather and
IT load and compared on **total facility energy** (PUE is reported, never ranked on: server fans
draw more IT power as inlets warm):

* **history** (not scored): ``history_days`` before the week with commissioning step tests: every
  ``explore_block_h`` hours each setpoint jumps to a new value of a Latin hypercube over its search
  range (:data:`SEARCH_BOUNDS`), lowered block by block until no minute of the block has a rack
  inlet above 27 °C (the engineer watching the test). The readings go through
  :func:`dcpue.analytics.cooling.readings_to_table` and :meth:`CoolingModel.train`;
* **B1**: the legacy fixed setpoints (:data:`LEGACY_SETPOINTS`: 18 °C supply air, 7 °C chilled
  water, 32 °C facility water, 29.5 °C condenser water);
* **B2**: the best safe fixed setpoints on *other* weeks: a grid search on the history weeks with the
  true simulator, lowest facility energy with no minute above 27 °C at the hottest rack inlet (and
  the facility water within its W-class);
* **recommender**: every hour the measured conditions of the last 15 minutes (readings → table)
  go to :func:`dcpue.analytics.cooling.recommend`; its setpoints are applied with
  ``set_setpoints`` and the next hour is simulated. When it refuses, B2's setpoints are applied
  (the site's standing setpoints); the week starts from them;
* **hindsight**: per hour, the best setpoints of the grid on the true simulator, knowing the hour's
  weather and load (no step limit): the lower bound the recommender is measured against.

Chilled-water sites are searched on the ridge ``chw_supply = supply_air − 6 K``: the coil's
approach means colder water than that buys no colder air in this plant model and only costs
economizer hours and COP, so the ridge holds the optimum of every fixed supply-air temperature.
Facility water and condenser water (sites with cooling towers) are searched as their own axes.

Temperatures above the limits are counted in minutes at the **hottest** rack-inlet sensor,
noise-free (the room's ``rack_inlet_c`` plus the largest sensor offset). Everything is seeded:
the same configuration gives the same numbers. ``python -m dcpue.runtime.cooling_eval --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.cooling import (
    DEFAULT_IT_FAN,
    DEFAULT_MAX_STEP,
    CoolingModel,
    Envelope,
    ItFan,
    TrainingRefused,
    readings_to_table,
    recommend,
)
from dcpue.ingest.simulator import FleetSimulator, archetype_of, generate_fleet
from dcpue.registry import Site

MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
DAY_MS = 24 * HOUR_MS
LOCAL_TZ = "Asia/Shanghai"
SITE_TYPES = ("liquid", "hybrid", "enterprise", "legacy")
SEASONS = {"jan": 1, "apr": 4, "jul": 7, "oct": 10}
INLET_LIMIT_C = 27.0  # ASHRAE TC 9.9 recommended inlet maximum [°C]
GAP_SHOWN_PCT = 0.02  # the table shows the share of the B2 → hindsight gap captured from this gap on [%]
INLET_ALLOWABLE_C = 32.0  # ASHRAE class A1 allowable inlet maximum [°C]
W_CLASS = "W40"  # the simulated liquid loops run 32–35 °C facility water: an ASHRAE W40 design
FW_MAX_C = 40.0  # its facility-water supply limit [°C]
COIL_APPROACH_K = 6.0  # the simulator's CRAH coil: supply air ≥ chilled-water supply + 6 K
# B1: what old plants run and many still do (cold air, 7 °C chilled water; the first warm-water loops at 32 °C)
# and the classic 29.5 °C (85 °F) design condenser water held all year
LEGACY_SETPOINTS = {"supply_air": 18.0, "chw_supply": 7.0, "fw_supply": 32.0, "cw_supply": 29.5}
# where the step tests, the grid and the recommender may go [°C]: supply air within the recommended
# inlet range, chilled water up to where the coil's approach makes 27 °C air, facility water from W27's
# top to the W40 limit (no dew-point or chip-temperature limit is modelled below that), condenser water
# from what the towers make on a mild day to just above the legacy design value
SEARCH_BOUNDS = {"supply_air": (18.0, 27.0), "chw_supply": (7.0, 21.0), "fw_supply": (27.0, 40.0),
                 "cw_supply": (14.0, 30.0)}


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how finely. Times are local (Asia/Shanghai) weeks of ``year``."""

    seed: int = 7
    draw: int = 0  # which random draw of the history's step tests (same sites, weather and load)
    year: int = 2024
    site_types: tuple[str, ...] = SITE_TYPES
    seasons: tuple[str, ...] = tuple(SEASONS)
    week_days: int = 7
    history_days: int = 21
    explore_block_h: int = 4
    sample_interval_s: int = 60
    sat_step_k: float = 0.5  # grid step of supply air (chilled water follows on the ridge) [K]
    fw_step_k: float = 1.0  # grid step of facility water [K]
    cw_step_k: float = 1.0  # grid step of condenser water [K]
    table_freq: str = "15min"
    inlet_margin_k: float | None = None  # the recommender's inlet margin [K]; None: the library default
    feedback: bool = True  # pass the measured hottest inlet / facility water to recommend (anchoring)
    retrain_every_h: int = 24  # retrain each site's model on everything measured so far, as the worker does; 0: never
    workers: int = 1

    def __post_init__(self) -> None:
        unknown = [t for t in self.site_types if t not in SITE_TYPES]
        if unknown:
            raise ValueError(f"unknown site type(s) {', '.join(unknown)} (valid: {', '.join(SITE_TYPES)})")
        unknown = [s for s in self.seasons if s not in SEASONS]
        if unknown:
            raise ValueError(f"unknown season(s) {', '.join(unknown)} (valid: {', '.join(SEASONS)})")
        if self.retrain_every_h < 0:
            raise ValueError(f"retrain_every_h must be 0 (never) or more hours, got {self.retrain_every_h}")


PROFILES: dict[str, EvalConfig] = {
    "full": EvalConfig(),
    "quick": EvalConfig(site_types=("enterprise",), seasons=("jul",)),
}


# -- plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SitePlan:
    """One evaluated site: its setpoint names, B1, the search grid and the recommender's envelope."""

    kind: str
    site: Site
    names: tuple[str, ...]  # setpoints the site exposes, e.g. ("supply_air", "chw_supply")
    grid: dict[str, np.ndarray]  # name -> (G,) candidate fixed setpoints [°C]
    b1: dict[str, float]

    @property
    def has_fw(self) -> bool:
        return "fw_supply" in self.names


def week_start_ms(year: int, month: int) -> int:
    """Start of the representative week [ms, UTC]: local midnight of the 15th."""
    return int(pd.Timestamp(year=year, month=month, day=15, tz=LOCAL_TZ).value // 1_000_000)


def setpoint_grid(names: Sequence[str], sat_step_k: float, fw_step_k: float,
                  cw_step_k: float = 1.0) -> dict[str, np.ndarray]:
    """Candidate fixed setpoints [°C]: supply air (chilled water on the coil ridge) × facility water ×
    condenser water, for the setpoints in ``names``."""
    steps = {"supply_air": sat_step_k, "fw_supply": fw_step_k, "cw_supply": cw_step_k}
    used = [n for n in steps if n == "supply_air" or n in names]
    values = [np.round(np.arange(SEARCH_BOUNDS[n][0], SEARCH_BOUNDS[n][1] + 1e-9, steps[n]), 6) for n in used]
    grid = dict(zip(used, (a.reshape(-1) for a in np.meshgrid(*values, indexing="ij")), strict=True))
    if "chw_supply" in names:
        grid["chw_supply"] = np.clip(grid["supply_air"] - COIL_APPROACH_K, *SEARCH_BOUNDS["chw_supply"])
    return {n: grid[n] for n in ("supply_air", "chw_supply", "fw_supply", "cw_supply") if n in grid}


def plan_sites(config: EvalConfig, sim: FleetSimulator) -> list[SitePlan]:
    plans = []
    for kind in config.site_types:
        site = next(s for s in sim.registry.sites if archetype_of(s) == kind)
        names = tuple(n for n in LEGACY_SETPOINTS if n in sim.get_setpoints(site.id))
        plans.append(SitePlan(kind, site, names, setpoint_grid(names, config.sat_step_k, config.fw_step_k,
                                                               config.cw_step_k),
                              {n: LEGACY_SETPOINTS[n] for n in names}))
    return plans


def envelope_for(plan: SitePlan, inlet_margin_k: float | None = None) -> Envelope:
    """The recommender's safety envelope for ``plan``'s site: the library defaults (inlet 18–27 °C with
    its margin, maximum steps), bounds as searched, W40 on liquid loops; ``inlet_margin_k`` [K]
    overrides the margin (a sensitivity run, not the default)."""
    bounds = {n: SEARCH_BOUNDS[n] for n in plan.names}
    extra = {} if inlet_margin_k is None else {"inlet_margin_k": inlet_margin_k}
    return Envelope(w_class=W_CLASS if plan.has_fw else None, bounds=bounds, **extra)


# -- the true simulator, vectorised ------------------------------------------------------------------

@dataclass
class Outcome:
    """True minute series of one site under one schedule (arrays of shape (..., T))."""

    facility_kw: np.ndarray  # grid import + PV: ISO/IEC 30134-2 total facility power [kW]
    cooling_kw: np.ndarray
    it_kw: np.ndarray
    inlet_max_c: np.ndarray  # hottest rack-inlet sensor, noise-free [°C]
    fw_c: np.ndarray  # facility-water supply [°C] (NaN without a liquid loop)


def _outcome(sim: FleetSimulator, state: pd.DataFrame, site_id: str, shape: tuple[int, ...]) -> Outcome:
    rows = state[state["site"] == site_id]
    has_loop = "fw_supply" in sim.get_setpoints(site_id)  # elsewhere fw_supply_c is a placeholder
    fw = rows["fw_supply_c"].to_numpy() if has_loop else np.full(len(rows), np.nan)
    offset_k = max(sim.rack_inlet_offsets(site_id).values())
    return Outcome((rows["facility_kw"] + rows["pv_kw"]).to_numpy().reshape(shape),
                   rows["cooling_kw"].to_numpy().reshape(shape), rows["it_kw"].to_numpy().reshape(shape),
                   (rows["rack_inlet_c"].to_numpy() + offset_k).reshape(shape), fw.reshape(shape))


def simulate_schedules(sim: FleetSimulator, ts: np.ndarray,
                       schedules: Mapping[str, Mapping[str, np.ndarray | float]]) -> dict[str, Outcome]:
    """True outcomes of each site in ``schedules`` ({site: {name: scalar or (T,) [°C]}}) over ``ts``."""
    state = sim.true_state(ts, setpoints=schedules, sites=list(schedules))
    return {s: _outcome(sim, state, s, (len(ts),)) for s in schedules}


@dataclass
class GridHours:
    """Hourly aggregates of every grid candidate held fixed: (G, H) arrays."""

    facility_kwh: np.ndarray  # facility energy of the hour [kWh]
    inlet_max_c: np.ndarray  # hottest rack inlet of the hour [°C]
    fw_max_c: np.ndarray  # warmest facility-water supply of the hour [°C] (NaN without a loop)

    def feasible(self) -> np.ndarray:
        """(G, H): no minute above 27 °C at the hottest inlet, facility water within its W-class."""
        return (self.inlet_max_c <= INLET_LIMIT_C) & ~(self.fw_max_c > FW_MAX_C)


def simulate_grid(sim: FleetSimulator, ts: np.ndarray, plans: Sequence[SitePlan],
                  max_rows: int = 240_000) -> dict[str, GridHours]:
    """Every grid candidate of every site held fixed over ``ts`` (whole hours), on the true simulator.

    Candidates are evaluated ``k`` at a time by repeating ``ts`` ``k`` times with the candidate's
    setpoints, one site per call; only hourly aggregates are kept."""
    per_hour = HOUR_MS // sim.dt_ms
    n_t = len(ts)
    if n_t % per_hour:
        raise ValueError("simulate_grid needs whole hours of samples")
    n_h = n_t // per_hour
    dt_h = sim.dt_ms / HOUR_MS
    per_call = max(1, max_rows // n_t)
    out = {}
    for p in plans:
        sid = p.site.id
        n_grid = len(p.grid["supply_air"])
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for g0 in range(0, n_grid, per_call):
            idx = np.arange(g0, min(g0 + per_call, n_grid))
            overrides = {sid: {n: np.repeat(v[idx], n_t) for n, v in p.grid.items()}}
            state = sim.true_state(np.tile(ts, len(idx)), setpoints=overrides, sites=[sid])
            o = _outcome(sim, state, sid, (len(idx), n_h, per_hour))
            parts.append((o.facility_kw.sum(axis=2) * dt_h, o.inlet_max_c.max(axis=2), o.fw_c.max(axis=2)))
        out[sid] = GridHours(*(np.concatenate([c[i] for c in parts]) for i in range(3)))
    return out


def best_fixed(plan: SitePlan, grid: GridHours) -> tuple[dict[str, float], bool]:
    """B2: the grid candidate with the least facility energy and no minute above the limits
    (``ok`` False when none qualifies: then the coolest candidate)."""
    feasible = grid.feasible().all(axis=1)
    energy = grid.facility_kwh.sum(axis=1)
    if feasible.any():
        g = int(np.argmin(np.where(feasible, energy, np.inf)))
    else:
        g = int(np.argmin(grid.inlet_max_c.max(axis=1)))
    return {n: float(v[g]) for n, v in plan.grid.items()}, bool(feasible.any())


def hindsight(grid: GridHours) -> tuple[np.ndarray, int]:
    """Per hour, the feasible grid candidate with the least facility energy (the coolest one where
    none is feasible): (candidate index per hour, hours without a feasible candidate)."""
    feasible = grid.feasible()
    coolest = np.argmin(grid.inlet_max_c, axis=0)
    best = np.argmin(np.where(feasible, grid.facility_kwh, np.inf), axis=0)
    any_ok = feasible.any(axis=0)
    return np.where(any_ok, best, coolest), int((~any_ok).sum())


# -- history: commissioning step tests ----------------------------------------------------------------

def exploration_schedule(sim: FleetSimulator, plans: Sequence[SitePlan], ts: np.ndarray, block_n: int,
                         seed: int, month: int, draw: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random step tests, one value per block and setpoint, made safe against the true simulator:
    a block with any minute above 27 °C at the hottest inlet is lowered by 1 K (supply air and
    chilled water; facility water by 2 K) until none is. ``draw`` picks another independent draw."""
    n_blocks = -(-len(ts) // block_n)
    schedules: dict[str, dict[str, np.ndarray]] = {}
    for i, p in enumerate(plans):
        rng = np.random.default_rng([seed, month, i, 0xC001, *([draw] if draw else [])])
        values = {}
        for n in p.names:
            lo, hi = SEARCH_BOUNDS[n]
            # stratified (Latin hypercube): each setpoint's blocks spread evenly over its whole range, the
            # ends included, in an independent random order; 0.5 K steps, as operators set them
            levels = lo + (hi - lo) * (np.arange(n_blocks) + rng.uniform(0.0, 1.0, n_blocks)) / n_blocks
            values[n] = np.clip(np.round(rng.permutation(levels) * 2.0) / 2.0, lo, hi)
        schedules[p.site.id] = values
    for _ in range(30):
        expanded = {s: {n: np.repeat(v, block_n)[: len(ts)] for n, v in sch.items()} for s, sch in schedules.items()}
        outcomes = simulate_schedules(sim, ts, expanded)
        changed = False
        for site_id, o in outcomes.items():
            pad = n_blocks * block_n - len(ts)
            inlet = np.pad(o.inlet_max_c, (0, pad), mode="edge").reshape(n_blocks, block_n).max(axis=1)
            fw = np.pad(o.fw_c, (0, pad), mode="edge").reshape(n_blocks, block_n).max(axis=1)
            hot, wet = inlet > INLET_LIMIT_C, fw > FW_MAX_C
            if not (hot.any() or wet.any()):
                continue
            changed = True
            sch = schedules[site_id]
            for n in ("supply_air", "chw_supply"):
                if n in sch:
                    sch[n] = np.where(hot, np.maximum(sch[n] - 1.0, SEARCH_BOUNDS[n][0]), sch[n])
            if "fw_supply" in sch:
                lowered = np.maximum(sch["fw_supply"] - 2.0, SEARCH_BOUNDS["fw_supply"][0])
                sch["fw_supply"] = np.where(hot | wet, lowered, sch["fw_supply"])
        if not changed:
            return schedules
    raise RuntimeError("exploration schedule could not be made safe")  # pragma: no cover


def run_history(sim: FleetSimulator, plans: Sequence[SitePlan], start: int, end: int, block_ms: int,
                schedules: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, pd.DataFrame]:
    """Poll the simulator from ``start`` to ``end`` block by block with the step tests applied;
    returns the readings per site."""
    frames: dict[str, list[pd.DataFrame]] = {p.site.id: [] for p in plans}
    for b, t in enumerate(range(start, end, block_ms)):
        for p in plans:
            sim.set_setpoints(p.site.id, **{n: float(v[b]) for n, v in schedules[p.site.id].items()})
        for site_id, frame in sim.poll(min(t + block_ms, end) - sim.dt_ms):
            if site_id in frames:
                frames[site_id].append(frame)
    return {s: pd.concat(f, ignore_index=True) for s, f in frames.items()}


# -- the recommender in the loop ----------------------------------------------------------------------

# (plan, table row, conditions, current setpoints, ts [ms]) -> (setpoints to apply or None, reason)
Recommender = Callable[[SitePlan, Any, Mapping[str, float], Mapping[str, float], int],
                       tuple[dict[str, float] | None, str]]


def it_fan_prior(plan: SitePlan) -> ItFan:
    """The recommender's IT-fan prior for the site's cooling architecture (what an operator knows):
    the library default curve with the share of server heat that fans carry (registry ``cooling``)."""
    share = {"liquid": 0.15, "hybrid": 0.575}.get(plan.site.cooling.value, 1.0)  # cold plates take the rest
    return replace(DEFAULT_IT_FAN, air_share=share)


def library_recommender(models: Mapping[str, Any], envelopes: Mapping[str, Any], feedback: bool = True
                        ) -> Recommender:
    """:func:`dcpue.analytics.cooling.recommend` with the fallbacks of its :func:`schedule`: a refusal
    that names a way back (``toward_safety``) takes it; any other refusal returns ``None`` and the
    loop steps back toward the standing setpoints. With ``feedback`` the last interval's measured
    hottest inlet and facility-water supply anchor the predictions (``measured=``)."""
    def call(plan: SitePlan, table_row: Any, conditions: Mapping[str, float], current: Mapping[str, float],
             ts_ms: int) -> tuple[dict[str, float] | None, str]:
        measured = None
        if feedback and table_row is not None:
            measured = {t: float(table_row[t]) for t in ("rack_inlet_c", "fw_supply_c")
                        if t in table_row and pd.notna(table_row[t])}
        rec = recommend(models[plan.site.id], dict(conditions), dict(current), envelopes[plan.site.id],
                        site=plan.site.id, ts_ms=ts_ms, it_fan=it_fan_prior(plan), measured=measured)
        chosen = rec.recommended if rec.ok else rec.toward_safety
        if chosen is None:
            return None, str(rec.reason)
        values = {k.removeprefix("sp_"): float(v) for k, v in dict(chosen).items()}
        return {n: values.get(n, current[n]) for n in plan.names}, str(rec.reason)

    return call


def closed_loop(sim: FleetSimulator, plans: Sequence[SitePlan], start: int, hours: int,
                standing: Mapping[str, Mapping[str, float]], recommender: Recommender,
                readings: Mapping[str, pd.DataFrame], freq: str,
                retrain: Callable[[str, pd.DataFrame], None] | None = None, retrain_every_h: int = 0,
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Counter[str]]]:
    """Hour by hour: the measured conditions of the last interval → recommendation → setpoints for
    the hour → simulate. Returns the applied schedule per site (per minute) and refusal reasons.
    A refusal without a way back steps toward the standing setpoints by at most the library's
    maximum step per hour. Every ``retrain_every_h`` hours (0: never) ``retrain(site, readings)`` gets
    everything the site measured in the loop so far (the history is the caller's)."""
    minutes = HOUR_MS // sim.dt_ms
    measured: dict[str, list[pd.DataFrame]] = {p.site.id: [] for p in plans}
    applied = {p.site.id: {n: np.empty(hours * minutes) for n in p.names} for p in plans}
    refusals: dict[str, Counter[str]] = {p.site.id: Counter() for p in plans}
    recent = {s: r[r["ts"] > start - 2 * HOUR_MS] for s, r in readings.items()}
    current = {p.site.id: dict(standing[p.site.id]) for p in plans}
    max_step = dict(DEFAULT_MAX_STEP)
    for h in range(hours):
        t = start + h * HOUR_MS
        if retrain is not None and retrain_every_h > 0 and h > 0 and h % retrain_every_h == 0:
            for p in plans:
                if measured[p.site.id]:
                    retrain(p.site.id, pd.concat(measured[p.site.id], ignore_index=True))
        for p in plans:
            sid = p.site.id
            table = readings_to_table(recent[sid], p.site, freq)
            row = table.iloc[-1] if len(table) else None
            setpoints: dict[str, float] | None = None
            if row is None or int(row["ts"]) < t - 2 * HOUR_MS:
                reason = "no recent measurements"
            else:
                conditions = {c: float(row[c]) for c in ("it_kw", "dry_bulb_c", "wet_bulb_c", "rh_pct")}
                setpoints, reason = recommender(p, row, conditions, current[sid], t)
            if not reason.startswith(("change", "keep")):
                refusals[sid][_reason_kind(reason)] += 1
            if setpoints is None:  # back toward the standing setpoints, one step at a time
                setpoints = {n: float(np.clip(standing[sid][n], current[sid][n] - max_step[n],
                                              current[sid][n] + max_step[n])) for n in p.names}
            sim.set_setpoints(sid, **setpoints)
            current[sid] = setpoints
            for n in p.names:
                applied[sid][n][h * minutes:(h + 1) * minutes] = setpoints[n]
        polled = dict(sim.poll(t + HOUR_MS - sim.dt_ms))
        for p in plans:
            sid = p.site.id
            frame = polled.get(sid)
            if frame is not None:
                measured[sid].append(frame)
                recent[sid] = pd.concat([recent[sid][recent[sid]["ts"] > t + HOUR_MS - 2 * HOUR_MS], frame],
                                        ignore_index=True)
    return applied, refusals


def _reason_kind(reason: str) -> str:
    """A short key for counting refusals (the reason's text up to its first number)."""
    text = reason.removeprefix("no recommendation:").strip()
    for i, ch in enumerate(text):
        if ch.isdigit() or ch == "=":
            text = text[:i]
            break
    return text.strip() or reason[:40]


# -- metrics ----------------------------------------------------------------------------------------

def _summary(o: Outcome, dt_h: float) -> dict[str, float]:
    facility = float(o.facility_kw.sum() * dt_h)
    it = float(o.it_kw.sum() * dt_h)
    return {
        "facility_kwh": facility,
        "cooling_kwh": float(o.cooling_kw.sum() * dt_h),
        "it_kwh": it,
        "pue": facility / it if it > 0 else float("nan"),
        "minutes_above_27c": int((o.inlet_max_c > INLET_LIMIT_C).sum() * dt_h * 60),
        "minutes_above_32c": int((o.inlet_max_c > INLET_ALLOWABLE_C).sum() * dt_h * 60),
        "max_inlet_c": float(o.inlet_max_c.max()),
        "minutes_fw_above_limit": int(np.nan_to_num(o.fw_c > FW_MAX_C).sum() * dt_h * 60),
    }


def _pct(saved: float, base: float) -> float:
    return 100.0 * saved / base if base else float("nan")


def compare(strategies: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Savings of each strategy against B1 and B2 and the share of the B2 → hindsight gap captured."""
    b1, b2, hind = strategies["b1"], strategies["b2"], strategies["hindsight"]
    out: dict[str, Any] = {}
    for name, s in strategies.items():
        out[name] = {
            "facility_saving_vs_b1_pct": _pct(b1["facility_kwh"] - s["facility_kwh"], b1["facility_kwh"]),
            "facility_saving_vs_b2_pct": _pct(b2["facility_kwh"] - s["facility_kwh"], b2["facility_kwh"]),
            "cooling_saving_vs_b1_pct": _pct(b1["cooling_kwh"] - s["cooling_kwh"], b1["cooling_kwh"]),
            "cooling_saving_vs_b2_pct": _pct(b2["cooling_kwh"] - s["cooling_kwh"], b2["cooling_kwh"]),
        }
    gap = b2["facility_kwh"] - hind["facility_kwh"]
    rec = strategies.get("recommender")
    out["gap_kwh"] = gap
    out["gap_pct_of_b2"] = _pct(gap, b2["facility_kwh"])
    out["gap_captured"] = ((b2["facility_kwh"] - rec["facility_kwh"]) / gap
                           if rec is not None and gap > 1e-9 else float("nan"))
    return out


# -- one season -------------------------------------------------------------------------------------

def evaluate_season(config: EvalConfig, season: str, recommender_factory: Callable[..., Recommender] | None = None
                    ) -> list[dict[str, Any]]:
    """Evaluate every site type of ``config`` over the representative week of ``season``."""
    month = SEASONS[season]
    week = week_start_ms(config.year, month)
    hist_start = week - config.history_days * DAY_MS
    week_end = week + config.week_days * DAY_MS
    registry = generate_fleet(4, config.seed)  # one site of each type, in their own cities' weather
    sim = FleetSimulator(registry, seed=config.seed, start_ms=hist_start,
                         sample_interval_s=config.sample_interval_s, faults=False)
    sim.setup()
    plans = plan_sites(config, sim)
    dt_ms = sim.dt_ms
    dt_h = dt_ms / HOUR_MS
    minutes = HOUR_MS // dt_ms
    t0 = time.perf_counter()

    # history with step tests → model
    hist_ts = np.arange(hist_start, week, dt_ms, dtype=np.int64)
    block_n = config.explore_block_h * HOUR_MS // dt_ms
    schedules = exploration_schedule(sim, plans, hist_ts, block_n, config.seed, month, config.draw)
    readings = run_history(sim, plans, hist_start, week, config.explore_block_h * HOUR_MS, schedules)
    hist_max_inlet = {s: float(o.inlet_max_c.max()) for s, o in simulate_schedules(sim, hist_ts, {
        s: {n: np.repeat(v, block_n)[: len(hist_ts)] for n, v in sch.items()} for s, sch in schedules.items()}).items()}
    models, tables, envelopes = {}, {}, {}
    for p in plans:
        tables[p.site.id] = readings_to_table(readings[p.site.id], p.site, config.table_freq)
        models[p.site.id] = CoolingModel.train(tables[p.site.id], site=p.site.id, random_state=config.seed)
        envelopes[p.site.id] = envelope_for(p, config.inlet_margin_k)
    initial_models = dict(models)
    t_train = time.perf_counter()

    # B2 on the history weeks, hindsight on the week, B1: all on the true simulator
    b2 = {}
    b2_safe = {}
    hist_grid = simulate_grid(sim, hist_ts, plans)
    for p in plans:
        b2[p.site.id], b2_safe[p.site.id] = best_fixed(p, hist_grid[p.site.id])
    del hist_grid
    week_ts = np.arange(week, week_end, dt_ms, dtype=np.int64)
    week_grid = simulate_grid(sim, week_ts, plans)
    picks = {p.site.id: hindsight(week_grid[p.site.id]) for p in plans}
    del week_grid
    fixed = {
        "b1": simulate_schedules(sim, week_ts, {p.site.id: p.b1 for p in plans}),
        "b2": simulate_schedules(sim, week_ts, b2),
        "hindsight": simulate_schedules(sim, week_ts, {
            p.site.id: {n: np.repeat(v[picks[p.site.id][0]], minutes) for n, v in p.grid.items()} for p in plans}),
    }
    t_grid = time.perf_counter()

    # the recommender in the loop
    hours = config.week_days * 24
    recommender = (recommender_factory(models, envelopes) if recommender_factory is not None
                   else library_recommender(models, envelopes, feedback=config.feedback))
    by_id = {p.site.id: p for p in plans}
    retrains: Counter[str] = Counter()

    def retrain(sid: str, week_readings: pd.DataFrame) -> None:
        table = pd.concat([tables[sid], readings_to_table(week_readings, by_id[sid].site, config.table_freq)],
                          ignore_index=True)
        try:
            models[sid] = CoolingModel.train(table, site=sid, random_state=config.seed)
            retrains[sid] += 1
        except TrainingRefused:
            pass  # the worker logs it and keeps the model it has

    applied, refusals = closed_loop(sim, plans, week, hours, b2, recommender, readings,
                                    config.table_freq, retrain, config.retrain_every_h)
    loop = simulate_schedules(sim, week_ts, applied)
    t_loop = time.perf_counter()

    results = []
    for p in plans:
        sid = p.site.id
        pick, hind_infeasible = picks[sid]
        strategies = {
            "b1": _summary(fixed["b1"][sid], dt_h),
            "b2": _summary(fixed["b2"][sid], dt_h),
            "recommender": _summary(loop[sid], dt_h),
            "hindsight": _summary(fixed["hindsight"][sid], dt_h),
        }
        model = initial_models[sid]
        sched = applied[sid]
        results.append({
            "site_type": p.kind,
            "site": sid,
            "city": p.site.city,
            "season": season,
            "week_start": pd.Timestamp(week, unit="ms", tz="UTC").tz_convert(LOCAL_TZ).isoformat(),
            "envelope": envelopes[sid].model_dump(mode="json"),
            "b1_setpoints": p.b1,
            "b2_setpoints": b2[sid],
            "b2_safe_on_history": b2_safe[sid],
            "strategies": strategies,
            "comparison": compare(strategies),
            "history": {
                "days": config.history_days,
                "step_test_hours": config.explore_block_h,
                "max_inlet_c": hist_max_inlet[sid],
                "setpoint_range": {n: [float(v.min()), float(v.max())] for n, v in schedules[sid].items()},
                "table_rows": int(len(tables[sid])),
            },
            "recommender": {
                "hours": hours,
                "hours_refused": int(sum(refusals[sid].values())),
                "refusals": dict(refusals[sid]),
                "setpoints_mean": {n: float(v.mean()) for n, v in sched.items()},
                "setpoints_range": {n: [float(v.min()), float(v.max())] for n, v in sched.items()},
            },
            "hindsight": {
                "setpoints_mean": {n: float(v[pick].mean()) for n, v in p.grid.items()},
                "setpoints_range": {n: [float(v[pick].min()), float(v[pick].max())] for n, v in p.grid.items()},
                "hours_without_feasible_candidate": hind_infeasible,
                "grid_size": int(len(p.grid["supply_air"])),
            },
            "model": {
                "version": model.version,
                "rows": model.n_rows,
                "metrics": {t: {k: m[k] for k in ("mae", "relative_error", "r2", "hi_coverage", "hi_miss_q99")}
                            for t, m in model.metrics.items()},
                "training_setpoint_range": {n: list(model.setpoint_range(n)) for n in p.names},
                "retrains": int(retrains[sid]),
            },
            "hourly_setpoints": {
                "recommender": {n: np.round(v[::minutes], 2).tolist() for n, v in sched.items()},
                "hindsight": {n: np.round(v[pick], 2).tolist() for n, v in p.grid.items()},
            },
            "timing_s": {"history_and_training": t_train - t0, "grid": t_grid - t_train, "loop": t_loop - t_grid},
        })
    return results


# -- the whole evaluation ---------------------------------------------------------------------------

def _season_job(args: tuple[EvalConfig, str]) -> list[dict[str, Any]]:
    config, season = args
    if config.workers > 1:  # one process per core: keep scikit-learn's OpenMP pool to one thread each
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return evaluate_season(config, season)
    return evaluate_season(config, season)


def site_type_totals(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per site type, energies summed over the evaluated weeks, savings, gap captured and targets."""
    totals: dict[str, Any] = {}
    for kind in dict.fromkeys(r["site_type"] for r in results):
        rows = [r for r in results if r["site_type"] == kind]
        strategies: dict[str, dict[str, float]] = {}
        for name in ("b1", "b2", "recommender", "hindsight"):
            keys = ("facility_kwh", "cooling_kwh", "it_kwh", "minutes_above_27c", "minutes_above_32c",
                    "minutes_fw_above_limit")
            agg = {k: sum(r["strategies"][name][k] for r in rows) for k in keys}
            agg["pue"] = agg["facility_kwh"] / agg["it_kwh"]
            agg["max_inlet_c"] = max(r["strategies"][name]["max_inlet_c"] for r in rows)
            strategies[name] = agg
        comp = compare(strategies)
        rec = strategies["recommender"]
        totals[kind] = {
            "seasons": [r["season"] for r in rows],
            "strategies": strategies,
            "comparison": comp,
            "hours_refused": sum(r["recommender"]["hours_refused"] for r in rows),
            "hours": sum(r["recommender"]["hours"] for r in rows),
            "targets": {
                "below_b2": bool(rec["facility_kwh"] < strategies["b2"]["facility_kwh"]),
                "half_gap_captured": bool(comp["gap_captured"] >= 0.5),
                "zero_minutes_above_27c": rec["minutes_above_27c"] == 0,
            },
        }
    return totals


def machine() -> dict[str, Any]:
    """The machine the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(), "python": platform.python_version(),
            "platform": platform.platform()}


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Run every season of ``config`` (in ``config.workers`` processes) and return the report."""
    started = time.perf_counter()
    jobs = [(config, s) for s in config.seasons]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs))) as pool:
            per_season = list(pool.map(_season_job, jobs))
    else:
        per_season = [evaluate_season(config, s) for s in config.seasons]
    order = {k: i for i, k in enumerate(SITE_TYPES)}
    results = sorted((r for rs in per_season for r in rs), key=lambda r: (order[r["site_type"]],
                                                                          SEASONS[r["season"]]))
    return {
        "config": asdict(config),
        "versions": {"scikit-learn": version("scikit-learn"), "numpy": np.__version__, "pandas": pd.__version__},
        "machine": machine(),
        "elapsed_s": time.perf_counter() - started,
        "results": results,
        "site_types": site_type_totals(results),
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    """The measured table: one row per site type and season, then the totals per site type."""
    head = ("| site type | week | B1 MWh | B2 MWh | rec. MWh | hindsight MWh | saved vs B1 | saved vs B2 | "
            "cooling saved vs B1 | PUE B1 / B2 / rec. / hind. | min > 27 °C (B2 / rec.) | min > 32 °C rec. | "
            "gap captured | hours refused |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def row(label: str, week: str, s: Mapping[str, Any], c: Mapping[str, Any], refused: str) -> str:
        mwh = [s[k]["facility_kwh"] / 1000.0 for k in ("b1", "b2", "recommender", "hindsight")]
        pue = " / ".join(f"{s[k]['pue']:.3f}" for k in ("b1", "b2", "recommender", "hindsight"))
        gap = c["gap_captured"]
        # a share of a gap below 0.02 % of the energy is a ratio of rounding errors: not shown (JSON has it)
        gap_text = "n/a" if gap != gap or c["gap_pct_of_b2"] < GAP_SHOWN_PCT else f"{gap:.2f}"
        return (f"| {label} | {week} | " + " | ".join(f"{v:,.2f}" for v in mwh)
                + f" | {c['recommender']['facility_saving_vs_b1_pct']:.2f} % | "
                f"{c['recommender']['facility_saving_vs_b2_pct']:.2f} % | "
                f"{c['recommender']['cooling_saving_vs_b1_pct']:.1f} % | {pue} | "
                f"{s['b2']['minutes_above_27c']} / {s['recommender']['minutes_above_27c']} | "
                f"{s['recommender']['minutes_above_32c']} | {gap_text} (gap {c['gap_pct_of_b2']:.2f} %) | {refused} |")

    for r in report["results"]:
        lines.append(row(r["site_type"], r["season"], r["strategies"], r["comparison"],
                         f"{r['recommender']['hours_refused']}/{r['recommender']['hours']}"))
    for kind, t in report["site_types"].items():
        lines.append(row(f"**{kind}**", "all", t["strategies"], t["comparison"], f"{t['hours_refused']}/{t['hours']}"))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dcpue.runtime.cooling_eval``."""
    parser = argparse.ArgumentParser(prog="python -m dcpue.runtime.cooling_eval",
                                     description="Closed-loop evaluation of the cooling recommender on the simulator.")
    parser.add_argument("--quick", action="store_true", help="one site type (enterprise) × one week (July)")
    parser.add_argument("--site-types", nargs="+", choices=SITE_TYPES, help="site types to evaluate")
    parser.add_argument("--seasons", nargs="+", choices=tuple(SEASONS), help="weeks to evaluate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--draw", type=int, default=0,
                        help="another random draw of the step tests on the same sites and weeks (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes (one season each)")
    parser.add_argument("--inlet-margin", type=float, metavar="K",
                        help="sensitivity run: the recommender's inlet margin [K] (default: the library's)")
    parser.add_argument("--no-feedback", action="store_true",
                        help="do not anchor predictions on the measured inlet and facility water")
    parser.add_argument("--step-hours", type=int, metavar="H",
                        help="sensitivity run: hours between the history's step-test changes (default 4)")
    parser.add_argument("--retrain-hours", type=int, metavar="H",
                        help="retrain each site's model every H hours of the week on all it measured, as the "
                             "worker does (default 24; 0: keep the model trained on the history)")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The evaluation configuration the command-line options ask for."""
    config = PROFILES["quick" if args.quick else "full"]
    overrides: dict[str, Any] = {"seed": args.seed, "draw": args.draw, "workers": args.workers,
                                 "inlet_margin_k": args.inlet_margin, "feedback": not args.no_feedback}
    if args.site_types:
        overrides["site_types"] = tuple(args.site_types)
    if args.seasons:
        overrides["seasons"] = tuple(args.seasons)
    if args.step_hours:
        overrides["explore_block_h"] = args.step_hours
    if args.retrain_hours is not None:
        overrides["retrain_every_h"] = args.retrain_hours
    return replace(config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run_evaluation(config_from_args(args))
    given = list(argv if argv is not None else sys.argv[1:])
    report["command"] = " ".join([".venv/bin/python -m dcpue.runtime.cooling_eval", *given])
    table = markdown_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    sys.stdout.write(f"elapsed {report['elapsed_s']:.0f} s\n")
    return 0


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
