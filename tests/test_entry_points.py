"""The console scripts' cheap paths import neither torch nor Lightning (issue 27).

``eecontrol-train --help`` composed the config after importing Lightning (about 10 s on a
loaded 2-core machine); ``eecontrol --version`` must stay light too. Each check runs the
installed console script's entry point in a fresh interpreter and lists what it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import json, sys
from importlib.metadata import entry_points
HEAVY = ("torch", "lightning", "lightning.pytorch")
script, args = sys.argv[1], sys.argv[2:]
main = next(e for e in entry_points(group="console_scripts") if e.name == script).load()
sys.argv = [script, *args]
try:
    main(*([args] if script == "eecontrol" else []))
except SystemExit as e:
    code = e.code
else:
    code = 0
print("\\nPROBE " + json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def _probe(cwd: Path, script: str, *args: str) -> tuple[dict, str]:
    out = subprocess.run(  # in an empty directory: the installed package, not ./eecontrol
        [sys.executable, "-c", _PROBE, script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(line[-1][len("PROBE ") :]), out.stdout


@pytest.mark.parametrize("flag", ["--help", "--hydra-help"])
def test_train_help_imports_no_torch_or_lightning(tmp_path, flag):
    result, stdout = _probe(tmp_path, "eecontrol-train", flag)
    assert result["code"] in (0, None)
    assert "eecontrol-train" in stdout  # the help text really was printed
    assert result["heavy"] == []


def test_version_imports_no_torch_or_lightning(tmp_path):
    result, stdout = _probe(tmp_path, "eecontrol", "--version")
    assert result["code"] == 0
    assert stdout.startswith("eecontrol ")  # the version really was printed
    assert result["heavy"] == []
