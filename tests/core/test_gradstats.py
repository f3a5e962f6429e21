"""GradES core: component discovery on real naming schemes, statistics, thresholds, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from eecontrol.core.gradstats import (
    DEFAULT_PATTERNS,
    PRESETS,
    FreezeRule,
    GradStatistic,
    _fused_l1,
    check_tau,
    find_components,
    freeze_parameters,
    resolve_taus,
)
from tests.conftest import TINY_GQA

TINY = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}


def tiny_bert(layers: int = 2) -> BertModel:
    return BertModel(BertConfig(num_hidden_layers=layers, **TINY))


class LoraLinear(nn.Module):
    """A PEFT-style LoRA layer: frozen base, adapters in ModuleDicts named lora_A / lora_B."""

    def __init__(self, n: int = 8, r: int = 2) -> None:
        super().__init__()
        self.base_layer = nn.Linear(n, n)
        self.base_layer.requires_grad_(False)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(n, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, n, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x))


class LoraAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = LoraLinear()
        self.v_proj = LoraLinear()
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.q_proj(x) + self.v_proj(x))


# --- discovery ------------------------------------------------------------------------


def test_bert_names():
    comps = find_components(tiny_bert(2))
    names = [c.name for c in comps]
    # discovery by structure finds exactly the matrices the BERT name preset names
    per_layer = PRESETS["bert"]
    assert len(per_layer) == 6
    assert names == [f"encoder.layer.{i}.{s}" for i in range(2) for s in per_layer]
    assert comps[0].param_names == (
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.bias",
    )


def test_llama_names():
    cfg = LlamaConfig(num_hidden_layers=2, num_key_value_heads=1, **TINY)
    names = [c.name for c in find_components(LlamaModel(cfg))]
    per_layer = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert names == [f"layers.{i}.{s}" for i in range(2) for s in per_layer]


def test_gpt2_names():
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    names = [c.name for c in find_components(GPT2Model(cfg))]
    per_layer = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert names == [f"h.{i}.{s}" for i in range(2) for s in per_layer]


def test_torch_transformer_packed_in_proj():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    comps = {c.name: c for c in find_components(encoder)}
    per_layer = ["self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"]
    assert list(comps) == [f"layers.{i}.{s}" for i in range(2) for s in per_layer]
    assert comps["layers.0.self_attn.in_proj"].param_names == (
        "layers.0.self_attn.in_proj_weight",
        "layers.0.self_attn.in_proj_bias",
    )
    assert comps["layers.0.self_attn.in_proj"].params[0].shape == (48, 16)  # Q, K, V packed
    # the name preset still finds them on a single layer
    names = [c.name for c in find_components(layer, DEFAULT_PATTERNS)]
    assert names == ["self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"]


def test_multihead_attention_with_separate_kv_sizes_freezes_its_shared_bias():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)
    comps = find_components(nn.Sequential(mha), DEFAULT_PATTERNS)
    assert [c.name for c in comps] == ["0.in_proj", "0.out_proj"]
    # Q, K and V weights share one packed bias, so they are one component with it
    assert comps[0].param_names == (
        "0.q_proj_weight",
        "0.k_proj_weight",
        "0.v_proj_weight",
        "0.in_proj_bias",
    )
    opt = torch.optim.AdamW(mha.parameters(), lr=0.1, weight_decay=0.1)
    q, kv = torch.randn(3, 2, 16), torch.randn(4, 2, 8)
    freeze_parameters(comps[0].params, [opt])
    before = [p.detach().clone() for p in comps[0].params]
    for _ in range(2):
        opt.zero_grad()
        mha(q, kv, kv)[0].square().mean().backward()
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(comps[0].params, before))


def test_lora_pair_is_one_component_and_base_is_never_one():
    comps = find_components(nn.ModuleList([LoraAttention(), LoraAttention()]))
    assert [c.name for c in comps] == ["0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"]
    assert comps[0].param_names == (
        "0.q_proj.lora_A.default.weight",
        "0.q_proj.lora_B.default.weight",
    )
    # a pattern that names the adapters themselves still gives the pair as one component
    comps = find_components(LoraAttention(), patterns=["*.lora_A.*", "*.lora_B.*"])
    assert [c.name for c in comps] == ["q_proj", "v_proj"]
    assert comps[0].param_names == ("q_proj.lora_A.default.weight", "q_proj.lora_B.default.weight")


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (
            ["re:encoder\\.layer\\.1\\..*\\.(query|key)"],
            ["attention.self.query", "attention.self.key"],
        ),
        (["encoder.layer.1.*.value"], ["attention.self.value"]),
        (["intermediate.dense"], ["intermediate.dense"]),
    ],
)
def test_regex_glob_and_suffix_patterns(patterns, expected):
    names = [c.name for c in find_components(tiny_bert(2), patterns)]
    assert names == [f"encoder.layer.1.{e}" for e in expected] or names == [
        f"encoder.layer.{i}.{e}" for i in range(2) for e in expected
    ]


def test_no_match_lists_the_module_names_seen():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"Module names seen: \['0', '1', '2'\]"):
        find_components(model)
    with pytest.raises(ValueError, match="`patterns` must be a non-empty list"):
        find_components(model, patterns="q_proj")
    with pytest.raises(ValueError, match="invalid regular expression"):
        find_components(model, patterns=["re:("])


def test_frozen_parameters_are_not_components():
    model = tiny_bert(1)
    model.encoder.layer[0].attention.requires_grad_(False)
    names = [c.name for c in find_components(model)]
    assert names == ["encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"]


# --- statistics -----------------------------------------------------------------------


def _backward(model: BertModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids).last_hidden_state.square().mean().backward()


def test_fused_reduction_equals_per_tensor_norms():
    tensors = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2, 2)]
    assert _fused_l1(tensors) == pytest.approx([t.abs().sum().item() for t in tensors], rel=1e-6)


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_grad_l1_matches_hand_computation(normalize):
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "grad_l1", normalize)
    _backward(model, 0)
    values = stat.read(range(len(comps)))
    for comp, value in zip(comps, values):
        ref = sum(p.grad.abs().sum().item() for p in comp.params)
        if normalize == "mean":
            ref /= sum(p.numel() for p in comp.params)
        assert value == pytest.approx(ref, rel=1e-5)


def test_grad_delta_l1_matches_hand_computation_and_first_reading_is_none():
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "grad_delta_l1")
    active = list(range(len(comps)))
    _backward(model, 0)
    assert stat.read(active) == [None] * len(comps)  # no previous gradient: no decision
    stat.snapshot(active)
    previous = [[p.grad.clone() for p in c.params] for c in comps]
    _backward(model, 1)
    values = stat.read(active)
    for comp, prev, value in zip(comps, previous, values):
        ref = sum((p.grad - q).abs().sum().item() for p, q in zip(comp.params, prev))
        assert value == pytest.approx(ref, rel=1e-5)
        assert value > 0


def test_weight_delta_l1_matches_hand_computation():
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "weight_delta_l1", "mean")
    active = list(range(len(comps)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert stat.read(active) == [None] * len(comps)
    stat.snapshot(active)
    before = [[p.detach().clone() for p in c.params] for c in comps]
    for seed in range(3):
        _backward(model, seed)
        opt.step()
    values = stat.read(active)
    for comp, old, value in zip(comps, before, values):
        ref = sum((p - q).abs().sum().item() for p, q in zip(comp.params, old)) / comp.numel
        assert value == pytest.approx(ref, rel=1e-5)


def test_weight_delta_snapshot_taken_during_the_reading_equals_a_separate_one():
    model = tiny_bert(1)
    comps = find_components(model)
    active = list(range(len(comps)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fused, separate = (GradStatistic(comps, "weight_delta_l1") for _ in range(2))
    for stat in (fused, separate):
        stat.snapshot(active)
    for seed in range(3):
        _backward(model, seed)
        opt.step()
        a = fused.read(active, refresh=True)
        fused.snapshot(active)  # skips the components refreshed during the reading
        b = separate.read(active)
        separate.snapshot(active)
        assert a == b and all(v is not None and v > 0 for v in a)


def test_failed_readings_are_none_never_zero():
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "grad_l1")
    assert stat.read([0, 1]) == [None, None]  # no gradient yet
    _backward(model, 0)
    comps[1].params[0].grad[0, 0] = float("nan")
    values = stat.read([0, 1])
    assert values[0] is not None and values[0] > 0 and values[1] is None


def test_snapshot_state_roundtrip():
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "weight_delta_l1")
    stat.snapshot([0, 2])
    other = GradStatistic(comps, "weight_delta_l1")
    other.load_state_dict(stat.state_dict())
    with torch.no_grad():
        comps[0].params[0].add_(1.0)
    assert other.read([0, 1, 2]) == stat.read([0, 1, 2])


def test_l1_is_exact_on_a_45m_entry_matrix_and_fp16_does_not_overflow():
    """The issue's case: fused fp32 drifts on 45M entries, fp16 overflows to inf."""
    big = torch.full((45_000_000,), -1e-3)  # constant: the exact L1 is known in closed form
    exact = 45_000_000 * abs(big[0].item())
    fused = torch._foreach_norm([big], 1)[0].item()
    assert abs(fused - exact) / exact > 1e-4  # the fused fp32 reduction drifts here
    (value,) = _fused_l1([big])
    assert abs(value - exact) / exact < 1e-7
    half = (torch.randn(1024, 1024) * 3).half()
    assert torch._foreach_norm([half], 1)[0].item() == math.inf  # fp16 accumulation overflows
    (value,) = _fused_l1([half])
    exact = half.double().abs().sum().item()
    assert abs(value - exact) / exact < 1e-7


