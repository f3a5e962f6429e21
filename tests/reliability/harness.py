"""A child process that trains one callback spec, optionally SIGKILLs itself, or resumes.

Run as ``python -m tests.reliability.harness SPEC ROOT [--kill-at STEP] [--resume]
[--strategy S --devices N]``. Every source of randomness is pinned so that an interrupted
and resumed run can be compared with an uninterrupted one: a fixed data order
(``shuffle=False``) and the global RNG reseeded at every epoch start (dropout masks).
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
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from eecontrol.callbacks._control import control_callbacks


class FixedOrderDigits(pl.LightningDataModule):
    """Digits with a fixed training order (no shuffling) and an optional per-rank metric skew."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        from eecontrol.recipes.digits import DigitsDataModule

        self.inner = DigitsDataModule(batch_size=batch_size, seed=0)

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)
        self.val_set = self.inner.val_set
        self.test_set = self.inner.test_set

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.inner.train_set, batch_size=self.inner.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.inner.test_dataloader()


class Reseed(Callback):
    """Reseeds the global RNG at every epoch start, so dropout masks replay after a resume."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(1000 + trainer.current_epoch)


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


class SkewValidationOnRank1(Callback):
    """Makes rank 1 see a different validation loss (tests that decisions still agree)."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and "val/loss" in trainer.callback_metrics:
            trainer.callback_metrics["val/loss"] = trainer.callback_metrics[
                "val/loss"
            ] * 0 + 10.0 * (trainer.current_epoch + 1)


class WriteDecisionsPerRank(Callback):
    """Writes each rank's decisions (and, for measuring callbacks, their histories)."""

    def __init__(self, root: str, histories: bool = False) -> None:
        self.root = root
        self.histories = histories

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
                {"decisions": rows, "global_step": trainer.global_step, "histories": histories}
            )
        )


def build(
    spec_name: str,
) -> tuple[pl.LightningModule, list[Callback], dict[str, Any], pl.LightningDataModule]:
    from tests.reliability.specs import SPECS

    spec = SPECS[spec_name]
    data = spec.data() if spec.data is not None else FixedOrderDigits()
    return spec.model(), spec.callbacks(), dict(spec.trainer), data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("root")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--skew", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model, callbacks, trainer_kwargs, data = build(args.spec)
    from tests.reliability.specs import SPECS

    extra: list[Callback] = [Reseed(), WriteDecisionsPerRank(args.root, SPECS[args.spec].history)]
    if args.kill_at is not None:
        extra.append(KillAt(args.kill_at))
    if args.skew:
        extra.append(SkewValidationOnRank1())
    ckpt = ModelCheckpoint(dirpath=Path(args.root) / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        default_root_dir=args.root,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, *extra, ckpt],
        **trainer_kwargs,
    )
    last = Path(args.root) / "checkpoints" / "last.ckpt"
    trainer.fit(
        model,
        datamodule=data,
        ckpt_path=str(last) if args.resume and last.exists() else None,
    )


if __name__ == "__main__":
    main()
