"""Recurrent layers: SimpleRNN, LSTM and GRU (Keras 3's arguments and weight layouts).

Each reads sequences (N, T, F) from zero initial states and returns the last hidden state
(N, U), or every hidden state (N, T, U) with ``return_sequences=True`` (to stack another
recurrent layer, or a Dense on the last axis).  Weights, in get_weights order: kernel
(F, G), recurrent_kernel (U, G), bias (G,) (GRU: (2, G), the input then the recurrent
bias), with G = U (SimpleRNN), 4U (LSTM gates i, f, c, o) or 3U (GRU gates z, r, h).
"""

from __future__ import annotations

import numpy as np

from .. import activations, initializers
from ..kernels import codes, reference
from .base import Layer, WeightSpec, positive_int

#: Activations a recurrent layer can apply (derivatives computed from their output).
_RNN_ACTS = ("linear", "relu", "sigmoid", "tanh")


def _act_code(name, arg):
    if not isinstance(name, str) or name.strip().lower() not in _RNN_ACTS:
        raise ValueError(f"{arg} must be one of {list(_RNN_ACTS)}, got {name!r}")
    return activations.code_of(name.strip().lower(), arg)


def _flag(value, arg):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


class _Recurrent(Layer):
    """Shared protocol of the recurrent kinds (``gates`` per unit)."""

    gates = 1

    def __init__(self, units, activation, recurrent_activation, return_sequences,
                 kernel_initializer, recurrent_initializer, bias_initializer, name,
                 input_shape):  # fmt: skip
        super().__init__(name, input_shape=input_shape)
        self.units = positive_int(units, "units")
        self.activation = activation
        self.act = _act_code(activation, "activation")
        self.recurrent_activation = recurrent_activation
        self.rec_act = _act_code(recurrent_activation, "recurrent_activation")
        self.return_sequences = _flag(return_sequences, "return_sequences")
        inits = {"kernel_initializer": kernel_initializer,
                 "recurrent_initializer": recurrent_initializer,
                 "bias_initializer": bias_initializer}  # fmt: skip
        self._inits = {a: initializers.get(v, a) for a, v in inits.items()}
        self._init_names = {a: initializers.config_name(v) for a, v in inits.items()}

    def _check_input_shape(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"{type(self).__name__} takes sequences of shape (N, timesteps, features), got "
                f"samples of shape {shape}"
            )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_init(self):
        return self._inits["bias_initializer"]

    def weight_specs(self):
        f, u, g = self.input_shape[-1], self.units, self.gates * self.units
        return [
            WeightSpec("kernel", (f, g), self._inits["kernel_initializer"], codes.P_W0),
            WeightSpec(
                "recurrent_kernel", (u, g), self._inits["recurrent_initializer"], codes.P_W1
            ),  # fmt: skip
            WeightSpec("bias", self._bias_shape(), self._bias_init(), codes.P_W2),
        ]

    def plan_fields(self):
        ints = {codes.P_RETURN_SEQ: int(self.return_sequences), codes.P_UNITS: self.units,
                codes.P_REC_ACT: self.rec_act}  # fmt: skip
        return self.act, {}, ints

    def workspace(self, rows):
        t, f = self.input_shape
        return reference.rnn_workspace_size(self.kind, rows, t, f, self.units), 0

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "return_sequences": self.return_sequences, **self._init_names}  # fmt: skip

    # -- low-level API ----------------------------------------------------------------
    def _kernel(self, name):
        return getattr(self._kernels, name, None) or getattr(reference, name)

    def _alloc(self, n):
        buf = super()._alloc(n)
        t, f = self.input_shape
        size = reference.rnn_workspace_size(self.kind, n, t, f, self.units)
        buf["ws"] = np.empty(size, self.dtype)
        return buf

    def _weights3(self, values):
        g = self.gates * self.units
        return values["kernel"], values["recurrent_kernel"], values["bias"].reshape(-1, g)

    def forward(self, x, training=False):
        x = self._check_input(x)
        buf = self._buffers(x.shape[0])
        w, r, b = self._weights3(self._values)
        out = buf["out"].reshape(x.shape[0], -1, self.units)
        self._kernel("rnn_forward")(self.kind, x, w, r, b, out, buf["ws"], self.act,
                                    self.rec_act, int(self.return_sequences))  # fmt: skip
        self._x = x
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        buf = self._cache[self._x.shape[0]]
        w, r, _ = self._weights3(self._values)
        dw, dr, db = self._weights3(self._grads)
        g = dout.reshape(dout.shape[0], -1, self.units)
        self._kernel("rnn_backward")(self.kind, self._x, w, r, g, buf["dx"], dw, dr, db,
                                     buf["ws"], self.act, self.rec_act,
                                     int(self.return_sequences), 1)  # fmt: skip
        return buf["dx"]


