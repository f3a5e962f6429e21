"""Genotype derivation and the DARTS+ criteria against hand-worked alpha tensors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eecontrol.core.darts import (
    DARTS_OPS,
    DartsPlusCriteria,
    Genotype,
    SearchSpace,
    derive_cell,
    derive_genotype,
    num_edges,
    op_ranking,
    skip_counts,
    softmax_weights,
    stability_signature,
    steps_from_edges,
)

OP = {name: i for i, name in enumerate(DARTS_OPS)}
SPACE2 = SearchSpace(DARTS_OPS, steps=2)
SPACE4 = SearchSpace(DARTS_OPS, steps=4)


def row(**values: float) -> list[float]:
    """An alpha row over the DARTS ops: zeros except the named ops."""
    r = [0.0] * len(DARTS_OPS)
    for name, v in values.items():
        r[OP[name]] = v
    return r


def derive2(*rows: list[float]) -> tuple[tuple[str, int], ...]:
    """The two-step cell derived from these alpha rows (softmax first)."""
    return derive_cell(softmax_weights(torch.tensor(list(rows))), SPACE2)


def reference_parse(probs: list[list[float]], steps: int) -> list[tuple[str, int]]:
    """An independent DARTS-style parse written from the paper's description."""
    none = OP["none"]
    gene, start = [], 0
    for node in range(steps):
        block = probs[start : start + node + 2]
        strengths = [
            (max(p for k, p in enumerate(r) if k != none), -j) for j, r in enumerate(block)
        ]
        kept = [-neg for _, neg in sorted(strengths, reverse=True)[:2]]
        for j in kept:
            ops = [(p, -k) for k, p in enumerate(block[j]) if k != none]
            gene.append((DARTS_OPS[-max(ops)[1]], j))
        start += node + 2
    return gene


def test_hand_worked_cell_uses_softmax_and_ignores_none():
    alpha = torch.tensor(
        [
            row(skip_connect=2.0),  # node 2 <- input 0
            row(sep_conv_3x3=1.0),  # node 2 <- input 1
            row(max_pool_3x3=0.5),  # node 3 <- input 0: p(max_pool) = 0.19
            row(dil_conv_3x3=3.0),  # node 3 <- input 1: p(dil_conv) = 0.74
            row(none=5.0, avg_pool_3x3=1.5),  # node 3 <- node 2: raw 1.5 but p = 0.028
        ]
    )
    probs = softmax_weights(alpha)
    assert probs[2, OP["max_pool_3x3"]] == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 7))
    gene = derive_cell(probs, SPACE2)
    # node 2 keeps both inputs, strongest first; node 3 drops the none-dominated edge
    # even though its raw alpha (1.5) beats max_pool's (0.5)
    assert gene == (
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("dil_conv_3x3", 1),
        ("max_pool_3x3", 0),
    )


def test_none_dominating_every_edge_still_gives_a_real_op():
    gene = derive2(
        row(none=10.0, sep_conv_5x5=0.1),
        row(none=10.0, dil_conv_5x5=0.2),
        row(none=10.0),  # uniform over the real ops: the first one wins the tie
        row(none=10.0, skip_connect=0.3),
        row(none=10.0, avg_pool_3x3=0.05),
    )
    assert gene == (
        ("dil_conv_5x5", 1),
        ("sep_conv_5x5", 0),
        ("skip_connect", 1),
        ("avg_pool_3x3", 2),
    )
    assert all(op != "none" for op, _ in gene)


def test_ties_break_by_position():
    gene = derive2(
        row(sep_conv_3x3=2.0, dil_conv_3x3=2.0),  # op tie: sep_conv_3x3 comes first
        row(none=1.0, skip_connect=1.0),  # none ties the best: never chosen
        row(dil_conv_5x5=2.0),  # three identical edges: inputs 0 and 1 kept
        row(dil_conv_5x5=2.0),
        row(dil_conv_5x5=2.0),
    )
    # node 2: edge 0 (p = e^2/(2e^2+6)) beats edge 1 (e/(2e+6)); node 3: input 0 then 1
    assert gene == (
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
        ("dil_conv_5x5", 0),
        ("dil_conv_5x5", 1),
    )
    uniform = derive_cell(softmax_weights(torch.zeros(5, 8)), SPACE2)
    assert uniform == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 2


