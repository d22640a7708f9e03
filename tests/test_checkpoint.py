"""train.checkpoint.manager: round trips, async, retention, crashes at every phase, damage, misuse."""

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from train.checkpoint import faults  # noqa: E402
from train.checkpoint import files as cf  # noqa: E402
from train.checkpoint import manifest as cm  # noqa: E402
from train import models  # noqa: E402
from train.checkpoint.manager import CheckpointManager, CheckpointOptions  # noqa: E402
from train.errors import CheckpointError, CheckpointWriteError, UsageError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_state(units=3):
    """Dense + Dropout (SeedGenerator state) + BatchNorm (moving stats) + built Adam + step."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units),
                              keras.layers.Dropout(0.5), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return {"model": model.variables, "optimizer": optimizer.variables,
            "train": [tf.Variable(0, dtype=tf.int64)]}


def fill(state, seed):
    """Give every variable (ints too) values that depend on `seed` only."""
    rng = np.random.default_rng(seed)
    for v in flat(state):
        dtype = np.dtype(tf.as_dtype(v.dtype).as_numpy_dtype)
        if dtype.kind == "f":
            v.assign(rng.standard_normal(tuple(v.shape)).astype(dtype))
        else:
            v.assign(rng.integers(0, 1000, tuple(v.shape)).astype(dtype))


def flat(state):
    return [v for vs in state.values() for v in vs]


def values(state):
    return [v.numpy() for v in flat(state)]


def assert_values(state, expected):
    got = values(state)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def manager(directory, state, *, chief=True, clock=None, **options):
    extra = {"clock": clock} if clock else {}
    return CheckpointManager(directory=directory, state=state, is_chief=chief,
                             meta={"model": "tiny"}, options=CheckpointOptions(**options),
                             **extra)


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.startswith(".tmp-")]


@pytest.fixture
def ckdir(tmp_path):
    return str(tmp_path / "checkpoints")


@pytest.fixture
def two_saved(ckdir):
    """ckdir with steps 1 and 2 saved from distinct values; returns those values."""
    state = tiny_state()
    saved = {}
    with manager(ckdir, state) as m:
        for step in (1, 2):
            fill(state, seed=step)
            m.save(step)
            saved[step] = values(state)
    return saved


def test_cnn_adam_round_trip_into_fresh_model(ckdir):
    def build():
        model = models.build("cnn", (32, 32, 3), 10)
        optimizer = keras.optimizers.Adam()
        optimizer.build(model.trainable_variables)
        return {"model": model.variables, "optimizer": optimizer.variables,
                "train": [tf.Variable(0, dtype=tf.int64)]}

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
        os.path.join(ckdir, "ckpt-00000100", "state")).assert_consumed()
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


def test_retention_keeps_the_newest(ckdir):
    state = tiny_state()
    with manager(ckdir, state, keep=2) as m:
        for step in range(1, 6):
            m.save(step * 10)
        assert m.all_steps() == [40, 50]
    assert sorted(os.listdir(ckdir)) == ["ckpt-00000040", "ckpt-00000050", "latest"]


def test_keep_every_hours_survives_restarts(ckdir):
    hours = iter([0.0, 0.5, 1.1, 1.5, 2.2, 2.5, 3.3])
    clock = lambda: next(hours) * 3600  # noqa: E731
    state = tiny_state()
    with manager(ckdir, state, keep=1, keep_every_hours=1, clock=clock) as m:
        for step in range(1, 6):
            m.save(step)
        # 1 starts the first window, 3 is >= 1 h after 1, 5 is >= 1 h after 3.
        assert m.all_steps() == [1, 3, 5]
    with manager(ckdir, state, keep=1, keep_every_hours=1, clock=clock) as m:
        m.save(6)  # 0.3 h after 5: only kept while newest
        m.save(7)  # 1.1 h after 5 (known from 5's manifest, not from memory)
        assert m.all_steps() == [1, 3, 5, 7]


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
    env = dict(os.environ, HARNESS_CHECKPOINT_FAULT=phase, PYTHONPATH=REPO,
               TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", FAULT_SCRIPT, directory, mode], env=env,
                          capture_output=True, text=True, timeout=120)


def on_disk(ckdir):
    """(pointer, ckpt-* dirs, contents of each .tmp-ckpt-* dir, number of .tmp-deleting-*)."""
    names = sorted(os.listdir(ckdir))
    with open(os.path.join(ckdir, "latest")) as f:
        pointer = f.read().strip()
    return (pointer, [n for n in names if n.startswith("ckpt-")],
            [sorted(os.listdir(os.path.join(ckdir, n))) for n in names
             if n.startswith(".tmp-ckpt-00000002-")],
            len([n for n in names if n.startswith(".tmp-deleting-ckpt-00000001-")]))


C1, C2, DATA = "ckpt-00000001", "ckpt-00000002", ["state.data-00000-of-00001", "state.index"]


@pytest.mark.slow
@pytest.mark.parametrize("phase,mode,crashed,expected", [
    ("before_data", "sync", (C1, [C1], [[]], 0), 1),
    ("after_data", "async", (C1, [C1], [DATA], 0), 1),
    ("before_rename", "sync", (C1, [C1], [["manifest.json"] + DATA], 0), 1),
    ("before_pointer", "sync", (C1, [C1, C2], [], 0), 1),
    ("after_pointer", "async", (C2, [C1, C2], [], 0), 2),
    ("during_retention", "sync", (C2, [C2], [], 1), 2)])
def test_crash_at_each_phase_keeps_a_restorable_checkpoint(ckdir, phase, mode, crashed,
                                                           expected):
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


def _truncate_data(path):
    data = os.path.join(path, "state.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)


def _flip_data_bytes(path):
    with open(os.path.join(path, "state.data-00000-of-00001"), "r+b") as f:
        f.seek(16)
        chunk = f.read(8)
        f.seek(16)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _write_pointer(ckdir, text):
    with open(os.path.join(ckdir, "latest"), "w") as f:
        f.write(text)


@pytest.mark.parametrize("damage,expected,named", [
    (_truncate_data, 1, "ckpt-00000002"),
    (_flip_data_bytes, 1, "ckpt-00000002"),
    (lambda p: os.unlink(os.path.join(p, "manifest.json")), 1, "ckpt-00000002"),
    (lambda p: _write_pointer(os.path.dirname(p), "garbage!"), 2, "garbage"),
    (lambda p: _write_pointer(os.path.dirname(p), ""), 2, "empty"),
    (lambda p: _write_pointer(os.path.dirname(p), "ckpt-00000009\n"), 2, "ckpt-00000009"),
])
def test_damage_falls_back_with_a_warning(ckdir, two_saved, caplog, damage, expected, named):
    damage(os.path.join(ckdir, "ckpt-00000002"))
    state = tiny_state()
    with caplog.at_level(logging.WARNING, logger="train.checkpoint.manager"):
        with manager(ckdir, state) as m:
            assert m.restore() == expected
    assert named in caplog.text
    if damage is _flip_data_bytes:  # caught by the restoring read: TF's words, not its op's
        assert "Checksum does not match" in caplog.text and "function_node" not in caplog.text
    assert_values(state, two_saved[expected])


def _as_format_1(path):
    """Rewrite a checkpoint's manifest as format 1 wrote it: a sha256 for every file."""
    manifest = cm.load_manifest(path, cf.parse_step(os.path.basename(path)))
    for name, record in manifest["files"].items():
        record.pop("check", None)
        record["sha256"] = cm.file_sha256(os.path.join(path, name))
    cm.write_manifest(os.path.join(path, "manifest.json"), dict(manifest, format_version=1))


