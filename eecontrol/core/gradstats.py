"""Per-matrix gradient statistics and freezing rules for GradES, framework-free.

GradES (Wen et al., "GradES: Significantly Faster Training in Transformers with
Gradient-Based Early Stopping", arXiv 2509.01842) freezes each weight matrix of a
transformer on its own once its gradient has become small. This module holds the parts
that need no Lightning, so they work from a plain PyTorch loop too:

- :func:`find_components`: the matrices to watch, found by structure (every weight
  tensor inside the model's repeated blocks: Linear, HF Conv1D, packed 3-D MoE experts,
  packed ``nn.MultiheadAttention`` projections, LoRA pairs) or by name patterns (suffix,
  glob or ``re:`` regex); :func:`coverage` says what they cover of the blocks.
- :class:`GradStatistic`: ``grad_l1``, ``grad_delta_l1`` or ``weight_delta_l1`` of every
  component, reduced in cache-sized chunks (exact to ~1e-8 on 45M-entry matrices, fp16
  upcast) with one host sync.
- :class:`FreezeRule`: numeric, per-group or scale-free ``"auto"`` thresholds.
- :func:`freeze_parameters`: stop a parameter's training for good (gradient, optimizer
  state and weight decay included).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from eecontrol.core.blocks import block_of, find_blocks

STATISTICS = ("grad_l1", "grad_delta_l1", "weight_delta_l1")
NORMALIZE = ("sum", "mean")
AUTO = "auto"

#: A preset of name patterns (Llama/Qwen, BERT, GPT-2, ViT, torch MHA) for ``patterns=``;
#: the default is discovery by structure, which needs no names.
DEFAULT_PATTERNS: tuple[str, ...] = (
    # Llama / Qwen / Mistral / Phi-3 style attention and gated MLP
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    # BERT / RoBERTa / MiniLM
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    # GPT-2
    "c_attn",
    "c_proj",
    "c_fc",
    # ViT / timm / fairseq / torch.nn.MultiheadAttention (in_proj is the packed QKV weight)
    "qkv",
    "in_proj",
    "out_proj",
    "fc1",
    "fc2",
    # torch.nn.TransformerEncoderLayer / TransformerDecoderLayer feed-forward
    "linear1",
    "linear2",
)

#: Name segments of LoRA adapter matrices (PEFT naming); an adapter pair is one component.
LORA_SEGMENTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")

#: Parameters of ``nn.MultiheadAttention`` that form its packed input projection.
_MHA_PACKED = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)

#: Parameter names of position / token tables (learned, 2-D or more, but not matrices).
_TABLE = re.compile(
    r"(^|_)(pos|position|positions|relative|rel|cls|mask|register|dist)(_|$)|embed|token|table"
)


# --- patterns and components ----------------------------------------------------------


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compiles one component pattern to a regular expression over full module names.

    Three forms are accepted: ``re:<regex>`` (full match), a glob containing ``*``, ``?``
    or ``[`` (full match, ``*`` crosses dots), or a plain dotted suffix such as
    ``attention.self.query`` that matches whole trailing name segments.

    Args:
        pattern: the pattern.

    Returns:
        A compiled regular expression to ``fullmatch`` against names.

    Raises:
        ValueError: if the pattern is empty or an invalid regular expression.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"`patterns` must hold non-empty strings, got {pattern!r}.")
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f"`patterns`: invalid regular expression {pattern!r}: {err}") from err
    if any(c in pattern for c in "*?["):
        return re.compile(fnmatch.translate(pattern))
    return re.compile(r"(?:.*\.)?" + re.escape(pattern))


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compiles a list of component patterns (see :func:`compile_pattern`).

    Raises:
        ValueError: if ``patterns`` is a single string, empty, or holds a bad pattern.
    """
    if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
        raise ValueError(
            f"`patterns` must be a non-empty list of name patterns (suffix, glob or 're:' "
            f"regex), got {patterns!r}."
        )
    return [compile_pattern(p) for p in patterns]


def matches(compiled: Sequence[re.Pattern[str]], name: str) -> bool:
    """Whether any compiled pattern matches the full module name ``name``."""
    return bool(name) and any(p.fullmatch(name) for p in compiled)


