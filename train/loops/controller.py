"""The outer loop, in the words of the algorithm (after Orbit's Controller):

    while step < total:
        run steps up to the next boundary (log, checkpoint, eval, end)
        maybe log; if preempted: save, exit 42; maybe save; maybe evaluate
    save, evaluate, done

Checkpointing is delegated to one object (train.checkpoint.manager.CheckpointManager), reporting
to one (train.monitor.Monitor).

Preemption: the run stops only on the STOP column of a call's sums, which every worker
shares (train.loops.preemption, Agreement), and raises Preempted (exit 42) only after the save
of the stop step has completed, background write included.

Non-finite steps (train.loops.nonfinite): a call that left on too many in a row (one,
under --on-nonfinite stop) raises NonFiniteError (exit 1) after its log row, with no save:
the step was not applied, and the last checkpoint stays `latest`.
"""

import dataclasses
import time

import numpy as np

from train.errors import NonFiniteError, Preempted
from train.loops import nonfinite
from train.loops.trainer import (
    COLUMNS,
    CORRECT,
    COUNT,
    LOSS_SUM,
    NONFINITE,
    NONFINITE_LOSS,
    STOP,
    Throughput,
)


@dataclasses.dataclass(frozen=True)
class Schedule:
    total_steps: int
    steps_per_call: int
    log_every: int
    checkpoint_every: int
    eval_every: int  # 0: only at the end

    def steps_until_boundary(self, step):
        intervals = [self.log_every, self.checkpoint_every]
        if self.eval_every:
            intervals.append(self.eval_every)
        to_boundary = min(every - step % every for every in intervals)
        return int(min(self.steps_per_call, to_boundary, self.total_steps - step))


class Controller:
    def __init__(
        self,
        *,
        trainer,
        schedule,
        checkpoints,
        monitor,
        watcher,
        iterator,
        evaluate,
        epoch_of,
        learning_rate_of,
        on_first_step=None,
    ):
        self.trainer = trainer
        self.schedule = schedule
        self.checkpoints = checkpoints
        self.monitor = monitor
        self.watcher = watcher
        self.iterator = iterator
        self.evaluate_fn = evaluate
        self.epoch_of = epoch_of
        self.learning_rate_of = learning_rate_of
        self.on_first_step = on_first_step  # called once, after the first compiled call
        self._totals = np.zeros(COLUMNS)
        self._throughput = Throughput()
        self._last_saved = None
        self._restored = None
        self._last_evaluated = None

    def run(self, start_step):
        schedule = self.schedule
        step = start_step
        self._restored = start_step or None  # what `latest` names until we save
        self._throughput.reset(step)
        if step >= schedule.total_steps and self.on_first_step is not None:
            self.on_first_step()  # a finished run, rerun: the resume is all there is to do
            self.on_first_step = None
        first_call = True
        while step < schedule.total_steps:
            # The first step alone: time-to-resume ends at the first step. Every process
            # does it, resumed or not, because every worker must run the same steps per
            # call (collectives), and only the chief knows whether this is a resume.
            n = 1 if first_call else schedule.steps_until_boundary(step)
            first_call = False
            step = self._call(n)
        self._save(step)
        if self._last_evaluated != step:
            self._evaluate(step)
        self.checkpoints.wait()
        return step

    def _call(self, n):
        """One compiled call of n steps, then what its boundary asks for; the new step."""
        schedule = self.schedule
        sums = self.trainer.train(self.iterator, n)
        returned = time.monotonic()
        step = int(self.trainer.step.numpy())
        if self.on_first_step is not None:
            self.on_first_step()
            self.on_first_step = None
        self._totals += sums
        preempted = sums[STOP] > 0  # not watcher.requested: see the module doc
        stopped = self.trainer.nonfinite_stopped()
        if preempted or stopped or step % schedule.log_every == 0 or step == schedule.total_steps:
            self._log(step)
        if stopped:
            self._stop_nonfinite(step, sums)
        if preempted:
            self._preempt(step, returned)
        if step % schedule.checkpoint_every == 0:
            self._save(step)
        if schedule.eval_every and step % schedule.eval_every == 0:
            self._evaluate(step)
        return step

    def _preempt(self, step, returned):
        self._save(step)
        self.checkpoints.wait()  # an async write too: exit 42 promises a complete save
        received = self.watcher.received
        delay = {} if received is None else {"signal_to_stop_s": round(returned - received[1], 4)}
        self.monitor.event(
            "preempted", step=step, signal=received[0] if received else "peer", **delay
        )
        raise Preempted(f"preempted at step {step}; checkpoint saved; rerun to resume")

    def _stop_nonfinite(self, step, sums):
        limit = self.trainer.nonfinite_limit
        what = nonfinite.describe(sums[NONFINITE], sums[NONFINITE_LOSS])
        where = (
            f"step {step}"
            if limit == 1
            else f"{limit} consecutive steps up to step {step} (--max-nonfinite-skips {limit})"
        )
        saved = self._last_saved if self._last_saved is not None else self._restored
        self.monitor.event("nonfinite", step=step, what=what, consecutive=limit)
        raise NonFiniteError(
            f"non-finite {what} at {where}; not applied; stopped without saving; "
            f"latest checkpoint: {'none' if saved is None else f'step {saved}'}"
        )

    def _log(self, step):
        totals, self._totals = self._totals, np.zeros(COLUMNS)
        skipped = int(round(totals[NONFINITE]))
        if totals[COUNT] == 0 and not skipped:
            return
        count = totals[COUNT] or float("nan")  # every step of the interval skipped: nan
        steps_per_sec, _ = self._throughput.rate(step)
        self._throughput.reset(step)
        self.monitor.log_train(
            **({"nonfinite": skipped} if skipped else {}),
            step=step,
            epoch=self.epoch_of(step),
            loss=float(totals[LOSS_SUM] / count),
            accuracy=float(totals[CORRECT] / count),
            learning_rate=self.learning_rate_of(step),
            images_per_sec=steps_per_sec * self.trainer.global_batch_size,
            steps_per_sec=steps_per_sec,
        )

    def _save(self, step):
        if self._last_saved != step:
            self.checkpoints.save(step)
            self._last_saved = step

    def _evaluate(self, step):
        result = self.evaluate_fn()
        self._last_evaluated = step
        self.monitor.log_eval(step=step, **result)
        self._throughput.reset(step)  # evaluation time is not training throughput
