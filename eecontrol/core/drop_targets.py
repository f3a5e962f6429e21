"""Find and set the drop rates inside any ``nn.Module`` through pluggable setters.

A *setter* recognises one family of modules and knows which attribute holds its rate:

- ``torch_dropout``: every ``nn.modules.dropout._DropoutNd`` (Dropout, Dropout1d/2d/3d,
  AlphaDropout, FeatureAlphaDropout): attribute ``p``.
- ``float_attribute``: float attributes read at forward time, such as Hugging Face
  ``attention_dropout`` / ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` or
  ``nn.MultiheadAttention.dropout``.
- ``drop_path``: stochastic-depth modules with a float ``drop_prob`` (timm ``DropPath``).
- ``torchvision_stochastic_depth``: torchvision ``StochasticDepth`` (attribute ``p``).

Add a family by passing another :class:`RateSetter`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from eecontrol.core.schedules import depth_rates

KINDS = ("dropout", "drop_path")
DEFAULT_FLOAT_ATTRIBUTES = (
    "attention_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "hidden_dropout",
    "activation_dropout",
    "dropout",
    "dropout_p",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
)


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


def _torch_dropout(module: nn.Module) -> list[str]:
    return ["p"] if isinstance(module, _DropoutNd) else []


def _drop_path(module: nn.Module) -> list[str]:
    return ["drop_prob"] if _is_rate(getattr(module, "drop_prob", None)) else []


def _torchvision_stochastic_depth(module: nn.Module) -> list[str]:
    is_sd = type(module).__name__ == "StochasticDepth" and hasattr(module, "mode")
    return ["p"] if is_sd and _is_rate(getattr(module, "p", None)) else []


@dataclass(frozen=True)
class FloatAttributes:
    """Finds float rate attributes read at forward time (Hugging Face style).

    Args:
        names: attribute names to look for; only float values count (a ``dropout``
            attribute holding an ``nn.Dropout`` module is found by ``torch_dropout``).
    """

    names: tuple[str, ...] = DEFAULT_FLOAT_ATTRIBUTES

    def __call__(self, module: nn.Module) -> list[str]:
        if isinstance(module, _DropoutNd):
            return []
        return [n for n in self.names if _is_rate(module.__dict__.get(n))]


def float_attribute_setter(names: Sequence[str] = DEFAULT_FLOAT_ATTRIBUTES) -> RateSetter:
    """A setter for float rate attributes named ``names`` (see :class:`FloatAttributes`)."""
    return RateSetter("float_attribute", "dropout", FloatAttributes(tuple(names)))


def default_setters(float_attributes: Sequence[str] = DEFAULT_FLOAT_ATTRIBUTES) -> list[RateSetter]:
    """The built-in setters, in the order they are tried."""
    return [
        RateSetter("torch_dropout", "dropout", _torch_dropout),
        float_attribute_setter(float_attributes),
        RateSetter("drop_path", "drop_path", _drop_path),
        RateSetter("torchvision_stochastic_depth", "drop_path", _torchvision_stochastic_depth),
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

    def set_drop_path(self, rate: float, per_block: str = "linear") -> None:
        """Sets stochastic-depth rates: ``linspace(0, rate, depth)`` or ``rate`` everywhere."""
        rates = (
            depth_rates(rate, len(self.drop_path))
            if per_block == "linear"
            else [float(rate)] * len(self.drop_path)
        )
        for (_, module, attr, _), r in zip(self.drop_path, rates):
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
