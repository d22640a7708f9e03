"""train.data.order: the index stream, the position, worker shards; and that the training
pipeline takes its indices from there (what is checked here is what trains)."""

import numpy as np
import pytest
import tensorflow as tf

from train.data import DatasetInfo, order, pipeline
from train.errors import UsageError

# A tiny stand-in with CIFAR shape: synthetic examples are computed from their index, so
# the stream logic can be checked on real tensors without any files.
TINY = DatasetInfo("synthetic", (32, 32, 3), 10, num_train=100, num_test=30)


def _indices(count, *, seed=1, step=0, worker_index=0, num_workers=1, global_batch_size=None):
    """The first `count` example indices worker `worker_index` sees from `step` on."""
    stream = order.epochs(
        TINY.num_train,
        seed=seed,
        step=step,
        global_batch_size=global_batch_size or num_workers,
        worker_index=worker_index,
        num_workers=num_workers,
    )
    return [int(i) for i, _ in stream.unbatch().take(count)]


def test_index_stream_is_a_new_permutation_each_epoch():
    stream = _indices(300)
    epochs = [stream[i : i + 100] for i in range(0, 300, 100)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(100))
    assert epochs[0] != epochs[1] != epochs[2]
    assert _indices(100, seed=2) != epochs[0]
    assert _indices(300) == stream  # a pure function of the seed


def test_a_later_step_slices_the_same_stream():
    stream = _indices(300)
    for start in (37, 100, 163):  # one example per step: step == examples consumed
        assert _indices(300 - start, step=start, global_batch_size=1) == stream[start:]
    assert _indices(200, step=5, global_batch_size=16) == stream[80:280]


def test_position():
    assert order.position(TINY.num_train, step=0, global_batch_size=16) == (0, 0)
    assert order.position(TINY.num_train, step=7, global_batch_size=16) == (1, 12)
    # 2 workers: 50 examples each per epoch, 8 per worker per step.
    assert order.position(TINY.num_train, step=7, global_batch_size=16, num_workers=2) == (1, 6)
    with pytest.raises(UsageError):
        order.position(TINY.num_train, step=1, global_batch_size=15, num_workers=2)
    with pytest.raises(UsageError, match="101 workers but only 100"):
        order.position(TINY.num_train, step=0, global_batch_size=101, num_workers=101)


def test_worker_shards_are_disjoint_and_cover_the_epoch():
    whole = _indices(100)
    shards = [_indices(33, worker_index=w, num_workers=3) for w in range(3)]
    assert sorted(sum(shards, [])) == sorted(whole[:99])  # 100 // 3 * 3: tail dropped
    # The second epoch of each worker starts right after its 33 examples.
    second = [_indices(66, worker_index=w, num_workers=3)[33:] for w in range(3)]
    assert sorted(sum(second, [])) == sorted(_indices(200)[100:199])


def test_augmentation_codes_are_a_function_of_seed_epoch_and_example():
    ((indices, codes),) = order.epochs(TINY.num_train, seed=4, step=0, global_batch_size=1).take(1)
    table = order.augment_codes(TINY.num_train, 4, tf.constant(0, tf.int64)).numpy()
    np.testing.assert_array_equal(codes.numpy(), table[indices.numpy()])
    assert codes.dtype == tf.int32 and 0 <= table.min() and table.max() < order.AUG_CODES
    ((_, later),) = order.epochs(TINY.num_train, seed=4, step=1, global_batch_size=1).take(1)
    np.testing.assert_array_equal(later.numpy(), codes.numpy()[1:])  # same code, same example


@pytest.mark.parametrize("start_step", [0, 3, 7])
@pytest.mark.parametrize("workers, replicas", [(1, 1), (2, 2), (2, 4)])
def test_the_pipeline_trains_on_the_order_stream(start_step, workers, replicas):
    """Worker w's training batches, from any step, are order.epochs's indices and codes."""
    global_batch = 16
    for worker in range(workers):
        context = tf.distribute.InputContext(workers, worker, num_replicas_in_sync=replicas)
        ds = pipeline.train_dataset(
            TINY,
            None,
            global_batch_size=global_batch,
            seed=3,
            start_step=start_step,
            augment=False,
            input_context=context,
            with_codes=True,
            with_indices=True,
        )
        batches = [(codes.numpy(), indices.numpy()) for _, _, codes, indices in ds.take(12)]
        fed_indices = np.concatenate([indices for _, indices in batches])
        fed_codes = np.concatenate([codes for codes, _ in batches])
        stream = (
            order.epochs(
                TINY.num_train,
                seed=3,
                step=start_step,
                global_batch_size=global_batch,
                worker_index=worker,
                num_workers=workers,
            )
            .unbatch()
            .take(len(fed_indices))
        )
        np.testing.assert_array_equal(fed_indices, [int(i) for i, _ in stream])
        np.testing.assert_array_equal(fed_codes, [int(c) for _, c in stream])


def test_the_pipeline_takes_its_position_from_order(monkeypatch):
    """One piece of code says where a resumed worker starts: order.position."""
    asked = []

    def spy(num_examples, **kwargs):
        asked.append((num_examples, kwargs))
        return (2, 5)  # wherever order says: epoch 2, offset 5

    monkeypatch.setattr(order, "position", spy)
    context = tf.distribute.InputContext(2, 1, num_replicas_in_sync=2)
    ds = pipeline.train_dataset(
        TINY,
        None,
        global_batch_size=8,
        seed=3,
        start_step=11,
        augment=False,
        input_context=context,
        with_indices=True,
    )
    ((_, _, fed),) = ds.take(1)
    assert asked == [(100, dict(step=11, global_batch_size=8, num_workers=2))]
    epoch_2 = order.epoch_shard(100, 3, tf.constant(2, tf.int64), 1, 2).numpy()
    np.testing.assert_array_equal(fed.numpy(), epoch_2[5:9])
