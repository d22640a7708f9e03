"""The seed article's ways to keep a trained model, in Keras 3 / TF 2.21, and how to reload
and evaluate each of them with the same numbers.

Formats written by `export_model` into one directory:

    model.keras        whole model: architecture, weights, optimizer state, compile config
                       (reload: `load_keras_model`; it can `evaluate` and keep training)
    model.weights.h5   weights only (reload: rebuild the architecture by name, then
                       `load_weights_model`)
    saved_model/       a SavedModel for serving (`model.export(..., format="tf_saved_model")`);
                       signature `serving_default`: float32 images [None, H, W, C] in [0, 1]
                       -> class probabilities [None, K]. The seed notes that a reloaded
                       SavedModel can predict but not evaluate; here `evaluate` takes a
                       predict function, so it evaluates every form the same way.
    export.json        what the weights need to be rebuilt: model name, image shape,
                       classes, dtype policy, formats written (+ the caller's `meta`:
                       dataset, step ...); written last, so it describes complete artifacts

The fourth way, training checkpoints, is train.checkpoint.manager's; train.cli.evaluate restores one.

Atomicity: every artifact is written through train.durable (a hidden temporary name,
fsync, rename over the final name, fsync of the directory). A crash mid-export never
leaves a torn artifact under a final name: the previous one stays until the new one is
complete.

Importing this module does not import TensorFlow (the functions that need it do), so a
command line can reject a missing path or a wrong file type (`check_kind`) before TF's
start-up banner reaches stderr.
"""

import collections
import contextlib
import json
import os
import tempfile
import warnings
import zipfile

import numpy as np

from train import durable
from train.errors import UsageError, first_line

KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
SAVED_MODEL_DIR = "saved_model"
META_FILE = "export.json"
FORMATS = ("keras", "weights", "saved_model")
ARTIFACTS = {"keras": KERAS_FILE, "weights": WEIGHTS_FILE, "saved_model": SAVED_MODEL_DIR}
LOSS = "sparse_categorical_crossentropy"
SERVING_SIGNATURE = "serving_default"
# Keras clips probabilities to [EPSILON, 1 - EPSILON] (keras.config.epsilon()) before the
# log; so do we, so that evaluate() agrees with model.evaluate() for a compiled model.
EPSILON = 1e-7
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------- export


def export_model(model, optimizer, directory, *, formats=FORMATS, meta=None):
    """Write `formats` of `model` into `directory`; returns {format: final path} and
    {"meta": path of export.json}.

    The model is compiled with `optimizer` (loss sparse categorical cross-entropy, metric
    accuracy) first, as in the seed, so that model.keras carries the optimizer state and
    reloads ready to `evaluate` or continue training. Works for a model built and trained
    under a tf.distribute strategy; call it from the chief only, outside `strategy.run`.
    """
    formats = _check_formats(formats)
    os.makedirs(directory, exist_ok=True)
    durable.remove_stale_temporaries(directory)
    model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"])
    written = {}
    info = {"model": model.name, "image_shape": list(model.input_shape[1:]),
            "num_classes": int(model.output_shape[-1]), "dtype_policy": model.dtype_policy.name}
    if "keras" in formats:
        written["keras"] = durable.write_file(directory, KERAS_FILE, model.save)
    if "weights" in formats:
        written["weights"] = durable.write_file(directory, WEIGHTS_FILE,
                                         _weights_only(model).save_weights)
    if "saved_model" in formats:
        written["saved_model"] = durable.write_dir(directory, SAVED_MODEL_DIR,
                                            lambda path: _export_saved_model(model, path))
    body = json.dumps({**info, **(meta or {}), "formats": sorted(written)}, indent=2,
                      sort_keys=True)
    written["meta"] = durable.write_file(directory, META_FILE, lambda path: _write_text(path, body))
    return written


