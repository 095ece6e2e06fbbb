"""Forward and backward by hand, checked against finite differences with fastnn.gradcheck.

Walks through one Dense layer (forward, loss, backward), compares its gradients with a
NumPy derivation and with central differences, then checks a whole compiled model.

    python examples/gradcheck_walkthrough.py [--smoke]
"""

from __future__ import annotations

import numpy as np
from _common import parser

import fastnn
from fastnn.layers import Dense, Dropout
from fastnn.losses import MeanSquaredError


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2))

    # 1. one layer, float64, by hand
    layer = Dense(2, activation="tanh", input_dim=3)
    layer.build(3, "float64", rng, backend=args.backend)
    out = layer.forward(x, training=True).copy()  # tanh(x @ W + b)
    loss_fn = MeanSquaredError()
    loss = loss_fn(y, out)
    dout = loss_fn.gradient(y, out)  # 2 (out - y) / (N * outputs)
    dx = layer.backward(dout).copy()
    dkernel, dbias = (g.copy() for g in layer.grads)
    print(f"loss = {loss:.6f}")

    # the same gradients derived with NumPy: dz = dout * (1 - tanh^2)
    dz = dout * (1 - out**2)
    manual = {"dkernel": x.T @ dz, "dbias": dz.sum(0), "dx": dz @ layer.kernel.T}
    for name, value in (("dkernel", dkernel), ("dbias", dbias), ("dx", dx)):
        err = float(np.max(np.abs(value - manual[name])))
        print(f"{name:8s} max |fastnn - numpy| = {err:.2e}")

    # 2. the layer against central differences of sum(layer(x) * R)
    result = fastnn.gradcheck(layer, x)
    print(
        f"Dense layer gradcheck: {'passed' if result else 'FAILED'} "
        f"(max abs error {result.max_abs_error:.2e} over {result.checked} entries)"
    )

    # 3. a whole compiled model: loss gradient w.r.t. every weight (dropout masks fixed)
    model = fastnn.Sequential(
        [
            Dense(8, activation="relu", input_dim=3, kernel_regularizer="l2"),
            Dropout(0.2),
            Dense(4, activation="softmax"),
        ],
        seed=0,
        dtype="float64",
        backend=args.backend,
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    labels = rng.integers(0, 4, size=5)
    result = fastnn.gradcheck(model, x, labels, max_checks=50 if args.smoke else 400)
    print(
        f"model gradcheck: {'passed' if result else 'FAILED'} "
        f"(max rel error {result.max_rel_error:.2e} over {result.checked} weights)"
    )
    return bool(result)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
