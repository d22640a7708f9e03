"""train.data.sources: the data dir, dataset descriptions, errors for unusable datasets,
and a built-in dataset prepared once on first use."""

import subprocess
import sys
import time

import pytest

from train.data import sources
from train.errors import UsageError


def test_default_data_dir_follows_env(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/some/where")
    assert sources.default_data_dir() == "/some/where"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert sources.default_data_dir().endswith("tensorflow_datasets")


def test_unknown_dataset_is_a_one_line_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'nosuch'") as error:
        sources.dataset_info("nosuch", str(tmp_path))
    assert "\n" not in str(error.value)


def test_unprepared_tfds_dataset_fails_fast_and_says_how_to_prepare(tmp_path):
    started = time.monotonic()
    with pytest.raises(UsageError, match="tfds build mnist") as error:
        sources.dataset_info("mnist", str(tmp_path))
    assert time.monotonic() - started < 10  # no download, no network wait
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_synthetic_info():
    info = sources.dataset_info("synthetic", None)
    assert (info.image_shape, info.num_classes, info.num_train, info.num_test) == (
        (32, 32, 3),
        10,
        50_000,
        10_000,
    )


_PREPARE = """
import sys
from train.data import sources
from train.data.builtin import shapes10
shapes10.NUM_TRAIN, shapes10.NUM_TEST = 200, 50
print(sources.dataset_info("shapes10", sys.argv[1]).num_train)
"""


@pytest.mark.slow
def test_concurrent_first_use_prepares_once(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["200", "200"]
    # TFDS announces each preparation (on stdout): exactly one process prepared.
    assert sum("downloaded and prepared" in out + err for out, err in outputs) == 1
