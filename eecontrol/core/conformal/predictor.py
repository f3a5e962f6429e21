"""``ConformalPredictor``: conformal inference from the candidates of one run, after training.

Lightning-free: it needs the run's record (``holdout.pt``, or
``ConformalEarlyStopping.record()``), the candidate files and a module with the candidates'
architecture, e.g.::

    predictor = ConformalPredictor.from_run_dir(run_dir, model)
    sets = predictor.predict_set(x_test, alpha=0.1)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eecontrol.core.checks import check_choice, check_range
from eecontrol.core.conformal.candidates import load_candidate_states, read_record
from eecontrol.core.conformal.classification import (
    ces_classification_p_values,
    prediction_sets,
    split_classification_p_values,
)
from eecontrol.core.conformal.cqr import (
    ces_quantile_intervals,
    check_quantile_levels,
    split_quantile_intervals,
)
from eecontrol.core.conformal.intervals import (
    RegressionIntervals,
    ces_regression_intervals,
    split_regression_intervals,
)
from eecontrol.core.conformal.messages import alpha_message, class_counts_message
from eecontrol.core.conformal.outliers import ces_outlier_p_values, split_outlier_p_values
from eecontrol.core.conformal.outputs import CandidateOutputs
from eecontrol.core.conformal.selection import (
    METHODS,
    TASKS,
    holdout_losses,
    naive_corrected_alpha,
    quantile_losses,
    split_indices,
)


class ConformalPredictor:
    """Conformal inference from the candidates of one run: CES and its baselines.

    Args:
        model: a module with the candidates' architecture (weights are loaded per candidate).
        record: :meth:`ConformalEarlyStopping.record` output (or ``holdout.pt`` of a run).
        method: ``ces`` (the paper), or a baseline: ``naive`` (the model with the smallest
            hold-out loss, calibrated on the same hold-out set: not valid in theory),
            ``naive_theory`` (``naive`` at the paper's corrected level, valid and
            conservative; it changes the level of sets and intervals, not p-values),
            ``data_splitting`` (select on half of the hold-out set, calibrate on the other
            half; the paper's benchmark trains a separate model, see
            ``benchmarks/ces.py``), ``full`` (the last candidate, calibrated on the hold-out
            set).
        split_seed: seed of the data-splitting halves.
        checkpoint_batch: candidates evaluated together through ``torch.func.vmap``.
        root: the directory the record's relative candidate paths refer to (default: the
            record's ``root``; :meth:`from_run_dir` passes the directory of ``holdout.pt``).
    """

    def __init__(
        self,
        model: nn.Module,
        record: dict[str, Any],
        method: str = "ces",
        split_seed: int = 0,
        checkpoint_batch: int = 16,
        root: str | Path | None = None,
    ) -> None:
        self.method = check_choice("method", method, METHODS)
        check_range("checkpoint_batch", checkpoint_batch, low=1, integer=True)
        self.task = check_choice("task", record["task"], TASKS)
        self.record = record
        self.holdout = record["outputs"].to(torch.float64)  # (T, n, ...)
        self.targets = record.get("targets")
        self.wrapper = CandidateOutputs(model, self.task)
        self.split_seed = split_seed
        self.checkpoint_batch = int(checkpoint_batch)
        base = root if root is not None else record.get("root")
        self.root = None if base is None else Path(base)
        self.quantiles = check_quantile_levels(list(record.get("quantiles", (0.05, 0.95))))
        n = self.holdout.shape[1]
        g = torch.Generator().manual_seed(int(record.get("aps_seed", 0)))
        self.holdout_u = (
            torch.rand(n, generator=g, dtype=torch.float64)
            if record.get("randomized", True)
            else None
        )
        self._states: list[dict[str, Tensor]] | None = None
        self._warned_levels: set[float] = set()

    @classmethod
    def from_run_dir(
        cls, run: str | Path, model: nn.Module, method: str = "ces"
    ) -> ConformalPredictor:
        """Loads ``<run>/ces/holdout.pt`` (or ``<run>/holdout.pt``) written at the end of fit.

        Candidate files are found next to ``holdout.pt``, so a moved or copied run
        directory loads.
        """
        record, root = read_record(Path(run))
        return cls(model, record, method=method, root=root)

    # --- candidate outputs on new points ---------------------------------------------

    def _load_states(self) -> list[dict[str, Tensor]]:
        if self._states is None:
            states = [
                {f"model.{k}": v for k, v in state.items()}
                for state in load_candidate_states(self.record["paths"], self.root)
            ]
            expected = set(self.wrapper.state_dict())
            if set(states[0]) != expected:
                raise ValueError(
                    f"the model given to ConformalPredictor does not match the stored candidates: "
                    f"keys differ ({sorted(set(states[0]) ^ expected)[:5]} ...)."
                )
            self._states = states
        return self._states

    @torch.no_grad()
    def candidate_outputs(self, x: Any) -> Tensor:
        """Every candidate's outputs on inputs ``x``: (T, m, ...), candidates batched by vmap."""
        states = self._load_states()
        self.wrapper.eval()
        chunks = []
        for lo in range(0, len(states), self.checkpoint_batch):
            group = states[lo : lo + self.checkpoint_batch]
            stacked = {k: torch.stack([s[k] for s in group]) for k in group[0]}
            try:
                out = torch.func.vmap(
                    lambda params, inp: torch.func.functional_call(self.wrapper, params, (inp,)),
                    in_dims=(0, None),
                )(stacked, x)
            except RuntimeError:  # an op without a batching rule: fall back to one at a time
                out = torch.stack(
                    [torch.func.functional_call(self.wrapper, s, (x,)) for s in group]
                )
            chunks.append(out.to(torch.float64))
        return torch.cat(chunks)

    # --- inference from outputs ------------------------------------------------------

    def level(self, alpha: float) -> float:
        """The miscoverage level this method calibrates at: ``alpha``, or corrected (naive_theory)."""
        if self.method != "naive_theory":
            return alpha
        return naive_corrected_alpha(self.holdout.shape[0], self.holdout.shape[1], alpha)

    def _warn_level(self, alpha: float) -> None:
        """Says once per level when it is too small for the calibration points (whole line)."""
        if alpha in self._warned_levels:
            return
        self._warned_levels.add(alpha)
        level = self.level(alpha)
        _, cal = self._split_indices()
        if level <= 0:
            message: str | None = (
                f"method='naive_theory' corrects alpha={alpha} to {level:.3g} <= 0 for "
                f"{self.holdout.shape[0]} candidates and {len(cal)} points: every interval is "
                "the whole line and every set holds every label."
            )
        elif self.task == "classification" and self.targets is not None:
            message = class_counts_message(level, self.targets[cal], self.conditional)
        else:
            message = alpha_message(level, len(cal), "calibration points")
        if message:
            warnings.warn(f"ConformalPredictor: {message}", UserWarning, stacklevel=3)

    def _split_indices(self) -> tuple[Tensor, Tensor]:
        """Selection and calibration indices of a baseline (halves for data splitting)."""
        return split_indices(self.holdout.shape[1], self.method, self.split_seed)

    def _baseline(self) -> tuple[int, Tensor]:
        """The fixed candidate and calibration indices of a baseline method."""
        stop, cal = self._split_indices()
        if self.method == "full":
            return self.holdout.shape[0] - 1, cal
        return int(torch.argmin(self._holdout_losses(stop))), cal

    def _targets(self, idx: Tensor) -> Tensor | None:
        return None if self.targets is None else self.targets[idx]

    def _holdout_losses(self, idx: Tensor) -> Tensor:
        return holdout_losses(self.task, self.holdout[:, idx], self._targets(idx), self.quantiles)

    def p_values_from_outputs(self, test: Tensor, test_u: Tensor | None = None) -> Tensor:
        """p-values from candidate outputs on the test points (T, m, ...).

        ``naive_theory`` gives the naive p-values: its correction is to the level (see
        :meth:`level`), which :meth:`predict_set` applies.

        Returns:
            (m,) for outlier detection, (m, K) for classification.
        """
        if self.task in ("regression", "quantile"):
            raise ValueError(
                "p-values are for task='outlier' or 'classification'; use predict_interval "
                f"for task={self.task!r}."
            )
        test = test.to(torch.float64)
        if self.task == "outlier":
            if self.method == "ces":
                return ces_outlier_p_values(self.holdout, self.holdout, test, test).p_values
            t, cal = self._baseline()
            return split_outlier_p_values(self.holdout[t, cal], test[t])
        assert self.targets is not None
        if test_u is None and self.holdout_u is not None:
            test_u = torch.rand(
                test.shape[1], generator=torch.Generator().manual_seed(self.split_seed + 1)
            )
        if self.method == "ces":
            return ces_classification_p_values(
                self.holdout, self.targets, test, self.holdout_u, test_u, self.conditional
            ).p_values
        t, cal = self._baseline()
        u = None if self.holdout_u is None else self.holdout_u[cal]
        return split_classification_p_values(
            self.holdout[t, cal], self.targets[cal], test[t], u, test_u, self.conditional
        )

    @property
    def conditional(self) -> bool:
        """Label-conditional (True) or marginal calibration for classification."""
        return bool(self.record.get("conditional", True))

    def intervals_from_outputs(
        self, test: Tensor, alpha: float, union: bool = False
    ) -> RegressionIntervals:
        """Intervals from candidate outputs on the test points: (T, m) or (T, m, 2) quantiles."""
        if self.task not in ("regression", "quantile"):
            raise ValueError(
                "intervals are for task='regression' or 'quantile', this predictor is for "
                f"{self.task!r}."
            )
        assert self.targets is not None
        self._warn_level(alpha)
        test = test.to(torch.float64)
        y = self.targets.to(torch.float64)
        if self.task == "quantile":
            return self._quantile_intervals(test, y, alpha, union)
        if self.method == "ces":
            return ces_regression_intervals(self.holdout, y, test, alpha, union=union)
        t, cal = self._baseline()
        lo, hi = self._split_or_line(
            lambda a: split_regression_intervals(self.holdout[t, cal], y[cal], test[t], a),
            test[t],
            alpha,
        )
        pieces = (lo.unsqueeze(1), hi.unsqueeze(1)) if union else (None, None)
        return RegressionIntervals(lo, hi, *pieces)

    def _split_or_line(self, split: Any, like: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        level = self.level(alpha)
        if level <= 0:  # naive_theory with no valid finite level: the whole line
            return torch.full_like(like, -math.inf), torch.full_like(like, math.inf)
        return split(level)

    def _quantile_intervals(
        self, test: Tensor, y: Tensor, alpha: float, union: bool
    ) -> RegressionIntervals:
        h = self.holdout
        if self.method == "ces":
            return ces_quantile_intervals(
                h[..., 0], h[..., 1], y, test[..., 0], test[..., 1], alpha, self.quantiles, union
            )
        stop, cal = self._split_indices()
        if self.method == "full":
            a = b = h.shape[0] - 1
        else:
            assert self.targets is not None
            lo_loss, hi_loss = quantile_losses(h[:, stop], self.targets[stop], self.quantiles)
            a, b = int(lo_loss.argmin()), int(hi_loss.argmin())
        lo, hi = self._split_or_line(
            lambda lvl: split_quantile_intervals(
                h[a, cal, 0], h[b, cal, 1], y[cal], test[a, :, 0], test[b, :, 1], lvl
            ),
            test[a, :, 0],
            alpha,
        )
        pieces = (lo.unsqueeze(1), hi.unsqueeze(1)) if union else (None, None)
        return RegressionIntervals(lo, hi, *pieces)

    # --- public API on inputs --------------------------------------------------------

    def p_values(self, x: Any) -> Tensor:
        """Conformal p-values of new inputs: (m,) outlier detection, (m, K) classification."""
        return self.p_values_from_outputs(self.candidate_outputs(x))

    def predict_set(self, x: Any, alpha: float) -> Tensor:
        """Prediction sets at level ``1 - alpha`` as a boolean mask (m, K)."""
        if self.task != "classification":
            raise ValueError(
                f"prediction sets are for task='classification', this predictor is for "
                f"{self.task!r}."
            )
        p = self.p_values(x)
        sets = prediction_sets(p, alpha)  # validates alpha
        self._warn_level(alpha)
        return p > self.level(alpha) if self.method == "naive_theory" else sets

    def predict_interval(self, x: Any, alpha: float, union: bool = False) -> RegressionIntervals:
        """Prediction intervals at level ``1 - alpha`` (convex hull; the union on request)."""
        return self.intervals_from_outputs(self.candidate_outputs(x), alpha, union=union)


def compare_methods(
    model: nn.Module, record: dict[str, Any], x: Any, y: Tensor, alpha: float
) -> dict[str, float]:
    """Coverage and size (or type-I error and power) of CES and the naive baseline.

    Args:
        model: a module with the candidates' architecture.
        record: the run's record (:meth:`ConformalEarlyStopping.record` or ``holdout.pt``).
        x: test inputs.
        y: labels (classification), outcomes (regression, quantile) or outlier flags.
        alpha: the level.

    Returns:
        ``{method}_coverage`` and ``{method}_size`` (sets), ``{method}_width``
        (intervals), or ``{method}_type1`` and ``{method}_power`` (outliers).
    """
    out: dict[str, float] = {}
    task = record["task"]
    predictors = {m: ConformalPredictor(model, record, method=m) for m in ("ces", "naive")}
    test = predictors["ces"].candidate_outputs(x)
    y = torch.as_tensor(y).cpu()
    for name, pred in predictors.items():
        if task == "classification":
            sets = prediction_sets(pred.p_values_from_outputs(test), alpha)
            out[f"{name}_coverage"] = float(sets[torch.arange(len(y)), y.long()].double().mean())
            out[f"{name}_size"] = float(sets.sum(1).double().mean())
        elif task in ("regression", "quantile"):
            iv = pred.intervals_from_outputs(test, alpha)
            yy = y.to(torch.float64)
            out[f"{name}_coverage"] = float(((iv.lower <= yy) & (yy <= iv.upper)).double().mean())
            out[f"{name}_width"] = float(iv.width().mean())
        else:
            rejected = pred.p_values_from_outputs(test) <= alpha
            inlier = y == 0
            out[f"{name}_type1"] = (
                float(rejected[inlier].double().mean()) if inlier.any() else math.nan
            )
            out[f"{name}_power"] = (
                float(rejected[~inlier].double().mean()) if (~inlier).any() else math.nan
            )
    return out
