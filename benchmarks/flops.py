"""Training FLOPs per image, counted from the model's layers (not profiled).

Counted: Conv2D / DepthwiseConv2D / Dense as 2 FLOPs per multiply-accumulate,
    Conv2D  2 * H_out * W_out * K_h * K_w * (C_in / groups) * C_out
    Dense   2 * in * out  (per position, times the positions for inputs of rank > 2)
Not counted: biases, activations, pooling, batch norm, the loss, the optimizer update:
elementwise work that is a few percent of the convolutions here and, on these models, is
memory-bound rather than FLOP-bound. Training ~ 3 x forward (the backward pass computes
gradients for both activations and weights, each about one forward's worth), the usual
convention (Kaplan et al. 2020; MLPerf's FLOP counts). tf.profiler's float_ops would
count the elementwise ops too, but its graph-level count depends on the TF version's
fusions and on Keras internals; a count from the layers is stable and checkable by hand.
"""

import math

TRAINING_MULTIPLIER = 3


def _shape(tensor_or_shape):
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(shape)


def conv2d_flops(layer):
    out = _shape(layer.output)
    in_channels = _shape(layer.input)[-1]
    kh, kw = layer.kernel_size
    groups = getattr(layer, "groups", 1) or 1
    return 2 * out[1] * out[2] * kh * kw * (in_channels // groups) * layer.filters


def depthwise_flops(layer):
    out = _shape(layer.output)
    kh, kw = layer.kernel_size
    return 2 * out[1] * out[2] * kh * kw * out[3]


def dense_flops(layer):
    in_shape = _shape(layer.input)
    positions = math.prod(d for d in in_shape[1:-1]) if len(in_shape) > 2 else 1
    return 2 * positions * in_shape[-1] * layer.units


_COUNTERS = {"Conv2D": conv2d_flops, "DepthwiseConv2D": depthwise_flops,
             "Dense": dense_flops}


def _layers(model):
    """Every leaf layer, descending into nested models (a Sequential inside a Model)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers(layer)
        else:
            yield layer


def forward_flops(model):
    """FLOPs of one image's forward pass: {layer name: flops} for the counted layers."""
    counts = {}
    for layer in _layers(model):
        counter = _COUNTERS.get(type(layer).__name__)
        if counter is not None:
            counts[layer.name] = int(counter(layer))
    return counts


def training_flops_per_image(model):
    return TRAINING_MULTIPLIER * sum(forward_flops(model).values())


def efficiency(images_per_sec, flops_per_image, matmul_gflops):
    """Share of the same-run matmul rate that training achieves (0..~1)."""
    if not matmul_gflops or images_per_sec is None:
        return None
    return images_per_sec * flops_per_image / (matmul_gflops * 1e9)
