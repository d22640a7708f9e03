"""tf-harness: a distributed training harness for TensorFlow.

The public API, importable from here (each name loads its module on first use, so
`import train` stays cheap and imports no TensorFlow):

    TrainConfig, parse_args        one run's validated configuration (train.config)
    assemble_run, RunParts         a run's parts wired from a config (train.assemble)
    run_training                   harness-train's run: train.run.run(config)
    create_backend, Backend        the distribution backends (train.distribute)
    dataset_info, DatasetInfo,
    train_dataset, eval_dataset    datasets and their pipelines (train.data)
    CheckpointManager,
    CheckpointOptions              chief-only, atomic, verified checkpoints (train.checkpoint)
    export_model                   the seed's saved forms (train.export)
    HarnessError, UsageError,
    Preempted                      errors and their exit codes (train.errors)

The layout, module by module, is in README.md ("Layout").
"""

import importlib
import os
import sys
import tempfile

# TensorFlow's C++ INFO lines (oneDNN, CPU features) drown the training log; users can
# still ask for them by setting TF_CPP_MIN_LOG_LEVEL=0 themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly():
    """Import TensorFlow with the C++ start-up banner held back.

    TF 2.21 logs oneDNN/absl lines from C++ at import, before TF_CPP_MIN_LOG_LEVEL is
    read; they would break the one-line error contract. They are replayed if the import
    fails, or if the user asked for C++ INFO logs.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_EXPORTS = {
    "TrainConfig": ("train.config", "TrainConfig"),
    "parse_args": ("train.config", "parse_args"),
    "assemble_run": ("train.assemble", "assemble"),
    "RunParts": ("train.assemble", "RunParts"),
    "run_training": ("train.run", "run"),
    "create_backend": ("train.distribute", "create"),
    "Backend": ("train.distribute", "Backend"),
    "dataset_info": ("train.data", "dataset_info"),
    "DatasetInfo": ("train.data", "DatasetInfo"),
    "train_dataset": ("train.data", "train_dataset"),
    "eval_dataset": ("train.data", "eval_dataset"),
    "CheckpointManager": ("train.checkpoint", "CheckpointManager"),
    "CheckpointOptions": ("train.checkpoint", "CheckpointOptions"),
    "export_model": ("train.export", "export_model"),
    "HarnessError": ("train.errors", "HarnessError"),
    "UsageError": ("train.errors", "UsageError"),
    "Preempted": ("train.errors", "Preempted"),
}
__all__ = ["import_tensorflow_quietly", *_EXPORTS]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)
