"""The PFN curve forecaster against one pow3 fit and the tail forecast, held out by task.

Reads every recorded sweep in ``benchmarks/data/*_curves.json`` and, from the first 25%
and 50% of each run's monitored curve, predicts the value at the last validation with

* ``pfn``: :func:`eecontrol.core.curves.pfn.forecast`, one model per prior variant
  (``--models name=path ...``), each trained on the synthetic prior only (no recorded
  curve), its predictive median or mean as the point and its 80% band;
* ``pow3``: one least-squares fit of ``c - a x^(-alpha)`` (``curves_fit.pow3_fit``);
* ``forecast``: the tail forecast (:func:`eecontrol.core.curves.forecast`), calibrated on
  the other tasks (as in ``curves_fit.py``);
* ``ensemble`` (``--ensemble``, slow): the 11-family BIC ensemble (:func:`fit_curve`);
* ``last_value``: the last observed value.

Each with x = the validation index (1, 2, ...) and x = the real unit (the optimizer steps
recorded with each validation). Every prediction is clipped to the metric's range.

Selection, leave one task out. For each task, the prior variant and the point (median or
mean) are the ones with the smallest mean MAE ratio to pow3 on the *other* tasks (both x
kinds, both fractions), and the band's spread multiplier the one whose pooled 80% coverage
on the other tasks is closest to 0.80; the task is then scored with that choice. The
per-variant tables beside it are every variant scored on every task (no selection).

    python benchmarks/curves_pfn.py --models base=/tmp/lcpfn/base.pt rising=... \
        [--ensemble] [--out benchmarks/results/curves_pfn.json]

A model path with ``{task}`` (``rec30=/tmp/lcpfn_loto/rec30/{task}.pt``) is a candidate
trained on recorded curves (``benchmarks/train_pfn_loto.py``): each task is forecast by
the model trained without it, and ``--write-shipped`` takes its ``all.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves_fit import calibration_from, load_tasks, pow3_fit, task_scores

from eecontrol.core.curves import fit_curve
from eecontrol.core.curves import forecast as tail_forecast
from eecontrol.core.curves.pfn import WEIGHTS_FILE
from eecontrol.core.curves.pfn import forecast as pfn_forecast

FRACTIONS = (0.25, 0.5)
LEVEL = 0.8
DIVERGED = 1e3  # record_curves.py writes a diverged validation as 1e3
SPREADS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0)
POINTS = ("median", "mean")
X_KINDS = ("index", "unit")


def steps_of(path: Path, budget: int, keep: list[int]) -> list[np.ndarray]:
    """The optimizer step of each validation of the kept runs (the real unit)."""
    data = json.loads(path.read_text())
    out = []
    for i in keep:
        s = data["runs"][i].get("steps")
        if isinstance(s, list) and len(s) >= budget:
            out.append(np.asarray(s[:budget], dtype=float))
        else:
            out.append(np.arange(1, budget + 1, dtype=float))
    return out


def kept_runs(path: Path, monitor: str, budget: int) -> list[int]:
    """Indices of the runs ``load_tasks`` keeps (full length, finite)."""
    data = json.loads(path.read_text())
    keep = []
    for i, r in enumerate(data["runs"]):
        c = np.asarray(r[monitor][:budget], dtype=float)
        if len(c) == budget and np.all(np.isfinite(c)):
            keep.append(i)
    return keep


def cells(task: dict[str, Any], steps: list[np.ndarray]):
    """Every (key, curve index, x, y, at) the benchmark forecasts, per x kind and fraction."""
    b = task["budget"]
    for kind in X_KINDS:
        for frac in FRACTIONS:
            n = max(4, math.ceil(frac * b))
            for i, c in enumerate(task["curves"]):
                xall = np.arange(1, b + 1, dtype=float) if kind == "index" else steps[i]
                yield f"{kind}/{frac:.0%}", n, i, xall[:n], c[:n], float(xall[b - 1])


def baselines(
    task: dict[str, Any],
    steps: list[np.ndarray],
    cal: Any,
    ensemble: bool,
    slow: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """pow3, the tail forecast (with its band), last value and (optionally) the ensemble.

    ``slow`` holds earlier pow3/ensemble predictions of this task (reused when given);
    returns the cells and the slow part to cache.
    """
    mode, bounds = task["mode"], task["bounds"]
    final = np.array([c[-1] for c in task["curves"]])
    res: dict[str, Any] = {}
    fresh = slow is None
    slow = slow if slow is not None else {"pow3": {}, "ensemble": {}, "ms_pow3": {}}
    t_p3: dict[str, list[float]] = {}
    for key, n, i, x, y, at in cells(task, steps):
        cell = res.setdefault(
            key,
            {
                "points": n,
                "final": final.tolist(),
                "diverged": [bool(np.any(c >= DIVERGED)) for c in task["curves"]],
                "preds": {"forecast": [], "last_value": []},
                "fc_hit": [],
                "t_fc": [],
            },
        )
        if fresh:
            t0 = time.perf_counter()
            slow["pow3"].setdefault(key, []).append(
                float(np.clip(pow3_fit(x, y, at, mode), *bounds))
            )
            t_p3.setdefault(key, []).append(1000 * (time.perf_counter() - t0))
            if ensemble:
                fit = fit_curve(x, y, mode=mode, seed=i, bounds=bounds)
                slow["ensemble"].setdefault(key, []).append(
                    float(fit.predict([at]).mean[0]) if fit.ok else float(y[-1])
                )
        t1 = time.perf_counter()
        fc = tail_forecast(x, y, at, mode=mode, bounds=bounds, calibration=cal)
        lo, hi = fc.band(LEVEL)
        cell["t_fc"].append(1000 * (time.perf_counter() - t1))
        cell["preds"]["forecast"].append(float(fc.mean[0]))
        cell["fc_hit"].append(bool(float(lo[0]) <= final[i] <= float(hi[0])))
        cell["preds"]["last_value"].append(float(y[-1]))
    if fresh:
        slow["ms_pow3"] = {k: float(np.median(v)) for k, v in t_p3.items()}
    for key, cell in res.items():
        cell["preds"]["pow3"] = slow["pow3"][key]
        if key in slow["ensemble"]:
            cell["preds"]["ensemble"] = slow["ensemble"][key]
        cell["forecast_coverage_80"] = float(np.mean(cell.pop("fc_hit")))
        cell["ms"] = {"pow3": slow["ms_pow3"][key], "forecast": float(np.median(cell.pop("t_fc")))}
    return res, slow


def weights_for(path: str | None, task: str) -> str | None:
    """A model's weights for scoring ``task``: ``{task}`` in the path names the model
    trained with that task left out (``benchmarks/train_pfn_loto.py``)."""
    return path.replace("{task}", task) if path else path


def pfn_cells(
    task: dict[str, Any], steps: list[np.ndarray], models: dict[str, str | None], task_name: str
) -> dict[str, Any]:
    """Each PFN's median, mean and bands (every spread) per cell, and its time per forecast."""
    mode, bounds = task["mode"], task["bounds"]
    res: dict[str, Any] = {}
    for key, _, _, x, y, at in cells(task, steps):
        cell = res.setdefault(key, {})
        for name, template in models.items():
            path = weights_for(template, task_name)
            out = cell.setdefault(
                name,
                {
                    "median": [],
                    "mean": [],
                    "lo": {s: [] for s in SPREADS},
                    "hi": {s: [] for s in SPREADS},
                    "ms": [],
                },
            )
            t0 = time.perf_counter()
            f = pfn_forecast(x, y, at, mode=mode, bounds=bounds, weights=path, spread=1.0)
            med = float(f.median[0])
            out["ms"].append(1000 * (time.perf_counter() - t0))
            out["median"].append(med)
            out["mean"].append(float(f.mean[0]))
            for s in SPREADS:
                lo, hi = dataclasses.replace(f, spread=s).band(LEVEL)
                out["lo"][s].append(float(lo[0]))
                out["hi"][s].append(float(hi[0]))
    return res


