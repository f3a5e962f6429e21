"""GradES at setup: which strategies it runs under, what it watches, what compile costs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from eecontrol.core.checks import check_choice, check_range
from eecontrol.core.grades import AUTO, NORMALIZE, STATISTICS, Component, Coverage, check_tau

#: Below this fraction of the blocks' weight matrices watched, the set-up report warns.
MIN_COVERAGE = 0.9


def check_arguments(
    tau: Any,
    statistic: str,
    normalize: str,
    interval: int,
    grace: float,
    max_frozen_ratio: float,
    rel_tau: float,
    smoothing: float | None,
) -> dict[str, Any]:
    """Validates GradES's arguments; returns the checked ``tau``, ``smoothing`` and
    whether any threshold is ``"auto"`` (``uses_auto``).

    Raises:
        ValueError: naming the argument, its value and the valid range.
    """
    tau = check_tau(tau)
    check_choice("statistic", statistic, STATISTICS)
    check_choice("normalize", normalize, NORMALIZE)
    check_range("interval", interval, low=1, integer=True)
    check_range("grace", grace, low=0.0, high=1.0, high_inclusive=False)
    check_range("max_frozen_ratio", max_frozen_ratio, low=0.0, high=1.0, low_inclusive=False)
    check_range("rel_tau", rel_tau, low=0.0, high=1.0, low_inclusive=False)
    uses_auto = tau == AUTO or (isinstance(tau, dict) and AUTO in tau.values())
    if smoothing is None:
        smoothing = 0.9 if uses_auto else 0.0
    check_range("smoothing", smoothing, low=0.0, high=1.0, high_inclusive=False)
    if uses_auto and grace == 0:
        raise ValueError(
            "`grace` must be in (0.0, 1.0) with tau='auto' (the reference is measured "
            f"during the grace period), got {grace!r}."
        )
    return {"tau": tau, "smoothing": smoothing, "uses_auto": uses_auto}


def is_fsdp(strategy: Any) -> bool:
    """Whether ``strategy`` is Lightning's ``FSDPStrategy`` (or a subclass)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def is_sharded(strategy: Any) -> bool:
    """Whether each process holds only a piece of the parameters (FSDP, not NO_SHARD)."""
    sharding = getattr(getattr(strategy, "sharding_strategy", None), "name", "")
    return is_fsdp(strategy) and sharding != "NO_SHARD"


