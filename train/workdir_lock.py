"""One owner per workdir: the training chief's exclusive lock on <workdir>/.lock.

fcntl.flock(LOCK_EX | LOCK_NB), taken by the chief after every input check and before
its first write, held to the end of the run. The kernel releases it when the process
dies (kill -9 included): no stale lock. After taking it the chief writes the holder
(host, pid, since) into the file; a second chief reads it and exits 2 with one line.
Readers (other workers, harness-eval, harness-export) never lock.

A launcher restart (HARNESS_RESTART_COUNT > 0) waits up to RESTART_WAIT_S for the lock:
the launcher starts the next attempt once the old workers have exited and their groups
were sent SIGKILL, and a killed process's descendants (a forked data loader, say) can
hold the inherited lock a moment longer. A first start never waits: a held lock there is
another run.

NFS: on Linux NFSv4 clients flock is emulated with POSIX byte-range locks held by the
server under a lease: a dead client's lock is released after the lease time (~90 s).
NFSv3 needs lockd. Where the filesystem has no locking (ENOLCK, EOPNOTSUPP) the run is
refused with one line (exit 2) naming the workdir and the reason.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import time

from train import cluster
from train.errors import UsageError
from train.workdir import LOCK_FILE

RESTART_WAIT_S = 30.0
POLL_S = 0.1


def lock_path(workdir):
    return os.path.join(workdir, LOCK_FILE)


def read_holder(workdir):
    try:
        with open(lock_path(workdir), encoding="utf-8") as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class WorkdirLock:
    def __init__(self, workdir):
        self.workdir = workdir
        self._fd = None

    def acquire(self):
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(lock_path(self.workdir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _flock(fd, wait_s=RESTART_WAIT_S if _is_restart() else 0.0)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                h = read_holder(self.workdir)
                raise UsageError(
                    f"--workdir {self.workdir} is in use by pid {h.get('pid', '?')} on host "
                    f"{h.get('host', '?')} since {h.get('since', '?')} (another harness-train "
                    "holds it); wait for it to end or use another --workdir"
                ) from None
            raise UsageError(
                f"--workdir {self.workdir}: cannot lock {LOCK_FILE} "
                f"({os.strerror(e.errno)}); this filesystem does not support "
                "locking, use another --workdir"
            ) from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def _is_restart():
    try:
        return int(os.environ.get(cluster.RESTART_COUNT_ENV, "0")) > 0
    except ValueError:
        return False


def _flock(fd, *, wait_s):
    """Take the lock without blocking, retrying for up to wait_s while it is held."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            held = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            if not held or time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)  # polling a lock the kernel frees when its holder dies
