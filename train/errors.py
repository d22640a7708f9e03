"""Exceptions that map onto the harness's exit codes.

Exit codes (a contract users and launchers rely on):
  0  done
  1  any other failure (including a checkpoint write that failed: disk full, permissions)
  2  bad usage or bad input; one line on stderr names what is wrong
  42 preempted after a completed save: run the same command again to resume
"""

import argparse
import contextlib

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 42


class HarnessError(Exception):
    """Base class: an error with a one-line message and an exit code."""

    exit_code = EXIT_FAILURE


class UsageError(HarnessError):
    """Bad flag, bad file, bad dataset, unusable workdir: exit 2."""

    exit_code = EXIT_USAGE


class CheckpointError(UsageError):
    """No valid checkpoint to restore although some exist, or a checkpoint that does not fit."""


class CheckpointWriteError(HarnessError):
    """A save failed (disk full, permission denied, ...): exit 1, earlier checkpoints intact."""

    exit_code = EXIT_FAILURE


class OutputWriteError(HarnessError):
    """A run's output (metrics.jsonl, TensorBoard events, an export) could not be written,
    e.g. disk full: exit 1, one line. Checkpoints are not touched by it (their own write
    failures are CheckpointWriteError); a rerun once the cause is gone carries on."""

    exit_code = EXIT_FAILURE


class NonFiniteError(HarnessError):
    """A step's loss or gradients, or variables about to be written, are NaN or Inf: exit 1,
    nothing written from them (train.loops.nonfinite, train.checkpoint.finite)."""

    exit_code = EXIT_FAILURE


@contextlib.contextmanager
def writing(what, *also):
    """Turn an OSError (or one of the exception classes `also`, e.g. TensorFlow's
    OpError) raised while writing `what` into one OutputWriteError line."""
    try:
        yield
    except (OSError, *also) as e:
        raise OutputWriteError(f"cannot write {what}: {first_line(e)}") from None


class Preempted(HarnessError):
    """Raised after the preemption save completed: exit 42."""

    exit_code = EXIT_PREEMPTED


def first_line(error):
    """The first non-blank line of an exception's message, stripped; the exception's type
    name when the message is empty (an error line must never be blank, nor fail itself)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing its usage
    block; --help still prints and exits 0. Subparsers inherit the class."""

    def error(self, message):
        raise UsageError(message)
