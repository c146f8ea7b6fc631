"""The annual data-centre report of Commission Delegated Regulation (EU) 2024/1364, from dcpue's figures.

Pure: a registry :class:`~dcpue.registry.Site`, its window rows (``dcpue.results`` schema) and the
operator's own statements in, a JSON-ready dict out (:func:`eu_annual_report`), and a one-row-per-
indicator CSV of it (:func:`eu_report_to_csv`). The regulation (first phase of the Union rating scheme
for data centres, under Art. 12 of the Energy Efficiency Directive (EU) 2023/1791) asks for a calendar
year: energies are summed over the year's ``ok`` windows and never scaled up; every figure carries the
share of the year's hours it covers, and the report says whether the year is complete. Ratios are
energy-weighted (Σ numerator ÷ Σ denominator), never a mean of window ratios. What dcpue does not meter
comes from ``operator_info`` or is null and listed in ``not_measured``. Sources and limits:
``docs/feed/eu-2024-1364.md``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from dcpue.model import Role
from dcpue.registry import Site
from dcpue.results import ROLLING_ANNUAL, WINDOWS, Scope, Status

REGULATION = "Commission Delegated Regulation (EU) 2024/1364"
FORMAT = "dcpue.eu-2024-1364.v1"
CSV_COLUMNS = ("section", "indicator", "symbol", "annex", "name", "value", "unit", "source", "coverage", "note")
DATA_CENTRE_TYPES = ("enterprise", "colocation", "co-hosting")  # Art. 2(1)-(3)
REPORTING_THRESHOLD_KW = 500.0  # Art. 1: installed IT power demand of at least 500 kW
_WINDOW_ORDER = ("1mo", "1d", "1h", "15m", "1m")  # longest first: the tie-break when choosing a window
_FULL = 1.0 - 1e-9  # a coverage at least this is the whole year

Source = Literal["dcpue", "registry", "operator", "derived"]


@dataclass(frozen=True)
class EUField:
    """One reported item: its key (unit in the name), the regulation's symbol and annex where confirmed."""

    key: str
    section: str  # reporting, annex_i, annex_ii, annex_iii
    name: str
    unit: str | None
    source: Source  # where dcpue takes it from by default
    taken_from: str  # in words, for the doc
    symbol: str | None = None  # only symbols confirmed in public sources; None otherwise
    annex: str = ""
    kind: Literal["number", "text", "choice"] = "number"
    operator: bool = False  # may the operator supply it (when dcpue has no metered value)?
    annual: bool = False  # a quantity over the year: it carries the share of the year it covers


