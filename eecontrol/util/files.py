"""Files in a run directory: never through a symlink, replaced atomically.

Framework-free (floor 0): callbacks, report and sweep write through these helpers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class UnsafeRunDirError(RuntimeError):
    """A write in the run directory would go through a symbolic link."""


def replace_atomically(tmp: Path, target: Path) -> None:
    """``os.replace(tmp, target)`` after fsync of ``tmp``; then fsync of the directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    try:
        dfd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def refuse_symlinks(path: str | Path, what: str, root: str | Path | None = None) -> None:
    """Raises :class:`UnsafeRunDirError` if ``path`` or a directory above it is a symlink.

    Checked up to ``root`` (not included; default: the parent of ``path``'s directory), so
    a run directory may itself live under a linked path (``logs -> /scratch/logs``) but
    nothing inside it may redirect a write.
    """
    path = Path(path)
    stop = Path(root) if root is not None else path.parent.parent
    current = path
    while current != stop and current.parent != current:
        if current.is_symlink():
            raise UnsafeRunDirError(
                f"{current} is a symbolic link (to {os.readlink(current)}); eecontrol never "
                f"writes {what} through a link in a run directory. Remove the link (or resume "
                f"a copy of the run made without it)."
            )
        current = current.parent


_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local path."""
    return bool(_REMOTE.match(str(path))) and not str(path).startswith("file://")


def safe_dir(path: Path) -> Path:
    """Makes ``path`` a real directory with no symlinks directly in it, and returns it.

    A symlink at ``path`` or inside it (e.g. ``report/report.html -> ~/.bashrc``) is removed,
    never followed, so writing into the run directory cannot change a file outside it.
    """
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_symlink():
            child.unlink()
    return path


def safe_file(path: Path) -> Path:
    """Returns ``path`` after removing a symlink at it (or at its directory); never follows one."""
    path = Path(path)
    if path.parent.is_symlink():
        path.parent.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    return path


def append_line(path: Path, line: str) -> None:
    """Appends one line to ``path`` without following a symlink (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")
