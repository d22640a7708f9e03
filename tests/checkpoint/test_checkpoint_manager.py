"""train.checkpoint.manager: round trips, async, same step, explicit steps, chief only, failed
writes, misuse."""

import errno
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from checkpoint_helpers import (  # noqa: E402
    assert_values,
    fill,
    flip_data_bytes,
    leftovers,
    manager,
    tiny_state,
    truncate_data,
    values,
)

from train import models  # noqa: E402
from train.checkpoint import faults  # noqa: E402
from train.checkpoint.manager import CheckpointManager, CheckpointOptions  # noqa: E402
from train.errors import CheckpointError, CheckpointWriteError, UsageError  # noqa: E402

pytest_plugins = ["checkpoint_helpers"]  # the fixtures ckdir, two_saved


def test_cnn_adam_round_trip_into_fresh_model(ckdir):
    def build():
        model = models.build("cnn", (32, 32, 3), 10)
        optimizer = keras.optimizers.Adam()
        optimizer.build(model.trainable_variables)
        return {
            "model": model.variables,
            "optimizer": optimizer.variables,
            "train": [tf.Variable(0, dtype=tf.int64)],
        }

    state = build()
    fill(state, seed=7)
    with manager(ckdir, state) as m:
        m.save(100)
    fresh = build()
    with manager(ckdir, fresh) as m:
        assert m.restore() == 100
        assert (m.latest_step(), m.all_steps(), m.meta_of(100)) == (100, [100], {"model": "tiny"})
        assert m.path_of(100) == os.path.join(ckdir, "ckpt-00000100")
    assert_values(fresh, values(state))
    assert sorted(os.listdir(ckdir)) == ["ckpt-00000100", "latest"]
    with open(os.path.join(ckdir, "latest")) as f:
        assert f.read() == "ckpt-00000100\n"
    # The files are plain tf.train.Checkpoint files: they restore without this module.
    other = build()
    tf.train.Checkpoint(**{g: list(vs) for g, vs in other.items()}).read(
        os.path.join(ckdir, "ckpt-00000100", "state")
    ).assert_consumed()
    assert_values(other, values(state))


def test_fresh_directory_restores_nothing(ckdir):
    with manager(ckdir, tiny_state()) as m:
        assert (m.restore(), m.latest_step(), m.all_steps()) == (None, None, [])


def test_async_and_sync_saves_restore_identically(tmp_path):
    state = tiny_state()
    fill(state, seed=3)
    expected = values(state)
    for async_save in (False, True):
        with manager(str(tmp_path / str(async_save)), state, async_save=async_save) as m:
            m.save(5)
    for async_save in (False, True):
        fresh = tiny_state()
        with manager(str(tmp_path / str(async_save)), fresh) as m:
            assert m.restore() == 5
        assert_values(fresh, expected)


def test_async_save_keeps_the_values_of_the_save_call(ckdir):
    state = tiny_state()
    fill(state, seed=1)
    expected = values(state)
    with manager(ckdir, state, async_save=True) as m:
        m.save(1)
        fill(state, seed=2)  # training goes on while the write is in flight
        m.save(2)  # waits for step 1's write first: one in flight at most
        fill(state, seed=3)
    with manager(ckdir, state) as m:
        assert m.restore(1) == 1
    assert_values(state, expected)


def test_same_step_twice_is_a_no_op(ckdir):
    state = tiny_state()
    with manager(ckdir, state) as m:
        m.save(1)
        before = os.stat(m.path_of(1)).st_ino
        fill(state, seed=9)
        m.save(1)
        assert os.stat(m.path_of(1)).st_ino == before
    with manager(ckdir, state) as m:
        assert m.restore() == 1
        m.save(1)  # e.g. preempted right after resuming: nothing to write
        assert os.stat(m.path_of(1)).st_ino == before


def test_restore_an_explicit_step(ckdir, two_saved):
    state = tiny_state()
    with manager(ckdir, state) as m:
        assert m.restore(1) == 1
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .*\[1, 2\]"):
            m.restore(7)
    assert_values(state, two_saved[1])


