"""A prior-data fitted network (PFN) that forecasts a learning curve's later values.

The idea is LC-PFN's (Adriaensen, Rakotoarison, Müller and Hutter, "Efficient Bayesian
Learning Curve Extrapolation using Prior-Data Fitted Networks", NeurIPS 2023): a small
transformer is trained on curves sampled from a prior (:mod:`.prior`) to output, for a
query position, a discretised distribution of the curve's value there given the points
observed so far. It approximates the prior's posterior predictive in one forward pass.
This module is the project's own implementation (model, normalisation, output buckets).

Unit-free inputs. The observed points are the context tokens, each ``(log(x / x_last),
(g - g_last) / s)`` where ``g`` is the value on the gain scale (negated for a loss),
``x_last`` and ``g_last`` the last observed point and ``s`` the observed range of ``g``
(:func:`normalise`). A query token is ``log(at / x_last)``. Multiplying x by a constant
(steps instead of validations) or applying an affine map to y changes nothing. Queries
attend to the context only, so each query's forecast does not depend on the others.

Output. The value ``v = (g - g_last) / s`` is mapped to ``z = asinh(4 v)`` and ``z`` is
split into equal buckets (a "bar distribution"); the network outputs the buckets'
probabilities, the density being uniform in ``z`` inside a bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eecontrol.core.checks import check_bounds
from eecontrol.core.curves.predictive import GainScaleDistribution, forecast_inputs, noise_sd

WEIGHTS_FILE = Path(__file__).with_name("pfn_weights.pt")
Z_GAIN = 4.0  # z = asinh(Z_GAIN * v)


def normalise(g: torch.Tensor, robust: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre and scale of observed gain values (rows of ``g``, ``batch x n``).

    The centre is the last value; the scale the observed range, or, where the range is
    (nearly) zero (one point, a flat start), a tenth of the last value's magnitude (at
    least 1e-6): with one point there is no other unit. With ``robust``, the range leaves
    out points farther than 5 interquartile ranges from the median (a diverged
    validation written as a huge loss would otherwise set the unit).
    """
    centre = g[:, -1]
    if robust and g.shape[1] >= 4:
        q = torch.quantile(g, torch.tensor([0.25, 0.5, 0.75], dtype=g.dtype), dim=1)
        iqr = (q[2] - q[0]).clamp(min=1e-12)
        inlier = (g - q[1][:, None]).abs() <= 5.0 * iqr[:, None]
        inlier[:, -1] = True
        hi = torch.where(inlier, g, torch.full_like(g, -torch.inf)).max(dim=1).values
        lo = torch.where(inlier, g, torch.full_like(g, torch.inf)).min(dim=1).values
        rng = hi - lo
    else:
        rng = g.max(dim=1).values - g.min(dim=1).values
    fallback = torch.clamp(0.1 * centre.abs(), min=1e-6)
    scale = torch.where(rng > 1e-3 * fallback, rng, fallback)
    scale = torch.maximum(scale, 1e-3 * fallback)
    return centre, scale


