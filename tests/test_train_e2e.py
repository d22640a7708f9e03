"""The real harness-train entry point, a few steps on the built-in dataset."""

import os
import re

import pytest

from conftest import read_metrics, run_module, tree_snapshot

SMALL = [
    "--batch-size",
    "32",
    "--log-every",
    "5",
    "--checkpoint-every",
    "10",
    "--eval-every",
    "0",
    "--steps-per-call",
    "5",
]
ROW_KEYS = {
    "step",
    "epoch",
    "loss",
    "accuracy",
    "learning_rate",
    "images_per_sec",
    "steps_per_sec",
    "rss_bytes",
    "cpu_percent",
    "wall_time",
}


def train(workdir, data_dir, *flags, exit_code=0):
    return run_module(
        "train", "--workdir", workdir, "--data-dir", data_dir, *SMALL, *flags, check_exit=exit_code
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy", [["--strategy", "default"], ["--strategy", "mirrored", "--replicas", "2"]]
)
def test_trains_saves_exports_then_resumes_with_more_steps(tmp_path, data_dir, strategy):
    workdir = tmp_path / "run"
    first = train(workdir, data_dir, "--steps", "20", *strategy)
    assert "step" in first.stdout and "img/s" in first.stdout
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert ROW_KEYS <= set(train_rows[-1])
    assert any("eval_accuracy" in r and r["step"] == 20 for r in rows)
    for name in ("model.keras", "model.weights.h5", "saved_model"):
        assert os.path.exists(workdir / "export" / name), name
    assert (workdir / "tensorboard").is_dir()

    train(workdir, data_dir, "--steps", "30", *strategy)
    rows = read_metrics(workdir)
    resume = [r for r in rows if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["restored_step"] == 20
    assert resume[0]["time_to_resume_s"] > 0
    after = [r["step"] for r in rows[rows.index(resume[0]) :] if "loss" in r]
    assert after == [25, 30]


@pytest.mark.slow
def test_mirrored_with_one_replica_trains_bitwise_as_the_default_strategy(tmp_path, data_dir):
    def final_weights(name, *strategy):
        out = train(tmp_path / name, data_dir, "--steps", "10", "--no-export", *strategy)
        return re.search(r"weights_sha256=(\w+)", out.stdout).group(1)

    assert final_weights("d", "--strategy", "default") == final_weights(
        "m", "--strategy", "mirrored", "--replicas", "1"
    )


@pytest.mark.slow
def test_rerun_of_a_finished_run_resumes_instead_of_starting_over(tmp_path, data_dir):
    workdir = tmp_path / "run"
    train(workdir, data_dir, "--steps", "10")
    train(workdir, data_dir, "--steps", "10")
    rows = read_metrics(workdir)
    assert [r["restored_step"] for r in rows if r.get("event") == "resume"] == [10]
    assert max(r["step"] for r in rows if "loss" in r) == 10


@pytest.mark.slow
def test_other_model_on_a_used_workdir_is_refused_untouched(tmp_path, data_dir):
    workdir = tmp_path / "run"
    train(workdir, data_dir, "--steps", "10", "--no-export")
    before = tree_snapshot(workdir)
    proc = train(workdir, data_dir, "--steps", "20", "--model", "resnet20", exit_code=2)
    assert "model='cnn'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_snapshot(workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--dataset", "imagenet_nope"], "unknown dataset"),
        (["--dataset", "mnist"], "not prepared"),
        (["--steps", "0"], "--steps must be positive"),
        (["--batch-size", "-1"], "--batch-size must be positive"),
        (["--config", "/nonexistent.yaml"], "cannot read"),
        (["--strategy", "mirrored", "--replicas", "2", "--batch-size", "33"], "evenly"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_dir, flags, fragment):
    proc = train(tmp_path / "run", data_dir, "--steps", "5", *flags, exit_code=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_init_from_a_whole_model_file_starts_from_its_weights(tmp_path, data_dir):
    first = tmp_path / "first"
    # Enough training to move the eval loss well away from an untrained model's, at any
    # precision (at 60 steps of 32 it had moved by 0.007 in bfloat16, 0.05 in float32).
    train(first, data_dir, "--steps", "100", "--batch-size", "128", "--learning-rate", "0.003")
    trained = [r for r in read_metrics(first) if "eval_loss" in r][-1]["eval_loss"]
    second = tmp_path / "second"  # a vanishing learning rate: eval shows the loaded weights
    train(
        second,
        data_dir,
        "--steps",
        "1",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e-12",
        "--no-export",
        "--init-from",
        first / "export" / "model.keras",
    )
    loaded = [r for r in read_metrics(second) if "eval_loss" in r][-1]["eval_loss"]
    assert loaded == pytest.approx(trained, abs=1e-4)
    assert abs(trained - 2.3026) > 0.01  # not the loss of an untrained 10-class model
