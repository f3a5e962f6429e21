"""A child process that trains one callback spec, optionally SIGKILLs itself, or resumes.

Run as ``python -m tests.reliability.harness SPEC ROOT [--kill-at STEP] [--signal-at STEP SIG]
[--resume] [--strategy S --devices N]``. It uses what ``eecontrol-train`` ships: the
recipes' data modules (training order seeded by ``seed + epoch``), ``EpochSeed`` (dropout
masks seeded by ``seed + epoch``) and ``ResumableCheckpoint`` (``last.ckpt`` at every epoch
end), so an interrupted and resumed run can be compared with an uninterrupted one.
``--resume`` fails (exit 3) when there is no checkpoint: it never silently starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from eecontrol.recipes.digits import DigitsDataModule
from lightning.pytorch.callbacks import Callback

from eecontrol.callbacks._control import control_callbacks
from eecontrol.resume import EpochSeed, ResumableCheckpoint


class KillAt(Callback):
    """SIGKILLs this process (no cleanup, like a lost machine) at an optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """Sends this process a signal (SIGTERM, SIGUSR1, SIGINT) once, at an optimizer step."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum
        self.sent = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class StartStep(Callback):
    """Remembers the global step training starts from (> 0 after a real resume) and the
    optimizer steps of one epoch (two per batch for DARTS' two optimizers)."""

    start_step: int | None = None
    steps_per_epoch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = int(trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps_per_epoch is None and self.start_step == 0:
            self.steps_per_epoch = int(trainer.global_step)


class SkewValidationOnRank1(Callback):
    """Makes rank 1 see a different validation loss (tests that decisions still agree)."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and "val/loss" in trainer.callback_metrics:
            trainer.callback_metrics["val/loss"] = trainer.callback_metrics[
                "val/loss"
            ] * 0 + 10.0 * (trainer.current_epoch + 1)


class WriteDecisionsPerRank(Callback):
    """Writes each rank's decisions (and, for measuring callbacks, their histories)."""

    def __init__(self, root: str, histories: bool = False, start: StartStep | None = None) -> None:
        self.root = root
        self.histories = histories
        self.start = start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = [
            {"callback": type(cb).__name__, **d.to_dict(), "stopped_epoch": cb.stopped_epoch}
            for cb in control_callbacks(trainer)
            for d in cb.decisions
        ]
        histories = {
            type(cb).__name__: cb.history
            for cb in control_callbacks(trainer)
            if self.histories and isinstance(getattr(cb, "history", None), list)
        }
        Path(self.root, f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "decisions": rows,
                    "global_step": trainer.global_step,
                    "histories": histories,
                    "start_step": None if self.start is None else self.start.start_step,
                    "steps_per_epoch": None if self.start is None else self.start.steps_per_epoch,
                }
            )
        )


def build(
    spec_name: str,
) -> tuple[pl.LightningModule, list[Callback], dict[str, Any], pl.LightningDataModule]:
    from tests.reliability.specs import SPECS

    spec = SPECS[spec_name]
    data = spec.data() if spec.data is not None else DigitsDataModule(batch_size=64, seed=0)
    return spec.model(), spec.callbacks(), dict(spec.trainer), data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("root")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--signal-at", nargs=2, default=None, metavar=("STEP", "SIGNAL"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--skew", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model, callbacks, trainer_kwargs, data = build(args.spec)
    from tests.reliability.specs import SPECS

    last = Path(args.root) / "checkpoints" / "last.ckpt"
    if args.resume and not last.is_file():
        print(f"harness: --resume but there is no checkpoint {last}", file=sys.stderr)
        sys.exit(3)
    start = StartStep()
    extra: list[Callback] = [
        start,
        WriteDecisionsPerRank(args.root, SPECS[args.spec].history, start),
    ]
    # every run has the same callbacks (CES lists them in its evidence): a KillAt that
    # never fires in runs that are not killed
    extra.append(KillAt(args.kill_at if args.kill_at is not None else 2**62))
    if args.signal_at is not None:
        extra.append(SignalAt(int(args.signal_at[0]), getattr(signal, args.signal_at[1])))
    if args.skew:
        extra.append(SkewValidationOnRank1())
    ckpt = ResumableCheckpoint(dirpath=Path(args.root) / "checkpoints")
    trainer = pl.Trainer(
        default_root_dir=args.root,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # EpochSeed first, as in eecontrol-train's default callbacks: it reseeds before any
        # method callback draws random numbers at an epoch's first batch
        callbacks=[EpochSeed(0), *callbacks, *extra, ckpt],
        **trainer_kwargs,
    )
    trainer.fit(
        model, datamodule=data, ckpt_path=str(last) if args.resume else None, weights_only=True
    )


if __name__ == "__main__":
    main()
