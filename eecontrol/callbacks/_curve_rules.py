"""The work of ``LearningCurveStopping`` that is not a hook: the rules, the prediction file.

Functions of the callback's options and curve (``cb``), so that the callback module keeps
its state, hooks and decisions only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np

from eecontrol.callbacks._control import run_dir
from eecontrol.core.checks import check_range
from eecontrol.core.curves import (
    CurveFit,
    RuleResult,
    convergence_rule,
    cross_run_rule,
    fit_curve,
    in_run_rule,
    sweep_rule,
)

if TYPE_CHECKING:
    from eecontrol.callbacks.curve_stopping import LearningCurveStopping

PREDICTION_FILE = "curve_prediction.json"


def flatten_numeric(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``{"a.b": value}`` (booleans skipped)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numeric(value, f"{name}."))
        elif (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


def ensemble_fit(cb: LearningCurveStopping) -> CurveFit | None:
    """The ensemble fit (``rule="ensemble"`` only), or None."""
    y = np.asarray(cb._values, dtype=float)
    if cb.rule != "ensemble" or len(y) < max(cb.min_points, 3):
        return None
    return fit_curve(
        cb._x(),
        y,
        cb.mode,
        n_bootstrap=cb.n_bootstrap,
        seed=cb.seed,
        bounds=cb.bounds,
    )


def write_prediction(
    cb: LearningCurveStopping, trainer: pl.Trainer, fit: CurveFit | None, in_run: RuleResult | None
) -> None:
    """Writes the observed curve and the predicted curve the in-run rule decided with
    (its band, forecaster and decision), rank zero."""
    if not trainer.is_global_zero or len(cb._values) < cb.min_points:
        return
    predicted = None if in_run is None or in_run.curve is None else dict(in_run.curve)
    if predicted is not None and fit is not None and fit.ok:
        predicted["families"] = [[f.family, f.weight] for f in fit.fits]
    record: dict[str, Any] = {
        "monitor": cb.monitor,
        "x_axis": cb.x_axis,
        "rule": cb.rule,
        "forecaster": None if in_run is None else in_run.forecaster,
        "observed": {"x": cb._x(), "y": list(cb._values)},
        "predicted": predicted,
        "decision": None if in_run is None else in_run.decision,
        "probability": None if in_run is None else in_run.probability,
        "reason": "no in-run rule result" if in_run is None else in_run.reason,
    }
    path = run_dir(trainer) / PREDICTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def sweep_best(cb: LearningCurveStopping) -> float | None:
    """The best value any other run of the sweep reported so far (None: none yet)."""
    values = [
        v for r in cb._store.runs() if r.run_id != cb._run_id for v in r.values if math.isfinite(v)
    ]
    if not values:
        return None
    return max(values) if cb.mode == "max" else min(values)


def evaluate_rules(
    cb: LearningCurveStopping, fit: CurveFit | None, horizon: float | None
) -> tuple[list[RuleResult], RuleResult | None]:
    """The results of the rules that may stop, and the in-run rule's result (also
    computed with ``in_run=False`` when the prediction is logged: it is the report)."""
    results: list[RuleResult] = []
    in_run: RuleResult | None = None
    y = np.asarray(cb._values, dtype=float)
    x = cb._x()
    # the band and forecaster of the convergence and sweep rules
    forecast = {
        "band": cb.band,
        "bounds": cb.bounds,
        "forecaster": cb.forecaster,
        "n_bootstrap": cb.n_bootstrap,
        "seed": cb.seed,
    }
    if cb.in_run or cb.log_prediction:
        if horizon is None:
            results.append(
                RuleResult("no_decision", "unknown training length (no horizon)", cb._in_run_name)
            )
        elif cb.rule == "ensemble":
            results.append(
                in_run_rule(
                    x,
                    y,
                    horizon,
                    mode=cb.mode,
                    min_delta=cb.min_delta or 0.0,
                    threshold=0.05 if cb.threshold is None else cb.threshold,
                    min_points=cb.min_points,
                    band=cb.band,
                    min_r2=cb.min_r2,
                    fit=fit,
                )
            )
        elif cb.rule == "convergence":
            results.append(
                convergence_rule(
                    x,
                    y,
                    horizon,
                    mode=cb.mode,
                    min_delta=cb.min_delta,
                    threshold=cb.threshold,
                    min_points=cb.min_points,
                    **forecast,
                )
            )
        elif cb._store is not None:
            results.append(
                sweep_rule(
                    x,
                    y,
                    horizon,
                    sweep_best(cb),
                    mode=cb.mode,
                    delta=cb.threshold,
                    min_points=cb.min_points,
                    **forecast,
                )
            )
        if results:
            in_run = results[0]
            if not cb.in_run:
                results = []  # reported, but it does not stop the run
    if cb._store is not None:
        results.append(
            cross_run_rule(
                y,
                cb._store.finished(),
                cb._run_hparams,
                mode=cb.mode,
                delta=cb.delta,
                min_points=cb.min_points,
                min_finished=cb.min_finished,
                bounds=cb.bounds,
            )
        )
    return results, in_run


def log_results(pl_module: pl.LightningModule, results: list[RuleResult]) -> None:
    """Logs each rule's predicted final value, band and probability (on epoch)."""
    for r in results:
        if r.predicted_final is None:
            continue
        prefix = "curve/cross_run" if r.rule == "cross_run" else "curve"
        for key, value in (
            ("predicted_final", r.predicted_final),
            ("lower", r.lower),
            ("upper", r.upper),
            ("p_improve", r.probability),
        ):
            if value is not None and math.isfinite(value):
                pl_module.log(f"{prefix}/{key}", float(value), on_epoch=True, batch_size=1)


