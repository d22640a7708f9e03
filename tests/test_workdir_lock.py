import json
import os
import signal
import subprocess
import sys
import time

import pytest

from train.errors import UsageError
from train.workdir_lock import WorkdirLock, lock_path, read_holder


def test_lock_holder_refusal_release(tmp_path):
    first = WorkdirLock(str(tmp_path)).acquire()
    assert read_holder(str(tmp_path))["pid"] == os.getpid()
    with pytest.raises(UsageError) as e:
        WorkdirLock(str(tmp_path)).acquire()
    assert f"in use by pid {os.getpid()}" in str(e.value) and "\n" not in str(e.value)
    first.release()
    WorkdirLock(str(tmp_path)).acquire().release()


def test_stale_holder_text_is_taken_over(tmp_path):
    with open(lock_path(str(tmp_path)), "w") as f:
        json.dump({"host": "gone", "pid": 1, "since": "then"}, f)
    lock = WorkdirLock(str(tmp_path)).acquire()
    assert read_holder(str(tmp_path))["pid"] == os.getpid()
    lock.release()


def test_kill_9_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys,time; from train.workdir_lock import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(UsageError):
        WorkdirLock(str(tmp_path)).acquire()
    child.send_signal(signal.SIGKILL)
    child.wait()
    WorkdirLock(str(tmp_path)).acquire().release()


HOLD_UNTIL_EOF = (
    "import sys; from train.workdir_lock import WorkdirLock; "
    "lock = WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); "
    "sys.stdin.read(); lock.release()"
)


def _holder(path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_UNTIL_EOF, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_launcher_restart_waits_for_the_old_holder_to_go(tmp_path, monkeypatch):
    import threading

    from train import cluster

    monkeypatch.setenv(cluster.RESTART_COUNT_ENV, "1")
    child = _holder(tmp_path)
    threading.Thread(target=child.stdin.close).start()  # the old chief ends now
    WorkdirLock(str(tmp_path)).acquire().release()
    assert child.wait(timeout=60) == 0


def test_a_restart_gives_up_on_a_holder_that_stays(tmp_path, monkeypatch):
    from train import cluster, workdir_lock

    monkeypatch.setenv(cluster.RESTART_COUNT_ENV, "2")
    monkeypatch.setattr(workdir_lock, "RESTART_WAIT_S", 0.3)
    child = _holder(tmp_path)
    try:
        with pytest.raises(UsageError, match=f"in use by pid {child.pid}"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        child.stdin.close()
        child.wait(timeout=60)


@pytest.mark.slow
def test_a_second_harness_train_on_a_held_workdir_exits_2_and_changes_nothing(tmp_path):
    from conftest import harness_env, read_metrics, run_module

    workdir = tmp_path / "run"
    flags = [
        "--workdir",
        workdir,
        "--dataset",
        "synthetic",
        "--steps",
        "100000",
        "--batch-size",
        "16",
        "--steps-per-call",
        "1",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--eval-every",
        "0",
        "--no-export",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "train", *map(str, flags)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=harness_env(),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        while not os.path.isdir(workdir / "checkpoints" / "ckpt-00000002"):
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.05)  # polling for the first checkpoint, not timing anything
        second = run_module("train", *flags, timeout=300)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and f"in use by pid {first.pid}" in second.stderr
        reader = run_module("train.cli.eval", "--workdir", workdir, timeout=300)
        assert reader.returncode == 0, reader.stderr[-2000:]  # readers are not blocked
    finally:
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=300)
    assert code == 42  # the first run was unaffected: preempted by us, saved, exit 42
    rows = read_metrics(workdir)
    assert [r["event"] for r in rows if r.get("event") == "start"] == ["start"]
    assert read_holder(str(workdir))["pid"] == first.pid
