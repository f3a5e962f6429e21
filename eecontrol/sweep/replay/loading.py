"""Loading a finished sweep for a replay: a Hydra multirun directory, an Optuna study or
a recorded JSON file (see :mod:`eecontrol.sweep.replay`)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

MODES = ("max", "min")


@dataclass(frozen=True)
class SweepRun:
    """One finished run of a sweep.

    Args:
        name: the run's name (job number, trial number or recorded id).
        values: the monitored metric after every validation, in order.
        hparams: the run's hyperparameters (numbers or strings).
    """

    name: str
    values: tuple[float, ...]
    hparams: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """A finished sweep ready to replay.

    Args:
        runs: runs trained to the full budget (the only ones a replay can use).
        metric: the monitored metric's name.
        mode: ``max`` or ``min``.
        source: where the sweep was read from.
        skipped: ``name: why`` of every run left out (stopped early, no curve).
    """

    runs: list[SweepRun]
    metric: str
    mode: str
    source: str
    skipped: list[str] = field(default_factory=list)

    @property
    def budget(self) -> int:
        """The number of validations of a full run."""
        return len(self.runs[0].values)

    def truth(self) -> np.ndarray:
        """Each run's true value: its best over the full budget."""
        pick = max if self.mode == "max" else min
        return np.array([pick(r.values) for r in self.runs], dtype=float)


def _finish(
    candidates: list[SweepRun], skipped: list[str], metric: str, mode: str, source: str
) -> Sweep:
    """Keeps the runs of the longest length (a replay needs full curves) and checks them."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    candidates = [r for r in candidates if r.values]
    if not candidates:
        raise ValueError(
            f"{source}: no run with a curve of {metric!r} found"
            + (f" ({len(skipped)} left out: {'; '.join(skipped[:5])})" if skipped else "")
            + "."
        )
    budget = max(len(r.values) for r in candidates)
    full = [r for r in candidates if len(r.values) == budget]
    for r in candidates:
        if len(r.values) < budget:
            skipped.append(f"{r.name}: {len(r.values)} of {budget} validations (stopped early)")
    if len(full) < 2:
        raise ValueError(
            f"{source}: a replay needs at least 2 runs trained to the full budget "
            f"({budget} validations of {metric!r}); found {len(full)}."
        )
    if skipped:
        warnings.warn(
            f"{source}: {len(skipped)} run(s) left out of the replay: {'; '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=3,
        )
    return Sweep(runs=full, metric=metric, mode=mode, source=source, skipped=skipped)


def load_recorded(path: str | Path, metric: str | None = None) -> Sweep:
    """Reads a sweep recorded by ``benchmarks/record_curves.py``.

    Args:
        path: the JSON file.
        metric: the per-run key to replay (default: the file's ``monitor``, else
            ``val_acc``).

    Returns:
        The sweep, truncated to the file's ``epoch_budget``.
    """
    data = json.loads(Path(path).read_text())
    metric = metric or data.get("monitor", "val_acc")
    mode = data.get("mode", "max")
    budget = int(data.get("epoch_budget", 0)) or None
    runs = []
    for r in data["runs"]:
        if metric not in r:
            raise ValueError(f"{path}: run {r.get('id')} has no curve {metric!r}.")
        runs.append(
            SweepRun(str(r.get("id", len(runs))), tuple(r[metric][:budget]), r.get("config", {}))
        )
    return _finish(runs, [], metric, mode, str(path))


def _parse_value(text: str) -> Any:
    """A Hydra override value as a number when it is one, else the string."""
    try:
        number = float(text)
    except ValueError:
        return text.strip("'\"")
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def read_overrides(job: Path) -> dict[str, Any]:
    """The ``key=value`` overrides of one Hydra job (``.hydra/overrides.yaml``)."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        item = line.strip().removeprefix("- ").strip().strip("'\"")
        if "=" not in item or item.startswith(("hparams_search", "experiment", "hydra")):
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+~")] = _parse_value(value)
    return out


