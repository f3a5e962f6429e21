"""Find and set the drop rates inside any ``nn.Module`` through pluggable setters.

A *setter* recognises one family of modules and knows which attribute holds its rate:

- ``torch_dropout``: every ``nn.modules.dropout._DropoutNd`` (Dropout, Dropout1d/2d/3d,
  AlphaDropout, FeatureAlphaDropout): attribute ``p``.
- ``float_attribute``: rate attributes read at forward time whose name says dropout
  (globs :data:`DEFAULT_FLOAT_ATTRIBUTES`: Hugging Face ``attention_dropout``,
  ``hidden_dropout_prob``, ``dropout_prob`` (YOLOS, VideoMAE), ``attn_dropout``
  (GPTBigCode), ``attn_drop`` (X-CLIP), GPT-2's ``attn_pdrop``, ``nn.MultiheadAttention``'s
  ``dropout``), floats or ints (``attention_dropout=0``) in [0, 1].
- ``drop_path``: stochastic-depth modules with a float ``drop_prob`` (timm ``DropPath``,
  Hugging Face ``*DropPath``).
- ``torchvision_stochastic_depth``: torchvision ``StochasticDepth`` (attribute ``p``).

Stochastic depth is set per *block*, as the paper's reference code and timm do:
block ``i`` of ``depth`` gets ``torch.linspace(0, rate, depth)[i]`` (or ``rate * i /
depth``, timm's EfficientNet/MobileNet rule), where the blocks are found by structure
(the modules holding a drop-path slot, slots built as ``nn.Identity`` in place of a
zero-rate DropPath included, whatever the block's class) and every drop-path module of
a block (timm ViT/Swin have two) shares its block's rate.

Add a family by passing another :class:`RateSetter`. :func:`rate_report` lists every
attribute that looks like a drop rate and says which are controlled.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from eecontrol.core.schedules import depth_rates

KINDS = ("dropout", "drop_path")
#: Globs of rate attribute names (``drop_prob`` itself is a drop-path module's rate).
DEFAULT_FLOAT_ATTRIBUTES = (
    "*dropout*",
    "*_drop_prob*",
    "*pdrop*",
    "attn_drop",
    "proj_drop",
    "drop_rate",
)

#: Any attribute name that looks like a drop rate, for the report of what is left out.
_LOOKS_LIKE_RATE = re.compile(r"drop", re.IGNORECASE)


@dataclass(frozen=True)
class RateSetter:
    """Recognises one family of modules and the attributes that hold their drop rate.

    Args:
        name: the family's name, shown in errors and logs.
        kind: ``dropout`` or ``drop_path``.
        attributes: a function returning the rate attributes of a module ([] if none).
    """

    name: str
    kind: str
    attributes: Callable[[nn.Module], list[str]]


def _is_rate(value: object) -> bool:
    return isinstance(value, float) and not isinstance(value, bool)


def _is_rate_like(value: object) -> bool:
    """A float or int (never a bool) in [0, 1]: ``attention_dropout=0`` counts."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _torch_dropout(module: nn.Module) -> list[str]:
    return ["p"] if isinstance(module, _DropoutNd) else []


def _drop_path(module: nn.Module) -> list[str]:
    return ["drop_prob"] if _is_rate(getattr(module, "drop_prob", None)) else []


def _torchvision_stochastic_depth(module: nn.Module) -> list[str]:
    is_sd = type(module).__name__ == "StochasticDepth" and hasattr(module, "mode")
    return ["p"] if is_sd and _is_rate(getattr(module, "p", None)) else []


@dataclass(frozen=True)
class FloatAttributes:
    """Finds rate attributes read at forward time (Hugging Face style).

    Args:
        names: attribute names or globs (``*dropout*``); values that are floats or ints
            in [0, 1] count (a ``dropout`` attribute holding an ``nn.Dropout`` module is
            found by ``torch_dropout``; booleans such as ``use_dropout`` never count).
    """

    names: tuple[str, ...] = DEFAULT_FLOAT_ATTRIBUTES

    def __call__(self, module: nn.Module) -> list[str]:
        if isinstance(module, _DropoutNd):
            return []
        return [
            key
            for key, value in module.__dict__.items()
            if not key.startswith("_")
            and _is_rate_like(value)
            and any(fnmatch.fnmatchcase(key, n) for n in self.names)
        ]


def float_attribute_setter(names: Sequence[str] = DEFAULT_FLOAT_ATTRIBUTES) -> RateSetter:
    """A setter for float rate attributes named ``names`` (see :class:`FloatAttributes`)."""
    return RateSetter("float_attribute", "dropout", FloatAttributes(tuple(names)))


def default_setters(float_attributes: Sequence[str] = DEFAULT_FLOAT_ATTRIBUTES) -> list[RateSetter]:
    """The built-in setters, in the order they are tried."""
    return [
        RateSetter("torch_dropout", "dropout", _torch_dropout),
        RateSetter("drop_path", "drop_path", _drop_path),
        RateSetter("torchvision_stochastic_depth", "drop_path", _torchvision_stochastic_depth),
        float_attribute_setter(float_attributes),
    ]


