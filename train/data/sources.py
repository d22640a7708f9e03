"""Datasets by name: what a dataset is (DatasetInfo) and where its examples come from.

* A TFDS image-classification dataset prepared in the data dir (default: $TFDS_DATA_DIR,
  else ~/tensorflow_datasets), opened once per process and checked (features 'image'
  with a fixed (H, W, C) and 'label' a ClassLabel; splits 'train' and 'test' or
  'validation'). Never downloaded here: an unprepared one is a one-line UsageError that
  says how to prepare it.
* A built-in dataset (train.data.builtin): `shapes10` is prepared into the data dir on
  first use; `synthetic` has no files, each example is computed from its index.
* Examples. A split is loaded once into host memory (uint8; decoded once per machine,
  train.data.split_cache) and batches are gathered by index (`batch_source`), so this
  suits datasets that fit in host memory (CIFAR, MNIST, shapes10 ...). Images come out
  uint8 as stored, labels int32.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train.config import DEFAULT_DATASET  # noqa: F401  (part of this module's API)
from train.data import builtin as builtin_datasets  # importing registers shapes10 with TFDS
from train.data import split_cache
from train.errors import UsageError, first_line

SYNTHETIC = "synthetic"
_SPLITS = {}  # (name, data_dir, split) -> (images uint8, labels int32), loaded once


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
            raise UsageError(
                f"dataset {self.name!r} has no split {split!r}; it has {', '.join(sorted(sizes))}"
            )
        return sizes[split]


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _data_dir(data_dir):
    return os.path.expanduser(data_dir or default_data_dir())


def dataset_info(name: str, data_dir: str | None) -> DatasetInfo:
    """Describe a dataset; prepares a built-in one on first use; UsageError if unusable."""
    if name == SYNTHETIC:
        return DatasetInfo(
            SYNTHETIC,
            (32, 32, 3),
            10,
            50_000,
            10_000,
            split_sizes=(("test", 10_000), ("train", 50_000)),
        )
    builder = _builder(name, _data_dir(data_dir))
    features, splits = builder.info.features, builder.info.splits
    eval_split = _eval_split(builder)
    return DatasetInfo(
        name,
        tuple(int(d) for d in features["image"].shape),
        int(features["label"].num_classes),
        int(splits["train"].num_examples),
        int(splits[eval_split].num_examples),
        eval_split=eval_split,
        split_sizes=tuple(sorted((str(k), int(v.num_examples)) for k, v in splits.items())),
    )


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
            "image-classification dataset prepared in the data dir (e.g. 'cifar10', 'mnist')"
        )
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
            f"'{base}' directory into {data_dir}"
        )
    return builder


def _check_features(name, builder):
    features = builder.info.features
    if (
        "image" not in features
        or "label" not in features
        or not isinstance(features["label"], tfds.features.ClassLabel)
    ):
        raise UsageError(
            f"dataset {name!r} is not image classification: it needs features "
            f"'image' and 'label' (ClassLabel), has {sorted(features.keys())}"
        )
    shape = features["image"].shape
    if len(shape) != 3 or None in shape:
        raise UsageError(f"dataset {name!r} has images of shape {shape}; need a fixed (H, W, C)")
    if "train" not in builder.info.splits or not _eval_split(builder):
        raise UsageError(
            f"dataset {name!r} needs 'train' and 'test' (or 'validation') splits, "
            f"has {sorted(builder.info.splits.keys())}"
        )


def _eval_split(builder):
    return next((s for s in ("test", "validation") if s in builder.info.splits), None)


def load_split(name, data_dir, split):
    """The whole split as (uint8 images, int32 labels) tensors in host memory, loaded once."""
    key = (name, data_dir, split)
    if key not in _SPLITS:
        builder = _builder(name, data_dir)

        def decode():
            images, labels = tfds.as_numpy(
                builder.as_dataset(
                    split=split, batch_size=-1, as_supervised=True, shuffle_files=False
                )
            )
            return images, labels.astype(np.int32)

        images, labels = split_cache.load(name, builder.data_dir, split, decode)
        with tf.device("/cpu:0"):
            _SPLITS[key] = (tf.constant(images), tf.constant(labels))
    return _SPLITS[key]


def batch_source(info, data_dir, split):
    """A function: int64 indices [B] -> (uint8 images [B, H, W, C], int32 labels [B])."""
    if info.name == SYNTHETIC:
        return functools.partial(
            builtin_datasets.synthetic_batch,
            split=split,
            image_shape=info.image_shape,
            num_classes=info.num_classes,
        )
    images, labels = load_split(info.name, _data_dir(data_dir), split)
    return lambda indices: (tf.gather(images, indices), tf.gather(labels, indices))