@dataclass(frozen=True)
class Component:
    """One frozen-as-a-whole unit: a weight matrix (with its bias) or a LoRA A/B pair.

    Args:
        name: the module name (``<attention>.in_proj`` for a packed MHA projection,
            ``<module>.<parameter>`` for one of several packed tensors of a module, such
            as ``mlp.experts.gate_up_proj``).
        param_names: names of its parameters in ``model.named_parameters()``.
        params: the parameters themselves.
    """

    name: str
    param_names: tuple[str, ...]
    params: tuple[nn.Parameter, ...] = field(repr=False, compare=False)

    @property
    def numel(self) -> int:
        """Number of scalar weights in the component."""
        return sum(p.numel() for p in self.params)


def _lora_owner(name: str) -> str:
    """Maps a name inside a LoRA adapter (``x.q_proj.lora_A.default``) to ``x.q_proj``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in LORA_SEGMENTS and i > 0:
            return ".".join(parts[:i])
    return name


def is_table(param_name: str, module: nn.Module) -> bool:
    """Whether a parameter is an embedding or a position/token table, not a weight matrix."""
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return True
    return bool(_TABLE.search(param_name.rsplit(".", 1)[-1]))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _bias_names(weight: str) -> tuple[str, ...]:
    """The names a bias of the packed tensor ``weight`` goes by in the same module."""
    stem = weight[: -len("_weight")] if weight.endswith("_weight") else weight
    return (f"{weight}_bias", f"{stem}_bias", weight.replace("weight", "bias"))


def weight_groups(
    model: nn.Module, eligible: Callable[[str, nn.Parameter], bool]
) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """Every weight tensor of ``model`` (2-D or more) with the biases that belong to it.

    One group per module holding one weight tensor (``nn.Linear``, Hugging Face
    ``Conv1D``, convolutions: weight + bias); one per tensor for a module holding several
    (packed MoE experts: ``<experts>.gate_up_proj`` with ``gate_up_proj_bias``, which is
    2-D in GPT-OSS and still a bias, never a component of its own); one for
    the packed input projection of ``nn.MultiheadAttention`` (``<attention>.in_proj``:
    ``in_proj_weight`` or ``q/k/v_proj_weight`` when key/value sizes differ, with
    ``in_proj_bias``, ``bias_k`` and ``bias_v``, which are shared by Q, K and V). LoRA
    adapters merge into the layer that holds them. Embeddings and position/token tables
    are not weight matrices and are left out.

    Args:
        model: the model.
        eligible: ``(parameter name, parameter) -> bool``; other parameters are ignored.

    Returns:
        ``(component name, [(parameter name, parameter)])`` in module order.
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for mod_name, module in model.named_modules():
        direct = [
            (k, p)
            for k, p in module.named_parameters(recurse=False)
            if eligible(_join(mod_name, k), p)
        ]
        if not direct:
            continue
        if isinstance(module, nn.MultiheadAttention):
            packed = [(k, p) for k, p in direct if k in _MHA_PACKED]
            if packed:
                groups.setdefault(_lora_owner(_join(mod_name, "in_proj")), []).extend(
                    (_join(mod_name, k), p) for k, p in packed
                )
            continue
        weights = [(k, p) for k, p in direct if p.dim() >= 2 and not is_table(k, module)]
        # A packed tensor's bias is its bias whatever its rank: GPT-OSS experts keep
        # (experts, out) biases, ``gate_up_proj_bias`` of ``gate_up_proj``.
        names = {k for k, _ in weights}
        bias_of = {b: k for k in names for b in _bias_names(k) if b in names and b != k}
        weights = [(k, p) for k, p in weights if k not in bias_of]
        if not weights:
            continue
        if len(weights) == 1:
            owner = _lora_owner(mod_name) if mod_name else weights[0][0]
            rest = [(k, p) for k, p in direct if p.dim() < 2]
            groups.setdefault(owner, []).extend((_join(mod_name, k), p) for k, p in weights + rest)
            continue
        for k, p in weights:
            biases = [
                (b, q)
                for b, q in direct
                if b in _bias_names(k) and b != k and (q.dim() < 2 or bias_of.get(b) == k)
            ]
            groups.setdefault(_lora_owner(_join(mod_name, k)), []).extend(
                (_join(mod_name, n), q) for n, q in [(k, p), *biases]
            )
    return list(groups.items())


