"""``LearningCurveStopping``: stop a run whose learning curve cannot win."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_monitor_mode
from eecontrol.callbacks._curve_rules import (  # noqa: F401  (PREDICTION_FILE re-exported)
    PREDICTION_FILE,
    check_options,
    ensemble_fit,
    evaluate_rules,
    flatten_numeric,
    log_results,
    open_store,
    rule_evidence,
    run_horizon,
    stop_reason,
    write_prediction,
)
from eecontrol.core.checks import check_bounds, check_choice
from eecontrol.core.curves import (
    MODES,
)
from eecontrol.core.curves.forecasters import DEFAULT_FORECASTER, check_forecaster
from eecontrol.util.checks import check_store, check_study_name
from eecontrol.util.redact import redact_url

X_AXES = ("step", "check")
RULES = ("convergence", "sweep", "ensemble")


_CONFIG = (  # the options a checkpoint records, in order
    *("monitor", "mode", "x_axis", "min_delta", "threshold", "rule", "min_points", "warmup"),
    *("band", "min_r2", "horizon", "bounds", "in_run", "forecaster", "delta", "min_finished"),
    *("store", "study_name"),
)


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
        ``threshold`` (default: the forecaster's own, 0.12 for the PFN). ``min_delta=None``
        counts the curve's own noise, so noisy plateaus stop; a validation that set the
        run's best is never a stop, and a target beyond ``bounds`` is clipped to the bound
        (reaching it counts);
      - ``sweep`` (Domhan et al. 2015, needs ``store``): stop when P(value at the end >
        the best value seen by any run of the sweep) < ``threshold`` (default: the
        forecaster's own, 0.05 for the PFN; the paper's 5% for ``forecast``);
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
        self.rule = check_choice("rule", rule, RULES)
        check_options(
            min_delta=min_delta,
            threshold=threshold,
            min_points=min_points,
            warmup=warmup,
            band=band,
            min_r2=min_r2,
            horizon=horizon,
            delta=delta,
            min_finished=min_finished,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        self.forecaster = check_forecaster(forecaster)
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
        self.hparams = None if hparams is None else flatten_numeric(dict(hparams))
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
        values = {
            "bounds": None if self.bounds is None else list(self.bounds),
            "store": redact_url(self.store_url),  # no password in checkpoints
        }
        return {name: values[name] if name in values else getattr(self, name) for name in _CONFIG}

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

    @property
    def _in_run_name(self) -> str:
        """The evidence prefix of the in-run rule (``in_run`` for the ensemble)."""
        return "in_run" if self.rule == "ensemble" else self.rule

    # --- hooks ----------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        open_store(self, trainer, pl_module)

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
        horizon = run_horizon(self, trainer)
        fit = ensemble_fit(self) if self.in_run or self.log_prediction else None
        results, in_run = evaluate_rules(self, fit, horizon)
        evidence = rule_evidence(self, value, results, in_run)
        self._last = {
            k: (v if isinstance(v, str | None) else float(v)) for k, v in evidence.items()
        }
        if self.log_prediction:
            shown = results if self.in_run or in_run is None else [in_run, *results]
            log_results(pl_module, shown)
            write_prediction(self, trainer, fit, in_run)
        should_stop, reason = stop_reason(self, trainer, results, step)
        self._stop(trainer, should_stop, reason, evidence)

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
