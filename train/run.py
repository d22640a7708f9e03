"""Assemble one training run from a validated TrainConfig and run it.

Nothing is written into the workdir until every check that can fail on bad input has
passed (flags, dataset, model/dataset of an existing workdir, its checkpoints).
"""

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from train import durable, models, optimizers, precision
from train.checkpoint import manager as checkpoint
from train import data
from train import distribute
from train.loops.controller import Controller, Schedule
from train.errors import UsageError
from train.loops.trainer import RECORD_INDICES_ENV, Trainer
from train.monitor import Monitor, process_age_s, variables_digest
from train.loops.preemption import PreemptionWatcher

CONFIG_FILE = "config.json"
IDENTITY_KEYS = ("model", "dataset", "image_shape", "num_classes")


def total_steps(config, info):
    if config.steps is not None:
        return config.steps
    return max(1, int(round(config.epochs * info.num_train / config.batch_size)))


def read_run_config(workdir):
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable run config ({e})")


def check_same_run(workdir, identity):
    """A workdir belongs to one model and dataset: refuse a silent mix."""
    previous = read_run_config(workdir)
    if previous is None:
        return
    for key in IDENTITY_KEYS:
        if key in previous and previous[key] != identity[key]:
            raise UsageError(f"--workdir {workdir} holds a run with {key}={previous[key]!r}, "
                             f"not {identity[key]!r}; use another --workdir")


def write_run_config(workdir, config, identity, steps):
    durable.write_json(workdir, CONFIG_FILE, {**config.to_json(), **identity,
                                              "total_steps": steps})


def setup_numerics(config):
    """Seeds, determinism and the dtype policy; returns config with its precision
    resolved (train.precision: `auto` becomes what this machine's devices do best)."""
    config = dataclasses.replace(config, precision=precision.resolve(config.precision))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision.keras_policy(config.precision))
    return config


def build_state(config, backend, info, steps):
    with backend.strategy.scope():
        model = models.build(config.model, info.image_shape, info.num_classes)
        optimizer = optimizers.build(config, total_steps=steps, num_workers=backend.num_workers)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def run(config):
    """Train to config.steps; returns the final step. Raises HarnessError subclasses."""
    # First of all: from here on a preemption signal means "save after the next step and
    # exit 42", even while the set-up below is still running (train.loops.preemption, Lifetime).
    watcher = PreemptionWatcher(signal_names=config.preemption_signals).install()
    try:
        return _run(config, watcher)
    finally:
        watcher.uninstall()


def _run(config, watcher):
    backend = distribute.create(config.strategy, replicas=config.replicas,
                                fp16_allreduce=config.horovod_fp16_allreduce)
    watcher.install()  # again: the backend may have taken SIGTERM (train.loops.preemption, Lifetime)
    config = setup_numerics(config)
    info, steps, identity = check_inputs(config, backend)
    model, optimizer = build_state(config, backend, info, steps)
    trainer = Trainer(backend=backend, model=model, optimizer=optimizer,
                      global_batch_size=config.batch_size, stop_flag=watcher.flag,
                      augment=config.augment, jit_compile=config.jit_compile,
                      record_indices=os.environ.get(RECORD_INDICES_ENV) or None)
    manager = checkpoint.CheckpointManager(
        directory=os.path.join(config.workdir, "checkpoints"),
        state={"model": model.variables, "optimizer": optimizer.variables,
               "train": [trainer.step]},
        is_chief=backend.is_chief, meta={**identity, "batch_size": config.batch_size,
                                         "seed": config.seed},
        options=checkpoint.CheckpointOptions(keep=config.keep,
                                             keep_every_hours=config.keep_every_hours,
                                             async_save=config.async_checkpoint))
    restored = restore(config, backend, manager, identity, model, optimizer)
    if backend.is_chief:
        os.makedirs(config.workdir, exist_ok=True)
        write_run_config(config.workdir, config, identity, steps)
    monitor = Monitor(workdir=config.workdir, is_chief=backend.is_chief, total_steps=steps)
    parts = RunParts(config=config, backend=backend, info=info, steps=steps, trainer=trainer,
                     manager=manager, monitor=monitor, watcher=watcher)
    try:
        return _train(parts, restored or 0, restored)
    finally:
        manager.close()
        monitor.close()


def check_inputs(config, backend):
    """(dataset info, total steps, run identity); UsageError before anything is written."""
    info = data.dataset_info(config.dataset, config.data_dir)
    if config.batch_size % backend.num_replicas:
        raise UsageError(f"--batch-size {config.batch_size} cannot be split evenly over "
                         f"{backend.num_replicas} replicas")
    identity = {"model": config.model, "dataset": config.dataset,
                "image_shape": list(info.image_shape), "num_classes": info.num_classes}
    check_same_run(config.workdir, identity)
    return info, total_steps(config, info), identity


def restore(config, backend, manager, identity, model, optimizer):
    """The restored step, or None. Resume order: (1) restore model (RNG states included),
    optimizer slots and step from the newest valid checkpoint; else (2) --init-from;
    (3) every worker adopts the chief's values (Horovod); (4) only then is the input
    pipeline built (in _train), positioned from the restored step."""
    restored = manager.restore()
    check_checkpoint_identity(manager, restored, identity)
    if restored is None and config.init_from:
        optimizers.init_from_keras_file(config.init_from, model, optimizer)
    backend.broadcast_variables(model.variables + optimizer.variables)
    return restored


def check_checkpoint_identity(manager, restored, identity):
    if restored is None:
        return
    meta = manager.meta_of(restored) or {}
    for key in ("model", "dataset"):
        if key in meta and meta[key] != identity[key]:
            raise UsageError(f"checkpoint at step {restored} was made with {key}={meta[key]!r}, "
                             f"not {identity[key]!r}; use another --workdir")


