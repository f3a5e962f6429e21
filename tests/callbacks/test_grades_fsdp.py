"""GradES under FSDP (2 CPU processes, gloo, ``use_orig_params=True``).

Each rank holds a shard of every FSDP unit's flat parameter, so a weight matrix lies in
pieces on the ranks (often all of it on one rank and nothing on the other). GradES sums
``|g|`` over each rank's piece and adds the ranks' partial sums, so every rank reads the
statistic of the full matrix, decides the same, freezes the same original parameters and
stops at the same step. The references here gather the full (unsharded) gradients and
weights with ``FSDP.summon_full_params``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from eecontrol import GradES
from eecontrol.testing import CPUFSDPStrategy
from tests.conftest import make_trainer
from tests.settings.harness import TinyLlama, loaders

pytestmark = pytest.mark.timeout(300)

CLEAN = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean(name: str) -> str:
    for prefix in CLEAN:
        name = name.replace(prefix, "")
    return name


def _grades(trainer) -> GradES:
    return next(cb for cb in trainer.callbacks if isinstance(cb, GradES))


def _full(trainer, what: str) -> dict[str, torch.Tensor]:
    """Every parameter's full weight or gradient by name (a collective: all ranks call it)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.strategy.model
    with FSDP.summon_full_params(model, writeback=False, with_grads=what == "grad"):
        out = {}
        for name, p in model.named_parameters():
            t = p.grad if what == "grad" else p
            if t is not None:
                out[_clean(name)] = t.detach().clone()
    return out


class FullGradients(Callback):
    """Before GradES: the float64 L1 of each unfrozen component's full gradient per step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grades = _grades(trainer)
        grads = _full(trainer, "grad")
        self.by_step[trainer.global_step] = {
            c.name: math.fsum(float(grads[n].double().abs().sum()) for n in c.param_names)
            for c in grades._components
            if c.name not in grades.frozen and all(n in grads for n in c.param_names)
        }


class Record(Callback):
    """After GradES: its readings, each rank's own share of every matrix, the full frozen
    matrices when frozen and at the end; written to ``rank<r>.pt`` for the test."""

    def __init__(self, path: str, reference: FullGradients) -> None:
        self.path = path
        self.reference = reference
        self.readings: dict[int, dict[str, float | None]] = {}
        self.local_numel: dict[str, int] = {}
        self.at_freeze: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grades = _grades(trainer)
        self.readings[trainer.global_step] = dict(grades.last_values)
        if not self.local_numel:
            self.local_numel = {
                c.name: sum(p.numel() for p in c.params) for c in grades._components
            }
        weights = _full(trainer, "weight")
        for c in grades._components:
            if c.name in grades.frozen and c.name not in self.at_freeze:
                self.at_freeze[c.name] = torch.cat([weights[n].reshape(-1) for n in c.param_names])

    def on_fit_end(self, trainer, pl_module) -> None:
        grades = _grades(trainer)
        weights = _full(trainer, "weight")
        at_end = {
            c.name: torch.cat([weights[n].reshape(-1) for n in c.param_names])
            for c in grades._components
        }
        torch.save(
            {
                "decisions": json.dumps([d.to_dict() for d in grades.decisions]),
                "readings": json.dumps(self.readings),
                "reference": json.dumps(self.reference.by_step),
                "local_numel": json.dumps(self.local_numel),
                "full_numel": json.dumps({c.name: c.numel for c in grades._components}),
                "global_step": int(trainer.global_step),
                "stopped_step": grades.stopped_step,
                "at_freeze": self.at_freeze,
                "at_end": at_end,
            },
            f"{self.path}/rank{trainer.global_rank}.pt",
        )


def test_grades_under_fsdp_reads_full_matrices_and_decides_alike_on_every_rank(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(0)
    reference = FullGradients()
    # q_proj (2 of 14 components) freeze at the grace step (a threshold they all pass),
    # which reaches max_frozen_ratio: the run stops there, on both ranks
    grades = GradES(tau={"*.q_proj": 1e9, "default": 0.0}, grace=0.3, max_frozen_ratio=0.1)
    trainer = make_trainer(
        tmp_path,
        max_steps=10,
        limit_val_batches=0,
        devices=2,
        strategy=CPUFSDPStrategy(auto_wrap_policy={LlamaDecoderLayer}),
        callbacks=[reference, grades, Record(str(tmp_path), reference)],
    )
    train_loader, _ = loaders("llama", stream=False)
    trainer.fit(TinyLlama("plain", 0), train_loader)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # the matrices really are split: some lie wholly on one rank, none on the other
    local = [json.loads(r["local_numel"]) for r in (r0, r1)]
    full = json.loads(r0["full_numel"])
    assert all(local[0][n] + local[1][n] == full[n] for n in full), (local, full)
    assert any(local[0][n] == 0 for n in full) and any(local[1][n] == 0 for n in full)
    # every reading equals the float64 L1 of the full gradient, on both ranks
    compared = 0
    for r in (r0, r1):
        readings, ref = json.loads(r["readings"]), json.loads(r["reference"])
        for step, values in readings.items():
            for name, value in values.items():
                if value is None or name not in ref.get(step, {}):
                    continue
                exp = ref[step][name]
                assert exp > 0 and abs(value - exp) <= 1e-6 * exp, (step, name, value, exp)
                compared += 1
    assert compared >= 2 * 14, compared
    assert r0["readings"] == r1["readings"]  # bit-identical statistics
    # same decisions on both ranks: set-up, the two q_proj freezes, one stop at the grace step
    assert r0["decisions"] == r1["decisions"]
    decisions = json.loads(r0["decisions"])
    actions = [d["action"] for d in decisions]
    assert actions == ["setup", "freeze", "freeze", "stop"], actions
    frozen = sorted(d["evidence"]["component"] for d in decisions if d["action"] == "freeze")
    assert frozen == ["net.model.layers.0.self_attn.q_proj", "net.model.layers.1.self_attn.q_proj"]
    # frozen before step 3's update; the stop comes at the end of that batch (step 4 done)
    assert [d["step"] for d in decisions[1:]] == [3, 3, 4], decisions
    assert r0["stopped_step"] == r1["stopped_step"] == 4
    assert r0["global_step"] == r1["global_step"] == 4
    # frozen matrices: bit-identical from their freeze to the end; the others trained on
    for r in (r0, r1):
        assert sorted(r["at_freeze"]) == frozen
        for name in frozen:
            assert torch.equal(r["at_freeze"][name], r["at_end"][name]), name
    assert torch.equal(r0["at_end"][frozen[0]], r1["at_end"][frozen[0]])
