"""A Keras 3 script: a BatchNormalization MLP on scikit-learn's digits.  It runs unchanged
under Keras and under fastnn; only the import line differs."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastnn as keras

keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.data / 16.0).astype("float32")
y = keras.utils.to_categorical(digits.target, 10)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

model = keras.Sequential(
    [
        keras.Input(shape=(64,)),
        keras.layers.Dense(128, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(64),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(learning_rate=1e-3),
    loss="categorical_crossentropy",
    metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(k=3)],
)
history = model.fit(x_train, y_train, batch_size=32, epochs=20, validation_split=0.1, verbose=0)
loss, accuracy, top3 = model.evaluate(x_test, y_test, verbose=0)
assert np.isfinite(history.history["val_loss"][-1])
print(f"test accuracy {accuracy:.4f}")
