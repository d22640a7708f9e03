"""Build the two things every in-process benchmark compares, the way each is used:

* the harness: a TrainConfig, then the parts train.run runs (train.assemble: model,
  optimizer, Trainer, the data pipeline through the backend, the real Controller);
* plain Keras: the seed's `model.compile(adam, sparse_categorical_crossentropy,
  accuracy)` + `model.fit` on the same model architecture, the same tf.data pipeline
  (train.data.train_dataset) and the same global batch.

Every window function returns the seconds of exactly `steps` timed training steps.
"""

import dataclasses
import io
import time

import keras

from train import assemble, data, models
from train.config import TrainConfig
from train.loops.controller import Schedule
from train.loops.preemption import PreemptionWatcher
from train.loops.trainer import Trainer
from train.monitor import Monitor

NEVER = 10 ** 12  # a schedule interval that never comes


def prepare_dataset(dataset, data_dir):
    """Prepare a built-in dataset once, up front, without TFDS's progress bars."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    if dataset != data.SYNTHETIC:
        data.dataset_info(dataset, data_dir)
    data.dataset_info(data.SYNTHETIC, data_dir)  # resume/scaling runs may use either


def make_config(*, workdir, model, batch_size, dataset, data_dir, augment=False, **extra):
    return TrainConfig(workdir=workdir, model=model, batch_size=batch_size, dataset=dataset,
                       data_dir=data_dir, augment=augment, steps=NEVER, **extra)


@dataclasses.dataclass
class HarnessParts:
    config: TrainConfig
    backend: object
    info: object
    trainer: Trainer
    iterator: object
    watcher: PreemptionWatcher
    run: assemble.RunParts


def build_harness(config, backend, info, dataset_fn=None):
    """The parts train.run assembles (no checkpoint manager), and the pipeline iterator."""
    watcher = PreemptionWatcher(signal_names=())  # never installed: the flag stays 0
    run = assemble.assemble(config, backend=backend, watcher=watcher, with_checkpoints=False)
    dataset_fn = dataset_fn or harness_dataset_fn(config, info)
    iterator = iter(backend.distribute_dataset(dataset_fn))
    return HarnessParts(config, backend, info, run.trainer, iterator, watcher, run)


def harness_dataset_fn(config, info, transform=None, *, augment_in_pipeline=False):
    """train.run's training dataset_fn from step 0; `transform` (e.g. cache one batch)
    applies on top. augment_in_pipeline: the alternative to augmenting in the step."""
    stream = assemble.training_dataset_fn(config, info, start_step=0, with_codes=config.augment,
                                     augment_in_pipeline=augment_in_pipeline)
    if transform is None:
        return stream
    return lambda input_context=None: transform(stream(input_context))


class _NoCheckpoints:
    def save(self, step):
        pass

    def wait(self):
        pass


def controller_window(parts, steps, steps_per_call=None):
    """Seconds for `steps` steps of the real Controller (logging, preemption checks),
    with checkpoints and evaluation stubbed out (measured by their own benchmarks)."""
    trainer, config = parts.trainer, parts.config
    start = int(trainer.step.numpy())
    schedule = Schedule(total_steps=start + steps,
                        steps_per_call=steps_per_call or config.steps_per_call,
                        log_every=config.log_every, checkpoint_every=NEVER, eval_every=0)
    monitor = Monitor(workdir=None, is_chief=False, total_steps=start + steps,
                      stream=io.StringIO())
    controller = assemble.build_controller(
        parts.run, schedule=schedule, monitor=monitor, iterator=parts.iterator,
        evaluate=lambda: {"loss": 0.0, "accuracy": 0.0, "examples": 0},
        checkpoints=_NoCheckpoints())
    began = time.perf_counter()
    controller.run(start)
    return time.perf_counter() - began


def trainer_steps(parts, steps, iterator=None, steps_per_call=None):
    """`steps` steps straight through the Trainer in calls of steps_per_call; seconds."""
    iterator = iterator or parts.iterator
    per_call = steps_per_call or parts.config.steps_per_call
    began, done = time.perf_counter(), 0
    while done < steps:
        n = min(per_call, steps - done)
        parts.trainer.train(iterator, n)  # returns numpy: the steps are done
        done += n
    return time.perf_counter() - began


def build_keras(config, backend, info):
    """The seed's model.compile under the same strategy; the same pipeline for fit."""
    from train import export

    keras.utils.set_random_seed(config.seed)  # the harness model's initial weights too
    # float32 whatever the harness runs in: the seed's model, as plain Keras builds it.
    with backend.strategy.scope(), export.dtype_policy_scope("float32"):
        model = models.build(config.model, info.image_shape, info.num_classes)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    dataset = data.train_dataset(info, config.data_dir, global_batch_size=config.batch_size,
                                 seed=config.seed, start_step=0, augment=config.augment,
                                 float_images=True)  # fit feeds the model directly
    return model, dataset


class WindowTimer(keras.callbacks.Callback):
    """Times batches [skip, skip + steps) of one fit() call, from batch ends."""

    def __init__(self, skip, steps):
        super().__init__()
        self.skip, self.steps = skip, steps
        self.start = self.end = None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.skip - 1:
            self.start = time.perf_counter()
        elif batch == self.skip + self.steps - 1:
            self.end = time.perf_counter()

    @property
    def seconds(self):
        return self.end - self.start


def fit_window(model, dataset, steps, rewarm, callbacks=()):
    """Seconds of `steps` fit() steps after `rewarm` untimed ones (fit makes a fresh
    iterator per call, so a few steps refill the prefetch buffer first). The timer runs
    last, so a callback's work at the last batch (a ModelCheckpoint save) is counted."""
    rewarm = max(1, rewarm)
    timer = WindowTimer(rewarm, steps)
    # shuffle=False: a tf.data dataset is never shuffled by fit; it only silences a warning.
    model.fit(dataset, epochs=1, steps_per_epoch=rewarm + steps, verbose=0, shuffle=False,
              callbacks=[*callbacks, timer])
    return timer.seconds


def warm_up(parts, keras_model, keras_dataset, steps):
    """Trace and warm both sides once before the interleaved windows."""
    trainer_steps(parts, steps)
    if keras_model is not None:
        keras_model.fit(keras_dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                        shuffle=False)
