"""A non-editable install in a new virtual environment imports and finds its configs."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_wheel_install_in_a_new_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # What a user installing a release gets: a wheel built from the tree, installed alone.
    dist = tmp_path / "dist"
    build = subprocess.run(
        [str(py), "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "is deprecated"):
        assert warning not in build.stdout + build.stderr, warning  # a clean build
    wheels = list(dist.glob("eecontrol-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", str(wheels[0])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # Dependencies come from this environment (no download): a .pth adds its site-packages
    # after the new venv's own, so eecontrol itself is the freshly installed copy.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run(
        [
            str(py),
            "-c",
            "import eecontrol, eecontrol.conf, eecontrol.recipes.digits as d; "
            "print(eecontrol.__version__); print(eecontrol.__file__); print(eecontrol.conf.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    version, module_file, conf_file = check.stdout.split()
    assert version == "0.1.0"
    assert str(venv) in module_file and str(venv) in conf_file, (
        "imported the source tree, not the install"
    )
    assert (Path(module_file).parent / "py.typed").exists()  # typed package (PEP 561)
    assert list(Path(site).glob("eecontrol-*.dist-info/licenses/LICENSE"))
    cfg = subprocess.run(
        [str(venv / "bin" / "eecontrol-train"), "--cfg", "job", "experiment=late_dropout"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert cfg.returncode == 0, cfg.stderr[-3000:]
    assert "eecontrol.DropoutSchedule" in cfg.stdout and "mode: late" in cfg.stdout
    # ... and trains: the default recipe, two short epochs, from the installed wheel alone
    run = subprocess.run(
        [
            str(venv / "bin" / "eecontrol-train"),
            "logger=csv",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=4",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "EECONTROL_ROOT": str(tmp_path / "runs")},
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    runs = list((tmp_path / "runs" / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "decisions.jsonl").read_text().strip()
    assert (runs[0] / "summary.json").exists()
