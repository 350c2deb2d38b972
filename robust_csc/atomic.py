"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from robust_csc.errors import RobustCSCError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(file) on a temporary file next to path, then rename it over path.

    An interrupted or failed write leaves path as it was (or absent) and
    removes the temporary file; the rename is atomic on one file system.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # plain open: the usual permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except OSError as err:
        raise RobustCSCError(
            f"could not write {path} ({err.strerror or err}); check that the folder is writable and the disk not full"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
