"""GradES on real BBC News text with a tiny random BERT: freezing, stop, resume, DDP, errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from eecontrol.recipes.text import BBCNewsDataModule, TextClassifier
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.utils.data import DataLoader

from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.callbacks.grades import TIMELINE_FILE, GradES, _strategy_problem
from eecontrol.testing import check_callback_conformance
from tests.conftest import CrashAtEpoch
from tests.conftest import make_trainer as _make_trainer

TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
N_COMPONENTS = 12  # 2 layers x (query, key, value, attention.output.dense, intermediate, output)


class OrderedBBC(BBCNewsDataModule):
    """BBC News in a fixed order (no shuffling), so a resumed run sees the same batches."""

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=False)


_DATA: dict[str, OrderedBBC] = {}


def make_trainer(root: Path, **kwargs: Any):
    """A quiet CPU trainer that validates on two batches only."""
    kwargs.setdefault("limit_val_batches", 2)
    return _make_trainer(root, **kwargs)


def bbc(**kwargs: Any) -> OrderedBBC:
    """A small real BBC News training set (tokenized once per test session)."""
    kwargs = {"batch_size": 16, "max_length": 32, "train_subset": 96, **kwargs}
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _DATA:
        _DATA[key] = OrderedBBC(**kwargs)
        _DATA[key].setup()
    # Lightning attaches the last trainer to a datamodule it fitted; a cached datamodule must
    # not carry an earlier test's trainer (and its callbacks) into a ddp_spawn pickle.
    _DATA[key].trainer = None
    return _DATA[key]


def tiny_model(lr: float = 3e-3, **opt: Any) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(
        pretrained=False,
        config=TINY_BERT,
        dropout=0.0,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.1, **opt),
    )


class WeightRecorder(Callback):
    """Keeps a copy of every component weight at each optimizer step (before the update)."""

    def __init__(self) -> None:
        self.at_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_step[trainer.global_step] = {
            n: p.detach().clone() for n, p in pl_module.named_parameters() if "encoder.layer" in n
        }


class DecisionDump(Callback):
    """Writes each rank's GradES decisions and frozen set to a file at fit end."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, GradES))
        frozen = sorted(n for n, p in pl_module.named_parameters() if not p.requires_grad)
        data = {"decisions": [d.to_dict() for d in cb.decisions], "frozen": frozen}
        Path(self.path, f"rank{trainer.global_rank}.json").write_text(json.dumps(data))


INVALID = [
    ({"tau": -1.0}, "`tau`", "[0, inf) or 'auto'"),
    ({"tau": "sometimes"}, "`tau`", "[0, inf) or 'auto'"),
    ({"tau": {"*.query": -3}}, "tau[", "[0, inf) or 'auto'"),
    ({"statistic": "grad_l2"}, "`statistic`", "['grad_l1', 'grad_delta_l1', 'weight_delta_l1']"),
    ({"normalize": "max"}, "`normalize`", "['sum', 'mean']"),
    ({"interval": 0}, "`interval`", "[1, inf)"),
    ({"interval": 1.5}, "`interval`", "[1, inf)"),
    ({"grace": 1.0}, "`grace`", "[0.0, 1.0)"),
    ({"grace": -0.1}, "`grace`", "[0.0, 1.0)"),
    ({"grace": 0.0, "tau": "auto"}, "`grace`", "(0.0, 1.0)"),
    ({"max_frozen_ratio": 0.0}, "`max_frozen_ratio`", "(0.0, 1.0]"),
    ({"max_frozen_ratio": 1.5}, "`max_frozen_ratio`", "(0.0, 1.0]"),
    ({"rel_tau": 0.0}, "`rel_tau`", "(0.0, 1.0]"),
    ({"smoothing": 1.0}, "`smoothing`", "[0.0, 1.0)"),
    ({"patterns": "q_proj"}, "`patterns`", "non-empty list"),
    ({"patterns": []}, "`patterns`", "non-empty list"),
    ({"patterns": ["re:("]}, "`patterns`", "invalid regular expression"),
]


def test_conformance(tmp_path):
    cb = GradES(tau=1e9, grace=0.5, statistic="weight_delta_l1", interval=2)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[cb]).fit(
        tiny_model(), datamodule=bbc()
    )
    assert cb.frozen  # non-trivial state: frozen set, snapshots, rule
    check_callback_conformance(
        GradES,
        valid=[{}, {"statistic": "grad_delta_l1"}, {"tau": 0.5}, {"tau": {"default": 1.0}}],
        invalid=INVALID,
        after_fit=(cb, {"tau": 1e9, "grace": 0.5, "statistic": "weight_delta_l1", "interval": 2}),
    )


