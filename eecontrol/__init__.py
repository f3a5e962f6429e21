"""eecontrol: Lightning callbacks that decide when to stop, what to freeze and how to regularise."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562), so that `eecontrol --help`, `--version`
# and the config package do not import torch and Lightning.
_LAZY = {
    "ConformalEarlyStopping": "eecontrol.callbacks",
    "ConformalPredictor": "eecontrol.callbacks",
    "ControlCallback": "eecontrol.callbacks",
    "DARTSPlusStopping": "eecontrol.callbacks",
    "Decision": "eecontrol.callbacks",
    "DropoutSchedule": "eecontrol.callbacks",
    "GradES": "eecontrol.callbacks",
    "GradientDiagnostics": "eecontrol.callbacks",
    "LearningCurveStopping": "eecontrol.callbacks",
    "LearningCurvePruner": "eecontrol.sweep.pruner",
    "CurveStore": "eecontrol.sweep.store",
    "PredictiveHalvingPruner": "eecontrol.sweep.halving",
    "OptunaPruning": "eecontrol.sweep.trial",
    "ResumableCheckpoint": "eecontrol.resume",
    "EpochSeed": "eecontrol.resume",
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
        ConformalPredictor,
        ControlCallback,
        DARTSPlusStopping,
        Decision,
        DropoutSchedule,
        GradES,
        GradientDiagnostics,
        LearningCurveStopping,
    )
    from eecontrol.resume import EpochSeed, ResumableCheckpoint
    from eecontrol.sweep.halving import PredictiveHalvingPruner
    from eecontrol.sweep.pruner import LearningCurvePruner
    from eecontrol.sweep.store import CurveStore
    from eecontrol.sweep.trial import OptunaPruning

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
