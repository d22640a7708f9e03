"""Backends: who computes where, and how replicas agree.

One interface (`Backend`), four implementations:

  default      tf.distribute's default strategy: one device (a GPU if there is one).
  mirrored     MirroredStrategy over the local GPUs (NCCL all-reduce), or over `--replicas`
               logical CPU devices on a host without GPUs (so it is testable on CPU).
  multiworker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG (set by
               harness-launch or a Kubernetes TFJob) or from Slurm.
  horovod      Horovod's core ops on the default strategy, one rank per process
               (train.distribute.horovod); `num_replicas` is then the number of ranks.

Invariants kept here: the chief is worker 0 (or the TF_CONFIG 'chief' task) and is the
only writer of the workdir; the loss of each replica is scaled by the *global* batch, so
gradients are combined by summation (tf.distribute optimizers sum across replicas, and
Horovod's allreduce is asked to sum too).
"""

import os
import threading
import time

import tensorflow as tf

from train.errors import UsageError


# (this task's index, number of tasks) once this process has started
# MultiWorkerMirroredStrategy. Its coordination service can hang the interpreter's
# teardown when another task has exited first (seen here about once in four 2-worker
# runs; tensorflow/tensorflow#58434), so train.cli ends such a process with os._exit once
# everything is written and flushed, after leave_cluster.
_cluster_task = None
LEAVE_TIMEOUT_S = 20  # task 0 waits this long for the others (harness-launch: 30 s)
LEAVE_NOTICE_TIMEOUT_S = 5  # another task gives up telling task 0 after this long


def teardown_may_hang():
    return _cluster_task is not None


_kept_until_exit = []


def keep_until_exit(*objects):
    """In a multi-worker process, keep `objects` (TensorFlow objects) alive until os._exit.

    Destroying the training iterator and datasets as a run returned hung one worker in
    about 1 of 7 600-step 2-worker runs here (a stack dump showed it there, the other
    worker waiting for it). Nothing they hold needs a clean teardown: checkpoints and
    metrics are closed explicitly. Elsewhere: a no-op.
    """
    if teardown_may_hang():
        _kept_until_exit.extend(objects)


def leave_cluster(code, context=None):
    """Call last, right before os._exit(code), in a multi-worker process.

    The coordination service lives in task 0 and dies with it. When task 0 left as soon
    as the final barrier let it through, another task could still be waiting for that
    barrier's answer, and hung until harness-launch stopped the group (exit 1 after a
    good run; the other cause: keep_until_exit). So after a successful run every other
    task says it is leaving (a key in the service's store) and task 0 exits only once all
    have, or after LEAVE_TIMEOUT_S. A failed run leaves at once.
    """
    if _cluster_task is None or code != 0:
        return
    from tensorflow.python.eager import context as eager_context

    context = context or eager_context.context()
    index, count = _cluster_task
    if index == 0:
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        for other in range(1, count):
            remaining_ms = max(1, int(1000 * (deadline - time.monotonic())))
            try:
                context.get_config_key_value(f"harness-leaving/{other}", remaining_ms)
            except Exception:  # timed out or the service failed: leave anyway
                return
        return
    # If task 0 were gone already, the call could wait forever: give it a few seconds.
    notice = threading.Thread(target=context.set_config_key_value,
                              args=(f"harness-leaving/{index}", "0"), daemon=True)
    notice.start()
    notice.join(LEAVE_NOTICE_TIMEOUT_S)


