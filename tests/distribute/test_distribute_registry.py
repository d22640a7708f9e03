"""train.distribute.registry: names -> backends, 'auto', and the package's import layering
(horovod imported only when asked for; no module of the package imports a backend above it)."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from train import distribute
from train.distribute import base, registry
from train.errors import UsageError

from conftest import REPO, harness_env

PACKAGE = pathlib.Path(REPO, "train", "distribute")


def _package_imports(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "train.distribute":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "train.distribute."
        ):
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_backends_import_base_only_and_base_imports_no_backend():
    assert _package_imports("base") == set()
    assert _package_imports("strategies") == {"base"}
    assert _package_imports("horovod") == {"base"}
    assert _package_imports("registry") == {"base", "strategies", "horovod"}  # horovod lazily


def test_importing_the_package_does_not_import_horovod():
    code = (
        "import sys, train.distribute as d; d.create('default'); "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'horovod' "
        "or m == 'train.distribute.horovod'], 'horovod imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=harness_env(), check=True, timeout=120
    )


def test_the_horovod_module_imports_on_its_own():
    # No circle: train.distribute.horovod first, before anything else of the package.
    subprocess.run(
        [sys.executable, "-c", "import train.distribute.horovod"],
        cwd=REPO,
        env=harness_env(),
        check=True,
        timeout=120,
    )


def test_every_strategy_name_has_a_factory():
    assert set(registry.FACTORIES) == {"default", "mirrored", "multiworker", "horovod"}
    assert distribute.create("default").describe() == "default: 1 worker(s), 1 replica(s)"


def test_unknown_strategy_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown strategy 'nosuch'"):
        distribute.create("nosuch")


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
                )
            },
            "multiworker",
        ),
        (
            {
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                        "task": {"type": "chief", "index": 0},
                    }
                )
            },
            "multiworker",
        ),
        (
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
                )
            },
            "default",
        ),
        ({"HOROVOD_RANK": "0"}, "horovod"),
        ({"OMPI_COMM_WORLD_RANK": "1"}, "horovod"),
        ({}, "default"),
    ],
)
def test_auto_follows_the_environment(monkeypatch, env, expected):
    for name in ("TF_CONFIG", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(base, "gpus", lambda: [])  # a CPU host
    assert distribute.resolve_strategy_name("auto") == expected
    assert distribute.resolve_strategy_name("mirrored") == "mirrored"  # asked for: kept
