"""Start the group of workers, watch it, stop it, and restart it.

Invariants:
- Each worker leads its own process group (a new session): stopping a worker reaches
  its children, and a Ctrl-C in the terminal reaches only the launcher, which forwards
  it. Every group of an attempt is SIGKILLed before the next attempt starts and before
  the launcher returns: nothing outlives its attempt.
- Stopping is bounded: SIGTERM to every group still running, SIGKILL after
  `stop_timeout`. The launcher never waits on a worker without a deadline.
- The group stops when any worker exits non-zero, or exits 0 while others still run
  after `stop_timeout`; it then restarts (new plan: new ports, restart count + 1) with
  exponential backoff, up to `max_restarts`. A worker's exit 2 (bad usage) is not
  restarted: the same command would fail the same way.
- A signal the launcher receives (SIGTERM, SIGINT, SIGUSR1; SIGHUP is sent on as
  SIGTERM) is forwarded to each worker process (not its group: a worker's children need
  not handle SIGUSR1, whose default is to die) and ends the run: whoever sent it is
  taking the machine away, so the launcher waits (SIGKILL after `stop_timeout`), never
  restarts, and exits 42 when every worker exited 42 (or 0), so the scheduler requeues.
  A SIGINT after that kills the group at once. Signals ignored when the launcher was
  started (nohup, background jobs) stay ignored.
- Exit code: 0 when every worker exited 0; else the first non-zero code of a worker the
  launcher had not stopped (killed by signal S: 128+S); 1 when only the launcher's stop
  made workers fail.
- Output of a worker goes to the launcher's stdout/stderr line by line, with its prefix
  (launch.relay).
"""

import os
import signal
import subprocess
import threading
import time

from launch import plan
from launch.policy import (  # noqa: F401  (Exit, backoff_seconds: part of this API)
    BACKOFF_CAP_SECONDS,
    Exit,
    Options,
    Outcome,
    backoff_seconds,
    code_after_signal,
    next_step,
)
from launch.relay import FORWARD, POLL_SECONDS, Output, SignalInbox, pump
from train.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, HarnessError, UsageError

PIPE_DRAIN_SECONDS = 2.0  # after its group is dead, a worker's output ends within this


def supervise(*, make_workers, options, output=None):
    """Run attempts until one succeeds, a signal ends the run, or restarts are spent."""
    output = output or Output()
    inbox = SignalInbox().install()
    try:
        restart = 0
        while True:
            workers = make_workers(restart)
            output.event(_starting(workers, restart, options))
            outcome = _Attempt(
                workers=workers, options=options, inbox=inbox, output=output, restart=restart
            ).run()
            if (
                outcome.code == EXIT_OK
                or outcome.signal
                or outcome.code == EXIT_USAGE
                or restart >= options.max_restarts
            ):
                return outcome.code
            restart += 1
            received = inbox.wait(backoff_seconds(restart, options.restart_backoff))
            if received:
                output.event(
                    f"received {received[0].name} while waiting to restart; "
                    f"not restarting; exiting with {outcome.code}"
                )
                return outcome.code
    finally:
        inbox.restore()


