"""train.assemble and train.run in-process: a real run of a few steps (synthetic data,
default strategy) through the same entry point as harness-train, fast enough for the
`not slow` subset, so that subset exercises the real assembly."""

import json
import os

import keras
import pytest

from train import workdir
from train.checkpoint import files as cf
from train.cli import train_main

from conftest import read_metrics


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")  # a run sets the global policy


def train_in_process(path, *extra):
    args = [
        "--workdir",
        str(path),
        "--dataset",
        "synthetic",
        "--batch-size",
        "16",
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
    return train_main(args)


def test_a_real_run_of_four_steps_then_a_resume_to_six(tmp_path):
    assert train_in_process(tmp_path, "--steps", 4) == 0
    assert max(cf.list_checkpoints(workdir.checkpoint_dir(tmp_path))) == 4
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [2, 4]

    assert train_in_process(tmp_path, "--steps", 6) == 0
    rows = read_metrics(tmp_path)
    resume = [r for r in rows if r.get("event") == "resume"]
    assert resume and resume[-1]["restored_step"] == 4 and resume[-1]["steps_lost"] == 0
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert workdir.read_config(str(tmp_path), required=True)["total_steps"] == 6


def test_config_json_records_what_rebuilds_the_optimizer(tmp_path):
    assert train_in_process(tmp_path, "--steps", 2, "--scale-lr", "--warmup-steps", 4) == 0
    with open(os.path.join(tmp_path, workdir.CONFIG_FILE), encoding="utf-8") as f:
        config = json.load(f)
    assert config["num_workers"] == 1 and config["scale_lr"] is True
    assert config["warmup_steps"] == 4 and config["model"] == "cnn"


def test_bad_input_writes_nothing_into_the_workdir(tmp_path, capsys):
    assert train_in_process(tmp_path / "run", "--steps", 4, "--batch-size", 0) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not os.path.exists(tmp_path / "run")
