"""Replay a recorded sweep under each stopping policy: epochs used and regret.

Reads the curves recorded by ``benchmarks/record_curves.py`` (48 configurations of the
digits recipe, each trained to the full epoch budget) and replays the sweep, one trial
per configuration in a random order, under:

* ``none``: every run trains to the budget;
* ``early_stopping``: Lightning's ``EarlyStopping(monitor="val/acc", mode="max",
  patience=5)``, its own decision function applied to each run's curve;
* ``median``: Optuna ``MedianPruner()`` (defaults);
* ``successive_halving``: Optuna ``SuccessiveHalvingPruner()`` (defaults);
* ``hyperband``: Optuna ``HyperbandPruner(min_resource=1, max_resource=budget)``;
* ``ours_in_run``: :class:`eecontrol.LearningCurvePruner` with the in-run rule only
  (the rule of ``LearningCurveStopping`` without a store);
* ``ours_cross_run`` (Delta 0.01 / 0.05 / 0.2): the cross-run rule only (Baker et al.);
* ``ours_both``: both rules (the ``hparams_search=digits_curves`` setting).

Ours run with ``bounds=(0, 1)`` (an accuracy, as ``experiment=digits_curves`` sets it);
``ours_cross_run_unbounded`` shows the cross-run rule without them.

The Optuna policies run in a real ``optuna.Study`` (in memory) whose trials report each
epoch's validation accuracy and call ``trial.should_prune()``; the configurations are
enqueued, so every policy sees the same trials in the same order. A trial's objective is
its best validation accuracy so far (the value ``eecontrol-train`` returns for a stopped
run).

Per policy: total epochs trained (and the saving against ``none``), and the regret of
the chosen configuration in accuracy points: the true best (each configuration's best
validation accuracy over the full budget) minus the true value of the configuration the
policy picks. Two picking rules: ``complete`` (Optuna's ``best_trial``: pruned trials
are not candidates) and ``any`` (the best value seen, pruned trials included). Averaged
over ``--orders`` random trial orders.

    python benchmarks/sweep.py --out benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from lightning.pytorch.callbacks import EarlyStopping

import eecontrol.sweep.pruner as pruner_module
from eecontrol.sweep.pruner import LearningCurvePruner

HPARAMS = ("lr", "weight_decay", "dropout", "hidden", "batch_size")


def _memoised_in_run_rule() -> Callable[..., Any]:
    """The in-run rule depends only on the curve: compute each prefix once for all orders."""
    original = pruner_module.in_run_rule

    @functools.cache
    def cached(x: tuple[float, ...], y: tuple[float, ...], horizon: float, kw: str) -> Any:
        return original(np.array(x), np.array(y), horizon, **json.loads(kw))

    def wrapper(x: Any, y: Any, horizon: float, **kwargs: Any) -> Any:
        return cached(
            tuple(map(float, x)), tuple(map(float, y)), float(horizon), json.dumps(kwargs)
        )

    return wrapper


def early_stopping_epochs(curve: list[float], patience: int = 5) -> int:
    """Epochs a run trains under Lightning's EarlyStopping on ``val/acc`` (max)."""
    es = EarlyStopping(monitor="val/acc", mode="max", patience=patience)
    for epoch, value in enumerate(curve):
        stop, _ = es._evaluate_stopping_criteria(torch.tensor(value))
        if stop:
            return epoch + 1
    return len(curve)


