"""CES for conformalized quantile regression (CQR) against its baselines, many splits (JSON out).

Liang, Zhou, Sesia (ICML 2023), appendix "CES for Quantile Regression". One network with
two outputs (the 5% and 95% conditional quantiles, alpha = 0.1), the authors' CQR network
Linear(p,128)-ReLU-Linear(128,128)-ReLU-Linear(128,2) with orthogonal weights and zero
biases, trained on the summed pinball loss with Adam (lr 1e-3, batch 25); a candidate every
``--every`` epochs. The R networks of a setting train side by side as one batched network
(``torch.baddbmm`` over stacked weights, one Adam over the stack: Adam is elementwise and
the loss is a sum of per-split losses, so these are exactly R independent trainings).
Candidate outputs on the hold-out, early-stopping, calibration and test points are
recorded during training, so no checkpoint is reloaded.

Methods, as in the paper's CQR tables:

- ``ces``: 75% train, 25% hold-out; per test point the lower and upper models are
  selected by the pinball loss on the hold-out set augmented with the test point
  (``eecontrol.core.conformal.ces_quantile_intervals``, empty sets fall back to ``naive``).
- ``naive``: same run; the lower and upper models with the smallest hold-out pinball loss,
  split CQR on the same hold-out set (not valid in theory).
- ``naive_theory``: ``naive`` at the paper's corrected level (hybrid bound, b = 100).
- ``data_splitting``: a second run trained on 50%, early stopping on 25% (pinball loss),
  split CQR on the other 25%.
- ``full``: the last candidate of the CES run, split CQR on the hold-out set.
- ``ces_union``: the exact CES set (the union of the bin intervals) whose convex hull is
  ``ces``; valid by the same theorem, not always an interval.

``--warmup W ...`` evaluates each setting again with the candidates stored after the first W
epochs only (``ConformalEarlyStopping(storage_start=W)``), the same candidate set for every
method; 0 is the paper's schedule. ``ces_minus_ds`` is the paired per-split difference of
the CES and data-splitting widths (negative: CES narrower). ``--cache DIR`` keeps the
candidates' outputs so that other warm-ups are evaluated without training again.

Widths are reported in the scaled outcome (y divided by the mean absolute training
outcome), the unit of the paper's CQR tables.

    python benchmarks/ces_cqr.py --reps 100 --epochs 2000 --every 10 --warmup 0 100 \
        --data concrete bio --sizes 200 500
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import add_run_options, parse_run_options, write_json
from ces import BatchedMLP, regression_splits, split_targets, summarise, train_epoch

from eecontrol.core import conformal as core

ALPHA = 0.1
LEVELS = (ALPHA / 2, 1 - ALPHA / 2)
METHODS = ("ces", "ces_union", "naive", "naive_theory", "data_splitting", "full")
# The paper's CQR results on bio (appendix table, 2000 epochs, 25 repetitions, 1000 test
# points): width (scaled outcome) / marginal coverage per method.
_PAPER_BIO_N = (200, 500, 1000, 2000)
_PAPER_BIO_ROWS = {  # method: (width, coverage) at each n of _PAPER_BIO_N
    "ces": ((2.732, 0.926), (2.154, 0.921), (1.997, 0.918), (1.869, 0.906)),
    "naive": ((2.018, 0.876), (1.900, 0.892), (1.871, 0.894), (1.763, 0.890)),
    "naive_theory": ((3.392, 0.971), (3.893, 0.995), (2.318, 0.969), (1.998, 0.948)),
    "data_splitting": ((2.334, 0.902), (2.015, 0.903), (1.895, 0.898), (1.830, 0.898)),
    "full": ((2.848, 0.899), (2.579, 0.890), (2.381, 0.877), (2.219, 0.874)),
}
PAPER_BIO = {
    n: {method: row[i] for method, row in _PAPER_BIO_ROWS.items()}
    for i, n in enumerate(_PAPER_BIO_N)
}


def _pinball_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample pinball loss summed over the two levels: out (R, b, 2), y (R, b)."""
    u = y.unsqueeze(-1) - out
    levels = torch.tensor(LEVELS, dtype=out.dtype)
    return torch.maximum(levels * u, (levels - 1) * u).sum(-1)


