"""The hold-out ("es-cal") set of ConformalEarlyStopping and the pass that scores it.

The hold-out set is the validation loader's dataset, iterated whole and in index order by
CES itself (the loader's shuffling, ``drop_last`` and batch size do not change it).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
)

from eecontrol.callbacks._ces_checks import fsdp_model
from eecontrol.core.conformal.outputs import CandidateOutputs, batch_len, split_batch

NO_TARGETS = (
    "ConformalEarlyStopping: no targets in the hold-out batches; give (x, y) tuples, a dict "
    "with a `labels`/`y`/`target` key, or define `ces_targets(batch)` on the module."
)


def val_loader(trainer: pl.Trainer) -> Any:
    """The validation loader, before or after Lightning has requested it."""
    loader = trainer.val_dataloaders
    if loader is None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "val_dataloader"):
            loader = dm.val_dataloader()
        else:  # plain `fit(model, train_loader, val_loader)` or the module's hook
            source = getattr(
                getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None),
                "_data_source",
                None,
            )
            if source is not None and source.is_defined():
                loader = source.dataloader()
    if isinstance(loader, list | tuple):
        if len(loader) != 1:
            raise ValueError(
                "ConformalEarlyStopping needs exactly one hold-out (validation) "
                f"dataloader, got {len(loader)}."
            )
        loader = loader[0]
    if loader is None or not hasattr(loader, "dataset"):
        raise ValueError(
            "ConformalEarlyStopping needs a hold-out set: give the Trainer a validation "
            "dataloader (`trainer.fit(model, train_loader, val_loader)`, a datamodule or "
            "the module's `val_dataloader`); it serves selection and calibration."
        )
    return loader


class HoldoutSet:
    """The whole hold-out set in dataset order, with the loader's ``collate_fn``.

    Args:
        dataset: the map-style hold-out dataset (a ``Subset`` for a ``SubsetRandomSampler``).
        collate: the validation loader's ``collate_fn``, or None.
    """

    def __init__(self, dataset: Dataset, collate: Any = None) -> None:
        self.dataset = dataset
        self.collate = collate

    @classmethod
    def from_trainer(cls, trainer: pl.Trainer) -> HoldoutSet:
        """The whole hold-out set in a fixed (index) order, whatever the loader's sampling."""
        loader = val_loader(trainer)
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "ConformalEarlyStopping: the hold-out dataset is an IterableDataset; CES needs "
                "a map-style dataset (indexable, with a length) so every candidate sees the "
                "same points in the same order."
            )
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(loader, "sampler", None)
        if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
            raise ValueError(
                f"ConformalEarlyStopping: the validation loader uses a custom batch sampler "
                f"({type(batch_sampler).__name__}); CES cannot know which points it covers. "
                "Give a loader over exactly the hold-out dataset."
            )
        if isinstance(sampler, SubsetRandomSampler):
            dataset = Subset(dataset, sorted(int(i) for i in sampler.indices))
        elif isinstance(sampler, RandomSampler) and (
            sampler.replacement or sampler.num_samples != len(dataset)
        ):
            raise ValueError(
                "ConformalEarlyStopping: the validation loader samples with replacement or a "
                "different number of points; CES needs each hold-out point exactly once."
            )
        elif sampler is not None and type(sampler) not in (SequentialSampler, RandomSampler):
            name = type(sampler).__name__
            if name != "DistributedSampler":
                raise ValueError(
                    f"ConformalEarlyStopping: the validation loader uses a custom sampler "
                    f"({name}); CES cannot know which points it covers. Give a loader over "
                    "exactly the hold-out dataset."
                )
        return cls(dataset, getattr(loader, "collate_fn", None))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def loader(self, batch_size: int) -> DataLoader:
        """The whole hold-out set in dataset order."""
        return DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            **({"collate_fn": self.collate} if self.collate is not None else {}),
        )

    def first_batch(self) -> Any:
        """A batch of (at most) the first two points, for the checks before training."""
        return next(iter(self.loader(batch_size=min(2, len(self)))))

    def check_resumed(self, stored: list[Tensor]) -> None:
        """Refuses resuming candidates stored on a hold-out set of another size."""
        n = len(self)
        if stored and stored[0].shape[0] != n:
            raise ValueError(
                f"ConformalEarlyStopping: the checkpoint's candidates were stored on a hold-out "
                f"set of {stored[0].shape[0]} points, but the hold-out set now has {n}; "
                "resume with the same data split."
            )

    def check_outputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: str) -> None:
        """Refuses, before training, outputs CES cannot use: a wrong shape, no targets."""
        inputs, targets = split_batch(pl_module, self.first_batch())
        out = forward(trainer, pl_module, task, inputs)  # raises for a wrong output shape
        if out.shape[0] != batch_len(targets, out):
            raise ValueError(
                f"ConformalEarlyStopping: the model returned {out.shape[0]} outputs for a "
                f"hold-out batch of {batch_len(targets, out)} points; CES needs one per sample."
            )
        if task != "outlier" and targets is None:
            raise ValueError(NO_TARGETS)

    def outputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: str, batch_size: int
    ) -> tuple[Tensor, Tensor | None]:
        """Per-sample outputs on the whole hold-out set, in dataset order (every rank)."""
        outs, targets = [], []
        for batch in self.loader(batch_size):
            inputs, y = split_batch(pl_module, batch)
            outs.append(forward(trainer, pl_module, task, inputs))
            if y is not None:
                targets.append(torch.as_tensor(y).detach().cpu())
        out = torch.cat(outs)
        if not torch.isfinite(out).all():
            raise ValueError(
                f"ConformalEarlyStopping: the model's hold-out outputs at epoch "
                f"{trainer.current_epoch} (step {trainer.global_step}) contain NaN or inf; the "
                "candidate cannot be stored. Check the training loss."
            )
        return out, (torch.cat(targets) if targets else None)


@torch.no_grad()
def forward(trainer: pl.Trainer, pl_module: pl.LightningModule, task: str, inputs: Any) -> Tensor:
    """Per-sample outputs of one batch in eval mode, through the FSDP wrapper if any.

    Under FSDP the module's own parameters are shards: a direct call would see them, so
    the call goes through ``trainer.strategy.model``, which gathers them (every rank
    runs the same batches, as FSDP's collectives need).
    """
    model = fsdp_model(trainer) or pl_module
    wrapper = CandidateOutputs(model, task)  # type: ignore[arg-type]
    was_training = model.training  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    try:
        out = wrapper(move_data_to_device(inputs, pl_module.device))
    finally:
        model.train(was_training)  # type: ignore[attr-defined]
    return out.detach().to("cpu", torch.float64)


def whole_split(loader: DataLoader) -> Any:
    """A loader's whole dataset as one batch (the test split the callback summarises)."""
    return next(
        iter(
            DataLoader(
                loader.dataset,
                batch_size=len(loader.dataset),  # type: ignore[arg-type]
                **({"collate_fn": loader.collate_fn} if loader.collate_fn else {}),
            )
        )
    )
