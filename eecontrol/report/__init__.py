"""Reporting: console tables, plots, a self-contained HTML page and W&B publishing."""

from eecontrol.report.artifacts import RunArtifacts, load_run
from eecontrol.report.runreport import report_run, report_sweep, run_summary

__all__ = ["RunArtifacts", "load_run", "report_run", "report_sweep", "run_summary"]