def test_failure_reasons_say_why_there_is_no_reading():
    model = tiny_bert(1)
    comps = find_components(model)
    stat = GradStatistic(comps, "grad_l1")
    assert stat.read([0]) == [None] and stat.failures == {0: "no gradient"}
    _backward(model, 0)
    comps[1].params[0].grad[0, 0] = float("inf")
    assert stat.read([0, 1])[1] is None and stat.failures == {1: "non-finite value"}


def test_grad_delta_snapshot_survives_in_place_gradient_reuse():
    """With zero_grad(set_to_none=False) a kept gradient reference would be overwritten."""
    model = tiny_bert(1)
    comps = find_components(model)
    active = list(range(len(comps)))
    stat = GradStatistic(comps, "grad_delta_l1")
    for seed in range(4):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()  # in place, as zero_grad(set_to_none=False)
        model(
            input_ids=torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(seed))
        )[0].square().mean().backward()
        if seed == 0:
            stat.snapshot(active)
            previous = [[p.grad.clone() for p in c.params] for c in comps]
            continue
        values = stat.read(active)
        if seed == 1:  # the kept reference was reused in place: no reading, copies from now on
            assert values == [None] * len(comps) and stat._copy_grads
        else:
            for comp, prev, value in zip(comps, previous, values):
                ref = sum((p.grad - q).abs().sum().item() for p, q in zip(comp.params, prev))
                assert value == pytest.approx(ref, rel=1e-6)
        stat.snapshot(active)
        previous = [[p.grad.clone() for p in c.params] for c in comps]


