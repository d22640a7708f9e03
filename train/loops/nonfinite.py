"""Non-finite steps (issue 19): detected in the compiled step, never applied, never saved.

In the replica step (train.loops.trainer):

* `bad` = the loss or the gradients hold a NaN or an Inf, on any replica of any worker.
  Every replica must reach the same decision, or their update collectives would part:
  - Horovod with several ranks: the local loss flag is folded into the smallest gradient
    (a select: NaN there if this rank's loss is non-finite) before the gradient allreduce,
    and `bad` is read off the summed gradients, which every rank holds alike: no extra
    collective (a NaN or Inf anywhere makes the sum non-finite);
  - one replica: nothing to agree;
  - tf.distribute with several replicas: Keras sums the gradients inside
    `apply_gradients`, after the point where the update must be decided, so the local flag
    is agreed with one scalar all-reduce per step (Backend.agree_any).
* Under mixed_float16 the LossScaleOptimizer skips steps whose *scaled* gradients overflow
  and halves its scale: that is its normal working, not an error. There only the (unscaled)
  loss is checked, and the gradients are left to the LossScaleOptimizer's own skip.
* A `bad` step's update is not applied at all (`apply_unless`: a tf.cond around
  apply_gradients, so optimizer slots and iterations are untouched too, unlike a zero
  gradient, which still moves Adam's moments), and its loss/accuracy are left out of the
  metric sums; the NONFINITE column counts it, NONFINITE_LOSS says whether its loss was.
* The step counter still advances (the data position is a function of the step).

The compiled loop (Trainer._train_n_impl) counts consecutive bad steps across calls and
leaves the call at once when they reach the limit: 1 for --on-nonfinite stop, N for skip
(--max-nonfinite-skips). The controller then raises NonFiniteError (exit 1) without saving:
the variables are those of the last good step, and the last checkpoint stays `latest`.
"""

import tensorflow as tf

POLICIES = ("stop", "skip")


def all_finite(tensors):
    """A scalar bool: every element of every (non-None) tensor is finite."""
    flags = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t))) for t in tensors if t is not None
    ]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def step_flags(backend, loss, grads, *, check_gradients):
    """(reduced gradients, bad, loss_bad): `bad` agreed by every replica (module doc);
    `loss_bad` this replica's own, for the report only."""
    loss_bad = tf.logical_not(all_finite([loss]))
    folded = check_gradients and backend.gradients_summed_in_step
    if folded:
        grads = _fold_in(grads, loss_bad)
    grads = backend.reduce_gradients(grads)
    if folded:
        return grads, tf.logical_not(all_finite(grads)), loss_bad
    local = loss_bad
    if check_gradients:
        local = tf.logical_or(local, tf.logical_not(all_finite(grads)))
    return grads, backend.agree_any(local), loss_bad


def _fold_in(grads, flag):
    """grads with the smallest dense one set to NaN where `flag` (a scalar bool) is true."""
    sizes = [
        (g.shape.num_elements() or 0, i)
        for i, g in enumerate(grads)
        if isinstance(g, tf.Tensor) and g.dtype.is_floating
    ]
    if not sizes:
        return grads
    i = min(sizes)[1]
    out = list(grads)
    out[i] = tf.where(flag, tf.constant(float("nan"), grads[i].dtype), grads[i])
    return out


def apply_unless(bad, apply, grads):
    """apply(grads) (an optimizer update, replica context) only where `bad` is false.

    A strategy that updates through merge_call (MirroredStrategy, the default one) does
    not allow a cond whose branch calls merge_call in a replica context: the cond then goes
    in the cross-replica context, as Keras's LossScaleOptimizer does it, and `grads` pass
    through merge_call so that each replica applies its own."""
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(bad, _nothing, lambda: _nothing(apply(grads)))
        return

    def cross_replica(distribution, bad, grads):
        agreed = distribution.experimental_local_results(bad)[0]  # every replica's is equal
        tf.cond(
            agreed,
            _nothing,
            lambda: _nothing(distribution.extended.call_for_each_replica(apply, args=(grads,))),
        )

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(bad, grads))


def _nothing(*_):
    return None


def describe(steps, loss_steps):
    """'loss' or 'gradients' (or both) of a report, from the two columns' counts."""
    if loss_steps <= 0:
        return "gradients"
    return "loss" if loss_steps >= steps else "loss and gradients"
