"""DARTS+ criteria on one long DARTS search of real digits, and retraining of the genotypes.

One search runs for ``--epochs`` epochs without stopping (``DARTSPlusStopping`` with
``stop_training=False``, for the three scopes of criterion 2), recording per epoch the
skip-connect counts, softmax(alpha) and the supernet's validation accuracy, and the epoch
at which each criterion would have stopped. The genotype at each criterion's stop and at
the end of the search is then retrained from scratch for ``--seeds`` seeds and evaluated on
the test split (which the search never sees).

    python benchmarks/darts_plus.py                       # ~10 minutes on 2 CPU cores
    python benchmarks/darts_plus.py --epochs 4 --retrain-epochs 2 --seeds 1   # smoke test

Writes ``benchmarks/results/darts_plus.json`` and ``docs/darts_plus_skips.png``.
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
from eecontrol.recipes.darts import DartsNetwork, DartsSearchDataModule, DartsSearchModule
from eecontrol.recipes.digits import DigitsClassifier, DigitsDataModule
from lightning.pytorch.callbacks import Callback

from eecontrol.callbacks.darts_plus import DARTSPlusStopping
from eecontrol.core.darts import Genotype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import quiet_trainer, write_json

ROOT = Path(__file__).resolve().parent.parent


class Recorder(Callback):
    """Keeps the supernet's validation accuracy and losses per epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "seconds": time.perf_counter() - self.t0,
                **{k: float(m[k]) for k in ("val/acc", "val/loss", "train/loss") if k in m},
            }
        )


def _trainer(root: Path, max_epochs: int, callbacks: list[Callback], **kw: Any) -> pl.Trainer:
    return quiet_trainer(root, callbacks, max_epochs=max_epochs, **kw)


