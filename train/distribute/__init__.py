"""Backends: who computes where, and how replicas agree.

One interface (`Backend`), four implementations, chosen by name (`create`):

  base.py        Backend and what every backend shares: the teardown of a multi-worker
                 process (leave_cluster, keep_until_exit, teardown_may_hang). No backend.
  strategies.py  default, mirrored, multiworker: the tf.distribute strategies.
  horovod.py     horovod: Horovod's core ops on the default strategy, one rank per process.
  registry.py    name -> factory, resolve_strategy_name ('auto' -> what the environment
                 calls for), create. horovod is imported only when it is asked for.

The cluster environment (TF_CONFIG, the rank rule, HARNESS_* variables) is train.cluster's.
Imports: horovod and strategies import base; base imports no backend; registry imports
strategies, and horovod lazily.
"""

from train.distribute.base import Backend, keep_until_exit, leave_cluster, teardown_may_hang
from train.distribute.registry import create, resolve_strategy_name

__all__ = [
    "Backend",
    "create",
    "keep_until_exit",
    "leave_cluster",
    "resolve_strategy_name",
    "teardown_may_hang",
]
