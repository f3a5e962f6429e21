"""Coverage matrix: GradES and DropoutSchedule discovery on tiny transformers 5 models.

Each architecture is built once from a tiny random config with every dropout and
drop-path rate at 0.3. For each one:

- GradES (``find_components`` by structure) watches every weight matrix of the repeated
  blocks (coverage 100%), and nothing outside them (no embedding, no task head);
- DropoutSchedule controls every rate: in train mode two forward passes differ before
  (dropout is really active) and are identical once the schedule sets all rates to 0;
  no rate-like attribute is left out; Hugging Face's own per-layer drop-path rates are
  reproduced by the per-block rule.

``python -m tests.core.test_coverage_matrix`` prints the table in docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from torch import nn

from eecontrol.core.drop_targets import find_drop_targets, rate_report
from eecontrol.core.gradstats import coverage, find_components

P = 0.3
TEXT = {"vocab_size": 64, "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2}
LLM = {**TEXT, "intermediate_size": 32, "num_key_value_heads": 1, "attention_dropout": P}
BERTLIKE = {
    **TEXT,
    "intermediate_size": 32,
    "hidden_dropout_prob": P,
    "attention_probs_dropout_prob": P,
}
VISION = {
    "hidden_size": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "hidden_dropout_prob": P,
    "attention_probs_dropout_prob": P,
}


@dataclass(frozen=True)
class Arch:
    """One row of the matrix: how to build the model and what it is."""

    name: str
    kind: str
    build: Callable[[], nn.Module]
    inputs: str  # "text", "seq2seq", "image", "clip"
    heads: tuple[str, ...] = ()  # task-head module prefixes that must never be watched
    drop_path: bool = False
    dropout: bool = True  # ConvNeXt has drop path only

    @property
    def kinds(self) -> list[str]:
        """The rate kinds the model carries."""
        return ["dropout"] * self.dropout + ["drop_path"] * self.drop_path


class LoraLinear(nn.Module):
    """A PEFT-style LoRA layer (PEFT's names: base_layer, lora_A/lora_B ModuleDicts)."""

    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.base_layer.requires_grad_(False)
        self.lora_dropout = nn.ModuleDict({"default": nn.Dropout(P)})
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
        nn.init.normal_(self.lora_B["default"].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = self.lora_B["default"](self.lora_A["default"](self.lora_dropout["default"](x)))
        return self.base_layer(x) + lora


def _llama_lora() -> nn.Module:
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**LLM))
    model.requires_grad_(False)  # PEFT freezes the base model
    for layer in model.model.layers:
        for name in ("q_proj", "v_proj"):
            setattr(layer.self_attn, name, LoraLinear(getattr(layer.self_attn, name)))
    return model


GPT = {
    "vocab_size": 64,
    "n_embd": 16,
    "n_head": 2,
    "n_layer": 2,
    "n_positions": 32,
    "attn_pdrop": P,
    "resid_pdrop": P,
    "embd_pdrop": P,
}


