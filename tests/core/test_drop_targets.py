"""Every module family a schedule can drive, and the errors when there is none."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from eecontrol.core.drop_targets import RateSetter, find_drop_targets


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
