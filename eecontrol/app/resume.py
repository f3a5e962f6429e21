"""Resuming a run from the command line: ``resume=<run dir>``, the run's lock and its checks.

- :func:`resume_overrides`: what ``eecontrol-train resume=<run dir>`` turns into.
- :func:`rewrite_argv`: the command line with ``resume=...`` expanded.
- :class:`RunLock`, :func:`check_run_dir`: one writer per run directory, no symlinks in it.

Importing this module imports neither torch nor Lightning (``eecontrol-train --help`` stays
light); :func:`describe_checkpoint` loads torch when called.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eecontrol.util.files import CHECKPOINT_DIR, LAST, UnsafeRunDirError, is_remote, refuse_symlinks
from eecontrol.util.redact import redact_text


def rank_zero_warn(message: str) -> None:
    """Lightning's ``rank_zero_warn``, imported when a warning is given."""
    from lightning.pytorch.utilities import rank_zero_warn as warn

    warn(message)


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a local checkpoint (loaded with ``weights_only=True``)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


_RUN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{2}-\d{2}-\d{2}-\d{6})$")


def _started(run: Path) -> tuple[int, str]:
    """A run directory's start time as a sort key: its timestamped name, else its mtime."""
    if _RUN_NAME.match(run.name):
        return (1, run.name)  # Hydra's ${now:...}_${now:...}: sorts as the start time
    return (0, f"{run.stat().st_mtime:020.6f}")


def latest_run(runs_dir: Path) -> Path:
    """``resume=last``: the newest run directory under ``runs_dir`` that has a ``last.ckpt``.

    "Newest" is the run that started last (the timestamp Hydra puts in the directory name;
    the modification time for other names), not the checkpoint written last: an older run
    resumed later is not "last". Newer runs that have no checkpoint are skipped with a
    warning naming them.

    Raises:
        FileNotFoundError: naming ``resume=last`` and the directory searched.
    """
    runs = sorted((p for p in runs_dir.glob("*") if p.is_dir()), key=_started)
    skipped: list[str] = []
    for run in reversed(runs):
        if (run / CHECKPOINT_DIR / LAST).is_file():
            if skipped:
                rank_zero_warn(
                    f"`resume=last`: newer runs without {CHECKPOINT_DIR}/{LAST} skipped: "
                    f"{', '.join(skipped)}."
                )
            return run
        skipped.append(run.name)
    raise FileNotFoundError(
        f"`resume=last`: no run with {CHECKPOINT_DIR}/{LAST} under {runs_dir} "
        f"(EECONTROL_ROOT moves logs/); pass `resume=<run dir>` instead."
    )


# keys and values of a recorded override that make Hydra run code or read configs from
# elsewhere: a resume never takes them from a run directory
_CODE_KEYS = ("_target_", "_partial_", "_args_", "_call_", "_recursive_", "_convert_")
_CODE_PREFIXES = (
    "hydra.searchpath",
    "hydra.callbacks",
    "hydra/",
    "hydra.job_logging",
    "hydra.hydra_logging",
    "hydra.job.env_set",
    "hydra.launcher",
    "hydra.sweeper",
)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def names_code(override: str) -> bool:
    """Whether an override can make Hydra instantiate a callable (or find configs elsewhere).

    True for a key or value with ``_target_`` (and ``_partial_``, ``_args_``, ...), and for
    Hydra's own search path, callbacks, launcher, sweeper and logging keys.
    """
    key = _key(override)
    value = override.split("=", 1)[1] if "=" in override else ""
    return any(k in key or k in value for k in _CODE_KEYS) or key.startswith(_CODE_PREFIXES)


class ResumeError(ValueError):
    """``resume=<run dir>`` cannot continue that run as asked (message says why and what to do)."""


