"""Read what a run left on disk: decisions, metrics CSV, summary and callback artefacts."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eecontrol.callbacks._control import DECISIONS_FILE, Decision

SUMMARY_FILE = "summary.json"


@dataclass
class RunArtifacts:
    """Everything ``eecontrol report`` reads from one run directory.

    Args:
        path: the run directory.
        decisions: the decisions in ``decisions.jsonl``.
        metrics: the metrics CSV as columns (NaN where a row had no value).
        summary: ``summary.json`` written by ``eecontrol-train`` (may be empty).
        ces_candidates: ``ces/candidates.json`` rows, if CES ran.
        extra_json: other JSON artefacts in the run directory, by relative path.
    """

    path: Path
    decisions: list[Decision] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    ces_candidates: list[dict[str, Any]] = field(default_factory=list)
    extra_json: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    label: str | None = None
    legend_label: str | None = None

    @property
    def name(self) -> str:
        """A short name: the run directory's name (the job number in a sweep)."""
        return self.path.name

    @property
    def display_name(self) -> str:
        """What tables and legends call the run: its distinguishing overrides, else its name."""
        return self.label or self.name

    @property
    def legend_name(self) -> str:
        """What a plot's legend calls the run: its distinguishing values under short keys
        (``lr=0.001235 weight_decay=0.0001``), else :attr:`display_name`."""
        return self.legend_label or self.display_name


def read_decisions(path: Path) -> list[Decision]:
    """Reads ``decisions.jsonl``; a malformed line is an error naming the line.

    A truncated last line (a process killed while appending: no final newline) is left out
    with a warning naming the file.
    """
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Decision.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as err:
            if i == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{path}:{i}: truncated last line left out (a killed process was writing it).",
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path}:{i}: not a decision record ({err}).") from err
    return out


def read_json(path: Path) -> Any:
    """``json.loads`` of a file; a malformed file is a ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err


def read_metrics(run: Path) -> dict[str, list[float]]:
    """Reads the CSV logger's ``metrics.csv`` (latest version) into float columns."""
    files = sorted(run.glob("csv/version_*/metrics.csv")) or sorted(run.glob("**/metrics.csv"))
    if not files:
        return {}
    with files[-1].open() as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for key in rows[0] if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row[key]) if row[key] not in ("", None) else math.nan)
            except ValueError:
                values.append(math.nan)
        columns[key] = values
    return columns


def load_run(run: str | Path) -> RunArtifacts:
    """Loads one run directory.

    Raises:
        FileNotFoundError: if ``run`` is not a directory.
    """
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist.")
    art = RunArtifacts(
        path=path, decisions=read_decisions(path / DECISIONS_FILE), metrics=read_metrics(path)
    )
    if (path / SUMMARY_FILE).exists():
        art.summary = read_json(path / SUMMARY_FILE)
    art.overrides = read_overrides(path)
    ces = path / "ces" / "candidates.json"
    if ces.exists():
        art.ces_candidates = read_json(ces)
    for file in sorted(path.glob("*.json")) + sorted(path.glob("*/*.json")):
        rel = str(file.relative_to(path))
        if rel in (SUMMARY_FILE, "ces/candidates.json") or rel.startswith(
            (".hydra", "wandb", "csv")
        ):
            continue
        try:
            art.extra_json[rel] = json.loads(file.read_text())
        except json.JSONDecodeError:
            continue
    return art


def read_overrides(run: Path) -> list[str]:
    """The command-line overrides of a Hydra job (``.hydra/overrides.yaml``), if any."""
    file = run / ".hydra" / "overrides.yaml"
    if not file.exists():
        return []
    import yaml

    try:
        data = yaml.safe_load(file.read_text()) or []
    except yaml.YAMLError:
        return []
    return [str(o) for o in data if isinstance(o, str)]


#: overrides that identify a job rather than configure it: the ``eecontrol_optuna`` trial's
#: identity and worker index, and the W&B run name and group the sweeper sets per trial
INTERNAL_OVERRIDES = ("optuna_trial", "optuna_worker", "logger.wandb.name", "logger.wandb.group")
SIGNIFICANT_DIGITS = 4


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_internal(override: str) -> bool:
    """Hydra's own settings (``hydra/launcher=...``) and :data:`INTERNAL_OVERRIDES`."""
    key = _override_key(override)
    return key.startswith(("hydra.", "hydra/")) or key in INTERNAL_OVERRIDES


