"""The work of ``DARTSPlusStopping`` that is not a hook: reading the alphas (its protocol),
the criteria's decisions in words, and the genotype / history / alphas files.

Functions of the callback's options and progress (``cb``), so that the callback module
keeps its state, hooks and decisions only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from eecontrol.callbacks._ces_checks import fsdp_model
from eecontrol.callbacks._control import run_dir
from eecontrol.core.darts import (
    CheckResult,
    DartsPlusCriteria,
    Genotype,
    SearchSpace,
    softmax_weights,
    steps_from_edges,
)

log = logging.getLogger("eecontrol.callbacks.darts_plus")  # the callback's logger

if TYPE_CHECKING:
    from eecontrol.callbacks.darts_plus import DARTSPlusStopping

PROTOCOL = (
    "a DARTS search LightningModule must provide `arch_parameters()` returning "
    "{'normal': Tensor(edges, ops), 'reduce': Tensor(edges, ops)} (raw alphas; 'reduce' is "
    "optional) and `op_names` (a sequence of op names, one per column); `steps` "
    "(intermediate nodes per cell) and `multiplier` (nodes concatenated) are optional"
)


def read_alphas(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
    """The full architecture weights, on CPU (gathered from the shards under FSDP)."""
    wrapped = fsdp_model(trainer)
    if wrapped is None:
        return read_module_alphas(pl_module)
    from torch.distributed.fsdp import FullyShardedDataParallel

    # a collective: every rank calls it at the same hook
    with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False):
        return read_module_alphas(pl_module)


def read_module_alphas(pl_module: pl.LightningModule) -> dict[str, Tensor]:
    missing = []
    if not callable(getattr(pl_module, "arch_parameters", None)):
        missing.append("arch_parameters()")
    if getattr(pl_module, "op_names", None) is None:
        missing.append("op_names")
    if missing:
        raise ValueError(
            f"DARTSPlusStopping: {type(pl_module).__name__} lacks {missing}; {PROTOCOL}."
        )
    alphas = pl_module.arch_parameters()
    if not isinstance(alphas, Mapping) or "normal" not in alphas:
        got = list(alphas) if isinstance(alphas, Mapping) else type(alphas).__name__
        raise ValueError(
            f"DARTSPlusStopping: {type(pl_module).__name__}.arch_parameters() returned "
            f"{got}, not a dict with a 'normal' tensor; {PROTOCOL}."
        )
    return {str(k): v.detach().to("cpu", torch.float32).clone() for k, v in alphas.items()}


def counted(cb: DARTSPlusStopping) -> str:
    """What the stability count counts: ``epochs`` or ``checks``."""
    return "epochs" if cb.check_unit == "epochs" else "checks"


def check_place(cb: DARTSPlusStopping, r: CheckResult) -> str:
    """Where a check happened, in words: ``epoch 3`` or ``check 3 (step 40)``."""
    if cb.check_unit == "epochs":
        return f"epoch {r.epoch}"
    return f"check {r.epoch} (step {cb._history[-1]['step']})"


def check_evidence(cb: DARTSPlusStopping, r: CheckResult) -> dict[str, Any]:
    return {
        "epoch": r.epoch,
        "skip_normal": r.skips.get("normal", 0),
        "skip_reduce": r.skips.get("reduce", 0),
        "max_skip": cb.max_skip,
        "stable_epochs": r.stable_epochs,
        "patience": cb.patience,
        "skip_met": r.skip_met,
        "stable_met": r.stable_met,
        "genotype": r.genotype.to_json(),
    }


def report_criteria(cb: DARTSPlusStopping, trainer: pl.Trainer, r: CheckResult) -> None:
    """Records the first epoch (past ``min_epochs``) at which each criterion holds."""
    if r.guarded:
        return
    for key, met, action, why in (
        (
            "skip",
            r.skip_met,
            "skip_criterion",
            f"criterion 1: the normal cell has {r.skips.get('normal', 0)} {cb.skip_op} "
            f"(>= {cb.max_skip})",
        ),
        (
            "stable",
            r.stable_met,
            "stable_criterion",
            f"criterion 2: the {cb.scope} ranking has not changed for "
            f"{r.stable_epochs} {counted(cb)} (>= {cb.patience})",
        ),
    ):
        if met and cb._fired[key] is None:
            cb._fired[key] = r.epoch
            stops = cb.stop_training and cb.criterion in (key, "either")
            cb._decide(
                trainer,
                action,
                f"{why} at {check_place(cb, r)}"
                + ("" if stops else f" (criterion={cb.criterion!r}: not stopping on it)"),
                check_evidence(cb, r),
            )


def stop_reason_text(cb: DARTSPlusStopping, r: CheckResult) -> str:
    met = [
        name
        for name, ok in (
            (f"{r.skips.get('normal', 0)} {cb.skip_op} in the normal cell", r.skip_met),
            (f"ranking stable for {r.stable_epochs} {counted(cb)}", r.stable_met),
        )
        if ok
    ]
    return f"DARTS+ criterion={cb.criterion}: " + " and ".join(met)


def export_genotype(cb: DARTSPlusStopping, trainer: pl.Trainer, why: str) -> None:
    if not trainer.is_global_zero or cb._genotype is None:
        return
    out = run_dir(trainer) / cb.artifact_dir
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "genotype": cb._genotype,
        "text": str(Genotype.from_dict(cb._genotype)),
        "reason": cb.stop_reason if why == "stop" else why,
        "epoch": cb.stopped_epoch if why == "stop" else cb._history[-1]["epoch"],
        "criterion": cb.criterion,
        "fired_epochs": cb._fired,
    }
    write_json(out / "genotype.json", record)


def write_artifacts(cb: DARTSPlusStopping, trainer: pl.Trainer) -> None:
    out = run_dir(trainer) / cb.artifact_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "history.json",
        {
            "config": cb._config(),
            "op_names": list(cb._space.op_names) if cb._space else None,
            "fired_epochs": cb._fired,
            "stopped_epoch": cb.stopped_epoch,
            "epochs": cb._history,
        },
    )
    arrays = {name: torch.stack(v).numpy() for name, v in cb._alphas.items() if v}
    arrays["epochs"] = np.array([r["epoch"] for r in cb._history])
    arrays["op_names"] = np.array(cb._space.op_names if cb._space else [])
    tmp = out / "alphas.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out / "alphas.npz")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def build_space(
    cb: DARTSPlusStopping, pl_module: pl.LightningModule, alphas: Mapping[str, Tensor]
) -> None:
    steps = getattr(pl_module, "steps", None)
    if steps is None:
        steps = steps_from_edges(int(alphas["normal"].shape[0]))
    cb._space = SearchSpace(
        op_names=tuple(pl_module.op_names),
        steps=int(steps),
        multiplier=getattr(pl_module, "multiplier", None),
        none_op=cb.none_op,
        skip_op=cb.skip_op,
        learnable_ops=cb.learnable_ops,
    )
    for name, alpha in alphas.items():
        cb._space.check(name, alpha)
    settings = ("max_skip", "patience", "criterion", "scope", "min_epochs", "derive")
    cb._criteria = DartsPlusCriteria(cb._space, **cb._attributes(*settings))
    cb._criteria.load_state_dict(cb._tracker_state)


def record_check(
    cb: DARTSPlusStopping, trainer: pl.Trainer, alphas: Mapping[str, Tensor], r: CheckResult
) -> None:
    for name, alpha in alphas.items():
        cb._alphas.setdefault(name, []).append(softmax_weights(alpha))
    if cb.stopped_epoch is None:
        cb._genotype = r.genotype.to_dict()
    cb._history.append(
        {
            "epoch": int(trainer.current_epoch) if cb.check_unit != "epochs" else r.epoch,
            "check": r.epoch,
            "step": int(trainer.global_step),
            "skips": dict(r.skips),
            "stable_epochs": r.stable_epochs,
            "skip_met": r.skip_met,
            "stable_met": r.stable_met,
            "guarded": r.guarded,
            "genotype": r.genotype.to_dict(),
        }
    )
    log.info("DARTSPlusStopping %s: %s", check_place(cb, r), r.genotype)


def log_check(cb: DARTSPlusStopping, pl_module: pl.LightningModule, r: CheckResult) -> None:
    values = {f"darts_plus/skip_{name}": float(n) for name, n in r.skips.items()}
    values["darts_plus/stable_epochs"] = float(r.stable_epochs)
    per_step = cb.check_unit == "steps"
    for key, value in values.items():
        pl_module.log(
            key,
            value,
            on_step=per_step,
            on_epoch=not per_step,
            prog_bar=cb.prog_bar and key != "darts_plus/skip_reduce",
            batch_size=1,
            sync_dist=pl_module.trainer.world_size > 1,
        )
