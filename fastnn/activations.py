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
    "elu": codes.ELU,
    "selu": codes.SELU,
    "gelu": codes.GELU,
    "silu": codes.SILU,
    "swish": codes.SILU,
    "softplus": codes.SOFTPLUS,
}
NAMES = {code: name for name, code in _CODES.items() if name != "swish"}
#: Keras's alpha of the activation *name* "elu" (keras.activations.elu's default)
ELU_ALPHA = 1.0


def kernel_alpha(act: int, alpha: float) -> float:
    """The kernels' ``alpha`` for activation code ``act``: a layer's ``alpha`` is the slope
    of leaky_relu; the name "elu" means Keras's elu with alpha 1.0."""
    return ELU_ALPHA if act == codes.ELU else float(alpha)


def needs_input(act: int) -> bool:
    """Whether the backward of activation ``act`` reads its input (gelu, silu) rather
    than its output."""
    return act in codes.INPUT_ACTS


def code_of(name: str | None, arg: str = "activation") -> int:
    """Kernel code of activation ``name`` (None means linear)."""
    from ._names import lookup

    if name is None:
        return codes.LINEAR
    return lookup(_CODES, arg, name)


def names() -> list[str]:
    """The activation names fastnn knows."""
    return sorted(_CODES)


# ---------------------------------------------------------------------------------------
# Keras's functions: fastnn.activations.relu(x) etc. on arrays (NumPy, float32/float64)


def _apply(name: str, x, alpha: float = 0.0):
    import numpy as np

    from .kernels import reference

    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float32
    flat = np.ascontiguousarray(arr, dtype=dtype).reshape(-1, arr.shape[-1] if arr.ndim else 1)
    out = np.empty_like(flat)
    reference.activation_forward(flat, out, _CODES[name], alpha)
    return out.reshape(arr.shape)


def elu(x, alpha: float = 1.0):
    """Exponential linear unit: x if x > 0 else alpha * (exp(x) - 1)."""
    return _apply("elu", x, alpha)


def selu(x):
    """Scaled ELU: scale * elu(x, alpha) with Keras's constants (1.0507..., 1.6732...)."""
    return _apply("selu", x)


def gelu(x, approximate: bool = False):
    """Gaussian error linear unit x * Phi(x) (the exact erf form; ``approximate=True``, the
    tanh form, is not supported)."""
    if approximate:
        raise ValueError("gelu supports approximate=False (the erf form) only, got True")
    return _apply("gelu", x)


def silu(x):
    """x * sigmoid(x) (Keras's silu; ``swish`` is the same function)."""
    return _apply("silu", x)


swish = silu


def softplus(x):
    """log(1 + exp(x)), computed without overflow."""
    return _apply("softplus", x)


def linear(x):
    """The identity."""
    return _apply("linear", x)


def relu(x):
    """max(x, 0)."""
    return _apply("relu", x)


def leaky_relu(x, negative_slope: float = 0.2):
    """x if x > 0 else negative_slope * x."""
    return _apply("leaky_relu", x, negative_slope)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _apply("sigmoid", x)


def tanh(x):
    """The hyperbolic tangent."""
    return _apply("tanh", x)


def softmax(x):
    """Softmax over the last axis."""
    return _apply("softmax", x)


def get(identifier):
    """Keras's ``keras.activations.get``: the function of a name (None: linear), or a
    callable unchanged."""
    if identifier is None:
        return linear
    if callable(identifier):
        return identifier
    code_of(identifier, "identifier")  # a ValueError naming the known activations
    return globals()[identifier.strip().lower()]
