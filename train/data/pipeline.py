"""tf.data pipelines: training batches in train.data.order's order, evaluation splits in order.

Invariants (train.data.order states the position = f(seed, step) one):

* Sharding goes through tf.distribute.InputContext (as `distribute_datasets_from_function`
  passes it): w = input_pipeline_id, W = num_input_pipelines, and the dataset is batched
  per replica (each local replica pulls its own batches). Without one: w=0, W=1, batch =
  global batch. tf.data auto-sharding is switched off: we shard ourselves.
* Training batches are cut from `order.epochs` (rebatch: whole epochs are sliced, no
  per-example element goes through tf.data) across epoch boundaries; resuming at a step
  yields exactly the batches an uninterrupted run would have from there.
* Augmentation (flip + crop after 4-pixel zero padding) follows order's per-example codes.
  The trainer's pipeline carries the codes and the trainer applies them in its compiled
  step (augment_images); `augment=True` applies them in the pipeline instead.
* Images come out uint8 as stored (train.data.sources), labels int32: a quarter of the
  bytes of float32 to batch, prefetch and copy to the devices. The model takes float32 in
  [0, 1]; `to_float` makes that, and the trainer calls it inside its compiled step, on the
  device (pass float_images=True for a pipeline that feeds a model directly, e.g. Keras
  `fit`).
"""

import tensorflow as tf

from train.data import order, sources
from train.data.order import PAD, SPAN, no_autograph
from train.data.sources import DatasetInfo
from train.errors import UsageError


def augment_images(images, codes):
    """Random crop after zero padding, then optional horizontal flip, per example; `codes`
    are the pipeline's per-example augmentation codes (train_dataset, with_codes).

    Done on the whole batch with two batched gathers (rows, then columns) instead of
    per-example ops. Any dtype: the trainer calls it on float32 inside its compiled step
    (GPUs have float gather kernels), the pipeline on uint8 for plain Keras `fit`.
    """
    height, width = images.shape[1], images.shape[2]
    flip, dx, dy = codes % 2, (codes // 2) % SPAN, codes // (2 * SPAN)
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = dy[:, None] + tf.range(height)[None]
    cols = tf.where(flip[:, None] == 1, tf.range(width - 1, -1, -1)[None], tf.range(width)[None])
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, dx[:, None] + cols, axis=2, batch_dims=1)


def to_float(images):
    """uint8 images as stored -> float32 in [0, 1], what the models take."""
    return tf.cast(images, tf.float32) / 255.0


def _sharding(global_batch_size, input_context):
    """(worker index, number of workers, batch size of one pull) from the InputContext."""
    if global_batch_size < 1:
        raise UsageError(f"global batch size must be positive, got {global_batch_size}")
    if input_context is None:
        return 0, 1, global_batch_size
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(
            f"global batch size {global_batch_size} is not divisible by "
            f"the number of replicas {replicas}"
        )
    return (
        input_context.input_pipeline_id,
        input_context.num_input_pipelines,
        input_context.get_per_replica_batch_size(global_batch_size),
    )


def _options():
    options = tf.data.Options()
    options.deterministic = True  # parallel map, but batches in stream order
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # We shard by InputContext ourselves; auto-sharding by file would break the position.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _batches(ds, make_batch):
    """ds of index batches -> make_batch's batches, made in parallel, kept in order."""
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def train_dataset(
    info: DatasetInfo,
    data_dir,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    augment: bool,
    input_context: tf.distribute.InputContext | None = None,
    with_codes: bool = False,
    with_indices: bool = False,
    float_images: bool = False,
) -> tf.data.Dataset:
    """Infinite training batches (uint8 images, int32 labels) from `start_step` on.

    augment: the images come out augmented (for a model fed directly, e.g. Keras `fit`);
    with_codes: (images, labels, int32 augmentation codes) instead, images as stored, for
      a consumer that augments inside its compiled step (train.loops.trainer: on the accelerator,
      and on a CPU host without its threads contending with the model's);
    with_indices: int64 example indices appended, for tests (train.loops.trainer's hook);
    float_images: images as float32 in [0, 1] (to_float in the pipeline).
    """
    worker, workers, batch = _sharding(global_batch_size, input_context)
    source = sources.batch_source(info, data_dir, "train")
    make_batch = _train_batch_fn(source, augment, float_images, with_codes, with_indices)
    ds = order.epochs(
        info.num_train,
        seed=seed,
        step=start_step,
        global_batch_size=global_batch_size,
        worker_index=worker,
        num_workers=workers,
    ).rebatch(batch, drop_remainder=True)
    return _batches(ds, make_batch)


def _train_batch_fn(source, augment, float_images, with_codes, with_indices):
    @no_autograph
    def make_batch(indices, codes):
        images, labels = source(indices)
        images = augment_images(images, codes) if augment else images
        images = to_float(images) if float_images else images
        extra = [*([codes] if with_codes else []), *([indices] if with_indices else [])]
        return (images, labels, *extra)

    return make_batch


def eval_dataset(
    info: DatasetInfo,
    data_dir,
    *,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    float_images: bool = False,
    split: str | None = None,
) -> tf.data.Dataset:
    """A whole split (default: the evaluation split, info.eval_split) once, in order,
    sharded by worker; the last partial batch kept."""
    split = split or info.eval_split
    num_examples = info.split_size(split)
    worker, workers, batch = _sharding(global_batch_size, input_context)
    source = sources.batch_source(info, data_dir, split)

    @no_autograph
    def make_batch(indices):
        images, labels = source(indices)
        return (to_float(images) if float_images else images), labels

    ds = tf.data.Dataset.range(worker, num_examples, workers)
    ds = ds.batch(batch, drop_remainder=False)
    return _batches(ds, make_batch)


def padded_eval_dataset(
    info: DatasetInfo,
    data_dir,
    *,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """(images, labels, weights) batches for distributed evaluation.

    Every replica of every worker gets the same number of full batches: the test split is
    padded with weight-0 copies of example 0. Uneven or empty final batches would
    otherwise reach some replicas only (an empty batch fails inside MirroredStrategy, and
    unequal batch counts stall MultiWorkerMirroredStrategy's collectives).
    """
    worker, workers, batch = _sharding(global_batch_size, input_context)
    local_replicas = (input_context.num_replicas_in_sync // workers) if input_context else 1
    source = sources.batch_source(info, data_dir, info.eval_split)
    per_worker = -(-info.num_test // workers)
    padded = -(-per_worker // (batch * local_replicas)) * batch * local_replicas

    @no_autograph
    def make_batch(indices):
        images, labels = source(tf.maximum(indices, 0))
        return images, labels, tf.cast(indices >= 0, tf.float32)

    real = tf.data.Dataset.range(worker, info.num_test, workers)
    count = len(range(worker, info.num_test, workers))
    pad = tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)).repeat(padded - count)
    ds = real.concatenate(pad).batch(batch, drop_remainder=True)
    return _batches(ds, make_batch)
