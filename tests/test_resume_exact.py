"""Exact resume of the real `python -m train` after SIGTERM and kill -9 (issue #4).

Every run records, through the HARNESS_RECORD_INDICES hook (train.loops.trainer), one line per
executed step: its number and the example indices of the batch it trained on. An
interrupted run is compared with one never interrupted on the same flags: the recorded
steps and batches, and every tensor of the final checkpoint, bit for bit. The dataset is
`synthetic` (no files to load: the fastest start-up) with augmentation on.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train.checkpoint import files as cf
from train.checkpoint import manifest as cm

from conftest import REPO, harness_env

pytestmark = pytest.mark.slow
STEPS = 180
SPC = 6  # steps per compiled call
FLAGS = [
    "--dataset",
    "synthetic",
    "--batch-size",
    "32",
    "--steps-per-call",
    str(SPC),
    "--checkpoint-every",
    "6",
    "--log-every",
    "6",
    "--eval-every",
    "0",
    "--keep",
    "2",
    "--no-export",
    "--deterministic",
]
MIRRORED = ["--strategy", "mirrored", "--replicas", "2"]


STARTED = []  # every Life, so that a failing test leaves no process behind


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes():
    yield
    for life in STARTED:
        if life.proc.poll() is None:
            life.proc.kill()
            life.proc.wait()


class Life:
    """One `python -m train` process on `workdir`, recording its steps into `record`."""

    def __init__(self, workdir, record, *flags, steps=STEPS):
        STARTED.append(self)
        self.workdir, self.record = str(workdir), str(record)
        self.log = open(f"{workdir}.log", "a", encoding="utf-8")
        self.first_line = count_lines(self.record)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                "--workdir",
                self.workdir,
                "--steps",
                str(steps),
                *FLAGS,
                *flags,
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=harness_env(HARNESS_RECORD_INDICES=self.record),
        )

    def steps_done(self):
        return count_lines(self.record) - self.first_line

    def wait_steps(self, n, timeout=120):
        """Poll until this process has executed n steps; False if it exited first."""
        deadline = time.monotonic() + timeout
        while self.steps_done() < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def finish(self, timeout=300):
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def tail(self):
        with open(self.log.name, encoding="utf-8") as f:
            return f.read()[-3000:]


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def read_records(path, skip=0):
    """[(step, (indices...))] in file order after `skip` lines; lines cut by a kill are
    left out. No file yet (no process has run a step) means no records."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f.readlines()[skip:]:
            head, _, rest = line.partition(" [")
            if line.endswith("]\n") and head.isdigit():
                out.append((int(head), tuple(int(i) for i in rest[:-2].split())))
    return out


def metrics(workdir):
    rows, path = [], os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # torn by a kill
    return rows


def events(workdir, name):
    return [r for r in metrics(workdir) if r.get("event") == name]


def checkpoint_tensors(workdir, step):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(
        os.path.join(workdir, "checkpoints", cf.ckpt_name(step), cf.STATE_PREFIX)
    )
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "OBJECT_GRAPH" not in name
    }


def assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    different = [
        k
        for k in a
        if a[k].dtype != b[k].dtype or np.asarray(a[k]).tobytes() != np.asarray(b[k]).tobytes()
    ]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_checkpoints_intact(workdir):
    """Every ckpt-* verifies (sizes and sha256) and `latest` names one of them. Returns
    (the step a rerun resumes from or None, whether a save was caught midway: leftovers
    of it, or `latest` missing or behind the newest checkpoint)."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = sorted(step for step in map(cf.parse_step, names) if step is not None)
    for step in steps:
        path = os.path.join(directory, cf.ckpt_name(step))
        cm.check_files(path, cm.load_manifest(path, step), hashes=True)
    pointer, problem = cf.read_pointer(directory)
    assert problem is None, (problem, names)
    resume = cf.parse_step(pointer) if pointer else (steps[-1] if steps else None)
    assert resume in steps or resume is None
    caught = any(n.startswith(cf.TMP_PREFIX) for n in names) or (
        bool(steps) and (pointer is None or resume != steps[-1])
    )
    return resume, caught


class Uninterrupted:
    """A run never interrupted, started at once (it runs alongside the interrupted one:
    they share nothing) and collected when first needed."""

    def __init__(self, workdir, *flags, steps=STEPS):
        self.workdir, self.steps = workdir, steps
        self.life = Life(workdir, f"{workdir}.record", *flags, steps=steps)
        self._result = None

    def result(self):
        if self._result is None:
            assert self.life.finish() == 0, self.life.tail()
            self._result = {
                "records": read_records(self.life.record),
                "tensors": checkpoint_tensors(self.workdir, self.steps),
                "digest": events(self.workdir, "finished")[-1]["weights_sha256"],
            }
        return self._result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Uninterrupted(tmp_path_factory.mktemp("reference") / "run")


@pytest.fixture(scope="module")
def storm(tmp_path_factory, reference):
    """SIGTERM 10 times, each a few (seeded random) steps into a process; then finish.
    Odd processes save asynchronously. The first is signalled during its set-up: as soon
    as it has written config.json (after the watcher is installed, before the first step)."""
    workdir = tmp_path_factory.mktemp("storm") / "run"
    rng, lives = random.Random(4), []
    for i in range(10):
        life = Life(workdir, f"{workdir}.record", *(["--async-checkpoint"] if i % 2 else []))
        if i == 0:
            wait_for_file(workdir / "config.json", life)
        else:
            assert life.wait_steps(rng.randint(1, 6)), life.tail()
        life.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = life.finish()
        lives.append(
            {
                "code": code,
                "exit_s": time.monotonic() - sent,
                "log": life.tail(),
                "latest": assert_checkpoints_intact(workdir)[0],
                "steps": life.steps_done(),
            }
        )
    last = Life(workdir, f"{workdir}.record")
    assert last.finish() == 0, last.tail()
    return {"workdir": workdir, "lives": lives, "records": read_records(f"{workdir}.record")}


def wait_for_file(path, life, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists() and life.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert path.exists(), life.tail()


def test_sigterm_exits_42_within_seconds_after_a_complete_save(storm):
    preempted = events(storm["workdir"], "preempted")
    assert len(preempted) == 10
    for life, row in zip(storm["lives"], preempted):
        assert life["code"] == 42, life["log"]
        assert life["exit_s"] < 15, life["log"]
        assert life["latest"] == row["step"]  # the stop step is saved: 0 steps lost
    assert storm["lives"][0]["steps"] == 1  # signalled during set-up: one step, then stop
    print(
        "\nsignal -> exit 42 (s):",
        [round(life["exit_s"], 2) for life in storm["lives"]],
        "\nsignal -> compiled call returned (s):",
        [r.get("signal_to_stop_s") for r in preempted],
    )


def test_preemption_storm_executes_exactly_the_target_steps(storm):
    steps = [step for step, _ in storm["records"]]
    assert len(steps) == STEPS and steps == list(range(1, STEPS + 1))
    resumes = events(storm["workdir"], "resume")
    assert len(resumes) == 10
    assert all(r["steps_lost"] == 0 and r["previous_end"] == "preempted" for r in resumes)
    preempted = [r["step"] for r in events(storm["workdir"], "preempted")]
    assert [r["restored_step"] for r in resumes] == preempted
    print("\ntime to resume (s):", [r["time_to_resume_s"] for r in resumes])


def test_data_order_across_interruptions_equals_uninterrupted(storm, reference):
    assert storm["records"] == reference.result()["records"]  # no duplicate, no skip


def test_final_weights_after_sigterms_are_bitwise_equal(storm, reference):
    expected = reference.result()
    assert_bitwise_equal(checkpoint_tensors(storm["workdir"], STEPS), expected["tensors"])
    assert events(storm["workdir"], "finished")[-1]["weights_sha256"] == expected["digest"]


def kill_plan(rng):
    """Eleven kills: 3 during set-up, 4 in a save (as soon as a .tmp- directory shows),
    4 at a random time after a random number of steps; shuffled."""
    plan = ["startup"] * 3 + ["save"] * 4 + ["steps"] * 4
    rng.shuffle(plan)
    return plan


def kill_life(life, mode, rng, checkpoints):
    """Progress per process is bounded (a save-mode kill loses the save it lands in), so
    the eleven together stay well short of STEPS: no process may finish before its kill."""
    if mode == "startup":  # a random time in the first 4 s, but before the first step
        deadline = time.monotonic() + rng.uniform(0.2, 4.0)
        while time.monotonic() < deadline and life.steps_done() < 1:
            time.sleep(0.002)
    elif mode == "steps":
        life.wait_steps(rng.randint(3, 12))
        time.sleep(rng.uniform(0.0, 0.15))
    else:
        life.wait_steps(rng.randint(4, 16))
        while life.proc.poll() is None and not any(
            n.startswith(cf.TMP_PREFIX) for n in os.listdir(checkpoints)
        ):
            time.sleep(0.001)
    life.proc.kill()
    return life.finish()


def test_kill_9_at_random_times_resumes_bitwise_exact(tmp_path, reference):
    """Eleven processes killed (odd ones saving asynchronously), then one to the end.
    After each kill every checkpoint verifies; each process that ran steps started from
    the latest complete one; a step run twice trained on the same batch both times."""
    workdir = tmp_path / "run"
    record = f"{workdir}.record"
    rng, midway, killed, latest, previous, resumes = random.Random(9), 0, 0, None, [], []
    for i, mode in enumerate(kill_plan(rng)):
        rows_before, starts_before = len(events(workdir, "resume")), len(events(workdir, "start"))
        life = Life(workdir, record, *(["--async-checkpoint"] if i % 2 else []))
        if mode == "save":
            life.wait_steps(1)  # this process's leftover cleanup is done
        assert kill_life(life, mode, rng, workdir / "checkpoints") == -signal.SIGKILL, (
            life.tail()
        )  # not finished before the kill
        killed += 1
        mine = [step for step, _ in read_records(record, skip=life.first_line)]
        rows = events(workdir, "resume")[rows_before:] if mine else []
        resumes += check_resumed(rows, latest, previous, mine)
        # Its start row comes right after its first step: without one it is invisible to
        # the next resume row, so it must have done nothing to hide (at most that step).
        left_rows = len(events(workdir, "start")) > starts_before
        assert left_rows or len(mine) <= 1, (mode, mine[:3])
        previous = mine if left_rows else previous
        latest, caught = assert_checkpoints_intact(workdir)
        midway += caught
    last = Life(workdir, record)
    assert last.finish() == 0, last.tail()
    assert killed >= 10 and midway >= 1, (killed, midway)
    by_step = {}
    for step, indices in read_records(record):  # a step redone after a kill: same batch
        assert by_step.setdefault(step, indices) == indices
    assert sorted(by_step.items()) == reference.result()["records"]
    assert_bitwise_equal(checkpoint_tensors(workdir, STEPS), reference.result()["tensors"])
    print(
        f"\nkills: {killed}, caught inside a save: {midway}; resumes (restored, reported "
        f"lost, true lost, time to resume s): {resumes}"
    )


def check_resumed(rows, latest, previous, mine):
    """A process that ran steps (`mine`) started right after the latest complete
    checkpoint. Its resume row (`rows`: none for a first run) says so, and its steps_lost
    is a lower bound of the steps that the last process that left rows (`previous`) ran
    past that checkpoint, short by at most those after that process's last log line (one
    compiled call)."""
    if not mine:
        return []
    restored = latest or 0
    assert mine[0] == restored + 1, (restored, mine[:3])
    if not rows:
        return []
    row, true_lost = rows[0], max(0, max(previous, default=0) - restored)
    assert len(rows) == 1 and row["restored_step"] == restored, rows
    assert row["steps_lost"] <= true_lost <= row["steps_lost"] + SPC, (row, true_lost)
    assert row["previous_end"] == "crashed" and row["time_to_resume_s"] > 0
    return [(restored, row["steps_lost"], true_lost, row["time_to_resume_s"])]


def test_mirrored_two_replicas_resume_bitwise_exact(tmp_path, reference):
    steps = 48
    pending = Uninterrupted(tmp_path / "reference", *MIRRORED, steps=steps)
    workdir = tmp_path / "run"
    record = f"{workdir}.record"
    first = Life(workdir, record, *MIRRORED, steps=steps)
    assert first.wait_steps(8), first.tail()
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 42, first.tail()
    stopped = events(workdir, "preempted")[-1]["step"]
    assert assert_checkpoints_intact(workdir)[0] == stopped == first.steps_done()
    second = Life(workdir, record, *MIRRORED, "--async-checkpoint", steps=steps)
    assert second.wait_steps(11), second.tail()
    second.proc.kill()
    assert second.finish() == -signal.SIGKILL
    assert_checkpoints_intact(workdir)
    last = Life(workdir, record, *MIRRORED, steps=steps)
    assert last.finish() == 0, last.tail()
    expected = pending.result()
    # One worker, two replicas: replica 0 takes the first half of each global batch.
    assert expected["records"] == reference.result()["records"][:steps]
    by_step = {}
    for step, indices in read_records(record):
        assert by_step.setdefault(step, indices) == indices
    assert sorted(by_step.items()) == expected["records"]
    assert_bitwise_equal(checkpoint_tensors(workdir, steps), expected["tensors"])