@dataclasses.dataclass(frozen=True)
class RunParts:
    config: object
    backend: object
    info: object
    steps: int
    trainer: Trainer
    manager: object
    monitor: Monitor
    watcher: PreemptionWatcher


def training_dataset_fn(config, info, *, start_step, with_codes, with_indices=False,
                        augment_in_pipeline=False):
    """dataset_fn(input_context) for Backend.distribute_dataset: the run's training stream
    from `start_step` (train.data.pipeline's invariants). with_codes: the trainer augments in its
    step; augment_in_pipeline: tf.data does (the alternative the benchmarks measure)."""
    def dataset_fn(input_context=None):
        return data.train_dataset(info, config.data_dir, global_batch_size=config.batch_size,
                                  seed=config.seed, start_step=start_step,
                                  augment=augment_in_pipeline, with_codes=with_codes,
                                  input_context=input_context, with_indices=with_indices)
    return dataset_fn


def _train(parts, start, restored):
    config, backend, info, trainer = parts.config, parts.backend, parts.info, parts.trainer
    monitor = parts.monitor

    dataset_fn = training_dataset_fn(config, info, start_step=start, with_codes=trainer.augment,
                                     with_indices=bool(trainer.record_indices))

    def eval_dataset_fn(input_context):
        return data.padded_eval_dataset(info, config.data_dir, global_batch_size=config.batch_size,
                                 input_context=input_context)

    iterator = iter(backend.distribute_dataset(dataset_fn))
    eval_dataset = backend.distribute_dataset(eval_dataset_fn)
    distribute.keep_until_exit(parts, iterator, eval_dataset)
    schedule = Schedule(total_steps=parts.steps, steps_per_call=config.steps_per_call,
                        log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                        eval_every=config.eval_every)
    monitor.print_line(f"harness-train  {backend.describe()}  model={config.model}  "
                       f"dataset={config.dataset}  global_batch={config.batch_size}  "
                       f"precision={config.precision}  "
                       f"steps={start}->{schedule.total_steps}")
    on_first_step = (first_step_rows(monitor, config.workdir, restored, start)
                     if backend.is_chief else None)  # the chief's rows say it for all
    controller = Controller(
        trainer=trainer, schedule=schedule, checkpoints=parts.manager, monitor=monitor,
        watcher=parts.watcher, iterator=iterator, evaluate=lambda: trainer.evaluate(eval_dataset),
        epoch_of=lambda step: step * config.batch_size / info.num_train,
        learning_rate_of=lambda step: optimizers.learning_rate_at(trainer.optimizer, step),
        on_first_step=on_first_step)
    final = controller.run(start)
    # Every worker prints the digest: equal digests across workers and across an
    # interrupted and an uninterrupted run are the bitwise-exactness check.
    monitor.event("finished", step=final, weights_sha256=variables_digest(trainer.model.variables))
    if backend.is_chief and config.export:
        from train.export import write as export

        export.export_model(trainer.model, trainer.optimizer, os.path.join(config.workdir, "export"))
        monitor.event("exported", step=final, path=os.path.join(config.workdir, "export"))
    backend.barrier("harness-train-done")  # no worker leaves while the chief still exports
    return final


def first_step_rows(monitor, workdir, restored, start):
    """The rows written after this process's first step: `start`, then `resume` if any.

    `start` marks where this process's rows begin. Written after the first step, not
    before: a process killed before it ran a step leaves no rows, so it does not hide the
    steps that the process before it lost (previous_process)."""
    report_resume = resume_reporter(monitor, workdir, restored)  # reads the log before we add

    def write():
        monitor.write({"event": "start", "step": start})
        if report_resume is not None:
            report_resume()
    return write


def resume_reporter(monitor, workdir, restored):
    """A `resume` row, written after the first step, when the time to resume is known.

    Written when a checkpoint was restored, or when metrics.jsonl shows an earlier process
    (one that crashed before its first checkpoint: this one resumes from step 0).
    steps_lost: the steps the previous process logged beyond the restored one. How that
    process ended (`previous_end`, from its last rows) says how far to trust it:
    "preempted" or "finished", exact (0 after a preemption: the stop step is logged and
    saved); "crashed", a lower bound (the steps after its last log line are lost too).
    """
    previous = previous_process(os.path.join(workdir, "metrics.jsonl"))
    if restored is None and previous is None:
        return None
    step = restored or 0
    last_logged, end = previous or (None, "crashed")
    lost = max(0, last_logged - step) if last_logged is not None else 0
    started = time.monotonic() - process_age_s()

    def report():
        monitor.event("resume", step=step, restored_step=step, steps_lost=lost,
                      previous_end=end, time_to_resume_s=round(time.monotonic() - started, 3))
    return report


def previous_process(path):
    """(last logged train step or None, "preempted" | "finished" | "crashed") of the
    process that wrote the last rows of metrics.jsonl; None if there are no rows.

    Each process that ran a step writes a `start` row right after it (first_step_rows), so
    the previous process's rows are those after the last `start` row (or `resume` row, in
    logs written before there were `start` rows; or all, if there is neither). A process
    that ran steps but died before logging one thus counts as having logged nothing, not
    as the process before it; one that died before its first step left no rows at all.
    """
    last = end = None
    seen = False
    for row in _rows(path):
        seen = True
        if row.get("event") in ("start", "resume"):
            last = end = None
        elif "loss" in row and "step" in row:
            last = row["step"]
        elif row.get("event") in ("preempted", "finished"):
            end = row["event"]
    return (last, end or "crashed") if seen else None


def _rows(path):
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        return
    with f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(row, dict):
                yield row
