"""The DARTS candidate operations (Liu et al., ICLR 2019) for the digits search space.

``make_op`` builds one of the eight DARTS candidates; the search supernet uses them without
affine batch norm, the retrained network with it. ``build_cells`` lays out the stem and the
stack of normal and reduction cells both networks share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eecontrol.core.darts import DARTS_OPS


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, batch norm."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise convolution, pointwise convolution, batch norm."""

    def __init__(
        self, c: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions (the first one strided)."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int, affine: bool) -> None:
        super().__init__(
            DilConv(c, kernel, stride, padding, 1, affine),
            DilConv(c, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset strided 1x1 convolutions, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        a = self.conv_a(x)
        b = self.conv_b(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)))
        return self.bn(torch.cat([a, b], dim=1))


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """Builds the candidate op ``name`` for ``c`` channels.

    Raises:
        ValueError: for an unknown op name.
    """
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool: nn.Module = (
            nn.MaxPool2d(3, stride=stride, padding=1)
            if name.startswith("max")
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        # the search adds a non-affine batch norm after pooling, as DARTS does
        return pool if affine else nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return SepConv(c, k, stride, k // 2, affine)
    if name.startswith("dil_conv_"):
        k = int(name[-1])
        return DilConv(c, k, stride, k - 1, 2, affine)
    raise ValueError(f"unknown op {name!r}; known: {list(DARTS_OPS)}.")


def preprocess_inputs(
    c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool
) -> nn.ModuleList:
    first = (
        FactorizedReduce(c_pp, c, affine)
        if reduction_prev
        else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
    )
    return nn.ModuleList([first, ReLUConvBN(c_p, c, 1, 1, 0, affine)])


def reduction_layers(layers: int) -> tuple[int, ...]:
    """The indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3``."""
    return (layers // 3, 2 * layers // 3) if layers >= 3 else (layers // 2,)


CellFactory = Callable[[int, int, int, bool, bool], tuple[nn.Module, int]]


def build_cells(
    c: int, layers: int, stem_multiplier: int, make_cell: CellFactory
) -> tuple[nn.Sequential, nn.ModuleList, int]:
    """The stem and the cells of a DARTS network for 1-channel images.

    Args:
        c: channels of the first cells (doubled at each reduction cell).
        layers: number of cells.
        stem_multiplier: stem channels = ``stem_multiplier * c``.
        make_cell: ``(c_pp, c_p, c, reduction, reduction_prev) -> (cell, output channels)``.

    Returns:
        The stem, the cells and the channels of the last cell's output.
    """
    c_stem = stem_multiplier * c
    stem = nn.Sequential(nn.Conv2d(1, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
    c_pp, c_p, c_cur = c_stem, c_stem, c
    reduction_prev = False
    cells = nn.ModuleList()
    for i in range(layers):
        reduction = i in reduction_layers(layers)
        if reduction:
            c_cur *= 2
        cell, c_out = make_cell(c_pp, c_p, c_cur, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_pp, c_p = c_p, c_out
    return stem, cells, c_p


def classify(classifier: nn.Module, state: Tensor) -> Tensor:
    """Global average pooling of the last cell's output, then the linear classifier."""
    return classifier(F.adaptive_avg_pool2d(state, 1).flatten(1))
