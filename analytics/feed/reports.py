"""Reports for the provincial online monitoring platform, built from the PUE engine's window results.

Pure: window rows (``dcpue.results`` schema) and registry sites in, report dicts out (the shapes of
:mod:`dcpue.analytics.feed.schema`). The figures are the engine's own, unrounded: a report for a
period says exactly what ``dcpue`` stored for that window. Modelled on the national key energy-user
online monitoring system (GB/T 38692-2020): real-time indicators every 15 minutes, hourly, daily and
monthly indicators, and the data-quality rules applied before sending (:class:`QualityRules`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.feed.schema import REPORT_MODELS, REPORT_TYPES, SCHEMA_VERSION
from dcpue.model import Role
from dcpue.registry import Site

# report type -> the engine's window of the same length
REPORT_WINDOWS: dict[str, str] = {"realtime": "15m", "hourly": "1h", "daily": "1d", "monthly": "1mo"}
# a report whose energies must add up from the finer reports of its period (GB/T 38692: daily vs monthly)
PARTS_OF: dict[str, str] = {"daily": "hourly", "monthly": "daily"}
# a report is on time when generated within this long after its period ended [s]
DEFAULT_ON_TIME_S: dict[str, float] = {"realtime": 900.0, "hourly": 3600.0, "daily": 6 * 3600.0,
                                       "monthly": 2 * 86400.0}
_ID_FORMATS = {"realtime": "%Y%m%dT%H%MZ", "hourly": "%Y%m%dT%HZ", "daily": "%Y%m%d", "monthly": "%Y%m"}
_METERED_ROLES = (Role.FACILITY, Role.IT, Role.COOLING, Role.LOSSES, Role.LIGHTING, Role.RENEWABLE,
                  Role.REUSED_HEAT, Role.WATER)


@dataclass(frozen=True)
class QualityRules:
    """The data-quality self-check (GB/T 38692-2020 style): completeness ≥ ``min_coverage``; the period's
    total energy within ``consistency_tolerance`` of the sum of its finer reports (hours of a day, days
    of a month); generated within ``on_time_s[type]`` [s] of the period's end."""

    min_coverage: float = 0.9
    consistency_tolerance: float = 0.05
    on_time_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ON_TIME_S))


def report_id(site_code: str, report_type: str, start_ms: int, tz: str) -> str:
    """``<site code>.<type>.<period>``: the same period always gives the same id (resends never duplicate).

    Real-time and hourly periods are named in UTC (unique across daylight-saving changes), days and
    months by their local calendar date.
    """
    stamp = pd.Timestamp(int(start_ms), unit="ms", tz="UTC")
    if report_type in ("daily", "monthly"):
        stamp = stamp.tz_convert(tz)
    return f"{site_code}.{report_type}.{stamp.strftime(_ID_FORMATS[report_type])}"


def iso_local(ts_ms: int, tz: str) -> str:
    """``ts_ms`` [UTC ms] as ISO 8601 local time with its offset, to the second."""
    return pd.Timestamp(int(ts_ms), unit="ms", tz="UTC").tz_convert(tz).isoformat(timespec="seconds")


def site_ref(site: Site) -> dict[str, str]:
    """The report's ``site`` block; raises ValueError when the registry lacks the platform's identifiers."""
    missing = [f for f in ("platform_site_code", "operator_credit_code") if not getattr(site, f)]
    if missing:
        raise ValueError(f"site {site.id!r} has no {' and no '.join(missing)} in the registry: the platform "
                         "identifies a site by both")
    return {"site_code": str(site.platform_site_code), "credit_code": str(site.operator_credit_code),
            "site_id": site.id, "name": site.name, "city": site.city}


def meters(site: Site) -> list[dict[str, Any]]:
    """The site's metering points behind the figures, with serials and calibration dates where known."""
    return [{"point": p.id, "role": p.role.value, "quantity": p.quantity.value, "unit": p.unit,
             "serial": p.meter_serial, "accuracy_class": p.accuracy_class,
             "calibrated": p.calibrated.isoformat() if p.calibrated else None,
             "calibration_due": p.calibration_due.isoformat() if p.calibration_due else None}
            for p in site.points if p.role in _METERED_ROLES]


