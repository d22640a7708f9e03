"""Outputs that cannot be written (issue 19 part 4): metrics.jsonl on a full disk, a
TensorBoard directory that cannot be made, an export that cannot be written. Each ends
the run with exit 1 and one line naming the path; the checkpoints stay intact; the rerun
after the cause is gone carries on from the last checkpoint and completes. In-process,
on synthetic data. "Disk full" is metrics.jsonl opened as a file whose writes fail with
ENOSPC (/dev/full would do for the writes, but the resume reads the file back)."""

import errno
import io
import os

import keras
import pytest

from train import workdir
from train.checkpoint import files as cf
from train.cli import train_main

from conftest import read_metrics


class FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")  # a run sets the global policy


def train(path, steps, *extra):
    return train_main(
        [
            "--workdir",
            str(path),
            "--dataset",
            "synthetic",
            "--steps",
            str(steps),
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
            *extra,
        ]
    )


def latest_step(path):
    pointer, problem = cf.read_pointer(workdir.checkpoint_dir(path))
    assert problem is None
    return cf.parse_step(pointer)


def assert_one_line_naming(capsys, name):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and name in err, err
    assert "Traceback" not in err


def test_metrics_on_a_full_disk_then_space_comes_back(tmp_path, capsys, monkeypatch):
    from train import monitor

    assert train(tmp_path, 4, "--no-export") == 0
    capsys.readouterr()
    with monkeypatch.context() as full:
        full.setattr(monitor, "open", lambda *a, **k: FullDisk(), raising=False)
        assert train(tmp_path, 8, "--no-export") == 1
    assert_one_line_naming(capsys, "metrics.jsonl")
    assert latest_step(tmp_path) in (4, 6)  # intact: the step-6 save may precede the row
    assert train(tmp_path, 8, "--no-export") == 0
    assert latest_step(tmp_path) == 8
    assert [r for r in read_metrics(tmp_path) if r.get("event") == "finished"][-1]["step"] == 8


def test_a_tensorboard_directory_that_cannot_be_made(tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / workdir.TENSORBOARD_DIR).write_text("not a directory")
    assert train(tmp_path, 2, "--no-export") == 1
    assert_one_line_naming(capsys, "tensorboard")
    os.remove(tmp_path / workdir.TENSORBOARD_DIR)
    assert train(tmp_path, 2, "--no-export") == 0


def test_an_export_that_cannot_be_written_leaves_the_checkpoints(tmp_path, capsys):
    (tmp_path / workdir.EXPORT_DIR).write_text("not a directory")
    assert train(tmp_path, 2) == 1
    assert_one_line_naming(capsys, "export")
    assert latest_step(tmp_path) == 2
    os.remove(tmp_path / workdir.EXPORT_DIR)
    assert train(tmp_path, 2) == 0  # the run is complete: the rerun only exports
    assert os.path.isfile(os.path.join(workdir.export_dir(tmp_path), "model.keras"))
