"""Build a run's or a sweep's report: summary.json, PNG plots, report.html."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from eecontrol.callbacks._control import control_callbacks
from eecontrol.report.artifacts import (
    SUMMARY_FILE,
    RunArtifacts,
    find_runs,
    label_runs,
    load_run,
    read_metrics,
    sort_by_objective,
)
from eecontrol.report.html import write_run_page, write_sweep_page
from eecontrol.report.plots import Plot, make_plots, plot_sweep
from eecontrol.util.files import safe_file


def _best(values: list[float], maximise: bool) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return max(finite) if maximise else min(finite)


def run_summary(
    trainer: pl.Trainer,
    metrics: dict[str, float],
    optimized_metric: str | None,
    optimized_mode: str | None = None,
) -> dict[str, Any]:
    """The numbers a sweep table needs, plus every eecontrol callback's own summary.

    Args:
        trainer: the trainer after fit (and test).
        metrics: final callback metrics.
        optimized_metric: the sweep objective's metric name, if any.
        optimized_mode: ``max`` or ``min``, the objective's direction; None: the mode of a
            callback monitoring that metric, else no ``best_so_far`` (a name says nothing).

    Returns:
        ``objective``, ``best_so_far`` (best value of the objective's metric over all
        validations, from the CSV, in ``optimized_mode``'s direction), ``epochs_used``, ``global_step``, ``stop_reason`` and
        the callbacks' summaries.
    """
    summary: dict[str, Any] = {
        "epochs_used": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "stop_reason": "training ran to its configured length",
    }
    for cb in control_callbacks(trainer):
        summary.update(cb.summary())
    stopper = next((cb for cb in control_callbacks(trainer) if cb.stop_reason is not None), None)
    if stopper is not None:
        summary["stop_reason"] = f"{type(stopper).__name__}: {stopper.stop_reason}"
    if optimized_metric:
        summary["optimized_metric"] = optimized_metric
        summary["objective"] = metrics.get(optimized_metric)
        history = read_metrics(Path(trainer.default_root_dir)).get(optimized_metric, [])
        mode = optimized_mode or next(
            (
                getattr(cb, "mode", None)
                for cb in control_callbacks(trainer)
                if getattr(cb, "monitor", None) == optimized_metric
            ),
            None,
        )
        if mode in ("max", "min"):  # the direction comes from a mode, never from the name
            summary["optimized_mode"] = mode
            summary["best_so_far"] = _best(history, maximise=mode == "max")
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Writes ``summary.json`` into the run directory."""
    path = safe_file(run_dir / SUMMARY_FILE)
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path


def report_run(
    run: str | Path, out: str | Path | None = None
) -> tuple[RunArtifacts, list[Plot], Path]:
    """Writes the PNG plots and ``report.html`` of one run (default ``<run>/report``)."""
    art = load_run(run)
    out_dir = Path(out) if out else art.path / "report"
    plots = make_plots(art, out_dir)
    page = write_run_page(art, plots, out_dir)
    return art, plots, page


def report_sweep(
    sweep: str | Path, out: str | Path | None = None, metric: str | None = None
) -> tuple[list[RunArtifacts], list[Plot], Path]:
    """Writes every run's report, the curves of all runs with their stop points, and the page."""
    sweep = Path(sweep)
    runs = []
    for path in find_runs(sweep):
        try:
            runs.append(load_run(path))
        except (ValueError, OSError) as err:  # one damaged run never hides the others
            warnings.warn(f"eecontrol report: left out {path}: {err}", stacklevel=2)
    if not runs:
        raise FileNotFoundError(
            f"no run directories under {sweep} (looked for decisions.jsonl, summary.json, csv/)."
        )
    label_runs(runs)  # named by the overrides that tell them apart
    runs = sort_by_objective(runs)  # best first
    out_dir = Path(out) if out else sweep / "report"
    for art in runs:
        make_plots(art, art.path / "report")
    metric = metric or next(
        (a.summary.get("optimized_metric") for a in runs if a.summary.get("optimized_metric")), None
    )
    metric = metric or "val/loss"
    plots = [p for p in [plot_sweep(runs, out_dir, metric)] if p is not None]
    page = write_sweep_page(sweep, runs, plots, out_dir)
    return runs, plots, page
