"""CES and DARTS+ under FSDP (2 CPU processes, gloo): the full weights, never the shards."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from eecontrol import ConformalEarlyStopping
from eecontrol.callbacks.darts_plus import DARTSPlusStopping
from eecontrol.core.darts import DARTS_OPS, SearchSpace, derive_genotype
from eecontrol.testing import CPUFSDPStrategy
from tests.conftest import digits_data, make_trainer
from tests.core.test_darts import scripted

SCRIPT = [(0, 0), (1, 1), (2, 2)]  # skip_connect count of the normal cell per epoch


class PulledSearch(pl.LightningModule):
    """A digits MLP with DARTS alphas that SGD pulls onto a scripted target each epoch.

    The alpha loss is ``sum (alpha - target)^2`` with learning rate 0.5: one step puts the
    alphas on the epoch's target (``scripted(*SCRIPT[epoch])``), through FSDP's sharded
    parameters and optimizer like any other weight.
    """

    op_names = DARTS_OPS
    steps = 4

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.alphas_normal = nn.Parameter(torch.zeros(14, 8))
        self.alphas_reduce = nn.Parameter(torch.zeros(14, 8))
        self.register_buffer("target_normal", torch.zeros(14, 8))
        self.register_buffer("target_reduce", torch.zeros(14, 8))

    def arch_parameters(self) -> dict[str, torch.Tensor]:
        return {"normal": self.alphas_normal, "reduce": self.alphas_reduce}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        target = scripted(*SCRIPT[min(self.current_epoch, len(SCRIPT) - 1)])
        self.target_normal.copy_(target["normal"])
        self.target_reduce.copy_(target["reduce"])

    def training_step(self, batch, batch_idx):
        x, y = batch
        pull = ((self.alphas_normal - self.target_normal) ** 2).sum()
        pull = pull + ((self.alphas_reduce - self.target_reduce) ** 2).sum()
        return nn.functional.cross_entropy(self(x), y) + pull

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(
            [
                {"params": self.net.parameters(), "lr": 0.1},
                {"params": [self.alphas_normal, self.alphas_reduce], "lr": 0.5},
            ]
        )


class Dump(Callback):
    """Writes each rank's CES outputs and DARTS+ decisions, and the full alphas at the end."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        ces = next(c for c in trainer.callbacks if isinstance(c, ConformalEarlyStopping))
        darts = next(c for c in trainer.callbacks if isinstance(c, DARTSPlusStopping))
        with FSDP.summon_full_params(trainer.strategy.model, writeback=False):
            alphas = {k: v.detach().clone() for k, v in pl_module.arch_parameters().items()}
        torch.save(
            {
                "is_fsdp": isinstance(trainer.strategy.model, FSDP),
                "epochs": ces.epochs,
                "paths": ces.paths,
                "outputs": torch.stack(ces.outputs),
                "darts": json.dumps([d.to_dict() for d in darts.decisions]),
                "history": json.dumps(darts.history),
                "alphas": alphas,
            },
            f"{self.path}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.timeout(240)
def test_ces_and_darts_plus_read_full_weights_under_fsdp(tmp_path):
    ces = ConformalEarlyStopping(task="classification")
    darts = DARTSPlusStopping(criterion="skip", min_epochs=0)
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        limit_train_batches=1,
        strategy=CPUFSDPStrategy(),
        devices=2,
        callbacks=[darts, ces, Dump(str(tmp_path))],
    )
    torch.manual_seed(0)
    trainer.fit(PulledSearch(), datamodule=digits_data())
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["is_fsdp"] and r1["is_fsdp"]
    # DARTS+: the scripted skips reach 2 at epoch 2 -> both ranks stop there, together
    decisions = json.loads(r0["darts"])
    assert [d["action"] for d in decisions] == ["skip_criterion", "stop"]
    assert decisions[-1]["epoch"] == 2
    assert r0["darts"] == r1["darts"] and r0["history"] == r1["history"]
    history = json.loads(r0["history"])
    assert [h["skips"]["normal"] for h in history] == [0, 1, 2]
    space = SearchSpace(DARTS_OPS, steps=4)
    assert history[-1]["genotype"] == derive_genotype(r0["alphas"], space).to_dict()
    # CES: one candidate per epoch until the stop; identical outputs on both ranks, each
    # equal to a plain (unsharded) forward of the full checkpoint it stored
    assert r0["epochs"] == r1["epochs"] == [0, 1, 2]
    assert torch.equal(r0["outputs"], r1["outputs"])
    dm = digits_data()
    dm.setup()
    x_hold = dm.val_set.tensors[0]
    for i, name in enumerate(r0["paths"]):
        state = torch.load(tmp_path / "ces" / name, weights_only=True)["state_dict"]
        plain = PulledSearch()
        plain.load_state_dict(state)  # the full state dict: every key, full shapes
        plain.eval()
        with torch.no_grad():
            again = torch.softmax(plain(x_hold), -1).double()
        torch.testing.assert_close(again, r0["outputs"][i], rtol=0, atol=1e-12)
    assert not torch.equal(r0["outputs"][0], r0["outputs"][-1])
