"""report.html in a real headless browser: every image decodes, the decisions table renders,
and the page logs no console error.

CI installs Debian's ``chromium`` (``.ci/run``); where it is absent outside CI the test is
skipped with the reason, and in CI (``CI=true``) a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.report.runreport import report_run
from tests.report.test_report import _fit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags that keep a headless Chromium off the network (this machine has none).
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run) for the browser test")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    return CHROMIUM


def _open(page_path: Path) -> dict:
    """Opens the page headless and returns what the browser saw."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_browser_or_skip(), args=FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            seen = page.evaluate(
                """() => ({
                  images: Array.from(document.images).map(i => ({
                    alt: i.alt, complete: i.complete, width: i.naturalWidth})),
                  decisionRows: Array.from(
                    document.querySelectorAll('table.decisions tr')).slice(1).map(
                    r => Array.from(r.cells).map(c => c.innerText)),
                  decisionTableHeight: (document.querySelector('table.decisions') || {})
                    .offsetHeight || 0,
                })"""
            )
        finally:
            browser.close()
    seen["errors"] = errors
    return seen


@pytest.mark.timeout(300)
def test_report_renders_in_a_real_browser(tmp_path):
    _browser_or_skip()
    root, _trainer = _fit(tmp_path)
    _art, plots, page = report_run(root)
    assert page.exists() and plots, "the report and its plots were written"
    decisions = [json.loads(x) for x in (root / DECISIONS_FILE).read_text().splitlines()]
    assert len(decisions) >= 4

    seen = _open(page)

    assert len(seen["images"]) == len(plots) > 0
    broken = [i["alt"] for i in seen["images"] if not i["complete"] or i["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert len(seen["decisionRows"]) == len(decisions)
    assert [row[3] for row in seen["decisionRows"]] == [d["action"] for d in decisions]
    assert seen["decisionTableHeight"] > 0, "the decisions table is not laid out"
    assert seen["errors"] == []


@pytest.mark.timeout(120)
def test_a_broken_image_is_seen(tmp_path):
    """The check can fail: a page with a corrupt image is caught by the same probe."""
    _browser_or_skip()
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img alt="bad" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    seen = _open(page)
    assert [i["width"] for i in seen["images"]] == [0]
    assert any("boom" in e for e in seen["errors"])
