"""Per-matrix gradient statistics and freezing rules for GradES, framework-free.

GradES (Wen et al., "GradES: Significantly Faster Training in Transformers with
Gradient-Based Early Stopping", arXiv 2509.01842) freezes each weight matrix of a
transformer on its own once its gradient has become small. This package holds the parts
that need no Lightning, so they work from a plain PyTorch loop too, one job per module:

- :mod:`~eecontrol.core.grades.patterns`: name patterns (suffix, glob or ``re:`` regex)
  and the per-architecture presets.
- :mod:`~eecontrol.core.grades.targets`: :func:`find_components`, the matrices to watch,
  found by structure (every weight tensor inside the model's repeated blocks: Linear, HF
  Conv1D, packed 3-D MoE experts, packed ``nn.MultiheadAttention`` projections, LoRA
  pairs) or by name patterns.
- :mod:`~eecontrol.core.grades.coverage`: :func:`coverage`, what they cover of the blocks.
- :mod:`~eecontrol.core.grades.statistics`: :class:`GradStatistic`, ``grad_l1``,
  ``grad_delta_l1`` or ``weight_delta_l1`` of every component, reduced in cache-sized
  chunks (exact to ~1e-8 on 45M-entry matrices, fp16 upcast) with one host sync.
- :mod:`~eecontrol.core.grades.rule`: :class:`FreezeRule`, numeric, per-group or
  scale-free ``"auto"`` thresholds.
- :mod:`~eecontrol.core.grades.freezing`: :func:`freeze_parameters`, stop a parameter's
  training for good (gradient, optimizer state and weight decay included).
"""

from eecontrol.core.grades.coverage import Coverage, coverage
from eecontrol.core.grades.freezing import freeze_parameters, named_parameters, original_name
from eecontrol.core.grades.patterns import (
    DEFAULT_PATTERNS,
    PRESETS,
    compile_pattern,
    compile_patterns,
    group_of,
    matches,
)
from eecontrol.core.grades.rule import AUTO, FreezeRule, check_tau, resolve_taus
from eecontrol.core.grades.statistics import (
    CHUNK_CPU,
    CHUNK_DEVICE,
    NO_GRADIENT,
    NO_PREVIOUS,
    NORMALIZE,
    NOT_FINITE,
    STATISTICS,
    GradStatistic,
    l1_parts,
)
from eecontrol.core.grades.targets import (
    LORA_SEGMENTS,
    Component,
    find_components,
    is_table,
    weight_groups,
)

__all__ = [
    "AUTO",
    "CHUNK_CPU",
    "CHUNK_DEVICE",
    "DEFAULT_PATTERNS",
    "LORA_SEGMENTS",
    "NORMALIZE",
    "NOT_FINITE",
    "NO_GRADIENT",
    "NO_PREVIOUS",
    "PRESETS",
    "STATISTICS",
    "Component",
    "Coverage",
    "FreezeRule",
    "GradStatistic",
    "check_tau",
    "compile_pattern",
    "compile_patterns",
    "coverage",
    "find_components",
    "freeze_parameters",
    "group_of",
    "is_table",
    "l1_parts",
    "matches",
    "named_parameters",
    "original_name",
    "resolve_taus",
    "weight_groups",
]
