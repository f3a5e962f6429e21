"""The Hydra entry point ``eecontrol-train``: build, fit and test a recipe, report decisions.

Examples:
    eecontrol-train                                  # the default digits recipe
    eecontrol-train experiment=early_dropout trainer.max_epochs=20
    eecontrol-train -m trainer.max_epochs=1,2 hydra/launcher=joblib
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from eecontrol.callbacks._control import DECISIONS_FILE, all_decisions, control_callbacks
from eecontrol.report.console import print_decisions, print_run_paths
from eecontrol.report.runreport import report_run, run_summary, write_summary
from eecontrol.report.wandb import publish_to_wandb

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None, what: str, base: type) -> list[Any]:
    """Instantiates every entry with a ``_target_`` of a config group dict."""
    items: list[Any] = []
    if not cfg:
        return items
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"`{what}` config must be a mapping of name -> config, got {type(cfg)}.")
    for key, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            obj = hydra.utils.instantiate(conf)
            if not isinstance(obj, base):
                raise TypeError(
                    f"`{what}.{key}` instantiated {type(obj).__name__}, not a {base.__name__}."
                )
            items.append(obj)
    return items


def finish_wandb() -> None:
    """Ends the active W&B run, so that the jobs of a multirun never merge."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


def train(cfg: DictConfig) -> tuple[dict[str, float], pl.Trainer]:
    """Builds the data, model, callbacks, loggers and trainer from ``cfg``; fits and tests.

    Args:
        cfg: the composed ``train.yaml`` config.

    Returns:
        The trainer's callback metrics (floats) after fit and test, and the trainer.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_SILENT", "true")

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks: list[Callback] = _instantiate_group(cfg.get("callbacks"), "callbacks", Callback)
    loggers: list[Logger] = _instantiate_group(cfg.get("logger"), "logger", Logger)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

    try:
        if cfg.get("train", True):
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        train_metrics = dict(trainer.callback_metrics)
        if cfg.get("test", False):
            trainer.test(model=model, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in {**train_metrics, **trainer.callback_metrics}.items()}
        if trainer.is_global_zero:
            finalize_run(trainer, metrics, cfg.get("optimized_metric"))
    finally:
        finish_wandb()
    return metrics, trainer


def finalize_run(
    trainer: pl.Trainer, metrics: dict[str, float], optimized_metric: str | None
) -> None:
    """Writes summary.json and the report (plots + HTML), then publishes them to W&B."""
    out = Path(trainer.default_root_dir)
    summary = run_summary(trainer, metrics, optimized_metric)
    write_summary(out, summary)
    for lg in trainer.loggers:  # flush the CSV so the report sees every row
        lg.save()
    _, plots, _ = report_run(out)
    publish_to_wandb(trainer, all_decisions(trainer), summary, plots)


def _report(cfg: DictConfig, metrics: dict[str, float], trainer: pl.Trainer) -> None:
    """Prints the decisions table, key metrics and where the run's files are."""
    out = Path(trainer.default_root_dir)
    print_decisions(all_decisions(trainer))
    csv_files = sorted(out.glob("csv/version_*/metrics.csv"))
    wandb_runs = sorted(out.glob("wandb/offline-run-*")) + sorted(out.glob("wandb/run-*"))
    print_run_paths(
        run_dir=out,
        decisions=out / DECISIONS_FILE,
        report=out / "report" / "report.html",
        csv=csv_files[-1] if csv_files else None,
        wandb_run=wandb_runs[-1] if wandb_runs else None,
        metrics={k: v for k, v in metrics.items() if "/" in k and "eecontrol/" not in k},
    )


@hydra.main(version_base="1.3", config_path="pkg://eecontrol.conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    """Runs ``train`` for one Hydra job and returns the optimised metric to the sweeper."""
    metrics, trainer = train(cfg)
    if trainer.is_global_zero:
        _report(cfg, metrics, trainer)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"`optimized_metric={name}` was not logged; available metrics: {sorted(metrics)}."
        )
    for cb in control_callbacks(trainer):  # a run stopped early: its best value so far
        best = getattr(cb, "best_so_far", None)
        if cb.stop_reason is not None and getattr(cb, "monitor", None) == name and best is not None:
            return float(best)
    return metrics[name]


if __name__ == "__main__":
    main()
