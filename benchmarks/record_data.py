"""The data of ``record_curves.py``'s plain-loop tasks: fixed splits, standardised.

Every task is split 60/20/20 (train/val/test) with seed 0, stratified for classifiers;
features are standardised on the training split (text: TF-IDF fitted on it), and
regression targets are standardised with the training split's mean and deviation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _split(x: np.ndarray, y: np.ndarray, stratify: bool) -> list[np.ndarray]:
    """A fixed 60/20/20 train/val/test split (seed 0)."""
    from sklearn.model_selection import train_test_split

    x_tr, x_rest, y_tr, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=0, stratify=y if stratify else None
    )
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest if stratify else None
    )
    return [x_tr, y_tr, x_va, y_va, x_te, y_te]


REGRESSIONS = ("concrete", "diabetes")
FORTUNES = Path("/usr/share/games/fortunes")


def load_fortunes(min_size: int = 600) -> tuple[list[str], np.ndarray]:
    """Debian ``fortunes``: every category file with at least ``min_size`` texts.

    Returns:
        The texts and their labels (the category's index in sorted file-name order).
    """
    if not FORTUNES.is_dir():
        raise FileNotFoundError(f"{FORTUNES} is missing: apt-get install fortunes")
    texts: list[str] = []
    labels: list[int] = []
    cats = 0
    for path in sorted(p for p in FORTUNES.iterdir() if p.is_file() and not p.suffix):
        items = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
        items = [t.strip() for t in items if t.strip()]
        if len(items) >= min_size:
            texts += items
            labels += [cats] * len(items)
            cats += 1
    return texts, np.asarray(labels, dtype=np.int64)


def load_task(task: str) -> Splits:
    """The train/val/test tensors of a tabular or text task (features standardised)."""
    from sklearn.preprocessing import StandardScaler

    if task == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        parts = _split(x, y, stratify=True)
        scaler = StandardScaler().fit(parts[0])
        for k in (0, 2, 4):
            parts[k] = scaler.transform(parts[k])
    elif task == "bbc_tfidf":
        from eecontrol.recipes.text import load_bbc_news
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts, y, _ = load_bbc_news()
        parts = _split(np.array(texts, dtype=object), y, stratify=True)
        vec = TfidfVectorizer(max_features=2000, sublinear_tf=True, stop_words="english")
        vec.fit(parts[0])
        for k in (0, 2, 4):
            parts[k] = vec.transform(parts[k]).toarray()
    elif task == "concrete":
        from eecontrol.recipes.regression import load_regression_data

        x, y = load_regression_data("concrete")
        parts = _split(x, y, stratify=False)
        scaler = StandardScaler().fit(parts[0])
        mu, sd = parts[1].mean(), parts[1].std()
        for k in (0, 2, 4):
            parts[k] = scaler.transform(parts[k])
            parts[k + 1] = (parts[k + 1] - mu) / sd
    elif task in ("diabetes", "wine", "digits_mlp"):
        from sklearn import datasets

        load = {"diabetes": "load_diabetes", "wine": "load_wine", "digits_mlp": "load_digits"}
        x, y = getattr(datasets, load[task])(return_X_y=True)
        parts = _split(x, y, stratify=task != "diabetes")
        scaler = StandardScaler().fit(parts[0])
        mu, sd = parts[1].mean(), parts[1].std()
        for k in (0, 2, 4):
            parts[k] = scaler.transform(parts[k])
            if task == "diabetes":
                parts[k + 1] = (parts[k + 1] - mu) / sd
    elif task == "fortunes":
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts, y = load_fortunes()
        parts = _split(np.array(texts, dtype=object), y, stratify=True)
        vec = TfidfVectorizer(max_features=500, sublinear_tf=True, stop_words="english")
        vec.fit(parts[0])
        for k in (0, 2, 4):
            parts[k] = vec.transform(parts[k]).toarray()
    else:
        raise ValueError(f"unknown task {task!r}")
    classify = task not in REGRESSIONS
    out = []
    for k, a in enumerate(parts):
        if k % 2 == 0:
            out.append(torch.tensor(a, dtype=torch.float32))
        else:
            out.append(torch.tensor(a, dtype=torch.long if classify else torch.float32))
    return tuple(out)  # type: ignore[return-value]
