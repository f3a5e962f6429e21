"""A step-based run on a stream, SIGKILLed mid-stream and resumed, equals the uninterrupted
run bit for bit (issue 23 item 10).

On a stream one epoch is the whole run, so the epoch-boundary guarantee says nothing. With
:class:`~eecontrol.resume.ResumableDataLoader` (its position in the checkpoint) and
:class:`~eecontrol.resume.EpochSeed` (the RNG states in the checkpoint) the resumed run
draws the batches and dropout masks the killed one would have drawn. The same run with a
plain ``DataLoader`` (the stream restarts from its beginning) is shown to differ, so the
comparison can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def _child(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.stream_child", str(root), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _killed_and_resumed(root: Path, *extra: str) -> dict[str, torch.Tensor]:
    killed = _child(root, "--kill-at", "12", *extra)
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["epoch"] == 0  # mid-stream: the one epoch
    resumed = _child(root, "--resume", *extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (root / "start_step").read_text() == "10"  # it continued, not started over
    return torch.load(root / "final.pt", weights_only=True)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys() and len(a) > 0
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_killed_mid_run_and_resumed_equals_the_uninterrupted_run(tmp_path):
    ref = _child(tmp_path / "reference")
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    assert _equal(_killed_and_resumed(tmp_path / "resumed"), expected)

    # the same with a plain DataLoader: the stream restarts, and the weights differ
    plain_ref = _child(tmp_path / "plain_reference", "--plain")
    assert plain_ref.returncode == 0, plain_ref.stderr[-3000:]
    plain_expected = torch.load(tmp_path / "plain_reference" / "final.pt", weights_only=True)
    assert _equal(plain_expected, expected)  # same data, same draws when not interrupted
    assert not _equal(_killed_and_resumed(tmp_path / "plain", "--plain"), plain_expected)
