"""Console output of a run: the decisions table and where the run's files are."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eecontrol.callbacks._control import Decision


def make_console() -> Console:
    """A console that does not wrap tables at 80 columns when the output is not a terminal.

    Piped or logged output (CI, ``| tee``, Hydra jobs under joblib) gets 200 columns unless
    ``COLUMNS`` says otherwise; a terminal keeps its own width.
    """
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)
    return console


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def decisions_table(decisions: Iterable[Decision]) -> Table:
    """Returns a rich table with one row per decision (step, epoch, callback, action, ...)."""
    table = Table(title="eecontrol decisions", show_lines=False)
    for col in ("step", "epoch", "callback", "action", "reason", "evidence"):
        table.add_column(col, overflow="fold")
    n = 0
    for d in decisions:
        evidence = ", ".join(f"{k}={_fmt(v)}" for k, v in d.evidence.items())
        table.add_row(
            str(d.step), str(d.epoch), d.callback.split("{")[0], d.action, d.reason, evidence
        )
        n += 1
    if n == 0:
        table.caption = "no decisions: no eecontrol callback acted in this run"
    return table


def print_decisions(decisions: Iterable[Decision], console: Console | None = None) -> None:
    """Prints the decisions table."""
    (console or make_console()).print(decisions_table(decisions))


def print_run_paths(
    run_dir: Path,
    decisions: Path,
    report: Path | None,
    csv: Path | None,
    wandb_run: Path | None,
    metrics: Mapping[str, float] | None = None,
    console: Console | None = None,
) -> None:
    """Prints the run directory, the decisions file, the CSV metrics and the W&B run."""
    console = console or make_console()
    table = Table(title="run files", show_header=False)
    table.add_column("what")
    table.add_column("where", overflow="fold")
    table.add_row("run directory", str(run_dir))
    table.add_row(
        "decisions", str(decisions) if decisions.exists() else f"{decisions} (none written)"
    )
    if report is not None:
        table.add_row("report (HTML + PNG)", str(report) if report.exists() else "(not written)")
    table.add_row("CSV metrics", str(csv) if csv else "(CSV logger off)")
    table.add_row(
        "W&B offline run",
        f"{wandb_run}  (sync: wandb sync {wandb_run})" if wandb_run else "(W&B logger off)",
    )
    for key in sorted(metrics or {}):
        table.add_row(key, _fmt(float(metrics[key])))  # type: ignore[index]
    console.print(table)