@pytest.mark.parametrize("seed", range(5))
def test_matches_an_independent_reference_on_random_alphas(seed):
    g = torch.Generator().manual_seed(seed)
    alphas = {c: torch.randn(14, 8, generator=g) for c in ("normal", "reduce")}
    genotype = derive_genotype(alphas, SPACE4)
    for cell, alpha in alphas.items():
        assert list(genotype.cells[cell]) == reference_parse(softmax_weights(alpha).tolist(), 4)
    assert genotype.concat == {"normal": (2, 3, 4, 5), "reduce": (2, 3, 4, 5)}


def test_skip_counts_and_genotype_json_roundtrip(tmp_path):
    normal = torch.zeros(14, 8)
    normal[0, OP["skip_connect"]] = 3.0  # node 2 <- 0
    normal[2, OP["skip_connect"]] = 3.0  # node 3 <- 0
    normal[5, OP["skip_connect"]] = 3.0  # node 4 <- 0
    genotype = derive_genotype({"normal": normal, "reduce": torch.zeros(14, 8)}, SPACE4)
    assert skip_counts(genotype) == {"normal": 3, "reduce": 0}
    data = genotype.to_dict()
    assert set(data) == {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"genotype": data, "epoch": 3}))  # the callback's file
    assert Genotype.load(path) == genotype
    assert Genotype.load(str(path)) == genotype
    assert Genotype.load(genotype.to_json()) == genotype
    assert "normal=[('skip_connect', 0)" in str(genotype)


def test_search_space_layout_and_errors():
    assert [num_edges(s) for s in (1, 2, 3, 4)] == [2, 5, 9, 14]
    assert steps_from_edges(14) == 4
    with pytest.raises(ValueError, match="cannot have 13 edges"):
        steps_from_edges(13)
    assert SPACE4.learnable_ops == ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert SearchSpace(DARTS_OPS, steps=4, multiplier=2).concat == (4, 5)
    custom = SearchSpace(
        ("identity", "conv_1x1", "zero"), steps=2, none_op="zero", skip_op="identity"
    )
    assert custom.candidate_indices == [0, 1] and custom.learnable_ops == ("conv_1x1",)
    with pytest.raises(ValueError, match="shape"):
        SPACE4.check("normal", torch.zeros(5, 8))
    with pytest.raises(ValueError, match="NaN or inf"):
        SPACE2.check("normal", torch.full((5, 8), float("nan")))
    with pytest.raises(ValueError, match="`learnable_ops`"):
        SearchSpace(DARTS_OPS, learnable_ops=("conv_7x7",))
    with pytest.raises(ValueError, match="no op other than"):
        SearchSpace(("none",), steps=1)


def test_ranking_is_stable_on_ties_and_scopes_differ():
    alpha = torch.tensor([row(sep_conv_3x3=0.5, dil_conv_5x5=0.5, sep_conv_5x5=0.9)] * 2)
    assert op_ranking(alpha, SPACE4.learnable_indices) == [[5, 4, 7, 6]] * 2
    alphas = {"normal": torch.zeros(14, 8), "reduce": torch.zeros(14, 8)}
    genotype = derive_genotype(alphas, SPACE4)
    both = stability_signature(alphas, genotype, SPACE4, "both")
    normal = stability_signature(alphas, genotype, SPACE4, "normal")
    assert [c for c, _ in both] == ["normal", "reduce"] and [c for c, _ in normal] == ["normal"]
    assert stability_signature(alphas, genotype, SPACE4, "genotype")[0][1][0] == ["max_pool_3x3", 0]


