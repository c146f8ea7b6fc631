"""PUE and its companions per ISO/IEC 30134 and GB 40879-2021, from energy flows per window.

Three steps, all pure and vectorized:

1. :func:`site_flows` turns per-point window integrals (:func:`dcpue.analytics.energy.point_windows`)
   into energy *flows* per site and window: facility input, IT per measurement category,
   cooling per subsystem, losses, lighting, renewable, reused heat, water. Redundant meters of
   one boundary are resolved by source precedence; distinct boundaries of a flow are summed and
   the flow is only as covered as its least-covered part.
2. Flows are additive, so longer windows are plain sums (:func:`rollup_flows`).
3. :func:`window_metrics` computes PUE, pPUE, CLF, PLF, OLF, WUE, CUE, REF, ERF, the gap to the
   target and the GB 40879 grade — only for windows whose coverage reaches the threshold;
   :func:`group_metrics` does it energy-weighted for clusters and the fleet.

Definitions (energies over the same window, [kWh]):

* total = facility input + on-site renewable (ISO/IEC 30134-2 counts every energy source);
* PUE = total / IT; pPUE(cooling) = (IT + cooling) / IT; CLF = cooling / IT;
  PLF = losses / IT; OLF = lighting / IT;
* WUE = water [L] / IT (ISO/IEC 30134-9); CUE = facility input × grid factor [kgCO2/kWh] / IT
  (ISO/IEC 30134-8); REF = renewable / total (30134-3); ERF = reused / total (30134-6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dcpue.model import CoolingSubsystem, Role
from dcpue.results import COOLING_SUBSYSTEM_COLUMNS, Scope, Status, conform_windows

IT_CATEGORIES = (1, 2, 3)
COOLING_FLOWS = tuple(f"cooling_{s.value}" for s in CoolingSubsystem)
SIMPLE_FLOWS = {
    Role.FACILITY.value: "facility",
    Role.LOSSES.value: "losses",
    Role.LIGHTING.value: "lighting",
    Role.RENEWABLE.value: "renewable",
    Role.REUSED_HEAT.value: "reused",
    Role.WATER.value: "water",
}
FLOWS: tuple[str, ...] = (
    "facility", *(f"it{c}" for c in IT_CATEGORIES), *COOLING_FLOWS, "losses", "lighting", "renewable", "reused",
    "water",
)
# per flow: booked energy, covered seconds (quality), booked seconds, and the energy of the flow's
# booked time estimated boundary by boundary (so one meter missing minutes does not bias the sum)
FLOW_PARTS = ("e", "cov", "book", "x")
FLOW_COLUMNS = tuple(f"{f}_{part}" for f in FLOWS for part in FLOW_PARTS)

# GB 40879-2021 energy-efficiency grades by electric energy usage effectiveness (PUE):
# grade 1 ≤ 1.20, grade 2 ≤ 1.30, grade 3 ≤ 1.50 (grade 3 is the allowable limit).
GB40879_GRADES: tuple[tuple[str, float], ...] = (("1", 1.20), ("2", 1.30), ("3", 1.50))
GRADE_BEYOND_LIMIT = "beyond_limit"


@dataclass(frozen=True, slots=True)
class MetricParams:
    """Judgement thresholds of :func:`window_metrics` (see :class:`dcpue.settings.EngineSettings`)."""

    target_pue: float = 1.2
    coverage_threshold: float = 0.9
    hierarchy_tolerance: float = 0.05


def flow_of_points(points: pd.DataFrame) -> pd.Series:
    """The flow name of every energy-balance point of a ``points_table`` (sensors are left out)."""
    role = points["role"]
    flow = role.map(SIMPLE_FLOWS)
    flow = flow.where(role != Role.IT.value, "it" + points["it_category"].astype(str))
    flow = flow.where(role != Role.COOLING.value, "cooling_" + points["cooling_subsystem"].astype(str))
    return flow.dropna()


def site_flows(pw: pd.DataFrame, points: pd.DataFrame, window_s: float | np.ndarray | None = None) -> pd.DataFrame:
    """Energy flows per (site, start_ms) from per-point window integrals.

    ``pw`` holds one row per (site, point, start_ms) — rows for registry points without any
    data in a window count as zero coverage. Returns a wide frame indexed by (site, start_ms)
    with, for every flow in :data:`FLOWS` (NaN where the site has no meter for it):
    ``<flow>_e`` booked energy [kWh, water L], ``<flow>_cov`` covered time [s] and
    ``<flow>_book`` booked time [s] of its least-covered boundary, and ``<flow>_x`` the flow's
    energy over that booked time, estimated as Σ boundary mean power × booked time, so that
    ``x / book`` is the flow's mean power even when its meters miss different minutes.
    """
    flows_of = flow_of_points(points)
    if pw.empty or flows_of.empty:
        return _empty_flows()
    meta = points.loc[flows_of.index, ["boundary", "precedence", "integral_factor"]].assign(flow=flows_of)
    sites = pw["site"].unique()
    starts = np.sort(pw["start_ms"].unique())
    meta = meta[meta.index.get_level_values("site").isin(sites)]
    # every (site, point) × every start, built from arrays (a tuple per row cost ~1 s a step at 200 sites)
    grid = pd.MultiIndex.from_arrays(
        [np.repeat(meta.index.get_level_values("site").to_numpy(), len(starts)),
         np.repeat(meta.index.get_level_values("point").to_numpy(), len(starts)),
         np.tile(starts, len(meta))], names=["site", "point", "start_ms"]
    )
    full = pw.set_index(["site", "point", "start_ms"])[["integral", "covered_s", "booked_s"]].reindex(
        grid, fill_value=0.0)
    full = full.join(meta, on=["site", "point"]).reset_index()
    full["integral"] = full["integral"] * full["integral_factor"]

    # redundant meters of one boundary: the best-covered tier, then source precedence
    best = full.groupby(["site", "start_ms", "flow", "boundary"])["covered_s"].transform("max")
    full["adequate"] = full["covered_s"] >= 0.9 * best
    full = full.sort_values(["site", "start_ms", "flow", "boundary", "adequate", "precedence"],
                            ascending=[True, True, True, True, False, True], kind="stable")
    chosen = full.drop_duplicates(["site", "start_ms", "flow", "boundary"], keep="first")

    keys = ["site", "start_ms", "flow"]
    chosen = chosen.assign(rate=chosen["integral"] / chosen["booked_s"].where(chosen["booked_s"] > 0))
    per_flow = chosen.groupby(keys).agg(
        e=("integral", "sum"), cov=("covered_s", "min"), book=("booked_s", "min"), rate=("rate", "sum"))
    per_flow["x"] = (per_flow["rate"] * per_flow["book"]).where(per_flow["book"] > 0, 0.0)
    per_flow = per_flow.drop(columns="rate")
    wide = per_flow.unstack("flow")
    wide.columns = [f"{flow}_{kind}" for kind, flow in wide.columns]
    return wide.reindex(columns=list(FLOW_COLUMNS))


def _empty_flows() -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays([[], np.array([], dtype=np.int64)], names=["site", "start_ms"])
    return pd.DataFrame(index=index, columns=list(FLOW_COLUMNS), dtype=np.float64)


def rollup_flows(flows: pd.DataFrame, starts_of: pd.Series | np.ndarray) -> pd.DataFrame:
    """Sum flows into longer windows; ``starts_of`` gives the longer window's start for each row.

    Sums keep NaN for flows a site does not meter (``min_count=1``).
    """
    keyed = flows.reset_index()
    keyed["start_ms"] = np.asarray(starts_of, dtype=np.int64)
    return keyed.groupby(["site", "start_ms"]).sum(min_count=1)


def _safe_ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den.where(den > 0)


def grade(pue: pd.Series | np.ndarray | float) -> np.ndarray:
    """GB 40879-2021 grade of each PUE: "1", "2", "3", "beyond_limit", or "" where PUE is NaN."""
    values = np.atleast_1d(np.asarray(pue, dtype=np.float64))
    out = np.full(values.shape, GRADE_BEYOND_LIMIT, dtype=object)
    for label, bound in reversed(GB40879_GRADES):
        out[values <= bound + 1e-12] = label
    out[np.isnan(values)] = ""
    return out


def window_metrics(
    flows: pd.DataFrame,
    sites: pd.DataFrame,
    window: str,
    end_ms: pd.Series | np.ndarray,
    elapsed_s: pd.Series | np.ndarray,
    params: MetricParams = MetricParams(),
) -> pd.DataFrame:
    """Site window results (:data:`dcpue.results.WINDOW_COLUMNS`) from flows indexed by (site, start_ms).

    ``sites`` is :attr:`dcpue.registry.Registry.sites_table`; ``end_ms`` the window ends and
    ``elapsed_s`` how much of each window has passed (the full length once it is closed), the
    denominator of coverage. Ratios are formed from each flow's mean power over the time its
    energy is booked, so a flow that misses a few minutes does not bias PUE; with complete data
    this equals the plain energy ratio.
    """
    f = flows.reset_index()
    n = len(f)
    elapsed = np.asarray(elapsed_s, dtype=np.float64)
    meta = sites.reindex(f["site"]).reset_index(drop=True)
    thr = params.coverage_threshold

    def cov(name: str) -> pd.Series:
        return f[f"{name}_cov"] / elapsed

    def mean_kw(name: str) -> pd.Series:
        return _safe_ratio(f[f"{name}_x"], f[f"{name}_book"] / 3600.0)

    # IT: the highest measurement category that is covered well enough, else the best covered
    it_cov = pd.concat([cov(f"it{c}").rename(c) for c in IT_CATEGORIES], axis=1)
    highest_ok = it_cov.ge(thr).mul(pd.Series(IT_CATEGORIES, index=IT_CATEGORIES)).max(axis=1)
    best_cov_cat = it_cov.fillna(-1).idxmax(axis=1).where(it_cov.notna().any(axis=1), 0)
    category = np.where(highest_ok > 0, highest_ok, best_cov_cat).astype(np.int64)
    pick = [category == c for c in IT_CATEGORIES]
    it = pd.Series(np.select(pick, [f[f"it{c}_e"] for c in IT_CATEGORIES], np.nan))
    it_kw = pd.Series(np.select(pick, [mean_kw(f"it{c}") for c in IT_CATEGORIES], np.nan))
    it_coverage = pd.Series(np.select(pick, [it_cov[c] for c in IT_CATEGORIES], 0.0)).fillna(0.0)

    cooling_e = f[[f"{c}_e" for c in COOLING_FLOWS]].sum(axis=1, min_count=1)
    cooling_kw = pd.concat([mean_kw(c) for c in COOLING_FLOWS], axis=1).sum(axis=1, min_count=1)
    cooling_ok = f[[f"{c}_cov" for c in COOLING_FLOWS]].min(axis=1) / elapsed >= thr
    facility_e = f["facility_e"]
    facility_kw = mean_kw("facility")
    has_renewable = f["renewable_cov"].notna()
    renewable_kw = mean_kw("renewable").where(has_renewable, 0.0)  # metered but silent stays NaN
    total_e = facility_e + f["renewable_e"].fillna(0.0)
    total_kw = facility_kw + renewable_kw
    # on-site generation is part of total energy: a site that meters it needs it covered too
    coverage = np.fmin(np.fmin(cov("facility").fillna(0.0), it_coverage),
                       cov("renewable").where(has_renewable, 1.0).fillna(0.0))

    pue_raw = _safe_ratio(total_kw, it_kw)
    has_any = (f["facility_cov"].fillna(0) > 0) | (it_cov.fillna(0) > 0).any(axis=1)
    complete = coverage >= thr
    fault_zero_it = complete & ~(it > 0)
    fault_below_one = complete & (pue_raw < 1.0)
    status = np.select(
        [~has_any, fault_zero_it | fault_below_one, ~complete],
        [Status.NO_DATA.value, Status.METER_FAULT.value, Status.INCOMPLETE.value],
        Status.OK.value,
    )
    ok = pd.Series(status == Status.OK.value)

    def valid(values: pd.Series, extra: pd.Series | bool = True) -> pd.Series:
        return values.where(ok & extra)

    losses_kw, lighting_kw = mean_kw("losses"), mean_kw("lighting")
    out = pd.DataFrame(
        {
            "scope": Scope.SITE.value,
            "id": f["site"],
            "window": window,
            "start_ms": f["start_ms"].astype(np.int64),
            "end_ms": np.asarray(end_ms, dtype=np.int64),
            "status": status,
            "coverage": coverage.clip(upper=1.0),
            "it_category": category,
            "facility_kwh": facility_e,
            "it_kwh": it,
            "cooling_kwh": cooling_e,
            **{col: f[f"{flow}_e"] for col, flow in zip(COOLING_SUBSYSTEM_COLUMNS, COOLING_FLOWS, strict=True)},
            "losses_kwh": f["losses_e"],
            "lighting_kwh": f["lighting_e"],
            "renewable_kwh": f["renewable_e"],
            "reused_kwh": f["reused_e"],
            "total_kwh": total_e,
            "water_l": f["water_e"],
            "facility_kw": facility_kw,
            "it_kw": it_kw,
            "pue": valid(pue_raw),
            "ppue_cooling": valid(_safe_ratio(it_kw + cooling_kw, it_kw), cooling_ok),
            "clf": valid(_safe_ratio(cooling_kw, it_kw), cooling_ok),
            "plf": valid(_safe_ratio(losses_kw, it_kw), cov("losses") >= thr),
            "olf": valid(_safe_ratio(lighting_kw, it_kw), cov("lighting") >= thr),
            "wue": valid(_safe_ratio(mean_kw("water"), it_kw), cov("water") >= thr),  # [L/h ÷ kW = L/kWh]
            "cue": valid(_safe_ratio(facility_kw * meta["grid_emission_factor"], it_kw)),
            "ref": valid(_safe_ratio(mean_kw("renewable"), total_kw), cov("renewable") >= thr),
            "erf": valid(_safe_ratio(mean_kw("reused"), total_kw), cov("reused") >= thr),
        }
    )
    out["pue_gap"] = out["pue"] - params.target_pue
    out["grade"] = grade(out["pue"])
    children = it_kw + cooling_kw.fillna(0) + losses_kw.fillna(0) + lighting_kw.fillna(0)
    out["hierarchy_error"] = valid(_safe_ratio(children - total_kw, total_kw))
    # a shortfall is only a finding when every child flow is metered; an excess always is
    balance_metered = cooling_kw.notna() & losses_kw.notna() & lighting_kw.notna()
    hierarchy_bad = (out["hierarchy_error"] > params.hierarchy_tolerance) | (
        balance_metered & (out["hierarchy_error"].abs() > params.hierarchy_tolerance))
    out["racks_installed"] = meta["racks_installed"].fillna(0).astype(np.int64)
    out["racks_in_service"] = meta["racks_in_service"].fillna(0).astype(np.int64)
    out["occupancy"] = _safe_ratio(meta["racks_in_service"].astype(float), meta["racks_installed"].astype(float))
    out["it_utilization"] = out["it_kw"] / meta["design_it_kw"]
    flags = np.full(n, "", dtype=object)
    flags = _add_flag(flags, fault_below_one.to_numpy(), "pue_below_1")
    flags = _add_flag(flags, fault_zero_it.to_numpy(), "it_energy_zero")
    flags = _add_flag(flags, hierarchy_bad.to_numpy(), "hierarchy")
    out["flags"] = flags
    return conform_windows(out)


def _add_flag(flags: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    return np.where(mask, np.where(flags == "", name, flags + "," + name), flags)


def group_metrics(site_windows: pd.DataFrame, members: pd.Series, scope: Scope,
                  params: MetricParams = MetricParams()) -> pd.DataFrame:
    """Energy-weighted cluster or fleet results from site results (any mix of window lengths).

    ``members`` maps site id → group id (the cluster, or one fleet id). PUE = Σ total ÷ Σ IT
    (as mean powers) over the member sites whose window is ``ok``; never an average of ratios.
    ``coverage`` is the share of member sites that are ``ok``; below the threshold the group
    is incomplete. A ratio that some ``ok`` member cannot give (no cooling meter, say) is not
    given for the group either.
    """
    group = site_windows["id"].map(members)
    frame = site_windows[group.notna().to_numpy()]
    if frame.empty:
        return conform_windows(pd.DataFrame())
    group = group[group.notna()].to_numpy()
    codes, uniques = pd.MultiIndex.from_arrays(
        [group, frame["window"].to_numpy(), frame["start_ms"].to_numpy()]).factorize()
    n_groups = len(uniques)
    ok = (frame["status"] == Status.OK.value).to_numpy()

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=mask.astype(np.float64), minlength=n_groups)

    def ok_sum(values: np.ndarray, strict: bool = False) -> np.ndarray:
        present = ok & ~np.isnan(values)
        total = np.bincount(codes, weights=np.where(present, values, 0.0), minlength=n_groups)
        if strict:  # any ok member without the figure → no group figure
            return np.where(count(ok & np.isnan(values)) > 0, np.nan, np.where(count(present) > 0, total, np.nan))
        return np.where(count(present) > 0, total, np.nan)

    it_kw = frame["it_kw"].to_numpy(np.float64)
    out: dict[str, object] = {
        "scope": scope.value,
        "id": uniques.get_level_values(0),
        "window": uniques.get_level_values(1),
        "start_ms": uniques.get_level_values(2).astype(np.int64),
    }
    end_ms = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(end_ms, codes, frame["end_ms"].to_numpy(np.int64))
    out["end_ms"] = end_ms
    final_members = count(frame["final"].to_numpy(bool))
    for col in ("facility_kwh", "it_kwh", "cooling_kwh", *COOLING_SUBSYSTEM_COLUMNS, "losses_kwh", "lighting_kwh",
                "renewable_kwh", "reused_kwh", "total_kwh", "water_l", "facility_kw", "it_kw",
                "racks_installed", "racks_in_service"):
        out[col] = ok_sum(frame[col].to_numpy(np.float64))
    sum_it_kw = out["it_kw"]
    # ratios weighted by IT power: Σ(PUE·IT kW) ÷ Σ IT kW = Σ total kW ÷ Σ IT kW
    for col in ("pue", "ppue_cooling", "clf", "plf"):
        weighted = ok_sum(frame[col].to_numpy(np.float64) * it_kw, strict=True)
        out[col] = weighted / np.where(sum_it_kw > 0, sum_it_kw, np.nan)  # type: ignore[operator]
    size = pd.Series(group).map(members.value_counts()).to_numpy(np.float64)
    group_size = np.zeros(n_groups)
    np.maximum.at(group_size, codes, size)
    n_ok = count(ok)
    coverage = n_ok / group_size
    has_data = count((frame["status"] != Status.NO_DATA.value).to_numpy()) > 0
    complete = coverage >= params.coverage_threshold
    status = np.select([~has_data, complete], [Status.NO_DATA.value, Status.OK.value], Status.INCOMPLETE.value)
    good = status == Status.OK.value
    for col in ("pue", "ppue_cooling", "clf", "plf"):
        out[col] = np.where(good, out[col], np.nan)  # type: ignore[call-overload]
    out["coverage"] = coverage
    out["final"] = final_members >= group_size  # a group window closes only when all its members have
    out["status"] = status
    out["pue_gap"] = out["pue"] - params.target_pue  # type: ignore[operator]
    out["grade"] = grade(out["pue"])  # type: ignore[arg-type]
    installed = np.nan_to_num(out["racks_installed"])  # type: ignore[call-overload]
    in_service = np.nan_to_num(out["racks_in_service"])  # type: ignore[call-overload]
    out["racks_installed"] = installed
    out["racks_in_service"] = in_service
    out["occupancy"] = in_service / np.where(installed > 0, installed, np.nan)
    return conform_windows(pd.DataFrame(out))
