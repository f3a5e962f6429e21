"""The Hydra entry point ``eecontrol-eval``: test a trained checkpoint on its recipe's test split.

Examples:
    eecontrol-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    eecontrol-eval ckpt_path=logs/train/runs/<run> experiment=early_dropout
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from eecontrol._quiet import silence_third_party_noise
from eecontrol.app.job import _instantiate_group, finish_wandb
from eecontrol.util.files import CHECKPOINT_DIR, LAST

EVAL_FILE = "eval_metrics.json"


def resolve_checkpoint(value: object) -> Path:
    """``ckpt_path`` as a checkpoint file: a file, or a run directory's ``checkpoints/last.ckpt``.

    Raises:
        ValueError: for a missing value or a URL (evaluate a local file).
        FileNotFoundError: naming ``ckpt_path`` when nothing is there.
    """
    if value is None or str(value) in ("", "???"):
        raise ValueError("`ckpt_path` is required: a checkpoint file or a run directory.")
    text = str(value)
    if "://" in text:
        raise ValueError(f"`ckpt_path` must be a local file or run directory, got the URL {text}.")
    path = Path(text)
    if path.is_dir():
        last = path / CHECKPOINT_DIR / LAST
        if not last.is_file():
            raise FileNotFoundError(
                f"`ckpt_path={text}` is a directory without {CHECKPOINT_DIR}/{LAST}."
            )
        return last
    if not path.is_file():
        raise FileNotFoundError(f"`ckpt_path={text}`: no such checkpoint file or run directory.")
    return path


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], pl.Trainer]:
    """Tests ``cfg.ckpt_path`` with the recipe's model and data; writes ``eval_metrics.json``.

    Args:
        cfg: the composed ``eval.yaml`` config.

    Returns:
        The test metrics (floats) and the trainer.
    """
    ckpt = resolve_checkpoint(cfg.get("ckpt_path"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    loggers: list[Logger] = _instantiate_group(cfg.get("logger"), "logger", Logger)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False)
    try:
        # weights_only=True: a checkpoint can never run code when loaded
        trainer.test(model=model, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {"ckpt_path": str(ckpt.resolve()), "metrics": metrics}
            (out / EVAL_FILE).write_text(json.dumps(record, indent=2) + "\n")
            for lg in trainer.loggers:
                lg.save()
    finally:
        finish_wandb()
    return metrics, trainer


@hydra.main(version_base="1.3", config_path="pkg://eecontrol.conf", config_name="eval.yaml")
def hydra_main(cfg: DictConfig) -> None:
    """Runs :func:`evaluate` for one Hydra job and prints where the metrics went."""
    silence_third_party_noise()
    metrics, trainer = evaluate(cfg)
    print(f"checkpoint: {resolve_checkpoint(cfg.ckpt_path)}")
    print(f"metrics ({Path(trainer.default_root_dir) / EVAL_FILE}):")
    for key, value in sorted(metrics.items()):
        print(f"  {key}: {value:.5g}")


def main() -> None:
    """The ``eecontrol-eval`` console script."""
    hydra_main()


if __name__ == "__main__":
    main()
