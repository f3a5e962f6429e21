"""CES core: hand-worked cases, brute-force references, and validity by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eecontrol.core.conformal import (
    aps_scores,
    benjamini_hochberg,
    ces_classification_p_values,
    ces_outlier_p_values,
    ces_regression_intervals,
    conformal_rank,
    prediction_sets,
    split_classification_p_values,
    split_outlier_p_values,
    split_regression_intervals,
)


def test_conformal_rank():
    assert conformal_rank(9, 0.1) == 9  # ceil(0.9 * 10) = 9, no float error
    assert conformal_rank(99, 0.1) == 90
    assert conformal_rank(5, 0.1) == 6  # > n: infinite quantile
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 1\), got 1.5"):
        conformal_rank(10, 1.5)


def test_aps_scores_hand_worked():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    got = aps_scores(probs, torch.tensor([0.5, 1.0]))
    expected = torch.tensor(
        [[0.25, 0.5 + 0.15, 0.8 + 0.1], [0.4, 0.4, 0.8 + 0.2]], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected)
    # non-randomised: u = 1
    torch.testing.assert_close(
        aps_scores(probs[:1]), torch.tensor([[0.5, 0.8, 1.0]], dtype=torch.float64)
    )


def test_outlier_hand_worked():
    # T = 2 candidates, n = 3 hold-out points; score = loss
    holdout = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.6, 4.0]])  # L = 6.0 and 5.1
    test = torch.tensor([[2.5, 0.1], [1.0, 1.5]])
    res = ces_outlier_p_values(holdout, holdout, test, test)
    # point 0: 6.0 + 2.5 = 8.5 vs 5.1 + 1.0 = 6.1 -> model 1; scores >= 1.0 under model 1: {4.0}
    # point 1: 6.0 + 0.1 = 6.1 vs 5.1 + 1.5 = 6.6 -> model 0; scores >= 0.1: all 3
    assert res.selected.tolist() == [1, 0]
    torch.testing.assert_close(res.p_values, torch.tensor([2 / 4, 4 / 4], dtype=torch.float64))
    torch.testing.assert_close(
        split_outlier_p_values(holdout[0], test[0]),
        torch.tensor([2 / 4, 4 / 4], dtype=torch.float64),
    )


def test_benjamini_hochberg_hand_worked():
    p = torch.tensor([0.01, 0.04, 0.03, 0.5, 0.02])
    # sorted 0.01 0.02 0.03 0.04 0.5 vs q k / m = 0.01 0.02 0.03 0.04 0.05 at q = 0.05
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True, True, False, True]
    assert benjamini_hochberg(torch.tensor([0.9, 0.8]), 0.05).tolist() == [False, False]
    with pytest.raises(ValueError, match="`q` must be in"):
        benjamini_hochberg(p, 0.0)


def _brute_force_classification(probs, labels, test, u_cal, u_test, conditional):
    """Loops over points and labels: the paper's algorithm written plainly (numpy)."""
    probs, test = probs.double().numpy(), test.double().numpy()
    labels = labels.numpy()
    t_count, n, k = probs.shape
    loss = np.array([-np.log(probs[t, np.arange(n), labels]).sum() for t in range(t_count)])

    def aps(p, y, u):
        return p[p > p[y]].sum() + u * p[y]

    out = np.zeros((test.shape[1], k))
    for j in range(test.shape[1]):
        for y in range(k):
            t = int(np.argmin(loss - np.log(test[:, j, y])))
            s_test = aps(test[t, j], y, u_test[j])
            members = [i for i in range(n) if (labels[i] == y or not conditional)]
            s_cal = [aps(probs[t, i], labels[i], u_cal[i]) for i in members]
            out[j, y] = (1 + sum(s >= s_test for s in s_cal)) / (1 + len(members))
    return out


@pytest.mark.parametrize("conditional", [True, False])
def test_classification_matches_brute_force(conditional):
    g = torch.Generator().manual_seed(3)
    t, n, m, k = 6, 40, 25, 4
    probs = torch.softmax(torch.randn(t, n, k, generator=g) * 2, -1)
    test = torch.softmax(torch.randn(t, m, k, generator=g) * 2, -1)
    labels = torch.randint(0, k, (n,), generator=g)
    u_cal, u_test = torch.rand(n, generator=g), torch.rand(m, generator=g)
    res = ces_classification_p_values(probs, labels, test, u_cal, u_test, conditional=conditional)
    expected = _brute_force_classification(
        probs, labels, test, u_cal.numpy(), u_test.numpy(), conditional
    )
    np.testing.assert_allclose(res.p_values.numpy(), expected)


