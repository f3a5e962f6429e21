"""The acceptance matrix's shared harness: real data, a tiny random Llama, settings as data.

Every cell of the matrix is one callback (``CALLBACKS``) trained under one setting
(``SETTINGS``) by :func:`run_cell`, then checked by the callback's checker for what the
callback promises (GradES: statistic vs a float64 recomputation and frozen weights
unchanged; DropoutSchedule: the rate of every micro-batch vs the schedule in optimizer
steps; CES: candidates at the planned steps, stored outputs vs a recomputation;
LearningCurveStopping: one curve point per validation at its global step; DARTS+: one
check per validation; OptunaPruning: one report per validation; ResumableCheckpoint: a
resumed run equal to an uninterrupted one). ``EXPECTED`` says, per cell, whether it works,
is refused at setup (and with which message), does not apply, or fails today because of a
known defect (issue 23's item). ``docs/settings.md`` is generated from these tables
(``python -m tests.settings.doc``).

Data: scikit-learn's real 8x8 handwritten digits, pooled to 4x4 and read as 16 tokens
(intensities 0..16). Model: a 2-layer Llama sequence classifier built from a config
(hidden 32, no download). DARTS+ runs the recipe's first-order DARTS search, tiny.

The device the cells run on is ``$EECONTROL_TEST_DEVICE`` (``cpu`` by default; ``cuda``
on a GPU machine: ``benchmarks/device_check.sh``).
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from eecontrol.resume import (
    EpochSeed,
    EpochSeededSampler,
    ResumableCheckpoint,
    ResumableDataLoader,
)
from eecontrol.testing import quiet_trainer_kwargs
from tests.callbacks.llm_setting import zero_grad_and_backward
from tests.conftest import TINY_GQA

DEVICE = os.environ.get("EECONTROL_TEST_DEVICE", "cpu")
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"
BATCH = 32
N_TRAIN = 384  # 12 batches per epoch
N_VAL = 128
P_DROP = 0.2  # DropoutSchedule's p (early, linear, cutoff at half of training)
CLIP = 0.5

# --- real data -------------------------------------------------------------------------


def digit_tokens() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real digits as 16-token sequences: (x_train, y_train, x_val, y_val), fixed split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.long).view(-1, 4, 2, 4, 2).sum((2, 4)).reshape(-1, 16)
    x = x // 4  # 0..16, like the original intensities
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = order[:N_TRAIN], order[N_TRAIN : N_TRAIN + N_VAL]
    return x[tr], y[tr], x[va], y[va]


def digit_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same split as images (N, 1, 8, 8) in [0, 1], for the DARTS search."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = order[:N_TRAIN], order[N_TRAIN : N_TRAIN + N_VAL]
    return x[tr], y[tr], x[va], y[va]


class _Pairs(torch.utils.data.Dataset):
    """A DARTS training set: item i is ``{"weights": sample i, "arch": sample i + n/2}``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.half = len(y) // 2
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.half

    def __getitem__(self, i: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        j = i + self.half
        return {"weights": (self.x[i], self.y[i]), "arch": (self.x[j], self.y[j])}


class Stream(IterableDataset):
    """An endless stream over a map dataset (no ``__len__``): each pass in a seeded order.

    Under DDP every rank reads its own shard (every ``world_size``-th item).
    """

    def __init__(self, data: torch.utils.data.Dataset, seed: int = 0) -> None:
        self.data = data
        self.seed = seed

    def __iter__(self) -> Iterator[Any]:
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        n = len(self.data)  # type: ignore[arg-type]
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            for i in torch.randperm(n, generator=g)[rank::world].tolist():
                yield self.data[i]
            epoch += 1


def loaders(kind: str, stream: bool) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of the llama (``kind="llama"``) or DARTS data."""
    if kind == "darts":
        xt, yt, xv, yv = digit_images()
        train: torch.utils.data.Dataset = _Pairs(xt, yt)
    else:
        xt, yt, xv, yv = digit_tokens()
        train = TensorDataset(xt, yt)
    val = TensorDataset(xv, yv)
    if stream:
        # docs/resume.md "What your own loader needs": a loader that keeps its position in
        # the checkpoint, over data that yields the same sequence for the same pass
        train_loader = ResumableDataLoader(Stream(train), batch_size=BATCH)
    else:
        train_loader = DataLoader(train, batch_size=BATCH, sampler=EpochSeededSampler(train))
    return train_loader, DataLoader(val, batch_size=BATCH)


def epoch_seed(setting: Setting) -> EpochSeed:
    """The cell's ``EpochSeed``: reseeding at every batch on a stream (one epoch is the whole
    run; what an exact mid-stream resume needs, docs/resume.md), at epoch starts otherwise."""
    return EpochSeed(0, per_batch=setting.stream)


# --- models ----------------------------------------------------------------------------


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A random 2-layer Llama sequence classifier built from a config (no download)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        **TINY_GQA,
        intermediate_size=64,
        vocab_size=18,
        max_position_embeddings=16,
        pad_token_id=17,  # never in the data: the last token is read
        num_labels=10,
        attention_dropout=0.1,
    )
    return LlamaForSequenceClassification(config)


VARIANTS = ("plain", "manual", "two_opt", "groups", "lora")


class TinyLlama(pl.LightningModule):
    """The tiny Llama as a LightningModule in the optimisation variants of the matrix.

    Args:
        variant: ``plain`` (AdamW, automatic optimisation), ``manual`` (manual
            optimisation with ``clip_gradients``), ``two_opt`` (manual, two optimizers:
            attention and the rest, one step each per batch, no clipping), ``groups`` (two AdamW
            parameter groups and a per-step warm-up schedule) or ``lora`` (peft LoRA r=4 on
            q/v with dropout 0.1, the head trained).
        seed: the initialisation seed.
    """

    def __init__(self, variant: str = "plain", seed: int = 0) -> None:
        super().__init__()
        assert variant in VARIANTS, variant
        self.variant = variant
        net = tiny_llama(seed)
        if variant == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=["q_proj", "v_proj"],
                lora_dropout=0.1,
                modules_to_save=["score"],
            )
            net = get_peft_model(net, lora)
        self.net = net
        self.automatic_optimization = variant not in ("manual", "two_opt")
        #: float64 L1 of every gradient before clipping (manual variants), by parameter name
        self.pre_clip: dict[str, float] = {}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(y))
        if self.automatic_optimization:
            return loss
        opts = zero_grad_and_backward(self, loss)
        self.pre_clip = {
            n: float(p.grad.detach().double().abs().sum())
            for n, p in self.named_parameters()
            if p.grad is not None
        }
        for opt in opts:
            if self.variant == "manual":  # the usual manual loop clips before stepping
                self.clip_gradients(opt, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
            opt.step()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x).float(), y), batch_size=len(y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/loss", F.cross_entropy(self(x).float(), y), batch_size=len(y))

    def configure_optimizers(self) -> Any:
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if self.variant == "two_opt":
            attn = [p for n, p in params if "self_attn" in n]
            rest = [p for n, p in params if "self_attn" not in n]
            return [torch.optim.AdamW(attn, lr=3e-3), torch.optim.AdamW(rest, lr=3e-3)]
        if self.variant == "groups":
            decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
            no_decay = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
            opt = torch.optim.AdamW(
                [
                    {"params": decay, "weight_decay": 0.05},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=3e-3,
            )
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / 4) * max(0.1, 1 - s / total)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return torch.optim.AdamW([p for _, p in params], lr=3e-3)


def darts_module(seed: int = 0) -> pl.LightningModule:
    """The recipe's first-order DARTS search (manual optimisation, two optimizers), tiny:
    3 cells of 2 nodes (5 edges) over 5 candidate ops."""
    from eecontrol.recipes.darts import DartsSearchModule

    torch.manual_seed(seed)
    ops = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    return DartsSearchModule(c=4, layers=3, steps=2, multiplier=2, op_names=ops, arch_lr=3e-2)


# --- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One column of the matrix: how the Trainer, data and module are set up.

    Args:
        title: the column name users read.
        trainer: Trainer arguments.
        stream: train on an endless ``IterableDataset`` (no length).
        variant: the module variant (:class:`TinyLlama`).
        run: ``fit``, ``fit_twice`` (fit, raise max_epochs, fit again on the same
            Trainer), ``new_trainer`` (fit, then a new Trainer and model with the same
            callback instances) or ``validate`` (``trainer.validate`` and ``trainer.test``
            only, loaders passed directly).
        fp16: fp16 mixed precision with a GradScaler.
        compile: ``torch.compile`` the module (aot_eager on CPU, inductor on CUDA).
        distributed: ``ddp`` or ``fsdp`` (2 processes, run by ``tests/settings/dist_worker.py``).
    """

    title: str
    trainer: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    variant: str = "plain"
    run: str = "fit"
    fp16: bool = False
    compile: bool = False
    distributed: str | None = None

    @property
    def step_based(self) -> bool:
        """Whether the run's length is given by ``max_steps``."""
        return self.trainer.get("max_steps", -1) not in (-1, None)


