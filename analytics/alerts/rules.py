"""Alert rules: pure, vectorised functions from results, readings and health records to conditions.

Each rule returns :class:`~dcpue.analytics.alerts.model.Condition` s whose ``breach``/``clear`` pair
encodes its hysteresis; the lifecycle decides when an alert fires and resolves. The defaults
(``alerts.*`` settings; ``docs/alerting.md`` gives their sources):

- ``PueAboveTarget`` (efficiency, warning): closed 15-min PUE above target + 0.05 for 30 min; clears
  below target + 0.02 held for 15 min.
- ``AnnualPueProjectedMiss`` (efficiency, warning): rolling 12-month PUE above the target.
- ``EfficiencyGradeWorsened`` (efficiency, warning): a day's GB 40879-2021 grade worse than the day before.
- ``RackInletAboveRecommended`` (safety, warning) / ``RackInletAboveAllowable`` (safety, critical):
  rack inlet above 27 °C (ASHRAE TC9.9 recommended) / 32 °C (class A1 allowable).
- ``FacilityWaterTooWarm`` (safety, critical): facility-water supply above the site's W-class limit.
- ``MeterFault`` (data quality, warning): PUE < 1, zero IT energy, sub-meters above the facility meter,
  a power meter stuck on one value.
- ``NoData`` (data quality, critical): a site silent for 10 min while others report; inhibits the
  site's efficiency and safety alerts.
- ``CollectorDeviceDown`` (data quality, warning), ``SpoolDroppingData`` (data quality, critical):
  from collector health records.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from dcpue.analytics.alerts.model import Condition, Family, Severity
from dcpue.settings import AlertSettings

MIN_MS = 60_000
GRADE_RANK = {"1": 1, "2": 2, "3": 3, "beyond_limit": 4}
GRADE_NAME = {"1": "grade 1", "2": "grade 2", "3": "grade 3 (limit value)", "beyond_limit": "beyond the limit value"}
# ASHRAE TC9.9 liquid-cooling classes (2021): highest facility-water supply temperature [°C] per class
W_CLASS_LIMIT_C = {"W17": 17.0, "W27": 27.0, "W32": 32.0, "W40": 40.0, "W45": 45.0, "W+": 60.0}


def _labels(alertname: str, site: str, family: Family, severity: Severity, **extra: str) -> dict[str, str]:
    return {"alertname": alertname, "site": site, "family": family.value, "severity": severity.value, **extra}


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _site_rows(windows: pd.DataFrame, window: str) -> pd.DataFrame:
    if windows.empty:
        return windows
    return windows[(windows["scope"] == "site") & (windows["window"] == window)]


def pue_above_target(windows: pd.DataFrame, settings: AlertSettings, targets: dict[str, float]) -> list[Condition]:
    """Sustained PUE above the site's target, from closed ``pue_window`` site rows with a valid PUE.

    ``targets`` is the target PUE per site (the default target for sites not listed is under key ``""``).
    """
    rows = _site_rows(windows, settings.pue_window)
    rows = rows[rows["final"] & (rows["status"] == "ok")] if not rows.empty else rows
    out = []
    for site, end, pue in zip(rows["id"], rows["end_ms"], rows["pue"], strict=True):
        target = targets.get(site, targets[""])
        fire, clear = target + settings.pue_fire_margin, target + settings.pue_clear_margin
        out.append(Condition(
            _labels("PueAboveTarget", site, Family.EFFICIENCY, Severity.WARNING), int(end),
            breach=bool(pue > fire), clear=bool(pue < clear), value=float(pue),
            for_ms=int(settings.pue_for_s * 1000), clear_for_ms=int(settings.pue_clear_for_s * 1000),
            annotations={"summary": f"PUE {_fmt(pue)} {'above' if pue > target else 'within'} target "
                                    f"{target:.2f} at {site}",
                         "threshold": f"fire > {fire:.3f}, clear < {clear:.3f}", "window": settings.pue_window},
        ))
    return out


def annual_pue_projection(windows: pd.DataFrame, settings: AlertSettings,
                          targets: dict[str, float]) -> list[Condition]:
    """The year's PUE projected from the rolling 12-month row above the target: the year will miss it.

    Before a full year of data the rolling row is incomplete (coverage = days seen / 365) and has no
    PUE; from ``annual_min_days`` of data on, the projection is its energy-weighted PUE so far
    (``total_kwh / it_kwh``), which is what the year's figure becomes if the rest of it runs the same.
    """
    rows = _site_rows(windows, "12mo")
    if rows.empty:
        return []
    enough = rows["coverage"].to_numpy() * 365 >= settings.annual_min_days
    so_far = np.where(rows["it_kwh"].to_numpy() > 0, rows["total_kwh"].to_numpy() / rows["it_kwh"].to_numpy(),
                      np.nan)
    projected = np.where(rows["status"].to_numpy() == "ok", rows["pue"].to_numpy(), np.where(enough, so_far, np.nan))
    out = []
    for site, end, pue, cov in zip(rows["id"], rows["end_ms"], projected, rows["coverage"], strict=True):
        if not np.isfinite(pue):
            continue
        target = targets.get(site, targets[""])
        out.append(Condition(
            _labels("AnnualPueProjectedMiss", site, Family.EFFICIENCY, Severity.WARNING), int(end),
            breach=bool(pue > target), clear=bool(pue <= target - settings.annual_clear_margin), value=float(pue),
            annotations={"summary": f"the year's PUE at {site} is heading for {_fmt(pue)}, missing the target "
                                    f"{target:.2f} ({cov * 365:.0f} days of data)",
                         "threshold": f"fire > {target:.3f}, clear ≤ {target - settings.annual_clear_margin:.3f}"},
        ))
    return out


def grade_worsening(windows: pd.DataFrame, previous_grade: dict[str, str]) -> tuple[list[Condition], dict[str, str]]:
    """A closed day whose GB 40879-2021 grade is worse than the site's previous closed day.

    ``previous_grade`` is the last closed day's grade per site (state kept by the caller); returns the
    conditions and the updated state. A day as good as or better than the one before clears it.
    """
    rows = _site_rows(windows, "1d")
    rows = rows[rows["final"] & rows["grade"].isin(list(GRADE_RANK))] if not rows.empty else rows
    state = dict(previous_grade)
    out = []
    for site, end, grade, pue in zip(rows["id"], rows["end_ms"], rows["grade"], rows["pue"], strict=True):
        before = state.get(site)
        state[site] = grade
        if before is None:
            continue
        worse = GRADE_RANK[grade] > GRADE_RANK[before]
        out.append(Condition(
            _labels("EfficiencyGradeWorsened", site, Family.EFFICIENCY, Severity.WARNING), int(end),
            breach=worse, clear=not worse, value=float(pue),
            annotations={"summary": f"{site} fell from {GRADE_NAME[before]} to {GRADE_NAME[grade]} "
                                    f"(GB 40879-2021, daily PUE {_fmt(pue)})", "previous_grade": before,
                         "grade": grade},
        ))
    return out, state


def meter_faults(windows: pd.DataFrame) -> list[Condition]:
    """Window flags that mean a meter is wrong: PUE < 1, zero IT energy, sub-meters above the facility meter."""
    rows = windows[(windows["scope"] == "site") & (windows["window"] == "1h") & windows["final"]] \
        if not windows.empty else windows
    out = []
    for site, end, flags, hierarchy in zip(rows["id"], rows["end_ms"], rows["flags"], rows["hierarchy_error"],
                                           strict=True):
        found = set(filter(None, str(flags).split(",")))
        for flag, text in (("pue_below_1", "PUE below 1: the facility meter reads less than the IT meters"),
                           ("it_energy_zero", "IT energy is zero while the facility draws power"),
                           ("hierarchy", f"sub-meters exceed the facility meter by {_fmt(hierarchy * 100, 1)} %")):
            out.append(Condition(
                _labels("MeterFault", site, Family.DATA_QUALITY, Severity.WARNING, fault=flag), int(end),
                breach=flag in found, clear=flag not in found,
                value=float(hierarchy) if flag == "hierarchy" else float("nan"),
                annotations={"summary": f"meter fault at {site}: {text}"},
            ))
    return out


def _sensor_samples(readings: pd.DataFrame, points: pd.DataFrame, location: str) -> pd.DataFrame:
    """Every good reading of temperature points at ``location``, in °C, oldest first.

    Every sample is judged, not only the newest of a batch, so a backlog replayed in large batches
    alerts as the live stream did.
    """
    if readings.empty:
        return readings
    meta = points[(points["location"] == location) & (points["quantity"] == "temperature")]  # not setpoints
    if meta.empty:
        return readings.iloc[:0]
    good = readings[(readings["quality"].to_numpy() & 0b1100) == 0]  # BAD | COLLECTOR_DOWN
    keys = pd.MultiIndex.from_arrays([good["site"], good["point"]])
    mine = good[keys.isin(meta.index)]
    if mine.empty:
        return mine
    mine = mine.sort_values(["site", "point", "ts"], kind="stable")
    factor = meta["factor"].reindex(pd.MultiIndex.from_arrays([mine["site"], mine["point"]])).to_numpy()
    return mine.assign(value=mine["value"].to_numpy() * factor)


def _worth_judging(samples: pd.DataFrame, breach: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """Rows of ``samples`` (sorted by site, point, ts) the lifecycle must see: every breach, every change of
    (breach, clear) from the sensor's previous sample, and each sensor's first and last sample of the batch.

    A run of identical non-breaching samples says nothing the first and last of it do not, so large
    batches of healthy sensors do not become one condition per sample.
    """
    sensor = pd.factorize(pd.MultiIndex.from_arrays([samples["site"], samples["point"]]))[0]
    first = np.r_[True, sensor[1:] != sensor[:-1]]
    last = np.r_[sensor[1:] != sensor[:-1], True]
    changed = np.r_[True, (breach[1:] != breach[:-1]) | (clear[1:] != clear[:-1])]
    return breach | first | last | changed


def rack_inlet_temperature(readings: pd.DataFrame, points: pd.DataFrame, settings: AlertSettings) -> list[Condition]:
    """Rack inlet temperatures above the ASHRAE TC9.9 recommended and allowable limits, per sensor."""
    samples = _sensor_samples(readings, points, "rack_inlet")
    if samples.empty:
        return []
    out = []
    hyst = settings.inlet_hysteresis_c
    temps = samples["value"].to_numpy(np.float64)
    for name, limit, severity, what in (
        ("RackInletAboveRecommended", settings.inlet_recommended_c, Severity.WARNING, "recommended"),
        ("RackInletAboveAllowable", settings.inlet_allowable_c, Severity.CRITICAL, "allowable"),
    ):
        breach, clear = temps > limit, temps < limit - hyst
        keep = _worth_judging(samples, breach, clear)
        for site, point, ts, temp in zip(samples["site"].to_numpy()[keep], samples["point"].to_numpy()[keep],
                                         samples["ts"].to_numpy()[keep], temps[keep], strict=True):
            out.append(Condition(
                _labels(name, site, Family.SAFETY, severity, point=point), int(ts),
                breach=bool(temp > limit), clear=bool(temp < limit - hyst), value=float(temp),
                for_ms=int(settings.inlet_for_s * 1000),
                annotations={"summary": f"rack inlet {point} at {site} is {temp:.1f} °C, above the ASHRAE "
                                        f"{what} {limit:.0f} °C", "threshold": f"{limit:.1f} °C"},
            ))
    return out


def facility_water_supply(readings: pd.DataFrame, points: pd.DataFrame, settings: AlertSettings,
                          water_class: dict[str, str]) -> list[Condition]:
    """Facility-water supply temperature above the limit of the site's ASHRAE W class."""
    samples = _sensor_samples(readings, points, "fw_supply")
    if samples.empty:
        return []
    classes = samples["site"].map(lambda site: water_class.get(site, water_class[""])).to_numpy()
    limits = np.array([W_CLASS_LIMIT_C[c] for c in classes])
    temps = samples["value"].to_numpy(np.float64)
    keep = _worth_judging(samples, temps > limits, temps < limits - settings.water_hysteresis_c)
    out = []
    for site, point, ts, temp, cls, limit in zip(
            samples["site"].to_numpy()[keep], samples["point"].to_numpy()[keep], samples["ts"].to_numpy()[keep],
            temps[keep], classes[keep], limits[keep], strict=True):
        out.append(Condition(
            _labels("FacilityWaterTooWarm", site, Family.SAFETY, Severity.CRITICAL, point=point), int(ts),
            breach=bool(temp > limit), clear=bool(temp < limit - settings.water_hysteresis_c), value=float(temp),
            for_ms=int(settings.water_for_s * 1000),
            annotations={"summary": f"facility-water supply {point} at {site} is {temp:.1f} °C, above the "
                                    f"{cls} limit {limit:.0f} °C", "threshold": f"{limit:.1f} °C"},
        ))
    return out


