"""Kill a real training run with SIGKILL, resume it, compare its decisions with an uninterrupted run.

For each callback spec: an uninterrupted reference run, then runs killed at an epoch boundary
and mid-epoch and resumed from their ``last.ckpt`` (written at every epoch end by
``ResumableCheckpoint``). Before comparing, each resume must be real: the checkpoint exists
and the resumed run started at the checkpoint's global step (> 0). Then the resumed run's
decisions (action, step, epoch, evidence within 1e-6) must equal the reference's.
"""

from __future__ import annotations

import json
import random
import shutil
import signal

import pytest
import torch

from tests.reliability.conftest import journal, run_child, same_decisions, same_histories
from tests.reliability.specs import SPECS

KILLS_PER_CALLBACK = 2  # one at an epoch boundary, the others mid-epoch (the CI-time knob)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def kill_points(spec: str, total: int, per_epoch: int, n: int = KILLS_PER_CALLBACK) -> list[int]:
    """One optimizer step at an epoch boundary and ``n - 1`` mid-epoch, all after epoch 1."""
    rng = random.Random(spec)
    boundaries = [k * per_epoch for k in range(1, total // per_epoch + 1) if k * per_epoch < total]
    middles = [s for s in range(per_epoch + 1, total) if s % per_epoch]
    assert boundaries and middles, f"{spec}: {total} steps is too short to kill"
    return sorted([rng.choice(boundaries), *rng.sample(middles, min(n - 1, len(middles)))])


def checkpoint_step(root) -> int:
    """The global step stored in a run's last.ckpt (asserting it exists)."""
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"no checkpoint to resume from: {last}"
    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_killed_and_resumed_runs_make_the_same_decisions(spec, tmp_path):
    ref = tmp_path / "reference"
    done = run_child(spec, ref)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = journal(ref)
    reference = json.loads((ref / "rank0.json").read_text())
    total, per_epoch = reference["global_step"], reference["steps_per_epoch"]
    assert reference["start_step"] == 0
    if SPECS[spec].history:  # a measuring callback: its history is what must survive
        assert any(reference["histories"].values()), "the reference run measured nothing"
    else:
        assert expected, "the reference run made no decision"
    for step in kill_points(spec, total, per_epoch):
        root = tmp_path / f"killed_at_{step}"
        killed = run_child(spec, root, "--kill-at", str(step))
        assert killed.returncode == -9, (
            f"expected SIGKILL at step {step}: {killed.returncode} {killed.stderr[-2000:]}"
        )
        saved = checkpoint_step(root)
        assert saved == (step // per_epoch) * per_epoch > 0, (step, saved)  # last epoch end
        resumed = run_child(spec, root, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        resumed_rank0 = json.loads((root / "rank0.json").read_text())
        assert resumed_rank0["start_step"] == saved, (
            "the resumed run did not start at its checkpoint"
        )
        ok, why = same_decisions(journal(root), expected)
        assert ok, f"{spec} killed at step {step}: {why}"
        assert resumed_rank0["global_step"] == total
        ok, why = same_histories(resumed_rank0["histories"], reference["histories"])
        assert ok, f"{spec} killed at step {step}: {why}"


def test_a_resume_without_its_checkpoint_fails(tmp_path):
    """The old harness resumed from nothing and compared two fresh runs; now that is an error."""
    killed = run_child("dropout_schedule", tmp_path, "--kill-at", "7")  # 5 steps per epoch
    assert killed.returncode == -9
    assert checkpoint_step(tmp_path) == 5
    shutil.rmtree(tmp_path / "checkpoints")
    resumed = run_child("dropout_schedule", tmp_path, "--resume")
    assert resumed.returncode == 3, resumed.stderr[-2000:]
    assert "no checkpoint" in resumed.stderr
    assert not (tmp_path / "rank0.json").exists()  # nothing trained from scratch


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_signal_saves_last_ckpt_and_exits_nonzero(name, tmp_path):
    """SIGTERM (schedulers), SIGUSR1 and SIGINT (Ctrl-C): checkpoint at the batch boundary."""
    signum = getattr(signal, name)
    out = run_child("dropout_schedule", tmp_path, "--signal-at", "7", name)
    assert out.returncode == 128 + signum, (out.returncode, out.stderr[-2000:])
    assert checkpoint_step(tmp_path) == 8  # the batch that started at step 7 finished
    assert f"interrupted by {name}" in out.stderr + out.stdout
    if name != "SIGTERM":
        return
    resumed = run_child("dropout_schedule", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert rank0["start_step"] == 8 and rank0["global_step"] == 20
