"""train.export and train.cli (eval, export, saved_run): the seed's four forms of a trained model.

Checkpoint (train.checkpoint.manager), weights only, whole model and SavedModel must predict the
same as the in-memory model and evaluate to the same loss and accuracy; model.keras keeps
the optimizer state; loaders and harness-eval reject bad input with one line (exit 2);
an export interrupted mid-way leaves the previous artifact intact.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import types

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from train import models, optimizers
from train.checkpoint import manager as checkpoint
from train.data import pipeline as data
from train import export
from train import durable
from train.cli import saved_run
from train.config import TrainConfig
from train.data.builtin import shapes10
from train.errors import UsageError
from train.cli import eval_main, export_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, CLASSES = (18, 18, 3), 4  # the smallest input the seed CNN takes is 18x18
NUM_TRAIN, NUM_TEST = 128, 300  # a small shapes10 for the command-line tests
TIGHT = dict(rtol=1e-6, atol=1e-6)
ALL_FILES = ["export.json", "model.keras", "model.weights.h5", "saved_model"]


def _train(model, optimizer, batches):
    """A few plain optimizer steps (like train.loops.trainer, without a strategy)."""
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for x, y in batches:
        step(x, y)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _listing(directory):
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------- fixtures


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
    _train(model, optimizer, dataset)
    directory = str(tmp_path_factory.mktemp("export"))
    written = export.export_model(model, optimizer, directory)
    return types.SimpleNamespace(model=model, optimizer=optimizer, x=x, y=y, dataset=dataset,
                                 directory=directory, written=written,
                                 probs=model.predict_on_batch(x))


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """A small shapes10 (32x32x3, 10 classes) prepared through data.dataset_info."""
    path = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(shapes10, "NUM_TRAIN", NUM_TRAIN)
        monkeypatch.setattr(shapes10, "NUM_TEST", NUM_TEST)
        data.dataset_info("shapes10", path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_data_dir):
    """A workdir as harness-train leaves it: config.json and checkpoints at steps 2 and 4
    with train.run's state and meta; no export yet. Also the in-memory numbers at step 4."""
    path, data_dir = str(tmp_path_factory.mktemp("run")), small_data_dir
    info = data.dataset_info("shapes10", data_dir)
    identity = {"model": "cnn", "dataset": "shapes10", "image_shape": list(info.image_shape),
                "num_classes": info.num_classes}
    # precision as train.run records it: resolved, here float32 (the policy of this test).
    config = {**TrainConfig(workdir=path).to_json(), "data_dir": data_dir, "batch_size": 32,
              "steps": 4, "learning_rate": 3e-3, "precision": "fp32", **identity,
              "total_steps": 4}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    keras.utils.set_random_seed(1)
    model = models.build("cnn", info.image_shape, info.num_classes)
    optimizer = optimizers.build(types.SimpleNamespace(**config), total_steps=4)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    batches = iter(data.train_dataset(info, data_dir, global_batch_size=32, seed=0,
                                      start_step=0, augment=False, float_images=True))
    with checkpoint.CheckpointManager(
            directory=os.path.join(path, "checkpoints"), is_chief=True,
            state={"model": model.variables, "optimizer": optimizer.variables,
                   "train": [step]}, meta={**identity, "batch_size": 32}) as manager:
        for n in (2, 4):
            _train(model, optimizer, [next(batches), next(batches)])
            step.assign(n)
            manager.save(n)
            if n == 2:
                at_2 = export.evaluate(export.make_predict_fn(model),
                                       data.eval_dataset(info, data_dir, global_batch_size=100,
                                                         float_images=True))
    final = export.evaluate(export.make_predict_fn(model),
                            data.eval_dataset(info, data_dir, global_batch_size=100,
                                                         float_images=True))
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


# --------------------------------------------------------------------------- the four forms


