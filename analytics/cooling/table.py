"""The cooling training table: one row per interval of a site with conditions, setpoints and outcomes.

Columns (all optional ones only where the site has the point):

* ``ts`` [ms, UTC]: start of the interval;
* conditions: ``it_kw`` [kW] (IT power, measurement category as the PUE engine picks it),
  ``dry_bulb_c``, ``wet_bulb_c`` [°C] (outdoor), ``rh_pct`` [%] (outdoor relative humidity);
* setpoints [°C]: ``sp_supply_air``, ``sp_chw_supply``, ``sp_fw_supply``, ``sp_cw_supply`` (condenser
  water leaving the cooling towers);
* targets: ``cooling_kw`` [kW] (all cooling subsystems), ``facility_kw`` [kW] (total facility
  power as ISO/IEC 30134-2 counts it: grid import + on-site renewable, so PUE = facility ÷ IT),
  ``rack_inlet_c`` [°C] (the hottest rack-inlet sensor: its mean over the interval), ``fw_supply_c`` [°C]
  (facility-water supply, liquid loops);
* auxiliary: ``rack_inlet_mean_c`` [°C] (the mean of every rack-inlet sensor and sample: the mean
  server inlet that server fans follow; not a model target);
* parts of ``cooling_kw``: ``cooling_kw_<subsystem>`` [kW] for each cooling subsystem the site meters
  (``chiller``, ``crah``, ``cdu``, ``pump``, ``cooling_tower``, ``dry_cooler``): the model learns each
  subsystem's own response and adds them up (:class:`dcpue.analytics.cooling.CoolingModel`).

:func:`readings_to_table` builds it from dcpue readings, reusing the PUE engine's energy
handling (:mod:`dcpue.analytics.energy`, :mod:`dcpue.analytics.pue`) for power and counters.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import psychrolib

from dcpue.analytics.batch import typical_interval_s
from dcpue.analytics.energy import EnergyParams, point_windows
from dcpue.analytics.pue import COOLING_FLOWS, MetricParams, site_flows, window_metrics
from dcpue.model import Quality, Quantity, Role
from dcpue.registry import Point, Site, registry_from_sites
from dcpue.results import Status

SETPOINTS = ("supply_air", "chw_supply", "fw_supply", "cw_supply")
CONDITIONS = ("it_kw", "dry_bulb_c", "wet_bulb_c", "rh_pct")
SETPOINT_COLUMNS = tuple(f"sp_{name}" for name in SETPOINTS)
TARGETS = ("cooling_kw", "facility_kw", "rack_inlet_c", "fw_supply_c")
AUXILIARY = ("rack_inlet_mean_c",)
COOLING_PARTS = tuple(f"cooling_kw_{flow.removeprefix('cooling_')}" for flow in COOLING_FLOWS)
TABLE_COLUMNS = ("ts", *CONDITIONS, *SETPOINT_COLUMNS, *TARGETS, *AUXILIARY, *COOLING_PARTS)

# sensor location → table column; the registry's ``location`` tag wins, else the point id prefix below
_LOCATIONS = {
    (Quantity.TEMPERATURE, "outdoor"): "dry_bulb_c",
    (Quantity.HUMIDITY, "outdoor"): "rh_pct",
    (Quantity.TEMPERATURE, "rack_inlet"): "rack_inlet_c",
    (Quantity.TEMPERATURE, "fw_supply"): "fw_supply_c",
    (Quantity.SETPOINT, "supply_air"): "sp_supply_air",
    (Quantity.SETPOINT, "chw_supply"): "sp_chw_supply",
    (Quantity.SETPOINT, "fw_supply"): "sp_fw_supply",
    (Quantity.SETPOINT, "cw_supply"): "sp_cw_supply",
}
# point-id prefixes of registries without location tags (the simulator's and the README's spelling)
_ID_PREFIXES = {
    "env.outdoor-temp": "outdoor",
    "env.outdoor-rh": "outdoor",
    "env.rack-inlet": "rack_inlet",
    "env.fw-supply": "fw_supply",
    "sp.supply-air": "supply_air",
    "sp.chw-supply": "chw_supply",
    "sp.fw-supply": "fw_supply",
    "sp.cw-supply": "cw_supply",
}
_MAX_COLUMNS = ("rack_inlet_c",)  # the hottest sensor (its interval mean); every other sensor column is a mean
SETPOINT_STEADY_K = 0.05  # a setpoint that moved more than this within an interval makes it a transient
STANDARD_PRESSURE_PA = 101_325.0


def sensor_column(point: Point) -> str | None:
    """The table column a sensor point feeds (``None`` when it feeds none)."""
    if point.role is not Role.SENSOR:
        return None
    location = point.tags.get("location")
    if location is None:
        location = next((loc for prefix, loc in _ID_PREFIXES.items() if point.id.startswith(prefix)), "")
    return _LOCATIONS.get((point.quantity, location))


def site_setpoints(site: Site) -> tuple[str, ...]:
    """Names (in :data:`SETPOINTS` order) of the setpoints ``site`` exposes as points."""
    columns = {sensor_column(p) for p in site.points}
    return tuple(name for name in SETPOINTS if f"sp_{name}" in columns)


def pressure_pa(elevation_m: float | None) -> float:
    """Standard-atmosphere pressure [Pa] at ``elevation_m`` [m] (sea level when ``None``)."""
    if elevation_m is None:
        return STANDARD_PRESSURE_PA
    psychrolib.SetUnitSystem(psychrolib.SI)
    return float(psychrolib.GetStandardAtmPressure(float(elevation_m)))


_TDB_GRID = np.arange(-20.0, 51.0, 1.0)
_RH_GRID = np.linspace(0.0, 1.0, 21)


@cache
def _wet_bulb_table(pressure: float) -> np.ndarray:
    """psychrolib wet-bulb [°C] on a (dry-bulb × RH) grid at one pressure."""
    psychrolib.SetUnitSystem(psychrolib.SI)
    return np.array([[psychrolib.GetTWetBulbFromRelHum(float(t), max(float(r), 0.001), pressure)
                      for r in _RH_GRID] for t in _TDB_GRID])


def wet_bulb_c(dry_bulb_c: np.ndarray | float, rh_pct: np.ndarray | float,
               pressure: float = STANDARD_PRESSURE_PA) -> np.ndarray:
    """Thermodynamic wet-bulb [°C] from dry-bulb [°C], relative humidity [%] and pressure [Pa].

    psychrolib (ASHRAE Fundamentals formulas) evaluated once per pressure on a 1 K × 5 %RH grid
    over −20…50 °C and interpolated bilinearly, as the simulator does
    (:func:`dcpue.ingest.simulator.climate.wet_bulb_c`): < 0.05 K from psychrolib except near
    0 °C wet-bulb (up to 0.3 K). NaN in, NaN out.
    """
    table = _wet_bulb_table(round(float(pressure), -1))
    tdb = np.asarray(dry_bulb_c, dtype=np.float64)
    rh = np.asarray(rh_pct, dtype=np.float64)
    missing = np.isnan(tdb) | np.isnan(rh)
    t = np.clip(np.nan_to_num(tdb), _TDB_GRID[0], _TDB_GRID[-1] - 1e-9)
    r = np.clip(np.nan_to_num(rh) / 100.0, 0.0, 1.0 - 1e-12)
    fi = (t - _TDB_GRID[0]) / (_TDB_GRID[1] - _TDB_GRID[0])
    fj = r / (_RH_GRID[1] - _RH_GRID[0])
    i, j = np.floor(fi).astype(np.int64), np.floor(fj).astype(np.int64)
    di, dj = fi - i, fj - j
    out = (table[i, j] * (1 - di) * (1 - dj) + table[i + 1, j] * di * (1 - dj)
           + table[i, j + 1] * (1 - di) * dj + table[i + 1, j + 1] * di * dj)
    return np.where(missing, np.nan, out)


def _mean_kw(flows: pd.DataFrame, flow: str) -> pd.Series:
    """Mean power [kW] of a flow over its booked time (as :func:`dcpue.analytics.pue.window_metrics`)."""
    hours = flows[f"{flow}_book"] / 3600.0
    return flows[f"{flow}_x"] / hours.where(hours > 0)


def readings_to_table(readings: pd.DataFrame, site: Site, freq: str = "15min", *,
                      elevation_m: float | None = None, coverage_threshold: float = 0.9) -> pd.DataFrame:
    """The cooling table of ``site`` (columns in the module docstring) from dcpue readings.

    ``readings``: columns site, point, ts [ms], value [point unit], quality (other sites' rows
    and unknown points are ignored; readings flagged BAD or COLLECTOR_DOWN are excluded).
    ``freq``: interval length (a pandas frequency such as ``"15min"`` or ``"1h"``).
    Power and energy points go through the PUE engine: counters are differenced (rollovers,
    resets and spikes handled), power integrated, redundant meters resolved by precedence, the
    IT category chosen as for PUE. An interval is kept only when facility and IT power are
    covered for at least ``coverage_threshold`` of it, the outdoor conditions are present and no
    setpoint moved by more than ``SETPOINT_STEADY_K`` within it (a transient: its hottest inlet
    belongs to one setpoint, its mean setpoint to neither); other targets are NaN where missing.
    Sensor samples belong to the interval (start, end] they end, like the energy of the sample
    interval ending there. Wet-bulb is computed with
    psychrolib at the standard-atmosphere pressure of ``elevation_m`` [m] (sea level when
    ``None``).
    """
    step_ms = int(pd.Timedelta(freq).total_seconds() * 1000)
    if step_ms <= 0:
        raise ValueError(f"freq must be a positive duration, got {freq!r}")
    setpoints = site_setpoints(site)
    columns = ["ts", *CONDITIONS, *(f"sp_{n}" for n in setpoints), *TARGETS, *AUXILIARY]
    if not any(sensor_column(p) == "fw_supply_c" for p in site.points):
        columns.remove("fw_supply_c")
    rows = readings[readings["site"] == site.id]
    rows = rows[(rows["quality"].to_numpy() & int(Quality.BAD | Quality.COLLECTOR_DOWN)) == 0]
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "ts" else np.float64) for c in columns})

    ts = rows["ts"].to_numpy(np.int64)
    first, last = int(ts.min()) // step_ms * step_ms, -(-int(ts.max()) // step_ms) * step_ms
    edges = np.arange(first, max(last, first + step_ms) + 1, step_ms, dtype=np.int64)
    starts = edges[:-1]

    # power and energy: the PUE engine's own integration, flows and IT-category choice
    registry = registry_from_sites([site.model_copy(update={"cluster": None})])  # cluster irrelevant here
    points = registry.points_table
    max_gap_s = max(EnergyParams().max_gap_s, 1.5 * typical_interval_s(rows))
    flows = site_flows(point_windows(rows, points, edges, EnergyParams(max_gap_s=max_gap_s)), points)
    flows = flows.reindex(pd.MultiIndex.from_arrays([np.full(len(starts), site.id, dtype=object), starts],
                                                    names=["site", "start_ms"]))
    params = MetricParams(coverage_threshold=coverage_threshold)
    metrics = window_metrics(flows, registry.sites_table, freq, starts + step_ms,
                             np.full(len(starts), step_ms / 1000.0), params)
    ok = (metrics["status"] == Status.OK.value).to_numpy()
    renewable = _mean_kw(flows, "renewable").where(flows["renewable_cov"].notna(), 0.0).to_numpy()
    subsystem_kw = pd.concat([_mean_kw(flows, f) for f in COOLING_FLOWS], axis=1, keys=COOLING_PARTS)
    subsystem_cov = flows[[f"{f}_cov" for f in COOLING_FLOWS]].set_axis(COOLING_PARTS, axis=1) / (step_ms / 1000.0)
    table = pd.DataFrame(index=pd.Index(starts, name="start_ms"))
    table["it_kw"] = np.where(ok, metrics["it_kw"].to_numpy(), np.nan)
    table["facility_kw"] = np.where(ok, metrics["facility_kw"].to_numpy() + renewable, np.nan)
    cooling = subsystem_kw.sum(axis=1, min_count=1)
    table["cooling_kw"] = cooling.where(subsystem_cov.min(axis=1) >= coverage_threshold).to_numpy()
    metered = [part for part in COOLING_PARTS if subsystem_cov[part].notna().any()]
    for part in metered:
        table[part] = subsystem_kw[part].where(subsystem_cov[part] >= coverage_threshold).to_numpy()
    columns += metered

    # sensors and setpoints: mean per interval (rack inlet: the hottest sensor's mean)
    column_of = {p.id: sensor_column(p) for p in site.points}
    factor_of = {p.id: p.factor for p in site.points}
    sensors = rows[rows["point"].map(column_of).notna()]
    if len(sensors):
        col = sensors["point"].map(column_of)
        value = sensors["value"].to_numpy(np.float64) * sensors["point"].map(factor_of).to_numpy(np.float64)
        window = first + (sensors["ts"].to_numpy(np.int64) - 1 - first) // step_ms * step_ms
        frame = pd.DataFrame({"start_ms": window, "column": col.to_numpy(), "value": value,
                              "point": sensors["point"].to_numpy()})
        is_max = frame["column"].isin(_MAX_COLUMNS)
        means = frame[~is_max].groupby(["start_ms", "column"])["value"].mean().unstack("column")
        # the hottest sensor's mean over the interval: the max over samples would add the sensor
        # noise's extreme (≈ 1.7 σ for 15 samples) to the constraint, not a warmer rack
        per_sensor = frame[is_max].groupby(["start_ms", "column", "point"])["value"].mean()
        maxes = per_sensor.groupby(level=["start_ms", "column"]).max().unstack("column")
        if "rack_inlet_c" in maxes.columns:
            inlets = frame[frame["column"] == "rack_inlet_c"]
            table["rack_inlet_mean_c"] = inlets.groupby("start_ms")["value"].mean().reindex(starts).to_numpy()
        for part in (means, maxes):
            for name in part.columns:
                table[name] = part[name].reindex(starts).to_numpy()
        is_sp = frame["column"].str.startswith("sp_").to_numpy()
        if is_sp.any():
            spread = frame[is_sp].groupby(["start_ms", "column"])["value"].agg(np.ptp).unstack("column")
            moved = (spread > SETPOINT_STEADY_K).any(axis=1).reindex(starts, fill_value=False).to_numpy()
            table.loc[moved, "it_kw"] = np.nan  # dropped below with the rows lacking conditions

    for name in columns:
        if name not in table.columns and name != "ts":
            table[name] = np.nan
    table["wet_bulb_c"] = wet_bulb_c(table["dry_bulb_c"].to_numpy(), table["rh_pct"].to_numpy(),
                                     pressure_pa(elevation_m))
    table["ts"] = starts
    table = table[columns].dropna(subset=list(CONDITIONS) + ["facility_kw"])
    return table.reset_index(drop=True)
