"""train.loops.trainer.Trainer: augmentation inside the compiled step."""

import keras
import numpy as np
import tensorflow as tf

from train import data, distribute
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import Trainer

TINY = data.DatasetInfo("synthetic", (32, 32, 3), 10, num_train=100, num_test=30)


def _weights_after(steps, *, augment_in_step, augment_in_pipeline):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(10, "softmax"),
        ]
    )
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(
        backend=distribute.Backend(strategy=tf.distribute.get_strategy()),
        model=model,
        optimizer=optimizer,
        global_batch_size=16,
        stop_flag=PreemptionWatcher(signal_names=()).flag,
        augment=augment_in_step,
    )
    dataset = data.train_dataset(
        TINY,
        None,
        global_batch_size=16,
        seed=4,
        start_step=0,
        augment=augment_in_pipeline,
        with_codes=augment_in_step,
    )
    trainer.train(iter(dataset), steps)
    return [v.numpy() for v in model.trainable_variables]


def test_augmenting_in_the_step_trains_as_augmented_batches_do():
    in_step = _weights_after(8, augment_in_step=True, augment_in_pipeline=False)
    in_pipeline = _weights_after(8, augment_in_step=False, augment_in_pipeline=True)
    plain = _weights_after(8, augment_in_step=False, augment_in_pipeline=False)
    for a, b in zip(in_step, in_pipeline):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(in_step, plain))  # it does augment
