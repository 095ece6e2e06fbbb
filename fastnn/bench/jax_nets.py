"""JAX baselines of the convolutional and recurrent benchmark networks (``fastnn bench
--baselines jax``, only where JAX is installed; it is not a dependency).

Each trains the same network as fastnn from the same Keras-layout weights: the forward,
the loss, the gradients and Adam (PyTorch's formula, as every other implementation) in one
``jax.jit``-compiled step with donated buffers, as a JAX user writes a training step.
Convolutions run on NHWC images with HWIO kernels (``lax.conv_general_dilated``, TensorFlow
padding), so the Keras weights need no conversion; the recurrent cells follow Keras's gate
orders (LSTM i, f, c, o; GRU z, r, h with ``reset_after``) under ``lax.scan``.
"""

from __future__ import annotations

import numpy as np

from .baselines import jax_adam, step_epoch
from .cnn import CNNS, IMAGE
from .rnn import RNN_NETWORKS


class _JaxAdamNet:
    """Shared by the JAX baselines: params as a list of arrays, ``loss_fn(params, x, y)``
    built by the subclass, one jitted step of value_and_grad and Adam."""

    name = "jax"

    def _compile(self, weights, loss_fn) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.params = [jnp.asarray(w) for w in weights]
        self.m = [jnp.zeros_like(p) for p in self.params]
        self.v = [jnp.zeros_like(p) for p in self.params]
        self.t = jnp.zeros((), jnp.float32)

        def step(params, m, v, t, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            return (*jax_adam(jnp, params, m, v, t, grads), loss)

        self._step = jax.jit(step, donate_argnums=(0, 1, 2))

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self.params]

    def train_step(self, x, y) -> float:
        self.params, self.m, self.v, self.t, loss = self._step(
            self.params, self.m, self.v, self.t, x, y
        )
        return float(loss)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


def _sparse_ce(jax, jnp, logits, y):
    logp = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


class JaxCNN(_JaxAdamNet):
    """A network of ``fastnn.bench.cnn.CNNS`` in JAX (rows of 784 viewed as NHWC images)."""

    def __init__(self, net: str, weights):
        import jax
        import jax.numpy as jnp

        layers, _ = CNNS[net]

        def forward(params, x):
            h, k = x.reshape(x.shape[0], *IMAGE), 0
            for i, layer in enumerate(layers):
                if layer[0] == "conv":
                    h = jax.lax.conv_general_dilated(
                        h, params[k], (1, 1), layer[3].upper(),
                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    )  # fmt: skip
                    h, k = jnp.maximum(h + params[k + 1], 0), k + 2
                elif layer[0] == "pool":
                    p = layer[1]
                    h = jax.lax.reduce_window(
                        h, -jnp.inf, jax.lax.max, (1, p, p, 1), (1, p, p, 1), "VALID"
                    )
                elif layer[0] == "flatten":
                    h = h.reshape(h.shape[0], -1)
                else:
                    h, k = h @ params[k] + params[k + 1], k + 2
                    if i < len(layers) - 1:
                        h = jnp.maximum(h, 0)
            return h

        self._compile(weights, lambda p, x, y: _sparse_ce(jax, jnp, forward(p, x), y))


def _lstm_cell(jax, jnp, r, u):
    def cell(carry, zx):
        h, c = carry
        z = zx + h @ r
        i, f = jax.nn.sigmoid(z[:, :u]), jax.nn.sigmoid(z[:, u : 2 * u])
        g, o = jnp.tanh(z[:, 2 * u : 3 * u]), jax.nn.sigmoid(z[:, 3 * u :])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), None

    return cell


def _gru_cell(jax, jnp, r, b_rec, u):
    def cell(carry, zx):
        h = carry[0]
        zh = h @ r + b_rec
        z = jax.nn.sigmoid(zx[:, :u] + zh[:, :u])
        rr = jax.nn.sigmoid(zx[:, u : 2 * u] + zh[:, u : 2 * u])
        cand = jnp.tanh(zx[:, 2 * u :] + rr * zh[:, 2 * u :])
        return (z * h + (1 - z) * cand, carry[1]), None

    return cell


class JaxRNN(_JaxAdamNet):
    """A network of ``fastnn.bench.rnn.RNN_NETWORKS`` in JAX: [Embedding ->] LSTM/GRU (the
    last step's output) -> Dense; softmax cross-entropy on labels, or sigmoid binary
    cross-entropy on (N, 1) targets after an Embedding."""

    def __init__(self, name: str, weights):
        import jax
        import jax.numpy as jnp

        cell, _, _, u, _, _, vocab = RNN_NETWORKS[name]
        k = int(vocab is not None)

        def forward(params, x):
            w, r, b, wd, bd = params[k:]
            h = jnp.take(params[0], x, axis=0) if k else x
            n = h.shape[0]
            b_in = b if cell == "lstm" else b[0]
            zx = jnp.swapaxes(h @ w + b_in, 0, 1)  # (T, N, gates * U): every input at once
            zeros = jnp.zeros((n, u), h.dtype)
            if cell == "lstm":
                step = _lstm_cell(jax, jnp, r, u)
            else:
                step = _gru_cell(jax, jnp, r, b[1], u)
            (last, _), _ = jax.lax.scan(step, (zeros, zeros), zx)
            return last @ wd + bd

        def loss_fn(params, x, y):
            z = forward(params, x)
            if k:  # sigmoid + binary cross-entropy on logits
                return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))
            return _sparse_ce(jax, jnp, z, y)

        self._compile(weights, loss_fn)
