"""The robust-csc command line: a thin layer over the library, one module per verb.

    app.py       the Typer app, the verbs grouped by job in --help, --version
    options.py   the options verbs share (same name, metavar and help everywhere) and their checks
    suites.py    evaluate's and tune-lambda's suite options, built into a suite
    output.py    result lines on stdout; elapsed time, files written and the next command on stderr
    <verb>.py    evaluate, tune_lambda, report, train, attack, corrupt, noise_curve, compare, models, info,
                 convert_official, demo

The CLI only imports downward: no library module imports robust_csc.cli.
Every user-fixable problem (a RobustCSCError) ends the program with one line
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from robust_csc.cli.app import app

# Importing a verb module registers its command on app.
from robust_csc.cli import (  # noqa: E402,F401
    attack,
    compare,
    convert_official,
    corrupt,
    demo,
    evaluate,
    info,
    models,
    noise_curve,
    report,
    train,
    tune_lambda,
)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _click_errors():
    """click's exception module: typer vendors click as typer._click; older typers depend on click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(line: str) -> None:
    print(f"error: {_one_line(line)}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app; every user-caused failure becomes `error: ...` and exit code 2.

    Besides RobustCSCError that is a bad option value (click's multi-line usage
    block becomes one line), an OSError of the environment (full disk, read-only
    folder), and a failure inside a DataLoader worker (see robust_csc.user_errors).
    """
    from robust_csc.user_errors import as_user_error, usage_error_line

    click = _click_errors()
    try:
        # standalone_mode=False: click raises its usage errors instead of printing a usage block and exiting.
        result = app(args=argv, prog_name="robust-csc", standalone_mode=False)
    except getattr(click, "NoArgsIsHelpError", ()) as err:  # bare `robust-csc`: the help, as before
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        _fail(usage_error_line(err))
    except typer.Abort:
        print("Aborted!", file=sys.stderr, flush=True)
        sys.exit(1)
    except click.ClickException as err:
        _fail(err.format_message())
    except Exception as err:
        user = as_user_error(err)
        if user is None:
            raise
        _fail(str(user))
    # A command's return value is None; --help and typer.Exit give their exit code.
    sys.exit(result if isinstance(result, int) else 0)


__all__ = ["app", "main"]