def round_number(text: str, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A decimal number with more than ``digits`` significant digits, rounded to them
    (``0.0012345678901`` -> ``0.001235``); anything else (integers, words, short numbers
    such as ``0.1`` or ``1.0``) unchanged."""
    if not any(c in text for c in ".eE") or text.strip().lower().lstrip("+-") in ("inf", "nan"):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    short = f"{number:.{digits}g}"
    return short if math.isfinite(number) and float(short) != number else text


def _rounded(override: str) -> str:
    key, sep, value = override.partition("=")
    return f"{key}{sep}{round_number(value)}" if sep else override


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest ending that no other key shares (``model.optimizer.lr`` ->
    ``lr``; ``encoder.dropout`` and ``decoder.dropout`` keep their first part)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[key] = tail
    return out


def _unique(runs: list[RunArtifacts], attr: str) -> None:
    """Appends ``[directory]`` to the names that two runs share."""
    seen: dict[str, int] = {}
    for art in runs:
        name = getattr(art, attr)
        if name:
            seen[name] = seen.get(name, 0) + 1
    for art in runs:
        name = getattr(art, attr)
        if name and seen[name] > 1:
            setattr(art, attr, f"{name} [{art.name}]")


def label_runs(runs: list[RunArtifacts]) -> None:
    """Names each run by the overrides that tell it apart from the others (in place).

    Overrides shared by every run, Hydra's own (``hydra/launcher=...``) and a sweep's
    internal ones (the ``optuna_trial`` identity, :data:`INTERNAL_OVERRIDES`) are left out,
    and long decimal values are rounded to :data:`SIGNIFICANT_DIGITS` significant digits;
    a run whose overrides say nothing distinct keeps its directory name. Legends get the
    same values under short keys (:attr:`RunArtifacts.legend_name`).
    """

    def own(overrides: list[str]) -> list[str]:
        return [o for o in overrides if not _is_internal(o)]

    shared = set.intersection(*(set(own(a.overrides)) for a in runs)) if runs else set()
    distinct = {id(a): [o.lstrip("+") for o in own(a.overrides) if o not in shared] for a in runs}
    keys = list(dict.fromkeys(_override_key(o) for d in distinct.values() for o in d if "=" in o))
    short = _short_keys(keys)
    for art in runs:
        mine = [_rounded(o) for o in distinct[id(art)]]
        art.label = " ".join(mine) if mine else None
        art.legend_label = (
            " ".join(
                f"{short[_override_key(o)]}={o.partition('=')[2]}" if "=" in o else o for o in mine
            )
            or None
        )
    _unique(runs, "label")
    _unique(runs, "legend_label")


def sort_by_objective(runs: list[RunArtifacts]) -> list[RunArtifacts]:
    """Runs best first by ``summary.json``'s objective (runs without one last)."""
    from eecontrol.callbacks._control import lower_is_better

    def key(art: RunArtifacts) -> tuple[int, float]:
        value = art.summary.get("objective")
        if not isinstance(value, int | float) or math.isnan(value):
            return (1, 0.0)
        mode = art.summary.get("optimized_mode")  # the sweep's direction, when recorded
        if mode in ("min", "max"):
            minimise = mode == "min"
        else:
            minimise = lower_is_better(str(art.summary.get("optimized_metric", ""))) is True
        return (0, value if minimise else -value)

    return sorted(runs, key=key)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like one run (decisions, summary or a metrics CSV)."""
    return (
        (path / DECISIONS_FILE).exists()
        or (path / SUMMARY_FILE).exists()
        or any(path.glob("csv/version_*/metrics.csv"))
    )


def find_runs(path: Path) -> list[Path]:
    """The run directories under a sweep directory (Hydra multirun: one per job)."""
    runs = [p for p in sorted(path.iterdir()) if p.is_dir() and is_run_dir(p)]
    return sorted(
        runs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )
