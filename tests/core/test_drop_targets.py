"""Every module family a schedule can drive, and the errors when there is none."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from eecontrol.core.drop_targets import RateSetter, find_drop_targets, rate_report


class DropPath(nn.Module):
    """Stochastic depth as timm writes it: a float ``drop_prob`` read in forward."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class StochasticDepth(nn.Module):
    """torchvision's StochasticDepth interface (``p`` and ``mode``)."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        return x


class HFAttention(nn.Module):
    """Hugging Face style: a float rate attribute used at forward time, plus a Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_dropout = 0.1
        self.hidden_dropout_prob = 0.1
        self.dropout = nn.Dropout(0.1)
        self.is_causal = True  # a bool is never a rate

    def forward(self, x):
        return self.dropout(x)


class Block(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()

    def forward(self, x):
        return x + self.drop_path(self.lin(x))


def test_every_torch_dropout_family_is_found_and_set():
    model = nn.Sequential(
        nn.Dropout(0.1),
        nn.Dropout1d(0.1),
        nn.Dropout2d(0.1),
        nn.Dropout3d(0.1),
        nn.AlphaDropout(0.1),
        nn.FeatureAlphaDropout(0.1),
    )
    targets = find_drop_targets(model, ["dropout"])
    assert len(targets.dropout) == 6
    targets.set_dropout(0.37)
    assert all(m.p == 0.37 for m in model)


def test_multihead_attention_and_hf_float_attributes():
    model = nn.ModuleDict({"mha": nn.MultiheadAttention(8, 2, dropout=0.1), "hf": HFAttention()})
    targets = find_drop_targets(model, ["dropout"])
    names = {(name, attr) for name, _, attr, _ in targets.dropout}
    assert ("mha", "dropout") in names
    assert ("hf", "attention_dropout") in names and ("hf", "hidden_dropout_prob") in names
    assert ("hf.dropout", "p") in names
    assert not any(attr == "is_causal" for _, attr in names)
    targets.set_dropout(0.25)
    assert model["mha"].dropout == 0.25
    assert model["hf"].attention_dropout == 0.25 and model["hf"].dropout.p == 0.25
    # the MHA float is really used: with rate 0 in train mode the output is deterministic
    targets.set_dropout(0.0)
    x = torch.randn(3, 2, 8)
    model.train()
    a, _ = model["mha"](x, x, x)
    b, _ = model["mha"](x, x, x)
    assert torch.equal(a, b)


def test_drop_path_per_block_linspace():
    model = nn.Sequential(*[Block(0.1) for _ in range(5)], StochasticDepth(0.1))
    targets = find_drop_targets(model, ["drop_path"])
    assert [n for n, *_ in targets.drop_path] == [
        "0.drop_path",
        "1.drop_path",
        "2.drop_path",
        "3.drop_path",
        "4.drop_path",
        "5",
    ]
    targets.set_drop_path(0.5, "linear")
    got = [getattr(m, attr) for _, m, attr, _ in targets.drop_path]
    assert got == pytest.approx(torch.linspace(0, 0.5, 6).tolist())
    targets.set_drop_path(0.2, "uniform")
    assert all(getattr(m, attr) == 0.2 for _, m, attr, _ in targets.drop_path)


def test_identity_drop_path_is_an_error_that_says_how_to_build():
    model = nn.Sequential(*[Block(0.0) for _ in range(3)])
    with pytest.raises(ValueError, match=r"no drop_path target.*drop_path_rate > 0.*nn.Identity"):
        find_drop_targets(model, ["drop_path"])


def test_no_dropout_is_an_error_naming_what_was_searched():
    with pytest.raises(
        ValueError,
        match=r"no dropout target found in Sequential \(3 modules searched with setters \['torch_dropout', 'float_attribute'\]\)",
    ):
        find_drop_targets(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), ["dropout"])


def test_pluggable_setter_and_pickling():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.my_rate = 0.1

    setter = RateSetter("custom", "dropout", _my_rate_attrs)
    targets = find_drop_targets(nn.Sequential(Custom()), ["dropout"], setters=[setter])
    targets.set_dropout(0.4)
    assert targets.dropout[0][1].my_rate == 0.4
    assert pickle.loads(pickle.dumps(setter)).name == "custom"


def _my_rate_attrs(module):
    return ["my_rate"] if hasattr(module, "my_rate") else []


def test_unknown_kind():
    with pytest.raises(ValueError, match="target kind"):
        find_drop_targets(nn.Dropout(), ["dropblock"])


# --- stochastic depth per block, as the reference code and timm assign it -------------


def reference_rates(rate: float, depth: int) -> list[float]:
    """The reference's and timm's rule: [x.item() for x in torch.linspace(0, rate, depth)]."""
    return [x.item() for x in torch.linspace(0, rate, depth)]


