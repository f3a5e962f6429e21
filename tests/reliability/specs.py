"""The callbacks the reliability suite runs: add every new callback here.

Each spec builds a model and its callbacks the same way in every process, with a short
training configuration on real digits. The suite kills, resumes and distributes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
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


def _cnn() -> pl.LightningModule:
    from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN

    return DigitsClassifier(net=DigitsCNN(dropout=0.1))


def _dropout() -> list[Callback]:
    from eecontrol import DropoutSchedule

    return [DropoutSchedule(p=0.2, mode="early", schedule="linear", cutoff=0.5)]


def _ces() -> list[Callback]:
    from eecontrol import ConformalEarlyStopping

    return [ConformalEarlyStopping(task="classification", storage_period=1)]


SPECS: dict[str, Spec] = {
    "dropout_schedule": Spec(_cnn, _dropout, {"max_epochs": 4, "limit_train_batches": 5}),
    "conformal_early_stopping": Spec(_cnn, _ces, {"max_epochs": 4, "limit_train_batches": 5}),
}
