"""Real runs of the ``eecontrol-train`` console script on the digits data (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import wandb_summary

pytestmark = pytest.mark.e2e

TRAIN = shutil.which("eecontrol-train") or str(Path(sys.executable).parent / "eecontrol-train")


def _run(
    args: list[str], cwd: Path, timeout: int = 300, status: int = 0
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)  # the messages as a user sees them
    out = subprocess.run(
        [TRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == status, (
        f"exit {out.returncode}\nSTDOUT\n{out.stdout[-3000:]}\nSTDERR\n{out.stderr[-5000:]}"
    )
    return out


def test_single_run_with_a_method_prints_decisions_and_paths(tmp_path):
    out = _run(["experiment=early_dropout", "trainer.max_epochs=3"], tmp_path)
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert "eecontrol decisions" in out.stdout and "dropout_off" in out.stdout
    assert str(run) in out.stdout.replace("\n", "").replace(" ", "") or run.name in out.stdout
    decisions = [json.loads(x) for x in (run / "decisions.jsonl").read_text().splitlines()]
    assert [d["action"] for d in decisions] == ["schedule", "dropout_off"]
    metrics = (run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "dropout/rate" in metrics and "test/acc" in metrics
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("*.wandb"))
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_multirun_makes_separate_runs_and_wandb_runs(tmp_path):
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401

        launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    except ImportError:
        launcher = []
    _run(["-m", "trainer.max_epochs=1,2", "test=false", *launcher], tmp_path, timeout=600)
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    ids = set()
    for job, epochs in zip(jobs, [1, 2]):
        wandb_runs = list((job / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1, f"{job}: W&B runs {wandb_runs}"
        ids.add(wandb_runs[0].name.rsplit("-", 1)[-1])
        rows = (job / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        epoch_col = header.index("epoch")
        assert (
            max(int(float(r.split(",")[epoch_col])) for r in rows[1:] if r.split(",")[epoch_col])
            == epochs - 1
        )
    assert len(ids) == 2, "multirun jobs share a W&B run"


def test_resume_from_last_checkpoint_through_the_cli(tmp_path):
    """A Hydra-configured run (partial optimizer in the config) resumes from last.ckpt."""
    _run(["trainer.max_epochs=2", "test=false", "logger=csv"], tmp_path)
    first = next((tmp_path / "logs" / "train" / "runs").iterdir())
    ckpt = first / "checkpoints" / "last.ckpt"
    out = _run(["trainer.max_epochs=3", "test=false", "logger=csv", f"ckpt_path={ckpt}"], tmp_path)
    assert "Restoring states from the checkpoint" in out.stderr + out.stdout or ckpt.exists()
    second = max((tmp_path / "logs" / "train" / "runs").iterdir())
    decisions = [json.loads(x) for x in (second / "decisions.jsonl").read_text().splitlines()]
    # the restored plan (2 epochs), the plan of the longer resumed run (3 epochs: a new
    # max_epochs changes the plan, and CES records the plan it now follows), the candidates
    assert [d["action"] for d in decisions] == ["plan", "plan", "candidates"]
    planned = [d["evidence"]["planned_candidates"] for d in decisions[:2]]
    assert planned == [2, 3]
    assert decisions[-1]["evidence"]["candidates"] == 3  # 2 restored from the checkpoint + 1 new


def test_grades_tiny_experiment_freezes_every_matrix_stops_and_logs_a_wandb_histogram(tmp_path):
    """``experiment=grades_tiny``: a random 2-layer BERT on real BBC News text."""
    _run(["experiment=grades_tiny", "test=false"], tmp_path)
    run = next((tmp_path / "logs" / "train" / "runs").iterdir())
    decisions = [json.loads(x) for x in (run / "decisions.jsonl").read_text().splitlines()]
    actions = [d["action"] for d in decisions]
    assert actions == ["setup"] + ["freeze"] * 12 + ["stop"], actions
    assert decisions[0]["evidence"]["components"] == 12  # every matrix of both blocks watched
    assert decisions[0]["evidence"]["matrix_coverage"] == 1.0
    timeline = json.loads((run / "grades_timeline.json").read_text())
    assert len(timeline["events"]) == 12 and timeline["frozen_fraction"] == 1.0
    # stopped before the budget (20 epochs x 6 batches), after the grace period
    assert timeline["grace_step"] < timeline["stopped_step"] < timeline["total_steps"] == 120
    assert decisions[-1]["step"] == timeline["stopped_step"]
    wandb_dir = next((run / "wandb").glob("offline-run-*"))
    hist = wandb_summary(wandb_dir, Path(TRAIN).parent)["grades/grad_l1/log10_histogram"]
    assert hist["_type"] == "histogram" and sum(hist["values"]) >= 1


def test_grades_on_a_cnn_is_a_one_line_error_before_training(tmp_path):
    """Issue 27: GradES on the digits CNN (no repeated blocks) ended with a traceback.

    The run ends before its first training step with status 1 and one ``eecontrol-train:``
    line that names what to pass; errors from the user's own code keep their traceback.
    """
    out = _run(["callbacks=[default,grades]", "trainer.max_epochs=1"], tmp_path, status=1)
    ours = [x for x in out.stderr.splitlines() if x.startswith("eecontrol-train: ")]
    assert len(ours) == 1, out.stderr[-3000:]
    assert "GradES found no repeated blocks" in ours[0] and "`patterns`" in ours[0]
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and not (runs[0] / "checkpoints" / "last.ckpt").exists()  # no step
