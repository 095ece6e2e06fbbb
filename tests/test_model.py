"""The model API (Sequential, compile, fit, evaluate, predict, weights, seeds), level 5 (a whole
training step on every backend == the reference backend), level 6 (digits reaches its known
accuracy) and the no-allocation property of the training loop."""

from __future__ import annotations

import contextlib
import gc
import io
import re
import time
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn.callbacks import Callback, History
from fastnn.layers import Activation, Dense, Dropout, Flatten
from fastnn.losses import BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy
from fastnn.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop
from fastnn.regularizers import L1L2

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
COMPILED = [b for b in CPU_BACKENDS if b != "numpy"]


def _blobs(n=120, d=6, k=3, seed=0):
    """A learnable k-class problem: Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    y = rng.integers(0, k, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _mlp(d=6, k=3, out="softmax", seed=0, backend=None, dtype="float32", **kw):
    return fastnn.Sequential(
        [
            Dense(16, activation="relu", input_dim=d, **kw),
            Dense(8, activation="tanh"),
            Dense(k, activation=out),
        ],
        seed=seed,
        backend=backend,
        dtype=dtype,
    )


def _manual_forward(weights, x, acts):
    """act(x @ W + b) layer by layer in plain NumPy (float64)."""
    fns = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "linear": lambda z: z,
        "softmax": lambda z: (
            np.exp(z - z.max(1, keepdims=True))
            / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
        ),
    }
    h = np.asarray(x, np.float64)
    for (w, b), act in zip(zip(weights[::2], weights[1::2]), acts):
        h = fns[act](h @ w.astype(np.float64) + b.astype(np.float64))
    return h


# ---------------------------------------------------------------------------------------
# Building, weights, summary


def test_weights_order_and_keras_kernel_shape():
    model = fastnn.Sequential(
        [Dense(5, activation="relu", input_dim=4), Dropout(0.5), Activation("tanh"), Dense(2)],
        seed=0,
    )
    assert model.built and model.input_dim == 4  # input_dim given: built, as in Keras
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(4, 5), (5,), (5, 2), (2,)]
    assert model.count_params() == 4 * 5 + 5 + 5 * 2 + 2
    assert all(w.dtype == np.float32 for w in weights)
    np.testing.assert_array_equal(weights[1], 0)  # bias_initializer="zeros"
    # get_weights returns copies
    weights[0][...] = 123
    assert not np.any(model.get_weights()[0] == 123)


def test_set_weights_roundtrip_and_errors():
    model = _mlp(seed=1)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape) for w in model.get_weights()]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    with pytest.raises(ValueError, match="weights"):
        model.set_weights(new[:-1])
    with pytest.raises(ValueError, match=r"weights\[2\]"):
        model.set_weights([*new[:2], new[2].T, *new[3:]])
    with pytest.raises(RuntimeError, match="built"):
        fastnn.Sequential([Dense(2)]).set_weights([])


def test_model_builds_on_first_data():
    model = fastnn.Sequential([Dense(3, activation="relu"), Dense(2)], seed=0)
    assert not model.built and model.get_weights() == [] and model.count_params() == 0
    out = model.predict(np.ones((4, 7)))
    assert out.shape == (4, 2)
    assert [w.shape for w in model.get_weights()] == [(7, 3), (3,), (3, 2), (2,)]
    with pytest.raises(ValueError, match="7 features"):
        model.predict(np.ones((4, 6)))


def test_predict_matches_a_manual_numpy_forward():
    x, _ = _blobs(n=37)
    model = _mlp(seed=2, dtype="float64")
    out = model.predict(x, batch_size=8)  # several batches, a short last one
    assert out.shape == (37, 3) and out.dtype == np.float64
    want = _manual_forward(model.get_weights(), x, ["relu", "tanh", "softmax"])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    m32 = _mlp(seed=2)
    np.testing.assert_allclose(m32.predict(x), want, rtol=1e-4, atol=1e-6)


def test_leaky_relu_alpha_reaches_the_compiled_stack():
    x = np.random.default_rng(4).normal(size=(9, 4))
    for backend in CPU_BACKENDS:
        model = fastnn.Sequential(
            [Dense(5, activation="leaky_relu", alpha=0.05, input_dim=4), Dense(2)],
            seed=0,
            dtype="float64",
            backend=backend,
        )
        w0, b0, w1, b1 = model.get_weights()
        z = x @ w0 + b0
        assert (z < 0).any()
        want = np.where(z > 0, z, 0.05 * z) @ w1 + b1
        np.testing.assert_allclose(model.predict(x), want, rtol=1e-12, atol=1e-14)


def test_dropout_is_the_identity_at_inference_and_flatten_reshapes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 2, 3))
    model = fastnn.Sequential(
        [Flatten(input_shape=(2, 3)), Dense(4, activation="sigmoid"), Dropout(0.9), Dense(2)],
        seed=0,
        dtype="float64",
    )
    assert model.built and model.input_dim == 6  # built from Flatten's input_shape
    want = _manual_forward(model.get_weights(), x.reshape(10, 6), ["sigmoid", "linear"])
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-12)


def test_summary_lists_layers_and_parameter_counts():
    model = _mlp()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "dense (Dense)" in text and "(None, 16)" in text
    assert "dense_1 (Dense)" in text and "(None, 3)" in text
    assert f"Total params: {model.count_params():,}" in text
    assert model.count_params() == 6 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3
    for layer, n in zip(model.layers, (112, 136, 27)):
        assert re.search(rf"{layer.name} \(Dense\)\s+\(None, {layer.units}\)\s+{n}\b", text)
    assert "Trainable" not in lines[0].split("\n")[2]  # the header: Keras's three columns
    model.layers[1].trainable = False
    lines = []
    model.summary(line_length=80, show_trainable=True, print_fn=lines.append)
    header, *_ = (row for row in lines[0].split("\n") if row.startswith("Layer (type)"))
    assert header.rstrip().endswith("Trainable")
    assert re.search(r"dense_1 \(Dense\)\s+\(None, 8\)\s+136\s+N$", lines[0], re.M)


# ---------------------------------------------------------------------------------------
# compile: optimizers, losses, metrics


OPTIMIZERS = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compile_with_optimizer_name_and_instance(name):
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer=name, loss="sparse_categorical_crossentropy")
    assert type(model.optimizer) is OPTIMIZERS[name]
    assert model.optimizer.get_config() == OPTIMIZERS[name]().get_config()  # Keras defaults
    model.fit(x, y, epochs=1, verbose=0)
    inst = OPTIMIZERS[name](learning_rate=0.05)
    model = _mlp()
    model.compile(optimizer=inst, loss="sparse_categorical_crossentropy")
    assert model.optimizer is inst
    hist = model.fit(x, y, epochs=8, verbose=0)
    assert inst.iterations == 8 * 4  # 120 samples, batch 32
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]


def _targets(loss_name, y, k):
    if loss_name in ("categorical_crossentropy",):
        return np.eye(k)[y]
    if loss_name == "binary_crossentropy":
        return np.eye(k)[y]  # multi-label style 0/1 targets
    if loss_name in ("mse", "mae"):
        return np.eye(k)[y] * 2 - 1
    return y


LOSS_SETUPS = [
    # (loss as given to compile, name for targets, last activation)
    ("sparse_categorical_crossentropy", "sparse_categorical_crossentropy", "softmax"),
    (SparseCategoricalCrossentropy(from_logits=True), "sparse_categorical_crossentropy", None),
    ("categorical_crossentropy", "categorical_crossentropy", "softmax"),
    (CategoricalCrossentropy(from_logits=True), "categorical_crossentropy", None),
    ("binary_crossentropy", "binary_crossentropy", "sigmoid"),
    (BinaryCrossentropy(from_logits=True), "binary_crossentropy", None),
    ("mse", "mse", None),
    (fastnn.losses.MeanSquaredError(), "mse", "tanh"),
    ("mae", "mae", None),
    ("mean_absolute_error", "mae", "tanh"),
]


@pytest.mark.parametrize("loss, target, last", LOSS_SETUPS, ids=[repr(s[0]) for s in LOSS_SETUPS])
def test_compile_with_every_loss_trains(loss, target, last):
    x, y = _blobs()
    model = _mlp(out=last, seed=4)
    model.compile(optimizer=Adam(0.01), loss=loss)
    yt = _targets(target, y, 3)
    hist = model.fit(x, yt, epochs=10, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0]
    assert model.evaluate(x, yt) == pytest.approx(
        fastnn.losses.get(loss)(yt, model.predict(x)), rel=1e-5
    )


def test_evaluate_return_forms_and_metric_values():
    x, y = _blobs(n=50)
    model = _mlp(out=None, seed=5, dtype="float64")
    model.compile(optimizer="adam", loss="mse")
    yt = np.eye(3)[y]
    loss = model.evaluate(x, yt)
    assert isinstance(loss, float)
    pred = model.predict(x)
    assert loss == pytest.approx(np.mean((pred - yt) ** 2), rel=1e-12)
    model.compile(optimizer="adam", loss="mse", metrics=["mae", "mse"])
    values = model.evaluate(x, yt, batch_size=7)
    assert isinstance(values, list) and len(values) == 3
    np.testing.assert_allclose(
        values, [loss, np.mean(np.abs(pred - yt)), np.mean((pred - yt) ** 2)], rtol=1e-12
    )
    logs = model.evaluate(x, yt, return_dict=True)
    assert list(logs) == ["loss", "mae", "mse"]
    np.testing.assert_allclose(list(logs.values()), values, rtol=1e-12)


@pytest.mark.parametrize(
    "loss, last, kind",
    [
        ("sparse_categorical_crossentropy", "softmax", "sparse"),
        ("categorical_crossentropy", "softmax", "onehot"),
        (CategoricalCrossentropy(from_logits=True), None, "onehot"),
        ("binary_crossentropy", "sigmoid", "binary"),
        (BinaryCrossentropy(from_logits=True), None, "binary_logits"),
    ],
)
def test_accuracy_metric_matches_predictions(loss, last, kind):
    x, y = _blobs(n=90, seed=6)
    model = _mlp(out=last, seed=6)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    yt = y if kind == "sparse" else np.eye(3)[y]
    model.fit(x, yt, epochs=2, verbose=0)
    loss_value, acc = model.evaluate(x, yt)
    pred = model.predict(x)
    if kind in ("sparse", "onehot"):
        want = np.mean(pred.argmax(1) == y)
    else:
        threshold = 0.0 if kind == "binary_logits" else 0.5
        want = np.mean((pred > threshold) == (yt > 0.5))
    assert acc == pytest.approx(want, abs=1e-9)


def test_compile_errors():
    model = _mlp()
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="optimizer"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="hinge")
    with pytest.raises(ValueError, match="accuracy"):
        model.compile(loss="mse", metrics=["accuracy"])
    with pytest.raises(ValueError, match="metrics.*Did you mean 'precision'"):
        model.compile(loss="mse", metrics=["precison"])
    with pytest.raises(RuntimeError, match="compile"):
        _mlp().fit(*_blobs(), verbose=0)


# ---------------------------------------------------------------------------------------
# compile: the loss must fit the output layer (probabilities or logits)

CE_LOSSES = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
]
_LOSS_CLASSES = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
}


def _two_layers(last, *extra, input_dim=None):
    """Dense(4, relu) -> Dense(3, last) [-> extra layers]; unbuilt without input_dim."""
    return fastnn.Sequential(
        [Dense(4, activation="relu", input_dim=input_dim), Dense(3, activation=last), *extra],
        backend="numpy",
    )


@pytest.mark.parametrize("input_dim", [None, 5])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("loss", CE_LOSSES)
def test_from_logits_on_a_probability_output_is_refused(loss, act, input_dim):
    model = _two_layers(act, input_dim=input_dim)
    with pytest.raises(ValueError) as info:
        model.compile(loss=_LOSS_CLASSES[loss](from_logits=True))
    msg = str(info.value)
    assert "from_logits=True expects a linear last layer (logits)" in msg
    assert f"activation '{act}' on layer 'dense_1'" in msg
    assert "drop from_logits or make the last Dense linear" in msg
    assert model.optimizer is None and model.loss is None  # nothing was compiled


@pytest.mark.parametrize("act", [None, "relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("loss", CE_LOSSES)
def test_probability_losses_on_a_non_probability_output_are_refused(loss, act):
    model = _two_layers(act)
    with pytest.raises(ValueError) as info:
        model.compile(loss=loss)
    msg = str(info.value)
    assert f"{loss} (from_logits=False) expects probabilities" in msg
    assert f"activation '{act or 'linear'}' on layer 'dense_1'" in msg
    assert "activation='softmax'" in msg and "from_logits=True for a linear output" in msg


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_categorical_losses_on_sigmoid_outputs_are_refused(loss):
    with pytest.raises(ValueError, match=r"sum to 1.*'sigmoid' on layer 'dense_1'.*softmax"):
        _two_layers("sigmoid").compile(loss=loss)


def test_the_output_activation_looks_through_dropout_and_counts_activation_layers():
    ok = [
        (_two_layers("softmax", Dropout(0.2)), "categorical_crossentropy"),
        (_two_layers(None, Activation("softmax")), "sparse_categorical_crossentropy"),
        (_two_layers(None, Activation("sigmoid"), Dropout(0.1)), "binary_crossentropy"),
        (_two_layers("softmax"), "binary_crossentropy"),  # probabilities in [0, 1]
        (_two_layers(None, Dropout(0.2)), CategoricalCrossentropy(from_logits=True)),
        (_two_layers("relu"), "mse"),
        (_two_layers("softmax"), "mae"),
    ]
    for model, loss in ok:
        model.compile(loss=loss)
    with pytest.raises(ValueError, match=r"activation 'linear' on layer 'dense_[0-9]+'"):
        _two_layers(None, Dropout(0.2)).compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"activation 'softmax' on layer 'activation(_[0-9]+)?'"):
        _two_layers(None, Activation("softmax")).compile(
            loss=SparseCategoricalCrossentropy(from_logits=True)
        )
    with pytest.raises(ValueError, match=r"activation 'tanh' on layer 'activation(_[0-9]+)?'"):
        _two_layers("softmax", Activation("tanh")).compile(loss="categorical_crossentropy")


def test_a_refused_loss_keeps_the_previous_compile():
    model = _two_layers("softmax", input_dim=5)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["acc"])
    before = (model.optimizer, model.loss, model.metrics)
    with pytest.raises(ValueError, match="from_logits"):
        model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True))
    assert (model.optimizer, model.loss, model.metrics) == before


# ---------------------------------------------------------------------------------------
# fit, History, validation


def test_fit_returns_history_with_per_epoch_lists():
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert isinstance(hist, History) and model.history is hist
    assert hist.epoch == [0, 1, 2]
    assert set(hist.history) == {"loss", "accuracy"}
    assert all(len(v) == 3 and all(isinstance(f, float) for f in v) for v in hist.history.values())
    assert model.optimizer.iterations == 3 * 8  # ceil(120 / 16) batches per epoch


def test_fit_with_validation_data_and_split_keys():
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=2, validation_split=0.2, verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in hist.history.values())
    hist = model.fit(x[:100], y[:100], epochs=3, validation_data=(x[100:], y[100:]), verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in hist.history.values())
    val_loss, val_acc = model.evaluate(x[100:], y[100:])
    assert hist.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert hist.history["val_accuracy"][-1] == pytest.approx(val_acc, abs=1e-9)


def test_validation_split_cuts_where_keras_does_and_leaves_class_weight_to_training():
    """The split point is floor(n * (1 - validation_split)) (0.29 of 100 leaves 71 samples
    to train on, not 72); class_weight weighs the training samples only, so val_loss is
    the plain loss of the validation samples."""
    x, y = _blobs(n=100, seed=3)
    for split, train_rows in ((0.29, 71), (0.57, 43), (0.58, 42), (0.25, 75)):
        model = _mlp()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        hist = model.fit(x, y, epochs=1, batch_size=1, validation_split=split, verbose=0)
        assert hist.params["steps"] == train_rows
    model = _mlp()
    model.compile(optimizer=SGD(1e-12), loss="sparse_categorical_crossentropy")
    weights = {0: 1.0, 1: 3.0, 2: 0.5}
    hist = model.fit(x, y, epochs=1, batch_size=10, validation_split=0.2, shuffle=False,
                     verbose=0, class_weight=weights)  # fmt: skip
    plain = model.evaluate(x[80:], y[80:])
    weighted = model.evaluate(x[80:], y[80:], sample_weight=np.array([1.0, 3.0, 0.5])[y[80:]])
    assert hist.history["val_loss"][0] == pytest.approx(plain, rel=1e-6)
    assert abs(plain - weighted) > 1e-3


def test_validation_split_takes_the_last_fraction_before_shuffling():
    x, y = _blobs(n=100, seed=7)
    cut = 75
    a = _mlp(seed=11)
    a.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ha = a.fit(x, y, epochs=3, batch_size=10, validation_split=0.25, shuffle=True, verbose=0)
    b = _mlp(seed=11)
    b.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    hb = b.fit(
        x[:cut], y[:cut], epochs=3, batch_size=10, validation_data=(x[cut:], y[cut:]), verbose=0
    )
    assert ha.history == hb.history
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # the first fraction would be a different split
    c = _mlp(seed=11)
    c.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    hc = c.fit(x[25:], y[25:], epochs=3, batch_size=10, validation_data=(x[:25], y[:25]), verbose=0)
    assert hc.history["val_loss"] != ha.history["val_loss"]


def test_shuffle_false_keeps_the_order():
    x, y = _blobs(n=64, seed=8)
    a, b = _mlp(seed=0), _mlp(seed=99)
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(optimizer=SGD(0.1), loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)  # seeds differ, but nothing random is used


class _CountBatches(Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_progress_chunks_and_batch_hooks_do_not_change_training(capsys):
    """One compiled call per epoch, per progress update or per batch: same result."""
    x, y = _blobs(n=150)
    results = []
    for verbose, hook in ((0, False), (1, False), (0, True)):
        model = fastnn.Sequential(
            [Dense(12, activation="relu", input_dim=6), Dropout(0.3), Dense(3, "softmax")],
            seed=3,
            dtype="float64",
        )
        model.compile(
            optimizer=Adam(learning_rate=lambda step: 0.01 / (1 + step)),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        cb = _CountBatches()
        hist = model.fit(x, y, epochs=3, batch_size=8, verbose=verbose, callbacks=[cb] * hook)
        assert cb.batches == (3 * 19 if hook else 0)
        assert model.optimizer.iterations == 3 * 19
        results.append((hist.history, model.get_weights()))
    capsys.readouterr()
    for hist, weights in results[1:]:
        assert hist == results[0][0]
        for a, b in zip(weights, results[0][1]):
            np.testing.assert_array_equal(a, b)


def test_train_on_batch_returns_the_loss_and_updates_weights():
    x, y = _blobs(n=20, seed=9)
    model = _mlp(seed=3, dtype="float64", kernel_regularizer=L1L2(0.0, 0.01))
    model.compile(optimizer=SGD(0.1), loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    expected = model.evaluate(x, y)  # the loss (with the penalty) at the current weights
    loss = model.train_on_batch(x, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected, rel=1e-12)
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert model.optimizer.iterations == 1
    assert model.train_on_batch(x, y) < loss


def test_train_on_batch_returns_the_metrics_as_keras_3_does():
    """[loss, metrics...] with metrics compiled, or a dict with return_dict: each call
    the values of its own batch (the weights before its update), as evaluate gives them."""
    x, y = _blobs(n=20, seed=9)
    model = _mlp(seed=3, dtype="float64")
    model.compile(optimizer=SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", "sparse_top_k_categorical_accuracy"])  # fmt: skip
    for return_dict in (False, True):
        expected = model.evaluate(x[:12], y[:12], return_dict=return_dict)
        got = model.train_on_batch(x[:12], y[:12], return_dict=return_dict)
        assert type(got) is type(expected)
        values = got.values() if return_dict else got
        want = expected.values() if return_dict else expected
        assert list(values) == pytest.approx(list(want), rel=1e-12)
    assert set(got) == {"loss", "accuracy", "sparse_top_k_categorical_accuracy"}
    loss, accuracy, top_k = model.train_on_batch(x, y)
    assert 0 <= accuracy <= 1 and top_k == 1.0 and loss > 0


# ---------------------------------------------------------------------------------------
# Seeds


def _fit_seeded(seed, weights=None):
    x, y = _blobs(n=96, seed=10)
    model = fastnn.Sequential(
        [Dense(12, activation="relu", input_dim=6), Dropout(0.2), Dense(3, activation="softmax")],
        seed=seed,
    )
    if weights is not None:
        model.set_weights(weights)
    init = model.get_weights()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return init, model.get_weights()


def test_same_seed_same_initial_weights_and_same_training():
    init_a, final_a = _fit_seeded(42)
    init_b, final_b = _fit_seeded(42)
    for a, b in zip(init_a + final_a, init_b + final_b):
        np.testing.assert_array_equal(a, b)


def test_different_seed_different_weights_and_batch_order():
    init_a, final_a = _fit_seeded(1)
    init_b, _ = _fit_seeded(2)
    assert not np.array_equal(init_a[0], init_b[0])
    # same initial weights, other seed: only the batch order (and dropout) differ
    _, final_c = _fit_seeded(2, weights=init_a)
    assert not np.allclose(final_a[0], final_c[0])


# ---------------------------------------------------------------------------------------
# Level 5: one training step / two epochs on each backend == the numpy backend


FAMILIES = {
    # name: (last activation, loss, target kind)
    "sparse_ce": ("softmax", "sparse_categorical_crossentropy", "sparse"),
    "categorical_ce": ("softmax", "categorical_crossentropy", "onehot"),
    "categorical_ce_logits": (None, CategoricalCrossentropy(from_logits=True), "onehot"),
    # probabilities through a trailing Dropout: the loss on probabilities, not fused
    "categorical_ce_through_dropout": ("softmax+dropout", "categorical_crossentropy", "onehot"),
    "bce": ("sigmoid", "binary_crossentropy", "onehot"),
    "bce_logits": (None, BinaryCrossentropy(from_logits=True), "onehot"),
    "bce_on_softmax": ("softmax", "binary_crossentropy", "onehot"),
    "mse": (None, "mse", "signed"),
    "mae": ("tanh", "mae", "signed"),
}

STEP_OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "momentum": lambda: SGD(0.05, momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: Adagrad(0.05),
    "rmsprop": lambda: RMSprop(0.01),
    "adam": lambda: Adam(0.01),
    "adamw": lambda: AdamW(0.01, weight_decay=0.05),
    "sgd_decay": lambda: SGD(0.1, weight_decay=0.05),
    "amsgrad_decay": lambda: Adam(0.01, amsgrad=True, weight_decay=0.05),
    "rmsprop_mc_decay": lambda: RMSprop(0.01, momentum=0.5, centered=True, weight_decay=0.05),
}


def _parity_data(kind, n=22, d=5, k=3):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, k, size=n)
    if kind == "onehot":
        y = np.eye(k)[y]
    elif kind == "signed":
        y = rng.normal(size=(n, k))
    return x, y, rng.uniform(0.5, 1.5, size=n)


def _parity_model(family, opt, backend, dtype, weights=None):
    last, loss, _ = FAMILIES[family]
    last, _, tail = (last or "").partition("+")
    model = fastnn.Sequential(
        [
            Dense(7, activation="relu", input_dim=5, kernel_regularizer=L1L2(1e-3, 1e-3)),
            Dropout(0.25),
            Dense(6, activation="tanh"),
            Dense(3, activation=last or None),
            *([Dropout(0.2)] if tail == "dropout" else []),
        ],
        seed=5,
        backend=backend,
        dtype=dtype,
    )
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=STEP_OPTIMIZERS[opt](), loss=loss)
    return model


def _run_parity(family, opt, backend, dtype, weights=None):
    """Losses and weights after one train_on_batch, then after a 2-epoch fit (batch 8)."""
    x, y, sw = _parity_data(FAMILIES[family][2])
    model = _parity_model(family, opt, backend, dtype, weights)
    loss = model.train_on_batch(x, y, sample_weight=sw)
    w1 = model.get_weights()
    hist = model.fit(x, y, sample_weight=sw, epochs=2, batch_size=8, verbose=0)
    return [loss, *hist.history["loss"]], w1, model.get_weights(), model.predict(x)


def _flat(run):
    losses, w1, w2, pred = run
    return np.concatenate([np.asarray(losses), *(w.ravel() for w in w1 + w2), pred.ravel()])


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("opt", list(STEP_OPTIMIZERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_step_float64_matches_numpy_backend(family, opt, backend):
    got = _flat(_run_parity(family, opt, backend, "float64"))
    want = _flat(_run_parity(family, opt, "numpy", "float64"))
    # the same float64 arithmetic up to summation order (BLAS blocking, fused loops)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("opt", list(STEP_OPTIMIZERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_step_float32_matches_numpy_backend(family, opt, backend):
    init = _parity_model(family, opt, "numpy", "float32").get_weights()
    got = _flat(_run_parity(family, opt, backend, "float32", init))
    want = _flat(_run_parity(family, opt, "numpy", "float32", init))
    want64 = _flat(_run_parity(family, opt, "numpy", "float64", init))
    # float32 results may differ by rounding order; how far float32 rounding moves the
    # reference itself (float32 vs float64 from the same start) bounds what is reasonable
    # (see PITFALLS: parity after several steps is ill-conditioned near relu kinks / Adam eps)
    scale = np.abs(want - want64)
    tol = 2e-6 * np.maximum(np.abs(want), 1) + 4 * scale
    bad = np.abs(got - want) > tol
    assert not bad.any(), (np.flatnonzero(bad), got[bad], want[bad], want64[bad])


# ---------------------------------------------------------------------------------------
# Level 6: digits with the `fastnn train` defaults


def test_cli_train_on_digits_reaches_097_in_under_a_minute():
    from fastnn import cli

    d = cli.TRAIN_DEFAULTS
    assert (d["dataset"], d["hidden"], d["optimizer"], d["lr"]) == ("digits", 128, "adam", 0.003)
    assert (d["epochs"], d["batch_size"], d["seed"]) == (20, 32, 0)
    # the timed run measures training, not a first JIT compilation of the kernels
    warm = fastnn.Sequential([Dense(8, activation="relu", input_dim=64), Dense(10, "softmax")])
    warm.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    warm.fit(np.zeros((40, 64), np.float32), np.arange(40) % 10, batch_size=32, verbose=0)
    warm.evaluate(np.zeros((40, 64), np.float32), np.arange(40) % 10)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["train"])
    elapsed = time.perf_counter() - start
    text = out.getvalue()
    assert rc == 0, text
    assert f"backend {fastnn.get_backend()}" in text
    assert len(re.findall(r"^Epoch \d+/20", text, re.M)) == 20
    acc = float(re.search(r"^test accuracy: ([0-9.]+)$", text, re.M).group(1))
    assert acc >= 0.97, text
    assert elapsed < 60, f"fastnn train took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------
# No allocation per training step in the steady state


class _WorkspaceIds(Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        eng = self.model._engine
        buffers = [eng.params, eng.grads, eng.state]
        for ws in eng._workspaces.values():
            buffers += [ws.acts, ws.gbuf, ws.xb, ws.yb, ws.swb]
        self.seen.append([id(b) for b in buffers])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_workspace_buffers_are_reused_across_epochs(backend):
    x, y = _blobs(n=100)
    model = _mlp(backend=backend)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # warm-up
    ws = model._engine.workspace(16, 1)
    ids = _WorkspaceIds()
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[ids])
    assert model._engine.workspace(16, 1) is ws
    assert len(ids.seen) == 4 and all(s == ids.seen[0] for s in ids.seen)
    assert id(ws.acts) in ids.seen[0] and id(ws.gbuf) in ids.seen[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("opt", ["adam", "sgd", "adagrad"])
def test_warm_up_step_leaves_weights_state_and_step_count_alone(backend, opt, monkeypatch):
    x, y = _blobs(n=40)
    model = _mlp(backend=backend)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    params = model._engine.params.copy()
    state = model._engine.host_state().copy()
    steps = model.optimizer.iterations
    ws = model._engine.workspace(8, 1)
    calls = []
    original = model._kernels.run_epoch
    real = model._engine.params, model._engine.state

    def spy(*args):
        net = args[2]
        calls.append(net[0] is real[0] or net[2] is real[1])  # on the real buffers?
        return original(*args)

    monkeypatch.setattr(model._kernels, "run_epoch", spy)
    model._warm_up(ws)
    assert ws.warmed and calls == [False]
    np.testing.assert_array_equal(model._engine.params, params)
    np.testing.assert_array_equal(model._engine.host_state(), state)
    assert model.optimizer.iterations == steps


def test_first_fit_with_a_batch_size_warms_its_workspace_once(monkeypatch):
    x, y = _blobs(n=40)
    model = _mlp(backend=CPU_BACKENDS[-1])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    calls = []
    original = model._kernels.run_epoch

    def spy(*args):
        calls.append(args[0][4])  # batch size
        return original(*args)

    monkeypatch.setattr(model._kernels, "run_epoch", spy)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    model.train_on_batch(x[:5], y[:5])
    model.evaluate(x, y, batch_size=8, verbose=0)
    # warm-up + 2 epochs; warm-up + the step; evaluation warms nothing
    assert calls == [16, 16, 16, 5, 5, 8]
    calls.clear()
    monkeypatch.setattr(fastnn.model, "WARM_UP_MAX_BYTES", 0)  # as for a large model
    model.fit(x, y, epochs=1, batch_size=10, verbose=0)
    assert calls == [10]


def _fit_memory(model, x, y, epochs):
    """(bytes still allocated after, peak bytes above the start) of one fit call."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        hist = model.fit(x, y, epochs=epochs, batch_size=4, verbose=0)
        del hist
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base, peak - base


