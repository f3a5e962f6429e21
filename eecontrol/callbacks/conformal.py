"""``ConformalEarlyStopping``: store candidates during fit; ``ConformalPredictor``: infer after.

Liang, Zhou, Sesia, "Conformal inference is (almost) free for neural networks trained
with early stopping" (ICML 2023). The callback stores a candidate model every
``storage_period`` epochs (a weights-only checkpoint in the run directory) with its
per-sample outputs on the whole hold-out set (the validation split, in a fixed order).
Training runs the fixed number of epochs; the early-stopped model is chosen per test point
(and label) afterwards by :class:`ConformalPredictor`, which keeps the conformal guarantee
although the same hold-out data served selection and calibration.

The module protocol: if the LightningModule defines ``ces_outputs(x) -> Tensor``, that
gives the per-sample outputs (required for ``task="outlier"``: per-sample loss = score,
larger = more outlying); otherwise classification uses ``softmax(module(x))`` and
regression ``module(x)`` flattened to one prediction per sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_choice, check_range, run_dir
from eecontrol.core import conformal as core

TASKS = ("classification", "regression", "outlier")
METHODS = ("ces", "naive", "data_splitting", "full")
HOLDOUT_FILE = "holdout.pt"


class CandidateOutputs(nn.Module):
    """Wraps a model so that ``forward(x)`` returns the per-sample outputs CES needs.

    Args:
        model: the trained module (a LightningModule or any ``nn.Module``).
        task: ``classification``, ``regression`` or ``outlier``.
    """

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: Tensor) -> Tensor:
        custom = getattr(self.model, "ces_outputs", None)
        if callable(custom):
            return custom(x)
        if self.task == "classification":
            return torch.softmax(self.model(x), dim=-1)
        if self.task == "regression":
            return self.model(x).reshape(x.shape[0])
        raise ValueError(
            f"{type(self.model).__name__} must define `ces_outputs(x)` returning per-sample "
            "outlier scores (larger = more outlying) for task='outlier'."
        )


def _features(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


def _targets(batch: Any) -> Tensor | None:
    return batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None


class ConformalEarlyStopping(ControlCallback):
    """Stores CES candidates (checkpoint + hold-out outputs) every ``storage_period`` epochs.

    The guarantee needs a training process that does not look at the hold-out data: this
    callback refuses, at fit start, a Trainer that also has EarlyStopping, a pruning
    callback or ReduceLROnPlateau driven by a non-training metric, or no fixed length.

    Example::

        ces = ConformalEarlyStopping(task="classification", storage_period=1)
        trainer = L.Trainer(max_epochs=50, callbacks=[ces])
        trainer.fit(model, datamodule=dm)
        sets = ces.predictor(model).predict_set(x_test, alpha=0.1)

    Args:
        task: ``classification``, ``regression`` or ``outlier``.
        storage_period: epochs between stored candidates (the paper's tau), >= 1.
        alpha: the level used for the summary decision at the end of fit, in (0, 1).
        holdout_batch_size: batch size of the hold-out pass (does not change results).
        candidates_dir: where candidates go (default ``<run dir>/ces``).
        conditional: label-conditional (the paper's main version) or marginal sets.
        aps_seed: seed of the APS randomisation drawn once per hold-out point.
        randomized: use randomised APS scores (classification).
        train_metric_prefixes: metric names that count as training-only signals, which
            other callbacks may stop or schedule on.
    """

    def __init__(
        self,
        task: str = "classification",
        storage_period: int = 1,
        alpha: float = 0.1,
        holdout_batch_size: int = 512,
        candidates_dir: str | None = None,
        conditional: bool = True,
        aps_seed: int = 0,
        randomized: bool = True,
        train_metric_prefixes: Sequence[str] = ("train",),
    ) -> None:
        super().__init__()
        self.task = check_choice("task", task, TASKS)
        check_range("storage_period", storage_period, low=1, integer=True)
        check_range("alpha", alpha, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("holdout_batch_size", holdout_batch_size, low=1, integer=True)
        check_range("aps_seed", aps_seed, low=0, integer=True)
        if isinstance(train_metric_prefixes, str):
            raise ValueError(
                f"`train_metric_prefixes` must be a list of prefixes, got the string {train_metric_prefixes!r}."
            )
        self.storage_period = int(storage_period)
        self.alpha = float(alpha)
        self.holdout_batch_size = int(holdout_batch_size)
        self.candidates_dir = candidates_dir
        self.conditional = bool(conditional)
        self.aps_seed = int(aps_seed)
        self.randomized = bool(randomized)
        self.train_metric_prefixes = tuple(train_metric_prefixes)
        # progress
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self.paths: list[str] = []
        self.outputs: list[Tensor] = []
        self.targets: Tensor | None = None
        self._dir: Path | None = None

    @override
    def _config(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "storage_period": self.storage_period,
            "alpha": self.alpha,
            "conditional": self.conditional,
            "aps_seed": self.aps_seed,
            "randomized": self.randomized,
        }

    @override
    def _identity(self) -> dict[str, Any]:
        return {"task": self.task}

    # --- guards ---------------------------------------------------------------------

    def _is_train_metric(self, name: str | None) -> bool:
        return bool(name) and any(str(name).startswith(p) for p in self.train_metric_prefixes)

    def _check_trainer(self, trainer: pl.Trainer) -> None:
        why = (
            "CES needs a training process that never looks at the hold-out data: stopping, "
            "pruning or LR decisions on hold-out metrics make the stored candidates depend on "
            "it and void the conformal guarantee. CES itself does the early stopping (per test "
            "point, after fit). Remove it, or make it monitor a training metric "
            f"(prefixes {list(self.train_metric_prefixes)})."
        )
        for cb in trainer.callbacks:
            if cb is self:
                continue
            monitor = getattr(cb, "monitor", None)
            stops = isinstance(cb, EarlyStopping) or "prun" in type(cb).__name__.lower()
            stops = stops or (isinstance(cb, ControlCallback) and monitor is not None)
            if stops and not self._is_train_metric(monitor):
                raise ValueError(
                    f"ConformalEarlyStopping: {type(cb).__name__}(monitor={monitor!r}) is in the Trainer. {why}"
                )
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau and not self._is_train_metric(config.monitor):
                raise ValueError(
                    f"ConformalEarlyStopping: ReduceLROnPlateau(monitor={config.monitor!r}) is configured. {why}"
                )
        if not math.isfinite(trainer.estimated_stepping_batches):
            raise ValueError(
                "ConformalEarlyStopping: the number of epochs must be fixed in advance (set "
                "`max_epochs` or `max_steps`); CES trains to the end and selects afterwards."
            )

    # --- hold-out pass --------------------------------------------------------------

    def _holdout_dataset(self, trainer: pl.Trainer) -> Dataset:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "val_dataloader"):
            loader = dm.val_dataloader()
        else:
            loader = trainer.val_dataloaders
        if isinstance(loader, list | tuple):
            if len(loader) != 1:
                raise ValueError(
                    f"ConformalEarlyStopping needs exactly one hold-out (validation) dataloader, got {len(loader)}."
                )
            loader = loader[0]
        if loader is None or not hasattr(loader, "dataset"):
            raise ValueError(
                "ConformalEarlyStopping needs a hold-out set: give the Trainer a validation "
                "dataloader (or a datamodule with `val_dataloader`); it serves selection and calibration."
            )
        return loader.dataset

    @torch.no_grad()
    def _holdout_outputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Tensor, Tensor | None]:
        """Per-sample outputs on the whole hold-out set, in dataset order (every rank)."""
        loader = DataLoader(
            self._holdout_dataset(trainer),
            batch_size=self.holdout_batch_size,
            shuffle=False,
            drop_last=False,
        )
        wrapper = CandidateOutputs(pl_module, self.task)
        was_training = pl_module.training
        pl_module.eval()
        outs, targets = [], []
        try:
            for batch in loader:
                x = _features(batch).to(pl_module.device)
                outs.append(wrapper(x).detach().to("cpu", torch.float64))
                y = _targets(batch)
                if y is not None:
                    targets.append(y.detach().cpu())
        finally:
            pl_module.train(was_training)
        out = torch.cat(outs)
        if not torch.isfinite(out).all():
            raise ValueError(
                f"ConformalEarlyStopping: the model's hold-out outputs at epoch {trainer.current_epoch} "
                "contain NaN or inf; the candidate cannot be stored. Check the training loss."
            )
        return out, (torch.cat(targets) if targets else None)

    # --- hooks ----------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._check_trainer(trainer)
        self._dir = Path(self.candidates_dir) if self.candidates_dir else run_dir(trainer) / "ces"
        missing = [p for p in self.paths if not Path(p).exists()]
        if missing:
            raise ValueError(
                f"ConformalEarlyStopping: {len(missing)} stored candidate checkpoints of the "
                f"resumed run are missing (first: {missing[0]}); without them the CES selection "
                "is incomplete. Restore them or start a new run."
            )
        n = len(self._holdout_dataset(trainer))
        if self.outputs and self.outputs[0].shape[0] != n:
            raise ValueError(
                f"ConformalEarlyStopping: the checkpoint's candidates were stored on a hold-out set "
                f"of {self.outputs[0].shape[0]} points, but the hold-out set now has {n}; resume with "
                "the same data split."
            )
        if not self._decisions:
            total_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
            planned = total_epochs // self.storage_period if total_epochs else None
            self._decide(
                trainer,
                "plan",
                f"storing a candidate every {self.storage_period} epoch(s) with its outputs on "
                f"all {n} hold-out points; training is not stopped early",
                {"holdout_points": n, "planned_candidates": planned, "task": self.task},
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.storage_period != 0 or epoch in self.epochs:
            return
        out, targets = self._holdout_outputs(trainer, pl_module)
        if self.task != "outlier":
            if targets is None:
                raise ValueError(
                    "ConformalEarlyStopping: hold-out batches must be (x, y) for this task."
                )
            if self.targets is None:
                self.targets = targets
        assert self._dir is not None
        path = self._dir / f"candidate_epoch{epoch:04d}.pt"
        if trainer.is_global_zero:
            self._dir.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            torch.save(
                {"state_dict": state, "epoch": epoch, "step": int(trainer.global_step)}, path
            )
        self.epochs.append(int(epoch))
        self.steps.append(int(trainer.global_step))
        self.paths.append(str(path))
        self.outputs.append(out)
        pl_module.log("ces/holdout_loss", self._holdout_loss(len(self.outputs) - 1), on_epoch=True)
        pl_module.log("ces/candidates", float(len(self.epochs)), on_epoch=True)

    def _holdout_loss(self, index: int) -> float:
        out = self.outputs[index]
        if self.task == "classification":
            assert self.targets is not None
            p = out.gather(1, self.targets.long().view(-1, 1)).clamp_min(
                torch.finfo(torch.float64).tiny
            )
            return float(-torch.log(p).sum())
        if self.task == "regression":
            assert self.targets is not None
            return float(((out - self.targets.to(torch.float64)) ** 2).sum())
        return float(out.sum())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.epochs:
            return
        losses = [self._holdout_loss(i) for i in range(len(self.epochs))]
        best = min(range(len(losses)), key=losses.__getitem__)
        if trainer.is_global_zero and self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            torch.save(self.record(), self._dir / HOLDOUT_FILE)
            (self._dir / "candidates.json").write_text(
                json.dumps(
                    [
                        {"epoch": e, "step": s, "path": p, "holdout_loss": loss}
                        for e, s, p, loss in zip(self.epochs, self.steps, self.paths, losses)
                    ],
                    indent=1,
                )
            )
        if not any(d.action == "candidates" for d in self._decisions):
            self._decide(
                trainer,
                "candidates",
                f"{len(self.epochs)} candidates stored; the naive early-stopping choice would be "
                f"epoch {self.epochs[best]}, CES selects per test point at prediction time",
                {
                    "candidates": len(self.epochs),
                    "naive_best_epoch": self.epochs[best],
                    "naive_best_holdout_loss": losses[best],
                    "last_holdout_loss": losses[-1],
                },
            )

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Summarise CES against the naive baseline on the labelled test split, if any.
        if (
            not self.outputs
            or trainer.datamodule is None
            or not hasattr(trainer.datamodule, "test_dataloader")
        ):
            return
        dataset = trainer.datamodule.test_dataloader().dataset
        batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
        x, y = _features(batch), _targets(batch)
        if y is None:
            return
        evidence = self.evaluate(pl_module, x.to(pl_module.device), y, self.alpha)
        self._decide(
            trainer,
            "evaluate",
            f"test split ({len(dataset)} points) at alpha={self.alpha}: CES vs the naive "
            "early-stopped model calibrated on the same hold-out data",
            evidence,
        )

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, alpha: float) -> dict[str, float]:
        """Coverage and size (or type-I error and power) of CES and the naive baseline.

        Args:
            model: a module with the candidates' architecture.
            x: test inputs.
            y: labels (classification), outcomes (regression) or outlier flags (outlier).
            alpha: the level.

        Returns:
            ``{method}_coverage`` and ``{method}_size`` (sets), ``{method}_width``
            (intervals), or ``{method}_type1`` and ``{method}_power`` (outliers).
        """
        out: dict[str, float] = {}
        predictors = {m: self.predictor(model, method=m) for m in ("ces", "naive")}
        test = predictors["ces"].candidate_outputs(x)
        y = y.cpu()
        for name, pred in predictors.items():
            if self.task == "classification":
                sets = core.prediction_sets(pred.p_values_from_outputs(test), alpha)
                out[f"{name}_coverage"] = float(
                    sets[torch.arange(len(y)), y.long()].double().mean()
                )
                out[f"{name}_size"] = float(sets.sum(1).double().mean())
            elif self.task == "regression":
                iv = pred.intervals_from_outputs(test, alpha)
                yy = y.to(torch.float64)
                out[f"{name}_coverage"] = float(
                    ((iv.lower <= yy) & (yy <= iv.upper)).double().mean()
                )
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

    @override
    def progress_fields(self) -> dict[str, str]:
        return {"ces": f"{len(self.epochs)} cand"}

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["ConformalEarlyStopping/candidates"] = len(self.epochs)
        for d in self._decisions:
            if d.action in ("candidates", "evaluate"):
                out.update({f"ConformalEarlyStopping/{k}": v for k, v in d.evidence.items()})
        return out

    # --- results --------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """Everything a :class:`ConformalPredictor` needs besides the model (weights_only-safe)."""
        if not self.outputs:
            raise ValueError("ConformalEarlyStopping has stored no candidate yet.")
        return {
            "task": self.task,
            "epochs": list(self.epochs),
            "paths": list(self.paths),
            "outputs": torch.stack(self.outputs),
            "targets": self.targets,
            "aps_seed": self.aps_seed,
            "randomized": self.randomized,
            "conditional": self.conditional,
        }

    def predictor(self, model: nn.Module, method: str = "ces") -> ConformalPredictor:
        """A predictor over this run's candidates, using ``model`` as the architecture."""
        return ConformalPredictor(model, self.record(), method=method)

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "steps": list(self.steps),
            "paths": list(self.paths),
            "outputs": torch.stack(self.outputs) if self.outputs else None,
            "targets": self.targets,
        }

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self.epochs = list(state.get("epochs", []))
        self.steps = list(state.get("steps", []))
        self.paths = list(state.get("paths", []))
        outputs = state.get("outputs")
        self.outputs = list(outputs.unbind(0)) if outputs is not None else []
        self.targets = state.get("targets")
        if not len(self.epochs) == len(self.paths) == len(self.outputs):
            raise ValueError(
                "ConformalEarlyStopping: corrupted state: "
                f"{len(self.epochs)} epochs, {len(self.paths)} paths, {len(self.outputs)} outputs."
            )


class ConformalPredictor:
    """Conformal inference from the candidates of one run: CES and its baselines.

    Args:
        model: a module with the candidates' architecture (weights are loaded per candidate).
        record: :meth:`ConformalEarlyStopping.record` output (or ``holdout.pt`` of a run).
        method: ``ces`` (the paper), or a baseline: ``naive`` (the model with the smallest
            hold-out loss, calibrated on the same hold-out set: not valid in theory),
            ``data_splitting`` (select on half of the hold-out set, calibrate on the other
            half), ``full`` (the last candidate, calibrated on the hold-out set).
        split_seed: seed of the data-splitting halves.
        checkpoint_batch: candidates evaluated together through ``torch.func.vmap``.
    """

    def __init__(
        self,
        model: nn.Module,
        record: dict[str, Any],
        method: str = "ces",
        split_seed: int = 0,
        checkpoint_batch: int = 16,
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
        n = self.holdout.shape[1]
        g = torch.Generator().manual_seed(int(record.get("aps_seed", 0)))
        self.holdout_u = (
            torch.rand(n, generator=g, dtype=torch.float64)
            if record.get("randomized", True)
            else None
        )
        self._states: list[dict[str, Tensor]] | None = None

    @classmethod
    def from_run_dir(
        cls, run: str | Path, model: nn.Module, method: str = "ces"
    ) -> ConformalPredictor:
        """Loads ``<run>/ces/holdout.pt`` (or ``<run>/holdout.pt``) written at the end of fit."""
        run = Path(run)
        for path in (run / "ces" / HOLDOUT_FILE, run / HOLDOUT_FILE):
            if path.exists():
                return cls(model, torch.load(path, weights_only=True), method=method)
        raise FileNotFoundError(
            f"no {HOLDOUT_FILE} under {run} or {run / 'ces'}: was the run fitted with ConformalEarlyStopping?"
        )

    # --- candidate outputs on new points ---------------------------------------------

    def _load_states(self) -> list[dict[str, Tensor]]:
        if self._states is None:
            states = []
            for path in self.record["paths"]:
                blob = torch.load(path, weights_only=True, map_location="cpu")
                states.append({f"model.{k}": v for k, v in blob["state_dict"].items()})
            expected = set(self.wrapper.state_dict())
            if set(states[0]) != expected:
                raise ValueError(
                    f"the model given to ConformalPredictor does not match the stored candidates: "
                    f"keys differ ({sorted(set(states[0]) ^ expected)[:5]} ...)."
                )
            self._states = states
        return self._states

    @torch.no_grad()
    def candidate_outputs(self, x: Tensor) -> Tensor:
        """Every candidate's outputs on ``x``: shape (T, m, ...), candidates batched by vmap."""
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

    def _baseline(self) -> tuple[int, Tensor]:
        """The fixed candidate and calibration indices of a baseline method."""
        n = self.holdout.shape[1]
        losses = self._holdout_losses(torch.arange(n))
        if self.method == "naive":
            return int(torch.argmin(losses)), torch.arange(n)
        if self.method == "full":
            return self.holdout.shape[0] - 1, torch.arange(n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        stop, cal = perm[: n // 2], perm[n // 2 :]
        return int(torch.argmin(self._holdout_losses(stop))), torch.sort(cal).values

    def _holdout_losses(self, idx: Tensor) -> Tensor:
        out = self.holdout[:, idx]
        if self.task == "classification":
            assert self.targets is not None
            y = self.targets[idx].long()
            p = out.gather(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1)).squeeze(2)
            return -torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)).sum(1)
        if self.task == "regression":
            assert self.targets is not None
            return ((out - self.targets[idx].to(torch.float64)) ** 2).sum(1)
        return out.sum(1)

    def p_values_from_outputs(self, test: Tensor, test_u: Tensor | None = None) -> Tensor:
        """p-values from candidate outputs on the test points (T, m, ...).

        Returns:
            (m,) for outlier detection, (m, K) for classification.
        """
        if self.task == "regression":
            raise ValueError(
                "p-values are for task='outlier' or 'classification'; use predict_interval for regression."
            )
        test = test.to(torch.float64)
        if self.task == "outlier":
            if self.method == "ces":
                return core.ces_outlier_p_values(self.holdout, self.holdout, test, test).p_values
            t, cal = self._baseline()
            return core.split_outlier_p_values(self.holdout[t, cal], test[t])
        assert self.targets is not None
        if test_u is None and self.holdout_u is not None:
            test_u = torch.rand(
                test.shape[1], generator=torch.Generator().manual_seed(self.split_seed + 1)
            )
        if self.method == "ces":
            return core.ces_classification_p_values(
                self.holdout, self.targets, test, self.holdout_u, test_u, self.conditional
            ).p_values
        t, cal = self._baseline()
        u = None if self.holdout_u is None else self.holdout_u[cal]
        return core.split_classification_p_values(
            self.holdout[t, cal], self.targets[cal], test[t], u, test_u, self.conditional
        )

    @property
    def conditional(self) -> bool:
        """Label-conditional (True) or marginal calibration for classification."""
        return bool(self.record.get("conditional", True))

    def intervals_from_outputs(
        self, test: Tensor, alpha: float, union: bool = False
    ) -> core.RegressionIntervals:
        """Regression intervals from candidate predictions on the test points (T, m)."""
        if self.task != "regression":
            raise ValueError(
                f"intervals are for task='regression', this predictor is for {self.task!r}."
            )
        assert self.targets is not None
        test = test.to(torch.float64)
        if self.method == "ces":
            return core.ces_regression_intervals(
                self.holdout, self.targets, test, alpha, union=union
            )
        t, cal = self._baseline()
        lo, hi = core.split_regression_intervals(
            self.holdout[t, cal], self.targets[cal], test[t], alpha
        )
        pieces = (lo.unsqueeze(1), hi.unsqueeze(1)) if union else (None, None)
        return core.RegressionIntervals(lo, hi, *pieces)

    # --- public API on inputs --------------------------------------------------------

    def p_values(self, x: Tensor) -> Tensor:
        """Conformal p-values of new inputs: (m,) outlier detection, (m, K) classification."""
        return self.p_values_from_outputs(self.candidate_outputs(x))

    def predict_set(self, x: Tensor, alpha: float) -> Tensor:
        """Prediction sets at level ``1 - alpha`` as a boolean mask (m, K)."""
        if self.task != "classification":
            raise ValueError(
                f"prediction sets are for task='classification', this predictor is for {self.task!r}."
            )
        return core.prediction_sets(self.p_values(x), alpha)

    def predict_interval(
        self, x: Tensor, alpha: float, union: bool = False
    ) -> core.RegressionIntervals:
        """Prediction intervals at level ``1 - alpha`` (convex hull; the union on request)."""
        return self.intervals_from_outputs(self.candidate_outputs(x), alpha, union=union)
