"""`robust-csc --help` and every verb's `--help`: one tool, options that mean the same everywhere, no Python types."""

import re
from pathlib import Path

import pytest
import typer

from cli_support import run_main
from robust_csc import __version__
from robust_csc.cli import app
from robust_csc.cli.app import GROUPS
from robust_csc.cli.options import VERB_SPECIFIC

ROOT = Path(__file__).resolve().parents[1]
METAVARS = {"FILE", "DIR", "N", "FLOAT", "LIST", "NAME", "REF", "TEXT", "SERIES", "PREFIX", "SRC", "DST"}
_DEFAULT = re.compile(r"\s*\[(default: [^\]]*|required)\]\.?\s*$")


def _verbs_in_help(text: str) -> list[str]:
    """The verbs `robust-csc --help` lists, in order, under its group headings."""
    verbs, in_group = [], False
    for line in text.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(" "):
            in_group = line.rstrip(":") in {title for title, _ in GROUPS}
            continue
        found = re.match(r"^  ([a-z][a-z-]+)\s", line)
        if in_group and found:
            verbs.append(found[1])
    return verbs


@pytest.fixture(scope="module")
def helps():
    """{verb: (its --help text, its click command)} for every verb the top-level help lists."""
    with pytest.raises(SystemExit):
        from robust_csc.cli import main

        main(["--help"])
    group = typer.main.get_command(app)
    return group


def test_top_level_help_groups_the_verbs_by_job(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    verbs = _verbs_in_help(out)
    assert verbs[:3] == ["evaluate", "tune-lambda", "report"]  # the main jobs first
    assert verbs == [v for _, names in GROUPS for v in names]
    assert set(verbs) == set(typer.main.get_command(app).commands)  # every verb is listed, once
    assert [line for line in out.splitlines() if line.endswith(":")][:4] == ["Options:", "Main jobs:", "More verbs:",
                                                                           "Models and checkpoints:"]


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"robust-csc {__version__}"


def _options(command):
    """{--name: click option} of a verb's visible options (the long name each is known by)."""
    out = {}
    for param in command.params:
        if getattr(param, "hidden", False) or not getattr(param, "opts", None) or param.param_type_name != "option":
            continue
        name = max(param.opts, key=len)
        if name == "--help":
            continue
        out[name] = param
    return out


def test_every_verbs_help_prints_plain_metavars_and_real_verbs(capsys):
    group = typer.main.get_command(app)
    verbs = set(group.commands)
    for verb in verbs:
        code, out, err = run_main(capsys, verb, "--help")
        assert code == 0, (verb, err)
        assert not re.search(r"<(str|int|float|bool|path|list\[\w+\])>", out), (verb, out)  # no <list[str]>, <path>, <int>
        # a verb named as a command: `robust-csc models`, or robust-csc evaluate --...
        for named in re.findall(r"`robust-csc ([a-z][a-z-]+)|robust-csc ([a-z][a-z-]+) --", " ".join(out.split())):
            named = named[0] or named[1]
            assert named in verbs, f"{verb}'s help names `robust-csc {named}`, which is no verb"
        for name, option in _options(group.commands[verb]).items():
            if option.is_flag:
                continue
            assert option.metavar in METAVARS, (verb, name, option.metavar)
            assert f"{name} {option.metavar}" in out, (verb, name)


def _meaning(help_text: str) -> str:
    """The option's help without the default or required note each verb may add."""
    return _DEFAULT.sub("", " ".join((help_text or "").split())).rstrip(".")


def test_shared_options_mean_the_same_in_every_verb():
    group = typer.main.get_command(app)
    by_name: dict[str, list] = {}
    for verb, command in group.commands.items():
        for name, option in _options(command).items():
            by_name.setdefault(name, []).append((verb, option))
    shared = {name: uses for name, uses in by_name.items() if len(uses) > 1}
    # the options the brief names are shared by every verb that runs a model
    for name in ("--checkpoint", "--model", "--lambda", "--lambda-policy", "--store", "--n-examples", "--seed",
                 "--device", "--batch-size", "--data-root", "--dataset", "--progress"):
        assert name in shared, name
    for name, uses in shared.items():
        if name in VERB_SPECIFIC:
            continue
        first_verb, first = uses[0]
        for verb, option in uses[1:]:
            where = f"{name} in {first_verb} and {verb}"
            assert option.metavar == first.metavar, where
            assert option.bare_type() == first.bare_type() and option.is_flag == first.is_flag, where
            assert option.multiple == first.multiple, where
            assert _meaning(option.help) == _meaning(first.help), where
    # --lambda is a list wherever it names test-time settings
    for verb, option in by_name["--lambda"]:
        if verb != "train":
            assert option.multiple and option.metavar == "LIST", verb


def test_the_library_never_imports_the_cli():
    offenders = []
    for path in (ROOT / "robust_csc").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "robust_csc").parts[:1]:
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(from robust_csc\.cli\b|import robust_csc\.cli\b|from robust_csc import cli\b)", text, re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_python_dash_m_runs_the_same_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "robust_csc.cli", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0 and _verbs_in_help(done.stdout)[:3] == ["evaluate", "tune-lambda", "report"]
    assert "noise-curve" in _verbs_in_help(done.stdout)  # the verbs of every module, not only the first file's


def test_a_verb_ends_with_time_files_and_next_command(capsys, tmp_path):
    code, out, err = run_main(capsys, "models")
    assert code == 0 and "sdnet18" in out
    lines = err.strip().splitlines()
    assert re.match(r"done in \d+\.\d s; wrote nothing$", lines[-2]) and lines[-1].startswith("next: robust-csc train ")
