"""Reading an export back: what a path holds (kind_of, check_kind: a few bytes, no
TensorFlow), export.json, and a loader for each format with a one-line UsageError for
a file that does not fit.
"""

import collections
import contextlib
import json
import os
import tempfile
import warnings
import zipfile

from train.errors import UsageError, first_line
from train.export.formats import ARTIFACTS, KERAS_FILE, META_FILE, SERVING_SIGNATURE, WEIGHTS_FILE

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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
        return _kind_of_directory(path)
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


def _kind_of_directory(path):
    has = lambda name: os.path.exists(os.path.join(path, name))  # noqa: E731
    if has("saved_model.pb") or has("saved_model.pbtxt"):
        return "saved_model"
    if has("config.json") and has("checkpoints"):
        return "workdir"
    if (
        has("checkpoint")
        or has("latest")
        or has("manifest.json")
        or any(n.startswith("ckpt-") for n in os.listdir(path))
    ):
        return "checkpoint"
    if any(has(n) for n in ARTIFACTS.values()):
        return "export"
    return "directory"


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
        why = (
            _USE_INSTEAD.get(kind)
            or {
                "export": "it is a directory holding an export (name the file or saved_model/ "
                "in it)",
                "directory": "it is a directory",
                "file": "unrecognised file contents",
            }[kind]
        )
        raise UsageError(f"{where}: not {_EXPECTED[expected]}: {why}")


# --------------------------------------------------------------------------- loaders


@contextlib.contextmanager
def _named_as(path, name):
    """`path` itself if it ends as `name` does (from its first '.'), else a link to it
    called `name` in a temporary directory: Keras picks the reader by the suffix."""
    if path.endswith(name[name.index(".") :]):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmpdir:
        source = os.path.join(tmpdir, name)
        os.symlink(os.path.abspath(path), source)
        yield source


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
    with _named_as(path, WEIGHTS_FILE) as source:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights(source)
        except Exception as e:  # noqa: BLE001  (Keras raises ValueError/KeyError/OSError)
            raise UsageError(
                f"{path}: weights do not fit model {model_name!r}: {first_line(e)}"
            ) from None
    return model


def _weight_shapes_in_file(path):
    """Shapes of the model variables stored in a Keras 3 weights file (optimizer excluded)."""
    import h5py

    shapes = []
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise UsageError(
                    f"{path}: not a Keras 3 weights file (no 'layers' group; "
                    "save it with model.save_weights('*.weights.h5'))"
                )
            f["layers"].visititems(
                lambda name, obj: (
                    shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None
                )
            )
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
        f"{len(model_shapes)} in the model; {', '.join(detail)})"
    )


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
    with _named_as(path, KERAS_FILE) as source:
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
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or next(iter(inputs.values())).shape.rank != 4
        or next(iter(outputs.values())).shape.rank != 2
    ):
        raise UsageError(
            f"{path}: signature {SERVING_SIGNATURE!r} does not take one batch "
            "of images [N, H, W, C] and return probabilities [N, K]"
        )
    return loaded