def resume_overrides(
    value: str, runs_dir: Path, given: Sequence[str] = ()
) -> tuple[Path, list[str]]:
    """Turns ``resume=<run dir>`` (or ``resume=last``) into the Hydra overrides that continue it.

    The run's own command-line overrides (``.hydra/overrides.yaml``) come first, then the run
    directory (``hydra.run.dir``) and ``ckpt_path`` of its ``last.ckpt``, so the continued run
    composes the same config and writes into the same directory.

    A run directory is data: recorded overrides that can run code (:func:`names_code`:
    ``+callbacks.x._target_=...``, ``hydra.searchpath=...``) are never taken from it. Each
    must be given again on this command line (``given``), where the user sees it; otherwise
    this is a :class:`ResumeError` listing them.

    Args:
        value: a run directory, or ``last`` for the newest run under ``runs_dir``.
        runs_dir: where single runs go (``logs/train/runs``).
        given: the other overrides on this command line.

    Returns:
        The run directory and the overrides.

    Raises:
        FileNotFoundError: if the directory or its ``last.ckpt`` does not exist.
        ResumeError: for a URL, or recorded code-running overrides not given again.
    """
    import yaml

    if is_remote(value):
        raise ResumeError(f"`resume` must be a local run directory, got the URL {value!r}.")
    run = latest_run(runs_dir) if value == "last" else Path(value)
    if not run.is_dir():
        raise FileNotFoundError(f"`resume={value}`: no such run directory {run}.")
    ckpt = run / CHECKPOINT_DIR / LAST
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"`resume={value}`: {ckpt} does not exist; this run never reached its first "
            f"checkpoint (written at every epoch end), so there is nothing to resume."
        )
    saved = run / ".hydra" / "overrides.yaml"
    previous: list[str] = []
    if saved.is_file() and not saved.is_symlink():
        loaded = yaml.safe_load(saved.read_text()) or []
        if not isinstance(loaded, list):
            raise ResumeError(f"`resume={value}`: {saved} is not a list of overrides.")
        previous = [
            str(o) for o in loaded if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))
        ]
    else:
        rank_zero_warn(f"`resume={value}`: {saved} is missing; composing the default config.")
    given_keys = {_key(o) for o in given}
    code = [o for o in previous if names_code(o)]
    missing = [o for o in code if _key(o) not in given_keys]
    if missing:
        quoted = " ".join(f"'{o}'" for o in missing)
        raise ResumeError(
            f"`resume={value}`: the run was started with overrides that name code to run or "
            f"configs to load: {missing}. A resume never takes them from a run directory "
            f"({saved}); if you trust them, give them again on this command line: "
            f"eecontrol-train resume={value} {quoted}"
        )
    previous = [o for o in previous if not names_code(o)]  # the repeated ones come later
    run = run.resolve()
    return run, [*previous, f"hydra.run.dir={run}", f"ckpt_path={run / CHECKPOINT_DIR / LAST}"]


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """Step, epoch and write time of a local checkpoint, loaded with ``weights_only=True``.

    Raises:
        ResumeError: naming the file when it is not a loadable checkpoint (a crafted pickle,
            a truncated file), with the loader's first line.
    """
    import datetime

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # UnpicklingError, RuntimeError, EOFError, ...: the reason, without mmap
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            text = str(err)
            # torch's own reason (e.g. "Unsupported global: GLOBAL posix.system"), not its
            # advice to load with weights_only=False
            if "WeightsUnpickler error:" in text:
                text = "refused to unpickle: " + text.split("WeightsUnpickler error:", 1)[1]
            first = " ".join(text.split("Check the documentation")[0].split()) or "error"
            raise ResumeError(
                f"{path} is not a loadable checkpoint (torch.load(weights_only=True) refused "
                f"it: {type(err).__name__}: {first[:300]}); nothing was run."
            ) from None
    if not isinstance(ckpt, dict):
        raise ResumeError(f"{path} is not a Lightning checkpoint (a {type(ckpt).__name__}).")
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(
        sep=" ", timespec="seconds"
    )
    return {
        "global_step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "written": written,
    }


