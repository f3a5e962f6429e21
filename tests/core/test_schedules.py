"""Schedules against the paper's reference construction on a grid of inputs."""

from __future__ import annotations

import numpy as np
import pytest

from eecontrol.core.schedules import DropSchedule, cutoff_to_step, depth_rates, drop_rate


def reference_schedule(p, epochs, iters_per_epoch, cutoff_epoch, mode, schedule):
    """The per-step array the paper's reference code builds (numpy, one value per step)."""
    total = epochs * iters_per_epoch
    if mode == "standard":
        return np.full(total, p)
    early = cutoff_epoch * iters_per_epoch
    late = total - early
    if mode == "early":
        head = np.full(early, p) if schedule == "constant" else np.linspace(p, 0, early)
        return np.concatenate((head, np.zeros(late)))
    if schedule == "constant":
        return np.concatenate((np.zeros(early), np.full(late, p)))
    return np.concatenate((np.zeros(early), np.linspace(0, p, late)))  # our late-linear ramp


GRID = [
    (epochs, iters, cutoff)
    for epochs, iters in [(1, 1), (1, 7), (5, 1), (10, 3), (6, 13)]
    for cutoff in sorted({0, 1, epochs // 2, epochs})
    if cutoff <= epochs
]


@pytest.mark.parametrize(
    ("mode", "schedule"),
    [
        ("standard", "constant"),
        ("early", "constant"),
        ("early", "linear"),
        ("late", "constant"),
        ("late", "linear"),
    ],
)
@pytest.mark.parametrize(("epochs", "iters", "cutoff"), GRID)
def test_schedule_equals_reference(mode, schedule, epochs, iters, cutoff):
    p = 0.3
    expected = reference_schedule(p, epochs, iters, cutoff, mode, schedule)
    total = epochs * iters
    cutoff_step = cutoff_to_step(cutoff, "epochs", iters, total, epochs)
    got = np.array([drop_rate(t, p, total, cutoff_step, mode, schedule) for t in range(total)])
    np.testing.assert_array_equal(got, expected)
    # past the horizon the last value holds
    assert drop_rate(total + 5, p, total, cutoff_step, mode, schedule) == expected[-1]


def test_early_linear_reaches_exactly_zero_at_cutoff():
    s = DropSchedule(p=0.1, total_steps=100, cutoff_step=20, mode="early", schedule="linear")
    assert s.rate(0) == 0.1
    assert s.rate(19) == 0.0
    assert s.phase(18) == "on" and s.phase(19) == "off"
    assert all(s.rate(t) == 0.0 for t in range(20, 100))


def test_gradient_accumulation_counts_optimizer_steps():
    # 10 epochs x 12 micro-batches with accumulation 4 = 3 optimizer steps per epoch
    steps_per_epoch = -(-12 // 4)
    total = 10 * steps_per_epoch
    cutoff_step = cutoff_to_step(2, "epochs", steps_per_epoch, total, 10)
    assert cutoff_step == 6
    np.testing.assert_array_equal(
        [drop_rate(t, 0.2, total, cutoff_step, "early", "constant") for t in range(total)],
        reference_schedule(0.2, 10, steps_per_epoch, 2, "early", "constant"),
    )


def test_fraction_cutoff():
    assert cutoff_to_step(0.25, "fraction", 10, 100, 10) == 25
    assert cutoff_to_step(0.0, "fraction", 10, 100, 10) == 0
    assert cutoff_to_step(1.0, "fraction", 10, 100, 10) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cutoff": 12, "unit": "epochs"}, "beyond training"),
        ({"cutoff": 1.5, "unit": "fraction"}, "[0, 1]"),
        ({"cutoff": 0.5, "unit": "batches"}, "cutoff_unit"),
        ({"cutoff": 0.5, "unit": "steps"}, "whole number of optimizer steps"),
        ({"cutoff": 101, "unit": "steps"}, "valid range with cutoff_unit='steps': [0, 100]"),
        ({"cutoff": 1, "unit": "epochs", "steps_per_epoch": None}, "needs epochs of known length"),
    ],
)
def test_cutoff_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cutoff_to_step(kwargs["cutoff"], kwargs["unit"], kwargs.get("steps_per_epoch", 10), 100, 10)


def test_steps_cutoff_is_the_step_itself_and_needs_no_epoch_length():
    assert cutoff_to_step(37, "steps", None, 100, None) == 37
    assert cutoff_to_step(0, "steps", None, 100, None) == 0
    assert cutoff_to_step(100, "steps", None, 100, None) == 100
    assert cutoff_to_step(0.25, "fraction", None, 100, None) == 25  # a stream: no epochs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"mode": "middle"}, "mode"),
        ({"schedule": "cosine"}, "schedule"),
        ({"total_steps": 0}, "total_steps"),
        ({"cutoff_step": 101}, "cutoff_step"),
    ],
)
def test_drop_rate_rejects_bad_input(args, message):
    kwargs = {
        "step": 0,
        "p": 0.1,
        "total_steps": 100,
        "cutoff_step": 10,
        "mode": "early",
        "schedule": "constant",
    }
    kwargs.update(args)
    with pytest.raises(ValueError, match=message):
        drop_rate(**kwargs)


def test_depth_rates_match_the_reference_construction():
    import torch

    # the reference and timm: [x.item() for x in torch.linspace(0, rate, depth)]
    for rate, depth in [(0.4, 12), (0.1, 18), (0.2, 24), (0.5, 7)]:
        assert depth_rates(rate, depth) == [x.item() for x in torch.linspace(0, rate, depth)]
    assert depth_rates(0.3, 1) == [0.0]
    assert depth_rates(0.3, 0) == []


def test_direction_variance_and_error_hand_worked():
    import torch

    from eecontrol.core.schedules import direction_error, direction_variance

    same = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert direction_variance(same) == 0.0
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert direction_variance(orthogonal) == pytest.approx(0.5)
    three = torch.tensor(
        [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]
    )  # cos: -1, 0, 0 -> distances 1, .5, .5
    assert direction_variance(three) == pytest.approx(2.0 / 3.0)
    assert direction_error(orthogonal, torch.tensor([1.0, 0.0])) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="G >= 2"):
        direction_variance(torch.ones(1, 3))