def _trainable_or(keep: Iterable[str]) -> Callable[[str, nn.Parameter], bool]:
    kept = set(keep)
    return lambda name, p: p.requires_grad or name in kept


def _names_seen(model: nn.Module) -> str:
    names = [n for n, _ in model.named_modules() if n]
    more = f" ... and {len(names) - 60} more" if len(names) > 60 else ""
    return f"{names[:60]}{more}"


def find_components(
    model: nn.Module, patterns: Sequence[str] | None = None, keep: Iterable[str] = ()
) -> list[Component]:
    """Finds the weight matrices to watch: by structure, or by name patterns.

    By default (``patterns=None``) the repeated blocks of the model are found by
    structure (:func:`eecontrol.core.blocks.find_blocks`: Hugging Face ``layers``,
    ``encoder.layer``, ``h``, ``block``; timm ``blocks``) and every weight tensor inside
    them is a component (see :func:`weight_groups`): attention and MLP matrices under any
    name, packed MoE experts, packed MHA projections, LoRA pairs. Embeddings, norms and
    everything outside the blocks (task heads such as RoBERTa's ``classifier.out_proj``)
    are never components.

    With ``patterns``, the components are the weight tensors whose module name (or a
    module above it) matches a pattern; a parameter belongs to the deepest matching
    module above it, so a pattern naming a container (``mlp``) makes one component of
    everything in it. Parameters that do not require gradients (a LoRA base layer, a
    frozen embedding) are never components, except those named in ``keep`` (the frozen
    set of a resumed run, already ``requires_grad=False`` in the same model object).

    Args:
        model: the model.
        patterns: None (structure), or name patterns (see :func:`compile_pattern`).
        keep: parameter names to treat as trainable even if ``requires_grad`` is False.

    Returns:
        The components in module order.

    Raises:
        ValueError: if nothing is found; the message lists the module names seen.
    """
    eligible = _trainable_or(keep)
    if patterns is None:
        lists = find_blocks(model)
        block_names = [b for _, blocks in lists for b in blocks]
        if not block_names:
            raise ValueError(
                f"GradES found no repeated blocks in {type(model).__name__} (an nn.ModuleList "
                f"or nn.Sequential of two or more blocks holding weight matrices), so it cannot "
                f"tell transformer matrices from heads and embeddings. Pass `patterns` to name "
                f"the matrices to watch (dotted suffixes 'mlp.fc1', globs '*.attn.*' or "
                f"'re:' regexes). Module names seen: {_names_seen(model)}."
            )
        groups = [
            (name, items)
            for name, items in weight_groups(model, eligible)
            if block_of(name, block_names) is not None
        ]
        if not groups:
            raise ValueError(
                f"GradES found {len(block_names)} blocks in {type(model).__name__} "
                f"({[n for n, _ in lists]}) but no trainable weight matrix inside them "
                f"(all frozen?). Module names seen: {_names_seen(model)}."
            )
    else:
        compiled = compile_patterns(patterns)
        module_names = {n for n, _ in model.named_modules() if n}
        merged: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, items in weight_groups(model, eligible):
            parts = name.split(".")
            owner = None
            for k in range(len(parts), 0, -1):
                prefix = ".".join(parts[:k])
                if (prefix in module_names or k == len(parts)) and matches(compiled, prefix):
                    owner = prefix
                    break
            if owner is None:
                sub = [n for n, _ in items if matches(compiled, n.rsplit(".", 1)[0])]
                if not sub:
                    continue
                owner = name
            merged.setdefault(_lora_owner(owner), []).extend(items)
        groups = list(merged.items())
        if not groups:
            raise ValueError(
                f"no trainable parameter of {type(model).__name__} matches `patterns` "
                f"{list(patterns)}. Module names seen: {_names_seen(model)}. Patterns are "
                f"dotted suffixes ('attention.self.query'), globs ('*.mlp.fc?') or regexes "
                f"('re:.*layers\\.\\d+\\.attn\\..*'); nn.MultiheadAttention's packed "
                f"projection is named '<attention>.in_proj'; leave `patterns` unset to find "
                f"the matrices of the repeated blocks by structure."
            )
    return [
        Component(name, tuple(n for n, _ in items), tuple(p for _, p in items))
        for name, items in groups
    ]


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


