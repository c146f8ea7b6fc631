"""Outdoor weather from monthly climate normals: dry-bulb, relative humidity, wet-bulb.

The normals table (``data/climate_normals.csv``) holds, per city and month, the mean
temperature, mean diurnal range and mean relative humidity (approximate CMA 1991–2020
figures from public summaries, see ``docs/simulator.md``). Weather is the seasonal normal
plus an asymmetric diurnal cycle (minimum 06:00, maximum 15:00 local time, UTC+8) plus a
smooth day-to-day AR(1) anomaly; wet-bulb comes from psychrolib (SI units).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import psychrolib

from dcpue.ingest.simulator import _noise

MS_PER_DAY = 86_400_000
LOCAL_OFFSET_MS = 8 * 3_600_000  # China Standard Time, UTC+8
T_MIN_HOUR = 6.0  # local hour of the daily minimum temperature
T_MAX_HOUR = 15.0  # local hour of the daily maximum temperature
ANOMALY_PHI = 0.7  # day-to-day persistence of the temperature anomaly
ANOMALY_SIGMA_K = 2.0  # stationary standard deviation of the daily anomaly [K]
RH_PER_K = 2.5  # RH drop per K of diurnal warming [%/K]
_MID_MONTH_DOY = (np.arange(12) + 0.5) * (365.25 / 12.0)  # day-of-year of each monthly normal


@dataclass(frozen=True)
class CityClimate:
    """Monthly normals of one city: ``t_mean_c``, ``dtr_c``, ``rh_pct`` have 12 entries."""

    city: str
    latitude: float
    longitude: float
    elevation_m: float
    t_mean_c: np.ndarray
    dtr_c: np.ndarray
    rh_pct: np.ndarray

    @property
    def pressure_pa(self) -> float:
        """Standard-atmosphere station pressure at the city's elevation [Pa]."""
        psychrolib.SetUnitSystem(psychrolib.SI)
        return float(psychrolib.GetStandardAtmPressure(self.elevation_m))


@cache
def read_climate_normals() -> pd.DataFrame:
    """The packaged climate-normals table, one row per (city, month)."""
    table = resources.files("dcpue.ingest.simulator").joinpath("data/climate_normals.csv")
    with table.open(encoding="utf-8") as f:
        return pd.read_csv(f, comment="#")


@cache
def city_climate(city: str) -> CityClimate:
    """Normals of ``city``; raises ``KeyError`` listing the known cities."""
    table = read_climate_normals()
    rows = table[table["city"] == city].sort_values("month")
    if len(rows) != 12:
        known = ", ".join(sorted(table["city"].unique()))
        raise KeyError(f"no climate normals for city {city!r} (known: {known})")
    first = rows.iloc[0]
    return CityClimate(
        city=city,
        latitude=float(first["latitude"]),
        longitude=float(first["longitude"]),
        elevation_m=float(first["elevation_m"]),
        t_mean_c=rows["t_mean_c"].to_numpy(float),
        dtr_c=rows["dtr_c"].to_numpy(float),
        rh_pct=rows["rh_pct"].to_numpy(float),
    )


def known_cities() -> list[str]:
    return sorted(read_climate_normals()["city"].unique())


