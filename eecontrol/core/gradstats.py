"""Per-matrix gradient statistics and freezing rules for GradES, framework-free.

GradES (Wen et al., "GradES: Significantly Faster Training in Transformers with
Gradient-Based Early Stopping", arXiv 2509.01842) freezes each weight matrix of a
transformer on its own once its gradient has become small. This module holds the parts
that need no Lightning, so they work from a plain PyTorch loop too:

- :func:`find_components`: the matrices to watch, found by module-name patterns
  (suffix, glob or ``re:`` regex); LoRA A/B pairs form one component and the packed
  ``in_proj_weight`` of ``nn.MultiheadAttention`` is a component of its own.
- :class:`GradStatistic`: ``grad_l1``, ``grad_delta_l1`` or ``weight_delta_l1`` of every
  component in one fused reduction (``torch._foreach_norm``) and one host sync.
- :class:`FreezeRule`: numeric, per-group or scale-free ``"auto"`` thresholds.
- :func:`freeze_parameters`: stop a parameter's training for good (gradient, optimizer
  state and weight decay included).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

STATISTICS = ("grad_l1", "grad_delta_l1", "weight_delta_l1")
NORMALIZE = ("sum", "mean")
AUTO = "auto"

#: Default component patterns (suffix patterns: they match whole trailing name segments).
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

_MHA_PACKED = (
    ("in_proj_weight", "in_proj"),
    ("q_proj_weight", "q_proj"),
    ("k_proj_weight", "k_proj"),
    ("v_proj_weight", "v_proj"),
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
        name: the module name (or ``<attention>.in_proj`` for a packed MHA weight).
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


def find_components(
    model: nn.Module, patterns: Sequence[str] = DEFAULT_PATTERNS
) -> list[Component]:
    """Finds the components of ``model`` whose module names match ``patterns``.

    Each trainable parameter belongs to the deepest matching module above it, so that a
    pattern matching a container never swallows a matched child; parameters under
    ``lora_A``/``lora_B`` belong to the module that holds the adapter, so the pair is one
    component. ``nn.MultiheadAttention`` keeps its input projection in a packed parameter
    (``in_proj_weight``, Q, K and V stacked) rather than in a Linear: it is offered as the
    name ``<attention>.in_proj`` (with ``in_proj_bias``), or ``<attention>.q_proj`` /
    ``k_proj`` / ``v_proj`` when built with separate key/value sizes. Parameters that do
    not require gradients (a LoRA base layer, a frozen embedding) are never components.

    Args:
        model: the model.
        patterns: component patterns (see :func:`compile_pattern`).

    Returns:
        The components in module order.

    Raises:
        ValueError: if no trainable parameter matches; the message lists the module names
            seen so that a pattern can be written for them.
    """
    compiled = compile_patterns(patterns)
    module_names = [n for n, _ in model.named_modules() if n]
    matched = {n for n in module_names if matches(compiled, n)}
    virtual: dict[int, str] = {}  # id(param) -> packed-weight component name
    for mod_name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        for attr, short in _MHA_PACKED:
            param = getattr(module, attr, None)
            vname = f"{mod_name}.{short}" if mod_name else short
            if isinstance(param, nn.Parameter) and matches(compiled, vname):
                virtual[id(param)] = vname
                if attr == "in_proj_weight" and isinstance(module.in_proj_bias, nn.Parameter):
                    virtual[id(module.in_proj_bias)] = vname
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = virtual.get(id(param))
        if owner is None:
            parts = pname.split(".")[:-1]
            for k in range(len(parts), 0, -1):
                prefix = ".".join(parts[:k])
                if prefix in matched:
                    owner = prefix
                    break
        if owner is None:
            continue
        groups.setdefault(_lora_owner(owner), []).append((pname, param))
    if not groups:
        shown = module_names[:60]
        more = f" ... and {len(module_names) - 60} more" if len(module_names) > 60 else ""
        raise ValueError(
            f"no trainable parameter of {type(model).__name__} matches `patterns` "
            f"{list(patterns)}. Module names seen: {shown}{more}. Patterns are dotted "
            f"suffixes ('attention.self.query'), globs ('*.mlp.fc?') or regexes "
            f"('re:.*layers\\.\\d+\\.attn\\..*'); nn.MultiheadAttention's packed "
            f"in_proj_weight is named '<attention>.in_proj'."
        )
    return [
        Component(name, tuple(n for n, _ in items), tuple(p for _, p in items))
        for name, items in groups.items()
    ]


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


def _fused_l1(tensors: list[torch.Tensor]) -> list[float]:
    """L1 norm of every tensor in one fused call and one host sync."""
    if not tensors:
        return []
    norms = torch._foreach_norm(tensors, 1)
    device, dtype = norms[0].device, norms[0].dtype
    if any(n.device != device or n.dtype != dtype for n in norms):
        norms = [n.to(device=device, dtype=torch.float32) for n in norms]
    return torch.stack(norms).tolist()


class GradStatistic:
    """Reads one statistic for many components at once.

    ``grad_l1`` is sum |dL/dW| (paper v1); ``grad_delta_l1`` is sum |g_t - g_{t-1}| (paper
    v3); ``weight_delta_l1`` is sum |W_t - W_{t-k}| over the ``k`` steps since the last
    reading (what the reference code computes). ``normalize="mean"`` divides by the
    number of weights (a per-element value, comparable across matrix sizes).

    A reading is ``None`` ("no decision") when it cannot be made: a missing gradient, a
    non-finite value, or a delta statistic without a previous snapshot (the first
    reading). It is never 0.

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

    @torch.no_grad()
    def read(self, active: Sequence[int]) -> list[float | None]:
        """Reads the statistic of the components at indices ``active``.

        Returns:
            One value per index in ``active`` (``None`` where no reading is possible).
        """
        tensors: list[torch.Tensor] = []
        spans: list[tuple[int, int] | None] = []
        delta = self.statistic != "grad_l1"
        currents: list[list[torch.Tensor]] = []
        previous: list[list[torch.Tensor]] = []
        for idx in active:
            current = self._current(self.components[idx])
            snap = self._snapshots.get(idx) if delta else None
            if current is None or (delta and (snap is None or len(snap) != len(current))):
                spans.append(None)
                continue
            start = sum(len(c) for c in currents)
            currents.append(current)
            if delta:
                previous.append(snap)  # type: ignore[arg-type]
            spans.append((start, start + len(current)))
        flat = [t for c in currents for t in c]
        if delta and flat:
            tensors = torch._foreach_sub(flat, [t for s in previous for t in s])
        else:
            tensors = flat
        norms = _fused_l1(tensors)
        out: list[float | None] = []
        for idx, span in zip(active, spans):
            if span is None:
                out.append(None)
                continue
            value = math.fsum(norms[span[0] : span[1]])
            if self.normalize == "mean":
                value /= max(self.components[idx].numel, 1)
            out.append(value if math.isfinite(value) else None)
        return out

    @torch.no_grad()
    def snapshot(self, active: Sequence[int]) -> None:
        """Keeps the current gradients (or weights) of ``active`` for the next reading."""
        if self.statistic == "grad_l1":
            return
        keep = set(active)
        for idx in list(self._snapshots):
            if idx not in keep:
                del self._snapshots[idx]
        for idx in active:
            current = self._current(self.components[idx])
            if current is None:
                self._snapshots.pop(idx, None)
                continue
            old = self._snapshots.get(idx)
            if old is not None and all(o.shape == c.shape for o, c in zip(old, current)):
                torch._foreach_copy_(old, current)
            else:
                self._snapshots[idx] = [c.clone() for c in current]

    def clear(self, indices: Iterable[int] | None = None) -> None:
        """Drops snapshots (all, or of the given components, e.g. once frozen)."""
        if indices is None:
            self._snapshots.clear()
        else:
            for idx in indices:
                self._snapshots.pop(idx, None)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """The snapshots by component name (tensors on CPU), for an exact resume."""
        return {
            self.components[i].name: [t.detach().cpu().clone() for t in ts]
            for i, ts in self._snapshots.items()
        }

    def load_state_dict(self, state: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Restores :meth:`state_dict` output (unknown names are ignored)."""
        index = {c.name: i for i, c in enumerate(self.components)}
        self._snapshots = {}
        for name, tensors in state.items():
            i = index.get(name)
            if i is None:
                continue
            params = self.components[i].params
            if len(tensors) == len(params):
                self._snapshots[i] = [
                    t.to(device=p.device, dtype=p.dtype) for t, p in zip(tensors, params)
                ]


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
