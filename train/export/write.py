"""export_model: the seed's formats of one model, written atomically into one directory.

Every artifact goes through train.durable (a hidden temporary name, fsync, rename over the
final name, fsync of the directory). A crash mid-export never leaves a torn artifact
under a final name: the previous one stays until the new one is complete. export.json is
written last, so it describes complete artifacts.
"""

import json
import os

from train import durable
from train.errors import UsageError, writing
from train.export.formats import FORMATS, KERAS_FILE, META_FILE, SAVED_MODEL_DIR, WEIGHTS_FILE

LOSS = "sparse_categorical_crossentropy"


def export_model(model, optimizer, directory, *, formats=FORMATS, meta=None):
    """Write `formats` of `model` into `directory`; returns {format: final path} and
    {"meta": path of export.json}.

    The model is compiled with `optimizer` (loss sparse categorical cross-entropy, metric
    accuracy) first, as in the seed, so that model.keras carries the optimizer state and
    reloads ready to `evaluate` or continue training. Works for a model built and trained
    under a tf.distribute strategy; call it from the chief only, outside `strategy.run`.
    """
    import tensorflow as tf

    from train.checkpoint import finite

    formats = _check_formats(formats)
    state = model.variables + (optimizer.variables if optimizer is not None else [])
    finite.refuse_nonfinite(f"export to {directory}", finite.variable_names(state), state)
    with writing(directory, tf.errors.OpError):  # disk full, not a directory: one line
        return _export(model, optimizer, directory, formats, meta)


def _export(model, optimizer, directory, formats, meta):
    os.makedirs(directory, exist_ok=True)
    durable.remove_stale_temporaries(directory)
    model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"])
    written = {}
    info = {
        "model": model.name,
        "image_shape": list(model.input_shape[1:]),
        "num_classes": int(model.output_shape[-1]),
        "dtype_policy": model.dtype_policy.name,
    }
    if "keras" in formats:
        written["keras"] = durable.write_file(directory, KERAS_FILE, model.save)
    if "weights" in formats:
        written["weights"] = durable.write_file(
            directory, WEIGHTS_FILE, _weights_only(model).save_weights
        )
    if "saved_model" in formats:
        written["saved_model"] = durable.write_dir(
            directory, SAVED_MODEL_DIR, lambda path: _export_saved_model(model, path)
        )
    body = json.dumps(
        {**info, **(meta or {}), "formats": sorted(written)}, indent=2, sort_keys=True
    )
    written["meta"] = durable.write_file(directory, META_FILE, lambda path: _write_text(path, body))
    return written


def _check_formats(formats):
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(
            f"unknown export format {', '.join(map(repr, unknown)) or '(none)'}; "
            f"choose from: {', '.join(FORMATS)}"
        )
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