def _restore_checkpoint_form(trained, tmp_path):
    """Save the trained state with train.checkpoint.manager, restore it into a fresh model."""
    state = lambda m, o, s: {"model": m.variables, "optimizer": o.variables, "train": [s]}
    step = tf.Variable(3, dtype=tf.int64)
    with checkpoint.CheckpointManager(directory=tmp_path / "ckpt", is_chief=True,
                                      state=state(trained.model, trained.optimizer, step)) as m:
        m.save(3)
    model = models.build("cnn", SHAPE, CLASSES)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    fresh_step = tf.Variable(0, dtype=tf.int64)
    with checkpoint.CheckpointManager(directory=tmp_path / "ckpt", is_chief=False,
                                      state=state(model, optimizer, fresh_step)) as m:
        assert m.restore() == 3
    return model


def test_every_form_predicts_and_evaluates_the_same(trained, tmp_path):
    d = trained.directory
    forms = {
        "checkpoint": _restore_checkpoint_form(trained, tmp_path),
        "weights": export.load_weights_model(os.path.join(d, "model.weights.h5"), "cnn",
                                             SHAPE, CLASSES),
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


def test_evaluate_agrees_with_keras_evaluate(trained):
    """Same definition as Keras (probabilities clipped to epsilon), float64 accumulation."""
    keras_loss, keras_acc = trained.model.evaluate(trained.dataset, verbose=0)
    ours = export.evaluate(export.make_predict_fn(trained.model), trained.dataset)
    assert ours["loss"] == pytest.approx(keras_loss, rel=1e-5)
    assert ours["accuracy"] == pytest.approx(keras_acc, abs=1e-6)


def test_saved_model_serving_signature_takes_images_and_evaluates(trained):
    loaded = export.load_saved_model(os.path.join(trained.directory, "saved_model"))
    signature = loaded.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *SHAPE]
    assert export.io_spec(loaded) == (SHAPE, CLASSES)
    result = export.evaluate(export.make_predict_fn(loaded), trained.dataset)
    assert set(result) == {"loss", "accuracy", "examples"} and result["examples"] == 96


def test_keras_file_keeps_optimizer_state_and_continues_training(trained):
    loaded = export.load_keras_model(os.path.join(trained.directory, "model.keras"))
    assert int(loaded.optimizer.iterations) == int(trained.optimizer.iterations) == 3
    ours, theirs = trained.optimizer.variables, loaded.optimizer.variables
    assert [tuple(v.shape) for v in theirs] == [tuple(v.shape) for v in ours]
    for a, b in zip(ours, theirs):  # iterations, learning rate, every Adam slot
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    slots = [v for v in ours if v.path.endswith(("_momentum", "_velocity"))]
    assert len(slots) == 2 * len(trained.model.trainable_variables)
    assert np.abs(slots[0].numpy()).max() > 0  # a real slot, not a fresh zero
    before = [w.numpy() for w in loaded.weights]
    history = loaded.fit(trained.x, trained.y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    assert int(loaded.optimizer.iterations) == 6
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, loaded.weights))


def test_weights_file_holds_weights_only_and_export_json_says_how_to_rebuild(trained):
    with h5py.File(os.path.join(trained.directory, "model.weights.h5"), "r") as f:
        assert "layers" in f and "optimizer" not in f
    assert _listing(trained.directory) == ALL_FILES
    meta = export.read_export_meta(trained.written["weights"])
    assert meta == {"model": "cnn", "image_shape": list(SHAPE), "num_classes": CLASSES,
                    "dtype_policy": "float32", "formats": ["keras", "saved_model", "weights"]}


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
    for form in (export.load_keras_model(written["keras"]),
                 export.load_weights_model(written["weights"], "cnn", SHAPE, CLASSES,
                                           dtype_policy=policy),
                 export.load_saved_model(written["saved_model"])):
        np.testing.assert_allclose(np.asarray(export.make_predict_fn(form)(x)), ref, **TIGHT)


