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


def _module_names():
    """{dotted module name: path} of every module in train/, launch/ and benchmarks/."""
    names = {}
    for top in ("train", "launch", "benchmarks"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, name), REPO)[:-3]
                    dotted = rel.replace(os.sep, ".").removesuffix(".__init__")
                    names[dotted] = os.path.join(root, name)
    return names


def _imports(path, modules):
    """The modules of this repo that `path` imports, at any depth of its code."""
    import ast

    found = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in modules else node.module)
    return {m for m in found if m in modules}


def test_imports_go_one_way_and_no_two_modules_import_each_other():
    modules = _module_names()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    for name, targets in graph.items():
        if name.split(".")[0] == "train":
            assert not {t for t in targets if not t.startswith("train")}, name
    cycles = []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    # A package __init__ that re-exports its modules is not a circle with them.
    cycles = [
        c
        for c in cycles
        if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))
    ]
    assert cycles == []


def test_the_public_api_resolves_and_import_train_loads_no_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, train; assert 'tensorflow' not in sys.modules; "
        "missing = [n for n in train.__all__ if getattr(train, n, None) is None]; "
        "print(missing)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_tree_passes_ruff():
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extra (setup.cfg)"
    for args in (["check", "."],):
        out = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
