"""Resuming a run: what a checkpoint's run must share with this one, what may differ
(the world size), and the `start` / `resume` rows that say what happened.

The world-size rule. A checkpoint written by W workers (R replicas, Horovod ranks)
resumes under any other count that divides the global batch. What carries over: the
global batch, the step, hence the data position (train.data.order: the examples of a
global step do not depend on how many workers share them), and the learning-rate
schedule; --scale-lr is recomputed for the new count (the restored rate variable is set
to it). A different global batch is refused (exit 2): the position is counted in steps
of the recorded batch, so another batch would repeat or skip examples.
"""

import json
import time

from train import optimizers
from train import workdir as workdir_lib
from train.errors import UsageError
from train.monitor import process_age_s


def check_checkpoint_identity(meta, restored, identity):
    for key in ("model", "dataset"):
        if key in meta and meta[key] != identity[key]:
            raise UsageError(
                f"checkpoint at step {restored} was made with {key}={meta[key]!r}, "
                f"not {identity[key]!r}; use another --workdir"
            )


def check_same_batch(meta, restored, config):
    batch = meta.get("batch_size")
    if batch is not None and batch != config.batch_size:
        raise UsageError(
            f"checkpoint at step {restored} was made with --batch-size {batch}, "
            f"not {config.batch_size}; resume with --batch-size {batch} (the "
            "global batch must stay: the data position is counted in its steps)"
        )


def adopt_world_size(parts, meta):
    """After a restore: the learning rate this world size gets, and what changed (for the
    resume row): workers/replicas before and now, and the rate when it moved."""
    backend, optimizer = parts.backend, parts.trainer.optimizer
    changes = {}
    before = (meta.get("num_workers"), meta.get("num_replicas"))
    now = (backend.num_workers, backend.num_replicas)
    if before[0] is not None and before != now:
        changes.update(
            workers_before=before[0], replicas_before=before[1], workers=now[0], replicas=now[1]
        )
    moved = optimizers.adopt_configured_rate(
        optimizer, parts.config, num_workers=backend.num_workers
    )
    if moved is not None:
        changes.update(learning_rate_before=moved[0], learning_rate=moved[1])
    return changes


def first_step_rows(monitor, workdir, restored, start, changes=None):
    """The rows written after this process's first step: `start`, then `resume` if any.

    `start` marks where this process's rows begin. Written after the first step, not
    before: a process killed before it ran a step leaves no rows, so it does not hide the
    steps that the process before it lost (previous_process)."""
    report_resume = resume_reporter(monitor, workdir, restored, changes)  # reads the log first

    def write():
        monitor.write({"event": "start", "step": start})
        if report_resume is not None:
            report_resume()

    return write


def resume_reporter(monitor, workdir, restored, changes=None):
    """A `resume` row, written after the first step, when the time to resume is known.

    Written when a checkpoint was restored, or when metrics.jsonl shows an earlier process
    (one that crashed before its first checkpoint: this one resumes from step 0).
    steps_lost: the steps the previous process logged beyond the restored one. How that
    process ended (`previous_end`, from its last rows) says how far to trust it:
    "preempted" or "finished", exact (0 after a preemption: the stop step is logged and
    saved); "crashed", a lower bound (the steps after its last log line are lost too).
    `changes`: what differs from the checkpoint's run (adopt_world_size), logged too.
    """
    previous = previous_process(workdir_lib.metrics_path(workdir))
    if restored is None and previous is None:
        return None
    step = restored or 0
    last_logged, end = previous or (None, "crashed")
    lost = max(0, last_logged - step) if last_logged is not None else 0
    started = time.monotonic() - process_age_s()

    def report():
        monitor.event(
            "resume",
            step=step,
            restored_step=step,
            steps_lost=lost,
            previous_end=end,
            time_to_resume_s=round(time.monotonic() - started, 3),
            **(changes or {}),
        )

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
