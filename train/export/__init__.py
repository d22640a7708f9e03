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

The fourth way, training checkpoints, is train.checkpoint.manager's; train.cli.saved_run
restores one.

The package:

    formats.py      the file names, FORMATS, ARTIFACTS, the serving signature's name
    write.py        export_model: every format, atomically (train.durable)
    load.py         kind_of / check_kind (what a path holds), read_export_meta,
                    dtype_policy_scope, and a loader for each format
    evaluation.py   io_spec, make_predict_fn, evaluate

Importing the package does not import TensorFlow (the functions that need it do):
kind_of and check_kind read a few bytes, so a command line can reject a missing path or a
wrong file type before it loads a model or a dataset.
"""

from train.export.evaluation import evaluate, io_spec, make_predict_fn
from train.export.formats import (
    ARTIFACTS,
    FORMATS,
    KERAS_FILE,
    META_FILE,
    SAVED_MODEL_DIR,
    SERVING_SIGNATURE,
    WEIGHTS_FILE,
)
from train.export.load import (
    check_kind,
    dtype_policy_scope,
    kind_of,
    load_keras_model,
    load_saved_model,
    load_weights_model,
    read_export_meta,
)
from train.export.write import export_model

__all__ = [
    "ARTIFACTS",
    "FORMATS",
    "KERAS_FILE",
    "META_FILE",
    "SAVED_MODEL_DIR",
    "SERVING_SIGNATURE",
    "WEIGHTS_FILE",
    "check_kind",
    "dtype_policy_scope",
    "evaluate",
    "export_model",
    "io_spec",
    "kind_of",
    "load_keras_model",
    "load_saved_model",
    "load_weights_model",
    "make_predict_fn",
    "read_export_meta",
]
