"""harness-launch end to end: real `python -m launch` runs over tiny worker scripts.

The workers are plain Python (no TensorFlow); they coordinate through marker files in
tmp_path, so no test depends on sleeping "long enough". Every run has a timeout.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launch import plan

from conftest import harness_env, run_module

PYTHON = sys.executable

# Prepended to every worker script: who am I, and file-based coordination.
PRELUDE = """\
import json, os, pathlib, signal, subprocess, sys, time
RANK = int(os.environ["HARNESS_RANK"])
RESTART = int(os.environ["HARNESS_RESTART_COUNT"])
HERE = pathlib.Path(__file__).parent

def mark(name, text=""):
    (HERE / name).write_text(text)

def wait_for(name, timeout=30):
    deadline = time.monotonic() + timeout
    while not (HERE / name).exists():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {name}")
        time.sleep(0.02)

with open(HERE / "starts.log", "a") as log:
    log.write(f"{RANK} {RESTART}\\n")
"""


def _env(extra=None):
    # A Slurm job or a TF_CONFIG around the test run must not turn these into other runs.
    env = {
        key: value
        for key, value in harness_env().items()
        if not key.startswith("SLURM_") and key != "TF_CONFIG"
    }
    return env | (extra or {})


def worker(tmp_path, body):
    script = tmp_path / "worker.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return [PYTHON, str(script)]


def launch(args, *, env=None, timeout=60):
    return run_module("launch", *args, env=_env(env), timeout=timeout)


def starts(tmp_path):
    """(rank, restart count) of every worker start, in order."""
    log = tmp_path / "starts.log"
    lines = log.read_text().split("\n") if log.exists() else []
    return sorted(tuple(int(x) for x in line.split()) for line in lines if line)


def alive(pid):
    """A pid that is neither gone nor a zombie (PID 1 here may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_workers_get_one_cluster_and_prefixed_output(tmp_path):
    command = worker(
        tmp_path,
        """
        config = json.loads(os.environ["TF_CONFIG"])
        mark(f"env-{RANK}", json.dumps({"tf_config": config,
                                        "world": os.environ["HARNESS_WORLD_SIZE"],
                                        "local": os.environ["HARNESS_LOCAL_RANK"]}))
        print(f"hello from {RANK}")
        print(f"warning from {RANK}", file=sys.stderr)
        sys.stdout.write(f"no newline {RANK}")
    """,
    )
    done = launch(["--nproc", "2", "--", *command])
    assert done.returncode == 0, done.stderr
    envs = [json.loads((tmp_path / f"env-{rank}").read_text()) for rank in (0, 1)]
    workers = envs[0]["tf_config"]["cluster"]["worker"]
    assert envs[1]["tf_config"]["cluster"]["worker"] == workers
    assert len(workers) == 2 and len(set(workers)) == 2
    assert all(
        address.startswith("localhost:") and int(address.split(":")[1]) > 0 for address in workers
    )
    for rank, env in enumerate(envs):
        assert env["tf_config"]["task"] == {"type": "worker", "index": rank}
        assert (env["world"], env["local"]) == ("2", str(rank))
        assert f"[{rank}] hello from {rank}\n" in done.stdout
        assert f"[{rank}] no newline {rank}\n" in done.stdout  # the last partial line
        assert f"[{rank}] warning from {rank}\n" in done.stderr
    assert all(line.startswith(("[0] ", "[1] ")) for line in done.stdout.splitlines())


def test_preempted_worker_restarts_the_group(tmp_path):
    command = worker(
        tmp_path,
        """
        mark(f"config-{RANK}-{RESTART}", os.environ["TF_CONFIG"])
        if RANK == 1 and not (HERE / "preempted-once").exists():
            mark("preempted-once")
            sys.exit(42)
        wait_for(f"config-1-{RESTART}")  # worker 0 of attempt 0 outlives worker 1's exit
        time.sleep(0 if RESTART else 30)
    """,
    )
    done = launch(["--nproc", "2", "--restart-backoff", "0.1", "--", *command])
    assert done.returncode == 0, done.stderr
    assert starts(tmp_path) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (
        "worker 1 exited with 42 (preempted after a save); stopping the group; restart 1/3 in 0.1 s"
    ) in done.stderr
    again = json.loads((tmp_path / "config-0-1").read_text())
    assert again["cluster"] == json.loads((tmp_path / "config-1-1").read_text())["cluster"]


def test_worker_killed_by_sigkill_is_restarted(tmp_path):
    command = worker(
        tmp_path,
        """
        if RESTART == 0:
            if RANK == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # must be stopped by the launcher
    """,
    )
    done = launch(["--nproc", "2", "--restart-backoff", "0", "--", *command])
    assert done.returncode == 0, done.stderr
    assert (
        "harness-launch: worker 1 exited with 137 (killed by SIGKILL); "
        "stopping the group; restart 1/3 in 0.0 s"
    ) in done.stderr
    assert starts(tmp_path) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_failing_worker_stops_the_group_and_its_children(tmp_path):
    command = worker(
        tmp_path,
        """
        if RANK == 0:
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            mark("pids", f"{os.getpid()} {child.pid}")
            while True:
                time.sleep(1)
        wait_for("pids")
        raise RuntimeError("boom")
    """,
    )
    started = time.monotonic()
    done = launch(["--nproc", "2", "--max-restarts", "0", "--", *command])
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    assert "[1] RuntimeError: boom" in done.stderr
    assert (
        "worker 1 exited with 1; stopping the group; no restarts left "
        "(--max-restarts 0); exiting with 1"
    ) in done.stderr
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda sig: sig.name)
def test_signal_is_forwarded_and_ends_the_run_with_42(tmp_path, sig):
    command = worker(
        tmp_path,
        f"""
        def preempt(signum, frame):
            mark(f"saved-{{RANK}}-{{signal.Signals(signum).name}}")
            sys.exit(42)
        signal.signal({int(sig)}, preempt)
        mark(f"ready-{{RANK}}")
        while True:
            time.sleep(0.05)
    """,
    )
    proc = subprocess.Popen(
        [PYTHON, "-m", "launch", "--nproc", "2", "--", *command],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: all((tmp_path / f"ready-{rank}").exists() for rank in (0, 1)))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 42, err
    assert all((tmp_path / f"saved-{rank}-{sig.name}").exists() for rank in (0, 1))
    assert starts(tmp_path) == [(0, 0), (1, 0)]  # not restarted
    assert f"received {sig.name}; sent {sig.name} to workers 0, 1; not restarting" in err
    assert "exit codes 0=42, 1=42; exiting with 42" in err