def test_freezes_all_then_stops_and_frozen_weights_never_change(tmp_path):
    rec = WeightRecorder()
    # tau=1e9: every component freezes at the first reading after the grace period
    cb = GradES(tau={"*.attention.*": 1e9, "default": 0.0}, grace=0.25, max_frozen_ratio=1.0)
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        callbacks=[cb, rec],
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=1,
    )
    trainer.fit(tiny_model(), datamodule=bbc())
    total = 4 * 6
    grace_step = int(0.25 * total)
    attention = [n for n in cb.components if ".attention." in n]
    assert len(cb.components) == N_COMPONENTS and len(attention) == 8
    # tau 0 never freezes: half the components stay, the run goes to the end
    assert cb.frozen == dict.fromkeys(attention, grace_step)
    assert cb.stopped_step is None and trainer.global_step == total
    freezes = [d for d in cb.decisions if d.action == "freeze"]
    assert [d.evidence["component"] for d in freezes] == attention
    assert freezes[-1].evidence["frozen_fraction"] == pytest.approx(8 / 12)
    assert all(d.evidence["lr"] == pytest.approx(3e-3) for d in freezes)
    # a frozen weight is bitwise identical from its freeze step to the end (AdamW wd 0.1)
    optimizer = trainer.optimizers[0]
    for name, p in trainer.lightning_module.named_parameters():
        if "encoder.layer" not in name:
            continue
        frozen = any(name.startswith(c + ".") for c in attention)
        same = torch.equal(rec.at_step[grace_step][name], p.detach())
        assert same == frozen, name
        assert (p in optimizer.state) != frozen, name
        assert p.requires_grad != frozen
    timeline = json.loads((tmp_path / TIMELINE_FILE).read_text())
    assert [e["component"] for e in timeline["events"]] == attention
    assert timeline["grace_step"] == grace_step and len(timeline["components"]) == N_COMPONENTS
    journal = [json.loads(x) for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert [x["action"] for x in journal] == ["setup"] + ["freeze"] * 8
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "grades/frozen_fraction" in header and "grades/trainable_fraction" in header
    assert "grades/grad_l1/encoder.encoder.layer.0.intermediate.dense" in header


def test_stops_when_all_components_are_frozen(tmp_path):
    cb = GradES(tau=1e9, grace=0.25)
    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=[cb])
    trainer.fit(tiny_model(), datamodule=bbc())
    assert len(cb.frozen) == N_COMPONENTS and set(cb.frozen.values()) == {6}
    assert cb.stopped_step == 7 and trainer.global_step == 7  # the step at freeze ran
    assert [d.action for d in cb.decisions][-1] == "stop"
    assert cb.trainable_fraction < 1.0


def test_sgd_momentum_weight_decay_never_moves_a_frozen_weight(tmp_path):
    rec = WeightRecorder()
    cb = GradES(tau={"*.layer.0.*": 1e9, "default": 0.0}, grace=0.3)
    model = tiny_model()
    model.optimizer_factory = lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, weight_decay=0.5
    )
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[cb, rec])
    trainer.fit(model, datamodule=bbc())
    step = int(0.3 * 12)
    assert set(cb.frozen.values()) == {step} and len(cb.frozen) == 6
    for name, p in model.named_parameters():
        if name.startswith("encoder.encoder.layer.0.") and "LayerNorm" not in name:
            assert torch.equal(rec.at_step[step][name], p.detach()), name
            assert p not in trainer.optimizers[0].state


