"""CES against its baselines on real data, over many random splits (JSON out).

Liang, Zhou, Sesia (ICML 2023). For each task and total size n (train + hold-out), each of
R random splits trains the paper's network for E epochs and keeps a candidate every epoch
(T = E). To make R = 100 splits affordable on 2 CPU cores, the R networks of one setting
are trained side by side as one batched network (``torch.bmm`` over stacked weights, one
Adam over the stack): since Adam is elementwise and the loss is a sum of per-split
losses, this is exactly R independent trainings, just vectorised.

Methods (alpha = 0.1), as in the paper:

- ``ces``: train on 75%, hold out 25%; select per test point (and label), calibrate on the
  same hold-out set (``eecontrol.core.conformal``).
- ``naive``: same run; the model with the smallest hold-out loss, calibrated on the same
  hold-out set (not valid in theory).
- ``data_splitting``: a second run trained on 50%, early stopping on 25%, calibration on the
  other 25% (the paper's benchmark).
- ``full``: the last epoch of the CES run, calibrated on the hold-out set.
- ``naive_theory`` (regression): ``naive`` at the paper's corrected level (appendix, hybrid
  bound with b = 100; ``eecontrol.core.conformal.naive_corrected_alpha``).

Tasks: regression on UCI concrete and bio (absolute-residual intervals, the paper's
regression network), classification on digits (APS sets, marginal and label-conditional),
outlier detection on digits (autoencoder on digits 0-4; type-I error on held-out inliers,
power on the other digits).

    python benchmarks/ces.py --reps 100 --epochs 1000            # the paper's budget
    python benchmarks/ces.py --reps 100 --epochs 200 --tasks concrete   # faster
    python benchmarks/ces.py --timing                             # core speed only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from eecontrol.recipes.regression import load_regression_data
from sklearn.datasets import load_digits

from eecontrol.core import conformal as core

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import add_run_options, parse_run_options, write_json

ALPHA = 0.1


class BatchedMLP(torch.nn.Module):
    """R independent MLPs with the same architecture, evaluated with one bmm per layer.

    Args:
        reps: number of independent networks R.
        sizes: layer widths, e.g. [p, 128, 128, 1].
        relu_after: indices of the layers followed by a ReLU.
        generator: seeds the nn.Linear-style uniform initialisation.
    """

    def __init__(
        self, reps: int, sizes: list[int], relu_after: set[int], generator: torch.Generator
    ) -> None:
        super().__init__()
        self.relu_after = relu_after
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(
                torch.nn.Parameter(
                    (torch.rand(reps, fan_in, fan_out, generator=generator) * 2 - 1) * bound
                )
            )
            self.biases.append(
                torch.nn.Parameter(
                    (torch.rand(reps, 1, fan_out, generator=generator) * 2 - 1) * bound
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i in self.relu_after:
                x = torch.relu(x)
        return x


def _per_sample_loss(
    task: str, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    if task == "regression":
        return (out.squeeze(-1) - y) ** 2
    if task == "classification":
        return torch.nn.functional.cross_entropy(out.transpose(1, 2), y.long(), reduction="none")
    return ((out - x) ** 2).sum(-1)  # autoencoder reconstruction error


def _outputs(task: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return out.squeeze(-1)
    if task == "classification":
        return torch.softmax(out, -1)
    return ((out - x) ** 2).sum(-1)


def train_epoch(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    batch_size: int,
    g: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """One epoch of minibatch steps of R networks at once, each replicate's rows in its own
    order drawn from ``g``; ``loss_fn(out, xb, yb)`` is the summed batch loss."""
    reps, n = x_train.shape[:2]
    rows = torch.arange(reps).unsqueeze(1)
    perm = torch.argsort(torch.rand(reps, n, generator=g), dim=1)
    for lo in range(0, n, batch_size):
        idx = perm[:, lo : lo + batch_size]
        xb, yb = x_train[rows, idx], y_train[rows, idx]
        loss = loss_fn(net(xb), xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_batched(
    task: str,
    sizes: list[int],
    relu_after: set[int],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    evals: dict[str, torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Trains R networks side by side; returns per-epoch outputs on each eval set (T, R, n, ...)."""
    g = torch.Generator().manual_seed(seed)
    net = BatchedMLP(x_train.shape[0], sizes, relu_after, g)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history: dict[str, list[torch.Tensor]] = {k: [] for k in evals}

    def loss_fn(out: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return _per_sample_loss(task, out, xb, yb).mean(dim=1).sum()

    for _ in range(epochs):
        train_epoch(net, opt, x_train, y_train, batch_size, g, loss_fn)
        with torch.no_grad():
            for name, x in evals.items():
                history[name].append(_outputs(task, net(x), x).to(torch.float64))
    return {k: torch.stack(v) for k, v in history.items()}


# --- data ---------------------------------------------------------------------------------


def split_targets(y: torch.Tensor, n_train: int, n_hold: int) -> tuple[torch.Tensor, ...]:
    """One split's hold-out targets, and the data-splitting run's early-stopping and
    calibration targets (the last 2 * n_hold points, halves in order)."""
    n_tr2 = len(y) - 2 * n_hold
    return y[n_train:], y[n_tr2 : n_tr2 + n_hold], y[n_tr2 + n_hold :]


def summarise(per_rep: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Mean and standard error over the splits of every method's metrics (inf-safe)."""
    summary: dict[str, Any] = {}
    for method in per_rep[0]:
        summary[method] = {}
        for metric in per_rep[0][method]:
            vals = [p[method][metric] for p in per_rep]
            summary[method][metric] = statistics.fmean(vals)
            finite = all(math.isfinite(v) for v in vals)  # naive_theory may be infinite
            summary[method][metric + "_se"] = (
                statistics.stdev(vals) / math.sqrt(len(vals))
                if len(vals) > 1 and finite
                else (0.0 if finite else math.nan)
            )
    return summary


def regression_splits(
    name: str, n: int, reps: int, n_test: int, seed: int, holdout: float
) -> dict[str, Any]:
    """R random subsamples of n + n_test points; train/hold-out split by ``holdout``."""
    x, y = load_regression_data(name)
    rng = np.random.default_rng(seed)
    n = min(n, len(y) - n_test)
    n_hold = round(holdout * n)
    xs, ys, scales = [], [], []
    for _ in range(reps):
        idx = rng.permutation(len(y))[: n + n_test]
        tr = idx[: n - n_hold]
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
        scale = np.abs(y[tr]).mean()
        xs.append((x[idx] - mean) / std)
        ys.append(y[idx] / scale)
        scales.append(scale)
    return {
        "x": torch.tensor(np.stack(xs), dtype=torch.float32),
        "y": torch.tensor(np.stack(ys), dtype=torch.float32),
        "scale": torch.tensor(scales, dtype=torch.float64),
        "n_train": n - n_hold,
        "n_hold": n_hold,
        "n": n,
    }


def digits_splits(
    n: int, reps: int, n_test: int, seed: int, holdout: float, inliers: list[int] | None
) -> dict[str, Any]:
    """R random splits of digits; for outliers, train/hold-out hold inliers only."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    n_hold = round(holdout * n)
    xs, ys, xt, yt = [], [], [], []
    for _ in range(reps):
        if inliers is None:
            idx = rng.permutation(len(y))[: n + n_test]
            xs.append(x[idx[:n]])
            ys.append(y[idx[:n]])
            xt.append(x[idx[n:]])
            yt.append(y[idx[n:]])
        else:
            inl = rng.permutation(np.flatnonzero(np.isin(y, inliers)))
            out = rng.permutation(np.flatnonzero(~np.isin(y, inliers)))
            xs.append(x[inl[:n]])
            ys.append(np.zeros(n))
            test = np.concatenate([inl[n : n + n_test // 2], out[: n_test // 2]])
            xt.append(x[test])
            yt.append(np.r_[np.zeros(n_test // 2), np.ones(n_test // 2)])
    return {
        "x": torch.tensor(np.stack(xs)),
        "y": torch.tensor(np.stack(ys), dtype=torch.float32),
        "x_test": torch.tensor(np.stack(xt)),
        "y_test": torch.tensor(np.stack(yt)),
        "n_train": n - n_hold,
        "n_hold": n_hold,
        "n": n,
    }


# --- evaluation ---------------------------------------------------------------------------


def evaluate_split(
    task: str,
    run: dict[str, torch.Tensor],
    split_run: dict[str, torch.Tensor],
    r: int,
    y_hold: torch.Tensor,
    y_es: torch.Tensor,
    y_cal: torch.Tensor,
    y_test: torch.Tensor,
    conditional: bool,
    u_seed: int,
) -> dict[str, dict[str, float]]:
    """Metrics of each method on split r."""
    hold, test = run["hold"][:, r], run["test"][:, r]
    ds_es, ds_cal, ds_test = split_run["es"][:, r], split_run["cal"][:, r], split_run["test"][:, r]
    res: dict[str, dict[str, float]] = {}
    g = torch.Generator().manual_seed(u_seed)
    if task == "regression":
        yh, yt = y_hold.double(), y_test.double()
        loss = ((hold - yh) ** 2).sum(1)
        best, last = int(loss.argmin()), hold.shape[0] - 1
        ds_best = int(((ds_es - y_es.double()) ** 2).sum(1).argmin())
        ces = core.ces_regression_intervals(hold, yh, test, ALPHA)
        intervals = {
            "ces": (ces.lower, ces.upper),
            "naive": core.split_regression_intervals(hold[best], yh, test[best], ALPHA),
            "data_splitting": core.split_regression_intervals(
                ds_cal[ds_best], y_cal.double(), ds_test[ds_best], ALPHA
            ),
            "full": core.split_regression_intervals(hold[last], yh, test[last], ALPHA),
        }
        theory = core.naive_corrected_alpha(hold.shape[0], len(yh), ALPHA)
        intervals["naive_theory"] = (
            core.split_regression_intervals(hold[best], yh, test[best], theory)
            if theory > 0
            else (torch.full_like(yt, -math.inf), torch.full_like(yt, math.inf))
        )
        for name, (lo, hi) in intervals.items():
            res[name] = {
                "coverage": float(((lo <= yt) & (yt <= hi)).double().mean()),
                "width": float((hi - lo).mean()),
            }
        return res
    if task == "classification":
        yh, yt = y_hold.long(), y_test.long()
        u_hold, u_test = torch.rand(len(yh), generator=g), torch.rand(len(yt), generator=g)
        u_cal = torch.rand(len(y_cal), generator=g)
        loss = -torch.log(
            hold.gather(2, yh.view(1, -1, 1).expand(hold.shape[0], -1, 1)).squeeze(2)
        ).sum(1)
        best, last = int(loss.argmin()), hold.shape[0] - 1
        ye = y_es.long()
        ds_loss = -torch.log(
            ds_es.gather(2, ye.view(1, -1, 1).expand(ds_es.shape[0], -1, 1)).squeeze(2)
        ).sum(1)
        ds_best = int(ds_loss.argmin())
        pvals = {
            "ces": core.ces_classification_p_values(
                hold, yh, test, u_hold, u_test, conditional
            ).p_values,
            "naive": core.split_classification_p_values(
                hold[best], yh, test[best], u_hold, u_test, conditional
            ),
            "data_splitting": core.split_classification_p_values(
                ds_cal[ds_best], y_cal.long(), ds_test[ds_best], u_cal, u_test, conditional
            ),
            "full": core.split_classification_p_values(
                hold[last], yh, test[last], u_hold, u_test, conditional
            ),
        }
        for name, p in pvals.items():
            sets = core.prediction_sets(p, ALPHA)
            res[name] = {
                "coverage": float(sets[torch.arange(len(yt)), yt].double().mean()),
                "size": float(sets.sum(1).double().mean()),
            }
        return res
    # outlier detection: scores = losses
    inlier = y_test == 0
    best, last = int(hold.sum(1).argmin()), hold.shape[0] - 1
    ds_best = int(ds_es.sum(1).argmin())
    pvals = {
        "ces": core.ces_outlier_p_values(hold, hold, test, test).p_values,
        "naive": core.split_outlier_p_values(hold[best], test[best]),
        "data_splitting": core.split_outlier_p_values(ds_cal[ds_best], ds_test[ds_best]),
        "full": core.split_outlier_p_values(hold[last], test[last]),
    }
    for name, p in pvals.items():
        rejected = p <= ALPHA
        res[name] = {
            "type1": float(rejected[inlier].double().mean()),
            "power": float(rejected[~inlier].double().mean()),
        }
    return res


def run_setting(
    task: str, data: str, n: int, reps: int, epochs: int, seed: int
) -> list[dict[str, Any]]:
    """Trains the CES run and the data-splitting run for R splits; evaluates every method."""
    start = time.perf_counter()
    if task == "regression":
        d = regression_splits(data, n, reps, 100, seed, 0.25)
        sizes, relu, lr, batch = [d["x"].shape[2], 128, 128, 1], {0, 1}, 1e-3, 25
        x, y = d["x"][:, : d["n"]], d["y"][:, : d["n"]]
        xt, yt = d["x"][:, d["n"] :], d["y"][:, d["n"] :]
    else:
        d = digits_splits(
            n, reps, 200, seed, 0.25, None if task == "classification" else [0, 1, 2, 3, 4]
        )
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
        if task == "classification":
            sizes, relu, lr, batch = [64, 128, 10], {0}, 1e-3, 25
        else:
            sizes, relu, lr, batch = [64, 32, 8, 32, 64], {0, 2}, 1e-3, 25
    n_hold, n_train = d["n_hold"], d["n_train"]

    def train(n_fit: int, evals: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """The same networks and schedule, fitted on the first ``n_fit`` points."""
        return train_batched(
            task, sizes, relu, x[:, :n_fit], y[:, :n_fit], evals, epochs, batch, lr, seed
        )

    # CES / naive / full: 75% train, 25% hold-out
    run = train(n_train, {"hold": x[:, n_train:], "test": xt}, seed)
    # data splitting: 50% train, 25% early stopping, 25% calibration (the paper's benchmark)
    n_tr2 = n - 2 * n_hold
    split_run = train(
        n_tr2,
        {"es": x[:, n_tr2 : n_tr2 + n_hold], "cal": x[:, n_tr2 + n_hold :], "test": xt},
        seed + 1,
    )
    train_seconds = time.perf_counter() - start
    results = []
    for conditional in [True, False] if task == "classification" else [True]:
        per_rep = []
        for r in range(reps):
            res = evaluate_split(
                task,
                run,
                split_run,
                r,
                *split_targets(y[r], n_train, n_hold),
                yt[r],
                conditional,
                seed + r,
            )
            if task == "regression":  # widths back in the outcome's units
                for m in res.values():
                    m["width"] *= float(d["scale"][r])
            per_rep.append(res)
        summary = summarise(per_rep)
        results.append(
            {
                "task": task,
                "data": data,
                "n": n,
                "n_hold": n_hold,
                "reps": reps,
                "epochs": epochs,
                "conditional": conditional,
                "train_seconds": train_seconds,
                "summary": summary,
            }
        )
    return results


def time_core(repeats: int = 3) -> dict[str, Any]:
    """Core speed on 10,000 test points x 100 candidates x 10 classes, given the outputs."""
    g = torch.Generator().manual_seed(0)
    t, n, m, k = 100, 1000, 10_000, 10
    hold = torch.softmax(torch.randn(t, n, k, generator=g), -1)
    labels = torch.randint(0, k, (n,), generator=g)
    test = torch.softmax(torch.randn(t, m, k, generator=g), -1)
    u, ut = torch.rand(n, generator=g), torch.rand(m, generator=g)
    out: dict[str, Any] = {
        "shape": {"candidates": t, "holdout": n, "test": m, "classes": k},
        "threads": torch.get_num_threads(),
    }
    for conditional in (True, False):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            core.ces_classification_p_values(hold, labels, test, u, ut, conditional=conditional)
            times.append(time.perf_counter() - start)
        out["classification_" + ("conditional" if conditional else "marginal") + "_s"] = (
            statistics.median(times)
        )
    reg_hold = torch.randn(t, n, generator=g, dtype=torch.float64)
    reg_y = torch.randn(n, generator=g, dtype=torch.float64)
    reg_test = torch.randn(t, m, generator=g, dtype=torch.float64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        core.ces_regression_intervals(reg_hold, reg_y, reg_test, ALPHA)
        times.append(time.perf_counter() - start)
    out["regression_s"] = statistics.median(times)
    return out


SETTINGS = {
    "concrete": [("regression", "concrete", n) for n in (200, 500, 930)],
    "bio": [("regression", "bio", n) for n in (500, 2000)],
    "digits": [("classification", "digits", n) for n in (300, 1000)],
    "outlier": [("outlier", "digits", n) for n in (200, 600)],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=None, help="only these total sizes n"
    )
    parser.add_argument("--timing", action="store_true", help="only time the core")
    add_run_options(parser, "benchmarks/results/ces.json", threads=2, seed=True)
    args = parse_run_options(parser)
    result: dict[str, Any] = {
        "command": "python benchmarks/ces.py "
        + " ".join(
            ["--timing"]
            if args.timing
            else [f"--reps {args.reps}", f"--epochs {args.epochs}", "--tasks", *args.tasks]
            + (["--sizes", *map(str, args.sizes)] if args.sizes else [])
        )
    }
    result["core_timing"] = time_core()
    print(json.dumps(result["core_timing"]))
    if not args.timing:
        result["settings"] = []
        for task_group in args.tasks:
            for task, data, n in SETTINGS[task_group]:
                if args.sizes and n not in args.sizes:
                    continue
                for res in run_setting(task, data, n, args.reps, args.epochs, args.seed):
                    result["settings"].append(res)
                    print(json.dumps(res), flush=True)
                    write_json(args.out, result)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