def stuck_meters(readings: pd.DataFrame, points: pd.DataFrame, last_change: dict[tuple[str, str], tuple[float, int]],
                 settings: AlertSettings) -> tuple[list[Condition], dict[tuple[str, str], tuple[float, int]]]:
    """Power meters repeating exactly the same value for ``stuck_after_s``.

    ``last_change`` maps (site, point) to (value, ts of the first sample with that value); returns the
    conditions for every power point seen and the updated state.
    """
    state = dict(last_change)
    if readings.empty:
        return [], state
    power = points[points["quantity"] == "power"]
    good = readings[(readings["quality"].to_numpy() & 0b1100) == 0]
    mine = good[pd.MultiIndex.from_arrays([good["site"], good["point"]]).isin(power.index)]
    if mine.empty:
        return [], state
    mine = mine.sort_values(["site", "point", "ts"], kind="stable")
    codes, keys = pd.factorize(pd.MultiIndex.from_arrays([mine["site"], mine["point"]]))
    ts = mine["ts"].to_numpy(np.int64)
    values = mine["value"].to_numpy(np.float64)
    n = len(values)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], n] - 1
    known = [state.get(key, (np.nan, -1)) for key in keys]
    prior_value = np.array([k[0] for k in known], dtype=np.float64)
    prior_since = np.array([k[1] for k in known], dtype=np.int64)
    previous = np.r_[np.nan, values[:-1]]
    previous[starts] = prior_value  # each point's first sample compares with what the last batch ended on
    changed = values != previous  # NaN (point never seen) compares unequal: its first sample starts a run
    last_change = np.maximum.reduceat(np.where(changed, np.arange(n), -1), starts)
    moved = last_change >= 0
    value = np.where(moved, values[np.maximum(last_change, 0)], prior_value)
    since = np.where(moved, ts[np.maximum(last_change, 0)], prior_since)
    held_ms = np.where(value == 0, 0, ts[ends] - since)  # a switched-off feeder legitimately reads 0 for hours
    state.update(zip(keys, zip(value.tolist(), since.tolist(), strict=True), strict=True))
    limit_ms = int(settings.stuck_after_s * 1000)
    out = []
    for (site, point), end, v, held in zip(keys, ts[ends].tolist(), value.tolist(), held_ms.tolist(), strict=True):
        out.append(Condition(
            _labels("MeterFault", site, Family.DATA_QUALITY, Severity.WARNING, fault="stuck", point=point),
            end, breach=held >= limit_ms, clear=held < limit_ms, value=v,
            annotations={"summary": f"meter {point} at {site} has reported exactly {v:g} for {held / 60_000:.0f} min"},
        ))
    return out, state


