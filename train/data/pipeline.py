"""Datasets by name -> tf.data pipelines, sharded across workers, with an exact, cheap position.

Invariants (other modules and the resume tests rely on them):

* Position. The training stream of worker w of W is a pure function of (seed, w, step).
  Epoch e uses perm_e = stateless_shuffle(range(N), seed=(seed, e)); worker w takes
  perm_e[:P * W][w::W] with P = N // W (the uneven tail is dropped so every worker has
  P examples per epoch). The stream is epoch 0, epoch 1, ... concatenated without end and
  batches cross epoch boundaries. After `step` global steps a worker has consumed
  step * (global_batch_size // W) examples, so (epoch, offset) = divmod(that, P).
  Only the step needs checkpointing: resuming builds the stream from that epoch on and
  slices the offset off (nothing is iterated from the beginning), and yields exactly the
  batches an uninterrupted run would have produced.
* Sharding goes through tf.distribute.InputContext (as `distribute_datasets_from_function`
  passes it): w = input_pipeline_id, W = num_input_pipelines, and the dataset is batched
  per replica (each local replica pulls its own batches). Without one: w=0, W=1, batch =
  global batch. tf.data auto-sharding is switched off: we shard ourselves.
* Augmentation (flip + crop after 4-pixel zero padding) takes its parameters from a
  per-epoch table seeded by (seed, epoch) and indexed by example, i.e. a pure function of
  (seed, epoch, example index): no RNG state in checkpoints, identical after resume.
  The trainer's pipeline carries the codes and the trainer applies them in its compiled
  step (augment_images); `augment=True` applies them in the pipeline instead.
* Examples. A split is loaded once into host memory (uint8; decoded once per machine,
  train.data.split_cache) and batches are gathered by index, so this suits datasets that fit
  in host memory (CIFAR, MNIST, shapes10 ...).
  Images come out uint8 as stored, labels int32: a quarter of the bytes of float32 to
  batch, prefetch and copy to the devices. The model takes float32 in [0, 1]; `to_float`
  makes that, and the trainer calls it inside its compiled step, on the device (pass
  float_images=True for a pipeline that feeds a model directly, e.g. Keras `fit`).
  `synthetic` has no files: each example is computed from its index (see
  train.data.builtin), so it is deterministic too.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train.data import builtin as builtin_datasets  # importing registers shapes10 with TFDS
from train.data import split_cache
from train.errors import UsageError, first_line

DEFAULT_DATASET = "shapes10"
SYNTHETIC = "synthetic"
PAD = 4  # CIFAR-standard crop padding
_SPAN = 2 * PAD + 1  # possible crop offsets per axis
_AUG_CODES = 2 * _SPAN * _SPAN  # one int encodes (flip, dx, dy)
_SPLITS = {}  # (name, data_dir, split) -> (images uint8, labels int32), loaded once
# The functions given to tf.data are straight-line TF code: autograph's source conversion
# of them would only cost start-up time (~0.15 s, on every start and every resume).
_no_autograph = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: tuple  # (H, W, C)
    num_classes: int
    num_train: int
    num_test: int  # examples in eval_split, the split training evaluates on
    eval_split: str = "test"
    split_sizes: tuple = ()  # ((split name, examples), ...): every split the dataset has

    def split_size(self, split):
        """Examples in `split`; UsageError naming the splits there are if it has none such."""
        sizes = dict(self.split_sizes) or {"train": self.num_train, self.eval_split: self.num_test}
        if split not in sizes:
            raise UsageError(f"dataset {self.name!r} has no split {split!r}; it has "
                             f"{', '.join(sorted(sizes))}")
        return sizes[split]


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _data_dir(data_dir):
    return os.path.expanduser(data_dir or default_data_dir())


def dataset_info(name: str, data_dir: str | None) -> DatasetInfo:
    """Describe a dataset; prepares a built-in one on first use; UsageError if unusable."""
    if name == SYNTHETIC:
        return DatasetInfo(SYNTHETIC, (32, 32, 3), 10, 50_000, 10_000,
                           split_sizes=(("test", 10_000), ("train", 50_000)))
    builder = _builder(name, _data_dir(data_dir))
    features, splits = builder.info.features, builder.info.splits
    eval_split = _eval_split(builder)
    return DatasetInfo(name, tuple(int(d) for d in features["image"].shape),
                       int(features["label"].num_classes), int(splits["train"].num_examples),
                       int(splits[eval_split].num_examples), eval_split=eval_split,
                       split_sizes=tuple(sorted((str(k), int(v.num_examples))
                                                for k, v in splits.items())))


@functools.lru_cache(maxsize=None)
def _builder(name, data_dir):
    """An opened, prepared, validated TFDS builder (cached: opening reads JSON files)."""
    base = name.split(":")[0].split("/")[0]
    if base in builtin_datasets.BUILTIN:
        builder = builtin_datasets.prepare(name, data_dir)
    elif base not in tfds.list_builders(with_community_datasets=False):
        raise UsageError(
            f"unknown dataset {name!r}; use {SYNTHETIC!r}, "
            f"{', '.join(repr(b) for b in builtin_datasets.BUILTIN)} or a TFDS "
            "image-classification dataset prepared in the data dir (e.g. 'cifar10', 'mnist')")
    else:
        builder = _open_prepared(name, base, data_dir)
    _check_features(name, builder)
    return builder


def _open_prepared(name, base, data_dir):
    try:
        with builtin_datasets.quiet_tfds():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except Exception as e:  # noqa: BLE001  (any TFDS failure is bad input here)
        raise UsageError(f"cannot open dataset {name!r} in {data_dir}: {first_line(e)}") from None
    if not prepared:
        # No download here: it could hang on a machine without internet, and N workers
        # downloading at once into one directory would race.
        raise UsageError(
            f"dataset {name!r} is not prepared in {data_dir}: run `tfds build {base} "
            f"--data_dir {data_dir}` on a machine with internet, or copy a prepared "
            f"'{base}' directory into {data_dir}")
    return builder


def _check_features(name, builder):
    features = builder.info.features
    if ("image" not in features or "label" not in features
            or not isinstance(features["label"], tfds.features.ClassLabel)):
        raise UsageError(f"dataset {name!r} is not image classification: it needs features "
                         f"'image' and 'label' (ClassLabel), has {sorted(features.keys())}")
    shape = features["image"].shape
    if len(shape) != 3 or None in shape:
        raise UsageError(f"dataset {name!r} has images of shape {shape}; need a fixed (H, W, C)")
    if "train" not in builder.info.splits or not _eval_split(builder):
        raise UsageError(f"dataset {name!r} needs 'train' and 'test' (or 'validation') splits, "
                         f"has {sorted(builder.info.splits.keys())}")


def _eval_split(builder):
    return next((s for s in ("test", "validation") if s in builder.info.splits), None)


def _load_split(name, data_dir, split):
    """The whole split as (uint8 images, int32 labels) tensors in host memory, loaded once."""
    key = (name, data_dir, split)
    if key not in _SPLITS:
        builder = _builder(name, data_dir)

        def decode():
            images, labels = tfds.as_numpy(builder.as_dataset(
                split=split, batch_size=-1, as_supervised=True, shuffle_files=False))
            return images, labels.astype(np.int32)

        images, labels = split_cache.load(name, builder.data_dir, split, decode)
        with tf.device("/cpu:0"):
            _SPLITS[key] = (tf.constant(images), tf.constant(labels))
    return _SPLITS[key]


def _batch_source(info, data_dir, split):
    """A function: int64 indices [B] -> (uint8 images [B, H, W, C], int32 labels [B])."""
    if info.name == SYNTHETIC:
        return functools.partial(
            builtin_datasets.synthetic_batch, split=split,
            image_shape=info.image_shape, num_classes=info.num_classes)
    images, labels = _load_split(info.name, _data_dir(data_dir), split)
    return lambda indices: (tf.gather(images, indices), tf.gather(labels, indices))


def _epoch_shard(num_examples, seed, epoch, worker_index, num_workers):
    """This worker's indices of epoch `epoch`: every W-th of the epoch's permutation."""
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), epoch]), alg="philox")
    per_worker = num_examples // num_workers
    return perm[worker_index:per_worker * num_workers:num_workers]


def _augment_codes(num_examples, seed, epoch):
    """Per-example augmentation codes of one epoch, seeded by (seed, epoch) only."""
    aug_seed = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), epoch]), 1, alg="philox")
    return tf.random.stateless_uniform(
        [num_examples], seed=aug_seed, minval=0, maxval=_AUG_CODES, dtype=tf.int32, alg="philox")


def _per_worker(info, num_workers):
    """Training examples per worker per epoch (the uneven tail of the permutation dropped)."""
    if info.num_train // num_workers < 1:
        raise UsageError(f"{num_workers} workers but only {info.num_train} training examples")
    return info.num_train // num_workers


def _epochs(info, seed, start_example, worker_index, num_workers):
    """Infinite dataset of whole epochs, each one element ([P] example indices, [P]
    augmentation codes), from `start_example` on (the first epoch starts at its offset)."""
    start_epoch, offset = divmod(int(start_example), _per_worker(info, num_workers))

    @_no_autograph
    def epoch_arrays(epoch):
        shard = _epoch_shard(info.num_train, seed, epoch, worker_index, num_workers)
        shard = shard[tf.where(epoch == start_epoch, offset, 0):]  # skip what was consumed
        return shard, tf.gather(_augment_codes(info.num_train, seed, epoch), shard)

    return tf.data.Dataset.counter(start_epoch, dtype=tf.int64).map(epoch_arrays)


def _batched_stream(info, seed, start_example, worker_index, num_workers, batch):
    """Batches of (example indices, augmentation codes) cut from the endless stream of
    epochs, across epoch boundaries. rebatch slices whole epochs: no per-example element
    goes through tf.data (0.25 ms of CPU per batch of 256 instead of 0.6)."""
    return _epochs(info, seed, start_example, worker_index, num_workers).rebatch(
        batch, drop_remainder=True)


def example_indices(info, *, seed, start_example: int, worker_index: int = 0,
                    num_workers: int = 1) -> tf.data.Dataset:
    """The index stream the training pipeline maps to examples (scalar int64 elements),
    for worker `worker_index` of `num_workers`, after its first `start_example` examples."""
    return _epochs(info, seed, start_example, worker_index, num_workers).unbatch().map(
        _no_autograph(lambda index, code: index))


def position(info: DatasetInfo, *, step: int, global_batch_size: int,
             num_workers: int = 1) -> tuple[int, int]:
    """(epoch, offset within this worker's epoch) after `step` global steps."""
    if global_batch_size % num_workers:
        raise UsageError(f"global batch size {global_batch_size} is not divisible by "
                         f"the number of workers {num_workers}")
    consumed = step * (global_batch_size // num_workers)
    return divmod(consumed, _per_worker(info, num_workers))


def augment_images(images, codes):
    """Random crop after zero padding, then optional horizontal flip, per example; `codes`
    are the pipeline's per-example augmentation codes (train_dataset, with_codes).

    Done on the whole batch with two batched gathers (rows, then columns) instead of
    per-example ops. Any dtype: the trainer calls it on float32 inside its compiled step
    (GPUs have float gather kernels), the pipeline on uint8 for plain Keras `fit`.
    """
    height, width = images.shape[1], images.shape[2]
    flip, dx, dy = codes % 2, (codes // 2) % _SPAN, codes // (2 * _SPAN)
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
        raise UsageError(f"global batch size {global_batch_size} is not divisible by "
                         f"the number of replicas {replicas}")
    return (input_context.input_pipeline_id, input_context.num_input_pipelines,
            input_context.get_per_replica_batch_size(global_batch_size))


def _options():
    options = tf.data.Options()
    options.deterministic = True  # parallel map, but batches in stream order
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # We shard by InputContext ourselves; auto-sharding by file would break the position.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(info: DatasetInfo, data_dir, *, global_batch_size: int, seed: int,
                  start_step: int, augment: bool,
                  input_context: tf.distribute.InputContext | None = None,
                  with_codes: bool = False, with_indices: bool = False,
                  float_images: bool = False) -> tf.data.Dataset:
    """Infinite training batches (uint8 images, int32 labels) from `start_step` on.

    augment: the images come out augmented (for a model fed directly, e.g. Keras `fit`);
    with_codes: (images, labels, int32 augmentation codes) instead, images as stored, for
      a consumer that augments inside its compiled step (train.loops.trainer: on the accelerator,
      and on a CPU host without its threads contending with the model's);
    with_indices: int64 example indices appended, for tests (train.loops.trainer's hook);
    float_images: images as float32 in [0, 1] (to_float in the pipeline).
    """
    worker, workers, batch = _sharding(global_batch_size, input_context)
    start_example = start_step * (global_batch_size // workers)
    source = _batch_source(info, data_dir, "train")

    @_no_autograph
    def make_batch(indices, codes):
        images, labels = source(indices)
        images = augment_images(images, codes) if augment else images
        images = to_float(images) if float_images else images
        return (images, labels, *([codes] if with_codes else []),
                *([indices] if with_indices else []))

    ds = _batched_stream(info, seed, start_example, worker, workers, batch)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(info: DatasetInfo, data_dir, *, global_batch_size: int,
                 input_context: tf.distribute.InputContext | None = None,
                 float_images: bool = False, split: str | None = None) -> tf.data.Dataset:
    """A whole split (default: the evaluation split, info.eval_split) once, in order,
    sharded by worker; the last partial batch kept."""
    split = split or info.eval_split
    num_examples = info.split_size(split)
    worker, workers, batch = _sharding(global_batch_size, input_context)
    source = _batch_source(info, data_dir, split)

    @_no_autograph
    def make_batch(indices):
        images, labels = source(indices)
        return (to_float(images) if float_images else images), labels

    ds = tf.data.Dataset.range(worker, num_examples, workers)
    ds = ds.batch(batch, drop_remainder=False)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def padded_eval_dataset(info: DatasetInfo, data_dir, *, global_batch_size: int,
                        input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """(images, labels, weights) batches for distributed evaluation.

    Every replica of every worker gets the same number of full batches: the test split is
    padded with weight-0 copies of example 0. Uneven or empty final batches would
    otherwise reach some replicas only (an empty batch fails inside MirroredStrategy, and
    unequal batch counts stall MultiWorkerMirroredStrategy's collectives).
    """
    worker, workers, batch = _sharding(global_batch_size, input_context)
    local_replicas = (input_context.num_replicas_in_sync // workers) if input_context else 1
    source = _batch_source(info, data_dir, info.eval_split)
    per_worker = -(-info.num_test // workers)
    padded = -(-per_worker // (batch * local_replicas)) * batch * local_replicas

    @_no_autograph
    def make_batch(indices):
        images, labels = source(tf.maximum(indices, 0))
        return images, labels, tf.cast(indices >= 0, tf.float32)

    real = tf.data.Dataset.range(worker, info.num_test, workers)
    count = len(range(worker, info.num_test, workers))
    pad = tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)).repeat(padded - count)
    ds = real.concatenate(pad).batch(batch, drop_remainder=True)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
