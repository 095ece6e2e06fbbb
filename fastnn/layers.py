"""Layers: Dense, Dropout, Activation and Flatten, each with an explicit forward/backward.

Inside a :class:`fastnn.Sequential` the model runs the whole stack in one compiled call and
the layers' weights are views into the model's flat parameter buffer.  On their own, layers
are the low-level API for hand-written training loops::

    layer = Dense(3, activation="relu", input_dim=4)
    out = layer.forward(x, training=True)
    dx = layer.backward(dout)          # fills layer.grads = [dkernel, dbias]
"""

from __future__ import annotations

import numpy as np

from . import activations, initializers, regularizers
from . import backend as _backend
from ._checks import as_array, as_float, check_finite
from .kernels import codes


def float_dtype(dtype) -> np.dtype:
    """np.dtype of ``dtype`` if it is float32 or float64, else a ValueError."""
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return out


def _positive_int(value, arg):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{arg} must be a positive int, got {value}")
    return int(value)


def _alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number >= 0, got {type(alpha).__name__} {alpha!r}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def _input_dim(input_dim, input_shape):
    if input_dim is not None and input_shape is not None:
        raise ValueError(
            f"give input_dim or input_shape, not both, got input_dim={input_dim!r} and "
            f"input_shape={input_shape!r}"
        )
    if input_shape is not None:
        if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
            shape = (input_shape,)
        elif isinstance(input_shape, (tuple, list)):
            shape = tuple(input_shape)
        else:
            raise TypeError(
                f"input_shape must be a tuple such as (features,), got "
                f"{type(input_shape).__name__} {input_shape!r}"
            )
        if len(shape) != 1:
            raise ValueError(
                f"input_shape of a Dense layer must have one dimension (features,), got "
                f"{shape}; put a Flatten() layer first for multi-dimensional inputs"
            )
        return _positive_int(shape[0], "input_shape[0]")
    return None if input_dim is None else _positive_int(input_dim, "input_dim")


