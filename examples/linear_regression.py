"""Fit y = 2x + 1 with a hand-written training loop on fastnn's low-level API.

The TensorFlow "first regression" tutorial, without Sequential.fit: one Dense(1) layer's
forward and backward, the loss gradient from MeanSquaredError().gradient and the
optimizer's step, all written out.

    python examples/linear_regression.py [--smoke] [--plot linear_regression.png]
"""

from __future__ import annotations

import numpy as np
from _common import parser

import fastnn
from fastnn.layers import Dense
from fastnn.losses import MeanSquaredError
from fastnn.optimizers import SGD


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--plot", default="linear_regression.png", help="scatter plot path ('' for none)"
    )
    args = p.parse_args(argv)
    if args.backend:
        fastnn.set_backend(args.backend)

    (x_train, y_train), (x_test, y_test) = fastnn.datasets.make_linear_regression(
        n_samples=1000, noise=0.1, seed=0
    )
    y_train = y_train.reshape(-1, 1)

    layer = Dense(1, input_dim=1)
    layer.build(1, "float32", np.random.default_rng(0))
    loss_fn = MeanSquaredError()
    optimizer = SGD(learning_rate=0.1)
    epochs = 10 if args.smoke else 40
    batch_size = 32
    rng = np.random.default_rng(0)

    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            xb, yb = x_train[rows], y_train[rows]
            pred = layer.forward(xb, training=True)  # (B, 1) = x @ kernel + bias
            total += loss_fn(yb, pred) * len(rows)
            dpred = loss_fn.gradient(yb, pred)  # dL/dpred, averaged over B
            layer.backward(dpred)  # fills layer.grads
            optimizer.step(layer.weights, layer.grads)  # kernel, bias -= lr * grads
        if epoch % 5 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}: train loss {total / len(order):.5f}")

    kernel, bias = (float(w.ravel()[0]) for w in layer.weights)
    pred = layer.forward(x_test).ravel().copy()
    true_line = 2 * x_test.ravel() + 1
    mse_line = float(np.mean((pred - true_line) ** 2))
    print(f"learned: y = {kernel:.4f} x + {bias:.4f}   (true: y = 2 x + 1)")
    print(f"test MSE vs data: {float(np.mean((pred - y_test) ** 2)):.5f}")
    print(f"MSE vs true line: {mse_line:.6f}")

    if args.plot:
        from fastnn import plot

        if plot.available():
            plot.predictions(x_test, y_test, pred, args.plot, title="y = 2x + 1", true_line=(2, 1))
            print(f"saved plot to {args.plot}")
        else:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
    return mse_line


if __name__ == "__main__":
    main()
