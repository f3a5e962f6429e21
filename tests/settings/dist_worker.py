"""Runs the matrix's distributed cells: every callback under one strategy, 2 processes.

``python -m tests.settings.dist_worker ROOT {ddp,fsdp} [CALLBACK ...]``: each callback is
one fit on both ranks (one launch of the processes for all of them); each rank runs the
callback's checker and writes ``ROOT/<callback>/rank<r>.json`` with the outcome and its
decisions (``tests/settings/test_distributed.py`` compares the ranks). GradES also gets a
fit under plain DDP, which it must refuse (``ROOT/GradES-plain-ddp/rank<r>.json``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch


def _rank(run_or_none) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def main() -> None:
    root, strategy, *names = sys.argv[1:]
    torch.set_num_threads(1)
    from eecontrol.callbacks._control import control_callbacks
    from tests.settings.harness import CALLBACKS, expect, run_cell

    names = names or [n for n in CALLBACKS if expect(n, strategy).status != "na"]
    jobs = [(n, n, False) for n in names]
    if strategy == "ddp" and "GradES" in names:
        jobs.append(("GradES", "GradES-plain-ddp", True))
    for name, label, plain in jobs:
        out = Path(root) / label
        out.mkdir(parents=True, exist_ok=True)
        result: dict = {"status": "ok", "error": None, "decisions": []}
        try:
            run = run_cell(name, strategy, out, plain_ddp=plain)
            result["decisions"] = [
                d.to_dict() for cb in control_callbacks(run.trainer) for d in cb.decisions
            ]
            result["global_step"] = int(run.trainer.global_step)
            CALLBACKS[name].check(run)
        except AssertionError as err:
            result.update(
                status="check failed", error=str(err), traceback=traceback.format_exc()[-3000:]
            )
        except Exception as err:  # a crash or a refusal: the test reads the message
            result.update(
                status="error",
                error=f"{type(err).__name__}: {err}",
                traceback=traceback.format_exc()[-3000:],
            )
        (out / f"rank{_rank(None)}.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
