"""Core layers: Dense, Dropout, Activation, and the views Flatten and Input.

Inside a :class:`fastnn.Sequential` the model runs every layer in one compiled call and the
layers' weights are views into the model's flat buffers.  On their own, layers are the
low-level API for hand-written training loops::

    layer = Dense(3, activation="relu", input_dim=4)
    out = layer.forward(x, training=True)
    dx = layer.backward(dout)          # fills layer.grads = [dkernel, dbias]
"""

from __future__ import annotations

import numpy as np

from .. import activations, initializers, regularizers
from .._checks import _check_bool, as_array, check_finite
from ..kernels import codes
from .base import (
    Layer,
    WeightSpec,
    check_name,
    number,
    positive_int,
    sample_shape,
    size_of,
    unique_name,
)


def _alpha(alpha):
    return number(alpha, "alpha", low=0.0)


class Dense(Layer):
    """Fully connected layer ``act(x @ kernel + bias)`` on the last axis of its input;
    kernel has shape (input features, units).

    Parameters
    ----------
    units : int
        Output width.
    activation : str or None
        One of linear, relu, leaky_relu, sigmoid, tanh, softmax, elu, selu, gelu, silu
        (swish), softplus (None: linear).
    input_dim, input_shape : int or tuple, optional
        Per-sample input shape, for the first layer of a model (``input_shape=(d,)``).
    kernel_initializer, bias_initializer : str or callable(shape, rng)
        Keras names (glorot_uniform, he_normal, zeros, ...).
    kernel_regularizer : str, fastnn.regularizers.L1L2 or None
        Penalty on the kernel added to the loss.
    alpha : float
        Negative slope of leaky_relu (Keras' default 0.2).
    use_bias : bool
        Whether the layer has a bias (Keras's default True).
    """

    kind = codes.DENSE

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        input_dim: int | None = None,
        input_shape=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        alpha: float = activations.LEAKY_RELU_SLOPE,
        name: str | None = None,
        use_bias: bool = True,
    ):
        super().__init__(name, input_dim, input_shape)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"use_bias must be True or False, got {type(use_bias).__name__} "
                            f"{use_bias!r}")  # fmt: skip
        self.use_bias = bool(use_bias)
        self.units = positive_int(units, "units")
        self.act = activations.code_of(activation)
        self.activation = "linear" if activation is None else activation.strip().lower()
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._init_names = (kernel_initializer, bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.alpha = _alpha(alpha)

    @property
    def declared_input_dim(self) -> int | None:
        shape = self.declared_input_shape
        return None if shape is None else size_of(shape)

    @property
    def input_dim(self) -> int | None:
        return None if self.input_shape is None else self.input_shape[-1]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def weight_specs(self):
        kernel = WeightSpec("kernel", (self.input_shape[-1], self.units),
                            self.kernel_initializer, codes.P_W0,
                            regularizer=self.kernel_regularizer)  # fmt: skip
        if not self.use_bias:
            return [kernel]
        return [kernel, WeightSpec("bias", (self.units,), self.bias_initializer, codes.P_W1)]

    def plan_fields(self):
        reg = self.kernel_regularizer or regularizers.L1L2()
        alpha = activations.kernel_alpha(self.act, self.alpha)
        return self.act, {codes.F_ALPHA: alpha, codes.F_L1: reg.l1, codes.F_L2: reg.l2}, {}

    def workspace(self, rows):
        # gelu and silu differentiate through the pre-activation: it is kept at P_SAVE_OFF
        saved = rows * size_of(self.output_shape) if activations.needs_input(self.act) else 0
        return saved, 0

    @property
    def kernel(self):
        return self._live().get("kernel")

    @property
    def bias(self):
        """The bias, or None without one (use_bias=False)."""
        return self._live().get("bias")

    def _bias_arg(self, grads=False):
        """The kernels' bias (or its gradient) argument: empty without a bias."""
        value = (self._grads if grads else self._values).get("bias")
        return np.zeros(0, self.dtype) if value is None else value

    @property
    def dkernel(self):
        return self._live(grads=True).get("kernel")

    @property
    def dbias(self):
        return self._live(grads=True).get("bias")

    def get_config(self):
        init = [initializers.config_name(n) for n in self._init_names]
        reg = self.kernel_regularizer.get_config() if self.kernel_regularizer else None
        config = {
            **({"trainable": False} if not self.trainable else {}),
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "input_dim": None,
            "kernel_initializer": init[0],
            "bias_initializer": init[1],
            "kernel_regularizer": reg,
            "alpha": self.alpha,
            "use_bias": self.use_bias,
        }
        shape = self.declared_input_shape
        if shape is not None and len(shape) == 1:
            config["input_dim"] = shape[0]
        elif shape is not None:
            config["input_shape"] = list(shape)
        return config

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        rows, width = self._rows(self.input_shape, x.shape[0])
        out = buf["out"].reshape(rows, self.units)
        alpha = activations.kernel_alpha(self.act, self.alpha)
        if activations.needs_input(self.act):  # keep the pre-activation for the backward
            z = buf["z"].reshape(rows, self.units)
            self._kernels.dense_forward(x.reshape(rows, width), self.kernel, self._bias_arg(), z,
                                        codes.LINEAR, 0.0)  # fmt: skip
            self._kernels.activation_forward(z, out, self.act, alpha)
        else:
            self._kernels.dense_forward(x.reshape(rows, width), self.kernel, self._bias_arg(), out,
                                        self.act, alpha)  # fmt: skip
        self._x = x
        return buf["out"]

    def _alloc(self, n):
        buf = super()._alloc(n)
        buf["dz"] = np.empty((n, *self.output_shape), self.dtype)
        if activations.needs_input(self.act):
            buf["z"] = np.empty((n, *self.output_shape), self.dtype)
        return buf

    def backward(self, dout):
        dout = self._check_dout(dout)
        n = self._x.shape[0]
        buf = self._cache[n]
        rows, width = self._rows(self.input_shape, n)
        y = buf["z" if activations.needs_input(self.act) else "out"]
        self._kernels.dense_backward(
            self._x.reshape(rows, width), self.kernel, y.reshape(rows, self.units),
            dout.reshape(rows, self.units), buf["dz"].reshape(rows, self.units),
            buf["dx"].reshape(rows, width), self.dkernel, self._bias_arg(grads=True), self.act,
            activations.kernel_alpha(self.act, self.alpha), 1,
        )  # fmt: skip
        if self.kernel_regularizer is not None:
            reg = self.kernel_regularizer
            self._kernels.l1l2_penalty(self.kernel, self.dkernel, float(reg.l1), float(reg.l2))
        return buf["dx"]

    def penalty(self) -> float:
        """The kernel regulariser's penalty for the current weights (0 without one)."""
        reg = self.kernel_regularizer
        if reg is None:
            return 0.0
        return reg.l1 * float(np.abs(self.kernel).sum()) + reg.l2 * float(
            np.square(self.kernel, dtype=np.float64).sum()
        )


class _Elementwise(Layer):
    """A layer whose output has its input's shape; the low-level API works on (N, size)."""

    def _flat(self, a):
        return a.reshape(a.shape[0], -1)


class Dropout(_Elementwise):
    """Zeroes a fraction ``rate`` of its inputs while training, scaling the rest by
    1/(1-rate); the identity at inference.  Masks come from a counter-based hash of
    (seed, step), identical on every backend."""

    kind = codes.DROPOUT

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None,
                 input_shape=None):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise TypeError(f"rate must be a number in [0, 1), got {type(rate).__name__} {rate!r}")
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(
                    f"seed must be an int >= 0 or None, got {type(seed).__name__} {seed!r}"
                )
            if seed < 0:
                raise ValueError(f"seed must be an int >= 0 or None, got {seed}")
        self.seed = seed
        self._calls = 0

    def plan_fields(self):
        return codes.LINEAR, {codes.F_RATE: self.rate}, {}

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._active = _check_bool(training, "training") and self.rate > 0
        if self._active:
            self._calls += 1
            self._step_seed = (self.seed or 0) * 1000003 + self._calls
            self._kernels.dropout_forward(self._flat(x), self._flat(buf["out"]), self.rate,
                                          self._step_seed)  # fmt: skip
        else:
            buf["out"][...] = x
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        if self._active:
            self._kernels.dropout_backward(self._flat(dout), self._flat(buf["dx"]), self.rate,
                                           self._step_seed)  # fmt: skip
        else:
            buf["dx"][...] = dout
        return buf["dx"]


