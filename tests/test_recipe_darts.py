"""The DARTS search recipe's architecture step: gradients into the alphas only, same training."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from eecontrol.recipes.darts import DartsSearchDataModule, DartsSearchModule
from lightning.pytorch.callbacks import Callback

from tests.conftest import make_trainer


class FullBackward(DartsSearchModule):
    """The architecture step as it was: a backward into every parameter."""

    def _arch_backward(self, arch_loss: torch.Tensor) -> None:
        self.manual_backward(arch_loss)


class WeightGradsAtArchStep(Callback):
    """Records, at each architecture optimizer step, whether any weight has a gradient."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if optimizer is trainer.optimizers[1]:  # the Adam of the alphas
            self.seen.append(any(p.grad is not None for p in pl_module.weight_parameters()))


def _fit(root, cls: type[DartsSearchModule]) -> tuple[DartsSearchModule, list[bool], torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    model = cls(c=2, layers=3, steps=2, multiplier=2, arch_lr=3e-2)
    alphas_before = model.net.alphas_normal.detach().clone()
    probe = WeightGradsAtArchStep()
    trainer = make_trainer(
        root, max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[probe]
    )
    trainer.fit(model, datamodule=DartsSearchDataModule(batch_size=16))
    return model, probe.seen, alphas_before


def test_the_arch_step_computes_no_weight_gradient_and_trains_exactly_as_before(tmp_path):
    fast, fast_seen, before = _fit(tmp_path / "fast", DartsSearchModule)
    full, full_seen, _ = _fit(tmp_path / "full", FullBackward)
    assert len(fast_seen) == len(full_seen) == 3  # three architecture steps ran
    # the first step has no weight gradient left from an earlier weight step: only the full
    # backward gives the weights one (then zeroed unread by the weight step)
    assert full_seen[0] is True and fast_seen[0] is False
    a, b = fast.state_dict(), full.state_dict()
    assert list(a) == list(b) and a
    assert all(torch.equal(a[k], b[k]) for k in a)  # alphas and weights bit for bit
    assert not torch.equal(fast.net.alphas_normal, before)  # the alpha steps moved them
