"""The order of training examples: which example indices, with which augmentation codes,
worker w of W sees from global step s on. The training pipeline (train.data.pipeline) takes
its indices from `epochs` and nothing else, so what the tests check here is what trains.

Invariants (the trainer, the checkpoints and the resume tests rely on them):

* Position = f(seed, step). The training stream of worker w of W is a pure function of
  (seed, w, step). Epoch e uses perm_e = stateless_shuffle(range(N), seed=(seed, e)); worker
  w takes perm_e[:P * W][w::W] with P = N // W (the uneven tail is dropped so every worker
  has P examples per epoch). The stream is epoch 0, epoch 1, ... concatenated without end
  and batches cross epoch boundaries. After `step` global steps a worker has consumed
  step * (global_batch_size // W) examples, so (epoch, offset) = divmod(that, P)
  (`position`). Only the step needs checkpointing: resuming builds the stream from that
  epoch on and slices the offset off (nothing is iterated from the beginning), and yields
  exactly the batches an uninterrupted run would have produced.
* Augmentation codes come from a per-epoch table seeded by (seed, epoch) and indexed by
  example: a pure function of (seed, epoch, example index), so no RNG state goes into
  checkpoints and a resumed run augments identically. One int32 code encodes
  (flip, dx, dy) of a flip + crop after PAD-pixel zero padding (train.data.pipeline's
  augment_images decodes it).
"""

import tensorflow as tf

from train.errors import UsageError

PAD = 4  # CIFAR-standard crop padding
SPAN = 2 * PAD + 1  # possible crop offsets per axis
AUG_CODES = 2 * SPAN * SPAN  # one int encodes (flip, dx, dy)
# The functions given to tf.data are straight-line TF code: autograph's source conversion
# of them would only cost start-up time (~0.15 s, on every start and every resume).
no_autograph = tf.autograph.experimental.do_not_convert


def per_worker(num_examples, num_workers):
    """Training examples per worker per epoch (the uneven tail of the permutation dropped)."""
    if num_examples // num_workers < 1:
        raise UsageError(f"{num_workers} workers but only {num_examples} training examples")
    return num_examples // num_workers


def position(num_examples, *, step, global_batch_size, num_workers=1):
    """(epoch, offset within this worker's epoch) after `step` global steps."""
    if global_batch_size % num_workers:
        raise UsageError(
            f"global batch size {global_batch_size} is not divisible by "
            f"the number of workers {num_workers}"
        )
    consumed = step * (global_batch_size // num_workers)
    return divmod(consumed, per_worker(num_examples, num_workers))


def epoch_shard(num_examples, seed, epoch, worker_index, num_workers):
    """This worker's indices of epoch `epoch`: every W-th of the epoch's permutation."""
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        alg="philox",
    )
    count = per_worker(num_examples, num_workers)
    return perm[worker_index : count * num_workers : num_workers]


def augment_codes(num_examples, seed, epoch):
    """Per-example augmentation codes of one epoch, seeded by (seed, epoch) only."""
    aug_seed = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), epoch]), 1, alg="philox"
    )
    return tf.random.stateless_uniform(
        [num_examples], seed=aug_seed, minval=0, maxval=AUG_CODES, dtype=tf.int32, alg="philox"
    )


def epochs(num_examples, *, seed, step, global_batch_size, worker_index=0, num_workers=1):
    """What worker `worker_index` of `num_workers` trains on from global step `step` on.

    An infinite dataset of whole epochs, each one element ([P] int64 example indices,
    [P] int32 augmentation codes); the first epoch starts at the offset `position` gives.
    """
    start_epoch, offset = position(
        num_examples, step=step, global_batch_size=global_batch_size, num_workers=num_workers
    )

    @no_autograph
    def epoch_arrays(epoch):
        shard = epoch_shard(num_examples, seed, epoch, worker_index, num_workers)
        shard = shard[tf.where(epoch == start_epoch, offset, 0) :]  # skip what was consumed
        return shard, tf.gather(augment_codes(num_examples, seed, epoch), shard)

    return tf.data.Dataset.counter(start_epoch, dtype=tf.int64).map(epoch_arrays)
