"""``SweeperCore``'s own logic on real Optuna storages: arguments, direction, recovery."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR, OWNER_ATTR, owner_id
from eecontrol.sweep.sweeper import SweeperCore, config_text
from eecontrol.sweep.trial import OBJECTIVE_ATTR, PRUNED_ATTR


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "up"}, "hydra.sweeper.direction"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials"),
        ({"n_jobs": 1.5}, "hydra.sweeper.n_jobs"),
        ({"max_retries": -1}, "hydra.sweeper.max_retries"),
        ({"timeout": 0}, "hydra.sweeper.timeout"),
        ({"report_step": "epoch"}, "hydra.sweeper.report_step"),
        ({"mode": "fast"}, "hydra.sweeper.mode"),
        ({"heartbeat_interval": 0}, "hydra.sweeper.heartbeat_interval"),
        ({"grace_period": 1.5}, "hydra.sweeper.grace_period"),
    ],
)
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweeperCore(**kwargs)


def _core(direction, optimized_mode) -> SweeperCore:
    core = SweeperCore(direction=direction)
    cfg = OmegaConf.create(
        {
            "optimized_metric": "val/acc",
            "optimized_mode": optimized_mode,
            "hydra": {"sweep": {"dir": "x"}},
        }
    )
    core.setup(cfg, launcher=None)
    return core


def test_the_direction_comes_from_optimized_mode_and_contradictions_are_errors():
    assert _core(None, "min")._direction() == "minimize"
    assert _core("max", None)._direction() == "maximize"
    assert _core("maximize", "max")._direction() == "maximize"
    with pytest.raises(ValueError, match="contradicts optimized_mode=min"):
        _core("maximize", "min")._direction()
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.direction"):
        _core(None, None)._direction()


def test_the_trial_identity_round_trips_through_the_override_parser():
    ident = {
        "study": "my study",
        "number": 3,
        "monitor": "val/acc",
        "pruner": {"_target_": "eecontrol.sweep.pruner.LearningCurvePruner", "bounds": [0, 1]},
    }
    [parsed] = OverridesParser.create().parse_overrides([f"++optuna_trial={config_text(ident)}"])
    assert parsed.value() == ident


def test_a_rerun_settles_trials_its_dead_jobs_left_running(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_owner = owner_id(int(dead.stdout))  # that process has ended
    trials = [study.ask() for _ in range(4)]
    for t in trials:
        study._storage.set_trial_system_attr(t._trial_id, OWNER_ATTR, dead_owner)
    trials[0].report(0.5, 0)
    study._storage.set_trial_system_attr(trials[0]._trial_id, OBJECTIVE_ATTR, 0.5)
    trials[1].report(0.2, 0)
    study._storage.set_trial_system_attr(trials[1]._trial_id, PRUNED_ATTR, 0)
    study._storage.set_trial_system_attr(trials[3]._trial_id, OWNER_ATTR, owner_id())  # alive
    SweeperCore()._recover(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    assert study.trials[0].value == 0.5
    assert "ended without finishing it" in study.trials[2].system_attrs[FAIL_REASON_ATTR]


def test_the_storage_takes_a_url_or_a_sqlite_path_as_the_curve_store_does(tmp_path):
    """hparams_search=digits_curves_slurm gives both the same EECONTROL_CURVE_STORE."""
    url = "postgresql+psycopg://user:pw@host/db"
    for storage, expected in (
        (url, url),
        (str(tmp_path / "sub" / "curves.db"), f"sqlite:///{tmp_path / 'sub' / 'curves.db'}"),
    ):
        core = SweeperCore(storage=storage)
        core.setup(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}), launcher=None)
        assert core._storage_url() == expected
    assert (tmp_path / "sub").is_dir()  # the path's folder is made, as for the curve store


# --- issue 26: samplers, drivers, range, reruns -------------------------------------------


def _extras() -> dict[str, list[str]]:
    """pyproject.toml's optional dependencies (tomllib: Python 3.11+; else its backport)."""
    from pathlib import Path

    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    return toml.loads(text)["project"]["optional-dependencies"]


def _space(*args: str):
    from eecontrol.sweep.space import parse_search_space

    return parse_search_space(list(args))


def _ask_tell(study, space, n: int) -> list[dict]:
    """Asks ``n`` trials over ``space`` and tells each a value made from its parameters."""
    out = []
    for _ in range(n):
        t = study.ask(space.distributions)
        study.tell(t, sum(float(v) for v in t.params.values()))
        out.append(dict(t.params))
    return out


def test_the_cmaes_preset_samples(tmp_path):
    """Defect (3): `eecontrol_sampler=cmaes` crashed with ModuleNotFoundError: cmaes."""
    from hydra_plugins.eecontrol_optuna_sweeper.eecontrol_optuna_sweeper import SAMPLERS

    space = _space("x=interval(0.0, 1.0)", "y=interval(-1.0, 1.0)")
    core = SweeperCore(sampler={**SAMPLERS["cmaes"], "seed": 0, "n_startup_trials": 2})
    sampler = core._sampler(space)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", sampler=sampler)
    params = _ask_tell(study, space, 5)  # trials 2..4 come from CMA-ES itself
    assert len(params) == 5 and all(0.0 <= p["x"] <= 1.0 for p in params)
    assert len({(p["x"], p["y"]) for p in params}) == 5


