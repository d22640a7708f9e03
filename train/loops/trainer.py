"""The trainer: compiled train/eval steps and the outer loop.

Step semantics: one step = one global batch = one optimizer update, whatever the number
of replicas. `step` lives in a tf.Variable that is checkpointed with the model; the data
position is a pure function of it (train.data.order), so resuming needs nothing else.

Each compiled call runs up to `steps_per_call` steps and returns the sums of
[loss * examples, correct, examples, stop, nonfinite, nonfinite loss] over all replicas;
`stop` is the preemption flag (train.loops.preemption), read after the step's optimizer
update, so the call leaves after the step in which any worker saw a signal, and every
worker leaves after the same step. `nonfinite` counts the steps whose loss or gradients
were NaN/Inf (not applied, left out of the first three columns; train.loops.nonfinite),
and the call leaves as soon as `nonfinite_limit` such steps came in a row.

Test hook: with HARNESS_RECORD_INDICES=<file> in the environment, train.run asks the
pipeline for the example indices of each batch too (train.data.pipeline, `with_indices`), and
every executed step appends one line "<step> [<index> ...]" to that file from inside the
compiled loop: the indices of exactly the batch that step trained on, global-batch order
(replica 0 first), this process's share only. The resume tests compare these lines.
"""

import os
import time

import keras
import tensorflow as tf

from train import data
from train.loops import nonfinite

LOSS_SUM, CORRECT, COUNT, STOP, NONFINITE, NONFINITE_LOSS = range(6)
COLUMNS = 6
RECORD_INDICES_ENV = "HARNESS_RECORD_INDICES"


