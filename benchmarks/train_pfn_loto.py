"""Trains the PFN candidates compared by leave-one-task-out in ``curves_pfn.py``.

A candidate is a prior variant, a recorded share and a model size. A candidate that
mixes recorded curves into its prior is trained once per recorded task with that task
left out (``<out>/<candidate>/<task>.pt``, scored only on that task) and once on every
task (``<out>/<candidate>/all.pt``, the weights that would ship); a purely synthetic
candidate is trained once (``all.pt``). Existing weights are kept (the run resumes).

    python benchmarks/train_pfn_loto.py --out /tmp/lcpfn_loto --jobs 2
    python benchmarks/curves_pfn.py --models 'syn=/tmp/lcpfn_loto/syn/all.pt' \\
        'rec30=/tmp/lcpfn_loto/rec30/{task}.pt' ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves_fit import load_tasks

# name: (variant, recorded share, emsize, layers, seed)
CANDIDATES: dict[str, tuple[str, float, int, int, int]] = {
    "base": ("base", 0.0, 64, 3, 0),
    "early": ("early", 0.0, 64, 3, 0),
    "syn": ("sentinel", 0.0, 64, 3, 0),
    "syn_seed1": ("sentinel", 0.0, 64, 3, 1),
    "syn_wide": ("sentinel", 0.0, 96, 4, 0),
    "rec30": ("recorded", 0.3, 64, 3, 0),
    "rec30_wide": ("recorded", 0.3, 96, 4, 0),
    "rec60": ("recorded", 0.6, 64, 3, 0),
}


def jobs(out: Path, data: Path, names: list[str], steps: int) -> list[list[str]]:
    """The training commands not yet done."""
    tasks = sorted(load_tasks(data))
    todo = []
    for name in names:
        variant, share, emsize, layers, seed = CANDIDATES[name]
        for held in [*tasks, None] if share > 0 else [None]:
            dest = out / name / f"{held or 'all'}.pt"
            if dest.is_file():
                continue
            cmd = [
                sys.executable, "-m", "eecontrol.core.curves.train_pfn",
                "--variant", variant, "--robust", "--steps", str(steps),
                "--emsize", str(emsize), "--layers", str(layers), "--seed", str(seed),
                "--out", str(dest),
            ]  # fmt: skip
            if share > 0:
                cmd += ["--recorded", str(data), "--recorded-share", str(share)]
                cmd += ["--leave-out", held] if held else []
            todo.append(cmd)
    return todo


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--candidates", nargs="*", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    todo = jobs(args.out, args.data, args.candidates, args.steps)
    t0 = time.perf_counter()

    def run(cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True)
        tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [""]
        print(
            f"{time.perf_counter() - t0:6.0f}s rc={r.returncode} {cmd[cmd.index('--out') + 1]}: {tail[0][:160]}",
            flush=True,
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))


if __name__ == "__main__":
    main()
