"""``eecontrol replay``: a finished sweep replayed under every stopping policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from eecontrol.cli import main
from eecontrol.sweep.replay import (
    Policy,
    Sweep,
    SweepRun,
    early_stopping_epochs,
    load_optuna,
    load_recorded,
    replay,
    replay_order,
    score,
)

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
DIGITS = DATA / "digits_curves.json"
CONCRETE = DATA / "concrete_curves.json"
CHEAP = {
    "none": Policy(optuna.pruners.NopPruner),
    "early_stopping_p5": Policy(None, 5),
    "median": Policy(optuna.pruners.MedianPruner),
    "successive_halving": Policy(optuna.pruners.SuccessiveHalvingPruner),
}


@pytest.fixture(scope="module")
def digits() -> Sweep:
    assert DIGITS.exists(), "the recorded digits sweep is missing"
    return load_recorded(DIGITS)


@pytest.fixture(scope="module")
def concrete() -> Sweep:
    assert CONCRETE.exists(), "the recorded concrete sweep is missing"
    return load_recorded(CONCRETE)


def _lightning_epochs(values, mode: str, patience: int) -> int:
    es = EarlyStopping(monitor="m", mode=mode, patience=patience)
    for epoch, value in enumerate(values):
        stop, _ = es._evaluate_stopping_criteria(torch.tensor(value))
        if stop:
            return epoch + 1
    return len(values)


@pytest.mark.parametrize("patience", [3, 5, 10])
def test_early_stopping_rule_is_lightnings(digits, concrete, patience):
    for sweep in (digits, concrete):
        ours = [early_stopping_epochs(r.values, sweep.mode, patience) for r in sweep.runs]
        theirs = [_lightning_epochs(r.values, sweep.mode, patience) for r in sweep.runs]
        assert ours == theirs
        assert min(ours) < sweep.budget  # it does stop some runs


def test_replay_matches_a_plain_optuna_loop(digits):
    """The ask/tell replay decides as ``study.optimize`` with the same pruner would."""
    order = list(np.random.default_rng(3).permutation(len(digits.runs)))
    rows = replay_order(digits, order, Policy(optuna.pruners.SuccessiveHalvingPruner))
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner()
    )
    epochs = []

    def objective(trial: optuna.Trial) -> float:
        values = digits.runs[order[trial.number]].values
        for step, v in enumerate(values):
            trial.report(v, step)
            if step + 1 < len(values) and trial.should_prune():
                epochs.append(step + 1)
                raise optuna.TrialPruned()
        epochs.append(len(values))
        return max(values)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=len(order))
    assert [r["epochs"] for r in rows] == epochs
    assert sum(epochs) < len(order) * digits.budget / 3  # successive halving bites here


def test_replay_table_on_the_recorded_digits_sweep(digits):
    result = replay(digits, CHEAP, orders=2)
    table = result["policies"]
    full = len(digits.runs) * digits.budget
    assert result["runs"] == 48 and result["budget"] == 50
    assert table["none"]["epochs"] == full and table["none"]["regret_any"] == 0.0
    for name, row in table.items():
        assert len(digits.runs) <= row["epochs"] <= full, name
        assert row["regret_any"] >= 0 and row["regret_complete"] >= 0, name
        assert row["saving_x"] == pytest.approx(full / row["epochs"])
    assert table["successive_halving"]["saving_x"] > table["median"]["saving_x"] > 1.5
    assert table["successive_halving"]["stopped"] > 30


def test_min_mode_regret_and_pruning(concrete):
    truth = concrete.truth()
    best, worst = int(np.argmin(truth)), int(np.argmax(truth))
    rows = [
        {"run": best, "epochs": 3, "value": truth[worst] + 1.0, "complete": False},
        {"run": worst, "epochs": 60, "value": truth[worst], "complete": True},
    ]
    s = score(rows, truth, "min")
    # the best run was stopped while it still looked worse than the worst one
    assert s["regret_complete"] == pytest.approx(truth[worst] - truth[best])
    assert s["regret_any"] == pytest.approx(truth[worst] - truth[best])
    rows[0]["value"] = truth[best]
    assert score(rows, truth, "min")["regret_any"] == 0.0
    result = replay(concrete, CHEAP, orders=1)
    diverged = [i for i, r in enumerate(concrete.runs) if max(r.values) >= 1e3]
    assert diverged, "the recorded concrete sweep has diverged runs"
    rows = replay_order(concrete, list(range(len(concrete.runs))), CHEAP["median"])
    by_run = {r["run"]: r for r in rows}
    # a minimised loss: the median pruner stops the runs that blew up, not the best one
    assert all(not by_run[i]["complete"] for i in diverged if i > 5)
    assert by_run[best]["complete"]
    assert result["mode"] == "min" and result["policies"]["median"]["regret_any"] >= 0


def _study_from(sweep: Sweep, url: str, name: str, n: int) -> None:
    """A real study in SQLite: ``n`` COMPLETE trials of the sweep, a PRUNED and a RUNNING one."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)}
    for run in sweep.runs[:n]:
        study.add_trial(  # one transaction per trial (a report per commit is slow on SQLite)
            optuna.trial.create_trial(
                params={"lr": float(run.hparams["lr"])},
                distributions=dist,
                value=max(run.values),
                intermediate_values=dict(enumerate(run.values)),
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 0.5}, value=None
        )
    )
    study.ask()  # a running trial


