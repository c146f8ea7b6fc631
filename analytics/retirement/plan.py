"""Hub-cluster capacity and the consolidation plan: where retiring and consolidating sites' IT load goes.

Destinations are hub clusters only. A cluster's capacity, load and PUE come from its member sites
(capacity = Σ design IT power, or racks installed × standard-rack power where the design power is
unknown; load = Σ mean IT power, or the member's capacity where its load is unknown; PUE = IT-energy
weighted annual PUE), each overridable. Sites are placed greedily, largest estimated saving first,
in the nearest cluster whose spare capacity still holds their whole IT load; a cluster never
receives more than its spare capacity, and a site that fits nowhere gets no destination and a note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd

from dcpue.analytics.retirement.criteria import HOURS_PER_YEAR
from dcpue.registry import Cluster

OVERRIDE_KEYS: tuple[str, ...] = ("capacity_kw", "load_kw", "pue")
CLUSTER_COLUMNS: tuple[str, ...] = (
    "cluster", "name", "latitude", "longitude", "members", "pue", "capacity_kw", "load_kw_before",
    "spare_kw_before", "moved_in_kw", "sites_in", "spare_kw_after", "load_kw_after", "occupancy_pct",
    "occupancy_target_pct", "note",
)
PLAN_COLUMNS: tuple[str, ...] = (
    "site", "name", "verdict", "destination", "destination_name", "distance_km", "moved_it_kw", "it_kwh_year",
    "site_pue", "destination_pue", "saved_kwh_year", "saved_tco2_year", "saved_cost_cny_year", "note",
)
_TOL_KW = 1e-9  # floating-point slack when comparing a load with the spare capacity

ClusterOverrides: TypeAlias = Mapping[str, Mapping[str, float]] | pd.DataFrame


def cluster_table(
    frame: pd.DataFrame,
    clusters: Sequence[Cluster],
    overrides: ClusterOverrides | None = None,
    *,
    standard_rack_kw: float = 2.5,
    occupancy_target_pct: float = 65.0,
) -> pd.DataFrame:
    """Capacity [kW], load [kW], spare [kW] and PUE [–] of each hub cluster, from its member rows of
    ``frame`` (the normalised inputs: ``cluster``, ``design_it_kw``, ``racks_installed``,
    ``racks_in_service``, ``it_kw_mean``, ``annual_pue``), then ``overrides`` per cluster id
    (keys ``capacity_kw``, ``load_kw``, ``pue``)."""
    over = _overrides(overrides, [c.id for c in clusters])
    cap_site = frame["design_it_kw"].fillna(frame["racks_installed"] * standard_rack_kw)
    load_site = frame["it_kw_mean"].fillna(cap_site)  # unknown load: assume the member is full
    pue = frame["annual_pue"].where(frame["annual_pue"] >= 1.0)
    weighted = (pue * frame["it_kw_mean"]).where(pue.notna() & frame["it_kw_mean"].notna())
    it_known = frame["it_kw_mean"].where(weighted.notna())
    parts = pd.DataFrame({
        "cluster": frame["cluster"], "members": 1, "capacity_kw": cap_site, "load_kw_before": load_site,
        "_w": weighted, "_it": it_known, "_rs": frame["racks_in_service"], "_ri": frame["racks_installed"],
        "_load_unknown": frame["it_kw_mean"].isna().astype(int),
    }).dropna(subset=["cluster"])
    agg = parts.groupby("cluster").sum(min_count=1)  # one pass over the members of every cluster
    base = pd.DataFrame({
        "cluster": pd.Series([c.id for c in clusters], dtype=object),
        "name": pd.Series([c.name for c in clusters], dtype=object),
        "latitude": pd.Series([c.latitude for c in clusters], dtype=float),
        "longitude": pd.Series([c.longitude for c in clusters], dtype=float),
    })
    out = base.merge(agg, left_on="cluster", right_index=True, how="left")
    out["members"] = out["members"].fillna(0).astype(int)
    out["pue"] = out["_w"] / out["_it"].where(out["_it"] > 0)
    out["occupancy_pct"] = 100.0 * out["_rs"] / out["_ri"].where(out["_ri"] > 0)
    out["occupancy_target_pct"] = float(occupancy_target_pct)
    notes = np.where(out["_load_unknown"].fillna(0) > 0,
                     out["_load_unknown"].fillna(0).astype(int).astype(str)
                     + " member(s) without a mean IT load counted at full capacity", "")
    out["note"] = notes
    for cid, values in over.items():
        row = out["cluster"] == cid
        for key, value in values.items():
            out.loc[row, "load_kw_before" if key == "load_kw" else key] = float(value)
        out.loc[row, "note"] = "overridden: " + ", ".join(sorted(values))
    out.loc[out["members"].eq(0) & out["capacity_kw"].isna(), "note"] = "no member sites and no capacity given"
    out["spare_kw_before"] = (out["capacity_kw"] - out["load_kw_before"].fillna(0.0)).clip(lower=0.0)
    out["moved_in_kw"] = 0.0
    out["sites_in"] = 0
    out["spare_kw_after"] = out["spare_kw_before"]
    out["load_kw_after"] = out["load_kw_before"]
    return out[list(CLUSTER_COLUMNS)].reset_index(drop=True)


def consolidation_plan(
    frame: pd.DataFrame,
    verdict: pd.Series,
    clusters: pd.DataFrame,
    price_cny_per_kwh: pd.Series,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Place every ``retire``/``consolidate`` site of ``frame`` in a hub cluster of ``clusters`` (from
    :func:`cluster_table`); returns the plan (:data:`PLAN_COLUMNS`) and the clusters after the moves.

    Savings per site [per year]: IT energy = mean IT power × 8760 h [kWh]; saved energy = IT energy ×
    (site PUE − destination PUE) [kWh]; saved CO₂ = saved energy × the site's grid emission factor
    [kgCO₂/kWh] ÷ 1000 [t]; saved cost = saved energy × electricity price [CNY]. Unknown inputs give NaN.
    """
    clusters = clusters.copy()
    movers = frame.index[verdict.isin(["retire", "consolidate"]).to_numpy() & frame["cluster"].isna().to_numpy()]
    if len(movers) == 0:
        return pd.DataFrame(columns=list(PLAN_COLUMNS)), clusters
    rows = frame.loc[movers]
    it_kw = rows["it_kw_mean"].to_numpy(dtype=float)
    site_pue = rows["annual_pue"].where(rows["annual_pue"] >= 1.0).to_numpy(dtype=float)
    if len(clusters):
        from dcpue.analytics.retirement.geo import distance_matrix_km

        dist = distance_matrix_km(rows["latitude"], rows["longitude"], clusters["latitude"], clusters["longitude"])
    else:
        dist = np.full((len(rows), 0), np.nan)
    cl_pue = clusters["pue"].to_numpy(dtype=float)
    spare = clusters["spare_kw_before"].fillna(0.0).to_numpy(dtype=float).copy()

    # order: largest estimated saving against the nearest cluster first (unknown savings last), then larger IT load
    nearest = np.full(len(rows), -1)
    has_dist = np.isfinite(dist).any(axis=1) if dist.shape[1] else np.zeros(len(rows), dtype=bool)
    nearest[has_dist] = np.nanargmin(dist[has_dist], axis=1)
    near_pue = np.where(nearest >= 0, cl_pue[np.maximum(nearest, 0)] if len(cl_pue) else np.nan, np.nan)
    est = it_kw * HOURS_PER_YEAR * (site_pue - near_pue)
    order = np.lexsort((rows["site"].to_numpy(dtype=str), -np.nan_to_num(it_kw, nan=-1.0),
                        -np.nan_to_num(est, nan=-np.inf)))

    dest = np.full(len(rows), -1)
    notes = np.full(len(rows), "", dtype=object)
    for i in order:
        if not np.isfinite(it_kw[i]):
            notes[i] = "mean IT load unknown: the move cannot be sized"
            continue
        if dist.shape[1] == 0:
            notes[i] = "no hub cluster given"
            continue
        if not has_dist[i]:
            notes[i] = "location unknown: no nearest hub cluster"
            continue
        for j in np.argsort(dist[i], kind="stable"):
            if spare[j] + _TOL_KW >= it_kw[i]:
                dest[i] = j
                spare[j] -= it_kw[i]
                break
        else:
            notes[i] = (f"no hub cluster has {it_kw[i]:,.0f} kW spare "
                        f"(largest spare now {spare.max(initial=0.0):,.0f} kW)")

    placed = dest >= 0
    j = np.maximum(dest, 0)
    moved = np.where(placed, it_kw, 0.0)
    dest_pue = np.where(placed, cl_pue[j] if len(cl_pue) else np.nan, np.nan)
    it_kwh = it_kw * HOURS_PER_YEAR
    saved_kwh = np.where(placed, it_kwh * (site_pue - dest_pue), np.nan)
    saved_t = saved_kwh * rows["grid_emission_factor"].to_numpy(dtype=float) / 1000.0
    saved_cny = saved_kwh * price_cny_per_kwh.loc[movers].to_numpy(dtype=float)
    extra = np.select(
        [placed & np.isnan(site_pue), placed & np.isnan(dest_pue), placed & (dest_pue >= site_pue)],
        ["site annual PUE unknown: saving unknown", "destination PUE unknown: saving unknown",
         "destination PUE not lower than the site's: no energy saving"], "")
    notes = np.where((notes == "") | (extra == ""), notes + extra, notes + "; " + extra)
    plan = pd.DataFrame({
        "site": rows["site"].to_numpy(), "name": rows["name"].to_numpy(), "verdict": verdict.loc[movers].to_numpy(),
        # object columns keep None (pandas would otherwise infer a string column with NaN)
        "destination": pd.Series(np.where(placed, clusters["cluster"].to_numpy(dtype=object)[j]
                                          if len(clusters) else None, None), dtype=object),
        "destination_name": pd.Series(np.where(placed, clusters["name"].to_numpy(dtype=object)[j]
                                               if len(clusters) else None, None), dtype=object),
        "distance_km": np.where(placed, dist[np.arange(len(rows)), j] if dist.shape[1] else np.nan, np.nan),
        "moved_it_kw": moved, "it_kwh_year": it_kwh, "site_pue": site_pue, "destination_pue": dest_pue,
        "saved_kwh_year": saved_kwh, "saved_tco2_year": saved_t, "saved_cost_cny_year": saved_cny,
        "note": notes,
    })
    plan = plan.iloc[order].reset_index(drop=True)  # in placement order: largest estimated saving first
    moved_in = pd.Series(moved[placed]).groupby(dest[placed]).sum()
    count_in = pd.Series(moved[placed]).groupby(dest[placed]).size()
    clusters["moved_in_kw"] = moved_in.reindex(range(len(clusters)), fill_value=0.0).to_numpy(dtype=float)
    clusters["sites_in"] = count_in.reindex(range(len(clusters)), fill_value=0).to_numpy(dtype=int)
    clusters["spare_kw_after"] = clusters["spare_kw_before"] - clusters["moved_in_kw"]
    clusters["load_kw_after"] = clusters["load_kw_before"] + clusters["moved_in_kw"]
    return plan[list(PLAN_COLUMNS)], clusters


