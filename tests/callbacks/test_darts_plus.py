"""DARTSPlusStopping on real digits training: scripted alphas, resume, DDP, the recipe."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.callbacks.darts_plus import DARTSPlusStopping
from eecontrol.core.darts import DARTS_OPS, Genotype
from eecontrol.testing import check_callback_conformance
from tests.conftest import (
    CrashAtEpoch,
    Stream,
    csv_lines,
    digits_data,
    digits_model,
    fit_on_two_processes,
    make_trainer,
)
from tests.core.test_darts import scripted


class ScriptedDarts(pl.LightningModule):
    """Trains a linear classifier on digits; its alphas follow a script across epochs.

    The alphas are parameters without gradients (saved in checkpoints, ignored by DDP),
    set at each epoch start from ``script[rank][epoch]`` (the last entry repeats).
    """

    op_names = DARTS_OPS
    steps = 4

    def __init__(self, script: list[tuple[int, int]], rank1: list[tuple[int, int]] | None = None):
        super().__init__()
        self.scripts = [script, rank1 or script]
        self.net = nn.Linear(64, 10)
        self.alphas_normal = nn.Parameter(torch.zeros(14, 8), requires_grad=False)
        self.alphas_reduce = nn.Parameter(torch.zeros(14, 8), requires_grad=False)

    def arch_parameters(self) -> dict[str, torch.Tensor]:
        return {"normal": self.alphas_normal, "reduce": self.alphas_reduce}

    def on_train_epoch_start(self) -> None:
        script = self.scripts[min(self.global_rank, 1)]
        skips, order = script[min(self.current_epoch, len(script) - 1)]
        alphas = scripted(skips, order)
        with torch.no_grad():
            self.alphas_normal.copy_(alphas["normal"])
            self.alphas_reduce.copy_(alphas["reduce"])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x.flatten(1)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


class DumpDecisions(Callback):
    """Writes each rank's DARTSPlusStopping decisions and history to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, DARTSPlusStopping))
        data = {
            "decisions": [d.to_dict() for d in cb.decisions],
            "history": cb.history,
            "epochs_run": trainer.current_epoch,
        }
        with open(f"{self.path}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(data, f)


def fit(tmp_path, script, cb, max_epochs=8, **kwargs):
    trainer = make_trainer(
        tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=kwargs.pop("limit_val_batches", 0),
        callbacks=[cb, *kwargs.pop("callbacks", [])],
        **kwargs,
    )
    trainer.fit(ScriptedDarts(script), datamodule=digits_data())
    return trainer


def test_conformance(tmp_path):
    cb = DARTSPlusStopping(criterion="skip", min_epochs=1)
    fit(tmp_path, [(0, 0), (2, 0)], cb, max_epochs=3)
    assert cb.stopped_epoch == 1
    check_callback_conformance(
        DARTSPlusStopping,
        valid=[{}, {"criterion": "skip"}, {"scope": "normal"}, {"patience": 3, "max_skip": 3}],
        invalid=[
            ({"patience": -1}, "`patience`", "[1, inf)"),
            ({"patience": 0}, "`patience`", "[1, inf)"),
            ({"patience": 2.5}, "`patience`", "integer"),
            ({"max_skip": 0}, "`max_skip`", "[1, inf)"),
            ({"max_skip": float("nan")}, "`max_skip`", "[1, inf)"),
            ({"min_epochs": -1}, "`min_epochs`", "[0, inf)"),
            ({"criterion": "any"}, "`criterion`", "['skip', 'stable', 'either', 'both']"),
            ({"scope": "reduce"}, "`scope`", "['both', 'normal', 'genotype']"),
            ({"learnable_ops": "sep_conv_3x3"}, "`learnable_ops`", "list of op names"),
            ({"artifact_dir": "/abs"}, "`artifact_dir`", "relative sub-directory"),
            ({"learnable_ops": []}, "`learnable_ops`", "non-empty list of op names"),
            ({"none_op": "skip_connect"}, "`none_op` and `skip_op`", "different op names"),
            ({"none_op": "x", "skip_op": "x"}, "`none_op` and `skip_op`", "different op names"),
            ({"skip_op": ""}, "`skip_op`", "non-empty op name"),
            ({"check_unit": "batches"}, "`check_unit`", "['epochs', 'validations', 'steps']"),
            ({"check_period": 0}, "`check_period`", "[1, inf)"),
        ],
        after_fit=(cb, {"criterion": "skip", "min_epochs": 1}),
    )


@pytest.mark.parametrize(
    ("script", "kwargs", "stop_epoch", "actions"),
    [
        # criterion 1: two skips at epoch 2
        (
            [(0, 0), (1, 1), (2, 2)],
            {"criterion": "skip", "min_epochs": 0},
            2,
            ["skip_criterion", "stop"],
        ),
        # the min_epochs guard: two skips from the start, no stop before 4 epochs
        ([(2, 0)], {"criterion": "skip", "min_epochs": 4}, 3, ["skip_criterion", "stop"]),
        # criterion 2: ranking fixed from epoch 2, patience 3 -> epoch 5; skips never reach 2
        (
            [(0, 0), (1, 1), (1, 2)],
            {"criterion": "stable", "patience": 3, "min_epochs": 0},
            5,
            ["stable_criterion", "stop"],
        ),
        # criterion 1 alone holds at epoch 1 but criterion="stable" only records it
        (
            [(0, 0), (2, 1), (2, 2)],
            {"criterion": "stable", "patience": 2, "min_epochs": 0},
            4,
            ["skip_criterion", "stable_criterion", "stop"],
        ),
        # either: whichever comes first
        ([(0, 0), (0, 1), (2, 1)], {"patience": 6, "min_epochs": 0}, 2, ["skip_criterion", "stop"]),
        # never: 7 epochs run to the end
        ([(i % 2, i) for i in range(8)], {"patience": 3, "min_epochs": 0}, None, []),
    ],
)
def test_stops_at_the_scripted_epoch(tmp_path, script, kwargs, stop_epoch, actions):
    cb = DARTSPlusStopping(**kwargs)
    trainer = fit(tmp_path, script, cb, max_epochs=7)
    assert cb.stopped_epoch == stop_epoch
    assert [d.action for d in cb.decisions] == actions
    assert trainer.current_epoch == (7 if stop_epoch is None else stop_epoch + 1)
    history = json.loads((tmp_path / "darts_plus" / "history.json").read_text())
    assert [h["epoch"] for h in history["epochs"]] == list(range(len(cb.history)))
    exported = json.loads((tmp_path / "darts_plus" / "genotype.json").read_text())
    last = cb.history[-1]
    assert exported["epoch"] == last["epoch"]
    assert Genotype.load(exported) == cb.genotype
    assert cb.genotype.count("skip_connect") == last["skips"]["normal"]
    alphas = np.load(tmp_path / "darts_plus" / "alphas.npz")
    assert alphas["normal"].shape == (len(cb.history), 14, 8)
    assert np.allclose(alphas["normal"].sum(-1), 1.0, atol=1e-5)
    if stop_epoch is not None:
        stop = cb.decisions[-1]
        assert stop.epoch == stop_epoch and stop.evidence["skip_normal"] == last["skips"]["normal"]
        journal = (tmp_path / DECISIONS_FILE).read_text().splitlines()
        assert [json.loads(x)["action"] for x in journal] == actions


def test_dry_run_records_both_criteria_and_logs_metrics(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cb = DARTSPlusStopping(stop_training=False, patience=1, min_epochs=2)
    trainer = fit(
        tmp_path,
        [(2, 0), (0, 1), (0, 1), (2, 1)],
        cb,
        max_epochs=5,
        logger=CSVLogger(tmp_path, name="csv"),
    )
    assert trainer.current_epoch == 5 and cb.stopped_epoch is None
    # the skips at epoch 0 are guarded by min_epochs (2 epochs); the skips change the
    # ranking too, so the counter restarts at epoch 3
    assert cb.fired_epochs == {"skip": 3, "stable": 2}
    assert [d.action for d in cb.decisions] == ["stable_criterion", "skip_criterion"]
    assert [h["stable_epochs"] for h in cb.history] == [0, 0, 1, 0, 1]
    header = csv_lines(tmp_path)[0]
    for key in ("darts_plus/skip_normal", "darts_plus/skip_reduce", "darts_plus/stable_epochs"):
        assert key in header
    exported = json.loads((tmp_path / "darts_plus" / "genotype.json").read_text())
    assert exported["reason"] == "end of search" and exported["epoch"] == 4


def test_resume_mid_search_keeps_the_counter(tmp_path):
    script = [(0, 0), (0, 1), (1, 2), (1, 2)]  # ranking stable from epoch 2

    def run(root, callbacks, ckpt_path=None):
        trainer = make_trainer(
            root,
            max_epochs=10,
            limit_train_batches=1,
            limit_val_batches=1,
            enable_checkpointing=True,
            callbacks=[*callbacks, ModelCheckpoint(dirpath=root / "c", save_last=True)],
        )
        trainer.fit(ScriptedDarts(script), datamodule=digits_data(), ckpt_path=ckpt_path)
        return trainer

    kwargs = {"criterion": "stable", "patience": 5, "min_epochs": 0}
    ref = DARTSPlusStopping(**kwargs)
    ref_trainer = run(tmp_path / "ref", [ref])
    assert ref.stopped_epoch == 7

    first = DARTSPlusStopping(**kwargs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "run", [first, CrashAtEpoch(5)])
    assert [h["stable_epochs"] for h in first.history] == [0, 0, 0, 1, 2]
    resumed = DARTSPlusStopping(**kwargs)
    run(tmp_path / "run", [resumed], ckpt_path=tmp_path / "run" / "c" / "last.ckpt")
    assert resumed.stopped_epoch == 7
    assert resumed.decisions == ref.decisions
    assert resumed.history == ref.history
    for name in (DECISIONS_FILE, "darts_plus/history.json", "darts_plus/genotype.json"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "ref" / name).read_text()
    a, b = (np.load(tmp_path / r / "darts_plus" / "alphas.npz") for r in ("run", "ref"))
    assert np.array_equal(a["normal"], b["normal"]) and a["normal"].shape[0] == 8

    again = DARTSPlusStopping(**kwargs)  # a stopped search does not train again
    trainer = run(tmp_path / "run", [again], ckpt_path=tmp_path / "run" / "c" / "last.ckpt")
    assert trainer.global_step == ref_trainer.global_step
    assert again.decisions == ref.decisions and len(again.history) == 8


@pytest.mark.timeout(180)
def test_ddp_ranks_agree(tmp_path):
    # rank 1's alphas never show skips: rank 0's weights are broadcast, so both ranks
    # derive the same genotype and stop together at epoch 2
    cb = DARTSPlusStopping(criterion="skip", min_epochs=0)
    model = ScriptedDarts([(0, 0), (1, 0), (2, 0)], rank1=[(0, 0)])
    callbacks = [cb, DumpDecisions(str(tmp_path))]
    fit_on_two_processes(
        tmp_path, callbacks, model, max_epochs=5, limit_train_batches=1, limit_val_batches=0
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    assert [d["action"] for d in r0["decisions"]] == ["skip_criterion", "stop"]
    assert r0["decisions"][-1]["epoch"] == 2 and r0["epochs_run"] == 3


def test_protocol_errors_name_what_is_missing(tmp_path):
    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[DARTSPlusStopping()]
    )
    with pytest.raises(ValueError, match=r"lacks \['arch_parameters\(\)', 'op_names'\]"):
        trainer.fit(digits_model(), datamodule=digits_data())

    class WrongShape(ScriptedDarts):
        steps = 3

    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[DARTSPlusStopping()]
    )
    with pytest.raises(ValueError, match=r"shape \(edges, ops\) = \(9, 8\) for steps=3"):
        trainer.fit(WrongShape([(0, 0)]), datamodule=digits_data())

    class NaNAlphas(ScriptedDarts):
        def on_train_epoch_start(self) -> None:
            self.alphas_normal.data.fill_(float("nan"))

    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[DARTSPlusStopping()]
    )
    with pytest.raises(ValueError, match="NaN or inf"):
        trainer.fit(NaNAlphas([(0, 0)]), datamodule=digits_data())


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_real_search_of_the_recipe_and_retrain_from_its_export(tmp_path, one_thread):
    from eecontrol.recipes.darts import DartsNetwork, DartsSearchDataModule, DartsSearchModule
    from eecontrol.recipes.digits import DigitsClassifier

    pl.seed_everything(0)
    torch.set_num_threads(1)  # hundreds of tiny convolutions: threads only add waiting
    model = DartsSearchModule(c=2, layers=3, steps=4, arch_lr=3e-2)
    before = {k: v.detach().clone() for k, v in model.arch_parameters().items()}
    cb = DARTSPlusStopping(min_epochs=0, patience=1, criterion="stable", scope="genotype")
    trainer = make_trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[cb]
    )
    trainer.fit(model, datamodule=DartsSearchDataModule(batch_size=16))
    assert trainer.global_step > 0 and len(cb.history) >= 1
    for name, alpha in model.arch_parameters().items():
        assert not torch.equal(alpha.detach(), before[name]), f"alphas_{name} did not move"
    assert "val/acc" in trainer.callback_metrics
    path = tmp_path / "darts_plus" / "genotype.json"
    net = DartsNetwork(str(path), c=4, layers=3)
    assert net.genotype == cb.genotype == model.genotype()
    classifier = DigitsClassifier(net=net)
    retrain = make_trainer(
        tmp_path / "retrain", max_epochs=1, limit_train_batches=2, limit_val_batches=1
    )
    retrain.fit(classifier, datamodule=digits_data(batch_size=32))
    out = retrain.test(classifier, datamodule=digits_data(batch_size=32), verbose=False)
    assert 0.0 <= out[0]["test/acc"] <= 1.0