def test_auto_tau_freezes_on_real_training(tmp_path):
    cb = GradES(tau="auto", rel_tau=0.9, grace=0.3)
    trainer = make_trainer(tmp_path, max_epochs=5, callbacks=[cb])
    trainer.fit(tiny_model(lr=1e-2), datamodule=bbc())
    assert cb.frozen, cb.last_values
    assert min(cb.frozen.values()) >= int(0.3 * 30)
    for d in cb.decisions:
        if d.action == "freeze":
            assert d.evidence["statistic"] < d.evidence["tau"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tau": {"*.layer.0.*": "auto", "default": 0.0}, "rel_tau": 0.7, "grace": 0.3},
        {
            "tau": {"*.layer.0.*": "auto", "default": 0.0},
            "rel_tau": 0.7,
            "grace": 0.3,
            "statistic": "weight_delta_l1",
            "interval": 2,
        },
    ],
)
def test_resume_gives_the_same_decisions_and_frozen_set(tmp_path, kwargs):
    def run(root: Path, extra: list[Callback], ckpt_path: Path | None = None) -> tuple[GradES, Any]:
        cb = GradES(**kwargs)
        trainer = make_trainer(
            root,
            max_epochs=6,
            enable_checkpointing=True,
            callbacks=[cb, ModelCheckpoint(dirpath=root / "c", save_last=True), *extra],
        )
        trainer.fit(tiny_model(lr=1e-2), datamodule=bbc(), ckpt_path=ckpt_path)
        return cb, trainer

    ref, ref_trainer = run(tmp_path / "ref", [])
    # layer 1 has tau 0 and never freezes, so the run reaches its end
    assert ref.frozen and len(ref.frozen) <= 6 and ref_trainer.global_step == 36
    first_freeze = min(ref.frozen.values())
    # crash after the first freeze when it comes early; otherwise the resumed run makes all
    # freezes from the restored statistics state (references, EMAs, weight snapshots)
    crash_epoch = min(first_freeze // 6 + 1, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "run", [CrashAtEpoch(crash_epoch)])
    resumed, trainer = run(tmp_path / "run", [], ckpt_path=tmp_path / "run" / "c" / "last.ckpt")
    assert resumed.decisions == ref.decisions
    assert resumed.frozen == ref.frozen
    frozen_now = {n for n, p in trainer.lightning_module.named_parameters() if not p.requires_grad}
    frozen_ref = {
        n for n, p in ref_trainer.lightning_module.named_parameters() if not p.requires_grad
    }
    assert frozen_now == frozen_ref
    assert (tmp_path / "run" / TIMELINE_FILE).read_text() == (
        tmp_path / "ref" / TIMELINE_FILE
    ).read_text()


def test_resume_reapplies_the_frozen_set_before_the_first_step(tmp_path):
    cb = GradES(tau={"*.layer.1.*": 1e9, "default": 0.0}, grace=0.25)
    trainer = make_trainer(
        tmp_path,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)],
    )
    trainer.fit(tiny_model(), datamodule=bbc())
    assert len(cb.frozen) == 6

    class FirstStep(Callback):
        seen: list[str] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not self.seen:
                opt_state = {id(p) for p in optimizer.state}
                self.seen.extend(
                    n
                    for n, p in pl_module.named_parameters()
                    if not p.requires_grad and p.grad is None and id(p) not in opt_state
                )

    first = FirstStep()
    cb2 = GradES(tau={"*.layer.1.*": 1e9, "default": 0.0}, grace=0.25)
    trainer2 = make_trainer(tmp_path, max_epochs=3, callbacks=[first, cb2])
    trainer2.fit(tiny_model(), datamodule=bbc(), ckpt_path=tmp_path / "c" / "last.ckpt")
    expected = sorted(n for info in cb2._frozen.values() for n in info["params"])
    assert sorted(first.seen) == expected and len(expected) == 12
    assert cb2.frozen == cb.frozen


def test_strategy_checks():
    assert "ddp_find_unused_parameters_true" in _strategy_problem(DDPStrategy())
    assert "ddp_spawn_find_unused_parameters_true" in _strategy_problem(
        DDPStrategy(start_method="spawn")
    )
    assert "static_graph" in _strategy_problem(
        DDPStrategy(find_unused_parameters=True, static_graph=True)
    )
    assert _strategy_problem(DDPStrategy(find_unused_parameters=True)) is None
    # FSDP with original parameters (Lightning's default) runs (tests/callbacks/test_grades_fsdp.py)
    assert _strategy_problem(FSDPStrategy()) is None
    assert _strategy_problem(FSDPStrategy(sharding_strategy="SHARD_GRAD_OP")) is None
    assert "FSDPStrategy(use_orig_params=True)" in _strategy_problem(
        FSDPStrategy(use_orig_params=False)
    )
    hybrid = FSDPStrategy(sharding_strategy="HYBRID_SHARD", auto_wrap_policy={torch.nn.Linear})
    assert "sharding_strategy=HYBRID_SHARD" in _strategy_problem(hybrid)


@pytest.mark.timeout(240)
def test_ddp_without_find_unused_parameters_fails_at_setup_with_the_fix(tmp_path):
    trainer = make_trainer(
        tmp_path, max_epochs=1, strategy="ddp_spawn", devices=1, callbacks=[GradES()]
    )
    with pytest.raises(Exception, match="ddp_spawn_find_unused_parameters_true"):
        trainer.fit(tiny_model(), datamodule=bbc())