def train_quantile(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    evals: dict[str, torch.Tensor],
    epochs: int,
    every: int,
    seed: int,
    batch_size: int = 25,
    lr: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Trains R quantile networks side by side; outputs (T, R, n, 2) on each eval set."""
    g = torch.Generator().manual_seed(seed)
    reps, _, p = x_train.shape
    net = BatchedMLP(reps, [p, 128, 128, 2], {0, 1}, g)
    with torch.no_grad():  # the authors' initialisation: orthogonal weights, zero biases
        for w, b in zip(net.weights, net.biases):
            for r in range(reps):
                w[r].copy_(
                    torch.nn.init.orthogonal_(torch.empty(w.shape[2], w.shape[1]), generator=g).T
                )
            b.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    history: dict[str, list[torch.Tensor]] = {k: [] for k in evals}
    for epoch in range(epochs):
        train_epoch(
            net,
            opt,
            x_train,
            y_train,
            batch_size,
            g,
            lambda out, _, yb: _pinball_sum(out, yb).mean(dim=1).sum(),
        )
        if (epoch + 1) % every == 0:
            with torch.no_grad():
                for name, x in evals.items():
                    history[name].append(net(x).to(torch.float64))
    return {k: torch.stack(v) for k, v in history.items()}


def _pinball_losses(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold-out pinball losses of each candidate (T, n, 2) at each level: (T,), (T,)."""
    lo = core.pinball_loss(out[..., 0], y, LEVELS[0]).sum(-1)
    hi = core.pinball_loss(out[..., 1], y, LEVELS[1]).sum(-1)
    return lo, hi


def evaluate_split(
    run: dict[str, torch.Tensor],
    ds_run: dict[str, torch.Tensor],
    r: int,
    targets: tuple[torch.Tensor, ...],
    y_test: torch.Tensor,
) -> dict[str, dict[str, float]]:
    """Coverage, width (scaled outcome) and empty-set rate of every method on split r;
    ``targets``: its hold-out, early-stopping and calibration targets (``split_targets``)."""
    y_hold, y_es, y_cal = targets
    hold, test = run["hold"][:, r], run["test"][:, r]  # (T, n, 2), (T, m, 2)
    yh, yt = y_hold.double(), y_test.double()
    t = hold.shape[0]
    lo_loss, hi_loss = _pinball_losses(hold, yh)
    a, b = int(lo_loss.argmin()), int(hi_loss.argmin())
    ces = core.ces_quantile_intervals(
        hold[..., 0], hold[..., 1], yh, test[..., 0], test[..., 1], ALPHA, LEVELS, union=True
    )
    theory_alpha = core.naive_corrected_alpha(t, len(yh), ALPHA)
    es_lo, es_hi = _pinball_losses(ds_run["es"][:, r], y_es.double())
    da, db = int(es_lo.argmin()), int(es_hi.argmin())
    cal, ds_test = ds_run["cal"][:, r], ds_run["test"][:, r]

    def split(h: torch.Tensor, hb: torch.Tensor, y: torch.Tensor, tl, tu, level):
        if level <= 0:  # no finite level is valid: the whole line
            return torch.full_like(tl, -math.inf), torch.full_like(tu, math.inf)
        return core.split_quantile_intervals(h, hb, y, tl, tu, level)

    intervals = {
        "ces": (ces.lower, ces.upper),
        "naive": split(hold[a, :, 0], hold[b, :, 1], yh, test[a, :, 0], test[b, :, 1], ALPHA),
        "naive_theory": split(
            hold[a, :, 0], hold[b, :, 1], yh, test[a, :, 0], test[b, :, 1], theory_alpha
        ),
        "data_splitting": split(
            cal[da, :, 0],
            cal[db, :, 1],
            y_cal.double(),
            ds_test[da, :, 0],
            ds_test[db, :, 1],
            ALPHA,
        ),
        "full": split(hold[-1, :, 0], hold[-1, :, 1], yh, test[-1, :, 0], test[-1, :, 1], ALPHA),
    }
    res: dict[str, dict[str, float]] = {}
    for name, (lo, hi) in intervals.items():
        res[name] = {
            "coverage": float(((lo <= yt) & (yt <= hi)).double().mean()),
            "width": float((hi - lo).clamp_min(0).mean()),
        }
    assert ces.fallback is not None and ces.union_lower is not None
    assert ces.union_upper is not None
    pieces_in = (ces.union_lower <= yt.unsqueeze(1)) & (yt.unsqueeze(1) <= ces.union_upper)
    res["ces_union"] = {
        "coverage": float(pieces_in.any(dim=1).double().mean()),
        "width": float(torch.nan_to_num(ces.union_upper - ces.union_lower).sum(1).mean()),
    }
    res["ces"]["empty"] = float(ces.fallback.double().mean())
    res["naive_theory"]["alpha"] = theory_alpha
    res["ces_minus_ds"] = {"width": res["ces"]["width"] - res["data_splitting"]["width"]}
    return res


def _train_both(
    data: str, n: int, reps: int, epochs: int, every: int, n_test: int, seed: int
) -> dict[str, Any]:
    """Trains the CES run and the data-splitting run for R splits (outputs, data, timing)."""
    start = time.perf_counter()
    rows = {"concrete": 1030, "bio": 45730}[data]
    n_test = min(n_test, rows - n)
    d = regression_splits(data, n, reps, n_test, seed, 0.25)
    x, y = d["x"][:, : d["n"]], d["y"][:, : d["n"]]
    xt, yt = d["x"][:, d["n"] :], d["y"][:, d["n"] :]
    n_hold, n_train = d["n_hold"], d["n_train"]
    run = train_quantile(
        x[:, :n_train], y[:, :n_train], {"hold": x[:, n_train:], "test": xt}, epochs, every, seed
    )
    n_tr2 = n - 2 * n_hold
    ds_run = train_quantile(
        x[:, :n_tr2],
        y[:, :n_tr2],
        {"es": x[:, n_tr2 : n_tr2 + n_hold], "cal": x[:, n_tr2 + n_hold :], "test": xt},
        epochs,
        every,
        seed + 1,
    )
    return {
        "run": run,
        "ds_run": ds_run,
        "y": y,
        "yt": yt,
        "n_hold": n_hold,
        "n_train": n_train,
        "n_test": n_test,
        "train_seconds": time.perf_counter() - start,
    }


def run_setting(
    data: str,
    n: int,
    reps: int,
    epochs: int,
    every: int,
    n_test: int,
    seed: int,
    warmups: list[int],
    cache: Path | None = None,
) -> list[dict[str, Any]]:
    """Trains (or loads from ``cache``) once; evaluates every method at each warm-up."""
    file = None
    if cache is not None:
        file = cache / f"cqr_{data}_n{n}_r{reps}_e{epochs}_every{every}_t{n_test}_s{seed}.pt"
    if file is not None and file.exists():
        trained = torch.load(file, weights_only=True)
    else:
        trained = _train_both(data, n, reps, epochs, every, n_test, seed)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(trained, file)
    run, ds_run, y, yt = trained["run"], trained["ds_run"], trained["y"], trained["yt"]
    n_hold, n_train = trained["n_hold"], trained["n_train"]
    stored = torch.arange(1, epochs // every + 1) * every  # the epoch of each candidate
    settings = []
    for warmup in warmups:
        keep = stored > warmup
        if not bool(keep.any()):
            raise ValueError(f"--warmup {warmup} leaves no candidate of {epochs} epochs")
        start = time.perf_counter()
        sub = {k: v[keep] for k, v in run.items()}
        ds_sub = {k: v[keep] for k, v in ds_run.items()}
        per_rep = [
            evaluate_split(sub, ds_sub, r, split_targets(y[r], n_train, n_hold), yt[r])
            for r in range(y.shape[0])
        ]
        settings.append(
            {
                "task": "quantile",
                "data": data,
                "n": n,
                "n_hold": n_hold,
                "n_test": trained["n_test"],
                "reps": reps,
                "epochs": epochs,
                "every": every,
                "warmup": warmup,
                "candidates": int(keep.sum()),
                "train_seconds": float(trained["train_seconds"]),
                "eval_seconds": time.perf_counter() - start,
                "threads": torch.get_num_threads(),
                "summary": summarise(per_rep),
                "paper": PAPER_BIO.get(n) if data == "bio" and warmup == 0 else None,
            }
        )
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--every", type=int, default=10, help="epochs between candidates")
    parser.add_argument("--data", nargs="+", default=["concrete", "bio"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500])
    parser.add_argument(
        "--warmup", nargs="+", type=int, default=[0], help="epochs before the first candidate"
    )
    parser.add_argument("--cache", type=Path, default=None, help="keep trained outputs here")
    parser.add_argument("--n-test", type=int, default=1000)
    add_run_options(parser, "benchmarks/results/ces_cqr.json", seed=True)
    args = parse_run_options(parser)
    result: dict[str, Any] = {
        "command": "python benchmarks/ces_cqr.py "
        + " ".join(
            [
                f"--reps {args.reps}",
                f"--epochs {args.epochs}",
                f"--every {args.every}",
                "--data",
                *args.data,
                "--sizes",
                *map(str, args.sizes),
                "--warmup",
                *map(str, args.warmup),
                f"--n-test {args.n_test}",
                f"--seed {args.seed}",
            ]
        ),
        "settings": [],
    }
    for data in args.data:
        for n in args.sizes:
            for res in run_setting(
                data,
                n,
                args.reps,
                args.epochs,
                args.every,
                args.n_test,
                args.seed,
                args.warmup,
                args.cache,
            ):
                result["settings"].append(res)
                print(json.dumps(res), flush=True)
            write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