def _overrides(overrides: ClusterOverrides | None, known: list[str]) -> dict[str, dict[str, float]]:
    if overrides is None:
        return {}
    if isinstance(overrides, pd.DataFrame):
        frame = overrides.set_index("cluster") if "cluster" in overrides.columns else overrides
        raw = {str(cid): {k: v for k, v in row.items() if pd.notna(v)} for cid, row in frame.iterrows()}
    else:
        raw = {str(cid): dict(values) for cid, values in overrides.items()}
    out: dict[str, dict[str, float]] = {}
    for cid, values in raw.items():
        if cid not in known:
            raise ValueError(f"cluster_overrides: unknown cluster {cid!r} (known: {', '.join(known) or 'none'})")
        bad = sorted(set(values) - set(OVERRIDE_KEYS))
        if bad:
            raise ValueError(f"cluster_overrides[{cid!r}]: unknown key(s) {', '.join(bad)} "
                             f"(valid: {', '.join(OVERRIDE_KEYS)})")
        out[cid] = {k: float(v) for k, v in values.items()}
        if out[cid].get("pue", 1.0) < 1.0 or out[cid].get("capacity_kw", 0.0) < 0 or out[cid].get("load_kw", 0.0) < 0:
            raise ValueError(f"cluster_overrides[{cid!r}]: pue must be ≥ 1, capacity_kw and load_kw ≥ 0")
    return out
