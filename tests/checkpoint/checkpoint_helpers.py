"""Helpers of the tests in tests/checkpoint: a tiny state, filling and comparing it, a
manager over it, ways to damage a saved checkpoint, and the fixtures `ckdir` and
`two_saved` (a test module imports ckdir_fixture / two_saved_fixture to use them)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from train.checkpoint.manager import CheckpointManager, CheckpointOptions

C1, C2, DATA = "ckpt-00000001", "ckpt-00000002", ["state.data-00000-of-00001", "state.index"]


def tiny_state(units=3):
    """Dense + Dropout (SeedGenerator state) + BatchNorm (moving stats) + built Adam + step."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(units),
            keras.layers.Dropout(0.5),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return {
        "model": model.variables,
        "optimizer": optimizer.variables,
        "train": [tf.Variable(0, dtype=tf.int64)],
    }


def fill(state, seed):
    """Give every variable (ints too) values that depend on `seed` only."""
    rng = np.random.default_rng(seed)
    for v in flat(state):
        dtype = np.dtype(tf.as_dtype(v.dtype).as_numpy_dtype)
        if dtype.kind == "f":
            v.assign(rng.standard_normal(tuple(v.shape)).astype(dtype))
        else:
            v.assign(rng.integers(0, 1000, tuple(v.shape)).astype(dtype))


def flat(state):
    return [v for vs in state.values() for v in vs]


def values(state):
    return [v.numpy() for v in flat(state)]


def assert_values(state, expected):
    got = values(state)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def manager(directory, state, *, chief=True, clock=None, **options):
    extra = {"clock": clock} if clock else {}
    return CheckpointManager(
        directory=directory,
        state=state,
        is_chief=chief,
        meta={"model": "tiny"},
        options=CheckpointOptions(**options),
        **extra,
    )


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.startswith(".tmp-")]


@pytest.fixture(name="ckdir")
def ckdir_fixture(tmp_path):
    return str(tmp_path / "checkpoints")


@pytest.fixture(name="two_saved")
def two_saved_fixture(ckdir):
    """ckdir with steps 1 and 2 saved from distinct values; returns those values."""
    state = tiny_state()
    saved = {}
    with manager(ckdir, state) as m:
        for step in (1, 2):
            fill(state, seed=step)
            m.save(step)
            saved[step] = values(state)
    return saved


def truncate_data(path):
    data = os.path.join(path, "state.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)


def flip_data_bytes(path):
    with open(os.path.join(path, "state.data-00000-of-00001"), "r+b") as f:
        f.seek(16)
        chunk = f.read(8)
        f.seek(16)
        f.write(bytes(b ^ 0xFF for b in chunk))


def write_pointer(ckdir, text):
    with open(os.path.join(ckdir, "latest"), "w") as f:
        f.write(text)