# --------------------------------------------------------------------------- loader errors


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, trained):
    base = tmp_path_factory.mktemp("bad")
    text = base / "notes.txt"
    text.write_text("not a model\n")
    empty_dir = base / "empty"
    empty_dir.mkdir()
    d = trained.directory
    return types.SimpleNamespace(text=str(text), dir=str(empty_dir),
                                 keras=os.path.join(d, "model.keras"),
                                 weights=os.path.join(d, "model.weights.h5"),
                                 saved_model=os.path.join(d, "saved_model"))


@pytest.mark.parametrize("call, pattern", [
    (lambda b: export.load_keras_model("/no/such/model.keras"), "no such file"),
    (lambda b: export.load_keras_model(b.weights), "HDF5 weights file .*--weights"),
    (lambda b: export.load_keras_model(b.text), "unrecognised file contents"),
    (lambda b: export.load_keras_model(b.saved_model), "SavedModel directory .*--saved-model"),
    (lambda b: export.load_saved_model(b.dir), "not a SavedModel directory: it is a directory"),
    (lambda b: export.load_saved_model(b.keras), ".keras archive .*--model-file"),
    (lambda b: export.load_saved_model("/no/such/dir"), "no such file"),
    (lambda b: export.load_weights_model(b.keras, "cnn", SHAPE, CLASSES), "--model-file"),
    (lambda b: export.load_weights_model(b.text, "cnn", SHAPE, CLASSES), "unrecognised"),
    (lambda b: export.load_weights_model(b.weights, "resnet20", SHAPE, CLASSES),
     "do not fit model 'resnet20'"),
    (lambda b: export.load_weights_model(b.weights, "cnn", SHAPE, 100),
     r"do not fit model 'cnn' .* 100 classes .*file has \(64, 4\), model needs \(64, 100\)"),
    (lambda b: export.load_weights_model(b.weights, "vgg", SHAPE, CLASSES), "unknown model"),
], ids=["missing", "h5-as-keras", "text-as-keras", "sm-as-keras", "dir-as-sm", "keras-as-sm",
        "missing-sm", "keras-as-weights", "text-as-weights", "resnet-vs-cnn", "10-vs-100",
        "unknown-model"])
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
    for form in (export.load_weights_model(str(renamed_weights), "cnn", SHAPE, CLASSES),
                 export.load_keras_model(str(renamed_keras))):
        np.testing.assert_allclose(np.asarray(export.make_predict_fn(form)(trained.x)),
                                   trained.probs, **TIGHT)
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(UsageError, match="not a Keras 3 weights file"):
        export.load_weights_model(str(legacy), "cnn", SHAPE, CLASSES)


# --------------------------------------------------------------------------- atomic export


def _other_model():
    """Same architecture, different weights: a new export must differ from the old one."""
    keras.utils.set_random_seed(7)
    model = models.build("cnn", SHAPE, CLASSES)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    return model, optimizer


@pytest.mark.parametrize("fmt, target", [("keras", "_commit_file"),
                                         ("weights", "_commit_file"),
                                         ("saved_model", "_commit_dir")])
def test_crash_after_temp_written_keeps_previous_artifact(trained, tmp_path, monkeypatch,
                                                          fmt, target):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=[fmt])
    final = os.path.join(out, export.ARTIFACTS[fmt])
    before = (_sha(final) if fmt != "saved_model"
              else _sha(os.path.join(final, "saved_model.pb")))

    def crash(tmp, final_path):
        assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".tmp-")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(durable, target, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_model(*_other_model(), out, formats=[fmt])
    monkeypatch.undo()
    # No temporary left behind; export.json is written last, so it was not reached.
    assert _listing(out) == sorted(["export.json", export.ARTIFACTS[fmt]])
    if fmt == "keras":
        assert _sha(final) == before
        reloaded = export.load_keras_model(final)
    elif fmt == "weights":
        assert _sha(final) == before
        reloaded = export.load_weights_model(final, "cnn", SHAPE, CLASSES)
    else:
        assert _sha(os.path.join(final, "saved_model.pb")) == before
        reloaded = export.load_saved_model(final)
    probs = np.asarray(export.make_predict_fn(reloaded)(trained.x))
    np.testing.assert_allclose(probs, trained.probs, **TIGHT)


def test_crash_while_writing_leaves_no_torn_file(trained, tmp_path, monkeypatch):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=["keras"])
    before = _sha(os.path.join(out, "model.keras"))
    model, optimizer = _other_model()

    def torn_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        export.export_model(model, optimizer, out, formats=["keras"])
    assert _listing(out) == ["export.json", "model.keras"]
    assert _sha(os.path.join(out, "model.keras")) == before


