"""Regression recipes on real tabular data: the CES paper's concrete and bio, sklearn diabetes."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from importlib import resources
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.base import TensorSplitsDataModule, check_fraction
from torch import nn
from torch.utils.data import TensorDataset

DATASETS = ("concrete", "bio", "diabetes")


def load_regression_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads a real regression data set shipped in a package.

    Args:
        name: ``concrete`` (UCI, 1030 rows), ``bio`` (UCI CASP, 45730 rows) or
            ``diabetes`` (scikit-learn, 442 rows).

    Returns:
        Features (N, p) and outcomes (N,) as float64 arrays.
    """
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        return x.astype(np.float64), y.astype(np.float64)
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {name!r}.")
    path = resources.files("eecontrol.recipes") / "data" / f"{name}.csv.gz"
    with resources.as_file(path) as file, gzip.open(file, "rt") as f:
        table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)
    if name == "concrete":
        return table[:, :-1], table[:, -1]
    return table[:, 1:], table[:, 0]  # bio: RMSD is the first column


class RegressionDataModule(TensorSplitsDataModule):
    """A random subsample of a real regression data set, split train / hold-out / test.

    As in the CES paper: draw ``n_total`` points (train + hold-out) and ``n_test`` test
    points at random by seed; the hold-out ("es-cal") set is the validation split; features
    are standardised and the outcome scaled with training statistics only.

    Args:
        dataset: ``concrete``, ``bio`` or ``diabetes``.
        n_total: training + hold-out points (None: everything not in the test set).
        holdout_fraction: share of ``n_total`` held out for selection and calibration.
        n_test: test points.
        batch_size: training batch size (the paper uses 25).
        seed: the split seed.
    """

    def __init__(
        self,
        dataset: str = "concrete",
        n_total: int | None = 500,
        holdout_fraction: float = 0.25,
        n_test: int = 100,
        batch_size: int = 25,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}.")
        check_fraction("holdout_fraction", holdout_fraction)
        self.save_hyperparameters()
        self.dataset, self.n_total, self.holdout_fraction = dataset, n_total, holdout_fraction
        self.n_test, self.batch_size, self.seed = n_test, batch_size, seed

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return {"concrete": 8, "bio": 9, "diabetes": 10}[self.dataset]

    def build_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        x, y = load_regression_data(self.dataset)
        n_all = len(y)
        n_total = n_all - self.n_test if self.n_total is None else self.n_total
        if not 4 <= n_total <= n_all - self.n_test:
            raise ValueError(
                f"`n_total` must be in [4, {n_all - self.n_test}] for {self.dataset} "
                f"({n_all} rows, n_test={self.n_test}), got {self.n_total!r}."
            )
        perm = np.random.default_rng(self.seed).permutation(n_all)
        n_hold = max(2, round(self.holdout_fraction * n_total))
        train_idx = perm[: n_total - n_hold]
        hold_idx = perm[n_total - n_hold : n_total]
        test_idx = perm[n_total : n_total + self.n_test]
        mean, std = x[train_idx].mean(0), x[train_idx].std(0) + 1e-8
        y_scale = np.abs(y[train_idx]).mean() + 1e-8

        def make(ids: np.ndarray) -> TensorDataset:
            xs = torch.tensor((x[ids] - mean) / std, dtype=torch.float32)
            ys = torch.tensor(y[ids] / y_scale, dtype=torch.float32)
            return TensorDataset(xs, ys)

        self.y_scale = float(y_scale)
        return make(train_idx), make(hold_idx), make(test_idx)


class RegressionMLP(pl.LightningModule):
    """The CES paper's regression network: Linear(p,128)-ReLU-Linear(128,128)-ReLU-Linear(128,1).

    Trained with the mean squared error; logs ``train/loss``, ``val/loss``, ``test/loss``.

    Args:
        num_features: input features.
        hidden: hidden width.
        optimizer: a partial optimizer constructor (default Adam, lr 1e-3).
    """

    def __init__(
        self,
        num_features: int = 8,
        hidden: int = 128,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["optimizer"])  # weights_only-safe
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.optimizer_factory = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), on_epoch=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        return self.optimizer_factory(self.parameters())


class QuantileMLP(RegressionMLP):
    """The CES paper's CQR network: the regression MLP with two outputs, lower and upper quantiles.

    Trained on the pinball loss summed over the two levels (as the authors' code and
    Romano et al.'s CQR do); ``forward`` returns (m, 2), what ``task="quantile"`` expects.
    Logs ``train/loss``, ``val/loss``, ``test/loss`` (pinball) and ``val/coverage``, the share
    of hold-out outcomes inside the uncalibrated quantile band.

    Args:
        num_features: input features.
        hidden: hidden width.
        quantiles: the (low, high) levels, e.g. (alpha/2, 1 - alpha/2).
        optimizer: a partial optimizer constructor (default Adam, lr 1e-3).
    """

    def __init__(
        self,
        num_features: int = 8,
        hidden: int = 128,
        quantiles: tuple[float, float] = (0.05, 0.95),
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__(num_features=num_features, hidden=hidden, optimizer=optimizer)
        low, high = (float(q) for q in quantiles)
        if not 0.0 < low < high < 1.0:
            raise ValueError(
                f"`quantiles` must be two levels (low, high) with 0 < low < high < 1, got {quantiles!r}."
            )
        self.quantiles = (low, high)
        self.net[-1] = nn.Linear(hidden, 2)
        self.save_hyperparameters(logger=False, ignore=["optimizer"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        u = y.unsqueeze(-1) - self(x)
        levels = torch.tensor(self.quantiles, dtype=u.dtype, device=u.device)
        return torch.maximum(levels * u, (levels - 1) * u).sum(-1).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val/loss", self._loss(batch), on_epoch=True, prog_bar=True)
        inside = ((out[:, 0] <= y) & (y <= out[:, 1])).float().mean()
        self.log("val/coverage", inside, on_epoch=True)
