"""A step-based run on a stream (an ``IterableDataset``: one epoch is the whole run).

Run as ``python -m tests.reliability.stream_child ROOT [--kill-at STEP] [--resume]
[--plain]``: the digits CNN (dropout 0.3) trains ``max_steps=20`` on an endless stream of
the scikit-learn digits, each pass in an order drawn from the stream's own generator
(seed + pass), with ``last.ckpt`` every 5 steps. ``--kill-at`` SIGKILLs the process at
that step (no cleanup); ``--resume`` continues from ``last.ckpt``; ``--plain`` uses a plain
``DataLoader`` (what issue 23 item 10 measured: the stream restarts from its beginning).
The final weights go to ``ROOT/final.pt``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from eecontrol.recipes.digits import DigitsDataModule
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset

from eecontrol.resume import EpochSeed, ResumableCheckpoint
from tests.conftest import digits_model


class DigitsStream(IterableDataset):
    """The digits training split, endlessly; pass ``k`` in the order of ``randperm(seed + k)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        self.x, self.y, self.seed = x, y, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = 0
        while True:
            g = torch.Generator().manual_seed(self.seed + k)
            for i in torch.randperm(len(self.y), generator=g).tolist():
                yield self.x[i], self.y[i]
            k += 1


class StreamData(pl.LightningDataModule):
    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.digits = DigitsDataModule(batch_size=32, seed=0)
        self.plain = plain

    def setup(self, stage: str) -> None:
        self.digits.setup(stage)

    def train_dataloader(self) -> DataLoader:
        base = self.digits.train_dataloader()
        xs, ys = zip(*(base.dataset[i] for i in range(len(base.dataset))))
        stream = DigitsStream(torch.stack(xs), torch.tensor(ys), seed=0)
        if self.plain:
            return DataLoader(stream, batch_size=32)
        from eecontrol.resume import ResumableDataLoader

        cls = ResumableDataLoader
        return cls(stream, batch_size=32)

    def val_dataloader(self) -> DataLoader:
        return self.digits.val_dataloader()


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class StartStep(Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        Path(trainer.default_root_dir, "start_step").write_text(str(trainer.global_step))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    root = Path(args.root)
    callbacks: list[Callback] = [EpochSeed(0, per_batch=True), StartStep()]
    if args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    callbacks.append(ResumableCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=5))
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        max_steps=20,
        max_epochs=-1,
        val_check_interval=10,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    last = root / "checkpoints" / "last.ckpt"
    trainer.fit(
        digits_model(dropout=0.3),
        datamodule=StreamData(args.plain),
        ckpt_path=str(last) if args.resume else None,
        weights_only=True,
    )
    torch.save(trainer.lightning_module.state_dict(), root / "final.pt")


if __name__ == "__main__":
    main()
