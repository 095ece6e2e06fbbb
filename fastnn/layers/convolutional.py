"""Conv2D on channels-last images (N, H, W, C), as Keras: an im2col of the batch and one
GEMM per layer in the compiled engine (see ``docs/adding_a_layer_kind.md``)."""

from __future__ import annotations

import numpy as np

from .. import activations, initializers, regularizers
from ..kernels import codes
from .base import Layer, WeightSpec, number, positive_int

PADDINGS = ("valid", "same")


def pair(value, arg: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= 1, or an error naming ``arg``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{arg} must be an int or a pair of ints, got {tuple(value)}")
        return positive_int(value[0], f"{arg}[0]"), positive_int(value[1], f"{arg}[1]")
    v = positive_int(value, arg)
    return v, v


def padding_mode(value) -> str:
    """'valid' or 'same' (any case), or a ValueError/TypeError naming ``padding``."""
    if not isinstance(value, str):
        raise TypeError(f"padding must be 'valid' or 'same', got {type(value).__name__} {value!r}")
    if value.lower() not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {value!r}")
    return value.lower()


def channels_last(data_format) -> None:
    if data_format not in (None, "channels_last"):
        raise ValueError(
            f"data_format must be 'channels_last' (fastnn runs NHWC images), got {data_format!r}"
        )


def output_size(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) along one axis, as TensorFlow/Keras: 'valid' keeps the
    windows inside; 'same' gives ceil(size / stride) outputs, padding the odd extra
    row/column after the input."""
    if padding == "valid":
        return (size - window) // stride + 1 if size >= window else 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2


def window_geometry(layer, input_shape, window, strides, padding):
    """((out_h, out_w), (pad_top, pad_left)) of a windowed layer on (H, W, C) samples, or a
    ValueError naming the layer when the input is not an image or the output is empty."""
    if len(input_shape) != 3:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) takes images of shape "
            f"(height, width, channels), got samples of shape {tuple(input_shape)}; add the "
            "channel axis (x[..., None]) for one-channel images"
        )
    (oh, pt), (ow, pl) = (
        output_size(input_shape[i], window[i], strides[i], padding) for i in (0, 1)
    )
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}): a window of {window} with strides "
            f"{strides} and padding={padding!r} on inputs of shape {tuple(input_shape)} "
            f"gives an output of {oh}x{ow}; use a smaller window or padding='same'"
        )
    return (oh, ow), (pt, pl)


def window_args(window, strides, pads) -> dict:
    """The plan's per-kind ints of a windowed layer (codes.P_KH ... P_PAD_LEFT)."""
    return {
        codes.P_KH: window[0], codes.P_KW: window[1], codes.P_SH: strides[0],
        codes.P_SW: strides[1], codes.P_PAD_TOP: pads[0], codes.P_PAD_LEFT: pads[1],
    }  # fmt: skip


class Conv2D(Layer):
    """2-D convolution over channels-last images: ``act(conv(x, kernel) + bias)``.

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size : int or (int, int)
        Window (height, width).
    strides : int or (int, int)
        Steps of the window (Keras' default 1).
    padding : {'valid', 'same'}
        'same' pads as TensorFlow: the odd extra row/column goes at the bottom/right.
    activation : str or None
        As Dense (None: linear).
    use_bias : bool
        Learn a bias per filter.
    kernel_initializer, bias_initializer : str or callable(shape, rng)
        Keras names; glorot fans come from the receptive field (kh * kw * channels).
    kernel_regularizer : str, fastnn.regularizers.L1L2 or None
        Penalty on the kernel added to the loss.
    input_shape : tuple, optional
        (height, width, channels), for the first layer of a model.

    Weights, in get_weights order: kernel (kh, kw, in_channels, filters), bias (filters,).
    """

    kind = codes.CONV2D

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding: str = "valid",
                 data_format=None, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, alpha: float = activations.LEAKY_RELU_SLOPE,
                 name: str | None = None, input_shape=None):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = padding_mode(padding)
        channels_last(data_format)
        self.act = activations.code_of(activation)
        self.activation = "linear" if activation is None else activation.strip().lower()
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"use_bias must be True or False, got {use_bias!r}")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._init_names = (kernel_initializer, bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.alpha = number(alpha, "alpha", low=0.0)

    def _check_input_shape(self, shape):
        self._geometry = window_geometry(self, shape, self.kernel_size, self.strides,
                                         self.padding)  # fmt: skip

    def compute_output_shape(self, input_shape):
        (oh, ow), _ = window_geometry(self, input_shape, self.kernel_size, self.strides,
                                      self.padding)  # fmt: skip
        return oh, ow, self.filters

    @property
    def _columns(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.input_shape[-1]

    def weight_specs(self):
        kshape = (*self.kernel_size, self.input_shape[-1], self.filters)
        specs = [WeightSpec("kernel", kshape, self.kernel_initializer, codes.P_W0,
                            regularizer=self.kernel_regularizer)]  # fmt: skip
        if self.use_bias:
            specs.append(WeightSpec("bias", (self.filters,), self.bias_initializer, codes.P_W1))
        return specs

    def plan_fields(self):
        reg = self.kernel_regularizer or regularizers.L1L2()
        floats = {codes.F_ALPHA: self.alpha, codes.F_L1: reg.l1, codes.F_L2: reg.l2}
        return self.act, floats, window_args(self.kernel_size, self.strides, self._geometry[1])

    def workspace(self, rows):
        (oh, ow), _ = self._geometry
        return rows * oh * ow * self._columns, 0  # the im2col columns

    def get_config(self):
        init = [initializers.config_name(n) for n in self._init_names]
        reg = self.kernel_regularizer.get_config() if self.kernel_regularizer else None
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": init[0],
            "bias_initializer": init[1],
            "kernel_regularizer": reg,
            "alpha": self.alpha,
        }

    # -- low-level API ----------------------------------------------------------------
    def _bias(self, values):
        return values.get("bias", np.empty(0, self.dtype))

    def _alloc(self, n):
        buf = super()._alloc(n)
        (oh, ow), _ = self._geometry
        buf["cols"] = np.empty((n * oh * ow, self._columns), self.dtype)
        buf["dz"] = np.empty((n, *self.output_shape), self.dtype)
        return buf

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        pads = self._geometry[1]
        self._kernels.conv2d_forward(x, self._values["kernel"], self._bias(self._values),
                                     buf["cols"], buf["out"], self.act, self.alpha,
                                     *self.strides, *pads)  # fmt: skip
        self._x = x
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._x.shape[0]]
        pads = self._geometry[1]
        self._kernels.conv2d_backward(
            self._x, self._values["kernel"], buf["out"], dout, buf["cols"], buf["dz"], buf["dx"],
            self._grads["kernel"], self._bias(self._grads), self.act, self.alpha,
            *self.strides, *pads, 1,
        )  # fmt: skip
        reg = self.kernel_regularizer
        if reg is not None:
            self._kernels.l1l2_penalty(self._values["kernel"], self._grads["kernel"],
                                       float(reg.l1), float(reg.l2))  # fmt: skip
        return buf["dx"]

    def penalty(self) -> float:
        """The kernel regulariser's penalty for the current weights (0 without one)."""
        reg, w = self.kernel_regularizer, self._values.get("kernel")
        if reg is None:
            return 0.0
        squares = float(np.square(w, dtype=np.float64).sum())
        return reg.l1 * float(np.abs(w).sum()) + reg.l2 * squares
