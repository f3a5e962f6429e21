"""The acceptance matrix, in-process cells: every callback x every single-process setting.

Each cell trains the tiny Llama (or the tiny DARTS search) under one setting and runs the
callback's checker (``tests/settings/harness.py``); a cell the table marks ``refused`` must
fail at setup with its message, a known defect is a strict xfail naming issue 23's item.
"""

from __future__ import annotations

import pytest

from tests.settings.harness import CALLBACKS, SETTINGS, callback_under_test, expect, run_cell

pytestmark = pytest.mark.timeout(300)


def _cells() -> list:
    cells = []
    for cb in CALLBACKS:
        for name, setting in SETTINGS.items():
            if setting.distributed is not None:
                continue
            e = expect(cb, name)
            if e.status == "na":
                continue
            marks = []
            if e.status == "xfail":
                marks.append(
                    pytest.mark.xfail(strict=True, reason=f"issue 23 item {e.item}: {e.reason}")
                )
            if setting.compile:
                marks.append(pytest.mark.slow)
            cells.append(pytest.param(cb, name, marks=marks, id=f"{cb}-{name}"))
    return cells


@pytest.mark.parametrize(("callback", "setting"), _cells())
def test_cell(callback, setting, tmp_path):
    e = expect(callback, setting)
    if e.status == "refused":
        with pytest.raises((ValueError, RuntimeError), match=e.match):
            run_cell(callback, setting, tmp_path)
        return
    run = run_cell(callback, setting, tmp_path)
    CALLBACKS[callback].check(run)
    if run.setting.compile:
        # decisions (a freeze, a new rate) must not recompile the model step after step:
        # torch gives up after 8 recompiles and silently runs eager
        assert run.backend is not None and run.backend.count > 0, "nothing was compiled"
        assert run.compile_probe.training_recompiles <= 2, (
            f"{run.compile_probe.training_recompiles} recompilations during training"
        )
    if run.setting.run == "new_trainer":
        # a new fit that is not a resume starts fresh: the reused instance decides what a
        # new instance decides in the same fit (or it refuses reuse at setup)
        reused = [
            (d.action, d.step, d.reason) for d in callback_under_test(run.callbacks).decisions
        ]
        assert reused == run.first["fresh_decisions"], (
            f"reused instance: {reused}; a new instance: {run.first['fresh_decisions']}"
        )
