"""Normalisation layers: BatchNormalization (learned, batch statistics) and Normalization
(fixed statistics computed by ``adapt``, so preprocessing travels with the model)."""

from __future__ import annotations

import numpy as np

from .. import initializers
from .._checks import _check_bool, as_array, check_finite
from ..kernels import codes
from .base import Layer, WeightSpec, number


def _last_axis_only(axis, layer):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__} {axis!r}")
    if axis != -1:
        raise ValueError(
            f"axis must be -1 (the last axis: features, or channels of NHWC images) for "
            f"{layer}, got {axis}"
        )
    return -1


def _flag(value, arg):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


class BatchNormalization(Layer):
    """Normalises the last axis with batch statistics while training and moving averages
    of them at inference (Keras semantics).

    In training: batch mean and biased variance, ``out = gamma * (x - mean) /
    sqrt(var + epsilon) + beta`` and ``moving = moving * momentum + batch * (1 - momentum)``
    (PyTorch's ``BatchNorm1d(momentum=1 - momentum, eps=epsilon)``, except that PyTorch
    keeps the unbiased variance).  ``evaluate`` and ``predict`` use the moving statistics.
    Weights, in get_weights order: gamma, beta (trainable, when ``scale`` / ``center``),
    moving_mean, moving_variance (non-trainable).

    Parameters
    ----------
    axis : int
        Only -1 (the last axis).
    momentum : float
        In [0, 1): weight of the old moving statistics.
    epsilon : float
        > 0, added to the variance.
    center, scale : bool
        Learn beta (offset) / gamma (scale).
    beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer
        Initializer names or callables(shape, rng).
    """

    kind = codes.BATCHNORM

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        name: str | None = None,
        input_shape=None,
    ):
        super().__init__(name, input_shape=input_shape)
        self.axis = _last_axis_only(axis, "BatchNormalization")
        self.momentum = number(momentum, "momentum", 0.0, 1.0)
        self.epsilon = number(epsilon, "epsilon", 0.0, low_open=True)
        self.center = _flag(center, "center")
        self.scale = _flag(scale, "scale")
        names = (beta_initializer, gamma_initializer, moving_mean_initializer,
                 moving_variance_initializer)  # fmt: skip
        args = ("beta_initializer", "gamma_initializer", "moving_mean_initializer",
                "moving_variance_initializer")  # fmt: skip
        self._inits = {a: initializers.get(n, a) for a, n in zip(args, names)}
        self._init_names = {a: initializers.config_name(n) for a, n in zip(args, names)}

    def weight_specs(self):
        c = (self.input_shape[-1],)
        specs = []
        if self.scale:
            specs.append(WeightSpec("gamma", c, self._inits["gamma_initializer"], codes.P_W0))
        if self.center:
            specs.append(WeightSpec("beta", c, self._inits["beta_initializer"], codes.P_W1))
        specs.append(WeightSpec("moving_mean", c, self._inits["moving_mean_initializer"],
                                codes.P_S0, trainable=False))  # fmt: skip
        specs.append(WeightSpec("moving_variance", c, self._inits["moving_variance_initializer"],
                                codes.P_S1, trainable=False))  # fmt: skip
        return specs

    def plan_fields(self):
        floats = {codes.F_MOMENTUM: self.momentum, codes.F_EPSILON: self.epsilon}
        return codes.LINEAR, floats, {codes.P_FROZEN: int(not self.trainable)}

    def workspace(self, rows):
        c = self.input_shape[-1]
        return 2 * c, 2 * c  # saved [mean, inv_std]; float64 sums

    def get_config(self):
        config = {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
        config.update(self._init_names)
        return config

    # -- low-level API ----------------------------------------------------------------
    def _weight(self, name):
        return self._values.get(name, np.empty(0, self.dtype))

    def _grad(self, name):
        return self._grads.get(name, np.empty(0, self.dtype))

    def _alloc(self, n):
        buf = super()._alloc(n)
        c = self.input_shape[-1]
        buf["saved"] = np.empty((2, c), self.dtype)
        buf["acc"] = np.empty((2, c), np.float64)
        return buf

    def forward(self, x, training=False):
        """Normalises ``x``: with batch statistics (and updating the moving ones) when
        ``training`` and the layer is trainable; with the moving statistics otherwise (a
        frozen layer runs in inference mode, as in Keras)."""
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        rows, c = self._rows(self.input_shape, x.shape[0])
        training = _check_bool(training, "training") and self.trainable
        self._kernels.batchnorm_forward(
            x.reshape(rows, c), self._weight("gamma"), self._weight("beta"),
            self._values["moving_mean"], self._values["moving_variance"], buf["saved"],
            buf["out"].reshape(rows, c), buf["acc"], int(training), self.momentum,
            self.epsilon,
        )  # fmt: skip
        self._x, self._trained = x, training
        return buf["out"]

    def backward(self, dout):
        """dL/dx for ``dout`` = dL/d(output) of the last forward; after a training forward
        also the gradients of gamma and beta (:attr:`grads`).  A frozen layer's gradient
        is that of inference mode, ``dout * gamma / sqrt(moving_variance + epsilon)``,
        and its weights get none."""
        dout = self._check_dout(dout)
        n = self._x.shape[0]
        buf = self._cache[n]
        rows, c = self._rows(self.input_shape, n)
        if not self._trained and not self.trainable:
            self._kernels.batchnorm_inference_backward(
                self._weight("gamma"), buf["saved"], dout.reshape(rows, c),
                buf["dx"].reshape(rows, c),
            )  # fmt: skip
            return buf["dx"]
        if not self._trained:
            raise RuntimeError(
                f"layer {self.name!r}: backward() follows forward(x, training=True) (the "
                "gradient through batch statistics), or the layer is frozen "
                "(trainable = False: the gradient of inference mode)"
            )
        self._kernels.batchnorm_backward(
            self._x.reshape(rows, c), self._weight("gamma"), buf["saved"],
            dout.reshape(rows, c), buf["dx"].reshape(rows, c), self._grad("gamma"),
            self._grad("beta"), buf["acc"], 1,
        )  # fmt: skip
        return buf["dx"]


def _values(value, arg) -> np.ndarray:
    """A statistic given as a number (Keras takes scalars) or an array, as float64 (k,)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = [value]
    return np.asarray(as_array(value, arg), dtype=np.float64).reshape(-1)


class Normalization(Layer):
    """Standardises the last axis with fixed statistics: ``(x - mean) / max(sqrt(variance),
    1e-7)`` (Keras' Normalization).  The statistics come from :meth:`adapt` (or from
    ``mean`` and ``variance``); they are non-trainable weights, saved with the model, so
    ``predict`` takes raw features.

    Parameters
    ----------
    axis : int
        Only -1 (the last axis).
    mean, variance : array-like, optional
        Fixed statistics (broadcast to the last axis); without them, zeros and ones until
        :meth:`adapt` is called.
    """

    kind = codes.NORMALIZATION

    def __init__(self, axis: int = -1, mean=None, variance=None, name: str | None = None,
                 input_shape=None):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        self.axis = _last_axis_only(axis, "Normalization")
        if (mean is None) != (variance is None):
            raise ValueError("give both mean and variance, or neither (then call adapt())")
        self._given = None
        if mean is not None:
            mean, variance = _values(mean, "mean"), _values(variance, "variance")
            check_finite(mean, "mean")
            check_finite(variance, "variance")
            if variance.size and variance.min() < 0:
                raise ValueError(f"variance must be >= 0, got a minimum of {variance.min()}")
            self._given = (mean, variance)

    def _check_input_shape(self, shape):
        if self._given is not None:
            c = shape[-1]
            for arg, value in zip(("mean", "variance"), self._given):
                if value.size not in (1, c):
                    raise ValueError(
                        f"{arg} must have 1 or {c} values (the last axis of the input), got "
                        f"{value.size}"
                    )

    def _statistic(self, index, default):
        def init(shape, rng):
            if self._given is None:
                return np.full(shape, default, dtype=np.float64)
            return np.broadcast_to(self._given[index], shape).copy()

        return init

    def weight_specs(self):
        c = (self.input_shape[-1],)
        return [
            WeightSpec("mean", c, self._statistic(0, 0.0), codes.P_S0, trainable=False),
            WeightSpec("variance", c, self._statistic(1, 1.0), codes.P_S1, trainable=False),
        ]

    def get_config(self):
        config = {**super().get_config(), "axis": self.axis}
        if self._given is not None:
            config["mean"], config["variance"] = (v.tolist() for v in self._given)
        return config

    def adapt(self, data, batch_size=None) -> None:
        """Computes the mean and (biased) variance of each feature of ``data`` (N, ...) over
        every axis but the last, in float64, and stores them in the layer (also inside a
        built model)."""
        x = as_array(data, "data")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"data must have shape (N, features...) with N >= 1, got {x.shape}")
        x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
        check_finite(x64, "data")
        if not self.built:
            self.build(x.shape[1:], self.dtype)
        elif tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"data must have samples of shape {self.input_shape}, got {x.shape[1:]}"
            )
        self._edit_weights(lambda: self._store_statistics(x64))

    def _store_statistics(self, x64):
        self._values["mean"][...] = x64.mean(axis=0)
        self._values["variance"][...] = x64.var(axis=0)

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        rows, c = self._rows(self.input_shape, x.shape[0])
        self._kernels.normalization_forward(x.reshape(rows, c), self._values["mean"],
                                            self._values["variance"],
                                            buf["out"].reshape(rows, c))  # fmt: skip
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        rows, c = self._rows(self.input_shape, dout.shape[0])
        self._kernels.normalization_backward(self._values["variance"], dout.reshape(rows, c),
                                             buf["dx"].reshape(rows, c))  # fmt: skip
        return buf["dx"]
