"""Criteria, verdict and score per site, and the consolidation plan for the fleet (pure, vectorized).

Statuses are three-valued throughout: a criterion is ``met``, ``not_met`` or ``unknown``, and
combinations follow Kleene's logic (``unknown and not_met`` is ``not_met``; ``unknown and met`` is
``unknown``), so missing data never passes or fails a site. Rules are in ``docs/retirement.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.pue import grade
from dcpue.analytics.retirement.criteria import (
    CRITERIA,
    ECONOMICS_COLUMNS,
    HOURS_PER_YEAR,
    SIZE_CLASSES,
    VERDICTS,
    Economics,
    RetirementCriteria,
)
from dcpue.analytics.retirement.geo import distance_matrix_km, isolated
from dcpue.analytics.retirement.inputs import FIGURE_COLUMNS, HISTORY_COLUMNS
from dcpue.analytics.retirement.plan import ClusterOverrides, cluster_table, consolidation_plan
from dcpue.registry import Cluster

MET, NOT_MET = 1.0, 0.0  # unknown is NaN
RULE_ORDER = ("retire", "upgrade", "consolidate")  # the verdict rules in the order they are tried; else keep
_STATUS_TEXT = {MET: "met", NOT_MET: "not_met"}
SIZE_LABELS = {"hyperscale": "超大型", "large": "大型", "small_medium": "中小型"}
_NUMERIC = (
    "latitude", "longitude", "commissioned", "refreshed", "racks_installed", "racks_in_service", "design_it_kw",
    "grid_emission_factor", "as_of_year", *FIGURE_COLUMNS, *HISTORY_COLUMNS, *ECONOMICS_COLUMNS,
)
SITE_COLUMNS: tuple[str, ...] = (
    "site", "name", "city", "latitude", "longitude", "cluster", "score", "score_max", "verdict", "verdict_certain",
    "verdict_alternatives", "verdict_reason", "criteria_met", "criteria_unknown", "annual_pue", "grade",
    "occupancy_pct", "occupancy_trend_pp_per_year",
    "occupancy_source", "it_kw_mean", "racks_installed", "racks_in_service", "standard_racks", "size_class",
    "age_years", "cooling", "nearest_cluster", "hub_distance_km", "isolated",
    *(col for c in CRITERIA for col in (c, f"{c}_evidence")),
)


@dataclass(frozen=True, eq=False)
class Assessment:
    """The result of :func:`assess`: per-site table, consolidation plan, hub clusters and fleet totals."""

    sites: pd.DataFrame
    plan: pd.DataFrame
    clusters: pd.DataFrame
    totals: dict[str, float]
    criteria: RetirementCriteria

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: records of plain Python values, NaN → None."""
        return {
            "criteria": self.criteria.model_dump(mode="json"),
            "totals": {k: _plain(v) for k, v in self.totals.items()},
            "sites": _records(self.sites),
            "plan": _records(self.plan),
            "clusters": _records(self.clusters),
        }


