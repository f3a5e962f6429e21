"""Parity with the official Optuna sweeper (issue 26), through real Hydra multiruns of a tiny
app (no training: each job computes its objective in microseconds): enqueued trials,
``custom_search_space``, ``max_failure_rate``, multi-objective studies, in both modes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

APP = textwrap.dedent(
    """
    import hydra
    from omegaconf import DictConfig


    @hydra.main(version_base="1.3", config_path=".", config_name="config")
    def main(cfg: DictConfig):
        if cfg.fail_above is not None and cfg.x > cfg.fail_above:
            raise RuntimeError(f"x={cfg.x} is above {cfg.fail_above}")
        if cfg.multi:  # two objectives: a score to maximise and a cost to minimise
            return [1.0 - (cfg.x - 0.3) ** 2, 10.0 * cfg.x]
        return -((cfg.x - 0.3) ** 2) + (0.05 if cfg.extra == "a" else 0.0)


    if __name__ == "__main__":
        main()
    """
)
EXTEND = textwrap.dedent(
    """
    def extend(cfg, trial):
        # a conditional parameter: z exists only when extra == "a"
        if trial.suggest_categorical("extra", ["a", "b"]) == "a":
            trial.suggest_float("z", 0.0, 1.0)
    """
)
CONFIG = textwrap.dedent(
    """
    defaults:
      - override hydra/sweeper: eecontrol_optuna
      - _self_
    x: 0.0
    extra: null
    z: null
    fail_above: null
    multi: false
    optimized_metric: obj
    hydra:
      sweep:
        dir: sweep
        subdir: ${hydra.job.num}
      sweeper:
        direction: maximize
        n_trials: 6
        n_jobs: 1
        sampler:
          seed: 0
        params:
          x: interval(0.0, 1.0)
    """
)


def _app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "space_ext.py").write_text(EXTEND)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


def _sweep(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "app.py", "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )
    if ok:
        assert out.returncode == 0, f"STDOUT\n{out.stdout[-3000:]}\nSTDERR\n{out.stderr[-3000:]}"
    return out


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """The tiny app's directory (app, config and search-space extension written)."""
    return _app(tmp_path)


@pytest.fixture(params=["async", "batch"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each test runs in both sweeper modes."""
    return request.param


def _study(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{cwd / 'sweep' / 'optuna.db'}")


def test_an_enqueued_known_good_trial_runs_first(cwd, mode):
    _sweep(cwd, f"hydra.sweeper.mode={mode}", "hydra.sweeper.enqueue_trials=[{x:0.3}]")
    trials = _study(cwd).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"x": 0.3} and trials[0].value == pytest.approx(0.0)
    assert all(t.params["x"] != 0.3 for t in trials[1:])
    # a rerun with more trials does not run the enqueued configuration again
    _sweep(
        cwd,
        f"hydra.sweeper.mode={mode}",
        "hydra.sweeper.enqueue_trials=[{x:0.3}]",
        "hydra.sweeper.n_trials=7",
    )
    trials = _study(cwd).trials
    assert len(trials) == 7 and sum(t.params["x"] == 0.3 for t in trials) == 1


def test_custom_search_space_adds_a_conditional_parameter(cwd, mode):
    _sweep(
        cwd,
        f"hydra.sweeper.mode={mode}",
        "hydra.sweeper.custom_search_space=space_ext.extend",
        "hydra.sweeper.n_trials=8",
    )
    trials = _study(cwd).trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    with_a = [t for t in trials if t.params["extra"] == "a"]
    with_b = [t for t in trials if t.params["extra"] == "b"]
    assert with_a and with_b, [t.params for t in trials]
    assert all("z" in t.params for t in with_a) and not any("z" in t.params for t in with_b)
    for t in trials:  # the job got the extra parameters as overrides
        cfg = OmegaConf.load(cwd / "sweep" / str(t.number) / ".hydra" / "config.yaml")
        assert cfg.extra == t.params["extra"]
        assert cfg.z == (pytest.approx(t.params["z"]) if "z" in t.params else None)
    assert all(t.value > -1.0 + 0.05 - 1e-9 or t.params["extra"] == "b" for t in trials)


def test_a_bad_custom_search_space_names_the_option(tmp_path):
    cwd = _app(tmp_path)
    out = _sweep(cwd, "hydra.sweeper.custom_search_space=space_ext.nope", ok=False)
    assert out.returncode != 0
    assert "hydra.sweeper.custom_search_space=" in out.stderr and "space_ext.nope" in out.stderr
    assert "is not an importable function" in out.stderr


def test_a_sweep_above_max_failure_rate_stops_with_a_clear_message(cwd, mode):
    out = _sweep(
        cwd,
        f"hydra.sweeper.mode={mode}",
        "fail_above=0.2",  # most of [0, 1] fails
        "hydra.sweeper.max_failure_rate=0.25",
        "hydra.sweeper.n_trials=20",
        ok=False,
    )
    assert out.returncode != 0
    assert "hydra.sweeper.max_failure_rate=0.25" in out.stderr and "the sweep stops" in out.stderr
    trials = _study(cwd).trials
    assert len(trials) < 20  # it stopped early
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and len(failed) / len(trials) > 0.25
    results = OmegaConf.load(cwd / "sweep" / "optimization_results.yaml")
    assert results.trials.fail == len(failed)
    # without the limit, failures never end the sweep
    ok = _sweep(
        cwd, f"hydra.sweeper.mode={mode}", "fail_above=0.2", "hydra.sweeper.study_name=free"
    )
    assert ok.returncode == 0


def test_a_multi_objective_sweep_writes_its_pareto_front(cwd, mode):
    _sweep(
        cwd,
        f"hydra.sweeper.mode={mode}",
        "multi=true",
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.n_trials=8",
    )
    study = _study(cwd)
    assert len(study.directions) == 2
    trials = study.trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 for t in trials)
    results = OmegaConf.to_container(OmegaConf.load(cwd / "sweep" / "optimization_results.yaml"))
    front = results["best_trials"]
    expected = {t.number for t in study.best_trials}
    assert front and {f["number"] for f in front} == expected
    for f in front:  # no trial of the front is dominated by another trial
        t = trials[f["number"]]
        assert f["values"] == pytest.approx(list(t.values)) and f["params"] == t.params
        assert not any(
            u.values[0] >= t.values[0] and u.values[1] <= t.values[1] and u.values != t.values
            for u in trials
        )
    assert results["directions"] == ["maximize", "minimize"]
    from rich.console import Console

    from eecontrol.sweep.results import print_study  # `eecontrol report`'s trial table

    console = Console(record=True, width=200)
    assert print_study(cwd / "sweep", console)
    out = console.export_text()
    assert "8 complete" in out and "Pareto front (maximize, minimize)" in out


def test_async_joblib_workers_on_sqlite_never_overshoot_the_budget(tmp_path):
    """Two workers racing for the last trials of instant jobs: the ask lock of a SQLite
    study keeps them from asking one trial too many (a surplus trial would be FAIL)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cwd = _app(tmp_path)
    _sweep(
        cwd,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=12",
    )
    study = _study(cwd)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12, [
        (t.number, t.state.name, t.system_attrs.get("eecontrol:fail_reason")) for t in trials
    ]
    workers = {t.user_attrs["eecontrol:worker"] for t in trials}
    assert workers == {0, 1}  # both workers asked for trials