def group_of(name: str, keys: Iterable[str]) -> str | None:
    """Returns the first key of a per-group mapping whose pattern matches ``name``.

    The key ``"default"`` matches every name but is tried last.
    """
    keys = list(keys)
    for key in keys:
        if key != "default" and compile_pattern(key).fullmatch(name):
            return key
    return "default" if "default" in keys else None


# --- statistics -----------------------------------------------------------------------

#: Elements per chunk of the L1 reductions (a cache-sized scratch buffer on CPU).
CHUNK_CPU = 1 << 20
CHUNK_DEVICE = 1 << 22


class _Scratch:
    """Reusable scratch buffers per (device, dtype) for the chunked reductions."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
        buf = self._buffers.get((device, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, device=device, dtype=dtype)
            self._buffers[(device, dtype)] = buf
        return buf[:n]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def l1_parts(
    tensors: Sequence[torch.Tensor],
    previous: Sequence[torch.Tensor] | None = None,
    scratch: _Scratch | None = None,
    refresh: bool = False,
) -> list[torch.Tensor]:
    """Partial sums of ``|t|`` (or ``|t - previous|``) per tensor, without a host sync.

    Each tensor is reduced in chunks through a small scratch buffer: ``abs`` (of the
    difference) is written into the buffer and summed there (fp32 cascade summation, or
    fp64 for fp64 inputs; fp16/bf16 are upcast first, so a 4096x4096 fp16 gradient gives
    its true sum, not ``inf``). This reads every input once, never allocates a
    full-size temporary, and is exact to about 1e-8 relative on 45M entries (a fused
    fp32 ``_foreach_norm`` drifts by 1e-1 there); the chunk sums are added in fp64 by
    the caller.

    Args:
        tensors: the tensors.
        previous: tensors of the same shapes to subtract first (delta statistics).
        scratch: reusable buffers (a fresh one if None).
        refresh: copy each chunk of ``tensors`` into ``previous`` once it is read (the
            next snapshot, taken while the chunk is still in cache).

    Returns:
        One 1-D tensor of chunk sums per input tensor.
    """
    scratch = scratch or _Scratch()
    out: list[torch.Tensor] = []
    for i, t in enumerate(tensors):
        flat = t.reshape(-1)
        prev = previous[i].reshape(-1) if previous is not None else None
        chunk = CHUNK_CPU if t.device.type == "cpu" else CHUNK_DEVICE
        dtype = _acc_dtype(t.dtype)
        sums = []
        for start in range(0, max(flat.numel(), 1), chunk):
            piece = flat[start : start + chunk]
            buf = scratch.get(t.device, dtype, piece.numel())
            if prev is None:
                if piece.dtype == dtype:
                    torch.abs(piece, out=buf)
                else:
                    buf.copy_(piece).abs_()
            else:
                before = prev[start : start + chunk]
                if piece.dtype == dtype and before.dtype == dtype:
                    torch.sub(piece, before, out=buf)
                else:
                    buf.copy_(piece).sub_(before)
                if refresh:
                    before.copy_(piece)
                buf.abs_()
            sums.append(buf.sum())
        out.append(torch.stack(sums))
    return out


def _fused_l1(tensors: list[torch.Tensor]) -> list[float]:
    """L1 norm of every tensor (chunked, exact, one host sync)."""
    if not tensors:
        return []
    parts = l1_parts(tensors)
    lengths = [len(p) for p in parts]
    flat = torch.cat([p.to(torch.float64) for p in parts]).tolist()
    out, k = [], 0
    for n in lengths:
        out.append(math.fsum(flat[k : k + n]))
        k += n
    return out


#: Why a reading is "no decision", by code.
NO_GRADIENT = "no gradient"
NOT_FINITE = "non-finite value"
NO_PREVIOUS = "no previous snapshot"


class GradStatistic:
    """Reads one statistic for many components at once.

    ``grad_l1`` is sum |dL/dW| (paper v1); ``grad_delta_l1`` is sum |g_t - g_{t-1}| (paper
    v3); ``weight_delta_l1`` is sum |W_t - W_{t-k}| over the ``k`` steps since the last
    reading (what the reference code computes). ``normalize="mean"`` divides by the
    number of weights (a per-element value, comparable across matrix sizes).

    A reading is ``None`` ("no decision") when it cannot be made: a missing gradient, a
    non-finite value, or a delta statistic without a previous snapshot (the first
    reading). It is never 0. :attr:`failures` says why, per component, for the last read.

    Gradient snapshots (``grad_delta_l1``) keep a reference to the previous step's
    gradient tensor when the trainer sets gradients to ``None`` between steps (the
    default of torch and Lightning), so no copy is made; the tensor's version counter
    shows if it was changed in place (``zero_grad(set_to_none=False)``), and from then on
    snapshots are copies.

    Args:
        components: the components (from :func:`find_components`).
        statistic: one of :data:`STATISTICS`.
        normalize: ``sum`` or ``mean``.
    """

    def __init__(
        self, components: Sequence[Component], statistic: str = "grad_l1", normalize: str = "sum"
    ) -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"`statistic` must be one of {list(STATISTICS)}, got {statistic!r}.")
        if normalize not in NORMALIZE:
            raise ValueError(f"`normalize` must be one of {list(NORMALIZE)}, got {normalize!r}.")
        self.components = list(components)
        self.statistic = statistic
        self.normalize = normalize
        self._snapshots: dict[int, list[torch.Tensor]] = {}
        self._versions: dict[int, list[int] | None] = {}  # None: an owned copy
        self._copy_grads = False
        self._refreshed: set[int] = set()
        self._scratch = _Scratch()
        self.failures: dict[int, str] = {}

    def snapshot_due(self, step: int, interval: int) -> bool:
        """Whether a snapshot must be taken at optimizer ``step`` for the next reading.

        Readings happen at steps divisible by ``interval``. ``grad_delta_l1`` keeps the
        gradient of the step just before a reading; ``weight_delta_l1`` keeps the weights
        of each reading for the next one; ``grad_l1`` keeps nothing.
        """
        if self.statistic == "grad_delta_l1":
            return (step + 1) % interval == 0
        if self.statistic == "weight_delta_l1":
            return step % interval == 0
        return False

    def _current(self, comp: Component) -> list[torch.Tensor] | None:
        if self.statistic == "weight_delta_l1":
            return [p.detach() for p in comp.params]
        grads = [p.grad for p in comp.params]
        if any(g is None for g in grads):
            return None
        return [g.detach() for g in grads]  # type: ignore[union-attr]

    def _snapshot_valid(self, idx: int, current: list[torch.Tensor]) -> bool:
        snap = self._snapshots.get(idx)
        if snap is None or len(snap) != len(current):
            return False
        if any(s.shape != c.shape for s, c in zip(snap, current)):
            return False
        versions = self._versions.get(idx)
        if versions is None:
            return True
        if any(s is c for s, c in zip(snap, current)) or any(
            s._version != v for s, v in zip(snap, versions)
        ):
            self._copy_grads = True  # gradients are reused in place: copy from now on
            return False
        return True

    @torch.no_grad()
    def read(self, active: Sequence[int], refresh: bool = False) -> list[float | None]:
        """Reads the statistic of the components at indices ``active``.

        Args:
            active: component indices.
            refresh: ``weight_delta_l1`` only: also take the next snapshot during the
                same pass (a reading that is immediately followed by a snapshot); the
                next :meth:`snapshot` then skips these components.

        Returns:
            One value per index in ``active`` (``None`` where no reading is possible;
            :attr:`failures` holds the reason).
        """
        delta = self.statistic != "grad_l1"
        self.failures = {}
        currents: list[torch.Tensor] = []
        previous: list[torch.Tensor] = []
        spans: list[tuple[int, int] | None] = []
        for idx in active:
            current = self._current(self.components[idx])
            if current is None:
                self.failures[idx] = NO_GRADIENT
                spans.append(None)
                continue
            if delta and not self._snapshot_valid(idx, current):
                self.failures[idx] = NO_PREVIOUS
                spans.append(None)
                continue
            spans.append((len(currents), len(currents) + len(current)))
            currents.extend(current)
            if delta:
                previous.extend(self._snapshots[idx])
        refresh = refresh and self.statistic == "weight_delta_l1"
        parts = l1_parts(currents, previous if delta else None, self._scratch, refresh)
        self._refreshed = (
            {i for i, span in zip(active, spans) if span is not None} if refresh else set()
        )
        lengths = [len(p) for p in parts]
        flat = torch.cat([p.to(torch.float64) for p in parts]).tolist() if parts else []
        norms, k = [], 0
        for n in lengths:
            norms.append(math.fsum(flat[k : k + n]))
            k += n
        out: list[float | None] = []
        for idx, span in zip(active, spans):
            if span is None:
                out.append(None)
                continue
            value = math.fsum(norms[span[0] : span[1]])
            if self.normalize == "mean":
                value /= max(self.components[idx].numel, 1)
            if not math.isfinite(value):
                self.failures[idx] = NOT_FINITE
                out.append(None)
            else:
                out.append(value)
        return out

    @torch.no_grad()
    def snapshot(self, active: Sequence[int]) -> None:
        """Keeps the current gradients (or weights) of ``active`` for the next reading."""
        if self.statistic == "grad_l1":
            return
        keep = set(active)
        for idx in list(self._snapshots):
            if idx not in keep:
                self.clear([idx])
        by_reference = self.statistic == "grad_delta_l1" and not self._copy_grads
        refreshed, self._refreshed = self._refreshed, set()
        for idx in active:
            if idx in refreshed:
                continue  # already copied during the reading
            current = self._current(self.components[idx])
            if current is None:
                self.clear([idx])
                continue
            if by_reference:
                self._snapshots[idx] = list(current)
                self._versions[idx] = [c._version for c in current]
                continue
            old = self._snapshots.get(idx)
            if (
                old is not None
                and self._versions.get(idx) is None
                and all(o.shape == c.shape for o, c in zip(old, current))
            ):
                torch._foreach_copy_(old, current)
            else:
                self._snapshots[idx] = [c.clone() for c in current]
                self._versions[idx] = None

    def clear(self, indices: Iterable[int] | None = None) -> None:
        """Drops snapshots (all, or of the given components, e.g. once frozen)."""
        if indices is None:
            self._snapshots.clear()
            self._versions.clear()
        else:
            for idx in indices:
                self._snapshots.pop(idx, None)
                self._versions.pop(idx, None)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """The snapshots by component name (tensors on CPU), for an exact resume."""
        return {
            self.components[i].name: [t.detach().cpu().clone() for t in ts]
            for i, ts in self._snapshots.items()
        }

    def load_state_dict(self, state: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Restores :meth:`state_dict` output (unknown names are ignored)."""
        index = {c.name: i for i, c in enumerate(self.components)}
        self.clear()
        for name, tensors in state.items():
            i = index.get(name)
            if i is None:
                continue
            params = self.components[i].params
            if len(tensors) == len(params):
                self._snapshots[i] = [
                    t.to(device=p.device, dtype=p.dtype).clone() for t, p in zip(tensors, params)
                ]
                self._versions[i] = None


