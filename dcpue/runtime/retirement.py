"""Retirement assessment from the result store: rolling figures, then the pure core.

:func:`figures_from_store` turns the stored window results of each site into the rolling figures
the retirement core (:mod:`dcpue.analytics.retirement`) takes — annualized PUE, mean and peak IT load,
WUE, how much was observed — and a monthly 上架率 history. :func:`assess_store` wires registry,
figures and settings into an :class:`~dcpue.analytics.retirement.Assessment`; ``dcpue retire`` and
``GET /api/v1/retirement`` both call it.

How the figures are formed (docs/retirement.md, "Outputs"):

* Only ``ok`` site windows count (incomplete, meter-fault and no-data windows carry no figure).
* Per site, its daily (``1d``) windows are used, or its hourly (``1h``) windows when it has no daily
  window in the period (a store whose daily windows were pruned); each window weighs by its length.
  Only those hourly windows are read: a year of hourly windows of a provincial fleet is millions of rows.
* **Annualized PUE** is energy-weighted: Σ total kWh ÷ Σ IT kWh, each window's energies taken at its
  mean powers over its whole length (``pue`` × ``it_kw`` × hours and ``it_kw`` × hours; for a fully
  covered window these are its ``total_kwh`` and ``it_kwh``). Never a mean of window PUEs.
* **WUE** likewise: Σ water L ÷ Σ IT kWh over the windows whose WUE is valid (sites with a water meter).
* ``it_kw_mean`` [kW] = Σ IT kWh ÷ Σ hours; ``it_kw_peak`` [kW] = the highest mean IT power of one of
  those windows: the peak day (the peak hour for a site read from hourly windows, or for every site with
  ``peak_window="1h"``, which reads all hourly windows of the period).
* ``months_observed`` = hours of ``ok`` windows ÷ 730.5 h (a twelfth of 365.25 days).
* **Monthly 上架率** per calendar month (``engine.timezone``), time-weighted over the month's ``ok``
  windows: by rack count (``racks``, default) = racks in service ÷ racks installed as each window
  recorded them (the registry when the window was computed), by power where a window has no rack count;
  or by power for every month (``power``) = mean IT kW ÷ (racks installed × 2.5 kW), the national
  standard rack (标准机架), as the core computes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from dcpue.errors import ConfigError
from dcpue.ports import ResultStore
from dcpue.registry import Registry
from dcpue.results import Scope, Status

STANDARD_RACK_KW = 2.5  # [kW] one standard rack (标准机架), MIIT statistical definition
HOURS_PER_MONTH = 365.25 * 24 / 12  # [h] 730.5
FIGURE_COLUMNS = ("site", "annual_pue", "it_kw_mean", "it_kw_peak", "wue", "months_observed")
HISTORY_COLUMNS = ("site", "month", "occupancy_pct")
OccupancyBasis = Literal["racks", "power", "none"]
_MS_PER_H = 3_600_000
_COLUMNS = ["id", "start_ms", "end_ms", "it_kw", "pue", "wue", "racks_installed", "racks_in_service"]


class StoreFigures(NamedTuple):
    """What :func:`figures_from_store` returns."""

    figures: pd.DataFrame  # FIGURE_COLUMNS, one row per site
    occupancy_history: pd.DataFrame  # HISTORY_COLUMNS, one row per site and month observed well enough
    window: dict[str, str]  # site -> the window length its figures come from ("1d" or "1h")
    start_ms: int  # the period is [start_ms, as_of_ms) [UTC ms]
    as_of_ms: int


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.value // 1_000_000)  # Timestamp.value is [ns] whatever its unit


def period_start_ms(as_of_ms: int, months: int, tz: str = "Asia/Shanghai") -> int:
    """Start [UTC ms] of the ``months`` calendar months (in ``tz``) ending at ``as_of_ms``."""
    end = pd.Timestamp(int(as_of_ms), unit="ms", tz="UTC").tz_convert(tz)
    return _ms(end - pd.DateOffset(months=int(months)))


def newest_data_ms(store: ResultStore) -> int | None:
    """End [UTC ms] of the newest closed site window (``1d``, else ``1h``): the default as-of time.

    A window still open counts up to its start, so the figures never include a partial day.
    None when the store holds no site window.
    """
    for window in ("1d", "1h"):
        latest = store.latest_windows(Scope.SITE.value, window)
        if not latest.empty:
            closed = np.where(latest["final"].to_numpy(bool), latest["end_ms"], latest["start_ms"])
            return int(np.max(closed))
    return None


def _ok_windows(store: ResultStore, window: str, start_ms: int, as_of_ms: int,
                ids: list[str] | None = None) -> pd.DataFrame:
    frame = store.query_windows(Scope.SITE.value, window, ids=ids, start_ms=start_ms, end_ms=as_of_ms)
    keep = ((frame["status"] == Status.OK.value) & (frame["end_ms"] <= as_of_ms)
            & (frame["it_kw"] > 0) & np.isfinite(frame["pue"]))
    out = frame.loc[keep, _COLUMNS].copy()
    out["hours"] = (out["end_ms"] - out["start_ms"]) / _MS_PER_H
    out["it_kwh"] = out["it_kw"] * out["hours"]
    return out


def figures_from_store(store: ResultStore, as_of_ms: int, months: int = 12, *, registry: Registry | None = None,
                       tz: str = "Asia/Shanghai", occupancy: OccupancyBasis = "racks",
                       standard_rack_kw: float = STANDARD_RACK_KW, min_month_share: float = 0.5,
                       peak_window: Literal["1d", "1h"] = "1d") -> StoreFigures:
    """Rolling figures of every site over the ``months`` calendar months (in ``tz``) before ``as_of_ms`` [UTC ms].

    ``store`` holds the site windows (``1d`` and/or ``1h``). ``registry`` (optional) adds a row of
    unknowns (NaN, ``months_observed`` 0) for each registry site without data and orders the rows as
    the registry does. ``occupancy`` picks the basis of the monthly 上架率 history (``racks``, ``power``
    with ``standard_rack_kw`` [kW] per rack, or ``none`` for no history); a month enters it when its
    ``ok`` windows cover at least ``min_month_share`` of the part of the month inside the period.
    ``peak_window="1h"`` takes ``it_kw_peak`` from the hourly windows of every site (slower).
    Figures are NaN when unknown (no ``ok`` window). See the module docstring for the formulas.
    """
    if occupancy not in ("racks", "power", "none"):
        raise ValueError(f"occupancy must be 'racks', 'power' or 'none', not {occupancy!r}")
    as_of_ms = int(as_of_ms)
    start_ms = period_start_ms(as_of_ms, months, tz)
    daily = _ok_windows(store, "1d", start_ms, as_of_ms)
    with_daily = set(daily["id"])
    if peak_window == "1h":
        hourly = _ok_windows(store, "1h", start_ms, as_of_ms)
    elif registry is not None:  # only the sites without daily windows
        without = [s.id for s in registry.sites if s.id not in with_daily]
        hourly = _ok_windows(store, "1h", start_ms, as_of_ms, ids=without) if without else daily.iloc[0:0]
    else:  # no registry to say which sites exist: read them all
        hourly = _ok_windows(store, "1h", start_ms, as_of_ms)
    hourly_only = hourly[~hourly["id"].isin(with_daily)]
    chosen = {s: "1d" for s in with_daily} | {s: "1h" for s in set(hourly_only["id"])}
    chosen = dict(sorted(chosen.items()))
    use = pd.concat([daily, hourly_only], ignore_index=True)
    peaks = hourly.groupby("id")["it_kw"].max().combine_first(daily.groupby("id")["it_kw"].max())
    rows: list[dict[str, Any]] = []
    for site_id, g in use.groupby("id", sort=True):
        it_kwh = float(g["it_kwh"].sum())
        hours = float(g["hours"].sum())
        water = g[np.isfinite(g["wue"].to_numpy(np.float64))]
        water_it = float(water["it_kwh"].sum())
        rows.append({
            "site": site_id,
            "annual_pue": float((g["pue"] * g["it_kwh"]).sum()) / it_kwh,
            "it_kw_mean": it_kwh / hours,
            "it_kw_peak": float(peaks[site_id]),
            "wue": float((water["wue"] * water["it_kwh"]).sum()) / water_it if water_it > 0 else np.nan,
            "months_observed": hours / HOURS_PER_MONTH,
        })
    figures = pd.DataFrame(rows, columns=list(FIGURE_COLUMNS))
    if registry is not None:
        known = set(figures["site"])
        missing = pd.DataFrame({"site": [s.id for s in registry.sites if s.id not in known], "months_observed": 0.0})
        figures = pd.concat([d for d in (figures, missing) if len(d)], ignore_index=True) if len(missing) else figures
        figures = figures.reindex(columns=list(FIGURE_COLUMNS))
        order = {s.id: i for i, s in enumerate(registry.sites)}
        figures = figures.sort_values("site", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
    figures = figures.reset_index(drop=True).astype({c: np.float64 for c in FIGURE_COLUMNS[1:]})
    history = (_empty_history() if occupancy == "none" else
               _occupancy_history(use, occupancy, start_ms, as_of_ms, tz, standard_rack_kw, min_month_share))
    return StoreFigures(figures, history, chosen, start_ms, as_of_ms)


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({"site": pd.Series(dtype=object), "month": pd.Series(dtype=object),
                         "occupancy_pct": pd.Series(dtype=np.float64)})


def _occupancy_history(use: pd.DataFrame, basis: str, start_ms: int, as_of_ms: int, tz: str,
                       standard_rack_kw: float, min_month_share: float) -> pd.DataFrame:
    """Monthly 上架率 [%], time-weighted over each month's windows (see the module docstring)."""
    installed = use["racks_installed"].to_numpy(np.float64)
    by_power = 100.0 * use["it_kw"].to_numpy(np.float64) / np.where(installed > 0, installed * standard_rack_kw, np.nan)
    by_racks = 100.0 * use["racks_in_service"].to_numpy(np.float64) / np.where(installed > 0, installed, np.nan)
    pct = by_power if basis == "power" else np.where(np.isfinite(by_racks), by_racks, by_power)
    local = pd.to_datetime(use["start_ms"], unit="ms", utc=True).dt.tz_convert(tz)
    frame = pd.DataFrame({"site": use["id"].to_numpy(), "month": local.dt.strftime("%Y-%m").to_numpy(),
                          "hours": use["hours"].to_numpy(np.float64), "pct": pct}).dropna(subset=["pct"])
    if frame.empty:
        return _empty_history()
    frame["weighted"] = frame["pct"] * frame["hours"]
    sums = frame.groupby(["site", "month"], sort=True)[["weighted", "hours"]].sum().reset_index()
    first = pd.DatetimeIndex(pd.to_datetime(sums["month"] + "-01")).tz_localize(tz)
    lo = np.maximum(first.as_unit("ms").asi8, start_ms)
    hi = np.minimum((first + pd.DateOffset(months=1)).as_unit("ms").asi8, as_of_ms)
    enough = (hi > lo) & (sums["hours"].to_numpy() >= min_month_share * (hi - lo) / _MS_PER_H)
    out = sums[enough]
    return pd.DataFrame({"site": out["site"].to_numpy(dtype=object), "month": out["month"].to_numpy(dtype=object),
                         "occupancy_pct": (out["weighted"] / out["hours"]).to_numpy(np.float64)})