SETTINGS: dict[str, Setting] = {
    "steps_map": Setting("max_steps, map dataset", {"max_steps": 20}),
    "steps_stream": Setting(
        "max_steps, IterableDataset", {"max_steps": 20, "val_check_interval": 5}, stream=True
    ),
    "steps_stream_epochs": Setting(
        "max_steps + max_epochs=-1, IterableDataset",
        {"max_steps": 20, "max_epochs": -1, "val_check_interval": 5},
        stream=True,
    ),
    "val_fraction": Setting("val_check_interval=0.5", {"max_epochs": 2, "val_check_interval": 0.5}),
    "val_int": Setting(
        "val_check_interval=5 (int)",
        {"max_steps": 20, "val_check_interval": 5, "check_val_every_n_epoch": None},
    ),
    "check_val_n": Setting(
        "check_val_every_n_epoch=2", {"max_epochs": 4, "check_val_every_n_epoch": 2}
    ),
    "accumulation": Setting(
        "accumulate_grad_batches=4", {"max_epochs": 3, "accumulate_grad_batches": 4}
    ),
    "bf16_mixed": Setting("bf16-mixed", {"max_epochs": 2, "precision": "bf16-mixed"}),
    "bf16_true": Setting("bf16-true", {"max_epochs": 2, "precision": "bf16-true"}),
    "fp16_scaler": Setting("fp16-mixed with a GradScaler", {"max_epochs": 2}, fp16=True),
    "clipping": Setting("gradient_clip_val", {"max_epochs": 2, "gradient_clip_val": CLIP}),
    "manual": Setting(
        "manual optimization (+ clip_gradients)", {"max_epochs": 2}, variant="manual"
    ),
    "two_opt": Setting("two optimizers (manual)", {"max_epochs": 2}, variant="two_opt"),
    "groups_sched": Setting(
        "parameter groups + per-step scheduler", {"max_epochs": 2}, variant="groups"
    ),
    "lora": Setting("LoRA (peft)", {"max_epochs": 2}, variant="lora"),
    "fit_twice": Setting("fit() twice on one Trainer", {"max_epochs": 2}, run="fit_twice"),
    "new_trainer": Setting(
        "a new Trainer with the same callbacks", {"max_epochs": 2}, run="new_trainer"
    ),
    "validate_only": Setting("validate / test only", {}, run="validate"),
    "ddp": Setting("DDP, 2 processes", {"max_epochs": 2}, distributed="ddp"),
    "fsdp": Setting("FSDP, 2 processes", {"max_epochs": 2}, distributed="fsdp"),
    "compile": Setting("torch.compile", {"max_epochs": 2}, compile=True),
}

# --- probes ----------------------------------------------------------------------------


