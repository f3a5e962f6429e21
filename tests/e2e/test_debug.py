"""``eecontrol-train debug=...``: the debugging configs run end to end (subprocesses)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_train_cli import _run

pytestmark = pytest.mark.e2e


def test_debug_limit_runs_decides_and_writes_csv_only(tmp_path):
    _run(["debug=limit"], tmp_path)
    runs = list((tmp_path / "logs" / "debug" / "runs").iterdir())
    assert len(runs) == 1, "debug runs go under logs/debug/"
    run = runs[0]
    decisions = [json.loads(x) for x in (run / "decisions.jsonl").read_text().splitlines()]
    assert [d["action"] for d in decisions][:1] == ["plan"] and len(decisions) >= 3
    assert (run / "csv" / "version_0" / "metrics.csv").exists()
    assert not (run / "wandb").exists(), "debug runs start no W&B run"
    assert "DEBUG" in (run / "train.log").read_text()


def test_debug_fdr_runs_one_batch(tmp_path):
    out = _run(["debug=fdr"], tmp_path)
    assert "fast_dev_run" in out.stdout + out.stderr