def assess(
    inputs: pd.DataFrame,
    clusters: Sequence[Cluster],
    criteria: RetirementCriteria | None = None,
    economics: Economics | None = None,
    *,
    cluster_overrides: ClusterOverrides | None = None,
) -> Assessment:
    """Assess every site of ``inputs`` (from :func:`~dcpue.analytics.retirement.site_inputs`, or a table
    with the same columns where any may be missing or NaN) against ``criteria``, give it a verdict and a
    score, and plan the moves of retiring and consolidating sites into the hub ``clusters``.

    ``economics`` gives fleet-wide prices; per-site columns of the same names in ``inputs`` win.
    ``cluster_overrides`` maps a cluster id to any of ``capacity_kw`` [kW], ``load_kw`` [kW] and ``pue``
    [–], replacing the figures derived from its member sites.
    """
    criteria = criteria or RetirementCriteria()
    economics = economics or Economics()
    frame = _normalise(inputs)
    for col in ECONOMICS_COLUMNS:
        fleet = getattr(economics, col)
        if fleet is not None:
            frame[col] = frame[col].fillna(float(fleet))

    statuses: dict[str, np.ndarray] = {}
    evidence: dict[str, pd.Series] = {}
    occ, occ_source = _occupancy(frame, criteria)
    statuses["low_occupancy"], evidence["low_occupancy"] = _low_occupancy(frame, occ, occ_source, criteria)
    racks, size_class, statuses["small"], evidence["small"] = _small(frame, criteria)
    age, statuses["old"], evidence["old"] = _old(frame, criteria)
    pue, statuses["inefficient"], evidence["inefficient"] = _inefficient(frame, criteria)
    geo, statuses["scattered"], evidence["scattered"] = _scattered(frame, clusters, criteria)
    statuses["poor_benefit"], evidence["poor_benefit"] = _poor_benefit(frame, pue, criteria)

    hub = frame["cluster"].notna().to_numpy()
    status_matrix = np.column_stack([statuses[c] for c in CRITERIA])
    verdict, certain, alternatives = _verdicts(status_matrix, hub)
    weights = np.array([getattr(criteria.weights, c) for c in CRITERIA])
    met = status_matrix == MET
    unknown = np.isnan(status_matrix)
    score = 100.0 * (met @ weights) / weights.sum()
    score_max = 100.0 * ((met | unknown) @ weights) / weights.sum()

    sites = pd.DataFrame({
        "site": frame["site"], "name": frame["name"], "city": frame["city"], "latitude": frame["latitude"],
        "longitude": frame["longitude"], "cluster": frame["cluster"].astype(object), "score": np.round(score, 1),
        "score_max": np.round(score_max, 1), "verdict": verdict, "verdict_certain": certain,
        "verdict_alternatives": alternatives,
        "verdict_reason": _reasons(verdict, status_matrix, frame, racks, pue, criteria),
        "criteria_met": met.sum(axis=1), "criteria_unknown": unknown.sum(axis=1), "cooling": frame["cooling"],
        "annual_pue": frame["annual_pue"], "grade": grade(pue.to_numpy()), "occupancy_pct": occ,
        "occupancy_trend_pp_per_year": frame["occupancy_hist_trend_pp_per_year"],
        "occupancy_source": occ_source, "it_kw_mean": frame["it_kw_mean"],
        "racks_installed": frame["racks_installed"], "racks_in_service": frame["racks_in_service"],
        "standard_racks": racks, "size_class": size_class, "age_years": age, **geo,
    })
    for c in CRITERIA:
        sites[c] = _status_text(statuses[c])
        sites[f"{c}_evidence"] = evidence[c].to_numpy()
    sites = sites[list(SITE_COLUMNS)].reset_index(drop=True)

    # the plan uses the PUE the criteria accepted: one from too few months (or below 1) is unknown there too
    planning = frame.assign(annual_pue=pue)
    table = cluster_table(planning, clusters, cluster_overrides, standard_rack_kw=criteria.standard_rack_kw,
                          occupancy_target_pct=criteria.hub_occupancy_target_pct)
    plan, table = consolidation_plan(planning, pd.Series(verdict, index=frame.index), table,
                                     frame["electricity_price_cny_per_kwh"])
    return Assessment(sites=sites, plan=plan, clusters=table, totals=_totals(sites, plan), criteria=criteria)


# --- inputs -------------------------------------------------------------------------------------------