def test_worker_ignoring_sigterm_is_killed_after_stop_timeout(tmp_path):
    command = worker(
        tmp_path,
        """
        if RANK == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            mark("pid", str(os.getpid()))
            while True:
                time.sleep(1)
        wait_for("pid")
        sys.exit(3)
    """,
    )
    started = time.monotonic()
    done = launch(["--nproc", "2", "--max-restarts", "0", "--stop-timeout", "1", "--", *command])
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert 1 <= elapsed < 20
    assert "workers 0 did not exit within --stop-timeout 1 s; sending SIGKILL" in done.stderr
    assert not alive(int((tmp_path / "pid").read_text()))


def test_single_worker_is_restarted_after_preemption(tmp_path):
    command = worker(
        tmp_path,
        """
        sys.exit(0 if RESTART else 42)
    """,
    )
    done = launch(["--nproc", "1", "--restart-backoff", "0", "--", *command])
    assert done.returncode == 0, done.stderr
    assert starts(tmp_path) == [(0, 0), (0, 1)]
    assert "worker 0 exited with 42 (preempted after a save); restart 1/3" in done.stderr


def test_spent_restarts_exit_with_the_workers_code(tmp_path):
    command = worker(tmp_path, "sys.exit(42)\n")
    done = launch(["--nproc", "1", "--max-restarts", "2", "--restart-backoff", "0", "--", *command])
    assert done.returncode == 42, done.stderr
    assert starts(tmp_path) == [(0, 0), (0, 1), (0, 2)]
    assert "no restarts left (--max-restarts 2); exiting with 42" in done.stderr


def test_bad_usage_exit_of_a_worker_is_not_restarted(tmp_path):
    command = worker(tmp_path, "sys.exit(2)\n")
    done = launch(["--nproc", "1", "--restart-backoff", "0", "--", *command])
    assert done.returncode == 2, done.stderr
    assert starts(tmp_path) == [(0, 0)]
    assert "not restarting" in done.stderr


def test_worker_done_while_another_hangs_stops_the_group(tmp_path):
    command = worker(
        tmp_path,
        """
        if RANK == 1:
            time.sleep(60)
    """,
    )
    done = launch(["--nproc", "2", "--max-restarts", "0", "--stop-timeout", "0.5", "--", *command])
    assert done.returncode == 1, done.stderr
    assert "worker 0 exited with 0 but workers 1 still run after 0.5 s" in done.stderr


def test_node_of_a_multi_host_run_starts_its_own_ranks(tmp_path):
    command = worker(
        tmp_path,
        """
        mark(f"config-{RANK}", os.environ["TF_CONFIG"])
        mark(f"local-{RANK}", os.environ["HARNESS_LOCAL_RANK"])
    """,
    )
    done = launch(
        [
            "--nproc",
            "4",
            "--hosts",
            "alpha:2,beta:2",
            "--node-rank",
            "1",
            "--master-port",
            "23456",
            "--",
            *command,
        ]
    )
    assert done.returncode == 0, done.stderr
    assert starts(tmp_path) == [(2, 0), (3, 0)]
    for rank in (2, 3):
        config = json.loads((tmp_path / f"config-{rank}").read_text())
        assert config["cluster"]["worker"] == [
            "alpha:23456",
            "alpha:23457",
            "beta:23456",
            "beta:23457",
        ]
        assert config["task"] == {"type": "worker", "index": rank}
        assert (tmp_path / f"local-{rank}").read_text() == str(rank - 2)


