"""Reporting: console tables, plots, a self-contained HTML page and W&B publishing.

The end of a run in your own script (what ``eecontrol-train`` does)::

    from eecontrol.report import all_decisions, print_decisions, publish_to_wandb, report_run

    trainer.fit(model, datamodule=dm)
    print_decisions(all_decisions(trainer))            # the decisions table
    art, plots, page = report_run(trainer.default_root_dir)   # PNGs + report.html
    publish_to_wandb(trainer, all_decisions(trainer), {}, plots)  # if a WandbLogger is used
"""

from eecontrol.callbacks._control import all_decisions
from eecontrol.report.artifacts import RunArtifacts, load_run
from eecontrol.report.console import make_console, print_decisions, print_run_paths
from eecontrol.report.runreport import report_run, report_sweep, run_summary, write_summary
from eecontrol.report.sweep_summary import print_sweep_summary
from eecontrol.report.wandb import publish_to_wandb

__all__ = [
    "RunArtifacts",
    "all_decisions",
    "load_run",
    "make_console",
    "print_decisions",
    "print_run_paths",
    "print_sweep_summary",
    "publish_to_wandb",
    "report_run",
    "report_sweep",
    "run_summary",
    "write_summary",
]