def test_keep_includes_a_restored_frozen_set():
    model = tiny_bert(2)
    comps = find_components(model)
    frozen = [n for c in comps[:3] for n in c.param_names]
    freeze_parameters(p for c in comps[:3] for p in c.params)
    assert len(find_components(model)) == len(comps) - 3
    assert [c.name for c in find_components(model, keep=frozen)] == [c.name for c in comps]


# --- thresholds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("readings", "expected_freeze_step"),
    [
        # reference = mean of readings at steps 5..9 = 10; freeze below 0.3 x 10 = 3
        ([10.0] * 10 + [5.0, 4.0, 2.9], 12),
        ([10.0] * 10 + [3.5, 3.1, 3.0, 2.0], 13),
        ([10.0] * 10 + [None, 2.0], 11),  # a failed reading decides nothing
        ([10.0] * 9 + [1.0], None),  # small values inside the grace period never freeze
    ],
)
def test_auto_rule_table(readings, expected_freeze_step):
    rule = FreezeRule(["auto"], rel_tau=0.3, smoothing=0.0)
    froze = None
    for step, value in enumerate(readings):
        if rule.update(0, value, step, grace_step=10):
            froze = step
            break
    assert froze == expected_freeze_step


def test_auto_rule_is_scale_free():
    steps = [10.0, 9.0, 8.0, 8.0, 7.0, 7.0, 6.0, 3.0, 2.0, 1.0, 0.5]
    decisions = []
    for scale in (1.0, 1e-6, 1e6):
        rule = FreezeRule(["auto"], rel_tau=0.3, smoothing=0.5)
        decisions.append([rule.update(0, v * scale, s, grace_step=6) for s, v in enumerate(steps)])
    assert decisions[0] == decisions[1] == decisions[2]
    assert any(decisions[0])


