"""train.export.write: what export_model writes (weights only in model.weights.h5,
export.json), atomically: an export interrupted mid-way leaves the previous artifact
intact; and a model trained under MirroredStrategy exports as any other.
"""

import os

import h5py
import keras
import numpy as np
import pytest
from model_forms import ALL_FILES, CLASSES, SHAPE, TIGHT, listing, run_python, sha

from train import durable, export, models
from train.errors import OutputWriteError


def test_weights_file_holds_weights_only_and_export_json_says_how_to_rebuild(trained):
    with h5py.File(os.path.join(trained.directory, "model.weights.h5"), "r") as f:
        assert "layers" in f and "optimizer" not in f
    assert listing(trained.directory) == ALL_FILES
    meta = export.read_export_meta(trained.written["weights"])
    assert meta == {
        "model": "cnn",
        "image_shape": list(SHAPE),
        "num_classes": CLASSES,
        "dtype_policy": "float32",
        "formats": ["keras", "saved_model", "weights"],
    }


# --------------------------------------------------------------------------- atomic export


def _other_model():
    """Same architecture, different weights: a new export must differ from the old one."""
    keras.utils.set_random_seed(7)
    model = models.build("cnn", SHAPE, CLASSES)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    return model, optimizer


@pytest.mark.parametrize(
    "fmt, target",
    [("keras", "_commit_file"), ("weights", "_commit_file"), ("saved_model", "_commit_dir")],
)
def test_crash_after_temp_written_keeps_previous_artifact(
    trained, tmp_path, monkeypatch, fmt, target
):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=[fmt])
    final = os.path.join(out, export.ARTIFACTS[fmt])
    before = sha(final) if fmt != "saved_model" else sha(os.path.join(final, "saved_model.pb"))

    def crash(tmp, final_path):
        assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".tmp-")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(durable, target, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_model(*_other_model(), out, formats=[fmt])
    monkeypatch.undo()
    # No temporary left behind; export.json is written last, so it was not reached.
    assert listing(out) == sorted(["export.json", export.ARTIFACTS[fmt]])
    if fmt == "keras":
        assert sha(final) == before
        reloaded = export.load_keras_model(final)
    elif fmt == "weights":
        assert sha(final) == before
        reloaded = export.load_weights_model(final, "cnn", SHAPE, CLASSES)
    else:
        assert sha(os.path.join(final, "saved_model.pb")) == before
        reloaded = export.load_saved_model(final)
    probs = np.asarray(export.make_predict_fn(reloaded)(trained.x))
    np.testing.assert_allclose(probs, trained.probs, **TIGHT)


def test_crash_while_writing_leaves_no_torn_file(trained, tmp_path, monkeypatch):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=["keras"])
    before = sha(os.path.join(out, "model.keras"))
    model, optimizer = _other_model()

    def torn_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", torn_save)
    with pytest.raises(OutputWriteError, match="No space left") as error:
        export.export_model(model, optimizer, out, formats=["keras"])
    assert str(error.value).startswith(f"cannot write {out}: ") and error.value.exit_code == 1
    assert listing(out) == ["export.json", "model.keras"]
    assert sha(os.path.join(out, "model.keras")) == before


def test_replacing_an_export_swaps_whole_artifacts(trained, tmp_path):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out)
    (tmp_path / ".tmp-999999999-0a1b2c3d-model.keras").write_bytes(b"left by a killed export")
    model, optimizer = _other_model()
    export.export_model(model, optimizer, out)
    assert listing(out) == ALL_FILES
    expected = model.predict_on_batch(trained.x)
    for form in (
        export.load_keras_model(os.path.join(out, "model.keras")),
        export.load_saved_model(os.path.join(out, "saved_model")),
    ):
        np.testing.assert_allclose(
            np.asarray(export.make_predict_fn(form)(trained.x)), expected, **TIGHT
        )


def test_killed_between_directory_renames_is_repaired_by_the_next_export(trained, tmp_path):
    """Killed after the old saved_model/ was renamed away, before the new one was renamed
    in: nothing torn under the final name, and the next export puts the old one back
    before it writes (here: only model.keras)."""
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=["saved_model"])
    os.rename(os.path.join(out, "saved_model"), os.path.join(out, ".old-999999999-ab-saved_model"))
    (tmp_path / ".tmp-999999999-cd-saved_model").mkdir()  # the new one, half written
    export.export_model(trained.model, trained.optimizer, out, formats=["keras"])
    assert listing(out) == ["export.json", "model.keras", "saved_model"]
    loaded = export.load_saved_model(os.path.join(out, "saved_model"))
    np.testing.assert_allclose(
        np.asarray(export.make_predict_fn(loaded)(trained.x)), trained.probs, **TIGHT
    )


# --------------------------------------------------------------------------- MirroredStrategy

_MIRRORED = r"""
import sys, numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from train import models
from train import export

pytest_plugins = ["model_forms"]  # the fixtures trained
out = sys.argv[1]
keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = models.build("cnn", (18, 18, 3), 4)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
assert isinstance(model.weights[0].value, tf.distribute.DistributedValues)
rng = np.random.default_rng(0)
x = rng.random((64, 18, 18, 3), dtype=np.float32); y = rng.integers(0, 4, 64).astype(np.int32)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

@tf.function
def step(batch):
    def replica(a, b):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(b, model(a))) / 32
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    strategy.run(replica, args=batch)

for batch in strategy.experimental_distribute_dataset(ds):
    step(batch)
export.export_model(model, optimizer, out)
# Not predict_on_batch: under this strategy it returns 128 rows for 64 inputs (Keras 3.15).
ref = model(x, training=False).numpy()
base = export.evaluate(export.make_predict_fn(model), ds)
forms = [export.load_keras_model(out + "/model.keras"),
         export.load_weights_model(out + "/model.weights.h5", "cnn", (18, 18, 3), 4),
         export.load_saved_model(out + "/saved_model")]
assert forms[0].optimizer.iterations.numpy() == optimizer.iterations.numpy() == 2
for form in forms:
    np.testing.assert_allclose(np.asarray(export.make_predict_fn(form)(x)), ref,
                               rtol=1e-6, atol=1e-6)
    result = export.evaluate(export.make_predict_fn(form), ds)
    assert result["accuracy"] == base["accuracy"] and abs(result["loss"] - base["loss"]) <= 1e-6
print("OK", base)
"""


@pytest.mark.slow
def test_export_of_a_model_trained_under_mirrored_strategy(tmp_path):
    proc = run_python(_MIRRORED, str(tmp_path / "export"))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