class Layer:
    """Base class: a layer maps (N, input_dim) to (N, units) rows."""

    kind = -1
    has_weights = False

    def __init__(self, name: str | None = None):
        self.name = name
        self.input_dim: int | None = None
        self.units: int | None = None
        self.dtype = np.dtype(np.float32)
        self.built = False
        self._kernels = None
        self._cache: dict = {}

    # -- building -------------------------------------------------------------------
    def build(self, input_dim: int, dtype="float32", rng=None, backend: str | None = None):
        """Fixes the input width and dtype, resolves the kernel backend, makes weights."""
        self.input_dim = _positive_int(input_dim, "input_dim")
        self.dtype = float_dtype(dtype)
        self.backend_name, self._kernels = _backend.resolve(backend)
        self._build(rng if rng is not None else np.random.default_rng())
        self.built = True
        return self

    def _build(self, rng):
        self.units = self.input_dim

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the layer's weights, in get_weights order."""
        return []

    def table_row(self, param_off: int) -> tuple[list[int], list[float]]:
        """This layer's rows of the compiled stack tables (``layers``, ``layer_f``)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments."""
        return {"name": self.name}

    # -- low-level forward/backward --------------------------------------------------
    def _buffers(self, n: int):
        if n not in self._cache:
            self._cache = {n: self._alloc(n)}
        return self._cache[n]

    def _alloc(self, n):
        return {
            "out": np.empty((n, self.units), self.dtype),
            "dx": np.empty((n, self.input_dim), self.dtype),
        }

    def _check_input(self, x):
        x = as_array(x, "x")
        expected = f"(N, {self.input_dim})" if self.built else "(N, features)"
        if x.ndim != 2 or x.shape[0] == 0 or (self.built and x.shape[1] != self.input_dim):
            raise ValueError(
                f"x must have shape {expected} with N >= 1 for layer {self.name!r}, got {x.shape}"
            )
        if not self.built:
            self.build(x.shape[1], x.dtype if x.dtype in (np.float32, np.float64) else "float32")
        out = as_float(x, self.dtype)
        check_finite(out, "x", x)
        return out

    def _check_dout(self, dout):
        if not self._cache:
            raise RuntimeError(f"call forward() on layer {self.name!r} before backward()")
        out = next(iter(self._cache.values()))["out"]
        dout = as_array(dout, "dout")
        if dout.shape != out.shape:
            raise ValueError(
                f"dout must have the shape of the last forward output {out.shape}, got {dout.shape}"
            )
        return np.ascontiguousarray(dout, dtype=self.dtype)

    def forward(self, x, training: bool = False) -> np.ndarray:
        """Output for x (N, input_dim); keeps what backward needs.  The returned array is
        reused by the next call of the same batch size (copy it to keep it)."""
        raise NotImplementedError

    def backward(self, dout) -> np.ndarray:
        """dL/dx for dL/dout of the last forward; layers with weights also fill ``grads``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Dense(Layer):
    """Fully connected layer ``act(x @ kernel + bias)``; kernel has shape (input_dim, units).

    Parameters
    ----------
    units : int
        Output width.
    activation : str or None
        One of linear, relu, leaky_relu, sigmoid, tanh, softmax (None: linear).
    input_dim, input_shape : int or tuple, optional
        Input width, needed on the first layer of a model (``input_shape=(d,)``).
    kernel_initializer, bias_initializer : str or callable(shape, rng)
        Keras names (glorot_uniform, he_normal, zeros, ...).
    kernel_regularizer : str, fastnn.regularizers.L1L2 or None
        Penalty on the kernel added to the loss.
    alpha : float
        Negative slope of leaky_relu (Keras' default 0.2).
    """

    kind = codes.DENSE
    has_weights = True

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
    ):
        super().__init__(name)
        self.units = _positive_int(units, "units")
        self.act = activations.code_of(activation)
        self.activation = "linear" if activation is None else activation.strip().lower()
        self.declared_input_dim = _input_dim(input_dim, input_shape)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._init_names = (kernel_initializer, bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.alpha = _alpha(alpha)
        self.kernel = self.bias = self.dkernel = self.dbias = None

    def _build(self, rng):
        if self.declared_input_dim is not None and self.declared_input_dim != self.input_dim:
            raise ValueError(
                f"layer {self.name!r} declares input_dim={self.declared_input_dim} but "
                f"receives {self.input_dim} features"
            )
        shape = (self.input_dim, self.units)
        self.kernel = self._initial(self.kernel_initializer, shape, rng, "kernel_initializer")
        self.bias = self._initial(self.bias_initializer, (self.units,), rng, "bias_initializer")
        self.dkernel = np.zeros_like(self.kernel)
        self.dbias = np.zeros_like(self.bias)

    def _initial(self, init, shape, rng, arg):
        value = as_array(init(shape, rng), f"{arg} result")
        if value.shape != shape:
            raise ValueError(f"{arg} must return an array of shape {shape}, got {value.shape}")
        value = np.ascontiguousarray(value, dtype=self.dtype)
        check_finite(value, f"{arg} result")
        return value

    def param_shapes(self):
        return [(self.input_dim, self.units), (self.units,)]

    @property
    def weights(self) -> list[np.ndarray]:
        """[kernel, bias] (views: writing into them changes the layer)."""
        return [self.kernel, self.bias]

    @property
    def grads(self) -> list[np.ndarray]:
        """[dkernel, dbias] from the last backward."""
        return [self.dkernel, self.dbias]

    def bind(self, params, grads, offset: int) -> int:
        """Makes kernel/bias (and their gradients) views into flat buffers at ``offset``,
        copying the current values in; returns the offset after this layer."""
        k = self.input_dim * self.units
        for flat, names in ((params, ("kernel", "bias")), (grads, ("dkernel", "dbias"))):
            kernel = flat[offset : offset + k].reshape(self.input_dim, self.units)
            bias = flat[offset + k : offset + k + self.units]
            if getattr(self, names[0]) is not None and isinstance(flat, np.ndarray):
                kernel[...] = getattr(self, names[0])
                bias[...] = getattr(self, names[1])
            setattr(self, names[0], kernel)
            setattr(self, names[1], bias)
        return offset + k + self.units

    def table_row(self, param_off):
        reg = self.kernel_regularizer or regularizers.L1L2()
        return [self.kind, self.units, self.act, param_off], [self.alpha, reg.l1, reg.l2]

    def get_config(self):
        init = [n if isinstance(n, str) else "glorot_uniform" for n in self._init_names]
        reg = self.kernel_regularizer.get_config() if self.kernel_regularizer else None
        return {
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "input_dim": self.declared_input_dim,
            "kernel_initializer": init[0],
            "bias_initializer": init[1],
            "kernel_regularizer": reg,
            "alpha": self.alpha,
        }

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.dense_forward(x, self.kernel, self.bias, buf["out"], self.act, self.alpha)
        self._x = x
        return buf["out"]

    def _alloc(self, n):
        buf = super()._alloc(n)
        buf["dz"] = np.empty((n, self.units), self.dtype)
        return buf

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._x.shape[0]]
        self._kernels.dense_backward(
            self._x,
            self.kernel,
            buf["out"],
            dout,
            buf["dz"],
            buf["dx"],
            self.dkernel,
            self.dbias,
            self.act,
            self.alpha,
            1,
        )
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


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of its inputs while training, scaling the rest by
    1/(1-rate); the identity at inference.  Masks come from a counter-based hash of
    (seed, step), identical on every backend."""

    kind = codes.DROPOUT

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None):
        super().__init__(name)
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

    def table_row(self, param_off):
        return [self.kind, self.units, codes.LINEAR, 0], [self.rate, 0.0, 0.0]

    def get_config(self):
        return {"name": self.name, "rate": self.rate, "seed": self.seed}

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._active = bool(training) and self.rate > 0
        if self._active:
            self._calls += 1
            self._step_seed = (self.seed or 0) * 1000003 + self._calls
            self._kernels.dropout_forward(x, buf["out"], self.rate, self._step_seed)
        else:
            buf["out"][...] = x
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[buf_n(self)]
        if self._active:
            self._kernels.dropout_backward(dout, buf["dx"], self.rate, self._step_seed)
        else:
            buf["dx"][...] = dout
        return buf["dx"]


