"""Per-site surrogate models of a cooling plant: outcomes from conditions and setpoints.

One scikit-learn ``HistGradientBoostingRegressor`` per target for the mean, and two quantile
regressors (10 % and 90 % by default) for the uncertainty band, with monotonic constraints
where the physics is unambiguous. Validation uses held-out *time blocks* (whole days by
default), never random rows: neighbouring 15-minute rows are nearly identical, so a random
split would report the model's memory, not its skill. The upper and lower quantiles are then
widened by the held-out miss (conformalised quantile regression, Romano et al. 2019) and every
model is refitted on all rows. See ``docs/cooling.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.cooling.table import CONDITIONS, COOLING_PARTS, SETPOINTS, TARGETS
from dcpue.errors import DcpueError, missing_extra

FORMAT = 1  # on-disk layout of saved models
QUANTILES = (0.1, 0.9)
REQUIRED_TARGETS = ("facility_kw", "rack_inlet_c")
TEMPERATURE_TARGETS = ("rack_inlet_c", "fw_supply_c")
# target -> {feature: +1 increasing / -1 decreasing}; only where the physics is unambiguous
MONOTONIC: dict[str, dict[str, int]] = {
    "cooling_kw": {"it_kw": 1},  # more IT heat to remove
    "facility_kw": {"it_kw": 1},  # modelled as facility − IT: losses, fans and compressors grow with load
    # warmer supply air, warmer chilled water (the coil's approach), more recirculation at load, and
    # warmer facility water (less heat captured by the liquid loop) all warm the inlets
    "rack_inlet_c": {"sp_supply_air": 1, "sp_chw_supply": 1, "sp_fw_supply": 1, "it_kw": 1},
    "fw_supply_c": {"sp_fw_supply": 1, "dry_bulb_c": 1},  # the loop floats above the dry-bulb when it must
}
UNITS = {"it_kw": "kW", "dry_bulb_c": "°C", "wet_bulb_c": "°C", "rh_pct": "%", "cooling_kw": "kW",
         "facility_kw": "kW", "rack_inlet_c": "°C", "fw_supply_c": "°C", **{f"sp_{n}": "°C" for n in SETPOINTS}}
DEFAULT_HGB = {"max_iter": 150, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20,
               "early_stopping": False}
QUANTILE_TARGETS = TEMPERATURE_TARGETS  # the constraint side gets quantile regressors; power a conformal band
NN_PERCENTILE = 99.0
REST = "other_kw"  # facility − IT − the metered cooling subsystems, when the model sums parts
FEEDBACK_HORIZON = "1h"  # how far ahead a measured outcome anchors a prediction (the recommender's step)


class TrainingRefused(DcpueError, ValueError):
    """The history cannot support a model; the message says why in plain words and what to do."""


def _sklearn() -> tuple[Any, Any, Any]:
    try:
        import sklearn
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.neighbors import NearestNeighbors
    except ImportError as exc:  # pragma: no cover - the ml extra is installed in tests
        raise missing_extra("scikit-learn", "ml") from exc
    return sklearn, HistGradientBoostingRegressor, NearestNeighbors


@cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    return ThreadpoolController()


def _threads(n_threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """Cap OpenMP threads (scikit-learn's gradient boosting) for the duration of a block."""
    if n_threads is None:
        return contextlib.nullcontext()
    return _controller().limit(limits=n_threads, user_api="openmp")


def as_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an int64 ``ts`` [ms] column taken from a DatetimeIndex when it has none."""
    if "ts" in frame.columns:
        out = frame.reset_index(drop=True)
        ts = out["ts"]
        if pd.api.types.is_datetime64_any_dtype(ts):
            out["ts"] = pd.DatetimeIndex(ts).as_unit("ms").asi8
        return out
    if isinstance(frame.index, pd.DatetimeIndex):
        index = frame.index if frame.index.tz is not None else frame.index.tz_localize("UTC")
        out = frame.reset_index(drop=True)
        out.insert(0, "ts", index.as_unit("ms").asi8)
        return out
    raise ValueError("the table needs a 'ts' column [ms, UTC] or a DatetimeIndex")


def _metrics(y: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: float) -> dict[str, float]:
    err = pred - y
    nonzero = np.abs(y) > 1e-9
    sst = float(np.sum((y - y.mean()) ** 2))
    return {
        "n": int(len(y)),
        "mae": float(np.mean(np.abs(err))),
        "bias": float(np.mean(err)),
        "mape": float(np.mean(np.abs(err[nonzero]) / np.abs(y[nonzero]))) if nonzero.any() else float("nan"),
        "relative_error": float(np.mean(np.abs(err)) / scale) if scale > 0 else float("inf"),
        "r2": float(1.0 - np.sum(err**2) / sst) if sst > 0 else float("nan"),
        "lo_coverage": float(np.mean(y >= lo)),
        "hi_coverage": float(np.mean(y <= hi)),
        # how far the held-out values reached above the calibrated upper bound at their 99th
        # percentile (0 when the bound covers 99 %): what a data-sized safety margin must add
        "hi_miss_q99": max(0.0, float(np.quantile(y - hi, 0.99))) if len(y) else float("nan"),
    }


def _inlet_spread(frame: pd.DataFrame) -> float | None:
    """Median hottest-minus-mean rack inlet [K] of the table, ``None`` without ``rack_inlet_mean_c``."""
    if "rack_inlet_mean_c" not in frame.columns or "rack_inlet_c" not in frame.columns:
        return None
    spread = (frame["rack_inlet_c"] - frame["rack_inlet_mean_c"]).dropna()
    return float(spread.median()) if len(spread) else None


def _jsonable(value: Any) -> Any:
    """Plain JSON types (tuples → lists, numpy scalars → Python), so a hash survives a save/load."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _version_of(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "version"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CoolingModel:
    """A trained per-site surrogate. Build with :meth:`train` or :meth:`load`; immutable afterwards.

    Attributes: ``site``; ``setpoints`` (names), ``features`` (conditions then ``sp_*``
    columns), ``targets``; ``metrics`` {target: {n, mae, bias, mape, relative_error, r2,
    lo_coverage, hi_coverage, hi_miss_q99}} on the held-out time blocks (``mae`` in the target's unit;
    ``relative_error`` = MAE ÷ mean of the target, for ``facility_kw`` ÷ mean of facility − IT,
    the part the setpoints can change; coverages after calibration; ``hi_miss_q99`` how far above
    the calibrated upper bound the held-out values reached at their 99th percentile, ≥ 0);
    ``training_window``
    (first, last row start [ms]); ``n_rows``; ``sklearn_version``; ``version`` (a hash of all
    metadata, deterministic for the same table, parameters and scikit-learn);
    ``metadata`` (everything saved in the JSON file).
    """

    n_threads: int | None = 1  # OpenMP threads when predicting (see train); None = all cores

    def __init__(self, meta: dict[str, Any], estimators: dict[str, dict[str, Any]], neighbours: dict[str, Any]):
        self._meta = meta
        self._est = estimators
        self._nn = neighbours
        domain = meta["domain"]
        self._center = np.asarray(domain["center"], dtype=np.float64)
        self._scale = np.asarray(domain["scale"], dtype=np.float64)
        self._lo = np.asarray(domain["min"], dtype=np.float64)
        self._hi = np.asarray(domain["max"], dtype=np.float64)
        self._tol = np.asarray(domain["tolerance"], dtype=np.float64)

    # -- metadata -------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._meta))

    @property
    def site(self) -> str:
        return str(self._meta["site"])

    @property
    def version(self) -> str:
        return str(self._meta["version"])

    @property
    def setpoints(self) -> tuple[str, ...]:
        return tuple(self._meta["setpoints"])

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._meta["features"])

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self._meta["targets"])

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {t: dict(m) for t, m in self._meta["metrics"].items()}

    @property
    def training_window(self) -> tuple[int, int]:
        return int(self._meta["window"]["first_ms"]), int(self._meta["window"]["last_ms"])

    @property
    def n_rows(self) -> int:
        return int(self._meta["n_rows"])

    @property
    def inlet_spread_k(self) -> float | None:
        """Median of the hottest rack inlet minus the mean of the rack-inlet sensors over the training
        table [K] (``rack_inlet_mean_c``), or ``None`` when the table had no such column."""
        value = self._meta.get("inlet_spread_k")
        return None if value is None else float(value)

    def feedback(self, target: str) -> dict[str, float] | None:
        """Calibration of the feedback-corrected prediction of ``target`` (a measured value now plus
        the predicted change, up to ``metadata["feedback"]["horizon"]`` ahead) on held-out days:
        ``lo``, ``hi`` band offsets [target unit], ``hi_miss_q99`` and ``n`` pairs; ``None`` when the
        model has no such calibration (older models, too few held-out pairs)."""
        value = self._meta.get("feedback", {}).get(target)
        if not value or not value.get("n") or value.get("hi") is None:
            return None
        return {k: float(v) for k, v in value.items()}

    @property
    def sklearn_version(self) -> str:
        return str(self._meta["sklearn_version"])

    def setpoint_range(self, name: str) -> tuple[float, float]:
        """Lowest and highest value of setpoint ``name`` [°C] in the training history."""
        i = self.features.index(f"sp_{name}")
        return float(self._lo[i]), float(self._hi[i])

    def supported_range(self, name: str) -> tuple[float, float]:
        """The part of :meth:`setpoint_range` the regressors can resolve [°C]: from the ``k``-th lowest to
        the ``k``-th highest training value of setpoint ``name``, ``k`` the rows a leaf must hold
        (``min_samples_leaf``). A value held for fewer rows than that at the edge of the history shares
        its leaf with the values next to it, so the model predicts it like them: at the warm end a
        hotter inlet than predicted. Models saved without the figure: :meth:`setpoint_range`."""
        support = self._meta["domain"].get("setpoint_support", {}).get(name)
        return (float(support[0]), float(support[1])) if support else self.setpoint_range(name)

    def __repr__(self) -> str:
        return (f"CoolingModel(site={self.site!r}, setpoints={self.setpoints}, targets={self.targets}, "
                f"version={self.version!r})")

    # -- training -------------------------------------------------------------------------------
    @classmethod
    def train(cls, table: pd.DataFrame, *, site: str = "", holdout_fraction: float = 0.2, random_state: int = 0,
              block: str = "1D", min_rows: int = 500, min_blocks: int = 5, min_setpoint_range_k: float = 1.0,
              setpoints: tuple[str, ...] | None = None, quantiles: tuple[float, float] = QUANTILES,
              quantile_targets: tuple[str, ...] = QUANTILE_TARGETS, hgb_params: Mapping[str, Any] | None = None,
              n_threads: int | None = 1, power_parts: bool = True) -> CoolingModel:
        """Fit the site's surrogate on ``table`` (columns of :mod:`dcpue.analytics.cooling.table`).

        Features: the conditions and the ``sp_*`` columns of ``setpoints`` (default: every
        setpoint column with data). Targets: those of ``cooling_kw``, ``facility_kw``,
        ``rack_inlet_c``, ``fw_supply_c`` with at least ``min_rows`` values (the middle two are
        required). The rows are cut into ``block``-long time blocks; ``holdout_fraction`` of them,
        drawn with ``random_state``, are held out for :attr:`metrics` and calibration, then every
        model is refitted on all rows. Targets in ``quantile_targets`` (the temperatures the
        optimizer constrains) get quantile regressors at ``quantiles``; the others a band from
        the held-out residuals. ``hgb_params`` override the regressor settings; ``n_threads``
        caps OpenMP threads while fitting (1 by default: these tables are small, and on a
        shared machine spinning threads cost more than they bring; ``None`` = all cores).

        With ``power_parts`` (the default) and subsystem columns ``cooling_kw_<subsystem>`` in the
        table (each with at least ``min_rows`` values, else the totals are learnt whole), cooling and
        facility power are each predicted as the mean of two regressors: one of the total, and the
        sum of one regressor per metered subsystem (each of its draw per kW of IT), plus for facility
        power one of the rest (facility − IT − cooling: losses, lighting). Each subsystem then answers
        to its own physics (a tower's fan cube law, a chiller's lift, an economizer's share), and the
        two ways of building the total err differently, so their mean ranks setpoints better than
        either. Held-out errors of the parts are in ``metadata["part_metrics"]``.

        Raises :class:`TrainingRefused` (a ``ValueError``) when a column is missing, when there are
        fewer than ``min_rows`` complete rows or ``min_blocks`` blocks, or when a setpoint varied
        by less than ``min_setpoint_range_k`` [K] over the history: its effect cannot be learned.
        """
        sklearn, hgb_cls, nn_cls = _sklearn()
        frame = as_table(table)
        missing = [c for c in CONDITIONS if c not in frame.columns]
        if missing:
            raise TrainingRefused(f"cannot train: the table has no {', '.join(missing)} column "
                                  f"(needed: {', '.join(CONDITIONS)})")
        if setpoints is None:
            setpoints = tuple(n for n in SETPOINTS if f"sp_{n}" in frame.columns and frame[f"sp_{n}"].notna().any())
        unknown = [n for n in setpoints if n not in SETPOINTS or f"sp_{n}" not in frame.columns]
        if unknown:
            raise TrainingRefused(f"cannot train: no column for setpoint(s) {', '.join(unknown)} "
                                  f"(valid names: {', '.join(SETPOINTS)}, columns sp_<name>)")
        if not setpoints:
            raise TrainingRefused("cannot train: the table has no setpoint column (sp_supply_air, sp_chw_supply, "
                                  "sp_fw_supply, sp_cw_supply); there is nothing to recommend")
        features = (*CONDITIONS, *(f"sp_{n}" for n in setpoints))
        frame = frame.dropna(subset=list(features)).sort_values("ts", kind="stable").reset_index(drop=True)
        if len(frame) < min_rows:
            raise TrainingRefused(f"cannot train: only {len(frame)} complete rows (conditions and setpoints "
                                  f"present); need at least {min_rows}, e.g. a week of 15-minute intervals")
        targets = tuple(t for t in TARGETS if t in frame.columns and frame[t].notna().sum() >= min_rows)
        lacking = [t for t in REQUIRED_TARGETS if t not in targets]
        if lacking:
            raise TrainingRefused(f"cannot train: fewer than {min_rows} rows with {' and '.join(lacking)}")
        for name in setpoints:
            values = frame[f"sp_{name}"].to_numpy(np.float64)
            spread = float(values.max() - values.min())
            if spread < min_setpoint_range_k:
                held = (f"always {values[0]:.1f} °C" if spread == 0
                        else f"only {values.min():.1f}–{values.max():.1f} °C")
                raise TrainingRefused(
                    f"cannot train: setpoint {name} never varied enough in the history ({held}; need a spread of "
                    f"at least {min_setpoint_range_k:g} K), so the model cannot learn its effect. Run commissioning "
                    f"step tests (change it by 1–2 K every few hours within the safe range for one to three "
                    f"weeks), or train without it (setpoints=..., dcpue cooling train --setpoints)")

        ts = frame["ts"].to_numpy(np.int64)
        block_ms = int(pd.Timedelta(block).total_seconds() * 1000)
        blocks = (ts - ts[0]) // block_ms
        unique_blocks = np.unique(blocks)
        if len(unique_blocks) < min_blocks:
            raise TrainingRefused(f"cannot train: the history spans {len(unique_blocks)} block(s) of {block}; "
                                  f"need at least {min_blocks} to hold some out for validation")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
        rng = np.random.default_rng(random_state)
        n_hold = min(max(1, int(round(holdout_fraction * len(unique_blocks)))), len(unique_blocks) - 1)
        held_blocks = np.sort(rng.choice(unique_blocks, size=n_hold, replace=False))
        hold = np.isin(blocks, held_blocks)
        params = {**DEFAULT_HGB, "random_state": int(random_state), **(hgb_params or {})}

        X = frame[list(features)].to_numpy(np.float64)
        it = frame["it_kw"].to_numpy(np.float64)

        derived = derived_features(features)
        Xd = _with_derived(X, features, derived)
        parts = tuple(c for c in COOLING_PARTS if power_parts and c in frame.columns)
        if any(frame[c].notna().sum() < min_rows for c in parts):
            parts = ()  # a sum missing a subsystem would not be the site's cooling: learn the totals whole
        part_y = {c: frame[c].to_numpy(np.float64) for c in parts}
        if parts:
            # the rest of facility power once IT and the metered cooling subsystems are taken off
            part_y[REST] = _internal_target(frame, "facility_kw") - np.sum([part_y[c] for c in parts], axis=0)
        fitted_parts: dict[tuple[str, str], Any] = {}

        def design(target: str) -> np.ndarray:
            return X if target in TEMPERATURE_TARGETS else Xd

        def constraints(target: str) -> list[int]:
            cst = [MONOTONIC.get(target, {}).get(f, 0) for f in features]
            return cst + [0] * (design(target).shape[1] - len(features))

        def fit_part(column: str, rows: np.ndarray, kind: str) -> Any:
            if (column, kind) not in fitted_parts:
                # learnt per kW of IT: a subsystem's draw is roughly proportional to the heat it moves,
                # which leaves the trees the efficiency (lift, economizer share, fan speed) to learn
                y = part_y[column] / it
                keep = rows & np.isfinite(y)
                fitted_parts[column, kind] = hgb_cls(loss="squared_error", **params).fit(Xd[keep], y[keep])
            return fitted_parts[column, kind]

        def fit(target: str, rows: np.ndarray, kind: str) -> dict[str, Any]:
            models = fit_whole(target, rows)
            if parts and target in ("cooling_kw", "facility_kw"):
                names = parts if target == "cooling_kw" else (*parts, REST)
                summed = PartsSum({c: fit_part(c, rows, kind) for c in names})
                models["mean"] = MeanOf([summed, models["mean"]])
            return models

        def fit_whole(target: str, rows: np.ndarray) -> dict[str, Any]:
            y = _internal_target(frame, target)
            keep = rows & ~np.isnan(y)
            cst = constraints(target)
            models = {"mean": hgb_cls(loss="squared_error", monotonic_cst=cst, **params)}
            if target in quantile_targets:
                models["lo"] = hgb_cls(loss="quantile", quantile=quantiles[0], monotonic_cst=cst, **params)
                models["hi"] = hgb_cls(loss="quantile", quantile=quantiles[1], monotonic_cst=cst, **params)
            for model in models.values():
                model.fit(design(target)[keep], y[keep])
            return models

        metrics: dict[str, dict[str, float]] = {}
        offsets: dict[str, dict[str, float]] = {}
        feedback: dict[str, dict[str, float]] = {}
        horizon_ms = int(pd.Timedelta(FEEDBACK_HORIZON).total_seconds() * 1000)
        with _threads(n_threads):
            for target in targets:
                models = fit(target, ~hold, "held-out")
                y_all = frame[target].to_numpy(np.float64)
                rows = hold & ~np.isnan(y_all)
                base = it[rows] if target == "facility_kw" else 0.0
                raw = {p: m.predict(design(target)[rows]) + base for p, m in models.items()}
                mean, lo, hi = raw["mean"], raw.get("lo", raw["mean"]), raw.get("hi", raw["mean"])
                y = y_all[rows]
                # one-sided conformal widening at each quantile's own level, never narrowing the band
                hi_off = max(0.0, float(np.quantile(y - hi, quantiles[1])))
                lo_off = max(0.0, float(np.quantile(lo - y, 1.0 - quantiles[0])))
                offsets[target] = {"lo": lo_off, "hi": hi_off}
                scale = float(np.mean(np.abs(y - base))) if target == "facility_kw" else float(np.mean(np.abs(y)))
                metrics[target] = _metrics(y, mean, np.minimum(lo - lo_off, mean), np.maximum(hi + hi_off, mean),
                                           scale)
                if target in TEMPERATURE_TARGETS:
                    feedback[target] = _feedback_calibration(ts[rows], blocks[rows], y, mean, horizon_ms,
                                                             quantiles)
            part_metrics = {}
            for column in (*parts, REST) if parts else ():
                y = part_y[column][hold]
                ok = ~np.isnan(y)
                pred = fitted_parts[column, "held-out"].predict(Xd[hold][ok]) * it[hold][ok]
                part_metrics[column] = _metrics(y[ok], pred, pred, pred, float(np.mean(np.abs(y[ok]))))
            estimators = {t: fit(t, np.ones(len(frame), dtype=bool), "all") for t in targets}

        # domain of experience: per-feature ranges, and nearest-neighbour distances of held-out days
        center = X.mean(axis=0)
        scale_f = np.maximum(X.std(axis=0), [_scale_floor(f, X[:, i]) for i, f in enumerate(features)])
        Z = (X - center) / scale_f
        n_cond = len(CONDITIONS)
        thresholds: dict[str, float] = {}
        for space, cols in (("full", slice(None)), ("conditions", slice(0, n_cond))):
            nn = nn_cls(n_neighbors=1).fit(Z[~hold, cols])
            dist = nn.kneighbors(Z[hold, cols])[0][:, 0]
            thresholds[space] = float(np.percentile(dist, NN_PERCENTILE))

        neighbours = {"full": nn_cls(n_neighbors=1).fit(Z), "conditions": nn_cls(n_neighbors=1).fit(Z[:, :n_cond])}
        lo_f, hi_f = X.min(axis=0), X.max(axis=0)
        leaf = max(1, int(params.get("min_samples_leaf", 20)))
        support = {}
        for name in setpoints:
            values = np.sort(X[:, features.index(f"sp_{name}")])
            k = min(leaf, len(values)) - 1
            support[name] = [float(values[k]), float(values[len(values) - 1 - k])]
        data_hash = hashlib.sha256(pd.util.hash_pandas_object(
            frame[["ts", *features, *targets, *parts]], index=False).to_numpy().tobytes()).hexdigest()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "kind": "dcpue.cooling",
            "site": site,
            "setpoints": list(setpoints),
            "features": list(features),
            "derived_features": [list(d) for d in derived],
            "targets": list(targets),
            "power_parts": list(parts),
            "window": {"first_ms": int(ts[0]), "last_ms": int(ts[-1])},
            "n_rows": int(len(frame)),
            "inlet_spread_k": _inlet_spread(frame),
            "data_sha256": data_hash,
            "validation": {"block": block, "holdout_fraction": holdout_fraction, "random_state": int(random_state),
                           "n_blocks": int(len(unique_blocks)), "held_out_blocks": int(n_hold),
                           "held_out_rows": int(hold.sum())},
            "params": {"quantiles": list(quantiles), "quantile_targets": [t for t in targets if t in quantile_targets],
                       "hgb": params, "monotonic": MONOTONIC,
                       "min_rows": min_rows, "min_setpoint_range_k": min_setpoint_range_k},
            "sklearn_version": sklearn.__version__,
            "metrics": metrics,
            "part_metrics": part_metrics,
            "calibration": offsets,
            "feedback": {"horizon": FEEDBACK_HORIZON, **feedback},
            "domain": {"min": lo_f.tolist(), "max": hi_f.tolist(), "center": center.tolist(),
                       "scale": scale_f.tolist(),
                       "tolerance": [_range_tolerance(f, lo_f[i], hi_f[i]) for i, f in enumerate(features)],
                       "nn_percentile": NN_PERCENTILE, "nn_threshold": thresholds, "setpoint_support": support},
        }
        meta = _jsonable(meta)
        meta["version"] = _version_of(meta)
        return cls(meta, estimators, neighbours)

    # -- prediction -----------------------------------------------------------------------------
    def _matrix(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        missing = [f for f in self.features if f not in frame]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)} (the model needs {', '.join(self.features)})")
        return np.column_stack([np.asarray(frame[f], dtype=np.float64).reshape(-1) for f in self.features])

    def _power_matrix(self, X: np.ndarray) -> np.ndarray:
        """``X`` with the derived features the power regressors were fitted on."""
        return _with_derived(X, self.features, [tuple(d) for d in self._meta.get("derived_features", [])])

    def _predict(self, X: np.ndarray, wanted: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """Predictions ``"<target>"``, ``"<target>_lo"``, ``"<target>_hi"`` for the parts asked (in one pass)."""
        out: dict[str, np.ndarray] = {}
        it = X[:, 0]
        Xd = self._power_matrix(X)
        with _threads(self.n_threads):
            raw_all = {t: {p: self._est[t][p].predict(X if t in TEMPERATURE_TARGETS else Xd)
                           for p in ("mean", *parts) if p in self._est[t]}
                       for t, parts in wanted.items()}
        for target, parts in wanted.items():
            base = it if target == "facility_kw" else 0.0
            raw = {p: v + base for p, v in raw_all[target].items()}
            mean = raw["mean"]
            out[target] = mean
            off = self._meta["calibration"][target]
            if "hi" in parts:
                out[f"{target}_hi"] = np.maximum(raw.get("hi", mean) + off["hi"], mean)
            if "lo" in parts:
                out[f"{target}_lo"] = np.minimum(raw.get("lo", mean) - off["lo"], mean)
        return out

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predicted ``<target>``, ``<target>_lo`` and ``<target>_hi`` for every row of ``frame``.

        ``frame`` needs the columns of :attr:`features` (others are ignored); the result has the
        same index. Units are the targets' ([kW], [°C]); the band is the calibrated 10–90 %
        quantile range by default. Rows outside the training data are still predicted: ask
        :meth:`domain_check` whether to trust them.
        """
        X = self._matrix(frame)
        pred = self._predict(X, {t: ("lo", "hi") for t in self.targets})
        columns = [c for t in self.targets for c in (t, f"{t}_lo", f"{t}_hi")]
        index = frame.index if isinstance(frame, pd.DataFrame) else None
        return pd.DataFrame({c: pred[c] for c in columns}, index=index)

    # -- domain of experience -------------------------------------------------------------------
    def _out_of_range(self, X: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(rows, len(cols)) booleans: a value outside the training range ± tolerance (or NaN)."""
        lo, hi, tol = self._lo[cols], self._hi[cols], self._tol[cols]
        values = X[:, cols]
        with np.errstate(invalid="ignore"):
            return ~((values >= lo - tol) & (values <= hi + tol))

    def _distance(self, X: np.ndarray, space: str) -> np.ndarray:
        """Standardized nearest-neighbour distance of each row to the training rows in ``space``."""
        n = len(self.features) if space == "full" else len(CONDITIONS)
        Z = (X[:, :n] - self._center[:n]) / self._scale[:n]
        return np.asarray(self._nn[space].kneighbors(Z)[0][:, 0])

    def _threshold(self, space: str) -> float:
        return float(self._meta["domain"]["nn_threshold"][space])

    def domain_check(self, conditions: Mapping[str, float] | pd.DataFrame | pd.Series) -> str | None:
        """Why ``conditions`` lie outside the training data, or ``None`` when they do not.

        ``conditions`` holds ``it_kw``, ``dry_bulb_c``, ``wet_bulb_c``, ``rh_pct`` and optionally
        setpoints (``sp_<name>`` or ``<name>``); a DataFrame is checked row by row and the first
        reason returned. Checks: each value within the training range ± a tolerance (10 % of the
        range, at least 1 K, 5 %RH or 5 % of the largest IT load; none for setpoints), then the
        standardized distance to the nearest training row against the 99th percentile of that
        distance for held-out days (setpoints included when all are given).
        """
        if isinstance(conditions, pd.DataFrame):
            rows = conditions.to_dict("records")
        elif isinstance(conditions, pd.Series):
            rows = [conditions.to_dict()]
        else:
            rows = [dict(conditions)]
        for row in rows:
            reason = self._row_reason(row)
            if reason is not None:
                return reason
        return None

    def _row_reason(self, row: Mapping[str, Any]) -> str | None:
        values: dict[str, float] = {}
        for name in self.features:
            key = name if name in row else name.removeprefix("sp_")
            if key in row and row[key] is not None:
                values[name] = float(row[key])
        missing = [c for c in CONDITIONS if c not in values or np.isnan(values[c])]
        if missing:
            return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        given = [i for i, f in enumerate(self.features) if f in values]
        X = np.full((1, len(self.features)), np.nan)
        for i in given:
            X[0, i] = values[self.features[i]]
        cols = np.asarray(given)
        bad = self._out_of_range(X, cols)[0]
        if bad.any():
            i = int(cols[np.argmax(bad)])
            f = self.features[i]
            if np.isnan(X[0, i]):
                return f"{f} is missing"
            unit = UNITS.get(f, "")
            return (f"{f} = {X[0, i]:.4g} {unit} is outside the training range {self._lo[i]:.4g}–{self._hi[i]:.4g} "
                    f"{unit}").replace("  ", " ")
        space = "full" if len(given) == len(self.features) else "conditions"
        distance = float(self._distance(X, space)[0])
        threshold = self._threshold(space)
        if distance > threshold:
            what = "conditions and setpoints" if space == "full" else "conditions"
            return (f"this combination of {what} is unlike the training data (nearest-neighbour distance "
                    f"{distance:.2f}, above {threshold:.2f}, the {NN_PERCENTILE:g}th percentile for held-out days)")
        return None

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``cooling-<site>-<version>.joblib`` (estimators) and ``.json`` (metadata) into
        ``directory`` (created if needed); returns the ``.joblib`` path. Same model, same names."""
        import joblib

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"cooling-{self.site or 'site'}-{self.version}"
        path = directory / f"{stem}.joblib"
        joblib.dump({"version": self.version, "estimators": self._est, "neighbours": self._nn}, path)
        (directory / f"{stem}.json").write_text(json.dumps(self._meta, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CoolingModel:
        """Read a model written by :meth:`save` from its ``.joblib`` or ``.json`` path.

        The metadata's version is recomputed and must match the estimators' file, so a
        hand-edited or mismatched pair is refused with ``ValueError``. joblib files are pickles:
        load only models you trust.
        """
        import joblib

        path = Path(path)
        meta_path, model_path = path.with_suffix(".json"), path.with_suffix(".joblib")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("kind") != "dcpue.cooling" or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: not a dcpue cooling model of format {FORMAT}")
        if _version_of(meta) != meta.get("version"):
            raise ValueError(f"{meta_path}: metadata does not match its version {meta.get('version')!r} "
                             "(edited or corrupted)")
        payload = joblib.load(model_path)
        if payload.get("version") != meta["version"]:
            raise ValueError(f"{model_path}: estimators are version {payload.get('version')!r}, "
                             f"metadata {meta['version']!r}")
        return cls(meta, payload["estimators"], payload["neighbours"])


class MeanOf:
    """A regressor averaging the predictions of regressors of one target fitted in different ways."""

    def __init__(self, members: list[Any]):
        self.members = members

    @property
    def n_features_in_(self) -> int:
        """Number of features the members were fitted on (scikit-learn's attribute name)."""
        return int(self.members[0].n_features_in_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The members' predictions for the rows of ``X``, averaged."""
        return np.mean([member.predict(X) for member in self.members], axis=0)


class PartsSum:
    """A regressor of a total: the sum of regressors fitted to its metered parts (name → regressor), each
    predicting its part per kW of IT (the first feature), so the sum is multiplied by it."""

    def __init__(self, parts: dict[str, Any]):
        self.parts = parts

    @property
    def n_features_in_(self) -> int:
        """Number of features the parts were fitted on (scikit-learn's attribute name)."""
        return int(next(iter(self.parts.values())).n_features_in_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The parts' predictions for the rows of ``X`` [kW], summed."""
        return np.sum([self.predict_part(name, X) for name in self.parts], axis=0)

    def predict_part(self, name: str, X: np.ndarray) -> np.ndarray:
        """One part's prediction [kW] for the rows of ``X``."""
        return self.parts[name].predict(X) * X[:, 0]


def _feedback_calibration(ts: np.ndarray, blocks: np.ndarray, y: np.ndarray, mean: np.ndarray, horizon_ms: int,
                          quantiles: tuple[float, float]) -> dict[str, float]:
    """Errors of the feedback-corrected prediction on held-out rows: a row's measured value plus the
    model's predicted change, against the value measured up to ``horizon_ms`` later in the same block.

    Returns the band offsets ``lo``/``hi`` (at ``quantiles``, ≥ 0), ``hi_miss_q99`` (how far the
    errors reached above ``hi`` at their 99th percentile) and ``n`` pairs; ``None`` without pairs.
    """
    order = np.argsort(ts, kind="stable")
    ts, blocks, y, mean = ts[order], blocks[order], y[order], mean[order]
    errors: list[np.ndarray] = []
    for lag in range(1, len(ts)):
        later, earlier = slice(lag, None), slice(None, -lag)
        pair = (blocks[later] == blocks[earlier]) & (ts[later] - ts[earlier] <= horizon_ms)
        if not pair.any():
            break  # rows are in time order: a longer lag only spans more time
        predicted = y[earlier] + mean[later] - mean[earlier]
        errors.append((y[later] - predicted)[pair])
    if not errors:
        return {"n": 0, "lo": None, "hi": None, "hi_miss_q99": None}
    err = np.concatenate(errors)
    hi = max(0.0, float(np.quantile(err, quantiles[1])))
    lo = max(0.0, float(np.quantile(-err, 1.0 - quantiles[0])))
    return {"n": int(len(err)), "lo": lo, "hi": hi, "hi_miss_q99": max(0.0, float(np.quantile(err - hi, 0.99)))}


def derived_features(features: tuple[str, ...]) -> list[tuple[str, str]]:
    """Differences the power regressors see besides the raw features, as (minuend, subtrahend) pairs:
    each setpoint minus the outdoor wet-bulb and dry-bulb, and each setpoint minus every later one. A
    plant's lifts and approaches are such differences (condenser water over the wet-bulb sets the
    towers' work, condenser over chilled water the chillers' lift, chilled water over the wet-bulb the
    economizer's share), and trees split on a difference far more easily than they build it from two
    features. The temperature targets keep the raw features only, so their monotonic constraints in
    the setpoints hold: an unconstrained difference would let a setpoint act against them."""
    setpoints = [f for f in features if f.startswith("sp_")]
    return ([(f, c) for f in setpoints for c in ("wet_bulb_c", "dry_bulb_c")]
            + [(a, b) for i, a in enumerate(setpoints) for b in setpoints[i + 1:]])


def _with_derived(X: np.ndarray, features: tuple[str, ...] | list[str], derived: list[tuple[str, str]]) -> np.ndarray:
    """``X`` with one column appended per pair of ``derived``: the first feature minus the second."""
    if not derived:
        return X
    index = {f: i for i, f in enumerate(features)}
    extra = [X[:, index[a]] - X[:, index[b]] for a, b in derived]
    return np.column_stack([X, *extra])


def _internal_target(frame: pd.DataFrame, target: str) -> np.ndarray:
    """What the regressors learn: facility power as facility − IT (IT passes through exactly)."""
    y = frame[target].to_numpy(np.float64)
    return y - frame["it_kw"].to_numpy(np.float64) if target == "facility_kw" else y


def _scale_floor(feature: str, values: np.ndarray) -> float:
    """Smallest scale used to standardize ``feature`` (a feature that hardly varied is not over-weighted)."""
    if feature == "it_kw":
        return 0.01 * float(np.max(np.abs(values)))
    if feature == "rh_pct":
        return 2.0
    return 0.5  # temperatures and setpoints [K]


def _range_tolerance(feature: str, lo: float, hi: float) -> float:
    """How far outside the training range a value may be and still count as seen."""
    if feature.startswith("sp_"):
        return 0.0  # never extrapolate a setpoint's effect
    span = 0.1 * (hi - lo)
    if feature == "it_kw":
        return max(span, 0.05 * max(abs(lo), abs(hi)))
    if feature == "rh_pct":
        return max(span, 5.0)
    return max(span, 1.0)
