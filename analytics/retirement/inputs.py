"""One row per site: registry metadata plus rolling figures and the occupancy trend (no I/O)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcpue.analytics.retirement.criteria import ECONOMICS_COLUMNS, RetirementCriteria
from dcpue.registry import Registry

FIGURE_COLUMNS: tuple[str, ...] = ("annual_pue", "it_kw_mean", "it_kw_peak", "wue", "months_observed")
REGISTRY_COLUMNS: tuple[str, ...] = (
    "site", "name", "city", "latitude", "longitude", "cluster", "commissioned", "refreshed", "racks_installed",
    "racks_in_service", "design_it_kw", "cooling", "grid_emission_factor",
)
HISTORY_COLUMNS: tuple[str, ...] = ("occupancy_hist_last_pct", "occupancy_hist_max_pct", "occupancy_hist_months",
                                    "occupancy_hist_trend_pp_per_year")
INPUT_COLUMNS: tuple[str, ...] = (
    *REGISTRY_COLUMNS, "as_of_year", *FIGURE_COLUMNS, *HISTORY_COLUMNS, *ECONOMICS_COLUMNS,
)


def site_inputs(
    registry: Registry,
    figures: pd.DataFrame | None = None,
    *,
    as_of_year: int,
    occupancy_history: pd.DataFrame | None = None,
    criteria: RetirementCriteria | None = None,
) -> pd.DataFrame:
    """The assessment's input table: one row per registry site, columns :data:`INPUT_COLUMNS`.

    ``figures`` (optional) has a ``site`` column and any of ``annual_pue`` [–], ``it_kw_mean`` [kW],
    ``it_kw_peak`` [kW], ``wue`` [L/kWh], ``months_observed`` [months], plus optional per-site
    economics (``electricity_price_cny_per_kwh``, ``revenue_per_rack_cny_year``,
    ``cost_per_rack_cny_year``); NaN or a missing column means unknown. Rows for sites that are not in
    the registry are left out; a site given twice raises ``ValueError``.

    ``occupancy_history`` (optional) has ``site``, ``month`` (``YYYY-MM``) and ``occupancy_pct`` [%];
    per site it is reduced to the months within the last ``criteria.occupancy_months`` calendar months
    ending at the site's newest month: the newest value, the maximum and how many months there are.
    ``as_of_year`` is the year ages are counted to.
    """
    criteria = criteria or RetirementCriteria()
    rows = [
        {
            "site": s.id, "name": s.name, "city": s.city, "latitude": s.latitude, "longitude": s.longitude,
            "cluster": s.cluster, "commissioned": float(s.commissioned),
            "refreshed": float(s.refreshed) if s.refreshed is not None else np.nan,
            "racks_installed": float(s.racks_installed), "racks_in_service": float(s.racks_in_service),
            "design_it_kw": float(s.design_it_kw), "cooling": s.cooling.value,
            "grid_emission_factor": float(s.grid_emission_factor),
        }
        for s in registry.sites
    ]
    out = pd.DataFrame(rows, columns=list(REGISTRY_COLUMNS))
    out["as_of_year"] = float(as_of_year)
    extra = [*FIGURE_COLUMNS, *ECONOMICS_COLUMNS]
    if figures is not None and not figures.empty:
        fig = _site_column(figures, "figures")
        if fig["site"].duplicated().any():
            dup = sorted(fig.loc[fig["site"].duplicated(), "site"].astype(str).unique())
            raise ValueError(f"figures: sites given more than once: {', '.join(dup)}")
        keep = ["site", *(c for c in extra if c in fig.columns)]
        fig = fig[keep].copy()
        for col in keep[1:]:
            fig[col] = pd.to_numeric(fig[col], errors="coerce").astype(float)
        out = out.merge(fig, on="site", how="left")
    for col in extra:
        if col not in out.columns:
            out[col] = np.nan
    hist = occupancy_trend(occupancy_history, criteria.occupancy_months)
    out = out.merge(hist, left_on="site", right_index=True, how="left")
    return out[list(INPUT_COLUMNS)].reset_index(drop=True)


def occupancy_trend(history: pd.DataFrame | None, months: int) -> pd.DataFrame:
    """Per site, over the last ``months`` calendar months ending at its newest month: newest 上架率 [%],
    the maximum [%], the number of months with a value and the trend: the least-squares slope of
    上架率 over those months in percentage points per year (NaN with fewer than 3 months).
    Index ``site``, columns :data:`HISTORY_COLUMNS`."""
    empty = pd.DataFrame(columns=list(HISTORY_COLUMNS), index=pd.Index([], name="site"), dtype=float)
    if history is None or history.empty:
        return empty
    hist = _site_column(history, "occupancy_history")
    missing = [c for c in ("month", "occupancy_pct") if c not in hist.columns]
    if missing:
        raise ValueError(f"occupancy_history: missing columns {', '.join(missing)} (needs site, month, occupancy_pct)")
    try:
        period = pd.PeriodIndex(hist["month"].astype(str), freq="M")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"occupancy_history: month must be YYYY-MM ({exc})") from None
    frame = pd.DataFrame({
        "site": hist["site"].astype(str).to_numpy(),
        "m": period.year * 12 + period.month - 1,  # months since year 0, integer arithmetic
        "pct": pd.to_numeric(hist["occupancy_pct"], errors="coerce").to_numpy(dtype=float),
    }).dropna(subset=["pct"])
    if frame.empty:
        return empty
    # a month given twice counts once (the later row)
    frame = frame.drop_duplicates(["site", "m"], keep="last")
    newest = frame.groupby("site")["m"].transform("max")
    recent = frame[frame["m"] > newest - months].sort_values(["site", "m"])
    grouped = recent.groupby("site")["pct"]
    # slope = cov(m, pct) / var(m), per month, from per-site sums (vectorised)
    m = recent["m"].astype(float)
    sums = pd.DataFrame({"site": recent["site"], "n": 1.0, "x": m, "y": recent["pct"], "xx": m * m,
                         "xy": m * recent["pct"]}).groupby("site").sum()
    var = sums["xx"] - sums["x"] ** 2 / sums["n"]
    slope = (sums["xy"] - sums["x"] * sums["y"] / sums["n"]) / var.where(var > 0)
    return pd.DataFrame({
        "occupancy_hist_last_pct": grouped.last(),
        "occupancy_hist_max_pct": grouped.max(),
        "occupancy_hist_months": grouped.size().astype(float),
        "occupancy_hist_trend_pp_per_year": (12.0 * slope).where(sums["n"] >= 3),
    })


def _site_column(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    if "site" not in frame.columns:
        if frame.index.name == "site":
            frame = frame.reset_index()
        else:
            raise ValueError(f"{what}: needs a 'site' column")
    frame = frame.copy()
    frame["site"] = frame["site"].astype(str)
    return frame
