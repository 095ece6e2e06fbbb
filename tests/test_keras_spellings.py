"""Every Keras 3 spelling fastnn promises, one table row each: the row runs the spelling the
way a Keras user types it and checks what Keras would give."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastnn as keras

X = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
Y = np.eye(3, dtype="float32")[np.arange(16) % 3]


def _model():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ],
        backend="numpy",
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit_changes_only_trainable():
    model = _model()
    model.layers[0].trainable = False
    frozen = model.layers[0].get_weights()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(X, Y, epochs=1, verbose=0)
    return all(np.array_equal(a, b) for a, b in zip(frozen, model.layers[0].get_weights()))


def _round_trip_json():
    model = _model()
    clone = keras.models.model_from_json(model.to_json())
    return clone.get_config() == model.get_config() and json.loads(model.to_json())


def _optimizer_option(name, **kwargs):
    opt = keras.optimizers.get(name) if not kwargs else getattr(keras.optimizers, name)(**kwargs)
    model = _model()
    model.compile(optimizer=opt, loss="categorical_crossentropy")
    return np.isfinite(model.fit(X, Y, epochs=1, verbose=0).history["loss"][0])


SPELLINGS = {
    "utils.to_categorical": lambda: (
        keras.utils.to_categorical([0, 2], 3).tolist() == [[1, 0, 0], [0, 0, 1]]
    ),
    "utils.set_random_seed": lambda: keras.utils.set_random_seed(1) is None,
    "utils.clear_session": lambda: (
        (keras.utils.clear_session(), keras.layers.Dense(1).name)[1] == "dense"
    ),
    "regularizers.l1/l2/l1_l2": lambda: (
        keras.layers.Dense(
            2, kernel_regularizer=keras.regularizers.l1_l2(l1=0.01, l2=0.02)
        ).get_config()["kernel_regularizer"]
        == {"l1": 0.01, "l2": 0.02}
        and keras.regularizers.l1(0.1) is not None
        and keras.regularizers.l2(0.1) is not None
    ),
    "optimizers.schedules.ExponentialDecay": lambda: (
        float(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)(10)) == pytest.approx(0.05)
    ),
    "models.Sequential / models.load_model": lambda: (
        keras.models.Sequential is keras.Sequential and callable(keras.models.load_model)
    ),
    "layer.get_weights / set_weights": lambda: (
        lambda m: (
            m.layers[0].set_weights([w * 0 for w in m.layers[0].get_weights()]),
            not m.layers[0].get_weights()[0].any(),
        )[1]
    )(_model()),
    "layer.trainable": _fit_changes_only_trainable,
    "model.get_layer(name=, index=)": lambda: (
        lambda m: m.get_layer(index=1) is m.get_layer(name=m.layers[1].name)
    )(_model()),
    "model.weights / trainable_weights / non_trainable_weights": lambda: (
        lambda m: (
            len(m.weights) == 4 and len(m.trainable_weights) == 4 and m.non_trainable_weights == []
        )
    )(_model()),
    "model(x)": lambda: (lambda m: m(X).shape == (16, 3))(_model()),
    "predict_on_batch / test_on_batch": lambda: (
        lambda m: m.predict_on_batch(X).shape == (16, 3) and len(m.test_on_batch(X, Y)) == 2
    )(_model()),
    "get_config / from_config / to_json / model_from_json": _round_trip_json,
    "default names": lambda: [layer.name for layer in _model().layers][0].startswith("dense"),
    "compile() defaults to rmsprop": lambda: (
        (lambda m: (m.compile(loss="mse"), type(m.optimizer).__name__)[1])(_model()) == "RMSprop"
    ),
    "metrics as strings and classes": lambda: (
        all(
            keras.metrics.get(name) is not None
            for name in [
                "categorical_accuracy",
                "sparse_categorical_accuracy",
                "binary_accuracy",
                "top_k_categorical_accuracy",
                "auc",
                "precision",
                "recall",
                "root_mean_squared_error",
            ]  # fmt: skip
        )
        and all(
            hasattr(keras.metrics, c)
            for c in ["AUC", "Precision", "Recall", "RootMeanSquaredError"]
        )
    ),  # fmt: skip
    "losses huber / kl_divergence / poisson": lambda: all(
        keras.losses.get(n) is not None for n in ["huber", "kl_divergence", "poisson"]
    ),
    "activations gelu elu selu silu swish softplus": lambda: all(
        np.isfinite(keras.activations.get(n)(X)).all()
        for n in ["gelu", "elu", "selu", "silu", "swish", "softplus"]
    ),
    "Dense(use_bias=False)": lambda: (
        [
            w.shape
            for w in keras.Sequential(
                [keras.layers.Dense(2, use_bias=False, input_dim=3)], backend="numpy"
            ).get_weights()
        ]
        == [(3, 2)]
    ),
    "layers ReLU LeakyReLU Softmax Reshape": lambda: all(
        hasattr(keras.layers, n) for n in ["ReLU", "LeakyReLU", "Softmax", "Reshape"]
    ),
    "optimizers.Nadam": lambda: _optimizer_option("nadam"),
    "clipnorm": lambda: _optimizer_option("Adam", clipnorm=1.0),
    "clipvalue": lambda: _optimizer_option("SGD", clipvalue=0.1),
    "global_clipnorm": lambda: _optimizer_option("RMSprop", global_clipnorm=1.0),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_keras_spelling(spelling):
    assert SPELLINGS[spelling]()


def test_keras_3_other_names_of_layers_and_load_model(tmp_path):
    layers = keras.layers

    assert (layers.MaxPool2D, layers.AvgPool2D, layers.Convolution2D) == (
        layers.MaxPooling2D, layers.AveragePooling2D, layers.Conv2D)  # fmt: skip
    assert (layers.GlobalAvgPool2D, layers.GlobalMaxPool2D) == (
        layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)  # fmt: skip
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2)], backend="numpy")
    model.save(tmp_path / "m.fnn")
    loaded = keras.saving.load_model(tmp_path / "m.fnn", backend="numpy")
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_class_names_of_losses_and_metrics_are_names_too():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")],
                             backend="numpy")  # fmt: skip
    metrics = ["SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy"]
    model.compile(optimizer="Adam", loss="SparseCategoricalCrossentropy", metrics=metrics)
    assert type(model.loss).__name__ == "SparseCategoricalCrossentropy"
    x, y = np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3
    logs = model.evaluate(x, y, return_dict=True)
    assert set(logs) == {"loss", "SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy"}
    model.compile(optimizer="sgd", loss="MeanSquaredError",
                  metrics=["MeanAbsoluteError", "RootMeanSquaredError"])  # fmt: skip
    with pytest.raises(ValueError, match="Did you mean"):
        model.compile(optimizer="sgd", loss="MeanSquaredErrors")


def test_loss_options_of_keras_3_take_their_defaults_and_refuse_the_rest():
    bce = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.0,
                                          reduction="sum_over_batch_size", name="bce")  # fmt: skip
    assert bce.from_logits
    keras.losses.SparseCategoricalCrossentropy(ignore_class=None, name="scce", dtype=None)
    keras.losses.MeanSquaredError(reduction="sum_over_batch_size", name="mse")
    with pytest.raises(ValueError, match="label_smoothing=0.1 is not supported"):
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    with pytest.raises(ValueError, match="reduction='sum' is not supported"):
        keras.losses.MeanAbsoluteError(reduction="sum")
    with pytest.raises(TypeError, match="BinaryCrossentropy.. got an unexpected keyword"):
        keras.losses.BinaryCrossentropy(smoothing=0.1)


def test_keras_initializer_aliases():
    """normal, truncated_normal, variance_scaling (fan_in, truncated), identity, one, zero
    with Keras's parameters (stddev 0.05; truncation at 2 stddev)."""
    rng = np.random.default_rng(0)
    from fastnn.initializers import get

    w = get("normal", "x")((400, 300), rng)
    assert abs(w.std() - 0.05) < 0.002
    w = get("truncated_normal", "x")((400, 300), rng)
    assert np.abs(w).max() <= 0.1 and abs(w.std() - 0.05 * 0.8796) < 0.002
    w = get("variance_scaling", "x")((400, 300), rng)
    limit = 2 * np.sqrt(1 / 400) / 0.8796
    assert abs(w.std() - np.sqrt(1 / 400)) < 0.002 and np.abs(w).max() <= limit
    np.testing.assert_array_equal(get("identity", "x")((3, 4), rng), np.eye(3, 4))
    assert get("one", "x")((2,), rng).tolist() == [1, 1] and get("zero", "x")((1,), rng)[0] == 0
    with pytest.raises(ValueError, match="2-D"):
        get("identity", "x")((3, 3, 3), rng)


def test_normalization_takes_scalar_statistics_as_keras():
    layer = keras.layers.Normalization(mean=2.0, variance=4.0)
    model = keras.Sequential([keras.Input((3,)), layer], backend="numpy")
    out = model.predict(np.full((2, 3), 6.0))
    np.testing.assert_allclose(out, 2.0)