def rewrite_argv(argv: Sequence[str], runs_dir: Path) -> list[str]:
    """Replaces a ``resume=...`` argument of ``eecontrol-train`` by the overrides it stands for.

    Later arguments override the run's own (e.g. ``resume=<dir> trainer.max_epochs=20``).
    Before anything runs, it says on stderr which run and checkpoint it continues.

    Raises:
        ValueError: if ``resume`` is combined with ``-m`` / ``--multirun``, or for what
            :func:`resume_overrides` refuses.
    """
    args = list(argv)
    idx = [i for i, a in enumerate(args) if a.startswith(("resume=", "+resume="))]
    if not idx:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ValueError("`resume=<run dir>` continues one run; it cannot be used with -m.")
    value = args[idx[-1]].split("=", 1)[1]
    rest = [a for i, a in enumerate(args) if i not in idx]
    run, overrides = resume_overrides(value, runs_dir, [a for a in rest if "=" in a])
    check_run_dir(run)
    ckpt = run / CHECKPOINT_DIR / LAST
    info = describe_checkpoint(ckpt)
    recorded = overrides[:-2]
    print(
        f"eecontrol-train: resuming run {run} from {ckpt} (epoch {info['epoch']}, step "
        f"{info['global_step']}, written {info['written']}); its recorded overrides: "
        f"{redact_text(str(recorded)) if recorded else 'none'}"
        + (f"; given now: {redact_text(str(rest))}" if rest else ""),
        file=sys.stderr,
        flush=True,
    )
    return [*overrides, *rest]


# --- the run directory: one writer, no symlinks --------------------------------------

LOCK_FILE = ".eecontrol.lock"
_OWN_LINKS = ("wandb",)  # W&B makes its own links (latest-run, debug.log) inside wandb/


def check_run_dir(run: Path) -> None:
    """Refuses a run directory with a symbolic link anywhere inside it (before Hydra opens it).

    Hydra opens ``train.log`` and writes ``.hydra/`` before any eecontrol code runs, so a
    planted link there would be followed; this check runs first. Links that W&B itself
    makes inside ``wandb/`` and that stay inside the run directory are allowed.

    Raises:
        UnsafeRunDirError: naming the link and its target.
    """
    run = Path(run)
    root = run.resolve()
    for dirpath, dirnames, filenames in os.walk(run):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            rel = path.relative_to(run)
            inside = str(path.resolve()).startswith(str(root) + os.sep)
            if rel.parts[0] in _OWN_LINKS and inside:
                continue
            raise UnsafeRunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}); eecontrol never writes "
                f"through a link in a run directory. Remove the link (or resume a copy of the "
                f"run made without it)."
            )


class RunLock:
    """An exclusive lock on a run directory: one process writes it at a time.

    The lock file (``<run>/.eecontrol.lock``) holds the owner's pid, host and process start
    time. A second writer gets a :class:`RunLockedError` naming them. A lock left by a dead
    process on this host (a SIGKILL, a lost machine that is this one) is taken over with a
    warning; a lock from another host is never taken over (its process cannot be checked).

    Args:
        run: the run directory.
    """

    def __init__(self, run: str | Path) -> None:
        self.path = Path(run) / LOCK_FILE
        self.held = False

    @staticmethod
    def _me() -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError`."""
        import json
        import socket

        refuse_symlinks(self.path, "its lock", self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                pid, host = owner.get("pid"), owner.get("host")
                if host == socket.gethostname() and pid == os.getpid():
                    return  # this process holds it already (taken before Hydra started)
                if (
                    host == socket.gethostname()
                    and isinstance(pid, int)
                    and not _alive(pid, owner.get("start"))
                ):
                    rank_zero_warn(
                        f"eecontrol: taking over the stale lock {self.path} of pid {pid} on "
                        f"{host} (that process is gone)."
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"the run directory {self.path.parent} is in use by pid {pid} on host "
                    f"{host} (lock file {self.path}); two processes writing one run would "
                    f"duplicate its rows. Wait for it to end, or remove the lock file if that "
                    f"process is gone."
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._me()))
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path} (it keeps reappearing).")

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _start_time(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start