def write_weights(src: Path, dest: Path, shipped: dict[str, Any]) -> None:
    """Copies the weights ``src`` to ``dest`` with the chosen band spread, and their record
    (``src``'s training record plus ``shipped``: the choice and how it was made)."""
    blob = torch.load(src, weights_only=True)
    blob["spread"] = float(shipped["choice"]["spread"])
    record = json.loads(src.with_suffix(".json").read_text())
    record["shipped"] = shipped
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, dest)
    dest.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


def mae(p: list[float] | np.ndarray, final: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(p) - final)))


def coverage(cell: dict[str, Any], model: str, spread: float) -> float:
    """The pfn band's coverage of the final values in one cell."""
    final = np.asarray(cell["final"])
    lo = np.asarray(cell["pfn"][model]["lo"][spread])
    hi = np.asarray(cell["pfn"][model]["hi"][spread])
    return float(np.mean((lo <= final) & (final <= hi)))


def select(raw: dict[str, dict[str, Any]], tasks: list[str], models: list[str]) -> dict[str, Any]:
    """The (variant, point, spread) chosen on ``tasks`` (see the module docstring)."""
    best = None
    for m in models:
        for point in POINTS:
            ratios = []
            for t in tasks:
                for cell in raw[t].values():
                    final = np.asarray(cell["final"])
                    p3 = mae(cell["preds"]["pow3"], final)
                    ratios.append(mae(cell["pfn"][m][point], final) / max(p3, 1e-12))
            score = float(np.mean(ratios))
            if best is None or score < best[0]:
                best = (score, m, point)
    assert best is not None
    _, m, point = best
    cov = {}
    for s in SPREADS:
        hits = []
        for t in tasks:
            for cell in raw[t].values():
                hits.append(coverage(cell, m, s))
        cov[s] = float(np.mean(hits))
    spread = min(SPREADS, key=lambda s: (abs(cov[s] - LEVEL), s))
    return {
        "variant": m,
        "point": point,
        "spread": spread,
        "mean_mae_ratio_to_pow3": best[0],
        "coverage_on_selection_tasks": cov[spread],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[Path("benchmarks/data")],
        help="folders of *_curves.json (a task name seen twice: the first wins)",
    )
    parser.add_argument(
        "--baseline-cache",
        type=Path,
        default=Path("benchmarks/results/curves_pfn_baselines.json"),
        help="pow3/forecast/ensemble results, reused when the task and flags match",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/curves_pfn.json"))
    parser.add_argument(
        "--models", nargs="*", default=["shipped="], help="name=weights path (none: baselines only)"
    )
    parser.add_argument("--ensemble", action="store_true")
    parser.add_argument("--tasks", nargs="*", help="only these tasks")
    parser.add_argument(
        "--write-shipped",
        action="store_true",
        help="write the variant and spread chosen on every task (in-sample) as the shipped weights",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {}
    for item in args.models:
        name, _, path = item.partition("=")
        models[name] = path or None
    tasks, paths = {}, {}
    for folder in args.data:
        for name, task in load_tasks(folder).items():
            if name not in tasks:
                tasks[name], paths[name] = task, folder / f"{name}_curves.json"
    if args.tasks:
        tasks = {k: v for k, v in tasks.items() if k in args.tasks}
    cache = json.loads(args.baseline_cache.read_text()) if args.baseline_cache.is_file() else {}
    scores: dict[str, Any] = {}
    raw = {}
    t_start = time.perf_counter()
    for name, task in tasks.items():
        path = paths[name]
        keep = kept_runs(path, task["monitor"], task["budget"])
        steps = steps_of(path, task["budget"], keep)
        ident = {"ensemble": args.ensemble, "finals": [float(c[-1]) for c in task["curves"]]}
        hit = cache.get(name, {}).get("ident") == ident
        for t in tasks:
            if t not in scores:
                scores[t] = task_scores(tasks[t])
        cal = calibration_from(scores, [t for t in tasks if t != name])
        base, slow = baselines(
            task, steps, cal, args.ensemble, cache[name]["slow"] if hit else None
        )
        if not hit:
            cache[name] = {"ident": ident, "slow": slow}
            args.baseline_cache.parent.mkdir(parents=True, exist_ok=True)
            args.baseline_cache.write_text(json.dumps(cache))
        pf = pfn_cells(task, steps, models, name) if models else {}
        raw[name] = {k: {**cell, "pfn": pf.get(k, {})} for k, cell in base.items()}
        print(f"{name} done {time.perf_counter() - t_start:.0f}s", flush=True)
    if not models:
        return
    names = list(tasks)
    result: dict[str, Any] = {
        "command": "python benchmarks/curves_pfn.py " + " ".join(sys.argv[1:]),
        "note": "pfn models trained on the synthetic prior only, or (a path with {task}) "
        "with the recorded curves of every task but the scored one mixed in; "
        "variant, point and band spread chosen leave-one-task-out (selection on the other "
        "tasks, score on the held-out one; a {task} model scored on another task t' during "
        "selection is the one without t', which saw the held-out task's curves); "
        "forecast calibrated leave-one-task-out; all "
        "predictions clipped to the metric's range; times on one thread of a shared, "
        "loaded 2-core machine",
        "models": {k: v for k, v in models.items()},
        "model_configs": {
            k: json.loads(Path(weights_for(v, "all")).with_suffix(".json").read_text())["config"]
            for k, v in models.items()
            if v and Path(weights_for(v, "all")).with_suffix(".json").is_file()
        },
        "held_out": {},
        "per_variant_all_tasks": {},
    }
    gains: dict[str, list[float]] = {}
    covs: list[float] = []
    for name in names:
        choice = select(raw, [t for t in names if t != name], list(models))
        m, point, spread = choice["variant"], choice["point"], choice["spread"]
        rows = {}
        for key, cell in raw[name].items():
            final = np.asarray(cell["final"])
            row: dict[str, Any] = {"points": cell["points"], "runs": len(final)}
            p3 = mae(cell["preds"]["pow3"], final)
            row["pfn_mae"] = mae(cell["pfn"][m][point], final)
            for k, p in cell["preds"].items():
                row[f"{k}_mae"] = mae(p, final)
            for k in ["pfn"] + [k for k in cell["preds"] if k != "pow3"]:
                row[f"{k}_gain_over_pow3"] = 1.0 - row[f"{k}_mae"] / max(p3, 1e-12)
            ok = ~np.asarray(cell["diverged"])
            row["runs_diverged"] = int((~ok).sum())
            p3_ok = mae(np.asarray(cell["preds"]["pow3"])[ok], final[ok])
            for k, p in [("pfn", cell["pfn"][m][point]), *cell["preds"].items()]:
                e = np.abs(np.asarray(p) - final)
                row[f"{k}_median_abs_error"] = float(np.median(e))
                row[f"{k}_mae_without_diverged"] = float(e[ok].mean())
                row[f"{k}_gain_over_pow3_without_diverged"] = 1.0 - float(e[ok].mean()) / max(
                    p3_ok, 1e-12
                )
            row["pfn_coverage_80"] = coverage(cell, m, spread)
            row["pfn_coverage_80_spread_1"] = coverage(cell, m, 1.0)
            row["forecast_coverage_80"] = cell["forecast_coverage_80"]
            row["pfn_ms_median"] = float(np.median(cell["pfn"][m]["ms"]))
            row["pfn_ms_max"] = float(np.max(cell["pfn"][m]["ms"]))
            row["pow3_ms_median"] = cell["ms"]["pow3"]
            row["forecast_ms_median"] = cell["ms"]["forecast"]
            rows[key] = row
            gains.setdefault(key, []).append(row["pfn_gain_over_pow3"])
            covs.append(row["pfn_coverage_80"])
        result["held_out"][name] = {
            "chosen_on": [t for t in names if t != name],
            "choice": choice,
            "cells": rows,
        }
        for mname in models:
            per = {}
            for key, cell in raw[name].items():
                final = np.asarray(cell["final"])
                p3 = mae(cell["preds"]["pow3"], final)
                per[key] = {
                    pt: {
                        "mae": mae(cell["pfn"][mname][pt], final),
                        "gain_over_pow3": 1 - mae(cell["pfn"][mname][pt], final) / max(p3, 1e-12),
                    }
                    for pt in POINTS
                }
                per[key]["coverage_80_spread_1"] = coverage(cell, mname, 1.0)
            result["per_variant_all_tasks"].setdefault(mname, {})[name] = per
    gd: dict[str, list[float]] = {}
    for t in result["held_out"].values():
        for key, r in t["cells"].items():
            gd.setdefault(key, []).append(r["pfn_gain_over_pow3_without_diverged"])
    result["summary"] = {
        "min_pfn_gain_over_pow3_held_out_without_diverged_runs": {
            k: float(np.min(v)) for k, v in gd.items()
        },
        "min_pfn_gain_over_pow3_held_out": {k: float(np.min(v)) for k, v in gains.items()},
        "pfn_coverage_80_held_out_range": [float(np.min(covs)), float(np.max(covs))],
        "goal_gain_15pct_every_task": bool(all(np.min(v) >= 0.15 for v in gains.values())),
        "goal_coverage_075_085_every_cell": bool(all(0.75 <= c <= 0.85 for c in covs)),
        "shipped_choice_on_all_tasks_in_sample": select(raw, names, list(models)),
    }
    if args.write_shipped:
        choice = result["summary"]["shipped_choice_on_all_tasks_in_sample"]
        src = Path(weights_for(models[choice["variant"]], "all") or WEIGHTS_FILE)
        shipped = {"chosen_on": names, "choice": choice, "by": result["command"]}
        write_weights(src, WEIGHTS_FILE, shipped)
        result["shipped"] = shipped
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"{'task':>14} {'cell':>10} {'pfn':>7} {'pow3':>7} {'fcast':>7} {'last':>7} {'gain':>6} {'g-div':>6} {'fgain':>6} {'cov':>5} {'fcov':>5} {'ms':>5}  choice"
    )
    for name, t in result["held_out"].items():
        c = t["choice"]
        for key, r in t["cells"].items():
            print(
                f"{name:>14} {key:>10} {r['pfn_mae']:7.4f} {r['pow3_mae']:7.4f} {r['forecast_mae']:7.4f} "
                f"{r['last_value_mae']:7.4f} {r['pfn_gain_over_pow3']:+6.2f} {r['pfn_gain_over_pow3_without_diverged']:+6.2f} {r['forecast_gain_over_pow3']:+6.2f} "
                f"{r['pfn_coverage_80']:5.2f} {r['forecast_coverage_80']:5.2f} {r['pfn_ms_median']:5.2f}  "
                f"{c['variant']}/{c['point']}/x{c['spread']}"
            )
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
