"""train.data.pipeline: exact resume, per-worker batches, augmentation, batch sizes and
eval coverage."""

import numpy as np
import pytest
import tensorflow as tf

from train import data
from train.data import order, sources
from train.errors import UsageError

from conftest import prepare_small_shapes10

# A tiny stand-in with CIFAR shape: synthetic examples are computed from their index, so
# the stream logic can be checked on real tensors without any files.
TINY = data.DatasetInfo("synthetic", (32, 32, 3), 10, num_train=100, num_test=30)
SMALL_TRAIN, SMALL_TEST = 200, 70


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A small shapes10 prepared through data.dataset_info (the auto-prepare path)."""
    return prepare_small_shapes10(
        str(tmp_path_factory.mktemp("tfds")), num_train=SMALL_TRAIN, num_test=SMALL_TEST
    )


def _batches(info, data_dir, count, **kwargs):
    ds = data.train_dataset(info, data_dir, **kwargs).take(count)
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("start_step", [3, 6, 7])  # mid-epoch, spanning the boundary, after it
def test_resume_yields_the_same_batches_synthetic(start_step):
    kwargs = dict(global_batch_size=16, seed=3, augment=True)
    full = _batches(TINY, None, 10, start_step=0, **kwargs)
    resumed = _batches(TINY, None, 10 - start_step, start_step=start_step, **kwargs)
    for (x, y), (rx, ry) in zip(full[start_step:], resumed, strict=True):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)


def test_resume_yields_the_same_batches_shapes10(shapes_dir):
    info = data.dataset_info("shapes10", shapes_dir)
    kwargs = dict(global_batch_size=32, seed=5, augment=True)
    full = _batches(info, shapes_dir, 9, start_step=0, **kwargs)  # 200 / 32: crosses epochs
    for start_step in (2, 6):
        resumed = _batches(info, shapes_dir, 9 - start_step, start_step=start_step, **kwargs)
        for (x, y), (rx, ry) in zip(full[start_step:], resumed, strict=True):
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)


def test_resume_per_worker_with_input_context():
    kwargs = dict(global_batch_size=16, seed=3, augment=False)
    for worker in range(2):
        context = tf.distribute.InputContext(2, worker, num_replicas_in_sync=4)
        # 2 local replicas per worker: each step pulls 2 batches of 4 from each pipeline.
        full = _batches(TINY, None, 20, start_step=0, input_context=context, **kwargs)
        resumed = _batches(TINY, None, 8, start_step=6, input_context=context, **kwargs)
        for (x, _), (rx, _) in zip(full[12:], resumed, strict=True):
            np.testing.assert_array_equal(x, rx)


def test_training_batches_follow_the_index_stream(shapes_dir):
    info = data.dataset_info("shapes10", shapes_dir)
    ((x, y),) = _batches(
        info, shapes_dir, 1, global_batch_size=64, seed=1, start_step=0, augment=False
    )
    indices = [
        int(i)
        for i, _ in order.epochs(info.num_train, seed=1, step=0, global_batch_size=64)
        .unbatch()
        .take(64)
    ]
    images, labels = sources.load_split("shapes10", shapes_dir, "train")
    np.testing.assert_array_equal(y, labels.numpy()[indices])
    np.testing.assert_array_equal(x, images.numpy()[indices])  # uint8, as stored
    assert x.dtype == np.uint8 and y.dtype == np.int32
    ((fx, fy),) = _batches(
        info,
        shapes_dir,
        1,
        global_batch_size=64,
        seed=1,
        start_step=0,
        augment=False,
        float_images=True,
    )
    np.testing.assert_array_equal(fy, y)
    np.testing.assert_allclose(fx, x / 255.0, rtol=1e-6)
    assert fx.dtype == np.float32 and fx.min() >= 0.0 and fx.max() <= 1.0


def test_augmentation_is_a_padded_crop_or_flip(shapes_dir):
    info = data.dataset_info("shapes10", shapes_dir)
    kwargs = dict(global_batch_size=16, seed=1, start_step=0)
    ((plain, _),) = _batches(info, shapes_dir, 1, augment=False, **kwargs)
    ((augmented, _),) = _batches(info, shapes_dir, 1, augment=True, **kwargs)
    assert not np.array_equal(plain, augmented)
    for original, result in zip(plain, augmented, strict=True):
        padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
        crops = [padded[dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(np.array_equal(result, c) or np.array_equal(result, c[:, ::-1]) for c in crops)


def test_codes_augment_in_the_step_exactly_as_the_pipeline_does(shapes_dir):
    # The trainer's path: images as stored plus codes, augmented after to_float.
    info = data.dataset_info("shapes10", shapes_dir)
    kwargs = dict(global_batch_size=32, seed=2, start_step=3)  # 200 / 32: crosses epochs
    fed = data.train_dataset(info, shapes_dir, augment=False, with_codes=True, **kwargs)
    augmented = _batches(info, shapes_dir, 5, augment=True, **kwargs)
    for (x, y, codes), (ax, ay) in zip(fed.take(5), augmented, strict=True):
        assert x.dtype == tf.uint8 and codes.dtype == tf.int32 and codes.shape == (32,)
        in_step = data.augment_images(data.to_float(x), codes).numpy()
        np.testing.assert_array_equal(in_step, data.to_float(ax).numpy())
        np.testing.assert_array_equal(y.numpy(), ay)


def test_per_replica_batch_size_from_input_context():
    context = tf.distribute.InputContext(2, 1, num_replicas_in_sync=4)
    ((x, y),) = _batches(
        TINY,
        None,
        1,
        global_batch_size=32,
        seed=0,
        start_step=0,
        augment=False,
        input_context=context,
    )
    assert x.shape == (8, 32, 32, 3) and y.shape == (8,)


def test_batch_not_divisible_by_replicas_is_a_usage_error():
    context = tf.distribute.InputContext(1, 0, num_replicas_in_sync=3)
    with pytest.raises(UsageError, match=r"32.*3"):
        data.train_dataset(
            TINY,
            None,
            global_batch_size=32,
            seed=0,
            start_step=0,
            augment=False,
            input_context=context,
        )
    with pytest.raises(UsageError, match=r"32.*3"):
        data.eval_dataset(TINY, None, global_batch_size=32, input_context=context)


def test_eval_covers_each_test_example_once(shapes_dir):
    info = data.dataset_info("shapes10", shapes_dir)
    assert (info.num_train, info.num_test) == (SMALL_TRAIN, SMALL_TEST)
    _, labels = sources.load_split("shapes10", shapes_dir, "test")
    batches = list(data.eval_dataset(info, shapes_dir, global_batch_size=32))
    assert [len(y) for _, y in batches] == [32, 32, 6]  # last partial batch kept
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels.numpy())
    shards = [
        np.concatenate(
            [
                x.numpy()
                for x, _ in data.eval_dataset(
                    info,
                    shapes_dir,
                    global_batch_size=32,
                    input_context=tf.distribute.InputContext(2, w, num_replicas_in_sync=2),
                )
            ]
        )
        for w in range(2)
    ]
    assert len(shards[0]) + len(shards[1]) == SMALL_TEST
    everything = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(shards[0], everything[0::2])
    np.testing.assert_array_equal(shards[1], everything[1::2])