def _normalise(inputs: pd.DataFrame) -> pd.DataFrame:
    frame = inputs.reset_index() if "site" not in inputs.columns and inputs.index.name == "site" else inputs.copy()
    if "site" not in frame.columns:
        raise ValueError("inputs: needs a 'site' column (see site_inputs)")
    frame = frame.reset_index(drop=True)
    frame["site"] = frame["site"].astype(str)
    if frame["site"].duplicated().any():
        dup = sorted(frame.loc[frame["site"].duplicated(), "site"].unique())
        raise ValueError(f"inputs: sites given more than once: {', '.join(dup)}")
    for col in _NUMERIC:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float) if col in frame.columns else np.nan
    for col in ("it_kw_mean", "it_kw_peak"):  # a negative IT load is a meter fault, never a figure
        frame[col] = frame[col].where(~(frame[col] < 0))
    for col in ("name", "city", "cooling"):
        if col not in frame.columns:
            frame[col] = None
    cluster = frame["cluster"] if "cluster" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
    cluster = cluster.astype(object).where(cluster.notna(), None)
    frame["cluster"] = cluster.map(lambda v: None if v is None or str(v).strip() == "" else str(v))
    return frame


# --- criteria -----------------------------------------------------------------------------------------

def _occupancy(frame: pd.DataFrame, c: RetirementCriteria) -> tuple[pd.Series, pd.Series]:
    """Current 上架率 [%] and its source: newest month of history, rack counts, or IT power ÷ standard racks."""
    ri, rs = frame["racks_installed"], frame["racks_in_service"]
    by_racks = 100.0 * rs / ri.where(ri > 0)
    by_power = (100.0 * frame["it_kw_mean"] / (ri.where(ri > 0) * c.standard_rack_kw)).where(rs.isna())
    hist = frame["occupancy_hist_last_pct"].where(frame["occupancy_hist_months"] > 0)
    occ = hist.fillna(by_racks).fillna(by_power)
    source = np.select([hist.notna(), by_racks.notna(), by_power.notna()], ["history", "racks", "power"], "")
    return occ, pd.Series(source, index=frame.index)


def _low_occupancy(frame: pd.DataFrame, occ: pd.Series, source: pd.Series,
                   c: RetirementCriteria) -> tuple[np.ndarray, pd.Series]:
    thr, n = c.low_occupancy_below_pct, c.occupancy_months
    months = frame["occupancy_hist_months"].fillna(0.0)
    hmax = frame["occupancy_hist_max_pct"]
    has_hist = (months > 0).to_numpy()
    hist_status = np.where(hmax >= thr, NOT_MET, np.where(months >= n, MET, np.nan))
    snap_status = np.where(occ < thr, MET, np.where(occ >= thr, NOT_MET, np.nan))
    if c.occupancy_history_required:
        snap_status = np.full(len(frame), np.nan)
    status = np.where(has_hist, hist_status, snap_status)

    o, t = _f(occ), _num(thr)
    ri, rs, it = _f(frame["racks_installed"], 0), _f(frame["racks_in_service"], 0), _f(frame["it_kw_mean"])
    detail = np.asarray(np.select(
        [source == "racks", source == "power"],
        [" (" + rs + " of " + ri + " racks in service; no monthly history)",
         " by power (IT " + it + " kW ÷ (" + ri + " racks × " + _num(c.standard_rack_kw)
         + " kW); racks in service unknown; no monthly history)"], ""), dtype=object)
    text = np.select(
        [has_hist & (status == MET), has_hist & (status == NOT_MET), has_hist,
         np.full(len(frame), c.occupancy_history_required), status == MET, status == NOT_MET],
        ["上架率 " + o + " % < " + t + f" % for {n} months (highest " + _f(hmax) + " %)",
         "上架率 reached " + _f(hmax) + " % ≥ " + t + f" % within the last {n} months (latest " + o + " %)",
         "上架率 below " + t + " % in all " + _f(months, 0) + f" month(s) on record; {n} needed",
         f"上架率 unknown: no monthly history for the last {n} months (history required)",
         "上架率 " + o + " % < " + t + " %" + detail,
         "上架率 " + o + " % ≥ " + t + " %" + detail],
        "上架率 unknown: no monthly history, racks in service or mean IT load")
    return status, pd.Series(text, index=frame.index)