EU_FIELDS: tuple[EUField, ...] = (
    # --- the report itself -----------------------------------------------------------------------
    EUField("reporting_year", "reporting", "Reporting year (calendar year)", None, "derived", "argument `year`"),
    EUField("period_start", "reporting", "Start of the year, local time", None, "derived", "`year` in `tz`"),
    EUField("period_end", "reporting", "End of the year (exclusive), local time", None, "derived", "`year` in `tz`"),
    EUField("window", "reporting", "dcpue window summed", None, "derived",
            "argument `window`, else the label with most ok hours"),
    EUField("hours_in_year", "reporting", "Hours in the year", "h", "derived", "period end − start"),
    EUField("hours_covered", "reporting", "Hours in final ok windows", "h", "dcpue", "Σ window length, status ok"),
    EUField("coverage", "reporting", "Share of the year covered", "-", "dcpue", "hours_covered ÷ hours_in_year"),
    EUField("complete", "reporting", "Whole year covered", None, "dcpue", "coverage = 1"),
    EUField("it_measurement_categories", "reporting", "ISO/IEC 30134-2 IT measurement categories used", None,
            "dcpue", "`it_category` of the ok windows"),
    # --- Annex I: information about the data centre -------------------------------------------------
    EUField("data_centre_name", "annex_i", "Name of the data centre", None, "registry", "`Site.name`",
            annex="I", kind="text", operator=True),
    EUField("owner_name", "annex_i", "Owner of the data centre", None, "operator", "operator_info",
            annex="I", kind="text", operator=True),
    EUField("operator_name", "annex_i", "Operator(s) of the data centre", None, "operator", "operator_info",
            annex="I", kind="text", operator=True),
    EUField("contact", "annex_i", "Contact details", None, "operator", "operator_info",
            annex="I", kind="text", operator=True),
    EUField("data_centre_type", "annex_i", "Type: enterprise, colocation or co-hosting (Art. 2)", None, "operator",
            "operator_info", annex="I", kind="choice", operator=True),
    EUField("operation_start", "annex_i", "Date the data centre started operating", None, "registry",
            "`Site.commissioned` (year only)", annex="I", kind="text", operator=True),
    EUField("country", "annex_i", "Country (Member State)", None, "operator", "operator_info",
            annex="I", kind="text", operator=True),
    EUField("municipality", "annex_i", "Municipality", None, "registry", "`Site.city`",
            annex="I", kind="text", operator=True),
    EUField("latitude_deg", "annex_i", "Latitude", "deg", "registry", "`Site.latitude`", annex="I", operator=True),
    EUField("longitude_deg", "annex_i", "Longitude", "deg", "registry", "`Site.longitude`", annex="I",
            operator=True),
    # --- Annex II: key performance indicators -------------------------------------------------------
    EUField("installed_it_power_demand_kw", "annex_ii", "Installed information technology power demand", "kW",
            "operator", "operator_info (registry `design_it_kw` is design capacity, not installed IT nameplate)",
            symbol="PDIT", annex="II", operator=True),
    EUField("total_floor_area_m2", "annex_ii", "Data centre total floor area", "m2", "operator", "operator_info",
            annex="II", operator=True),
    EUField("computer_room_floor_area_m2", "annex_ii", "Computer room floor area", "m2", "operator",
            "operator_info", annex="II", operator=True),
    EUField("total_energy_kwh", "annex_ii", "Total energy consumption", "kWh", "dcpue",
            "Σ `total_kwh` (facility + on-site renewable), ok windows", symbol="EDC", annex="II", annual=True),
    EUField("it_energy_kwh", "annex_ii", "Total energy consumption of the IT equipment", "kWh", "dcpue",
            "Σ `it_kwh`, ok windows", symbol="EIT", annex="II(1)(e)", annual=True),
    EUField("onsite_renewable_energy_kwh", "annex_ii", "Renewable energy from on-site generation", "kWh", "dcpue",
            "Σ `renewable_kwh`, ok windows (site with a `renewable` point); else operator_info",
            annex="II", operator=True, annual=True),
    EUField("renewable_go_energy_kwh", "annex_ii", "Renewable energy covered by guarantees of origin", "kWh",
            "operator", "operator_info", annex="II", operator=True, annual=True),
    EUField("renewable_ppa_energy_kwh", "annex_ii", "Renewable energy from power purchase agreements", "kWh",
            "operator", "operator_info", annex="II", operator=True, annual=True),
    EUField("renewable_energy_kwh", "annex_ii", "Total renewable energy consumption", "kWh", "derived",
            "on-site + guarantees of origin + PPAs", symbol="ERES-TOT", annex="II", annual=True),
    EUField("water_input_m3", "annex_ii", "Total water input", "m3", "dcpue",
            "Σ `water_l` ÷ 1000, ok windows with water covered (site with a `water` point); else operator_info",
            symbol="WIN", annex="II", operator=True, annual=True),
    EUField("potable_water_input_m3", "annex_ii", "Potable water input", "m3", "operator", "operator_info",
            annex="II", operator=True, annual=True),
    EUField("reused_energy_kwh", "annex_ii", "Waste heat reused", "kWh", "dcpue",
            "Σ `reused_kwh`, ok windows with reuse covered (site with a `reused_heat` point); else operator_info",
            symbol="EREUSE", annex="II", operator=True, annual=True),
    EUField("temperature_set_point_c", "annex_ii", "Temperature set point", "degC", "operator", "operator_info",
            annex="II", operator=True),
    EUField("ict_capacity_servers", "annex_ii", "ICT capacity of the servers", None, "operator", "operator_info",
            symbol="CSERV", annex="II", operator=True),
    EUField("ict_capacity_storage", "annex_ii", "ICT capacity of the storage equipment", None, "operator",
            "operator_info", symbol="CSTOR", annex="II", operator=True),
    EUField("incoming_data_traffic", "annex_ii", "Annual incoming data traffic", None, "operator", "operator_info",
            annex="II", operator=True, annual=True),
    EUField("outgoing_data_traffic", "annex_ii", "Annual outgoing data traffic", None, "operator", "operator_info",
            annex="II", operator=True, annual=True),
    # --- Annex III: data centre sustainability indicators -------------------------------------------
    EUField("pue", "annex_iii", "Power usage effectiveness = EDC ÷ EIT", "-", "derived", "EDC ÷ EIT",
            symbol="PUE", annex="III", annual=True),
    EUField("wue_l_per_kwh", "annex_iii", "Water usage effectiveness = WIN ÷ EIT", "L/kWh", "derived",
            "WIN [L] ÷ EIT over the same windows", symbol="WUE", annex="III", annual=True),
    EUField("erf", "annex_iii", "Energy reuse factor = EREUSE ÷ EDC", "-", "derived",
            "EREUSE ÷ EDC over the same windows", symbol="ERF", annex="III", annual=True),
    EUField("ref", "annex_iii", "Renewable energy factor = ERES-TOT ÷ EDC", "-", "derived",
            "ERES-TOT ÷ EDC over the same windows", symbol="REF", annex="III", annual=True),
)
FIELDS: dict[str, EUField] = {f.key: f for f in EU_FIELDS}
OPERATOR_KEYS: tuple[str, ...] = tuple(f.key for f in EU_FIELDS if f.operator)


