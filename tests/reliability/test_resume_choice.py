"""Which run ``resume=last`` continues, and that it says so before anything runs (item 6).

"last" is the newest run directory (the one that started last: Hydra's timestamped name),
not the run whose checkpoint was written last; an older run resumed later must not win.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from eecontrol.resume import rewrite_argv


def _run(runs: Path, name: str, step: int, overrides: list[str] | None = None) -> Path:
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    torch.save({"global_step": step, "epoch": step // 2}, run / "checkpoints" / "last.ckpt")
    lines = "".join(f"- {o}\n" for o in (overrides or [f"trainer.max_epochs={step}"]))
    (run / ".hydra" / "overrides.yaml").write_text(lines)
    return run


def test_resume_last_is_the_newest_run_and_says_which_before_training(tmp_path, capsys):
    runs = tmp_path / "runs"
    older = _run(runs, "2026-12-01_10-00-00-000000", 6)
    newer = _run(runs, "2026-12-02_10-00-00-000000", 4)
    later = time.time() + 60  # the older run was resumed after the newer one started
    os.utime(older / "checkpoints" / "last.ckpt", (later, later))
    os.utime(older, (later, later))
    argv = rewrite_argv(["resume=last", "trainer.max_epochs=9"], runs)
    assert f"hydra.run.dir={newer.resolve()}" in argv
    assert argv[-1] == "trainer.max_epochs=9" and "trainer.max_epochs=4" in argv
    err = capsys.readouterr().err
    ckpt = newer.resolve() / "checkpoints" / "last.ckpt"
    assert f"resuming run {newer.resolve()} from {ckpt} (epoch 2, step 4" in err
    assert "'trainer.max_epochs=4'" in err and "given now: ['trainer.max_epochs=9']" in err


def test_resume_last_names_newer_runs_it_skipped_because_they_have_no_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    old = _run(runs, "2026-12-01_10-00-00-000000", 2)
    (runs / "2026-12-03_10-00-00-000000" / ".hydra").mkdir(parents=True)  # died in epoch 0
    with pytest.warns(UserWarning, match="2026-12-03_10-00-00-000000"):
        argv = rewrite_argv(["resume=last"], runs)
    assert f"hydra.run.dir={old.resolve()}" in argv


def test_recorded_overrides_that_name_code_must_be_given_again(tmp_path, capsys):
    from eecontrol.resume import ResumeError, names_code

    runs = tmp_path / "runs"
    code = "+callbacks.x._target_=builtins.print"
    run = _run(runs, "r", 2, ["trainer.max_epochs=2", code, "+callbacks.x.sep=y"])
    with pytest.raises(ResumeError, match=r"give them again on this command line"):
        rewrite_argv([f"resume={run}"], runs)
    argv = rewrite_argv([f"resume={run}", code], runs)  # repeated: the user's copy is used
    assert argv.count(code) == 1 and argv[-1] == code and "+callbacks.x.sep=y" in argv
    for bad in (
        "+callbacks.pwn={_target_: os.system}",
        "model.net._target_=os.system",
        "hydra.searchpath=[file:///tmp/evil]",
        "+hydra.callbacks.x._target_=os.system",
        "model._partial_=true",
    ):
        assert names_code(bad), bad
    for fine in ("experiment=grades_tiny", "callbacks=[default,ces]", "trainer.max_epochs=3"):
        assert not names_code(fine), fine
