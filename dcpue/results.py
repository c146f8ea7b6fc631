"""The shape of analytics results: one row per (scope, id, window, start).

Every store, the HTTP API, dashboards and the provincial feed read this one schema.
Energies are in [kWh], water in [L], powers in [kW]; ratios are dimensionless except
WUE [L/kWh] and CUE [kgCO2/kWh]. A ratio is NaN whenever the figure is not valid
(``status`` says why) — an incomplete window is never reported as a number.

``grade`` is the GB 40879-2021 energy-efficiency grade of the PUE: ``"1"`` (≤ 1.20), ``"2"``
(≤ 1.30), ``"3"`` (≤ 1.50, the limit value), ``"beyond_limit"``, or ``""`` when there is no valid
PUE. ``flags`` is a comma-separated list of data-quality findings (``pue_below_1``,
``it_energy_zero``, ``hierarchy``). ``final`` is true once a window can no longer change.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pandas as pd


class Scope(StrEnum):
    SITE = "site"
    CLUSTER = "cluster"
    FLEET = "fleet"


class Status(StrEnum):
    OK = "ok"
    INCOMPLETE = "incomplete"  # coverage below the threshold
    METER_FAULT = "meter_fault"  # PUE < 1, zero IT energy: numbers that cannot be true
    NO_DATA = "no_data"


# calendar windows: label -> pandas frequency used to floor timestamps (UTC)
WINDOWS: dict[str, str] = {"1m": "1min", "15m": "15min", "1h": "1h", "1d": "1D", "1mo": "MS"}
# the rolling annualized figure: the 365 days ending at the newest data, re-emitted as it moves
ROLLING_ANNUAL = "12mo"
ALL_WINDOWS = (*WINDOWS, ROLLING_ANNUAL)

COOLING_SUBSYSTEM_COLUMNS = (
    "cooling_chiller_kwh",
    "cooling_crah_kwh",
    "cooling_cdu_kwh",
    "cooling_pump_kwh",
    "cooling_cooling_tower_kwh",
    "cooling_dry_cooler_kwh",
)

ENERGY_COLUMNS = (
    "facility_kwh",
    "it_kwh",
    "cooling_kwh",
    *COOLING_SUBSYSTEM_COLUMNS,
    "losses_kwh",
    "lighting_kwh",
    "renewable_kwh",
    "reused_kwh",
    "total_kwh",
    "water_l",
)

METRIC_COLUMNS = (
    "pue",
    "ppue_cooling",
    "clf",
    "plf",
    "olf",
    "wue",
    "cue",
    "ref",
    "erf",
    "pue_gap",
)

KEY_COLUMNS = ("scope", "id", "window", "start_ms")

WINDOW_COLUMNS: tuple[str, ...] = (
    *KEY_COLUMNS,
    "end_ms",
    "final",
    "status",
    "coverage",
    "it_category",
    *ENERGY_COLUMNS,
    "facility_kw",
    "it_kw",
    *METRIC_COLUMNS,
    "grade",
    "hierarchy_error",
    "racks_installed",
    "racks_in_service",
    "occupancy",
    "it_utilization",
    "flags",
)

_INT_COLUMNS = {"start_ms", "end_ms", "it_category", "racks_installed", "racks_in_service"}
_STR_COLUMNS = {"scope", "id", "window", "status", "grade", "flags"}
_BOOL_COLUMNS = {"final"}

WINDOW_DTYPES: dict[str, object] = {
    col: (np.int64 if col in _INT_COLUMNS else str if col in _STR_COLUMNS else bool if col in _BOOL_COLUMNS
          else np.float64)
    for col in WINDOW_COLUMNS
}
_DEFAULTS: dict[object, object] = {np.int64: 0, str: "", bool: False, np.float64: np.nan}


def empty_windows() -> pd.DataFrame:
    """A window-results DataFrame with no rows."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in WINDOW_DTYPES.items()})


def conform_windows(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with exactly :data:`WINDOW_COLUMNS` in order and their dtypes (missing → default)."""
    n = len(frame)
    data: dict[str, object] = {}
    for col, dtype in WINDOW_DTYPES.items():
        if col in frame.columns:
            series = frame[col]
            if dtype is str:
                if isinstance(series.dtype, pd.StringDtype) and not series.hasnans:
                    data[col] = series.array  # already text without gaps: taken as it is, not converted twice
                else:
                    data[col] = pd.Series(series.to_numpy(), dtype=object).fillna("").astype(str).to_numpy()
            elif dtype is np.float64:
                data[col] = series.to_numpy().astype(np.float64, copy=False)
            else:
                data[col] = series.to_numpy().astype(dtype)  # type: ignore[arg-type]
        else:
            data[col] = np.full(n, _DEFAULTS[dtype], dtype=object if dtype is str else dtype)  # type: ignore[arg-type]
    return pd.DataFrame(data)
