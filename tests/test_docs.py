"""Every code block in the README and docs/ is checked against the code it documents.

- ``python`` blocks compile; every ``eecontrol`` import resolves; a name that is neither
  defined in the block nor one of the documented placeholders (your model, your loaders)
  is an error; eecontrol callbacks built from literal arguments are constructed for real
  (so a renamed or invalid argument fails here).
- ``bash`` blocks: every ``eecontrol-train`` command composes with Hydra (its overrides
  exist; a sweep takes its first value), every ``eecontrol report|replay`` command parses
  with the real command-line parser, every ``python benchmarks/X.py --opt`` names a file
  that exists and options it defines.
- ``yaml`` blocks parse.
Lines with a placeholder (``<run dir>``, ``...``) are skipped.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.test_configs import _compose

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What a user brings: the documented placeholders a snippet may use without defining.
PLACEHOLDERS = {
    "model",
    "train_loader",
    "val_loader",
    "dm",
    "x",
    "x_test",
    "run_dir",
    "search_module",
    "cfg",
    "trainer",
    "study",
}


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) == lang:
                line = text[: m.start()].count("\n") + 1
                out.append((f"{page.relative_to(ROOT)}:{line}", line, m.group(2)))
    return out


def _commands(block: str) -> list[str]:
    """Shell commands of a block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    cmds = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            cmds.append(line)
    return cmds


PY_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")
YAML_BLOCKS = _blocks("yaml")


def test_the_docs_have_code_blocks():
    assert len(PY_BLOCKS) >= 5 and len(BASH_BLOCKS) >= 10, (len(PY_BLOCKS), len(BASH_BLOCKS))


def _undefined_names(tree: ast.Module) -> set[str]:
    defined = set(dir(builtins)) | PLACEHOLDERS
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - defined


@pytest.mark.parametrize(("where", "line", "code"), PY_BLOCKS, ids=[b[0] for b in PY_BLOCKS])
def test_python_block(where, line, code):
    tree = ast.parse(code, filename=where)
    missing = _undefined_names(tree)
    assert not missing, f"{where}: undefined names {sorted(missing)} (import or define them)"
    imported: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eecontrol"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
                imported[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):  # eecontrol objects built from literals: build them for real
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = imported.get(node.func.id)
            if target is None or not isinstance(target, type):
                continue
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            except ValueError:
                continue  # arguments that are the user's objects
            target(*args, **kwargs)


def _compose_command(argv: list[str], where: str) -> None:
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = []
    for o in parsed:
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()))
            plain.append(f"{o.get_key_element()}={value}")
        else:
            plain.append(o.input_line)
    _compose(plain)


def _replay_parser() -> argparse.ArgumentParser:
    from eecontrol.sweep.replay import add_arguments

    parser = argparse.ArgumentParser(prog="eecontrol replay")
    add_arguments(parser)
    return parser


@pytest.mark.parametrize(("where", "line", "block"), BASH_BLOCKS, ids=[b[0] for b in BASH_BLOCKS])
def test_bash_block(where, line, block):
    for cmd in _commands(block):
        if "<" in cmd or "..." in cmd:
            continue  # a placeholder the reader fills in
        argv = shlex.split(cmd)
        while argv and re.match(r"^[A-Z_]+=", argv[0]):
            argv = argv[1:]  # VAR=value prefixes
        if not argv:
            continue
        if argv[0] == "srun":
            argv = argv[1:]
        if argv[0] == "eecontrol-train":
            if any(a.startswith("resume=") for a in argv):
                continue  # expanded by eecontrol-train itself (tests/reliability/test_resume_cli.py)
            _compose_command(argv[1:], where)
        elif argv[0] == "eecontrol":
            assert argv[1] in ("report", "replay"), f"{where}: unknown command {cmd}"
            if argv[1] == "replay":
                _replay_parser().parse_args(argv[2:])
        elif argv[0] == "python" and len(argv) > 1 and argv[1].startswith("benchmarks/"):
            script = ROOT / argv[1]
            assert script.exists(), f"{where}: {argv[1]} does not exist"
            source = script.read_text()
            for opt in argv[2:]:
                if opt.startswith("--"):
                    name = opt.split("=")[0]
                    assert f'"{name}"' in source, f"{where}: {argv[1]} has no option {name}"


@pytest.mark.parametrize(("where", "line", "block"), YAML_BLOCKS, ids=[b[0] for b in YAML_BLOCKS])
def test_yaml_block(where, line, block):
    assert yaml.safe_load(block) is not None, where
