"""AI cooling setpoints: per-site surrogate models and a recommender that refuses rather than guesses.

Imported as ``dcpue.analytics.cooling``; pure and I/O-free except :meth:`CoolingModel.save` and
:meth:`CoolingModel.load`. scikit-learn comes with the ``ml`` extra (``pip install 'dcpue[ml]'``).

* :func:`readings_to_table` — dcpue readings → one row per interval (columns in ``docs/cooling.md``);
* :meth:`CoolingModel.train` — per-site regressors validated on held-out time blocks;
* :class:`Envelope` — ASHRAE inlet range with margin, W-class limit, bounds, maximum step;
* :func:`recommend` — least predicted facility power inside the envelope, or "no recommendation";
* :func:`schedule` — an hourly setpoint schedule for a plain weather and load table.
"""

from dcpue.analytics.cooling.envelope import DEFAULT_BOUNDS, DEFAULT_MAX_STEP, W_CLASSES, Envelope
from dcpue.analytics.cooling.model import CoolingModel, TrainingRefused
from dcpue.analytics.cooling.optimize import DEFAULT_IT_FAN, ItFan, Recommendation, recommend, schedule
from dcpue.analytics.cooling.table import (
    CONDITIONS,
    SETPOINT_COLUMNS,
    SETPOINTS,
    TARGETS,
    readings_to_table,
    site_setpoints,
    wet_bulb_c,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_BOUNDS",
    "DEFAULT_IT_FAN",
    "DEFAULT_MAX_STEP",
    "SETPOINTS",
    "SETPOINT_COLUMNS",
    "TARGETS",
    "W_CLASSES",
    "CoolingModel",
    "Envelope",
    "ItFan",
    "Recommendation",
    "TrainingRefused",
    "readings_to_table",
    "recommend",
    "schedule",
    "site_setpoints",
    "wet_bulb_c",
]
