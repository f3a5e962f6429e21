"""A DataModule base for data held in memory as train / validation / test tensor splits."""

from __future__ import annotations

import lightning.pytorch as pl
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


class TensorSplitsDataModule(pl.LightningDataModule):
    """Serves ``train_set`` (shuffled), ``val_set`` and ``test_set`` (in order) built by ``setup``.

    Subclasses set ``batch_size`` and build the three ``TensorDataset`` splits in ``setup``.
    Evaluation uses ``eval_batch_size`` (results do not depend on it). The training order of
    epoch ``e`` is a permutation seeded by ``seed + e`` (:class:`EpochSeededSampler`), so a
    run resumed at an epoch boundary sees the same batches as the uninterrupted run.
    """

    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    train_set: TensorDataset | None = None
    val_set: TensorDataset | None = None
    test_set: TensorDataset | None = None

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