class Backend:
    """What the trainer needs to know about distribution."""

    name = "default"
    collectives_in_xla = True  # reduce_gradients may run inside an XLA-compiled step

    def __init__(self, *, strategy, worker_index=0, num_workers=1):
        self.strategy = strategy
        self.worker_index = worker_index
        self.num_workers = num_workers

    @property
    def is_chief(self):
        return self.worker_index == 0

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    def input_context(self):
        """This worker's shard of the input, as distribute_datasets_from_function passes it."""
        return tf.distribute.InputContext(num_input_pipelines=self.num_workers,
                                          input_pipeline_id=self.worker_index,
                                          num_replicas_in_sync=self.num_replicas)

    def distribute_dataset(self, dataset_fn):
        """dataset_fn(input_context) -> what the trainer iterates: per-replica batches.

        Here the worker's one replica reads the worker's dataset directly.
        """
        return dataset_fn(self.input_context())

    def reduce_gradients(self, grads):
        """Replica context. tf.distribute optimizers already sum across replicas."""
        return grads

    def reduce_sum(self, per_replica):
        """Cross-replica context: the sum over every replica of every worker."""
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def broadcast_variables(self, variables):
        """Make every worker start from the chief's values (tf.distribute does it at creation)."""

    def barrier(self, name):
        """Return when every worker has arrived here (one process: at once)."""

    def describe(self):
        return f"{self.name}: {self.num_workers} worker(s), {self.num_replicas} replica(s)"


class _StrategyBackend(Backend):
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


class MultiWorkerBackend(_StrategyBackend):
    name = "multiworker"
    barrier_timeout_s = 3600  # the chief may be exporting a large model meanwhile

    def barrier(self, name):
        # The coordination service's barrier: no collective, so it cannot be confused with
        # training's. Needed at the end: task 0 leads the coordination service, and a worker
        # that exits while the chief still exports (or the chief after it) can leave the
        # other hanging in shutdown or failing its heartbeats.
        from tensorflow.python.eager import context

        context.context().wait_at_barrier(name, int(self.barrier_timeout_s * 1000))


def _gpus():
    return tf.config.list_physical_devices("GPU")


def _tf_config():
    """TF_CONFIG from the environment, validated (one check shared with harness-launch)."""
    from train.cluster import existing_tf_config

    return existing_tf_config(os.environ)


def _in_slurm_multitask():
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def resolve_strategy_name(requested):
    """'auto' -> what the environment calls for."""
    if requested != "auto":
        return requested
    tf_config = _tf_config()
    cluster = tf_config["cluster"] if tf_config else {}
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return "multiworker"
    if "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return "horovod"
    return "mirrored" if len(_gpus()) > 1 else "default"


def _logical_cpus(n):
    """Split the host CPU into n logical devices (only possible before TF initialises)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        pass  # runtime already initialised (in-process tests): use what exists
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < n:
        raise UsageError(f"--replicas {n}: only {len(devices)} logical CPU devices could be made "
                         "(TensorFlow was initialised before the backend)")
    return devices[:n]


def _mirrored(replicas):
    gpus = _gpus()
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
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return MirroredBackend(strategy=strategy)


def _multiworker():
    if _tf_config() is not None:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    elif _in_slurm_multitask():
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
    else:
        raise UsageError("--strategy multiworker needs TF_CONFIG (use harness-launch) or a Slurm job")
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if _gpus()
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    count = chiefs + len(spec.get("worker", []))
    global _cluster_task
    _cluster_task = (index, count)  # index 0 (the chief) leads the coordination service
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver,
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation))
    return MultiWorkerBackend(strategy=strategy, worker_index=index, num_workers=count)


def create(strategy_name, *, replicas=None, fp16_allreduce=False):
    """Build the backend; must run before any other TensorFlow op in the process.

    fp16_allreduce: Horovod only, gradients travel as float16 (--horovod-fp16-allreduce).
    """
    name = resolve_strategy_name(strategy_name)
    if fp16_allreduce and name != "horovod":
        raise UsageError(f"--horovod-fp16-allreduce applies to --strategy horovod only "
                         f"(the strategy here is {name})")
    if name == "default":
        return Backend(strategy=tf.distribute.get_strategy())
    if name == "mirrored":
        return _mirrored(replicas)
    if name == "multiworker":
        return _multiworker()
    if name == "horovod":
        from train.distribute import horovod as horovod_backend

        return horovod_backend.create(fp16_allreduce=fp16_allreduce)
    raise UsageError(f"--strategy: unknown strategy {strategy_name!r}")
