"""``LearningCurveStopping``: stop a run whose learning curve cannot win."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_monitor_mode, run_dir
from eecontrol.core.checks import check_bounds, check_choice, check_range
from eecontrol.core.curves import (
    MODES,
    CurveFit,
    RuleResult,
    convergence_rule,
    cross_run_rule,
    fit_curve,
    in_run_rule,
    sweep_rule,
)
from eecontrol.core.curves.forecasters import DEFAULT_FORECASTER, check_forecaster
from eecontrol.resume import check_store, check_study_name, redact_url

X_AXES = ("step", "check")
RULES = ("convergence", "sweep", "ensemble")
PREDICTION_FILE = "curve_prediction.json"


def _flatten_numeric(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``{"a.b": value}`` (booleans skipped)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_numeric(value, f"{name}."))
        elif (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


class LearningCurveStopping(ControlCallback):
    """Stops runs that cannot win: inside one run and across a sweep.

    At every validation (sanity checks skipped) the monitored metric is added to the run's
    curve, indexed by ``trainer.global_step`` (``x_axis="step"``) or by the validation
    index (``x_axis="check"``), never by epoch. Two rules from :mod:`eecontrol.core.curves`
    may stop the run:

    * in-run, chosen by ``rule``:

      - ``convergence`` (default): the forecaster (``forecaster``, default the learned
        PFN, :mod:`eecontrol.core.curves.pfn`) extrapolates the curve to the end of
        training; stop when P(beating the run's best by ``min_delta`` before the end) <
        ``threshold`` (default: the forecaster's own, 0.1 for the PFN). ``min_delta=None``
        counts the curve's own noise, so noisy plateaus stop; a validation that set the
        run's best is never a stop, and a target beyond ``bounds`` is clipped to the bound
        (reaching it counts);
      - ``sweep`` (Domhan et al. 2015, needs ``store``): stop when P(value at the end >
        the best value seen by any run of the sweep) < ``threshold`` (default: the
        forecaster's own, 0.03 for the PFN; the paper's 5% for ``forecast``);
        the run holding the sweep's best is never stopped by it;
      - ``ensemble``: the 11-family BIC ensemble with a residual bootstrap
        (:func:`~eecontrol.core.curves.fit_curve`) in the convergence question (slower,
        less accurate on real curves; kept for comparison);

    * cross-run (Baker et al. 2017, needs ``store``): a nu-SVR trained on the finished
      runs of the sweep predicts this run's result; stop when P(result beats the best
      finished run) < ``delta``.

    Each validation logs ``curve/predicted_final``, ``curve/lower``, ``curve/upper`` and
    the probabilities through ``pl_module.log``, and writes the predicted curve with its
    band to ``curve_prediction.json`` in the run directory; a stop is a decision whose
    evidence holds both rules' predicted value, band and probability. The logged, written
    and decided numbers come from one forecast: the one the in-run rule decided with (with
    ``in_run=False`` it is still computed, for the report). ``best_so_far`` is the value a
    sweep should record for a stopped run.

    Only ``trainer.fit`` builds the curve: ``trainer.validate`` and ``trainer.test`` add no
    point and decide nothing (they need no horizon, so no train loader). The horizon is
    ``trainer.estimated_stepping_batches``: ``max_steps`` alone and an ``IterableDataset``
    of unknown length work; with neither a length nor ``max_steps`` there is no horizon
    and no in-run decision.

    Example::

        trainer = L.Trainer(max_epochs=50, callbacks=[LearningCurveStopping("val/acc", "max")])

    Args:
        monitor: the logged metric.
        mode: ``max`` or ``min``.
        x_axis: ``step`` (optimizer steps) or ``check`` (validation index).
        min_delta: the improvement that counts for the in-run rule, >= 0, or None (the
            curve's noise for ``convergence``, 0 for ``ensemble``).
        threshold: in-run stop probability, in (0, 1); None: the forecaster's own
            (:class:`~eecontrol.core.curves.forecasters.RuleDefaults`; 0.05 for the
            ``ensemble`` rule).
        rule: the in-run rule: ``convergence``, ``sweep`` or ``ensemble``.
        min_points: validations before any decision (warm-up), >= 1; below the
            forecaster's own minimum (4 for ``forecast``, 3 for ``ensemble``, 1 for
            ``pfn``) the in-run rule says it is blind.
        warmup: fraction of the run's optimizer steps before any stop, in [0, 1).
        band: central mass of the logged band, in (0, 1).
        min_r2: no in-run decision while the best family explains less of the curve, in
            [0, 1].
        horizon: last position of training in ``x_axis`` units (default: the Trainer's
            ``estimated_stepping_batches``, or that many steps mapped to checks).
        bounds: the metric's range ``[low, high]`` (``[0, 1]`` for an accuracy), or None:
            predictions and bands are clipped to it, a run whose best sits at the bound
            has nothing left to gain, and no run can beat a finished run at the bound.
        in_run: use the in-run rule.
        forecaster: the forecaster of the ``convergence`` and ``sweep`` rules, a name in
            :data:`~eecontrol.core.curves.forecasters.FORECASTERS` (``forecast``,
            ``ensemble`` or ``pfn``).
        delta: cross-run stop probability, in (0, 1).
        min_finished: finished runs in the store before the cross-run rule decides, >= 2.
        store: curve-store URL or SQLite path shared by the sweep (None: no cross-run
            rule, nothing written).
        study_name: the store's study (one per sweep).
        hparams: this run's numeric hyperparameters for the store and the cross-run
            features (default: the numeric leaves of ``pl_module.hparams``).
        n_bootstrap: bootstrap draws per curve family.
        seed: seed of the bootstrap.
        strict: a missing monitor key is an error (else a warning).
        check_finite: stop when the metric is NaN or inf (else warn and skip the point).
        log_prediction: log the prediction at every validation.
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        x_axis: str = "step",
        min_delta: float | None = None,
        threshold: float | None = None,
        rule: str = "convergence",
        min_points: int = 5,
        warmup: float = 0.0,
        band: float = 0.8,
        min_r2: float = 0.5,
        horizon: float | None = None,
        bounds: Sequence[float] | None = None,
        in_run: bool = True,
        forecaster: str = DEFAULT_FORECASTER,
        delta: float = 0.05,
        min_finished: int = 5,
        store: str | None = None,
        study_name: str = "eecontrol-curves",
        hparams: Mapping[str, Any] | None = None,
        n_bootstrap: int = 100,
        seed: int = 0,
        strict: bool = True,
        check_finite: bool = True,
        log_prediction: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a non-empty metric name, got {monitor!r}.")
        self.monitor = monitor
        self.mode = check_choice("mode", mode, MODES)
        check_monitor_mode("LearningCurveStopping", monitor, self.mode)
        self.x_axis = check_choice("x_axis", x_axis, X_AXES)
        if min_delta is not None:
            check_range("min_delta", min_delta, low=0.0)
        self.rule = check_choice("rule", rule, RULES)
        if threshold is not None:
            check_range(
                "threshold", threshold, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
            )
        check_range("min_points", min_points, low=1, integer=True)
        self.forecaster = check_forecaster(forecaster)
        check_range("warmup", warmup, low=0.0, high=1.0, high_inclusive=False)
        check_range("band", band, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("min_r2", min_r2, low=0.0, high=1.0)
        if horizon is not None:
            check_range("horizon", horizon, low=0.0, low_inclusive=False)
        check_range("delta", delta, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("min_finished", min_finished, low=2, integer=True)
        check_range("n_bootstrap", n_bootstrap, low=1, integer=True)
        check_range("seed", seed, low=0, integer=True)
        if hparams is not None and not isinstance(hparams, Mapping):
            raise ValueError(f"`hparams` must be a mapping of name -> number, got {hparams!r}.")
        self.min_delta = None if min_delta is None else float(min_delta)
        self.threshold = None if threshold is None else float(threshold)
        self.min_points = int(min_points)
        self.warmup = float(warmup)
        self.band = float(band)
        self.min_r2 = float(min_r2)
        self.horizon = None if horizon is None else float(horizon)
        self.bounds = check_bounds(bounds)
        self.in_run = bool(in_run)
        self.delta = float(delta)
        self.min_finished = int(min_finished)
        self.store_url = check_store(store)
        if self.rule == "sweep" and self.in_run and self.store_url is None:
            raise ValueError(
                "`rule`='sweep' compares with the best run of the sweep and needs `store` "
                "(a curve-store URL or SQLite path shared by the sweep's runs)."
            )
        self.study_name = check_study_name(study_name)
        self.hparams = None if hparams is None else _flatten_numeric(dict(hparams))
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.strict = bool(strict)
        self.check_finite = bool(check_finite)
        self.log_prediction = bool(log_prediction)
        # progress (checkpointed)
        self._steps: list[int] = []
        self._checks: list[int] = []
        self._values: list[float] = []
        self._n_checks = 0
        self._run_id: int | None = None
        self._last: dict[str, float | str | None] = {}
        # per fit
        self._store: Any = None
        self._run_hparams: dict[str, float] = {}

    # --- configuration ------------------------------------------------------------------

    @override
    def _config(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "x_axis": self.x_axis,
            "min_delta": self.min_delta,
            "threshold": self.threshold,
            "rule": self.rule,
            "min_points": self.min_points,
            "warmup": self.warmup,
            "band": self.band,
            "min_r2": self.min_r2,
            "horizon": self.horizon,
            "bounds": None if self.bounds is None else list(self.bounds),
            "in_run": self.in_run,
            "forecaster": self.forecaster,
            "delta": self.delta,
            "min_finished": self.min_finished,
            "store": redact_url(self.store_url),  # no password in checkpoints
            "study_name": self.study_name,
        }

    @override
    def _identity(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # a database connection does not pickle; reopened at fit start
        return state

    # --- results --------------------------------------------------------------------------

    @property
    def history(self) -> dict[str, list[float] | list[int]]:
        """The curve so far: ``step``, ``check`` (1-based) and ``value`` lists."""
        return {"step": list(self._steps), "check": list(self._checks), "value": list(self._values)}

    @property
    def best_so_far(self) -> float | None:
        """The best monitored value seen (the sweep objective of a stopped run)."""
        finite = [v for v in self._values if math.isfinite(v)]
        if not finite:
            return None
        return max(finite) if self.mode == "max" else min(finite)

    @property
    def last_prediction(self) -> dict[str, float | str | None]:
        """The evidence of the latest check (both rules), as primitives."""
        return dict(self._last)

    # --- helpers --------------------------------------------------------------------------

    def _x(self) -> list[float]:
        return [float(v) for v in (self._steps if self.x_axis == "step" else self._checks)]

    def _horizon(self, trainer: pl.Trainer) -> float | None:
        if self.horizon is not None:
            return self.horizon
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            return None
        if self.x_axis == "step":
            return float(total)
        if not self._steps or self._steps[-1] <= 0:
            return None
        return float(self._checks[-1]) * float(total) / float(self._steps[-1])

    @property
    def _other_rank_reason(self) -> str:
        return f"another rank's {self.monitor} curve cannot win"

    def _missing(self, trainer: pl.Trainer) -> None:
        keys = sorted(trainer.callback_metrics)
        message = (
            f"LearningCurveStopping: monitor {self.monitor!r} was not logged. The check runs "
            f"in the callbacks' on_validation_epoch_end (validation ran this epoch), before "
            f"the LightningModule's own on_validation_epoch_end: log it with self.log in "
            f"validation_step (epoch aggregates are ready then), or set `monitor` to one of "
            f"the available metrics: {keys}."
        )
        if self.strict:
            raise ValueError(message)
        rank_zero_warn(message + " (strict=False: skipping this check)")

    def _open_store(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.store_url is None or not trainer.is_global_zero:
            return
        from eecontrol.sweep.store import CurveStore

        self._store = CurveStore(self.store_url, self.study_name, self.mode)
        if self._run_id is not None and self._store.is_running(self._run_id):
            return  # resumed: continue the same stored run
        if self.hparams is not None:
            self._run_hparams = dict(self.hparams)
        else:
            self._run_hparams = _flatten_numeric(dict(getattr(pl_module, "hparams", {}) or {}))
        self._run_id = self._store.start_run(self._run_hparams)
        for i, value in enumerate(self._values):
            if math.isfinite(value):
                self._store.report(self._run_id, i, value, self._steps[i])

    def _fit(self) -> CurveFit | None:
        """The ensemble fit (``rule="ensemble"`` only), or None."""
        y = np.asarray(self._values, dtype=float)
        if self.rule != "ensemble" or len(y) < max(self.min_points, 3):
            return None
        return fit_curve(
            self._x(),
            y,
            self.mode,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
            bounds=self.bounds,
        )

    def _write_prediction(
        self, trainer: pl.Trainer, fit: CurveFit | None, in_run: RuleResult | None
    ) -> None:
        """Writes the observed curve and the predicted curve the in-run rule decided with
        (its band, forecaster and decision), rank zero."""
        if not trainer.is_global_zero or len(self._values) < self.min_points:
            return
        predicted = None if in_run is None or in_run.curve is None else dict(in_run.curve)
        if predicted is not None and fit is not None and fit.ok:
            predicted["families"] = [[f.family, f.weight] for f in fit.fits]
        record: dict[str, Any] = {
            "monitor": self.monitor,
            "x_axis": self.x_axis,
            "rule": self.rule,
            "forecaster": None if in_run is None else in_run.forecaster,
            "observed": {"x": self._x(), "y": list(self._values)},
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

    def _sweep_best(self) -> float | None:
        """The best value any other run of the sweep reported so far (None: none yet)."""
        values = [
            v
            for r in self._store.runs()
            if r.run_id != self._run_id
            for v in r.values
            if math.isfinite(v)
        ]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    @property
    def _in_run_name(self) -> str:
        """The evidence prefix of the in-run rule (``in_run`` for the ensemble)."""
        return "in_run" if self.rule == "ensemble" else self.rule

    def _evaluate(
        self, fit: CurveFit | None, horizon: float | None
    ) -> tuple[list[RuleResult], RuleResult | None]:
        """The results of the rules that may stop, and the in-run rule's result (also
        computed with ``in_run=False`` when the prediction is logged: it is the report)."""
        results: list[RuleResult] = []
        in_run: RuleResult | None = None
        y = np.asarray(self._values, dtype=float)
        x = self._x()
        if self.in_run or self.log_prediction:
            if horizon is None:
                results.append(
                    RuleResult(
                        "no_decision", "unknown training length (no horizon)", self._in_run_name
                    )
                )
            elif self.rule == "ensemble":
                results.append(
                    in_run_rule(
                        x,
                        y,
                        horizon,
                        mode=self.mode,
                        min_delta=self.min_delta or 0.0,
                        threshold=0.05 if self.threshold is None else self.threshold,
                        min_points=self.min_points,
                        band=self.band,
                        min_r2=self.min_r2,
                        fit=fit,
                    )
                )
            elif self.rule == "convergence":
                results.append(
                    convergence_rule(
                        x,
                        y,
                        horizon,
                        mode=self.mode,
                        min_delta=self.min_delta,
                        threshold=self.threshold,
                        min_points=self.min_points,
                        band=self.band,
                        bounds=self.bounds,
                        forecaster=self.forecaster,
                        n_bootstrap=self.n_bootstrap,
                        seed=self.seed,
                    )
                )
            elif self._store is not None:
                results.append(
                    sweep_rule(
                        x,
                        y,
                        horizon,
                        self._sweep_best(),
                        mode=self.mode,
                        delta=self.threshold,
                        min_points=self.min_points,
                        band=self.band,
                        bounds=self.bounds,
                        forecaster=self.forecaster,
                        n_bootstrap=self.n_bootstrap,
                        seed=self.seed,
                    )
                )
            if results:
                in_run = results[0]
                if not self.in_run:
                    results = []  # reported, but it does not stop the run
        if self._store is not None:
            results.append(
                cross_run_rule(
                    y,
                    self._store.finished(),
                    self._run_hparams,
                    mode=self.mode,
                    delta=self.delta,
                    min_points=self.min_points,
                    min_finished=self.min_finished,
                    bounds=self.bounds,
                )
            )
        return results, in_run

    # --- hooks ----------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._open_store(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # validate()/test(): not a point of the training curve, no decision
        if self.stopped_epoch is not None:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            self._missing(trainer)
            self._stop(trainer, False, self._other_rank_reason)
            return
        value = float(metrics[self.monitor])
        self._n_checks += 1
        step = int(trainer.global_step)
        if not math.isfinite(value):
            if self.check_finite:
                self._stop(
                    trainer,
                    True,
                    f"{self.monitor} = {value} at check {self._n_checks}: the run diverged",
                    {"value": str(value), "check": self._n_checks},
                )
                return
            rank_zero_warn(
                f"LearningCurveStopping: {self.monitor} = {value} at check {self._n_checks} "
                "(check_finite=False: the point is left out of the curve)."
            )
            self._stop(trainer, False, self._other_rank_reason)
            return
        if self._steps and step <= self._steps[-1]:
            # a second validation without training in between: it replaces the point
            self._values[-1] = value
        else:
            self._steps.append(step)
            self._checks.append(self._n_checks)
            self._values.append(value)
        if self._store is not None and self._run_id is not None:
            self._store.report(self._run_id, len(self._values) - 1, value, step)
        horizon = self._horizon(trainer)
        fit = self._fit() if self.in_run or self.log_prediction else None
        results, in_run = self._evaluate(fit, horizon)
        evidence: dict[str, Any] = {"value": value, "best_so_far": self.best_so_far}
        for r in ([in_run] if in_run is not None and not self.in_run else []) + results:
            evidence.update(r.evidence())
        self._last = {
            k: (v if isinstance(v, str | None) else float(v)) for k, v in evidence.items()
        }
        if self.log_prediction:
            shown = results if self.in_run or in_run is None else [in_run, *results]
            self._log(pl_module, shown)
            self._write_prediction(trainer, fit, in_run)
        stopping = [r for r in results if r.stop]
        total = trainer.estimated_stepping_batches
        in_warmup = math.isfinite(total) and step < self.warmup * float(total)
        should_stop = bool(stopping) and not in_warmup
        reason = (
            f"{stopping[0].rule.replace('_', '-')} rule: {stopping[0].reason}"
            if should_stop
            else self._other_rank_reason
        )
        self._stop(trainer, should_stop, reason, evidence)

    def _log(self, pl_module: pl.LightningModule, results: list[RuleResult]) -> None:
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

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._store is None or self._run_id is None:
            return
        state = "stopped" if self.stopped_epoch is not None else "complete"
        self._store.finish(self._run_id, self.best_so_far, state)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._store is not None and self._run_id is not None:
            # the store must never hide the original error
            with contextlib.suppress(Exception):
                self._store.finish(self._run_id, self.best_so_far, "failed")

    # --- what the user sees ---------------------------------------------------------------

    @override
    def progress_fields(self) -> dict[str, str]:
        p = self._last.get(f"{self._in_run_name}_probability")
        return {"P(improve)": f"{p:.2f}"} if isinstance(p, float) else {}

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["LearningCurveStopping/best_so_far"] = self.best_so_far
        out["LearningCurveStopping/checks"] = len(self._values)
        name = self._in_run_name
        for key in (f"{name}_predicted_final", f"{name}_probability", "cross_run_probability"):
            if self._last.get(key) is not None:
                out[f"LearningCurveStopping/{key}"] = self._last[key]
        return out

    # --- state ----------------------------------------------------------------------------

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {
            "steps": list(self._steps),
            "checks": list(self._checks),
            "values": [float(v) for v in self._values],
            "n_checks": self._n_checks,
            "run_id": self._run_id,
            "last": dict(self._last),
        }

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self._steps = [int(v) for v in state.get("steps", [])]
        self._checks = [int(v) for v in state.get("checks", [])]
        self._values = [float(v) for v in state.get("values", [])]
        self._n_checks = int(state.get("n_checks", len(self._values)))
        self._run_id = state.get("run_id")
        self._last = dict(state.get("last") or {})
