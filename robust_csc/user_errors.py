"""Failures the user's input or environment caused, as the one line the CLI prints.

The CLI turns a RobustCSCError into `error: <message>` and exit code 2. Some
user-caused failures reach it in other shapes, and are turned into the same
one line here:

- a RobustCSCError raised in a DataLoader worker arrives re-raised by torch
  with the worker's whole traceback as its message: only the original
  sentence is kept;
- a DataLoader worker that died (killed for memory, crashed in a decoder);
- an OSError of the environment (a full disk, a read-only folder, a missing
  permission) that no check caught earlier;
- a usage error of the command line (a bad option value such as
  `--n-examples abc`): click prints a multi-line usage block, this prints one line.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

from robust_csc.errors import RobustCSCError
from robust_csc.validation import USER_ERRNOS, os_error_line

_WORKER = re.compile(r"\ACaught (\w+) in DataLoader worker process \d+\.\s*Original Traceback", re.DOTALL)
_DEAD_WORKER = re.compile(r"DataLoader worker \(pids?\b[^)]*\) (?:is killed by signal|exited unexpectedly)[^\n]*")


def worker_message(err: BaseException) -> str:
    """err's message without the DataLoader worker's traceback around it (the message itself otherwise)."""
    text = str(err)
    if not _WORKER.match(text):
        return text
    # The traceback's last entry is "<module>.<class>: <original message>"; the message may hold colons.
    cls = type(err)
    names = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(text.splitlines()):
        for name in names:
            if line.startswith(name):
                return line[len(name) :]
    return text.strip().splitlines()[-1]


def worker_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches of a DataLoader, its workers stopped at once when one of them fails.

    torch re-raises a worker's exception with the worker's traceback as its
    message (a RobustCSCError comes back here with its one sentence), and
    leaves the loader to the garbage collector, whose order (the queues
    closed first) makes stopping the workers wait 5 s per worker.
    """
    iterator = iter(batches)
    try:
        yield from iterator
    except BaseException as err:
        stop = getattr(iterator, "_shutdown_workers", None)  # torch's own (private) way to stop them
        if stop is not None:
            stop()
        if isinstance(err, RobustCSCError) and _WORKER.match(str(err)):
            raise type(err)(worker_message(err)) from None
        raise


def as_user_error(err: BaseException) -> RobustCSCError | None:
    """The RobustCSCError that err stands for, or None when err is not the user's to fix."""
    if isinstance(err, RobustCSCError):
        return RobustCSCError(worker_message(err))
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        return RobustCSCError(os_error_line(err))
    if isinstance(err, RuntimeError):
        dead = _DEAD_WORKER.search(str(err))
        if dead:
            return RobustCSCError(
                f"a data loading worker process died ({dead.group(0).rstrip('. ')}), most often for lack of memory; "
                "pass fewer --workers (0 reads in the main process) or a smaller --batch-size"
            )
    if isinstance(err, MemoryError):
        return RobustCSCError("ran out of memory; pass a smaller --batch-size or fewer --workers, or use a larger machine")
    return None


def usage_error_line(err: Exception) -> str:
    """A command-line usage error (click's UsageError) as one sentence naming the fix."""
    message = " ".join(err.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "robust-csc"
    return f"{message}; see '{command} --help' for the options and their values"


__all__ = ["as_user_error", "usage_error_line", "worker_errors", "worker_message"]