def test_optuna_study_source_replays_like_the_recording(digits, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study_from(digits, url, "s", 10)
    with pytest.warns(UserWarning, match="2 run"):
        sweep = load_optuna(url, "s")
    assert len(sweep.runs) == 10 and len(sweep.skipped) == 2
    assert [r.values for r in sweep.runs] == [r.values for r in digits.runs[:10]]
    same = Sweep(digits.runs[:10], "val_acc", "max", "json")
    a, b = replay(sweep, CHEAP, orders=2), replay(same, CHEAP, orders=2)
    for name in CHEAP:
        assert a["policies"][name]["epochs"] == b["policies"][name]["epochs"], name
    cheap = ["--policies", *CHEAP]
    assert main(["replay", url, "--study", "s", "--orders", "1", *cheap]) == 0
    out = capsys.readouterr().out
    assert "10 runs x 50 validations" in out and "successive_halving" in out
    assert "trial 10: PRUNED" in out and "trial 11: RUNNING" in out


def test_cli_on_the_recorded_json_writes_table_and_front(tmp_path, capsys):
    # the cheap policies only: the in-run rule's fits are what the benchmark measures
    png, js = tmp_path / "front.png", tmp_path / "table.json"
    args = ["replay", str(DIGITS), "--orders", "2", "--plot", str(png), "--json", str(js)]
    args += ["--policies", *CHEAP]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "48 runs x 50 validations of val_acc (max)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = json.loads(js.read_text())
    assert set(table["policies"]) == set(CHEAP) and table["bounds"] == [0.0, 1.0]


def test_cli_errors_are_clear(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["replay", str(empty)]) == 2
    assert "holds no Hydra job directories" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="unfinished", storage=url)
    trial = study.ask()
    trial.report(0.3, 0)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert main(["replay", url, "--study", "unfinished"]) == 2
    err = capsys.readouterr().err
    assert "no finished (COMPLETE) trial" in err and "unfinished" in err
    assert main(["replay", url, "--study", "other"]) == 2
    assert "no study 'other'" in capsys.readouterr().err
    assert main(["replay", url]) == 2
    assert "pass --study NAME" in capsys.readouterr().err
    assert main(["replay", str(DIGITS), "--orders", "0"]) == 2
    assert "--orders must be >= 1" in capsys.readouterr().err
    assert main(["replay", str(DIGITS), "--policies", "median", "asha"]) == 2
    assert "unknown --policies ['asha']" in capsys.readouterr().err


def test_a_sweep_needs_two_full_runs():
    runs = [SweepRun("0", (0.1, 0.2, 0.3)), SweepRun("1", (0.1, 0.2))]
    from eecontrol.sweep.replay import _finish

    with pytest.raises(ValueError, match="at least 2 runs trained to the full budget"):
        _finish(runs, [], "m", "max", "src")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        _finish(runs, [], "m", "up", "src")


def test_policies_with_each_forecaster(digits):
    """Issue 24: the replay offers our policies with every forecaster; the default one keeps
    the plain names, the others carry the forecaster's name, and each pruner uses it."""
    from eecontrol.sweep.replay import default_policies

    plain = default_policies(digits.budget, (0, 1))
    both = default_policies(digits.budget, (0, 1), forecasters=("pfn", "ensemble"))
    assert set(plain) < set(both)
    extra = sorted(set(both) - set(plain))
    assert extra == [
        "ours_both_ensemble",
        "ours_in_run_ensemble",
        "ours_predictive_halving_ensemble",
        "ours_sweep_rule_ensemble",
    ]
    for name in extra:
        assert both[name].pruner().forecaster == "ensemble"
    assert plain["ours_in_run"].pruner().forecaster == "pfn"  # the default (issue 24)
    named = default_policies(digits.budget, (0, 1), forecasters=("pfn", "forecast"))
    assert named["ours_in_run_forecast"].pruner().forecaster == "forecast"
    with pytest.raises(ValueError, match="`forecaster` must be one of"):
        default_policies(digits.budget, (0, 1), forecasters=("lcpfn",))
    # replayed: the ensemble's in-run rule (a small bootstrap) on 3 runs cut to 12 points
    from eecontrol.sweep.pruner import LearningCurvePruner

    runs = [SweepRun(r.name, r.values[:12], r.hparams) for r in digits.runs[:3]]
    small = Sweep(runs, digits.metric, digits.mode, "digits[:3, :12]")
    policy = Policy(
        lambda: LearningCurvePruner(
            horizon=12, cross_run=False, forecaster="ensemble", n_bootstrap=10, bounds=(0, 1)
        )
    )
    result = replay(small, {"none": both["none"], "ensemble": policy}, orders=1)
    assert 0 < result["policies"]["ensemble"]["epochs"] <= result["policies"]["none"]["epochs"]


def test_cli_forecaster_option(tmp_path, capsys):
    js = tmp_path / "t.json"
    args = ["replay", str(DIGITS), "--orders", "1", "--forecaster", "forecast", "ensemble"]
    args += ["--policies", "none", "ours_predictive_halving_ensemble", "--json", str(js)]
    assert main(args) == 0
    assert set(json.loads(js.read_text())["policies"]) == {
        "none",
        "ours_predictive_halving_ensemble",
    }
    capsys.readouterr()
    assert main(["replay", str(DIGITS), "--forecaster", "lcpfn"]) == 2
    err = capsys.readouterr().err
    assert "--forecaster" in err and "'forecast', 'ensemble', 'pfn'" in err
    try:
        import eecontrol.core.curves.pfn  # noqa: F401
    except ImportError:
        assert main(["replay", str(DIGITS), "--forecaster", "pfn"]) == 2
        assert "forecaster 'pfn' needs eecontrol.core.curves.pfn" in capsys.readouterr().err