def buf_n(layer: Layer) -> int:
    """Batch size of the layer's last forward."""
    return next(iter(layer._cache))


class Activation(Layer):
    """Applies an activation by name (same names as Dense's ``activation``)."""

    kind = codes.ACTIVATION

    def __init__(self, activation: str, alpha: float = activations.LEAKY_RELU_SLOPE, name=None):
        super().__init__(name)
        self.act = activations.code_of(activation)
        self.activation = "linear" if activation is None else activation.strip().lower()
        self.alpha = _alpha(alpha)

    def table_row(self, param_off):
        return [self.kind, self.units, self.act, 0], [self.alpha, 0.0, 0.0]

    def get_config(self):
        return {"name": self.name, "activation": self.activation, "alpha": self.alpha}

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.activation_forward(x, buf["out"], self.act, self.alpha)
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[buf_n(self)]
        self._kernels.activation_backward(buf["out"], dout, buf["dx"], self.act, self.alpha)
        return buf["dx"]


class Flatten:
    """Flattens each sample to one dimension; allowed only as a model's first layer, where
    it reshapes the input (N, d1, d2, ...) -> (N, d1*d2*...) once, outside the kernels."""

    def __init__(self, input_shape=None, name: str | None = None):
        self.name = name
        if input_shape is not None:
            if not isinstance(input_shape, (tuple, list)) or not input_shape:
                raise TypeError(
                    f"input_shape must be a non-empty tuple of ints, got "
                    f"{type(input_shape).__name__} {input_shape!r}"
                )
            input_shape = tuple(
                _positive_int(d, f"input_shape[{i}]") for i, d in enumerate(input_shape)
            )
        self.input_shape = input_shape

    def get_config(self):
        return {"name": self.name, "input_shape": self.input_shape}


LAYER_CLASSES = {cls.__name__: cls for cls in (Dense, Dropout, Activation, Flatten)}


def from_config(class_name: str, config: dict):
    """Rebuilds a layer from :meth:`Layer.get_config` output."""
    from ._names import lookup

    cls = lookup({k.lower(): v for k, v in LAYER_CLASSES.items()}, "layer class", class_name)
    return cls(**config)
