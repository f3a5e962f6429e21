"""GradES name patterns: the per-architecture presets and the pattern forms.

Patterns name the matrices GradES watches when discovery by structure is not wanted
(``GradES(patterns=...)``) and the groups of a per-group ``tau``. Three forms are
accepted: a dotted suffix, a glob, or an ``re:`` regex (see :func:`compile_pattern`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

#: Name patterns per architecture family; :data:`DEFAULT_PATTERNS` is their union.
PRESETS: dict[str, tuple[str, ...]] = {
    # Llama / Qwen / Mistral / Phi-3 style attention and gated MLP
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    # BERT / RoBERTa / MiniLM
    "bert": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    # GPT-2
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    # ViT / timm / fairseq / torch.nn.MultiheadAttention (in_proj is the packed QKV weight)
    "vit": ("qkv", "in_proj", "out_proj", "fc1", "fc2"),
    # torch.nn.TransformerEncoderLayer / TransformerDecoderLayer feed-forward
    "torch": ("linear1", "linear2"),
}

#: A preset of name patterns (Llama/Qwen, BERT, GPT-2, ViT, torch MHA) for ``patterns=``;
#: the default is discovery by structure, which needs no names.
DEFAULT_PATTERNS: tuple[str, ...] = tuple(p for family in PRESETS.values() for p in family)


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


def group_of(name: str, keys: Iterable[str]) -> str | None:
    """Returns the first key of a per-group mapping whose pattern matches ``name``.

    The key ``"default"`` matches every name but is tried last.
    """
    keys = list(keys)
    for key in keys:
        if key != "default" and compile_pattern(key).fullmatch(name):
            return key
    return "default" if "default" in keys else None
