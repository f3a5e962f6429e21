"""``eecontrol replay``: its options, its table, its plot and the command itself."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eecontrol.core.curves.forecasters import (
    DEFAULT_FORECASTER,
    FORECASTERS,
    get_forecaster,
)
from eecontrol.sweep.replay.engine import replay
from eecontrol.sweep.replay.loading import MODES, load_sweep
from eecontrol.sweep.replay.policies import default_policies, guess_bounds


def format_table(result: Mapping[str, Any]) -> str:
    """The replay's table as plain text, one policy per line."""
    lines = [
        f"{result['source']}: {result['runs']} runs x {result['budget']} validations of "
        f"{result['metric']} ({result['mode']}); true best {result['true_best']:.5g}; "
        f"{result['orders']} orders",
        f"{'policy':>24} {'epochs':>8} {'saving':>7} {'stopped':>7} "
        f"{'regret(complete)':>16} {'regret(any)':>11}",
    ]
    for name, row in result["policies"].items():
        lines.append(
            f"{name:>24} {row['epochs']:8.0f} {row['saving_x']:6.2f}x {row['stopped']:7.1f} "
            f"{row['regret_complete']:16.4g} {row['regret_any']:11.4g}"
        )
    lines.append(
        "regret: best true value in the sweep minus the picked configuration's, in the "
        "metric's units (>= 0; mean over orders)"
    )
    return "\n".join(lines)


def plot_front(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Draws regret (picking rule ``any``) against epochs for every policy and order.

    Each policy is one marker per order and a larger one at its mean; the line joins the
    policies on the front (no other policy uses fewer epochs at lower mean regret).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    full = result["runs"] * result["budget"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = []
    for k, (name, row) in enumerate(result["policies"].items()):
        color = plt.get_cmap("tab20")(k % 20)
        xs = [s["epochs"] / full for s in row["per_order"]]
        ys = [s["regret_any"] for s in row["per_order"]]
        ax.scatter(xs, ys, s=12, alpha=0.35, color=color)
        ours = name.startswith("ours")
        ax.scatter(
            [row["epochs"] / full],
            [row["regret_any"]],
            s=70,
            color=color,
            marker="*" if ours else "o",
            label=name,
            edgecolor="black",
            linewidth=0.5,
        )
        pts.append((row["epochs"] / full, row["regret_any"]))
    front = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts))
    if front:
        ax.plot(*zip(*front), color="gray", linestyle="--", linewidth=1, zorder=0)
    ax.set_xlabel("epochs used (fraction of training every run to the budget)")
    ax.set_ylabel(f"regret ({result['metric']}, {result['mode']})")
    ax.set_title(title or f"{Path(str(result['source'])).name}: regret vs epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: Any) -> None:
    """The ``eecontrol replay`` options, on an ``argparse`` (sub)parser."""
    parser.add_argument(
        "sweep",
        help="a Hydra multirun directory, an Optuna storage URL (with --study) or a JSON "
        "file recorded by benchmarks/record_curves.py",
    )
    parser.add_argument("--study", default=None, help="Optuna study name (URL sources)")
    parser.add_argument(
        "--metric", default=None, help="the metric to replay (default: the sweep's objective)"
    )
    parser.add_argument(
        "--mode", choices=MODES, default=None, help="max or min (default: from the source)"
    )
    parser.add_argument("--orders", type=int, default=5, help="random run orders (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders")
    parser.add_argument(
        "--patience", type=int, default=5, help="EarlyStopping patience (default 5)"
    )
    parser.add_argument(
        "--forecaster",
        nargs="+",
        default=[DEFAULT_FORECASTER],
        metavar="NAME",
        help=f"replay our forecasting policies with each of these forecasters "
        f"({', '.join(FORECASTERS)}; default {DEFAULT_FORECASTER}); policies of a "
        f"forecaster other than the default are named with _NAME (ours_in_run_pfn)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=None,
        metavar="NAME",
        help="replay only these policies (default: all; names as in the table)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the front PNG here")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")


def command(args: Any) -> int:
    """Runs ``eecontrol replay`` with parsed ``args``; returns the exit status."""
    import sys

    if args.orders < 1:
        print(f"eecontrol replay: --orders must be >= 1, got {args.orders}", file=sys.stderr)
        return 2
    if args.patience < 1:
        print(f"eecontrol replay: --patience must be >= 1, got {args.patience}", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep, args.study, args.metric, args.mode)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"eecontrol replay: {err}", file=sys.stderr)
        return 2
    bounds = guess_bounds(sweep)
    try:
        policies = default_policies(sweep.budget, bounds, args.patience, args.forecaster)
        for name in dict.fromkeys(args.forecaster):
            get_forecaster(name).load()  # a forecaster that cannot load fails here, clearly
    except (ValueError, ImportError) as err:
        print(f"eecontrol replay: --forecaster: {err}", file=sys.stderr)
        return 2
    if args.policies:
        unknown = sorted(set(args.policies) - set(policies))
        if unknown:
            print(
                f"eecontrol replay: unknown --policies {unknown}; choose from {list(policies)}",
                file=sys.stderr,
            )
            return 2
        policies = {k: v for k, v in policies.items() if k in args.policies}
    result = replay(
        sweep,
        policies,
        orders=args.orders,
        seed=args.seed,
        bounds=bounds,
        progress=lambda name, row: print(f"  replayed {name} ({row['seconds']:.1f} s)", flush=True),
    )
    print(format_table(result))
    if sweep.skipped:
        print(f"left out: {'; '.join(sweep.skipped)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"table: {args.json}")
    if args.plot is not None:
        print(f"front: {plot_front(result, args.plot)}")
    return 0
