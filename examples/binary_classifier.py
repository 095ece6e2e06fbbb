"""The Keras tutorial's binary classifier on the breast-cancer data's first 8 features.

Dense(10, input_dim=8, relu) -> Dense(8, relu) -> Dense(1, sigmoid)
python examples/binary_classifier.py [--smoke]
"""

from __future__ import annotations

from _common import parser

import fastnn
from fastnn.layers import Dense


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_breast_cancer(seed=0)
    x_train, x_test = x_train[:, :8], x_test[:, :8]

    model = fastnn.Sequential(
        [
            Dense(10, input_dim=8, activation="relu"),
            Dense(8, activation="relu"),
            Dense(1, activation="sigmoid"),
        ],
        seed=0,
        backend=args.backend,
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.summary()
    epochs = 20 if args.smoke else 150
    model.fit(x_train, y_train, epochs=epochs, batch_size=10, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"trained {epochs} epochs on {len(x_train)} samples")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
