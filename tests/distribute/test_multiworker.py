"""MultiWorkerMirroredStrategy through harness-launch: two localhost workers, CPU."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO, harness_env, read_metrics

pytestmark = pytest.mark.slow
# fp32: the single-worker comparison below splits the batch differently, and bfloat16
# (--precision auto on AMX) rounds activations well above its 1e-4 tolerance.
COMMON = [
    "--batch-size",
    "32",
    "--log-every",
    "5",
    "--checkpoint-every",
    "5",
    "--eval-every",
    "0",
    "--steps-per-call",
    "5",
    "--no-export",
    "--deterministic",
    "--precision",
    "fp32",
]


def launch_args(workdir, data_dir, steps, *, max_restarts=1, extra=()):
    return [
        sys.executable,
        "-m",
        "launch",
        "--nproc",
        "2",
        "--max-restarts",
        str(max_restarts),
        "--restart-backoff",
        "0",
        "--stop-timeout",
        "20",
        "--",
        sys.executable,
        "-m",
        "train",
        "--workdir",
        str(workdir),
        "--data-dir",
        data_dir,
        "--strategy",
        "multiworker",
        "--steps",
        str(steps),
        *COMMON,
        *extra,
    ]


def run_launch(args, timeout=300):
    return subprocess.run(
        args, cwd=REPO, env=harness_env(), capture_output=True, text=True, timeout=timeout
    )


def digests(stdout):
    """{rank: weights digest} from each worker's `finished` line."""
    found = re.findall(r"^\[(\d)\].*finished\s+step=(\d+)\s+weights_sha256=(\w+)", stdout, re.M)
    return {int(rank): (int(step), digest) for rank, step, digest in found}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("mw") / "run"
    proc = run_launch(launch_args(workdir, data_dir, 30))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc


def test_two_workers_end_identical_and_only_the_chief_wrote(uninterrupted):
    workdir, proc = uninterrupted
    found = digests(proc.stdout)
    assert set(found) == {0, 1} and found[0] == found[1] and found[0][0] == 30
    assert sorted(os.listdir(workdir)) == [
        ".lock",
        "checkpoints",
        "config.json",
        "metrics.jsonl",
        "tensorboard",
    ]
    with open(workdir / "config.json", encoding="utf-8") as f:
        assert json.load(f)["num_workers"] == 2  # what harness-export rebuilds --scale-lr from
    names = os.listdir(workdir / "checkpoints")
    assert not [n for n in names if n.startswith(".tmp")]
    assert "ckpt-00000030" in names


def test_follows_the_single_worker_loss_curve(uninterrupted, tmp_path, data_dir):
    """Both see the same 32 examples per step (worker w takes every 2nd of the global
    permutation), so only the order of float additions differs: tolerance 1e-4 relative."""
    workdir, _ = uninterrupted
    single = tmp_path / "single"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--workdir",
            str(single),
            "--data-dir",
            data_dir,
            "--strategy",
            "default",
            "--steps",
            "30",
            *COMMON,
        ],
        cwd=REPO,
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def losses(w):
        return [r["loss"] for r in read_metrics(w) if "loss" in r]

    assert losses(single) == pytest.approx(losses(workdir), rel=1e-4)


def _wait_for_step(workdir, step, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        path = workdir / "metrics.jsonl"
        if path.exists() and any(
            r.get("step", 0) >= step and "loss" in r for r in read_metrics(workdir)
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} never logged")


def _worker(launcher_pid, rank):
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("HARNESS_RANK") == str(rank) and "train" in child.cmdline():
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no worker {rank}")


def test_kill_9_of_the_non_chief_restarts_and_ends_bitwise_equal(uninterrupted, tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        launch_args(workdir, data_dir, 30),
        cwd=REPO,
        env=harness_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_step(workdir, 10, proc)
    _worker(proc.pid, 1).kill()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "restart 1/1" in out
    resumes = [r for r in read_metrics(workdir) if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["restored_step"] >= 10
    assert digests(out)[0] == digests(uninterrupted[1].stdout)[0]


def test_sigterm_to_the_launcher_saves_on_every_worker_at_one_step(tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        launch_args(workdir, data_dir, 2000),
        cwd=REPO,
        env=harness_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_step(workdir, 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 42, out[-3000:]
    steps = dict(re.findall(r"^\[(\d)\].*preempted\s+step=(\d+)", out, re.M))
    assert set(steps) == {"0", "1"} and steps["0"] == steps["1"]
    with open(workdir / "checkpoints" / "latest") as f:
        assert f.read().strip() == f"ckpt-{int(steps['0']):08d}"


def test_a_failing_worker_stops_the_group_quickly(tmp_path, data_dir):
    script = (
        "import os, runpy, sys\n"
        "if os.environ['HARNESS_RANK'] == '1': raise RuntimeError('worker 1 broke')\n"
        "sys.argv = ['train'] + sys.argv[1:]\n"
        "runpy.run_module('train', run_name='__main__')\n"
    )
    args = launch_args(tmp_path / "run", data_dir, 2000, max_restarts=0)
    args[args.index("train") - 1 : args.index("train") + 1] = ["-c", script]
    started = time.monotonic()
    proc = run_launch(args, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "worker 1 broke" in proc.stdout + proc.stderr


def test_malformed_tf_config_is_one_line_exit_2(tmp_path, data_dir):
    env = harness_env(TF_CONFIG="{not json")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--workdir",
            str(tmp_path / "r"),
            "--data-dir",
            data_dir,
            "--strategy",
            "multiworker",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "TF_CONFIG in the environment is malformed" in proc.stderr
