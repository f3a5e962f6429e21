"""Property tests (hypothesis) for the core: schedules and conformal p-values / intervals."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eecontrol.core import conformal as core
from eecontrol.core.schedules import drop_rate

schedule_args = st.tuples(
    st.floats(0.0, 0.99),
    st.integers(1, 400),
    st.floats(0.0, 1.0),
    st.sampled_from(["standard", "early", "late"]),
    st.sampled_from(["constant", "linear"]),
)


@settings(max_examples=200, deadline=None)
@given(schedule_args)
def test_rates_stay_in_range_and_move_one_way(args):
    p, total, frac, mode, schedule = args
    cutoff = round(frac * total)
    rates = [drop_rate(t, p, total, cutoff, mode, schedule) for t in range(total + 3)]
    assert all(0.0 <= r <= p + 1e-12 for r in rates)
    diffs = [b - a for a, b in itertools.pairwise(rates)]
    if mode == "early":
        assert all(d <= 1e-12 for d in diffs)
    elif mode == "late":
        assert all(d >= -1e-12 for d in diffs)
    else:
        assert len(set(rates)) == 1


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_outlier_p_values_range_and_monotone_in_the_score(t, n, seed):
    g = torch.Generator().manual_seed(seed)
    hold = torch.rand(t, n, generator=g)
    test_loss = torch.rand(t, 1, generator=g).expand(t, 9)
    scores = torch.linspace(-0.5, 1.5, 9).expand(t, 9)  # one test point's score rising, loss fixed
    p = core.ces_outlier_p_values(hold, hold, test_loss, scores).p_values
    assert (p >= 1 / (n + 1) - 1e-12).all() and (p <= 1).all()
    assert (p[1:] <= p[:-1]).all()  # a stranger point never gets a larger p-value


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(2, 25),
    st.integers(2, 5),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_classification_p_values_range(t, n, k, conditional, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(t, n, k, generator=g) * 3, -1)
    test = torch.softmax(torch.randn(t, 4, k, generator=g) * 3, -1)
    labels = torch.randint(0, k, (n,), generator=g)
    p = core.ces_classification_p_values(
        probs, labels, test, torch.rand(n, generator=g), None, conditional
    ).p_values
    denom = (
        (torch.bincount(labels, minlength=k) + 1).double()
        if conditional
        else torch.full((k,), n + 1.0, dtype=torch.float64)
    )
    assert (p >= 1 / denom - 1e-12).all() and (p <= 1).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(3, 30), st.integers(0, 2**31 - 1))
def test_regression_sets_grow_as_alpha_shrinks(t, n, seed):
    g = torch.Generator().manual_seed(seed)
    hold = torch.randn(t, n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    test = torch.randn(t, 5, generator=g, dtype=torch.float64) * 3
    wide = core.ces_regression_intervals(hold, y, test, 0.1)
    narrow = core.ces_regression_intervals(hold, y, test, 0.4)
    assert (wide.lower <= narrow.lower).all() and (wide.upper >= narrow.upper).all()
    assert (narrow.lower <= narrow.upper).all()