# --- step-based searches (issue 23.5) --------------------------------------------------


class StreamScriptedDarts(ScriptedDarts):
    """ScriptedDarts on a stream: the script advances every ``every`` optimizer steps."""

    def __init__(self, script, every: int) -> None:
        super().__init__(script)
        self.every = every

    def on_train_epoch_start(self) -> None:  # one epoch on a stream: script by steps instead
        pass

    def on_train_batch_start(self, batch, batch_idx) -> None:
        skips, order = self.scripts[0][
            min(self.global_step // self.every, len(self.scripts[0]) - 1)
        ]
        alphas = scripted(skips, order)
        with torch.no_grad():
            self.alphas_normal.copy_(alphas["normal"])
            self.alphas_reduce.copy_(alphas["reduce"])


def _stream_fit(tmp_path, cb, script, every, **kwargs):
    dm = digits_data(batch_size=32)
    dm.setup()
    trainer = make_trainer(
        tmp_path,
        max_steps=kwargs.pop("max_steps", 24),
        callbacks=[cb],
        **kwargs,
    )
    val = torch.utils.data.DataLoader(dm.val_set, batch_size=128)
    train = torch.utils.data.DataLoader(Stream(dm.train_set), batch_size=32)
    trainer.fit(StreamScriptedDarts(script, every), train, val)
    return trainer


@pytest.mark.parametrize("unit", ["validations", "steps"])
def test_a_search_on_a_stream_checks_per_validation_or_steps_and_stops(tmp_path, unit):
    # alphas follow script entry global_step // 4; the check after step 12 is the first to
    # see entry 2, the checks after steps 16 and 20 see it unchanged: patience 2 -> stop at 20
    script = [(0, 0), (1, 1), (1, 2)]
    cb = DARTSPlusStopping(
        criterion="stable",
        patience=2,
        min_epochs=0,
        check_unit=unit,
        check_period=4 if unit == "steps" else 1,
    )
    kwargs = {"val_check_interval": 4, "limit_val_batches": 1} if unit == "validations" else {}
    trainer = _stream_fit(tmp_path, cb, script, every=4, **kwargs)
    assert [h["step"] for h in cb.history] == [4, 8, 12, 16, 20]
    assert [h["check"] for h in cb.history] == [0, 1, 2, 3, 4]
    assert [h["epoch"] for h in cb.history] == [0] * 5  # one epoch: a stream
    assert [h["stable_epochs"] for h in cb.history] == [0, 0, 0, 1, 2]
    assert cb.stopped_step == 20 and trainer.global_step == 20  # max_steps is 24
    assert [d.action for d in cb.decisions] == ["stable_criterion", "stop"]
    assert "not changed for 2 checks" in cb.decisions[0].reason
    assert "check 4 (step 20)" in cb.decisions[0].reason
    exported = json.loads((tmp_path / "darts_plus" / "genotype.json").read_text())
    assert Genotype.load(exported) == cb.genotype


def test_epoch_checks_on_a_stream_warn_that_the_search_can_never_stop(tmp_path):
    with pytest.warns(UserWarning, match=r"stream .* epoch ends only.* can never stop"):
        trainer = _stream_fit(
            tmp_path,
            DARTSPlusStopping(criterion="stable", patience=2, min_epochs=0),
            [(0, 0), (1, 1), (1, 2)],
            every=4,
            val_check_interval=4,
            limit_val_batches=1,
        )
    assert trainer.global_step == 24  # four validations, one epoch end: never stopped
    with pytest.warns(UserWarning, match=r"makes 3 check\(s\).* needs at least 4 checks"):
        fit(
            tmp_path / "few",
            [(0, 0)],
            DARTSPlusStopping(criterion="stable", patience=3, min_epochs=0),
            max_epochs=3,
        )
    with pytest.raises(
        ValueError, match=r"`check_unit`='validations' but this fit runs no validation"
    ):
        fit(tmp_path / "noval", [(0, 0)], DARTSPlusStopping(check_unit="validations"), max_epochs=2)


def test_a_real_step_based_search_checks_at_every_validation(tmp_path, one_thread):
    from eecontrol.recipes.darts import DartsSearchDataModule, DartsSearchModule

    pl.seed_everything(0)
    torch.set_num_threads(1)
    model = DartsSearchModule(c=2, layers=3, steps=4, arch_lr=3e-2)
    cb = DARTSPlusStopping(criterion="stable", min_epochs=0, patience=10, check_unit="validations")
    # manual optimization, two optimizers: 2 optimizer steps per batch; 4 batches, 4 validations
    trainer = make_trainer(
        tmp_path, max_steps=8, val_check_interval=1, limit_val_batches=1, callbacks=[cb]
    )
    trainer.fit(model, datamodule=DartsSearchDataModule(batch_size=16))
    assert trainer.global_step == 8 and cb.stopped_step is None  # max_steps ends epoch 0
    assert [h["step"] for h in cb.history] == [2, 4, 6, 8]
    assert [h["epoch"] for h in cb.history] == [0, 0, 0, 0]
    assert cb.genotype == model.genotype()  # the last check saw the final weights
    alphas = np.load(tmp_path / "darts_plus" / "alphas.npz")
    assert alphas["normal"].shape == (4, 14, 8)
    assert not np.array_equal(alphas["normal"][0], alphas["normal"][-1])  # the search moved