def test_replacing_an_export_swaps_whole_artifacts(trained, tmp_path):
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out)
    (tmp_path / ".tmp-999999999-0a1b2c3d-model.keras").write_bytes(b"left by a killed export")
    model, optimizer = _other_model()
    export.export_model(model, optimizer, out)
    assert _listing(out) == ALL_FILES
    expected = model.predict_on_batch(trained.x)
    for form in (export.load_keras_model(os.path.join(out, "model.keras")),
                 export.load_saved_model(os.path.join(out, "saved_model"))):
        np.testing.assert_allclose(np.asarray(export.make_predict_fn(form)(trained.x)),
                                   expected, **TIGHT)


def test_killed_between_directory_renames_is_repaired_by_the_next_export(trained, tmp_path):
    """Killed after the old saved_model/ was renamed away, before the new one was renamed
    in: nothing torn under the final name, and the next export puts the old one back
    before it writes (here: only model.keras)."""
    out = str(tmp_path)
    export.export_model(trained.model, trained.optimizer, out, formats=["saved_model"])
    os.rename(os.path.join(out, "saved_model"), os.path.join(out, ".old-999999999-ab-saved_model"))
    (tmp_path / ".tmp-999999999-cd-saved_model").mkdir()  # the new one, half written
    export.export_model(trained.model, trained.optimizer, out, formats=["keras"])
    assert _listing(out) == ["export.json", "model.keras", "saved_model"]
    loaded = export.load_saved_model(os.path.join(out, "saved_model"))
    np.testing.assert_allclose(np.asarray(export.make_predict_fn(loaded)(trained.x)),
                               trained.probs, **TIGHT)


# --------------------------------------------------------------------------- harness-eval / -export