def test_all_damaged_is_an_error_never_a_fresh_start(ckdir, two_saved):
    truncate_data(os.path.join(ckdir, "ckpt-00000002"))
    flip_data_bytes(os.path.join(ckdir, "ckpt-00000001"))
    with manager(ckdir, tiny_state()) as m:
        with pytest.raises(CheckpointError, match="no valid checkpoint in .*checkpoints") as e:
            m.restore()
        assert e.value.exit_code == 2
        with pytest.raises(CheckpointError, match="is damaged"):
            m.restore(1)


def test_non_chief_writes_nothing_anywhere(tmp_path, monkeypatch):
    ckdir = str(tmp_path / "checkpoints")
    state = tiny_state()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # others share /tmp
    temp_before = set(os.listdir(tempfile.gettempdir()))
    with manager(ckdir, state, chief=False, async_save=True) as m:
        m.save(1)
        m.save(2)
        assert m.restore() is None
    assert not os.path.exists(ckdir)
    assert set(os.listdir(tempfile.gettempdir())) <= temp_before
    # With the chief's checkpoints (and a leftover) there, a non-chief only reads them.
    fill(state, seed=4)
    with manager(ckdir, state) as m:
        m.save(3)
    os.mkdir(os.path.join(ckdir, ".tmp-ckpt-00000004-x"))
    listing = sorted(os.listdir(ckdir))
    fresh = tiny_state()
    with manager(ckdir, fresh, chief=False) as m:
        assert m.restore() == 3
        m.save(4)
    assert sorted(os.listdir(ckdir)) == listing
    assert_values(fresh, values(state))


@pytest.mark.parametrize("async_save", [False, True])
def test_write_failure_raises_in_the_main_thread(ckdir, monkeypatch, async_save):
    state = tiny_state()
    fill(state, seed=1)
    expected = values(state)

    def disk_full(self, prefix, values):
        raise OSError(errno.ENOSPC, "No space left on device", prefix)

    with manager(ckdir, state, async_save=async_save) as m:
        m.save(1)
        m.wait()
        monkeypatch.setattr(CheckpointManager, "_write_state", disk_full)
        fill(state, seed=2)
        message = r"checkpoint save at step 2 failed: No space left on device \(.*\)"
        with pytest.raises(CheckpointWriteError, match=message) as e:
            m.save(2)
            m.save(3)  # async: the failure of step 2 comes out here
        assert e.value.exit_code == 1
        assert leftovers(ckdir) == [] and m.all_steps() == [1]
        monkeypatch.undo()
        m.save(2)  # the failed step can be saved again once the disk is fine
        m.wait()
        assert m.all_steps() == [1, 2]
    with manager(ckdir, state) as m:
        assert m.restore(1) == 1
    assert_values(state, expected)


@pytest.mark.parametrize("async_save", [False, True])
def test_saving_over_the_latest_without_restoring_is_refused(ckdir, two_saved, async_save):
    """A save that cannot be right is a CheckpointError (exit 2) from the writer thread,
    sync or async: it used to be rewrapped as a write failure (exit 1)."""
    with manager(ckdir, tiny_state(), async_save=async_save) as m:
        with pytest.raises(CheckpointError, match="save at step 2 failed: .*restore") as e:
            m.save(2)
            m.wait()
        assert e.value.exit_code == 2 and not isinstance(e.value, CheckpointWriteError)
    assert sorted(os.listdir(ckdir)) == ["ckpt-00000001", "ckpt-00000002", "latest"]


def test_misuse_is_a_usage_error(ckdir, monkeypatch):
    state = tiny_state()
    with pytest.raises(UsageError, match="keep"):
        CheckpointOptions(keep=0)
    with pytest.raises(UsageError, match="twice"):
        manager(ckdir, {"a": state["model"], "b": state["model"][:1]})
    with pytest.raises(UsageError, match="JSON"):
        CheckpointManager(directory=ckdir, state=state, is_chief=True, meta={"x": object()})
    monkeypatch.setenv(faults.FAULT_ENV, "before_lunch")
    with manager(ckdir, state) as m, pytest.raises(UsageError, match="before_lunch"):
        m.save(1)
