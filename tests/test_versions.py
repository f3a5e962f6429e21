"""``eecontrol --version``: the version, which extras are installed, the main packages."""

from __future__ import annotations

from importlib import metadata

from eecontrol.cli import main as cli_main
from eecontrol.versions import MAIN_PACKAGES, extras_status, version_text


def test_version_lists_extras_and_main_packages(capsys):
    try:
        cli_main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"eecontrol {metadata.version('eecontrol')}"
    assert out == version_text().splitlines()
    assert f"torch {metadata.version('torch')}" in out
    assert len([x for x in out if x.split()[0] in MAIN_PACKAGES]) == len(MAIN_PACKAGES)


def test_extras_status_matches_what_is_installed():
    status = extras_status()
    declared = set(metadata.metadata("eecontrol").get_all("Provides-Extra"))
    assert {"dev", "text", "sweeps", "slurm"} <= set(status) <= declared
    assert status["dev"] == [], "the test suite runs with the dev extra installed"
    for extra, missing in status.items():
        for name in missing:  # each package said to be missing really is
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
            req = next(r for r in metadata.requires("eecontrol") if r.startswith(name))
            assert have, (extra, name, req)  # installed but outside the required range
        line = [x for x in version_text().splitlines() if f"extra {extra}:" in x]
        assert bool(line) == bool(missing), extra