class SimpleRNN(_Recurrent):
    """``h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)``.

    Parameters
    ----------
    units : int
        Hidden state width U.
    activation : str
        tanh (default), relu, sigmoid or linear.
    return_sequences : bool
        Return every hidden state (N, T, U) rather than the last one (N, U).  This and the
        arguments after it are keyword-only (Keras's positional order puts ``use_bias``
        here, which fastnn does not take).
    kernel_initializer, recurrent_initializer, bias_initializer : str or callable
        Keras's defaults: glorot_uniform, orthogonal, zeros.
    """

    kind = codes.SIMPLE_RNN

    def __init__(self, units: int, activation: str = "tanh", *, return_sequences: bool = False,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", name: str | None = None,
                 input_shape=None):  # fmt: skip
        super().__init__(units, activation, "sigmoid", return_sequences, kernel_initializer,
                         recurrent_initializer, bias_initializer, name, input_shape)  # fmt: skip


class LSTM(_Recurrent):
    """Long short-term memory (Keras's gates i, f, c, o in the kernel columns)::

        i, f, o = recurrent_activation(z_i), (z_f), (z_o);  g = activation(z_c)
        c_t = f * c_{t-1} + i * g;  h_t = o * activation(c_t)

    with ``z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias`` (PyTorch's nn.LSTM has the
    same gate order, with two biases that sum to this one).

    Parameters
    ----------
    units : int
        Hidden state width U.
    activation, recurrent_activation : str
        tanh and sigmoid by default (each one of tanh, sigmoid, relu, linear).
    return_sequences : bool
        Return every hidden state (N, T, U) rather than the last one (N, U).
    unit_forget_bias : bool
        Start the forget gate's bias at 1 (Keras's default).
    kernel_initializer, recurrent_initializer, bias_initializer : str or callable
        Keras's defaults: glorot_uniform, orthogonal, zeros.
    """

    kind = codes.LSTM
    gates = 4

    def __init__(self, units: int, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", *, return_sequences: bool = False,
                 unit_forget_bias: bool = True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 name: str | None = None, input_shape=None):  # fmt: skip
        super().__init__(units, activation, recurrent_activation, return_sequences,
                         kernel_initializer, recurrent_initializer, bias_initializer, name,
                         input_shape)  # fmt: skip
        self.unit_forget_bias = _flag(unit_forget_bias, "unit_forget_bias")

    def _bias_init(self):
        base, u, forget = self._inits["bias_initializer"], self.units, self.unit_forget_bias

        def init(shape, rng):
            b = np.array(base(shape, rng), dtype=np.float64)
            if forget:
                b[u : 2 * u] = 1.0
            return b

        return init

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation,
                "unit_forget_bias": self.unit_forget_bias}  # fmt: skip


class GRU(_Recurrent):
    """Gated recurrent unit, Keras 3's default formulation (``reset_after=True``; gates z,
    r, h in the kernel columns; bias (2, 3U): input bias, recurrent bias)::

        z, r = recurrent_activation(x_t W_z + b_z + h R_z + rb_z), (... r ...)
        h_cand = activation(x_t W_h + b_h + r * (h R_h + rb_h))
        h_t = z * h_{t-1} + (1 - z) * h_cand

    (PyTorch's nn.GRU computes the same with gates in the order r, z, n.)

    Parameters
    ----------
    units : int
        Hidden state width U.
    activation, recurrent_activation : str
        tanh and sigmoid by default (each one of tanh, sigmoid, relu, linear).
    return_sequences : bool
        Return every hidden state (N, T, U) rather than the last one (N, U).
    reset_after : bool
        Only True (Keras 3's default) is supported.
    kernel_initializer, recurrent_initializer, bias_initializer : str or callable
        Keras's defaults: glorot_uniform, orthogonal, zeros.
    """

    kind = codes.GRU
    gates = 3

    def __init__(self, units: int, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", *, return_sequences: bool = False,
                 reset_after: bool = True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 name: str | None = None, input_shape=None):  # fmt: skip
        super().__init__(units, activation, recurrent_activation, return_sequences,
                         kernel_initializer, recurrent_initializer, bias_initializer, name,
                         input_shape)  # fmt: skip
        if not _flag(reset_after, "reset_after"):
            raise ValueError(
                "reset_after must be True (Keras 3's default GRU, as PyTorch's nn.GRU); "
                "reset_after=False is not supported, got False"
            )
        self.reset_after = True

    def _bias_shape(self):
        return (2, 3 * self.units)

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation,
                "reset_after": True}  # fmt: skip
