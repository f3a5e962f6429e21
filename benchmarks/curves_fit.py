"""How well the learning-curve predictors foresee a real run's final value.

Reads every recorded sweep in ``benchmarks/data/*_curves.json`` (written by
``benchmarks/record_curves.py``: one task each, every configuration trained to the full
budget) and, from the first 25% and 50% of each run's monitored curve, predicts the value
at the last epoch with

* ``forecast``: the calibrated tail ensemble (:func:`eecontrol.core.curves.forecast`),
  its point forecast and 80% band, calibrated **leave-one-task-out**: the score table used
  for a task is learned on the other tasks' curves only, so no task calibrates itself;
* ``pow3``: one least-squares fit of ``c - a x^(-alpha)`` to the whole curve seen (three
  starting points, the best kept), the baseline to beat;
* ``last_value``: the last observed value;
* ``cross_run``: Baker et al.'s nu-SVR (:class:`eecontrol.core.curves.CrossRunPredictor`)
  trained on the task's *other* runs (leave-one-run-out; it needs a sweep of the task);
* ``ensemble`` (``--ensemble``, slow): the 11-family BIC ensemble (:func:`fit_curve`).

Every prediction is clipped to the metric's range (accuracy [0, 1], loss [0, inf)). It
reports per task and fraction the mean absolute error (and the gain over pow3), the 80%
band's coverage of the final values, its mean width, and checks that every band contains
its point forecast, stays inside the range and is not of zero width. Timing: forecast and
pow3 are timed per curve in the same loop (interleaved), on one core.

    python benchmarks/curves_fit.py                      # -> benchmarks/results/curves_fit.json
    python benchmarks/curves_fit.py --write-calibration  # also rewrites the shipped table
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import norm

from eecontrol.core.curves import (
    CALIBRATION_FILE,
    Calibration,
    CrossRunPredictor,
    FinishedRun,
    calibration_scores,
    fit_curve,
    forecast,
)

FRACTIONS = (0.25, 0.5)
GRID = tuple(round(float(f), 2) for f in np.arange(0.1, 0.951, 0.05))
LEVEL = 0.8
DIVERGED = 1e3  # record_curves.py writes a diverged validation as 1e3


def load_tasks(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every recorded sweep: its runs' curves, mode, budget and the metric's range."""
    tasks = {}
    for path in sorted(data_dir.glob("*_curves.json")):
        data = json.loads(path.read_text())
        monitor, mode = data.get("monitor", "val_acc"), data.get("mode", "max")
        budget = int(data["epoch_budget"])
        curves = [np.asarray(r[monitor][:budget], dtype=float) for r in data["runs"]]
        keep = [i for i, c in enumerate(curves) if len(c) == budget and np.all(np.isfinite(c))]
        tasks[path.name.removesuffix("_curves.json")] = {
            "monitor": monitor,
            "mode": mode,
            "budget": budget,
            "bounds": (0.0, 1.0) if mode == "max" else (0.0, math.inf),
            "curves": [curves[i] for i in keep],
            "hparams": [
                {
                    k: float(v)
                    for k, v in data["runs"][i]["config"].items()
                    if isinstance(v, int | float)
                }
                for i in keep
            ],
        }
    return tasks


