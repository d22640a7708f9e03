"""The built-in shapes10 dataset: deterministic, disjoint splits, all classes, right shape."""

import hashlib
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from train.data import builtin as datasets
from train.data.builtin import shapes10

SMALL_TRAIN, SMALL_TEST = 300, 100  # a small build keeps each test to about a second


def _build(monkeypatch, data_dir):
    monkeypatch.setattr(shapes10, "NUM_TRAIN", SMALL_TRAIN)
    monkeypatch.setattr(shapes10, "NUM_TEST", SMALL_TEST)
    return datasets.prepare("shapes10", str(data_dir))


def _arrays(builder, split):
    return tfds.as_numpy(
        builder.as_dataset(split=split, batch_size=-1, as_supervised=True, shuffle_files=False)
    )


def _digests(images):
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


@pytest.fixture(scope="module")
def small_builder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _build(monkeypatch, tmp_path_factory.mktemp("shapes10"))


def test_two_builds_give_identical_bytes(tmp_path, monkeypatch):
    first = _build(monkeypatch, tmp_path / "a")
    second = _build(monkeypatch, tmp_path / "b")
    records = sorted(p.name for p in pathlib.Path(first.data_dir).glob("*.tfrecord*"))
    assert records  # the comparison below must not pass vacuously
    for name in records:
        a = (pathlib.Path(first.data_dir) / name).read_bytes()
        b = (pathlib.Path(second.data_dir) / name).read_bytes()
        assert a == b, name


def test_generation_is_deterministic_and_seeded():
    images, labels = shapes10.generate(seed=7, num=50)
    again_images, again_labels = shapes10.generate(seed=7, num=50)
    other_images, _ = shapes10.generate(seed=8, num=50)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other_images)


def test_full_train_and_test_splits_are_disjoint():
    # The real sizes (numpy only, ~2 s): an image in both splits would inflate test accuracy.
    train, _ = shapes10.generate(shapes10.TRAIN_SEED, shapes10.NUM_TRAIN)
    test, _ = shapes10.generate(shapes10.TEST_SEED, shapes10.NUM_TEST)
    train_digests, test_digests = _digests(train), _digests(test)
    assert len(train_digests) == shapes10.NUM_TRAIN  # no duplicates inside a split either
    assert len(test_digests) == shapes10.NUM_TEST
    assert not train_digests & test_digests


def test_features_shapes_and_all_classes(small_builder):
    info = small_builder.info
    assert info.supervised_keys == ("image", "label")
    assert info.features["image"].shape == (32, 32, 3)
    assert info.features["label"].num_classes == 10
    assert info.splits["train"].num_examples == SMALL_TRAIN
    assert info.splits["test"].num_examples == SMALL_TEST
    for split in ("train", "test"):
        images, labels = _arrays(small_builder, split)
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        assert sorted(set(labels.tolist())) == list(range(10))
        assert np.ptp(images) > 100  # real pictures, not blank


def test_stored_images_are_the_generated_ones(small_builder):
    # Checks our hand-written PNG encoder: decoding gives back exactly the generated pixels.
    generated, _ = shapes10.generate(shapes10.TEST_SEED, SMALL_TEST)
    stored, _ = _arrays(small_builder, "test")
    assert _digests(stored) == _digests(generated)


def test_encode_png_round_trips():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = tf.io.decode_png(shapes10.encode_png(image)).numpy()
    np.testing.assert_array_equal(decoded, image)


def test_prepare_twice_reuses_the_prepared_dataset(small_builder):
    again = datasets.prepare("shapes10", str(pathlib.Path(small_builder.data_dir).parents[1]))
    assert again.is_prepared() and again.data_dir == small_builder.data_dir


def test_synthetic_batch_is_a_function_of_the_index():
    first = datasets.synthetic_batch(
        tf.constant([3, 9, 3], tf.int64), split="train", image_shape=(32, 32, 3), num_classes=10
    )
    alone = datasets.synthetic_batch(
        tf.constant([9], tf.int64), split="train", image_shape=(32, 32, 3), num_classes=10
    )
    test = datasets.synthetic_batch(
        tf.constant([3], tf.int64), split="test", image_shape=(32, 32, 3), num_classes=10
    )
    images, labels = first
    assert images.dtype == tf.uint8 and labels.dtype == tf.int32
    np.testing.assert_array_equal(images[0], images[2])
    np.testing.assert_array_equal(images[1], alone[0][0])
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], test[0][0])
