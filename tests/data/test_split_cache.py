"""The decoded-split cache: served only while the dataset's files are unchanged, never
an error; and the process age behind time_to_resume_s."""

import subprocess
import sys
import time

import numpy as np
import pytest

from train.data import split_cache

from conftest import REPO, harness_env


@pytest.fixture
def dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(split_cache.CACHE_ENV, str(tmp_path / "cache"))
    directory = tmp_path / "ds" / "1.0.0"
    directory.mkdir(parents=True)
    (directory / "ds-train.tfrecord-00000-of-00001").write_bytes(b"x" * 100)
    return directory


class Decoder:
    def __init__(self):
        self.calls = 0
        self.images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        self.labels = np.array([3, 7], dtype=np.int32)

    def __call__(self):
        self.calls += 1
        return self.images, self.labels


def test_second_load_comes_from_the_cache(dataset_dir):
    decode = Decoder()
    first = split_cache.load("ds", str(dataset_dir), "train", decode)
    second = split_cache.load("ds", str(dataset_dir), "train", decode)
    assert decode.calls == 1
    for got in (first, second):
        np.testing.assert_array_equal(got[0], decode.images)
        np.testing.assert_array_equal(got[1], decode.labels)
    assert second[0].dtype == np.uint8 and second[1].dtype == np.int32


def test_a_changed_dataset_file_is_decoded_again(dataset_dir):
    decode = Decoder()
    split_cache.load("ds", str(dataset_dir), "train", decode)
    (dataset_dir / "ds-train.tfrecord-00000-of-00001").write_bytes(b"y" * 101)
    split_cache.load("ds", str(dataset_dir), "train", decode)
    split_cache.load("ds", str(dataset_dir), "test", decode)  # another split, its own file
    assert decode.calls == 3


def test_a_damaged_cache_file_is_decoded_again_and_replaced(dataset_dir, tmp_path):
    decode = Decoder()
    split_cache.load("ds", str(dataset_dir), "train", decode)
    [cached] = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".npz"]
    cached.write_bytes(cached.read_bytes()[:50])  # torn
    images, _ = split_cache.load("ds", str(dataset_dir), "train", decode)
    np.testing.assert_array_equal(images, decode.images)
    split_cache.load("ds", str(dataset_dir), "train", decode)
    assert decode.calls == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]


def test_none_turns_the_cache_off(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(split_cache.CACHE_ENV, "none")
    decode = Decoder()
    split_cache.load("ds", str(dataset_dir), "train", decode)
    split_cache.load("ds", str(dataset_dir), "train", decode)
    assert decode.calls == 2 and not (tmp_path / "cache").exists()


def test_an_unwritable_cache_costs_only_the_decode(dataset_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(split_cache.CACHE_ENV, str(blocker / "cache"))
    decode = Decoder()
    images, labels = split_cache.load("ds", str(dataset_dir), "train", decode)
    np.testing.assert_array_equal(labels, decode.labels)


def test_process_age_is_measured_from_the_real_start():
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", "from train.monitor import process_age_s; print(process_age_s())"],
        cwd=REPO,
        env=harness_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    elapsed = time.monotonic() - began
    age = float(out.split()[-1])
    # The child's age when it printed can't exceed what the parent saw pass since the
    # fork; a boot time rounded to whole seconds (psutil's create_time) often would.
    assert 0 < age <= elapsed
