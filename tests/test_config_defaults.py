"""One source of defaults: conf/callbacks/*.yaml agree with eecontrol's class signatures."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import eecontrol.conf
import hydra
import pytest
import yaml

from eecontrol.callbacks.curve_stopping import LearningCurveStopping

CONF = Path(eecontrol.conf.__file__).parent / "callbacks"


def _own_defaults(cls: type) -> dict[str, object]:
    """Keyword defaults declared by eecontrol classes in ``cls``'s MRO (not Lightning's)."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("eecontrol") or "__init__" not in vars(klass):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name == "self":
                continue
            out[name] = p.default
    return out


def _entries():
    for file in sorted(CONF.glob("*.yaml")):
        for name, conf in (yaml.safe_load(file.read_text()) or {}).items():
            if isinstance(conf, dict) and str(conf.get("_target_", "")).startswith("eecontrol"):
                yield pytest.param(file, name, conf, id=f"{file.stem}.{name}")


ENTRIES = list(_entries())


def test_every_eecontrol_callback_config_is_checked():
    assert len(ENTRIES) >= 8, [p.id for p in ENTRIES]


@pytest.mark.parametrize(("file", "name", "conf"), ENTRIES)
def test_config_values_are_the_class_defaults_or_say_why(file, name, conf):
    """A value that differs from the class default is mandatory (???), computed from the run
    (${...}), or its line carries a comment naming the class default and why."""
    cls = hydra.utils.get_class(conf["_target_"])
    defaults = _own_defaults(cls)
    accepted = {  # **kwargs passes the rest on to the Lightning base class
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass) and klass is not object
        for name in inspect.signature(klass.__init__).parameters
    }
    unknown = [k for k in conf if k != "_target_" and k not in accepted]
    assert not unknown, f"{file.name}: {cls.__name__} takes no {unknown}"
    lines = {
        line.split(":", 1)[0].strip(): line
        for line in file.read_text().splitlines()
        if line.startswith("    ") or line.startswith("  ")
    }
    problems = []
    for key, value in conf.items():
        if key == "_target_" or key not in defaults:
            continue  # Lightning's own arguments (ModelCheckpoint, progress bars) are configured
        default = defaults[key]
        default = list(default) if isinstance(default, tuple) else default
        if default is inspect.Parameter.empty or value == default:
            continue
        if value == "???" or (isinstance(value, str) and value.startswith("${")):
            continue
        if "class default" not in lines.get(key, ""):
            problems.append(f"{key}: config {value!r} vs class default {default!r}")
    assert not problems, f"{file.name} ({cls.__name__}): " + "; ".join(problems)


@pytest.mark.parametrize(
    ("monitor", "mode", "says"),
    [
        ("val/loss", "max", "loss/error"),
        ("val_loss", "max", "loss/error"),
        ("val/acc", "min", "score"),
    ],
)
def test_a_mode_against_the_metric_name_warns(monitor, mode, says):
    with pytest.warns(UserWarning, match=f"mode='{mode}'.*{monitor}.*{says}"):
        LearningCurveStopping(monitor=monitor, mode=mode)


@pytest.mark.parametrize(
    ("monitor", "mode"), [("val/loss", "min"), ("val_acc", "max"), ("lr_metric", "max")]
)
def test_a_consistent_or_unknown_mode_does_not_warn(monitor, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearningCurveStopping(monitor=monitor, mode=mode)


EXPERIMENTS = sorted(p.stem for p in (CONF.parent / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiments_objective_direction_agrees_with_its_metric(experiment):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from eecontrol.callbacks._control import lower_is_better

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="eecontrol.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    metric, mode = cfg.get("optimized_metric"), cfg.get("optimized_mode")
    assert metric, f"{experiment}: no optimized_metric"
    lower = lower_is_better(metric)
    if lower is not None and mode is not None:
        assert mode == ("min" if lower else "max"), f"{experiment}: {mode} of {metric}"
