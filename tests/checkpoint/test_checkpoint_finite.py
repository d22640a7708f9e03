"""Issue 19: no checkpoint or export is written from non-finite variables, and a restore
that finds them falls back like a damaged checkpoint (train.checkpoint.finite)."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from train.checkpoint import files as cf
from train.checkpoint import finite
from train.checkpoint.manager import CheckpointManager
from train.errors import NonFiniteError
from train.export import write as export


def test_the_checkpoint_writer_refuses_nonfinite_variables(tmp_path):
    v = tf.Variable([1.0, 2.0], name="w")
    with CheckpointManager(directory=tmp_path, state={"model": [v]}, is_chief=True) as m:
        m.save(1)
        v.assign([1.0, float("inf")])
        with pytest.raises(NonFiniteError, match="save at step 2 refused: non-finite values in w"):
            m.save(2)
    assert sorted(cf.list_checkpoints(str(tmp_path))) == [1]
    assert cf.read_pointer(str(tmp_path))[0] == cf.ckpt_name(1)


def test_a_restore_of_a_nonfinite_checkpoint_falls_back_to_the_previous_one(
    tmp_path, monkeypatch, caplog
):
    v = tf.Variable([1.0, 2.0], name="w")
    with CheckpointManager(directory=tmp_path, state={"model": [v]}, is_chief=True) as m:
        m.save(1)
        v.assign([float("nan"), 2.0])
        monkeypatch.setattr(finite, "refuse_nonfinite", lambda *args: None)  # as a bug would
        m.save(2)
    monkeypatch.undo()
    assert cf.read_pointer(str(tmp_path))[0] == cf.ckpt_name(2)
    with caplog.at_level(logging.WARNING):
        with CheckpointManager(directory=tmp_path, state={"model": [v]}, is_chief=True) as m:
            assert m.restore() == 1
    assert np.array_equal(v.numpy(), [1.0, 2.0])
    assert "ckpt-00000002 holds non-finite values in w" in caplog.text
    assert cf.read_pointer(str(tmp_path))[0] == cf.ckpt_name(1)  # what a resume uses


def test_export_refuses_nonfinite_variables(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    model.layers[0].kernel.assign(np.full((4, 3), np.nan, np.float32))
    with pytest.raises(NonFiniteError, match="export to .* refused: non-finite values in"):
        export.export_model(model, keras.optimizers.SGD(0.1), str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")
