"""docs/settings.md is the matrix's tables as users read them."""

from __future__ import annotations

from tests.settings.doc import PAGE, render


def test_docs_page_matches_the_matrix_tables():
    assert PAGE.is_file(), "docs/settings.md is missing: python -m tests.settings.doc"
    assert PAGE.read_text() == render(), (
        "docs/settings.md differs from the matrix tables: regenerate with "
        "`python -m tests.settings.doc`"
    )