def test_classification_hand_worked_selection_per_label():
    # two candidates; candidate 1 has the lower hold-out loss, but for label 0 of the test
    # point candidate 0 is so much more confident that it wins the augmented loss
    probs = torch.tensor([[[0.6, 0.4], [0.4, 0.6]], [[0.7, 0.3], [0.3, 0.7]]])  # (T=2, n=2, K=2)
    labels = torch.tensor([0, 1])
    test = torch.tensor([[[0.99, 0.01]], [[0.2, 0.8]]])
    res = ces_classification_p_values(probs, labels, test, conditional=False)
    # L_0 = -2 log 0.6 = 1.0217, L_1 = -2 log 0.7 = 0.7133
    # label 0: 1.0217 - log .99 = 1.0317 vs 0.7133 - log .2 = 2.3227 -> candidate 0
    # label 1: 1.0217 - log .01 = 5.627 vs 0.7133 - log .8 = 0.9364 -> candidate 1
    assert res.selected.tolist() == [[0, 1]]
    # candidate 0, label 0: test score 0.99 (u = 1); hold-out scores 0.6, 0.6 -> p = 1 / 3
    # candidate 1, label 1: test score 0.8; hold-out scores 0.7, 0.7 -> p = 1 / 3
    torch.testing.assert_close(res.p_values, torch.tensor([[1 / 3, 1 / 3]], dtype=torch.float64))
    assert prediction_sets(res.p_values, 0.2).tolist() == [[True, True]]
    assert prediction_sets(res.p_values, 0.5).tolist() == [[False, False]]


def test_split_classification_equals_one_candidate():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(30, 3, generator=g), -1)
    test = torch.softmax(torch.randn(5, 3, generator=g), -1)
    labels = torch.randint(0, 3, (30,), generator=g)
    p = split_classification_p_values(probs, labels, test)
    expected = _brute_force_classification(
        probs[None], labels, test[None], np.ones(30), np.ones(5), True
    )
    np.testing.assert_allclose(p.numpy(), expected)


def _grid_membership(hp, hy, tp, alpha, grid):
    """Brute force over y: select t*(y), then keep y if |y - m_t*| <= Q_t*."""
    n = hy.numel()
    res = (hy.unsqueeze(0) - hp).abs()
    loss = (res**2).sum(1)
    rank = conformal_rank(n, alpha)
    q = (
        torch.sort(res, 1).values[:, rank - 1]
        if rank <= n
        else torch.full((hp.shape[0],), math.inf)
    )
    aug = loss.unsqueeze(1) + (grid.unsqueeze(0) - tp.unsqueeze(1)) ** 2  # (T, G)
    t = aug.argmin(0)
    return (grid - tp[t]).abs() <= q[t], aug


def test_regression_hand_worked_two_candidates():
    # candidate 0 predicts 0 everywhere, candidate 1 predicts 10 on the test point
    hp = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]], dtype=torch.float64)
    hy = torch.tensor(
        [1.0, -1.0, 2.0], dtype=torch.float64
    )  # L_0 = 6, L_1 = 1; residuals 1,1,2 / 0,0,1
    tp = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    res = ces_regression_intervals(hp, hy, tp, alpha=0.5, union=True)  # rank ceil(0.5*4) = 2
    # Q_0 = 1, Q_1 = 0; knot = (0 + 10) / 2 + (1 - 6) / (2 * 10) = 4.75
    # candidate 0 owns (-inf, 4.75]: [-1, 1]; candidate 1 owns [4.75, inf): [10, 10]
    assert res.union(0) == [(-1.0, 1.0), (10.0, 10.0)]
    assert (res.lower.item(), res.upper.item()) == (-1.0, 10.0)


def test_regression_union_equals_brute_force_grid():
    g = torch.Generator().manual_seed(7)
    t, n, m = 12, 30, 40
    hy = torch.randn(n, generator=g, dtype=torch.float64)
    hp = hy.unsqueeze(0) + torch.randn(t, n, generator=g, dtype=torch.float64) * torch.linspace(
        0.3, 1.5, t
    ).unsqueeze(1)
    tp = torch.randn(t, m, generator=g, dtype=torch.float64) * 2
    res = ces_regression_intervals(hp, hy, tp, alpha=0.2, union=True)
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    checked = 0
    for j in range(m):
        inside, aug = _grid_membership(hp, hy, tp[:, j], 0.2, grid)
        pieces = res.union(j)
        mine = torch.zeros_like(inside)
        for lo, hi in pieces:
            mine |= (grid >= lo) & (grid <= hi)
        # ignore grid points within 1e-9 of a selection tie (a knot)
        top2 = torch.topk(aug, 2, dim=0, largest=False).values
        clear = (top2[1] - top2[0]) > 1e-9
        assert torch.equal(mine[clear], inside[clear]), f"point {j}: {pieces}"
        checked += int(clear.sum())
        assert pieces and res.lower[j] == pieces[0][0] and res.upper[j] == pieces[-1][1]
    assert checked > 0.99 * m * grid.numel()


def test_regression_infinite_quantile_gives_the_whole_line():
    hp = torch.zeros(3, 5, dtype=torch.float64) + torch.arange(3.0, dtype=torch.float64).unsqueeze(
        1
    )
    res = ces_regression_intervals(hp, torch.zeros(5), torch.zeros(3, 2), alpha=0.1)  # rank 6 > 5
    assert torch.isinf(res.lower).all() and (res.lower < 0).all()
    assert torch.isinf(res.upper).all() and (res.upper > 0).all()
    lo, hi = split_regression_intervals(hp[0], torch.zeros(5), torch.zeros(2), 0.1)
    assert torch.isinf(lo).all() and torch.isinf(hi).all()


