"""The keras.io "Simple MNIST convnet": Conv2D(32) -> MaxPooling2D -> Conv2D(64) ->
MaxPooling2D -> Flatten -> Dropout(0.5) -> Dense(10, softmax).

By default on the 8x8 digits bundled with scikit-learn (no download), as (8, 8, 1) images
with 3x3 'same' convolutions (the 28x28 original's 'valid' ones would leave nothing to
pool); with ``--mnist DIR`` on the real MNIST from the four IDX files in DIR, with the
original's 'valid' convolutions.

    python examples/mnist_convnet.py [--smoke] [--mnist DIR] [--save cnn.keras]
"""

from __future__ import annotations

import time

from _common import parser

import fastnn
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D


def convnet(input_shape, padding, seed=0, backend=None):
    """The keras.io convnet for images of ``input_shape`` (height, width, channels)."""
    return fastnn.Sequential(
        [
            Conv2D(32, 3, padding=padding, activation="relu", input_shape=input_shape),
            MaxPooling2D(2),
            Conv2D(64, 3, padding=padding, activation="relu"),
            MaxPooling2D(2),
            Flatten(),
            Dropout(0.5),
            Dense(10, activation="softmax"),
        ],
        seed=seed,
        backend=backend,
    )


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mnist", metavar="DIR", help="folder with the four MNIST IDX files")
    p.add_argument("--save", metavar="PATH", help="write the trained model to PATH")
    args = p.parse_args(argv)

    if args.mnist:
        (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_mnist(args.mnist, images=True)
        if args.smoke:
            x_train, y_train = x_train[:2000], y_train[:2000]
        epochs, batch_size, lr = (1 if args.smoke else 15), 128, 0.001
        padding, name = "valid", "MNIST"
    else:
        (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_digits(seed=0, images=True)
        epochs, batch_size, lr, padding, name = 30, 32, 0.002, "same", "digits"

    model = convnet(x_train.shape[1:], padding, backend=args.backend)
    model.compile(
        optimizer=fastnn.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"{name}: {len(x_train)} train / {len(x_test)} test images of shape "
          f"{x_train.shape[1:]}, backend {model.backend_name}")  # fmt: skip
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
