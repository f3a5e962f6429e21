"""The ``eecontrol`` command: ``eecontrol report RUN_DIR|SWEEP_DIR``, ``eecontrol replay SWEEP``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eecontrol.sweep.replay import add_arguments as replay_add_arguments
from eecontrol.sweep.replay import command as replay_command
from eecontrol.versions import version_text


class _VersionAction(argparse.Action):
    """Prints :func:`version_text` line by line (argparse's own action rewraps it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eecontrol`` console script."""
    parser = argparse.ArgumentParser(
        prog="eecontrol",
        description="eecontrol tools: `eecontrol report` turns a run or sweep directory written "
        "by eecontrol-train (or your own Trainer) into plots and one HTML page; "
        "`eecontrol replay` replays a finished sweep under each stopping policy. "
        "Training itself: eecontrol-train --help.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        nargs=0,
        help="eecontrol's version, its installed extras and the main packages' versions",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "report", help="plots + a self-contained HTML page for a run or a sweep directory"
    )
    rep.add_argument(
        "path", type=Path, help="a run directory (decisions.jsonl) or a multirun sweep directory"
    )
    rep.add_argument("--out", type=Path, default=None, help="where to write (default PATH/report)")
    rep.add_argument(
        "--metric", default=None, help="sweep: the metric to draw (default: the objective)"
    )
    replay = sub.add_parser(
        "replay",
        help="replay a finished sweep under every stopping policy: epochs used and regret",
    )
    replay_add_arguments(replay)
    args = parser.parse_args(argv)
    if args.command == "replay":
        return replay_command(args)
    # imported here: `eecontrol --help` and `--version` stay fast (no torch import)
    from eecontrol.report.artifacts import is_run_dir
    from eecontrol.report.console import make_console, print_decisions
    from eecontrol.report.runreport import report_run, report_sweep
    from eecontrol.report.sweep_summary import sweep_table
    from eecontrol.sweep.results import print_study

    console = make_console()
    path: Path = args.path
    if not path.is_dir():
        console.print(f"[red]eecontrol report: {path} is not a directory[/red]")
        return 2
    if is_run_dir(path):
        art, plots, page = report_run(path, args.out)
        print_decisions(art.decisions, console)
        console.print(f"{len(plots)} plots and the page: {page}")
        return 0
    try:
        runs, plots, page = report_sweep(path, args.out, args.metric)
    except FileNotFoundError as err:
        console.print(f"[red]eecontrol report: {err}[/red]")
        return 2
    for art in runs:
        console.print(f"[bold]{art.display_name}[/bold] ({art.name})")
        print_decisions(art.decisions, console)
    console.print(sweep_table(runs))
    console.print(f"{len(runs)} runs; the page: {page}")
    print_study(path, console)  # an eecontrol_optuna sweep: complete vs pruned vs failed trials
    return 0


if __name__ == "__main__":
    sys.exit(main())