def test_a_missing_sampler_package_names_the_extra():
    from eecontrol.sweep.sampling import require_module

    with pytest.raises(ImportError, match=r"eecontrol\[sweeps\]") as err:
        require_module("no_such_module_for_eecontrol", "CmaEsSampler", "sweeps")
    assert "no_such_module_for_eecontrol" in str(err.value) and "CmaEsSampler" in str(err.value)


def test_partial_fixed_sampler_by_target_gets_no_seed(tmp_path):
    """Defect (4): the presets' `seed` key reached PartialFixedSampler, which takes none."""
    from hydra_plugins.eecontrol_optuna_sweeper.eecontrol_optuna_sweeper import SAMPLERS

    cfg = {
        **SAMPLERS["tpe"],  # what `hydra.sweeper.sampler._target_=...` leaves: seed: null
        "_target_": "optuna.samplers.PartialFixedSampler",
        "seed": 0,  # hparams_search=digits_optuna sets sampler.seed: 0
        "fixed_params": {"x": 0.25},
        "base_sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
    }
    space = _space("x=interval(0.0, 1.0)", "y=interval(0.0, 1.0)")
    sampler = SweeperCore(sampler=cfg)._sampler(space)
    assert isinstance(sampler, optuna.samplers.PartialFixedSampler)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", sampler=sampler)
    params = _ask_tell(study, space, 3)
    assert [p["x"] for p in params] == [0.25] * 3
    assert len({p["y"] for p in params}) == 3


@pytest.mark.parametrize("target", ["TPESampler", "RandomSampler"])
def test_a_seeded_rerun_asks_new_parameters(tmp_path, target):
    """Defect (1): a rerun (a new sampler on the loaded study) repeated the earlier trials."""
    space = _space(
        "lr=tag(log, interval(1e-4, 1e-1))", "dropout=interval(0.0, 0.5)", "h=choice(16,32,64)"
    )
    cfg = {"_target_": f"optuna.samplers.{target}", "seed": 0}
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = _ask_tell(
        optuna.create_study(
            storage=url, study_name="s", sampler=SweeperCore(sampler=cfg)._sampler(space)
        ),
        space,
        4,
    )
    # the rerun: a new process builds the same seeded sampler and loads the study
    rerun = optuna.load_study(
        storage=url, study_name="s", sampler=SweeperCore(sampler=cfg)._sampler(space)
    )
    second = _ask_tell(rerun, space, 4)
    assert len(first) == len(second) == 4
    keys = [(p["lr"], p["dropout"], p["h"]) for p in first + second]
    assert len(set(keys)) == 8, "a rerun repeated parameter sets of the earlier sweep"
    # and seeding stays deterministic: the same history gives the same proposals
    again = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'p.db'}",
        study_name="s",
        sampler=SweeperCore(sampler=cfg)._sampler(space),
    )
    assert _ask_tell(again, space, 4) == first


def test_postgresql_urls_use_the_installed_psycopg3_driver():
    """Defect (5): docs say postgresql+psycopg (psycopg 3), the slurm extra installed psycopg2."""
    import importlib.util
    from pathlib import Path

    from eecontrol.sweep.common import driver_url

    root = Path(__file__).resolve().parents[2]
    extras = _extras()
    assert any(r.startswith("psycopg[binary]") for r in extras["slurm"]), extras["slurm"]
    assert not any("psycopg2" in r for r in extras["slurm"] + extras["dev"])
    assert "psycopg2" not in (root / "conf/hparams_search/digits_curves_slurm.yaml").read_text()
    assert "psycopg 3" in (root / "docs/sweeps.md").read_text()
    assert importlib.util.find_spec("psycopg") is not None
    if importlib.util.find_spec("psycopg2") is None:  # as the extras install it
        assert driver_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert driver_url("postgresql+psycopg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert driver_url("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert driver_url("sqlite:///x.db") == "sqlite:///x.db"


def test_cmaes_is_in_the_sweeps_and_dev_extras():
    extras = _extras()
    assert any(r.startswith("cmaes") for r in extras["sweeps"])
    assert any(r.startswith("cmaes") for r in extras["dev"])


def test_range_warns_when_its_stop_is_a_value_the_official_plugin_samples():
    from eecontrol.sweep.space import RangeStopWarning

    with pytest.warns(RangeStopWarning, match=r"range\(1, 5, 1\) excludes 5.*range\(1, 6, 1\)"):
        space = _space("n=range(1, 5)")
    assert space.distributions["n"].high == 4
    with pytest.warns(RangeStopWarning, match="excludes 2.0"):
        _space("s=range(0.5, 2.0, 0.5)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stop off the step grid: both readings agree
        space = _space("n=range(1, 6, 2)")
    assert space.distributions["n"].high == 5
