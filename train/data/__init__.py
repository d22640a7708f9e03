"""Datasets by name -> tf.data pipelines, sharded across workers, with an exact, cheap position.

The package's map:

  sources.py      what a dataset is and where its examples come from: DatasetInfo,
                  dataset_info, default_data_dir, DEFAULT_DATASET, SYNTHETIC; opening and
                  checking TFDS builders; a split loaded once into host memory, gathered by
                  index (batch_source).
  order.py        which example indices, with which augmentation codes, worker w of W sees
                  from global step s on: the per-epoch seeded permutation, the per-worker
                  shard, the codes, and the invariant position = f(seed, step) (stated there).
  pipeline.py     the tf.data pipelines: train_dataset (cut from order.epochs),
                  eval_dataset, padded_eval_dataset; augment_images, to_float.
  split_cache.py  decoded splits kept on local disk ($HARNESS_CACHE_DIR).
  builtin/        the built-in datasets: the shapes10 TFDS builder and its preparation;
                  synthetic examples computed from their index.

Importing the package imports TensorFlow and TFDS (and registers shapes10 with TFDS).
"""

from train.data.pipeline import (
    augment_images,
    eval_dataset,
    padded_eval_dataset,
    to_float,
    train_dataset,
)
from train.data.sources import (
    DEFAULT_DATASET,
    SYNTHETIC,
    DatasetInfo,
    dataset_info,
    default_data_dir,
)

__all__ = [
    "DEFAULT_DATASET",
    "SYNTHETIC",
    "DatasetInfo",
    "augment_images",
    "dataset_info",
    "default_data_dir",
    "eval_dataset",
    "padded_eval_dataset",
    "to_float",
    "train_dataset",
]
