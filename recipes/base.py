"""The data-module base every recipe builds on: train / validation / test tensor splits.

A recipe's data module subclasses :class:`TensorSplitsDataModule` and implements
``build_splits`` (load its real data set and return the three ``TensorDataset`` splits);
the base builds them once, serves them (training order seeded per epoch, evaluation in
order) and holds the split helpers the digits and text recipes share.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from eecontrol.resume import EpochSeededSampler


def check_split_args(batch_size: int, val_fraction: float, test_fraction: float) -> None:
    """Validates a batch size and the validation / test shares of a random split.

    Raises:
        ValueError: naming the argument and its valid range.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer in [1, inf), got {batch_size!r}.")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name}` must be a number in (0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"`val_fraction + test_fraction` must be < 1, got {val_fraction} + {test_fraction}."
        )


def check_fraction(name: str, value: float) -> None:
    """Validates a share strictly between 0 and 1.

    Raises:
        ValueError: naming the argument and its valid range.
    """
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1), got {value!r}.")


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices of ``y``, stratified by class and fixed by ``seed``.

    The test share is drawn first (``random_state=seed``), then the validation share of the
    rest (``random_state=seed + 1``).
    """
    rest, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    val_share = val_fraction / (1.0 - test_fraction)
    train_idx, val_idx = train_test_split(
        rest, test_size=val_share, random_state=seed + 1, stratify=y[rest]
    )
    return train_idx, val_idx, test_idx


def stratified_subset(idx: np.ndarray, y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` of the indices ``idx``, stratified by ``y[idx]`` (``random_state=seed + 2``)."""
    kept, _ = train_test_split(idx, train_size=size, random_state=seed + 2, stratify=y[idx])
    return kept


def index_splits(
    tensors: Sequence[torch.Tensor],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """The train, validation and test ``TensorDataset`` of the given rows (sorted) of every tensor."""

    def rows(ids: np.ndarray) -> TensorDataset:
        sel = torch.from_numpy(np.sort(ids))
        return TensorDataset(*(t[sel] for t in tensors))

    return rows(train_idx), rows(val_idx), rows(test_idx)


class TensorSplitsDataModule(pl.LightningDataModule):
    """Serves ``train_set`` (shuffled), ``val_set`` and ``test_set`` (in order) built by ``setup``.

    Subclasses set ``batch_size`` (and ``seed``) and implement :meth:`build_splits`.
    Evaluation uses ``eval_batch_size`` (results do not depend on it): ``fixed_eval_batch_size``,
    or the training batch size where a subclass sets that to None. The training order of
    epoch ``e`` is a permutation seeded by ``seed + e`` (:class:`EpochSeededSampler`), so a
    run resumed at an epoch boundary sees the same batches as the uninterrupted run.
    """

    batch_size: int = 64
    fixed_eval_batch_size: int | None = 256
    num_workers: int = 0
    train_set: TensorDataset | None = None
    val_set: TensorDataset | None = None
    test_set: TensorDataset | None = None

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the validation and test loaders (settable, as before the base)."""
        return self.fixed_eval_batch_size or self.batch_size

    @eval_batch_size.setter
    def eval_batch_size(self, value: int) -> None:
        self.fixed_eval_batch_size = value

    def build_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        """Loads the data and returns the train, validation and test splits (once per module)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_splits().")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build_splits()

    def _loader(self, data: TensorDataset | None, shuffle: bool) -> DataLoader:
        if data is None:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() before asking for a dataloader."
            )
        if not shuffle:
            return DataLoader(data, batch_size=self.eval_batch_size, num_workers=self.num_workers)
        sampler = EpochSeededSampler(data, seed=int(getattr(self, "seed", 0) or 0))
        return DataLoader(
            data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
