"""The curve store: round trip, states, and two processes writing at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import eecontrol.sweep.store as store_module
from eecontrol.sweep.store import CurveStore, storage_url

WRITER = textwrap.dedent(
    """
    import importlib.util
    import sys

    # load the store module alone: the writers need no Lightning import (faster start)
    spec = importlib.util.spec_from_file_location("store", sys.argv[3])
    module = sys.modules["store"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url, worker = sys.argv[1], int(sys.argv[2])
    store = module.CurveStore(url, "sweep", "max")
    for r in range(3):
        run = store.start_run({"worker": worker, "r": r})
        for i in range(20):
            store.report(run, i, worker + r / 10 + i / 1000, x=(i + 1) * 10)
        store.finish(run, worker + r / 10 + 19 / 1000, "complete" if r < 2 else "stopped")
    """
)


def test_two_processes_write_concurrently(tmp_path):
    url = storage_url(tmp_path / "curves.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(w), store_module.__file__],
            stderr=subprocess.PIPE,
        )
        for w in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    store = CurveStore(url, "sweep", "max")
    runs = store.runs()
    assert len(runs) == 6
    for run in runs:
        w, r = run.hparams["worker"], run.hparams["r"]
        assert run.values == pytest.approx([w + r / 10 + i / 1000 for i in range(20)])
        assert run.state == ("complete" if r < 2 else "stopped")
    assert len(store.finished()) == 4
    assert sorted(f.result for f in store.finished()) == pytest.approx(
        sorted(w + r / 10 + 0.019 for w in (1, 2) for r in (0, 1))
    )


def test_states_hparams_and_errors(tmp_path):
    store = CurveStore(tmp_path / "c.db", "s", "min")
    run = store.start_run({"lr": 1e-3, "name": "adam", "flag": True, "bad": float("nan")})
    assert store.is_running(run)
    store.report(run, 0, 0.5)
    store.finish(run, None, "failed")
    assert not store.is_running(run)
    [stored] = store.runs()
    assert stored.state == "failed" and stored.hparams == {"lr": 1e-3}
    assert store.finished() == []
    with pytest.raises(ValueError, match="`state` must be one of"):
        store.finish(run, 0.1, "done")
    with pytest.raises(ValueError, match="minimise, but mode='max'"):
        CurveStore(tmp_path / "c.db", "s", "max")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        CurveStore(tmp_path / "c.db", "s", "down")
    assert storage_url("postgresql://u:p@host/db") == "postgresql://u:p@host/db"
