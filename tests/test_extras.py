"""Missing extras are named: launchers before Hydra runs, packages when a job imports them;
third-party noise is silenced once by eecontrol-train."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import eecontrol.conf
import pytest
from packaging.requirements import Requirement

from eecontrol.extras import MODULES, check_launchers, explain_missing_module, launchers_needed
from tests._helpers import run_ok

CONF = Path(eecontrol.conf.__file__).parent


def test_every_mapped_distribution_is_in_its_extra():
    by_extra: dict[str, set[str]] = {}
    for line in metadata.requires("eecontrol"):
        req = Requirement(line)
        for extra in metadata.metadata("eecontrol").get_all("Provides-Extra"):
            if req.marker is not None and req.marker.evaluate({"extra": extra}):
                by_extra.setdefault(extra, set()).add(req.name.lower())
    for module, (dist, extra) in MODULES.items():
        assert dist.lower() in by_extra[extra], (module, dist, extra)


def test_launchers_found_on_the_command_line_and_in_named_configs():
    assert launchers_needed(["hydra/launcher=joblib"], CONF) == {"joblib"}
    assert launchers_needed(["hparams_search=digits_optuna"], CONF) == {"joblib"}
    assert "slurm" in launchers_needed(["hparams_search=digits_curves_slurm"], CONF)
    assert launchers_needed(["experiment=early_dropout", "trainer.max_epochs=2"], CONF) == set()
    assert check_launchers(["hparams_search=digits_optuna"], CONF) is None  # installed here


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # a real failed import
    with pytest.raises(ModuleNotFoundError) as info:
        import transformers  # noqa: F401
    err = explain_missing_module(info.value)
    assert "pip install 'eecontrol[text]'" in str(err) and err.name == "transformers"
    plain = ModuleNotFoundError("No module named 'foo'", name="foo")
    assert explain_missing_module(plain) is plain


@pytest.mark.timeout(300)
def test_a_missing_launcher_plugin_stops_eecontrol_train_with_the_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['hydra_plugins.hydra_joblib_launcher'] = None\n"  # as if not installed
        "from eecontrol.train import main\n"
        "sys.argv = ['eecontrol-train', '-m', 'hparams_search=digits_optuna']\n"
        "main()\n"
    )
    env = {**os.environ, "EECONTROL_ROOT": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "pip install 'eecontrol[sweeps]'" in out.stderr
    assert "hydra/launcher=joblib" in out.stderr
    assert not (tmp_path / "logs").exists(), "nothing ran"


def test_train_silences_the_litlogger_tip_and_leafspec_warning(tmp_path):
    code = """
        import logging, warnings
        from eecontrol._quiet import silence_third_party_noise
        silence_third_party_noise(); silence_third_party_noise()
        from lightning.pytorch.utilities.rank_zero import rank_zero_info
        logging.basicConfig(level=logging.INFO)
        rank_zero_info('Tip: try installing litlogger')
        rank_zero_info('kept message')
        warnings.warn('`isinstance(treespec, LeafSpec)` is deprecated, use ...')
        warnings.warn('another warning')
    """
    out = run_ok([sys.executable, "-c", textwrap.dedent(code)], timeout=120)
    assert "kept message" in out.stderr and "another warning" in out.stderr
    assert "litlogger" not in out.stderr and "LeafSpec" not in out.stderr
