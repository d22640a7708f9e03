"""train.cluster: the cluster environment that train and launch share (TF_CONFIG, the rank
rule, the HARNESS_* names), and the layering around it: train never imports launch, and
launch never imports TensorFlow."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from train import cluster
from train.errors import UsageError

from conftest import REPO, harness_env


def test_tf_config_lists_the_cluster_and_the_task():
    addresses = ["alpha:29500", "beta:29500"]
    assert json.loads(cluster.tf_config(addresses, 1)) == {
        "cluster": {"worker": addresses},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[]",
        '{"cluster": {"worker": ["a:1"]}}',
        '{"task": {"type": "worker"}}',
        '{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
    ],
)
def test_malformed_tf_config_in_the_environment_is_a_usage_error(raw):
    with pytest.raises(UsageError, match="TF_CONFIG in the environment is malformed"):
        cluster.existing_tf_config({"TF_CONFIG": raw})


def test_absent_or_empty_tf_config_is_none():
    assert cluster.existing_tf_config({}) is None
    assert cluster.existing_tf_config({"TF_CONFIG": ""}) is None


@pytest.mark.parametrize(
    "tasks, task_type, index, expected",
    [
        ({"worker": ["a:1", "b:1"]}, "worker", 1, 1),
        ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "chief", 0, 0),
        ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 0, 1),  # the chief counts first
        ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 1, 2),
    ],
)
def test_the_chief_counts_first(tasks, task_type, index, expected):
    assert cluster.rank(tasks, task_type, index) == expected
    assert cluster.world_size(tasks) == sum(len(v) for v in tasks.values())
    config = {"cluster": tasks, "task": {"type": task_type, "index": index}}
    assert cluster.task_rank(config) == (expected, cluster.world_size(tasks))


def test_a_built_tf_config_reads_back_as_its_worker():
    addresses = ["alpha:29500", "beta:29500", "gamma:29500"]
    for index in range(3):
        config = cluster.existing_tf_config({"TF_CONFIG": cluster.tf_config(addresses, index)})
        assert cluster.task_rank(config) == (index, 3)


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_train_never_imports_launch():
    offenders = [
        f"{path}: {name}"
        for path in sorted(pathlib.Path(REPO, "train").rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] == "launch"
    ]
    assert offenders == []


def test_the_cluster_modules_import_no_tensorflow():
    code = (
        "import sys, train.cluster, launch.cluster, launch.plan; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=harness_env(), check=True, timeout=120
    )


def test_launch_names_the_variables_train_reads():
    from launch import plan

    env = plan.harness_env(rank=3, world_size=4, local_rank=1, local_size=2, restart=5)
    assert env == {
        cluster.RANK_ENV: "3",
        cluster.WORLD_SIZE_ENV: "4",
        cluster.LOCAL_RANK_ENV: "1",
        cluster.LOCAL_WORLD_SIZE_ENV: "2",
        cluster.RESTART_COUNT_ENV: "5",
    }
    assert plan.EXIT_CODES_ENV == cluster.EXIT_CODE_DIR_ENV == "HARNESS_EXIT_CODE_DIR"
