"""Helpers shared by the tests that run console scripts in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the console scripts of the environment under test


def run_ok(
    cmd: Sequence[str | Path],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    tail: int = 3000,
) -> subprocess.CompletedProcess[str]:
    """Runs ``cmd`` (output captured as text) and asserts it exits 0.

    Args:
        cmd: the program and its arguments.
        cwd: the working directory.
        env: the environment (None: this process's).
        timeout: seconds before ``subprocess.TimeoutExpired``.
        tail: characters of the end of stderr shown when the exit status is not 0.

    Returns:
        The completed process (``stdout``, ``stderr``).
    """
    out = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )
    assert out.returncode == 0, out.stderr[-tail:]
    return out


def wandb_summary(wandb_dir: Path, bin_dir: Path = BIN) -> dict[str, Any]:
    """The summary of an offline W&B run, read back from disk with ``wandb leet inspect``.

    Args:
        wandb_dir: the ``offline-run-*`` directory.
        bin_dir: where to look for the ``wandb`` command first.
    """
    leet = shutil.which("wandb", path=str(bin_dir)) or "wandb"
    inspected = subprocess.run(
        [leet, "leet", "inspect", "--summary", "--json", str(wandb_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspected.returncode == 0, inspected.stderr
    return json.loads(inspected.stdout)["summary"]
