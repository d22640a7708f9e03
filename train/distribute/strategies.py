"""The tf.distribute backends: default, mirrored and multiworker.

  default      tf.distribute's default strategy: one device (a GPU if there is one).
  mirrored     MirroredStrategy over the local GPUs (NCCL all-reduce), or over `--replicas`
               logical CPU devices on a host without GPUs (so it is testable on CPU).
  multiworker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG (set by
               harness-launch or a Kubernetes TFJob; checked by train.cluster) or from
               Slurm (`srun -n WORLD harness-train ...`, through SlurmClusterResolver).

Each must be created before any other TensorFlow op of the process.
"""

import os

import tensorflow as tf

from train import cluster
from train.distribute import base
from train.errors import UsageError


class _StrategyBackend(base.Backend):
    """A tf.distribute strategy with its own input distribution (mirrored, multiworker)."""

    def distribute_dataset(self, dataset_fn):
        devices = self.strategy.extended.worker_devices
        on_cpu = all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in devices)
        if on_cpu and len(devices) == 1:
            # The batch is already where this worker's one replica computes. tf.distribute's
            # multi-device iterator, even told not to fetch to the device, cost 0.6-0.9 ms
            # of a 19 ms step here (mirrored x1 against default, several builds of each).
            return super().distribute_dataset(dataset_fn)
        # GPU replicas get their batches prefetched into device memory; several replicas on
        # logical CPUs need the iterator to deal out their batches, but not the copy.
        options = tf.distribute.InputOptions(experimental_fetch_to_device=not on_cpu)
        return self.strategy.distribute_datasets_from_function(dataset_fn, options=options)


class MirroredBackend(_StrategyBackend):
    name = "mirrored"


PREEMPTION_NOTICE_KEY = "TF_DEFAULT_PREEMPTION_NOTICE_KEY"  # TF's own (preemption_watcher.py)
NOTICE_WAIT_MS = 50


class MultiWorkerBackend(_StrategyBackend):
    name = "multiworker"
    barrier_timeout_s = 3600  # the chief may be exporting a large model meanwhile

    def preempted_during_startup(self):
        # Starting the strategy installs TensorFlow's C-level SIGTERM notifier, which keeps
        # the signal from train.loops.preemption until train.run installs it again; what
        # the notifier does with it is to publish, asynchronously, this key in the
        # coordination service, for every task to read. Asked after the set-up (seconds
        # later), so a notice published by then is seen; a short wait when there is none.
        from tensorflow.python.eager import context

        try:
            context.context().get_config_key_value(
                PREEMPTION_NOTICE_KEY, timeout_in_ms=NOTICE_WAIT_MS
            )
        except tf.errors.DeadlineExceededError:
            return False
        return True

    def barrier(self, name):
        # The coordination service's barrier: no collective, so it cannot be confused with
        # training's. Needed at the end: task 0 leads the coordination service, and a worker
        # that exits while the chief still exports (or the chief after it) can leave the
        # other hanging in shutdown or failing its heartbeats.
        from tensorflow.python.eager import context

        context.context().wait_at_barrier(name, int(self.barrier_timeout_s * 1000))


def tf_config():
    """TF_CONFIG from the environment, validated (the check harness-launch makes too)."""
    return cluster.existing_tf_config(os.environ)


def in_slurm_multitask():
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def default():
    return base.Backend(strategy=tf.distribute.get_strategy())


def _logical_cpus(n):
    """Split the host CPU into n logical devices (only possible before TF initialises)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        pass  # runtime already initialised (in-process tests): use what exists
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < n:
        raise UsageError(
            f"--replicas {n}: only {len(devices)} logical CPU devices could be made "
            "(TensorFlow was initialised before the backend)"
        )
    return devices[:n]


def mirrored(replicas=None):
    gpus = base.gpus()
    if gpus:
        n = replicas or len(gpus)
        if n > len(gpus):
            raise UsageError(f"--replicas {n}: only {len(gpus)} GPU(s) on this host")
        devices = [f"/gpu:{i}" for i in range(n)]
        # NCCL all-reduce is MirroredStrategy's default across GPUs.
        return MirroredBackend(strategy=tf.distribute.MirroredStrategy(devices))
    devices = _logical_cpus(replicas or 1)
    # NCCL is GPU-only; on CPU, reduce through one device.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    return MirroredBackend(strategy=strategy)


def _cluster_resolver():
    if tf_config() is not None:
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if in_slurm_multitask():
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    raise UsageError("--strategy multiworker needs TF_CONFIG (use harness-launch) or a Slurm job")


def multiworker():
    resolver = _cluster_resolver()
    implementations = tf.distribute.experimental.CommunicationImplementation
    implementation = implementations.NCCL if base.gpus() else implementations.RING
    spec = resolver.cluster_spec().as_dict()
    index = cluster.rank(spec, resolver.task_type, resolver.task_id)
    count = cluster.world_size(spec)
    base.joined_cluster(index, count)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver,
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation
        ),
    )
    return MultiWorkerBackend(strategy=strategy, worker_index=index, num_workers=count)