def test_data_shard_is_checked_by_tensor_crcs_and_format_1_still_reads(ckdir, two_saved):
    files = cm.load_manifest(os.path.join(ckdir, C2), 2)["files"]
    assert files["state.data-00000-of-00001"] == {
        "size": os.path.getsize(os.path.join(ckdir, C2, "state.data-00000-of-00001")),
        "check": "tensor_crc32c"}
    assert set(files["state.index"]) == {"size", "sha256"}
    _as_format_1(os.path.join(ckdir, C2))
    _as_format_1(os.path.join(ckdir, C1))
    _flip_data_bytes(os.path.join(ckdir, C2))  # caught by format 1's sha256 of the shard
    state = tiny_state()
    with manager(ckdir, state) as m:
        assert m.restore() == 1
    assert_values(state, two_saved[1])


def test_training_goes_on_through_the_step_of_a_damaged_checkpoint(ckdir, two_saved):
    _truncate_data(os.path.join(ckdir, "ckpt-00000002"))
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


def test_pointer_to_a_deleted_checkpoint_falls_back(ckdir, two_saved, caplog):
    shutil.rmtree(os.path.join(ckdir, "ckpt-00000002"))
    state = tiny_state()
    with caplog.at_level(logging.WARNING, logger="train.checkpoint.manager"):
        with manager(ckdir, state) as m:
            assert m.restore() == 1
    assert "ckpt-00000002, which does not exist" in caplog.text
    assert_values(state, two_saved[1])


def test_all_damaged_is_an_error_never_a_fresh_start(ckdir, two_saved):
    _truncate_data(os.path.join(ckdir, "ckpt-00000002"))
    _flip_data_bytes(os.path.join(ckdir, "ckpt-00000001"))
    with manager(ckdir, tiny_state()) as m:
        with pytest.raises(CheckpointError, match="no valid checkpoint in .*checkpoints") as e:
            m.restore()
        assert e.value.exit_code == 2
        with pytest.raises(CheckpointError, match="is damaged"):
            m.restore(1)


def test_only_a_garbage_pointer_is_an_error(ckdir):
    os.makedirs(ckdir)
    _write_pointer(ckdir, "\x00\x01")
    with manager(ckdir, tiny_state()) as m, pytest.raises(CheckpointError, match="garbage"):
        m.restore()


def test_restore_an_explicit_step(ckdir, two_saved):
    state = tiny_state()
    with manager(ckdir, state) as m:
        assert m.restore(1) == 1
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .*\[1, 2\]"):
            m.restore(7)
    assert_values(state, two_saved[1])


def test_another_model_is_an_error_not_a_fallback(ckdir, two_saved):
    with manager(ckdir, tiny_state(units=5)) as m:
        with pytest.raises(CheckpointError, match=r"ckpt-00000002 does not fit this model: "
                           r"variable model\[0\] \(.*kernel\) has shape \(4, 5\), "
                           r"checkpoint has \(4, 3\)"):
            m.restore()


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


def test_chief_removes_leftovers_at_start(ckdir):
    os.makedirs(os.path.join(ckdir, ".tmp-ckpt-00000003-abc", "x"))
    open(os.path.join(ckdir, ".tmp-latest-123"), "w").close()
    with manager(ckdir, tiny_state()) as m:
        assert m.restore() is None  # leftovers of an unfinished first save: a fresh start
    assert os.listdir(ckdir) == []


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
