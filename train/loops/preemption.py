"""Preemption: a signal becomes a stop at an agreed step, a save, and exit 42.

Invariants (train.loops.trainer and train.loops.controller rely on them):

* Handlers. install() replaces the default action of the preemption signals (death) by a
  Python handler that does nothing. CPython's C-level handler also writes the signal
  number to the wakeup fd (`signal.set_wakeup_fd`); a watcher thread reads it and sets
  `flag` to 1 at once, even while the main thread sits inside a compiled call. No
  TensorFlow op and no lock ever run in the handler: it runs in the main thread at an
  arbitrary bytecode, possibly while a tf.function is being traced (an assign would land
  in that graph) or while the main thread holds `_lock` (a deadlock).
* Agreement. Every train step reads `flag` after its optimizer update and adds it to the
  per-step vector of metrics that the backend sums over replicas, workers and Horovod
  ranks anyway (`Backend.reduce_sum`). A non-zero sum ends the compiled call after that
  step on every worker, and the controller stops on that sum alone, never on a local
  `requested` that the other workers may not share. Agreement costs no extra collective.
* Delay. A signal arriving during step i before the flag read stops the run after step i;
  one arriving after the read (only the reduce of four floats and the step increment are
  left) stops it after step i+1. So at most one more step runs, and a signal during a
  compiled call returns it within about one step time. A signal between calls (logging,
  saving, evaluating) stops the run after the next call's first step.
* Lifetime. train.run installs the watcher first, before the backend, the model and the
  restore, and installs it again right after the backend is made: starting
  MultiWorkerMirroredStrategy puts a C-level SIGTERM handler of TensorFlow's coordination
  service in place. A SIGTERM during that start goes to it, not here; it publishes a
  preemption notice in the coordination service, which train.run reads at the end of its
  set-up (Backend.preempted_during_startup) and turns into request(): every worker then
  stops after the first step, saves, exits 42, as for any signal. `flag` is made later
  (when the trainer asks for it), already set if a signal came before. So a signal
  during set-up ends the run after its first step, with a save and exit 42 like any
  other. Before install (interpreter and TensorFlow imports, a few seconds) a signal
  keeps its default action: the process dies having written nothing, and the previous
  checkpoint, if any, is what the next run resumes from.
* Leaving. A second signal while saving only sets the flag again: nothing is interrupted.
  uninstall() after a received signal keeps the do-nothing handler: the save is done, and
  a repeated signal during teardown must not turn exit 42 into a death by signal.
"""

import os
import signal
import threading
import time

import tensorflow as tf


class PreemptionWatcher:
    """Watches `signal_names`; `flag` (a host tf.Variable) becomes 1 when one arrives."""

    def __init__(self, *, signal_names=("SIGTERM", "SIGUSR1")):
        self.signals = [getattr(signal, name) for name in signal_names]
        self.received = None  # (signal name or reason, time.monotonic()) of the first request
        self._lock = threading.Lock()  # orders flag creation against the watcher thread
        self._flag = None
        self._signalled = False  # a real signal arrived (not request())
        self._read_fd = self._write_fd = None
        self._thread = None
        self._previous = {}
        self._old_wakeup_fd = None

    @property
    def flag(self):
        """The variable every train step reads; made on first use, on the host CPU."""
        with self._lock:
            if self._flag is None:
                with tf.init_scope(), tf.device("/cpu:0"):
                    self._flag = tf.Variable(
                        1.0 if self.received else 0.0, trainable=False, name="preemption_flag"
                    )
            return self._flag

    def install(self):
        """Take the signals; again: take them back from whoever took them since."""
        if threading.current_thread() is not threading.main_thread() or not self.signals:
            return self  # signals can only be handled from the main thread
        if self._read_fd is not None:
            for sig in self.signals:
                signal.signal(sig, _ignore)  # sets the C-level handler again too
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, _ignore)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="preemption-watcher", daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        numbers = {int(s) for s in self.signals}
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return  # uninstall() closed the write end
            for number in data:
                if number in numbers:  # other handled signals (SIGINT) share the fd
                    self._signalled = True
                    self._note(signal.Signals(number).name)

    def _note(self, reason):
        with self._lock:
            if self.received is None:
                self.received = (reason, time.monotonic())
            flag = self._flag
        if flag is not None:  # else flag is made already set
            flag.assign(1.0)

    @property
    def requested(self):
        """This process saw a signal or a request (other workers may not have: see Agreement)."""
        return self.received is not None

    def request(self, reason="request"):
        """Ask for a stop from code (tests, a scheduler hook); any thread but a tracing one."""
        self._note(reason)

    def uninstall(self):
        if self._read_fd is None:
            return
        signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
        for sig, previous in self._previous.items():
            signal.signal(sig, _ignore if self._signalled else previous)
        os.close(self._write_fd)  # the watcher thread reads EOF and ends
        self._thread.join(timeout=5)
        os.close(self._read_fd)
        self._read_fd = self._write_fd = self._thread = None
        self._previous = {}


def _ignore(signum, frame):
    """The Python-level handler: nothing to do here (see Handlers in the module doc)."""
