"""Retirement assessment of "old, small, scattered" (老旧小散) sites and a consolidation plan (issue #7).

Imported as ``dcpue.analytics.retirement``; pure and I/O-free. scikit-learn (the ``ml`` extra,
``pip install 'dcpue[ml]'``) is needed for the isolation part of the ``scattered`` criterion.

* :func:`site_inputs` — registry + rolling figures + occupancy history → one row per site;
* :func:`assess` — the six criteria (met / not_met / unknown, with evidence in plain words), a verdict
  (retire, consolidate, upgrade, keep), a 0–100 score, and the plan of moves into hub clusters with
  yearly savings in kWh, tCO₂ and CNY;
* :class:`RetirementCriteria`, :class:`Economics` — every threshold and price, frozen.

Rules, defaults and their policy sources: ``docs/retirement.md``.
"""

from dcpue.analytics.retirement.assess import SITE_COLUMNS, Assessment, assess
from dcpue.analytics.retirement.criteria import (
    CRITERIA,
    HOURS_PER_YEAR,
    SIZE_CLASSES,
    STANDARD_RACK_KW,
    STATUSES,
    VERDICTS,
    Economics,
    RetirementCriteria,
    ScoreWeights,
)
from dcpue.analytics.retirement.geo import EARTH_RADIUS_KM, distance_matrix_km, haversine_km, isolated
from dcpue.analytics.retirement.inputs import INPUT_COLUMNS, occupancy_trend, site_inputs
from dcpue.analytics.retirement.plan import CLUSTER_COLUMNS, OVERRIDE_KEYS, PLAN_COLUMNS, cluster_table

__all__ = [
    "CLUSTER_COLUMNS",
    "CRITERIA",
    "EARTH_RADIUS_KM",
    "HOURS_PER_YEAR",
    "INPUT_COLUMNS",
    "OVERRIDE_KEYS",
    "PLAN_COLUMNS",
    "SITE_COLUMNS",
    "SIZE_CLASSES",
    "STANDARD_RACK_KW",
    "STATUSES",
    "VERDICTS",
    "Assessment",
    "Economics",
    "RetirementCriteria",
    "ScoreWeights",
    "assess",
    "cluster_table",
    "distance_matrix_km",
    "haversine_km",
    "isolated",
    "occupancy_trend",
    "site_inputs",
]
