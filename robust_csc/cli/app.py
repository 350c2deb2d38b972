"""The `robust-csc` Typer app: the verbs grouped by job in `--help`, and `--version`.

Each verb module registers its command on ``app`` when robust_csc.cli imports it.
"""

from __future__ import annotations

import typer

try:  # typer vendors click as typer._click; older typers depend on click itself
    from typer._click import HelpFormatter
except ImportError:  # pragma: no cover - older typer
    from click import HelpFormatter
from typer.core import TyperArgument, TyperCommand, TyperGroup

# The verbs by job, in the order `robust-csc --help` lists them.
GROUPS = (
    ("Main jobs", ("evaluate", "tune-lambda", "report")),
    ("More verbs", ("train", "attack", "corrupt", "noise-curve", "compare")),
    ("Models and checkpoints", ("models", "info", "convert-official")),
    ("Try it", ("demo",)),
)


class GroupedVerbs(TyperGroup):
    """Lists the verbs in GROUPS' order, one help section per job (any verb not in GROUPS comes last)."""

    def list_commands(self, ctx) -> list[str]:
        known = [name for _, names in GROUPS for name in names if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def format_commands(self, ctx, formatter: HelpFormatter) -> None:
        listed = {name for _, names in GROUPS for name in names}
        sections = [(title, names) for title, names in GROUPS]
        rest = tuple(sorted(set(self.commands) - listed))
        if rest:
            sections.append(("Other verbs", rest))
        commands = [(name, self.commands[name]) for _, names in sections for name in names if name in self.commands]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        for title, names in sections:
            rows = [(name, self.commands[name].get_short_help_str(limit)) for name in names
                    if name in self.commands and not self.commands[name].hidden]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class PlainArguments(TyperCommand):
    """A verb whose positional arguments show their metavar only (typer would add a Python type: SRC <path>)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx: None


app = typer.Typer(
    name="robust-csc",
    cls=GroupedVerbs,
    help="Robustness of convolutional sparse coding (SDNet) networks and any classifier: evaluate on corruption "
    "benchmarks, tune lambda per noise level, attack, and report with intervals and significance. Start with `robust-csc demo --quick` or "
    "`robust-csc evaluate --help`.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain, greppable help and usage errors
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from robust_csc import __version__

        print(f"robust-csc {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print robust-csc's version and exit."
    ),
) -> None:
    """The verbs share their options; every verb ends with its time, the files it wrote and the next command."""