def open_store(
    cb: LearningCurveStopping, trainer: pl.Trainer, pl_module: pl.LightningModule
) -> None:
    if cb.store_url is None or not trainer.is_global_zero:
        return
    from eecontrol.core.curves.store import CurveStore

    cb._store = CurveStore(cb.store_url, cb.study_name, cb.mode)
    if cb._run_id is not None and cb._store.is_running(cb._run_id):
        return  # resumed: continue the same stored run
    if cb.hparams is not None:
        cb._run_hparams = dict(cb.hparams)
    else:
        cb._run_hparams = flatten_numeric(dict(getattr(pl_module, "hparams", {}) or {}))
    cb._run_id = cb._store.start_run(cb._run_hparams)
    for i, value in enumerate(cb._values):
        if math.isfinite(value):
            cb._store.report(cb._run_id, i, value, cb._steps[i])


def run_horizon(cb: LearningCurveStopping, trainer: pl.Trainer) -> float | None:
    if cb.horizon is not None:
        return cb.horizon
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 1:
        return None
    if cb.x_axis == "step":
        return float(total)
    if not cb._steps or cb._steps[-1] <= 0:
        return None
    return float(cb._checks[-1]) * float(total) / float(cb._steps[-1])


def check_options(**options: Any) -> None:
    """The numeric options' ranges (``None`` skips ``min_delta`` and ``horizon``)."""
    for name, kwargs in _RANGES.items():
        if options[name] is not None:
            check_range(name, options[name], **kwargs)


_OPEN = {"low_inclusive": False, "high_inclusive": False}
_RANGES: dict[str, dict[str, Any]] = {  # option -> check_range's bounds, in check order
    "min_delta": {"low": 0.0},
    "threshold": {"low": 0.0, "high": 1.0, **_OPEN},
    "min_points": {"low": 1, "integer": True},
    "warmup": {"low": 0.0, "high": 1.0, "high_inclusive": False},
    "band": {"low": 0.0, "high": 1.0, **_OPEN},
    "min_r2": {"low": 0.0, "high": 1.0},
    "horizon": {"low": 0.0, "low_inclusive": False},
    "delta": {"low": 0.0, "high": 1.0, **_OPEN},
    "min_finished": {"low": 2, "integer": True},
    "n_bootstrap": {"low": 1, "integer": True},
    "seed": {"low": 0, "integer": True},
}


def rule_evidence(
    cb: LearningCurveStopping,
    value: float,
    results: list[RuleResult],
    in_run: RuleResult | None,
) -> dict[str, Any]:
    """The decision's evidence: the value, the best so far and every rule's numbers."""
    evidence: dict[str, Any] = {"value": value, "best_so_far": cb.best_so_far}
    for r in ([in_run] if in_run is not None and not cb.in_run else []) + results:
        evidence.update(r.evidence())
    return evidence


def stop_reason(
    cb: LearningCurveStopping, trainer: pl.Trainer, results: list[RuleResult], step: int
) -> tuple[bool, str]:
    """Whether a rule stops the run (never during ``warmup``) and the decision's reason."""
    stopping = [r for r in results if r.stop]
    total = trainer.estimated_stepping_batches
    in_warmup = math.isfinite(total) and step < cb.warmup * float(total)
    should_stop = bool(stopping) and not in_warmup
    reason = (
        f"{stopping[0].rule.replace('_', '-')} rule: {stopping[0].reason}"
        if should_stop
        else cb._other_rank_reason
    )
    return should_stop, reason
