"""Every config in conf/ composes with hydra.compose and its targets instantiate."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import eecontrol.conf
import hydra
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

CONF = Path(eecontrol.conf.__file__).parent
GROUPS = [
    "callbacks",
    "data",
    "model",
    "trainer",
    "logger",
    "experiment",
    "hparams_search",
    "paths",
    "hydra",
    "debug",
]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="eecontrol.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _resolve_hydra_interpolations(cfg, tmp_path: Path) -> None:
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")


def test_every_group_is_present():
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ has no config"


CASES = [
    (g, o)
    for g in ["callbacks", "data", "model", "trainer", "logger", "experiment"]
    for o in _options(g)
]


@pytest.mark.parametrize(("group", "option"), CASES)
def test_config_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"] if group != "experiment" else [f"experiment={option}"]
    if group == "callbacks" and option == "dropout_schedule":
        overrides.append("callbacks.dropout_schedule.mode=early")
    cfg = _compose(overrides)
    _resolve_hydra_interpolations(cfg, tmp_path)
    cfg_no_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    data = hydra.utils.instantiate(cfg_no_hydra.data)
    model = hydra.utils.instantiate(cfg_no_hydra.model)
    assert data is not None and model is not None
    for name, conf in (cfg_no_hydra.get("callbacks") or {}).items():
        assert isinstance(hydra.utils.instantiate(conf), Callback), name
    if group == "logger":
        for conf in (cfg_no_hydra.get("logger") or {}).values():
            if "wandb" not in conf._target_:  # instantiating W&B starts a run; e2e covers it
                hydra.utils.instantiate(conf)
    if group == "trainer" and option != "gpu":
        hydra.utils.instantiate(cfg_no_hydra.trainer, logger=False)


def test_required_key_is_reported():
    cfg = _compose(["callbacks=dropout_schedule"])
    with pytest.raises(Exception, match="mode"):
        hydra.utils.instantiate(
            OmegaConf.masked_copy(cfg, ["callbacks"]).callbacks.dropout_schedule
        )


@pytest.mark.parametrize("option", _options("hparams_search"))
def test_hparams_search_composes(option):
    cfg = _compose([f"hparams_search={option}"])
    assert cfg.hydra.sweeper.params


def test_configs_found_from_a_users_own_hydra_app(tmp_path):
    """A user's app in another directory composes eecontrol's groups through the searchpath."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text(
        textwrap.dedent(
            """
            defaults:
              - callbacks: early_dropout
              - model: digits_cnn
              - _self_
            seed: 1
            hydra:
              searchpath:
                - pkg://eecontrol.conf
            """
        )
    )
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import hydra
            from hydra.utils import instantiate

            @hydra.main(version_base="1.3", config_path="conf", config_name="mine")
            def main(cfg):
                cb = instantiate(cfg.callbacks.early_dropout)
                model = instantiate(cfg.model)
                print("OK", type(cb).__name__, type(model).__name__)

            main()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "app.py", "hydra.run.dir=out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "OK DropoutSchedule DigitsClassifier" in out.stdout


def test_slurm_sweep_config_uses_submitit_and_a_server_store(monkeypatch, tmp_path):
    """hparams_search=digits_curves_slurm: SLURM jobs through submitit, the eecontrol_optuna
    grid sweeper, its study and the curve store on the database of the env var."""
    url = "postgresql://user:secret@dbhost:5432/curves"
    monkeypatch.setenv("EECONTROL_CURVE_STORE", url)
    cfg = _compose(
        [
            "hparams_search=digits_curves_slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.array_parallelism=3",
        ]
    )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.partition == "gpu" and launcher.timeout_min == 60
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("eecontrol_optuna_sweeper.EecontrolOptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.GridSampler"
    assert sweeper.pruner._target_ == "optuna.pruners.NopPruner"
    assert sweeper.n_trials is None and sweeper.direction == "maximize"
    assert sweeper.n_jobs == 3  # one batch = the SLURM array's parallelism
    assert sweeper.storage == url  # the study on the curve store's database...
    assert OmegaConf.to_container(sweeper)["storage"] == "${oc.env:EECONTROL_CURVE_STORE}"
    assert sweeper.params["model.optimizer.lr"].startswith("0.003,")
    # ... in a sweep directory named after the study (rerun = resume)
    raw_dir = OmegaConf.to_container(cfg.hydra.sweep)["dir"]
    assert raw_dir.endswith("/multiruns/${hydra.sweeper.study_name}")
    assert sweeper.study_name == "digits-lr-sweep"
    _resolve_hydra_interpolations(cfg, tmp_path)
    HydraConfig.instance().set_config(cfg)  # as in a job: ${hydra:...} resolves
    try:
        curve = cfg.callbacks.curve_stopping
        assert curve.store == url and curve.bounds == [0, 1]
        assert curve.study_name == "digits-lr-sweep-curves"  # never the sweeper's own study
        assert cfg.hydra.sweep.dir == str(tmp_path / "logs/train/multiruns/digits-lr-sweep")
        cfg_no_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        cb = hydra.utils.instantiate(cfg_no_hydra.callbacks.curve_stopping)
        assert cb.store_url == url  # the store opens at fit start, on the cluster
    finally:
        HydraConfig.instance().cfg = None
    # the launcher class itself loads (the plugin is installed with the dev/slurm extras)
    launcher_cls = hydra.utils.get_class(launcher._target_)
    assert launcher_cls.__name__ == "SlurmLauncher"


DEBUG_EXPECTED = {
    "default": {"max_epochs": 1, "detect_anomaly": True},
    "fdr": {"fast_dev_run": True},
    "limit": {"max_epochs": 3, "limit_train_batches": 3, "limit_val_batches": 3},
    "overfit": {"max_epochs": 20, "overfit_batches": 3},
    "profiler": {"profiler": "simple", "max_epochs": 1},
}


def test_every_debug_config_is_tested():
    assert sorted(DEBUG_EXPECTED) == _options("debug")


@pytest.mark.parametrize("option", sorted(DEBUG_EXPECTED))
def test_debug_config_sets_the_trainer_and_a_csv_logger(option, tmp_path):
    """debug=<option> (lightning-hydra-template's group): CPU, CSV only, its own task name."""
    cfg = _compose([f"debug={option}"])
    for key, value in DEBUG_EXPECTED[option].items():
        assert cfg.trainer[key] == value, (option, key)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert cfg.task_name == "debug"
    assert list(cfg.logger) == ["csv"], "debug runs write CSV only (no W&B run)"
    assert cfg.hydra.job_logging.root.level == "DEBUG"
    _resolve_hydra_interpolations(cfg, tmp_path)
    cfg_no_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    hydra.utils.instantiate(cfg_no_hydra.trainer, logger=False)
