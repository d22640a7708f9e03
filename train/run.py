"""harness-train's run, in the order of the algorithm: backend, numerics, parts
(train.assemble), restore, record the run (train.workdir), train, export.

Nothing is written into the workdir until every check that can fail on bad input has
passed (flags, dataset, model/dataset of an existing workdir, its checkpoints).
"""

import json
import os
import time

from train import assemble, optimizers, workdir_lock
from train import workdir as workdir_lib
from train.distribute import base as distribute
from train.errors import UsageError
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import RECORD_INDICES_ENV
from train.monitor import Monitor, process_age_s, variables_digest


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
    watcher.install()  # again: the backend may have taken SIGTERM (train.loops.preemption)
    config = assemble.setup_numerics(config)
    lock = workdir_lock.WorkdirLock(config.workdir) if backend.is_chief else None
    try:
        return _run_locked(config, backend, watcher, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(config, backend, watcher, lock):
    parts = assemble.assemble(config, backend=backend, watcher=watcher,
                              record_indices=os.environ.get(RECORD_INDICES_ENV) or None,
                              claim_workdir=lock.acquire if lock is not None else None)
    restored = restore(parts)
    if backend.is_chief:
        workdir_lib.write_config(config.workdir, config, parts.identity, total_steps=parts.steps,
                             num_workers=backend.num_workers)
    monitor = Monitor(workdir=config.workdir, is_chief=backend.is_chief, total_steps=parts.steps)
    try:
        return _train(parts, monitor, restored)
    finally:
        parts.checkpoints.close()
        monitor.close()


def restore(parts):
    """The restored step, or None. Resume order: (1) restore model (RNG states included),
    optimizer slots and step from the newest valid checkpoint; else (2) --init-from;
    (3) every worker adopts the chief's values (Horovod); (4) only then is the input
    pipeline built (in _train), positioned from the restored step."""
    trainer, config = parts.trainer, parts.config
    restored = parts.checkpoints.restore()
    check_checkpoint_identity(parts.checkpoints, restored, parts.identity)
    if restored is None and config.init_from:
        optimizers.init_from_keras_file(config.init_from, trainer.model, trainer.optimizer)
    parts.backend.broadcast_variables(trainer.model.variables + trainer.optimizer.variables)
    return restored


def check_checkpoint_identity(manager, restored, identity):
    if restored is None:
        return
    meta = manager.meta_of(restored) or {}
    for key in ("model", "dataset"):
        if key in meta and meta[key] != identity[key]:
            raise UsageError(f"checkpoint at step {restored} was made with {key}={meta[key]!r}, "
                             f"not {identity[key]!r}; use another --workdir")


def _train(parts, monitor, restored):
    config, backend, trainer = parts.config, parts.backend, parts.trainer
    start = restored or 0
    iterator = iter(backend.distribute_dataset(assemble.training_dataset_fn(
        config, parts.info, start_step=start, with_codes=trainer.augment,
        with_indices=bool(trainer.record_indices))))
    eval_dataset = backend.distribute_dataset(assemble.eval_dataset_fn(config, parts.info))
    distribute.keep_until_exit(parts, iterator, eval_dataset)
    schedule = assemble.schedule_of(config, parts.steps)
    monitor.print_line(f"harness-train  {backend.describe()}  model={config.model}  "
                       f"dataset={config.dataset}  global_batch={config.batch_size}  "
                       f"precision={config.precision}  "
                       f"steps={start}->{schedule.total_steps}")
    on_first_step = (first_step_rows(monitor, config.workdir, restored, start)
                     if backend.is_chief else None)  # the chief's rows say it for all
    controller = assemble.build_controller(
        parts, schedule=schedule, monitor=monitor, iterator=iterator,
        evaluate=lambda: trainer.evaluate(eval_dataset), on_first_step=on_first_step)
    final = controller.run(start)
    # Every worker prints the digest: equal digests across workers and across an
    # interrupted and an uninterrupted run are the bitwise-exactness check.
    monitor.event("finished", step=final, weights_sha256=variables_digest(trainer.model.variables))
    if backend.is_chief and config.export:
        from train.export import write as export

        path = workdir_lib.export_dir(config.workdir)
        export.export_model(trainer.model, trainer.optimizer, path)
        monitor.event("exported", step=final, path=path)
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
    previous = previous_process(workdir_lib.metrics_path(workdir))
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
