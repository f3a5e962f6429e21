"""A prior over learning curves, for training the PFN forecaster (:mod:`.pfn`).

:func:`sample_curves` draws a batch of curves of one length on the *gain* scale (larger is
better: a loss is drawn as its negative). Every curve is the sum of

* an x axis: linear (validation index, epochs or steps, ``x = dx * (i + offset)``) or
  geometric (training-set sizes, doubling schedules, ``x = x0 * r^i``);
* a rise: a non-negative mixture of two saturating shapes of ``t = x / x_last`` drawn from
  Domhan et al.'s families (pow3/pow4, Weibull/Janoschek/exp4, MMF/Hill3/log-power as a
  sigmoid in ``log t``, log-linear and ilog2), each with its own time scale, so a curve may
  saturate at its first point or still rise steeply at its last (a slow starter);
* optionally a plateau before a late rise (``plateau_rise``), a late decline (overfitting,
  ``decline``), or a divergence (a jump to a much worse value that stays, ``diverge``);
* a level and an amplitude: accuracy-like (values in [0, 1], the curve clipped at the bound
  1 when its asymptote passes it: saturation at a bound, optionally quantised like an
  accuracy over a finite validation set) or loss-like (positive values, negated);
* noise: Gaussian with a standard deviation from 1e-4 to ``max_noise`` of the amplitude,
  AR(1)-correlated at a random strength, with occasional outlier validations; a share of
  curves is a noisy plateau (amplitude below the noise).

The knobs are the share of each ingredient (:class:`PriorConfig`); they are chosen by
leave-one-task-out in ``benchmarks/curves_pfn.py``, never on the curves scored.

Recorded curves (``recorded``) can be mixed in, augmented (a random window, an affine
rescaling, extra noise). Any model trained with them has seen those tasks: a benchmark
scoring a recorded task must exclude it from ``recorded`` (leave one task out).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PriorConfig:
    """Shares and ranges of the prior's ingredients.

    Args:
        geometric: share of curves on a geometric x axis.
        plateau_rise: share of curves flat (plus noise) until a late onset, then rising.
        decline: share of curves that decline late (overfitting; a loss rising again).
        diverge: share of curves that diverge (jump to a much worse value and stay).
        flat: share of noisy plateaus (amplitude below the noise).
        slow: share of slow starters (the rise's time scale beyond the last point).
        loss_like: share of loss-like curves (positive values, minimised, drawn negated).
        quantise: share of accuracy-like curves rounded to a validation set's grain.
        max_noise: the largest noise standard deviation, in amplitudes.
        tau_max: the largest time scale of a (not slow) rise, in units of the last x.
        sentinel: share of loss-like curves with 1-3 validations written as a huge loss
            (a diverged step recorded as a sentinel such as 1e3, after which the run
            goes on).
        recorded_share: share of a batch drawn from ``recorded`` curves (when given).
    """

    geometric: float = 0.25
    plateau_rise: float = 0.12
    decline: float = 0.1
    diverge: float = 0.03
    flat: float = 0.08
    slow: float = 0.2
    loss_like: float = 0.4
    quantise: float = 0.3
    max_noise: float = 0.3
    tau_max: float = 0.5
    sentinel: float = 0.0
    recorded_share: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in ("max_noise", "tau_max"):
                if not 1e-3 < value <= 2.0:
                    raise ValueError(f"`{name}` must be in (0.001, 2], got {value!r}.")
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a share in [0, 1], got {value!r}.")

    def to_dict(self) -> dict[str, float]:
        """The knobs as JSON-safe primitives."""
        return {k: float(v) for k, v in asdict(self).items()}


# Named prior variants compared by leave-one-task-out (benchmarks/curves_pfn.py).
VARIANTS: dict[str, PriorConfig] = {
    "base": PriorConfig(),
    "sentinel": PriorConfig(sentinel=0.08, diverge=0.05),
    "early": PriorConfig(tau_max=0.05, slow=0.1, plateau_rise=0.06, flat=0.12, max_noise=0.4),
    # ``sentinel`` with 30% of each batch drawn from recorded curves (``--recorded``)
    "recorded": PriorConfig(sentinel=0.08, diverge=0.05, recorded_share=0.3),
}


@dataclass
class Recorded:
    """Recorded curves to mix into the prior (gain scale: a loss negated).

    Args:
        curves: each curve's values (larger is better).
        tasks: each curve's task name, so one task can be left out.
    """

    curves: list[np.ndarray] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    def without(self, task: str) -> Recorded:
        """The curves of every task but ``task`` (leave one task out)."""
        keep = [i for i, t in enumerate(self.tasks) if t != task]
        return Recorded([self.curves[i] for i in keep], [self.tasks[i] for i in keep])


def _x_axis(rng: np.random.Generator, b: int, n: int, geometric: float) -> np.ndarray:
    """Positions (b x n): linear ``dx * (i + offset)`` or geometric ``x0 * r^i``."""
    i = np.arange(n, dtype=float)[None, :]
    dx = np.exp(rng.uniform(0.0, np.log(1000.0), (b, 1)))
    offset = np.where(rng.random((b, 1)) < 0.7, 1.0, rng.uniform(0.2, 5.0, (b, 1)))
    lin = dx * (i + offset)
    span = np.exp(rng.uniform(np.log(4.0), np.log(1e4), (b, 1)))  # x_last / x_first
    r = span ** (1.0 / max(n - 1, 1))
    geo = dx * r**i
    return np.where(rng.random((b, 1)) < geometric, geo, lin)


def _shape(rng: np.random.Generator, t: np.ndarray, slow: float, tau_max: float) -> np.ndarray:
    """One saturating rise per row, 0 <= p <= ~1, increasing in ``t`` (b x n)."""
    b = t.shape[0]
    # time scale relative to the last point: mostly inside the curve, sometimes beyond
    tau = np.exp(rng.uniform(np.log(1e-3), np.log(tau_max), (b, 1)))
    tau = np.where(
        rng.random((b, 1)) < slow, np.exp(rng.uniform(np.log(0.5), np.log(5), (b, 1))), tau
    )
    kind = rng.integers(0, 5, (b, 1))
    alpha = np.exp(rng.uniform(np.log(0.15), np.log(3.0), (b, 1)))
    delta = np.exp(rng.uniform(np.log(0.4), np.log(4.0), (b, 1)))
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        pow4 = 1.0 - (1.0 + t / tau) ** (-alpha)  # pow3/pow4
        weib = 1.0 - np.exp(-((t / tau) ** delta))  # Weibull/Janoschek/exp4
        hill = 1.0 / (1.0 + (tau / t) ** delta)  # MMF/Hill3/log power
        loglin = np.log1p(t / tau) / np.log1p(1.0 / tau)  # log-linear (unbounded)
        ilog = 1.0 - np.log(1.0 + 1.0 / tau) / np.log(1.0 + t / tau + 1.0 / tau)  # ilog2-like
    out = np.choose(kind, [pow4, weib, hill, loglin, np.maximum(ilog, 0.0)])
    return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)


def sample_curves(
    rng: np.random.Generator,
    batch: int,
    length: int,
    config: PriorConfig | None = None,
    recorded: Recorded | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``batch`` curves of ``length`` points from the prior.

    Args:
        rng: the random generator (the draw is a function of its state).
        batch: number of curves.
        length: points per curve (>= 2).
        config: the ingredients' shares (default :class:`PriorConfig`).
        recorded: recorded curves to mix in (``config.recorded_share`` of the batch, only
            those at least ``length`` long); None for a purely synthetic prior.

    Returns:
        ``(x, g)``, each ``batch x length``: increasing positive positions and values on
        the gain scale (larger is better), float64.
    """
    if batch < 1 or length < 2:
        raise ValueError(f"need batch >= 1 and length >= 2, got {batch}, {length}.")
    cfg = config if config is not None else PriorConfig()
    b, n = batch, length
    x = _x_axis(rng, b, n, cfg.geometric)
    t = x / x[:, -1:]
    # the rise: a non-negative mixture of two shapes (Domhan et al. combine families)
    w = rng.uniform(0.0, 1.0, (b, 1)) ** 2
    p = (1.0 - w) * _shape(rng, t, cfg.slow, cfg.tau_max) + w * _shape(
        rng, t, cfg.slow, cfg.tau_max
    )
    # plateau, then a rise from a late onset
    on = rng.uniform(0.05, 0.8, (b, 1))
    late = np.clip((t - on) / (1.0 - on + 1e-9), 0.0, None)
    rise = 1.0 - np.exp(-((late / np.exp(rng.uniform(np.log(0.05), np.log(2.0), (b, 1)))) ** 1.5))
    early = rng.uniform(0.0, 0.15, (b, 1)) * p
    p = np.where(rng.random((b, 1)) < cfg.plateau_rise, early + (1 - early) * rise, p)
    # a late decline (overfitting)
    t_o = rng.uniform(0.1, 0.9, (b, 1))
    dec = rng.uniform(0.02, 0.5, (b, 1)) * np.clip(
        (t - t_o) / (1 - t_o + 1e-9), 0, None
    ) ** rng.uniform(0.7, 2.0, (b, 1))
    p = p - np.where(rng.random((b, 1)) < cfg.decline, dec, 0.0)
    # amplitude in gain units, noise relative to it
    flat = rng.random((b, 1)) < cfg.flat
    noise_rel = np.exp(rng.uniform(np.log(1e-4), np.log(cfg.max_noise), (b, 1)))
    noise_rel = np.where(flat, np.exp(rng.uniform(np.log(0.3), np.log(3.0), (b, 1))), noise_rel)
    p = np.where(flat, p * rng.uniform(0.0, 0.3, (b, 1)), p)
    rho = rng.uniform(0.0, 0.8, (b, 1)) * (rng.random((b, 1)) < 0.5)
    eps = rng.standard_normal((b, n))
    for j in range(1, n):  # AR(1), unit variance
        eps[:, j] = rho[:, 0] * eps[:, j - 1] + np.sqrt(1 - rho[:, 0] ** 2) * eps[:, j]
    spikes = (rng.random((b, n)) < 0.02) * (rng.random((b, 1)) < 0.3)
    eps = eps - spikes * rng.exponential(4.0, (b, n))
    shape = p + noise_rel * eps
    # levels: accuracy-like (clipped at 1, maybe quantised) or loss-like (negated)
    loss_like = rng.random((b, 1)) < cfg.loss_like
    start = rng.uniform(0.0, 0.9, (b, 1))
    top = start + (1.05 - start) * rng.uniform(0.05, 1.0, (b, 1)) ** 0.7
    acc = start + (top - start) * shape
    acc = np.minimum(acc, 1.0)
    grain = np.exp(rng.uniform(np.log(50), np.log(5000), (b, 1)))
    acc = np.where(rng.random((b, 1)) < cfg.quantise, np.round(acc * grain) / grain, acc)
    acc = np.maximum(acc, 0.0)
    l_end = np.exp(rng.uniform(np.log(1e-3), np.log(3.0), (b, 1)))
    l_start = l_end * np.exp(rng.uniform(np.log(1.05), np.log(50.0), (b, 1)))
    loss = l_end + (l_start - l_end) * (1.0 - shape)
    loss = np.maximum(loss, 1e-3 * l_end)
    g = np.where(loss_like, -loss, acc)
    # divergence: from a random point on, the value jumps to a much worse one and stays
    div = rng.random((b, 1)) < cfg.diverge
    t_d = rng.uniform(0.05, 1.0, (b, 1))
    worse = np.where(
        loss_like,
        -l_start * np.exp(rng.uniform(0.0, np.log(100.0), (b, 1))),
        np.minimum(start, rng.uniform(0.0, 0.3, (b, 1))),
    )
    g = np.where(div & (t >= t_d), worse + 0.01 * np.abs(worse) * rng.standard_normal((b, n)), g)
    if cfg.sentinel > 0:  # drawn only when used, so other variants' draws are unchanged
        hit = (rng.random((b, 1)) < cfg.sentinel) & loss_like & (rng.random((b, n)) < 2.0 / n)
        huge = -l_start * np.exp(rng.uniform(np.log(10.0), np.log(1e4), (b, 1)))
        g = np.where(hit, huge, g)
    if recorded is not None and recorded.curves and cfg.recorded_share > 0:
        pool = [c for c in recorded.curves if len(c) >= n]
        if pool:
            for i in np.flatnonzero(rng.random(b) < cfg.recorded_share):
                c = pool[rng.integers(len(pool))]
                s = rng.integers(0, len(c) - n + 1)
                win = np.asarray(c[s : s + n], dtype=float)
                sd = float(np.ptp(win)) + 1e-9
                g[i] = rng.uniform(0.3, 3.0) * win + rng.normal(0, 1) * sd
                g[i] += rng.uniform(0.0, 0.1) * sd * rng.standard_normal(n)
                x[i] = np.arange(s + 1, s + n + 1, dtype=float) * np.exp(
                    rng.uniform(0, np.log(1000))
                )
    return x, g


def recorded_from(data: Sequence[tuple[str, Sequence[Sequence[float]], str]]) -> Recorded:
    """Recorded curves from ``(task, curves, mode)`` triples (a loss is negated)."""
    out = Recorded()
    for task, curves, mode in data:
        s = 1.0 if mode == "max" else -1.0
        for c in curves:
            arr = s * np.asarray(c, dtype=float)
            if np.all(np.isfinite(arr)):
                out.curves.append(arr)
                out.tasks.append(task)
    return out


def recorded_from_folder(folder: str | Path) -> Recorded:
    """The monitored curves of every ``<task>_curves.json`` sweep in ``folder``.

    Each run's curve is cut to the sweep's ``epoch_budget``; runs shorter than it or with
    a non-finite value are left out (as the benchmarks leave them out).

    Raises:
        ValueError: no ``*_curves.json`` file in ``folder``.
    """
    paths = sorted(Path(folder).glob("*_curves.json"))
    if not paths:
        raise ValueError(f"`recorded`: no *_curves.json file in {str(folder)!r}.")
    data = []
    for path in paths:
        sweep = json.loads(path.read_text())
        monitor, budget = sweep.get("monitor", "val_acc"), int(sweep["epoch_budget"])
        runs = [r[monitor][:budget] for r in sweep["runs"] if len(r[monitor]) >= budget]
        data.append((path.name.removesuffix("_curves.json"), runs, sweep.get("mode", "max")))
    return recorded_from(data)
