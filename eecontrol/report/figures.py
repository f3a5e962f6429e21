"""The building blocks of the report's figures: the :class:`Plot` record, writing a figure,
metric series and the decisions drawn on a step axis (matplotlib, no display)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from eecontrol.report.artifacts import RunArtifacts


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


def save_figure(fig: plt.Figure, path: Path, title: str, caption: str) -> Plot:
    """Lays out, writes and closes a figure; the :class:`Plot` that names it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Plot(title, path, caption)


def short_callback(callback: str) -> str:
    return callback.split("{")[0]


def tex_safe(text: str) -> str:
    """Escapes ``$`` so that matplotlib never reads a metric name as mathtext."""
    return str(text).replace("$", r"\$")


_SPLITS = ("train", "val", "valid", "validation", "test")


def is_split_metric(key: str) -> bool:
    """Whether a CSV column is a train/val/test metric (``val/loss``, ``val_loss``, ``test/acc``)."""
    head = key.replace("/", "_").split("_", 1)
    return len(head) == 2 and head[0] in _SPLITS and bool(head[1]) and not key.endswith("_step")


def is_loss(key: str) -> bool:
    """Whether a metric's name says lower is better (loss, error, mse, ...)."""
    from eecontrol.callbacks._control import lower_is_better

    return lower_is_better(key) is True


def metric_series(art: RunArtifacts, key: str) -> tuple[list[float], list[float]]:
    """Non-NaN (step, value) pairs of a metrics column."""
    steps, values = art.metrics.get("step", []), art.metrics.get(key, [])
    pairs = [(s, v) for s, v in zip(steps, values) if not (math.isnan(s) or math.isnan(v))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def decision_lines(ax: plt.Axes, art: RunArtifacts, max_lines: int = 3) -> None:
    """Marks decisions on a step axis, labelled in the legend (never as overlapping text).

    Stops are solid lines; an action taken at most ``max_lines`` times is a dashed line;
    a frequent one (GradES freezing 40 matrices) is a row of ticks at the bottom.
    """
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[tuple[str, str], list[int]] = {}
    for d in art.decisions:
        if d.action in ("plan", "schedule"):
            continue
        groups.setdefault((short_callback(d.callback), d.action), []).append(d.step)
    for i, ((name, action), steps) in enumerate(groups.items()):
        colour = "red" if action == "stop" else palette[(i + 3) % len(palette)]
        label = tex_safe(f"{name}: {action}" + (f" x{len(steps)}" if len(steps) > 1 else ""))
        if action == "stop" or len(steps) <= max_lines:
            for j, step in enumerate(steps):
                ax.axvline(
                    step,
                    color=colour,
                    linestyle="-" if action == "stop" else "--",
                    linewidth=1.2 if action == "stop" else 0.9,
                    alpha=0.8,
                    label=label if j == 0 else None,
                )
        else:
            ax.plot(
                steps,
                [0.02] * len(steps),
                "|",
                color=colour,
                markersize=10,
                transform=ax.get_xaxis_transform(),
                label=label,
            )


def series_panel(
    ax: plt.Axes, art: RunArtifacts, keys: list[str], ylabel: str, markers_below: float = 30
) -> None:
    """Metric columns by optimizer step on one axis, the decisions marked, a legend.

    A series with fewer than ``markers_below`` points gets a marker at each point.
    """
    for key in keys:
        x, y = metric_series(art, key)
        marker = "o" if len(x) < markers_below else None
        ax.plot(x, y, marker=marker, markersize=3, label=tex_safe(key))
    decision_lines(ax, art)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
