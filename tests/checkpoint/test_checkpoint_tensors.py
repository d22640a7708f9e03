"""train.checkpoint.tensors: the snapshot, the layout under a strategy, one read on restore."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from checkpoint_helpers import (  # noqa: E402
    C1,
    assert_values,
    ckdir_fixture,  # noqa: E402, F401 (fixtures)
    fill,
    flat,
    manager,
    tiny_state,
    values,
)


def test_async_snapshot_survives_in_place_updates(ckdir, monkeypatch):
    # The snapshot holds tensors, not copies: an optimizer's in-place update must not reach
    # them. The write is held back until after the updates.
    import threading

    from train.checkpoint import manager as checkpoint

    state = tiny_state()
    fill(state, seed=1)
    expected = values(state)
    updated = threading.Event()
    write_state = checkpoint.CheckpointManager._write_state

    def held(self, prefix, host_values):
        assert updated.wait(60)
        write_state(self, prefix, host_values)

    monkeypatch.setattr(checkpoint.CheckpointManager, "_write_state", held)
    with manager(ckdir, state, async_save=True) as m:
        m.save(1)
        for v in flat(state):
            v.assign_add(tf.ones_like(v))  # in place, as Adam updates its slots
        updated.set()
    monkeypatch.undo()
    with manager(ckdir, state) as m:
        assert m.restore(1) == 1
    assert_values(state, expected)


def test_mirrored_variables_save_and_restore(tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():  # the manager too: the writer's layout must not be mirrored
        state = tiny_state()
        fill(state, seed=5)
        with manager(str(tmp_path), state, async_save=True) as m:
            m.save(1)
            m.wait()
    plain = tiny_state()
    with manager(str(tmp_path), plain) as m:
        assert m.restore() == 1
    assert_values(plain, values(state))
    with strategy.scope():
        mirrored = tiny_state()
        with manager(str(tmp_path), mirrored) as m:
            assert m.restore() == 1
    assert_values(mirrored, values(state))


def bytes_read_by_this_process():
    with open("/proc/self/io") as f:  # rchar: bytes read(2)/pread(2) returned, cached or not
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_restore_reads_the_data_shard_once(ckdir):
    """Each tensor's CRC32C is checked by the read that restores it, not by a read before."""
    state = {"model": [tf.Variable(tf.fill([1 << 20], float(i))) for i in range(4)]}  # 16 MB
    with manager(ckdir, state) as m:
        m.save(1)
    restored = {"model": [tf.Variable(tf.zeros([1 << 20])) for _ in range(4)]}
    shard = os.path.getsize(os.path.join(ckdir, C1, "state.data-00000-of-00001"))
    with manager(ckdir, restored) as m:
        before = bytes_read_by_this_process()
        assert m.restore() == 1
        read = bytes_read_by_this_process() - before
    assert shard <= read < 1.2 * shard, (read, shard)
    assert_values(restored, values(state))
