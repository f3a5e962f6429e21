"""``GradientDiagnostics``: the paper's gradient-direction measurements during training."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_range, plan_step
from eecontrol.core.schedules import direction_error, direction_variance

LossFn = Callable[[nn.Module, Any], Tensor]


def cross_entropy_loss(module: nn.Module, batch: Any) -> Tensor:
    """The default diagnostic loss: cross-entropy of ``module(x)`` against ``y``."""
    x, y = batch[0], batch[1]
    return nn.functional.cross_entropy(module(x), y)


def _to(batch: Any, device: torch.device) -> list[Any]:
    return [t.to(device) if isinstance(t, Tensor) else t for t in batch]


class GradientDiagnostics(ControlCallback):
    """Logs gradient direction variance and error every ``every_n_steps`` optimizer steps.

    Liu et al., "Dropout Reduces Underfitting" (ICML 2023): early dropout lowers the
    directional variance of mini-batch gradients and their error against the whole
    training set's gradient. At each check this callback takes ``num_batches`` training
    mini-batches (in train mode, so with the current dropout), their gradients, and the
    gradient over the whole training set (in eval mode: the objective without dropout),
    then logs ``grad_diag/direction_variance`` and ``grad_diag/direction_error``. It
    changes nothing in training: gradients come from ``torch.autograd.grad`` (never
    ``.grad``) and the RNG state is restored afterwards. It costs ``num_batches`` plus one
    pass over the training set per check: a diagnostic, not for every run.

    Args:
        every_n_steps: optimizer steps between checks (>= 1).
        num_batches: mini-batches per check (>= 2).
        loss_fn: ``loss_fn(module, batch) -> scalar`` (default: cross-entropy).
        max_full_batches: cap on the batches used for the whole-data gradient (None: all).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        num_batches: int = 8,
        loss_fn: LossFn | None = None,
        max_full_batches: int | None = None,
    ) -> None:
        super().__init__()
        check_range("every_n_steps", every_n_steps, low=1, integer=True)
        check_range("num_batches", num_batches, low=2, integer=True)
        if max_full_batches is not None:
            check_range("max_full_batches", max_full_batches, low=1, integer=True)
        self.every_n_steps = int(every_n_steps)
        self.num_batches = int(num_batches)
        self.loss_fn = loss_fn or cross_entropy_loss
        self.max_full_batches = max_full_batches
        self.history: list[dict[str, float]] = []
        self._last_step = -1

    @override
    def _config(self) -> dict[str, Any]:
        return {"every_n_steps": self.every_n_steps, "num_batches": self.num_batches}

    def _gradient(
        self, module: nn.Module, params: list[nn.Parameter], batches: list[Any]
    ) -> Tensor:
        total = None
        for batch in batches:
            grads = torch.autograd.grad(self.loss_fn(module, batch), params, allow_unused=True)
            flat = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params)
                ]
            )
            total = flat * len(batch[0]) if total is None else total + flat * len(batch[0])
        n = sum(len(b[0]) for b in batches)
        assert total is not None
        return total / n

    def measure(self, pl_module: pl.LightningModule, loader: DataLoader) -> dict[str, float]:
        """One measurement on ``loader`` (restores train/eval mode and the RNG state)."""
        params = [p for p in pl_module.parameters() if p.requires_grad]
        device = next(pl_module.parameters()).device
        rng = torch.get_rng_state()  # iterating a shuffled loader draws from it too
        was_training = pl_module.training
        try:
            batches = [_to(b, device) for b in itertools.islice(iter(loader), self.num_batches)]
            if len(batches) < 2:
                raise ValueError(
                    f"GradientDiagnostics needs at least 2 training batches, got {len(batches)}."
                )
            pl_module.train()
            grads = torch.stack([self._gradient(pl_module, params, [b]) for b in batches])
            pl_module.eval()
            full_batches = itertools.islice(iter(loader), self.max_full_batches)
            full = self._gradient(pl_module, params, [_to(b, device) for b in full_batches])
        finally:
            pl_module.train(was_training)
            torch.set_rng_state(rng)
        return {
            "direction_variance": direction_variance(grads),
            "direction_error": direction_error(grads, full),
        }

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = plan_step(trainer)  # optimizer steps; training batches if manual
        if step % self.every_n_steps != 0 or step == self._last_step:
            return
        self._last_step = step
        loader = trainer.train_dataloader
        if isinstance(loader, list | tuple):
            loader = loader[0]
        result = self.measure(pl_module, loader)
        self.history.append({"step": step, **result})
        for key, value in result.items():
            pl_module.log(f"grad_diag/{key}", value, on_step=True, on_epoch=False, batch_size=1)

    @override
    def progress_fields(self) -> dict[str, str]:
        return {"grad var": f"{self.history[-1]['direction_variance']:.3f}"} if self.history else {}

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "last_step": self._last_step}

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self._last_step = int(state.get("last_step", -1))
