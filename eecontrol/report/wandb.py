"""Publish a run's decisions, summary and plots to its W&B run (offline or online)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from eecontrol.callbacks._control import Decision
from eecontrol.report.figures import Plot

DECISION_COLUMNS = ["step", "epoch", "callback", "action", "reason", "evidence"]


def wandb_runs(trainer: pl.Trainer) -> list[Any]:
    """The W&B runs of the trainer's WandbLoggers (empty without one)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _logged_values(trainer: pl.Trainer) -> dict[str, float]:
    """The last value of every series the trainer logged (W&B keeps them as the summary)."""
    out: dict[str, float] = {}
    for key, value in dict(trainer.logged_metrics).items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _already_logged(key: str, value: Any, logged: dict[str, float]) -> bool:
    """Whether a summary number is a logged series' last value under another name.

    ``ConformalEarlyStopping/candidates`` (a callback summary) and ``ces/candidates`` (the
    live series) share the leaf ``candidates`` and the value: W&B shows the series only.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or key in logged:
        return False
    leaf = key.rsplit("/", 1)[-1]
    return any(k.rsplit("/", 1)[-1] == leaf and v == float(value) for k, v in logged.items())


def publish_to_wandb(
    trainer: pl.Trainer,
    decisions: Sequence[Decision],
    summary: dict[str, Any],
    plots: Sequence[Plot],
) -> int:
    """Logs a ``decisions`` table, the run summary and every plot to each W&B run.

    Call it before ``wandb.finish()`` (``eecontrol-train`` does); it never logs a secret:
    only decisions, numbers and images.

    Returns:
        The number of W&B runs written to.
    """
    runs = wandb_runs(trainer)
    if not runs or not trainer.is_global_zero:
        return 0
    import json

    import wandb

    for run in runs:
        table = wandb.Table(
            columns=DECISION_COLUMNS,
            data=[
                [
                    d.step,
                    d.epoch,
                    d.callback.split("{")[0],
                    d.action,
                    d.reason,
                    json.dumps(d.evidence),
                ]
                for d in decisions
            ],
        )
        payload: dict[str, Any] = {"eecontrol/decisions": table}
        for plot in plots:
            payload[f"eecontrol/plots/{plot.path.stem}"] = wandb.Image(
                str(plot.path), caption=plot.caption
            )
        run.log(payload)
        logged = _logged_values(trainer)
        for key, value in summary.items():
            if value is None or isinstance(value, bool | int | float | str):
                if _already_logged(key, value, logged):
                    continue  # one name per value: the series' last value is its summary
                run.summary[key] = value
    return len(runs)
