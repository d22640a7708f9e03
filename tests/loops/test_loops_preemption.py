"""train.loops.preemption, its path through the compiled loop and the controller, the train
state a resume restores, and the resume row of train.run; in-process, on a tiny model.

A signal or request is made at a chosen step from inside that step (a py_function in the
model's forward pass), so the assertions are on step counts, never on durations.
"""

import io
import json
import os
import signal
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from train import distribute, resume
from train.checkpoint.manager import CheckpointManager
from train.errors import Preempted
from train.loops.controller import Controller, Schedule
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import COLUMNS, STOP, Trainer
from train.monitor import Monitor


class Hook(keras.layers.Layer):
    """Calls fn(forward pass number) in every forward pass, i.e. once per train step."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.calls = fn, 0

    def _call_fn(self):
        self.calls += 1
        self.fn(self.calls)
        return np.int64(self.calls)

    def call(self, x):
        done = tf.py_function(self._call_fn, [], tf.int64)
        with tf.control_dependencies([done]):
            return tf.identity(x)

    def compute_output_shape(self, input_shape):
        return input_shape


def make_trainer(watcher, fn=lambda n: None, backend=None):
    model = keras.Sequential([keras.Input((4,)), Hook(fn), keras.layers.Dense(3, "softmax")])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    backend = backend or distribute.Backend(strategy=tf.distribute.get_strategy())
    trainer = Trainer(
        backend=backend,
        model=model,
        optimizer=optimizer,
        global_batch_size=8,
        stop_flag=watcher.flag,
    )
    batch = (tf.random.stateless_uniform([8, 4], seed=[1, 2]), tf.range(8, dtype=tf.int32) % 3)
    return trainer, iter(tf.data.Dataset.from_tensors(batch).repeat())


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.001)


@pytest.fixture
def usr1_watcher():
    watcher = PreemptionWatcher(signal_names=("SIGUSR1",)).install()
    yield watcher
    watcher.uninstall()
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # it keeps ignoring after a signal


def test_a_request_during_a_step_stops_the_call_after_that_step():
    watcher = PreemptionWatcher(signal_names=())
    trainer, iterator = make_trainer(watcher, lambda n: n == 3 and watcher.request())
    sums = trainer.train(iterator, 10)
    assert sums[STOP] == 1 and int(trainer.step.numpy()) == 3


def test_a_signal_reaches_the_running_call_through_the_watcher_thread(usr1_watcher):
    def hook(n):
        if n == 3:  # signal, then let the watcher thread set the flag: no race left
            os.kill(os.getpid(), signal.SIGUSR1)
            wait_until(lambda: float(usr1_watcher.flag.numpy()) > 0)

    trainer, iterator = make_trainer(usr1_watcher, hook)
    sums = trainer.train(iterator, 10)
    assert sums[STOP] == 1 and int(trainer.step.numpy()) == 3
    assert usr1_watcher.received[0] == "SIGUSR1"


def test_a_real_signal_ends_a_long_call_early(usr1_watcher):
    """Asynchronous, so the exact step depends on how soon the watcher thread runs; the
    count and the delay are printed for the record (see the previous test for the rule)."""
    sent = []

    def hook(n):
        if n == 15:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGUSR1)

    trainer, iterator = make_trainer(usr1_watcher, hook)
    trainer.train(iterator, 2)  # traced now
    began = time.monotonic()
    trainer.train(iterator, 10)  # steps 3-12: the step time, for the record only
    step_time = (time.monotonic() - began) / 10
    sums = trainer.train(iterator, 1000)
    returned = time.monotonic()
    assert sums[STOP] > 0 and int(trainer.step.numpy()) < 1012
    print(
        f"\nsignal at step 15 -> stopped after step {int(trainer.step.numpy())}, "
        f"{1e3 * (returned - sent[0]):.2f} ms; one step {1e3 * step_time:.2f} ms (tiny model)"
    )


def test_a_signal_before_the_flag_exists_stops_after_the_first_step(usr1_watcher):
    os.kill(os.getpid(), signal.SIGUSR1)  # during set-up: the trainer is not built yet
    wait_until(lambda: usr1_watcher.requested)
    trainer, iterator = make_trainer(usr1_watcher)
    sums = trainer.train(iterator, 10)
    assert sums[STOP] == 1 and int(trainer.step.numpy()) == 1


def test_a_second_signal_changes_nothing_and_teardown_keeps_ignoring(usr1_watcher):
    flag = usr1_watcher.flag
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_until(lambda: float(flag.numpy()) > 0)
    first = usr1_watcher.received
    os.kill(os.getpid(), signal.SIGUSR1)  # e.g. while the checkpoint is being written
    os.kill(os.getpid(), signal.SIGUSR1)
    usr1_watcher.uninstall()
    assert usr1_watcher.received == first and float(flag.numpy()) == 1
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    os.kill(os.getpid(), signal.SIGUSR1)  # a third, after uninstall: still no death


def test_installing_again_takes_the_signal_back(usr1_watcher):
    taken = []
    signal.signal(signal.SIGUSR1, lambda *args: taken.append(1))  # as TF's coordination
    usr1_watcher.install()  # service does for SIGTERM when MultiWorkerMirroredStrategy starts
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_until(lambda: usr1_watcher.requested)
    assert not taken


def test_uninstall_without_a_signal_restores_handlers_and_wakeup_fd():
    before = signal.getsignal(signal.SIGUSR2)
    watcher = PreemptionWatcher(signal_names=("SIGUSR2",)).install()
    thread = watcher._thread
    assert signal.getsignal(signal.SIGUSR2) is not before
    watcher.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is before and not thread.is_alive()
    assert signal.set_wakeup_fd(-1) == -1
    assert not watcher.requested and float(watcher.flag.numpy()) == 0


class PeerBackend(distribute.Backend):
    """Adds a second worker's stop flag to the sums, as the cross-worker reduce would."""

    def __init__(self, peer_flag):
        super().__init__(strategy=tf.distribute.get_strategy())
        self.peer_flag = peer_flag

    def reduce_sum(self, per_replica):
        with tf.control_dependencies([per_replica]):  # the peer too reads after its update
            return per_replica + tf.one_hot(STOP, COLUMNS) * self.peer_flag.read_value()