def _hf(model: str, config: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A builder of ``transformers.<model>(transformers.<config>(**kwargs))``."""
    return lambda: getattr(tf, model)(getattr(tf, config)(**kwargs))


def _encoder(name: str, prefix: str, heads: tuple[str, ...], **config: Any) -> Arch:
    """A text encoder with a sequence-classification head (``<prefix>ForSequenceClassification``)."""
    model = f"{prefix}ForSequenceClassification"
    return Arch(name, "encoder", _hf(model, f"{prefix}Config", **config), "text", heads)


def _decoder(name: str, prefix: str, kind: str = "decoder", model: str = "", **config: Any) -> Arch:
    """A causal language model (``<prefix>ForCausalLM`` unless ``model`` names another class)."""
    build = _hf(model or f"{prefix}ForCausalLM", f"{prefix}Config", **config)
    return Arch(name, kind, build, "text", ("lm_head",))


ARCHS: list[Arch] = [
    _encoder("BERT", "Bert", ("classifier", "bert.pooler"), **BERTLIKE),
    _encoder("RoBERTa", "Roberta", ("classifier",), **BERTLIKE),
    _encoder("Electra", "Electra", ("classifier",), **BERTLIKE, embedding_size=16),
    _encoder(
        "DistilBERT",
        "DistilBert",
        ("classifier", "pre_classifier"),
        vocab_size=64,
        dim=16,
        n_heads=2,
        n_layers=2,
        hidden_dim=32,
        dropout=P,
        attention_dropout=P,
        seq_classif_dropout=P,
    ),
    _encoder("DeBERTa-v2", "DebertaV2", ("classifier", "pooler"), **BERTLIKE),
    _decoder("GPT-2", "GPT2", model="GPT2LMHeadModel", **GPT),
    _decoder("GPTBigCode", "GPTBigCode", **GPT),
    _decoder("Llama", "Llama", **LLM),
    _decoder("Mistral", "Mistral", **LLM),
    _decoder("Qwen2", "Qwen2", **LLM),
    _decoder("Phi", "Phi", **LLM, resid_pdrop=P, embd_pdrop=P, partial_rotary_factor=0.5),
    _decoder(
        "OPT",
        "OPT",
        vocab_size=64,
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=32,
        word_embed_proj_dim=16,
        dropout=P,
        attention_dropout=P,
        max_position_embeddings=32,
    ),
    _decoder("Falcon", "Falcon", **TEXT, hidden_dropout=P, attention_dropout=P),
    _decoder(
        "GPT-NeoX", "GPTNeoX", **TEXT, intermediate_size=32, hidden_dropout=P, attention_dropout=P
    ),
    _decoder(
        "Mixtral (MoE)",
        "Mixtral",
        "decoder, MoE",
        **LLM,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    _decoder(
        "Qwen3-MoE",
        "Qwen3Moe",
        "decoder, MoE",
        **LLM,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=8,
        head_dim=8,
    ),
    Arch("Llama + LoRA (PEFT names)", "decoder, LoRA", _llama_lora, "text", ("lm_head",)),
    Arch(
        "T5",
        "encoder-decoder",
        _hf(
            "T5ForConditionalGeneration",
            "T5Config",
            vocab_size=64,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            dropout_rate=P,
            decoder_start_token_id=0,
        ),
        "seq2seq",
        ("lm_head",),
    ),
    Arch(
        "BART",
        "encoder-decoder",
        _hf(
            "BartForConditionalGeneration",
            "BartConfig",
            vocab_size=64,
            d_model=16,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=32,
            dropout=P,
            attention_dropout=P,
            activation_dropout=P,
            encoder_layerdrop=0.0,
            decoder_layerdrop=0.0,
        ),
        "seq2seq",
        ("lm_head",),
    ),
    Arch(
        "ViT",
        "vision",
        _hf(
            "ViTForImageClassification",
            "ViTConfig",
            **VISION,
            image_size=8,
            patch_size=4,
            num_labels=3,
        ),
        "image",
        ("classifier",),
    ),
    Arch(
        "YOLOS",
        "vision (detection)",
        _hf(
            "YolosForObjectDetection",
            "YolosConfig",
            **VISION,
            image_size=[8, 8],
            patch_size=4,
            num_detection_tokens=2,
        ),
        "image",
        ("class_labels_classifier", "bbox_predictor"),
    ),
    Arch(
        "BEiT",
        "vision, drop path",
        _hf(
            "BeitForImageClassification",
            "BeitConfig",
            **VISION,
            image_size=8,
            patch_size=4,
            drop_path_rate=P,
            num_labels=3,
        ),
        "image",
        ("classifier",),
        drop_path=True,
    ),
    Arch(
        "Swin",
        "vision, drop path",
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=16,
            patch_size=2,
            embed_dim=8,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=2,
            drop_path_rate=P,
            hidden_dropout_prob=P,
            attention_probs_dropout_prob=P,
            num_labels=3,
        ),
        "image16",
        ("classifier",),
        drop_path=True,
    ),
    Arch(
        "ConvNeXt",
        "vision (conv), drop path",
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            hidden_sizes=[8, 16],
            depths=[2, 2],
            num_stages=2,
            drop_path_rate=P,
            num_labels=3,
            image_size=16,
        ),
        "image16",
        ("classifier",),
        drop_path=True,
        dropout=False,
    ),
    Arch(
        "CLIP",
        "vision + text",
        _hf(
            "CLIPModel",
            "CLIPConfig",
            text_config={**TEXT, "intermediate_size": 32, "attention_dropout": P},
            vision_config={
                "hidden_size": 16,
                "num_attention_heads": 2,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "image_size": 8,
                "patch_size": 4,
                "attention_dropout": P,
            },
            projection_dim=8,
        ),
        "clip",
        ("visual_projection", "text_projection"),
    ),
]


@functools.cache
def built(name: str) -> nn.Module:
    """Builds an architecture once per test session (seeded)."""
    arch = next(a for a in ARCHS if a.name == name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arch.build()


def inputs(arch: Arch) -> dict[str, torch.Tensor]:
    """A small input batch of the kind the model takes."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (2, 8), generator=g)
    if arch.inputs == "text":
        return {"input_ids": ids}
    if arch.inputs == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :5]}
    size = 16 if arch.inputs == "image16" else 8
    pixels = torch.randn(2, 3, size, size, generator=g)
    if arch.inputs == "clip":
        return {"input_ids": ids, "pixel_values": pixels}
    return {"pixel_values": pixels}


