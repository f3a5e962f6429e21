"""One self-contained HTML page per run or sweep: plots inlined, every decision listed."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from eecontrol.report.artifacts import RunArtifacts
from eecontrol.report.figures import Plot
from eecontrol.util.files import safe_file

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f2f2f2}figure{margin:1.5em 0}figcaption{font-size:13px;color:#555}
img{max-width:100%}code{font-size:12px}
table.runs{table-layout:fixed;width:100%}table.runs td{overflow-wrap:anywhere}
td{overflow-wrap:anywhere}
"""

#: the sweep table's main columns; every other summary key goes into the run's "details" cell
SWEEP_COLUMNS = ("objective", "best_so_far", "epochs_used", "global_step", "stop_reason")


def fmt_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits, integral floats as integers."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _figures(plots: list[Plot]) -> str:
    return "".join(
        f"<figure><h3>{html.escape(p.title)}</h3>{_img(p.path)}<figcaption>{html.escape(p.caption)}</figcaption></figure>"
        for p in plots
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt_value(v) if isinstance(v, int | float | str) or v is None else json.dumps(v))}</td></tr>"
        for k, v in data.items()
    )
    return f"<table>{rows}</table>"


def decisions_html(art: RunArtifacts) -> str:
    """The decisions as an HTML table (every decision, nothing elided)."""
    if not art.decisions:
        return "<p>No decisions: no eecontrol callback acted in this run.</p>"
    head = "<tr><th>step</th><th>epoch</th><th>callback</th><th>action</th><th>reason</th><th>evidence</th></tr>"
    rows = "".join(
        "<tr>"
        f"<td>{d.step}</td><td>{d.epoch}</td><td>{html.escape(d.callback.split('{')[0])}</td>"
        f"<td>{html.escape(d.action)}</td><td>{html.escape(d.reason)}</td>"
        f"<td><code>{html.escape(json.dumps(d.evidence))}</code></td></tr>"
        for d in art.decisions
    )
    return f'<table class="decisions">{head}{rows}</table>'


def write_run_page(art: RunArtifacts, plots: list[Plot], out: Path) -> Path:
    """Writes ``report.html`` for one run and returns its path."""
    body = [
        f"<h1>eecontrol report: {html.escape(art.name)}</h1>",
        f"<p><code>{html.escape(str(art.path))}</code></p>",
    ]
    if art.summary:
        body += ["<h2>Summary</h2>", _kv_table(art.summary)]
    body += [
        f"<h2>Decisions ({len(art.decisions)})</h2>",
        decisions_html(art),
        "<h2>Plots</h2>",
        _figures(plots),
    ]
    path = safe_file(out / "report.html")  # a symlink there is replaced, never followed
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>eecontrol report</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    return path


def write_sweep_page(sweep: Path, runs: list[RunArtifacts], plots: list[Plot], out: Path) -> Path:
    """Writes ``report.html`` for a sweep: one row per run (best first), the curves, every decision.

    Runs are named by their overrides; the table keeps a few columns (rounded values) and
    puts every other summary number in a details cell, so that it fits a 1280 px page.
    """
    metric = next(
        (a.summary["optimized_metric"] for a in runs if a.summary.get("optimized_metric")), None
    )
    header = [
        "#",
        "run (overrides)",
        *(f"objective ({metric})" if c == "objective" and metric else c for c in SWEEP_COLUMNS),
        "details",
    ]
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    rows = []
    for i, art in enumerate(runs, start=1):
        details = ", ".join(
            f"{k}={fmt_value(v)}"
            for k, v in art.summary.items()
            if k not in SWEEP_COLUMNS and k != "optimized_metric" and not isinstance(v, dict | list)
        )
        cells = [str(i), art.display_name, *(fmt_value(art.summary.get(c)) for c in SWEEP_COLUMNS)]
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + f"<td><small>{html.escape(details)}</small></td></tr>"
        )
    widths = (
        "<colgroup><col style='width:3%'><col style='width:22%'>"
        + ("<col style='width:9%'>" * 4)
        + "<col style='width:18%'><col style='width:21%'></colgroup>"
    )
    rows_html = "".join(rows)
    body = [
        f"<h1>eecontrol sweep report: {html.escape(sweep.name)}</h1>",
        f"<p><code>{html.escape(str(sweep))}</code>: {len(runs)} runs</p>",
        f"<h2>Runs (best first)</h2><table class='runs'>{widths}{head}{rows_html}</table>",
        "<h2>Plots</h2>",
        _figures(plots),
        "<h2>Decisions</h2>",
        "".join(f"<h3>{html.escape(a.display_name)}</h3>{decisions_html(a)}" for a in runs),
    ]
    path = safe_file(out / "report.html")
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>eecontrol sweep report</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    return path
