"""DARTS genotype derivation and the DARTS+ early-stopping criteria, framework-free.

Liang et al., "DARTS+: Improved Differentiable Architecture Search with Early Stopping"
(2019), over the search space of DARTS (Liu et al., ICLR 2019). A DARTS cell has
``steps`` intermediate nodes; node ``i`` receives one edge from each of the two cell
inputs and each earlier node, so the architecture weights of a cell are an
``(edges, ops)`` tensor with ``edges = sum(i + 2 for i in range(steps))`` rows (14 for 4
nodes), ordered node by node and, within a node, by input index.

Derivation (:func:`derive_cell`, as DARTS does it): take ``softmax(alpha)`` per edge;
for each node keep the ``k`` (2) incoming edges with the largest probability of any op
other than ``none``; on each kept edge, choose the op other than ``none`` with the largest
probability. The ``none`` op is never chosen, even when it dominates an edge.

Ties are broken by position, deterministically: among edges with exactly equal strength
the one with the lower input index wins, and among ops with exactly equal probability the
one that comes first in ``op_names`` wins (this is what DARTS's stable ``sorted`` and
strict ``>`` comparisons do). The kept edges of a node are listed strongest first, as in
DARTS.

DARTS+ criteria (:class:`DartsPlusCriteria`):

1. stop when the derived normal cell has at least ``max_skip`` (2) ``skip_connect`` ops;
2. stop when the ranking of the architecture weights over the learnable ops (the
   separable and dilated convolutions) on every edge has not changed for ``patience``
   (10) epochs. The stability counter is the number of consecutive checks whose ranking
   equals the previous check's (0 at the first check and after any change).

Both are suppressed before ``min_epochs`` completed epochs (a near-random genotype often
has two skips by chance), but the counter runs from the first check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The eight candidate operations of the DARTS search space, in DARTS's order."""

CRITERIA = ("skip", "stable", "either", "both")
SCOPES = ("both", "normal", "genotype")
LEARNABLE_PREFIXES = ("sep_conv", "dil_conv", "conv")


def num_edges(steps: int) -> int:
    """Returns the number of edges of a DARTS cell with ``steps`` intermediate nodes."""
    return steps * (steps + 3) // 2


def steps_from_edges(edges: int) -> int:
    """Returns the number of intermediate nodes of a cell with ``edges`` edges.

    Raises:
        ValueError: if no whole number of nodes gives that many edges.
    """
    steps = round((-3 + math.sqrt(9 + 8 * edges)) / 2)
    if steps < 1 or num_edges(steps) != edges:
        raise ValueError(
            f"a DARTS cell cannot have {edges} edges (valid: 2, 5, 9, 14, 20, ... = "
            "steps * (steps + 3) / 2); give `steps` explicitly."
        )
    return steps


