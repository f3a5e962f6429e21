"""The callbacks the reliability suite runs: add every new callback here.

Each spec builds a model and its callbacks the same way in every process, with a short
training configuration on real digits. The suite kills, resumes and distributes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from eecontrol.recipes.darts import DartsSearchDataModule
from lightning.pytorch.callbacks import Callback


@dataclass(frozen=True)
class Spec:
    """How to build one callback's reliability run.

    Args:
        model: builds the LightningModule.
        callbacks: builds the callbacks under test.
        trainer: extra Trainer arguments (a short run).
        stops: whether the spec is expected to stop training early.
    """

    model: Callable[[], pl.LightningModule]
    callbacks: Callable[[], list[Callback]]
    trainer: dict[str, Any] = field(default_factory=dict)
    stops: bool = False
    ddp_suffix: str = ""  # e.g. "_find_unused_parameters_true" for callbacks that freeze weights
    data: Callable[[], pl.LightningDataModule] | None = None  # default: DigitsDataModule
    history: bool = False  # a callback that measures but never decides: compare its history


def _cnn() -> pl.LightningModule:
    from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN

    return DigitsClassifier(net=DigitsCNN(dropout=0.1))


def _dropout() -> list[Callback]:
    from eecontrol import DropoutSchedule

    return [DropoutSchedule(p=0.2, mode="early", schedule="linear", cutoff=0.5)]


def _gradient_diagnostics() -> list[Callback]:
    from eecontrol import GradientDiagnostics

    return [GradientDiagnostics(every_n_steps=2, num_batches=2, max_full_batches=4)]


def _ces() -> list[Callback]:
    from eecontrol import ConformalEarlyStopping

    return [ConformalEarlyStopping(task="classification", storage_period=1)]


class _FcNet(pl.LightningModule.__mro__[1]):  # torch.nn.Module
    """A digits MLP whose layers carry transformer MLP names (fc1, fc2), for GradES."""

    def __init__(self) -> None:
        super().__init__()
        import torch

        self.flatten = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(64, 64)
        self.fc2 = torch.nn.Linear(64, 64)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        import torch

        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(self.flatten(x))))))


def _fc() -> pl.LightningModule:
    from eecontrol.recipes.digits import DigitsClassifier

    return DigitsClassifier(net=_FcNet())


def _grades() -> list[Callback]:
    from eecontrol import GradES

    # a threshold every matrix passes: both freeze right after the grace period, then stop
    return [GradES(tau=1e9, grace=0.5, patterns=["fc1", "fc2"])]


def _curves() -> list[Callback]:
    from eecontrol import LearningCurveStopping

    # demanding a 5-point gain makes the in-run rule stop the run after a few validations
    return [
        LearningCurveStopping(
            monitor="val/acc",
            mode="max",
            min_points=3,
            min_delta=0.05,
            threshold=0.5,
            n_bootstrap=30,
        )
    ]


def _darts_search() -> pl.LightningModule:
    from eecontrol.recipes.darts import DartsSearchModule

    # a real first-order DARTS search (3 cells, 8 candidate ops), small enough for CI
    return DartsSearchModule(c=4, layers=3, arch_lr=3e-2)


def _darts_data() -> pl.LightningDataModule:
    # the shipped module: both training halves shuffled by seed + epoch
    return DartsSearchDataModule(batch_size=32, seed=0)


def _darts_plus() -> list[Callback]:
    from eecontrol import DARTSPlusStopping

    # a tiny search's ranking keeps changing, so criterion 1 is made strict (one skip in the
    # normal cell): every process stops after its 2-epoch warm-up, before the budget
    return [DARTSPlusStopping(criterion="either", max_skip=1, patience=2, min_epochs=2)]


SPECS: dict[str, Spec] = {
    "grades": Spec(
        _fc,
        _grades,
        {"max_epochs": 4, "limit_train_batches": 5},
        stops=True,
        ddp_suffix="_find_unused_parameters_true",
    ),
    "learning_curve_stopping": Spec(
        _cnn, _curves, {"max_epochs": 8, "limit_train_batches": 3}, stops=True
    ),
    "dropout_schedule": Spec(_cnn, _dropout, {"max_epochs": 4, "limit_train_batches": 5}),
    "conformal_early_stopping": Spec(_cnn, _ces, {"max_epochs": 4, "limit_train_batches": 5}),
    "gradient_diagnostics": Spec(
        _cnn, _gradient_diagnostics, {"max_epochs": 3, "limit_train_batches": 5}, history=True
    ),
    "darts_plus": Spec(
        _darts_search,
        _darts_plus,
        {"max_epochs": 8, "limit_train_batches": 4, "limit_val_batches": 2},
        stops=True,
        data=_darts_data,
    ),
}
