"""Preemption: a signal becomes a stop at an agreed step, a save, and exit 42.

How a signal reaches the compiled loop within one step: Python runs signal handlers only
between bytecodes of the main thread, which sits inside a compiled call for many steps.
So the C-level handler's wakeup fd (`signal.set_wakeup_fd`) is read by a watcher thread,
which sets `flag` (a host tf.Variable) at once. Every train step reads the flag and adds
it to the per-step vector that is summed across replicas (and workers, and Horovod ranks)
anyway for the metrics; so when any worker saw a signal, every worker sees a non-zero sum
after the same step and leaves the compiled loop there. Agreement costs no extra
collective. The trainer then saves and raises `Preempted` (exit 42).

A second signal while saving only sets the flag again: nothing is interrupted.
"""

import os
import signal
import threading
import time

import tensorflow as tf


class PreemptionWatcher:
    """Installs handlers for `signal_names`; `flag` becomes 1 when one arrives."""

    def __init__(self, *, signal_names=("SIGTERM", "SIGUSR1")):
        self.signals = [getattr(signal, name) for name in signal_names]
        with tf.device("/cpu:0"):
            self.flag = tf.Variable(0.0, trainable=False, name="preemption_flag")
        self.received = None  # (signal name, monotonic time) of the first signal
        self._read_fd = None
        self._previous = {}
        self._old_wakeup_fd = None

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled from the main thread
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="preemption-watcher", daemon=True).start()
        return self

    def _watch(self):
        while True:
            try:
                data = os.read(self._read_fd, 1)
            except OSError:
                return
            if not data:
                return
            if data[0] in [int(s) for s in self.signals]:
                self._note(signal.Signals(data[0]))

    def _on_signal(self, signum, frame):
        self._note(signal.Signals(signum))

    def _note(self, sig):
        if self.received is None:
            self.received = (sig.name, time.monotonic())
        self.flag.assign(1.0)

    @property
    def requested(self):
        return self.received is not None or float(self.flag.numpy()) > 0

    def request(self, reason="request"):
        """Ask for a stop from code (tests, or a scheduler hook)."""
        if self.received is None:
            self.received = (reason, time.monotonic())
        self.flag.assign(1.0)

    def uninstall(self):
        if self._read_fd is None:
            return
        signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        os.close(self._read_fd)
        self._read_fd = None
