"""The default recipe: a small CNN on scikit-learn's bundled handwritten digits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.base import (
    TensorSplitsDataModule,
    check_split_args,
    index_splits,
    stratified_split,
    stratified_subset,
)
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy


class DigitsDataModule(TensorSplitsDataModule):
    """scikit-learn's 1,797 real 8x8 handwritten digits, split train/val/test by seed.

    Pixels are scaled to [0, 1]; splits are stratified by class and depend only on
    ``seed``, so every run and every DDP rank sees the same split.

    Args:
        batch_size: training and evaluation batch size.
        val_fraction: fraction of all images held out for validation.
        test_fraction: fraction of all images held out for testing.
        train_subset: if set, keep only this many training images (stratified), to make
            an overfitting setting with little data.
        seed: the split seed.
        num_workers: DataLoader workers.
    """

    num_classes = 10
    image_size = 8
    fixed_eval_batch_size = None  # evaluate at the training batch size

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        train_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_split_args(batch_size, val_fraction, test_fraction)
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.train_subset = train_subset

    def build_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        y = y.astype(np.int64)
        train_idx, val_idx, test_idx = stratified_split(
            y, self.val_fraction, self.test_fraction, self.seed
        )
        if self.train_subset is not None:
            if not 10 <= self.train_subset <= len(train_idx):
                raise ValueError(
                    f"`train_subset` must be in [10, {len(train_idx)}], got {self.train_subset!r}."
                )
            if self.train_subset < len(train_idx):
                train_idx = stratified_subset(train_idx, y, self.train_subset, self.seed)
        return index_splits(
            (torch.from_numpy(x), torch.from_numpy(y)), train_idx, val_idx, test_idx
        )


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 images: two conv blocks and a two-layer head with dropout.

    Args:
        channels: channels of the two conv layers.
        hidden: width of the hidden dense layer.
        dropout: dropout rate of the ``nn.Dropout`` layers (a schedule may change it).
        num_classes: output classes.
    """

    def __init__(
        self,
        channels: tuple[int, int] | list[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(dropout),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """A multi-layer perceptron on flattened 8x8 digits, with dropout after each layer.

    Args:
        hidden: widths of the hidden layers (few and narrow underfits, many and wide
            overfits a small training set).
        dropout: dropout rate after each hidden layer.
        num_classes: output classes.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (256, 256),
        dropout: float = 0.1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 64
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsClassifier(pl.LightningModule):
    """Cross-entropy classification of digits with any backbone and a partial optimizer.

    Logs ``train/loss``, ``train/acc`` (per step and epoch), ``val/loss``, ``val/acc`` and
    ``test/loss``, ``test/acc``.

    Args:
        net: the network (e.g. :class:`DigitsCNN`).
        optimizer: a partial optimizer constructor taking the parameters.
        scheduler: an optional partial LR scheduler constructor taking the optimizer.
        num_classes: number of classes.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        # partial optimizers would make checkpoints unloadable with weights_only=True
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        loss, preds, y = self._shared_step(batch)
        self.train_acc(preds, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.val_acc(preds, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.test_acc(preds, y)
        self.log("test/loss", loss, on_epoch=True)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
