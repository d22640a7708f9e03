"""train.export.evaluation: evaluate agrees with Keras, and the SavedModel's serving
signature takes float32 images and evaluates like any other form."""

import os

import pytest
import tensorflow as tf
from model_forms import CLASSES, SHAPE

from train import export

pytest_plugins = ["model_forms"]  # the fixtures trained


def test_evaluate_agrees_with_keras_evaluate(trained):
    """Same definition as Keras (probabilities clipped to epsilon), float64 accumulation."""
    keras_loss, keras_acc = trained.model.evaluate(trained.dataset, verbose=0)
    ours = export.evaluate(export.make_predict_fn(trained.model), trained.dataset)
    assert ours["loss"] == pytest.approx(keras_loss, rel=1e-5)
    assert ours["accuracy"] == pytest.approx(keras_acc, abs=1e-6)


def test_saved_model_serving_signature_takes_images_and_evaluates(trained):
    loaded = export.load_saved_model(os.path.join(trained.directory, "saved_model"))
    signature = loaded.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *SHAPE]
    assert export.io_spec(loaded) == (SHAPE, CLASSES)
    result = export.evaluate(export.make_predict_fn(loaded), trained.dataset)
    assert set(result) == {"loss", "accuracy", "examples"} and result["examples"] == 96
