"""The restart policy of harness-launch, as pure decisions (launch.supervisor acts on
them): the options, a worker's exit, the attempt's outcome, whether and when to restart,
and the launcher's code after a signal."""

from dataclasses import dataclass

from train.errors import EXIT_FAILURE, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE

BACKOFF_CAP_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class Options:
    max_restarts: int = 3
    restart_backoff: float = 1.0  # seconds before restart 1; doubles, capped
    stop_timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class Exit:
    rank: int
    label: str
    code: int  # a death by signal S is 128+S
    signal: str | None  # its name, when the worker died of a signal
    stopped: bool  # the launcher had told it to stop (SIGTERM or SIGKILL to its group)
    at: float  # time.monotonic() when seen

    def describe(self):
        if self.signal:
            return f"{self.label} exited with {self.code} (killed by {self.signal})"
        notes = {EXIT_PREEMPTED: " (preempted after a save)", EXIT_USAGE: " (bad usage)"}
        return f"{self.label} exited with {self.code}{notes.get(self.code, '')}"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    code: int
    signal: str | None = None  # the first signal forwarded during the attempt


def backoff_seconds(restart, base):
    """Wait before restart number `restart` (1-based): base, 2 base, 4 base, ... capped."""
    return min(base * 2 ** (restart - 1), BACKOFF_CAP_SECONDS)


def next_step(code, *, restart, options):
    """What follows a failed attempt, as the event line says it."""
    if code == EXIT_USAGE:
        return "not restarting: a bad-usage exit would only repeat"
    if restart < options.max_restarts:
        delay = backoff_seconds(restart + 1, options.restart_backoff)
        return f"restart {restart + 1}/{options.max_restarts} in {delay:.1f} s"
    return f"no restarts left (--max-restarts {options.max_restarts}); exiting with {code}"


def code_after_signal(exits):
    """42 when every worker exited 42 (or 0): the save is done, requeue the job."""
    codes = [done.code for done in exits]
    if all(code == EXIT_OK for code in codes):
        return EXIT_OK
    if all(code in (EXIT_OK, EXIT_PREEMPTED) for code in codes):
        return EXIT_PREEMPTED
    return next(
        (
            done.code
            for done in exits
            if done.code not in (EXIT_OK, EXIT_PREEMPTED) and not done.stopped
        ),
        EXIT_FAILURE,
    )