def _small(frame: pd.DataFrame, c: RetirementCriteria) -> tuple[pd.Series, pd.Series, np.ndarray, pd.Series]:
    by_design = frame["design_it_kw"] / c.standard_rack_kw
    racks = by_design.fillna(frame["racks_installed"])
    size_class = pd.Series(np.select([racks >= b for _, b in SIZE_CLASSES[:-1]] + [racks.notna()],
                                     [n for n, _ in SIZE_CLASSES], ""), index=frame.index)
    status = np.where(racks < c.small_below_racks, MET, np.where(racks >= c.small_below_racks, NOT_MET, np.nan))
    label = size_class.map(lambda s: SIZE_LABELS.get(s, "")).to_numpy(dtype=object)
    basis = np.where(by_design.notna(), "; design IT " + _f(frame["design_it_kw"]) + " kW ÷ "
                     + _num(c.standard_rack_kw) + " kW", "; " + _f(frame["racks_installed"], 0)
                     + " installed racks, design IT unknown")
    r, t = _f(racks), _num(c.small_below_racks)
    text = np.select([status == MET, status == NOT_MET],
                     [r + " standard racks < " + t + " (" + label + basis + ")",
                      r + " standard racks ≥ " + t + " (" + label + basis + ")"],
                     "size unknown: no design IT power or installed racks")
    return racks, size_class, status, pd.Series(text, index=frame.index)


def _old(frame: pd.DataFrame, c: RetirementCriteria) -> tuple[pd.Series, np.ndarray, pd.Series]:
    com, ref = frame["commissioned"], frame["refreshed"]
    refreshed = ref.notna() & (com.isna() | (ref > com))
    base = ref.where(refreshed, com)
    age = frame["as_of_year"] - base
    thr = c.old_at_least_years
    status = np.where(age >= thr, MET, np.where(age < thr, NOT_MET, np.nan))
    since = np.where(refreshed, " since the refresh in " + _f(ref, 0, sep=False) + np.where(
        com.notna(), " (commissioned " + _f(com, 0, sep=False) + ")", ""),
        " since commissioning in " + _f(com, 0, sep=False))
    a, t = _f(age), _num(thr)
    text = np.select([status == MET, status == NOT_MET],
                     [a + " years" + since + " ≥ " + t, a + " years" + since + " < " + t],
                     np.where(frame["as_of_year"].isna(), "age unknown: no assessment year",
                              "age unknown: no commissioning or refresh year"))
    return age, status, pd.Series(text, index=frame.index)


def _inefficient(frame: pd.DataFrame, c: RetirementCriteria) -> tuple[pd.Series, np.ndarray, pd.Series]:
    raw = frame["annual_pue"]
    short = frame["months_observed"] < c.min_pue_months  # NaN months: not given, the figure is taken as annual
    fault = raw < 1.0
    pue = raw.where(~fault & ~short)
    thr = c.inefficient_above_pue
    status = np.where(pue > thr, MET, np.where(pue <= thr, NOT_MET, np.nan))
    g = grade(pue.to_numpy()).astype(object)
    grade_text = np.where(g == "beyond_limit", "GB 40879-2021: beyond the limit value", "GB 40879-2021 grade " + g)
    gap = pue - c.target_pue
    target_text = np.where(gap > 1e-12, "; " + _f(gap, 2, trim=False) + " above the " + _num(c.target_pue) + " target",
                           "; meets the " + _num(c.target_pue) + " target")
    p, t = _f(pue, 2, trim=False), _num(thr, 2, trim=False)
    text = np.select(
        [status == MET, status == NOT_MET, fault, short],
        ["annual PUE " + p + " > " + t + " (" + grade_text + target_text + ")",
         "annual PUE " + p + " ≤ " + t + " (" + grade_text + target_text + ")",
         "annual PUE unknown: " + _f(raw, 2, trim=False) + " < 1 is a meter fault",
         "annual PUE unknown: from " + _f(frame["months_observed"], 2) + " month(s) < " + _num(c.min_pue_months)],
        "annual PUE unknown")
    return pue, status, pd.Series(text, index=frame.index)