def search(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Runs the long search and returns its per-epoch record."""
    pl.seed_everything(args.search_seed, workers=True)
    model = DartsSearchModule(
        c=args.c, layers=args.layers, steps=args.steps, multiplier=args.steps, arch_lr=args.arch_lr
    )
    data = DartsSearchDataModule(batch_size=args.batch_size, seed=args.search_seed)
    scopes = {
        scope: DARTSPlusStopping(
            scope=scope,
            min_epochs=args.min_epochs,
            patience=args.patience,
            stop_training=False,
            artifact_dir=f"darts_plus_{scope}",
            prog_bar=False,
        )
        for scope in ("both", "normal", "genotype")
    }
    rec = Recorder()
    trainer = _trainer(
        root,
        args.epochs,
        [*scopes.values(), rec],
        limit_train_batches=args.batches,
        limit_val_batches=args.val_batches,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    main = scopes["both"]
    history = main.history
    alphas = {
        name: torch.stack(v).tolist() for name, v in main._alphas.items()
    }  # per epoch softmax(alpha)
    return {
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(len(history), 1),
        "epochs": [
            {
                "epoch": h["epoch"],
                "skip_normal": h["skips"].get("normal", 0),
                "skip_reduce": h["skips"].get("reduce", 0),
                "stable_epochs": {s: cb.history[i]["stable_epochs"] for s, cb in scopes.items()},
                "genotype": str(Genotype.from_dict(h["genotype"])),
                **{k: v for k, v in rec.rows[i].items() if k != "epoch"},
            }
            for i, h in enumerate(history)
        ],
        "genotypes": [h["genotype"] for h in history],
        "fired": {
            "criterion1_skip": main.fired_epochs["skip"],
            **{f"criterion2_{s}": cb.fired_epochs["stable"] for s, cb in scopes.items()},
        },
        "softmax_alphas": alphas,
        "op_names": list(model.op_names),
    }


def retrain(genotype: dict[str, Any], seed: int, args: argparse.Namespace, root: Path) -> dict:
    """Trains the genotype's network from scratch; returns its test accuracy."""
    pl.seed_everything(seed, workers=True)
    net = DartsNetwork(genotype, c=args.retrain_c, layers=args.layers)
    model = DigitsClassifier(
        net=net, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1e-2)
    )
    data = DigitsDataModule(batch_size=64, seed=0)
    trainer = _trainer(root, args.retrain_epochs, [])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    out = trainer.test(model, datamodule=data, verbose=False)[0]
    return {
        "seed": seed,
        "test_acc": float(out["test/acc"]),
        "params": sum(p.numel() for p in net.parameters()),
        "seconds": time.perf_counter() - start,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Draws the skip-connect trajectory with the criteria's firing epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in result["search"]["epochs"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.step(
        epochs,
        [e["skip_normal"] for e in result["search"]["epochs"]],
        where="mid",
        label="skip_connect in normal cell",
    )
    ax.step(
        epochs,
        [e["skip_reduce"] for e in result["search"]["epochs"]],
        where="mid",
        label="skip_connect in reduction cell",
        alpha=0.6,
    )
    ax.axhline(result["config"]["max_skip"], color="grey", ls=":", lw=1)
    colors = {
        "criterion1_skip": "red",
        "criterion2_both": "green",
        "criterion2_normal": "olive",
        "criterion2_genotype": "purple",
    }
    for key, epoch in result["search"]["fired"].items():
        if epoch is not None:
            ax.axvline(
                epoch, color=colors[key], ls="--", lw=1, label=f"{key} fires (epoch {epoch})"
            )
    ax2 = ax.twinx()
    ax2.plot(
        epochs,
        [e.get("val/acc", float("nan")) for e in result["search"]["epochs"]],
        color="black",
        alpha=0.3,
        label="supernet val acc",
    )
    ax2.set_ylabel("supernet val acc")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("skip_connect count")
    ax.set_title("DARTS search on digits: skip-connects per derived cell")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Runs the search, the retrains, writes JSON and the plot, prints a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batches", type=int, default=10, help="search batches per epoch")
    p.add_argument("--val-batches", type=int, default=4, help="supernet validation batches")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--c", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--arch-lr", type=float, default=3e-3)
    p.add_argument("--min-epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="retrain seeds per genotype")
    p.add_argument("--retrain-epochs", type=int, default=15)
    p.add_argument("--retrain-c", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/darts_plus.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/darts_plus_skips.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    result: dict[str, Any] = {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "max_skip": 2,
            "torch": torch.__version__,
            "threads": 1,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["search"] = search(args, Path(tmp) / "search")
        print(
            f"search: {len(result['search']['epochs'])} epochs, "
            f"{result['search']['seconds_per_epoch']:.1f} s/epoch; fired {result['search']['fired']}"
        )
        last = len(result["search"]["genotypes"]) - 1
        points = {"end": last}
        for key, epoch in result["search"]["fired"].items():
            if epoch is not None:
                points[key] = epoch
        retrains: dict[str, Any] = {}
        done: dict[str, list[dict]] = {}  # identical genotypes share results
        for name, epoch in sorted(points.items(), key=lambda kv: kv[1]):
            genotype = result["search"]["genotypes"][epoch]
            key = json.dumps(genotype, sort_keys=True)
            if key not in done:
                done[key] = [
                    retrain(genotype, seed, args, Path(tmp) / f"retrain_{name}_{seed}")
                    for seed in range(args.seeds)
                ]
            accs = [r["test_acc"] for r in done[key]]
            retrains[name] = {
                "epoch": epoch,
                "search_epochs_used": epoch + 1,
                "genotype": str(Genotype.from_dict(genotype)),
                "skip_normal": result["search"]["epochs"][epoch]["skip_normal"],
                "runs": done[key],
                "test_acc_mean": statistics.mean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            }
            print(
                f"{name:22s} epoch {epoch:3d}  skips {retrains[name]['skip_normal']}  "
                f"test acc {retrains[name]['test_acc_mean']:.4f} ± {retrains[name]['test_acc_std']:.4f}"
            )
        result["retrain"] = retrains
    write_json(args.out, result)
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
