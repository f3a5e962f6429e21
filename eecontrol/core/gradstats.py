"""GradES core, re-exported from :mod:`eecontrol.core.grades` (kept for existing imports).

The code lives in one module per job: ``patterns``, ``targets``, ``coverage``,
``statistics``, ``rule`` and ``freezing`` under :mod:`eecontrol.core.grades`.
"""

from eecontrol.core.grades import *  # noqa: F403
from eecontrol.core.grades import __all__
from eecontrol.core.grades.statistics import _fused_l1, _Scratch
from eecontrol.core.grades.targets import _MHA_PACKED, _TABLE

__all__ = [*__all__, "_MHA_PACKED", "_TABLE", "_Scratch", "_fused_l1"]
