"""PNG plots of a run's decisions, metrics and callback artefacts (matplotlib, no display)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from eecontrol.callbacks._control import Decision
from eecontrol.report.artifacts import RunArtifacts
from eecontrol.report.figures import (
    Plot,
    decision_lines,
    is_loss,
    is_split_metric,
    metric_series,
    save_figure,
    series_panel,
    short_callback,
    tex_safe,
)
from eecontrol.util.files import safe_dir


def plot_metrics(art: RunArtifacts, out: Path) -> Plot | None:
    """Loss and other metric curves by optimizer step, with the decisions marked.

    Any train/val/test column is drawn, whatever its separator (``val/loss``,
    ``val_loss``); losses (and errors) on the left, other metrics on the right.
    """
    keys = [k for k in art.metrics if is_split_metric(k) and metric_series(art, k)[0]]
    if not keys:
        return None
    groups = [
        (g, label)
        for g, label in (
            ([k for k in keys if is_loss(k)], "loss / error"),
            ([k for k in keys if not is_loss(k)], "metric"),
        )
        if g
    ]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.8 * len(groups), 3.8), squeeze=False)
    for ax, (group, label) in zip(axes[0], groups):
        series_panel(ax, art, group, label)
    fig.suptitle(f"{tex_safe(art.name)}: metrics and decisions", fontsize=10)
    return save_figure(
        fig,
        out / "metrics.png",
        "Metrics",
        "Training and validation curves by optimizer step; solid red: a stop, dashed: other "
        "decisions, ticks at the bottom: frequent decisions (see the legend).",
    )


def plot_decisions(art: RunArtifacts, out: Path) -> Plot | None:
    """A timeline: one row per callback, one marker per decision, actions in the legend."""
    if not art.decisions:
        return None
    names = sorted({short_callback(d.callback) for d in art.decisions})
    actions = list(dict.fromkeys(d.action for d in art.decisions))
    markers = "os^vDP*X<>"
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(names)))
    spread = min(0.15, 0.6 / len(actions))  # actions at one step sit side by side in a row
    for i, action in enumerate(actions):
        offset = (i - (len(actions) - 1) / 2) * spread
        points = [
            (d.step, names.index(short_callback(d.callback)) + offset)
            for d in art.decisions
            if d.action == action
        ]
        ax.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            s=45,
            marker=markers[i % len(markers)],
            color="red" if action == "stop" else f"C{i % 10}",
            zorder=3,
            label=tex_safe(f"{action} ({len(points)})"),
        )
    ax.set_yticks(range(len(names)), [tex_safe(n) for n in names])
    ax.set_xlabel("optimizer step")
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="action")
    return save_figure(
        fig,
        out / "decisions.png",
        "Decisions",
        "When each callback acted; one marker per action (the HTML table gives reasons and evidence).",
    )


def plot_rates(art: RunArtifacts, out: Path) -> Plot | None:
    """Scheduled rates (dropout, drop path) over optimizer steps."""
    keys = [k for k in art.metrics if k.endswith("/rate") and metric_series(art, k)[0]]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for key in keys:
        ax.step(*metric_series(art, key), where="post", label=key)
    decision_lines(ax, art)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rate")
    ax.legend(fontsize=7)
    return save_figure(
        fig,
        out / "rates.png",
        "Drop rates",
        "DropoutSchedule: the rate set in the model at every optimizer step.",
    )


def _ces_alpha(evaluate: Decision) -> float | None:
    """The level of CES's test-split evaluation (evidence ``alpha``, else the reason text)."""
    if isinstance(evaluate.evidence.get("alpha"), int | float):
        return float(evaluate.evidence["alpha"])
    found = re.search(r"alpha=([0-9.eE-]+)", evaluate.reason)
    try:
        return float(found.group(1).rstrip(".")) if found else None
    except ValueError:
        return None


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
            ax2.set_zorder(twin.get_zorder() + 1)  # coverage bars and the target line on top
            ax2.patch.set_visible(False)
            size = [float(ev[f"{m}_{size_key}"]) for m in methods]
            twin.bar_label(
                twin.bar([x + 0.2 for x in xs], size, width=0.4, color="C1"), fmt="%.3g", fontsize=7
            )
            twin.set_ylabel(f"{size_key} (orange)")
        alpha = _ces_alpha(evaluate)
        title = "test split"
        if alpha is not None:
            target = 1 - alpha if cov_key == "coverage" else alpha
            ax2.axhline(target, color="k", linestyle=":", linewidth=1.2, zorder=5)
            name = "1 - alpha" if cov_key == "coverage" else "alpha"
            title += f"; dotted: target {name} = {target:.2f}"
        ax2.set_xticks(list(xs), methods)
        ax2.set_ylabel(f"{cov_key} (blue)")
        ax2.set_title(title, fontsize=9)
    return save_figure(
        fig,
        out / "ces.png",
        "Conformalized early stopping",
        "Left: hold-out loss of each stored candidate (red: what plain early stopping would pick). "
        "Right: coverage (or type-I error) and set size / width on the test split; dotted: "
        "the target level.",
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
        ax.plot(pred["x"], pred["mean"], label=f"predicted ({pred.get('forecaster', 'ensemble')})")
        band = round(100 * pred["band"])
        ax.fill_between(pred["x"], pred["lower"], pred["upper"], alpha=0.25, label=f"{band}% band")
    own_stop = any(
        d.action == "stop" and short_callback(d.callback) == "LearningCurveStopping"
        for d in art.decisions
    )
    if own_stop and obs["x"]:
        ax.axvline(obs["x"][-1], color="red", linestyle="--", linewidth=1, label="stop")
    ax.set_xlabel(record.get("x_axis", "x"))
    ax.set_ylabel(tex_safe(record.get("monitor", "metric")))
    ax.legend(fontsize=7)
    return save_figure(
        fig,
        out / "learning_curve.png",
        "Learning curve",
        "LearningCurveStopping: observations, the extrapolated curve and its band.",
    )


def _common_prefix(names: list[str]) -> str:
    """The dotted prefix all names share (``model.encoder.``), never a whole name."""
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for segment in zip(*parts):
        if len(set(segment)) != 1:
            break
        common.append(segment[0])
    if common and any(len(p) == len(common) for p in parts):
        common = common[:-1]
    return ".".join(common) + "." if common else ""


def plot_grades(art: RunArtifacts, out: Path) -> Plot | None:
    """GradES: one bar per matrix from the start to its freeze step; the grace period shaded."""
    record = art.extra_json.get("grades_timeline.json")
    if not record or not record.get("components"):
        return None
    comps = record["components"]
    end = record.get("stopped_step") or record.get("total_steps") or 1
    names = [str(c["name"]) for c in comps]
    prefix = _common_prefix(names)
    shown = [tex_safe(n[len(prefix) :]) for n in names]
    longest = max(len(n) for n in shown)
    # the figure grows with the longest name, so that no name is cut
    fig, ax = plt.subplots(figsize=(6 + 0.065 * longest, 1.2 + 0.22 * len(comps)))
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
    ax.set_yticks(range(len(comps)), shown, fontsize=6)
    ax.set_xlabel("optimizer step (green: trained until frozen; blue: never frozen)")
    title = f"frozen fraction {record.get('frozen_fraction', 0):.2f}"
    ax.set_title(title + (f"; names after '{tex_safe(prefix)}'" if prefix else ""), fontsize=9)
    return save_figure(
        fig,
        out / "grades_timeline.png",
        "GradES freeze timeline",
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
    return save_figure(
        fig,
        out / "darts_plus.png",
        "DARTS+",
        "Skip-connects in the derived cells and the ranking-stability counter per epoch; "
        "right: the normal cell's softmax(alpha) at the last epoch.",
    )


def plot_gradient_diagnostics(art: RunArtifacts, out: Path) -> Plot | None:
    """GradientDiagnostics: mini-batch direction variance and error by optimizer step."""
    keys = [k for k in art.metrics if k.startswith("grad_diag/") and metric_series(art, k)[0]]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        label = tex_safe(key.split("/", 1)[1].replace("_", " "))
        series_panel(ax, art, [key], label, markers_below=math.inf)
    return save_figure(
        fig,
        out / "gradient_diagnostics.png",
        "Gradient diagnostics",
        "GradientDiagnostics: how much mini-batch gradient directions vary (variance) and how "
        "far they are from the whole-data gradient (error), at each measurement.",
    )


PLOTTERS: list[Callable[[RunArtifacts, Path], Plot | None]] = [
    plot_metrics,
    plot_decisions,
    plot_rates,
    plot_ces,
    plot_curve_prediction,
    plot_grades,
    plot_darts,
    plot_gradient_diagnostics,
]


def make_plots(art: RunArtifacts, out: Path) -> list[Plot]:
    """Writes every plot that applies to this run into ``out``."""
    safe_dir(out)  # symlinks in report/ are removed, never written through
    plots = []
    for plotter in PLOTTERS:
        try:
            plot = plotter(art, out)
        except Exception as err:  # a plot never fails a run: its results are already on disk
            plt.close("all")
            warnings.warn(
                f"eecontrol report: {plotter.__name__} failed for {art.path}: "
                f"{type(err).__name__}: {err}; the other plots and the page are still written.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if plot is not None:
            plots.append(plot)
    return plots


def sweep_figure(runs: list[RunArtifacts], metric: str) -> tuple[plt.Figure, int]:
    """The sweep plot's figure: every run's ``metric`` by optimizer step, stops crossed.

    Each run is named in the legend by its parameter values that differ between the runs
    (:attr:`~eecontrol.report.artifacts.RunArtifacts.legend_name`).

    Returns:
        The figure (the caller closes it) and how many runs it draws.
    """
    fig, ax = plt.subplots(figsize=(11, 4.4))
    drawn = 0
    for art in runs:
        x, y = metric_series(art, metric)
        if not x:
            continue
        (line,) = ax.plot(
            x,
            y,
            label=tex_safe(art.legend_name),
            linewidth=1.2,
            marker="o" if len(x) < 30 else None,
            markersize=4,
        )
        drawn += 1
        if any(d.action == "stop" for d in art.decisions):
            ax.scatter([x[-1]], [y[-1]], marker="x", s=70, color=line.get_color(), zorder=3)
    if not drawn:
        return fig, drawn
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(tex_safe(metric))
    ax.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="run (best first)",
        title_fontsize=7,
    )
    ax.set_title(f"{drawn} of {len(runs)} runs; x = stopped by a callback", fontsize=9)
    fig.tight_layout()
    return fig, drawn


def plot_sweep(runs: list[RunArtifacts], out: Path, metric: str) -> Plot | None:
    """Every run's ``metric`` by optimizer step, labelled by its parameters, stops crossed.

    Runs are drawn in the order given (``report_sweep`` sorts them by objective); a run with
    one or few points gets markers, so a 1-epoch run is visible too.
    """
    safe_dir(out)
    fig, drawn = sweep_figure(runs, metric)
    if not drawn:
        plt.close(fig)
        return None
    return save_figure(
        fig,
        out / "sweep.png",
        "Sweep",
        f"{metric} of every run by optimizer step, runs named by their overrides (best first); "
        "crosses mark runs a callback stopped.",
    )
