"""The acceptance matrix, in-process cells: every callback x every single-process setting.

Each cell trains the tiny Llama (or the tiny DARTS search) under one setting and runs the
callback's checker (``tests/settings/harness.py``); a cell the table marks ``refused`` must
fail at setup with its message, a known defect is a strict xfail naming issue 23's item.
"""

from __future__ import annotations

import pytest

from tests.settings.harness import (
    CALLBACKS,
    SETTINGS,
    RateProbe,
    callback_under_test,
    cell_param,
    expect,
    run_cell,
    under_test,
)

pytestmark = pytest.mark.timeout(300)


def _cells() -> list:
    cells = []
    for cb in CALLBACKS:
        for name, setting in SETTINGS.items():
            if setting.distributed is not None:
                continue
            cell = cell_param(cb, name, (pytest.mark.slow,) if setting.compile else ())
            if cell is not None:
                cells.append(cell)
    return cells


def check_compile_cost(run) -> None:
    """DropoutSchedule under compile: the stated cost is the number of distinct rate
    settings the run made, the recompiles seen do not exceed it (+1, the first compile),
    and a cost at torch's recompile limit is warned about."""
    from eecontrol import DropoutSchedule
    from eecontrol.callbacks._control import recompile_limit

    cb = under_test(run, DropoutSchedule)
    stated = cb.decisions[0].evidence.get("compiled_rate_values")
    assert isinstance(stated, int), f"no compile cost stated at setup: {stated!r}"
    probe = under_test(run, RateProbe)
    distinct = {tuple(sorted(set(rates))) for _, rates in probe.seen}
    assert stated == len(distinct), f"stated {stated} rate values, the run set {len(distinct)}"
    recompiles = run.compile_probe.training_recompiles
    assert recompiles <= stated + 1, f"{recompiles} recompilations, {stated} stated"
    limit = recompile_limit()
    warned = [w for w in run.warnings if "recompile_limit" in w and "DropoutSchedule" in w]
    assert bool(warned) == (stated >= limit), (
        f"{stated} rate values, recompile limit {limit}: warnings {warned}"
    )


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
        assert run.backend is not None and run.backend.count > 0, "nothing was compiled"
        recompiles = run.compile_probe.training_recompiles
        if callback == "DropoutSchedule":
            # torch guards on dropout rates: the schedule states at setup what compile will
            # cost (issue 23 item 8), and that statement must be true
            check_compile_cost(run)
        else:
            # decisions (a freeze, a stop) must not recompile the model step after step:
            # torch gives up after its recompile limit and silently runs eager
            assert recompiles <= 2, f"{recompiles} recompilations during training"
    if run.setting.run == "new_trainer":
        # a new fit that is not a resume starts fresh: the reused instance decides what a
        # new instance decides in the same fit (or it refuses reuse at setup)
        reused = [
            (d.action, d.step, d.reason) for d in callback_under_test(run.callbacks).decisions
        ]
        assert reused == run.first["fresh_decisions"], (
            f"reused instance: {reused}; a new instance: {run.first['fresh_decisions']}"
        )
