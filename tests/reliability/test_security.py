"""Security checks: safe checkpoint loading, and no secret in the run directory."""

from __future__ import annotations

import ast
import os
import secrets
import sys
from pathlib import Path

import pytest

from tests._helpers import run_ok
from tests.sweep.postgres import postgres  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def _torch_loads_without_weights_only() -> list[str]:
    bad = []
    for folder in ("eecontrol", "recipes", "benchmarks"):
        for file in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(file.read_text())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    safe = any(
                        kw.arg == "weights_only"
                        and isinstance(kw.value, ast.Constant)
                        and kw.value.value is True
                        for kw in node.keywords
                    )
                    if not safe:
                        bad.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_torch_load_uses_weights_only():
    assert _torch_loads_without_weights_only() == []


@pytest.mark.e2e
def test_no_secret_is_written_to_the_run_directory(tmp_path, postgres):  # noqa: F811
    """A W&B API key and a curve-store password (a real PostgreSQL role) never reach a file.

    The store URL comes from ``EECONTROL_CURVE_STORE`` as the SLURM recipe says; the run
    reports its curve to the server, writes checkpoints, CSV hparams, W&B offline files.
    """
    secret = "eecontrol-test-" + secrets.token_hex(16)
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": secret,
        "EECONTROL_CURVE_STORE": postgres.url,
    }
    train = Path(sys.executable).parent / "eecontrol-train"
    out = run_ok(
        [
            train,
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=3",
            "callbacks=[default,curve_stopping]",
            "callbacks.curve_stopping.store=${oc.env:EECONTROL_CURVE_STORE}",
            "callbacks.curve_stopping.study_name=secret-check",
        ],
        cwd=tmp_path,
        env=env,
    )
    import optuna

    trials = optuna.load_study(study_name="secret-check", storage=postgres.url).trials
    assert len(trials) == 1 and len(trials[0].intermediate_values) == 2  # the store was used
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "last.ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "hparams.yaml" for p in files)
    assert (
        "postgresql+psycopg://sweeper:***@"
        in next(p for p in files if p.name == "hparams.yaml").read_text()
    )
    for value in (secret, postgres.secret):
        assert value not in out.stdout and value not in out.stderr
        leaked = [str(p) for p in files if value.encode() in p.read_bytes()]
        assert leaked == [], f"{value[:8]}... leaked into {leaked}"


# --- issue 25 item 7: every credential form, every file a run and a sweep write ----------


def _leaks(root: Path, values: list[str], *texts: str) -> list[str]:
    """Where any of ``values`` appears: files under ``root`` (links not followed) and texts."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {v[:6]}..." for v in values if v.encode() in data]
    for i, text in enumerate(texts):
        hits += [f"output {i}: {v[:6]}..." for v in values if v in text]
    return hits


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_no_credential_form_is_written_by_a_run_or_a_sweep(tmp_path, postgres):  # noqa: F811
    """URL userinfo, a ``password=`` query parameter and a ``${oc.env:...}`` token, given on
    the command line, reach no file of a run (checkpoint, ``.hydra/``, hparams.yaml, W&B
    offline files, train.log) or of a sweep (``optimization_results.yaml``, every job's
    files) and
    neither the console; the stores were really used with them."""
    from urllib.parse import urlparse

    token = "tok-" + secrets.token_hex(12)
    host = postgres.url.split("?host=", 1)[1]
    query_url = f"postgresql+psycopg://sweeper@/sweeps?host={host}&password={postgres.secret}"
    assert urlparse(postgres.url).password == postgres.secret  # the userinfo form
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "EECONTROL_TEST_TOKEN": token,
        "EECONTROL_ROOT": str(tmp_path),
    }
    train = str(Path(sys.executable).parent / "eecontrol-train")
    run = run_ok(
        [
            train,
            "trainer.max_epochs=2",
            "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=2",
            "callbacks=[default,curve_stopping]",
            f"callbacks.curve_stopping.store='{query_url}'",  # quoted: it has "="
            "callbacks.curve_stopping.study_name=query-form",
            "+note=${oc.env:EECONTROL_TEST_TOKEN}",  # config only (tags would go to W&B as asked)
        ],
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    sweep = run_ok(
        [
            train,
            "-m",
            "hparams_search=digits_optuna",
            "hydra/launcher=basic",
            f"hydra.sweeper.storage='{query_url}'",
            "hydra.sweeper.study_name=secret-sweep",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=2",
            "callbacks=[default,curve_stopping]",
            f"callbacks.curve_stopping.store='{postgres.url}'",
            "callbacks.curve_stopping.study_name=userinfo-form",
            "+note=${oc.env:EECONTROL_TEST_TOKEN}",  # config only (tags would go to W&B as asked)
        ],
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    import optuna

    # the stores were used with the real credentials
    assert len(optuna.load_study(study_name="secret-sweep", storage=postgres.url).trials) == 2
    for study in ("query-form", "userinfo-form"):
        assert optuna.get_all_study_names(postgres.url).count(study) == 1, study
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # (the eecontrol_optuna sweeper writes optimization_results.yaml, not Hydra's multirun.yaml)
    expected = {"last.ckpt", "overrides.yaml", "config.yaml", "hydra.yaml", "hparams.yaml"}
    assert expected | {"optimization_results.yaml", "train.log"} <= names, sorted(names)
    assert any(p.suffix == ".wandb" for p in files)
    [single] = list((tmp_path / "logs" / "train" / "runs").glob("*/.hydra/overrides.yaml"))
    assert "password=***" in single.read_text()  # the override is kept, its value hidden
    leaked = _leaks(
        tmp_path / "logs",
        [postgres.secret, token],
        run.stdout,
        run.stderr,
        sweep.stdout,
        sweep.stderr,
    )
    assert leaked == []
