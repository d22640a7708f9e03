"""The Horovod backend: Horovod's core ops on TensorFlow's default strategy.

Horovod 0.28.1's Keras integration (`horovod.tensorflow.keras`, DistributedGradientTape,
elastic state) does not work with Keras 3, so only its core ops are used, on tensors and
on the raw `tf.Variable`s under the Keras variables:

* one process per rank (started by horovodrun, or alone: then it is a single rank);
  one GPU per local rank when the host has GPUs (memory growth on);
* data: every rank builds its own pipeline with an InputContext (pipeline = rank,
  pipelines = replicas = size), so train.data.order shards by rank exactly as for multi-worker
  (global batch = per-rank batch x ranks);
* gradients: the loss of each rank is scaled by the *global* batch (train.loops.trainer), so the
  gradients are SUMMED across ranks with one `hvd.grouped_allreduce(op=hvd.Sum)`, which
  gives the gradient of the global mean loss; optionally in float16 on the wire;
* metrics and the preemption flag: the per-step vector [loss sum, correct, count, stop]
  is summed across ranks by `hvd.allreduce(op=hvd.Sum)` inside the compiled loop, so every
  rank sees a stop after the same step and saves there;
* variables: broadcast from rank 0 after initialisation and after every restore
  (train.run calls `broadcast_variables`);
* rank 0 is the chief, the only writer of the workdir.
"""

import tensorflow as tf

from train.distribute import base
from train.errors import UsageError, first_line

INSTALL_HINT = "build it with: bash launch/build_horovod.sh (see README)"
ROOT_RANK = 0


def _import_horovod():
    """horovod.tensorflow, or a UsageError whose one line says how to install it."""
    try:
        import horovod.tensorflow as hvd
    except ModuleNotFoundError as e:
        if e.name in ("horovod", "horovod.tensorflow"):
            raise UsageError(
                f"--strategy horovod: horovod is not installed; {INSTALL_HINT}"
            ) from None
        raise UsageError(
            f"--strategy horovod: horovod cannot be loaded ({first_line(e)}); {INSTALL_HINT}"
        ) from None
    except (ImportError, OSError, tf.errors.NotFoundError) as e:
        # Typically its op library was built against another TensorFlow.
        raise UsageError(
            f"--strategy horovod: horovod cannot be loaded ({first_line(e)}); "
            "rebuild it for this TensorFlow with: "
            "HOROVOD_REBUILD=1 bash launch/build_horovod.sh"
        ) from None
    return hvd


class HorovodBackend(base.Backend):
    name = "horovod"
    # Horovod's XLA op variants are left out of the build (they do not compile against
    # TF 2.21), so --jit-compile leaves the train step unjitted.
    collectives_in_xla = False

    def __init__(self, hvd, *, fp16_allreduce=False):
        super().__init__(
            strategy=tf.distribute.get_strategy(), worker_index=hvd.rank(), num_workers=hvd.size()
        )
        self.hvd = hvd
        self.local_rank = hvd.local_rank()
        self.fp16_allreduce = bool(fp16_allreduce)
        self._compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none

    @property
    def num_replicas(self):
        # One replica per rank; the default strategy inside a rank counts only itself.
        return self.num_workers

    def reduce_gradients(self, grads):
        """Sum over ranks (the loss is already divided by the global batch)."""
        if self.num_workers == 1:
            return grads
        present = [i for i, g in enumerate(grads) if g is not None]
        dense = [tf.convert_to_tensor(grads[i]) for i in present]  # IndexedSlices -> dense
        summed = self.hvd.grouped_allreduce(dense, op=self.hvd.Sum, compression=self._compression)
        out = list(grads)
        for i, g in zip(present, summed, strict=True):
            out[i] = g
        return out

    @property
    def gradients_summed_in_step(self):
        return self.num_workers > 1  # one grouped allreduce in reduce_gradients

    def agree_any(self, flag):
        if self.num_workers == 1:
            return flag
        return self.hvd.allreduce(tf.cast(flag, tf.float32), op=self.hvd.Sum) > 0

    def reduce_sum(self, per_replica):
        """The sum over all ranks; also how every rank learns of a peer's preemption."""
        if self.num_workers == 1:
            return per_replica
        return self.hvd.allreduce(per_replica, op=self.hvd.Sum)

    def broadcast_variables(self, variables):
        """Every rank takes rank 0's values (Keras 3 variables: their raw tf.Variable)."""
        if self.num_workers == 1:
            return
        raw = [_raw_variable(v) for v in variables]
        self.hvd.broadcast_variables(raw, root_rank=ROOT_RANK)

    def describe(self):
        return (
            f"horovod: rank {self.worker_index} of {self.num_workers}"
            f"{', fp16 allreduce' if self.fp16_allreduce else ''}"
        )


def _raw_variable(variable):
    """The tf.Variable under a Keras 3 variable (or the variable itself)."""
    if isinstance(variable, tf.Variable):
        return variable
    for candidate in (getattr(variable, "value", None), getattr(variable, "_value", None)):
        if isinstance(candidate, tf.Variable):
            return candidate
    raise TypeError(
        f"cannot broadcast {getattr(variable, 'path', variable)!r}: no tf.Variable under it"
    )


def _pin_gpu(hvd):
    """One GPU per local rank; must run before TensorFlow initialises its devices."""
    gpus = base.gpus()
    if not gpus:
        return
    local = hvd.local_rank()
    if local >= len(gpus):
        raise UsageError(
            f"--strategy horovod: local rank {local} has no GPU of its own "
            f"(this host has {len(gpus)}); start at most {len(gpus)} ranks per host"
        )
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpus[local], "GPU")
    except RuntimeError as e:  # TensorFlow already initialised (in-process use)
        raise UsageError(f"--strategy horovod: cannot pin GPU {local} to this rank: {e}") from None


def create(*, fp16_allreduce=False):
    """hvd.init(), pin the GPU, and the backend. Without horovodrun: a single rank."""
    hvd = _import_horovod()
    if not hvd.is_initialized():
        hvd.init()
    _pin_gpu(hvd)
    return HorovodBackend(hvd, fp16_allreduce=fp16_allreduce)