def replay_optuna(
    runs: list[dict[str, Any]], order: list[int], budget: int, pruner: optuna.pruners.BasePruner
) -> list[dict[str, Any]]:
    """Replays the sweep in ``order`` under ``pruner``; returns one row per trial."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for i in order:
        study.enqueue_trial({k: runs[i]["config"][k] for k in HPARAMS})
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        i = order[trial.number]
        trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True)
        trial.suggest_float("dropout", 0.0, 0.6)
        trial.suggest_int("hidden", 16, 128)
        trial.suggest_int("batch_size", 16, 128)
        curve = runs[i]["val_acc"][:budget]
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            if trial.should_prune():
                rows.append(
                    {
                        "run": i,
                        "epochs": epoch + 1,
                        "value": max(curve[: epoch + 1]),
                        "complete": False,
                    }
                )
                raise optuna.TrialPruned()
        rows.append({"run": i, "epochs": budget, "value": max(curve), "complete": True})
        return max(curve)

    study.optimize(objective, n_trials=len(order))
    return rows


def replay_early_stopping(
    runs: list[dict[str, Any]], order: list[int], budget: int
) -> list[dict[str, Any]]:
    """Replays the sweep with Lightning EarlyStopping in every run (no run is pruned)."""
    rows = []
    for i in order:
        curve = runs[i]["val_acc"][:budget]
        n = early_stopping_epochs(curve)
        rows.append({"run": i, "epochs": n, "value": max(curve[:n]), "complete": True})
    return rows


def score(rows: list[dict[str, Any]], truth: np.ndarray) -> dict[str, float]:
    """Epochs used and regret (points) of the configuration each picking rule chooses."""
    best = float(truth.max())
    out = {"epochs": float(sum(r["epochs"] for r in rows))}
    complete = [r for r in rows if r["complete"]]
    pick_complete = max(complete, key=lambda r: r["value"]) if complete else None
    pick_any = max(rows, key=lambda r: r["value"])
    out["regret_complete"] = (
        100 * (best - truth[pick_complete["run"]]) if pick_complete else float("nan")
    )
    out["regret_any"] = 100 * (best - truth[pick_any["run"]])
    out["pruned"] = float(sum(not r["complete"] for r in rows))
    return out


def policies(budget: int) -> dict[str, Callable[[], optuna.pruners.BasePruner] | None]:
    """Every policy: a pruner factory, or ``None`` for the non-Optuna ones."""
    acc = (0.0, 1.0)  # validation accuracy: what the digits_curves experiment sets
    return {
        "none": optuna.pruners.NopPruner,
        "early_stopping": None,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget),
        "ours_in_run": lambda: LearningCurvePruner(horizon=budget, cross_run=False, bounds=acc),
        "ours_cross_run_d0.01": lambda: LearningCurvePruner(
            horizon=budget, in_run=False, delta=0.01, bounds=acc
        ),
        "ours_cross_run": lambda: LearningCurvePruner(horizon=budget, in_run=False, bounds=acc),
        "ours_cross_run_d0.2": lambda: LearningCurvePruner(
            horizon=budget, in_run=False, delta=0.2, bounds=acc
        ),
        "ours_cross_run_unbounded": lambda: LearningCurvePruner(horizon=budget, in_run=False),
        "ours_both": lambda: LearningCurvePruner(horizon=budget, bounds=acc),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curves", type=Path, default=Path("benchmarks/data/digits_curves.json"))
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pruner_module.in_run_rule = _memoised_in_run_rule()
    data = json.loads(args.curves.read_text())
    budget, runs = int(data["epoch_budget"]), data["runs"]
    truth = np.array([max(r["val_acc"][:budget]) for r in runs])
    rng = np.random.default_rng(0)
    orders = [list(map(int, rng.permutation(len(runs)))) for _ in range(args.orders)]
    table: dict[str, Any] = {}
    for name, factory in policies(budget).items():
        t0 = time.perf_counter()
        scores = []
        for order in orders:
            if factory is None:
                rows = replay_early_stopping(runs, order, budget)
            else:
                rows = replay_optuna(runs, order, budget, factory())
            scores.append(score(rows, truth))
        agg = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        agg["regret_complete_max"] = float(np.max([s["regret_complete"] for s in scores]))
        agg["regret_any_max"] = float(np.max([s["regret_any"] for s in scores]))
        agg["seconds"] = time.perf_counter() - t0
        table[name] = agg
        print(name, json.dumps(agg), flush=True)
    full = table["none"]["epochs"]
    for row in table.values():
        row["saving_x"] = full / row["epochs"]
    result = {
        "command": f"python benchmarks/sweep.py --orders {args.orders}",
        "curves": str(args.curves),
        "runs": len(runs),
        "epoch_budget": budget,
        "true_best_val_acc": float(truth.max()),
        "policies": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'policy':>22} {'epochs':>7} {'saving':>7} {'regret(cmp)':>11} {'regret(any)':>11}")
    for name, row in table.items():
        print(
            f"{name:>22} {row['epochs']:7.0f} {row['saving_x']:6.2f}x "
            f"{row['regret_complete']:11.2f} {row['regret_any']:11.2f}"
        )


if __name__ == "__main__":
    main()