class Recorder:
    """Fake checkpoint manager and monitor: one list of what happened, in order."""

    def __init__(self):
        self.calls = []

    def save(self, step):
        self.calls.append(("save", step))

    def wait(self):
        self.calls.append(("wait",))

    def log_train(self, *, step, **fields):
        self.calls.append(("log", step))

    def log_eval(self, *, step, **fields):
        self.calls.append(("eval", step))

    def event(self, name, **fields):
        self.calls.append((name, fields))


def controller(trainer, iterator, watcher, recorder, total=100):
    return Controller(
        trainer=trainer,
        iterator=iterator,
        watcher=watcher,
        checkpoints=recorder,
        monitor=recorder,
        evaluate=lambda: {"loss": 0.0, "accuracy": 0.0, "examples": 0},
        schedule=Schedule(
            total_steps=total, steps_per_call=10, log_every=10, checkpoint_every=50, eval_every=0
        ),
        epoch_of=lambda step: 0.0,
        learning_rate_of=lambda step: 0.0,
    )


def test_a_peer_signal_stops_this_worker_at_the_same_step_after_a_complete_save():
    peer = tf.Variable(0.0)
    watcher = PreemptionWatcher(signal_names=())
    trainer, iterator = make_trainer(
        watcher, lambda n: n == 14 and peer.assign(1.0), backend=PeerBackend(peer)
    )
    recorder = Recorder()
    with pytest.raises(Preempted, match="step 14"):
        controller(trainer, iterator, watcher, recorder).run(0)
    assert not watcher.requested  # this worker saw nothing: the sum told it
    assert recorder.calls[-4:-1] == [("log", 14), ("save", 14), ("wait",)]
    assert recorder.calls[-1] == ("preempted", {"step": 14, "signal": "peer"})


def test_a_request_between_calls_stops_after_the_next_step():
    watcher = PreemptionWatcher(signal_names=())
    trainer, iterator = make_trainer(watcher)
    trainer.train(iterator, 4)
    watcher.request()  # as if during a save or an evaluation
    recorder = Recorder()
    with pytest.raises(Preempted, match="step 5"):
        controller(trainer, iterator, watcher, recorder).run(4)
    assert recorder.calls[-1][1]["signal"] == "request"
    assert recorder.calls[-1][1]["signal_to_stop_s"] > 0


