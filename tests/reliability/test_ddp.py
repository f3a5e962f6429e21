"""Two-process CPU DDP (gloo) runs of every callback: identical decisions, no hang."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import run_child
from tests.reliability.specs import SPECS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_ranks_make_identical_decisions(spec, strategy, tmp_path):
    strategy += SPECS[spec].ddp_suffix  # GradES needs find_unused_parameters=True (it says so)
    done = run_child(
        spec, tmp_path, "--strategy", strategy, "--devices", "2", "--skew", timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    if SPECS[spec].history:  # measures, never decides: each rank measured, nobody hung
        assert r0["histories"] and all(r0["histories"].values())
        assert all(r1["histories"].values()) and r0["decisions"] == r1["decisions"] == []
        assert r0["global_step"] == r1["global_step"]
        return
    assert r0["decisions"], "no decision was made"
    assert r0 == r1, "ranks disagree"
