"""Kill a real training run with SIGKILL at random steps, resume it, compare its decisions.

For each callback spec: an uninterrupted reference run, then several runs killed at a
random optimizer step and resumed from the last checkpoint. The resumed runs' decisions
(action, step, epoch, evidence within 1e-6) must equal the reference's.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.reliability.conftest import journal, run_child, same_decisions, same_histories
from tests.reliability.specs import SPECS

KILLS_PER_CALLBACK = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_killed_and_resumed_runs_make_the_same_decisions(spec, tmp_path):
    ref = tmp_path / "reference"
    done = run_child(spec, ref)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = journal(ref)
    reference = json.loads((ref / "rank0.json").read_text())
    total = reference["global_step"]
    if SPECS[spec].history:  # a measuring callback: its history is what must survive
        assert any(reference["histories"].values()), "the reference run measured nothing"
    else:
        assert expected, "the reference run made no decision"
    kills = sorted(random.Random(spec).sample(range(1, total), KILLS_PER_CALLBACK))
    for step in kills:
        root = tmp_path / f"killed_at_{step}"
        killed = run_child(spec, root, "--kill-at", str(step))
        assert killed.returncode == -9, (
            f"expected SIGKILL at step {step}: {killed.returncode} {killed.stderr[-2000:]}"
        )
        resumed = run_child(spec, root, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        ok, why = same_decisions(journal(root), expected)
        assert ok, f"{spec} killed at step {step}: {why}"
        resumed_rank0 = json.loads((root / "rank0.json").read_text())
        assert resumed_rank0["global_step"] == total
        ok, why = same_histories(resumed_rank0["histories"], reference["histories"])
        assert ok, f"{spec} killed at step {step}: {why}"
