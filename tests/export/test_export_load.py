"""Loading each of the seed's forms back (train.export.load): the checkpoint, weights
only, whole model and SavedModel predict and evaluate as the in-memory model does;
model.keras keeps the optimizer state; loaders reject bad input with one line.
"""

import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from model_forms import CLASSES, SHAPE, TIGHT

from train import export, models
from train.checkpoint import manager as checkpoint
from train.errors import UsageError

pytest_plugins = ["model_forms"]  # the fixtures bad_files, trained


def _restore_checkpoint_form(trained, tmp_path):
    """Save the trained state with train.checkpoint.manager, restore it into a fresh model."""

    def state(m, o, s):
        return {"model": m.variables, "optimizer": o.variables, "train": [s]}

    step = tf.Variable(3, dtype=tf.int64)
    with checkpoint.CheckpointManager(
        directory=tmp_path / "ckpt",
        is_chief=True,
        state=state(trained.model, trained.optimizer, step),
    ) as m:
        m.save(3)
    model = models.build("cnn", SHAPE, CLASSES)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    fresh_step = tf.Variable(0, dtype=tf.int64)
    with checkpoint.CheckpointManager(
        directory=tmp_path / "ckpt", is_chief=False, state=state(model, optimizer, fresh_step)
    ) as m:
        assert m.restore() == 3
    return model


def test_every_form_predicts_and_evaluates_the_same(trained, tmp_path):
    d = trained.directory
    forms = {
        "checkpoint": _restore_checkpoint_form(trained, tmp_path),
        "weights": export.load_weights_model(
            os.path.join(d, "model.weights.h5"), "cnn", SHAPE, CLASSES
        ),
        "keras": export.load_keras_model(os.path.join(d, "model.keras")),
        "saved_model": export.load_saved_model(os.path.join(d, "saved_model")),
    }
    reference = export.evaluate(export.make_predict_fn(trained.model), trained.dataset)
    assert reference["examples"] == 96 and 0 <= reference["accuracy"] <= 1
    for name, form in forms.items():
        probs = np.asarray(export.make_predict_fn(form)(trained.x))
        np.testing.assert_allclose(probs, trained.probs, **TIGHT, err_msg=name)
        result = export.evaluate(export.make_predict_fn(form), trained.dataset)
        assert result["examples"] == reference["examples"], name
        assert result["accuracy"] == reference["accuracy"], name
        assert abs(result["loss"] - reference["loss"]) <= 1e-6, name


def test_keras_file_keeps_optimizer_state_and_continues_training(trained):
    loaded = export.load_keras_model(os.path.join(trained.directory, "model.keras"))
    assert int(loaded.optimizer.iterations) == int(trained.optimizer.iterations) == 3
    ours, theirs = trained.optimizer.variables, loaded.optimizer.variables
    assert [tuple(v.shape) for v in theirs] == [tuple(v.shape) for v in ours]
    for a, b in zip(ours, theirs, strict=True):  # iterations, learning rate, every Adam slot
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    slots = [v for v in ours if v.path.endswith(("_momentum", "_velocity"))]
    assert len(slots) == 2 * len(trained.model.trainable_variables)
    assert np.abs(slots[0].numpy()).max() > 0  # a real slot, not a fresh zero
    before = [w.numpy() for w in loaded.weights]
    history = loaded.fit(trained.x, trained.y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    assert int(loaded.optimizer.iterations) == 6
    assert any(
        not np.array_equal(a, b.numpy()) for a, b in zip(before, loaded.weights, strict=True)
    )


def test_mixed_precision_forms_agree(tmp_path):
    """A mixed_float16 model: weights-only is rebuilt under the policy export.json records."""
    rng = np.random.default_rng(3)
    x = rng.random((16, *SHAPE), dtype=np.float32)
    with export.dtype_policy_scope("mixed_float16"):
        model = models.build("cnn", SHAPE, CLASSES)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
        optimizer.build(model.trainable_variables)
    assert keras.config.dtype_policy().name == "float32"  # the scope restored it
    written = export.export_model(model, optimizer, str(tmp_path))
    policy = export.read_export_meta(written["weights"])["dtype_policy"]
    assert policy == "mixed_float16"
    ref = np.asarray(model(x, training=False))
    for form in (
        export.load_keras_model(written["keras"]),
        export.load_weights_model(written["weights"], "cnn", SHAPE, CLASSES, dtype_policy=policy),
        export.load_saved_model(written["saved_model"]),
    ):
        np.testing.assert_allclose(np.asarray(export.make_predict_fn(form)(x)), ref, **TIGHT)


# --------------------------------------------------------------------------- loader errors


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda b: export.load_keras_model("/no/such/model.keras"), "no such file"),
        (lambda b: export.load_keras_model(b.weights), "HDF5 weights file .*--weights"),
        (lambda b: export.load_keras_model(b.text), "unrecognised file contents"),
        (lambda b: export.load_keras_model(b.saved_model), "SavedModel directory .*--saved-model"),
        (lambda b: export.load_saved_model(b.dir), "not a SavedModel directory: it is a directory"),
        (lambda b: export.load_saved_model(b.keras), ".keras archive .*--model-file"),
        (lambda b: export.load_saved_model("/no/such/dir"), "no such file"),
        (lambda b: export.load_weights_model(b.keras, "cnn", SHAPE, CLASSES), "--model-file"),
        (lambda b: export.load_weights_model(b.text, "cnn", SHAPE, CLASSES), "unrecognised"),
        (
            lambda b: export.load_weights_model(b.weights, "resnet20", SHAPE, CLASSES),
            "do not fit model 'resnet20'",
        ),
        (
            lambda b: export.load_weights_model(b.weights, "cnn", SHAPE, 100),
            r"do not fit model 'cnn' .* 100 classes .*file has \(64, 4\), model needs \(64, 100\)",
        ),
        (lambda b: export.load_weights_model(b.weights, "vgg", SHAPE, CLASSES), "unknown model"),
    ],
    ids=[
        "missing",
        "h5-as-keras",
        "text-as-keras",
        "sm-as-keras",
        "dir-as-sm",
        "keras-as-sm",
        "missing-sm",
        "keras-as-weights",
        "text-as-weights",
        "resnet-vs-cnn",
        "10-vs-100",
        "unknown-model",
    ],
)
def test_loaders_reject_bad_input_with_one_line(bad_files, call, pattern):
    with pytest.raises(UsageError, match=pattern) as info:
        call(bad_files)
    assert "\n" not in str(info.value)


def test_files_are_recognised_by_content_not_name(trained, tmp_path):
    """Keras picks its reader by suffix; the loaders look at the bytes, so a renamed
    artifact still loads, and an HDF5 file of another layout is refused clearly."""
    renamed_weights, renamed_keras = tmp_path / "w.h5", tmp_path / "model.zip"
    renamed_weights.write_bytes(open(trained.written["weights"], "rb").read())
    renamed_keras.write_bytes(open(trained.written["keras"], "rb").read())
    for form in (
        export.load_weights_model(str(renamed_weights), "cnn", SHAPE, CLASSES),
        export.load_keras_model(str(renamed_keras)),
    ):
        np.testing.assert_allclose(
            np.asarray(export.make_predict_fn(form)(trained.x)), trained.probs, **TIGHT
        )
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(UsageError, match="not a Keras 3 weights file"):
        export.load_weights_model(str(legacy), "cnn", SHAPE, CLASSES)