@pytest.mark.timeout(240)
def test_ddp_two_ranks_make_identical_decisions(tmp_path):
    cb = GradES(tau="auto", rel_tau=0.9, grace=0.3)
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        strategy="ddp_spawn_find_unused_parameters_true",
        devices=2,
        callbacks=[cb, DecisionDump(str(tmp_path))],
    )
    trainer.fit(tiny_model(lr=1e-2), datamodule=bbc())
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    assert any(d["action"] == "freeze" for d in r0["decisions"])
    assert r0["frozen"]


def test_model_without_components_is_an_error_listing_names(tmp_path):
    from eecontrol.recipes.digits import DigitsClassifier, DigitsMLP

    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[GradES()])
    from tests.conftest import digits_data

    with pytest.raises(ValueError, match=r"Module names seen: \['net', 'net.net'"):
        trainer.fit(DigitsClassifier(net=DigitsMLP()), datamodule=digits_data())


@pytest.mark.slow
def test_minilm_real_fine_tune_freezes_and_keeps_accuracy(tmp_path):
    """The packaged MiniLM on BBC News: GradES freezes matrices and accuracy stays high."""
    data = BBCNewsDataModule(batch_size=16, max_length=64, train_subset=320)
    torch.manual_seed(0)
    model = TextClassifier(optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01))
    cb = GradES(tau="auto", rel_tau=0.5, grace=0.3)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=2, callbacks=[cb])
    trainer.fit(model, datamodule=data)
    assert len(cb.components) == 36 and cb.frozen
    acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    assert acc > 0.85


def test_resume_into_the_same_model_object_continues_with_the_restored_frozen_set(tmp_path):
    """A notebook after a crash: the same model object (frozen params already
    requires_grad=False) resumed with Trainer().fit(model, ckpt_path=...)."""
    tau = {"*.layer.1.*": 1e9, "default": 0.0}
    model = tiny_model()
    cb = GradES(tau=tau, grace=0.25)
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        enable_checkpointing=True,
        callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "c", save_last=True), CrashAtEpoch(2)],
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, datamodule=bbc())
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert len(cb.frozen) == 6 and len(frozen_names) == 12  # layer 1 frozen at step 6
    assert (tmp_path / "c" / "last.ckpt").exists()
    resumed = GradES(tau=tau, grace=0.25)
    trainer2 = make_trainer(tmp_path, max_epochs=4, callbacks=[resumed])
    trainer2.fit(model, datamodule=bbc(), ckpt_path=tmp_path / "c" / "last.ckpt")
    assert len(resumed.components) == N_COMPONENTS  # the frozen ones are still components
    assert resumed.frozen == cb.frozen
    assert resumed.stopped_step is None and trainer2.global_step == 24  # ran to the end
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen_names
    assert [d.action for d in resumed.decisions] == ["setup"] + ["freeze"] * 6


def test_setup_report_says_what_is_watched_and_left_out(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cb = GradES(tau=0.0, grace=0.5)
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        callbacks=[cb],
        logger=CSVLogger(tmp_path, name="csv"),
    )
    trainer.fit(tiny_model(), datamodule=bbc())
    setup = cb.decisions[0]
    assert setup.action == "setup" and setup.evidence["matrix_coverage"] == 1.0
    assert setup.evidence["components"] == N_COMPONENTS and setup.evidence["blocks"] == 2
    assert "encoder.encoder.layer (2 blocks)" in setup.reason
    assert "left out: no weight matrix" in setup.reason  # the head is not a block matrix
    journal = [json.loads(x) for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert journal[0]["action"] == "setup" and journal[0]["evidence"]["matrix_coverage"] == 1.0
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "eecontrol/GradES/setup/matrix_coverage" in header

    def fit_with(patterns: list[str], where: str) -> None:
        make_trainer(
            tmp_path / where,
            max_epochs=1,
            limit_train_batches=1,
            callbacks=[GradES(tau=0.0, grace=0.5, patterns=patterns)],
        ).fit(tiny_model(), datamodule=bbc())

    # a pattern choosing the queries only: 12.5% of the block matrices, a warning naming the rest
    with pytest.warns(UserWarning, match=r"watches only 12\.5% .*attention\.self\.key\.weight"):
        fit_with(["attention.self.query"], "q")
    # a pattern choosing only the task head: none of the block matrices is an error
    with pytest.raises(ValueError, match=r"watches none of the weight matrices.*\['head'\]"):
        fit_with(["head"], "h")
