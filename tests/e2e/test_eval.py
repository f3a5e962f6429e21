"""``eecontrol-eval``: a trained run's checkpoint tested again gives the run's own test metrics."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_train_cli import _run

pytestmark = pytest.mark.e2e
EVAL = shutil.which("eecontrol-eval") or str(Path(sys.executable).parent / "eecontrol-eval")


def _eval(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "EECONTROL_ROOT": str(cwd)}
    return subprocess.run(
        [EVAL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def _test_row(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()))
    row = next(r for r in rows if r.get("test/acc"))
    return {k: float(row[k]) for k in ("test/acc", "test/loss")}


def test_eval_reproduces_the_runs_test_metrics(tmp_path):
    _run(["logger=csv", "trainer.max_epochs=2", "+trainer.limit_train_batches=4"], tmp_path)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file(), "the run wrote its last checkpoint"
    expected = _test_row(run)
    out = _eval([f"ckpt_path={run}"], tmp_path)  # a run directory: its last.ckpt
    assert out.returncode == 0, out.stderr[-3000:]
    (ev,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    record = json.loads((ev / "eval_metrics.json").read_text())
    assert record["ckpt_path"] == str((run / "checkpoints" / "last.ckpt").resolve())
    for key, value in expected.items():
        assert record["metrics"][key] == value, key  # the same weights, the same test split
    assert "test/acc" in out.stdout


def test_eval_without_a_checkpoint_is_a_clear_error(tmp_path):
    out = _eval([f"ckpt_path={tmp_path / 'nothing'}"], tmp_path)
    assert out.returncode != 0
    assert "no such checkpoint file or run directory" in out.stderr
    missing = _eval([], tmp_path)
    assert missing.returncode != 0 and "ckpt_path" in missing.stderr
