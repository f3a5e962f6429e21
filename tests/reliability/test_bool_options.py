"""Boolean options given as strings are an error naming the option (issue 25 item 11).

``"no"``, ``"false"`` and ``"0"`` (a quoted YAML value or a command-line value Hydra reads
as a string) were true to ``bool()``. Every option annotated ``bool`` of every shipped
callback config (enumerated here from the signatures, independently of the check) must be
refused at the instantiation boundary, named as the user writes it.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import eecontrol.conf
import hydra
import pytest
import yaml
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from eecontrol.train import _instantiate_group

CALLBACKS = Path(eecontrol.conf.__file__).parent / "callbacks"


def _bool_options() -> list[tuple[str, str, str]]:
    """(config name, target, option) for every ``bool`` parameter of a shipped callback."""
    found = []
    for file in sorted(CALLBACKS.glob("*.yaml")):
        conf = yaml.safe_load(file.read_text()) or {}
        entries = (
            [conf] if "_target_" in conf else [v for v in conf.values() if isinstance(v, dict)]
        )
        for entry in entries:
            target = entry.get("_target_")
            if not target:
                continue
            cls = hydra.utils.get_object(target)
            hints = typing.get_type_hints(cls.__init__)
            for name in inspect.signature(cls.__init__).parameters:
                if hints.get(name) is bool:
                    found.append((file.stem, target, name))
    return found


OPTIONS = _bool_options()


def test_the_enumeration_finds_the_callbacks_boolean_options():
    names = {(c, o) for c, _, o in OPTIONS}
    assert {
        ("grades", "prog_bar"),
        ("grades", "log_components"),
        ("ces", "conditional"),
        ("ces", "randomized"),
        ("curve_stopping", "strict"),
        ("darts_plus", "stop_training"),
        ("model_checkpoint", "handle_signals"),
    } <= names, sorted(names)


@pytest.mark.parametrize(("config", "target", "option"), OPTIONS)
@pytest.mark.parametrize("value", ["no", "false", "0", 0, 1])
def test_a_string_or_number_for_a_boolean_option_is_an_error_naming_it(
    config, target, option, value
):
    cfg = OmegaConf.create({config: {"_target_": target, option: value}})
    with pytest.raises(ValueError, match=rf"`callbacks\.{config}\.{option}` must be true or false"):
        _instantiate_group(cfg, "callbacks", Callback)


def test_real_booleans_still_pass():
    from eecontrol.core.checks import check_bool

    assert check_bool("x", True) is True and check_bool("x", False) is False
    assert check_bool("x", None, none_ok=True) is None
    with pytest.raises(ValueError, match=r"`x` must be true or false, got 'yes'"):
        check_bool("x", "yes")


def test_the_command_line_and_quoted_yaml_are_refused(tmp_path):
    """``callbacks.model_checkpoint.handle_signals=no`` and ``'false'`` (quoted) end the run
    before training, naming the option."""
    train = str(Path(sys.executable).parent / "eecontrol-train")
    env = {**os.environ, "EECONTROL_ROOT": str(tmp_path), "WANDB_MODE": "offline"}
    for value in ("no", "'false'"):
        out = subprocess.run(
            [train, "logger=csv", f"callbacks.model_checkpoint.handle_signals={value}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode != 0
        assert "`callbacks.model_checkpoint.handle_signals` must be true or false" in out.stderr
        assert not list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt"))
