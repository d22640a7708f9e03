"""Model registry: name -> Keras model builder taking (input_shape, num_classes).

`cnn` is exactly the seed article's CIFAR-10 CNN. `resnet20` is the CIFAR ResNet of
He et al. (2016), 3 stages x 3 basic blocks, 16/32/64 filters. Both end in a float32
softmax so that mixed precision keeps the loss in float32.
"""

import keras

from train.errors import UsageError


def cnn(input_shape, num_classes):
    """Conv32-MaxPool-Conv64-MaxPool-Conv64-Flatten-Dense64-Dense10 (the seed)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="cnn",
    )


def _basic_block(x, filters, stride):
    layers = keras.layers
    shortcut = x
    y = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer="he_normal"
    )(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal"
        )(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet20(input_shape, num_classes):
    """ResNet-20 for 32x32 inputs: 1 + 3 stages x 3 blocks x 2 convs + 1 dense = 20 layers."""
    layers = keras.layers
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            x = _basic_block(x, filters, stride=2 if stage > 0 and block == 0 else 1)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet20")


MODELS = {"cnn": cnn, "resnet20": resnet20}


def build(name, input_shape, num_classes):
    """Build a registered model; an unknown name is a UsageError naming the choices."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), int(num_classes))
