"""Built-in datasets that need no download: `shapes10` (a TFDS builder) and `synthetic`.

Importing this package registers shapes10 with TFDS (a builder class registers itself when
its module is imported), so `tfds.builder("shapes10", data_dir=...)` works afterwards.
`prepare` builds it into a data dir once, even when several processes start together.

`synthetic` has no files at all: pixels and labels are an integer hash of (split, example
index, pixel position), so any example is computed from its index alone (deterministic,
stateless, vectorised over a batch). Labels are unrelated to the images: it is for
measuring throughput, not for learning.
"""

import contextlib
import fcntl
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train.data.builtin import shapes10  # noqa: F401  (import registers the builder)
from train.errors import UsageError, first_line

BUILTIN = ("shapes10",)
SYNTHETIC_SALT = {"train": 0x5EED0001, "test": 0x5EED0002}


@contextlib.contextmanager
def quiet_tfds():
    """Mute TFDS's absl warnings ("Variant folder ... has no dataset_info.json", logged
    whenever a dataset is opened before it is prepared): bad input must end in one clear
    line, not warnings plus our error, and a first preparation is not a problem."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def prepare(name, data_dir):
    """The prepared TFDS builder of built-in `name` ("shapes10" or "shapes10:1.0.0").

    One process prepares under an exclusive fcntl lock on a file in data_dir; the others
    block on the lock, then find it prepared. TFDS itself writes into a temporary
    directory and renames it when complete, so a crash never leaves a half dataset.
    """
    try:
        os.makedirs(data_dir, exist_ok=True)
        with quiet_tfds():
            builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        base = name.split(":")[0]
        with open(os.path.join(data_dir, f".{base}.lock"), "w") as lock, quiet_tfds():
            fcntl.flock(lock, fcntl.LOCK_EX)
            builder = tfds.builder(name, data_dir=data_dir)  # maybe prepared meanwhile
            if not builder.is_prepared():
                builder.download_and_prepare()
        return builder
    except (OSError, tf.errors.OpError) as e:  # e.g. a read-only or full data dir
        raise UsageError(
            f"cannot prepare dataset {name!r} in {data_dir}: {first_line(e)}"
        ) from None


def _mix32(x):
    """A 32-bit integer hash (xorshift-multiply) on int64 values in [0, 2**32).

    Both multipliers are < 2**31, so products stay below 2**63: no int64 overflow.
    """
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def synthetic_batch(indices, *, split, image_shape, num_classes):
    """int64 indices [B] -> (uint8 images [B, *image_shape], int32 labels [B])."""
    pixels = int(np.prod(image_shape))
    keys = _mix32(tf.bitwise.bitwise_xor(indices, SYNTHETIC_SALT[split]))[:, None]
    images = _mix32(tf.bitwise.bitwise_xor(keys, tf.range(pixels, dtype=tf.int64)[None]))
    images = tf.reshape(tf.cast(images & 0xFF, tf.uint8), (-1, *image_shape))
    return images, tf.cast(keys[:, 0] % num_classes, tf.int32)
