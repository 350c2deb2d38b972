"""Checks on what users hand the CLI and the library, made before anything is read, built or written.

- ``parse_json``: JSON of bounded size and nesting (json.loads recurses once
  per level, so 200,000 nested brackets end in a RecursionError);
- ``regular_file`` / ``file_kind``: a FIFO, socket or device is called what it
  is, never opened (reading a FIFO blocks forever);
- ``check_writable_file`` / ``check_writable_folder``: an output's folder is
  tried with a probe file before any work starts (os.access is wrong for
  root and for read-only mounts);
- ``check_device``: --device names a device this machine has;
- ``refuse_nonfinite_outputs``: a model that returns NaN or infinity scores
  no cell.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from robust_csc.errors import RobustCSCError

MAX_JSON_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON text, counted without recursion (strings skipped)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(text: str | bytes, *, what: str, fix: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads(text), refusing text over max_bytes or nested deeper than max_depth first."""
    import json

    if len(text) > max_bytes:
        raise RobustCSCError(f"{what} is {len(text):,} bytes of JSON, more than the {max_bytes:,} allowed; {fix}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RobustCSCError(f"{what} is not UTF-8 text; {fix}") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise RobustCSCError(f"{what} nests JSON {depth} levels deep, more than the {max_depth} allowed; {fix}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise RobustCSCError(f"{what} is not valid JSON; {fix}") from None


# ---------------------------------------------------------------- files


def file_kind(path: str | Path) -> str:
    """'file', 'folder', 'FIFO', 'socket', 'character device', 'block device' or 'missing' (links followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "special file"


def regular_file(path: str | Path, what: str, fix: str) -> Path:
    """path, if it is a regular file; else one line that says what it is instead."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "file":
        return path
    if kind == "missing":
        raise RobustCSCError(f"no {what} at {path}; {fix}")
    if kind == "unreadable":
        raise RobustCSCError(f"{path} cannot be read (check its permissions); {fix}")
    raise RobustCSCError(f"{path} is a {kind}, not a {what} file; {fix}")


def _probe(folder: Path) -> None:
    """Create and remove a hidden file in folder: the one test that holds for root and read-only mounts."""
    fd, name = tempfile.mkstemp(prefix=".robust-csc-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable_folder(folder: str | Path, option: str, shown: str | Path | None = None) -> None:
    """Refuse an output folder that cannot be created or written, creating nothing.

    A folder that does not exist yet is judged by its nearest existing
    ancestor, where it would be created; shown is the path the message names
    (the option's value, when folder is the folder it goes into).
    """
    folder = Path(folder).expanduser()
    shown = folder if shown is None else shown
    target = _nearest_existing(folder.absolute())
    if not target.is_dir():
        raise RobustCSCError(f"{option} {shown}: {target} is a {file_kind(target)}, not a folder; choose another {option}")
    try:
        _probe(target)
    except OSError as err:
        raise RobustCSCError(
            f"{option} {shown} cannot be written ({os_reason(err)} in {target}); "
            f"choose a writable {option} or free space on that disk"
        ) from None


def check_writable_file(path: str | Path, option: str) -> None:
    """Refuse an output file whose folder cannot be written (the file itself is written later, atomically)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RobustCSCError(f"{option} {path} is a folder; pass a file name such as {path / 'out.json'}")
    check_writable_folder(path.parent, option, shown=path)


def os_reason(err: OSError) -> str:
    """An OSError as a short reason: 'No space left on device', 'Read-only file system', ..."""
    if err.errno is not None:
        return os.strerror(err.errno)
    return err.strerror or str(err)


# errno values a user's environment causes (and can fix); anything else is a bug worth a traceback.
USER_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.EIO,
    errno.ELOOP, errno.EXDEV, errno.ENOTEMPTY,
}


def os_error_line(err: OSError) -> str:
    """One sentence for an OSError of the user's environment, naming the file and the fix."""
    where = f" {err.filename}" if err.filename else ""
    fix = {
        errno.ENOSPC: "free space on that disk or write somewhere else",
        errno.EDQUOT: "free space on that disk or write somewhere else",
        errno.EROFS: "write to a folder on a writable disk",
        errno.EACCES: "fix the permissions or choose another path",
        errno.EPERM: "fix the permissions or choose another path",
        errno.EMFILE: "raise the open-file limit (ulimit -n) or use fewer --workers",
        errno.ENFILE: "raise the open-file limit (ulimit -n) or use fewer --workers",
    }.get(err.errno, "check the path")
    return f"could not access{where} ({os_reason(err)}); {fix}"


# ---------------------------------------------------------------- devices


def check_device(device: str | None, option: str = "--device") -> str | None:
    """device if this machine has it (None stays None: the command's default); else one line."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise RobustCSCError(f"unknown device {device!r} for {option}; pass cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RobustCSCError(f"{option} {device}: this machine has no usable CUDA GPU; pass {option} cpu")
        if parsed.index is not None and parsed.index >= count:
            raise RobustCSCError(
                f"{option} {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; pick one of them"
            )
        return device
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return device
    raise RobustCSCError(f"{option} {device} is not a device robust-csc runs on; pass cpu, cuda or cuda:N")


# ---------------------------------------------------------------- model outputs


def refuse_nonfinite_outputs(all_finite: Any, where: str) -> None:
    """Refuse a result before it is stored when its logits were not all finite.

    all_finite: a bool, or a 0-d bool tensor the caller accumulated on the device (read here once, so a
    per-batch loop need not wait for the device every batch)."""
    if not bool(all_finite):
        raise RobustCSCError(
            f"the model returned NaN or infinite outputs for {where}, so no accuracy was stored; "
            "check the checkpoint's weights and use a smaller lambda"
        )


__all__ = [
    "MAX_JSON_DEPTH", "USER_ERRNOS", "check_device", "check_writable_file", "check_writable_folder", "file_kind",
    "json_depth", "os_error_line", "os_reason", "parse_json", "refuse_nonfinite_outputs", "regular_file",
]
