"""Sequence models: the digits read row by row with an LSTM, and a text classifier on tokens.

1. digits: each 8x8 image is a sequence of 8 rows of 8 pixels; LSTM(64) -> Dense(10, softmax).
2. tokens: Embedding -> LSTM -> Dense(1, sigmoid) on token sequences that this script
   generates with a learnable rule (a sequence is positive when token 1 appears before
   token 2), or on your own ``--tokens data.npz`` holding ``x`` (N, T) integer ids and
   ``y`` (N,) labels 0/1.

python examples/sequence_lstm.py [--smoke] [--tokens data.npz]
"""

from __future__ import annotations

import numpy as np
from _common import parser

import fastnn
from fastnn.layers import LSTM, Dense, Embedding


def digits_rows(args):
    """The digits as (N, 8 rows, 8 pixels) sequences: returns the test accuracy."""
    (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_digits(seed=0)
    x_train, x_test = x_train.reshape(-1, 8, 8), x_test.reshape(-1, 8, 8)
    model = fastnn.Sequential(
        [LSTM(64, input_shape=(8, 8)), Dense(10, activation="softmax")],
        seed=0,
        backend=args.backend,
    )
    model.compile(
        optimizer=fastnn.optimizers.Adam(learning_rate=0.005),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.summary()
    epochs = 15 if args.smoke else 40
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"digits rows: trained {epochs} epochs on {len(x_train)} sequences of 8x8")
    print(f"digits test accuracy: {accuracy:.4f}")
    return accuracy


def generated_tokens(n, length=20, vocab=50, seed=0):
    """(x (n, length) ids, y (n,) labels): y = 1 when token 1 occurs before token 2."""
    rng = np.random.default_rng(seed)
    x = rng.integers(3, vocab, size=(n, length))
    for row in x:
        i, j = rng.choice(length, size=2, replace=False)
        row[i], row[j] = 1, 2
    first_one = np.argmax(x == 1, axis=1)
    first_two = np.argmax(x == 2, axis=1)
    return x, (first_one < first_two).astype(np.int64)


def token_classifier(args):
    """Embedding -> LSTM -> Dense(sigmoid) on generated (or the user's) tokens."""
    if args.tokens:
        data = np.load(args.tokens)
        x, y = data["x"], data["y"]
    else:
        x, y = generated_tokens(1000 if args.smoke else 4000)
    split = int(0.8 * len(x))
    vocab = int(x.max()) + 1
    model = fastnn.Sequential(
        [Embedding(vocab, 16, input_shape=(x.shape[1],)), LSTM(32),
         Dense(1, activation="sigmoid")],
        seed=0,
        backend=args.backend,
    )  # fmt: skip
    model.compile(optimizer=fastnn.optimizers.Adam(learning_rate=0.01),
                  loss="binary_crossentropy", metrics=["accuracy"])  # fmt: skip
    epochs = 8 if args.smoke else 15
    model.fit(x[:split], y[:split], epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x[split:], y[split:], verbose=0)
    print(f"tokens: trained {epochs} epochs on {split} sequences of {x.shape[1]} tokens")
    print(f"tokens test accuracy: {accuracy:.4f}")
    return accuracy


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", default=None, help="an .npz with x (N, T) ids and y (N,) labels")
    args = p.parse_args(argv)
    return digits_rows(args), token_classifier(args)


if __name__ == "__main__":
    main()
