"""GradES freezing: stop a parameter's training for good."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def freeze_parameters(
    params: Iterable[nn.Parameter], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> int:
    """Stops all training of ``params``: no gradient, no optimizer state, no update.

    ``requires_grad_(False)`` makes autograd skip the weight-gradient GEMMs, ``grad = None``
    makes torch optimizers (AdamW, SGD, ...) skip the parameter entirely, weight decay and
    momentum included, and dropping its optimizer state frees e.g. Adam's moments. The
    parameter stays in its param group, so optimizer ``state_dict`` indices are unchanged.

    Args:
        params: the parameters to freeze.
        optimizers: optimizers whose state for these parameters is dropped.

    Returns:
        Number of scalar weights frozen.
    """
    params = list(params)
    count = 0
    for p in params:
        p.requires_grad_(False)
        p.grad = None
        count += p.numel()
    for opt in optimizers:
        for p in params:
            opt.state.pop(p, None)
    return count


#: Name segments that wrappers insert into parameter names (FSDP, activation checkpointing).
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def original_name(name: str) -> str:
    """A parameter's name without the segments FSDP and checkpoint wrappers insert."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def named_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """``module``'s parameters by their original names (as before FSDP wrapped it)."""
    return {original_name(n): p for n, p in module.named_parameters()}
