"""Whole-step cost of GradES and DropoutSchedule logging, side by side in one process.

Issue 23 item 9: two ``pl_module.log`` calls per micro-batch made GradES's step x1.065-1.089
on a tiny Llama (bf16, accumulation 4). This times the same model and data with: no
callback; GradES and DropoutSchedule as they are now (loggers written directly once per
optimizer step at ``log_every_n_steps``, ``self.log`` only when the progress-bar value
changes); and the same callbacks with the previous logging added back (``self.log`` of
their values on every micro-batch, as b81904a did). Configurations are interleaved over
rounds; the statistic is the median CPU time of the training thread per micro-batch after
warm-up (one torch thread), with wall time alongside.

    python benchmarks/step_logging.py --steps 60 --rounds 5 --out benchmarks/results/step_logging.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eecontrol import DropoutSchedule, GradES
from tests.callbacks.llm_setting import TinyLlama, loaders


class MicroBatchTimer(Callback):
    """Wall time and the training thread's CPU time at every micro-batch start.

    With one torch thread all compute runs in this thread, so its CPU time
    (``time.thread_time``) is what a step costs, little disturbed by other processes on a
    shared machine; wall time is kept too.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(time.perf_counter())
        self.cpu.append(time.thread_time())


class GradESLogEveryMicroBatch(GradES):
    """GradES plus b81904a's two ``self.log`` calls per micro-batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log(
            "grades/frozen_fraction",
            self.frozen_fraction,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=1,
        )
        pl_module.log(
            "grades/trainable_fraction",
            self.trainable_fraction,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class DropoutLogEveryMicroBatch(DropoutSchedule):
    """DropoutSchedule plus b81904a's ``self.log`` of the rate on every micro-batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        for kind, rate in self._rates.items():
            pl_module.log(
                f"{kind}/rate", rate, on_step=True, on_epoch=False, prog_bar=True, batch_size=1
            )


CONFIGS = {
    "none": lambda: [],
    "grades": lambda: [GradES(tau=0.0, grace=0.5)],
    "grades_log_every_microbatch": lambda: [
        GradESLogEveryMicroBatch(tau=0.0, grace=0.5, prog_bar=False)
    ],
    "dropout": lambda: [DropoutSchedule(p=0.1, mode="early", cutoff=0.5)],
    "dropout_log_every_microbatch": lambda: [
        DropoutLogEveryMicroBatch(p=0.1, cutoff=0.5, prog_bar=False)
    ],
}


def run(name: str, steps: int, root: Path, accumulate: int) -> tuple[float, float]:
    timer = MicroBatchTimer()
    train, _ = loaders("stream", batch_size=16)
    trainer = pl.Trainer(
        default_root_dir=str(root / name),
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        precision="bf16-mixed",
        logger=CSVLogger(root / name),
        log_every_n_steps=50,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[*CONFIGS[name](), timer],
    )
    trainer.fit(TinyLlama(), train)

    def median_diff(xs: list[float]) -> float:
        diffs = [b - a for a, b in itertools.pairwise(xs)]
        return statistics.median(diffs[len(diffs) // 4 :])

    return median_diff(timer.cpu), median_diff(timer.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default="/tmp/eecontrol_step_logging")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu: dict[str, list[float]] = {k: [] for k in CONFIGS}
    wall: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            c, w = run(name, args.steps, Path(args.root) / f"r{r}", args.accumulate)
            cpu[name].append(c)
            wall[name].append(w)
        print(f"round {r} (cpu ms): " + ", ".join(f"{k} {v[-1] * 1e3:.3f}" for k, v in cpu.items()))
    summary = {
        name: {
            "cpu_ms_per_micro_batch": statistics.median(cpu[name]) * 1e3,
            "cpu_ratio_to_none": statistics.median(cpu[name]) / statistics.median(cpu["none"]),
            "wall_ms_per_micro_batch": statistics.median(wall[name]) * 1e3,
            "wall_ratio_to_none": statistics.median(wall[name]) / statistics.median(wall["none"]),
            "cpu_rounds_ms": [x * 1e3 for x in cpu[name]],
            "wall_rounds_ms": [x * 1e3 for x in wall[name]],
        }
        for name in CONFIGS
    }
    out = {"args": vars(args), "torch": torch.__version__, "results": summary}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