@dataclass(frozen=True)
class SearchSpace:
    """Describes a DARTS-like cell search space: its op names and node layout.

    Args:
        op_names: the candidate ops, in the order of the alpha tensors' last dimension.
        steps: intermediate nodes per cell.
        multiplier: how many of the last intermediate nodes are concatenated as the cell
            output (default: all ``steps``).
        edges_per_node: incoming edges kept per node in the genotype (DARTS: 2).
        none_op: the name of the zero op, never chosen (None if the space has none).
        skip_op: the op counted by criterion 1.
        learnable_ops: the ops ranked by criterion 2 (default: those whose name starts
            with ``sep_conv``, ``dil_conv`` or ``conv``).
    """

    op_names: tuple[str, ...] = DARTS_OPS
    steps: int = 4
    multiplier: int | None = None
    edges_per_node: int = 2
    none_op: str | None = "none"
    skip_op: str = "skip_connect"
    learnable_ops: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_names", tuple(str(o) for o in self.op_names))
        if len(set(self.op_names)) != len(self.op_names):
            raise ValueError(f"`op_names` must be unique, got {list(self.op_names)}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer in [1, inf), got {self.steps!r}.")
        mult = self.steps if self.multiplier is None else self.multiplier
        if not 1 <= mult <= self.steps:
            raise ValueError(f"`multiplier` must be in [1, {self.steps}], got {self.multiplier!r}.")
        object.__setattr__(self, "multiplier", mult)
        if not 1 <= self.edges_per_node <= 2:
            raise ValueError(f"`edges_per_node` must be in [1, 2], got {self.edges_per_node!r}.")
        if self.none_op is not None and self.none_op not in self.op_names:
            object.__setattr__(self, "none_op", None)
        if not self.candidate_indices:
            raise ValueError(f"`op_names` has no op other than `none`: {list(self.op_names)}.")
        if self.none_op is not None and self.none_op == self.skip_op:
            raise ValueError(
                f"`none_op` and `skip_op` must be different op names, got {self.none_op!r} for "
                "both: the none op is never chosen, so criterion 1 could never count it."
            )
        if self.learnable_ops is None:
            learn = tuple(o for o in self.op_names if o.startswith(LEARNABLE_PREFIXES))
        else:
            learn = tuple(self.learnable_ops)
            if not learn:
                raise ValueError(
                    "`learnable_ops` must be None or a non-empty list of op names from "
                    f"{list(self.op_names)}, got []."
                )
            unknown = [o for o in learn if o not in self.op_names]
            if unknown:
                raise ValueError(
                    f"`learnable_ops` {unknown} are not in `op_names` {list(self.op_names)}."
                )
        object.__setattr__(self, "learnable_ops", learn)

    @property
    def num_edges(self) -> int:
        """Edges per cell (rows of an alpha tensor)."""
        return num_edges(self.steps)

    @property
    def candidate_indices(self) -> list[int]:
        """Indices of the ops a genotype may choose (every op but ``none``)."""
        return [i for i, o in enumerate(self.op_names) if o != self.none_op]

    @property
    def learnable_indices(self) -> list[int]:
        """Indices of the ops ranked by criterion 2."""
        assert self.learnable_ops is not None
        return [self.op_names.index(o) for o in self.learnable_ops]

    @property
    def concat(self) -> tuple[int, ...]:
        """The node indices concatenated as the cell output (inputs are 0 and 1)."""
        assert self.multiplier is not None
        return tuple(range(2 + self.steps - self.multiplier, 2 + self.steps))

    def check(self, name: str, alpha: Tensor) -> None:
        """Raises a ``ValueError`` if ``alpha`` is not a finite ``(edges, ops)`` tensor."""
        shape = (self.num_edges, len(self.op_names))
        if not isinstance(alpha, Tensor) or tuple(alpha.shape) != shape:
            got = tuple(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__
            raise ValueError(
                f"architecture weights {name!r} must be a tensor of shape (edges, ops) = "
                f"{shape} for steps={self.steps} and {len(self.op_names)} ops, got {got}."
            )
        if not bool(torch.isfinite(alpha).all()):
            raise ValueError(f"architecture weights {name!r} contain NaN or inf: {alpha}.")


@dataclass(frozen=True)
class Genotype:
    """A derived architecture: per cell, the kept ``(op, input)`` edges and the concat.

    Edges are listed node by node, ``edges_per_node`` per node. Its JSON form is the one
    of DARTS's ``Genotype`` namedtuple: ``{"normal": [[op, j], ...], "normal_concat":
    [...], "reduce": ..., "reduce_concat": ...}``.

    Args:
        cells: cell name -> tuple of ``(op name, input node index)``.
        concat: cell name -> node indices concatenated as the output.
    """

    cells: Mapping[str, tuple[tuple[str, int], ...]]
    concat: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def count(self, op: str, cell: str = "normal") -> int:
        """Returns how many kept edges of ``cell`` use ``op``."""
        return sum(1 for o, _ in self.cells.get(cell, ()) if o == op)

    def to_dict(self) -> dict[str, list[Any]]:
        """Returns the DARTS-style JSON-safe dict."""
        out: dict[str, list[Any]] = {}
        for name, edges in self.cells.items():
            out[name] = [[o, int(j)] for o, j in edges]
            out[f"{name}_concat"] = [int(i) for i in self.concat.get(name, ())]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Builds a genotype from :meth:`to_dict` output (or DARTS's namedtuple as a dict).

        Raises:
            ValueError: if an edge is not an ``[op, input]`` pair.
        """
        cells: dict[str, tuple[tuple[str, int], ...]] = {}
        concat: dict[str, tuple[int, ...]] = {}
        for key, value in data.items():
            if str(key).endswith("_concat"):
                continue
            edges = []
            for edge in value:
                if len(edge) != 2:
                    raise ValueError(f"genotype cell {key!r}: edge {edge!r} is not [op, input].")
                edges.append((str(edge[0]), int(edge[1])))
            cells[str(key)] = tuple(edges)
            if f"{key}_concat" in data:
                concat[str(key)] = tuple(int(i) for i in data[f"{key}_concat"])
            else:
                nodes = len(edges) // 2
                concat[str(key)] = tuple(range(2, 2 + nodes))
        if not cells:
            raise ValueError(f"genotype has no cell: {dict(data)!r}.")
        return cls(cells=cells, concat=concat)

    def to_json(self) -> str:
        """Returns the genotype as JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any] | Genotype) -> Genotype:
        """Loads a genotype from a JSON file path, JSON text, a dict or a genotype.

        A file written by ``DARTSPlusStopping`` (with a ``"genotype"`` key) is accepted.
        """
        if isinstance(source, Genotype):
            return source
        if isinstance(source, Mapping):
            data: Any = source
        else:
            text = str(source)
            data = (
                json.loads(text)
                if text.lstrip().startswith("{")
                else json.loads(Path(text).read_text())
            )
        if isinstance(data, Mapping) and "genotype" in data:
            data = data["genotype"]
        return cls.from_dict(data)

    def __str__(self) -> str:
        parts = [
            f"{name}={[(o, j) for o, j in edges]}, {name}_concat={list(self.concat.get(name, ()))}"
            for name, edges in self.cells.items()
        ]
        return "Genotype(" + ", ".join(parts) + ")"


