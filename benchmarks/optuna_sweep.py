"""TPE sweeps of the digits CNN through the ``eecontrol_optuna`` sweeper, with each pruner.

Runs the real command ``eecontrol-train -m hparams_search=digits_optuna`` once per
(seed, pruner): TPE (seeded) over lr, weight decay, dropout and width, ``--trials`` trials,
2 joblib workers, ``--epochs`` epochs per trial; pruners ``none``, ``median``,
``successive_halving`` and ``learning_curve`` (eecontrol's ``LearningCurvePruner``). Rounds
are interleaved (seed-major: every pruner of seed 0, then of seed 1, ...) so that the
machine's load hits all pruners alike. Per sweep it records the total epochs trained (the
validations reported by all trials), the wall time, the best value found (best
``COMPLETE`` trial's ``val/acc``) and the trial counts. Writes JSON after every sweep:

    python benchmarks/optuna_sweep.py --trials 30 --seeds 0 1 2 --epochs 15

(output ``benchmarks/results/optuna_sweep.json`` unless ``--out`` is given; ``--workdir``
keeps the sweep directories).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

PRUNERS = ("none", "median", "successive_halving", "learning_curve")
ROOT = Path(__file__).resolve().parents[1]
TRAIN = shutil.which("eecontrol-train") or str(Path(sys.executable).parent / "eecontrol-train")


def run_sweep(workdir: Path, pruner: str, seed: int, trials: int, epochs: int) -> dict:
    """Runs one sweep; returns its measurements."""
    name = f"{pruner}-s{seed}"
    cmd = [
        TRAIN,
        "-m",
        "hparams_search=digits_optuna",
        f"hydra/sweeper/eecontrol_pruner={pruner}",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweeper.study_name={name}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
        "callbacks=none",
        "trainer.enable_model_summary=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    _study, row = measure(cmd, workdir, name, env)
    return {"pruner": pruner, "seed": seed, **row}


def measure(
    cmd: list[str], workdir: Path, name: str, env: dict[str, str]
) -> tuple[optuna.Study, dict]:
    """Runs one sweep command in ``workdir``; its study and what every sweep benchmark records:
    trial counts by state, epochs (validations reported), wall time, best value, the command.
    """
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    db = workdir / "logs" / "train" / "sweeps" / name / "optuna.db"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    ts = study.trials
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    return study, {
        "trials": len(ts),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in ts),
        "failed": sum(t.state == TrialState.FAIL for t in ts),
        "epochs": sum(len(t.intermediate_values) for t in ts),
        "wall_s": round(wall, 1),
        "best_value": round(max(t.value for t in complete), 5) if complete else None,
        "command": " ".join(["eecontrol-train", *cmd[1:]]),
    }


def save(out: Path, meta: dict, summary: dict, rows: list[dict]) -> None:
    """Writes a sweep benchmark's JSON (after every sweep): how it ran, the summary, the rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "summary": summary, "runs": rows}, indent=1))


def summarise(rows: list[dict]) -> dict:
    """Mean (and per-seed) epochs, wall time and best value per pruner."""
    out = {}
    for p in PRUNERS:
        mine = [r for r in rows if r["pruner"] == p]
        if not mine:
            continue
        out[p] = {
            "seeds": len(mine),
            "epochs_mean": statistics.mean(r["epochs"] for r in mine),
            "wall_s_mean": round(statistics.mean(r["wall_s"] for r in mine), 1),
            "best_value_mean": round(statistics.mean(r["best_value"] or 0 for r in mine), 4),
            "best_values": [r["best_value"] for r in mine],
            "pruned_mean": statistics.mean(r["pruned"] for r in mine),
        }
    return out


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=PRUNERS)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "optuna_sweep.json"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "eecontrol-optuna-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for seed in args.seeds:  # interleaved rounds: every pruner per seed
        for pruner in args.pruners:
            rows.append(run_sweep(workdir, pruner, seed, args.trials, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
            meta = {
                "command": "python benchmarks/optuna_sweep.py " + " ".join(sys.argv[1:]),
                "trials": args.trials,
                "epochs_per_trial": args.epochs,
                "note": "2 joblib workers on a shared, loaded 2-core CPU: wall times "
                "are comparable only within one run of this script",
            }
            save(args.out, meta, summarise(rows), rows)


if __name__ == "__main__":
    main()
