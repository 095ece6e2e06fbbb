"""Layers: Dense, Dropout, Activation, BatchNormalization, Normalization, Conv2D, the
pooling layers, Embedding, SimpleRNN, LSTM, GRU, and the views Flatten and Input.

Inside a :class:`fastnn.Sequential` the model runs every layer in one compiled call and the
layers' weights are views into the model's flat buffers.  On their own, layers are the
low-level API for hand-written training loops::

    layer = Dense(3, activation="relu", input_dim=4)
    out = layer.forward(x, training=True)
    dx = layer.backward(dout)          # fills layer.grads = [dkernel, dbias]
"""

from __future__ import annotations

from .base import Layer, WeightSpec, float_dtype
from .convolutional import Conv2D
from .core import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    Input,
    LeakyReLU,
    ReLU,
    Reshape,
    Softmax,
)
from .embedding import Embedding
from .normalization import BatchNormalization, Normalization
from .pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from .recurrent import GRU, LSTM, SimpleRNN

# Keras 3's other names of the same classes
Convolution2D = Conv2D
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D

LAYER_CLASSES = {
    cls.__name__: cls
    for cls in (
        Dense,
        Dropout,
        Activation,
        Flatten,
        Reshape,
        ReLU,
        LeakyReLU,
        Softmax,
        BatchNormalization,
        Normalization,
        Conv2D,
        MaxPooling2D,
        AveragePooling2D,
        GlobalAveragePooling2D,
        GlobalMaxPooling2D,
        Embedding,
        SimpleRNN,
        LSTM,
        GRU,
    )
}

__all__ = [
    "Activation",
    "AveragePooling2D",
    "AvgPool2D",
    "Convolution2D",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "MaxPool2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "GRU",
    "Input",
    "LSTM",
    "Layer",
    "LeakyReLU",
    "MaxPooling2D",
    "Normalization",
    "ReLU",
    "Reshape",
    "SimpleRNN",
    "Softmax",
    "WeightSpec",
    "float_dtype",
    "from_config",
]


def from_config(class_name: str, config: dict):
    """Rebuilds a layer from :meth:`Layer.get_config` output."""
    from .._names import lookup

    cls = lookup({k.lower(): v for k, v in LAYER_CLASSES.items()}, "layer class", class_name)
    config = dict(config)
    trainable = config.pop("trainable", True)
    if not isinstance(trainable, bool):
        raise TypeError(f"trainable must be True or False, got {trainable!r}")
    layer = cls(**config)
    layer.trainable = trainable
    return layer
