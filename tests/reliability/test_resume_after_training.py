"""A run killed after its last epoch (during test, or while writing its report) resumes.

Issue 25 item 2: the resume had nothing left to train, so ``optimized_metric`` was never
logged again and it died with ``KeyError: 'optimized_metric'``. Now the metrics at the
checkpoint are restored: the resumed run tests, reports, and its ``summary.json`` and
``metrics.csv`` equal the uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(Path(sys.executable).parent / "eecontrol-train")
KILL = "+callbacks.kill._target_=tests.reliability.killers.KillAfterSave"
ARGS = [
    "logger=csv",
    "trainer.max_epochs=2",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "++trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    KILL,
]


def _train(args: list[str], root: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "EECONTROL_ROOT": str(root),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("EECONTROL_TEST_KILL", None)
    if kill:
        env["EECONTROL_TEST_KILL"] = kill
    return subprocess.run(
        [TRAIN, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _run(root: Path) -> Path:
    [run] = list((root / "logs" / "train" / "runs").iterdir())
    return run


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "version_0" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    out = _train(ARGS, root)
    assert out.returncode == 0, out.stderr[-3000:]
    return _run(root)


@pytest.mark.parametrize("where", ["test", "report"])
def test_a_run_killed_after_its_last_epoch_resumes_and_finishes_test_and_report(
    where, tmp_path, reference
):
    killed = _train(ARGS, tmp_path, kill=where)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = _run(tmp_path)
    if where == "test":
        assert not any(r.get("test/acc") for r in _rows(run)), "the test had already run"
    else:
        assert any(r.get("test/acc") for r in _rows(run)), "the kill came before the report"
        assert not (run / "report" / "report.html").exists()
    resumed = _train(["resume=last", KILL], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert (run / "report" / "report.html").is_file()
    expected, got = _summary(reference), _summary(run)
    assert expected["objective"] is not None and got["objective"] == expected["objective"]
    assert got["best_so_far"] == expected["best_so_far"]
    assert got["global_step"] == expected["global_step"] == 4
    assert _rows(run) == _rows(reference)  # one test row, no duplicate, nothing lost