def _scattered(frame: pd.DataFrame, clusters: Sequence[Cluster],
               c: RetirementCriteria) -> tuple[dict[str, Any], np.ndarray, pd.Series]:
    n = len(frame)
    lat, lon = frame["latitude"].to_numpy(), frame["longitude"].to_numpy()
    if clusters:
        dist = distance_matrix_km(lat, lon, [k.latitude for k in clusters], [k.longitude for k in clusters])
        known = np.isfinite(dist).any(axis=1)
        idx = np.zeros(n, dtype=int)
        idx[known] = np.nanargmin(dist[known], axis=1)
        hub_km = np.where(known, dist[np.arange(n), idx], np.nan)
        ids = np.array([k.id for k in clusters], dtype=object)
        nearest = ids[idx]
        nearest[~known] = None
    else:
        hub_km, nearest = np.full(n, np.nan), np.full(n, None, dtype=object)
    iso = isolated(lat, lon, c.isolation_km, c.isolation_min_sites)
    far = np.where(hub_km > c.scattered_hub_km, MET, np.where(hub_km <= c.scattered_hub_km, NOT_MET, np.nan))
    member = frame["cluster"].notna().to_numpy()
    status = np.where(member, NOT_MET, _and(far, iso))

    d, t, e = _f(hub_km), _num(c.scattered_hub_km), _num(c.isolation_km)
    near = np.array(["" if v is None else str(v) for v in nearest], dtype=object)
    others = c.isolation_min_sites - 1
    alone = f"no group of {others}+ other sites within {e} km (DBSCAN)"
    grouped = f"grouped with other sites within {e} km (DBSCAN)"
    hub_part = d + " km to hub cluster " + near
    text = np.select(
        [member, status == MET, far == NOT_MET, iso == NOT_MET, np.isnan(far) & ~np.isnan(iso),
         np.isnan(iso) & ~np.isnan(far)],
        ["member of hub cluster " + frame["cluster"].fillna("").astype(str).to_numpy(dtype=object),
         hub_part + " > " + t + " km; " + alone,
         hub_part + " ≤ " + t + " km",
         hub_part + " > " + t + " km, but " + grouped if len(clusters) else "no hub cluster given, but " + grouped,
         "no hub cluster given" + np.where(iso == MET, "; " + alone, ""),
         hub_part + " > " + t + " km; isolation unknown (location unknown)"],
        "location unknown")
    geo = {"nearest_cluster": pd.Series(nearest, dtype=object), "hub_distance_km": hub_km, "isolated": iso}
    return geo, status, pd.Series(text, index=frame.index)


