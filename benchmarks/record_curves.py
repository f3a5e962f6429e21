"""Record a real sweep's learning curves once, for the curve benchmarks to replay.

Trains ``--configs`` random configurations of the digits recipe (``DigitsCNN`` on
scikit-learn's real 8x8 digits, AdamW) to the full epoch budget, with no stopping, and
keeps every epoch's validation accuracy and loss, the training loss and the final test
accuracy. The search space is that of a typical learning-rate / regularisation sweep:
lr log-uniform in [1e-5, 1e-2], weight decay log-uniform in [1e-5, 1e-1], dropout in
[0, 0.6], hidden width in {16, 32, 64, 128}, batch size in {16, 32, 64, 128}.

``benchmarks/curves_fit.py`` and ``benchmarks/sweep.py`` read the file it writes:

    python benchmarks/record_curves.py --configs 48 --epochs 50 \
        --out benchmarks/data/digits_curves.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN, DigitsDataModule
from lightning.pytorch.callbacks import Callback


class EpochRecorder(Callback):
    """Keeps the epoch-level metrics after every validation (sanity check excluded)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "step": trainer.global_step,
                "val_acc": float(m["val/acc"]),
                "val_loss": float(m["val/loss"]),
            }
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rows:
            self.rows[-1]["train_loss"] = float(trainer.callback_metrics["train/loss_epoch"])


def sample_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random configurations of the search space, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        {
            "lr": float(10 ** rng.uniform(-5, -2)),
            "weight_decay": float(10 ** rng.uniform(-5, -1)),
            "dropout": float(rng.uniform(0.0, 0.6)),
            "hidden": int(rng.choice([16, 32, 64, 128])),
            "batch_size": int(rng.choice([16, 32, 64, 128])),
        }
        for _ in range(n)
    ]


def train(config: dict[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    """Trains one configuration to ``epochs`` epochs; returns its curves."""
    pl.seed_everything(seed, workers=True, verbose=False)
    data = DigitsDataModule(batch_size=config["batch_size"], seed=0)
    net = DigitsCNN(hidden=config["hidden"], dropout=config["dropout"])
    lr, wd = config["lr"], config["weight_decay"]
    model = DigitsClassifier(net, optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd))
    recorder = EpochRecorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    rows = recorder.rows
    return {
        "config": config,
        "epochs": [r["epoch"] for r in rows],
        "steps": [r["step"] for r in rows],
        "val_acc": [r["val_acc"] for r in rows],
        "val_loss": [r["val_loss"] for r in rows],
        "train_loss": [r.get("train_loss", float("nan")) for r in rows],
        "test_acc_final": float(test["test/acc"]),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/digits_curves.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    runs = []
    for i, config in enumerate(sample_configs(args.configs, args.seed)):
        run = train(config, args.epochs, args.seed + i)
        run["id"] = i
        runs.append(run)
        print(
            f"{i:3d} {json.dumps(config)} val_acc[-1]={run['val_acc'][-1]:.4f} "
            f"test={run['test_acc_final']:.4f} {run['wall_s']:.1f}s",
            flush=True,
        )
    out = {
        "command": f"python benchmarks/record_curves.py --configs {args.configs} "
        f"--epochs {args.epochs} --seed {args.seed}",
        "recipe": "DigitsCNN on scikit-learn digits (1257 train / 270 val / 270 test), AdamW",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "epoch_budget": args.epochs,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