def dropout_trainer(watcher):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(
        backend=distribute.Backend(strategy=tf.distribute.get_strategy()),
        model=model,
        optimizer=optimizer,
        global_batch_size=8,
        stop_flag=watcher.flag,
    )
    # The groups train.run checkpoints; model.variables holds the Dropout's SeedGenerator.
    return trainer, {
        "model": model.variables,
        "optimizer": optimizer.variables,
        "train": [trainer.step],
    }


def test_dropout_masks_and_adam_slots_continue_exactly_after_a_restore(tmp_path):
    watcher = PreemptionWatcher(signal_names=())
    batch = (tf.random.stateless_uniform([8, 4], seed=[1, 2]), tf.range(8, dtype=tf.int32) % 3)

    def batches():
        return iter(tf.data.Dataset.from_tensors(batch).repeat())

    trainer, state = dropout_trainer(watcher)
    iterator = batches()
    trainer.train(iterator, 6)
    with CheckpointManager(directory=tmp_path, state=state, is_chief=True) as manager:
        manager.save(6)
    trainer.train(iterator, 6)
    resumed, resumed_state = dropout_trainer(watcher)  # a new process, in effect
    with CheckpointManager(directory=tmp_path, state=resumed_state, is_chief=True) as manager:
        assert manager.restore() == 6
    resumed.train(batches(), 6)
    for group, variables in state.items():
        for a, b in zip(variables, resumed_state[group]):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (group, a.name)


def write_rows(path, *rows):
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row) + "\n")


def resume_row(workdir, restored):
    recorder = Recorder()
    report = resume.resume_reporter(recorder, str(workdir), restored)
    if report is None:
        return None
    report()
    ((name, row),) = recorder.calls
    assert name == "resume" and row["time_to_resume_s"] > 0
    return row


def loss(step):
    return {"step": step, "loss": 2.3}


def test_resume_row_after_a_preemption_reports_nothing_lost(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", loss(10), loss(14), {"event": "preempted", "step": 14})
    row = resume_row(tmp_path, 14)
    assert (row["restored_step"], row["steps_lost"], row["previous_end"]) == (14, 0, "preempted")


def test_resume_row_after_a_crash_counts_only_the_last_process(tmp_path):
    write_rows(
        tmp_path / "metrics.jsonl",
        loss(10),
        loss(20),  # a process that lost 10
        {"event": "resume", "step": 10, "restored_step": 10},
        loss(15),
        '{"step": 1',
    )
    row = resume_row(tmp_path, 10)
    assert (row["steps_lost"], row["previous_end"]) == (5, "crashed")


def test_resume_row_without_a_checkpoint_after_an_earlier_process(tmp_path):
    assert resume_row(tmp_path, None) is None  # a first run: no row
    write_rows(tmp_path / "metrics.jsonl", loss(5))  # it crashed before its first save
    row = resume_row(tmp_path, None)
    assert (row["restored_step"], row["steps_lost"]) == (0, 5)


def test_resume_row_after_a_process_killed_before_its_resume_row(tmp_path):
    """That process wrote its start row, ran a step, and died before logging anything:
    it logged nothing, so the steps the one before it logged are not charged to it."""
    write_rows(
        tmp_path / "metrics.jsonl",
        {"event": "start", "step": 0},
        loss(10),
        loss(16),
        {"event": "start", "step": 10},
    )
    row = resume_row(tmp_path, 10)
    assert (row["restored_step"], row["steps_lost"], row["previous_end"]) == (10, 0, "crashed")


def test_a_process_killed_before_its_first_step_leaves_no_rows_to_hide_earlier_losses(tmp_path):
    """The process before it logged step 16 and died; checkpoint 12 survived. The next one
    is killed while it builds or runs its first step (never calls its first-step rows);
    the one after must still charge the 4 steps past 12."""
    path = tmp_path / "metrics.jsonl"
    write_rows(path, {"event": "start", "step": 0}, loss(10), loss(16))
    before = path.read_text()
    for killed_before_its_first_step in (True, False):
        monitor = Monitor(
            workdir=str(tmp_path), is_chief=True, total_steps=100, stream=io.StringIO()
        )
        write_first_step_rows = resume.first_step_rows(monitor, str(tmp_path), 12, 12)
        if not killed_before_its_first_step:
            write_first_step_rows()
        monitor.close()
    rows = [json.loads(line) for line in path.read_text()[len(before) :].splitlines()]
    assert [row["event"] for row in rows] == ["start", "resume"], rows
    assert (rows[1]["restored_step"], rows[1]["steps_lost"]) == (12, 4), rows[1]