def gather_on(trainer: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A collective stacking every process's 1-D tensor in process order (for sharded
    statistics): ``(processes, n)``, on the strategy's device and back."""

    def gather(local: torch.Tensor) -> torch.Tensor:
        local = local.to(trainer.strategy.root_device)
        rows = [torch.empty_like(local) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(rows, local)
        return torch.stack(rows)

    return gather


def check_unwrapped(module: torch.nn.Module) -> None:
    """GradES under FSDP finds its matrices at ``setup``, before FSDP shards them.

    Raises:
        ValueError: if the module has no parameters yet (built in ``configure_model``) or
            is already wrapped by FSDP (a second ``fit`` on the same Trainer).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in module.modules()):
        raise ValueError(
            "GradES under FSDP finds its matrices at setup, before FSDP flattens and shards "
            "them, but this module is already wrapped by FSDP (a second fit on the same "
            "Trainer?). Fit with a new Trainer and model."
        )
    if next(module.parameters(), None) is None:
        raise ValueError(
            "GradES under FSDP finds its matrices at setup, before FSDP flattens and shards "
            "them, but this module has no parameters then (built in configure_model?). "
            "Build the model in __init__ to use GradES with FSDP."
        )


def _fsdp_problem(strategy: Any) -> str | None:
    """Why GradES cannot run under this ``FSDPStrategy`` (with the fix), or None."""
    if not (getattr(strategy, "kwargs", None) or {}).get("use_orig_params", False):
        return (
            "GradES under FSDP freezes single weight matrices through their original "
            "parameters, which needs FSDPStrategy(use_orig_params=True) (Lightning's "
            "default); got use_orig_params=False, where FSDP exposes only flat parameters "
            "and the optimizer holds them, so one matrix cannot be frozen on its own."
        )
    sharding = getattr(getattr(strategy, "sharding_strategy", None), "name", "")
    if sharding in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
        return (
            f"GradES does not support FSDP's sharding_strategy={sharding}: each shard is "
            f"replicated across nodes, so adding every process's partial sums would count "
            f"each matrix once per replica. Use sharding_strategy='FULL_SHARD', "
            f"'SHARD_GRAD_OP' or 'NO_SHARD'."
        )
    return None


def strategy_problem(strategy: Any) -> str | None:
    """Returns why GradES cannot run under ``strategy`` (with the fix), or None."""
    if is_fsdp(strategy):
        return _fsdp_problem(strategy)
    name = type(strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        return (
            f"GradES does not support {name}: it shards parameters in a way GradES cannot "
            f"read or freeze one matrix of. Use Lightning's FSDPStrategy "
            f"(use_orig_params=True), strategy='ddp_find_unused_parameters_true' or a "
            f"single device."
        )
    from lightning.pytorch.strategies import DDPStrategy

    if isinstance(strategy, DDPStrategy):
        kwargs = dict(getattr(strategy, "_ddp_kwargs", {}) or {})
        spawn = getattr(strategy, "_start_method", "popen")
        registered = {"popen": "ddp", "spawn": "ddp_spawn", "fork": "ddp_fork"}.get(spawn, "ddp")
        if kwargs.get("static_graph"):
            return (
                "GradES changes which parameters receive gradients during training, which DDP "
                "with static_graph=True forbids. Use "
                f"Trainer(strategy='{registered}_find_unused_parameters_true') or "
                "DDPStrategy(find_unused_parameters=True, static_graph=False)."
            )
        if not kwargs.get("find_unused_parameters"):
            return (
                "GradES freezes parameters mid-run, so DDP must be told that some parameters "
                "get no gradient: use "
                f"Trainer(strategy='{registered}_find_unused_parameters_true') or "
                "Trainer(strategy=DDPStrategy(find_unused_parameters=True)) (Hydra: "
                f"trainer.strategy={registered}_find_unused_parameters_true)."
            )
    return None


def describe_setup(
    cov: Coverage, components: Sequence[Component], patterns: Sequence[str] | None
) -> tuple[str, dict[str, Any], str | None]:
    """The set-up report of what GradES watches and leaves out.

    Args:
        cov: the coverage of ``components``.
        components: the watched components.
        patterns: the callback's ``patterns`` (None: discovery by structure).

    Returns:
        ``(reason, evidence, warning)``: the decision's sentence, its numbers, and a
        warning when under :data:`MIN_COVERAGE` of the block matrices is watched.

    Raises:
        ValueError: if none of the block matrices is watched.
    """
    watched = sum(c.numel for c in components)
    matrices = cov.left_out_matrices()
    left = "; ".join(f"{n} ({k:,}, {why})" for n, k, why in matrices[:20])
    if len(matrices) > 20:
        left += f"; ... and {len(matrices) - 20} more"
    frac = cov.matrix_fraction
    lists = ", ".join(f"{n or '<model>'} ({k} blocks)" for n, k in cov.block_lists)
    where = (
        f"{frac:.1%} of the weight matrices of {lists}"
        if frac is not None
        else "no repeated blocks found, so coverage cannot be measured"
    )
    reason = (
        f"watching {len(components)} components ({watched:,} weights): {where}; "
        f"left out: {left or 'no weight matrix'}"
        + (f"; outside the blocks: {cov.outside[:10]}" if cov.outside else "")
        + (
            f"; {cov.frozen_before:,} block weights were frozen before fit"
            if cov.frozen_before
            else ""
        )
    )
    if frac is not None and cov.matrix_covered == 0:
        raise ValueError(
            f"GradES watches none of the weight matrices of the model's repeated blocks "
            f"({lists}); `patterns` {patterns} select only {cov.outside[:10]}. Leave "
            f"`patterns` unset to watch every block matrix."
        )
    warning = None
    if frac is not None and frac < MIN_COVERAGE:
        warning = (
            f"GradES watches only {frac:.1%} of the weight matrices of the repeated blocks "
            f"(< {MIN_COVERAGE:.0%}); the rest keeps training after the run reports all "
            f"components frozen. Left out: {left}."
        )
    evidence = {
        "components": len(components),
        "watched_params": watched,
        "block_lists": lists,
        "blocks": sum(k for _, k in cov.block_lists),
        "matrix_coverage": frac,
        "block_param_coverage": cov.block_fraction,
        "left_out_matrices": len(matrices),
        "left_out_params": sum(k for _, k, _ in cov.left_out),
        "left_out": left,
        "outside_blocks": ", ".join(cov.outside),
        "frozen_before_fit": cov.frozen_before,
        "discovery": "structure" if patterns is None else "patterns",
    }
    return reason, evidence, warning


def compile_cost(
    bound: int, limit: int, components: int, interval: int, grace_step: int, total_steps: int
) -> tuple[str, bool]:
    """What freezing costs under ``torch.compile``, and whether that passes torch's limit.

    torch guards on ``requires_grad`` of every parameter, so each step at which
    components freeze compiles the model once more (measured with ``aot_eager``); past
    torch's ``recompile_limit`` the model silently runs eagerly. ``interval`` bounds the
    steps at which freezing can happen.

    Args:
        bound: the most steps at which components can still freeze.
        limit: torch's ``recompile_limit``.
        components: the number of components.
        interval: optimizer steps between readings.
        grace_step: the first step at which freezing is allowed.
        total_steps: the run's planned optimizer steps.

    Returns:
        ``(message, over)``: the message, and whether it is a warning (over the limit).
    """
    message = (
        f"GradES under torch.compile: freezing changes requires_grad, which torch "
        f"guards on, so each step at which components freeze compiles the model once "
        f"more: at most {bound} recompiles in this run ({components} components, "
        f"a reading every {interval} step(s) after the grace step {grace_step} "
        f"of {total_steps})."
    )
    if bound + 1 < limit:
        return message, False
    needed = max(math.ceil((total_steps - grace_step) / (limit - 2)), 1)
    return (
        f"{message} torch's recompile_limit is {limit}: past it the model runs "
        f"eagerly. Raise it (torch._dynamo.config.recompile_limit = {bound + 2}) or "
        f"set interval >= {needed} so that freezes fall on at most {limit - 2} steps.",
        True,
    )
