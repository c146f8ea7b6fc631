"""Setpoint recommendations: least predicted facility power inside the safety envelope, or a refusal.

:func:`recommend` searches a grid of candidate setpoints around the current ones (within the
envelope's bounds, one ``max_step`` away at most, and inside what the history covered) with
one prediction pass, keeps the candidates whose predicted hottest rack inlet (upper bound),
coolest-case inlet and facility-water supply (upper bound) respect the envelope, and picks the
one with the least predicted facility power. It refuses — ``ok=False``, ``recommended=None``,
the reason in plain words — when the model's held-out error is too large, when the conditions
lie outside the training data, or when no candidate is feasible. :func:`schedule` applies it
hour after hour to a plain weather and load table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.cooling.envelope import Envelope
from dcpue.analytics.cooling.model import TEMPERATURE_TARGETS, CoolingModel, as_table
from dcpue.analytics.cooling.table import CONDITIONS

KEEP, CHANGE, NONE, FALLBACK, TOWARD_SAFETY = "keep", "change", "none", "fallback", "toward_safety"
_EPS = 1e-9


@dataclass(frozen=True)
class ItFan:
    """How IT power rises with the server inlet (server fans speed up, leakage grows) [-].

    IT power at mean server inlet T is ``1 + k_per_k2 · air_share · max(0, T − t0_c)²`` times its
    power at a cool inlet. The model cannot learn this from history alone — measured IT power
    already holds it and nothing measures the load without it — so it is a stated prior: by default
    +1 % at 27 °C and +7 % at 32 °C for an all-air server, in line with the ASHRAE TC 9.9 server
    power versus inlet curves (and equal to the dcpue simulator's curve). ``air_share`` is the
    share of server heat its fans carry (1 for air-cooled servers, about 0.15 for cold-plate ones).
    T is the predicted hottest rack inlet less ``offset_k``, the hottest sensor's usual lead over
    the mean server inlet; ``None`` takes the model's ``inlet_spread_k`` (learned from the rack-inlet
    sensors; 0 for a model without it). Taking the hottest inlet for T overstates the fans and
    biases the advice toward colder, costlier setpoints (safety is the inlet constraint's job).
    """

    t0_c: float = 24.0
    k_per_k2: float = 0.0011
    air_share: float = 1.0
    offset_k: float | None = None

    def offset_for(self, model: CoolingModel) -> float:
        """The hottest-to-mean inlet offset [K] to use with ``model``."""
        if self.offset_k is not None:
            return self.offset_k
        return model.inlet_spread_k or 0.0

    def factor(self, inlet_c: np.ndarray | float) -> np.ndarray:
        excess = np.maximum(np.asarray(inlet_c, dtype=np.float64) - self.t0_c, 0.0)
        return 1.0 + self.k_per_k2 * self.air_share * excess * excess


DEFAULT_IT_FAN = ItFan()


@dataclass(frozen=True)
class Recommendation:
    """One recommendation (or refusal) for one site at one time. Temperatures [°C], powers [kW].

    ``action`` is ``"change"`` (new setpoints), ``"keep"`` (the current ones are already the
    best) or ``"none"`` (refused: ``ok`` is false, ``recommended`` is ``None``). ``reason`` says
    why in plain words and starts with ``"change:"``, ``"keep:"`` or ``"no recommendation:"``.
    Predictions are for the recommended setpoints (``facility_kw_current``/``pue_current`` for
    the current ones); they are ``None`` when the model could not be trusted. ``saving_kw`` =
    current − recommended predicted facility power; ``saving_pct`` relative to current; the
    recommended figure includes the IT power change of :class:`ItFan` (``it_kw_recommended``).
    ``limits`` echoes the envelope's inlet and facility-water limits. ``toward_safety`` is set only
    when every candidate breaks a limit: the setpoints within one step that come closest (not a
    recommendation — they are still predicted outside the envelope — but the way back).
    """

    site: str
    ts_ms: int
    current: dict[str, float]
    recommended: dict[str, float] | None
    ok: bool
    action: str
    reason: str
    model_version: str
    it_kw: float | None = None
    it_kw_recommended: float | None = None
    facility_kw_current: float | None = None
    facility_kw_recommended: float | None = None
    saving_kw: float | None = None
    saving_pct: float | None = None
    pue_current: float | None = None
    predicted_pue: float | None = None
    cooling_kw_current: float | None = None
    cooling_kw_recommended: float | None = None
    rack_inlet_c: float | None = None
    rack_inlet_c_hi: float | None = None
    fw_supply_c: float | None = None
    fw_supply_c_hi: float | None = None
    limits: dict[str, float | None] = field(default_factory=dict)
    toward_safety: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {k: clean(v) for k, v in asdict(self).items()}


def _names(model: CoolingModel, current: Mapping[str, float]) -> dict[str, float]:
    """``current`` keyed by setpoint name (``supply_air`` or ``sp_supply_air`` accepted)."""
    values = {str(k).removeprefix("sp_"): float(v) for k, v in current.items()}
    missing = [n for n in model.setpoints if n not in values]
    if missing:
        raise ValueError(f"current setpoints lack {', '.join(missing)} (the model uses {', '.join(model.setpoints)})")
    return {n: values[n] for n in model.setpoints}


def _conditions(conditions: Mapping[str, float]) -> dict[str, float]:
    missing = [c for c in CONDITIONS if c not in conditions]
    if missing:
        raise ValueError(f"conditions lack {', '.join(missing)} (needed: {', '.join(CONDITIONS)})")
    return {c: float(conditions[c]) for c in CONDITIONS}


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _quality_refusal(model: CoolingModel, max_relative_error: float, max_abs_error_k: float,
                     min_r2: float | None) -> str | None:
    for target, m in model.metrics.items():
        rel = m["relative_error"]
        if not rel <= max_relative_error:
            return (f"the model's held-out error for {target} is {100 * rel:.1f} % "
                    f"(limit {100 * max_relative_error:.1f} %)")
        if target in TEMPERATURE_TARGETS and not m["mae"] <= max_abs_error_k:
            return (f"the model's held-out error for {target} is {m['mae']:.2f} K "
                    f"(limit {max_abs_error_k:.2f} K)")
        if min_r2 is not None and not m["r2"] >= min_r2:
            return (f"the model's held-out error for {target} is too large for the variation it must explain "
                    f"(R² {m['r2']:.2f} on held-out days, need {min_r2:.2f})")
    return None


def _candidate_axes(model: CoolingModel, current: dict[str, float], envelope: Envelope,
                    n_grid: int, resolution_k: float) -> tuple[list[np.ndarray], str | None]:
    """Per setpoint, the candidate values: bounds ∩ current ± max step ∩ the training range the model resolves."""
    axes: list[np.ndarray] = []
    for name in model.setpoints:
        cur = current[name]
        b_lo, b_hi = envelope.bounds[name]
        step = envelope.max_step[name]
        t_lo, t_hi = model.supported_range(name)
        lo, hi = max(b_lo, cur - step, t_lo), min(b_hi, cur + step, t_hi)
        if lo > hi:
            if cur - step > b_hi or cur + step < b_lo:
                why = (f"current {name} {_fmt(cur)} °C is more than one step ({step:g} K) from the allowed range "
                       f"{_fmt(b_lo)}–{_fmt(b_hi)} °C")
            else:
                why = (f"the history only covers {name} {_fmt(t_lo)}–{_fmt(t_hi)} °C well enough to predict, which is "
                       f"not within one step "
                       f"({step:g} K) of the current {_fmt(cur)} °C inside the allowed range "
                       f"{_fmt(b_lo)}–{_fmt(b_hi)} °C")
            return [], why
        # values on the resolution grid (operators set round numbers), clipped so rounding never leaves [lo, hi]
        k_lo, k_hi = math.ceil(lo / resolution_k - 1e-9), math.floor(hi / resolution_k + 1e-9)
        ks = np.unique(np.round(np.linspace(k_lo, k_hi, min(n_grid, k_hi - k_lo + 1)))) if k_hi >= k_lo else []
        values = np.clip(np.round(np.asarray(ks, dtype=np.float64) * resolution_k, 9), lo, hi)
        if lo <= cur <= hi:
            values = np.append(values, cur)
        if not len(values):
            return [], (f"no {name} value on the {resolution_k:g} K grid lies within one step of the current "
                        f"{_fmt(cur)} °C inside the allowed and trained range {_fmt(lo)}–{_fmt(hi)} °C")
        axes.append(np.unique(values))
    return axes, None


def recommend(model: CoolingModel, conditions: Mapping[str, float], current: Mapping[str, float],
              envelope: Envelope, *, site: str = "", ts_ms: int = 0, max_relative_error: float = 0.1,
              max_abs_error_k: float = 1.0, min_saving_pct: float = 0.01, n_grid: int = 9,
              resolution_k: float = 0.1, it_fan: ItFan | None = DEFAULT_IT_FAN,
              min_r2: float | None = 0.5, measured: Mapping[str, float] | None = None) -> Recommendation:
    """The setpoints that minimise predicted facility power within ``envelope``, or a refusal.

    ``conditions``: ``it_kw`` [kW], ``dry_bulb_c``, ``wet_bulb_c`` [°C], ``rh_pct`` [%].
    ``current``: the site's setpoints now [°C] by name (``supply_air`` or ``sp_supply_air``).
    Candidates: for each setpoint up to ``n_grid`` values on a ``resolution_k`` [K] grid (plus the
    current value) in bounds ∩ current ± ``max_step`` ∩ the range seen in training that the model
    resolves (:meth:`CoolingModel.supported_range`), all combinations (one prediction pass for all of
    them), screened by the same
    nearest-neighbour test as :meth:`CoolingModel.domain_check`. Feasible: predicted hottest
    rack inlet upper bound ≤ ``inlet_max_c`` − the margin (:meth:`Envelope.inlet_margin_for` with
    the model's held-out ``hi_miss_q99``), its mean ≥ ``inlet_min_c``,
    facility-water supply upper bound ≤ the W-class limit (when the envelope has one).

    Refuses when a target's held-out relative error exceeds ``max_relative_error`` (or a
    temperature's MAE ``max_abs_error_k`` [K], or its held-out R² is below ``min_r2``: a target
    that varies little can show a small relative error without any skill), when the conditions
    with the current setpoints
    are out of distribution, or when no candidate is feasible (naming the constraint). Keeps
    the current setpoints (``action="keep"``) when they are feasible and no candidate saves
    at least ``min_saving_pct`` [%] of facility power. Ties go to the smallest move.

    ``measured`` (optional): the outcomes measured now, at the current setpoints and these
    conditions — ``rack_inlet_c`` (the hottest sensor's mean over the last interval) and
    ``fw_supply_c`` [°C]. A measurement can only make the advice more careful: when it lies above the
    model's upper bound at the current setpoints by more than the held-out values did at their 99th
    percentile (``hi_miss_q99``) — the plant is hotter than the model knows, e.g. it
    has drifted since training (containment opened, a denser row) — each candidate's upper bound
    becomes the stricter of the model's own and the measured value plus the model's predicted
    *change* plus the band of that anchored prediction on held-out days
    (:meth:`CoolingModel.feedback`), and the reason says so. A measurement within the model's band,
    or below it (a plant as the model knows it, or a sensor reading low), leaves the advice as it was.
    """
    site = site or model.site
    cond = _conditions(conditions)
    cur = _names(model, current)
    margin = envelope.inlet_margin_for(model.metrics.get("rack_inlet_c", {}).get("hi_miss_q99"))
    inlet_limit = envelope.inlet_max_c - margin
    limits = {"inlet_max_c": envelope.inlet_max_c, "inlet_limit_c": inlet_limit, "inlet_margin_k": margin,
              "inlet_min_c": envelope.inlet_min_c, "fw_limit_c": envelope.fw_limit_c}

    def refuse(reason: str, **predictions: float | None) -> Recommendation:
        return Recommendation(site, int(ts_ms), cur, None, False, NONE, f"no recommendation: {reason}",
                              model.version, limits=limits, **predictions)

    reason = _quality_refusal(model, max_relative_error, max_abs_error_k, min_r2)
    if reason is None:
        nonfinite = [k for k, v in {**cond, **cur}.items() if not math.isfinite(v)]
        if nonfinite:
            reason = f"{', '.join(nonfinite)} {'is' if len(nonfinite) == 1 else 'are'} missing or not a number"
    if reason is None:
        ood = model.domain_check({**cond, **{f"sp_{n}": v for n, v in cur.items()}})
        if ood is not None:
            reason = f"conditions outside the training data: {ood}"
    if reason is not None:
        return refuse(reason)

    axes, why = _candidate_axes(model, cur, envelope, n_grid, resolution_k)
    grid = np.array(list(itertools.product(*axes))) if not why else np.empty((0, len(model.setpoints)))
    # row 0 is the current setpoints (not necessarily a candidate: they may lie outside the bounds)
    sp = np.vstack([np.array([[cur[n] for n in model.setpoints]]), grid])
    X = np.column_stack([np.full((len(sp), len(CONDITIONS)), [cond[c] for c in CONDITIONS]), sp])
    wanted: dict[str, tuple[str, ...]] = {"facility_kw": (), "rack_inlet_c": ("hi",)}
    if "cooling_kw" in model.targets:
        wanted["cooling_kw"] = ()
    fw_limit = envelope.fw_limit_c
    if "fw_supply_c" in model.targets:
        wanted["fw_supply_c"] = ("hi",)
    anchors = _anchors(model, measured, wanted)
    pred = _anchored(model._predict(X, wanted), anchors, measured)
    if "rack_inlet_c" in anchors and pred["rack_inlet_c_anchored"]:
        miss = max(model.metrics["rack_inlet_c"].get("hi_miss_q99", 0.0), anchors["rack_inlet_c"]["hi_miss_q99"])
        margin = envelope.inlet_margin_for(miss)
        inlet_limit = envelope.inlet_max_c - margin
        limits.update(inlet_limit_c=inlet_limit, inlet_margin_k=margin)
    it_rows = np.full(len(X), cond["it_kw"])
    if it_fan is not None:  # IT power follows the inlet: candidates draw more (or less) than now
        g = it_fan.factor(pred["rack_inlet_c"] - it_fan.offset_for(model))
        it_rows = cond["it_kw"] * g / g[0]
        X[:, 0] = it_rows
        pred = _anchored(model._predict(X, wanted), anchors, measured)

    # violations [K] of each constraint (positive = violated)
    violation = {
        "inlet_hi": pred["rack_inlet_c_hi"] - inlet_limit,
        "inlet_lo": envelope.inlet_min_c - pred["rack_inlet_c"],
        "fw": np.full(len(X), -np.inf),
    }
    if fw_limit is not None:
        if "fw_supply_c" in model.targets:
            violation["fw"] = pred["fw_supply_c_hi"] - fw_limit
        elif "fw_supply" in model.setpoints:  # no model of the loop: at least the setpoint stays below
            violation["fw"] = sp[:, model.setpoints.index("fw_supply")] - fw_limit
    worst = np.maximum.reduce(list(violation.values()))
    usable = model._distance(X, "full") <= model._threshold("full")
    usable[0] = False  # row 0 is the current setpoints themselves, not a candidate
    feasible = usable & (worst <= _EPS)

    def at(i: int) -> dict[str, float | None]:
        return {
            "rack_inlet_c": float(pred["rack_inlet_c"][i]),
            "rack_inlet_c_hi": float(pred["rack_inlet_c_hi"][i]),
            "fw_supply_c": float(pred["fw_supply_c"][i]) if "fw_supply_c" in pred else None,
            "fw_supply_c_hi": float(pred["fw_supply_c_hi"][i]) if "fw_supply_c_hi" in pred else None,
        }

    def setpoints_at(i: int) -> dict[str, float]:
        return {n: float(sp[i, j]) for j, n in enumerate(model.setpoints)}

    it_kw = cond["it_kw"]
    fac_cur = float(pred["facility_kw"][0])
    cool = pred.get("cooling_kw")
    current_part: dict[str, Any] = {
        "it_kw": it_kw, "facility_kw_current": fac_cur, "pue_current": fac_cur / it_kw if it_kw else None,
        "cooling_kw_current": float(cool[0]) if cool is not None else None}
    if why:
        return refuse(why, **current_part, **at(0))
    if not feasible.any():
        if not usable.any():
            return refuse("every candidate within one step lies outside the combinations of conditions and "
                          "setpoints seen in training", **current_part, **at(0))
        closest = int(np.argmin(np.where(usable, worst, np.inf)))
        text = _infeasible_reason(envelope, inlet_limit, pred, usable, violation)
        text += (f"; the closest within one step is {_describe(setpoints_at(closest))} "
                 f"(predicted hottest inlet upper bound {_fmt(pred['rack_inlet_c_hi'][closest])} °C)")
        return refuse(text, toward_safety=setpoints_at(closest), **current_part, **at(0))

    # least facility power; candidates within min_saving_pct of the best count as equal and the
    # smallest normalised move among them wins (setpoints the model finds no use for stay put)
    steps = np.array([envelope.max_step[n] for n in model.setpoints])
    move = np.abs(sp - sp[0]).dot(1.0 / steps)
    facility = np.where(feasible, pred["facility_kw"], np.inf)
    tolerance = min_saving_pct / 100.0 * abs(fac_cur)
    near = np.flatnonzero(facility <= facility.min() + tolerance)
    best = int(near[np.argmin(move[near])])
    current_ok = bool(np.any(feasible & (move < _EPS)))
    saving = fac_cur - float(pred["facility_kw"][best])
    if current_ok and (move[best] < _EPS or saving < tolerance):
        best, saving, action = 0, 0.0, KEEP
    else:
        action = CHANGE
    chosen = setpoints_at(best)
    fac_rec = float(pred["facility_kw"][best])
    preds = at(best)
    inlet = (f"hottest rack inlet {_fmt(pred['rack_inlet_c'][best])} °C, upper bound "
             f"{_fmt(pred['rack_inlet_c_hi'][best])} °C ≤ {_fmt(inlet_limit)} °C")
    if fw_limit is not None and "fw_supply_c_hi" in pred:
        inlet += f"; facility water upper bound {_fmt(pred['fw_supply_c_hi'][best])} °C ≤ {_fmt(fw_limit)} °C"
    if action == KEEP:
        text = (f"keep: the current setpoints are already the best found (no candidate within one step saves "
                f"{min_saving_pct:g} % or more); {inlet}")
    else:
        moves = ", ".join(f"{'raise' if chosen[n] > cur[n] else 'lower'} {n} {_fmt(cur[n])} → {_fmt(chosen[n])} °C"
                          for n in model.setpoints if abs(chosen[n] - cur[n]) > _EPS)
        why_now = "" if current_ok else f" ({_current_problem(model, envelope, inlet_limit, cur, pred, violation)})"
        text = (f"change: {moves}{why_now}; predicted facility power {fac_rec:,.1f} kW, "
                f"{'saving' if saving >= 0 else 'costing'} {abs(saving):,.1f} kW "
                f"({100 * abs(saving) / fac_cur:.2f} %); {inlet}")
    held = [t for t in anchors if pred[f"{t}_anchored"] and measured is not None]
    if held:
        text += "; " + ", ".join(f"held to the measured {_ANCHOR_WORDS[t]} {_fmt(float(measured[t]))} °C "
                                 f"(hotter than the model expects)" for t in held)
    it_rec = float(it_rows[best])
    return Recommendation(
        site, int(ts_ms), cur, chosen, True, action, text, model.version, it_kw_recommended=it_rec,
        facility_kw_recommended=fac_rec, saving_kw=saving, saving_pct=100.0 * saving / fac_cur if fac_cur else None,
        predicted_pue=fac_rec / it_rec if it_rec else None,
        cooling_kw_recommended=float(cool[best]) if cool is not None else None,
        limits=limits, **current_part, **preds,
    )


_ANCHOR_WORDS = {"rack_inlet_c": "hottest rack inlet", "fw_supply_c": "facility-water supply"}


def _anchors(model: CoolingModel, measured: Mapping[str, float] | None,
             wanted: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """The targets a measurement may tighten, with their feedback calibration: measured (finite),
    predicted in this pass, and calibrated."""
    out: dict[str, dict[str, float]] = {}
    for target in TEMPERATURE_TARGETS:
        value = None if measured is None else measured.get(target)
        calibration = model.feedback(target)
        if value is not None and calibration is not None and target in wanted and math.isfinite(float(value)):
            # a measurement counts as evidence once it exceeds the band by more than 99 % of held-out values did
            out[target] = {**calibration, "trigger_k": float(model.metrics[target].get("hi_miss_q99") or 0.0)}
    return out


def _anchored(pred: dict[str, Any], anchors: Mapping[str, Mapping[str, float]],
              measured: Mapping[str, float] | None) -> dict[str, Any]:
    """``pred`` where a target's measurement lies above the model's upper bound at the current
    setpoints (row 0) by more than ``trigger_k``: its prediction and upper bound become the stricter
    of the model's own and the measurement's (measured value + predicted change, + the feedback
    band); ``"<target>_anchored"`` says whether that happened."""
    for target in TEMPERATURE_TARGETS:
        pred[f"{target}_anchored"] = False
    if measured is None:
        return pred
    for target, calibration in anchors.items():
        value = float(measured[target])
        if not value > pred[f"{target}_hi"][0] + calibration["trigger_k"] + _EPS:
            continue  # within what held-out days reached above the model's band: no sign the plant changed
        corrected = pred[target] + (value - pred[target][0])
        pred[f"{target}_anchored"] = True
        pred[target] = np.maximum(pred[target], corrected)
        pred[f"{target}_hi"] = np.maximum(pred[f"{target}_hi"], corrected + calibration["hi"])
    return pred


def _describe(setpoints: Mapping[str, float]) -> str:
    return ", ".join(f"{n} {_fmt(v)} °C" for n, v in setpoints.items())


def _current_problem(model: CoolingModel, envelope: Envelope, inlet_limit: float, cur: dict[str, float],
                     pred: dict[str, np.ndarray], violation: dict[str, np.ndarray]) -> str:
    """Why the current setpoints are not an acceptable answer themselves."""
    if violation["inlet_hi"][0] > _EPS:
        return (f"at the current setpoints the hottest rack inlet's upper bound is predicted at "
                f"{_fmt(pred['rack_inlet_c_hi'][0])} °C, above {_fmt(inlet_limit)} °C")
    if violation["inlet_lo"][0] > _EPS:
        return (f"at the current setpoints the hottest rack inlet is predicted at {_fmt(pred['rack_inlet_c'][0])} °C, "
                f"below {_fmt(envelope.inlet_min_c)} °C")
    if violation["fw"][0] > _EPS:
        return f"at the current setpoints the facility water is predicted above {_fmt(envelope.fw_limit_c or 0)} °C"
    outside = [n for n in model.setpoints
               if not envelope.bounds[n][0] - _EPS <= cur[n] <= envelope.bounds[n][1] + _EPS]
    if outside:
        return f"current {', '.join(outside)} outside the allowed bounds"
    return "the current setpoints are unlike the training data at these conditions"


def _infeasible_reason(envelope: Envelope, inlet_limit: float, pred: dict[str, np.ndarray], usable: np.ndarray,
                       violation: dict[str, np.ndarray]) -> str:
    """Which constraint rules out every usable candidate, with the best value any of them reaches."""
    ok = {name: usable & (v <= _EPS) for name, v in violation.items()}
    if not ok["inlet_hi"].any():
        best = float(np.min(pred["rack_inlet_c_hi"][usable]))
        return (f"no candidate setpoints within one step keep the hottest rack inlet's predicted upper bound at or "
                f"below {_fmt(inlet_limit)} °C (inlet_max {_fmt(envelope.inlet_max_c)} °C − margin "
                f"{envelope.inlet_max_c - inlet_limit:.2g} K); the lowest reachable is {_fmt(best)} °C")
    if not ok["inlet_lo"].any():
        best = float(np.max(pred["rack_inlet_c"][usable]))
        return (f"no candidate setpoints within one step keep the hottest rack inlet at or above "
                f"{_fmt(envelope.inlet_min_c)} °C; the highest reachable is {_fmt(best)} °C")
    if not ok["fw"].any():
        text = (f"no candidate setpoints within one step keep the facility-water supply's predicted upper bound at "
                f"or below {_fmt(envelope.fw_limit_c or 0)} °C")
        if "fw_supply_c_hi" in pred:
            text += f"; the lowest reachable is {_fmt(float(np.min(pred['fw_supply_c_hi'][usable])))} °C"
        return text
    return "no candidate setpoints within one step meet the rack-inlet and facility-water limits together"


def schedule(model: CoolingModel, hourly: pd.DataFrame, envelope: Envelope, start: Mapping[str, float],
             **options: Any) -> pd.DataFrame:
    """An hourly setpoint schedule: :func:`recommend` applied hour after hour from ``start``.

    ``hourly``: columns ``ts`` [ms] (or a DatetimeIndex), ``dry_bulb_c``, ``wet_bulb_c`` [°C],
    ``rh_pct`` [%], ``it_kw`` [kW] (the IT power with the plant at ``start``: with ``it_fan`` the
    IT power at other setpoints follows the predicted inlet), one row per hour in time order. Each
    hour starts from the
    previous hour's setpoints, so ``max_step`` holds between hours. When an hour is refused because
    every candidate breaks a limit, the setpoints take the refusal's ``toward_safety`` step
    (action ``toward_safety``); when it is refused for any other reason they move back toward
    ``start`` (the site's own fixed setpoints) by at most one step (action ``fallback``): without
    a trusted model the plant returns to what it ran before. ``options`` go to :func:`recommend`.

    Returns one row per hour: ``ts``, ``sp_<name>`` (the setpoints applied), ``ok``, ``action``
    (change, keep, toward_safety or fallback), ``reason``, and, where ``ok``: predicted ``facility_kw`` and
    ``facility_kw_start`` (with ``start`` held fixed), ``saving_kw``, ``saving_pct``, ``it_kw``, ``pue``,
    ``cooling_kw``, ``rack_inlet_c``, ``rack_inlet_c_hi``, ``fw_supply_c``, ``fw_supply_c_hi``
    (NaN where refused or not modelled).
    """
    frame = as_table(hourly)
    start_sp = _names(model, start)
    it_fan: ItFan | None = options.get("it_fan", DEFAULT_IT_FAN)
    names = [f"sp_{n}" for n in model.setpoints]
    current = dict(start_sp)
    rows: list[dict[str, Any]] = []
    for rec_in in frame.to_dict("records"):
        cond = _conditions(rec_in)
        cond["it_kw"] = float(_it_at(model, pd.DataFrame([cond]), start_sp, pd.DataFrame([current]), it_fan)[0])
        rec = recommend(model, cond, current, envelope, site=model.site, ts_ms=int(rec_in["ts"]), **options)
        if rec.ok and rec.recommended is not None:
            applied, action = rec.recommended, rec.action
        elif rec.toward_safety is not None:
            applied, action = rec.toward_safety, TOWARD_SAFETY
        else:
            applied = {n: float(np.clip(start_sp[n], current[n] - envelope.max_step[n],
                                         current[n] + envelope.max_step[n])) for n in model.setpoints}
            action = FALLBACK
        rows.append({"ts": int(rec_in["ts"]), **{f"sp_{n}": v for n, v in applied.items()}, "ok": rec.ok,
                     "action": action, "reason": rec.reason})
        current = applied
    out = pd.DataFrame(rows, columns=["ts", *names, "ok", "action", "reason"])
    if out.empty:
        return out
    cond_all = frame[list(CONDITIONS)].reset_index(drop=True)
    it_applied = _it_at(model, cond_all, start_sp, out[names].rename(columns=lambda c: c.removeprefix("sp_")),
                        it_fan)
    pred = model.predict(pd.concat([cond_all.assign(it_kw=it_applied), out[names]], axis=1))
    base = model.predict(cond_all.assign(**{f"sp_{n}": v for n, v in start_sp.items()}))["facility_kw"].to_numpy()
    ok = out["ok"].to_numpy(bool)

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(ok, values, np.nan)

    facility = pred["facility_kw"].to_numpy()
    out["facility_kw"] = masked(facility)
    out["facility_kw_start"] = masked(base)
    out["saving_kw"] = masked(base - facility)
    out["saving_pct"] = masked(100.0 * (base - facility) / base)
    out["it_kw"] = masked(it_applied)
    out["pue"] = masked(facility / it_applied)
    for col in ("cooling_kw", "rack_inlet_c", "rack_inlet_c_hi", "fw_supply_c", "fw_supply_c_hi"):
        out[col] = masked(pred[col].to_numpy()) if col in pred.columns else np.nan
    return out


def _it_at(model: CoolingModel, conditions: pd.DataFrame, reference: Mapping[str, float], setpoints: pd.DataFrame,
           it_fan: ItFan | None) -> np.ndarray:
    """IT power [kW] at ``setpoints`` (rows) when ``conditions["it_kw"]`` is drawn at ``reference``."""
    it = conditions["it_kw"].to_numpy(np.float64)
    if it_fan is None:
        return it
    n = len(conditions)
    ref = np.column_stack([conditions[list(CONDITIONS)].to_numpy(np.float64),
                           np.tile([reference[s] for s in model.setpoints], (n, 1))])
    new = ref.copy()
    new[:, len(CONDITIONS):] = setpoints[list(model.setpoints)].to_numpy(np.float64)
    inlet = model._predict(np.vstack([ref, new]), {"rack_inlet_c": ()})["rack_inlet_c"]
    g = it_fan.factor(inlet - it_fan.offset_for(model))
    return it * g[n:] / g[:n]