NEVER_SEEN_GRACE_MS = 3_600_000  # a site that never reported is "no data" only an hour into the engine's clock


def no_data(last_seen: dict[str, int], sites: Iterable[str], now_ms: int, first_ms: int,
            settings: AlertSettings, typical_gap_ms: dict[str, float] | None = None) -> list[Condition]:
    """Sites silent for ``no_data_after_s`` while the fleet clock (newest reading anywhere, ``now_ms``) moved on.

    A site never seen counts as silent since ``first_ms`` (the first reading the engine saw), after a
    grace of at least :data:`NEVER_SEEN_GRACE_MS` (collectors start one by one, and a worker that just
    started may get a site's first batch some polls after another's). A firing
    NoData inhibits the site's efficiency and safety alerts (label ``inhibits: site``): one
    data-quality alert instead of a storm. A site whose meters report less often than that gets three
    of its usual gaps (``typical_gap_ms``) instead.
    """
    gaps = typical_gap_ms or {}
    out = []
    for site in sites:
        limit_ms = int(max(settings.no_data_after_s * 1000, 3 * gaps.get(site, 0.0)))
        seen = last_seen.get(site)
        if seen is None:
            limit_ms = max(limit_ms, NEVER_SEEN_GRACE_MS)
        silent_ms = now_ms - (seen if seen is not None else first_ms)
        out.append(Condition(
            _labels("NoData", site, Family.DATA_QUALITY, Severity.CRITICAL, inhibits="site"), now_ms,
            breach=silent_ms >= limit_ms, clear=silent_ms < limit_ms, value=silent_ms / 1000,
            annotations={"summary": f"no readings from {site} for {silent_ms / 60_000:.0f} min"
                         if seen is not None else f"no readings from {site} yet"},
        ))
    return out


