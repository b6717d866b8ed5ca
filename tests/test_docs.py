"""The docs cannot drift from the code: the site builds with `mkdocs build --strict` (a broken
link, a page missing from the nav or a docstring that does not parse fails), every ```python
block of the README and the guides runs, page by page in one namespace, and every `python
train.py ...` line in them is a command train.py accepts."""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from train_in_process import train_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: str, languages: tuple[str, ...]) -> list[str]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return [code for language, code in FENCE.findall(f.read()) if language in languages]


def commands(page: str) -> list[list[str]]:
    """The arguments after `train.py` of each `python train.py` line of a page's shell blocks
    (continuation lines joined, comments dropped)."""
    found = []
    for code in blocks(page, ("", "bash", "sh", "console")):
        for line in code.replace("\\\n", " ").splitlines():
            if not line.startswith("python train.py"):
                continue
            words = shlex.split(line, comments=True)
            if "train.py" in words:
                found.append(words[words.index("train.py") + 1 :])
    return found


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "api" / "models" / "index.html").exists()


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, ("python",))])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    code = blocks(page, ("python",))
    monkeypatch.chdir(tmp_path)  # what a block writes stays here
    namespace = {"__name__": "__docs__"}
    for number, block in enumerate(code):
        try:
            exec(compile(block, f"{page} python block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page} python block {number} fails:\n{block}") from error


def command_lines(page: str) -> str:
    """The `python ...` and `pip ...` lines of a page's shell blocks, continuations joined."""
    return "\n".join(
        line
        for code in blocks(page, ("", "bash", "sh", "console"))
        for line in code.replace("\\\n", " ").splitlines()
        if line.startswith(("python ", "pip "))
    )


@pytest.mark.parametrize("page", [p for p in PAGES if command_lines(p)])
def test_commands_are_valid_shell(page):
    # shlex reads `--model-option features=(16,32)` happily; bash stops at the parenthesis.
    lines = command_lines(page)
    checked = subprocess.run(["bash", "-n"], input=lines, capture_output=True, text=True)
    assert checked.returncode == 0, f"{page}: {checked.stderr}"


@pytest.mark.parametrize("page", [p for p in PAGES if commands(p)])
def test_train_py_commands_parse(page):
    train = train_module()
    for args in commands(page):
        try:
            if args[:1] and args[0] in train.USE_COMMANDS:
                train.parse_use_args(args)
                continue
            parsed = train.parse_args(args)
            if not getattr(parsed, "resume", None):  # a resumed run's config is in its checkpoint
                train.build_config(parsed)
        except SystemExit as exit:  # --help exits 0; a bad flag 2
            assert exit.code == 0, f"{page}: python train.py {shlex.join(args)}: exit {exit.code}"
        except ValueError as error:
            raise AssertionError(f"{page}: python train.py {shlex.join(args)}: {error}") from None
