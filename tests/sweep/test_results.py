"""The sweep's results file and trial table (``eecontrol.sweep.results``)."""

from __future__ import annotations

import logging
import re

import optuna
from rich.console import Console

from eecontrol.sweep.results import DEFAULT_DB, print_study, write_results


def test_the_best_line_and_log_round_the_values(tmp_path, caplog) -> None:
    """Issue 27: the best parameters were printed and logged unrounded (0.0123456789...)."""
    url = f"sqlite:///{tmp_path / DEFAULT_DB}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("model.lr", 1e-4, 1.0)
        trial.suggest_int("model.width", 8, 128)
        return {0.0123456789: 0.87654321}.get(lr, 0.5)

    for lr in (0.0123456789, 0.3):
        study.enqueue_trial({"model.lr": lr, "model.width": 64})
    study.optimize(objective, n_trials=2)
    assert study.best_trial.params["model.lr"] == 0.0123456789  # the long value exists
    with caplog.at_level(logging.INFO, logger="eecontrol.sweep.results"):
        write_results(study, tmp_path, url, "maximize", None, None, "val_acc")
    console = Console(record=True, width=200)
    assert print_study(tmp_path, console)
    best = next(line for line in console.export_text().splitlines() if line.startswith("best:"))
    assert best == "best: trial 0 value 0.8765 params model.lr=0.01235, model.width=64"
    logged = [r.getMessage() for r in caplog.records if "best parameters" in r.getMessage()]
    assert logged == [
        "eecontrol_optuna: best parameters model.lr=0.01235, model.width=64, value 0.8765"
    ]
    assert not re.search(r"\d{7}", console.export_text())  # no unrounded number in the table


def test_params_text() -> None:
    from eecontrol.sweep.results import params_text

    assert params_text({"a.b": 1.23456789, "c": "x", "d": 3}) == "a.b=1.235, c=x, d=3"
    assert params_text({"a.b": 1.23456789}, digits=3, short_keys=True) == "b=1.23"
    assert params_text({}) == ""
