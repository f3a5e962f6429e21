"""eecontrol: Lightning callbacks that decide when to stop, what to freeze and how to regularise."""

from importlib.metadata import PackageNotFoundError, version

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
from eecontrol.sweep.pruner import LearningCurvePruner
from eecontrol.sweep.store import CurveStore

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
    "GradES",
    "GradientDiagnostics",
    "LearningCurvePruner",
    "LearningCurveStopping",
    "__version__",
]