class Activation(_Elementwise):
    """Applies an activation by name (same names as Dense's ``activation``; softmax over
    the last axis)."""

    kind = codes.ACTIVATION

    def __init__(self, activation: str, alpha: float = activations.LEAKY_RELU_SLOPE, name=None,
                 input_shape=None):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        self.act = activations.code_of(activation)
        self.activation = "linear" if activation is None else activation.strip().lower()
        self.alpha = _alpha(alpha)

    def plan_fields(self):
        return self.act, {codes.F_ALPHA: activations.kernel_alpha(self.act, self.alpha)}, {}

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "alpha": self.alpha}

    def _last_axis(self, a):
        return a.reshape(-1, a.shape[-1])

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        alpha = activations.kernel_alpha(self.act, self.alpha)
        self._kernels.activation_forward(self._last_axis(x), self._last_axis(buf["out"]),
                                         self.act, alpha)  # fmt: skip
        self._x = x
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        y = self._x if activations.needs_input(self.act) else buf["out"]
        self._kernels.activation_backward(
            self._last_axis(y), self._last_axis(dout), self._last_axis(buf["dx"]),
            self.act, activations.kernel_alpha(self.act, self.alpha),
        )  # fmt: skip
        return buf["dx"]


class ReLU(Activation):
    """The rectified linear unit as a layer (Keras's ``ReLU``): ``max(x, 0)``, or
    ``negative_slope * x`` below 0 when ``negative_slope`` > 0."""

    def __init__(self, max_value=None, negative_slope: float = 0.0, threshold: float = 0.0,
                 name=None, input_shape=None):  # fmt: skip
        if max_value is not None or threshold != 0:
            raise ValueError(
                f"ReLU supports max_value=None and threshold=0 only, got max_value="
                f"{max_value!r}, threshold={threshold!r}"
            )
        slope = number(negative_slope, "negative_slope", low=0.0)
        super().__init__("leaky_relu" if slope else "relu", alpha=slope, name=name,
                         input_shape=input_shape)  # fmt: skip
        self.negative_slope = slope

    def get_config(self):
        config = Layer.get_config(self)
        config["negative_slope"] = self.negative_slope
        return config


