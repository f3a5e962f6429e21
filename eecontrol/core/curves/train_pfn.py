"""Trains the PFN curve forecaster (:mod:`.pfn`) on curves from the prior (:mod:`.prior`).

CPU, one thread, seeded: the same command reproduces the same weights on the same torch
build. Each step draws a batch of curves of one random length, cuts them at one random
number of observed points, and asks for the value at the last point and at up to 7 other
later points (cross-entropy of the bucket holding the true value).

    python -m eecontrol.core.curves.train_pfn                  # the shipped weights
    python -m eecontrol.core.curves.train_pfn --tiny --out /tmp/pfn.pt   # seconds (CI)
    python -m eecontrol.core.curves.train_pfn --variant recorded --recorded benchmarks/data \
        --leave-out concrete --out /tmp/pfn_no_concrete.pt   # recorded curves, one task held out

Writes the weights (``torch.load(weights_only=True)``-loadable: the architecture as
primitives, the state dict as tensors) and, beside them, a JSON of the configuration,
seed, steps and wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eecontrol.core.curves.pfn import WEIGHTS_FILE, Z_GAIN, CurvePFN, bucket_index, normalise
from eecontrol.core.curves.prior import (
    VARIANTS,
    PriorConfig,
    Recorded,
    recorded_from_folder,
    sample_curves,
)


@dataclass
class TrainConfig:
    """A training run.

    Args:
        steps: optimiser steps.
        batch: curves per step.
        min_len: shortest curve drawn.
        max_len: longest curve drawn.
        max_queries: later points asked per curve (the last one always).
        lr: peak AdamW learning rate (linear warm-up over 5% of the steps, cosine decay).
        emsize: token width.
        layers: encoder layers.
        heads: attention heads.
        buckets: output buckets.
        seed: seeds the prior's generator and torch.
        robust: normalise the inputs by the robust range (see ``pfn.normalise``).
        prior: the prior's knobs.
    """

    steps: int = 4000
    batch: int = 64
    min_len: int = 3
    max_len: int = 120
    max_queries: int = 8
    lr: float = 1e-3
    emsize: int = 64
    layers: int = 3
    heads: int = 4
    buckets: int = 128
    seed: int = 0
    robust: bool = False
    prior: PriorConfig = field(default_factory=PriorConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe primitives."""
        d = {k: v for k, v in self.__dict__.items() if k != "prior"}
        d["prior"] = self.prior.to_dict()
        return d


TINY = {"steps": 200, "batch": 32, "max_len": 40, "emsize": 32, "layers": 2, "buckets": 64}


def make_batch(
    rng: np.random.Generator, cfg: TrainConfig, recorded: Recorded | None = None
) -> tuple[torch.Tensor, ...]:
    """One training batch: ``(xc, yc, xq, target_bucket_z)`` as float32 tensors."""
    length = int(rng.integers(max(cfg.min_len, 2), cfg.max_len + 1))
    x, g = sample_curves(rng, cfg.batch, length, cfg.prior, recorded)
    # observed points: mostly few (early forecasts matter most), sometimes almost all
    frac = rng.uniform(0.0, 1.0) ** 1.3
    n = int(min(max(1, round(frac * length)), length - 1))
    later = np.arange(n, length - 1)
    m = min(cfg.max_queries - 1, len(later))
    q = (
        np.concatenate([rng.choice(later, m, replace=False), [length - 1]])
        if m
        else np.array([length - 1])
    )
    gt = torch.from_numpy(g)
    centre, scale = normalise(gt[:, :n], cfg.robust)
    yc = ((gt[:, :n] - centre[:, None]) / scale[:, None]).float()
    yq = (gt[:, q] - centre[:, None]) / scale[:, None]
    xc = torch.from_numpy(np.log(x[:, :n] / x[:, n - 1 : n])).float()
    xq = torch.from_numpy(np.log(x[:, q] / x[:, n - 1 : n])).float()
    zq = torch.asinh(Z_GAIN * yq.clamp(-1e6, 1e6)).float()
    return xc, yc, xq, zq


def train(
    cfg: TrainConfig, recorded: Recorded | None = None, log_every: int = 200, log: Any = print
) -> tuple[CurvePFN, dict[str, Any]]:
    """Trains a model; returns it (eval mode) and a record of the run."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = CurvePFN(cfg.emsize, cfg.layers, cfg.heads, cfg.buckets, robust=cfg.robust)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(cfg.steps):
        xc, yc, xq, zq = make_batch(rng, cfg, recorded)
        logits = model(xc, yc, xq)
        target = bucket_index(zq, model.borders)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(
                f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"{time.perf_counter() - t0:.0f}s"
            )
    model.eval()
    record = {
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - t0,
        "first_loss": float(np.mean(losses[: max(1, min(20, len(losses) // 4))])),
        "final_loss": float(np.mean(losses[-max(1, min(200, len(losses) // 4)) :])),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return model, record


def save(model: CurvePFN, record: dict[str, Any], out: Path) -> None:
    """Writes the weights (``weights_only``-loadable) and ``<out>.json`` beside them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    blob = {"config": dict(model.config), "state_dict": model.state_dict()}
    torch.save(blob, out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: train and write the weights."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="base", help="prior variant")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emsize", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--tiny", action="store_true", help="a few hundred steps of a small model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--robust", action="store_true", help="robust input normalisation")
    p.add_argument(
        "--recorded",
        type=Path,
        help="folder of recorded *_curves.json sweeps to mix in (variant `recorded`)",
    )
    p.add_argument(
        "--recorded-share",
        type=float,
        help="share of each batch drawn from the recorded curves (default: the variant's)",
    )
    p.add_argument(
        "--leave-out", nargs="*", default=[], help="recorded tasks to leave out (held out)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = dict(TINY) if args.tiny else {}
    for k in ("steps", "emsize", "layers"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    if kw.get("steps", 1) < 1:
        raise ValueError(f"`--steps` must be >= 1, got {kw['steps']}.")
    prior = VARIANTS[args.variant]
    if args.recorded_share is not None:
        prior = dataclasses.replace(prior, recorded_share=args.recorded_share)
    cfg = TrainConfig(seed=args.seed, prior=prior, robust=args.robust, **kw)
    recorded = None
    if cfg.prior.recorded_share > 0:
        if args.recorded is None:
            raise ValueError(
                f"`--variant {args.variant}` mixes recorded curves: pass `--recorded DIR`."
            )
        recorded = recorded_from_folder(args.recorded)
        unknown = sorted(set(args.leave_out) - set(recorded.tasks))
        if unknown:
            raise ValueError(
                f"`--leave-out`: unknown task(s) {unknown}; recorded: {sorted(set(recorded.tasks))}."
            )
        for task in args.leave_out:
            recorded = recorded.without(task)
        if not recorded.curves:
            raise ValueError(f"`--leave-out {' '.join(args.leave_out)}` left no recorded curve.")
    elif args.recorded is not None or args.leave_out:
        raise ValueError(
            f"`--recorded`/`--leave-out` need a variant with recorded curves, got `{args.variant}`."
        )
    model, record = train(cfg, recorded, log_every=50 if args.tiny else 200)
    record["variant"] = args.variant
    if recorded is not None:
        record["recorded_tasks"] = sorted(set(recorded.tasks))
        record["recorded_curves"] = len(recorded.curves)
        record["left_out"] = sorted(args.leave_out)
    record["command"] = "python -m eecontrol.core.curves.train_pfn " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    save(model, record, args.out)
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))


if __name__ == "__main__":
    main()
