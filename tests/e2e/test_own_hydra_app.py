"""examples/own_hydra_app: a user's own Hydra app on eecontrol's configs, trained for real."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests._helpers import run_ok

pytestmark = pytest.mark.e2e
APP = Path(__file__).resolve().parents[2] / "examples" / "own_hydra_app"


def test_own_hydra_app_trains_with_its_overrides_and_writes_the_report(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APP, app)  # a user's directory, not the repository
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = run_ok(
        [sys.executable, "app.py", "hydra.run.dir=out", "trainer.max_epochs=2"],
        cwd=app,
        env=env,
        tail=4000,
    )
    run = app / "out"
    decisions = [json.loads(x) for x in (run / "decisions.jsonl").read_text().splitlines()]
    assert [d["action"] for d in decisions] == ["schedule", "dropout_off"]
    assert decisions[0]["callback"] == "DropoutSchedule"
    # the app's own values (p 0.2, cutoff 0.5) won over the group's (0.1, 0.2): `_self_` last
    evidence = decisions[0]["evidence"]
    assert evidence["dropout_rate"] == 0.2 and evidence["total_steps"] == 8, evidence
    assert evidence["cutoff_step"] == 4, evidence
    assert "eecontrol decisions" in out.stdout and (run / "report" / "report.html").exists()
