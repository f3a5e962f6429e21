"""GradES targets: the weight matrices to watch, found by structure or by name patterns.

:func:`find_components` finds every weight tensor inside the model's repeated blocks
(Linear, Hugging Face Conv1D, packed 3-D MoE experts, packed ``nn.MultiheadAttention``
projections, LoRA pairs) or those matching name patterns; a :class:`Component` is one
frozen-as-a-whole unit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from eecontrol.core.blocks import block_of, find_blocks
from eecontrol.core.grades.patterns import compile_patterns, matches

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


@dataclass(frozen=True)
class Component:
    """One frozen-as-a-whole unit: a weight matrix (with its bias) or a LoRA A/B pair.

    Args:
        name: the module name (``<attention>.in_proj`` for a packed MHA projection,
            ``<module>.<parameter>`` for one of several packed tensors of a module, such
            as ``mlp.experts.gate_up_proj``).
        param_names: names of its parameters in ``model.named_parameters()``.
        params: the parameters themselves.
        sizes: the parameters' numbers of weights when the component was found (before
            FSDP shards them); empty: their current sizes.
    """

    name: str
    param_names: tuple[str, ...]
    params: tuple[nn.Parameter, ...] = field(repr=False, compare=False)
    sizes: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def numel(self) -> int:
        """Number of scalar weights in the component (at its full size: under FSDP each
        process holds only a piece of each parameter)."""
        return sum(self.sizes) if self.sizes else sum(p.numel() for p in self.params)


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
        Component(
            name,
            tuple(n for n, _ in items),
            tuple(p for _, p in items),
            tuple(p.numel() for _, p in items),
        )
        for name, items in groups
    ]