def _starting(workers, restart, options):
    names = (
        workers[0].label
        if len(workers) == 1
        else (f"{len(workers)} workers (ranks {workers[0].rank}-{workers[-1].rank})")
    )
    again = f" (restart {restart}/{options.max_restarts})" if restart else ""
    return f"starting {names}{again}"


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"  # real-time signals have no name of their own


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)  # the worker's pid is its group's id (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _signal_process(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Attempt:
    """One start of the whole group; `run` returns when every worker has exited."""

    def __init__(self, *, workers, options, inbox, output, restart):
        self.workers, self.options, self.inbox, self.output = workers, options, inbox, output
        self.restart = restart
        self.procs, self.pumps = [], []
        self.exits = {}  # worker index -> Exit, in the order seen
        self.stopped = set()  # worker indexes the launcher told to stop
        self.kill_at = None  # when whatever still runs gets SIGKILL; set once stopping
        self.stop_code = None  # the exit code the stop was for
        self.killed = False
        self.signal = None

    def run(self):
        try:
            self._start()
            while True:
                for sig in self.inbox.take():
                    self._on_signal(sig)
                self._reap()
                self._decide(time.monotonic())
                if len(self.exits) == len(self.procs):
                    break
                time.sleep(POLL_SECONDS)
        finally:
            self._cleanup()
        return self._outcome()

    def _start(self):
        for spec in self.workers:
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    env=spec.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise UsageError(f"command not found: {spec.argv[0]}") from None
            except PermissionError:
                raise UsageError(f"command is not executable: {spec.argv[0]}") from None
            except OSError as error:
                raise HarnessError(f"cannot start {spec.label}: {error}") from None
            self.procs.append(proc)
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                reader = threading.Thread(
                    target=pump, daemon=True, args=(pipe, self.output, name, spec.prefix.encode())
                )
                reader.start()
                self.pumps.append(reader)

    def _running(self):
        return [index for index in range(len(self.procs)) if index not in self.exits]

    def _ranks(self, indexes):
        return ", ".join(str(self.workers[index].rank) for index in indexes)

    def _reap(self):
        for index in self._running():
            returncode = self.procs[index].poll()
            if returncode is None:
                continue
            code = 128 - returncode if returncode < 0 else returncode
            if self.workers[index].exit_codes_dir is not None:
                code = plan.recorded_exit_code(self.workers[index].exit_codes_dir, code)
            self.exits[index] = Exit(
                rank=self.workers[index].rank,
                label=self.workers[index].label,
                code=code,
                signal=_signal_name(-returncode) if returncode < 0 else None,
                stopped=index in self.stopped,
                at=time.monotonic(),
            )

    def _decide(self, now):
        if self.kill_at is not None:
            if not self.killed and now >= self.kill_at:
                self._kill(
                    f"workers {{ranks}} did not exit within --stop-timeout "
                    f"{self.options.stop_timeout:g} s; sending SIGKILL"
                )
            return
        failure = next((done for done in self.exits.values() if done.code != EXIT_OK), None)
        if failure is not None:
            self._stop(now, failure.describe(), failure.code)
            return
        first = next(iter(self.exits.values()), None)
        if first is not None and now - first.at >= self.options.stop_timeout and self._running():
            self._stop(
                now,
                f"{first.label} exited with 0 but workers "
                f"{self._ranks(self._running())} still run after "
                f"{self.options.stop_timeout:g} s",
                EXIT_FAILURE,
            )

    def _stop(self, now, what, code):
        running = self._running()
        steps = [what] + (["stopping the group"] if running else [])
        steps.append(next_step(code, restart=self.restart, options=self.options))
        self.output.event("; ".join(steps))
        for index in running:
            self.stopped.add(index)
            _signal_group(self.procs[index].pid, signal.SIGTERM)
        self.stop_code, self.kill_at = code, now + self.options.stop_timeout

    def _kill(self, text):
        """SIGKILL what still runs; `text` is the event line, with {ranks} to fill in."""
        running = self._running()
        if running:
            self.output.event(text.format(ranks=self._ranks(running)))
        for index in running:
            self.stopped.add(index)
            _signal_group(self.procs[index].pid, signal.SIGKILL)
        self.killed = True

    def _on_signal(self, sig):
        if sig == signal.SIGINT and self.signal is not None:
            self._kill("received SIGINT again; sending SIGKILL to workers {ranks}")
            return
        forward, running = FORWARD[sig], self._running()
        for index in running:
            _signal_process(self.procs[index].pid, forward)
        first = self.signal is None
        self.signal = self.signal or sig.name
        text = f"received {sig.name}; sent {forward.name} to workers {self._ranks(running)}"
        if first:
            text += (
                f"; not restarting; waiting up to {self.options.stop_timeout:g} s for them to exit"
            )
            if self.kill_at is None:
                self.kill_at = time.monotonic() + self.options.stop_timeout
        self.output.event(text)

    def _cleanup(self):
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGKILL)  # strays a worker left behind
        deadline = time.monotonic() + PIPE_DRAIN_SECONDS
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # unkillable (uninterruptible I/O): do not hang on it
        for reader in self.pumps:
            reader.join(timeout=max(0.0, deadline - time.monotonic()))

    def _outcome(self):
        if self.signal is None:
            code = EXIT_OK if self.stop_code is None else self.stop_code
            if code == EXIT_OK:
                self.output.event(f"all {len(self.procs)} worker(s) exited 0")
            return Outcome(code=code)
        exits = sorted(self.exits.values(), key=lambda done: done.rank)  # stable message
        code = code_after_signal(exits)
        self.output.event(
            f"after {self.signal}: exit codes "
            f"{', '.join(f'{done.rank}={done.code}' for done in exits)}; "
            f"exiting with {code}"
        )
        return Outcome(code=code, signal=self.signal)
