"""Strategy names -> backend factories, and the choice of 'auto'.

Every factory takes (replicas, fp16_allreduce) and returns a Backend. The horovod factory
imports train.distribute.horovod (and so horovod) only when called: importing the package
never imports horovod, and a missing horovod is a UsageError only for `--strategy horovod`.
"""

import os

from train import cluster
from train.distribute import base, strategies
from train.errors import UsageError


def _default(replicas, fp16_allreduce):
    return strategies.default()


def _mirrored(replicas, fp16_allreduce):
    return strategies.mirrored(replicas)


def _multiworker(replicas, fp16_allreduce):
    return strategies.multiworker()


def _horovod(replicas, fp16_allreduce):
    from train.distribute import horovod

    return horovod.create(fp16_allreduce=fp16_allreduce)


FACTORIES = {
    "default": _default,
    "mirrored": _mirrored,
    "multiworker": _multiworker,
    "horovod": _horovod,
}


def resolve_strategy_name(requested):
    """'auto' -> what the environment calls for."""
    if requested != "auto":
        return requested
    tf_config = strategies.tf_config()
    if tf_config and cluster.world_size(tf_config["cluster"]) > 1:
        return "multiworker"
    if "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return "horovod"
    return "mirrored" if len(base.gpus()) > 1 else "default"


def create(strategy_name, *, replicas=None, fp16_allreduce=False):
    """Build the backend; must run before any other TensorFlow op in the process.

    fp16_allreduce: Horovod only, gradients travel as float16 (--horovod-fp16-allreduce).
    """
    name = resolve_strategy_name(strategy_name)
    if fp16_allreduce and name != "horovod":
        raise UsageError(
            f"--horovod-fp16-allreduce applies to --strategy horovod only "
            f"(the strategy here is {name})"
        )
    if name not in FACTORIES:
        raise UsageError(f"--strategy: unknown strategy {strategy_name!r}")
    return FACTORIES[name](replicas, fp16_allreduce)
