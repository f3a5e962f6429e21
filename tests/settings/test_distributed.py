"""The acceptance matrix, distributed cells: every callback under DDP and FSDP, 2 processes.

One worker run per strategy trains every callback in turn on both ranks
(``tests/settings/dist_worker.py``; FSDP on CPU: ``eecontrol.testing.CPUFSDPStrategy`` over
gloo, started like ``strategy="fsdp"`` by re-running the script, since Lightning refuses
``strategy="fsdp"`` without a GPU). Each cell asserts the callback's checker passed on every
rank and the ranks' decisions are identical, or a refusal at setup with its message on
every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.settings.harness import CALLBACKS, cell_param, expect

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run_worker(root: Path, strategy: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.settings.dist_worker", str(root), strategy],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def get(strategy: str) -> tuple[Path, subprocess.CompletedProcess]:
        if strategy not in done:
            root = tmp_path_factory.mktemp(f"dist-{strategy}")
            done[strategy] = (root, _run_worker(root, strategy))
        return done[strategy]

    return get


def _ranks(root: Path, label: str, proc: subprocess.CompletedProcess) -> list[dict]:
    paths = [root / label / f"rank{r}.json" for r in (0, 1)]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, (
        f"no result from {missing}; worker rc {proc.returncode}: {proc.stderr[-3000:]}"
    )
    return [json.loads(p.read_text()) for p in paths]


def _cells() -> list:
    cells = [cell_param(cb, strategy) for strategy in ("ddp", "fsdp") for cb in CALLBACKS]
    return [c for c in cells if c is not None]


@pytest.mark.parametrize(("callback", "strategy"), _cells())
def test_distributed_cell(callback, strategy, worker_runs):
    root, proc = worker_runs(strategy)
    ranks = _ranks(root, callback, proc)
    e = expect(callback, strategy)
    if e.status == "refused":
        for r in ranks:
            assert r["status"] == "error" and e.match in r["error"], r
        return
    for i, r in enumerate(ranks):
        assert r["status"] == "ok", (
            f"rank {i}: {r['status']}: {r['error']}\n{r.get('traceback', '')}"
        )
    assert ranks[0]["decisions"] == ranks[1]["decisions"], "ranks disagree"
    assert ranks[0]["global_step"] == ranks[1]["global_step"]


def test_grades_refuses_ddp_without_find_unused_parameters(worker_runs):
    root, proc = worker_runs("ddp")
    for r in _ranks(root, "GradES-plain-ddp", proc):
        assert r["status"] == "error", r
        assert "find_unused_parameters" in r["error"], r["error"]
