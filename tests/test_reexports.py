"""Names that modules re-export for existing imports stay importable from them.

``eecontrol.sweep.common`` and ``eecontrol.callbacks._control`` re-export with a star
import over their source's ``__all__``; these tests pin every old name to the object
where it lives, so a name dropped from that ``__all__`` fails here.
"""

from __future__ import annotations

import importlib

import pytest

# The names a few to a line.
# fmt: off
SWEEP_COMMON = (
    "METRICS_ATTR", "OBJECTIVE_ATTR", "PRUNED_ATTR", "REPORT_STEPS", "STORAGE_ENV",
    "TRIAL_KEY", "build_pruner", "driver_url", "open_storage", "rdb_storage",
    "redact", "storage_from_env", "storage_url",
)
CONTROL_TRAINER = (
    "check_monitor_mode", "is_compiled", "log_every_n", "manual_optimization",
    "plan_step", "plan_unit", "planned_steps", "recompile_limit",
    "reduce_stop", "run_dir",
)
# fmt: on
CASES = [("eecontrol.sweep.common", "eecontrol.util.optuna_study", n) for n in SWEEP_COMMON] + [
    ("eecontrol.callbacks._control", "eecontrol.callbacks._trainer", n) for n in CONTROL_TRAINER
]


@pytest.mark.parametrize(("shim", "home", "name"), CASES, ids=[f"{c[0]}.{c[2]}" for c in CASES])
def test_old_name_is_importable_and_is_the_same_object(shim: str, home: str, name: str) -> None:
    source = importlib.import_module(home)
    assert hasattr(source, name), f"{home} no longer defines {name}"
    namespace: dict[str, object] = {}
    exec(f"from {shim} import {name}", namespace)
    assert namespace[name] is getattr(source, name)


def test_sweep_common_lists_the_old_names() -> None:
    common = importlib.import_module("eecontrol.sweep.common")
    assert set(SWEEP_COMMON) <= set(common.__all__)
