"""Cross-run context for the PFN, measured: calibrating on the sweep's finished runs.

Issue 24 asks for cross-run context "if it measurably helps". This measures the cheapest
form that needs no retraining: within one recorded sweep, the runs finished before a run
(a random order, 3 orders, at least ``--min-runs`` of them) calibrate its forecast from the
first 25% / 50% of its curve (x = validation index, the shipped weights and spread):

* **point**: the PFN's median shifted by the median residual of the finished runs, each
  residual in units of its run's normalising scale (the PFN's ``scale``);
* **band**: the PFN's 80% band widened (or narrowed) by the finished runs' conformity
  scores ``max(lo - y, y - hi) / scale``, split-conformal as in CQR (Romano et al. 2019):
  the ``ceil((k + 1) 0.8) / k`` empirical quantile of the k scores. With exchangeable
  runs this band covers at least 80% marginally.

Each is compared with the PFN alone and one pow3 fit on the same runs (MAE, coverage).
Nothing here is tuned: the level, the minimum of finished runs and the scores are fixed.

    python benchmarks/curves_pfn_cross_run.py --baseline-cache /tmp/lc/baselines.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves_fit import load_tasks, pow3_fit

from eecontrol.core.curves.pfn import forecast

FRACTIONS = (0.25, 0.5)
LEVEL = 0.8
ORDERS = 3


def pfn_parts(task: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """Each run's PFN median, 80% band and normalising scale from its first n points."""
    out: dict[str, list[float]] = {"median": [], "lo": [], "hi": [], "scale": []}
    x = np.arange(1, n + 1, dtype=float)
    for c in task["curves"]:
        f = forecast(x, c[:n], float(task["budget"]), mode=task["mode"], bounds=task["bounds"])
        lo, hi = f.band(LEVEL)
        out["median"].append(float(f.median[0]))
        out["lo"].append(float(lo[0]))
        out["hi"].append(float(hi[0]))
        out["scale"].append(float(f.scale))
    return {k: np.asarray(v) for k, v in out.items()}


def replay(
    task: dict[str, Any], parts: dict[str, np.ndarray], pow3: np.ndarray, min_runs: int
) -> dict[str, float]:
    """MAE and coverage of the PFN alone and calibrated on the runs finished before."""
    final = np.array([c[-1] for c in task["curves"]])
    s = 1.0 if task["mode"] == "max" else -1.0
    low, high = task["bounds"]
    med, lo, hi, sc = parts["median"], parts["lo"], parts["hi"], parts["scale"]
    rows = []
    for seed in range(ORDERS):
        order = np.random.default_rng(seed).permutation(len(final))
        for k in range(min_runs, len(order)):
            i, cal = order[k], order[:k]
            shift = s * sc[i] * float(np.median(s * (final[cal] - med[cal]) / sc[cal]))
            point = float(np.clip(med[i] + shift, low, high))
            scores = np.maximum(lo[cal] - final[cal], final[cal] - hi[cal]) / sc[cal]
            q = float(
                np.quantile(scores, min(1.0, math.ceil((k + 1) * LEVEL) / k), method="higher")
            )
            a, b = np.clip(lo[i] - sc[i] * q, low, high), np.clip(hi[i] + sc[i] * q, low, high)
            rows.append(
                (
                    abs(med[i] - final[i]),
                    abs(point - final[i]),
                    abs(pow3[i] - final[i]),
                    float(lo[i] <= final[i] <= hi[i]),
                    float(a <= final[i] <= b),
                )
            )
    r = np.asarray(rows)
    p3 = max(float(r[:, 2].mean()), 1e-12)
    return {
        "forecasts": len(r),
        "pfn_mae": float(r[:, 0].mean()),
        "pfn_runs_mae": float(r[:, 1].mean()),
        "pow3_mae": p3,
        "pfn_gain_over_pow3": 1 - float(r[:, 0].mean()) / p3,
        "pfn_runs_gain_over_pow3": 1 - float(r[:, 1].mean()) / p3,
        "pfn_coverage_80": float(r[:, 3].mean()),
        "pfn_conformal_coverage_80": float(r[:, 4].mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--baseline-cache", type=Path, help="curves_pfn.py's pow3 cache (optional)")
    p.add_argument("--min-runs", type=int, default=5, help="finished runs before calibrating")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/curves_pfn_cross_run.json"))
    args = p.parse_args()
    if args.min_runs < 2:
        raise ValueError(f"`--min-runs` must be >= 2, got {args.min_runs}.")
    torch.set_num_threads(1)
    cache = json.loads(args.baseline_cache.read_text()) if args.baseline_cache else {}
    result: dict[str, Any] = {
        "command": "python benchmarks/curves_pfn_cross_run.py " + " ".join(sys.argv[1:]),
        "level": LEVEL,
        "orders": ORDERS,
        "min_runs": args.min_runs,
        "tasks": {},
    }
    for name, task in load_tasks(args.data).items():
        for frac in FRACTIONS:
            key = f"index/{frac:.0%}"
            n = max(4, math.ceil(frac * task["budget"]))
            cached = cache.get(name, {}).get("slow", {}).get("pow3", {}).get(key)
            x = np.arange(1, n + 1, dtype=float)
            pow3 = np.asarray(
                cached
                if cached is not None
                else [
                    float(
                        np.clip(pow3_fit(x, c[:n], task["budget"], task["mode"]), *task["bounds"])
                    )
                    for c in task["curves"]
                ]
            )
            row = replay(task, pfn_parts(task, n), pow3, args.min_runs)
            result["tasks"].setdefault(name, {})[key] = row
            print(
                f"{name:16s} {key} pfn {row['pfn_gain_over_pow3']:+.2f} "
                f"+runs {row['pfn_runs_gain_over_pow3']:+.2f} | cover "
                f"{row['pfn_coverage_80']:.2f} conformal {row['pfn_conformal_coverage_80']:.2f}",
                flush=True,
            )
    cells = [r for t in result["tasks"].values() for r in t.values()]

    def count(key: str, ok: Any) -> int:
        return sum(bool(ok(r[key])) for r in cells)

    result["summary"] = {
        "cells": len(cells),
        "pfn_cells_15pct_over_pow3": count("pfn_gain_over_pow3", lambda g: g >= 0.15),
        "pfn_runs_cells_15pct_over_pow3": count("pfn_runs_gain_over_pow3", lambda g: g >= 0.15),
        "pfn_cover_075_085": count("pfn_coverage_80", lambda c: 0.75 <= c <= 0.85),
        "conformal_cover_075_085": count("pfn_conformal_coverage_80", lambda c: 0.75 <= c <= 0.85),
        "pfn_cover_below_075": count("pfn_coverage_80", lambda c: c < 0.75),
        "conformal_cover_below_075": count("pfn_conformal_coverage_80", lambda c: c < 0.75),
        "conformal_cover_range": [
            min(r["pfn_conformal_coverage_80"] for r in cells),
            max(r["pfn_conformal_coverage_80"] for r in cells),
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
