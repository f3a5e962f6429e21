"""PNG plots of a run's decisions, metrics and callback artefacts (matplotlib, no display)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from eecontrol.report.artifacts import RunArtifacts
from eecontrol.resume import safe_dir


@dataclass(frozen=True)
class Plot:
    """One written figure.

    Args:
        title: short title.
        path: the PNG file.
        caption: one line saying what it shows.
    """

    title: str
    path: Path
    caption: str


def _short(callback: str) -> str:
    return callback.split("{")[0]


def _series(art: RunArtifacts, key: str) -> tuple[list[float], list[float]]:
    """Non-NaN (step, value) pairs of a metrics column."""
    steps, values = art.metrics.get("step", []), art.metrics.get(key, [])
    pairs = [(s, v) for s, v in zip(steps, values) if not (math.isnan(s) or math.isnan(v))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _grouped(art: RunArtifacts) -> dict[tuple[str, int], list[str]]:
    """Actions per (callback, step), so that labels at one step are joined, not overlaid."""
    groups: dict[tuple[str, int], list[str]] = {}
    for d in art.decisions:
        groups.setdefault((_short(d.callback), d.step), []).append(d.action)
    return groups


def _decision_lines(ax: plt.Axes, art: RunArtifacts) -> None:
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, step), actions in _grouped(art).items():
        shown = [a for a in actions if a not in ("plan", "schedule")]
        if not shown:
            continue
        colour = colours.setdefault(name, palette[(len(colours) + 3) % len(palette)])
        ax.axvline(step, color=colour, linestyle="--", linewidth=1, alpha=0.8)
        ax.annotate(
            ", ".join(shown),
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
            color=colour,
        )


def plot_metrics(art: RunArtifacts, out: Path) -> Plot | None:
    """Loss and accuracy curves by optimizer step, with a dashed line at every decision."""
    keys = [
        k
        for k in art.metrics
        if k.startswith(("val/", "train/loss", "test/")) and not k.endswith("_step")
    ]
    keys = [k for k in keys if _series(art, k)[0]]
    if not keys:
        return None
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if "loss" not in k]
    fig, axes = plt.subplots(
        1, 2 if others else 1, figsize=(11 if others else 6, 3.6), squeeze=False
    )
    for ax, group, label in (
        (axes[0][0], losses, "loss"),
        *((axes[0][1], others, "metric"),) * bool(others),
    ):
        for key in group:
            x, y = _series(art, key)
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=key)
        _decision_lines(ax, art)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{art.name}: metrics and decisions", fontsize=10)
    fig.tight_layout()
    path = out / "metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Metrics",
        path,
        "Training and validation curves by optimizer step; dashed lines mark decisions.",
    )


def plot_decisions(art: RunArtifacts, out: Path) -> Plot | None:
    """A timeline: one row per callback, one marker per decision."""
    if not art.decisions:
        return None
    names = sorted({_short(d.callback) for d in art.decisions})
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.5 * len(names)))
    for (name, step), actions in _grouped(art).items():
        y = names.index(name)
        ax.scatter([step], [y], s=40, zorder=3)
        ax.annotate(
            ", ".join(actions), (step, y), textcoords="offset points", xytext=(3, 6), fontsize=7
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("optimizer step")
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "decisions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Decisions",
        path,
        "When each callback acted (hover the HTML table for reasons and evidence).",
    )


def plot_rates(art: RunArtifacts, out: Path) -> Plot | None:
    """Scheduled rates (dropout, drop path) over optimizer steps."""
    keys = [k for k in art.metrics if k.endswith("/rate") and _series(art, k)[0]]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for key in keys:
        ax.step(*_series(art, key), where="post", label=key)
    _decision_lines(ax, art)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "rates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Drop rates", path, "DropoutSchedule: the rate set in the model at every optimizer step."
    )


def plot_ces(art: RunArtifacts, out: Path) -> Plot | None:
    """CES: hold-out loss of every stored candidate; test coverage and size vs the naive baseline."""
    if not art.ces_candidates:
        return None
    evaluate = next((d for d in reversed(art.decisions) if d.action == "evaluate"), None)
    fig, axes = plt.subplots(
        1, 2 if evaluate else 1, figsize=(10 if evaluate else 5.5, 3.4), squeeze=False
    )
    ax = axes[0][0]
    epochs = [c["epoch"] for c in art.ces_candidates]
    losses = [c["holdout_loss"] for c in art.ces_candidates]
    ax.plot(epochs, losses, marker="o", markersize=3)
    best = min(range(len(losses)), key=losses.__getitem__)
    ax.scatter(
        [epochs[best]],
        [losses[best]],
        color="red",
        zorder=3,
        label=f"naive choice (epoch {epochs[best]})",
    )
    ax.set_xlabel("epoch of candidate")
    ax.set_ylabel("hold-out loss (sum)")
    ax.legend(fontsize=7)
    if evaluate:
        ev = evaluate.evidence
        ax2 = axes[0][1]
        size_key = next((k for k in ("size", "width", "power") if f"ces_{k}" in ev), None)
        cov_key = "coverage" if "ces_coverage" in ev else "type1"
        methods = [m for m in ("ces", "naive") if f"{m}_{cov_key}" in ev]
        xs = range(len(methods))
        cov = [float(ev[f"{m}_{cov_key}"]) for m in methods]
        ax2.bar_label(ax2.bar([x - 0.2 for x in xs], cov, width=0.4), fmt="%.3f", fontsize=7)
        if size_key:
            twin = ax2.twinx()
            size = [float(ev[f"{m}_{size_key}"]) for m in methods]
            twin.bar_label(
                twin.bar([x + 0.2 for x in xs], size, width=0.4, color="C1"), fmt="%.3g", fontsize=7
            )
            twin.set_ylabel(f"{size_key} (orange)")
        ax2.set_xticks(list(xs), methods)
        ax2.set_ylabel(f"{cov_key} (blue)")
        ax2.set_title("test split", fontsize=9)
    fig.tight_layout()
    path = out / "ces.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Conformalized early stopping",
        path,
        "Left: hold-out loss of each stored candidate (red: what plain early stopping would pick). "
        "Right: coverage (or type-I error) and set size / width on the test split.",
    )


def plot_curve_prediction(art: RunArtifacts, out: Path) -> Plot | None:
    """LearningCurveStopping: observed metric, predicted curve and its band at the last check."""
    record = art.extra_json.get("curve_prediction.json")
    if not record:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    obs = record["observed"]
    ax.plot(obs["x"], obs["y"], "o", markersize=4, label="observed")
    pred = record.get("predicted")
    if pred:
        ax.plot(pred["x"], pred["mean"], label="predicted (ensemble mean)")
        band = round(100 * pred["band"])
        ax.fill_between(pred["x"], pred["lower"], pred["upper"], alpha=0.25, label=f"{band}% band")
    if any(d.action == "stop" for d in art.decisions) and obs["x"]:
        ax.axvline(obs["x"][-1], color="red", linestyle="--", linewidth=1, label="stop")
    ax.set_xlabel(record.get("x_axis", "x"))
    ax.set_ylabel(record.get("monitor", "metric"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Learning curve",
        path,
        "LearningCurveStopping: observations, the extrapolated curve and its band.",
    )


def plot_grades(art: RunArtifacts, out: Path) -> Plot | None:
    """GradES: one bar per matrix from the start to its freeze step; the grace period shaded."""
    record = art.extra_json.get("grades_timeline.json")
    if not record or not record.get("components"):
        return None
    comps = record["components"]
    end = record.get("stopped_step") or record.get("total_steps") or 1
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.22 * len(comps)))
    for i, c in enumerate(comps):
        frozen = c.get("frozen_step")
        ax.barh(
            i,
            frozen if frozen is not None else end,
            color="C0" if frozen is None else "C2",
            height=0.6,
        )
        if frozen is not None:
            ax.plot([frozen], [i], "k|", markersize=8)
    if record.get("grace_step"):
        ax.axvspan(0, record["grace_step"], color="grey", alpha=0.15)
    ax.set_yticks(range(len(comps)), [c["name"] for c in comps], fontsize=6)
    ax.set_xlabel("optimizer step (green: trained until frozen; blue: never frozen)")
    ax.set_title(f"frozen fraction {record.get('frozen_fraction', 0):.2f}", fontsize=9)
    fig.tight_layout()
    path = out / "grades_timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "GradES freeze timeline",
        path,
        "Each matrix trains until its freeze step (a tick); grey: grace period.",
    )


def plot_darts(art: RunArtifacts, out: Path) -> Plot | None:
    """DARTS+: skip-connects per cell and the stability counter per epoch; final softmax(alpha)."""
    history = art.extra_json.get("darts_plus/history.json")
    if not history or not history.get("epochs"):
        return None
    import numpy as np

    rows = history["epochs"]
    epochs = [r["epoch"] for r in rows]
    npz = art.path / "darts_plus" / "alphas.npz"
    alphas = dict(np.load(npz, allow_pickle=False)) if npz.exists() else {}
    heat = "normal" in alphas
    fig, axes = plt.subplots(1, 2 if heat else 1, figsize=(11 if heat else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    for cell in rows[0]["skips"]:
        ax.plot(
            epochs,
            [r["skips"].get(cell, 0) for r in rows],
            marker="o",
            markersize=3,
            label=f"skips ({cell})",
        )
    ax.plot(epochs, [r["stable_epochs"] for r in rows], linestyle=":", label="stable epochs")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    if heat:
        ax2 = axes[0][1]
        last = alphas["normal"][-1]
        image = ax2.imshow(last, aspect="auto", cmap="viridis")
        ax2.set_xticks(
            range(last.shape[1]),
            [str(o) for o in alphas.get("op_names", [])] or None,
            rotation=60,
            fontsize=6,
        )
        ax2.set_ylabel("edge")
        ax2.set_title("softmax(alpha), normal cell, last epoch", fontsize=9)
        fig.colorbar(image, ax=ax2)
    fig.tight_layout()
    path = out / "darts_plus.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "DARTS+",
        path,
        "Skip-connects in the derived cells and the ranking-stability counter per epoch; "
        "right: the normal cell's softmax(alpha) at the last epoch.",
    )


PLOTTERS: list[Callable[[RunArtifacts, Path], Plot | None]] = [
    plot_metrics,
    plot_decisions,
    plot_rates,
    plot_ces,
    plot_curve_prediction,
    plot_grades,
    plot_darts,
]


def make_plots(art: RunArtifacts, out: Path) -> list[Plot]:
    """Writes every plot that applies to this run into ``out``."""
    safe_dir(out)  # symlinks in report/ are removed, never written through
    return [p for p in (plotter(art, out) for plotter in PLOTTERS) if p is not None]


def plot_sweep(runs: list[RunArtifacts], out: Path, metric: str) -> Plot | None:
    """Every run's ``metric`` by optimizer step, with a cross where a callback stopped it."""
    safe_dir(out)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    drawn = 0
    for art in runs:
        x, y = _series(art, metric)
        if not x:
            continue
        (line,) = ax.plot(x, y, label=art.name, linewidth=1.2)
        drawn += 1
        for d in art.decisions:
            if d.action == "stop":
                ax.scatter([x[-1]], [y[-1]], marker="x", s=60, color=line.get_color(), zorder=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{len(runs)} runs; x = stopped by a callback", fontsize=9)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(
        "Sweep",
        path,
        f"{metric} of every run by optimizer step; crosses mark runs a callback stopped.",
    )