class Probe(Callback):
    """Records what the checkers compare against: micro-batches, validations, epoch ends."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self) -> None:
        self.batches = 0  # micro-batches seen, over all fits of this probe
        self.validations: list[tuple[int, float]] = []  # (global_step, val/loss) per validation
        self.epoch_ends: list[int] = []  # global_step at each training epoch end
        self.fit_ends: list[int] = []  # micro-batches seen when each fit ended (cumulative)
        self.fits = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fits += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_ends.append(self.batches)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get("val/loss")
        self.validations.append(
            (int(trainer.global_step), float("nan") if value is None else float(value))
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_ends.append(int(trainer.global_step))


class CountingBackend:
    """A ``torch.compile`` backend that counts compilations (graphs handed to the backend)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._dynamo.backends.registry import lookup_backend

        self.count += 1
        return lookup_backend(self.name)(gm, example_inputs)


class CompileProbe(Callback):
    """Compilations during training after the first training batch (recompiles), with
    those that happen inside validation loops (the eval graph) left out."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self, backend: CountingBackend) -> None:
        self.backend = backend
        self.after_first_batch: int | None = None
        self.in_validation = 0
        self._at_val_start = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.after_first_batch is None:
            self.after_first_batch = self.backend.count

    def on_validation_start(self, trainer, pl_module) -> None:
        self._at_val_start = self.backend.count

    def on_validation_end(self, trainer, pl_module) -> None:
        self.in_validation += self.backend.count - self._at_val_start

    @property
    def training_recompiles(self) -> int:
        """Compilations in training after the first batch."""
        assert self.after_first_batch is not None, "no training batch ran"
        return self.backend.count - self.after_first_batch - self.in_validation


# --- running a cell --------------------------------------------------------------------


@dataclass
class Run:
    """Everything a checker reads after a cell ran."""

    setting: Setting
    root: Path
    trainer: pl.Trainer
    module: pl.LightningModule
    callbacks: list[Callback]
    probe: Probe
    ctx: dict[str, Any]
    first: dict[str, Any] = field(default_factory=dict)  # the first fit of two
    compile_probe: CompileProbe | None = None
    backend: CountingBackend | None = None
    warnings: list[str] = field(default_factory=list)  # warned during the (first) fit


def trainer_kwargs(setting: Setting, root: Path, callbacks: list[Callback]) -> dict[str, Any]:
    """The Trainer arguments of a cell (quiet, on the test device)."""
    kwargs: dict[str, Any] = {
        **quiet_trainer_kwargs(root, ACCELERATOR),
        "log_every_n_steps": 1,
        "callbacks": callbacks,
        "deterministic": False,
    }
    kwargs.update(setting.trainer)
    if setting.fp16:
        if DEVICE == "cuda":
            kwargs["precision"] = "16-mixed"
        else:  # Lightning refuses precision="16-mixed" on CPU; torch supports it with a scaler
            from lightning.pytorch.plugins import MixedPrecision

            kwargs["plugins"] = [
                MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
            ]
    if any(isinstance(cb, ResumableCheckpoint) for cb in callbacks):
        kwargs["enable_checkpointing"] = True
    return kwargs


def build_module(spec: CallbackSpec, setting: Setting, seed: int = 0) -> pl.LightningModule:
    """The cell's module: the tiny DARTS search or the tiny Llama in the setting's variant."""
    if spec.kind == "darts":
        return darts_module(seed)
    return TinyLlama(setting.variant, seed)


def strategy_for(spec: CallbackSpec, setting: Setting, plain_ddp: bool = False) -> Any:
    """The strategy of a distributed cell (``ddp``: the callback's own; ``fsdp`` on CPU: gloo)."""
    if setting.distributed == "ddp":
        return "ddp" if plain_ddp else spec.ddp_strategy
    from lightning.pytorch.strategies import FSDPStrategy

    policy = None
    if spec.kind == "llama":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        policy = {LlamaDecoderLayer}
    if DEVICE == "cuda":
        return FSDPStrategy(auto_wrap_policy=policy)
    from eecontrol.testing import CPUFSDPStrategy

    class ScriptCPUFSDPStrategy(CPUFSDPStrategy):
        """``eecontrol.testing.CPUFSDPStrategy`` (FSDP over gloo on CPU, full state dicts
        gathered in place) started like ``strategy="fsdp"``: by re-running the script, so
        every rank runs the cell's checker on its own callbacks (``dist_worker.py``)."""

        def _configure_launcher(self) -> None:
            FSDPStrategy._configure_launcher(self)

    return ScriptCPUFSDPStrategy(auto_wrap_policy=policy)


def run_cell(callback: str, setting_name: str, root: Path, plain_ddp: bool = False) -> Run:
    """Trains ``callback`` under ``setting_name`` and returns the run.

    Distributed settings must run under a launcher (``tests/settings/dist_worker.py``).
    Raises whatever the fit raises (a refusal at setup is an error from ``fit``).
    """
    spec = CALLBACKS[callback]
    setting = SETTINGS[setting_name]
    torch.manual_seed(0)
    ctx: dict[str, Any] = {"root": root, "spec": spec, "setting": setting}
    module = build_module(spec, setting)
    probe = Probe()
    callbacks = [epoch_seed(setting), *spec.callbacks(ctx, setting), probe]
    train_loader, val_loader = loaders(spec.kind, setting.stream)
    backend = compile_probe = None
    fit_module: Any = module
    if setting.compile:
        torch._dynamo.reset()  # no compiled code cached by an earlier cell
        backend = CountingBackend("inductor" if DEVICE == "cuda" else "aot_eager")
        compile_probe = CompileProbe(backend)
        callbacks.append(compile_probe)
        # the network inside the LightningModule, as users compile a Hugging Face model
        # (compiling the LightningModule itself fails in dynamo here: 'method' object has
        # no attribute '__dict__')
        module.net = torch.compile(module.net, backend=backend)
    kwargs = trainer_kwargs(setting, root, callbacks)
    if setting.distributed is not None:
        kwargs.update(devices=2, strategy=strategy_for(spec, setting, plain_ddp))
    trainer = pl.Trainer(**kwargs)
    run = Run(setting, root, trainer, module, callbacks, probe, ctx, {}, compile_probe, backend)
    if setting.run == "validate":
        run.first["validate"] = trainer.validate(fit_module, dataloaders=val_loader, verbose=False)
        run.first["test"] = trainer.test(fit_module, dataloaders=val_loader, verbose=False)
        return run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(fit_module, train_loader, val_loader)
    run.warnings = [str(w.message) for w in caught]
    if setting.run == "fit_twice":
        run.first = spec.snapshot(run)
        trainer.fit_loop.max_epochs = 2 * int(setting.trainer["max_epochs"])
        trainer.fit(fit_module, train_loader, val_loader)
    elif setting.run == "new_trainer":
        # a loop over seeds: the same callback instances, a new Trainer and a new model
        run.first = spec.snapshot(run)
        old = callback_under_test(callbacks)
        second = None
        for label in ("reused", "fresh"):
            torch.manual_seed(1)
            module = build_module(spec, setting, seed=1)
            probe = Probe()
            fresh = spec.callbacks(ctx, setting)
            if label == "reused":
                fresh = [old if type(cb) is type(old) else cb for cb in fresh]
            callbacks = [epoch_seed(setting), *fresh, probe]
            trainer = pl.Trainer(**trainer_kwargs(setting, root / label, callbacks))
            train_loader, val_loader = loaders(spec.kind, setting.stream)
            trainer.fit(module, train_loader, val_loader)
            if label == "reused":
                second = Run(
                    setting, root / label, trainer, module, callbacks, probe, ctx, run.first
                )
            else:  # what a new instance decides in the same fit: the reused one must agree
                second.first["fresh_decisions"] = [
                    (d.action, d.step, d.reason) for d in callback_under_test(callbacks).decisions
                ]
        assert second is not None
        run = second
    return run


# --- callback specs (checkers) ---------------------------------------------------------


@dataclass(frozen=True)
class CallbackSpec:
    """One row of the matrix: the callback under test, its probes and its checker.

    Args:
        title: the row name users read.
        kind: ``llama`` or ``darts`` (which module and data).
        callbacks: ``(ctx, setting) -> callbacks`` (the callback under test first).
        check: ``(run) -> None``; raises AssertionError naming what broke.
        snapshot: ``(run) -> dict``: what a checker needs from the first of two fits.
        checks: one line for the docs: what each cell asserts.
    """

    title: str
    kind: str
    callbacks: Callable[[dict[str, Any], Setting], list[Callback]]
    check: Callable[[Run], None]
    checks: str
    snapshot: Callable[[Run], dict[str, Any]] = lambda run: {}
    ddp_strategy: str = "ddp"


def callback_under_test(callbacks: list[Callback]) -> Callback:
    """The callback under test in a cell's list (the first eecontrol or checkpoint one)."""
    from eecontrol.callbacks._control import ControlCallback

    return next(cb for cb in callbacks if isinstance(cb, ControlCallback | ResumableCheckpoint))


def under_test(run: Run, cls: type) -> Any:
    found = [cb for cb in run.callbacks if isinstance(cb, cls)]
    assert found, f"no {cls.__name__} in the trainer's callbacks"
    return found[0]


def _validate_only(run: Run, nothing_done: bool = True) -> bool:
    """True for a cell that only validated and tested: both ran and the callback did nothing."""
    if run.setting.run != "validate":
        return False
    assert run.first["validate"] and run.first["test"]
    assert nothing_done
    return True


def fits_validated(run: Run) -> list[tuple[int, float]]:
    """The validations of the (last) fit, as the probe saw them."""
    return list(run.probe.validations)


# GradES --------------------------------------------------------------------------------


def _find(trainer: pl.Trainer, name: str) -> Any:
    return next((cb for cb in trainer.callbacks if type(cb).__name__ == name), None)


def _full_gradients(trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
    """Under FSDP: every parameter's full (unsharded) gradient by its original name,
    gathered with ``summon_full_params`` (a collective: every rank calls it); else None."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from eecontrol.core.grades import original_name

    model = trainer.strategy.model
    with FSDP.summon_full_params(model, writeback=False, with_grads=True):
        return {
            original_name(n): p.grad.detach().clone()
            for n, p in model.named_parameters()
            if p.grad is not None
        }


class GradReference(Callback):
    """Before GradES: the float64 L1 of each component's gradient at each step of its plan.

    The gradient is read where ``optimizer.step`` receives it (``on_before_optimizer_step``):
    accumulated and unscaled; under automatic optimization before ``gradient_clip_val``
    clips it, under manual optimization after any ``self.clip_gradients`` in
    ``training_step`` (what GradES documents it reads). Steps are GradES's plan steps
    (``plan_step``: optimizer steps, or training batches under manual optimization).
    Under FSDP the reference is the full (unsharded) gradient, gathered on every rank.
    ``pre_clip`` keeps the module's pre-clipping values (manual variants), so a cell can
    show that clipping changed what was compared.
    """

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self) -> None:
        self.grades: Any = None
        self.by_step: dict[int, dict[str, float]] = {}
        self.pre_clip: dict[int, dict[str, float]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.grades = _find(trainer, "GradES")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from eecontrol.callbacks._control import plan_step

        step = plan_step(trainer)
        if step in self.by_step or self.grades is None or not self.grades._components:
            return
        pre = getattr(pl_module, "pre_clip", None) or {}
        values: dict[str, float] = {}
        before: dict[str, float] = {}
        full = _full_gradients(trainer) if trainer.world_size > 1 else None
        for comp in self.grades._components:
            if comp.name in self.grades.frozen:
                continue
            grads = [p.grad for p in comp.params]
            if full is not None:  # FSDP: each rank holds pieces; compare with the full matrix
                grads = [full.get(n) for n in comp.param_names]
            if any(g is None for g in grads):
                continue
            values[comp.name] = math.fsum(float(g.detach().double().abs().sum()) for g in grads)
            if pre and all(n in pre for n in comp.param_names):
                before[comp.name] = math.fsum(pre[n] for n in comp.param_names)
        self.by_step[step] = values
        self.pre_clip[step] = before


class GradESReadings(Callback):
    """After GradES: its readings per step, a copy of each matrix when it is frozen, and
    the micro-batches done (over all fits) when it was frozen."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self) -> None:
        self.grades: Any = None
        self.readings: dict[int, dict[str, float | None]] = {}
        self.frozen_copies: dict[str, list[torch.Tensor]] = {}
        self.frozen_at_batch: dict[str, tuple[int, int]] = {}  # name -> (batches done, fit)
        self.batches = 0
        self.fits = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.grades = _find(trainer, "GradES")
        self.fits += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from eecontrol.callbacks._control import plan_step

        step = plan_step(trainer)  # GradES's unit (training batches under manual optimization)
        if self.grades._last_step == step:
            # several optimizers: each call reads the components that optimizer owns, so
            # the step's readings are complete after its last call (the values are kept)
            self.readings[step] = dict(self.grades.last_values)
        for comp in self.grades._components:
            if comp.name in self.grades.frozen and comp.name not in self.frozen_copies:
                self.frozen_copies[comp.name] = [p.detach().clone() for p in comp.params]
                self.frozen_at_batch[comp.name] = (self.batches, self.fits)


def _grades_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    from eecontrol import GradES

    # q_proj matrices freeze at the end of the grace period (a threshold they all pass);
    # nothing else ever freezes, so training goes on and frozen weights must stay put
    return [
        GradReference(),
        GradES(tau={"*.q_proj": 1e9, "default": 0.0}, grace=0.3),
        GradESReadings(),
    ]


def _grades_check(run: Run) -> None:
    from eecontrol import GradES

    cb = under_test(run, GradES)
    if run.setting.run == "validate":
        assert not any(d.action in ("freeze", "stop") for d in cb.decisions), cb.decisions
        assert run.first["validate"] and run.first["test"]
        return
    ref = under_test(run, GradReference)
    got = under_test(run, GradESReadings)
    assert cb.components, "GradES found no components"
    compared = 0
    for step, values in got.readings.items():
        expected = ref.by_step.get(step, {})
        for name, value in values.items():
            if value is None or name not in expected:
                continue
            exp = expected[name]
            assert abs(value - exp) <= 1e-6 * max(abs(exp), 1e-12), (
                f"step {step} {name}: GradES read {value!r}, float64 recomputation {exp!r}"
            )
            compared += 1
    assert compared > 0, "no GradES reading could be compared with a recomputation"
    if run.setting.variant == "manual":
        # the cell tells the two gradients apart: clip_gradients changed some compared one
        clipped = sum(
            1
            for step, values in got.readings.items()
            for name, value in values.items()
            if value is not None
            and name in ref.pre_clip.get(step, {})
            and abs(ref.pre_clip[step][name] - value) > 1e-3 * abs(value)
        )
        assert clipped > 0, "clip_gradients never changed a compared gradient"
    frozen = cb.frozen
    assert frozen, "GradES froze nothing (q_proj should freeze after the grace period)"
    assert sum(1 for d in cb.decisions if d.action == "freeze") == len(frozen), (
        f"{len(frozen)} frozen, freeze decisions: {[d.action for d in cb.decisions]}"
    )
    # the grace period in units of training progress (micro-batches / accumulation): a
    # freeze must come after 30% of the fit it happened in
    accumulate = int(run.setting.trainer.get("accumulate_grad_batches", 1))
    ends = run.probe.fit_ends
    for name in frozen:
        assert name in got.frozen_at_batch, f"{name} frozen without a reading of this fit"
        batches, fit = got.frozen_at_batch[name]
        total = ends[min(fit, len(ends)) - 1] // accumulate
        done = (batches - 1) // accumulate  # optimizer steps (per optimizer) before this one
        assert done >= int(0.3 * total) - 1, (
            f"{name} frozen after {done} of {total} optimizer steps, before the 30% grace"
        )
    changed = 0
    for comp in cb._components:
        if comp.name in got.frozen_copies:
            for before, p in zip(got.frozen_copies[comp.name], comp.params):
                assert torch.equal(before, p.detach()), f"{comp.name} changed after freezing"
        else:
            changed += 1
    assert changed > 0, "every component froze: nothing left training"


# DropoutSchedule ------------------------------------------------------------------------


class RateProbe(Callback):
    """After DropoutSchedule: every target's rate at every micro-batch, and the batch index."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[float]]] = []
        self.count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rates = []
        for m in pl_module.modules():
            if isinstance(m, torch.nn.Dropout):
                rates.append(float(m.p))
            elif isinstance(getattr(m, "attention_dropout", None), float | int):
                rates.append(float(m.attention_dropout))
        self.seen.append((self.count, rates))
        self.count += 1


def _dropout_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    from eecontrol import DropoutSchedule

    return [DropoutSchedule(p=P_DROP, mode="early", schedule="linear", cutoff=0.5), RateProbe()]


def expected_rate(k: int, total: int) -> float:
    """Early linear dropout at optimizer step k of total (cutoff at half): the paper's rule."""
    cutoff = round(0.5 * total)
    k = min(k, total - 1)
    if k >= cutoff:
        return 0.0
    return float(np.linspace(P_DROP, 0.0, cutoff)[k])


def _dropout_check(run: Run) -> None:
    from eecontrol import DropoutSchedule

    cb = under_test(run, DropoutSchedule)
    if _validate_only(run):
        return
    probe = under_test(run, RateProbe)
    accumulate = int(run.setting.trainer.get("accumulate_grad_batches", 1))
    assert probe.count > 0 and probe.seen[0][1], "no micro-batch or no dropout target seen"
    ends = run.probe.fit_ends
    assert ends and ends[-1] == probe.count, (ends, probe.count)
    for i, rates in probe.seen:
        # the schedule spans the fit the micro-batch belongs to (a continued fit: both)
        fit_end = next(e for e in ends if i < e)
        total = math.ceil(fit_end / accumulate)  # optimizer steps (per optimizer) so far
        want = expected_rate(i // accumulate, total)
        assert all(abs(r - want) < 1e-9 for r in rates), (
            f"micro-batch {i} (optimizer step {i // accumulate} of {total}): rates "
            f"{sorted(set(rates))}, schedule {want}"
        )
    phases = {max(r) > 0 for _, r in probe.seen}
    assert phases == {True, False}, "the run never saw both phases of the schedule"
    assert cb.decisions and cb.decisions[0].action == "schedule"


# ConformalEarlyStopping ---------------------------------------------------------------------


CES_EVERY = 5  # storage_period in optimizer steps on step-based settings


def _ces_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    from eecontrol import ConformalEarlyStopping

    kwargs: dict[str, Any] = {"task": "classification", "storage_period": 1}
    if setting.step_based:  # docs/ces.md "Step-based runs": a candidate every N steps
        kwargs.update(storage_unit="steps", storage_period=CES_EVERY)
        ctx["every"] = CES_EVERY
    return [ConformalEarlyStopping(**kwargs)]


def _ces_snapshot(run: Run) -> dict[str, Any]:
    from eecontrol import ConformalEarlyStopping

    cb = under_test(run, ConformalEarlyStopping)
    return {"steps": list(cb.steps), "decisions": len(cb.decisions)}


@torch.no_grad()
def recompute_outputs(run: Run, path: Path) -> torch.Tensor:
    """A stored candidate's hold-out outputs, recomputed from its checkpoint (float64)."""
    blob = torch.load(path, weights_only=True, map_location="cpu")
    state = {k.replace("_orig_mod.", ""): v for k, v in blob["state_dict"].items()}
    model = build_module(run.ctx["spec"], run.setting)
    dtype = next(iter(v for v in state.values() if v.is_floating_point())).dtype
    model = model.to(device=run.module.device, dtype=dtype)
    model.load_state_dict(state)
    model.eval()
    _, _, xv, _ = digit_tokens()
    return torch.softmax(model(xv.to(run.module.device)), dim=-1).to("cpu", torch.float64)


def _ces_check(run: Run) -> None:
    from eecontrol import ConformalEarlyStopping

    cb = under_test(run, ConformalEarlyStopping)
    if _validate_only(run, not cb.steps):
        return
    assert cb.steps, "no candidate stored"
    every = run.ctx.get("every")
    last = int(run.trainer.global_step)
    if every is not None:  # storage_unit="steps": after every N-th optimizer step
        planned = list(range(every, last + 1, every))
    else:
        planned = list(run.probe.epoch_ends)
    assert list(cb.steps) == planned, f"candidates at steps {cb.steps}, planned {planned}"
    plan = [d for d in cb.decisions if d.action == "plan"]
    assert plan, "no plan decision"
    n_planned = plan[-1].evidence.get("planned_candidates")
    if n_planned is not None:
        assert n_planned == len(cb.steps), f"plan says {n_planned}, stored {len(cb.steps)}"
    summary = [d for d in cb.decisions if d.action == "candidates"]
    assert summary and summary[-1].evidence["candidates"] == len(cb.steps), (
        f"the last 'candidates' decision says {summary[-1].evidence['candidates'] if summary else None}"
        f", {len(cb.steps)} are stored"
    )
    assert len(cb.outputs) == len(cb.paths) == len(cb.steps)
    for i, name in enumerate(cb.paths):
        path = cb._dir / name
        assert path.is_file(), f"candidate {path} missing"
        again = recompute_outputs(run, path)
        stored = cb.outputs[i]
        assert stored.shape == again.shape
        diff = float((stored - again).abs().max())
        assert diff <= 1e-6, f"candidate {i}: stored outputs differ from a recomputation by {diff}"


# LearningCurveStopping -----------------------------------------------------------------------


def _curve_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    from eecontrol import LearningCurveStopping

    return [LearningCurveStopping(monitor="val/loss", mode="min", n_bootstrap=20)]


def _curve_check(run: Run) -> None:
    from eecontrol import LearningCurveStopping

    cb = under_test(run, LearningCurveStopping)
    if _validate_only(run, not any(d.action == "stop" for d in cb.decisions)):
        return
    validations = fits_validated(run)
    assert validations, "no validation ran"
    history = cb.history
    assert history["step"] == [s for s, _ in validations], (
        f"curve steps {history['step']}, validations at {[s for s, _ in validations]}"
    )
    assert history["value"] == [v for _, v in validations], "curve values differ from val/loss"


# DARTS+ ---------------------------------------------------------------------------------------


class AlphaProbe(Callback):
    """The softmax of the normal cell's architecture weights at every validation and epoch end."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self) -> None:
        self.at_validation: list[torch.Tensor] = []
        self.at_epoch_end: list[torch.Tensor] = []

    def _read(self, pl_module: pl.LightningModule) -> torch.Tensor:
        return torch.softmax(pl_module.arch_parameters()["normal"].detach().float().cpu(), -1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.at_validation.append(self._read(pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.at_epoch_end.append(self._read(pl_module))


def _darts_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    from eecontrol import DARTSPlusStopping

    # a stream is one epoch: check per validation (docs/darts_plus.md)
    unit = {"check_unit": "validations"} if setting.stream else {}
    return [
        DARTSPlusStopping(
            criterion="either", patience=2, min_epochs=0, stop_training=False, **unit
        ),
        AlphaProbe(),
    ]


def _darts_check(run: Run) -> None:
    from eecontrol import DARTSPlusStopping

    cb = under_test(run, DARTSPlusStopping)
    if _validate_only(run, not cb.history):
        return
    probe = under_test(run, AlphaProbe)
    if run.setting.stream:
        # one epoch is the whole run: check_unit="validations", a check per validation
        planned, alphas = [s for s, _ in fits_validated(run)], probe.at_validation
    else:
        planned, alphas = list(run.probe.epoch_ends), probe.at_epoch_end
    assert planned, "nothing to check at"
    steps = [r["step"] for r in cb.history]
    assert steps == planned, f"DARTS+ checked at steps {steps}, planned {planned}"
    stored = cb._alphas.get("normal", [])
    assert len(stored) == len(alphas), f"{len(stored)} stored alphas, {len(alphas)} checks"
    for i, (a, b) in enumerate(zip(stored, alphas)):
        assert torch.allclose(a.float(), b, atol=1e-6), f"check {i}: alphas differ"


# OptunaPruning ----------------------------------------------------------------------------------


def _pruning_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    import optuna

    from eecontrol.sweep.trial import OptunaPruning

    url = f"sqlite:///{ctx['root'] / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    if rank == 0:  # one study and one trial, as the sweeper makes them
        study = optuna.create_study(
            study_name="matrix", storage=url, direction="minimize", load_if_exists=True
        )
        number = study.ask().number
    if dist:
        torch.distributed.barrier()
    if rank != 0:
        number = optuna.load_study(study_name="matrix", storage=url).trials[-1].number
    ctx["study"] = (url, number)
    return [OptunaPruning(monitor="val/loss", study="matrix", trial_number=number, storage=url)]


def _pruning_check(run: Run) -> None:
    import optuna

    from eecontrol.sweep.trial import OptunaPruning

    cb = under_test(run, OptunaPruning)
    if _validate_only(run):
        return
    url, number = run.ctx["study"]
    study = optuna.load_study(study_name="matrix", storage=url)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    validations = fits_validated(run)
    assert validations, "no validation ran"
    reported = trial.intermediate_values
    assert sorted(reported) == list(range(len(validations))), (
        f"reports at {sorted(reported)}, {len(validations)} validations"
    )
    if run.trainer.is_global_zero:  # rank zero reports its own val/loss
        assert [reported[i] for i in range(len(validations))] == [v for _, v in validations]
    assert cb.decisions == [] or all(d.action == "stop" for d in cb.decisions)


# ResumableCheckpoint -------------------------------------------------------------------------------


class CrashAt(Callback):
    """Raises at the first micro-batch at or past ``step`` (a process that dies)."""

    training_only = True  # never looks at hold-out metrics (CES checks this)

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


class StartStep(Callback):
    """The global step training starts from (> 0 after a real resume)."""

    step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = int(trainer.global_step)


def _resume_callbacks(ctx: dict[str, Any], setting: Setting) -> list[Callback]:
    every = 5 if setting.stream else None
    return [ResumableCheckpoint(dirpath=ctx["root"] / "ck", every_n_train_steps=every)]


def _resume_check(run: Run) -> None:
    """Crash after a checkpoint, resume from it, and compare with the uninterrupted run."""
    setting = run.setting
    if setting.run == "validate":
        assert run.first["validate"] and run.first["test"]
        return
    last = run.root / "ck" / "last.ckpt"
    assert last.is_file(), "ResumableCheckpoint wrote no last.ckpt"
    reference = {k: v.detach().clone() for k, v in run.module.state_dict().items()}
    total = int(run.trainer.global_step)
    assert total > 0
    # the crashed run: dies after its first checkpoint, resumes from it in a new process state
    crash_root = run.root / "crashed"
    # map data: after the first epoch-end checkpoint (docs/resume.md: exact); a stream has
    # no epoch boundary inside the run: after the step-5 checkpoint
    crash_at = 8 if setting.stream else run.probe.epoch_ends[0] + 1
    spec = run.ctx["spec"]
    for attempt in ("crash", "resume"):
        torch.manual_seed(1234)  # the resumed process does not share the first one's RNG
        module = build_module(spec, setting)
        ckpt = ResumableCheckpoint(
            dirpath=crash_root / "ck", every_n_train_steps=5 if setting.stream else None
        )
        extra: list[Callback] = [CrashAt(crash_at)] if attempt == "crash" else []
        start = StartStep()
        callbacks = [epoch_seed(setting), ckpt, start, *extra]
        trainer = pl.Trainer(**trainer_kwargs(setting, crash_root, callbacks))
        train_loader, val_loader = loaders(spec.kind, setting.stream)
        path = crash_root / "ck" / "last.ckpt"
        if attempt == "crash":
            shutil.rmtree(crash_root, ignore_errors=True)
            try:
                trainer.fit(module, train_loader, val_loader)
            except RuntimeError as err:
                assert "simulated crash" in str(err)
            assert path.is_file(), "no checkpoint before the crash"
        else:
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(path), weights_only=True)
            assert start.step is not None and start.step > 0, "the resumed run started at step 0"
            assert int(trainer.global_step) == total
            for k, v in module.state_dict().items():
                diff = float((v.float() - reference[k].float()).abs().max())
                assert diff == 0.0, f"{k}: resumed run differs from the uninterrupted one by {diff}"


# --- the tables ------------------------------------------------------------------------------

CALLBACKS: dict[str, CallbackSpec] = {
    "GradES": CallbackSpec(
        "GradES",
        "llama",
        _grades_callbacks,
        _grades_check,
        "every reading equals a float64 recomputation of the component's L1 gradient as "
        "optimizer.step receives it (accumulated, unscaled; under automatic optimization "
        "before gradient_clip_val clips it, under manual optimization after "
        "self.clip_gradients, and the manual cell shows clipping changed the compared "
        "gradient; rel. 1e-6), at GradES's plan steps (training batches under manual "
        "optimization); q_proj matrices freeze after the 30% grace period and stay "
        "bit-identical to the end; the other matrices keep training",
        ddp_strategy="ddp_find_unused_parameters_true",
    ),
    "DropoutSchedule": CallbackSpec(
        "DropoutSchedule",
        "llama",
        _dropout_callbacks,
        _dropout_check,
        "every target's rate at every micro-batch equals early-linear dropout (p 0.2, cutoff at "
        "half) at that micro-batch's optimizer step over the run's optimizer steps; both "
        "phases are seen. Under torch.compile (where torch guards on every rate, so each "
        "distinct rate compiles once) the cost stated at setup (`compiled_rate_values` in the "
        "schedule decision) equals the distinct rates the run set, the recompiles seen do not "
        "exceed it + 1, and a cost at torch's recompile limit is warned about; the other "
        "callbacks under compile: at most 2 recompiles in training",
    ),
    "ConformalEarlyStopping": CallbackSpec(
        "ConformalEarlyStopping (CES)",
        "llama",
        _ces_callbacks,
        _ces_check,
        "candidates stored at the planned steps (epoch ends; on step-based settings "
        "`storage_unit='steps', storage_period=5`: after every 5th optimizer step), the plan "
        "and the final 'candidates' decision count what is stored, and every stored hold-out "
        "output equals a recomputation from its checkpoint (1e-6)",
        _ces_snapshot,
    ),
    "LearningCurveStopping": CallbackSpec(
        "LearningCurveStopping",
        "llama",
        _curve_callbacks,
        _curve_check,
        "one curve point per validation, at that validation's global step, equal to its val/loss",
    ),
    "DARTSPlusStopping": CallbackSpec(
        "DARTSPlusStopping (DARTS+)",
        "darts",
        _darts_callbacks,
        _darts_check,
        "one criteria check per epoch end (the paper's unit), or on a stream "
        "(`check_unit='validations'`) one per validation, at its global step, on the "
        "architecture weights of that moment (tiny first-order DARTS search, two optimizers, "
        "manual optimisation)",
    ),
    "OptunaPruning": CallbackSpec(
        "OptunaPruning",
        "llama",
        _pruning_callbacks,
        _pruning_check,
        "the trial holds one report per validation (index 0, 1, ...) equal to its val/loss",
    ),
    "ResumableCheckpoint": CallbackSpec(
        "ResumableCheckpoint",
        "llama",
        _resume_callbacks,
        _resume_check,
        "a run that crashes after its first checkpoint and resumes from it ends with weights "
        "bit-identical to the uninterrupted run's (map data: after the first epoch-end "
        "checkpoint; a stream: killed at step 8, resumed mid-stream from the step-5 "
        "checkpoint, the loader's position and per-batch seeds restored)",
    ),
}


@dataclass(frozen=True)
class Expect:
    """What a cell does today: ``works``, ``refused`` (``match`` in the message), ``na``
    (does not apply: ``reason``) or ``xfail`` (a known defect: ``item`` of issue 23)."""

    status: str = "works"
    reason: str = ""
    item: int | None = None
    match: str = ""


def xfail(item: int, reason: str) -> Expect:
    return Expect("xfail", reason, item)


def na(reason: str) -> Expect:
    return Expect("na", reason)


def refused(reason: str, match: str) -> Expect:
    """Refused at setup: the error contains ``match``; ``reason`` says why, for the docs."""
    return Expect("refused", reason, match=match)


_DARTS_NA = (
    "the DARTS search module is manual optimisation with two optimizers (in every DARTS+ cell)"
)

EXPECTED: dict[tuple[str, str], Expect] = {
    # --- refused at setup, with the message ---
    ("DARTSPlusStopping", "fsdp"): refused(
        "the recipe's DARTS search module makes two backward passes per step under manual "
        "optimization (architecture, then weights), which FSDP's backward hooks do not "
        "support; it refuses FSDP at setup naming the strategy. DARTS+ itself reads the full "
        "alphas under FSDP: tests/callbacks/test_fsdp_ces_darts.py",
        "DartsSearchModule does not run under FSDP",
    ),
    # --- known defects, each seen failing for the reason given ---
    ("ResumableCheckpoint", "val_int"): xfail(
        10,
        "Lightning: under max_steps a resumed fit is always 'restarting', and a restarting "
        "epoch loop ends only after a validation has run (`_is_validation_done`); resumed "
        "from the epoch-end checkpoint at step 12, where no validation is due with "
        "val_check_interval=5 and check_val_every_n_epoch=None, it trains one more batch of "
        "the finished epoch (global step 12 -> 13) before epoch 1 starts, so the weights "
        "differ from the uninterrupted run. The epoch counter is right (the fix for "
        "steps_map); no small fix outside Lightning's loop internals was found",
    ),
    # --- not applicable ---
    ("DARTSPlusStopping", "accumulation"): na(
        "Lightning has no gradient accumulation in manual optimisation (the DARTS search)"
    ),
    ("DARTSPlusStopping", "clipping"): na(
        "Lightning has no gradient_clip_val in manual optimisation (the search clips itself)"
    ),
    ("DARTSPlusStopping", "manual"): na(_DARTS_NA),
    ("DARTSPlusStopping", "two_opt"): na(_DARTS_NA),
    ("DARTSPlusStopping", "groups_sched"): na("the DARTS search defines its own optimizers"),
    ("DARTSPlusStopping", "lora"): na("a DARTS supernet has no transformer to adapt"),
    ("OptunaPruning", "new_trainer"): na(
        "one trial is one run: the sweeper builds a new OptunaPruning for every trial"
    ),
    ("ResumableCheckpoint", "validate_only"): na("nothing is trained, nothing to resume"),
    ("ResumableCheckpoint", "fit_twice"): na("continued training is a new fit, not a resume"),
    ("ResumableCheckpoint", "new_trainer"): na("a checkpoint callback keeps no progress"),
    ("ResumableCheckpoint", "ddp"): na("kill-and-resume under DDP: tests/reliability"),
    ("ResumableCheckpoint", "fsdp"): na("sharded checkpoints: out of scope"),
    ("DARTSPlusStopping", "compile"): na(
        "not run: compiling the DARTS supernet (every op on every edge) takes over 5 minutes on CPU"
    ),
    ("ResumableCheckpoint", "compile"): na("compile does not change what a checkpoint holds"),
}


def expect(callback: str, setting: str) -> Expect:
    """The expected outcome of a cell (``works`` unless the table says otherwise)."""
    return EXPECTED.get((callback, setting), Expect())


def cell_param(callback: str, setting: str, marks: tuple[Any, ...] = ()) -> Any:
    """The ``pytest.param`` of a matrix cell (a strict xfail where the table expects one,
    then ``marks``), or None for a cell the table marks n/a."""
    import pytest

    e = expect(callback, setting)
    if e.status == "na":
        return None
    cell_marks = []
    if e.status == "xfail":
        cell_marks.append(
            pytest.mark.xfail(strict=True, reason=f"issue 23 item {e.item}: {e.reason}")
        )
    cell_marks += marks
    return pytest.param(callback, setting, marks=cell_marks, id=f"{callback}-{setting}")
