"""A DARTS architecture search and its retraining, small enough for CPU on real digits.

DARTS (Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019): every
edge of a cell computes a softmax(alpha)-weighted mix of eight candidate ops; the network
weights and the architecture weights alpha are optimised in turn (first-order
approximation: the alpha gradient is taken at the current weights). Here the supernet
runs on scikit-learn's 8x8 digits: the training split is halved into a weight half and an
architecture half, the validation split only reports the supernet's accuracy, and the test
split is never seen by the search.

Differences from the CIFAR-10 setting of DARTS, to make an epoch take a few seconds on
two CPU cores: 8x8 single-channel images, few and narrow cells (default 5 cells of
``C=8`` channels: normal, reduction, normal, reduction, normal), no auxiliary head, no
drop-path and no cutout in retraining.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from eecontrol.recipes.base import check_fraction
from eecontrol.recipes.darts_ops import (  # noqa: F401 (the ops stay importable from here)
    DilConv,
    FactorizedReduce,
    ReLUConvBN,
    SepConv,
    Zero,
    build_cells,
    classify,
    make_op,
    preprocess_inputs,
)
from eecontrol.recipes.digits import DigitsDataModule
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from eecontrol.core.darts import DARTS_OPS, Genotype, SearchSpace, derive_genotype, num_edges

# --- the search supernet --------------------------------------------------------------


class MixedOp(nn.Module):
    """One edge of the supernet: the weighted sum of every candidate op."""

    def __init__(self, c: int, stride: int, op_names: tuple[str, ...]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(o, c, stride, affine=False) for o in op_names)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))  # type: ignore[return-value]


class SearchCell(nn.Module):
    """A supernet cell: ``steps`` nodes, each summing mixed ops over all earlier states."""

    def __init__(
        self,
        steps: int,
        multiplier: int,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        op_names: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.pre = preprocess_inputs(c_pp, c_p, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1, op_names)
            for i in range(steps)
            for j in range(i + 2)
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.pre[0](s0), self.pre[1](s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)  # type: ignore[arg-type]
        return torch.cat(states[-self.multiplier :], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet for 1-channel images with learnable ``alphas_normal/reduce``.

    Args:
        c: channels of the first cells (doubled at each reduction cell).
        layers: number of cells; reduction cells sit at ``layers // 3`` and
            ``2 * layers // 3``.
        steps: intermediate nodes per cell.
        multiplier: the last nodes concatenated as a cell's output.
        stem_multiplier: stem channels = ``stem_multiplier * c``.
        num_classes: output classes.
        op_names: the candidate ops.
        alpha_init: scale of the random initial architecture weights.
    """

    def __init__(
        self,
        c: int = 8,
        layers: int = 5,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        num_classes: int = 10,
        op_names: tuple[str, ...] = DARTS_OPS,
        alpha_init: float = 1e-3,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.multiplier = multiplier
        self.op_names = tuple(op_names)

        def search_cell(
            c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
        ) -> tuple[nn.Module, int]:
            cell = SearchCell(
                steps, multiplier, c_pp, c_p, c, reduction, reduction_prev, self.op_names
            )
            return cell, multiplier * c

        self.stem, self.cells, c_p = build_cells(c, layers, stem_multiplier, search_cell)
        self.classifier = nn.Linear(c_p, num_classes)
        shape = (num_edges(steps), len(self.op_names))
        self.alphas_normal = nn.Parameter(alpha_init * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(alpha_init * torch.randn(shape))

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return classify(self.classifier, s1)


class DartsSearchModule(pl.LightningModule):
    """First-order DARTS search with Lightning manual optimisation.

    Each training batch is ``{"weights": (x, y), "arch": (x, y)}``: one Adam step on the
    architecture weights with the architecture-half batch, then one SGD step (gradient
    clipping, cosine LR) on the network weights with the weight-half batch. Implements the
    ``DARTSPlusStopping`` protocol (``arch_parameters()``, ``op_names``, ``steps``,
    ``multiplier``). Logs ``train/loss``, ``train/arch_loss``, ``val/loss``, ``val/acc``,
    ``test/loss``, ``test/acc``.

    Args:
        c: channels of the first cells.
        layers: number of cells.
        steps: intermediate nodes per cell.
        multiplier: the last nodes concatenated as a cell's output.
        stem_multiplier: stem channels = ``stem_multiplier * c``.
        num_classes: output classes.
        op_names: the candidate ops (any subset of the DARTS ops).
        lr: initial SGD learning rate of the weights (cosine-annealed to ``lr_min``).
        lr_min: final learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        arch_lr: Adam learning rate of the architecture weights.
        arch_weight_decay: Adam weight decay of the architecture weights.
        grad_clip: max gradient norm of the weights.
        alpha_init: scale of the random initial architecture weights.
    """

    def __init__(
        self,
        c: int = 8,
        layers: int = 5,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        num_classes: int = 10,
        op_names: tuple[str, ...] | list[str] = DARTS_OPS,
        lr: float = 0.025,
        lr_min: float = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        arch_lr: float = 3e-4,
        arch_weight_decay: float = 1e-3,
        grad_clip: float = 5.0,
        alpha_init: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = SearchNetwork(
            c, layers, steps, multiplier, stem_multiplier, num_classes, tuple(op_names), alpha_init
        )
        self.op_names = tuple(op_names)
        self.steps = steps
        self.multiplier = multiplier
        self.criterion = nn.CrossEntropyLoss()
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    # the DARTSPlusStopping protocol
    def arch_parameters(self) -> dict[str, Tensor]:
        """The raw architecture weights per cell type."""
        return {"normal": self.net.alphas_normal, "reduce": self.net.alphas_reduce}

    def genotype(self) -> Genotype:
        """The genotype derived from the current architecture weights (DARTS rule)."""
        space = SearchSpace(self.op_names, self.steps, self.multiplier)
        return derive_genotype(self.arch_parameters(), space)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture weights."""
        return [p for n, p in self.net.named_parameters() if not n.startswith("alphas_")]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        w_opt, a_opt = self.optimizers()  # type: ignore[misc]
        xa, ya = batch["arch"]
        a_opt.zero_grad()
        arch_loss = self.criterion(self(xa), ya)
        self._arch_backward(arch_loss)
        a_opt.step()

        x, y = batch["weights"]
        w_opt.zero_grad()
        loss = self.criterion(self(x), y)
        self.manual_backward(loss)
        self.clip_gradients(
            w_opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm"
        )
        w_opt.step()
        bs = int(y.shape[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/arch_loss", arch_loss, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _arch_backward(self, arch_loss: Tensor) -> None:
        """Backward of the architecture step, into the alphas only on a single process.

        The weight gradients of this pass were never used (the weight step zeroes them
        before its own backward), and skipping them halves the pass. Under DDP every
        parameter still gets its gradient, as the gradient reducer expects.
        """
        alphas = [a for a in self.arch_parameters().values() if a.requires_grad]
        if self.trainer.world_size == 1 and alphas:
            self.manual_backward(arch_loss, inputs=alphas)
        else:
            self.manual_backward(arch_loss)

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, acc: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self(x)
        acc(logits.argmax(dim=1), y)
        self.log(f"{stage}/loss", self.criterion(logits, y), on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def setup(self, stage: str) -> None:
        """Refuses FSDP before training: its backward hooks allow one backward pass per
        forward, and each search step makes two (architecture, then weights)."""
        from lightning.pytorch.strategies import FSDPStrategy

        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                f"DartsSearchModule does not run under FSDP (strategy="
                f"{type(self.trainer.strategy).__name__}): each search step makes two backward "
                "passes under manual optimization (the architecture step, then the weight "
                "step), which FSDP's backward hooks do not support. Use strategy='ddp' (or "
                "'ddp_find_unused_parameters_true') or a single device; the supernet is small."
            )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        w_opt = torch.optim.SGD(
            self.weight_parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        a_opt = torch.optim.Adam(
            [self.net.alphas_normal, self.net.alphas_reduce],
            lr=hp.arch_lr,
            betas=(0.5, 0.999),
            weight_decay=hp.arch_weight_decay,
        )
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 50
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            w_opt, T_max=max(int(max_epochs), 1), eta_min=hp.lr_min
        )
        return [w_opt, a_opt], [scheduler]


class DartsSearchDataModule(DigitsDataModule):
    """Digits for a DARTS search: the training split halved into weight / architecture data.

    Training batches are ``{"weights": (x, y), "arch": (x, y)}`` (the halves are
    stratified by class and depend only on ``seed``); validation and test batches are the
    usual ``(x, y)`` of the validation and test splits.

    Args:
        batch_size: batch size of each half and of evaluation.
        arch_fraction: share of the training split used for the architecture steps.
        **kwargs: passed to :class:`DigitsDataModule` (``val_fraction``, ``seed``, ...).
    """

    def __init__(self, batch_size: int = 32, arch_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_fraction("arch_fraction", arch_fraction)
        self.arch_fraction = arch_fraction
        self.weight_set: TensorDataset | None = None
        self.arch_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.weight_set is not None:
            return
        assert self.train_set is not None
        x, y = self.train_set.tensors
        idx = np.arange(len(y))
        w_idx, a_idx = train_test_split(
            idx, test_size=self.arch_fraction, random_state=self.seed + 3, stratify=y.numpy()
        )
        w_idx, a_idx = np.sort(w_idx), np.sort(a_idx)
        self.weight_set = TensorDataset(x[w_idx], y[w_idx])
        self.arch_set = TensorDataset(x[a_idx], y[a_idx])

    def train_dataloader(self) -> dict[str, DataLoader]:  # type: ignore[override]
        return {
            "weights": self._loader(self.weight_set, shuffle=True),
            "arch": self._loader(self.arch_set, shuffle=True),
        }


# --- the retrained network ------------------------------------------------------------


class FixedCell(nn.Module):
    """A cell built from a genotype: each node sums its two chosen ops."""

    def __init__(
        self,
        edges: tuple[tuple[str, int], ...],
        concat: tuple[int, ...],
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre = preprocess_inputs(c_pp, c_p, c, reduction_prev, affine=True)
        if len(edges) % 2:
            raise ValueError(f"a genotype cell needs 2 edges per node, got {len(edges)} edges.")
        self.inputs = [j for _, j in edges]
        self.concat = tuple(concat)
        for node in range(len(edges) // 2):
            for _, j in edges[2 * node : 2 * node + 2]:
                if not 0 <= j < node + 2:
                    raise ValueError(f"genotype edge into node {node + 2} from invalid input {j}.")
        self.ops = nn.ModuleList(
            make_op(o, c, 2 if reduction and j < 2 else 1, affine=True) for o, j in edges
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre[0](s0), self.pre[1](s1)]
        for node in range(len(self.ops) // 2):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNetwork(nn.Module):
    """The network a genotype describes, trained from scratch (DARTS's evaluation stage).

    Args:
        genotype: a genotype, its dict, JSON text, or the path of a ``genotype.json``
            written by ``DARTSPlusStopping``.
        c: channels of the first cells (doubled at each reduction cell).
        layers: number of cells (reductions at ``layers // 3`` and ``2 * layers // 3``).
        stem_multiplier: stem channels = ``stem_multiplier * c``.
        num_classes: output classes.
    """

    def __init__(
        self,
        genotype: Genotype | Mapping[str, Any] | str | Path,
        c: int = 16,
        layers: int = 5,
        stem_multiplier: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if isinstance(genotype, Mapping):
            genotype = {str(k): _plain(v) for k, v in genotype.items()}
        self.genotype = Genotype.load(genotype)
        missing = [k for k in ("normal", "reduce") if k not in self.genotype.cells]
        if missing:
            raise ValueError(f"genotype lacks cells {missing}: {self.genotype}.")

        def fixed_cell(
            c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
        ) -> tuple[nn.Module, int]:
            kind = "reduce" if reduction else "normal"
            concat = self.genotype.concat[kind]
            cells = self.genotype.cells[kind]
            return FixedCell(cells, concat, c_pp, c_p, c, reduction, reduction_prev), len(
                concat
            ) * c

        self.stem, self.cells, c_p = build_cells(c, layers, stem_multiplier, fixed_cell)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return classify(self.classifier, s1)


def _plain(value: Any) -> Any:
    """Turns OmegaConf containers (from a Hydra config) into lists and dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
