"""The README's commands are the ones CI and users run."""

import os
import re

from conftest import REPO


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", read("README.md"), flags=re.S)


def test_readme_opens_with_the_main_job_and_the_test_command():
    first, second = readme_commands()[:2]
    for command in (first, second):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert "harness-train --workdir" in first
    assert "pytest" in second


def test_ci_runs_the_readme_test_command():
    test_command = readme_commands()[1]
    ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
    assert test_command in ci_lines
