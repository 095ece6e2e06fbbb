"""fastnn: fast small and medium neural networks on the CPU, with a Keras-style API.

>>> import fastnn
>>> from fastnn.layers import Dense
>>> model = fastnn.Sequential([Dense(128, activation="relu", input_dim=64),
...                            Dense(10, activation="softmax")], seed=0)
>>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
...               metrics=["accuracy"])
"""

from . import (
    activations,
    callbacks,
    datasets,
    layers,
    losses,
    metrics,
    models,
    optimizers,
    regularizers,
    saving,
    schedules,
    utils,
)
from ._version import __version__
from .backend import get_backend, set_backend
from .gradcheck import gradcheck
from .layers import Input
from .model import NonFiniteLossError, Sequential
from .models import load_model

__all__ = [
    "Input",
    "Sequential",
    "NonFiniteLossError",
    "activations",
    "callbacks",
    "datasets",
    "get_backend",
    "gradcheck",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "regularizers",
    "saving",
    "schedules",
    "set_backend",
    "utils",
    "__version__",
]
