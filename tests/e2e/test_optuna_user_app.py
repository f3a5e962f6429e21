"""eecontrol's sweep configs from a user's own Hydra app (``hydra.searchpath=[pkg://eecontrol.conf]``)."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR

pytestmark = pytest.mark.e2e

APP = """
import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from eecontrol.sweep.trial import pruning_callbacks


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    pl.seed_everything(cfg.seed)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=pruning_callbacks(cfg, []),  # reports to the sweep's trial, prunes
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    if cfg.optuna_trial.number == 1:
        raise RuntimeError("trial 1 breaks after training")  # a failing job
    return float(trainer.callback_metrics["val/acc"])


if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - data: digits
  - model: digits_cnn
  - callbacks: none
  - logger: none
  - trainer: default
  - paths: default
  - hydra: default
  - hparams_search: null
  - _self_
task_name: my_app
seed: 0
optimized_metric: val/acc
optimized_mode: max
"""


def test_digits_optuna_from_a_users_own_hydra_app(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "my_app.py").write_text(APP)
    out = subprocess.run(
        [
            sys.executable,
            "my_app.py",
            "-m",
            "hydra.searchpath=[pkg://eecontrol.conf]",
            "hparams_search=digits_optuna",
            "hydra/launcher=basic",
            "hydra.sweeper.n_trials=3",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=2",
            "trainer.enable_model_summary=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert out.returncode == 0, f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    sweep = tmp_path / "logs" / "my_app" / "sweeps" / "digits_optuna"
    assert (sweep / "optimization_results.yaml").exists()
    study = optuna.load_study(
        study_name="digits_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}"
    )
    # a job that raised is a FAIL trial (with its error) and the sweep went on
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert "RuntimeError: trial 1 breaks" in study.trials[1].system_attrs[FAIL_REASON_ATTR]
    # the app's pruning callback reported every validation of its trial
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)
    assert study.trials[0].params["model.net.hidden"] in (16, 32, 64, 128)
