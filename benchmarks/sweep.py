"""Replay the recorded sweeps under each stopping policy: epochs used and regret.

Reads the sweeps recorded by ``benchmarks/record_curves.py`` (digits CNN, breast-cancer
MLP, BBC News bag-of-words, concrete regression; 48-64 configurations each, every one
trained to the full epoch budget) and replays each, one trial per configuration in
``--orders`` random orders, with :mod:`eecontrol.sweep.replay` (the code behind
``eecontrol replay``):

* ``none``: every run trains to the budget;
* ``early_stopping_p5`` / ``_p10``: Lightning's ``EarlyStopping`` rule (patience 5 / 10)
  in every run;
* ``median``, ``successive_halving``, ``hyperband``: Optuna's ``MedianPruner()``,
  ``SuccessiveHalvingPruner()`` and ``HyperbandPruner(min_resource=1,
  max_resource=budget)``;
* ``successive_halving_eta3_r1`` / ``_eta4_r1``: Optuna's successive halving with
  ``min_resource=1`` and reduction factor 3 / 4 (eta 3: the rungs ours uses);
* ``ours_*``: :class:`eecontrol.LearningCurvePruner` through its public arguments: the
  in-run rule alone, Domhan et al.'s sweep rule alone (``rule="sweep"``), the cross-run
  rule alone (Delta 0.05 and 0.01), the default combination; and
  :class:`eecontrol.sweep.halving.PredictiveHalvingPruner` (reduction factor 3, the
  default, and 4), which promotes by predicted final value.

Ours get ``bounds=(0, 1)`` on the accuracy sweeps (what ``experiment=digits_curves``
sets) and none on the regression (a loss, mode ``min``).

The Optuna policies run in real in-memory ``optuna.Study`` objects (ask/tell; every
configuration enqueued with its hyperparameters). Regret: the sweep's best true value
(each configuration's best over the full budget) minus that of the configuration picked,
in the metric's units (accuracy: 0.01 = 1 point; sign-flipped for the loss so it is
>= 0). ``any`` picks by the best value seen, stopped trials included (what
``eecontrol-train`` returns for a stopped run); ``complete`` only among trials that were
let finish (Optuna's ``best_trial``).

Speed: the in-run rule depends only on the curve so far, so each prefix is computed once
for all orders (:func:`eecontrol.sweep.replay.memoised_in_run_rule`). ``--policies``
replays a subset and ``--merge`` keeps the other entries of an existing ``--out``, so a
slow policy can be rerun alone.

    python benchmarks/sweep.py --orders 5 --out benchmarks/results/sweep.json \
        --plots docs/img
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna

from eecontrol.sweep.halving import PredictiveHalvingPruner
from eecontrol.sweep.pruner import LearningCurvePruner
from eecontrol.sweep.replay import Policy, default_policies, load_recorded, plot_front, replay

SWEEPS = {
    "digits": Path("benchmarks/data/digits_curves.json"),
    "breast_cancer": Path("benchmarks/data/breast_cancer_curves.json"),
    "bbc_tfidf": Path("benchmarks/data/bbc_tfidf_curves.json"),
    "concrete": Path("benchmarks/data/concrete_curves.json"),
}


def policies(budget: int, bounds: tuple[float, float] | None) -> dict[str, Policy]:
    """The replay's default policies plus the benchmark's variants."""
    out = default_policies(budget, bounds, patience=5)
    out["early_stopping_p10"] = Policy(None, patience=10)
    out["ours_cross_run_d0.01"] = Policy(
        lambda: LearningCurvePruner(horizon=budget, in_run=False, delta=0.01, bounds=bounds)
    )
    # successive halving on the rungs ours uses (1, 3, 9, 27 epochs) and on eta 4 from 1:
    # whether predicting, rather than the schedule, is what helps
    for eta in (3, 4):
        out[f"successive_halving_eta{eta}_r1"] = Policy(
            lambda eta=eta: optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=eta
            )
        )
    out["ours_predictive_halving_eta4"] = Policy(
        lambda: PredictiveHalvingPruner(horizon=budget, reduction_factor=4, bounds=bounds)
    )
    return out


def summarise(table: dict[str, Any]) -> dict[str, Any]:
    """The goal's comparison: which of ours save more epochs than successive halving at 0
    mean regret (picking rule ``any``)."""
    zero = {n: row["saving_x"] for n, row in table.items() if row["regret_any"] <= 1e-12}
    sh = table.get("successive_halving", {})
    sh_saving = zero.get("successive_halving")  # None: not at 0 regret
    beats = [
        n
        for n, saving in zero.items()
        if n.startswith("ours") and (sh_saving is None or saving > sh_saving)
    ]
    return {
        "at_zero_regret": zero,
        "successive_halving_saving": sh.get("saving_x"),
        "successive_halving_regret_any": sh.get("regret_any"),
        "ours_beating_successive_halving_at_zero_regret": sorted(beats),
    }


def tally(results: dict[str, Any]) -> dict[str, list[str]]:
    """For each of our policies, the sweeps on which it beats successive halving."""
    out: dict[str, list[str]] = {}
    for key, result in results.items():
        for name in result["policies"]:
            if name.startswith("ours"):
                out.setdefault(name, [])
                if name in result["summary"]["ours_beating_successive_halving_at_zero_regret"]:
                    out[name].append(key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweeps", nargs="+", choices=sorted(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--policies", nargs="+", default=None, help="a subset (default: all)")
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    parser.add_argument("--merge", action="store_true", help="keep other entries of --out")
    parser.add_argument("--plots", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    results: dict[str, Any] = dict(previous.get("sweeps", {}))
    for key in args.sweeps:
        sweep = load_recorded(SWEEPS[key])
        bounds = (0.0, 1.0) if sweep.mode == "max" else None
        chosen = policies(sweep.budget, bounds)
        if args.policies:
            chosen = {k: v for k, v in chosen.items() if k in args.policies}
        print(f"== {key}: {len(sweep.runs)} runs x {sweep.budget} epochs", flush=True)
        t0 = time.perf_counter()
        result = replay(
            sweep,
            chosen,
            orders=args.orders,
            bounds=bounds,
            progress=lambda name, row: print(
                f"{name:>24} {row['epochs']:7.0f} regret(any) {row['regret_any']:.4g} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            ),
        )
        if key in results and args.merge:
            merged = dict(results[key]["policies"])
            merged.update(result["policies"])
            full = result["runs"] * result["budget"]
            for row in merged.values():
                row["saving_x"] = full / row["epochs"]
            result["policies"] = merged
        result["seconds"] = time.perf_counter() - t0
        result["summary"] = summarise(result["policies"])
        results[key] = result
        plot = plot_front(result, args.plots / f"sweep_front_{key}.png", f"{key}: regret vs epochs")
        print(f"front: {plot}; {json.dumps(result['summary'])}", flush=True)
    for result in results.values():
        result["summary"] = summarise(result["policies"])
    out = {
        "command": f"python benchmarks/sweep.py --orders {args.orders}",
        "ours_beats_successive_halving_on": tally(results),
        "note": "regret in the metric's units (accuracy 0.01 = 1 point; concrete: MSE of the "
        "standardised target); seconds were measured on a shared, loaded 2-core machine",
        "sweeps": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for key, result in results.items():
        print(f"\n{key} ({result['mode']}): {result['runs']} runs x {result['budget']}")
        for name, row in result["policies"].items():
            print(
                f"{name:>24} {row['epochs']:7.0f} {row['saving_x']:6.2f}x "
                f"{row['regret_complete']:10.4g} {row['regret_any']:10.4g}"
            )
    print(json.dumps(out["ours_beats_successive_halving_on"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