@dataclass
class DropTargets:
    """The rate attributes found in a model, by kind, in module order.

    Args:
        dropout: ``(module name, module, attribute, setter name)`` of dropout rates.
        drop_path: the same for stochastic-depth rates (one per block, in depth order).
    """

    dropout: list[tuple[str, nn.Module, str, str]] = field(default_factory=list)
    drop_path: list[tuple[str, nn.Module, str, str]] = field(default_factory=list)
    drop_path_block: list[int] = field(default_factory=list)
    depth: int = 0
    block_names: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Counts of targets per setter family."""
        counts: dict[str, int] = {}
        for *_, setter in self.dropout + self.drop_path:
            counts[setter] = counts.get(setter, 0) + 1
        return counts

    def set_dropout(self, rate: float) -> None:
        """Sets every dropout rate to ``rate``."""
        for _, module, attr, _ in self.dropout:
            setattr(module, attr, float(rate))

    def drop_path_rates(self, rate: float, per_block: str = "linear") -> list[float]:
        """The rate of every drop-path target, from its block ``i`` of ``depth``.

        ``linear``: ``linspace(0, rate, depth)[i]`` (the paper's code, timm ViT, Swin,
        ConvNeXt); ``efficientnet``: ``rate * i / depth`` (timm's EfficientNet and
        MobileNet builders); ``uniform``: ``rate`` everywhere.
        """
        if per_block == "uniform":
            return [float(rate)] * len(self.drop_path)
        depth = self.depth or len(self.drop_path)
        blocks = self.drop_path_block or list(range(len(self.drop_path)))
        if per_block == "efficientnet":
            return [float(rate) * b / depth for b in blocks]
        per_depth = depth_rates(rate, depth)
        return [per_depth[b] for b in blocks]

    def set_drop_path(self, rate: float, per_block: str = "linear") -> None:
        """Sets stochastic-depth rates: per block ``linspace(0, rate, depth)``, or uniform."""
        for (_, module, attr, _), r in zip(self.drop_path, self.drop_path_rates(rate, per_block)):
            setattr(module, attr, float(r))


def find_drop_targets(
    model: nn.Module, kinds: Iterable[str], setters: Sequence[RateSetter] | None = None
) -> DropTargets:
    """Finds every rate attribute of the given kinds in ``model``.

    Args:
        model: the model to search.
        kinds: ``dropout`` and/or ``drop_path``.
        setters: the families to recognise (default: :func:`default_setters`).

    Returns:
        The targets found.

    Raises:
        ValueError: if a requested kind has no target; the message says what was searched
            and how to build the model so that targets exist.
    """
    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"target kind must be one of {list(KINDS)}, got {kind!r}.")
    setters = list(setters) if setters is not None else default_setters()
    found = DropTargets()
    for module_name, module in model.named_modules():
        for setter in setters:
            if setter.kind not in kinds:
                continue
            attrs = setter.attributes(module)
            for attr in attrs:
                getattr(found, setter.kind).append((module_name, module, attr, setter.name))
            if attrs:
                break
    if "dropout" in kinds:
        _config_targets(model, setters, found)
    if found.drop_path:
        assign_blocks(model, found)
    for kind in kinds:
        if getattr(found, kind):
            continue
        searched = [s.name for s in setters if s.kind == kind]
        n_modules = sum(1 for _ in model.modules())
        if kind == "dropout":
            hint = (
                "Build the model with dropout layers (e.g. nn.Dropout(p) with any p; a schedule "
                "sets p) or pass a RateSetter for your module family."
            )
        else:
            hint = (
                "Build the model with drop_path_rate > 0: timm and similar libraries replace "
                "DropPath with nn.Identity when the rate is 0, leaving nothing to schedule."
            )
        raise ValueError(
            f"no {kind} target found in {type(model).__name__} ({n_modules} modules searched "
            f"with setters {searched}). {hint}"
        )
    return found


def _config_targets(model: nn.Module, setters: Sequence[RateSetter], found: DropTargets) -> None:
    """Adds the rates of model configs that modules read at forward time.

    Some Hugging Face modules read a rate from their config in ``forward`` (Falcon:
    ``self.config.hidden_dropout``), so the config object held by a module is a target
    too (each config once), with the same attribute names as module attributes.
    """
    names = next((s for s in setters if s.name == "float_attribute"), None)
    if names is None:
        return
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        config = module.__dict__.get("config")
        if config is None or isinstance(config, nn.Module) or id(config) in seen:
            continue
        if not hasattr(config, "__dict__") or isinstance(config, dict):
            continue
        seen.add(id(config))
        holder = f"{module_name}.config" if module_name else "config"
        for attr in names.attributes(config):  # type: ignore[arg-type]
            found.dropout.append((holder, config, attr, "hf_config"))


def assign_blocks(model: nn.Module, targets: DropTargets) -> None:
    """Gives every drop-path target its block index and the model's depth.

    A block is a module that holds a drop-path slot: the module whose attribute is a
    drop-path target (timm ``drop_path``, ViT ``drop_path1``/``drop_path2``), lifted to
    the nearest ancestor that is an item of an ``nn.ModuleList`` / ``nn.Sequential``
    (a stage's block, also in a one-block stage; a block whose branches each hold a drop
    path counts once). A slot built as ``nn.Identity`` for rate 0 (timm's block 0, the
    first block of an EfficientNet or MobileNetV3 whatever its class) is a block too: an
    ``nn.Identity`` under an attribute name that drop-path targets use, or in a container
    that holds drop-path targets. A target that is itself a container item (a
    ``ModuleList`` of per-block drop paths) is its own block; one outside any container
    counts as a block of its own. Blocks are numbered in module order.

    Args:
        model: the model the targets were found in.
        targets: the targets; ``drop_path_block``, ``depth`` and ``block_names`` are set.
    """
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}

    def parent(name: str) -> str:
        return name.rsplit(".", 1)[0] if "." in name else ""

    def is_container(name: str) -> bool:
        return isinstance(modules.get(name), nn.ModuleList | nn.Sequential)

    def block_of_slot(slot: str) -> str:
        """The block holding the drop-path slot ``slot`` (a module name)."""
        if is_container(parent(slot)):
            return slot  # an item of a list of per-block drop paths
        node = parent(slot)
        while node:
            if is_container(parent(node)):
                return node
            node = parent(node)
        return parent(slot) or slot

    target_names = [name for name, *_ in targets.drop_path]
    slot_attrs = {n.rsplit(".", 1)[-1] for n in target_names if not is_container(parent(n))}
    slot_lists = {parent(n) for n in target_names if is_container(parent(n))}
    slots = list(target_names)
    for name, module in modules.items():
        if not name or type(module) is not nn.Identity:
            continue
        if parent(name) in slot_lists or (
            not is_container(parent(name)) and name.rsplit(".", 1)[-1] in slot_attrs
        ):
            slots.append(name)
    ordered = sorted({block_of_slot(s) for s in slots}, key=lambda n: order[n])
    index = {n: i for i, n in enumerate(ordered)}
    targets.block_names = ordered
    targets.depth = len(ordered)
    targets.drop_path_block = [index[block_of_slot(n)] for n in target_names]


@dataclass
class RateReport:
    """Every attribute of a model that looks like a drop rate, and what controls it.

    Args:
        controlled: ``(module, attribute, kind)`` of the targets set by the schedule.
        left_out: ``(module, attribute, why)`` of rate-like attributes not set.
        depth: blocks counted for stochastic depth (0 without drop-path targets).
    """

    controlled: list[tuple[str, str, str]]
    left_out: list[tuple[str, str, str]]
    depth: int = 0

    @property
    def fraction(self) -> float:
        """Controlled share of the rate attributes of the scheduled kinds."""
        counted = [x for x in self.left_out if x[2] == "name not matched"]
        total = len(self.controlled) + len(counted)
        return len(self.controlled) / total if total else 1.0


def rate_report(model: nn.Module, targets: DropTargets, kinds: Iterable[str]) -> RateReport:
    """Lists what the schedule controls and every other rate-like attribute it leaves.

    Args:
        model: the model.
        targets: the targets the schedule sets.
        kinds: the kinds the schedule controls.

    Returns:
        The report; ``left_out`` reasons: ``"layer drop (not a dropout rate)"``,
        ``"kind not scheduled"`` (a drop path when only dropout is scheduled, or the
        reverse) and ``"name not matched"`` (counted against the fraction).
    """
    kinds = set(kinds)
    controlled = [(n, a, "dropout") for n, _, a, _ in targets.dropout] + [
        (n, a, "drop_path") for n, _, a, _ in targets.drop_path
    ]
    seen = {(n, a) for n, a, _ in controlled}
    others = find_drop_targets_quiet(model)
    left: list[tuple[str, str, str]] = []
    for kind, entries in others.items():
        for name, attr in entries:
            if (name, attr) in seen:
                continue
            seen.add((name, attr))
            if kind not in kinds:
                left.append((name, attr, "kind not scheduled"))
    for name, module in model.named_modules():
        if isinstance(module, _DropoutNd):
            continue
        for key, value in module.__dict__.items():
            if key.startswith("_") or (name, key) in seen or not _is_rate_like(value):
                continue
            if not _LOOKS_LIKE_RATE.search(key):
                continue
            why = "layer drop (not a dropout rate)" if "layerdrop" in key else "name not matched"
            left.append((name, key, why))
    return RateReport(controlled, left, targets.depth)


def find_drop_targets_quiet(model: nn.Module) -> dict[str, list[tuple[str, str]]]:
    """Every built-in target of every kind, as ``(module, attribute)``; never raises."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    for module_name, module in model.named_modules():
        for setter in default_setters():
            attrs = setter.attributes(module)
            out[setter.kind].extend((module_name, a) for a in attrs)
            if attrs:
                break
    return out
