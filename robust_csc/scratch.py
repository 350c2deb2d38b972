"""Hidden folders to build an output in, and the removal of ones a killed run left behind.

A report (or a CIFAR-C suite) is built in `.<out>.build-XXXX` beside its
folder and renamed into place when complete. A run killed meanwhile (kill -9,
a power cut) leaves that folder behind, a corruption suite's of gigabytes. Each build folder therefore has a lock file beside it,
`.<out>.build-XXXX.lock`, created first and held with flock(2) for the whole
build: the kernel drops the lock when its process dies however it dies, so
a later run that can take the lock knows the folder is abandoned and removes
it. A folder without its lock file, or whose lock is held, is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

LOCK_SUFFIX = ".lock"


def _prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.build-"


def _take(lock: Path) -> int | None:
    """An open, flock-ed descriptor of lock; None when another live process holds it (or it vanished)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_abandoned(out_dir: Path) -> list[Path]:
    """Remove the build folders (and lock files) of out_dir whose lock no live process holds; returns them."""
    parent, prefix = out_dir.parent, _prefix(out_dir)
    removed = []
    try:
        locks = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(LOCK_SUFFIX)]
    except OSError:
        return removed
    for lock in locks:
        fd = _take(lock)
        if fd is None:
            continue  # a build in progress
        try:
            folder = lock.with_name(lock.name[: -len(LOCK_SUFFIX)])
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            with contextlib.suppress(OSError):
                lock.unlink()
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def build_folder(out_dir: Path) -> Iterator[Path]:
    """A new, empty hidden folder beside out_dir, locked while this process builds in it.

    Abandoned build folders of out_dir are removed first. The caller renames
    the folder into place or removes it; the lock file goes on exit.
    """
    remove_abandoned(out_dir)
    fd, name = tempfile.mkstemp(prefix=_prefix(out_dir), suffix=LOCK_SUFFIX, dir=out_dir.parent)
    lock = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        folder = lock.with_name(lock.name[: -len(LOCK_SUFFIX)])
        folder.mkdir(mode=0o755)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


__all__ = ["LOCK_SUFFIX", "build_folder", "remove_abandoned"]
