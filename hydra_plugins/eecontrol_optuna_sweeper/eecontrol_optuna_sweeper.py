"""The ``eecontrol_optuna`` Hydra sweeper plugin and its configs (a thin adapter).

Select it with ``hydra/sweeper=eecontrol_optuna``; samplers and pruners by name with
``hydra/sweeper/eecontrol_sampler=random`` and ``hydra/sweeper/eecontrol_pruner=median``
(or any ``_target_`` under ``hydra.sweeper.sampler`` / ``hydra.sweeper.pruner``). The work
is done by :class:`eecontrol.sweep.sweeper.SweeperCore`.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

TARGET = "hydra_plugins.eecontrol_optuna_sweeper.eecontrol_optuna_sweeper.EecontrolOptunaSweeper"

SAMPLERS: dict[str, dict[str, Any]] = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None},
}
PRUNERS: dict[str, dict[str, Any] | None] = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    # 3 finished trials before any pruning; a trial is judged from its 3rd validation on
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 3,
        "n_warmup_steps": 2,
    },
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": "auto",
        "reduction_factor": 4,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    "learning_curve": {
        "_target_": "eecontrol.sweep.pruner.LearningCurvePruner",
        "horizon": "${trainer.max_epochs}",
        "min_points": 3,
        "min_finished": 3,
    },
}


class EecontrolOptunaSweeper(Sweeper):
    """A Hydra sweeper that runs an Optuna study (async workers or ask/tell batches).

    Args: see :class:`eecontrol.sweep.sweeper.SweeperCore` (the same names).
    """

    def __init__(self, **kwargs: Any) -> None:
        from eecontrol.sweep.sweeper import SweeperCore

        self.core = SweeperCore(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Instantiates the configured launcher, running the app through a
        :class:`~eecontrol.sweep.worker.SweepTask` (the app, or an async sweep's worker)."""
        from hydra.core.plugins import Plugins

        from eecontrol.sweep.worker import SweepTask

        task = SweepTask(task_function, hydra_context, config)
        launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task
        )
        self.core.setup(config, launcher, task)

    def sweep(self, arguments: list[str]) -> None:
        """Runs the study; ``arguments`` are the command line's overrides."""
        self.core.sweep(arguments)


cs = ConfigStore.instance()
cs.store(
    group="hydra/sweeper",
    name="eecontrol_optuna",
    provider="eecontrol",
    node={
        "defaults": [{"eecontrol_sampler": "tpe"}, {"eecontrol_pruner": "none"}, "_self_"],
        "_target_": TARGET,
        "_recursive_": False,
        # maximize | minimize; null: the app's optimized_mode (max | min); a list of two or
        # more: a multi-objective study (Pareto front in optimization_results.yaml)
        "direction": None,
        "objectives": None,  # multi-objective: the job's metrics, e.g. [val/acc, epochs]
        "storage": None,
        "study_name": None,
        "n_trials": 20,
        "n_jobs": 2,
        "timeout": None,
        "max_retries": 1,
        "fail_on_error": False,
        "monitor": None,
        "report_step": "check",
        "params": None,
        # async: each of n_jobs launched jobs asks the study for trials until it is full
        # (a pruned trial frees its worker at once); batch: ask n_jobs, launch, wait, tell
        "mode": "async",
        "heartbeat_interval": 10,  # s, async workers' trials; null: off
        "grace_period": None,  # s without a heartbeat -> FAIL; null: 2 * interval + 5
        "max_failure_rate": None,  # [0, 1]: stop once more of this sweep's trials failed
        "enqueue_trials": None,  # [{param: value}, ...]: run these first
        "custom_search_space": None,  # module.function(cfg, trial): conditional parameters
    },
)
for _kind, _nodes in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
    for _name, _node in _nodes.items():
        cs.store(
            group=f"hydra/sweeper/eecontrol_{_kind}",
            name=_name,
            node=_node,
            package=f"hydra.sweeper.{_kind}",
            provider="eecontrol",
        )
