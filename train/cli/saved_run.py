"""A saved run's workdir, read back: its config.json, and its model and optimizer rebuilt
from it with a checkpoint restored (harness-eval --workdir, harness-export).

Reads only. train.run writes what this reads (train.workdir's layout); the model and
optimizer are built by train.assemble, as train.run builds them, so their variables match.
"""

import dataclasses
import os
import types

from train import workdir as workdir_lib
from train.config import DEFAULT_DATASET, OPTIMIZERS, PRECISIONS, TrainConfig
from train.errors import UsageError


def read_run_config(workdir):
    """The run's config.json as a dict; UsageError if the workdir is not a harness run."""
    return workdir_lib.read_config(workdir, required=True)


@dataclasses.dataclass
class Restored:
    model: object
    optimizer: object
    step: int
    identity: dict  # model, dataset, image_shape, num_classes
    path: str  # the checkpoint's directory


def restore_checkpoint(workdir, *, step=None):
    """Rebuild the run's model and optimizer from config.json and restore a checkpoint:
    the optimizer from the run's name, rate, warmup, precision and world size (num_workers,
    which --scale-lr multiplied the rate by). Reads only."""
    import tensorflow as tf

    from train import assemble, export, precision
    from train.checkpoint import CheckpointManager

    config = read_run_config(workdir)
    directory = workdir_lib.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise UsageError(
            f"--workdir {workdir}: no checkpoints (no {workdir_lib.CHECKPOINT_DIR}/ directory)"
        )
    identity = _identity(config)
    train_config = _train_config(config)
    # train.run records the resolved precision; "auto" comes only from hand-made configs.
    with export.dtype_policy_scope(precision.keras_policy(train_config.precision)):
        model, optimizer = assemble.build_state(
            train_config,
            identity,
            strategy=tf.distribute.get_strategy(),
            num_workers=config.get("num_workers", 1),
        )
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # is_chief=False: this manager only reads (no leftover cleanup, no mkdir).
    with CheckpointManager(
        directory=directory,
        is_chief=False,
        state=assemble.checkpoint_state(model, optimizer, step_var),
    ) as manager:
        restored = manager.restore(step=step)
        if restored is None:
            raise UsageError(f"--workdir {workdir}: no checkpoint in {directory}")
        path = manager.path_of(restored)
    return Restored(
        model=model, optimizer=optimizer, step=int(restored), identity=identity, path=path
    )


def _identity(config):
    """model, dataset, image_shape, num_classes of the run (config.json, else the dataset)."""
    identity = {k: config.get(k) for k in workdir_lib.IDENTITY_KEYS}
    if identity["image_shape"] is None or identity["num_classes"] is None:
        from train import data

        info = data.dataset_info(identity["dataset"] or DEFAULT_DATASET, config.get("data_dir"))
        identity.update(
            dataset=info.name, image_shape=list(info.image_shape), num_classes=info.num_classes
        )
    return identity


def _train_config(config):
    """config.json -> the TrainConfig fields train.optimizers.build reads (with defaults)."""
    for key, choices in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS)):
        if key in config and config[key] not in choices:
            raise UsageError(f"run config: unknown {key} {config[key]!r}")
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    return types.SimpleNamespace(**{**defaults, **config})
