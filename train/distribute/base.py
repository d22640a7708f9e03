"""What every backend shares: the `Backend` interface and the multi-worker teardown.

`Backend` is the default strategy's behaviour (one replica reads its worker's dataset,
tf.distribute optimizers sum across replicas); the backends of train.distribute.strategies
and train.distribute.horovod override what differs. Nothing here imports a backend.

Invariants kept by every backend: the chief is worker 0 (or the TF_CONFIG 'chief' task:
train.cluster's rank rule) and is the only writer of the workdir; the loss of each replica
is scaled by the *global* batch, so gradients are combined by summation (tf.distribute
optimizers sum across replicas, and Horovod's allreduce is asked to sum too).
"""

import threading
import time

import tensorflow as tf

# (this task's index, number of tasks) once this process has started
# MultiWorkerMirroredStrategy. Its coordination service can hang the interpreter's
# teardown when another task has exited first (seen here about once in four 2-worker
# runs; tensorflow/tensorflow#58434), so train.cli ends such a process with os._exit once
# everything is written and flushed, after leave_cluster.
_cluster_task = None
LEAVE_TIMEOUT_S = 20  # task 0 waits this long for the others (harness-launch: 30 s)
LEAVE_NOTICE_TIMEOUT_S = 5  # another task gives up telling task 0 after this long


def joined_cluster(index, count):
    """Record that this process, task `index` of `count`, has joined a multi-worker cluster."""
    global _cluster_task
    _cluster_task = (index, count)  # index 0 (the chief) leads the coordination service


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
    notice = threading.Thread(
        target=context.set_config_key_value, args=(f"harness-leaving/{index}", "0"), daemon=True
    )
    notice.start()
    notice.join(LEAVE_NOTICE_TIMEOUT_S)


def gpus():
    return tf.config.list_physical_devices("GPU")


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
        return tf.distribute.InputContext(
            num_input_pipelines=self.num_workers,
            input_pipeline_id=self.worker_index,
            num_replicas_in_sync=self.num_replicas,
        )

    def distribute_dataset(self, dataset_fn):
        """dataset_fn(input_context) -> what the trainer iterates: per-replica batches.

        Here the worker's one replica reads the worker's dataset directly.
        """
        return dataset_fn(self.input_context())

    def reduce_gradients(self, grads):
        """Replica context. tf.distribute optimizers already sum across replicas."""
        return grads

    # True where reduce_gradients sums over every replica before the update, so that
    # a flag folded into the gradients reaches every replica (train.loops.nonfinite).
    gradients_summed_in_step = False

    def agree_any(self, flag):
        """Replica context: true on every replica if `flag` (a scalar bool) is on any."""
        if self.num_replicas == 1:
            return flag
        total = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(flag, tf.float32)
        )
        return total > 0

    def reduce_sum(self, per_replica):
        """Cross-replica context: the sum over every replica of every worker."""
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def broadcast_variables(self, variables):
        """Make every worker start from the chief's values (tf.distribute does it at creation)."""

    def preempted_during_startup(self):
        """Whether a preemption signal reached a process of this run while a library's
        own handler held the signal (only MultiWorkerMirroredStrategy's start does)."""
        return False

    def barrier(self, name):
        """Return when every worker has arrived here (one process: at once)."""

    def describe(self):
        return f"{self.name}: {self.num_workers} worker(s), {self.num_replicas} replica(s)"