def device_health(records: Iterable[dict[str, object]], settings: AlertSettings,
                  drops: dict[tuple[str, str], tuple[int, int]],
                  ) -> tuple[list[Condition], dict[tuple[str, str], tuple[int, int]]]:
    """Collector health records (``dcpue.health``): devices failing to read, spools dropping data.

    A collector record names the ``sites`` its devices serve; its spool alert is raised for each of
    them (so it routes and groups like the site's other alerts), or once with no site when it names
    none. ``drops`` maps (site, collector) to (the last ``spool_dropped_total``, ts [ms] of the last
    increase); a collector whose count rose within ``spool_clear_after_s`` is dropping data. Returns
    the conditions and the updated state.
    """
    state = dict(drops)
    out = []
    for r in records:
        ts = int(r.get("ts", 0))  # type: ignore[call-overload]
        if r.get("kind") == "device":
            site, device = str(r.get("site", "")), str(r.get("device", ""))
            up = bool(r.get("up"))
            out.append(Condition(
                _labels("CollectorDeviceDown", site, Family.DATA_QUALITY, Severity.WARNING, device=device,
                        collector=str(r.get("collector", ""))), ts,
                breach=not up, clear=up, value=float(r.get("consecutive_failures", 0)),  # type: ignore[arg-type]
                for_ms=int(settings.device_down_for_s * 1000),
                annotations={"summary": f"collector cannot read {device} ({r.get('protocol')}) at {site}: "
                                        f"{r.get('last_error')}"},
            ))
        elif r.get("kind") == "collector":
            collector = str(r.get("collector", ""))
            dropped = int(r.get("spool_dropped_total", 0))  # type: ignore[call-overload]
            for site in [str(s) for s in r.get("sites") or ()] or [""]:  # type: ignore[attr-defined]
                before, since = state.get((site, collector), (0, -(2**62)))
                if dropped > before:
                    since = ts
                state[(site, collector)] = (dropped, since)
                dropping = ts - since < settings.spool_clear_after_s * 1000
                out.append(Condition(
                    _labels("SpoolDroppingData", site, Family.DATA_QUALITY, Severity.CRITICAL, collector=collector),
                    ts, breach=dropping, clear=not dropping, value=float(dropped),
                    annotations={"summary": f"collector {collector} has dropped {dropped} spooled records: its disk "
                                            f"cap ({r.get('spool_max_bytes')} B) was reached while the bus was away"},
                ))
    return out, state
