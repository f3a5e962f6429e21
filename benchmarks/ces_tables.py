"""Markdown tables for the README from the CES benchmark's JSON files.

python benchmarks/ces_tables.py benchmarks/results/ces_regression.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("ces", "naive", "data_splitting", "full")
PAPER = {  # ../shared/CES.md: width / coverage, alpha = 0.1, 1000 epochs
    ("concrete", 200): "26.9 / 0.928 · 24.8 / 0.903 · 29.0 / 0.924 · 28.7 / 0.926",
    ("concrete", 500): "19.2 / 0.913 · 18.3 / 0.896 · 22.9 / 0.919 · 19.9 / 0.903",
    ("concrete", 930): "14.4 / 0.908 · 13.7 / 0.899 · 16.7 / 0.906 · 15.0 / 0.908",
    ("bio", 500): "17.4 / 0.914 · 17.4 / 0.910 · 18.1 / 0.911 · 18.2 / 0.918",
    ("bio", 2000): "15.8 / 0.899 · 15.8 / 0.899 · 16.0 / 0.900 · 17.0 / 0.902",
}


def _cell(summary: dict, size: str, cover: str) -> str:
    return f"{summary[size]:.3g} / {summary[cover]:.3f} (±{summary[cover + '_se']:.3f})"


CQR_METHODS = ("ces", "ces_union", "naive", "naive_theory", "data_splitting", "full")
PAPER_CQR_METHODS = ("ces", "naive", "naive_theory", "data_splitting", "full")


def _maybe(summary: dict, method: str, size: str, cover: str, fixed: bool = False) -> str:
    if method not in summary:
        return "-"
    cell = summary[method]
    if cell[size] == float("inf"):
        return f"inf (whole line) / {cell[cover]:.3f}"
    if fixed:  # CQR widths in the scaled outcome: 3 decimals, as the paper's tables
        return f"{cell[size]:.3f} / {cell[cover]:.3f} (±{cell[cover + '_se']:.3f})"
    return _cell(cell, size, cover)


def _difference(summary: dict) -> str:
    if "ces_minus_ds" not in summary:
        return "-"
    d = summary["ces_minus_ds"]
    return f"{d['width']:+.3f} (±{d['width_se']:.3f})"


def _cqr_table(rows: list) -> list[str]:
    lines = [
        "| data, n (hold-out) | epochs, warm-up, T | CES (hull) | CES (exact union) | naive | naive + theory | data splitting | full training | CES - DS width (paired) | paper, 2000 epochs, no warm-up (CES · naive · n+t · DS · full) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(rows, key=lambda r: (r[0] != "concrete", r[0], r[1], r[5].get("warmup", 0)))
    for name, n, hold, epochs, _reps, s in rows:
        cells = " | ".join(
            _maybe(s["summary"], m, "width", "coverage", fixed=True) for m in CQR_METHODS
        )
        paper = s.get("paper")
        ref = (
            " · ".join(f"{paper[m][0]:.3f} / {paper[m][1]:.3f}" for m in PAPER_CQR_METHODS)
            if paper
            else ("not reported" if name != "bio" else "")
        )
        lines.append(
            f"| {name} {n} ({hold}) | {epochs}, {s.get('warmup', 0)}, "
            f"{s.get('candidates', '-')} | {cells} | {_difference(s['summary'])} | {ref} |"
        )
    lines += [
        "",
        "Cells: mean interval width in the scaled outcome (y / mean |y_train|, the paper's unit) / "
        "empirical coverage (± its standard error over the splits). Warm-up: epochs before the "
        "first candidate (the same candidates for every method); 0 is the paper's schedule.",
        "",
    ]
    return lines


def _section(header: str, rows: list[str], note: str) -> list[str]:
    """One Markdown table: the header, its separator, the rows, then a blank line, the note
    under the table and a blank line."""
    separator = "|" + "---|" * header.count(" | ") + "---|"
    return [header, separator, *rows, "", note, ""]


def _regression_row(name: str, n: int, hold: int, epochs: int, _reps: int, s: dict) -> str:
    cells = " | ".join(_cell(s["summary"][m], "width", "coverage") for m in METHODS)
    theory = _maybe(s["summary"], "naive_theory", "width", "coverage")
    return f"| {name} {n} ({hold}) | {epochs} | {cells} | {theory} | {PAPER.get((name, n), '-')} |"


def _classification_row(_name: str, n: int, hold: int, _epochs: int, _reps: int, s: dict) -> str:
    kind = "label-conditional" if s["conditional"] else "marginal"
    cells = " | ".join(_cell(s["summary"][m], "size", "coverage") for m in METHODS)
    return f"| {n} ({hold}), {kind} | {cells} |"


def _outlier_row(_name: str, n: int, hold: int, _epochs: int, _reps: int, s: dict) -> str:
    cells = " | ".join(
        f"{s['summary'][m]['power']:.3f} / {s['summary'][m]['type1']:.3f} (±{s['summary'][m]['type1_se']:.3f})"
        for m in METHODS
    )
    return f"| {n} ({hold}) | {cells} |"


def tables(files: list[Path]) -> str:
    """Regression, quantile-regression, classification and outlier tables from result files."""
    reg, cls, out, cqr = [], [], [], []
    for file in files:
        data = json.loads(file.read_text())
        for s in data.get("settings", []):
            row = (s["data"], s["n"], s["n_hold"], s["epochs"], s["reps"], s)
            groups = {"regression": reg, "classification": cls, "outlier": out, "quantile": cqr}
            groups[s["task"]].append(row)
    lines = _cqr_table(cqr) if cqr else []
    sections = [
        (
            reg,
            "| data, n (hold-out) | epochs | CES | naive | data splitting | full training | naive + theory | paper (CES · naive · DS · full) |",
            _regression_row,
            "Cells: mean interval width / empirical coverage (± its standard error over the splits).",
        ),
        (
            cls,
            "| digits n (hold-out), sets | CES | naive | data splitting | full training |",
            _classification_row,
            "Cells: mean set size / empirical coverage (± standard error).",
        ),
        (
            out,
            "| digits inliers n (hold-out) | CES | naive | data splitting | full training |",
            _outlier_row,
            "Cells: power on outliers / type-I error on held-out inliers (± standard error), alpha = 0.1.",
        ),
    ]
    for group, header, row, note in sections:
        if group:
            lines += _section(header, [row(*g) for g in group], note)
    if out:
        lines.pop()  # no blank line after the last table
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables([Path(p) for p in sys.argv[1:]]))
