"""The safety envelope a cooling recommendation must stay inside.

Defaults and their sources (see ``docs/cooling.md``):

* rack inlet 18–27 °C: ASHRAE TC 9.9 *Thermal Guidelines for Data Processing Environments*
  (5th ed., 2021), recommended envelope for classes A1–A4; the optimizer keeps the predicted
  upper bound of the hottest inlet a margin below the top. By default the margin is sized from
  the model: how far held-out inlets reached above the calibrated bound at their 99th percentile,
  at least ``inlet_margin_min_k`` (0.25 K, about a rack sensor's accuracy); 1 K for a model that
  does not carry that figure. ``inlet_margin_k`` fixes it instead;
* facility-water supply: the ASHRAE TC 9.9 liquid-cooling classes W17, W27, W32, W40, W45 give
  the highest facility-water supply temperature the IT design accepts [°C];
* setpoint bounds: supply air within the recommended inlet range, chilled water 5–25 °C,
  facility water 17–45 °C (the W17 … W45 span), condenser water 13–32 °C (chillers need some head;
  above 32 °C few are rated);
* at most 1 K per step on air and chilled water, 2 K on facility and condenser water.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcpue.analytics.cooling.table import SETPOINTS

W_CLASSES: dict[str, float] = {"W17": 17.0, "W27": 27.0, "W32": 32.0, "W40": 40.0, "W45": 45.0}
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "supply_air": (18.0, 27.0),
    "chw_supply": (5.0, 25.0),
    "fw_supply": (17.0, 45.0),
    "cw_supply": (13.0, 32.0),
}
DEFAULT_MAX_STEP: dict[str, float] = {"supply_air": 1.0, "chw_supply": 1.0, "fw_supply": 2.0, "cw_supply": 2.0}
FALLBACK_INLET_MARGIN_K = 1.0  # for models saved without a held-out miss figure


class Envelope(BaseModel):
    """Limits for :func:`dcpue.analytics.cooling.recommend` (frozen; temperatures [°C], steps [K]).

    ``bounds`` and ``max_step`` may name only some setpoints: the others keep their defaults.
    ``w_class`` (``"W17"`` … ``"W45"``) sets ``fw_supply_max_c`` unless it is given explicitly
    (it may then only be lower than the class allows); both ``None`` means no liquid-loop limit.
    ``inlet_margin_k`` ``None`` (the default) sizes the inlet margin from the model
    (:meth:`inlet_margin_for`); a number fixes it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    inlet_min_c: float = 18.0
    inlet_max_c: float = 27.0
    inlet_margin_k: float | None = Field(default=None, ge=0.0)
    inlet_margin_min_k: float = Field(default=0.25, ge=0.0)
    w_class: str | None = None
    fw_supply_max_c: float | None = None
    fw_margin_k: float = Field(default=0.0, ge=0.0)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    max_step: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MAX_STEP))

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, defaults in (("bounds", DEFAULT_BOUNDS), ("max_step", DEFAULT_MAX_STEP)):
            given = data.get(key) or {}
            unknown = sorted(set(given) - set(SETPOINTS))
            if unknown:
                raise ValueError(f"{key}: unknown setpoint(s) {', '.join(unknown)} (valid: {', '.join(SETPOINTS)})")
            data[key] = {**defaults, **given}
        w_class = data.get("w_class")
        if w_class is not None:
            if w_class not in W_CLASSES:
                raise ValueError(f"unknown w_class {w_class!r} (valid: {', '.join(W_CLASSES)})")
            if data.get("fw_supply_max_c") is None:
                data["fw_supply_max_c"] = W_CLASSES[w_class]
            elif data["fw_supply_max_c"] > W_CLASSES[w_class]:
                raise ValueError(f"fw_supply_max_c {data['fw_supply_max_c']} °C is above what class {w_class} "
                                 f"allows ({W_CLASSES[w_class]} °C)")
        return data

    @model_validator(mode="after")
    def _check(self) -> Envelope:
        margin = self.inlet_margin_min_k if self.inlet_margin_k is None else self.inlet_margin_k
        if not self.inlet_min_c < self.inlet_max_c - margin:
            raise ValueError(f"inlet range {self.inlet_min_c}–{self.inlet_max_c} °C leaves no room with a "
                             f"{margin} K margin")
        for name, (lo, hi) in self.bounds.items():
            if not lo <= hi:
                raise ValueError(f"bounds[{name!r}] = ({lo}, {hi}): the lower bound is above the upper")
        for name, step in self.max_step.items():
            if not step > 0:
                raise ValueError(f"max_step[{name!r}] must be positive, got {step}")
        return self

    def inlet_margin_for(self, hi_miss_k: float | None) -> float:
        """The inlet margin [K] for a model whose held-out hottest inlets reached ``hi_miss_k`` [K]
        above its calibrated upper bound at their 99th percentile (``hi_miss_q99``; ``None`` or NaN
        when the model does not carry it): ``inlet_margin_k`` when fixed, else that miss, at least
        ``inlet_margin_min_k``, or ``FALLBACK_INLET_MARGIN_K`` without the figure."""
        if self.inlet_margin_k is not None:
            return self.inlet_margin_k
        if hi_miss_k is None or hi_miss_k != hi_miss_k:
            return max(FALLBACK_INLET_MARGIN_K, self.inlet_margin_min_k)
        return max(float(hi_miss_k), self.inlet_margin_min_k)

    def inlet_limit_for(self, hi_miss_k: float | None) -> float:
        """Highest allowed predicted upper bound of the hottest rack inlet [°C]: max − margin."""
        return self.inlet_max_c - self.inlet_margin_for(hi_miss_k)

    @property
    def inlet_limit_c(self) -> float:
        """The inlet limit [°C] with a fixed margin; with a model-sized one the loosest it can be
        (max − ``inlet_margin_min_k``): use :meth:`inlet_limit_for` with the model's figure."""
        return self.inlet_max_c - (self.inlet_margin_min_k if self.inlet_margin_k is None else self.inlet_margin_k)

    @property
    def fw_limit_c(self) -> float | None:
        """Highest allowed predicted upper bound of the facility-water supply [°C], or ``None``."""
        return None if self.fw_supply_max_c is None else self.fw_supply_max_c - self.fw_margin_k
