"""Optimizers and learning-rate schedules from the config; --init-from a model.keras."""

import keras
import numpy as np

from train.errors import UsageError, first_line


@keras.saving.register_keras_serializable(package="tf_harness")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from ~0 to `peak` over `warmup_steps`, then constant."""

    def __init__(self, peak, warmup_steps):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        ramp = (step + 1.0) / float(max(1, self.warmup_steps))
        return self.peak * keras.ops.minimum(1.0, ramp)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def build(config, *, num_workers=1):
    """Optimizer named by config.optimizer; loss-scaled under mixed_float16. The peak
    rate is config.learning_rate, times num_workers (the world size) under --scale-lr."""
    peak = peak_rate(config, num_workers)
    rate = LinearWarmup(peak, config.warmup_steps) if config.warmup_steps else peak
    makers = {
        "adam": lambda: keras.optimizers.Adam(rate),
        "adamw": lambda: keras.optimizers.AdamW(rate),
        "sgd": lambda: keras.optimizers.SGD(rate),
        "momentum": lambda: keras.optimizers.SGD(rate, momentum=0.9, nesterov=True),
        "rmsprop": lambda: keras.optimizers.RMSprop(rate),
    }
    optimizer = makers[config.optimizer]()
    if config.precision == "mixed_float16":
        # Dynamic loss scaling: float16 gradients underflow without it; steps whose
        # scaled gradients overflow are skipped and the scale halves.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def peak_rate(config, num_workers):
    return config.learning_rate * (num_workers if config.scale_lr else 1)


def adopt_configured_rate(optimizer, config, *, num_workers):
    """Set a restored constant rate to what this run's config and world size give (a
    checkpoint holds the rate variable of the run that wrote it); (old, new) if it moved.
    A schedule (--warmup-steps) is rebuilt from the config, so it needs nothing."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if isinstance(inner._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return None
    old, new = float(np.asarray(inner.learning_rate)), peak_rate(config, num_workers)
    if np.float32(old) == np.float32(new):
        return None
    inner._learning_rate.assign(new)
    return float(np.format_float_positional(np.float32(old))), new  # 0.01, not 0.0099999998


def learning_rate_at(optimizer, step):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = inner._learning_rate  # the schedule or the constant variable
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return float(rate(step))
    return float(np.asarray(inner.learning_rate))


def init_from_keras_file(path, model, optimizer):
    """Copy weights (and optimizer slots when they fit) from a whole-model file."""
    try:
        loaded = keras.models.load_model(path, compile=True)
    except Exception as e:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise UsageError(
            f"--init-from {path}: not a loadable Keras model ({first_line(e)})"
        ) from None
    _copy(loaded.weights, model.weights, f"--init-from {path}: model does not fit")
    source = getattr(loaded, "optimizer", None)
    if source is not None and len(source.variables) == len(optimizer.variables):
        _copy(source.variables, optimizer.variables, f"--init-from {path}: optimizer does not fit")


def _copy(sources, targets, message):
    if len(sources) != len(targets):
        raise UsageError(f"{message} ({len(sources)} variables, expected {len(targets)})")
    for src, dst in zip(sources, targets):
        if tuple(src.shape) != tuple(dst.shape):
            raise UsageError(
                f"{message} ({src.path} has shape {tuple(src.shape)}, expected {tuple(dst.shape)})"
            )
    for src, dst in zip(sources, targets):
        dst.assign(np.asarray(src))
