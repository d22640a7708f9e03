"""Subprocess helpers for the benchmarks that run `python -m train` / `python -m launch`:
the command line, waiting on metrics.jsonl, stopping a process group we started."""

import json
import os
import signal
import subprocess
import sys
import time

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def train_argv(*, workdir, model, batch_size, dataset, data_dir, steps, log_every,
               checkpoint_every, strategy=None, extra=()):
    """`python -m train ...` as a user would run it, without evaluation rows or export."""
    argv = [sys.executable, "-m", "train", "--workdir", workdir, "--model", model,
            "--batch-size", str(batch_size), "--dataset", dataset, "--data-dir", data_dir,
            "--steps", str(steps), "--log-every", str(log_every), "--eval-every", "0",
            "--checkpoint-every", str(checkpoint_every), "--no-export"]
    if strategy:
        argv += ["--strategy", strategy]
    return argv + list(extra)


def bench_env(**extra):
    env = {**os.environ, **QUIET, **extra}
    # The children import train/benchmarks from this checkout, as the parent does.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(argv, log_path, env=None):
    """Start a process in its own session (so its whole group can be signalled)."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env=env or bench_env(), start_new_session=True)
    finally:
        log.close()  # the child holds its own copy of the descriptor


def read_rows(workdir):
    """metrics.jsonl rows, skipping a line torn by a kill."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return rows


def wait_for_row(proc, workdir, predicate, timeout, poll=0.05):
    """The first metrics row matching predicate (None if the process ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in read_rows(workdir):
            if predicate(row):
                return row
        if proc.poll() is not None:
            return next((r for r in read_rows(workdir) if predicate(r)), None)
        time.sleep(poll)
    raise TimeoutError(f"no matching metrics row in {workdir} after {timeout:.0f} s")


def stop(proc, sig=signal.SIGKILL, timeout=120):
    """Signal the process group we started; its exit code (-N when killed by N)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    return proc.wait(timeout=timeout)


def log_tail(log_path, lines=3):
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])[-600:]
    except OSError:
        return ""
