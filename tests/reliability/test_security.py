"""Security checks: safe checkpoint loading, and no secret in the run directory."""

from __future__ import annotations

import ast
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _torch_loads_without_weights_only() -> list[str]:
    bad = []
    for folder in ("eecontrol", "recipes", "benchmarks"):
        for file in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(file.read_text())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    safe = any(
                        kw.arg == "weights_only"
                        and isinstance(kw.value, ast.Constant)
                        and kw.value.value is True
                        for kw in node.keywords
                    )
                    if not safe:
                        bad.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_torch_load_uses_weights_only():
    assert _torch_loads_without_weights_only() == []


@pytest.mark.e2e
def test_no_wandb_key_is_written_to_the_run_directory(tmp_path):
    secret = "eecontrol-test-" + secrets.token_hex(16)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": secret}
    train = Path(sys.executable).parent / "eecontrol-train"
    out = subprocess.run(
        [str(train), "experiment=digits_ces", "trainer.max_epochs=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert secret not in out.stdout and secret not in out.stderr
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaked == []
