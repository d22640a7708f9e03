"""train.resume in-process: what a checkpoint's run must share with this one (the global
batch), what may differ (the world size, the learning rate), and the resume row."""

import os

import keras
import pytest

from train.cli import train_main

from conftest import read_metrics, tree_snapshot


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")  # a run sets the global policy


def train(path, *extra):
    return train_main(
        [
            "--workdir",
            str(path),
            "--dataset",
            "synthetic",
            "--steps-per-call",
            "2",
            "--log-every",
            "2",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "0",
            "--no-export",
            "--precision",
            "fp32",
            *map(str, extra),
        ]
    )


def test_another_global_batch_on_resume_is_refused_and_nothing_is_written(tmp_path, capsys):
    assert train(tmp_path, "--steps", 2, "--batch-size", 16) == 0
    before = _without_lock(tree_snapshot(tmp_path))
    capsys.readouterr()
    assert train(tmp_path, "--steps", 4, "--batch-size", 32) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 16" in err, err
    # The refusal comes from the checkpoint it restored, so under the workdir's lock,
    # whose holder line it rewrote; nothing of the run changed.
    assert _without_lock(tree_snapshot(tmp_path)) == before


def _without_lock(snapshot):
    return {path: stat for path, stat in snapshot.items() if path != ".lock"}


def test_a_rerun_trains_at_its_own_learning_rate_and_says_so(tmp_path):
    # The checkpoint holds the rate variable of the run that wrote it; the rerun's flags
    # (and, under --scale-lr, its world size) decide the rate from the resumed step on.
    assert train(tmp_path, "--steps", 2, "--batch-size", 16, "--learning-rate", 0.01) == 0
    assert train(tmp_path, "--steps", 4, "--batch-size", 16, "--learning-rate", 0.002) == 0
    rows = read_metrics(tmp_path)
    resume = [r for r in rows if r.get("event") == "resume"][-1]
    assert resume["learning_rate_before"] == pytest.approx(0.01)
    assert resume["learning_rate"] == pytest.approx(0.002)
    assert [r["learning_rate"] for r in rows if "loss" in r and r["step"] == 4] == [
        pytest.approx(0.002)
    ]
    assert "workers_before" not in resume  # the same world size: nothing to say


def test_an_unchanged_rerun_logs_no_changes(tmp_path):
    assert train(tmp_path, "--steps", 2, "--batch-size", 16) == 0
    assert train(tmp_path, "--steps", 4, "--batch-size", 16) == 0
    resume = [r for r in read_metrics(tmp_path) if r.get("event") == "resume"][-1]
    assert not {"learning_rate_before", "workers_before"} & set(resume)
    assert os.path.isdir(tmp_path / "checkpoints")
