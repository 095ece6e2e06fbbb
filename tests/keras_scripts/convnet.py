"""A Keras 3 script: the keras.io "Simple MNIST convnet" on scikit-learn's 8x8 digits.  It
runs unchanged under Keras and under fastnn; only the import line differs."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastnn as keras

keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
y = keras.utils.to_categorical(digits.target, 10)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

model = keras.Sequential(
    [
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(32, kernel_size=(3, 3), padding="same", activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, kernel_size=(3, 3), padding="same", activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.summary()
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=15, validation_split=0.1, verbose=0)
score = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy {score[1]:.4f}")