@dataclass(frozen=True)
class _Q:
    """A quantity: value, the ok-window rows it is summed over (None = an annual operator statement)."""

    value: Any  # float for quantities; str, int or bool for the descriptive rows
    mask: np.ndarray | None = None
    source: str | None = None
    note: str = ""


def eu_annual_report(site: Site, windows: pd.DataFrame, year: int, *, tz: str = "Asia/Shanghai",
                     operator_info: Mapping[str, Any] | None = None, window: str | None = None) -> dict[str, Any]:
    """The Delegated Regulation (EU) 2024/1364 report of ``site`` for calendar ``year`` (JSON-ready, no NaN).

    ``windows`` are window rows (:data:`dcpue.results.WINDOW_COLUMNS`); only this site's final rows of one
    calendar window label that lie wholly inside the year (local calendar of ``tz``) count, and of those
    only status ``ok``. ``window`` picks the label (``"1mo"``, ``"1d"`` …); by default the label with the
    most ok hours in the year (the longer one on a tie). Energies [kWh] and water [m3] are sums over the
    covered hours, not scaled to the year. ``operator_info`` maps keys of :data:`OPERATOR_KEYS` to values in
    the field's unit; a metered figure wins over an operator one (a warning says so). Raises ``ValueError``
    for an unknown key, a bad value or an unknown window label.
    """
    info = _check_operator_info(operator_info or {})
    y0 = int(pd.Timestamp(year=year, month=1, day=1, tz=tz).value // 1_000_000)
    y1 = int(pd.Timestamp(year=year + 1, month=1, day=1, tz=tz).value // 1_000_000)
    hours_year = (y1 - y0) / 3_600_000
    warnings: list[str] = []

    rows = windows[(windows["scope"] == Scope.SITE.value) & (windows["id"] == site.id)
                   & (windows["window"] != ROLLING_ANNUAL)]
    label = _pick_window(rows, window, y0, y1)
    rows = rows[rows["window"] == label].sort_values(["start_ms", "final"], kind="stable")
    rows = rows.drop_duplicates("start_ms", keep="last")  # a final row supersedes an earlier one
    overlapping = (rows["end_ms"] > y0) & (rows["start_ms"] < y1)
    straddle = overlapping & ((rows["start_ms"] < y0) | (rows["end_ms"] > y1))
    if straddle.any():
        warnings.append(f"{int(straddle.sum())} window(s) cross the year's edge in {tz} and are left out; "
                        "use windows on the same calendar as tz")
    inside = rows[overlapping & ~straddle]
    not_final = ~inside["final"].to_numpy(bool)
    statuses = inside["status"].where(~not_final, "not_final").value_counts().to_dict()
    ok = inside[(inside["status"] == Status.OK.value) & ~not_final]

    hours = (ok["end_ms"].to_numpy(np.int64) - ok["start_ms"].to_numpy(np.int64)) / 3_600_000
    hours_covered = float(hours.sum())
    coverage = hours_covered / hours_year
    complete = coverage >= _FULL
    if not complete:
        warnings.append(f"partial year: final ok windows cover {coverage:.4f} of the year's hours; energies and "
                        "water are sums over the covered hours, not scaled up to a year")
    categories = sorted({int(c) for c in ok["it_category"]} - {0})
    if any(c != 1 for c in categories):
        warnings.append(f"EIT comes from IT measurement category {', '.join(map(str, categories))}; the regulation "
                        "measures IT energy at the UPS output where there is one (category 1)")

    col = {c: ok[c].to_numpy(np.float64) for c in ("total_kwh", "it_kwh", "renewable_kwh", "water_l",
                                                  "reused_kwh", "wue", "ref", "erf")}
    all_ok = np.ones(len(ok), dtype=bool)

    def cov(q: _Q) -> float | None:
        if q.value is None:
            return None
        return 1.0 if q.mask is None else float(hours[q.mask].sum() / hours_year)

    def metered(role: Role, column: str, validity: str, key: str, scale: float = 1.0) -> _Q:
        """A flow metered if the site has a point of ``role``, else the operator's statement (if any)."""
        has_meter = any(p.role is role for p in site.points)
        if not has_meter:
            return _operator(info, key)
        if key in info:
            warnings.append(f"operator_info {key!r} ignored: the site meters it")
        valid = ~np.isnan(col[validity])
        if not valid.any():
            return _Q(None, note=f"the site has a {role.value!r} point but no ok window has it covered")
        return _Q(float(col[column][valid].sum() * scale), valid, "dcpue")

    edc = _Q(float(col["total_kwh"].sum()), all_ok, "dcpue") if len(ok) else _Q(None, note="no final ok window")
    eit = _Q(float(col["it_kwh"].sum()), all_ok, "dcpue") if len(ok) else _Q(None, note="no final ok window")
    onsite = metered(Role.RENEWABLE, "renewable_kwh", "ref", "onsite_renewable_energy_kwh")
    water = metered(Role.WATER, "water_l", "wue", "water_input_m3", 1e-3)
    reused = metered(Role.REUSED_HEAT, "reused_kwh", "erf", "reused_energy_kwh")
    go, ppa = _operator(info, "renewable_go_energy_kwh"), _operator(info, "renewable_ppa_energy_kwh")
    eres = _sum_q([onsite, go, ppa], hours, hours_year)

    def ratio(num: _Q, num_name: str, den_col: str, num_scale: float = 1.0) -> _Q:
        """Σ num ÷ Σ den over num's windows; an annual num needs the whole year metered (or is zero)."""
        if not len(ok):
            return _Q(None, note="no final ok window")
        if num.value is None:
            return _Q(None, note=f"{num_name} is missing")
        if num.mask is None:
            if num.value == 0.0:
                return _Q(0.0, all_ok, "derived") if col[den_col].sum() > 0 else _Q(None, note="zero denominator")
            if not complete:
                return _Q(None, note="an annual operator figure cannot be divided by a partial year's metered energy")
            mask, top = all_ok, num.value * num_scale
        else:
            mask, top = num.mask, num.value * num_scale
        den = float(col[den_col][mask].sum())
        return _Q(top / den, mask, "derived") if den > 0 else _Q(None, note="zero denominator")

    pue = ratio(edc, "EDC", "it_kwh")
    wue = ratio(water, "WIN", "it_kwh", 1000.0)  # m3 → L
    erf = ratio(reused, "EREUSE", "total_kwh")
    ref = ratio(eres, "ERES-TOT", "total_kwh")

    pdit = _operator(info, "installed_it_power_demand_kw")
    if pdit.value is None:
        pdit = _Q(None, note=f"registry design_it_kw = {site.design_it_kw:g} kW is the design IT capacity, "
                             "not the installed IT equipment's nominal power demand")
    elif pdit.value < REPORTING_THRESHOLD_KW:
        warnings.append(f"installed IT power demand {pdit.value:g} kW is below the regulation's 500 kW threshold")

    fmt_local = _iso_local(tz)
    values: dict[str, _Q] = {
        "reporting_year": _Q(year, source="derived"),
        "period_start": _Q(fmt_local(y0), source="derived"),
        "period_end": _Q(fmt_local(y1), source="derived"),
        "window": _Q(label, source="derived"),
        "hours_in_year": _Q(hours_year, source="derived"),
        "hours_covered": _Q(hours_covered, source="dcpue"),
        "coverage": _Q(coverage, source="dcpue"),
        "complete": _Q(complete, source="dcpue"),
        "it_measurement_categories": _Q(",".join(map(str, categories)) or None, source="dcpue"),
        "data_centre_name": _registry(info, "data_centre_name", site.name),
        "operation_start": _registry(info, "operation_start", str(site.commissioned), "year only (registry)"),
        "municipality": _registry(info, "municipality", site.city),
        "latitude_deg": _registry(info, "latitude_deg", site.latitude),
        "longitude_deg": _registry(info, "longitude_deg", site.longitude),
        "installed_it_power_demand_kw": pdit,
        "total_energy_kwh": edc, "it_energy_kwh": eit,
        "onsite_renewable_energy_kwh": onsite, "renewable_go_energy_kwh": go, "renewable_ppa_energy_kwh": ppa,
        "renewable_energy_kwh": eres,
        "water_input_m3": water, "reused_energy_kwh": reused,
        "pue": pue, "wue_l_per_kwh": wue, "erf": erf, "ref": ref,
    }
    indicators = []
    for f in EU_FIELDS:
        q = values[f.key] if f.key in values else _operator(info, f.key)
        if q.value is None and not q.note and f.operator:
            q = _Q(None, note=f"dcpue does not measure it; give it as operator_info {f.key!r}")
        indicators.append({
            "section": f.section, "indicator": f.key, "symbol": f.symbol, "annex": f.annex, "name": f.name,
            "value": _json_value(q.value), "unit": f.unit, "source": q.source if q.value is not None else None,
            "coverage": _json_value(cov(q)) if f.annual else None, "note": q.note,
        })
    missing = [i["indicator"] for i in indicators if i["value"] is None and i["section"] != "reporting"]
    statuses_json = {str(k): int(v) for k, v in statuses.items()}
    return {
        "format": FORMAT,
        "regulation": REGULATION,
        "site_id": site.id,
        "reporting_year": year,
        "period": {"start": fmt_local(y0), "end": fmt_local(y1), "timezone": tz},
        "completeness": {
            "window": label, "hours_in_year": hours_year, "hours_covered": hours_covered,
            "coverage": coverage, "complete": complete, "windows_by_status": statuses_json,
            "gaps": _gaps(ok["start_ms"].to_numpy(np.int64), ok["end_ms"].to_numpy(np.int64), y0, y1, fmt_local),
        },
        "indicators": indicators,
        "not_measured": missing,
        "warnings": warnings,
    }


def eu_report_to_csv(report: Mapping[str, Any]) -> str:
    """The report's indicators as CSV (:data:`CSV_COLUMNS`, one row per indicator; null → empty cell)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in report["indicators"]:
        writer.writerow({c: _csv_cell(item.get(c)) for c in CSV_COLUMNS})
    return out.getvalue()


def _pick_window(rows: pd.DataFrame, window: str | None, y0: int, y1: int) -> str:
    if window is not None:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r} (valid: {', '.join(WINDOWS)})")
        return window
    ok = rows[(rows["status"] == Status.OK.value) & rows["final"] & (rows["start_ms"] >= y0) & (rows["end_ms"] <= y1)]
    ok_ms = (ok["end_ms"] - ok["start_ms"]).groupby(ok["window"]).sum()
    ranked = sorted(_WINDOW_ORDER, key=lambda w: (-int(ok_ms.get(w, 0)), _WINDOW_ORDER.index(w)))
    return ranked[0] if len(ok_ms) else next((w for w in _WINDOW_ORDER if (rows["window"] == w).any()), "1mo")


def _check_operator_info(info: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(info) - set(OPERATOR_KEYS))
    if unknown:
        raise ValueError(f"unknown operator_info key(s) {', '.join(map(repr, unknown))} "
                         f"(valid: {', '.join(OPERATOR_KEYS)})")
    clean: dict[str, Any] = {}
    for key, value in info.items():
        if value is None:
            continue
        f = FIELDS[key]
        if f.kind == "number":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"operator_info {key!r} must be a finite number in [{f.unit}], got {value!r}")
            if value < 0 and key not in ("temperature_set_point_c", "latitude_deg", "longitude_deg"):
                raise ValueError(f"operator_info {key!r} cannot be negative, got {value!r}")
            clean[key] = float(value)
        elif f.kind == "choice":
            if value not in DATA_CENTRE_TYPES:
                raise ValueError(f"operator_info {key!r} must be one of {', '.join(DATA_CENTRE_TYPES)}, got {value!r}")
            clean[key] = value
        else:
            clean[key] = str(value)
    return clean


def _operator(info: Mapping[str, Any], key: str) -> _Q:
    return _Q(info[key], None, "operator") if key in info else _Q(None)


def _registry(info: Mapping[str, Any], key: str, value: object, note: str = "") -> _Q:
    return _operator(info, key) if key in info else _Q(value, None, "registry", note)


def _sum_q(parts: list[_Q], hours: np.ndarray, hours_year: float) -> _Q:
    """Sum of metered and annual parts: annual non-zero parts need the metered parts to cover the year."""
    if any(p.value is None for p in parts):
        return _Q(None, note="needs all three parts: on-site, guarantees of origin, PPAs")
    masks = [p.mask for p in parts if p.mask is not None]
    annual_nonzero = any(p.mask is None and p.value != 0.0 for p in parts)
    if len(masks) > 1 and not all(np.array_equal(masks[0], m) for m in masks[1:]):
        return _Q(None, note="parts cover different windows")
    mask = masks[0] if masks else None
    if mask is not None and annual_nonzero and hours[mask].sum() < _FULL * hours_year:
        return _Q(None, note="annual operator figures cannot be added to a partial year's metered energy")
    total = float(sum(p.value for p in parts))  # type: ignore[misc]
    if annual_nonzero:
        mask = None  # an annual figure: the metered part covers the whole year
    return _Q(total, mask, "derived")


def _gaps(starts: np.ndarray, ends: np.ndarray, y0: int, y1: int,
          fmt: Callable[[int], str]) -> list[dict[str, Any]]:
    """The parts of [y0, y1) no ok window covers, as local ISO intervals with their hours."""
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    gap_start = np.maximum.accumulate(np.concatenate([[y0], ends]))  # covered up to, before each window
    gap_end = np.concatenate([starts, [y1]])
    keep = gap_end > gap_start
    return [{"start": fmt(int(a)), "end": fmt(int(b)), "hours": (int(b) - int(a)) / 3_600_000}
            for a, b in zip(gap_start[keep], gap_end[keep], strict=True)]


def _iso_local(tz: str) -> Callable[[int], str]:
    def fmt(ts_ms: int) -> str:
        return pd.Timestamp(int(ts_ms), unit="ms", tz="UTC").tz_convert(tz).isoformat(timespec="seconds")
    return fmt


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
