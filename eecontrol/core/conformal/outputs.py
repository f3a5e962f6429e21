"""Per-sample outputs of a model on CES's terms, and the batches they come from.

Lightning-free: any ``nn.Module`` works (a LightningModule is one).

The module protocol (all optional):

- ``ces_inputs(batch)`` / ``ces_targets(batch)``: the inputs and targets of a hold-out
  batch. By default a tuple/list batch is ``(x, y, ...)`` and a dict batch gives its
  targets under ``labels``, ``label``, ``y``, ``target`` or ``targets`` and its inputs under
  ``x``, ``input`` or ``inputs`` (else the dict without the target key).
- ``ces_outputs(inputs)``: the per-sample outputs. Required for ``task="outlier"``
  (per-sample loss = score, larger = more outlying). Otherwise ``module(inputs)`` (or
  ``module(**inputs)`` for a dict) must return: logits (m, K) for ``classification``
  (softmax is applied; an object with ``.logits`` works too), one prediction per sample
  (m,) or (m, 1) for ``regression``, and the lower and upper quantiles (m, 2) for
  ``quantile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

TARGET_KEYS = ("labels", "label", "y", "target", "targets")
INPUT_KEYS = ("x", "input", "inputs")


class CandidateOutputs(nn.Module):
    """Wraps a model so that ``forward(inputs)`` returns the per-sample outputs CES needs.

    Args:
        model: the trained module (a LightningModule or any ``nn.Module``).
        task: ``classification``, ``regression``, ``quantile`` or ``outlier``.
    """

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs: Any) -> Tensor:
        custom = getattr(self.model, "ces_outputs", None)
        if callable(custom):
            return custom(inputs)
        if self.task == "outlier":
            raise ValueError(
                f"{type(self.model).__name__} must define `ces_outputs(inputs)` returning "
                "per-sample outlier scores (larger = more outlying) for task='outlier'."
            )
        out = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)
        out = getattr(out, "logits", out)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"{type(self.model).__name__}(inputs) returned {type(out).__name__}; CES needs "
                "a tensor (or an object with `.logits`), or define `ces_outputs(inputs)`."
            )
        if self.task == "classification":
            if out.dim() != 2 or out.shape[1] < 2:
                raise ValueError(
                    f"task='classification' needs logits (m, K) with K >= 2 classes; the model "
                    f"returned {tuple(out.shape)}."
                )
            return torch.softmax(out, dim=-1)
        if self.task == "regression":
            if out.dim() > 2 or (out.dim() == 2 and out.shape[1] != 1):
                raise ValueError(
                    f"task='regression' needs one prediction per sample, (m,) or (m, 1); the "
                    f"model returned {tuple(out.shape)}. For two quantiles use task='quantile'."
                )
            return out.reshape(-1)
        if out.dim() != 2 or out.shape[1] != 2:
            raise ValueError(
                f"task='quantile' needs the lower and upper quantiles, shape (m, 2); the model "
                f"returned {tuple(out.shape)}."
            )
        return out


def default_inputs(batch: Any) -> Any:
    """The inputs of a batch: ``batch[0]`` of a tuple/list; for a dict see the module docs."""
    if isinstance(batch, list | tuple):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        return {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    return batch


def default_targets(batch: Any) -> Tensor | None:
    """The targets of a batch: ``batch[1]`` of a tuple/list, or a dict's target key."""
    if isinstance(batch, list | tuple):
        return batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
    return None


def split_batch(module: nn.Module, batch: Any) -> tuple[Any, Tensor | None]:
    """The inputs and targets of a batch: the module's ``ces_inputs``/``ces_targets`` or the defaults."""
    inputs_hook = getattr(module, "ces_inputs", None)
    targets_hook = getattr(module, "ces_targets", None)
    inputs = inputs_hook(batch) if callable(inputs_hook) else default_inputs(batch)
    targets = targets_hook(batch) if callable(targets_hook) else default_targets(batch)
    return inputs, targets


def batch_len(targets: Tensor | None, out: Tensor) -> int:
    """The number of points in a batch: its targets' first dimension, else the outputs'."""
    if targets is None:
        return int(out.shape[0])
    return int(torch.as_tensor(targets).shape[0])
