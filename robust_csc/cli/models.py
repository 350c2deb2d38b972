"""`robust-csc models`: the model zoo and its arguments."""

from __future__ import annotations

from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, finish, say


@app.command(short_help="List the model zoo and its arguments.")
def models() -> None:
    """List the model zoo: one name per line, then its arguments and defaults."""
    from robust_csc.models import list_models, model_arguments

    clock = Clock()
    for name in list_models():
        arguments = " ".join(f"{k}={v}" for k, v in model_arguments(name).items())
        say(f"{name:<12} {arguments}")
    finish(clock, [], ["robust-csc train --arch sdnet18 --dataset cifar10 --data-root ./data"])
