"""One predict function for every form (a Keras model or a loaded SavedModel), and the
loss and accuracy of any predict function over a dataset, as Keras computes them."""

import numpy as np

from train.errors import UsageError
from train.export.formats import SERVING_SIGNATURE

# Keras clips probabilities to [EPSILON, 1 - EPSILON] (keras.config.epsilon()) before the
# log; so do we, so that evaluate() agrees with model.evaluate() for a compiled model.
EPSILON = 1e-7


def io_spec(model_or_saved):
    """(input image shape (H, W, C), number of classes) of a Keras model or SavedModel."""
    import keras

    if isinstance(model_or_saved, keras.Model):
        return tuple(model_or_saved.input_shape[1:]), int(model_or_saved.output_shape[-1])
    signature = model_or_saved.signatures[SERVING_SIGNATURE]
    spec = next(iter(signature.structured_input_signature[1].values()))
    out = next(iter(signature.structured_outputs.values()))
    return tuple(spec.shape[1:]), int(out.shape[-1])


def make_predict_fn(model_or_saved):
    """images -> probabilities, for a Keras model (inference mode) or a loaded SavedModel."""
    import keras
    import tensorflow as tf

    if isinstance(model_or_saved, keras.Model):
        model = model_or_saved
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        call = tf.function(lambda images: model(images, training=False), input_signature=[spec])
        return lambda images: call(tf.convert_to_tensor(images, tf.float32))
    signature = model_or_saved.signatures[SERVING_SIGNATURE]
    (name,) = signature.structured_input_signature[1].keys()
    (output,) = signature.structured_outputs.keys()
    return lambda images: signature(**{name: tf.convert_to_tensor(images, tf.float32)})[output]


def evaluate(predict_fn, dataset):
    """Mean sparse categorical cross-entropy and accuracy of `predict_fn` over `dataset`.

    `dataset` yields (images, labels); `predict_fn(images)` returns class probabilities.
    Loss as Keras computes it from probabilities (renormalised, clipped to
    [EPSILON, 1 - EPSILON]), accumulated in float64 over the whole dataset.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in dataset:
        probs = np.asarray(predict_fn(images), dtype=np.float64)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
            raise UsageError(
                f"predictions of shape {probs.shape} do not match {labels.shape[0]} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise UsageError(
                f"label {int(labels.max())} out of range for a model with {probs.shape[1]} classes"
            )
        p = probs / probs.sum(axis=1, keepdims=True)
        p = np.clip(p[np.arange(labels.size), labels], EPSILON, 1.0 - EPSILON)
        loss_sum += float(-np.log(p).sum())
        correct += int((np.argmax(probs, axis=1) == labels).sum())
        count += int(labels.size)
    if count == 0:
        raise UsageError("the evaluation dataset is empty")
    return {"loss": loss_sum / count, "accuracy": correct / count, "examples": count}
