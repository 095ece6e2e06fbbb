"""A Keras 3 script: an LSTM reading scikit-learn's 8x8 digits row by row (8 steps of 8
features).  It runs unchanged under Keras and under fastnn; only the import line differs."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastnn as keras

keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.images / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.25, random_state=0
)

model = keras.models.Sequential(
    [
        keras.Input(shape=(8, 8)),
        keras.layers.LSTM(64),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(learning_rate=3e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=[keras.metrics.SparseCategoricalAccuracy()],
)
model.fit(x_train, y_train, batch_size=32, epochs=20, verbose=0)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy {accuracy:.4f}")