def seasonal(monthly: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Periodic linear interpolation of 12 mid-month normals to fractional day-of-year ``doy``."""
    x = np.concatenate([_MID_MONTH_DOY - 365.25, _MID_MONTH_DOY, _MID_MONTH_DOY + 365.25])
    y = np.concatenate([monthly, monthly, monthly])
    return np.interp(doy, x, y)


def diurnal_shape(local_hour: np.ndarray) -> np.ndarray:
    """Diurnal temperature shape in [-0.5, 0.5]: -0.5 at 06:00, +0.5 at 15:00 local, cosine segments."""
    h = np.mod(local_hour - T_MIN_HOUR, 24.0)  # hours since the minimum
    rise = T_MAX_HOUR - T_MIN_HOUR
    return np.where(
        h <= rise,
        -0.5 * np.cos(np.pi * h / rise),
        0.5 * np.cos(np.pi * (h - rise) / (24.0 - rise)),
    )


def local_time(ts_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local day number, fractional local hour, fractional day-of-year) of UTC ``ts_ms``."""
    local = np.asarray(ts_ms, dtype=np.int64) + LOCAL_OFFSET_MS
    day = local // MS_PER_DAY
    hour = (local - day * MS_PER_DAY) / 3_600_000.0
    # 1970-01-01 starts a year; a mean Gregorian year keeps the phase within a day for a century
    doy = np.mod(day + hour / 24.0, 365.2425)
    return day, hour, doy


def daily_anomaly(seed: int, city_index: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Smooth day-to-day temperature anomaly [K]: AR(1) values at local noon, linearly interpolated.

    ``city_index`` has shape (S, 1) and ``ts_ms`` shape (T,); result (S, T).
    """
    local = np.asarray(ts_ms, dtype=np.int64) + LOCAL_OFFSET_MS
    return _noise.smooth_ar1(local, MS_PER_DAY, ANOMALY_PHI, ANOMALY_SIGMA_K, seed, 0xC11, city_index)


def weather(seed: int, climates: list[CityClimate], city_index: np.ndarray,
            ts_ms: np.ndarray) -> dict[str, np.ndarray]:
    """Outdoor conditions for sites at sample times.

    ``climates`` lists the distinct cities; ``city_index`` (S,) maps each site to one. Returns
    (S, T) arrays: ``dry_bulb_c`` [°C], ``rh_pct`` [%], ``wet_bulb_c`` [°C], ``pressure_pa`` [Pa],
    ``t_daily_mean_c`` [°C].
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    _, hour, doy = local_time(ts_ms)
    t_norm = np.stack([seasonal(c.t_mean_c, doy) for c in climates])[city_index]
    dtr = np.stack([seasonal(c.dtr_c, doy) for c in climates])[city_index]
    rh_norm = np.stack([seasonal(c.rh_pct, doy) for c in climates])[city_index]
    cidx = np.asarray(city_index)[:, None]
    anomaly = daily_anomaly(seed, cidx, ts_ms)
    shape = diurnal_shape(hour)[None, :]
    dry_bulb = t_norm + anomaly + dtr * shape
    # warm, sunny anomalies are drier; RH falls as the day warms
    rh_anom = _noise.smooth_ar1(ts_ms + LOCAL_OFFSET_MS, MS_PER_DAY, ANOMALY_PHI, 4.0, seed, 0xC12, cidx)
    rh = np.clip(rh_norm - RH_PER_K * dtr * shape - 1.5 * anomaly + rh_anom, 20.0, 100.0)
    pressures = np.array([c.pressure_pa for c in climates])[city_index]
    wet_bulb = np.empty_like(dry_bulb)
    for k, c in enumerate(climates):
        rows = np.flatnonzero(np.asarray(city_index) == k)
        if len(rows):
            wet_bulb[rows] = wet_bulb_c(dry_bulb[rows], rh[rows], c.pressure_pa)
    return {
        "dry_bulb_c": dry_bulb,
        "rh_pct": rh,
        "wet_bulb_c": wet_bulb,
        "pressure_pa": np.broadcast_to(pressures[:, None], dry_bulb.shape),
        "t_daily_mean_c": t_norm + anomaly,
    }


_TDB_GRID = np.arange(-20.0, 46.0, 1.0)
_RH_GRID = np.linspace(0.0, 1.0, 21)


@cache
def _wet_bulb_table(pressure_pa: float) -> np.ndarray:
    """psychrolib wet-bulb [°C] on a (dry-bulb × RH) grid at one station pressure."""
    psychrolib.SetUnitSystem(psychrolib.SI)
    table = np.empty((len(_TDB_GRID), len(_RH_GRID)))
    for i, tdb in enumerate(_TDB_GRID):
        for j, rh in enumerate(_RH_GRID):
            table[i, j] = psychrolib.GetTWetBulbFromRelHum(float(tdb), max(float(rh), 0.001), pressure_pa)
    return table


def wet_bulb_c(dry_bulb_c: np.ndarray, rh_pct: np.ndarray, pressure_pa: float) -> np.ndarray:
    """Thermodynamic wet-bulb temperature [°C] from dry-bulb [°C], RH [%] and pressure [Pa].

    psychrolib is scalar; it is evaluated once per station pressure on a 1 K × 5 %RH grid and
    interpolated bilinearly. The error is below 0.05 K except near 0 °C wet-bulb, where
    psychrolib switches from water to ice and the grid smooths the kink (up to ~0.3 K); both
    are checked in the tests.
    """
    table = _wet_bulb_table(round(float(pressure_pa), -1))
    t = np.clip(np.asarray(dry_bulb_c, float), _TDB_GRID[0], _TDB_GRID[-1] - 1e-9)
    r = np.clip(np.asarray(rh_pct, float) / 100.0, 0.0, 1.0 - 1e-12)
    fi = (t - _TDB_GRID[0]) / (_TDB_GRID[1] - _TDB_GRID[0])
    fj = r / (_RH_GRID[1] - _RH_GRID[0])
    i = np.floor(fi).astype(np.int64)
    j = np.floor(fj).astype(np.int64)
    di, dj = fi - i, fj - j
    return (
        table[i, j] * (1 - di) * (1 - dj)
        + table[i + 1, j] * di * (1 - dj)
        + table[i, j + 1] * (1 - di) * dj
        + table[i + 1, j + 1] * di * dj
    )
