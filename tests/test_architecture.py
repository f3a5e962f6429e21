"""The package's shape: imports run down the floors, and no module grows past 500 lines.

Floors, lowest first (a module imports only from its own floor or lower):
``util`` and ``core`` (framework-free), ``callbacks`` (Lightning adapters), ``sweep`` and
``report``, then the application (``app``, ``cli`` and the top-level shims).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eecontrol"
FLOORS = {"util": 0, "core": 0, "callbacks": 1, "sweep": 2, "report": 2}
APP = 3  # app/, cli.py, train.py, evaluate.py, resume.py, ...
MAX_LINES = 500
CALLBACK_LINES = 400  # "each under about 350 lines"


def _floor(room: str) -> int:
    return FLOORS.get(room, APP)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(text: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, module)`` of every eecontrol import in ``text``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                found.append((node.lineno, ".".join(["eecontrol", *target])))
            elif node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return [(line, m) for line, m in found if m == "eecontrol" or m.startswith("eecontrol.")]


def _upward(text: str, rel: tuple[str, ...]) -> list[str]:
    """The imports of module ``rel`` (path parts below eecontrol/) that run up a floor."""
    if len(rel) == 1 or rel[0] not in FLOORS:
        return []  # the application floor may import anything
    own = _floor(rel[0])
    found = []
    for line, module in _imports(text, rel[:-1]):
        parts = module.split(".")[1:]
        if not parts or _floor(parts[0]) > own:
            found.append(f"{'/'.join(rel)}:{line} imports {module}")
    return found


def test_the_floors_exist_and_hold_modules():
    for room in FLOORS:
        assert list((PACKAGE / room).glob("*.py")), f"eecontrol/{room}/ has no modules"


def test_no_import_runs_up_a_floor():
    upward = []
    for path in _modules():
        upward += _upward(path.read_text(), path.relative_to(PACKAGE).parts)
    assert not upward, "imports running up a floor:\n" + "\n".join(upward)


def test_the_check_finds_an_upward_import():
    """The checker itself: upward imports in a core module are found, downward ones not."""
    text = (
        "from eecontrol.callbacks import GradES\n"
        "import eecontrol.sweep.store\n"
        "from ...report import plots\n"
        "from .families import pow3\n"
        "from eecontrol.util import files\n"
    )
    found = _upward(text, ("core", "curves", "m.py"))
    assert [f.split(" imports ")[1] for f in found] == [
        "eecontrol.callbacks",
        "eecontrol.sweep.store",
        "eecontrol.report",
    ]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (> {MAX_LINES})"


def test_callback_modules_stay_thin():
    thick = {
        str(p.relative_to(PACKAGE)): n
        for p in (PACKAGE / "callbacks").glob("*.py")
        if (n := len(p.read_text().splitlines())) > CALLBACK_LINES
    }
    assert not thick, f"callback modules over {CALLBACK_LINES} lines: {thick}"


def test_every_package_ships_in_the_wheel():
    """Each folder of eecontrol/ with an __init__.py is in pyproject's package list."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(("eecontrol", *p.parent.relative_to(PACKAGE).parts))
        for p in PACKAGE.rglob("__init__.py")
    }
    assert "eecontrol.core.curves" in found and "eecontrol.core.curves" in listed
    assert not found - listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
