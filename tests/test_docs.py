"""Every code example in README.md and docs/ runs, so that none can rot.

- ```python blocks: each page's blocks run in order, in one namespace, in a fresh folder (tiny models, digits);
- ```sh blocks: every `robust-csc VERB ...` line names a verb that exists and only options that verb takes (its
  --help is built from the same command); `make` and `torchrun` lines name real targets and verbs.
"""

import re
import shlex
from pathlib import Path

import pytest
import typer

from robust_csc.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)?[^\n]*\n(.*?)^```", re.M | re.S)

pytestmark = pytest.mark.usefixtures("one_thread")


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if (lang or "") == language]


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block: prompts and comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        out.append(shlex.split(line, comments=True))
    return out


def test_every_page_is_linked_from_the_readme_and_the_readme_is_short():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < 8 * 1024
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    code = blocks(page, "python")
    if not code:
        pytest.skip(f"{page.name} has no python example")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{page.name} example {i + 1}", "exec"), namespace)
        except Exception as err:  # name the block that rotted
            raise AssertionError(f"{page.name}, python example {i + 1} fails: {type(err).__name__}: {err}\n{block}") from err


def _verb_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    out = {}
    for name, command in group.commands.items():
        names = set()
        for param in command.params:
            names.update(getattr(param, "opts", []))
            names.update(getattr(param, "secondary_opts", []))
        out[name] = names
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_examples_name_real_verbs_and_options(page):
    verbs = _verb_options()
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    checked = 0
    for block in blocks(page, "sh"):
        for words in commands(block):
            if words[0] == "make":
                assert set(words[1:]) <= targets, (page.name, words)
                continue
            if words[0].endswith("python") and len(words) > 1 and words[1].endswith(".py"):
                assert (ROOT / words[1]).is_file(), f"{page.name}: {words[1]} does not exist"
                continue
            if words[0] == "torchrun":
                words = ["robust-csc", *words[words.index("robust_csc.cli") + 1:]]
            if words[0] != "robust-csc":
                continue
            verb = words[1]
            if verb in ("--version", "--help"):
                continue
            assert verb in verbs, f"{page.name}: `robust-csc {verb}` is no verb"
            for word in words[2:]:
                option = word.split("=", 1)[0]
                if option.startswith("--"):
                    assert option in verbs[verb], f"{page.name}: `robust-csc {verb}` has no option {option}"
            checked += 1
    if not blocks(page, "sh"):
        pytest.skip(f"{page.name} has no shell example")
    assert checked or page.name == "benchmarks.md"
