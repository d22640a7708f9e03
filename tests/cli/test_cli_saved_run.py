"""train.cli.saved_run: a run's workdir read back, its optimizer rebuilt exactly."""

import json
import os

import keras
import pytest

from train import optimizers, workdir
from train.cli import saved_run, train_main


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")  # a run sets the global policy


@pytest.fixture(scope="module")
def warmup_run(tmp_path_factory):
    """A 2-step run with --scale-lr and a warmup, as one worker trains it."""
    path = tmp_path_factory.mktemp("warmup-run")
    code = train_main(
        [
            "--workdir",
            str(path),
            "--dataset",
            "synthetic",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--steps-per-call",
            "2",
            "--eval-every",
            "0",
            "--no-export",
            "--precision",
            "fp32",
            "--learning-rate",
            "0.01",
            "--scale-lr",
            "--warmup-steps",
            "4",
        ]
    )
    assert code == 0
    return path


def _with_world_size(run, num_workers):
    path = os.path.join(run, workdir.CONFIG_FILE)
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**config, "num_workers": num_workers}, f)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_restored_optimizer_peaks_at_the_rate_the_run_scaled_to(warmup_run, num_workers):
    # config.json of an N-worker run says num_workers=N (tests/distribute/test_multiworker
    # checks a real 2-worker run); the export must rebuild the warmup peak at N x rate.
    _with_world_size(warmup_run, num_workers)
    restored = saved_run.restore_checkpoint(str(warmup_run))
    assert restored.step == 2
    assert optimizers.learning_rate_at(restored.optimizer, 100) == pytest.approx(0.01 * num_workers)


def test_a_workdir_without_config_is_one_clear_usage_error(tmp_path):
    with pytest.raises(Exception, match="no config.json") as err:
        saved_run.read_run_config(str(tmp_path))
    assert err.value.exit_code == 2
