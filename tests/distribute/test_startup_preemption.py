"""A SIGTERM while MultiWorkerMirroredStrategy starts (issue 19 part 4). TensorFlow's
C-level notifier holds SIGTERM then, not train.loops.preemption; it publishes a notice in
the coordination service, which MultiWorkerBackend.preempted_during_startup reads, so that
train.run stops every worker after its first step (save, exit 42) instead of the signal
being swallowed. Here: two real workers on localhost; worker 1 sends itself SIGTERM while
TensorFlow's handler is the one installed, and both must see the notice."""

import json
import subprocess
import sys

import pytest

from launch.cluster import free_ports

from conftest import REPO, harness_env

pytestmark = pytest.mark.slow

WORKER = r"""
import json, os, signal, sys, time
from train import distribute
backend = distribute.create("multiworker")
before = backend.preempted_during_startup()
if backend.worker_index == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # TensorFlow's handler: the process lives on
deadline, seen = time.monotonic() + 60, False
while not seen and time.monotonic() < deadline:
    seen = backend.preempted_during_startup()  # the notice is published asynchronously
print(json.dumps({"worker": backend.worker_index, "before": before, "seen": seen}))
sys.stdout.flush()
backend.barrier("test-done")
distribute.leave_cluster(0)  # task 0, which hosts the service, leaves last
os._exit(0)
"""


def test_a_sigterm_during_strategy_start_reaches_every_worker():
    ports = free_ports(2)
    workers = [f"localhost:{port}" for port in ports]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=harness_env(
                TF_CONFIG=json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                )
            ),
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["worker"] for r in results) == [0, 1]
    assert all(r["seen"] for r in results), results
    assert [r["before"] for r in results if r["worker"] == 1] == [False]
