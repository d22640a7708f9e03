"""The background writer: one thread, at idle priority, with one write in flight at most.

Why a save may go on in the background, and what it may touch, is stated once, in
train.checkpoint.manager (Atomic).
"""

import concurrent.futures
import os


class BackgroundWriter:
    """Runs one function at a time in the "checkpoint-writer" thread, made on first use."""

    def __init__(self):
        self._inflight = None  # Future of the write not yet collected
        self._executor = None

    def submit(self, fn, *args):
        """Start fn(*args) in the writer thread; the caller waits for the previous first."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="checkpoint-writer",
                initializer=_run_at_idle_priority,
            )
        self._inflight = self._executor.submit(fn, *args)

    def wait(self):
        """Block until the write in flight is done and collect it: raise its failure."""
        future, self._inflight = self._inflight, None
        if future is not None:
            future.result()

    def settle(self):
        """Block until the write in flight is done; its failure stays pending for wait()."""
        if self._inflight is not None:
            concurrent.futures.wait([self._inflight])

    def close(self):
        """Stop the writer thread (after the write in flight); wait() first to collect it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _run_at_idle_priority():
    """Writer thread initializer: schedule this thread only when a core is idle (Linux).

    An async write shares the cores with training. At normal priority, each time it runs
    it takes a core from a compute thread and holds up the whole step; at SCHED_IDLE it
    fills the gaps between ops instead (measured here: 7 ms of pure CPU at SCHED_IDLE
    cost training ~1 ms; the real write still costs ~6 ms, mostly its I/O in the kernel).
    Never slower than a sync save: once training blocks on the write (save, wait, close),
    the cores are idle and the write runs at full speed.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
    except (AttributeError, OSError):  # not Linux: normal priority
        pass
