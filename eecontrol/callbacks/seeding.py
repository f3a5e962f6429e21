"""Resumable randomness and data order: ``EpochSeed``, ``ResumableDataLoader``, ``EpochSeededSampler``.

- :class:`EpochSeed`: reseeds Python, NumPy and torch from ``seed + epoch`` at each epoch's
  first batch, so dropout masks after a resume at an epoch boundary equal the uninterrupted run's.
- :class:`EpochSeededSampler`: a shuffling sampler whose order is a function of
  ``seed + epoch`` only (Lightning calls ``set_epoch``), not of the global RNG's history.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sized
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from typing_extensions import override

from eecontrol.callbacks._trainer import AfterTrainBatch


class EpochSeed(AfterTrainBatch):
    """Reseeds Python, NumPy and torch from ``seed + epoch`` at each epoch's first batch.

    Dropout masks and any other random draw in epoch ``e`` then depend on ``(seed, e)`` only,
    so a run resumed from an epoch-end checkpoint draws exactly what the uninterrupted run
    drew. The data order is handled by :class:`EpochSeededSampler`. A no-op when ``seed``
    is None.

    With ``per_batch=True`` every later batch of the epoch is reseeded too, from
    ``(seed, epoch, batch index)``: the draws of a batch then depend on where it is, not on
    the process's history, so a resume from a **mid-epoch** checkpoint (every N steps, a
    signal; on a stream one epoch is the whole run) draws the same dropout masks. Together
    with a :class:`ResumableDataLoader` (whose position this callback keeps up to date)
    such a resume equals the uninterrupted run.

    Args:
        seed: the run's seed (``seed`` in ``train.yaml``), or None.
        per_batch: also reseed at every batch (needed for exact mid-epoch resumes).
    """

    training_only = True  # never looks at hold-out metrics (ConformalEarlyStopping checks this)

    def __init__(self, seed: int | None = None, per_batch: bool = False) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an integer, got {seed!r}.")
        if not isinstance(per_batch, bool):
            raise ValueError(f"`per_batch` must be true or false, got {per_batch!r}.")
        self.seed = seed
        self.per_batch = per_batch

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # At the epoch's first batch, not in on_train_epoch_start: a restarted epoch creates
        # its data iterator (which draws a seed from the global RNG) at another point.
        if self.seed is None or (batch_idx != 0 and not self.per_batch):
            return
        if batch_idx == 0:
            value = (self.seed + int(trainer.current_epoch)) % (2**32)
        else:
            key = f"{self.seed}:{int(trainer.current_epoch)}:{batch_idx}".encode()
            value = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    @override
    def after_train_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int
    ) -> None:
        for loader in _resumable_loaders(trainer):
            loader.position = {"epoch": int(trainer.current_epoch), "consumed": batch_idx + 1}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for loader in _resumable_loaders(trainer):  # the next pass starts at its beginning
            loader.position = {"epoch": int(trainer.current_epoch) + 1, "consumed": 0}


def _resumable_loaders(trainer: pl.Trainer) -> list[ResumableDataLoader]:
    loader = getattr(trainer.fit_loop, "_combined_loader", None)
    flat = getattr(loader, "flattened", []) if loader is not None else []
    return [dl for dl in flat if isinstance(dl, ResumableDataLoader)]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the current pass is saved in the checkpoint.

    Lightning saves the ``state_dict`` of every training loader that has one and loads it
    before the resumed epoch's iterator is created. This loader's state is the number of
    batches the training loop consumed in the current pass (kept up to date by
    :class:`EpochSeed`, which must be among the callbacks, with ``per_batch=True`` for the
    dropout masks); after a mid-epoch resume, the
    first iterator skips that many batches, so the run continues with the batch the killed
    process would have drawn next. On a stream (an ``IterableDataset``: one epoch is the
    whole run) this is what makes a resume exact.

    What the data must do: yield the same sequence again for the same pass (its order
    drawn from its own generator seeded by the seed and the pass, not from the global RNG),
    with ``num_workers=0`` or a deterministic split across workers. Skipping replays the
    skipped batches (their loading costs time, not training).

    Args:
        *args: as ``DataLoader``.
        **kwargs: as ``DataLoader``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position: dict[str, int] = {"epoch": 0, "consumed": 0}
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        """The pass and the batches of it the training loop consumed."""
        return dict(self.position)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Makes the next iterator skip the batches consumed before the checkpoint."""
        self.position = {
            "epoch": int(state_dict.get("epoch", 0)),
            "consumed": int(state_dict.get("consumed", 0)),
        }
        self._skip = self.position["consumed"]

    def __iter__(self) -> Any:
        iterator = super().__iter__()
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            try:
                next(iterator)
            except StopIteration:
                break
        return iterator


class EpochSeededSampler(Sampler[int]):
    """Shuffles ``range(len(data))`` with a generator seeded by ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before every training epoch (also under DDP, through
    its distributed sampler wrapper), so epoch ``e``'s order is the same in an uninterrupted
    and in a resumed run. Used without Lightning, each iteration advances the epoch.

    Args:
        data: the dataset (only its length is used).
        seed: the base seed.
    """

    def __init__(self, data: Sized, seed: int = 0) -> None:
        self.n = len(data)
        self.seed = int(seed)
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed((self.seed + self.epoch) % (2**63))
        order = torch.randperm(self.n, generator=g).tolist()
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        yield from order
