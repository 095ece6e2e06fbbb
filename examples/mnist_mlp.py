"""A multilayer perceptron, Dense(128, relu) -> Dense(10, softmax), on handwritten digits.

By default the 8x8 digits bundled with scikit-learn (no download); with ``--mnist DIR``
the real MNIST from the four IDX files in DIR (train-images-idx3-ubyte[.gz], ...).

    python examples/mnist_mlp.py [--smoke] [--mnist DIR] [--save mlp.fnn]
"""

from __future__ import annotations

import time

from _common import parser

import fastnn
from fastnn.layers import Dense


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mnist", metavar="DIR", help="folder with the four MNIST IDX files")
    p.add_argument("--save", metavar="PATH", help="write the trained model to PATH")
    args = p.parse_args(argv)

    if args.mnist:
        (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_mnist(args.mnist)
        if args.smoke:
            x_train, y_train = x_train[:10000], y_train[:10000]
        epochs, batch_size, lr, name = (2 if args.smoke else 10), 128, 0.001, "MNIST"
    else:
        (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_digits(seed=0)
        # the settings of `fastnn train` (fastnn/cli.py TRAIN_DEFAULTS); they reach >= 0.97
        epochs, batch_size, lr, name = 20, 32, 0.003, "digits"

    model = fastnn.Sequential(
        [
            Dense(128, activation="relu", input_dim=x_train.shape[1]),
            Dense(10, activation="softmax"),
        ],
        seed=0,
        backend=args.backend,
    )
    model.compile(
        optimizer=fastnn.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(
        f"{name}: {len(x_train)} train / {len(x_test)} test samples, backend {model.backend_name}"
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"trained {epochs} epochs in {seconds:.2f} s")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    return accuracy


if __name__ == "__main__":
    main()
