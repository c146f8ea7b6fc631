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

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dcpue.analytics.energy import PerTableCache, per_table, point_ids
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
    if pw.empty:
        return _empty_flows()
    if "pid" not in pw.columns:
        pw = pw.assign(pid=point_ids(points, pw))
    return _site_flows_coded(pw, _flow_plan(points))


def site_flows_of_columns(columns: Mapping[str, np.ndarray], points: pd.DataFrame,
                          also: tuple[np.ndarray, np.ndarray] | None = None,
                          starts: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`site_flows` of :func:`~dcpue.analytics.energy.point_window_columns` (arrays with ``pid``).

    ``also``: (site, start_ms) pairs to give flows even without a point window there (a site whose
    sensors reported but its meters not yet: every flow of no coverage).
    ``starts``: the window starts the columns were made for (their edges but the last), if every one of them has
    a point window or an ``also`` pair; the columns then carry each row's position among them (``window``), and
    the distinct starts are not searched for among the rows.
    """
    if not len(columns["pid"]) and (also is None or not len(also[0])):
        return _empty_flows()
    return _site_flows_coded(columns, _flow_plan(points), also, starts)


@dataclass(frozen=True)
class _FlowPlan:
    """A points table's energy-balance points ordered for :func:`_site_flows_coded`: by site, flow, boundary
    (as :func:`site_flows` sums them), then source precedence (the order a boundary's meters are chosen in)."""

    pid_row: np.ndarray  # per points-table row: its row here, -1 for sensors
    site_of_pid: np.ndarray  # per points-table row: site code
    site_ids: np.ndarray  # site code -> site id
    factor: np.ndarray  # integral factor per row
    boundary_starts: np.ndarray  # first row of each (site, flow, boundary)
    flow_of_boundary: np.ndarray  # the (site, flow) each boundary belongs to
    flow_site: np.ndarray  # site code of each (site, flow)
    flow_column: np.ndarray  # index into FLOWS of each (site, flow)
    row_site: np.ndarray  # site code of each row


_PLANS: PerTableCache = {}


def _flow_plan(points: pd.DataFrame) -> _FlowPlan:
    return per_table(_PLANS, points, _make_flow_plan)


def _make_flow_plan(points: pd.DataFrame) -> _FlowPlan:
    flows_of = flow_of_points(points)
    sites = points.index.get_level_values("site").to_numpy(object)
    site_ids, site_of_pid = np.unique(sites, return_inverse=True)
    flow_index = {name: i for i, name in enumerate(FLOWS)}
    positions = points.index.get_indexer(flows_of.index)
    flow_col = np.array([flow_index[f] for f in flows_of.to_numpy(object)], dtype=np.int64)
    boundary = points["boundary"].to_numpy(object)[positions]
    precedence = points["precedence"].to_numpy(np.int64)[positions]
    site_code = site_of_pid[positions]
    order = sorted(range(len(positions)), key=lambda k: (site_code[k], FLOWS[flow_col[k]], boundary[k],
                                                          precedence[k], k))
    positions, flow_col, boundary, site_code = (positions[order], flow_col[order], boundary[order],
                                               site_code[order])
    n = len(positions)
    new_flow = np.ones(n, dtype=bool)
    new_flow[1:] = (site_code[1:] != site_code[:-1]) | (flow_col[1:] != flow_col[:-1])
    new_boundary = new_flow.copy()
    new_boundary[1:] |= boundary[1:] != boundary[:-1]
    boundary_starts = np.flatnonzero(new_boundary)
    flow_of_boundary = np.cumsum(new_flow[boundary_starts]) - 1
    flow_starts = np.flatnonzero(new_flow[boundary_starts])
    pid_row = np.full(len(points), -1, dtype=np.int64)
    pid_row[positions] = np.arange(n)
    return _FlowPlan(pid_row, site_of_pid, np.asarray(site_ids, dtype=object),
                     points["integral_factor"].to_numpy(np.float64)[positions], boundary_starts, flow_of_boundary,
                     site_code[boundary_starts][flow_starts], flow_col[boundary_starts][flow_starts], site_code)


def _site_flows_coded(pw: pd.DataFrame | Mapping[str, np.ndarray], plan: _FlowPlan,
                      also: tuple[np.ndarray, np.ndarray] | None = None,
                      window_starts: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`site_flows` on arrays, for ``pw`` (a frame or column arrays) with ``pid``: the same flows, in the
    same order; ``also`` and ``window_starts`` as in :func:`site_flows_of_columns`."""
    pid = np.asarray(pw["pid"], dtype=np.int64)
    known = pid >= 0
    every = bool(known.all())

    def column(name: str, dtype: type) -> np.ndarray:
        values = np.asarray(pw[name], dtype=dtype)
        return values if every else values[known]

    if not every:
        pid = pid[known]
    also_sites = np.empty(0, np.int64) if also is None else np.searchsorted(plan.site_ids, also[0])
    also_starts = np.empty(0, np.int64) if also is None else np.asarray(also[1], dtype=np.int64)
    if not len(pid) and not len(also_sites):
        return _empty_flows()
    row = plan.pid_row[pid]
    flow_point = row >= 0
    if window_starts is None:
        start_ms = column("start_ms", np.int64)
        starts = np.unique(np.concatenate([start_ms, also_starts]))
        c = np.searchsorted(starts, start_ms[flow_point])
    else:
        starts, c = np.asarray(window_starts, dtype=np.int64), column("window", np.int64)[flow_point]
    present = np.zeros(len(plan.site_ids), dtype=bool)
    present[plan.site_of_pid[pid]] = True
    present[also_sites] = True
    keep_rows = present[plan.row_site]  # every energy-balance point of the sites in pw
    if not keep_rows.any():
        return _empty_flows()
    # the sites' rows as one contiguous block per site keep the plan's order; select them
    rows = np.flatnonzero(keep_rows)
    local = np.full(len(plan.row_site), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    n_rows, n_starts = len(rows), len(starts)
    integral = np.zeros((n_rows, n_starts))
    covered = np.zeros((n_rows, n_starts))
    booked = np.zeros((n_rows, n_starts))
    r = local[row[flow_point]]
    integral[r, c] = column("integral", np.float64)[flow_point]
    covered[r, c] = column("covered_s", np.float64)[flow_point]
    booked[r, c] = column("booked_s", np.float64)[flow_point]
    integral *= plan.factor[rows][:, None]

    # boundaries and flows of the selected sites, as offsets into the selected rows
    b_first = local[plan.boundary_starts]
    kept_b = b_first >= 0
    b_starts = b_first[kept_b]
    f_of_b = plan.flow_of_boundary[kept_b]
    f_first_global = np.flatnonzero(np.diff(np.append(-1, f_of_b)) != 0)  # new flow among kept boundaries
    flows_kept = f_of_b[f_first_global]
    # redundant meters of one boundary: the first (by precedence) whose coverage is within 90 % of the best
    best = np.maximum.reduceat(covered, b_starts, axis=0)
    b_of_row = np.repeat(np.arange(len(b_starts)), np.diff(np.append(b_starts, n_rows)))
    adequate = covered >= 0.9 * best[b_of_row]
    rank = np.where(adequate, np.arange(n_rows)[:, None], n_rows)
    chosen = np.minimum.reduceat(rank, b_starts, axis=0)
    cols = np.arange(n_starts)[None, :]
    e_b, cov_b, book_b = integral[chosen, cols], covered[chosen, cols], booked[chosen, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_b = np.where(book_b > 0, e_b / np.where(book_b > 0, book_b, 1.0), 0.0)
    e = np.add.reduceat(e_b, f_first_global, axis=0)
    cov = np.minimum.reduceat(cov_b, f_first_global, axis=0)
    book = np.minimum.reduceat(book_b, f_first_global, axis=0)
    x = np.where(book > 0, np.add.reduceat(rate_b, f_first_global, axis=0) * book, 0.0)

    site_codes = np.unique(plan.flow_site[flows_kept])
    n_sites = len(site_codes)
    out = np.full((n_sites * n_starts, len(FLOW_COLUMNS)), np.nan)
    site_row = np.searchsorted(site_codes, plan.flow_site[flows_kept])
    out_rows = (site_row[:, None] * n_starts + np.arange(n_starts)[None, :]).ravel()
    base = (plan.flow_column[flows_kept] * len(FLOW_PARTS))[:, None].repeat(n_starts, axis=1).ravel()
    for part, values in enumerate((e, cov, book, x)):
        out[out_rows, base + part] = values.ravel()
    index = site_start_index(plan.site_ids[site_codes], np.repeat(np.arange(n_sites), n_starts),
                             np.tile(starts, n_sites))
    return pd.DataFrame(out, index=index, columns=list(FLOW_COLUMNS))


def _empty_flows() -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays([[], np.array([], dtype=np.int64)], names=["site", "start_ms"])
    return pd.DataFrame(index=index, columns=list(FLOW_COLUMNS), dtype=np.float64)


def rollup_flows(flows: pd.DataFrame, starts_of: pd.Series | np.ndarray | None = None) -> pd.DataFrame:
    """Sum flows into longer windows; ``starts_of`` gives the longer window's start for each row (default: its
    own start, i.e. add up rows of the same window).

    Sums keep NaN for flows a site does not meter (``min_count=1``). Sorted by (site, start_ms).
    """
    starts = (flows.index.get_level_values("start_ms") if starts_of is None else starts_of)
    starts = np.asarray(starts, dtype=np.int64)
    if flows.empty:
        index = pd.MultiIndex.from_arrays([np.array([], dtype=object), starts[:0]], names=["site", "start_ms"])
        return pd.DataFrame(np.empty((0, flows.shape[1])), index=index, columns=flows.columns)
    codes, sites = pd.factorize(flows.index.get_level_values("site").to_numpy(object), sort=True)
    order = np.lexsort((starts, codes))
    codes, starts = codes[order], starts[order]
    heads = np.ones(len(order), dtype=bool)
    heads[1:] = (codes[1:] != codes[:-1]) | (starts[1:] != starts[:-1])
    heads = np.flatnonzero(heads)
    values = flows.to_numpy(np.float64)[order]
    missing = np.isnan(values)
    sums = np.add.reduceat(np.where(missing, 0.0, values), heads, axis=0)
    sums[np.add.reduceat((~missing).astype(np.int32), heads, axis=0) == 0] = np.nan
    return pd.DataFrame(sums, index=site_start_index(sites, codes[heads], starts[heads]), columns=flows.columns)


def site_start_index(sites: pd.Index | np.ndarray, site_codes: np.ndarray, starts: np.ndarray) -> pd.MultiIndex:
    """The (site, start_ms) index of rows given by codes into ``sites`` (distinct) and their starts.

    Built from codes: ``MultiIndex.from_arrays`` would hash the site names of every row again.
    """
    start_levels, start_codes = np.unique(np.asarray(starts, dtype=np.int64), return_inverse=True)
    return pd.MultiIndex(levels=[pd.Index(np.asarray(sites, dtype=object)), pd.Index(start_levels)],
                         codes=[np.asarray(site_codes), start_codes.ravel()], names=["site", "start_ms"],
                         verify_integrity=False)


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
    # plain arrays throughout: a step computes a few thousand rows, where pandas' per-operation cost dominated
    n = len(flows)
    f = {name: flows[name].to_numpy(np.float64) for name in flows.columns if name in _FLOW_COLUMN_SET}
    site_ids = flows.index.get_level_values("site").to_numpy(object)
    elapsed = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float64), (n,))
    meta_rows = sites.index.get_indexer(site_ids)
    thr = params.coverage_threshold

    def meta(column: str) -> np.ndarray:
        values = sites[column].to_numpy(np.float64)
        return np.where(meta_rows >= 0, values[meta_rows], np.nan)

    def cov(name: str) -> np.ndarray:
        return f[f"{name}_cov"] / elapsed

    def mean_kw(name: str) -> np.ndarray:
        return _ratio(f[f"{name}_x"], f[f"{name}_book"] / 3600.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        # IT: the highest measurement category that is covered well enough, else the best covered
        it_cov = np.column_stack([cov(f"it{c}") for c in IT_CATEGORIES])
        categories = np.asarray(IT_CATEGORIES, dtype=np.int64)
        highest_ok = np.max(np.where(it_cov >= thr, categories, 0), axis=1)
        best_cov_cat = np.where(~np.isnan(it_cov).all(axis=1),
                                categories[np.argmax(np.where(np.isnan(it_cov), -1.0, it_cov), axis=1)], 0)
        category = np.where(highest_ok > 0, highest_ok, best_cov_cat).astype(np.int64)
        pick = [category == c for c in IT_CATEGORIES]
        it = np.select(pick, [f[f"it{c}_e"] for c in IT_CATEGORIES], np.nan)
        it_kw = np.select(pick, [mean_kw(f"it{c}") for c in IT_CATEGORIES], np.nan)
        it_coverage = np.nan_to_num(np.select(pick, [it_cov[:, k] for k in range(len(IT_CATEGORIES))], 0.0), nan=0.0)

        cooling_e = _sum_min_count(np.column_stack([f[f"{c}_e"] for c in COOLING_FLOWS]))
        cooling_kw = _sum_min_count(np.column_stack([mean_kw(c) for c in COOLING_FLOWS]))
        cooling_ok = np.fmin.reduce(np.column_stack([f[f"{c}_cov"] for c in COOLING_FLOWS]), axis=1) / elapsed >= thr
        facility_e = f["facility_e"]
        facility_kw = mean_kw("facility")
        has_renewable = ~np.isnan(f["renewable_cov"])
        renewable_kw = np.where(has_renewable, mean_kw("renewable"), 0.0)  # metered but silent stays NaN
        total_e = facility_e + np.nan_to_num(f["renewable_e"], nan=0.0)
        total_kw = facility_kw + renewable_kw
        # on-site generation is part of total energy: a site that meters it needs it covered too
        coverage = np.fmin(np.fmin(np.nan_to_num(cov("facility"), nan=0.0), it_coverage),
                           np.nan_to_num(np.where(has_renewable, cov("renewable"), 1.0), nan=0.0))

        pue_raw = _ratio(total_kw, it_kw)
        has_any = (np.nan_to_num(f["facility_cov"], nan=0.0) > 0) | (np.nan_to_num(it_cov, nan=0.0) > 0).any(axis=1)
        complete = coverage >= thr
        fault_zero_it = complete & ~(it > 0)
        fault_below_one = complete & (pue_raw < 1.0)
        status = np.select(
            [~has_any, fault_zero_it | fault_below_one, ~complete],
            [Status.NO_DATA.value, Status.METER_FAULT.value, Status.INCOMPLETE.value],
            Status.OK.value,
        )
        ok = status == Status.OK.value

        def valid(values: np.ndarray, extra: np.ndarray | bool = True) -> np.ndarray:
            return np.where(ok & extra, values, np.nan)

        losses_kw, lighting_kw = mean_kw("losses"), mean_kw("lighting")
        pue = valid(pue_raw)
        children = it_kw + np.nan_to_num(cooling_kw, nan=0.0) + np.nan_to_num(losses_kw, nan=0.0) + np.nan_to_num(
            lighting_kw, nan=0.0)
        hierarchy_error = valid(_ratio(children - total_kw, total_kw))
        # a shortfall is only a finding when every child flow is metered; an excess always is
        balance_metered = ~np.isnan(cooling_kw) & ~np.isnan(losses_kw) & ~np.isnan(lighting_kw)
        hierarchy_bad = (hierarchy_error > params.hierarchy_tolerance) | (
            balance_metered & (np.abs(hierarchy_error) > params.hierarchy_tolerance))
        racks_installed, racks_in_service = meta("racks_installed"), meta("racks_in_service")
        out = pd.DataFrame(
            {
                "scope": Scope.SITE.value,
                "id": site_ids,
                "window": window,
                "start_ms": flows.index.get_level_values("start_ms").to_numpy(np.int64),
                "end_ms": np.asarray(end_ms, dtype=np.int64),
                "status": status,
                "coverage": np.minimum(coverage, 1.0),
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
                "pue": pue,
                "ppue_cooling": valid(_ratio(it_kw + cooling_kw, it_kw), cooling_ok),
                "clf": valid(_ratio(cooling_kw, it_kw), cooling_ok),
                "plf": valid(_ratio(losses_kw, it_kw), cov("losses") >= thr),
                "olf": valid(_ratio(lighting_kw, it_kw), cov("lighting") >= thr),
                "wue": valid(_ratio(mean_kw("water"), it_kw), cov("water") >= thr),  # [L/h ÷ kW = L/kWh]
                "cue": valid(_ratio(facility_kw * meta("grid_emission_factor"), it_kw)),
                "ref": valid(_ratio(mean_kw("renewable"), total_kw), cov("renewable") >= thr),
                "erf": valid(_ratio(mean_kw("reused"), total_kw), cov("reused") >= thr),
                "pue_gap": pue - params.target_pue,
                "grade": grade(pue),
                "hierarchy_error": hierarchy_error,
                "racks_installed": np.nan_to_num(racks_installed, nan=0.0).astype(np.int64),
                "racks_in_service": np.nan_to_num(racks_in_service, nan=0.0).astype(np.int64),
                "occupancy": _ratio(racks_in_service, racks_installed),
                "it_utilization": it_kw / meta("design_it_kw"),
            }
        )
    flags = np.full(n, "", dtype=object)
    flags = _add_flag(flags, fault_below_one, "pue_below_1")
    flags = _add_flag(flags, fault_zero_it, "it_energy_zero")
    flags = _add_flag(flags, hierarchy_bad, "hierarchy")
    out["flags"] = flags
    return conform_windows(out)


_FLOW_COLUMN_SET = frozenset(FLOW_COLUMNS)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den`` > 0, else NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.where(den > 0, den, np.nan)


def _sum_min_count(values: np.ndarray) -> np.ndarray:
    """Row sums skipping NaN, NaN where a row has no value (pandas' ``sum(min_count=1)``)."""
    return np.where(np.isnan(values).all(axis=1), np.nan, np.nansum(values, axis=1))


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