def test_auto_reference_without_readings_in_the_window():
    rule = FreezeRule(["auto"], rel_tau=0.5, smoothing=0.0)
    assert not rule.update(0, 8.0, 20, grace_step=10)  # becomes the reference
    assert rule.threshold(0) == 4.0
    assert rule.update(0, 3.0, 21, grace_step=10)


def test_numeric_and_per_group_tau():
    comps = find_components(tiny_bert(1))
    taus = resolve_taus(check_tau({"*.attention.*": 0.5, "default": "auto"}), comps)
    assert taus == [0.5, 0.5, 0.5, 0.5, "auto", "auto"]
    with pytest.raises(ValueError, match="no group for component"):
        resolve_taus({"*.query": 1.0}, comps)
    rule = FreezeRule([2.0], rel_tau=0.3, smoothing=0.0)
    assert not rule.update(0, 1.0, 0, grace_step=1)
    assert not rule.update(0, 2.0, 1, grace_step=1)
    assert rule.update(0, 1.99, 2, grace_step=1)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), math.inf, "often", True, {"*": -2}, {}])
def test_invalid_tau(bad):
    with pytest.raises(ValueError, match="tau"):
        check_tau(bad)


# --- freezing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5),
        lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5, foreach=False),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5),
    ],
)
def test_frozen_weight_never_changes_and_state_is_dropped(make_opt):
    model = tiny_bert(1)
    comps = find_components(model)
    opt = make_opt(list(model.parameters()))
    for seed in range(2):
        _backward(model, seed)
        opt.step()
    target = comps[0]
    assert all(p in opt.state for p in target.params)
    frozen_at = [p.detach().clone() for p in target.params]
    other_before = comps[1].params[0].detach().clone()
    _backward(model, 2)  # a gradient exists at freeze time, as in on_before_optimizer_step
    n = freeze_parameters(target.params, [opt])
    assert n == target.numel
    assert all(p not in opt.state and p.grad is None for p in target.params)
    for seed in range(3, 6):
        opt.step()
        _backward(model, seed)
    opt.step()
    for p, q in zip(target.params, frozen_at):
        assert torch.equal(p, q)
        assert not p.requires_grad and p.grad is None
    assert not torch.equal(comps[1].params[0], other_before)


def test_gpt_oss_expert_biases_join_their_packed_matrices():
    """GPT-OSS keeps (experts, out) expert biases, 2-D: each is its matrix's bias, never a
    component of its own (issue 25 item 15)."""
    from transformers import GptOssConfig, GptOssModel

    config = GptOssConfig(
        **TINY_GQA,
        intermediate_size=32,
        head_dim=8,
        vocab_size=100,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["full_attention", "sliding_attention"],
    )
    model = GptOssModel(config)
    params = dict(model.named_parameters())
    bias = params["layers.0.mlp.experts.gate_up_proj_bias"]
    assert bias.dim() == 2 and bias.shape[0] == 4  # the case: a 2-D bias per expert
    comps = {c.name: c for c in find_components(model)}
    assert not [n for n in comps if n.endswith("_bias")]
    for layer in range(2):
        for proj in ("gate_up_proj", "down_proj"):
            comp = comps[f"layers.{layer}.mlp.experts.{proj}"]
            prefix = f"layers.{layer}.mlp.experts.{proj}"
            assert comp.param_names == (prefix, f"{prefix}_bias")
            assert comp.params[0].dim() == 3
    assert len(comps) == 2 * (4 + 1 + 2)  # q k v o, router, two packed expert tensors