def _eval_json(capsys, *argv):
    assert eval_main([*argv, "--json", "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_cli_every_form_prints_the_same_numbers(workdir, exported_run, capsys):
    d = exported_run
    assert _listing(d) == ALL_FILES
    meta = json.loads(open(os.path.join(d, "export.json")).read())
    assert meta["model"] == "cnn" and meta["step"] == 4 and meta["num_classes"] == 10
    results = {
        "checkpoint": _eval_json(capsys, "--workdir", workdir.path),
        "weights": _eval_json(capsys, "--weights", os.path.join(d, "model.weights.h5"),
                              "--model", "cnn", "--data-dir", workdir.data_dir),
        "keras": _eval_json(capsys, "--model-file", os.path.join(d, "model.keras"),
                            "--data-dir", workdir.data_dir),
        "saved_model": _eval_json(capsys, "--saved-model", os.path.join(d, "saved_model"),
                                  "--data-dir", workdir.data_dir),
    }
    assert results["checkpoint"]["source"] == "ckpt-4" and results["checkpoint"]["step"] == 4
    for name, result in results.items():
        assert result["examples"] == NUM_TEST, name
        assert result["dataset"] == "shapes10" and result["split"] == "test", name
        assert result["accuracy"] == workdir.final["accuracy"], name
        assert abs(result["loss"] - workdir.final["loss"]) <= 1e-6, name


def test_cli_eval_line_and_explicit_step(workdir, capsys):
    assert eval_main(["--workdir", workdir.path, "--step", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("eval  source=ckpt-2  dataset=shapes10  split=test  "
                           f"examples={NUM_TEST}  loss=")
    fields = dict(f.split("=") for f in line.split()[1:])
    assert float(fields["loss"]) == pytest.approx(workdir.at_2["loss"], abs=1e-6)
    assert float(fields["accuracy"]) == pytest.approx(workdir.at_2["accuracy"], abs=1e-6)


def test_cli_eval_of_another_split_reports_it(workdir, capsys):
    """--split takes any split the dataset has and the result names the one evaluated
    (only 'test' was accepted, and 'test' was reported even for 'validation')."""
    result = _eval_json(capsys, "--workdir", workdir.path, "--split", "train")
    assert (result["split"], result["examples"]) == ("train", NUM_TRAIN)
    info = data.dataset_info("shapes10", workdir.data_dir)
    restored = saved_run.restore_checkpoint(workdir.path)
    expected = export.evaluate(export.make_predict_fn(restored.model), data.eval_dataset(
        info, workdir.data_dir, global_batch_size=100, float_images=True, split="train"))
    assert result["accuracy"] == expected["accuracy"] and result["examples"] == NUM_TRAIN


def test_cli_eval_of_a_split_the_dataset_lacks_is_one_line(workdir, capsys):
    assert eval_main(["--workdir", workdir.path, "--split", "validation"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "has no split 'validation'; it has test, train" in err


def test_cli_export_of_a_step_into_out(workdir, tmp_path, capsys):
    out = str(tmp_path / "serve")
    assert export_main(["--workdir", workdir.path, "--step", "2", "--format", "saved_model",
                        "--out", out]) == 0
    assert capsys.readouterr().out.startswith(f"export  step=2  formats=saved_model  out={out}")
    assert _listing(out) == ["export.json", "saved_model"]
    result = _eval_json(capsys, "--saved-model", os.path.join(out, "saved_model"),
                        "--data-dir", workdir.data_dir)
    assert result["accuracy"] == workdir.at_2["accuracy"]
    assert abs(result["loss"] - workdir.at_2["loss"]) <= 1e-6


def _assert_usage_error(rc, capsys, prog="harness-eval"):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, captured
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.mark.parametrize("argv, pattern", [
    ([], "exactly one of --workdir, --weights, --model-file, --saved-model"),
    (["--model-file", "{keras}", "--saved-model", "{saved_model}"], r"exactly one .*got"),
    (["--weights", "{weights}"], "--weights needs --model"),
    (["--model", "cnn", "--model-file", "{keras}"], "--model goes with --weights"),
    (["--step", "3", "--model-file", "{keras}"], "--step goes with --workdir"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--model-file", "{keras}", "--batch-size", "many"], "--batch-size: invalid int"),
    (["--model-file", "{keras}", "--batch-size", "0"], "--batch-size must be positive"),
    (["--model-file", "/no/such/model.keras"], "--model-file /no/such/model.keras: no such"),
    (["--model-file", "{weights}"],
     "--model-file .*: not a whole-model .keras archive: .*use --weights"),
    (["--model-file", "{text}"], "--model-file .*: not a whole-model .keras archive: unrecognised"),
    (["--saved-model", "{dir}"], "--saved-model .*: not a SavedModel directory"),
    (["--weights", "{keras}", "--model", "cnn"],
     r"--weights .*: not a Keras weights file \(\*.weights.h5\): .*--model-file"),
    (["--saved-model", "{export_dir}"], "holding an export .*saved_model/ in it"),
    (["--saved-model", "{run}"], "it is a harness-train run directory .*use --workdir"),
    (["--model-file", "{run}/checkpoints"], "holds training checkpoints .*use --workdir"),
    (["--workdir", "/no/such/run"], "--workdir /no/such/run: no such directory"),
    (["--workdir", "{dir}"], "no config.json"),
    (["--workdir", "{run}", "--step", "3"], r"no checkpoint for step 3 .*steps there: \[2, 4\]"),
    (["--workdir", "{empty_run}"], r"--workdir .*: no checkpoint in .*checkpoints"),
    (["--model-file", "{keras}", "--data-dir", "{data_dir}"],
     "takes 18x18x3 images and predicts 4 classes; dataset 'shapes10' has 32x32x3"),
    (["--weights", "{run_weights}", "--model", "resnet20", "--data-dir", "{data_dir}"],
     "weights do not fit model 'resnet20'"),
    (["--weights", "{run_weights}", "--model", "vgg", "--data-dir", "{data_dir}"],
     "unknown model 'vgg'"),
    (["--model-file", "{keras}", "--dataset", "nosuchset", "--data-dir", "{data_dir}"],
     "unknown dataset 'nosuchset'"),
])
def test_eval_bad_input_is_one_line_and_exit_2(argv, pattern, bad_files, workdir,
                                               exported_run, empty_run, capsys):
    names = {**vars(bad_files), "run": workdir.path, "data_dir": workdir.data_dir,
             "run_weights": os.path.join(exported_run, "model.weights.h5"),
             "export_dir": exported_run, "empty_run": empty_run}
    line = _assert_usage_error(eval_main([a.format(**names) for a in argv]), capsys)
    assert re.search(pattern, line), line


@pytest.mark.parametrize("argv, pattern", [
    (["--format", "all"], "--workdir"),
    (["--workdir", "{run}"], "--format"),
    (["--workdir", "{run}", "--format", "onnx"], "invalid choice"),
    (["--workdir", "{dir}", "--format", "all"], "no config.json"),
    (["--workdir", "{run}", "--format", "all", "--step", "7"], "no checkpoint for step 7"),
    (["--workdir", "{run}", "--format", "all", "--out", "{text}"], "not a directory"),
])
def test_export_bad_input_is_one_line_and_exit_2(argv, pattern, bad_files, workdir, capsys):
    names = {**vars(bad_files), "run": workdir.path}
    line = _assert_usage_error(export_main([a.format(**names) for a in argv]), capsys,
                               prog="harness-export")
    assert pattern in line or re.search(pattern, line), line


def test_help_exits_0(capsys):
    assert eval_main(["--help"]) == 0
    assert "--saved-model" in capsys.readouterr().out
    assert export_main(["--help"]) == 0
    assert "export/ckpt-STEP" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def _run_python(code, *args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


_EVAL = "import sys; from train.cli import eval_main; sys.exit(eval_main(sys.argv[1:]))"


def test_subprocess_bad_path_is_exactly_one_stderr_line(bad_files):
    """TensorFlow's start-up banner is held back and the path is checked before anything is
    loaded: nothing else reaches stderr."""
    proc = _run_python(_EVAL, "--model-file", bad_files.weights)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"harness-eval: error: --model-file {bad_files.weights}: not a whole-model .keras "
        "archive: it is an HDF5 weights file (use --weights FILE --model NAME)"]


@pytest.mark.slow
def test_subprocess_mismatch_after_tensorflow_has_no_traceback(workdir, exported_run):
    """A mismatch found with TF loaded: our one line, last; TF's own start-up log lines are
    the only other stderr output (TF 2.21 prints them on import whatever the log level)."""
    proc = _run_python(_EVAL, "--weights", os.path.join(exported_run, "model.weights.h5"),
                       "--model", "resnet20", "--data-dir", workdir.data_dir)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert "Traceback" not in proc.stderr
    ours = [line for line in lines if line.startswith("harness-eval:")]
    assert ours == [lines[-1]] and "do not fit model 'resnet20'" in ours[0]
    tf_log = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
    assert all(tf_log.match(line) for line in lines[:-1]), lines


# --------------------------------------------------------------------------- MirroredStrategy

_MIRRORED = r"""
import sys, numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from train import models
from train import export
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
    proc = _run_python(_MIRRORED, str(tmp_path / "export"))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
