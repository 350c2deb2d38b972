"""What every verb prints: its result lines on stdout, and how it ended on stderr.

A verb prints its results with ``say`` (stdout, one line at a time, so a pipe
gets them as they come) and ends with ``finish``: the elapsed time, the files
it wrote and the next command to run, on stderr beside the progress bars, so
stdout stays the results alone (`robust-csc info` prints JSON a script can read).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence


def say(line: str = "") -> None:
    print(line, flush=True)


class Clock:
    """The verb's start; ``finish`` reports the time since."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def format_seconds(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def command(*parts: object) -> str:
    """A command line a user can paste: every part quoted where the shell needs it; None parts left out."""
    return " ".join(shlex.quote(str(part)) for part in parts if part is not None)


def finish(clock: Clock, wrote: Iterable[object] = (), next_steps: Sequence[str] = ()) -> None:
    """The verb's last lines (stderr): elapsed time, the files written, the next command(s)."""
    files = [str(path) for path in dict.fromkeys(str(p) for p in wrote if p is not None)]
    lines = [f"done in {format_seconds(clock.elapsed())}; " + (f"wrote {', '.join(files)}" if files else "wrote nothing")]
    lines += [f"next: {step}" for step in next_steps]
    print("\n".join(lines), file=sys.stderr, flush=True)


def existing(paths: Iterable[object]) -> list[Path]:
    """The paths that exist (what a verb really wrote)."""
    return [Path(p) for p in paths if p is not None and Path(p).exists()]
