"""A saved run's workdir, read back: its config.json, and its model and optimizer rebuilt
from it with a checkpoint restored (harness-eval --workdir, harness-export).

Reads only. train.run writes what this reads (config.json, checkpoints/).
"""

import dataclasses
import json
import os
import types

from train.errors import UsageError, first_line

DEFAULT_DATASET = "shapes10"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def read_run_config(workdir):
    """The run's config.json as a dict; UsageError if the workdir is not a harness run."""
    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir}: no such directory")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"--workdir {workdir}: no {CONFIG_FILE} (not a harness-train run "
                         "directory, or its training never started)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable run config ({first_line(e)})") from None
    if not isinstance(config, dict) or not config.get("model"):
        raise UsageError(f"{path}: run config without a 'model'")
    return config


@dataclasses.dataclass
class Restored:
    model: object
    optimizer: object
    step: int
    identity: dict  # model, dataset, image_shape, num_classes
    path: str  # the checkpoint's directory


def restore_checkpoint(workdir, *, step=None):
    """Rebuild the run's model and optimizer from config.json and restore a checkpoint.

    The state mirrors train.run's: {"model": model.variables, "optimizer":
    optimizer.variables, "train": [step]}, the optimizer built from the run's config
    (name, learning rate, warmup, precision) so that its variables match. Reads only.
    """
    import tensorflow as tf

    from train import export, models, optimizers, precision
    from train.checkpoint import manager as checkpoint

    config = read_run_config(workdir)
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    identity = _identity(config)
    train_config = _train_config(config)
    # train.run records the resolved precision; "auto" comes only from hand-made configs.
    with export.dtype_policy_scope(precision.keras_policy(train_config.precision)):
        model = models.build(identity["model"], identity["image_shape"],
                             identity["num_classes"])
    optimizer = optimizers.build(train_config, num_workers=config.get("num_workers", 1))
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    if not os.path.isdir(directory):
        raise UsageError(f"--workdir {workdir}: no checkpoints (no {CHECKPOINT_DIR}/ directory)")
    # is_chief=False: this manager only reads (no leftover cleanup, no mkdir).
    with checkpoint.CheckpointManager(
            directory=directory, is_chief=False,
            state={"model": model.variables, "optimizer": optimizer.variables,
                   "train": [step_var]}) as manager:
        restored = manager.restore(step=step)
        if restored is None:
            raise UsageError(f"--workdir {workdir}: no checkpoint in {directory}")
        path = manager.path_of(restored)
    return Restored(model=model, optimizer=optimizer, step=int(restored), identity=identity,
                    path=path)


def _identity(config):
    """model, dataset, image_shape, num_classes of the run (config.json, else the dataset)."""
    identity = {k: config.get(k) for k in ("model", "dataset", "image_shape", "num_classes")}
    if identity["image_shape"] is None or identity["num_classes"] is None:
        from train import data

        info = data.dataset_info(identity["dataset"] or DEFAULT_DATASET, config.get("data_dir"))
        identity.update(dataset=info.name, image_shape=list(info.image_shape),
                        num_classes=info.num_classes)
    return identity


def _train_config(config):
    """config.json -> the TrainConfig fields train.optimizers.build reads (with defaults)."""
    from train.config import OPTIMIZERS, PRECISIONS, TrainConfig

    for key, choices in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS)):
        if key in config and config[key] not in choices:
            raise UsageError(f"run config: unknown {key} {config[key]!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    return types.SimpleNamespace(**{**defaults, **config})
