"""Outlier detection on real digits: an autoencoder trained on one digit class (inliers)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.base import TensorSplitsDataModule, check_fraction
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


class DigitsOutlierDataModule(TensorSplitsDataModule):
    """Inliers are the digits of ``inlier_classes``; every other digit is an outlier.

    Train and hold-out ("es-cal") splits hold inliers only; the test split holds
    ``n_test_inliers`` unseen inliers and ``n_test_outliers`` outliers. Each batch is
    ``(x, is_outlier)``.

    Args:
        inlier_classes: the digit classes that count as inliers.
        holdout_fraction: share of the remaining inliers held out for calibration.
        n_test_inliers: inliers kept for the test split.
        n_test_outliers: outliers in the test split.
        batch_size: training batch size.
        seed: the split seed.
    """

    def __init__(
        self,
        inlier_classes: tuple[int, ...] | list[int] = (0, 1, 2, 3, 4),
        holdout_fraction: float = 0.3,
        n_test_inliers: int = 150,
        n_test_outliers: int = 150,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        classes = sorted(set(int(c) for c in inlier_classes))
        if not classes or any(not 0 <= c <= 9 for c in classes) or len(classes) == 10:
            raise ValueError(
                f"`inlier_classes` must be a non-empty proper subset of 0..9, got {inlier_classes!r}."
            )
        check_fraction("holdout_fraction", holdout_fraction)
        self.save_hyperparameters()
        self.inlier_classes = classes
        self.holdout_fraction, self.batch_size, self.seed = holdout_fraction, batch_size, seed
        self.n_test_inliers, self.n_test_outliers = n_test_inliers, n_test_outliers

    def build_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        inl = rng.permutation(np.flatnonzero(np.isin(y, self.inlier_classes)))
        out = rng.permutation(np.flatnonzero(~np.isin(y, self.inlier_classes)))
        if self.n_test_inliers >= len(inl) - 4 or self.n_test_outliers > len(out):
            raise ValueError(
                f"`n_test_inliers` must be < {len(inl) - 4} and `n_test_outliers` <= {len(out)}, got "
                f"{self.n_test_inliers} and {self.n_test_outliers}."
            )
        test_in, rest = inl[: self.n_test_inliers], inl[self.n_test_inliers :]
        n_hold = max(2, round(self.holdout_fraction * len(rest)))
        hold, train = rest[:n_hold], rest[n_hold:]
        test_out = out[: self.n_test_outliers]

        def make(ids: np.ndarray, outlier: bool | np.ndarray) -> TensorDataset:
            flags = np.broadcast_to(np.asarray(outlier, dtype=np.float32), (len(ids),)).copy()
            return TensorDataset(torch.from_numpy(x[ids]), torch.from_numpy(flags))

        test_ids = np.concatenate([test_in, test_out])
        flags = np.concatenate([np.zeros(len(test_in)), np.ones(len(test_out))])
        return make(train, False), make(hold, False), make(test_ids, flags)


class DigitsAutoencoder(pl.LightningModule):
    """A dense autoencoder 64-32-8-32-64; the per-sample reconstruction error is the outlier score.

    Implements ``ces_outputs(x)`` (the ConformalEarlyStopping protocol): the per-sample
    squared reconstruction error, which is both the selection loss and the score
    (larger = more outlying).

    Args:
        hidden: width of the hidden layers.
        bottleneck: width of the code.
        lr: Adam learning rate.
    """

    def __init__(self, hidden: int = 32, bottleneck: int = 8, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck)
        )
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, 64)
        )
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def ces_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction error (sum of squares)."""
        return ((self(x) - x) ** 2).sum(dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.ces_outputs(batch[0]).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self.ces_outputs(batch[0]).mean(), on_epoch=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, is_outlier = batch
        scores = self.ces_outputs(x)
        self.log(
            "test/inlier_loss", scores[is_outlier == 0].mean() if (is_outlier == 0).any() else 0.0
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
