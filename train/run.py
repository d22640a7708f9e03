"""harness-train's run, in the order of the algorithm: backend, numerics, parts
(train.assemble), restore, record the run (train.workdir), train, export.

Nothing is written into the workdir until every check that can fail on bad input has
passed (flags, dataset, model/dataset of an existing workdir, its checkpoints).
"""

import os

from train import assemble, distribute, optimizers, resume, workdir_lock
from train import workdir as workdir_lib
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import RECORD_INDICES_ENV
from train.monitor import Monitor, variables_digest


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
    restored, changes = restore(parts)
    if backend.preempted_during_startup():
        watcher.request("SIGTERM during start-up")  # every worker sees it: one stop step
    if backend.is_chief:
        workdir_lib.write_config(config.workdir, config, parts.identity, total_steps=parts.steps,
                             num_workers=backend.num_workers)
    monitor = Monitor(workdir=config.workdir, is_chief=backend.is_chief, total_steps=parts.steps)
    try:
        return _train(parts, monitor, restored, changes)
    finally:
        parts.checkpoints.close()
        monitor.close()


def restore(parts):
    """(restored step or None, what changed since the checkpoint's run). Resume order:
    (1) restore model (RNG states included), optimizer slots and step from the newest
    valid checkpoint, check it is this run's (train.resume), adopt this world size's
    learning rate; else (2) --init-from; (3) every worker adopts the chief's values
    (Horovod); (4) only then is the input pipeline built (in _train), positioned from the
    restored step."""
    trainer, config, manager = parts.trainer, parts.config, parts.checkpoints
    restored, changes = manager.restore(), {}
    if restored is not None:
        meta = manager.meta_of(restored) or {}
        resume.check_checkpoint_identity(meta, restored, parts.identity)
        resume.check_same_batch(meta, restored, config)
        changes = resume.adopt_world_size(parts, meta)
    elif config.init_from:
        optimizers.init_from_keras_file(config.init_from, trainer.model, trainer.optimizer)
    parts.backend.broadcast_variables(trainer.model.variables + trainer.optimizer.variables)
    return restored, changes


def _train(parts, monitor, restored, changes):
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
    on_first_step = (resume.first_step_rows(monitor, config.workdir, restored, start, changes)
                     if backend.is_chief else None)  # the chief's rows say it for all
    controller = assemble.build_controller(
        parts, schedule=schedule, monitor=monitor, iterator=iterator,
        evaluate=lambda: trainer.evaluate(eval_dataset), on_first_step=on_first_step)
    final = controller.run(start)
    # Every worker prints the digest: equal digests across workers and across an
    # interrupted and an uninterrupted run are the bitwise-exactness check.
    monitor.event("finished", step=final, weights_sha256=variables_digest(trainer.model.variables))
    if backend.is_chief and config.export:
        from train import export

        path = workdir_lib.export_dir(config.workdir)
        export.export_model(trainer.model, trainer.optimizer, path)
        monitor.event("exported", step=final, path=path)
    backend.barrier("harness-train-done")  # no worker leaves while the chief still exports
    return final