def _drop_path(rate: float) -> nn.Module:
    """timm and the reference build nn.Identity where the rate is 0 (block 0)."""
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class RefViTBlock(nn.Module):
    """The reference ViT block's layout: one drop_path used twice."""

    def __init__(self, dim: int, rate: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop_path = _drop_path(rate)


class RefViT(nn.Module):
    """The reference ViT's layout: ``blocks`` is an nn.ModuleList, a Linear head."""

    def __init__(self, depth: int, drop_path_rate: float) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.ModuleList(
            [RefViTBlock(8, r) for r in reference_rates(drop_path_rate, depth)]
        )
        self.head = nn.Linear(8, 3)


class RefConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, rate: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.drop_path = _drop_path(rate)


class RefConvNeXt(nn.Module):
    """The reference ConvNeXt's layout: stages (ModuleList of Sequential) and downsamplers."""

    def __init__(self, depths: list[int], drop_path_rate: float) -> None:
        super().__init__()
        rates = reference_rates(drop_path_rate, sum(depths))
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 2, 2)) for i in range(len(depths))]
        )
        self.stages = nn.ModuleList()
        cur = 0
        for depth in depths:
            self.stages.append(
                nn.Sequential(*[RefConvNeXtBlock(8, rates[cur + j]) for j in range(depth)])
            )
            cur += depth
        self.head = nn.Linear(8, 3)


class TimmBlock(nn.Module):
    """timm's ViT/Swin block layout: two drop-path modules per block."""

    def __init__(self, dim: int, rate: float) -> None:
        super().__init__()
        self.attn, self.mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.drop_path1, self.drop_path2 = _drop_path(rate), _drop_path(rate)


class TimmSwin(nn.Module):
    """timm Swin's layout: ``layers`` (Sequential of stages), each with ``blocks``."""

    def __init__(self, depths: list[int], drop_path_rate: float) -> None:
        super().__init__()
        rates = reference_rates(drop_path_rate, sum(depths))
        stages, cur = [], 0
        for depth in depths:
            stage = nn.Module()
            stage.downsample = nn.Linear(8, 8)
            stage.blocks = nn.Sequential(*[TimmBlock(8, rates[cur + j]) for j in range(depth)])
            stages.append(stage)
            cur += depth
        self.layers = nn.Sequential(*stages)


def _rates_by_block(blocks: list[nn.Module]) -> list[list[float]]:
    return [[m.drop_prob for m in b.modules() if isinstance(m, DropPath)] for b in blocks]


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_reference_vit_rates_per_block(rate):
    model = RefViT(depth=12, drop_path_rate=0.1)
    targets = find_drop_targets(model, ["drop_path"])
    assert isinstance(model.blocks[0].drop_path, nn.Identity) and len(targets.drop_path) == 11
    targets.set_drop_path(rate)
    expected = reference_rates(rate, 12)  # the reference's update_drop_path(rate)
    assert targets.depth == 12
    assert _rates_by_block(list(model.blocks)) == [[]] + [[r] for r in expected[1:]]


@pytest.mark.parametrize("depths", [[3, 3, 9, 3], [2, 2, 6, 2], [1, 2, 3, 1]])
def test_reference_convnext_rates_per_block(depths):
    model = RefConvNeXt(depths, drop_path_rate=0.2)
    targets = find_drop_targets(model, ["drop_path"])
    targets.set_drop_path(0.4)
    expected = reference_rates(0.4, sum(depths))
    blocks = [b for stage in model.stages for b in stage]
    assert targets.depth == sum(depths)
    got = _rates_by_block(blocks)
    assert got == [[] if i == 0 else [r] for i, r in enumerate(expected)]


def test_timm_style_blocks_two_drop_paths_share_the_block_rate():
    model = nn.Module()
    model.blocks = nn.Sequential(*[TimmBlock(8, r) for r in reference_rates(0.1, 6)])
    targets = find_drop_targets(model, ["drop_path"])
    assert len(targets.drop_path) == 10  # block 0: two nn.Identity
    targets.set_drop_path(0.3)
    expected = reference_rates(0.3, 6)
    assert _rates_by_block(list(model.blocks)) == [[]] + [[r, r] for r in expected[1:]]
    swin = TimmSwin([2, 2, 6, 2], drop_path_rate=0.2)
    targets = find_drop_targets(swin, ["drop_path"])
    targets.set_drop_path(0.5)
    blocks = [b for stage in swin.layers for b in stage.blocks]
    expected = reference_rates(0.5, 12)
    assert _rates_by_block(blocks) == [[]] + [[r, r] for r in expected[1:]]


