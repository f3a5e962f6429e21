"""Lightning callbacks: thin adapters from Trainer hooks to ``eecontrol.core`` decisions."""

from eecontrol.callbacks._control import ControlCallback, Decision, reduce_stop
from eecontrol.callbacks.conformal import ConformalEarlyStopping, ConformalPredictor
from eecontrol.callbacks.curve_stopping import LearningCurveStopping
from eecontrol.callbacks.darts_plus import DARTSPlusStopping
from eecontrol.callbacks.dropout import DropoutSchedule
from eecontrol.callbacks.grades import GradES
from eecontrol.callbacks.gradient_diagnostics import GradientDiagnostics

__all__ = [
    "ConformalEarlyStopping",
    "ConformalPredictor",
    "ControlCallback",
    "DARTSPlusStopping",
    "Decision",
    "DropoutSchedule",
    "GradES",
    "GradientDiagnostics",
    "LearningCurveStopping",
    "reduce_stop",
]