def softmax_weights(alpha: Tensor) -> Tensor:
    """Returns ``softmax(alpha)`` over ops (last dimension), detached, float32, on CPU."""
    return torch.softmax(alpha.detach().to("cpu", torch.float32), dim=-1)


def derive_cell(probs: Tensor, space: SearchSpace) -> tuple[tuple[str, int], ...]:
    """Derives one cell's kept edges from its op probabilities, as DARTS does.

    Args:
        probs: ``(edges, ops)`` softmax probabilities of one cell.
        space: the search space.

    Returns:
        ``(op, input)`` pairs, ``space.edges_per_node`` per node, strongest edge first.
    """
    cand = space.candidate_indices
    rows = probs.tolist()
    gene: list[tuple[str, int]] = []
    start = 0
    for node in range(space.steps):
        n_in = node + 2
        block = rows[start : start + n_in]
        strength = [max(row[k] for k in cand) for row in block]
        # stable sort: equal strength keeps the lower input index first
        edges = sorted(range(n_in), key=lambda j: -strength[j])[: space.edges_per_node]
        for j in edges:
            best = cand[0]
            for k in cand[1:]:
                if block[j][k] > block[j][best]:  # strict: the first op wins a tie
                    best = k
            gene.append((space.op_names[best], j))
        start += n_in
    return tuple(gene)


def derive_genotype(alphas: Mapping[str, Tensor], space: SearchSpace) -> Genotype:
    """Derives the genotype of every cell from raw architecture weights (DARTS rule).

    Args:
        alphas: cell name (``normal``, ``reduce``, ...) -> raw ``(edges, ops)`` weights.
        space: the search space.

    Returns:
        The genotype, cells in the order of ``alphas``.
    """
    cells = {}
    for name, alpha in alphas.items():
        space.check(name, alpha)
        cells[name] = derive_cell(softmax_weights(alpha), space)
    return Genotype(cells=cells, concat={name: space.concat for name in cells})


Derivation = Callable[[Mapping[str, Tensor], SearchSpace], Genotype]


def skip_counts(genotype: Genotype, skip_op: str = "skip_connect") -> dict[str, int]:
    """Returns the number of ``skip_op`` edges in each cell of ``genotype``."""
    return {name: genotype.count(skip_op, name) for name in genotype.cells}


def op_ranking(alpha: Tensor, indices: Sequence[int]) -> list[list[int]]:
    """Returns, per edge, the ops at ``indices`` ordered by decreasing weight.

    The ranking is of the raw weights (softmax keeps the order within an edge and would
    round nearly equal weights together). Equal weights keep their order in ``indices``.

    Args:
        alpha: ``(edges, ops)`` weights of one cell.
        indices: the op indices to rank.

    Returns:
        One list of op indices per edge, strongest first.
    """
    if not indices:
        return [[] for _ in range(alpha.shape[0])]
    sub = alpha.detach().to("cpu", torch.float64)[:, list(indices)]
    order = torch.sort(-sub, dim=1, stable=True).indices
    idx = torch.tensor(list(indices))
    return idx[order].tolist()


def stability_signature(
    alphas: Mapping[str, Tensor], genotype: Genotype, space: SearchSpace, scope: str
) -> list[Any]:
    """Returns what criterion 2 compares between epochs, as JSON-safe lists.

    Args:
        alphas: cell name -> raw weights.
        genotype: the genotype derived from ``alphas``.
        space: the search space.
        scope: ``both`` (the learnable-op ranking of every cell), ``normal`` (of the
            normal cell only) or ``genotype`` (the derived genotype itself).
    """
    if scope == "genotype":
        return [[name, [[o, j] for o, j in edges]] for name, edges in genotype.cells.items()]
    names = [n for n in alphas if scope == "both" or n == "normal"]
    return [[name, op_ranking(alphas[name], space.learnable_indices)] for name in names]