def _out(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
    return torch.cat([t.flatten() for t in tensors])


def row(arch: Arch) -> dict[str, Any]:
    """The matrix row of an architecture (what the README lists)."""
    model = built(arch.name)
    comps = find_components(model)
    cov = coverage(model, comps)
    targets = find_drop_targets(model, arch.kinds)
    report = rate_report(model, targets, arch.kinds)
    return {
        "architecture": arch.name,
        "kind": arch.kind,
        "blocks": sum(k for _, k in cov.block_lists),
        "components": len(comps),
        "matrix_coverage": cov.matrix_fraction,
        "dropout_rates": len(targets.dropout),
        "drop_path_blocks": targets.depth if arch.drop_path else 0,
        "rates_left_out": len([x for x in report.left_out if x[2] == "name not matched"]),
    }


IDS = [a.name for a in ARCHS]


def test_the_matrix_is_broad_enough():
    kinds = " ".join(a.kind for a in ARCHS)
    assert len(ARCHS) >= 20
    for kind in ("encoder", "decoder", "encoder-decoder", "vision", "MoE", "LoRA"):
        assert kind in kinds, kind


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_grades_watches_every_block_matrix_and_no_head(arch):
    model = built(arch.name)
    comps = find_components(model)
    cov = coverage(model, comps)
    assert cov.block_lists and comps
    assert cov.matrix_fraction == 1.0, cov.left_out_matrices()
    assert cov.outside == []
    watched = {n for c in comps for n in c.param_names}
    watched_ids = {id(p) for c in comps for p in c.params}
    for head in arch.heads:
        head_params = [
            p for n, p in model.named_parameters(remove_duplicate=False) if n.startswith(head + ".")
        ]
        assert head_params, head  # the head exists (tied to the embedding or not) ...
        assert not watched_ids & {id(p) for p in head_params}  # ... and is never watched
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            assert not any(n.startswith(name + ".") for n in watched), name
    # every trainable weight tensor (2-D or more) inside the blocks is in a component
    assert cov.matrix_covered == cov.matrix_numel > 0


def test_packed_experts_and_lora_pairs_are_components():
    comps = {c.name: c for c in find_components(built("Mixtral (MoE)"))}
    experts = comps["model.layers.0.mlp.experts.gate_up_proj"]
    assert experts.params[0].dim() == 3 and experts.params[0].shape[0] == 4  # 4 experts
    assert "model.layers.1.mlp.experts.down_proj" in comps
    lora = find_components(built("Llama + LoRA (PEFT names)"))
    names = [c.name for c in lora]
    assert names == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    assert all(len(c.params) == 2 and "lora_A" in c.param_names[0] for c in lora)
    cov = coverage(built("Llama + LoRA (PEFT names)"), lora)
    assert cov.frozen_before > 0 and cov.matrix_fraction == 1.0


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_dropout_schedule_controls_every_rate(arch):
    model = built(arch.name)
    targets = find_drop_targets(model, arch.kinds)
    report = rate_report(model, targets, arch.kinds)
    assert report.fraction == 1.0, report.left_out
    batch = inputs(arch)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = _out(model, batch), _out(model, batch)
    assert not torch.equal(a, b)  # dropout is really active before the schedule sets it
    targets.set_dropout(0.0)
    if arch.drop_path:
        targets.set_drop_path(0.0)
    with torch.no_grad():
        a, b = _out(model, batch), _out(model, batch)
    assert torch.equal(a, b)  # every rate the forward pass reads was set
    targets.set_dropout(P)
    if arch.drop_path:
        targets.set_drop_path(P)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a.drop_path], ids=lambda a: a.name)
def test_drop_path_per_block_reproduces_the_library_rates(arch):
    """HF builds drop path as linspace(0, rate, total depth) over all blocks: ours too."""
    model = built(arch.name)
    targets = find_drop_targets(model, ["drop_path"])
    built_with = [getattr(m, a) for _, m, a, _ in targets.drop_path]
    # rates really differ per block (block 0 may be an nn.Identity: rate 0, no module)
    assert len(set(built_with)) > 1 or targets.depth > len(built_with)
    targets.set_drop_path(P)
    assert [getattr(m, a) for _, m, a, _ in targets.drop_path] == pytest.approx(built_with)


def test_models_without_blocks_or_rates_are_refused_clearly():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"no repeated blocks.*Pass `patterns`"):
        find_components(mlp)
    with pytest.raises(ValueError, match="no dropout target found"):
        find_drop_targets(mlp, ["dropout"])


def matrix_markdown() -> str:
    """The docs/benchmarks.md table, generated from this module's architectures."""
    lines = [
        "| architecture | kind | blocks | GradES components | block matrices watched "
        "| dropout rates controlled (all) | drop-path blocks |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch in ARCHS:
        r = row(arch)
        lines.append(
            f"| {r['architecture']} | {r['kind']} | {r['blocks']} | {r['components']} "
            f"| {r['matrix_coverage']:.0%} | {r['dropout_rates'] or '-'} "
            f"| {r['drop_path_blocks'] or '-'} |"
        )
    return "\n".join(lines)


def test_readme_lists_the_matrix():
    readme = (Path(__file__).parents[2] / "docs" / "benchmarks.md").read_text()
    assert matrix_markdown() in readme, "regenerate: python -m tests.core.test_coverage_matrix"


if __name__ == "__main__":
    print(matrix_markdown())