class LeakyReLU(Activation):
    """Leaky rectified linear unit (Keras's ``LeakyReLU``, default slope 0.3)."""

    def __init__(self, negative_slope: float = 0.3, name=None, input_shape=None):
        super().__init__("leaky_relu", alpha=negative_slope, name=name, input_shape=input_shape)
        self.negative_slope = self.alpha

    def get_config(self):
        config = Layer.get_config(self)
        config["negative_slope"] = self.negative_slope
        return config


class Softmax(Activation):
    """Softmax over the last axis as a layer (Keras's ``Softmax``)."""

    def __init__(self, axis: int = -1, name=None, input_shape=None):
        if isinstance(axis, bool) or axis != -1:
            raise ValueError(f"axis must be -1 (the last axis), got {axis!r}")
        super().__init__("softmax", name=name, input_shape=input_shape)

    def get_config(self):
        return {**Layer.get_config(self), "axis": -1}


def _view_backward(layer, dout):
    """dL/dx of a view layer (Flatten, Reshape): ``dout`` checked as other layers check
    it (the last forward's output shape, the layer's dtype, finite), given the input's
    shape."""
    rows = getattr(layer, "_view_rows", None)
    if rows is None:
        raise RuntimeError(f"call forward() on layer {layer.name!r} before backward()")
    dout = as_array(dout, "dout")
    expected = (rows, *layer.compute_output_shape(layer.input_shape))
    if dout.shape != expected:
        raise ValueError(f"dout must have the shape of the last forward output {expected}, "
                         f"got {dout.shape}")  # fmt: skip
    dout = np.ascontiguousarray(dout, dtype=layer.dtype)
    check_finite(dout, "dout")
    return dout.reshape(rows, *layer.input_shape)


