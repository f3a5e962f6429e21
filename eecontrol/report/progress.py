"""Progress bars that show each eecontrol callback's short live fields."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from typing_extensions import override

from eecontrol.callbacks._control import control_callbacks


def control_fields(trainer: pl.Trainer) -> dict[str, str]:
    """Merges ``progress_fields()`` of every eecontrol callback (e.g. ``frozen: 12/42``)."""
    fields: dict[str, str] = {}
    for cb in control_callbacks(trainer):
        fields.update(cb.progress_fields())
    return fields


class ControlRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar plus the eecontrol callbacks' live fields."""

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **control_fields(trainer)}


class ControlTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar plus the eecontrol callbacks' live fields."""

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **control_fields(trainer)}