class Trainer:
    """Owns the compiled functions; knows nothing about files or schedules."""

    def __init__(
        self,
        *,
        backend,
        model,
        optimizer,
        global_batch_size,
        stop_flag,
        augment=False,
        jit_compile=False,
        record_indices=None,
        nonfinite_limit=1,
    ):
        self.backend = backend
        self.augment = augment  # batches carry augmentation codes: see _replica_train_step
        self.record_indices = record_indices  # a file path: see the test hook above
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = global_batch_size
        self.stop_flag = stop_flag
        # Consecutive non-finite steps after which a call leaves (1: --on-nonfinite stop).
        self.nonfinite_limit = int(nonfinite_limit)
        # The LossScaleOptimizer skips overflowing gradients itself: only the loss is checked.
        self.check_gradients = not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        with backend.strategy.scope():
            self.step = _counter("step")
            self.nonfinite_run = _counter("nonfinite_run")  # not checkpointed: a new count
        # A backend whose collectives have no XLA kernels (Horovod) runs its step unjitted.
        jit_compile = jit_compile and backend.collectives_in_xla
        # No autograph: the loop below is written as a tf.while_loop, everything else is
        # straight-line code, and converting it all cost ~0.35 s of every start (and resume).
        self._replica_step = tf.function(
            self._replica_train_step, jit_compile=jit_compile, autograph=False
        )
        self._train_n = tf.function(self._train_n_impl, autograph=False)
        self._eval_batch = tf.function(self._eval_batch_impl, autograph=False)

    def _replica_train_step(self, images, labels, codes=None):
        model, optimizer = self.model, self.optimizer
        images = data.to_float(images)
        if codes is not None:
            # Augmented here, not in tf.data: on a GPU it runs on the device; on a CPU host
            # it runs in the step's own threads instead of contending with them (+6%
            # throughput with augmentation on 2 cores). float32: GPUs gather floats.
            images = data.augment_images(images, codes)
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            # Scaled by the global batch: summing gradients over replicas gives the mean.
            loss = tf.reduce_sum(per_example) / self.global_batch_size
            if model.losses:
                loss += tf.add_n(model.losses) / self.backend.num_replicas
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        grads, bad, loss_bad = nonfinite.step_flags(
            self.backend, loss, grads, check_gradients=self.check_gradients
        )
        nonfinite.apply_unless(
            bad, lambda g: optimizer.apply_gradients(zip(g, model.trainable_variables)), grads
        )
        # The flag is read after the update (reads of the updated variables come first), not
        # whenever the scheduler likes: a signal during this step then stops after it.
        with tf.control_dependencies([tf.identity(v) for v in model.trainable_variables]):
            stop = tf.identity(self.stop_flag.read_value())
        sums = self._sums(per_example, probs, labels, stop=stop)
        share = 1.0 / self.backend.num_replicas  # the columns sum to 1 per step
        flags = tf.stack([tf.cast(bad, tf.float32), tf.cast(loss_bad, tf.float32)]) * share
        kept = tf.where(bad, tf.zeros([3]), sums[:3])  # metrics of applied steps only
        return tf.concat([kept, sums[3:4], flags], axis=0)

    def _sums(self, per_example, probs, labels, weights=None, stop=0.0):
        correct = tf.cast(
            tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32)),
            tf.float32,
        )
        if weights is None:
            weights = tf.ones_like(correct)
        return tf.stack(
            [
                tf.reduce_sum(tf.cast(per_example, tf.float32) * weights),
                tf.reduce_sum(correct * weights),
                tf.reduce_sum(weights),
                tf.cast(stop, tf.float32),
                0.0,
                0.0,
            ]
        )

    def _train_n_impl(self, iterator, n):
        def one_step(i, totals):
            batch = next(iterator)  # (images, labels, codes if augment, indices if recording)
            inputs = batch[:3] if self.augment else batch[:2]
            per_replica = self.backend.strategy.run(self._replica_step, args=inputs)
            sums = self.backend.reduce_sum(per_replica)
            run = tf.where(sums[NONFINITE] > 0.5, self.nonfinite_run + 1, tf.zeros([], tf.int64))
            with tf.control_dependencies([self.step.assign_add(1), self.nonfinite_run.assign(run)]):
                if self.record_indices:
                    self._record(batch[-1])
                return i + 1, totals + sums

        def more(i, totals):  # stop after the step in which any worker saw a signal
            return tf.logical_and(
                tf.logical_and(i < n, totals[STOP] <= 0), self.nonfinite_run < self.nonfinite_limit
            )  # or after too many bad steps

        _, totals = tf.while_loop(more, one_step, (tf.constant(0, n.dtype), tf.zeros([COLUMNS])))
        return totals

    def nonfinite_stopped(self):
        """True if the last call left because of `nonfinite_limit` bad steps in a row."""
        return int(self.nonfinite_run.numpy()) >= self.nonfinite_limit

    def _record(self, indices):
        local = self.backend.strategy.experimental_local_results(indices)
        tf.print(
            self.step.read_value(),
            tf.concat(local, axis=0),
            summarize=-1,
            output_stream="file://" + os.path.abspath(self.record_indices),
        )

    def train(self, iterator, n):
        """Run up to n steps; returns host-side sums (numpy) of the steps that ran."""
        return self._train_n(iterator, tf.constant(n, tf.int64)).numpy()

    def _replica_eval_step(self, images, labels, weights):
        probs = self.model(data.to_float(images), training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
        return self._sums(per_example, probs, labels, weights)

    def _eval_batch_impl(self, batch):
        per_replica = self.backend.strategy.run(self._replica_eval_step, args=batch)
        return self.backend.reduce_sum(per_replica)

    def evaluate(self, distributed_dataset):
        """distributed_dataset yields (images, labels, weights): see data.padded_eval_dataset."""
        totals = None
        for batch in distributed_dataset:
            sums = self._eval_batch(batch).numpy()
            totals = sums if totals is None else totals + sums
        count = float(totals[COUNT]) if totals is not None else 0.0
        if count == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0}
        return {
            "loss": float(totals[LOSS_SUM] / count),
            "accuracy": float(totals[CORRECT] / count),
            "examples": int(count),
        }


class Throughput:
    """Wall-clock rate between two log points (includes input wait: what users get)."""

    def __init__(self):
        self.reset(0)

    def reset(self, step):
        self.start_time = time.perf_counter()
        self.start_step = step

    def rate(self, step):
        elapsed = time.perf_counter() - self.start_time
        steps = step - self.start_step
        return (steps / elapsed if elapsed > 0 else 0.0), elapsed


def _counter(name):
    """An int64 step-like counter, the same on every replica."""
    return tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
