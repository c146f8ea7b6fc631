"""The feed's report formats, version 1: pydantic models that build, validate and publish them.

Every report is one JSON object: who (``site``: the platform-assigned site code and the operator's
unified social credit code), which period, the figures of the PUE engine for that period, the
data-quality self-check and, optionally, the meter registry. :func:`json_schemas` gives the JSON
Schema (draft 2020-12) of every report type; they are published in ``docs/feed/v1/`` and the
reference receiver validates against them.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = "v1"
SCHEMA_BASE_URI = "https://dcpue.example/feed/v1/"  # the $id prefix; not fetched by anyone
REPORT_TYPES = ("realtime", "hourly", "daily", "monthly")
ReportType = Literal["realtime", "hourly", "daily", "monthly"]
PeriodType = Literal["hourly", "daily", "monthly"]
CheckRule = Literal["validity", "completeness", "consistency", "timeliness"]
Grade = Literal["1", "2", "3", "beyond_limit", ""]
WindowStatus = Literal["ok", "incomplete", "meter_fault", "no_data"]

_Number = float | None  # JSON has no NaN: a figure that is not valid is null


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteRef(_Strict):
    """Who reports: the platform's site code, the operator's unified social credit code, dcpue's site id."""

    site_code: str = Field(min_length=1, max_length=64, description="assigned by the provincial platform")
    credit_code: str = Field(pattern=r"^[0-9A-HJ-NP-RTUW-Y]{18}$",
                             description="operator's unified social credit code (GB 32100-2015)")
    site_id: str = Field(min_length=1, description="dcpue's registry id of the site")
    name: str
    city: str


class Period(_Strict):
    """The reporting period [start, end) in local time with its UTC offset (ISO 8601)."""

    start: str = Field(json_schema_extra={"format": "date-time"})
    end: str = Field(json_schema_extra={"format": "date-time"})
    timezone: str = Field(description="IANA zone of the calendar (days and months)")


class QualityCheck(_Strict):
    """One data-quality rule applied before sending."""

    rule: CheckRule
    passed: bool
    value: _Number = Field(None, description="what was measured: coverage [-], deviation [-], delay [s]")
    limit: _Number = Field(None, description="the rule's threshold in the same unit")
    detail: str = ""


class Quality(_Strict):
    """The self-check: ``passed`` only when every check passed."""

    passed: bool
    checks: list[QualityCheck]


class Meter(_Strict):
    """A metering point behind the figures, with its calibration (检定) dates where the registry has them."""

    point: str
    role: str
    quantity: str
    unit: str
    serial: str | None = None
    accuracy_class: str | None = None
    calibrated: date | None = None
    calibration_due: date | None = None


class RealtimeFigures(_Strict):
    """A 15-minute window: mean powers [kW], its energies [kWh] and instantaneous PUE."""

    facility_kw: _Number = Field(description="total facility power from the grid, mean [kW]")
    it_kw: _Number = Field(description="IT power, mean [kW]")
    pue: _Number = Field(description="(facility + on-site renewable) ÷ IT; null unless status is ok")
    facility_kwh: _Number
    it_kwh: _Number
    total_kwh: _Number = Field(description="facility + on-site renewable energy [kWh]")
    coverage: float = Field(ge=0, le=1, description="share of the window with valid data")


class Energy(_Strict):
    """Energy totals of the period by role [kWh] (``total`` = facility from the grid + on-site renewable)."""

    total: _Number
    facility: _Number
    it: _Number
    cooling: _Number
    renewable: _Number
    reused_heat: _Number
    losses: _Number
    lighting: _Number


class PeriodFigures(_Strict):
    """An hour, day or month: energies by role, the ISO/IEC 30134 indicators and 上架率."""

    energy_kwh: Energy
    water_l: _Number = Field(description="site water use [L]")
    pue: _Number
    wue: _Number = Field(description="water ÷ IT energy [L/kWh]")
    ref: _Number = Field(description="renewable energy factor: on-site renewable ÷ total [-]")
    erf: _Number = Field(description="energy reuse factor: reused heat ÷ total [-]")
    cue: _Number = Field(description="carbon usage effectiveness [kgCO2/kWh]")
    grade: Grade = Field(description="GB 40879-2021 grade of the PUE")
    pue_target: float
    pue_gap: _Number = Field(description="PUE − target")
    racks_installed: int = Field(ge=0)
    racks_in_service: int = Field(ge=0)
    occupancy_pct: _Number = Field(description="上架率: racks in service ÷ installed [%]")
    coverage: float = Field(ge=0, le=1)


class _Report(_Strict):
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    report_id: str = Field(min_length=1, max_length=128,
                           description="deterministic: site code, report type and period; resends reuse it")
    site: SiteRef
    period: Period
    generated_at: str = Field(json_schema_extra={"format": "date-time"})
    status: WindowStatus
    final: bool = Field(description="the window can no longer change")
    quality: Quality
    meters: list[Meter] | None = None


class RealtimeReport(_Report):
    report_type: Literal["realtime"]
    figures: RealtimeFigures


class HourlyReport(_Report):
    report_type: Literal["hourly"]
    figures: PeriodFigures


class DailyReport(_Report):
    report_type: Literal["daily"]
    figures: PeriodFigures


class MonthlyReport(_Report):
    report_type: Literal["monthly"]
    figures: PeriodFigures


REPORT_MODELS: dict[str, type[_Report]] = {
    "realtime": RealtimeReport, "hourly": HourlyReport, "daily": DailyReport, "monthly": MonthlyReport,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every report type, by type (as published in ``docs/feed/v1/<type>.schema.json``)."""
    out = {}
    for name, model in REPORT_MODELS.items():
        schema = model.model_json_schema()
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                     "$id": f"{SCHEMA_BASE_URI}{name}.schema.json",
                     "title": f"dcpue feed {name} report, schema {SCHEMA_VERSION}", **schema}
    return out
