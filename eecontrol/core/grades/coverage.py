"""What GradES's components cover of a model's repeated blocks (the set-up report)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from eecontrol.core.blocks import block_of, find_blocks
from eecontrol.core.grades.targets import Component, _trainable_or, is_table


@dataclass
class Coverage:
    """What a set of components covers of a model's repeated blocks.

    Args:
        block_lists: ``(list name, number of blocks)`` of the repeated blocks found.
        matrix_numel: weights in the blocks' weight matrices (trainable ones; tables out).
        matrix_covered: of those, weights inside components.
        block_numel: all trainable weights in the blocks (norms and biases included).
        block_covered: of those, weights inside components.
        left_out: ``(parameter name, numel, reason)`` of block parameters not covered.
        outside: components that lie outside the repeated blocks.
        frozen_before: weights in the blocks that were frozen before fit (not controlled).
    """

    block_lists: list[tuple[str, int]]
    matrix_numel: int
    matrix_covered: int
    block_numel: int
    block_covered: int
    left_out: list[tuple[str, int, str]]
    outside: list[str]
    frozen_before: int

    @property
    def matrix_fraction(self) -> float | None:
        """Fraction of the blocks' weight-matrix weights covered (None: no blocks)."""
        return self.matrix_covered / self.matrix_numel if self.matrix_numel else None

    @property
    def block_fraction(self) -> float | None:
        """Fraction of all trainable block weights covered (None: no blocks)."""
        return self.block_covered / self.block_numel if self.block_numel else None

    def left_out_matrices(self) -> list[tuple[str, int, str]]:
        """The weight matrices of the blocks that are not covered (no norms, biases, tables)."""
        return [x for x in self.left_out if x[2] == "weight matrix not selected"]


def coverage(
    model: nn.Module, components: Sequence[Component], keep: Iterable[str] = ()
) -> Coverage:
    """Measures what ``components`` cover of the model's repeated blocks.

    Args:
        model: the model.
        components: from :func:`find_components`.
        keep: parameter names treated as trainable (a resumed run's frozen set).

    Returns:
        The coverage record (fractions are None when the model has no repeated blocks).
    """
    eligible = _trainable_or(keep)
    lists = find_blocks(model)
    block_names = [b for _, blocks in lists for b in blocks]
    watched = {id(p) for c in components for p in c.params}
    modules = dict(model.named_modules())
    out = Coverage([(n, len(b)) for n, b in lists], 0, 0, 0, 0, [], [], 0)
    for pname, p in model.named_parameters():
        if block_of(pname, block_names) is None:
            continue
        if not eligible(pname, p):
            out.frozen_before += p.numel()
            continue
        covered = id(p) in watched
        out.block_numel += p.numel()
        out.block_covered += p.numel() if covered else 0
        owner = modules.get(pname.rsplit(".", 1)[0] if "." in pname else "", model)
        if p.dim() < 2:
            if not covered:
                out.left_out.append((pname, p.numel(), "norm or bias (1-D)"))
            continue
        if is_table(pname, owner) and not isinstance(owner, nn.MultiheadAttention):
            if not covered:
                out.left_out.append((pname, p.numel(), "embedding or position/token table"))
            continue
        out.matrix_numel += p.numel()
        if covered:
            out.matrix_covered += p.numel()
        else:
            out.left_out.append((pname, p.numel(), "weight matrix not selected"))
    out.outside = [c.name for c in components if block_of(c.name, block_names) is None]
    return out