def pow3_fit(x: np.ndarray, y: np.ndarray, at: float, mode: str) -> float:
    """One least-squares pow3 fit ``c - a x^(-alpha)`` (mirrored for a loss), at ``at``."""
    s = 1.0 if mode == "max" else -1.0
    g = s * y
    rng = max(float(np.ptp(g)), 1e-6)
    best = None
    for start in (
        (g.max() + 0.1 * rng, rng, 0.5),
        (g.max() + rng, 2 * rng, 0.2),
        (g.max(), rng, 1.0),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = least_squares(
                lambda t: t[0] - t[1] * x ** (-t[2]) - g,
                start,
                bounds=([-np.inf, 0.0, 1e-3], [np.inf, np.inf, 10.0]),
                max_nfev=300,
            )
        if best is None or sol.cost < best.cost:
            best = sol
    c, a, alpha = best.x
    return float(s * (c - a * at ** (-alpha)))


def task_scores(task: dict[str, Any]) -> list[list[float]]:
    """Calibration scores of every run of a task at every fraction of :data:`GRID`."""
    b = task["budget"]
    x = np.arange(1, b + 1, dtype=float)
    return [calibration_scores(x, c, b - 1, GRID, task["mode"]) for c in task["curves"]]


def calibration_from(scores: dict[str, list[list[float]]], tasks: list[str]) -> Calibration:
    """The score table learned on the named tasks' curves."""
    per_fraction = [
        [row[j] for t in tasks for row in scores[t] if math.isfinite(row[j])]
        for j in range(len(GRID))
    ]
    return Calibration.from_scores(GRID, per_fraction, source="+".join(tasks))


def evaluate(
    name: str, task: dict[str, Any], cal: Calibration, ensemble: bool, cross_run: bool
) -> dict[str, Any]:
    """All predictors on one task, from each fraction of :data:`FRACTIONS`."""
    b, mode, bounds = task["budget"], task["mode"], task["bounds"]
    curves = task["curves"]
    final = np.array([c[-1] for c in curves])
    diverged = np.array([bool(np.any(c >= DIVERGED)) for c in curves])
    z = float(norm.ppf(0.5 + LEVEL / 2))
    out: dict[str, Any] = {}
    for frac in FRACTIONS:
        n = max(4, math.ceil(frac * b))
        x = np.arange(1, n + 1, dtype=float)
        preds: dict[str, list[float]] = {"forecast": [], "pow3": [], "last_value": []}
        lo_hi, t_fc, t_p3 = [], [], []
        if ensemble:
            preds["ensemble"] = []
        if cross_run:
            preds["cross_run"] = []
        cr_inside = []
        for i, c in enumerate(curves):
            y = c[:n]
            t0 = time.perf_counter()
            fc = forecast(x, y, float(b), mode=mode, bounds=bounds, calibration=cal)
            lo, hi = fc.band(LEVEL)
            point = float(fc.mean[0])
            t1 = time.perf_counter()
            p3 = float(np.clip(pow3_fit(x, y, float(b), mode), *bounds))
            t2 = time.perf_counter()
            t_fc.append(t1 - t0)
            t_p3.append(t2 - t1)
            preds["forecast"].append(point)
            lo_hi.append((float(lo[0]), float(hi[0]), point))
            preds["pow3"].append(p3)
            preds["last_value"].append(float(y[-1]))
            if ensemble:
                fit = fit_curve(x, y, mode=mode, seed=i, bounds=bounds)
                preds["ensemble"].append(
                    float(fit.predict([float(b)]).mean[0]) if fit.ok else float(y[-1])
                )
            if cross_run:
                others = [
                    FinishedRun(list(o), task["hparams"][j], float(o[-1]))
                    for j, o in enumerate(curves)
                    if j != i
                ]
                pr = (
                    CrossRunPredictor(n, mode=mode).fit(others).predict(list(y), task["hparams"][i])
                )
                m = float(np.clip(pr.mean, *bounds))
                preds["cross_run"].append(m)
                cr_inside.append(abs(final[i] - pr.mean) <= z * pr.sigma)
        bands = np.array(lo_hi)
        row: dict[str, Any] = {"points": n, "runs": len(curves)}
        ok = ~diverged
        for key, values in preds.items():
            p = np.array(values)
            err = np.abs(p - final)
            row[key] = {"mae": float(err.mean()), "mae_without_diverged": float(err[ok].mean())}
        for key in preds:
            if key != "pow3":
                row[key]["gain_over_pow3"] = 1.0 - row[key]["mae"] / row["pow3"]["mae"]
                row[key]["gain_over_pow3_without_diverged"] = (
                    1.0 - row[key]["mae_without_diverged"] / row["pow3"]["mae_without_diverged"]
                )
        inside = (bands[:, 0] <= final) & (final <= bands[:, 1])
        row["forecast"].update(
            {
                "coverage_80": float(inside.mean()),
                "misses_above": int(np.sum(final > bands[:, 1])),
                "misses_below": int(np.sum(final < bands[:, 0])),
                "mean_width": float(np.mean(bands[:, 1] - bands[:, 0])),
                "band_contains_point": bool(
                    np.all((bands[:, 0] <= bands[:, 2]) & (bands[:, 2] <= bands[:, 1]))
                ),
                "band_inside_bounds": bool(
                    np.all((bands[:, 0] >= bounds[0]) & (bands[:, 1] <= bounds[1]))
                ),
                "zero_width_bands": int(np.sum(bands[:, 1] - bands[:, 0] <= 0)),
                "ms_per_curve_median": 1000 * float(np.median(t_fc)),
                "ms_per_curve_max": 1000 * float(np.max(t_fc)),
            }
        )
        row["pow3"]["ms_per_curve_median"] = 1000 * float(np.median(t_p3))
        if cross_run:
            row["cross_run"]["coverage_80"] = float(np.mean(cr_inside))
        row["diverged_runs"] = int(diverged.sum())
        out[f"{frac:.0%}"] = row
    return out


def pruner_cost(task: dict[str, Any], n_finished: int = 20, rounds: int = 3) -> dict[str, Any]:
    """Seconds per ``should_prune`` of :class:`LearningCurvePruner`, before and after.

    A study holds ``n_finished`` completed trials of the task (curves and hyperparameters);
    one more trial reports its curve step by step and the pruner is asked at every step
    (as ``trial.should_prune()`` does), the old configuration (the 11-family ensemble
    in-run rule, the nu-SVR refitted at every call) and the new default (the calibrated
    convergence rule, the nu-SVR reused while the completed trials and curve length stay
    the same) interleaved step by step, ``rounds`` times.
    """
    import optuna

    from eecontrol.sweep.pruner import LearningCurvePruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    b, mode, bounds = task["budget"], task["mode"], task["bounds"]
    direction = "maximize" if mode == "max" else "minimize"
    keys = sorted(set.intersection(*(set(h) for h in task["hparams"])))
    study = optuna.create_study(direction=direction)
    dists = {k: optuna.distributions.FloatDistribution(-1e9, 1e9) for k in keys}
    for c, hp in list(zip(task["curves"], task["hparams"]))[:n_finished]:
        study.add_trial(
            optuna.trial.create_trial(
                params={k: hp[k] for k in keys},
                distributions=dists,
                value=float(c.max() if mode == "max" else c.min()),
                intermediate_values={i: float(v) for i, v in enumerate(c)},
            )
        )
    running = task["curves"][n_finished]
    old = LearningCurvePruner(horizon=b - 1, rule="ensemble", min_delta=0.0, bounds=bounds)
    new = LearningCurvePruner(horizon=b - 1, bounds=bounds)
    times: dict[str, list[float]] = {"before": [], "after": []}
    steps = range(min(5, b), min(b // 2, 25))
    for _ in range(rounds):  # a fresh trial each round: every call sees a new curve length
        study.enqueue_trial({k: task["hparams"][n_finished][k] for k in keys})
        trial = study.ask({k: dists[k] for k in keys})
        # in a real sweep a trial finishes between two trials: the set of completed trials
        # (part of the cache key) changes, so a new round starts with no fitted predictor
        new._predictors.clear()
        for step in steps:
            trial.report(float(running[step]), step)
            frozen = study.get_trials(deepcopy=False)[trial.number]
            for name, pruner in (("before", old), ("after", new)):
                if name == "before":
                    pruner._predictors.clear()  # the old pruner refitted at every call
                t0 = time.perf_counter()
                pruner.prune(study, frozen)
                times[name].append(time.perf_counter() - t0)
    return {
        "finished_trials": n_finished,
        "calls": len(times["after"]),
        "seconds_per_call_before": float(np.median(times["before"])),
        "seconds_per_call_after": float(np.median(times["after"])),
        "speedup": float(np.median(times["before"]) / np.median(times["after"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/curves_fit.json"))
    parser.add_argument("--ensemble", action="store_true", help="also the 11-family ensemble")
    parser.add_argument("--no-cross-run", action="store_true", help="skip the nu-SVR")
    parser.add_argument("--no-pruner-cost", action="store_true", help="skip the pruner timing")
    parser.add_argument(
        "--write-calibration",
        action="store_true",
        help=f"learn the score table on every task and write {CALIBRATION_FILE.name}",
    )
    args = parser.parse_args()
    tasks = load_tasks(args.data)
    scores = {name: task_scores(t) for name, t in tasks.items()}
    result: dict[str, Any] = {
        "command": "python benchmarks/curves_fit.py",
        "note": "forecast calibrated leave-one-task-out; all predictions clipped to the "
        "metric's range; times on one core of a shared 2-core machine (loaded)",
        "tasks": {},
    }
    pooled: dict[str, list[float]] = {}
    for name, task in tasks.items():
        others = [t for t in tasks if t != name]
        cal = calibration_from(scores, others)
        res = evaluate(name, task, cal, args.ensemble, not args.no_cross_run)
        result["tasks"][name] = {
            "monitor": task["monitor"],
            "mode": task["mode"],
            "epoch_budget": task["budget"],
            "calibrated_on": others,
            "by_fraction": res,
        }
        for frac, row in res.items():
            pooled.setdefault(f"coverage_{frac}", []).extend(
                [row["forecast"]["coverage_80"]] * row["runs"]
            )
            pooled.setdefault(f"gain_{frac}", []).append(row["forecast"]["gain_over_pow3"])
    result["summary"] = {
        "pooled_coverage_80": {
            k.removeprefix("coverage_"): float(np.mean(v))
            for k, v in pooled.items()
            if k.startswith("coverage_")
        },
        "min_gain_over_pow3": {
            k.removeprefix("gain_"): float(np.min(v))
            for k, v in pooled.items()
            if k.startswith("gain_")
        },
    }
    if not args.no_pruner_cost and "digits" in tasks:
        result["pruner_cost"] = pruner_cost(tasks["digits"])
        print("pruner cost (digits):", json.dumps(result["pruner_cost"]))
    if args.write_calibration:
        cal = calibration_from(scores, list(tasks))
        CALIBRATION_FILE.write_text(json.dumps(cal.to_dict(), indent=0) + "\n")
        result["calibration_written"] = {
            "file": "eecontrol/core/curves/calibration.json",
            "tasks": list(tasks),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"{'task':>14} {'from':>4} {'predictor':>11} {'MAE':>8} {'vs pow3':>8} {'cov80':>6} {'ms':>6}"
    )
    for name, t in result["tasks"].items():
        for frac, row in t["by_fraction"].items():
            for key in [k for k in row if isinstance(row[k], dict)]:
                m = row[key]
                gain = f"{m['gain_over_pow3']:+.2f}" if "gain_over_pow3" in m else "-"
                cov = f"{m['coverage_80']:.2f}" if "coverage_80" in m else "-"
                ms = f"{m['ms_per_curve_median']:.1f}" if "ms_per_curve_median" in m else "-"
                print(f"{name:>14} {frac:>4} {key:>11} {m['mae']:8.4f} {gain:>8} {cov:>6} {ms:>6}")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