def test_int_rates_and_every_dropout_name_are_found():
    class HFLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_dropout = 0  # an int, as LlamaConfig(attention_dropout=0) leaves it
            self.dropout_prob = 0.5  # YOLOS / VideoMAE
            self.attn_dropout = 0.5  # GPTBigCode
            self.attn_drop = 0.5  # X-CLIP
            self.use_dropout = True  # a bool is never a rate
            self.layerdrop = 0.1  # not a dropout rate: reported, not set
            self.num_heads = 2

    model = HFLike()
    targets = find_drop_targets(model, ["dropout"])
    assert sorted(a for _, _, a, _ in targets.dropout) == [
        "attention_dropout",
        "attn_drop",
        "attn_dropout",
        "dropout_prob",
    ]
    targets.set_dropout(0.2)
    assert model.attention_dropout == 0.2 and isinstance(model.attention_dropout, float)
    assert model.use_dropout is True and model.layerdrop == 0.1
    report = rate_report(model, targets, ["dropout"])
    assert report.left_out == [("", "layerdrop", "layer drop (not a dropout rate)")]
    assert report.fraction == 1.0


# --- timm EfficientNet / MobileNetV3 and per-block drop-path lists (issue 25 item 15) ---
# timm does not import here (torchvision does not load with this torch), so these build
# the same structure as timm's EfficientNetBuilder: ``blocks`` is a Sequential of stages,
# each a Sequential of blocks of mixed classes (DepthwiseSeparableConv first, then
# InvertedResidual, MobileNetV3 ends with ConvBnAct), every block holds ``drop_path`` =
# DropPath(rate) or nn.Identity() when rate is 0, with timm's rule
# ``drop_path_rate * block_idx / block_count`` over all blocks of all stages.


class _TimmBlock(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.drop_path = DropPath(rate) if rate else nn.Identity()  # as timm writes it

    def forward(self, x):
        return x + self.drop_path(self.bn(self.conv(x)))


class DepthwiseSeparableConv(_TimmBlock):
    pass


class InvertedResidual(_TimmBlock):
    pass


class ConvBnAct(_TimmBlock):
    pass


def timm_effnet_like(stages: list[list[type]], drop_path_rate: float) -> nn.Module:
    model = nn.Module()
    model.conv_stem = nn.Conv2d(3, 4, 3)
    total = sum(len(s) for s in stages)
    idx, built = 0, []
    for stage in stages:
        blocks = []
        for cls in stage:
            blocks.append(cls(drop_path_rate * idx / total))  # timm's _make_block
            idx += 1
        built.append(nn.Sequential(*blocks))
    model.blocks = nn.Sequential(*built)
    model.classifier = nn.Linear(4, 10)
    return model


DS, IR, CBA = DepthwiseSeparableConv, InvertedResidual, ConvBnAct
EFFICIENTNET_B0 = [[DS], [IR] * 2, [IR] * 2, [IR] * 3, [IR] * 3, [IR] * 4, [IR]]
MOBILENETV3_SMALL = [[DS], [IR] * 2, [IR] * 3, [IR] * 2, [IR] * 3, [CBA]]


@pytest.mark.parametrize(("stages", "depth"), [(EFFICIENTNET_B0, 16), (MOBILENETV3_SMALL, 12)])
def test_timm_efficientnet_and_mobilenetv3_blocks_and_rates(stages, depth):
    model = timm_effnet_like(stages, 0.2)
    built = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(built) == depth - 1 and built[-1] == 0.2 * (depth - 1) / depth
    targets = find_drop_targets(model, ["drop_path"])
    assert targets.depth == depth  # block 0 (an Identity slot, its own class) counted
    assert targets.block_names[0] == "blocks.0.0" and targets.drop_path_block[0] == 1
    targets.set_drop_path(0.2, "efficientnet")  # timm's own rule: bit-identical
    assert [m.drop_prob for m in model.modules() if isinstance(m, DropPath)] == built
    targets.set_drop_path(0.2, "linear")  # the reference rule over the same 16/12 blocks
    expected = reference_rates(0.2, depth)[1:]
    assert [m.drop_prob for m in model.modules() if isinstance(m, DropPath)] == expected
    assert min(expected) > 0.0


def test_a_list_of_per_block_drop_paths_counts_its_identity():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])
    dpr = reference_rates(0.3, 4)
    model.drop_paths = nn.ModuleList([_drop_path(r) for r in dpr])  # [Identity, DP x 3]
    targets = find_drop_targets(model, ["drop_path"])
    assert targets.depth == 4 and targets.drop_path_block == [1, 2, 3]
    targets.set_drop_path(0.3)
    assert [m.drop_prob for m in model.drop_paths if isinstance(m, DropPath)] == dpr[1:]
