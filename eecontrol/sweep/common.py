"""Moved to :mod:`eecontrol.util.optuna_study` (floor 0: the pruning callback and the curve
store use it too); its names stay importable from here."""

from eecontrol.util.optuna_study import *  # noqa: F403
from eecontrol.util.optuna_study import __all__  # noqa: F401  (the same public names)
