"""train.checkpoint.faults: a crash at every phase of a save keeps a restorable checkpoint."""

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from checkpoint_helpers import (  # noqa: E402
    C1,
    C2,
    DATA,
    ckdir_fixture,  # noqa: E402, F401 (fixtures)
    leftovers,
)

from train.checkpoint import faults  # noqa: E402
from train.checkpoint.manager import CheckpointManager  # noqa: E402

from conftest import REPO  # noqa: E402

FAULT_SCRIPT = textwrap.dedent("""
    import os, sys
    import tensorflow as tf
    from train.checkpoint.manager import CheckpointManager, CheckpointOptions
    phase = os.environ.pop("HARNESS_CHECKPOINT_FAULT")
    weights = tf.Variable(tf.zeros([3, 4]))
    step = tf.Variable(0, dtype=tf.int64)
    m = CheckpointManager(directory=sys.argv[1], state={"model": [weights], "train": [step]},
                          is_chief=True, meta={}, options=CheckpointOptions(
                              keep=1, async_save=sys.argv[2] == "async"))
    for i in (1, 2):
        weights.assign(tf.fill([3, 4], float(i)))
        step.assign(i)
        m.save(i)
        os.environ["HARNESS_CHECKPOINT_FAULT"] = phase  # only the second save crashes
    m.close()
""")


def run_fault_script(directory, phase, mode):
    env = dict(
        os.environ, HARNESS_CHECKPOINT_FAULT=phase, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"
    )
    return subprocess.run(
        [sys.executable, "-c", FAULT_SCRIPT, directory, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def on_disk(ckdir):
    """(pointer, ckpt-* dirs, contents of each .tmp-ckpt-* dir, number of .tmp-deleting-*)."""
    names = sorted(os.listdir(ckdir))
    with open(os.path.join(ckdir, "latest")) as f:
        pointer = f.read().strip()
    return (
        pointer,
        [n for n in names if n.startswith("ckpt-")],
        [
            sorted(os.listdir(os.path.join(ckdir, n)))
            for n in names
            if n.startswith(".tmp-ckpt-00000002-")
        ],
        len([n for n in names if n.startswith(".tmp-deleting-ckpt-00000001-")]),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase,mode,crashed,expected",
    [
        ("before_data", "sync", (C1, [C1], [[]], 0), 1),
        ("after_data", "async", (C1, [C1], [DATA], 0), 1),
        ("before_rename", "sync", (C1, [C1], [["manifest.json"] + DATA], 0), 1),
        ("before_pointer", "sync", (C1, [C1, C2], [], 0), 1),
        ("after_pointer", "async", (C2, [C1, C2], [], 0), 2),
        ("during_retention", "sync", (C2, [C2], [], 1), 2),
    ],
)
def test_crash_at_each_phase_keeps_a_restorable_checkpoint(ckdir, phase, mode, crashed, expected):
    done = run_fault_script(ckdir, phase, mode)
    assert done.returncode == faults.FAULT_EXIT_CODE, done.stderr[-2000:]
    assert on_disk(ckdir) == crashed
    weights, step = tf.Variable(tf.zeros([3, 4])), tf.Variable(0, dtype=tf.int64)
    state = {"model": [weights], "train": [step]}
    with CheckpointManager(directory=ckdir, state=state, is_chief=True) as m:
        assert leftovers(ckdir) == []
        assert m.restore() == expected
        np.testing.assert_array_equal(weights.numpy(), np.full([3, 4], float(expected)))
        assert step.numpy() == expected
        # Training goes on from there; a save over the orphan ckpt-2 of before_pointer works.
        weights.assign(tf.fill([3, 4], 20.0))
        m.save(2)
    with CheckpointManager(directory=ckdir, state=state, is_chief=True) as m:
        assert m.restore() == 2
    assert weights.numpy()[0, 0] == (20.0 if expected == 1 else 2.0)