def _poor_benefit(frame: pd.DataFrame, pue: pd.Series, c: RetirementCriteria) -> tuple[np.ndarray, pd.Series]:
    price, revenue, cost = (frame["electricity_price_cny_per_kwh"], frame["revenue_per_rack_cny_year"],
                            frame["cost_per_rack_cny_year"])
    rs = frame["racks_in_service"].where(frame["racks_in_service"] > 0)
    energy = frame["it_kw_mean"] * HOURS_PER_YEAR * pue * price / rs  # [CNY per rack in service and year]
    # costs are ≥ 0, so revenue minus the costs that are known bounds the margin from above
    upper = revenue - cost.fillna(0.0) - energy.fillna(0.0)
    complete = cost.notna() & energy.notna()
    thr = c.poor_margin_below_cny_per_rack_year
    status = np.where(revenue.isna() | rs.isna(), np.nan,
                      np.where(upper < thr, MET, np.where(complete, NOT_MET, np.nan)))
    parts = ("revenue " + _f(revenue, 0) + np.where(cost.notna(), " − cost " + _f(cost, 0), "")
             + np.where(energy.notna(), " − energy " + _f(energy, 0), ""))
    missing = (np.where(cost.isna(), "; cost per rack unknown", "")
               + np.where(energy.isna(), "; energy cost unknown (price, mean IT load or PUE)", ""))
    m, t = _f(upper, 0), _num(thr, 0)
    no_econ = revenue.isna() & cost.isna() & price.isna()
    text = np.select(
        [(status == MET) & complete, status == MET, status == NOT_MET, no_econ, revenue.isna(), rs.isna()],
        ["margin " + m + " CNY per rack-year < " + t + " (" + parts + ")",
         "margin at most " + m + " CNY per rack-year < " + t + " (" + parts + missing + ")",
         "margin " + m + " CNY per rack-year ≥ " + t + " (" + parts + ")",
         "no economics given", "revenue per rack unknown", "no racks in service: margin per rack undefined"],
        "margin unknown: at most " + m + " CNY per rack-year (" + parts + missing + ")")
    return status, pd.Series(text, index=frame.index)


# --- verdicts -----------------------------------------------------------------------------------------

def _rules(s: dict[str, np.ndarray], hub: np.ndarray) -> list[np.ndarray]:
    """Kleene values of the retire, upgrade and consolidate rules (first true rule wins; else keep)."""
    not_hub = np.where(hub, NOT_MET, MET)
    retire = _and(not_hub, s["old"], s["small"], _or(s["inefficient"], s["low_occupancy"], s["poor_benefit"]))
    upgrade = _and(s["inefficient"], _or(1.0 - not_hub, 1.0 - s["small"]))
    consolidate = _and(not_hub, _or(s["small"], s["scattered"], s["low_occupancy"], s["poor_benefit"]))
    return [retire, upgrade, consolidate]


