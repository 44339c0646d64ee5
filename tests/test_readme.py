"""Every command the README shows runs as written. Commands live in ```sh blocks: the
set-up and test commands must be the ones .ci/run runs, and every other one is run here
from a copy of the repository's configs and data, with ../shared beside it."""

import os
import re
import shutil
import subprocess

import pytest

from helpers import REPO, SHARED

README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
CI_RUN = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
SETUP = ("python3 -m venv", "pip install", "pytest")


def shell_commands(text: str) -> list[str]:
    """The commands of every ```sh block: `\\` continues a line, `#` starts a comment."""
    out = []
    for block in re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


COMMANDS = shell_commands(README)
RUN_HERE = [c for c in COMMANDS if not c.startswith(SETUP)]


def test_the_readme_shows_the_two_commands():
    assert "nntrainer train configs/digits_mlp.ini" in COMMANDS
    assert "pip install -e '.[test,import,images,federated]' && pytest -q" in COMMANDS


def test_setup_and_test_commands_are_what_ci_runs():
    for command in COMMANDS:
        if command.startswith(SETUP):
            assert command in CI_RUN, f".ci/run does not run {command!r}"


def test_concrete_commands_in_prose_are_in_sh_blocks():
    """A command written inline with a real file in it would escape the test below."""
    prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", README, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if span.startswith("nntrainer ") and re.search(r"configs/|datasets/|models/|\.\./shared",
                                                         span):
            assert " ".join(span.split()) in COMMANDS, f"inline command not in an sh block: {span}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of what the commands read, laid out like a clone beside ../shared."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    for name in ("configs", "datasets", "models"):
        shutil.copytree(os.path.join(REPO, name), repo / name)
    if os.path.isdir(SHARED):
        os.symlink(os.path.abspath(SHARED), root / "shared")
    return repo


@pytest.mark.parametrize("command", RUN_HERE)
def test_readme_command_runs_as_written(workdir, command):
    if "../shared/" in command and not os.path.isdir(SHARED):
        pytest.skip("../shared not present")
    assert shutil.which("nntrainer"), "install the project first (pip install -e .)"
    res = subprocess.run(command, shell=True, cwd=workdir, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert "warning:" not in res.stderr, res.stderr