def _bad_hostfile(tmp_path):
    (tmp_path / "hosts").write_text("alpha slots=2\nbeta two\n")
    return str(tmp_path / "hosts")


BAD_INPUT = {
    "nproc zero": (["--nproc", "0"], {}, "--nproc must be at least 1"),
    "nproc negative": (["--nproc", "-3"], {}, "--nproc must be at least 1"),
    "nproc not a number": (["--nproc", "two"], {}, "--nproc"),
    "no nproc": ([], {}, "--nproc is required"),
    "missing hostfile": (["--nproc", "2", "--hostfile", "{tmp}/nope"], {}, "cannot read it"),
    "malformed hostfile": (
        ["--nproc", "4", "--hostfile", "{hostfile}"],
        {},
        "line 2: expected 'host slots=N' or 'host:N'",
    ),
    "hosts and hostfile": (
        ["--nproc", "2", "--hosts", "a:2", "--hostfile", "{hostfile}"],
        {},
        "either --hosts or --hostfile",
    ),
    "malformed hosts": (["--nproc", "2", "--hosts", "a,b"], {}, "expected host:slots"),
    "node rank out of range": (
        ["--nproc", "4", "--hosts", "a:2,b:2", "--node-rank", "2"],
        {},
        "--node-rank 2 is out of range",
    ),
    "nproc against slots": (
        ["--nproc", "3", "--hosts", "a:2,b:2", "--node-rank", "0"],
        {},
        "--nproc 3 does not match the 4 slots of --hosts",
    ),
    "TF_CONFIG not JSON": (
        ["--nproc", "1"],
        {"TF_CONFIG": "{not json"},
        "TF_CONFIG in the environment is malformed",
    ),
    "TF_CONFIG without task": (
        ["--nproc", "1"],
        {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'},
        "TF_CONFIG in the environment is malformed",
    ),
    "negative max restarts": (
        ["--nproc", "1", "--max-restarts", "-1"],
        {},
        "--max-restarts must be at least 0",
    ),
    "zero stop timeout": (
        ["--nproc", "1", "--stop-timeout", "0"],
        {},
        "--stop-timeout must be more than 0",
    ),
    "unknown flag": (["--nproc", "1", "--nprocs", "2"], {}, "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    flags, env, expected = BAD_INPUT[case]
    values = {"tmp": tmp_path, "hostfile": _bad_hostfile(tmp_path)}
    args = [flag.format(**values) for flag in flags] + ["--", PYTHON, "-c", "pass"]
    done = launch(args, env=env, timeout=30)
    _assert_usage_error(done, expected)  # one line: not even a "starting" event


@pytest.mark.parametrize(
    "command, expected",
    [
        ([], "no command given"),
        (["no-such-command-xyz", "--flag"], "command not found: no-such-command-xyz"),
    ],
)
def test_bad_command_is_one_line_and_exit_2(command, expected):
    done = launch(["--nproc", "1", "--", *command], timeout=30)
    _assert_usage_error(done, expected)


def test_command_without_separator_is_refused():
    done = launch(["--nproc", "1", PYTHON, "-c", "pass"], timeout=30)
    _assert_usage_error(done, "the workers' command goes after --")


def test_horovod_backend_without_horovod_is_exit_2():
    if shutil.which("horovodrun") or (Path(PYTHON).parent / "horovodrun").exists():
        pytest.skip("horovod is installed here")
    done = launch(["--nproc", "2", "--backend", "horovod", "--", PYTHON, "-c", "pass"], timeout=30)
    _assert_usage_error(done, plan.HOROVOD_MISSING)


def test_horovod_backend_runs_horovodrun_once(tmp_path):
    fake = tmp_path / "bin" / "horovodrun"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{PYTHON}\nimport os, sys\n"
        "print(' '.join(sys.argv[1:]), os.environ['HARNESS_RESTART_COUNT'])\n"
    )
    fake.chmod(0o755)
    path = os.pathsep.join([str(fake.parent), os.environ.get("PATH", "")])
    done = launch(
        ["--nproc", "2", "--backend", "horovod", "--", PYTHON, "t.py"],
        env={"PATH": path},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"--gloo -np 2 -H localhost:2 {PYTHON} t.py 0\n"  # no prefix
    assert "harness-launch: starting horovodrun" in done.stderr


def _assert_usage_error(done, expected):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert lines[0].startswith("harness-launch: error: ")
    assert "Traceback" not in done.stderr and done.stdout == ""
