"""Resume safety in-process: no data lost on resume, no symlink followed, no code in checkpoints."""

from __future__ import annotations

import http.server
import json
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from eecontrol import DropoutSchedule
from eecontrol.report.runreport import report_run, write_summary
from eecontrol.resume import (
    EpochSeededSampler,
    ResumableCheckpoint,
    redact_url,
    resume_overrides,
    rewrite_argv,
)
from eecontrol.train import _checkpoint_path, train
from tests.conftest import digits_data, digits_model, make_trainer


def _fit(root: Path, callbacks: list, epochs: int, ckpt: Path | None = None):
    trainer = make_trainer(
        root,
        max_epochs=epochs,
        limit_train_batches=2,
        enable_checkpointing=True,
        callbacks=[*callbacks, ResumableCheckpoint(dirpath=root / "checkpoints")],
    )
    trainer.fit(digits_model(), datamodule=digits_data(), ckpt_path=ckpt, weights_only=True)
    return trainer


def _journal(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_last_ckpt_exists_after_the_first_epoch_and_follows_every_epoch(tmp_path):
    _fit(tmp_path, [], 1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 2
    _fit(tmp_path, [], 3, last)
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_a_callback_identity_change_on_resume_keeps_the_old_journal(tmp_path):
    _fit(tmp_path, [DropoutSchedule(mode="early", cutoff=0.5)], 2)
    journal = tmp_path / "decisions.jsonl"
    before = _journal(journal)
    assert [d["action"] for d in before] == ["schedule", "dropout_off"]
    with pytest.warns(UserWarning):  # Lightning: the checkpoint's callback is not in the Trainer
        _fit(
            tmp_path,
            [DropoutSchedule(mode="late", cutoff=0.5)],
            3,
            tmp_path / "checkpoints" / "last.ckpt",
        )
    backups = sorted(tmp_path.glob("decisions.jsonl.*"))
    assert len(backups) == 1, backups
    assert _journal(backups[0]) == before  # the early-mode decisions survived
    assert all("late" in d["key"] for d in _journal(journal))


def test_writes_in_the_run_directory_never_follow_symlinks(tmp_path):
    run = tmp_path / "run"
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run.mkdir()
    (run / "decisions.jsonl").symlink_to(outside)
    _fit(run, [DropoutSchedule(mode="early", cutoff=0.5)], 1)
    assert not (run / "decisions.jsonl").is_symlink() and _journal(run / "decisions.jsonl")
    (run / "report").mkdir()
    (run / "report" / "report.html").symlink_to(outside)
    (run / "report" / "metrics.png").symlink_to(outside)
    (run / "summary.json").symlink_to(outside)
    write_summary(run, {"x": 1})
    _, _, page = report_run(run)
    assert page.is_file() and not page.is_symlink() and "<html>" in page.read_text()
    assert not (run / "summary.json").is_symlink()
    assert outside.read_text() == "precious"


def test_sampler_order_depends_on_seed_and_epoch_only():
    a, b = EpochSeededSampler(range(50), seed=3), EpochSeededSampler(range(50), seed=3)
    a.set_epoch(4)
    list(b)  # b has drawn epoch 0 and moved on: its own history does not matter
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    a.set_epoch(5)
    assert list(a) != list(b)
    c = EpochSeededSampler(range(50), seed=3)  # without Lightning: every iteration a new epoch
    assert list(c) != list(c)


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`ckpt_path=last`.*resume=<run dir>"):
        _checkpoint_path("last", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert _checkpoint_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")


def test_resume_argument_becomes_the_runs_own_overrides(tmp_path):
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "- experiment=early_dropout\n- trainer.max_epochs=7\n- ckpt_path=/old.ckpt\n"
    )
    with pytest.raises(FileNotFoundError, match="never reached its first checkpoint"):
        resume_overrides(str(run), tmp_path)
    (run / "checkpoints").mkdir()
    # a loadable checkpoint: the resume reads its step and epoch (and refuses garbage)
    torch.save({"global_step": 0, "epoch": 0}, run / "checkpoints" / "last.ckpt")
    argv = rewrite_argv(["resume=last", "trainer.max_epochs=9"], run.parent)
    assert argv == [
        "experiment=early_dropout",
        "trainer.max_epochs=7",
        f"hydra.run.dir={run.resolve()}",
        f"ckpt_path={run.resolve() / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=9",
    ]
    with pytest.raises(ValueError, match="cannot be used with -m"):
        rewrite_argv(["-m", f"resume={run}"], run.parent)


def test_redact_url():
    assert (
        redact_url("postgresql://user:s3cr:et@host:5432/db") == "postgresql://user:***@host:5432/db"
    )
    assert redact_url("postgresql+psycopg://u:p@h/db?x=1") == "postgresql+psycopg://u:***@h/db?x=1"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert redact_url("postgresql://user@host/db") == "postgresql://user@host/db"
    assert redact_url(3) == 3


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_remote_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    """``ckpt_path=http://...`` through eecontrol-train's own train(): weights_only=True refuses it."""
    marker = tmp_path / "pwned"
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"state_dict": _Evil(marker)}, served / "evil.ckpt")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
    try:
        with initialize_config_module("eecontrol.conf", version_base="1.3"):
            cfg = compose(
                "train.yaml",
                [
                    f"paths.output_dir={tmp_path / 'run'}",
                    "logger=none",
                    "callbacks=[model_checkpoint]",
                    "trainer.max_epochs=1",
                    "test=false",
                    f"ckpt_path={url}",
                ],
            )
        with pytest.raises(Exception, match=r"Weights only load failed|weights_only"):
            train(cfg)
    finally:
        server.shutdown()
    assert not marker.exists(), "the checkpoint's code ran"