class CurvePFN(nn.Module):
    """Context tokens ``(log x, y)``, query tokens ``log x``, bucket logits per query.

    Args:
        emsize: token width.
        layers: transformer encoder layers.
        heads: attention heads.
        buckets: number of output buckets.
        z_max: the buckets span ``[-z_max, z_max]`` of ``z = asinh(4 v)``.
        robust: the inputs are normalised by the robust range (:func:`normalise`).
    """

    def __init__(
        self,
        emsize: int = 96,
        layers: int = 4,
        heads: int = 4,
        buckets: int = 128,
        z_max: float = 8.0,
        robust: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "emsize": emsize,
            "layers": layers,
            "heads": heads,
            "buckets": buckets,
            "z_max": z_max,
            "robust": robust,
        }
        self.ctx = nn.Sequential(nn.Linear(3, emsize), nn.GELU(), nn.Linear(emsize, emsize))
        self.qry = nn.Sequential(nn.Linear(1, emsize), nn.GELU(), nn.Linear(emsize, emsize))
        layer = nn.TransformerEncoderLayer(
            emsize, heads, 2 * emsize, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.LayerNorm(emsize),
            nn.Linear(emsize, 2 * emsize),
            nn.GELU(),
            nn.Linear(2 * emsize, buckets),
        )
        self.register_buffer("borders", torch.linspace(-z_max, z_max, buckets + 1))
        self.spread = 1.0

    def forward(self, xc: torch.Tensor, yc: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """Bucket logits (batch x queries x buckets).

        Args:
            xc: context ``log(x / x_last)`` (batch x n).
            yc: context ``(g - g_last) / s`` (batch x n).
            xq: query ``log(at / x_last)`` (batch x m).
        """
        n, m = xc.shape[1], xq.shape[1]
        yz = torch.asinh(Z_GAIN * yc)
        ctx = self.ctx(torch.stack([xc, yc.clamp(-10, 10), yz], dim=-1))
        qry = self.qry(xq[..., None])
        tokens = torch.cat([ctx, qry], dim=1)
        mask = torch.zeros(n + m, n + m, dtype=torch.bool, device=xc.device)
        mask[:, n:] = True  # nothing attends to the queries: each is forecast on its own
        h = self.encoder(tokens, mask=mask)
        return self.head(h[:, n:])


def bucket_index(z: torch.Tensor, borders: torch.Tensor) -> torch.Tensor:
    """The bucket of each ``z`` (clipped into the outer buckets)."""
    k = len(borders) - 1
    return torch.clamp(torch.bucketize(z, borders) - 1, 0, k - 1)


@cache
def load_model(path: str | Path | None = None) -> CurvePFN:
    """The PFN from a weights file (default: the shipped one), loaded once and cached.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    p = Path(path) if path is not None else WEIGHTS_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"no PFN weights at {p}; train them with python -m eecontrol.core.curves.train_pfn"
        )
    blob = torch.load(p, weights_only=True, map_location="cpu")
    model = CurvePFN(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.spread = float(blob.get("spread", 1.0))  # the band's calibrated width multiplier
    model.eval()
    return model


@dataclass(frozen=True)
class PFNForecast(GainScaleDistribution):
    """The PFN's predictive distribution of a curve's value at positions ``at``.

    The same public surface as :class:`eecontrol.core.curves.predictive.Forecast`. Values
    are in the caller's units, clipped to ``bounds``.

    Args:
        at: the positions.
        probs: bucket probabilities (len(at) x buckets).
        borders: bucket borders in ``z = asinh(4 v)``, ``v = (g - centre) / scale``.
        centre: the last observed value on the gain scale.
        scale: the normalising scale (gain units).
        mode: ``max`` or ``min``.
        bounds: the metric's range, or None.
        noise: the curve's noise estimate (caller's units).
        spread: the band's width multiplier around the median (1: the network's own).
    """

    at: np.ndarray
    probs: np.ndarray
    borders: np.ndarray
    centre: float
    scale: float
    mode: str
    bounds: tuple[float, float] | None
    noise: float
    spread: float = 1.0

    def _z_quantile(self, q: float) -> np.ndarray:
        """The q-quantile of z per position (the CDF is piecewise linear in z)."""
        cdf = np.concatenate([np.zeros((len(self.at), 1)), np.cumsum(self.probs, axis=1)], axis=1)
        cdf /= cdf[:, -1:]
        return np.array([np.interp(q, c, self.borders) for c in cdf])

    def _gain_quantile(self, q: float) -> np.ndarray:
        zq = self._z_quantile(q)
        if self.spread != 1.0:
            zm = self._z_quantile(0.5)
            vm = np.sinh(zm) / Z_GAIN
            v = vm + self.spread * (np.sinh(zq) / Z_GAIN - vm)
        else:
            v = np.sinh(zq) / Z_GAIN
        return self.centre + self.scale * v

    @property
    def mean(self) -> np.ndarray:
        """The predictive mean (before clipping; then clipped to ``bounds``)."""
        a, b = self.borders[:-1], self.borders[1:]
        # E[sinh(z)] for z uniform on [a, b]
        ev = (np.cosh(b) - np.cosh(a)) / (b - a) / Z_GAIN
        return self._to_value(self.centre + self.scale * (self.probs @ ev))

    @property
    def median(self) -> np.ndarray:
        """The predictive median: the point forecast with the least absolute error."""
        return self._to_value(self._gain_quantile(0.5))

    def _band_anchors(self) -> tuple[np.ndarray, ...]:
        """The band contains :attr:`median` and :attr:`mean`."""
        return (self.median, self.mean)

    def prob_beats(self, threshold: float) -> np.ndarray:
        """P(the value is better than ``threshold``) at each position.

        Mass beyond the metric's bound counts as beating a ``threshold`` inside it; a
        threshold at or beyond the bound cannot be beaten.
        """
        s = self._sign
        if self._unbeatable(threshold):
            return np.zeros(len(self.at))
        cdf = np.concatenate([np.zeros((len(self.at), 1)), np.cumsum(self.probs, axis=1)], axis=1)
        cdf /= cdf[:, -1:]
        out = []
        for _i, c in enumerate(cdf):
            v = (s * threshold - self.centre) / self.scale
            if self.spread != 1.0:  # invert the spread around the median
                vm = float(np.sinh(np.interp(0.5, c, self.borders)) / Z_GAIN)
                v = vm + (v - vm) / self.spread
            z = math.asinh(Z_GAIN * v)
            out.append(1.0 - float(np.interp(z, self.borders, c)))
        return np.asarray(out)


def forecast(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray | float,
    mode: str = "max",
    bounds: Sequence[float] | None = None,
    weights: str | Path | None = None,
    spread: float | None = None,
) -> PFNForecast:
    """Forecasts a curve's value at later positions with the PFN's distribution.

    Args:
        x: strictly increasing positive positions seen so far (one or more): steps,
            epochs, validation indices or training-set sizes.
        y: the metric at those positions, finite.
        at: positions to forecast (each >= ``x[-1]``).
        mode: ``max`` (larger is better) or ``min``.
        bounds: the metric's range ``(low, high)``, or None.
        weights: a weights file (default: the shipped :data:`WEIGHTS_FILE`).
        spread: band width multiplier around the median (1: the network's own; None:
            the one stored with the weights, chosen when they were shipped).

    Returns:
        A :class:`PFNForecast`.

    Raises:
        ValueError: for no points, non-finite values, bad positions, mode or spread.
    """
    xa, ya, atv = forecast_inputs(x, y, at, mode, least_points=1)
    if atv.ndim != 1 or len(atv) < 1:
        raise ValueError(f"`at` must be a position or a 1-D sequence of them, got {atv.shape}.")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya)) and np.all(np.isfinite(atv))):
        raise ValueError("`x`, `y` and `at` must be finite.")
    if np.any(xa <= 0) or np.any(np.diff(xa) <= 0):
        raise ValueError("`x` must be positive and strictly increasing.")
    if np.any(atv < xa[-1]):
        raise ValueError(f"`at` must be >= the last position {xa[-1]!r}, got {atv.min()!r}.")
    if spread is not None and not (math.isfinite(spread) and spread > 0):
        raise ValueError(f"`spread` must be a positive number or None, got {spread!r}.")
    bnd = check_bounds(bounds)
    model = load_model(weights)
    spread = model.spread if spread is None else spread
    s = 1.0 if mode == "max" else -1.0
    g = torch.tensor(s * ya, dtype=torch.float64)[None]
    centre, scale = normalise(g, bool(model.config["robust"]))
    yc = ((g - centre[:, None]) / scale[:, None]).float()
    xc = torch.tensor(np.log(xa / xa[-1]), dtype=torch.float32)[None]
    xq = torch.tensor(np.log(atv / xa[-1]), dtype=torch.float32)[None]
    with torch.inference_mode():
        logits = model(xc, yc, xq)[0]
        probs = torch.softmax(logits.double(), dim=-1).numpy()
    return PFNForecast(
        at=atv,
        probs=probs,
        borders=model.borders.double().numpy(),
        centre=float(centre[0]),
        scale=float(scale[0]),
        mode=mode,
        bounds=bnd,
        noise=noise_sd(ya),
        spread=float(spread),
    )


def model_info(path: str | Path | None = None) -> dict[str, Any]:
    """The architecture of a weights file and its parameter count."""
    model = load_model(path)
    return {**model.config, "parameters": sum(p.numel() for p in model.parameters())}
