"""How well the learning-curve predictors foresee a real run's final value.

Reads the curves recorded by ``benchmarks/record_curves.py`` (48 configurations of the
digits recipe trained to the full budget) and, from the first 10%, 25% and 50% of each
run's validation-accuracy curve, predicts the value at the last epoch with

* ``extrapolation``: the in-run curve ensemble (:func:`eecontrol.core.curves.fit_curve`),
  mean at the horizon and its 80% band;
* ``cross_run``: Baker et al.'s nu-SVR (:class:`eecontrol.core.curves.CrossRunPredictor`)
  trained on the *other* runs (leave-one-out), with a normal 80% band from its
  cross-validated error;
* ``last_value``: the last observed value (the naive baseline every predictor must beat).

Reports, per predictor and fraction, R^2 and mean absolute error of the predicted final
value over the runs, and the fraction of runs whose final value lies in the 80% band.
The final value is the observed validation accuracy at the last epoch (noisy: one image
of 270 is 0.37 points), and also its smoothed level (mean of the last five epochs).

    python benchmarks/curves_fit.py --out benchmarks/results/curves_fit.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from eecontrol.core.curves import CrossRunPredictor, FinishedRun, fit_curve

FRACTIONS = (0.1, 0.25, 0.5)
HPARAMS = ("lr", "weight_decay", "dropout", "hidden", "batch_size")


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination of ``pred`` for ``true``."""
    ss_res = float(np.sum((true - pred) ** 2))
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def evaluate(runs: list[dict[str, Any]], budget: int, level: float = 0.8) -> dict[str, Any]:
    """Predictions of every run's final value from each fraction of its curve."""
    z = float(norm.ppf(0.5 + level / 2))
    final = np.array([r["val_acc"][budget - 1] for r in runs])
    smooth = np.array([np.mean(r["val_acc"][budget - 5 : budget]) for r in runs])
    out: dict[str, Any] = {}
    for frac in FRACTIONS:
        n = max(3, math.ceil(frac * budget))
        preds: dict[str, list[float]] = {"extrapolation": [], "cross_run": [], "last_value": []}
        inside: dict[str, list[bool]] = {"extrapolation": [], "cross_run": []}
        failed = 0
        t0 = time.perf_counter()
        for i, run in enumerate(runs):
            y = np.asarray(run["val_acc"][:n])
            x = np.arange(1, n + 1, dtype=float)
            preds["last_value"].append(float(y[-1]))
            fit = fit_curve(x, y, mode="max", seed=i, bounds=(0.0, 1.0))
            if fit.ok:
                p = fit.predict([float(budget)], quantiles=((1 - level) / 2, (1 + level) / 2))
                lo, hi = (float(v[0]) for v in p.band(level))
                preds["extrapolation"].append(float(p.mean[0]))
                inside["extrapolation"].append(lo <= final[i] <= hi)
            else:  # no prediction: fall back to the last value, and count it
                failed += 1
                preds["extrapolation"].append(float(y[-1]))
                inside["extrapolation"].append(False)
            others = [  # leave-one-out: every other run, with its value at the last epoch
                FinishedRun(
                    r["val_acc"][:budget],
                    {k: r["config"][k] for k in HPARAMS},
                    float(r["val_acc"][budget - 1]),
                )
                for j, r in enumerate(runs)
                if j != i
            ]
            pred = CrossRunPredictor(n, mode="max").fit(others)
            c = pred.predict(list(y), {k: run["config"][k] for k in HPARAMS})
            preds["cross_run"].append(c.mean)
            inside["cross_run"].append(abs(final[i] - c.mean) <= z * c.sigma)
        row: dict[str, Any] = {"points": n, "seconds": time.perf_counter() - t0}
        for name, values in preds.items():
            p = np.array(values)
            row[name] = {
                "r2_final": r2(p, final),
                "r2_smoothed": r2(p, smooth),
                "mae_points": float(np.mean(np.abs(p - final)) * 100),
            }
            if name in inside:
                row[name]["coverage_80"] = float(np.mean(inside[name]))
        row["extrapolation"]["failed_fits"] = failed
        out[f"{frac:.0%}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curves", type=Path, default=Path("benchmarks/data/digits_curves.json"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/curves_fit.json"))
    args = parser.parse_args()
    data = json.loads(args.curves.read_text())
    budget = int(data["epoch_budget"])
    runs = data["runs"]
    result = {
        "command": "python benchmarks/curves_fit.py",
        "curves": str(args.curves),
        "runs": len(runs),
        "epoch_budget": budget,
        "metric": "val_acc at the last epoch",
        "final_spread_points": float(np.std([r["val_acc"][budget - 1] for r in runs]) * 100),
        "by_fraction": evaluate(runs, budget),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'from':>5} {'predictor':>14} {'R2':>6} {'R2 smooth':>9} {'MAE pt':>7} {'cov80':>6}")
    for frac, row in result["by_fraction"].items():
        for name in ("extrapolation", "cross_run", "last_value"):
            m = row[name]
            cov = f"{m['coverage_80']:.2f}" if "coverage_80" in m else "-"
            print(
                f"{frac:>5} {name:>14} {m['r2_final']:6.3f} {m['r2_smoothed']:9.3f} "
                f"{m['mae_points']:7.2f} {cov:>6}"
            )


if __name__ == "__main__":
    main()
