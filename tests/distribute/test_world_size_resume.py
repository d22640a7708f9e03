"""Resume at another world size (train.resume's rule), end to end: a run written by 2
workers resumes under 1, and 1 under 2. Each step trains on the same examples as in a run
that never changed (HARNESS_RECORD_INDICES: every process appends its share of each
step's batch), and the losses follow it within the cross-strategy tolerance."""

import collections
import sys

import pytest

from conftest import harness_env, read_metrics, run_module

pytestmark = pytest.mark.slow
HALF, STEPS = 10, 20
FLAGS = [
    "--dataset",
    "synthetic",
    "--batch-size",
    "32",
    "--steps-per-call",
    "5",
    "--log-every",
    "5",
    "--checkpoint-every",
    "5",
    "--eval-every",
    "0",
    "--no-export",
    "--deterministic",
    "--precision",
    "fp32",
]


def train(workdir, record, workers, steps, *extra):
    command = ["train", "--workdir", workdir, "--steps", steps, *FLAGS, *extra]
    env = harness_env(HARNESS_RECORD_INDICES=str(record))
    if workers == 1:
        return run_module(*command, env=env, timeout=600, check_exit=0)
    return run_module(
        "launch",
        "--nproc",
        workers,
        "--max-restarts",
        "0",
        "--stop-timeout",
        "20",
        "--",
        sys.executable,
        "-m",
        "train",
        *command[1:],
        "--strategy",
        "multiworker",
        env=env,
        timeout=600,
        check_exit=0,
    )


def examples_per_step(record):
    """{step: sorted example indices of that step's global batch}, over every process."""
    found = collections.defaultdict(list)
    with open(record, encoding="utf-8") as f:
        for line in f:
            head, _, rest = line.partition(" [")
            if line.endswith("]\n") and head.isdigit():
                found[int(head)] += [int(i) for i in rest[:-2].split()]
    return {step: sorted(indices) for step, indices in found.items()}


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference")
    train(path / "run", path / "record", 1, STEPS)
    return examples_per_step(path / "record"), losses(path / "run")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_under_another_worker_count_sees_the_same_examples(
    tmp_path, reference, before, after
):
    workdir, record = tmp_path / "run", tmp_path / "record"
    train(workdir, record, before, HALF)
    train(workdir, record, after, STEPS)
    examples, reference_losses = reference
    assert examples_per_step(record) == examples
    assert losses(workdir) == pytest.approx(reference_losses, rel=1e-4)
    resume = [r for r in read_metrics(workdir) if r.get("event") == "resume"][-1]
    assert (resume["restored_step"], resume["workers_before"], resume["workers"]) == (
        HALF,
        before,
        after,
    )


def test_scale_lr_is_recomputed_for_the_new_worker_count(tmp_path):
    workdir, record = tmp_path / "run", tmp_path / "record"
    train(workdir, record, 2, 5, "--scale-lr", "--learning-rate", "0.001")
    train(workdir, record, 1, 10, "--scale-lr", "--learning-rate", "0.001")
    rows = read_metrics(workdir)
    resume = [r for r in rows if r.get("event") == "resume"][-1]
    assert resume["learning_rate_before"] == pytest.approx(0.002)
    assert resume["learning_rate"] == pytest.approx(0.001)
    assert [r["learning_rate"] for r in rows if r.get("step") == 10 and "loss" in r] == [
        pytest.approx(0.001)
    ]