def test_regression_set_is_never_empty_and_holds_the_best_models_prediction():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        t, n, m = 7, 15, 20
        hp = torch.randn(t, n, generator=g, dtype=torch.float64) * 3
        hy = torch.randn(n, generator=g, dtype=torch.float64)
        tp = torch.randn(t, m, generator=g, dtype=torch.float64) * 5
        res = ces_regression_intervals(hp, hy, tp, alpha=0.3, union=True)
        best = int(((hy - hp) ** 2).sum(1).argmin())
        for j in range(m):
            assert any(lo <= tp[best, j] <= hi for lo, hi in res.union(j))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "`alpha` must be in"),
        ({"test_pred": torch.zeros(2, 3)}, "shapes must be"),
        ({"holdout_y": torch.tensor([0.0, math.nan, 0.0, 0.0])}, "non-finite"),
    ],
)
def test_regression_bad_input(kwargs, message):
    args = {
        "holdout_pred": torch.zeros(3, 4),
        "holdout_y": torch.zeros(4),
        "test_pred": torch.zeros(3, 2),
        "alpha": 0.1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ces_regression_intervals(**args)


def test_classification_bad_input():
    probs = torch.full((2, 3, 2), 0.5)
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        ces_classification_p_values(probs, torch.tensor([0, 1, 2]), probs)
    with pytest.raises(ValueError, match="same number of candidates"):
        ces_classification_p_values(probs, torch.tensor([0, 1, 1]), torch.full((3, 3, 2), 0.5))
    with pytest.raises(ValueError, match="non-finite"):
        ces_classification_p_values(probs, torch.tensor([0, 1, 1]), torch.full((2, 3, 2), math.nan))


# ---------------------------------------------------------------------------------------
# Validity by simulation: exchangeable data, candidate models that do not see it.


def _binomial_bound(alpha: float, reps: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def test_outlier_p_values_are_valid_under_exchangeable_nulls():
    g = torch.Generator().manual_seed(11)
    reps, t, n = 3000, 8, 19
    p = []
    for _ in range(reps):
        z = torch.randn(n + 1, 2, generator=g)
        # candidate t's loss is a fixed function of the point (a different centre per candidate)
        centres = torch.linspace(-1, 1, t).unsqueeze(1) * torch.tensor([[1.0, 0.5]])
        loss = ((z.unsqueeze(0) - centres.unsqueeze(1)) ** 2).sum(-1)  # (T, n + 1)
        p.append(
            float(
                ces_outlier_p_values(loss[:, :n], loss[:, :n], loss[:, n:], loss[:, n:]).p_values[0]
            )
        )
    p = np.array(p)
    assert p.min() >= 1 / (n + 1) and p.max() <= 1
    for alpha in (0.1, 0.2, 0.5):
        assert np.mean(p <= alpha) <= _binomial_bound(alpha, reps)
    # and not trivially conservative: close to uniform on the grid k / (n + 1)
    assert np.mean(p <= 0.5) >= 0.5 - 4 * math.sqrt(0.25 / reps) - 1 / (n + 1)


@pytest.mark.parametrize("conditional", [True, False])
def test_classification_sets_cover_under_exchangeability(conditional):
    g = torch.Generator().manual_seed(5)
    reps, t, n, k, alpha = 1500, 5, 60, 3, 0.2
    w = torch.randn(t, 2, k, generator=g)  # candidate models: fixed random softmax regressions
    covered = []
    for _ in range(reps):
        x = torch.randn(n + 1, 2, generator=g)
        y = torch.distributions.Categorical(
            logits=x @ torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, -2.0]])
        ).sample()
        probs = torch.softmax(torch.einsum("nd,tdk->tnk", x, w), -1)
        u = torch.rand(n + 1, generator=g)
        res = ces_classification_p_values(
            probs[:, :n], y[:n], probs[:, n:], u[:n], u[n:], conditional=conditional
        )
        covered.append(bool(prediction_sets(res.p_values, alpha)[0, y[n]]))
    assert np.mean(covered) >= 1 - _binomial_bound(alpha, reps)


def test_regression_intervals_cover_under_exchangeability():
    g = torch.Generator().manual_seed(9)
    reps, t, n, alpha = 2000, 10, 30, 0.1
    slopes = torch.linspace(0.0, 2.0, t)
    covered = []
    for _ in range(reps):
        x = torch.randn(n + 1, generator=g)
        y = 1.2 * x + 0.5 * torch.randn(n + 1, generator=g)
        pred = slopes.unsqueeze(1) * x.unsqueeze(0)  # (T, n + 1)
        res = ces_regression_intervals(pred[:, :n], y[:n], pred[:, n:], alpha)
        covered.append(bool(res.lower[0] <= y[n] <= res.upper[0]))
    assert np.mean(covered) >= 1 - _binomial_bound(alpha, reps)
