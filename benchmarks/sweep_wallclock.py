"""Wall-clock of digits-CNN sweeps: batch vs asynchronous workers, with and without pruning.

Runs the real command ``eecontrol-train -m hparams_search=digits_optuna`` once per
(seed, mode, pruner): seeded TPE over lr, weight decay, dropout and width, ``--trials``
trials of at most ``--epochs`` epochs, ``--workers`` joblib workers, ``hydra.sweeper.mode``
``batch`` (ask ``n_jobs`` trials, wait for the slowest) or ``async`` (each worker asks for
a trial as soon as its last one ended), pruners ``none``, ``successive_halving`` and
``median`` by default (``--pruners`` takes any of ``hydra/sweeper/eecontrol_pruner``).
Rounds are interleaved (seed-major, then pruner, then mode) so that the machine's load
hits every arm alike. Per sweep it records the wall time (the whole command), the total
epochs trained, the best ``val/acc`` of a ``COMPLETE`` trial, the trial counts and, in
async mode, the workers' idle time between trials (from the study's
``eecontrol:worker:<i>`` user attributes). Writes JSON after every sweep:

    python benchmarks/sweep_wallclock.py --workers 4 --trials 32 --seeds 0 1 2 --epochs 8

(output ``benchmarks/results/sweep_wallclock.json`` unless ``--out`` is given).
Wall times are comparable only within one run of this script on one machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optuna_sweep import measure, save  # the same run-and-count as the pruner benchmark

MODES = ("batch", "async")
PRUNERS = ("none", "successive_halving", "median")
ROOT = Path(__file__).resolve().parents[1]
TRAIN = shutil.which("eecontrol-train") or str(Path(sys.executable).parent / "eecontrol-train")


def _idle(study: optuna.Study) -> float:
    """Seconds async workers spent between one trial's end and their next trial's start."""
    total = 0.0
    for key, rows in study.user_attrs.items():
        if key.startswith("eecontrol:worker:"):
            total += sum(max(0.0, b[1] - a[2]) for a, b in itertools.pairwise(rows))
    return round(total, 1)


def run_sweep(workdir: Path, mode: str, pruner: str, seed: int, args: argparse.Namespace) -> dict:
    """Runs one sweep; returns its measurements."""
    name = f"{mode}-{pruner}-s{seed}"
    cmd = [
        TRAIN,
        "-m",
        "hparams_search=digits_optuna",
        f"hydra.sweeper.mode={mode}",
        f"hydra/sweeper/eecontrol_pruner={pruner}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.n_jobs={args.workers}",
        f"hydra.launcher.n_jobs={args.workers}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweeper.study_name={name}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={seed}",
        "callbacks=none",
        "logger=csv",
        "trainer.enable_model_summary=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": str(args.threads)}
    study, row = measure(cmd, workdir, name, env)
    row["worker_idle_s"] = _idle(study) if mode == "async" else None
    return {"mode": mode, "pruner": pruner, "seed": seed, **row}


def summarise(rows: list[dict]) -> dict:
    """Per (mode, pruner): mean wall time, epochs and best value, and the speed-ups."""
    out: dict[str, dict] = {}
    for mode in MODES:
        for p in PRUNERS:
            mine = [r for r in rows if r["mode"] == mode and r["pruner"] == p]
            if not mine:
                continue
            out[f"{mode}/{p}"] = {
                "seeds": len(mine),
                "wall_s_mean": round(statistics.mean(r["wall_s"] for r in mine), 1),
                "epochs_mean": statistics.mean(r["epochs"] for r in mine),
                "best_values": [r["best_value"] for r in mine],
                "pruned_mean": statistics.mean(r["pruned"] for r in mine),
            }
    base = out.get("batch/none", {}).get("wall_s_mean")
    for key, s in out.items():
        if base:
            s["speedup_vs_batch_none"] = round(base / s["wall_s_mean"], 2)
        mode, p = key.split("/")
        if mode == "async" and f"batch/{p}" in out:
            s["speedup_vs_batch_same_pruner"] = round(
                out[f"batch/{p}"]["wall_s_mean"] / s["wall_s_mean"], 2
            )
    return out


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per job")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_wallclock.json"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "eecontrol-wallclock"
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh study per arm (the names would resume old ones)
    workdir.mkdir(parents=True)
    rows: list[dict] = []
    for seed in args.seeds:  # interleaved rounds
        for pruner in args.pruners:
            for mode in args.modes:
                rows.append(run_sweep(workdir, mode, pruner, seed, args))
                print(json.dumps(rows[-1]), flush=True)
                meta = {
                    "command": "python benchmarks/sweep_wallclock.py " + " ".join(sys.argv[1:]),
                    "workers": args.workers,
                    "trials": args.trials,
                    "epochs_per_trial": args.epochs,
                    "cpus": os.cpu_count(),
                    "note": "wall times are comparable only within one run of this "
                    "script (same machine, same load)",
                }
                save(args.out, meta, summarise(rows), rows)


if __name__ == "__main__":
    main()