def read_metric_curve(job: Path, metric: str) -> list[float]:
    """The values of ``metric`` in a job's ``metrics.csv`` (latest version), one per row
    that has it, in order."""
    files = sorted(job.glob("csv/version_*/metrics.csv")) or sorted(job.glob("**/metrics.csv"))
    if not files:
        return []
    with files[-1].open() as f:
        rows = list(csv.DictReader(f))
    values = []
    for row in rows:
        text = row.get(metric)
        if text not in (None, ""):
            value = float(text)
            if math.isfinite(value):
                values.append(value)
    return values


def load_multirun(path: str | Path, metric: str | None = None, mode: str | None = None) -> Sweep:
    """Reads a Hydra multirun directory written by ``eecontrol-train -m``.

    Args:
        path: the sweep directory (its numbered job directories hold the runs).
        metric: the metric to replay (default: ``optimized_metric`` in the jobs'
            ``summary.json``).
        mode: ``max`` or ``min`` (default: ``min`` when the metric's name contains
            ``loss``, else ``max``).

    Returns:
        The sweep.

    Raises:
        FileNotFoundError: if ``path`` is not a directory or holds no job directories.
        ValueError: if no metric can be found, or fewer than 2 full runs.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist.")
    jobs = sorted(
        (p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not jobs:
        raise FileNotFoundError(
            f"{root} holds no Hydra job directories (<job>/.hydra); pass the multirun "
            "directory of a finished sweep (logs/train/multiruns/<date>/<time>)."
        )
    if metric is None:
        for job in jobs:
            summary = job / "summary.json"
            if summary.exists():
                metric = json.loads(summary.read_text()).get("optimized_metric")
                if metric:
                    break
    if not metric:
        raise ValueError(f"{root}: no job's summary.json names an optimized_metric; pass --metric.")
    mode = mode or ("min" if "loss" in metric else "max")
    runs, skipped = [], []
    for job in jobs:
        values = read_metric_curve(job, metric)
        if not values:
            skipped.append(f"{job.name}: no {metric!r} in a metrics CSV")
            continue
        runs.append(SweepRun(job.name, tuple(values), read_overrides(job)))
    return _finish(runs, skipped, metric, mode, str(root))


def load_optuna(storage: str, study_name: str | None) -> Sweep:
    """Reads the ``COMPLETE`` trials of an Optuna study (their intermediate values).

    Args:
        storage: an Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``).
        study_name: the study's name.

    Returns:
        The sweep (mode from the study's direction).

    Raises:
        ValueError: if ``study_name`` is missing or unknown, or the study has fewer than
            2 finished trials with intermediate values.
    """
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not study_name:
        raise ValueError(f"{storage}: pass --study NAME (studies in this storage: {names}).")
    if study_name not in names:
        raise ValueError(f"{storage}: no study {study_name!r} (studies: {names}).")
    study = optuna.load_study(study_name=study_name, storage=storage)
    runs, skipped = [], []
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE:
            skipped.append(f"trial {t.number}: {t.state.name}")
            continue
        values = tuple(t.intermediate_values[s] for s in sorted(t.intermediate_values))
        if not values:
            skipped.append(f"trial {t.number}: no intermediate values")
            continue
        params = dict(t.params) or dict(t.user_attrs.get("hparams", {}))
        runs.append(SweepRun(str(t.number), values, params))
    if not runs:
        raise ValueError(
            f"{storage}: study {study_name!r} has no finished (COMPLETE) trial with "
            f"intermediate values ({len(skipped)} other trials)."
        )
    mode = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    return _finish(runs, skipped, "intermediate value", mode, f"{storage} ({study_name})")


def load_sweep(
    source: str | Path,
    study: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> Sweep:
    """Reads a finished sweep from a multirun directory, an Optuna URL or a recorded JSON.

    Args:
        source: the directory, the storage URL (``scheme://...``) or the ``.json`` file.
        study: the study name (Optuna sources).
        metric: the metric to replay (directories and JSON files).
        mode: ``max`` or ``min`` (overrides the source's).

    Returns:
        The sweep.
    """
    text = str(source)
    if "://" in text:
        sweep = load_optuna(text, study)
    elif text.endswith(".json") and Path(text).is_file():
        sweep = load_recorded(text, metric)
    else:
        sweep = load_multirun(text, metric, mode)
    if mode is not None and mode != sweep.mode:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
        sweep.mode = mode
    return sweep
