import json
import os
import signal
import subprocess
import sys

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
    code = ("import sys,time; from train.workdir_lock import WorkdirLock; "
            f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(UsageError):
        WorkdirLock(str(tmp_path)).acquire()
    child.send_signal(signal.SIGKILL)
    child.wait()
    WorkdirLock(str(tmp_path)).acquire().release()