@dataclass
class CheckResult:
    """What one DARTS+ check found.

    Args:
        epoch: the epoch checked (0-based).
        genotype: the derived genotype.
        skips: skip-connect count per cell.
        stable_epochs: the stability counter after this check.
        skip_met: criterion 1 holds (ignoring ``min_epochs``).
        stable_met: criterion 2 holds (ignoring ``min_epochs``).
        guarded: ``min_epochs`` suppresses stopping at this check.
        stop: the configured criterion says stop now.
    """

    epoch: int
    genotype: Genotype
    skips: dict[str, int]
    stable_epochs: int
    skip_met: bool
    stable_met: bool
    guarded: bool
    stop: bool


class DartsPlusCriteria:
    """The DARTS+ criteria as a small state machine fed once per search epoch.

    Usable from any training loop: call :meth:`update` with the raw architecture weights
    at the end of each epoch.

    Args:
        space: the search space.
        max_skip: criterion 1 holds when the normal cell has at least this many skips.
        patience: criterion 2 holds when the stability counter reaches this value.
        criterion: which criteria stop: ``skip`` (1), ``stable`` (2), ``either``, ``both``
            (both hold at the same check).
        scope: what criterion 2 compares: ``both`` cells' learnable-op ranking,
            ``normal`` only, or the ``genotype``.
        min_epochs: no stop before this many epochs are complete.
        derive: the genotype derivation (default :func:`derive_genotype`).
    """

    def __init__(
        self,
        space: SearchSpace,
        max_skip: int = 2,
        patience: int = 10,
        criterion: str = "either",
        scope: str = "both",
        min_epochs: int = 0,
        derive: Derivation | None = None,
    ) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"`criterion` must be one of {list(CRITERIA)}, got {criterion!r}.")
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {list(SCOPES)}, got {scope!r}.")
        if scope != "genotype" and criterion != "skip" and not space.learnable_ops:
            raise ValueError(
                f"criterion 2 (criterion={criterion!r}, scope={scope!r}) ranks the learnable "
                f"ops, but `op_names` {list(space.op_names)} has none named sep_conv*, "
                "dil_conv* or conv*: the ranking would be empty and never change. Give "
                "`learnable_ops`, or use scope='genotype' or criterion='skip'."
            )
        self.space = space
        self.max_skip = int(max_skip)
        self.patience = int(patience)
        self.criterion = criterion
        self.scope = scope
        self.min_epochs = int(min_epochs)
        self.derive = derive or derive_genotype
        self.signature: list[Any] | None = None
        self.stable_epochs = 0

    def update(self, alphas: Mapping[str, Tensor], epoch: int) -> CheckResult:
        """Runs one check on the weights at the end of ``epoch`` (0-based).

        Args:
            alphas: cell name -> raw ``(edges, ops)`` weights; must contain ``normal``.
            epoch: the epoch just completed.

        Returns:
            The check's findings, including whether to stop.
        """
        if "normal" not in alphas:
            raise ValueError(f"architecture weights need a 'normal' cell, got {list(alphas)}.")
        genotype = self.derive(alphas, self.space)
        skips = skip_counts(genotype, self.space.skip_op)
        signature = stability_signature(alphas, genotype, self.space, self.scope)
        if self.signature is not None and signature == self.signature:
            self.stable_epochs += 1
        else:
            self.stable_epochs = 0
        self.signature = signature
        skip_met = skips.get("normal", 0) >= self.max_skip
        stable_met = self.stable_epochs >= self.patience
        guarded = epoch + 1 < self.min_epochs
        fire = {
            "skip": skip_met,
            "stable": stable_met,
            "either": skip_met or stable_met,
            "both": skip_met and stable_met,
        }[self.criterion]
        return CheckResult(
            epoch=epoch,
            genotype=genotype,
            skips=skips,
            stable_epochs=self.stable_epochs,
            skip_met=skip_met,
            stable_met=stable_met,
            guarded=guarded,
            stop=fire and not guarded,
        )

    def state_dict(self) -> dict[str, Any]:
        """Returns the progress (signature and counter) as JSON-safe primitives."""
        return {"signature": self.signature, "stable_epochs": self.stable_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` output."""
        self.signature = state.get("signature")
        self.stable_epochs = int(state.get("stable_epochs", 0))
