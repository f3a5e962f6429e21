"""The one-table summary printed at the end of every Hydra ``-m`` run (and by ``eecontrol report``).

:class:`SweepSummary` is a Hydra callback (registered in ``conf/hydra/default.yaml``): after
the last job of a multirun it reads every job's ``summary.json`` and ``.hydra/overrides.yaml``
and prints one table, best run first, each run named by the overrides that tell it apart.
Jobs running in parallel (joblib) print their own tables interleaved; this one comes last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from rich.console import Console
from rich.table import Table

from eecontrol.report.artifacts import (
    RunArtifacts,
    find_runs,
    label_runs,
    load_run,
    sort_by_objective,
)
from eecontrol.report.console import make_console
from eecontrol.report.html import fmt_value


def load_sweep(sweep: str | Path) -> list[RunArtifacts]:
    """Every run under a sweep directory, named by its overrides, best first."""
    runs = [load_run(p) for p in find_runs(Path(sweep))]
    label_runs(runs)
    return sort_by_objective(runs)


def sweep_table(runs: Sequence[RunArtifacts], title: str = "eecontrol sweep") -> Table:
    """A rich table: one row per run (best first) with its overrides, objective and stop."""
    metric = next(
        (a.summary["optimized_metric"] for a in runs if a.summary.get("optimized_metric")), None
    )
    table = Table(title=f"{title}: {len(runs)} runs, best first")
    table.add_column("#", justify="right")
    table.add_column("run (overrides)", overflow="fold")
    table.add_column(f"objective ({metric})" if metric else "objective", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("stop", overflow="fold")
    table.add_column("dir")
    for i, art in enumerate(runs, start=1):
        s = art.summary
        epochs = s.get("epochs_used")
        table.add_row(
            str(i),
            art.display_name,
            fmt_value(s.get("objective")) if s else "(no summary.json: failed or running)",
            fmt_value(epochs),
            str(s.get("stop_reason", "")),
            art.name,
        )
    return table


def print_sweep_summary(sweep: str | Path, console: Console | None = None) -> list[RunArtifacts]:
    """Prints the sweep table for a sweep directory; returns its runs (best first)."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        return []
    runs = load_sweep(sweep)
    console = console or make_console()
    if runs:
        console.print(sweep_table(runs))
        console.print(f"sweep directory: {sweep}\nits report: eecontrol report {sweep}")
    return runs


class SweepSummary(HydraCallback):
    """Hydra callback: prints the sweep table after the last job of a ``-m`` run."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Called once by Hydra when every job of the multirun has returned."""
        try:
            print_sweep_summary(config.hydra.sweep.dir)
        except Exception as err:  # a summary never fails a finished sweep
            print(f"eecontrol: no sweep summary ({type(err).__name__}: {err})")
