"""What passes between the launcher and its workers besides processes: lines and signals.

Invariants:
- Output is relayed whole lines at a time, each with its worker's prefix, so lines of
  different workers never interleave mid-line; a last line without a newline gets one.
- A broken launcher stdout (`| head`) never blocks a worker: its lines are dropped and
  the pipes still drained.
- Signal handlers only queue the signal; the supervisor's main loop acts on it. Signals
  ignored when the launcher started (nohup, a background job) stay ignored.
"""

import signal
import sys
import threading
import time

POLL_SECONDS = 0.05
_MAX_LINE = 1 << 16  # a longer line is cut into prefixed pieces rather than held

# What the launcher forwards for each signal it handles. SIGHUP (the terminal is gone)
# becomes SIGTERM: the workers' preemption handler knows it, and they would otherwise
# live on, detached, after the launcher died of the SIGHUP.
FORWARD = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGUSR1: signal.SIGUSR1,
    signal.SIGHUP: signal.SIGTERM,
}


class Output:
    """Whole-line writes to the launcher's stdout/stderr from many threads."""

    def __init__(self, *, stdout=None, stderr=None):
        self._streams = {
            "stdout": stdout or sys.stdout.buffer,
            "stderr": stderr or sys.stderr.buffer,
        }
        self._lock = threading.Lock()

    def write(self, name, data):
        with self._lock:
            try:
                self._streams[name].write(data)
                self._streams[name].flush()
            except (OSError, ValueError):
                pass  # launcher output closed (| head): keep draining the workers' pipes

    def event(self, text):
        self.write("stderr", f"harness-launch: {text}\n".encode())


def pump(pipe, output, name, prefix):
    with pipe:
        for line in iter(lambda: pipe.readline(_MAX_LINE), b""):
            output.write(name, prefix + (line if line.endswith(b"\n") else line + b"\n"))


class SignalInbox:
    """Signals received by the launcher, queued for the main loop to act on."""

    def __init__(self):
        self._pending = []
        self._previous = {}

    def install(self):
        for sig in FORWARD:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._receive)
        return self

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _receive(self, signum, frame):
        self._pending.append(signal.Signals(signum))

    def take(self):
        taken = []
        while self._pending:  # handlers run on this thread, between bytecodes
            taken.append(self._pending.pop(0))
        return taken

    def wait(self, seconds):
        """Sleep up to `seconds`; return the signals received meanwhile (then at once)."""
        deadline = time.monotonic() + seconds
        while not self._pending and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return self.take()
