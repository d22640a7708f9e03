"""Issue 19: non-finite values never reach a checkpoint (train.loops.nonfinite,
train.checkpoint.finite). In-process on a tiny model: a layer poisons the forward pass
(NaN loss) or only the backward pass (NaN gradients) at chosen steps; plus real runs
through train_main and, slow, `python -m train` diverging with SGD at a large rate.
The checkpoint and export guards: tests/checkpoint/test_checkpoint_finite.py."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from train import distribute, workdir
from train.checkpoint import files as cf
from train.cli import train_main
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import COUNT, NONFINITE, NONFINITE_LOSS, Trainer

from conftest import harness_env, read_metrics, run_module


class Poison(keras.layers.Layer):
    """Identity, but NaN at the forward passes (steps) in `loss_at`, and a NaN gradient
    (a finite loss) at those in `grads_at`; counts its forward passes."""

    def __init__(self, loss_at=(), grads_at=()):
        super().__init__()
        self.loss_at, self.grads_at, self.calls = set(loss_at), set(grads_at), 0

    def _factors(self):
        self.calls += 1
        nan = np.float32("nan")
        return (
            np.float32(nan if self.calls in self.loss_at else 1.0),
            np.float32(nan if self.calls in self.grads_at else 1.0),
        )

    def call(self, x):
        forward, backward = tf.py_function(self._factors, [], [tf.float32, tf.float32])
        forward.set_shape([])
        backward.set_shape([])
        forward, backward = tf.cast(forward, x.dtype), tf.cast(backward, x.dtype)

        @tf.custom_gradient
        def poisoned(x):
            return x * forward, lambda dy: dy * backward

        return poisoned(x)

    def compute_output_shape(self, input_shape):
        return input_shape


def make_trainer(*, loss_at=(), grads_at=(), limit=1, optimizer=None):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5),
            Poison(loss_at, grads_at),
            keras.layers.Dense(3, "softmax"),
        ]
    )
    optimizer = optimizer or keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(
        backend=distribute.Backend(strategy=tf.distribute.get_strategy()),
        model=model,
        optimizer=optimizer,
        global_batch_size=8,
        stop_flag=PreemptionWatcher(signal_names=()).flag,
        nonfinite_limit=limit,
    )
    batch = (tf.random.stateless_uniform([8, 4], seed=[1, 2]), tf.range(8, dtype=tf.int32) % 3)
    return trainer, iter(tf.data.Dataset.from_tensors(batch).repeat())


def state(trainer):
    return [np.array(v.numpy()) for v in trainer.model.variables + trainer.optimizer.variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # bitwise for floats (NaN never appears here)


def test_stop_leaves_the_call_at_the_first_nonfinite_step_without_applying_it():
    trainer, iterator = make_trainer(loss_at={4})
    trainer.train(iterator, 3)
    good = state(trainer)
    sums = trainer.train(iterator, 10)
    assert int(trainer.step.numpy()) == 4 and trainer.nonfinite_stopped()
    assert sums[NONFINITE] == 1 and sums[NONFINITE_LOSS] == 1 and sums[COUNT] == 0
    assert_same(state(trainer), good)  # model, Adam slots and iterations of step 3


def test_skip_drops_the_update_and_counts_it_then_trains_on():
    trainer, iterator = make_trainer(grads_at={3}, limit=10)
    trainer.train(iterator, 2)
    before = state(trainer)
    sums = trainer.train(iterator, 1)  # step 3: finite loss, NaN gradients
    assert sums[NONFINITE] == 1 and sums[NONFINITE_LOSS] == 0
    assert_same(state(trainer), before)  # Adam's moments and iterations did not move
    sums = trainer.train(iterator, 5)
    assert int(trainer.step.numpy()) == 8 and sums[NONFINITE] == 0 and sums[COUNT] == 40
    assert not trainer.nonfinite_stopped()
    after = state(trainer)
    assert all(np.isfinite(v).all() for v in after)
    assert not all(np.array_equal(x, y) for x, y in zip(before, after))


def test_skip_stops_after_n_consecutive_nonfinite_steps_and_a_good_step_resets_the_count():
    trainer, iterator = make_trainer(loss_at={2, 4, 5, 7, 8, 9, 10}, limit=3)
    sums = trainer.train(iterator, 6)  # 2 | 4 5 |: never 3 in a row
    assert int(trainer.step.numpy()) == 6 and sums[NONFINITE] == 3
    sums = trainer.train(iterator, 20)  # 7 8 9: the third in a row ends the call
    assert int(trainer.step.numpy()) == 9 and trainer.nonfinite_stopped()
    assert sums[NONFINITE] == 3


def test_mixed_float16_loss_scale_overflows_are_not_nonfinite_steps():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**60
        )
        trainer, iterator = make_trainer(optimizer=optimizer)
        assert not trainer.check_gradients
        sums = trainer.train(iterator, 8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert int(trainer.step.numpy()) == 8 and sums[NONFINITE] == 0
    assert not trainer.nonfinite_stopped()
    assert float(optimizer.dynamic_scale.numpy()) < 2.0**60  # it skipped overflows itself


# A run that diverges within a few steps here: SGD at rate 3, batch 16, synthetic data
# (loss nan from about step 7; at rate 50, step 4).
DIVERGING = [
    "--dataset",
    "synthetic",
    "--optimizer",
    "sgd",
    "--learning-rate",
    "3",
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
    "--precision",
    "fp32",
    "--steps",
    "60",
]


@pytest.fixture
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


def latest_is_finite(path):
    directory = workdir.checkpoint_dir(str(path))
    name = cf.read_pointer(directory)[0]
    reader = tf.train.load_checkpoint(os.path.join(directory, name, cf.STATE_PREFIX))
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.isfinite(reader.get_tensor(key)).all(), key
    return cf.parse_step(name)


def test_a_diverging_run_stops_with_exit_1_and_keeps_its_last_good_checkpoint(
    tmp_path, capsys, float32_policy_after
):
    assert train_main(["--workdir", str(tmp_path), *DIVERGING]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite loss at step " in err, err
    stopped = [r for r in read_metrics(tmp_path) if r.get("event") == "nonfinite"][-1]
    assert f"at step {stopped['step']};" in err
    assert latest_is_finite(tmp_path) < stopped["step"]
    assert f"latest checkpoint: step {latest_is_finite(tmp_path)}" in err
    assert not os.path.exists(workdir.export_dir(str(tmp_path)))  # nothing exported
    assert not any(r.get("event") == "finished" for r in read_metrics(tmp_path))


def test_skip_counts_skipped_steps_in_the_metrics_then_stops_after_n(
    tmp_path, capsys, float32_policy_after
):
    code = train_main(
        [
            "--workdir",
            str(tmp_path),
            *DIVERGING,
            "--on-nonfinite",
            "skip",
            "--max-nonfinite-skips",
            "3",
            "--no-export",
        ]
    )
    assert code == 1  # once diverged, every step is non-finite: 3 in a row
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 consecutive steps up to step" in err, err
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert sum(r.get("nonfinite", 0) for r in rows) == 3
    latest_is_finite(tmp_path)


def test_the_flags_are_validated_and_recorded(tmp_path, capsys, float32_policy_after):
    assert train_main(["--workdir", str(tmp_path), "--on-nonfinite", "retry"]) == 2
    assert "--on-nonfinite: unknown on nonfinite 'retry'" in capsys.readouterr().err
    assert train_main(["--workdir", str(tmp_path), "--max-nonfinite-skips", "0"]) == 2
    assert "--max-nonfinite-skips must be positive" in capsys.readouterr().err
    assert (
        train_main(
            [
                "--workdir",
                str(tmp_path),
                "--dataset",
                "synthetic",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--steps-per-call",
                "2",
                "--eval-every",
                "0",
                "--no-export",
                "--precision",
                "fp32",
                "--on-nonfinite",
                "skip",
            ]
        )
        == 0
    )
    config = workdir.read_config(str(tmp_path), required=True)
    assert config["on_nonfinite"] == "skip" and config["max_nonfinite_skips"] == 10


@pytest.mark.slow
def test_the_issue_reproduction_through_python_m_train(tmp_path):
    """Issue 19: sgd at rate 50 used to save NaN checkpoints, delete the good ones with
    --keep, export a NaN model and exit 0."""
    proc = run_module(
        "train",
        "--workdir",
        tmp_path,
        "--dataset",
        "synthetic",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "50",
        "--batch-size",
        "16",
        "--steps",
        "200",
        "--steps-per-call",
        "1",
        "--log-every",
        "1",
        "--checkpoint-every",
        "1",
        "--keep",
        "3",
        "--eval-every",
        "0",
        env=harness_env(),
        check_exit=1,
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite loss at step" in lines[0], proc.stderr
    step = latest_is_finite(tmp_path)
    assert f"latest checkpoint: step {step}" in lines[0]
    assert not os.path.exists(workdir.export_dir(str(tmp_path)))


def test_mirrored_replicas_agree_to_skip_when_one_replica_goes_nonfinite():
    """Two logical CPUs under MirroredStrategy (a process of its own: devices are set before
    TensorFlow starts); only replica 0's gradients are NaN at step 2, and both skip it."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for conftest
    proc = subprocess.run(
        [sys.executable, __file__, "mirrored"],
        env=harness_env(PYTHONPATH=tests),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "mirrored ok" in proc.stdout, proc.stderr[-3000:]


def _mirrored_check():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        # Forward passes 1, 2 are step 1 (one per replica); 3 is replica 0 of step 2.
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(5),
                Poison(grads_at={3}),
                keras.layers.Dense(3, "softmax"),
            ]
        )
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        trainer = Trainer(
            backend=distribute.Backend(strategy=strategy),
            model=model,
            optimizer=optimizer,
            global_batch_size=8,
            stop_flag=PreemptionWatcher(signal_names=()).flag,
            nonfinite_limit=10,
        )
    batch = (tf.random.stateless_uniform([8, 4], seed=[1, 2]), tf.range(8, dtype=tf.int32) % 3)
    iterator = iter(
        strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch).repeat().unbatch().batch(8)
        )
    )
    trainer.train(iterator, 1)
    before = state(trainer)
    sums = trainer.train(iterator, 1)
    assert sums[NONFINITE] == 1 and sums[COUNT] == 0, sums
    assert_same(state(trainer), before)
    sums = trainer.train(iterator, 2)
    assert sums[NONFINITE] == 0 and sums[COUNT] == 16, sums
    assert not all(np.array_equal(x, y) for x, y in zip(before, state(trainer)))
    print("mirrored ok")


if __name__ == "__main__" and sys.argv[1:] == ["mirrored"]:
    _mirrored_check()
