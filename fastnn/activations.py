"""Activation names and their kernel codes."""

from __future__ import annotations

from .kernels import codes

#: Keras' default negative slope of leaky_relu.
LEAKY_RELU_SLOPE = 0.2

_CODES = {
    "linear": codes.LINEAR,
    "relu": codes.RELU,
    "leaky_relu": codes.LEAKY_RELU,
    "sigmoid": codes.SIGMOID,
    "tanh": codes.TANH,
    "softmax": codes.SOFTMAX,
}
NAMES = {code: name for name, code in _CODES.items()}


def code_of(name: str | None, arg: str = "activation") -> int:
    """Kernel code of activation ``name`` (None means linear)."""
    from ._names import lookup

    if name is None:
        return codes.LINEAR
    return lookup(_CODES, arg, name)


def names() -> list[str]:
    """The activation names fastnn knows."""
    return sorted(_CODES)