@dataclass(frozen=True, eq=False)
class StoreAssessment:
    """An assessment, the figures it was computed from, and when."""

    assessment: Any  # dcpue.analytics.retirement.Assessment
    figures: StoreFigures
    as_of_ms: int  # end of the assessed period [UTC ms]
    computed_ms: int  # wall clock when it was computed [UTC ms]
    tz: str

    def to_dict(self) -> dict[str, Any]:
        """``Assessment.to_dict()`` plus the period: ``as_of`` / ``period_start`` (ISO, ``tz``) and their ms."""
        out = dict(self.assessment.to_dict())
        out["period"] = {
            "as_of_ms": self.as_of_ms, "start_ms": self.figures.start_ms,
            "as_of": _iso(self.as_of_ms, self.tz), "start": _iso(self.figures.start_ms, self.tz),
            "timezone": self.tz, "computed_ms": self.computed_ms,
            "windows": dict(sorted(self.figures.window.items())),
        }
        return out


def _iso(ms: int, tz: str) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").tz_convert(tz).isoformat()


def assess_store(store: ResultStore, registry: Registry, settings: Any = None, *, as_of_ms: int | None = None,
                 tz: str = "Asia/Shanghai", price_cny_per_kwh: float | None = None) -> StoreAssessment:
    """Assess every registry site from the figures in ``store``.

    ``settings`` is a :class:`dcpue.settings.RetirementSettings` (default: its defaults): criteria,
    economics, the rolling period in months, the occupancy-history basis and cluster overrides.
    ``as_of_ms`` [UTC ms] ends the period (default: :func:`newest_data_ms`, else now); ages are counted
    to its year in ``tz``. ``price_cny_per_kwh`` [CNY/kWh] overrides the settings' electricity price.
    Raises :class:`~dcpue.errors.ConfigError` for a cluster override of a cluster the registry lacks.
    """
    from dcpue.analytics.retirement import assess, site_inputs
    from dcpue.settings import RetirementSettings

    settings = settings or RetirementSettings()
    if as_of_ms is None:
        as_of_ms = newest_data_ms(store) or now_ms()
    criteria = settings.criteria
    figures = figures_from_store(store, as_of_ms, settings.months, registry=registry, tz=tz,
                                 occupancy=settings.occupancy_history, standard_rack_kw=criteria.standard_rack_kw)
    as_of_year = pd.Timestamp(as_of_ms, unit="ms", tz="UTC").tz_convert(tz).year
    inputs = site_inputs(registry, figures.figures, as_of_year=as_of_year,
                         occupancy_history=figures.occupancy_history, criteria=criteria)
    known = {c.id for c in registry.clusters}
    for cid in settings.clusters:
        if cid not in known:
            raise ConfigError(f"field 'retirement.clusters.{cid}': unknown hub cluster "
                              f"(the registry has: {', '.join(sorted(known)) or 'none'})")
    economics = settings.economics
    if price_cny_per_kwh is not None:
        economics = economics.model_copy(update={"electricity_price_cny_per_kwh": float(price_cny_per_kwh)})
    overrides = {cid: o.model_dump(exclude_none=True) for cid, o in settings.clusters.items()}
    result = assess(inputs, registry.clusters, criteria, economics, cluster_overrides=overrides or None)
    return StoreAssessment(result, figures, int(as_of_ms), now_ms(), tz)


def now_ms() -> int:
    """The wall clock [UTC ms]."""
    return int(time.time() * 1000)
