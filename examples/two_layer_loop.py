"""Fit y = sin(3x) with two Dense layers in a hand-written loop, each layer stepped alone.

Dense(16, tanh) -> Dense(1), Adam.  The optimizer keeps its state per parameter array (as
PyTorch does): each layer's kernel and bias have their own moments and their own step
count, so calling ``opt.step`` once per layer gives exactly the updates of one call over
all the weights.  The script trains both ways and prints the largest difference (0).

    python examples/two_layer_loop.py [--smoke]
"""

from __future__ import annotations

import numpy as np
from _common import parser

import fastnn
from fastnn.layers import Dense
from fastnn.losses import MeanSquaredError
from fastnn.optimizers import Adam


def train(x, y, epochs, per_layer, batch_size=32):
    """Trains a fresh Dense(16, tanh) -> Dense(1) on (x, y); returns its two layers."""
    hidden = Dense(16, activation="tanh").build(1, "float32", np.random.default_rng(1))
    out = Dense(1).build(16, "float32", np.random.default_rng(2))
    loss_fn = MeanSquaredError()
    opt = Adam(learning_rate=0.01)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            pred = out.forward(hidden.forward(x[rows], training=True), training=True)
            hidden.backward(out.backward(loss_fn.gradient(y[rows], pred)))
            if per_layer:
                # each call updates one layer; the state of the other layer is untouched
                opt.step(hidden.weights, hidden.grads)
                opt.step(out.weights, out.grads)
            else:
                opt.step(hidden.weights + out.weights, hidden.grads + out.grads)
    return hidden, out


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.backend:
        fastnn.set_backend(args.backend)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(512, 1)).astype(np.float32)
    y = np.sin(3 * x).astype(np.float32)
    epochs = 30 if args.smoke else 200

    hidden, out = train(x, y, epochs, per_layer=True)
    mse = float(np.mean((out.forward(hidden.forward(x)) - y) ** 2))
    print(f"two layers stepped separately, {epochs} epochs: train MSE {mse:.5f}")

    hidden2, out2 = train(x, y, epochs, per_layer=False)
    diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(hidden.weights + out.weights, hidden2.weights + out2.weights)
    )
    print(f"max weight difference vs one step call: {diff}")
    return mse, diff


if __name__ == "__main__":
    main()
