"""eecontrol: Lightning callbacks that decide when to stop, what to freeze and how to regularise."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562), so that `eecontrol --help`, `--version`
# and the config package do not import torch and Lightning.
_LAZY = {
    "ConformalEarlyStopping": "eecontrol.callbacks",
    "ConformalPredictor": "eecontrol.core.conformal.predictor",
    "ControlCallback": "eecontrol.callbacks",
    "DARTSPlusStopping": "eecontrol.callbacks",
    "Decision": "eecontrol.callbacks",
    "DropoutSchedule": "eecontrol.callbacks",
    "GradES": "eecontrol.callbacks",
    "GradientDiagnostics": "eecontrol.callbacks",
    "LearningCurveStopping": "eecontrol.callbacks",
    "LearningCurvePruner": "eecontrol.sweep.pruner",
    "CurveStore": "eecontrol.core.curves.store",
    "PredictiveHalvingPruner": "eecontrol.sweep.halving",
    "OptunaPruning": "eecontrol.callbacks.optuna_pruning",
    "ResumableCheckpoint": "eecontrol.callbacks.checkpoint",
    "EpochSeed": "eecontrol.callbacks.seeding",
}


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eecontrol' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


if TYPE_CHECKING:
    from eecontrol.callbacks import (
        ConformalEarlyStopping,
        ControlCallback,
        DARTSPlusStopping,
        Decision,
        DropoutSchedule,
        GradES,
        GradientDiagnostics,
        LearningCurveStopping,
    )
    from eecontrol.callbacks.checkpoint import ResumableCheckpoint
    from eecontrol.callbacks.optuna_pruning import OptunaPruning
    from eecontrol.callbacks.seeding import EpochSeed
    from eecontrol.core.conformal.predictor import ConformalPredictor
    from eecontrol.core.curves.store import CurveStore
    from eecontrol.sweep.halving import PredictiveHalvingPruner
    from eecontrol.sweep.pruner import LearningCurvePruner

try:
    __version__ = version("eecontrol")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ConformalEarlyStopping",
    "ConformalPredictor",
    "ControlCallback",
    "CurveStore",
    "DARTSPlusStopping",
    "Decision",
    "DropoutSchedule",
    "EpochSeed",
    "GradES",
    "GradientDiagnostics",
    "LearningCurvePruner",
    "LearningCurveStopping",
    "OptunaPruning",
    "PredictiveHalvingPruner",
    "ResumableCheckpoint",
    "__version__",
]
