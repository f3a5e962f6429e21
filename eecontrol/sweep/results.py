"""An ``eecontrol_optuna`` sweep's results: written at its end, read back (trials, states, best)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from eecontrol.util.liveness import FAIL_REASON_ATTR
from eecontrol.util.optuna_study import PRUNED_ATTR, STORAGE_ENV, open_storage, redact

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DEFAULT_DB = "optuna.db"
RESULTS_FILE = "optimization_results.yaml"


@dataclass
class TrialRow:
    """One trial of a sweep's study.

    Args:
        number: the trial's number (= its job directory's name).
        state: ``complete``, ``pruned``, ``fail``, ``running`` or ``waiting``.
        value: the objective (complete trials) or the last reported value (pruned ones).
        reports: how many validations the job reported.
        params: the sampled parameters.
        note: why it was pruned or failed.
    """

    number: int
    state: str
    value: float | None
    reports: int
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def read_study(sweep_dir: str | Path) -> tuple[dict[str, Any], list[TrialRow]] | None:
    """The results file and the trials of the sweep in ``sweep_dir`` (None if it is not one).

    The trials come from ``optuna.db`` in the sweep directory, or from the server storage in
    ``$EECONTROL_OPTUNA_STORAGE`` when the sweep used one (its URL is never stored).
    """
    sweep = Path(sweep_dir)
    results_path = sweep / RESULTS_FILE
    db = sweep / DEFAULT_DB
    if not results_path.exists() and not db.exists():
        return None
    results: dict[str, Any] = {}
    if results_path.exists():
        results = OmegaConf.to_container(OmegaConf.load(results_path))  # type: ignore[assignment]
    url = f"sqlite:///{db.resolve()}" if db.exists() else os.environ.get(STORAGE_ENV)
    name = results.get("study_name") or sweep.name
    if not url:
        return results, []
    if not db.exists() and redact(url) != results.get("storage"):
        return results, []  # the environment names another storage
    import optuna

    study = optuna.load_study(study_name=name, storage=open_storage(url))
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        # a multi-objective trial has values (its first is shown), no single value
        first = t.values[0] if t.values else None
        value = first if first is not None else (values[-1] if values else None)
        note = ""
        if PRUNED_ATTR in t.system_attrs:
            note = f"pruned at report {t.system_attrs[PRUNED_ATTR]}"
        elif FAIL_REASON_ATTR in t.system_attrs:
            note = str(t.system_attrs[FAIL_REASON_ATTR])
        rows.append(
            TrialRow(t.number, t.state.name.lower(), value, len(values), dict(t.params), note)
        )
    return results, rows


def params_text(params: dict[str, Any], digits: int = 4, short_keys: bool = False) -> str:
    """Parameters as ``key=value, ...``, floats to ``digits`` significant digits.

    Args:
        params: the parameters, by (dotted) name.
        digits: significant digits of a float.
        short_keys: name each by the last part of its dotted key (``lr``, not ``model.lr``).
    """
    return ", ".join(
        f"{k.rsplit('.', 1)[-1] if short_keys else k}="
        + (f"{v:.{digits}g}" if isinstance(v, float) else str(v))
        for k, v in params.items()
    )


def print_study(sweep_dir: str | Path, console: Any = None) -> bool:
    """Prints the trials of an ``eecontrol_optuna`` sweep (complete vs pruned vs failed).

    Returns:
        Whether ``sweep_dir`` held such a sweep.
    """
    from rich.console import Console
    from rich.table import Table

    found = read_study(sweep_dir)
    if found is None:
        return False
    console = console or Console()
    results, rows = found
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    if not rows:
        counts = dict(results.get("trials") or {})
    table = Table(title=f"study {results.get('study_name', '')}: {results.get('metric', '')}")
    for col in ("trial", "state", "value", "reports", "params", "note"):
        table.add_column(col)
    for r in rows:
        params = params_text(r.params, digits=3, short_keys=True)
        value = "" if r.value is None else f"{r.value:.4f}"
        table.add_row(str(r.number), r.state, value, str(r.reports), params, r.note[:80])
    if rows:
        console.print(table)
    console.print(
        "trials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n)
    )
    if results.get("best_trials"):
        console.print(
            "Pareto front ("
            + ", ".join(str(d) for d in results.get("directions") or [])
            + "): trials "
            + ", ".join(str(f["number"]) for f in results["best_trials"])
        )
    if "best_value" in results:
        console.print(
            f"best: trial {results.get('best_trial')} value {results['best_value']:.4g} "
            f"params {params_text(results.get('best_params') or {})}"
        )
    return True


def write_results(
    study: optuna.Study,
    sweep_dir: Path,
    url: str,
    direction: str | None,
    directions: list[str] | None,
    objectives: list[str] | None,
    metric: str,
) -> None:
    """Writes ``optimization_results.yaml`` (best parameters and value, trial counts).

    Args:
        study: the sweep's study.
        sweep_dir: the sweep directory.
        url: the storage URL (written redacted).
        direction: the study's direction (single objective), or None.
        directions: the directions of a multi-objective study (its Pareto front is
            written), or None.
        objectives: the metrics of a multi-objective study, or None.
        metric: the monitored metric.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    results: dict[str, Any] = {"name": "eecontrol_optuna"}
    if directions is not None:  # the Pareto front
        front = study.best_trials
        results["best_trials"] = [
            {
                "number": t.number,
                "values": [float(v) for v in t.values],
                "params": dict(t.params),
            }
            for t in sorted(front, key=lambda t: t.number)
        ]
        log.info("eecontrol_optuna: Pareto front of %d trial(s)", len(front))
    try:
        if directions is not None:
            raise ValueError("multi-objective: see best_trials")
        best = study.best_trial
        results["best_params"] = dict(best.params)
        results["best_value"] = float(best.value)  # type: ignore[arg-type]
        results["best_trial"] = best.number
        log.info(
            "eecontrol_optuna: best parameters %s, value %.4g", params_text(best.params), best.value
        )
    except ValueError:
        if directions is None:
            log.warning("eecontrol_optuna: no trial completed; no best parameters")
    results.update(
        study_name=study.study_name,
        storage=redact(url),
        direction=direction,
        metric=metric,
        trials=counts,
    )
    if directions is not None:
        results.update(directions=list(directions), objectives=objectives)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
