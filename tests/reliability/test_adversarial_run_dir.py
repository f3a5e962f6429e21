"""Adversarial run directories given to ``eecontrol-train resume=<run dir>`` (issue 25).

One real run of the default recipe (1 epoch of 2 batches) is made once; each test copies
it, plants something in the copy and resumes it with the console script:

- foreign overrides (item 8): ``.hydra/overrides.yaml`` naming a callable is refused, the
  callable never runs;
- symbolic links (item 9) at ``metrics.csv``, ``hparams.yaml``, ``train.log``,
  ``checkpoints/`` and ``ces/``: refused with a one-line error, the target untouched;
- a crafted pickle as ``last.ckpt`` (item 10): a one-line error naming the file, no code run;
- a full disk during the save (items 4 and 10): the run directory on a small tmpfs, the
  temporary directory on another filesystem; a one-line error, the previous checkpoint
  intact;
- two resumes of one run at once (item 5): the second gets a clear error; a lock left by
  a killed process is taken over with a warning.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(Path(sys.executable).parent / "eecontrol-train")
BASE_ARGS = [
    "logger=csv",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "++trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
]


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "EECONTROL_ROOT": str(root),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _train(args: list[str], root: Path, **kwargs) -> subprocess.CompletedProcess:
    env = _env(root, **kwargs.pop("env", {}))
    return subprocess.run(
        [TRAIN, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, **kwargs
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One finished run of the default recipe (CES included: it has ``ces/``)."""
    root = tmp_path_factory.mktemp("base")
    out = _train(BASE_ARGS, root)
    assert out.returncode == 0, out.stderr[-3000:]
    [run] = list((root / "logs" / "train" / "runs").iterdir())
    for path in (
        "checkpoints/last.ckpt",
        "csv/version_0/metrics.csv",
        "csv/version_0/hparams.yaml",
        "train.log",
        "ces",
        ".hydra/overrides.yaml",
    ):
        assert (run / path).exists(), path
    return run


def _copy(base: Path, tmp_path: Path, name: str | None = None) -> Path:
    run = tmp_path / "logs" / "train" / "runs" / (name or base.name)
    shutil.copytree(base, run, symlinks=True)
    return run


def _one_line(stderr: str) -> str:
    lines = [
        x
        for x in stderr.splitlines()
        if x.startswith("eecontrol-train:") and not x.startswith("eecontrol-train: resuming run")
    ]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --- item 8: a run directory's overrides never run code ----------------------------------


