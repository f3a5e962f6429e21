"""Whole-step overhead of every eecontrol callback, side by side with the bare loop.

A tiny Llama sequence classifier (2 layers, hidden 128, built
from a config) trains on real digits read as 64-token sequences with gradient accumulation
4 and bf16-mixed at Lightning's default logging (``log_every_n_steps=50``, the default
logger), and validates at every epoch end. For each callback the bare run and the run with
the callback alternate (``--repeats`` pairs, the order flipped every pair), and the
overhead is ``median(with) / median(bare) - 1`` of the time per optimizer step from
``on_train_start`` to ``on_train_end`` (validation, epoch-end hooks and checkpoints
included: the whole step, not only the callback's hook). Both the wall time and the
process CPU time are reported; on a shared machine the CPU time is the steadier one.
DARTSPlusStopping is measured on the tiny DARTS search instead (it needs one), without
accumulation (manual optimisation).

Usage::

    nice -n 10 python benchmarks/overhead.py            # JSON to benchmarks/results/overhead.json
    python benchmarks/overhead.py --device cuda --out $OUT/overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"


def digits_tokens(n_val: int = 128) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's real digits read as 64 tokens (intensities 0..16)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.long)
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class TinyLlama(pl.LightningModule):
    """A random Llama classifier built from a config, with attention dropout 0.1."""

    def __init__(self, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForSequenceClassification

        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=18,
            max_position_embeddings=64,
            pad_token_id=17,
            num_labels=10,
            attention_dropout=0.1,
        )
        self.net = LlamaForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        self.log("train/loss", loss, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x).float(), y), batch_size=len(y))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class Clock(Callback):
    """Wall and CPU time from on_train_start to on_train_end, and the optimizer steps."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.wall, self.cpu, self.step0 = time.perf_counter(), time.process_time(), 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.steps = int(trainer.global_step)


def _pruning(root: Path) -> Callback:
    import optuna

    from eecontrol.sweep.trial import OptunaPruning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(study_name="bench", storage=url, load_if_exists=True)
    trial = study.ask()
    return OptunaPruning("val/loss", "bench", trial.number, storage=url)


def callbacks() -> dict[str, Callable[[Path], list[Callback]]]:
    """The callbacks measured, each at its documented defaults."""
    from eecontrol import (
        ConformalEarlyStopping,
        DARTSPlusStopping,
        DropoutSchedule,
        GradES,
        LearningCurveStopping,
    )
    from eecontrol.resume import ResumableCheckpoint

    return {
        "GradES": lambda root: [GradES()],
        "DropoutSchedule": lambda root: [DropoutSchedule(p=0.1, mode="early", cutoff=0.5)],
        "ConformalEarlyStopping": lambda root: [ConformalEarlyStopping(task="classification")],
        "LearningCurveStopping": lambda root: [LearningCurveStopping("val/loss", "min")],
        "OptunaPruning": lambda root: [_pruning(root)],
        "ResumableCheckpoint": lambda root: [ResumableCheckpoint(dirpath=root / "ck")],
        "DARTSPlusStopping": lambda root: [DARTSPlusStopping(stop_training=False)],
    }


def one_fit(name: str | None, darts: bool, args: argparse.Namespace) -> tuple[float, float, int]:
    """One training run; returns (wall s, CPU s, optimizer steps) of its training loop."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clock = Clock()
        extra = callbacks()[name](root) if name is not None else []
        torch.manual_seed(0)
        if darts:
            from eecontrol.recipes.darts import DartsSearchModule

            module: pl.LightningModule = DartsSearchModule(c=4, layers=3)
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            xs = torch.as_tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
            ys = torch.as_tensor(y)
            half = (len(ys) - 128) // 2
            w = TensorDataset(xs[128 : 128 + half], ys[128 : 128 + half])
            a = TensorDataset(xs[128 + half :], ys[128 + half :])
            train: Any = {
                "weights": DataLoader(w, batch_size=32, shuffle=True),
                "arch": DataLoader(a, batch_size=32, shuffle=True),
            }
            val = DataLoader(TensorDataset(xs[:128], ys[:128]), batch_size=128)
            accumulate = 1
        else:
            module = TinyLlama(args.hidden, args.layers)
            tr, va = digits_tokens()
            train = DataLoader(tr, batch_size=32, shuffle=True)
            val = DataLoader(va, batch_size=128)
            accumulate = 4
        trainer = pl.Trainer(
            default_root_dir=str(root),
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed",
            accumulate_grad_batches=accumulate,
            max_epochs=args.epochs,
            limit_train_batches=args.batches,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            enable_checkpointing=name == "ResumableCheckpoint",
            callbacks=[*extra, clock],
        )
        trainer.fit(module, train, val)
        return clock.wall, clock.cpu, clock.steps


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    darts = name == "DARTSPlusStopping"
    bare: list[tuple[float, float, int]] = []
    with_cb: list[tuple[float, float, int]] = []
    one_fit(None, darts, args)  # warm-up (imports, allocator, caches)
    for r in range(args.repeats):
        order = [(None, bare), (name, with_cb)]
        for cb, out in order if r % 2 == 0 else order[::-1]:
            out.append(one_fit(cb, darts, args))

    def per_step(runs: list[tuple[float, float, int]], i: int) -> list[float]:
        return [run[i] / run[2] for run in runs]

    row: dict[str, Any] = {"model": "darts_search" if darts else "tiny_llama"}
    for i, key in ((0, "wall"), (1, "cpu")):
        b, w = statistics.median(per_step(bare, i)), statistics.median(per_step(with_cb, i))
        row[f"{key}_ms_per_step_bare"] = round(1e3 * b, 4)
        row[f"{key}_ms_per_step_with"] = round(1e3 * w, 4)
        row[f"{key}_overhead"] = round(w / b - 1.0, 5)
    row["steps"] = bare[0][2]
    row["steps_with"] = with_cb[0][2]
    row["repeats"] = args.repeats
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run")
    parser.add_argument("--batches", type=int, default=16, help="training batches per epoch")
    parser.add_argument("--hidden", type=int, default=128, help="the Llama's hidden size")
    parser.add_argument("--layers", type=int, default=2, help="the Llama's layers")
    parser.add_argument("--repeats", type=int, default=5, help="bare/with pairs per callback")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="callbacks to measure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    names = args.only or list(callbacks())
    rows = {}
    for name in names:
        rows[name] = measure(name, args)
        print(name, json.dumps(rows[name]), flush=True)
    result = {
        "benchmark": "whole-step overhead per callback vs the bare loop (same run, interleaved)",
        "setting": {
            "model": f"tiny Llama classifier ({args.layers} layers, hidden {args.hidden}); "
            "DARTS+: the recipe's DARTS search (c=4, 3 cells)",
            "data": "sklearn digits as 64 tokens, batch 32, 128 held out",
            "batches_per_epoch": args.batches,
            "precision": "bf16-mixed",
            "accumulate_grad_batches": 4,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "device": args.device,
            "threads": args.threads,
            "logging": "Lightning defaults (log_every_n_steps=50, default logger)",
        },
        "target": "<= 0.01 overhead per callback",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "callbacks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
