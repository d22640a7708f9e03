"""One run's parts, wired from a config in one place.

    backend       train.distribute       who computes where, how replicas agree
    model         train.models           built in the backend's scope, in the run's precision
    optimizer     train.optimizers       built with its slots, the learning rate scaled by
                                         the world size under --scale-lr
    data          train.data             the training stream positioned at a step; eval
    trainer       train.loops.trainer    the compiled step
    checkpoints   train.checkpoint       the manager of <workdir>/checkpoints
    controller    train.loops.controller the outer loop

train.run (harness-train), train.cli's eval and export (a saved run rebuilt from its
config.json) and benchmarks/ all build through here, so they run the same thing. Nothing
here writes to the workdir before every input check has passed; then the chief takes
the workdir's lock (claim_workdir, train.workdir_lock) before the checkpoint manager
prepares its directory.
"""

import dataclasses

import keras
import tensorflow as tf

from train import data, models, optimizers, precision, workdir
from train.checkpoint import manager as checkpoint
from train.errors import UsageError
from train.loops.controller import Controller, Schedule
from train.loops.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class RunParts:
    config: object  # TrainConfig, precision resolved
    backend: object
    info: object  # train.data DatasetInfo
    steps: int  # total steps of the run
    identity: dict  # workdir.IDENTITY_KEYS
    trainer: Trainer  # holds model, optimizer and the step variable
    checkpoints: object  # CheckpointManager, or None (benchmarks)
    watcher: object  # PreemptionWatcher


def setup_numerics(config):
    """Seeds, determinism and the dtype policy; returns config with its precision
    resolved (train.precision: `auto` becomes what this machine's devices do best)."""
    config = dataclasses.replace(config, precision=precision.resolve(config.precision))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision.keras_policy(config.precision))
    return config


def assemble(config, *, backend, watcher, with_checkpoints=True, record_indices=None,
             claim_workdir=None):
    """Every part of a run but the controller (which needs the restored step's data).
    `config` has been through setup_numerics. UsageError before anything is built."""
    info, steps, identity = check_inputs(config, backend)
    if claim_workdir is not None:
        claim_workdir()  # the chief's lock, before the manager's first write (mkdir, cleanup)
        workdir.check_same_run(config.workdir, identity)  # again, now that we own it
    model, optimizer = build_state(config, identity, strategy=backend.strategy,
                                   num_workers=backend.num_workers)
    trainer = Trainer(backend=backend, model=model, optimizer=optimizer,
                      global_batch_size=config.batch_size, stop_flag=watcher.flag,
                      augment=config.augment, jit_compile=config.jit_compile,
                      record_indices=record_indices,
                      nonfinite_limit=nonfinite_limit(config))
    manager = None
    if with_checkpoints:
        manager = checkpoint.CheckpointManager(
            directory=workdir.checkpoint_dir(config.workdir),
            state=checkpoint_state(model, optimizer, trainer.step), is_chief=backend.is_chief,
            meta={**identity, "batch_size": config.batch_size, "seed": config.seed,
                  "num_workers": backend.num_workers, "num_replicas": backend.num_replicas},
            options=checkpoint.CheckpointOptions(keep=config.keep,
                                                 keep_every_hours=config.keep_every_hours,
                                                 async_save=config.async_checkpoint))
    return RunParts(config=config, backend=backend, info=info, steps=steps, identity=identity,
                    trainer=trainer, checkpoints=manager, watcher=watcher)


def nonfinite_limit(config):
    """Consecutive non-finite steps that end a run (train.loops.nonfinite)."""
    return config.max_nonfinite_skips if config.on_nonfinite == "skip" else 1


def check_inputs(config, backend):
    """(dataset info, total steps, run identity); UsageError before anything is written."""
    info = data.dataset_info(config.dataset, config.data_dir)
    if config.batch_size % backend.num_replicas:
        raise UsageError(f"--batch-size {config.batch_size} cannot be split evenly over "
                         f"{backend.num_replicas} replicas")
    identity = {"model": config.model, "dataset": config.dataset,
                "image_shape": list(info.image_shape), "num_classes": info.num_classes}
    workdir.check_same_run(config.workdir, identity)
    return info, total_steps(config, info), identity


def total_steps(config, info):
    if config.steps is not None:
        return config.steps
    return max(1, int(round(config.epochs * info.num_train / config.batch_size)))


def build_state(config, identity, *, strategy, num_workers):
    """The model and its optimizer, slots built, inside `strategy`'s scope, in the dtype
    policy in force (train.precision's; a saved run's is set by its reader)."""
    with strategy.scope():
        model = models.build(identity["model"], identity["image_shape"],
                             identity["num_classes"])
        optimizer = optimizers.build(config, num_workers=num_workers)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def checkpoint_state(model, optimizer, step):
    """What a checkpoint holds: a writer and every reader must agree on this layout."""
    return {"model": model.variables, "optimizer": optimizer.variables, "train": [step]}


def training_dataset_fn(config, info, *, start_step, with_codes, with_indices=False,
                        augment_in_pipeline=False):
    """dataset_fn(input_context) for Backend.distribute_dataset: the run's training stream
    from `start_step` (train.data's invariants). with_codes: the trainer augments in its
    step; augment_in_pipeline: tf.data does (the alternative the benchmarks measure)."""
    def dataset_fn(input_context=None):
        return data.train_dataset(info, config.data_dir, global_batch_size=config.batch_size,
                                  seed=config.seed, start_step=start_step,
                                  augment=augment_in_pipeline, with_codes=with_codes,
                                  input_context=input_context, with_indices=with_indices)
    return dataset_fn


def eval_dataset_fn(config, info):
    def dataset_fn(input_context=None):
        return data.padded_eval_dataset(info, config.data_dir,
                                        global_batch_size=config.batch_size,
                                        input_context=input_context)
    return dataset_fn


def schedule_of(config, total):
    return Schedule(total_steps=total, steps_per_call=config.steps_per_call,
                    log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                    eval_every=config.eval_every)


def build_controller(parts, *, schedule, monitor, iterator, evaluate, on_first_step=None,
                     checkpoints=None):
    """The outer loop over `parts`; `checkpoints` stands in for parts.checkpoints."""
    config, trainer = parts.config, parts.trainer
    return Controller(
        trainer=trainer, schedule=schedule, checkpoints=checkpoints or parts.checkpoints,
        monitor=monitor, watcher=parts.watcher, iterator=iterator, evaluate=evaluate,
        epoch_of=lambda step: step * config.batch_size / parts.info.num_train,
        learning_rate_of=lambda step: optimizers.learning_rate_at(trainer.optimizer, step),
        on_first_step=on_first_step)
