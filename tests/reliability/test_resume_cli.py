"""``eecontrol-train`` killed with SIGKILL and continued with the README's resume command.

The default recipe (CNN on digits with conformalized early stopping) runs uninterrupted
once, and once killed (SIGKILL, no cleanup) after its second epoch's checkpoint; then
``eecontrol-train resume=<run dir>`` continues it in the same directory. Its validation and
test metrics must equal the uninterrupted run's bit for bit (an epoch-boundary resume).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._helpers import run_ok

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

TRAIN = str(Path(sys.executable).parent / "eecontrol-train")
# 10 epochs: the kill comes after epoch 2, so 8 epochs of margin keep a fast machine from
# finishing the run between the checkpoint poll and the kill
EPOCHS = 10
ARGS = ["logger=csv", f"trainer.max_epochs={EPOCHS}", "+trainer.limit_train_batches=4"]
STEPS_PER_EPOCH = 4


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "EECONTROL_ROOT": str(root), "WANDB_MODE": "offline", "COLUMNS": "200"}


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "version_0" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _metrics(run: Path) -> list[tuple[str, str, str]]:
    """(epoch, val/acc, val/loss) of every validation, and the test row."""
    rows = _rows(run)
    val = [(r["epoch"], r["val/acc"], r["val/loss"]) for r in rows if r.get("val/acc")]
    test = [("test", r["test/acc"], r["test/loss"]) for r in rows if r.get("test/acc")]
    return val + test


def _only_run(root: Path) -> Path:
    runs = list((root / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_sigkilled_default_run_resumed_with_the_readme_command_equals_the_uninterrupted_run(
    tmp_path,
):
    ref_root, kill_root = tmp_path / "reference", tmp_path / "killed"
    run_ok([TRAIN, *ARGS], cwd=tmp_path, env=_env(ref_root), timeout=600)
    expected = _metrics(_only_run(ref_root))
    assert len(expected) == EPOCHS + 1  # one validation per epoch + the test

    proc = subprocess.Popen(
        [TRAIN, *ARGS],
        cwd=tmp_path,
        env=_env(kill_root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step, deadline = 0, time.monotonic() + 600
    while step < 2 * STEPS_PER_EPOCH and time.monotonic() < deadline:
        time.sleep(0.1)
        found = list(kill_root.glob("logs/train/runs/*/checkpoints/last.ckpt"))
        if found:
            try:  # the file is replaced atomically; a read never sees half a checkpoint
                step = int(torch.load(found[0], weights_only=True)["global_step"])
            except (OSError, RuntimeError, EOFError):
                continue
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    run = _only_run(kill_root)
    last = run / "checkpoints" / "last.ckpt"
    saved = int(torch.load(last, weights_only=True)["global_step"])
    assert saved >= 2 * STEPS_PER_EPOCH and saved % STEPS_PER_EPOCH == 0, saved
    assert saved < EPOCHS * STEPS_PER_EPOCH, "the run finished before it was killed"

    resumed = run_ok([TRAIN, f"resume={run}"], cwd=tmp_path, env=_env(kill_root), timeout=600)
    assert f"Restored all states from the checkpoint at {last}" in resumed.stderr + resumed.stdout
    assert _only_run(kill_root) == run  # continued in its own directory
    rows = _rows(run)
    assert min(int(r["step"]) for r in rows if r.get("step")) < saved  # earlier rows kept
    assert _metrics(run) == expected

    def actions(path: Path) -> list[tuple[str, int]]:
        return [(d["action"], d["step"]) for d in map(json.loads, path.read_text().splitlines())]

    expected_actions = actions(_only_run(ref_root) / "decisions.jsonl")
    assert len(expected_actions) >= 2 and actions(run / "decisions.jsonl") == expected_actions