class Flatten(Layer):
    """Flattens each sample to one axis in C order ((H, W, C) order for images); a view of
    its input, allowed anywhere in a model (no copy, no compiled work)."""

    def __init__(self, input_shape=None, name: str | None = None):
        super().__init__(name, input_shape=input_shape)

    def compute_output_shape(self, input_shape):
        return (size_of(input_shape),)

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._view_rows = x.shape[0]
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return _view_backward(self, dout)


class Reshape(Layer):
    """Gives each sample a new shape of the same size (Keras's ``Reshape``; one entry may
    be -1); a view of its input, as Flatten."""

    def __init__(self, target_shape, name: str | None = None, input_shape=None):
        super().__init__(name, input_shape=input_shape)
        if isinstance(target_shape, (int, np.integer)) and not isinstance(target_shape, bool):
            target_shape = (target_shape,)
        if not isinstance(target_shape, (tuple, list)) or not 1 <= len(target_shape) <= 3:
            raise ValueError(
                f"target_shape must be a tuple of 1 to 3 ints (one may be -1), got {target_shape!r}"
            )
        dims = list(target_shape)
        if sum(d == -1 for d in dims) > 1:
            raise ValueError(f"target_shape may hold one -1, got {tuple(dims)}")
        for i, d in enumerate(dims):
            if d != -1:
                positive_int(d, f"target_shape[{i}]")
        self.target_shape = tuple(int(d) for d in dims)

    def compute_output_shape(self, input_shape):
        size, known = size_of(input_shape), size_of([d for d in self.target_shape if d != -1])
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(
                    f"cannot reshape samples of shape {tuple(input_shape)} ({size} values) to "
                    f"{self.target_shape}"
                )
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise ValueError(
                f"cannot reshape samples of shape {tuple(input_shape)} ({size} values) to "
                f"{self.target_shape} ({known} values)"
            )
        return self.target_shape

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}

    def forward(self, x, training=False):
        x = self._check_input(x)
        self._view_rows = x.shape[0]
        return x.reshape(x.shape[0], *self.output_shape)

    def backward(self, dout):
        return _view_backward(self, dout)


class Input:
    """The per-sample input shape of a model, as the first element of ``Sequential``
    (Keras 3's ``keras.Input``): ``Sequential([Input(shape=(64,)), Dense(10)])``.

    Parameters
    ----------
    shape : int or tuple of ints
        Shape of one sample, without the batch axis (up to 3 dimensions).
    dtype : str, optional
        The dtype of the data.  Float inputs are converted to the model's dtype (the
        ``dtype`` of :class:`fastnn.Sequential`); None means that dtype.
    name : str, optional
    """

    def __init__(self, shape, dtype=None, name: str | None = None, batch_size=None):
        self.shape = sample_shape(shape, "shape")
        if dtype is not None:
            try:
                kind = np.dtype(dtype).kind
            except TypeError:
                kind = None
            if kind not in ("f", "i", "u"):
                raise ValueError(f"dtype must be a numeric dtype name or None, got {dtype!r}")
            dtype = np.dtype(dtype).name
        self.dtype = dtype
        self.name = check_name(name) or unique_name("input_layer")
        if batch_size is not None:
            positive_int(batch_size, "batch_size")
        self.batch_size = batch_size

    def get_config(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "name": self.name}

    def __repr__(self):
        return f"Input(shape={self.shape}, dtype={self.dtype!r})"
