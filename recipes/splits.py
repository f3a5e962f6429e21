"""A DataModule base for data held in memory as train / validation / test tensor splits."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset


class TensorSplitsDataModule(pl.LightningDataModule):
    """Serves ``train_set`` (shuffled), ``val_set`` and ``test_set`` (in order) built by ``setup``.

    Subclasses set ``batch_size`` and build the three ``TensorDataset`` splits in ``setup``.
    Evaluation uses ``eval_batch_size`` (results do not depend on it).
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
        size = self.batch_size if shuffle else self.eval_batch_size
        return DataLoader(data, batch_size=size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
