"""Helpers to run the reliability harness in child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_child(spec: str, root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs the harness for ``spec`` in ``root``; returns the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.harness", spec, str(root), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def journal(root: Path) -> list[dict]:
    """The decisions.jsonl of a run."""
    path = root / "decisions.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def same_decisions(a: list[dict], b: list[dict], rel: float = 1e-6) -> tuple[bool, str]:
    """Equal actions, steps, epochs and callbacks; evidence equal within a relative tolerance."""
    if len(a) != len(b):
        return (
            False,
            f"{len(a)} vs {len(b)} decisions: {[d['action'] for d in a]} vs {[d['action'] for d in b]}",
        )
    for x, y in zip(a, b):
        for key in ("step", "epoch", "callback", "action"):
            if x[key] != y[key]:
                return False, f"{key}: {x[key]!r} vs {y[key]!r}"
        if x["evidence"].keys() != y["evidence"].keys():
            return False, f"evidence keys {sorted(x['evidence'])} vs {sorted(y['evidence'])}"
        for k, v in x["evidence"].items():
            w = y["evidence"][k]
            if isinstance(v, float) and isinstance(w, float):
                if abs(v - w) > rel * max(1.0, abs(v), abs(w)):
                    return False, f"evidence {k}: {v} vs {w}"
            elif v != w:
                return False, f"evidence {k}: {v!r} vs {w!r}"
    return True, ""


def same_histories(a: dict, b: dict, rel: float = 1e-6) -> tuple[bool, str]:
    """Equal measurement histories (lists of records per callback) within a tolerance."""
    if a.keys() != b.keys():
        return False, f"callbacks {sorted(a)} vs {sorted(b)}"
    for name in a:
        if len(a[name]) != len(b[name]):
            return False, f"{name}: {len(a[name])} vs {len(b[name])} records"
        for x, y in zip(a[name], b[name]):
            if x.keys() != y.keys():
                return False, f"{name}: keys {sorted(x)} vs {sorted(y)}"
            for k, v in x.items():
                w = y[k]
                if abs(v - w) > rel * max(1.0, abs(v), abs(w)):
                    return False, f"{name} {k} at step {x.get('step')}: {v} vs {w}"
    return True, ""