# --- thresholds -----------------------------------------------------------------------


def check_tau(tau: Any) -> float | str | dict[str, float | str]:
    """Validates ``tau``: a number >= 0, ``"auto"``, or a dict of group pattern -> either.

    Raises:
        ValueError: naming ``tau`` and the valid values.
    """

    def one(value: Any, where: str) -> float | str:
        if value == AUTO:
            return AUTO
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"`{where}` must be a number in [0, inf) or 'auto', got {value!r}.")
        return float(value)

    if isinstance(tau, Mapping):
        if not tau:
            raise ValueError("`tau` must be a number in [0, inf), 'auto' or a non-empty dict.")
        out = {}
        for key, value in tau.items():
            compile_pattern(str(key))
            out[str(key)] = one(value, f"tau[{key!r}]")
        return out
    return one(tau, "tau")


def resolve_taus(
    tau: float | str | Mapping[str, float | str], components: Sequence[Component]
) -> list[float | str]:
    """Gives each component its threshold (a number or ``"auto"``).

    Raises:
        ValueError: if a per-group ``tau`` dict leaves a component without a threshold.
    """
    if not isinstance(tau, Mapping):
        return [tau for _ in components]
    out: list[float | str] = []
    for comp in components:
        key = group_of(comp.name, tau.keys())
        if key is None:
            raise ValueError(
                f"`tau` has no group for component {comp.name!r}: keys {list(tau)}; add a "
                f"matching pattern or a 'default' key."
            )
        out.append(tau[key])
    return out


class FreezeRule:
    """Decides, per component, when its statistic is small enough to freeze it.

    A numeric threshold freezes when the (optionally smoothed) statistic is below it, as
    in the paper. ``"auto"`` is scale-free: the component's *reference* is the mean of its
    raw readings in the second half of the grace period (steps ``[grace/2, grace)``), and
    it freezes once its smoothed statistic falls below ``rel_tau`` x reference, i.e. when
    its gradient has shrunk to that fraction of its own post-warm-up size. If no reading
    fell in that window, the first valid smoothed reading after the grace period is the
    reference (no freeze at that reading).

    Args:
        taus: per component, a number or ``"auto"``.
        rel_tau: the fraction of the reference used by ``"auto"``, in (0, 1].
        smoothing: EMA factor in [0, 1) applied to readings before comparing; 0 compares
            the raw reading.
    """

    def __init__(self, taus: Sequence[float | str], rel_tau: float, smoothing: float) -> None:
        self.taus = list(taus)
        self.rel_tau = float(rel_tau)
        self.smoothing = float(smoothing)
        n = len(self.taus)
        self.ema: list[float | None] = [None] * n
        self.ref_sum: list[float] = [0.0] * n
        self.ref_count: list[int] = [0] * n
        self.reference: list[float | None] = [None] * n

    def threshold(self, idx: int) -> float | None:
        """The absolute threshold of component ``idx`` (``None``: auto, not yet known)."""
        tau = self.taus[idx]
        if tau == AUTO:
            ref = self.reference[idx]
            return None if ref is None else self.rel_tau * ref
        return float(tau)

    def update(self, idx: int, value: float | None, step: int, grace_step: int) -> bool:
        """Feeds one reading; returns whether component ``idx`` should freeze now.

        Args:
            idx: the component's index.
            value: the reading (``None``: no reading, no decision, nothing updated).
            step: the optimizer step of the reading.
            grace_step: the first step at which freezing is allowed.
        """
        if value is None:
            return False
        prev = self.ema[idx]
        smoothed = value if prev is None else self.smoothing * prev + (1 - self.smoothing) * value
        self.ema[idx] = smoothed
        if step < grace_step:
            if self.taus[idx] == AUTO and step >= grace_step / 2:
                self.ref_sum[idx] += value
                self.ref_count[idx] += 1
            return False
        if self.taus[idx] == AUTO and self.reference[idx] is None:
            if self.ref_count[idx] > 0:
                self.reference[idx] = self.ref_sum[idx] / self.ref_count[idx]
            else:
                self.reference[idx] = smoothed
                return False
        threshold = self.threshold(idx)
        return threshold is not None and smoothed < threshold

    def smoothed(self, idx: int) -> float | None:
        """The current smoothed statistic of component ``idx``."""
        return self.ema[idx]

    def state_dict(self, names: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
        """Per-component progress by component name (primitives only)."""
        return {
            name: {
                "ema": self.ema[i],
                "ref_sum": self.ref_sum[i],
                "ref_count": self.ref_count[i],
                "reference": self.reference[i],
            }
            for i, name in enumerate(names)
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
        """Restores :meth:`state_dict` output; unknown names are ignored."""
        for i, name in enumerate(names):
            s = state.get(name)
            if s is None:
                continue
            self.ema[i] = s.get("ema")
            self.ref_sum[i] = float(s.get("ref_sum", 0.0))
            self.ref_count[i] = int(s.get("ref_count", 0))
            self.reference[i] = s.get("reference")


# --- freezing -------------------------------------------------------------------------


def freeze_parameters(
    params: Iterable[nn.Parameter], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> int:
    """Stops all training of ``params``: no gradient, no optimizer state, no update.

    ``requires_grad_(False)`` makes autograd skip the weight-gradient GEMMs, ``grad = None``
    makes torch optimizers (AdamW, SGD, ...) skip the parameter entirely, weight decay and
    momentum included, and dropping its optimizer state frees e.g. Adam's moments. The
    parameter stays in its param group, so optimizer ``state_dict`` indices are unchanged.

    Args:
        params: the parameters to freeze.
        optimizers: optimizers whose state for these parameters is dropped.

    Returns:
        Number of scalar weights frozen.
    """
    params = list(params)
    count = 0
    for p in params:
        p.requires_grad_(False)
        p.grad = None
        count += p.numel()
    for opt in optimizers:
        for p in params:
            opt.state.pop(p, None)
    return count