def read_export_meta(artifact_path):
    """The export.json next to an artifact (or None): e.g. the dtype policy for weights."""
    path = os.path.join(os.path.dirname(os.path.abspath(artifact_path)), META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Build models under Keras dtype policy `policy` (e.g. 'mixed_float16'); None: as is."""
    import keras

    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
    except ValueError as e:
        raise UsageError(f"unknown dtype policy {policy!r} ({first_line(e)})") from None
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_formats(formats):
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown export format {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"choose from: {', '.join(FORMATS)}")
    return formats


def _weights_only(model):
    """A copy of `model` without optimizer, so model.weights.h5 holds weights only.

    `save_weights` of a compiled Keras 3 model also stores the optimizer's variables; a
    fresh, uncompiled model from the same config with the same weights does not. Falls
    back to the model itself (optimizer included) for models that cannot be re-created
    from their config.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    try:
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001  (subclassed models without a usable config)
        return model
    return copy


def _export_saved_model(model, path):
    import tensorflow as tf

    shape = tuple(model.input_shape[1:])
    signature = [tf.TensorSpec((None, *shape), tf.float32, name="images")]
    model.export(path, format="tf_saved_model", verbose=False, input_signature=signature)


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


# --------------------------------------------------------------------------- inspect paths


def kind_of(path):
    """What is at `path`: 'missing', 'keras' (a .keras archive), 'hdf5', 'saved_model',
    'workdir' (a harness-train run), 'checkpoint' (checkpoints/ of a run, one ckpt-N of
    it, or a TF checkpoint), 'export' (a directory holding an export), 'directory' or
    'file'. Reads a few bytes at most; needs no TensorFlow."""
    if not os.path.lexists(path):
        if os.path.exists(path + ".index"):
            return "checkpoint"
        return "missing"
    if os.path.isdir(path):
        has = lambda name: os.path.exists(os.path.join(path, name))  # noqa: E731
        if has("saved_model.pb") or has("saved_model.pbtxt"):
            return "saved_model"
        if has("config.json") and has("checkpoints"):
            return "workdir"
        if (has("checkpoint") or has("latest") or has("manifest.json")
                or any(n.startswith("ckpt-") for n in os.listdir(path))):
            return "checkpoint"
        if any(has(n) for n in ARTIFACTS.values()):
            return "export"
        return "directory"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    if head == _HDF5_MAGIC:
        return "hdf5"
    if head[:4] == b"PK\x03\x04" and _is_keras_archive(path):
        return "keras"
    return "file"


def _is_keras_archive(path):
    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


_EXPECTED = {
    "hdf5": "a Keras weights file (*.weights.h5)",
    "keras": "a whole-model .keras archive",
    "saved_model": "a SavedModel directory",
}
_USE_INSTEAD = {
    "keras": "it is a whole-model .keras archive (use --model-file)",
    "hdf5": "it is an HDF5 weights file (use --weights FILE --model NAME)",
    "saved_model": "it is a SavedModel directory (use --saved-model)",
    "checkpoint": "it holds training checkpoints (use --workdir with the run directory)",
    "workdir": "it is a harness-train run directory (use --workdir)",
}


def check_kind(path, expected, flag=None):
    """UsageError unless `path` is of kind `expected` ('hdf5', 'keras' or 'saved_model').

    One line that names the path (after `flag` if given), what was expected and, for a
    file of another known kind, the flag that takes it. Needs no TensorFlow.
    """
    where = f"{flag} {path}" if flag else str(path)
    kind = kind_of(path)
    if kind == "missing":
        raise UsageError(f"{where}: no such file or directory")
    if kind != expected:
        why = _USE_INSTEAD.get(kind) or {
            "export": "it is a directory holding an export (name the file or saved_model/ "
                      "in it)",
            "directory": "it is a directory",
            "file": "unrecognised file contents"}[kind]
        raise UsageError(f"{where}: not {_EXPECTED[expected]}: {why}")


# --------------------------------------------------------------------------- loaders


def load_weights_model(path, model_name, input_shape, num_classes, *, dtype_policy=None):
    """Rebuild `model_name` for (input_shape, num_classes) and load the weights at `path`.

    `dtype_policy`: the policy the model was trained with (export.json has it), so that a
    mixed-precision model computes as it did; default: the current global policy.
    """
    from train import models

    check_kind(path, "hdf5")
    with dtype_policy_scope(dtype_policy):
        model = models.build(model_name, input_shape, num_classes)
    file_shapes = _weight_shapes_in_file(path)
    _check_weights_fit(path, file_shapes, model, model_name, input_shape, num_classes)
    with contextlib.ExitStack() as stack:
        source = path
        if not path.endswith(".weights.h5"):  # Keras picks the reader by the suffix
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory())
            source = os.path.join(tmpdir, "model.weights.h5")
            os.symlink(os.path.abspath(path), source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights(source)
        except Exception as e:  # noqa: BLE001  (Keras raises ValueError/KeyError/OSError)
            raise UsageError(f"{path}: weights do not fit model {model_name!r}: "
                             f"{first_line(e)}") from None
    return model


def _weight_shapes_in_file(path):
    """Shapes of the model variables stored in a Keras 3 weights file (optimizer excluded)."""
    import h5py

    shapes = []
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise UsageError(f"{path}: not a Keras 3 weights file (no 'layers' group; "
                                 "save it with model.save_weights('*.weights.h5'))")
            f["layers"].visititems(
                lambda name, obj: shapes.append(tuple(obj.shape))
                if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise UsageError(f"{path}: unreadable HDF5 file ({first_line(e)})") from None
    return shapes


def _check_weights_fit(path, file_shapes, model, model_name, input_shape, num_classes):
    model_shapes = [tuple(v.shape) for v in model.weights]
    have, want = collections.Counter(file_shapes), collections.Counter(model_shapes)
    if have == want:
        return
    extra = _in_order(file_shapes, have - want)  # the file's layers are alphabetical,
    missing = _in_order(model_shapes, want - have)  # the model's in build order
    detail = []
    if extra:
        detail.append(f"file has {extra[0]}")
    if missing:
        detail.append(f"model needs {missing[0]}")
    raise UsageError(
        f"{path}: weights do not fit model {model_name!r} for input {tuple(input_shape)} "
        f"and {num_classes} classes ({len(file_shapes)} tensors in the file, "
        f"{len(model_shapes)} in the model; {', '.join(detail)})")


def _in_order(shapes, counts):
    """The shapes of `shapes` (in order) that `counts` holds, each as often as counted."""
    counts, out = collections.Counter(counts), []
    for shape in shapes:
        if counts[shape] > 0:
            counts[shape] -= 1
            out.append(shape)
    return out


def load_keras_model(path):
    """A whole model from a .keras archive, compiled, with its optimizer state."""
    import keras

    check_kind(path, "keras")
    with contextlib.ExitStack() as stack:
        source = path
        if not path.endswith(".keras"):  # Keras picks the reader by the suffix
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory())
            source = os.path.join(tmpdir, "model.keras")
            os.symlink(os.path.abspath(path), source)
        from train import optimizers  # noqa: F401  (registers LinearWarmup for load_model)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return keras.models.load_model(source, compile=True)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"{path}: cannot load the model ({first_line(e)})") from None


def load_saved_model(path):
    """A SavedModel with a `serving_default` signature: float32 images -> probabilities."""
    import tensorflow as tf

    check_kind(path, "saved_model")
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{path}: cannot load the SavedModel ({first_line(e)})") from None
    signature = getattr(loaded, "signatures", {}).get(SERVING_SIGNATURE)
    if signature is None:
        raise UsageError(f"{path}: SavedModel has no {SERVING_SIGNATURE!r} signature")
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if (len(inputs) != 1 or len(outputs) != 1
            or next(iter(inputs.values())).shape.rank != 4
            or next(iter(outputs.values())).shape.rank != 2):
        raise UsageError(f"{path}: signature {SERVING_SIGNATURE!r} does not take one batch "
                         "of images [N, H, W, C] and return probabilities [N, K]")
    return loaded


# --------------------------------------------------------------------------- predict + evaluate


def io_spec(model_or_saved):
    """(input image shape (H, W, C), number of classes) of a Keras model or SavedModel."""
    import keras

    if isinstance(model_or_saved, keras.Model):
        return tuple(model_or_saved.input_shape[1:]), int(model_or_saved.output_shape[-1])
    signature = model_or_saved.signatures[SERVING_SIGNATURE]
    spec = next(iter(signature.structured_input_signature[1].values()))
    out = next(iter(signature.structured_outputs.values()))
    return tuple(spec.shape[1:]), int(out.shape[-1])


def make_predict_fn(model_or_saved):
    """images -> probabilities, for a Keras model (inference mode) or a loaded SavedModel."""
    import keras
    import tensorflow as tf

    if isinstance(model_or_saved, keras.Model):
        model = model_or_saved
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        call = tf.function(lambda images: model(images, training=False),
                           input_signature=[spec])
        return lambda images: call(tf.convert_to_tensor(images, tf.float32))
    signature = model_or_saved.signatures[SERVING_SIGNATURE]
    (name,) = signature.structured_input_signature[1].keys()
    (output,) = signature.structured_outputs.keys()
    return lambda images: signature(**{name: tf.convert_to_tensor(images, tf.float32)})[output]


def evaluate(predict_fn, dataset):
    """Mean sparse categorical cross-entropy and accuracy of `predict_fn` over `dataset`.

    `dataset` yields (images, labels); `predict_fn(images)` returns class probabilities.
    Loss as Keras computes it from probabilities (renormalised, clipped to
    [EPSILON, 1 - EPSILON]), accumulated in float64 over the whole dataset.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in dataset:
        probs = np.asarray(predict_fn(images), dtype=np.float64)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
            raise UsageError(f"predictions of shape {probs.shape} do not match "
                             f"{labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise UsageError(f"label {int(labels.max())} out of range for a model with "
                             f"{probs.shape[1]} classes")
        p = probs / probs.sum(axis=1, keepdims=True)
        p = np.clip(p[np.arange(labels.size), labels], EPSILON, 1.0 - EPSILON)
        loss_sum += float(-np.log(p).sum())
        correct += int((np.argmax(probs, axis=1) == labels).sum())
        count += int(labels.size)
    if count == 0:
        raise UsageError("the evaluation dataset is empty")
    return {"loss": loss_sum / count, "accuracy": correct / count, "examples": count}
