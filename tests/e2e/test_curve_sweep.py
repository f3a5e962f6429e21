"""A real 2-worker Hydra joblib sweep on digits where the cross-run rule stops a loser."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from eecontrol.sweep.store import CurveStore
from tests.e2e.test_train_cli import TRAIN, _run

EECONTROL = str(Path(TRAIN).parent / "eecontrol")

pytestmark = pytest.mark.e2e


def test_joblib_sweep_shares_the_store_and_stops_a_loser(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # Jobs 0 and 1 (good learning rates) run first on the two workers and finish; job 2
    # (good) and job 3 (lr 1e-5: it barely learns in 6 short epochs) start after them, so
    # the cross-run rule has min_finished=2 finished runs when job 3 reaches min_points.
    _run(
        [
            "-m",
            "hparams_search=digits_curves",
            "model.optimizer.lr=0.004,0.003,0.002,0.00001",
            "trainer.max_epochs=6",
            "+trainer.limit_train_batches=5",
            "callbacks=[curve_stopping]",
            "callbacks.curve_stopping.in_run=false",
            "callbacks.curve_stopping.min_points=3",
            "callbacks.curve_stopping.min_finished=2",
            "callbacks.curve_stopping.log_prediction=false",
        ],
        tmp_path,
        timeout=600,
    )
    [sweep] = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    store = CurveStore(sweep / "curves.db", "eecontrol-curves", "max")
    runs = {r.hparams["lr"]: r for r in store.runs()}
    assert sorted(runs) == [0.00001, 0.002, 0.003, 0.004]
    assert runs[0.004].state == runs[0.003].state == "complete"
    assert len(runs[0.004].values) == 6
    loser = runs[0.00001]
    assert loser.state == "stopped" and len(loser.values) == 3
    decisions = [json.loads(x) for x in (sweep / "3" / "decisions.jsonl").read_text().splitlines()]
    [stop] = [d for d in decisions if d["action"] == "stop"]
    assert stop["reason"].startswith("cross-run rule")
    assert stop["evidence"]["cross_run_probability"] < 0.05
    summary = json.loads((sweep / "3" / "summary.json").read_text())
    assert summary["best_so_far"] == pytest.approx(max(loser.values), abs=1e-6)
    # `eecontrol replay` on this finished sweep, from its job directories and from its store:
    # the runs that trained all 6 epochs are replayed, the stopped one is left out
    full = sum(len(r.values) == 6 for r in store.runs())
    cheap = ["--orders", "1", "--policies", "none", "median", "successive_halving"]
    for source, left_out in (
        ([str(sweep)], "3: 3 of 6 validations (stopped early)"),
        ([f"sqlite:///{sweep / 'curves.db'}", "--study", "eecontrol-curves"], ": PRUNED"),
    ):
        out = subprocess.run(
            [EECONTROL, "replay", *source, *cheap], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"{full} runs x 6 validations" in out.stdout
        assert "successive_halving" in out.stdout and left_out in out.stdout
