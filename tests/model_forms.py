"""Fixtures and helpers shared by tests/export and tests/cli: a small trained model
exported in every format, files of the wrong kinds, and a workdir as harness-train leaves
it (config.json and checkpoints at steps 2 and 4), exported by harness-export.

A test module that uses the fixtures says `pytest_plugins = ["model_forms"]`; each
module gets its own instances (scope "module"). The constants and helpers it imports.
"""

import hashlib
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from train import data, export, models, optimizers
from train.checkpoint import manager as checkpoint
from train.cli import eval_main, export_main
from train.config import TrainConfig

from conftest import REPO, prepare_small_shapes10

SHAPE, CLASSES = (18, 18, 3), 4  # the smallest input the seed CNN takes is 18x18
NUM_TRAIN, NUM_TEST = 128, 300  # a small shapes10 for the command-line tests
TIGHT = dict(rtol=1e-6, atol=1e-6)
ALL_FILES = ["export.json", "model.keras", "model.weights.h5", "saved_model"]


def train_steps(model, optimizer, batches):
    """A few plain optimizer steps (like train.loops.trainer, without a strategy)."""

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    for x, y in batches:
        step(x, y)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(directory):
    return sorted(os.listdir(directory))


def run_python(code, *args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def eval_json(capsys, *argv):
    assert eval_main([*argv, "--json", "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def assert_usage_error(rc, capsys, prog="harness-eval"):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, captured
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The seed CNN on 18x18x3 random data, 3 Adam steps, exported in all formats."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((96, *SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, 96).astype(np.int32)
    model = models.build("cnn", SHAPE, CLASSES)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    train_steps(model, optimizer, dataset)
    directory = str(tmp_path_factory.mktemp("export"))
    written = export.export_model(model, optimizer, directory)
    return types.SimpleNamespace(
        model=model,
        optimizer=optimizer,
        x=x,
        y=y,
        dataset=dataset,
        directory=directory,
        written=written,
        probs=model.predict_on_batch(x),
    )


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, trained):
    base = tmp_path_factory.mktemp("bad")
    text = base / "notes.txt"
    text.write_text("not a model\n")
    empty_dir = base / "empty"
    empty_dir.mkdir()
    d = trained.directory
    return types.SimpleNamespace(
        text=str(text),
        dir=str(empty_dir),
        keras=os.path.join(d, "model.keras"),
        weights=os.path.join(d, "model.weights.h5"),
        saved_model=os.path.join(d, "saved_model"),
    )


# --------------------------------------------------------------------------- a saved run


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """A small shapes10 (32x32x3, 10 classes) prepared through data.dataset_info."""
    return prepare_small_shapes10(
        str(tmp_path_factory.mktemp("tfds")), num_train=NUM_TRAIN, num_test=NUM_TEST
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_data_dir):
    """A workdir as harness-train leaves it: config.json and checkpoints at steps 2 and 4
    with train.run's state and meta; no export yet. Also the in-memory numbers at step 4."""
    path, data_dir = str(tmp_path_factory.mktemp("run")), small_data_dir
    info = data.dataset_info("shapes10", data_dir)
    identity = {
        "model": "cnn",
        "dataset": "shapes10",
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
    }
    # precision as train.run records it: resolved, here float32 (the policy of this test).
    config = {
        **TrainConfig(workdir=path).to_json(),
        "data_dir": data_dir,
        "batch_size": 32,
        "steps": 4,
        "learning_rate": 3e-3,
        "precision": "fp32",
        **identity,
        "total_steps": 4,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    keras.utils.set_random_seed(1)
    model = models.build("cnn", info.image_shape, info.num_classes)
    optimizer = optimizers.build(types.SimpleNamespace(**config))
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    batches = iter(
        data.train_dataset(
            info,
            data_dir,
            global_batch_size=32,
            seed=0,
            start_step=0,
            augment=False,
            float_images=True,
        )
    )
    with checkpoint.CheckpointManager(
        directory=os.path.join(path, "checkpoints"),
        is_chief=True,
        state={"model": model.variables, "optimizer": optimizer.variables, "train": [step]},
        meta={**identity, "batch_size": 32},
    ) as manager:
        for n in (2, 4):
            train_steps(model, optimizer, [next(batches), next(batches)])
            step.assign(n)
            manager.save(n)
            if n == 2:
                at_2 = export.evaluate(
                    export.make_predict_fn(model),
                    data.eval_dataset(info, data_dir, global_batch_size=100, float_images=True),
                )
    final = export.evaluate(
        export.make_predict_fn(model),
        data.eval_dataset(info, data_dir, global_batch_size=100, float_images=True),
    )
    return types.SimpleNamespace(path=path, data_dir=data_dir, at_2=at_2, final=final)


@pytest.fixture(scope="module")
def empty_run(workdir, tmp_path_factory):
    """A run that was configured but never saved a checkpoint."""
    path = tmp_path_factory.mktemp("empty_run")
    (path / "checkpoints").mkdir()
    (path / "config.json").write_text(open(os.path.join(workdir.path, "config.json")).read())
    return str(path)


@pytest.fixture(scope="module")
def exported_run(workdir):
    """harness-export --workdir RUN --format all (latest checkpoint)."""
    assert export_main(["--workdir", workdir.path, "--format", "all"]) == 0
    return os.path.join(workdir.path, "export", "ckpt-4")
