"""Pooling over channels-last images (N, H, W, C), as Keras: max and average pooling over
windows, and their global forms (one window over the whole image, output (C,))."""

from __future__ import annotations

import numpy as np

from ..kernels import codes
from .base import Layer
from .convolutional import channels_last, padding_mode, pair, window_args, window_geometry


class _Pooling2D(Layer):
    """A window that slides over each channel; subclasses set ``kind``."""

    def __init__(self, pool_size=(2, 2), strides=None, padding: str = "valid", data_format=None,
                 name: str | None = None, input_shape=None):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")
        self.padding = padding_mode(padding)
        channels_last(data_format)

    def _window(self, input_shape):
        return window_geometry(self, input_shape, self.pool_size, self.strides, self.padding)

    def _check_input_shape(self, shape):
        self._geometry = self._window(shape)

    def compute_output_shape(self, input_shape):
        (oh, ow), _ = self._window(input_shape)
        return oh, ow, input_shape[-1]

    def plan_fields(self):
        return codes.LINEAR, {}, window_args(self.pool_size, self.strides, self._geometry[1])

    def _args(self):
        return (*self.pool_size, *self.strides, *self._geometry[1])

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


class MaxPooling2D(_Pooling2D):
    """The maximum of each window of each channel (padding='same': over the window's
    positions inside the image).  The position of each maximum is kept for the backward.

    Parameters
    ----------
    pool_size : int or (int, int)
        Window (height, width).
    strides : int, (int, int) or None
        Steps of the window; None: ``pool_size``.
    padding : {'valid', 'same'}
        As Conv2D.
    """

    kind = codes.MAXPOOL2D

    def workspace(self, rows):
        (oh, ow), _ = self._geometry
        return rows * oh * ow * self.input_shape[-1], 0  # argmax positions

    def _alloc(self, n):
        buf = super()._alloc(n)
        buf["argmax"] = np.empty((n, *self.output_shape), self.dtype)
        return buf

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.maxpool2d_forward(x, buf["argmax"], buf["out"], *self._args())
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        self._kernels.maxpool2d_backward(buf["argmax"], dout, buf["dx"], *self._args())
        return buf["dx"]


class AveragePooling2D(_Pooling2D):
    """The mean of each window of each channel (padding='same': over the window's
    positions inside the image, as Keras/TensorFlow).

    Parameters
    ----------
    pool_size, strides, padding
        As MaxPooling2D.
    """

    kind = codes.AVGPOOL2D

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.avgpool2d_forward(x, buf["out"], *self._args())
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        self._kernels.avgpool2d_backward(dout, buf["dx"], *self._args())
        return buf["dx"]


class _GlobalPooling2D(_Pooling2D):
    """One window over the whole image: output (channels,)."""

    def __init__(self, data_format=None, keepdims: bool = False, name: str | None = None,
                 input_shape=None):  # fmt: skip
        super().__init__(name=name, input_shape=input_shape, data_format=data_format)
        if keepdims is not False:
            raise ValueError(f"keepdims must be False (outputs of shape (channels,)), got "
                             f"{keepdims!r}")  # fmt: skip

    def _window(self, input_shape):
        self.pool_size = tuple(input_shape[:2]) if len(input_shape) == 3 else (1, 1)
        self.strides = (1, 1)
        return window_geometry(self, input_shape, self.pool_size, self.strides, "valid")

    def compute_output_shape(self, input_shape):
        self._window(input_shape)
        return (input_shape[-1],)

    def get_config(self):
        return Layer.get_config(self)

    def _image(self, a):
        return a.reshape(a.shape[0], 1, 1, self.input_shape[-1])


class GlobalAveragePooling2D(_GlobalPooling2D):
    """The mean over height and width of each channel: (H, W, C) -> (C,)."""

    kind = codes.GLOBAL_AVGPOOL2D

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.avgpool2d_forward(x, self._image(buf["out"]), *self._args())
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        self._kernels.avgpool2d_backward(self._image(dout), buf["dx"], *self._args())
        return buf["dx"]


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum over height and width of each channel: (H, W, C) -> (C,)."""

    kind = codes.GLOBAL_MAXPOOL2D

    def workspace(self, rows):
        return rows * self.input_shape[-1], 0  # argmax positions

    def _alloc(self, n):
        buf = super()._alloc(n)
        buf["argmax"] = np.empty((n, 1, 1, self.input_shape[-1]), self.dtype)
        return buf

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        self._kernels.maxpool2d_forward(x, buf["argmax"], self._image(buf["out"]), *self._args())
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._last_batch()]
        self._kernels.maxpool2d_backward(buf["argmax"], self._image(dout), buf["dx"],
                                         *self._args())  # fmt: skip
        return buf["dx"]
