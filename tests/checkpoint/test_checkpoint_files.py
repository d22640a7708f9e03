"""train.checkpoint.files: the pointer, replacing a damaged checkpoint, leftovers."""

import logging
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import pytest  # noqa: E402
from checkpoint_helpers import (  # noqa: E402
    assert_values,
    fill,
    manager,
    tiny_state,
    truncate_data,
    values,
    write_pointer,
)

from train.errors import CheckpointError  # noqa: E402

pytest_plugins = ["checkpoint_helpers"]  # the fixtures ckdir, two_saved


def test_training_goes_on_through_the_step_of_a_damaged_checkpoint(ckdir, two_saved):
    truncate_data(os.path.join(ckdir, "ckpt-00000002"))
    state = tiny_state()
    with manager(ckdir, state) as m:
        assert m.restore() == 1
        with open(os.path.join(ckdir, "latest")) as f:
            assert f.read() == "ckpt-00000001\n"  # names what this run resumed from
        fill(state, seed=9)
        m.save(2)  # replaces the damaged ckpt-2 instead of refusing
    restored = tiny_state()
    with manager(ckdir, restored) as m:
        assert m.restore() == 2
    assert_values(restored, values(state))


def test_pointer_to_a_deleted_checkpoint_falls_back(ckdir, two_saved, caplog):
    shutil.rmtree(os.path.join(ckdir, "ckpt-00000002"))
    state = tiny_state()
    with caplog.at_level(logging.WARNING, logger="train.checkpoint.manager"):
        with manager(ckdir, state) as m:
            assert m.restore() == 1
    assert "ckpt-00000002, which does not exist" in caplog.text
    assert_values(state, two_saved[1])


def test_only_a_garbage_pointer_is_an_error(ckdir):
    os.makedirs(ckdir)
    write_pointer(ckdir, "\x00\x01")
    with manager(ckdir, tiny_state()) as m, pytest.raises(CheckpointError, match="garbage"):
        m.restore()


def test_chief_removes_leftovers_at_start(ckdir):
    os.makedirs(os.path.join(ckdir, ".tmp-ckpt-00000003-abc", "x"))
    open(os.path.join(ckdir, ".tmp-latest-123"), "w").close()
    with manager(ckdir, tiny_state()) as m:
        assert m.restore() is None  # leftovers of an unfinished first save: a fresh start
    assert os.listdir(ckdir) == []
