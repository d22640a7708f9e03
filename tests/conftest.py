import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# Helpers and fixtures of tests/export and tests/cli (their asserts rewritten as a test's).
pytest.register_assert_rewrite("model_forms", "checkpoint_helpers")


def pytest_configure(config):
    # Decoded splits (train.data.split_cache) go to a directory of this session, not ~/.cache;
    # set before any test runs, so every child process inherits it.
    os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="harness-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop("HARNESS_CACHE_DIR", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with the built-in shapes10 prepared once for the whole session."""
    path = tmp_path_factory.mktemp("tfds")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from train import data; data.dataset_info('shapes10', sys.argv[1])",
            str(path),
        ],
        check=True,
        cwd=REPO,
        env={**os.environ, **QUIET_ENV},
        timeout=300,
    )
    return str(path)


def prepare_small_shapes10(path, *, num_train, num_test):
    """A shapes10 of num_train/num_test examples prepared in `path` through
    data.dataset_info (the auto-prepare path); returns path."""
    from train import data
    from train.data.builtin import shapes10

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(shapes10, "NUM_TRAIN", num_train)
        monkeypatch.setattr(shapes10, "NUM_TEST", num_test)
        data.dataset_info("shapes10", path)
    return path


def harness_env(**extra):
    env = {**os.environ, **QUIET_ENV, **extra}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_module(module, *args, env=None, timeout=600, check_exit=None):
    """Run `python -m module args` as a user would; returns CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=env or harness_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check_exit is not None and proc.returncode != check_exit:
        raise AssertionError(
            f"exit {proc.returncode} != {check_exit}\n--- stdout\n"
            f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tree_snapshot(path):
    """{relative path: (size, mtime_ns)} of every file below path."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out
