"""Replay a finished sweep under every stopping policy: epochs used and regret.

A finished sweep, whose runs trained to the full budget, holds everything a stopping
policy would have seen: each run's curve. Replaying the runs one after another (in a
few random orders) under a policy gives the epochs that policy would have trained and
the configuration it would have picked, so a user can choose a pruner from their own
history rather than from someone else's benchmark. Nothing is trained; Lightning is not
needed.

Sources (:func:`load_sweep`):

* a Hydra multirun directory (``logs/train/multiruns/<date>``): one job directory per
  run with the CSV logger's ``metrics.csv``, ``summary.json`` (the monitored metric) and
  ``.hydra/overrides.yaml`` (the hyperparameters);
* an Optuna storage URL and a study name: the intermediate values of its ``COMPLETE``
  trials (the curve store of ``hparams_search=digits_curves`` is such a study:
  ``sqlite:///<sweep>/curves.db``, study ``eecontrol-curves``);
* a JSON file written by ``benchmarks/record_curves.py``.

Policies (:func:`default_policies`): no stopping; Lightning-style ``EarlyStopping``
(patience 5, Lightning's rule re-implemented here); Optuna's ``MedianPruner``,
``SuccessiveHalvingPruner`` and ``HyperbandPruner``; and this project's
:class:`~eecontrol.sweep.pruner.LearningCurvePruner` with each of its rules. The Optuna
policies run in real in-memory ``optuna.Study`` objects (ask/tell, every configuration
enqueued with its hyperparameters), so they decide exactly as in a live sweep.

Scores per policy, averaged over the orders: total epochs trained (and the saving
against no stopping), and the regret of the picked configuration: the best true value
in the sweep minus the true value of the configuration picked (in the metric's units;
sign-flipped for a metric to minimise, so regret is always >= 0), where a
configuration's true value is its best value over the full budget. Two picking rules:
``complete`` (only trials the policy let finish, as Optuna's ``best_trial``) and ``any``
(the best value the policy saw, stopped trials included).
"""

from __future__ import annotations

from eecontrol.sweep.replay.command import add_arguments, command, format_table, plot_front
from eecontrol.sweep.replay.engine import (
    MEMOISED_RULES,
    memoised_in_run_rule,
    replay,
    replay_order,
    score,
)
from eecontrol.sweep.replay.loading import (
    MODES,
    Sweep,
    SweepRun,
    load_multirun,
    load_optuna,
    load_recorded,
    load_sweep,
    read_metric_curve,
    read_overrides,
)
from eecontrol.sweep.replay.loading import (
    _finish as _finish,  # tests read the loaders' shared check
)
from eecontrol.sweep.replay.policies import (
    Policy,
    default_policies,
    early_stopping_epochs,
    guess_bounds,
)

__all__ = [
    "MEMOISED_RULES",
    "MODES",
    "Policy",
    "Sweep",
    "SweepRun",
    "add_arguments",
    "command",
    "default_policies",
    "early_stopping_epochs",
    "format_table",
    "guess_bounds",
    "load_multirun",
    "load_optuna",
    "load_recorded",
    "load_sweep",
    "memoised_in_run_rule",
    "plot_front",
    "read_metric_curve",
    "read_overrides",
    "replay",
    "replay_order",
    "score",
]
