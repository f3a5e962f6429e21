"""Shared fixtures: real digits data and small real models, quiet trainers."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN, DigitsDataModule, DigitsMLP
from lightning.pytorch.callbacks import Callback

from eecontrol.testing import quiet_trainer_kwargs

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def make_trainer(root: Path, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer writing into ``root``."""
    defaults: dict[str, Any] = {**quiet_trainer_kwargs(root), "max_epochs": 2}
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def csv_trainer(root: Path, **kwargs: Any) -> pl.Trainer:
    """``make_trainer`` with a CSVLogger writing ``root/csv/version_0/metrics.csv``."""
    from lightning.pytorch.loggers import CSVLogger

    return make_trainer(root, logger=CSVLogger(root, name="csv"), **kwargs)


def csv_lines(root: Path) -> list[str]:
    """The lines of the metrics file a :func:`csv_trainer` wrote (the header first)."""
    return (root / "csv" / "version_0" / "metrics.csv").read_text().splitlines()


def fit_on_two_processes(
    root: Path, callbacks: list[Callback], model: pl.LightningModule | None = None, **kwargs: Any
) -> pl.Trainer:
    """Fits ``model`` (default: the digits CNN) on digits with ``ddp_spawn``, 2 CPU processes."""
    trainer = make_trainer(root, strategy="ddp_spawn", devices=2, callbacks=callbacks, **kwargs)
    trainer.fit(model if model is not None else digits_model(), datamodule=digits_data())
    return trainer


def count_log_calls(module: pl.LightningModule) -> list[str]:
    """Wraps ``module.log`` to record each call's metric name; returns the growing list."""
    calls: list[str] = []
    original = module.log

    def counting_log(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(name, *args, **kwargs)

    module.log = counting_log  # type: ignore[method-assign]
    return calls


class Stream(torch.utils.data.IterableDataset):
    """A map-style dataset as an endless stream in a fixed order (no length)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        while True:
            for i in range(len(self.dataset)):
                yield self.dataset[i]


# A tiny grouped-query attention stack (Hugging Face config names): 2 layers of width 32,
# 4 query heads sharing 2 key/value heads.
TINY_GQA = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def digits_data(**kwargs: Any) -> DigitsDataModule:
    kwargs.setdefault("batch_size", 128)
    return DigitsDataModule(**kwargs)


def digits_model(kind: str = "cnn", dropout: float = 0.1, **kwargs: Any) -> DigitsClassifier:
    net = (
        DigitsCNN(dropout=dropout, **kwargs)
        if kind == "cnn"
        else DigitsMLP(dropout=dropout, **kwargs)
    )
    return DigitsClassifier(net=net)


@pytest.fixture
def trainer_factory(tmp_path: Path):
    def factory(**kwargs: Any) -> pl.Trainer:
        return make_trainer(tmp_path, **kwargs)

    return factory


class CrashAtEpoch(Callback):
    """Raises at the start of ``epoch``: a crash after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")