def _verdicts(status: np.ndarray, hub: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verdict from the first rule that is certainly true (unknown criteria never trigger one), whether
    every way the unknown criteria could turn out gives the same verdict, and the other verdicts they could give."""
    named = {c: status[:, i] for i, c in enumerate(CRITERIA)}
    rules = _rules(named, hub)
    verdict = np.select([r == MET for r in rules], list(RULE_ORDER), "keep").astype(object)
    unknown = np.isnan(status)
    possible = np.zeros(len(status), dtype=np.int64)
    # every completion of the unknowns: only the criteria unknown somewhere need enumerating
    open_cols = np.flatnonzero(unknown.any(axis=0))
    for combo in range(2 ** len(open_cols)):
        bits = np.zeros(len(CRITERIA))
        bits[open_cols] = [(combo >> k) & 1 for k in range(len(open_cols))]
        filled = np.where(unknown, bits[None, :], status)
        rules_c = _rules({c: filled[:, i] for i, c in enumerate(CRITERIA)}, hub)
        code = np.select([r == MET for r in rules_c], [VERDICTS.index(v) for v in RULE_ORDER], VERDICTS.index("keep"))
        possible |= np.left_shift(1, code)
    own = np.array([VERDICTS.index(v) for v in verdict], dtype=np.int64) if len(verdict) else np.zeros(0, np.int64)
    possible |= np.left_shift(1, own)
    others = possible & ~np.left_shift(1, own)
    alternatives = np.array([", ".join(v for k, v in enumerate(VERDICTS) if mask >> k & 1) for mask in others],
                            dtype=object)
    return verdict, others == 0, alternatives


_PLAIN = {"low_occupancy": "low 上架率", "small": "small", "old": "old", "inefficient": "inefficient",
          "scattered": "scattered", "poor_benefit": "poor benefit"}


def _reasons(verdict: np.ndarray, status: np.ndarray, frame: pd.DataFrame, racks: pd.Series, pue: pd.Series,
             c: RetirementCriteria) -> np.ndarray:
    """Why each site got its verdict, in plain words (one line per site)."""
    met = {name: status[:, i] == MET for i, name in enumerate(CRITERIA)}
    n_unknown = np.isnan(status).sum(axis=1)
    out = []
    for i, v in enumerate(verdict):
        names = [_PLAIN[k] for k in CRITERIA if met[k][i]]
        cluster, cooling = frame["cluster"].iat[i], frame["cooling"].iat[i]
        if v == "retire":
            why = [_PLAIN[k] for k in ("inefficient", "low_occupancy", "poor_benefit") if met[k][i]]
            text = "old and small, and " + " and ".join(why) + ", outside every hub cluster"
        elif v == "upgrade":
            where = (f"in hub cluster {cluster}, so it stays" if cluster is not None and pd.notna(cluster)
                     else f"{_num(racks.iat[i], 0)} standard racks, large enough to retrofit")
            text = f"inefficient (annual PUE {pue.iat[i]:.2f} > {c.inefficient_above_pue:.2f}), {where}"
            if cooling == "air":
                text += "; air-cooled: a liquid or hybrid cooling retrofit candidate"
        elif v == "consolidate":
            why = [_PLAIN[k] for k in ("small", "scattered", "low_occupancy", "poor_benefit") if met[k][i]]
            text = " and ".join(why) + ", outside every hub cluster"
        elif names:
            text = f"met ({', '.join(names)}) but no rule applies"
        else:
            text = "no retirement criterion met"
        if n_unknown[i]:
            text += f"; {n_unknown[i]} criteri{'on' if n_unknown[i] == 1 else 'a'} unknown"
        out.append(text)
    return np.array(out, dtype=object)


def _and(*xs: np.ndarray) -> np.ndarray:
    arr = np.vstack([np.asarray(x, dtype=float) for x in xs])
    return np.where((arr == NOT_MET).any(axis=0), NOT_MET, np.where((arr == MET).all(axis=0), MET, np.nan))


def _or(*xs: np.ndarray) -> np.ndarray:
    arr = np.vstack([np.asarray(x, dtype=float) for x in xs])
    return np.where((arr == MET).any(axis=0), MET, np.where((arr == NOT_MET).all(axis=0), NOT_MET, np.nan))


def _status_text(s: np.ndarray) -> np.ndarray:
    return np.where(s == MET, "met", np.where(s == NOT_MET, "not_met", "unknown")).astype(object)


# --- totals and output --------------------------------------------------------------------------------

def _totals(sites: pd.DataFrame, plan: pd.DataFrame) -> dict[str, float]:
    counts = sites["verdict"].value_counts()
    out: dict[str, float] = {"sites": float(len(sites))}
    out.update({v: float(counts.get(v, 0)) for v in VERDICTS})
    for col in ("saved_kwh_year", "saved_tco2_year", "saved_cost_cny_year"):
        out[col] = float(plan[col].astype(float).sum(min_count=1)) if len(plan) else 0.0
    out["moved_it_kw"] = float(plan["moved_it_kw"].astype(float).sum()) if len(plan) else 0.0
    out["unplaced"] = float(plan["destination"].isna().sum()) if len(plan) else 0.0
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


def _num(v: float, decimals: int = 2, *, trim: bool = True, sep: bool = True) -> str:
    """A number for the evidence text: thousands separators, trailing zeros trimmed (unless ``trim`` is false)."""
    text = f"{v:,.{decimals}f}" if sep else f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if trim and "." in text else text


def _f(s: pd.Series | np.ndarray, decimals: int = 1, *, trim: bool = True, sep: bool = True) -> np.ndarray:
    """Numbers as evidence text (see :func:`_num`); NaN as '?'. An object array, so ``+`` joins strings."""
    values = np.asarray(s, dtype=float)
    return np.array([_num(v, decimals, trim=trim, sep=sep) if np.isfinite(v) else "?" for v in values],
                    dtype=object).reshape(values.shape)
