"""The cluster environment, one contract shared by the trainer (train) and the launcher (launch).

What a worker process is told, and how both sides read it:

* TF_CONFIG (`tf_config` builds it, `existing_tf_config` reads and validates it): the
  cluster's `chief` and `worker` task lists and this process's task.
* The rank rule, "the chief counts first": a cluster may name a separate `chief` task (a
  Kubernetes TFJob does; harness-launch does not, its worker 0 is the chief). Global ranks
  are the chief tasks, then the workers: rank = index + (number of chiefs if the task is a
  worker). Rank 0 leads the coordination service and is the only writer of the workdir.
* The HARNESS_* variables harness-launch sets for every worker (RANK_ENV ... RESTART_COUNT_ENV)
  and EXIT_CODE_DIR_ENV, where each Horovod rank of harness-train records its exit code.

Bad input raises `UsageError` with one line. No TensorFlow here: the launcher imports it.
"""

import json

from train.errors import UsageError

TF_CONFIG_ENV = "TF_CONFIG"
RANK_ENV = "HARNESS_RANK"
WORLD_SIZE_ENV = "HARNESS_WORLD_SIZE"
LOCAL_RANK_ENV = "HARNESS_LOCAL_RANK"
LOCAL_WORLD_SIZE_ENV = "HARNESS_LOCAL_WORLD_SIZE"
RESTART_COUNT_ENV = "HARNESS_RESTART_COUNT"
# horovodrun turns any failing rank into its own exit 1; so each rank of harness-train
# records its real exit code in this directory (train.cli), and the launcher reads them.
EXIT_CODE_DIR_ENV = "HARNESS_EXIT_CODE_DIR"
TASK_TYPES = ("chief", "worker")


def tf_config(addresses, index):
    """TF_CONFIG of worker `index`; worker 0 is the chief (no separate 'chief' task)."""
    return json.dumps(
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}
    )


def existing_tf_config(env):
    """TF_CONFIG already in the environment, validated; None when unset or empty."""
    raw = env.get(TF_CONFIG_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        lists = [cluster.get(name, []) for name in TASK_TYPES]
        task_type, index = task["type"], int(task["index"])
        if not all(isinstance(tasks, list) for tasks in lists) or not any(lists):
            raise TypeError("cluster.chief/cluster.worker must be lists of host:port")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(
            "TF_CONFIG in the environment is malformed: expected JSON with "
            "cluster.worker (a list of host:port) and task.type/task.index"
        ) from None
    if task_type not in TASK_TYPES or not 0 <= index < len(cluster.get(task_type, [])):
        raise UsageError(
            f"TF_CONFIG in the environment is malformed: task {task_type}:"
            f"{index} is not in its cluster"
        )
    return config


def world_size(cluster):
    """Tasks that train, chief and workers together, of a cluster dict {type: [host:port]}."""
    return sum(len(cluster.get(task_type, [])) for task_type in TASK_TYPES)


def rank(cluster, task_type, index):
    """The global rank of task `task_type`:`index`: the chief counts first."""
    chiefs = len(cluster.get("chief", []))
    return int(index) + (chiefs if task_type == "worker" else 0)


def task_rank(config):
    """(rank, world size) of the task a validated TF_CONFIG describes."""
    task = config["task"]
    return rank(config["cluster"], task["type"], task["index"]), world_size(config["cluster"])