def scripted(skips: int, order: int, reduce_order: int = 0) -> dict[str, torch.Tensor]:
    """Alphas whose normal genotype has ``skips`` skip-connects and a chosen ranking."""
    learn = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

    def ranks(o: int) -> list[float]:
        vals = [0.1, 0.2, 0.3, 0.4]
        return vals[o % 4 :] + vals[: o % 4]

    def cell(n_skip: int, o: int) -> torch.Tensor:
        a = torch.zeros(14, 8)
        a[:, [OP[x] for x in learn]] = torch.tensor(ranks(o))
        start = 0
        for node in range(4):
            a[start, OP["skip_connect" if node < n_skip else "sep_conv_3x3"]] = 3.0
            a[start + 1, OP["sep_conv_3x3"]] = 2.5
            start += node + 2
        return a

    return {"normal": cell(skips, order), "reduce": cell(0, reduce_order)}


@pytest.mark.parametrize(
    ("script", "kwargs", "expected_stop"),
    [
        # (skips, order) per epoch
        ([(0, 0), (1, 1), (2, 2), (2, 3)], {"criterion": "skip"}, 2),
        ([(2, 0), (2, 1), (2, 2), (2, 3)], {"criterion": "skip", "min_epochs": 3}, 2),
        ([(3, 0), (0, 1)], {"criterion": "skip", "max_skip": 3}, 0),
        ([(0, 0), (0, 1)] + [(0, 2)] * 5, {"criterion": "stable", "patience": 3}, 5),
        ([(0, 0)] * 6, {"criterion": "stable", "patience": 3, "min_epochs": 5}, 4),
        ([(2, i) for i in range(4)] + [(1, 9)] * 4, {"criterion": "both", "patience": 2}, None),
        # the skips change the ranking too (the skip edge's row changes): counter restarts at 3
        ([(0, 0)] * 3 + [(2, 0)] * 4, {"criterion": "both", "patience": 2}, 5),
        ([(0, 0)] * 3 + [(2, 1)] * 2, {"criterion": "either", "patience": 5}, 3),
    ],
)
def test_criteria_fire_at_the_expected_epoch(script, kwargs, expected_stop):
    crit = DartsPlusCriteria(SPACE4, **kwargs)
    stops = [e for e, (s, o) in enumerate(script) if crit.update(scripted(s, o), e).stop]
    assert (stops[0] if stops else None) == expected_stop


def test_counter_scopes_and_state_roundtrip():
    script = [scripted(0, 0, reduce_order=i) for i in range(4)]  # only reduce changes
    both = DartsPlusCriteria(SPACE4, scope="both")
    normal = DartsPlusCriteria(SPACE4, scope="normal")
    geno = DartsPlusCriteria(SPACE4, scope="genotype")
    for e, a in enumerate(script):
        rb, rn, rg = both.update(a, e), normal.update(a, e), geno.update(a, e)
    assert (rb.stable_epochs, rn.stable_epochs, rg.stable_epochs) == (0, 3, 3)
    resumed = DartsPlusCriteria(SPACE4, scope="normal")
    resumed.load_state_dict(json.loads(json.dumps(normal.state_dict())))
    assert (
        resumed.update(script[-1], 4).stable_epochs
        == normal.update(script[-1], 4).stable_epochs
        == 4
    )
    with pytest.raises(ValueError, match="`criterion` must be one of"):
        DartsPlusCriteria(SPACE4, criterion="any")
    with pytest.raises(ValueError, match="'normal' cell"):
        DartsPlusCriteria(SPACE4).update({"reduce": torch.zeros(14, 8)}, 0)


def test_op_options_that_silence_a_criterion_are_errors():
    with pytest.raises(ValueError, match=r"`learnable_ops` must be None or a non-empty list"):
        SearchSpace(DARTS_OPS, learnable_ops=())
    with pytest.raises(ValueError, match=r"`none_op` and `skip_op` must be different"):
        SearchSpace(DARTS_OPS, none_op="skip_connect", skip_op="skip_connect")
    pools = SearchSpace(("none", "max_pool_3x3", "skip_connect"), steps=2)
    assert pools.learnable_ops == ()  # no conv: criterion 2 would rank nothing
    with pytest.raises(ValueError, match=r"criterion 2 .* ranks the learnable ops"):
        DartsPlusCriteria(pools, criterion="stable")
    DartsPlusCriteria(pools, criterion="skip")  # criterion 1 alone needs no ranking
    DartsPlusCriteria(pools, criterion="either", scope="genotype")
