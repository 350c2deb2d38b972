"""Running `robust-csc` in tests: as a user does (subprocess) or in-process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robust_csc.cli import main

_SCRIPT = Path(sys.executable).with_name("robust-csc")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "robust_csc.cli"]


def cli(*args, cwd=None):
    """The installed console script in a subprocess, as a user runs it (one thread: a shared CPU)."""
    return subprocess.run(
        [*COMMAND, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_main(capsys, *args):
    """main() in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def assert_user_error(code, out, err, *fragments):
    """Exit code 2, one `error:` line naming the fragments, no traceback."""
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_proc_error(proc, *fragments):
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, *fragments)
