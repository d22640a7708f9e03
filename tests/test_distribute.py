"""train.distribute: how each backend feeds its replicas."""

import types

import numpy as np
import tensorflow as tf

from train import distribute


def _strategy_on(*devices):
    return types.SimpleNamespace(extended=types.SimpleNamespace(worker_devices=devices))


def test_gpu_replicas_get_batches_prefetched_to_the_device_and_cpu_replicas_do_not():
    gpus = _strategy_on("/job:localhost/replica:0/task:0/device:GPU:0",
                        "/job:localhost/replica:0/task:0/device:GPU:1")
    cpus = _strategy_on("/job:worker/replica:0/task:1/device:CPU:0")
    assert distribute._fetch_options(gpus).experimental_fetch_to_device is True
    assert distribute._fetch_options(cpus).experimental_fetch_to_device is False


def test_mirrored_on_cpu_feeds_each_replica_its_own_batches():
    backend = distribute.MirroredBackend(strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))

    def dataset_fn(context):
        batch = context.get_per_replica_batch_size(4)
        return tf.data.Dataset.range(12).batch(batch)

    got = [backend.strategy.experimental_local_results(b)[0].numpy()
           for b in backend.distribute_dataset(dataset_fn)]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(12))
    assert [len(b) for b in got] == [4, 4, 4]
