"""A tiny random Llama classifier on real data, in the settings large models train in.

The model is built from a config (no download): ``LlamaForSequenceClassification`` with 2
layers of width 32. The data are scikit-learn's handwritten digits, each 8x8 image read as
a sequence of 64 pixel tokens (intensity 0-16), 10 classes: real data that a transformer
learns in a few steps. Loaders come as a map dataset or as an ``IterableDataset`` of
unknown length (a stream), so tests can run ``max_steps`` budgets, mid-epoch validation,
accumulation, manual optimization with one or two optimizers and clipping.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


def digit_tokens(n: int = 256, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits (from ``offset``) as (n, 64) token ids 0-16 and (n,) labels."""
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x[offset : offset + n], dtype=torch.long)
    y = torch.as_tensor(y[offset : offset + n], dtype=torch.long)
    return x, y


def zero_grad_and_backward(
    module: pl.LightningModule, loss: torch.Tensor
) -> list[torch.optim.Optimizer]:
    """A manual-optimization step's first half: zero every optimizer's gradients, backward.

    Returns:
        The module's optimizers (a list, also for one).
    """
    opts = module.optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    for opt in opts:
        opt.zero_grad()
    module.manual_backward(loss)
    return opts


class DigitStream(IterableDataset):
    """The digits as a stream: no ``__len__``, ``repeat`` passes over ``n`` samples."""

    def __init__(self, n: int = 256, repeat: int = 100) -> None:
        self.x, self.y = digit_tokens(n)
        self.repeat = repeat

    def __iter__(self):
        for _ in range(self.repeat):
            yield from zip(self.x, self.y)


def loaders(kind: str = "map", n: int = 256, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """Train (``map`` or ``stream``) and validation loaders (a held-out map set of 64)."""
    train = TensorDataset(*digit_tokens(n)) if kind == "map" else DigitStream(n)
    val = TensorDataset(*digit_tokens(64, offset=1500))
    return (
        DataLoader(train, batch_size=batch_size, shuffle=False),
        DataLoader(val, batch_size=64),
    )


def llama_config(**overrides: Any):
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "num_labels": 10,
        "pad_token_id": 99,  # never a pixel token: every sequence is read to its end
        "max_position_embeddings": 64,
        "attention_dropout": 0.1,
    }
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


class TinyLlama(pl.LightningModule):
    """A 2-layer random Llama classifier (from a config) on digit tokens.

    Args:
        lr: AdamW learning rate.
        manual: manual optimization (``training_step`` steps the optimizers itself).
        optimizers: 1, or 2 (manual only: the backbone and the classification head each
            get an AdamW, both stepped once per batch).
        clip: with ``manual``, ``self.clip_gradients(opt, clip, "norm")`` before each step.
        seed: the initialisation seed.
        config: overrides of the Llama config.
    """

    def __init__(
        self,
        lr: float = 3e-3,
        manual: bool = False,
        optimizers: int = 1,
        clip: float | None = None,
        seed: int = 0,
        **config: Any,
    ) -> None:
        super().__init__()
        from transformers import LlamaForSequenceClassification

        torch.manual_seed(seed)
        self.net = LlamaForSequenceClassification(llama_config(**config))
        self.lr = lr
        self.n_optimizers = optimizers
        self.clip = clip
        self.automatic_optimization = not manual
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=x).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        if self.automatic_optimization:
            return loss
        opts = zero_grad_and_backward(self, loss)
        for opt in opts:
            if self.clip is not None:
                self.clip_gradients(
                    opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm"
                )
            opt.step()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.loss_fn(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        if self.n_optimizers == 1:
            return torch.optim.AdamW(self.parameters(), lr=self.lr)
        head = [p for n, p in self.net.named_parameters() if n.startswith("score")]
        body = [p for n, p in self.net.named_parameters() if not n.startswith("score")]
        return [torch.optim.AdamW(body, lr=self.lr), torch.optim.AdamW(head, lr=self.lr)]