def _memory_growth(model, x, y):
    """Retained and peak memory of an 8-epoch fit minus those of a 2-epoch fit.

    Both fits start from the same state.  The first epoch of any fit has no previous shuffle
    order alive while the next is drawn, so its peak is lower by one order array: comparing
    fits of at least 2 epochs leaves only what grows with the number of steps."""
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)  # warm-up: workspaces, compilation
    short = _fit_memory(model, x, y, 2)
    long = _fit_memory(model, x, y, 8)
    return long[0] - short[0], long[1] - short[1]


def _memory_model(backend, n=800):
    x, y = _blobs(n=n, seed=12)
    model = fastnn.Sequential(
        [Dense(16, activation="relu", input_dim=6), Dropout(0.1), Dense(3, activation="softmax")],
        seed=0,
        backend=backend,
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, x, y


@pytest.mark.parametrize("backend", COMPILED or ["numpy"])
def test_memory_does_not_grow_with_the_number_of_steps(backend):
    model, x, y = _memory_model(backend)
    extra_steps = 6 * (800 // 4)  # 1200 more training steps in the long fit
    retained, peak = _memory_growth(model, x, y)
    # The long fit keeps 6 more History entries per metric (a few hundred bytes), and NumPy's
    # small-block cache moves a few KB either way; anything kept per step (>= 16 bytes per
    # object) would add over 19 KB.
    bound = 8192
    assert 16 * extra_steps > 2 * bound
    assert abs(retained) < bound, retained
    assert abs(peak) < bound, peak


def test_memory_probe_detects_a_per_step_leak(monkeypatch):
    """The probe above can fail: a 16-byte leak per step is caught."""
    ref = fastnn.backend.load("numpy")
    kept = []
    right = ref.train_step

    def leaky(*args):
        kept.append(np.empty(2))
        return right(*args)

    monkeypatch.setattr(ref, "train_step", leaky)
    model, x, y = _memory_model("numpy", n=200)
    retained, _ = _memory_growth(model, x, y)
    assert retained > 2 * 8192  # 300 extra steps, each keeping a small array


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba backend not available")
def test_numba_epoch_allocates_nothing_per_step():
    """NRT's allocation counter: compiled code allocates the same for 200 and 800 steps."""
    from numba.core.runtime import _nrt_python, rtsys

    _nrt_python.memsys_enable_stats()

    def allocations(model, x, y):
        before = rtsys.get_allocation_stats()
        model.fit(x, y, epochs=1, batch_size=4, verbose=0)
        after = rtsys.get_allocation_stats()
        return after.alloc - before.alloc, after.mi_alloc - before.mi_alloc

    model, x, y = _memory_model("numba")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # compile, workspaces
    few = allocations(model, x, y)  # 200 steps
    many = allocations(model, np.tile(x, (4, 1)), np.tile(y, 4))  # 800 steps
    assert many == few
    assert few[0] < 200  # per call (argument unboxing), not per step


def test_a_layer_of_a_built_model_cannot_join_another_model():
    """Sharing would leave the first model computing with weights its get_weights no
    longer shows (Keras's shared layers are not supported): refused, with the fix."""
    x = np.ones((2, 4), np.float32)
    first = fastnn.Sequential([Dense(3, input_dim=4), Dense(1)], seed=0, backend="numpy")
    first.predict(x)
    with pytest.raises(ValueError, match="already belongs to model .*set_weights"):
        fastnn.Sequential(first.layers + [Dense(1)], backend="numpy")
    shaped = Dense(2, input_dim=4)
    fastnn.Sequential([shaped], backend="numpy")  # built at construction: owns the layer
    with pytest.raises(ValueError, match="already belongs"):
        fastnn.Sequential([shaped], backend="numpy")
    shared = Dense(2)
    a = fastnn.Sequential([shared], backend="numpy")
    b = fastnn.Sequential([shared], backend="numpy")  # neither built yet
    a.predict(x)
    with pytest.raises(ValueError, match="already belongs"):
        b.predict(x)
    copy = fastnn.Sequential([Dense(3, input_dim=4), Dense(1)], seed=1, backend="numpy")
    copy.set_weights(first.get_weights())
    np.testing.assert_array_equal(copy.predict(x), first.predict(x))
