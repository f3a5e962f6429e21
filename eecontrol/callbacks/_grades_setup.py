"""GradES at setup: which strategies it runs under, what it watches, what compile costs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


def strategy_problem(strategy: Any) -> str | None:
    """Returns why GradES cannot run under ``strategy`` (with the fix), or None."""
    name = type(strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        return (
            f"GradES does not support {name}: sharded strategies flatten and shard parameters, "
            f"so single weight matrices cannot be frozen one by one mid-run. Use "
            f"strategy='ddp_find_unused_parameters_true' (or a single device)."
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