def test_resume_never_instantiates_a_callable_planted_in_the_run_directory(base, tmp_path):
    run = _copy(base, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pwned = tmp_path / "pwned.txt"
    overrides = run / ".hydra" / "overrides.yaml"
    planted = [
        "+callbacks.pwn._target_=shutil.copyfile",
        f"+callbacks.pwn.src={victim}",
        f"+callbacks.pwn.dst={pwned}",
    ]
    overrides.write_text(overrides.read_text() + "".join(f"- {o}\n" for o in planted))
    out = _train([f"resume={run}", "trainer.max_epochs=2"], tmp_path)
    assert not pwned.exists(), "the planted callable ran"
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert "+callbacks.pwn._target_=shutil.copyfile" in line and "give them again" in line
    assert "+callbacks.pwn.src" not in line  # only what names code must be repeated
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


# --- item 9: no write through a symbolic link -------------------------------------------

LINKS = {
    "metrics.csv": "csv/version_0/metrics.csv",
    "hparams.yaml": "csv/version_0/hparams.yaml",
    "train.log": "train.log",
    "checkpoints": "checkpoints",
    "ces": "ces",
}


@pytest.mark.parametrize("what", sorted(LINKS))
def test_resume_refuses_a_symlink_planted_in_the_run_directory(base, tmp_path, what):
    run = _copy(base, tmp_path)
    planted = run / LINKS[what]
    outside = tmp_path / "outside" / what
    outside.parent.mkdir()
    shutil.move(planted, outside)  # the link's target: a copy of what was there
    planted.symlink_to(outside, target_is_directory=outside.is_dir())
    before = {p: _sha(p) for p in ([outside] if outside.is_file() else outside.rglob("*"))}
    out = _train([f"resume={run}", "trainer.max_epochs=2"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert f"{planted} is a symbolic link" in line
    assert {p: _sha(p) for p in before} == before  # the target is untouched
    assert set(outside.parent.rglob("*")) == {outside, *before}, "a file was added"


def test_the_csv_logger_and_the_checkpoint_refuse_symlinks_in_process(tmp_path):
    """The writers check too (a run started with ``hydra.run.dir`` pointing anywhere)."""
    from eecontrol.resume import ResumableCheckpoint, ResumableCSVLogger, UnsafeRunDirError
    from tests.conftest import digits_data, digits_model, make_trainer

    outside = tmp_path / "outside.csv"
    outside.write_text("precious")
    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "csv" / "version_0" / "metrics.csv").symlink_to(outside)
    logger = ResumableCSVLogger(save_dir=tmp_path, name="csv", version=0)
    with pytest.raises(UnsafeRunDirError, match=r"metrics\.csv is a symbolic link"):
        logger.log_metrics({"a": 1.0}, step=0)
        logger.save()
    assert outside.read_text() == "precious"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    trainer = make_trainer(
        tmp_path / "run",
        max_epochs=1,
        limit_train_batches=2,
        enable_checkpointing=True,
        callbacks=[ResumableCheckpoint(dirpath=tmp_path / "run" / "checkpoints")],
    )
    with pytest.raises(UnsafeRunDirError, match="checkpoints is a symbolic link"):
        trainer.fit(digits_model(), datamodule=digits_data())
    assert list(elsewhere.iterdir()) == []


# --- item 10: a crafted checkpoint ------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_as_last_ckpt_is_one_line_naming_the_file_and_runs_nothing(base, tmp_path):
    run = _copy(base, tmp_path)
    marker = tmp_path / "ran"
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(pickle.dumps(_Evil(marker)))
    before = _sha(ckpt)
    out = _train([f"resume={run}", "trainer.max_epochs=2"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert f"{ckpt} is not a loadable checkpoint" in line
    assert not marker.exists() and _sha(ckpt) == before


# --- items 4 and 10: a full disk during the save ----------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mounts a tmpfs of 4 MiB at ``tmp_path/disk`` (skips where mount is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = 4096
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield disk, size_kb * 1024
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_the_save_is_one_line_and_the_previous_checkpoint_survives(
    base, tmp_path, small_tmpfs
):
    """The run directory on a small tmpfs, ``TMPDIR`` on another filesystem (``/dev/shm``
    or the test's own directory): the new checkpoint does not fit beside the old one."""
    disk, size = small_tmpfs
    run = _copy(base, disk, "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    before = _sha(ckpt)
    other_fs = tmp_path / "tmpdir"
    other_fs.mkdir()
    assert os.stat(other_fs).st_dev != os.stat(disk).st_dev
    # fill the disk so that less than one more checkpoint fits (but the run's logs do)
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - ckpt.stat().st_size // 2))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize < ckpt.stat().st_size, used
    out = _train([f"resume={run}", "trainer.max_epochs=2"], tmp_path, env={"TMPDIR": str(other_fs)})
    assert out.returncode == 1, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert f"could not write the checkpoint {ckpt}" in line and "intact" in line
    assert _sha(ckpt) == before  # the previous checkpoint, whole
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    assert size  # (the tmpfs size, for the record)


def test_the_checkpoint_is_written_beside_its_target_and_renamed(tmp_path, monkeypatch):
    """Whatever ``TMPDIR`` is, the temporary file is in the checkpoint's directory."""
    import eecontrol.resume as resume
    from eecontrol.resume import ResumableCheckpoint
    from tests.conftest import digits_data, digits_model, make_trainer

    monkeypatch.setenv("TMPDIR", "/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path))
    seen: list[tuple[Path, Path]] = []
    real = resume.os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(resume.os, "replace", spy)
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        enable_checkpointing=True,
        callbacks=[ResumableCheckpoint(dirpath=tmp_path / "checkpoints")],
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and torch.load(last, weights_only=True)["global_step"] == 2
    assert [dst for _, dst in seen] == [last]
    assert all(src.parent == last.parent for src, _ in seen)


# --- item 5: one writer per run directory -----------------------------------------------


def test_a_second_resume_of_a_running_run_gets_a_clear_error_and_a_stale_lock_is_taken_over(
    base, tmp_path
):
    run = _copy(base, tmp_path)
    lock = run / ".eecontrol.lock"
    first = subprocess.Popen(
        [TRAIN, f"resume={run}", "trainer.max_epochs=1000"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not lock.is_file() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert lock.is_file() and first.poll() is None, "the first resume never took the lock"
        assert f'"pid": {first.pid}' in lock.read_text()
        rows_before = (run / "csv" / "version_0" / "metrics.csv").read_text().count("\n")
        second = _train([f"resume={run}", "trainer.max_epochs=2"], tmp_path)
        assert second.returncode == 1, second.stderr[-3000:]
        line = _one_line(second.stderr)
        assert f"in use by pid {first.pid}" in line and str(lock) in line
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert lock.is_file()  # left by the SIGKILL: stale now
    rows = (run / "csv" / "version_0" / "metrics.csv").read_text().count("\n")
    assert rows >= rows_before
    epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    third = _train([f"resume={run}", f"trainer.max_epochs={epoch + 2}"], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the stale lock {lock} of pid {first.pid}" in third.stderr
    assert not lock.exists()  # released at the end
