"""The overhead benchmark's clocks (benchmarks/overhead.py) see a known cost where it is.

A callback that burns a known amount of CPU in ``on_before_optimizer_step`` (per optimizer
step) and in ``on_validation_end`` (per validation) is measured on a very small Llama: the
whole-step clock (bare and with-callback runs alternating micro-batches in two threads)
and the callback's own hook clock must both find the burn, in the right column.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
STEP_BURN = 0.050  # s of CPU per optimizer step (about half a step here)
VAL_BURN = 0.200  # s of CPU per validation


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Burn(Callback):
    """Costs STEP_BURN per optimizer step and VAL_BURN per validation."""

    step_burn = STEP_BURN

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        _burn(self.step_burn)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _burn(VAL_BURN)


class BurnMore(Burn):
    """Twice the per-step burn: the gated test compares it with a noise floor of about
    0.1 of a step under the suite's load (one even-odd comparison of 7 pairs)."""

    step_burn = 2 * STEP_BURN


@pytest.fixture
def overhead(monkeypatch):
    """The benchmark's module (benchmarks/ on the path); torch's thread count restored."""
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    module = importlib.import_module("overhead")
    registry = module.callbacks()
    registry["Burn"] = lambda root: [Burn()]
    registry["BurnMore"] = lambda root: [BurnMore()]
    monkeypatch.setattr(module, "callbacks", lambda: registry)
    monkeypatch.setattr(module, "WARM", {False})  # no warm-up pair: the test stays short
    yield module
    torch.set_num_threads(threads)


def _args(gate: bool) -> argparse.Namespace:
    return argparse.Namespace(
        epochs=2,
        repeats=1,
        hidden=16,
        layers=1,
        batch_size=64,  # 27 micro-batches an epoch: 7 optimizer steps with accumulation 4
        accumulate=4,
        darts_batches=2,
        device="cpu",
        cpu=None,
        verbose=False,
        gate=gate,
    )


def test_known_cost_is_found_per_step_and_per_validation(overhead):
    torch.set_num_threads(1)
    row = overhead.measure("Burn", _args(gate=False))
    own = row["own_hooks_cpu"]
    # the runs did what the numbers assume
    assert row["steps"] == 14 and row["validations"] == 1, row
    assert own["calls"]["on_before_optimizer_step"] == row["steps"]
    assert own["calls"]["on_validation_end"] == 2  # the mid-run one and the last one
    # own hooks: the burn, in its column
    step_ms = row["cpu_ms_per_step_bare"]
    assert own["per_step_fraction"] == pytest.approx(1e3 * STEP_BURN / step_ms, rel=0.25)
    assert own["per_validation_ms"] == pytest.approx(1e3 * VAL_BURN, rel=0.25)
    # whole step: the with-run's steps cost the burn more, and its validations VAL_BURN more
    extra = row["cpu_ms_per_step_with"] - row["cpu_ms_per_step_bare"]
    # (run-to-run noise on this shared machine: a band, not a tolerance of a few percent)
    assert 0.5 * 1e3 * STEP_BURN < extra < 2.0 * 1e3 * STEP_BURN
    assert row["per_validation_cpu_ms"]["median"] == pytest.approx(1e3 * VAL_BURN, rel=0.5)
    assert row["per_step_meets_target"] is False  # 50 ms on a step of about 100 ms


def test_gated_runs_find_the_per_step_cost_within_one_run(overhead):
    """--gate: the per-step hooks run on even optimizer steps only; even vs odd steps of
    the same run give the per-step cost, the bare run's even vs odd the noise floor."""
    torch.set_num_threads(1)
    row = overhead.measure("BurnMore", _args(gate=True))
    own = row["own_hooks_cpu"]
    assert row["steps"] == 14 and row["method"].startswith("gated"), row
    assert own["calls"]["on_before_optimizer_step"] == 7  # steps 0, 2, ..., 12
    assert own["calls"]["on_validation_end"] == 2  # validation hooks are never gated
    step_ms = row["cpu_ms_per_step_bare"]
    expected = 1e3 * BurnMore.step_burn / step_ms
    assert own["per_step_fraction"] == pytest.approx(expected, rel=0.25)
    assert 0.5 * expected < row["per_step_overhead"]["median"] < 2.0 * expected
    floor = row["per_step_noise_floor_parity_of_bare_runs"]["median"]
    assert abs(floor) < 0.25 * expected, floor