def _num(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def _quality(report_type: str, row: Mapping[str, Any], parts_total: float | None, generated_ms: int,
             rules: QualityRules) -> dict[str, Any]:
    checks = [{"rule": "validity", "passed": row["status"] == "ok", "value": None, "limit": None,
               "detail": f"window status {row['status']}" + (f" ({row['flags']})" if row["flags"] else "")},
              {"rule": "completeness", "passed": bool(row["coverage"] >= rules.min_coverage),
               "value": float(row["coverage"]), "limit": rules.min_coverage,
               "detail": "share of the period with valid facility and IT data"}]
    if report_type in PARTS_OF:
        part = PARTS_OF[report_type]
        total = float(row["total_kwh"])
        if parts_total is None or not np.isfinite(total) or total <= 0:
            checks.append({"rule": "consistency", "passed": False, "value": None,
                           "limit": rules.consistency_tolerance,
                           "detail": f"no {part} reports or no total energy to compare with"})
        else:
            deviation = abs(parts_total - total) / total
            checks.append({"rule": "consistency", "passed": bool(deviation <= rules.consistency_tolerance),
                           "value": deviation, "limit": rules.consistency_tolerance,
                           "detail": f"Σ {part} total energy {parts_total:.6g} kWh vs {total:.6g} kWh"})
    delay_s = (generated_ms - int(row["end_ms"])) / 1000.0
    limit_s = float(rules.on_time_s.get(report_type, DEFAULT_ON_TIME_S[report_type]))
    checks.append({"rule": "timeliness", "passed": bool(0.0 <= delay_s <= limit_s), "value": delay_s,
                   "limit": limit_s, "detail": "period not over yet" if delay_s < 0 else
                   "seconds from the period's end to the report"})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def _figures(report_type: str, row: Mapping[str, Any], target_pue: float) -> dict[str, Any]:
    if report_type == "realtime":
        return {"facility_kw": _num(row["facility_kw"]), "it_kw": _num(row["it_kw"]), "pue": _num(row["pue"]),
                "facility_kwh": _num(row["facility_kwh"]), "it_kwh": _num(row["it_kwh"]),
                "total_kwh": _num(row["total_kwh"]), "coverage": float(row["coverage"])}
    energy = {"total": "total_kwh", "facility": "facility_kwh", "it": "it_kwh", "cooling": "cooling_kwh",
              "renewable": "renewable_kwh", "reused_heat": "reused_kwh", "losses": "losses_kwh",
              "lighting": "lighting_kwh"}
    occupancy = _num(row["occupancy"])
    return {"energy_kwh": {k: _num(row[c]) for k, c in energy.items()}, "water_l": _num(row["water_l"]),
            "pue": _num(row["pue"]), "wue": _num(row["wue"]), "ref": _num(row["ref"]), "erf": _num(row["erf"]),
            "cue": _num(row["cue"]), "grade": str(row["grade"]), "pue_target": float(target_pue),
            "pue_gap": _num(row["pue_gap"]), "racks_installed": int(row["racks_installed"]),
            "racks_in_service": int(row["racks_in_service"]),
            "occupancy_pct": None if occupancy is None else 100.0 * occupancy, "coverage": float(row["coverage"])}


def _parts_totals(report_type: str, windows: pd.DataFrame, parts: pd.DataFrame | None) -> list[float | None]:
    """Per window row: Σ total kWh of the finer windows inside it (None where there are none).

    Each finer window is matched to the window of its site that starts at or before it (windows of one
    length do not overlap) and kept when it also ends within it."""
    if report_type not in PARTS_OF or parts is None or parts.empty or windows.empty:
        return [None] * len(windows)
    finite = parts[np.isfinite(parts["total_kwh"].to_numpy(dtype=np.float64))]
    whole = windows[["id", "start_ms", "end_ms"]].rename(columns={"start_ms": "w_start", "end_ms": "w_end"})
    whole = whole.assign(row=np.arange(len(windows)), w_start=whole["w_start"].astype(np.int64))
    matched = pd.merge_asof(
        finite[["id", "start_ms", "end_ms", "total_kwh"]].astype({"start_ms": np.int64}).sort_values("start_ms"),
        whole.sort_values("w_start"), left_on="start_ms", right_on="w_start", by="id", direction="backward")
    inside = matched[matched["end_ms"] <= matched["w_end"]]
    sums = inside.groupby("row")["total_kwh"].sum()
    return [float(sums[i]) if i in sums.index else None for i in range(len(windows))]


def build_reports(report_type: str, windows: pd.DataFrame, sites: Mapping[str, Site], *, tz: str,
                  generated_ms: int, target_pue: float = 1.2, parts: pd.DataFrame | None = None,
                  rules: QualityRules | None = None, include_meters: bool = False,
                  target_pue_by_site: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One report per window row of ``windows`` (site scope, the report type's window length).

    ``parts`` are the finer windows (hourly for ``daily``, daily for ``monthly``) the consistency check
    adds up; ``generated_ms`` [UTC ms] is when the report is made (timeliness). Rows of sites not in
    ``sites`` raise ValueError, as do sites without a platform site code or credit code.
    """
    if report_type not in REPORT_TYPES:
        raise ValueError(f"unknown report type {report_type!r} (valid: {', '.join(REPORT_TYPES)})")
    rules = rules or QualityRules()
    model = REPORT_MODELS[report_type]
    reports = []
    totals = _parts_totals(report_type, windows, parts)
    for row, parts_total in zip(windows.to_dict("records"), totals, strict=True):
        site = sites.get(str(row["id"]))
        if site is None:
            raise ValueError(f"window of site {row['id']!r}, which the registry does not have")
        ref = site_ref(site)
        target = (target_pue_by_site or {}).get(site.id, target_pue)
        body = {
            "schema_version": SCHEMA_VERSION,
            "report_id": report_id(ref["site_code"], report_type, int(row["start_ms"]), tz),
            "report_type": report_type,
            "site": ref,
            "period": {"start": iso_local(row["start_ms"], tz), "end": iso_local(row["end_ms"], tz), "timezone": tz},
            "generated_at": iso_local(generated_ms, tz),
            "status": str(row["status"]),
            "final": bool(row["final"]),
            "figures": _figures(report_type, row, target),
            "quality": _quality(report_type, row, parts_total, generated_ms, rules),
        }
        if include_meters:
            body["meters"] = meters(site)
        reports.append(model.model_validate(body).model_dump(mode="json", exclude_none=False))
    return reports


CONTENT_KEYS = ("report_id", "report_type", "site", "period", "status", "final", "figures", "meters")


def content_digest(report: Mapping[str, Any]) -> str:
    """SHA-256 of what a report says about its period (id, site, period, status, figures, meters), leaving
    out when and how late it was made: a report regenerated later from the same windows has the same digest,
    a restated figure does not."""
    content = {k: report.get(k) for k in CONTENT_KEYS}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def flatten(report: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row of a report for CSV files: ``site_code``, ``period_start``, ``figures.energy_kwh.it`` …"""
    row: dict[str, Any] = {"report_id": report["report_id"], "report_type": report["report_type"],
                           "site_code": report["site"]["site_code"], "credit_code": report["site"]["credit_code"],
                           "period_start": report["period"]["start"], "period_end": report["period"]["end"],
                           "status": report["status"], "quality_passed": report["quality"]["passed"]}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(f"{prefix}{k}.", v)
            else:
                row[f"{prefix}{k}"] = v
    walk("", report["figures"])
    for check in report["quality"]["checks"]:
        row[f"quality.{check['rule']}"] = check["passed"]
    return row


def csv_columns(report_types: Sequence[str]) -> list[str]:
    """A stable column order for CSV files holding the given report types."""
    fixed = ["report_id", "report_type", "site_code", "credit_code", "period_start", "period_end", "status",
             "quality_passed"]
    figures = []
    if "realtime" in report_types:
        figures += ["facility_kw", "it_kw", "pue", "facility_kwh", "it_kwh", "total_kwh"]
    if any(t != "realtime" for t in report_types):
        figures += [f"energy_kwh.{k}" for k in ("total", "facility", "it", "cooling", "renewable", "reused_heat",
                                                "losses", "lighting")]
        figures += ["water_l", "pue", "wue", "ref", "erf", "cue", "grade", "pue_target", "pue_gap",
                    "racks_installed", "racks_in_service", "occupancy_pct"]
    figures.append("coverage")
    seen: list[str] = []
    for c in figures:
        if c not in seen:
            seen.append(c)
    return fixed + seen + [f"quality.{r}" for r in ("validity", "completeness", "consistency", "timeliness")]
