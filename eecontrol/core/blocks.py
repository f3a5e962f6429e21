"""Find the repeated blocks of a model by structure (no names needed).

Transformers, ViTs, ConvNeXts and most deep networks keep their layers in a container
of repeated blocks: Hugging Face ``encoder.layer`` / ``layers`` / ``h`` / ``block``
(``nn.ModuleList``), timm ``blocks`` (``nn.Sequential``), ConvNeXt ``stages[i]``. GradES
watches the weight matrices inside these blocks and stochastic depth assigns one rate per
block, so both start here. Names are never used: a *block list* is an ``nn.ModuleList``
or ``nn.Sequential`` holding at least two non-leaf children with weight tensors (for a
``Sequential``, children of a class that occurs at least twice, so that
``Sequential(Linear, GELU, Linear)`` is not a list of blocks). A one-layer model's
``nn.ModuleList`` of a single block counts when the model repeats nothing else.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

CONTAINERS = (nn.ModuleList, nn.Sequential)


def has_matrix(module: nn.Module) -> bool:
    """Whether ``module`` (recursively) holds a parameter with two or more dimensions."""
    return any(p.dim() >= 2 for p in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def list_blocks(container: nn.Module, minimum: int = 2) -> list[str]:
    """Names (child keys) of the blocks of ``container``, or [] if it is no block list.

    Args:
        container: any module.
        minimum: the fewest blocks that make a block list (1 only for ``nn.ModuleList``:
            a one-layer model).

    Returns:
        The child names that are blocks, in order; empty unless at least ``minimum``.
    """
    if not isinstance(container, CONTAINERS):
        return []
    children = [(k, c) for k, c in container.named_children() if not _is_leaf(c) and has_matrix(c)]
    if isinstance(container, nn.Sequential):
        counts = Counter(type(c) for _, c in children)
        children = [(k, c) for k, c in children if counts[type(c)] >= 2]
    elif minimum < 2 and len(children) != len(list(container.children())):
        return []  # a one-block ModuleList holds nothing else
    return [k for k, _ in children] if len(children) >= max(minimum, 1) else []


def find_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The outermost block lists of ``model`` and their blocks, in module order.

    A block list nested inside a block of another list (T5's per-block ``layer`` list,
    Swin's per-stage ``blocks``) is part of that block, so every weight counts once.

    Args:
        model: the model.

    Returns:
        ``(list name, [full block names])`` per block list.
    """
    found: list[tuple[str, list[str]]] = []
    for minimum in (2, 1):  # one-block lists only when no model-wide repetition exists
        for name, module in model.named_modules():
            keys = list_blocks(module, minimum)
            if keys:
                prefix = f"{name}." if name else ""
                found.append((name, [prefix + k for k in keys]))
        if found:
            break
    kept: list[tuple[str, list[str]]] = []
    block_names: list[str] = []
    for lst, blocks in found:
        if any(lst == b or lst.startswith(b + ".") for b in block_names):
            continue
        kept.append((lst, blocks))
        block_names.extend(blocks)
    return kept


def block_of(name: str, block_names: list[str]) -> str | None:
    """The block (from ``block_names``) that contains the module or parameter ``name``."""
    for b in block_names:
        if name == b or name.startswith(b + "."):
            return b
    return None
