"""Names, thresholds and economics of the retirement assessment; every default and its source.

The defaults are policy anchors (sources in ``docs/retirement.md``); each one can be changed.
Threshold semantics are fixed and part of the field names: ``*_below_*`` means a criterion is met
strictly below the value, ``*_above_*`` strictly above, ``*_at_least_*`` at the value or above.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

CRITERIA: tuple[str, ...] = ("low_occupancy", "small", "old", "inefficient", "scattered", "poor_benefit")
VERDICTS: tuple[str, ...] = ("retire", "consolidate", "upgrade", "keep")
# "met" = the site meets the retirement criterion (it is a problem); "unknown" = the data to decide is missing
STATUSES: tuple[str, ...] = ("met", "not_met", "unknown")

# China's statistical unit of data-center capacity: one standard rack (标准机架) = 2.5 kW of IT power (MIIT)
STANDARD_RACK_KW = 2.5
HOURS_PER_YEAR = 8760.0
# MIIT size classes (工信部等《关于数据中心建设布局的指导意见》, 2013), in standard racks:
# 超大型 ≥ 10,000; 大型 3,000 – < 10,000; 中小型 < 3,000
SIZE_CLASSES: tuple[tuple[str, float], ...] = (("hyperscale", 10_000.0), ("large", 3_000.0), ("small_medium", 0.0))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ScoreWeights(_Frozen):
    """Points each met criterion adds to the score; the score is scaled to 0–100 by their sum."""

    low_occupancy: float = Field(default=20.0, ge=0)
    small: float = Field(default=15.0, ge=0)
    old: float = Field(default=15.0, ge=0)
    inefficient: float = Field(default=25.0, ge=0)
    scattered: float = Field(default=10.0, ge=0)
    poor_benefit: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> ScoreWeights:
        if sum(getattr(self, c) for c in CRITERIA) <= 0:
            raise ValueError("at least one score weight must be > 0")
        return self


class RetirementCriteria(_Frozen):
    """Thresholds of the six retirement criteria (defaults and policy sources in ``docs/retirement.md``).

    * ``low_occupancy`` met when 上架率 [%] < ``low_occupancy_below_pct`` (50, Beijing) in every month
      of the last ``occupancy_months`` (12) months of history, or in the current figure when there is
      no monthly history and ``occupancy_history_required`` is false;
    * ``small`` met when the site's standard racks < ``small_below_racks`` (3,000: MIIT 中小型, and
      the national green-data-center bar of ≥ 3,000);
    * ``old`` met when years since commissioning or the last major refresh ≥ ``old_at_least_years``
      (10, Shanghai closure rule);
    * ``inefficient`` met when annual PUE > ``inefficient_above_pue`` (1.50, GB 40879-2021 limit value);
    * ``scattered`` met when a site outside every hub cluster lies > ``scattered_hub_km`` (50 km)
      from the nearest hub cluster **and** has fewer than ``isolation_min_sites`` − 1 other sites
      within ``isolation_km`` (DBSCAN noise, haversine);
    * ``poor_benefit`` met when revenue − cost − energy cost per rack in service and year
      < ``poor_margin_below_cny_per_rack_year`` (0 CNY); unknown without economics.
    """

    low_occupancy_below_pct: float = Field(default=50.0, gt=0, le=100)  # [%]
    occupancy_months: int = Field(default=12, ge=1, le=120)  # [months] "sustained over a period"
    occupancy_history_required: bool = False  # true: no monthly history → unknown (not the snapshot)
    standard_rack_kw: float = Field(default=STANDARD_RACK_KW, gt=0)  # [kW per standard rack]
    small_below_racks: float = Field(default=3_000.0, gt=0)  # [standard racks]
    old_at_least_years: float = Field(default=10.0, gt=0)  # [years]
    inefficient_above_pue: float = Field(default=1.50, ge=1.0)  # [–]
    target_pue: float = Field(default=1.2, ge=1.0)  # [–] Guizhou / national hub target, for the evidence
    # [months] an annual PUE observed over fewer months (``months_observed``) is unknown; 10.8 = the
    # engine's coverage threshold 0.9 × 12, so a rolling year with a few gaps still counts
    min_pue_months: float = Field(default=10.8, gt=0, le=12)
    scattered_hub_km: float = Field(default=50.0, ge=0)  # [km]
    isolation_km: float = Field(default=50.0, gt=0)  # [km] DBSCAN eps
    isolation_min_sites: int = Field(default=3, ge=2)  # DBSCAN min_samples (the site itself included)
    poor_margin_below_cny_per_rack_year: float = 0.0  # [CNY per rack in service and year]
    hub_occupancy_target_pct: float = Field(default=65.0, gt=0, le=100)  # [%] reported per cluster
    weights: ScoreWeights = ScoreWeights()


class Economics(_Frozen):
    """Fleet-wide economics; every field optional. Per-site columns of the same name in the inputs
    table win over these values where they are not NaN."""

    electricity_price_cny_per_kwh: float | None = Field(default=None, ge=0)  # [CNY/kWh]
    revenue_per_rack_cny_year: float | None = Field(default=None, ge=0)  # [CNY per rack in service and year]
    cost_per_rack_cny_year: float | None = Field(default=None, ge=0)  # [CNY per rack in service and year], non-energy


ECONOMICS_COLUMNS: tuple[str, ...] = tuple(Economics.model_fields)
