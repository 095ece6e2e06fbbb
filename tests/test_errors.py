"""Every bad input to a public entry point raises a clear ValueError/TypeError before any
kernel runs; non-finite training stops with NonFiniteLossError and the last good weights."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import losses, optimizers
from fastnn.layers import Activation, Dense, Dropout, Flatten

RNG = np.random.default_rng(0)
X = RNG.normal(size=(10, 3))
Y = np.arange(10) % 2  # two classes
X_BAD_NAN = X.copy()
X_BAD_NAN[3, 1] = np.nan
X_BAD_INF = X.copy()
X_BAD_INF[0, 0] = -np.inf


def model(loss="sparse_categorical_crossentropy", last="softmax", units=2, metrics=None):
    """A small compiled model on the NumPy backend (validation never reaches a kernel)."""
    m = fastnn.Sequential(
        [Dense(4, activation="relu", input_dim=3), Dense(units, activation=last)],
        seed=0,
        backend="numpy",
    )
    m.compile(optimizer="adam", loss=loss, metrics=metrics)
    return m


def bce_model():
    return model("binary_crossentropy", "sigmoid", 1)


def fit(**kw):
    args = {"x": X, "y": Y, "epochs": 1, "verbose": 0}
    args.update(kw)
    return lambda: model().fit(**args)


def fit_object_x():
    x = np.empty((10, 3), dtype=object)
    x[...] = "a"
    return model().fit(x, Y, verbose=0)


# (id, call, exception type, text the message must contain: the argument's name and more)
CASES = [
    # -- fit: x -------------------------------------------------------------------------
    ("fit-x-feature-count", fit(x=np.ones((10, 4))), ValueError, "x must have 3 features"),
    ("fit-x-1d", fit(x=np.ones(10)), ValueError, "x must be 2-D"),
    ("fit-x-3d", fit(x=np.ones((10, 3, 1))), ValueError, "x must have samples of shape (3,)"),
    ("fit-x-empty", fit(x=np.ones((0, 3)), y=[]), ValueError, "x must have at least one sample"),
    ("fit-x-no-features", fit(x=np.ones((10, 0))), ValueError, "x must have at least one feature"),
    ("fit-x-object-dtype", fit_object_x, TypeError, "x must be numeric"),
    ("fit-x-complex", fit(x=X.astype(complex)), TypeError, "x must be numeric"),
    ("fit-x-string", fit(x="data.csv"), TypeError, "x must be a NumPy array (or list), or an"),
    ("fit-x-ragged", fit(x=[[1, 2, 3], [4, 5]]), ValueError, "x must be a rectangular"),
    ("fit-x-nan", fit(x=X_BAD_NAN), ValueError, "x must be finite"),
    ("fit-x-inf", fit(x=X_BAD_INF), ValueError, "x must be finite"),
    ("fit-x-overflow-f32", fit(x=X * 1e300), ValueError, "overflow converting"),
    ("fit-x-none", fit(x=None), TypeError, ("x must be a NumPy array", "DataLoader, got NoneType")),
    # -- fit: y -------------------------------------------------------------------------
    ("fit-xy-length", fit(y=Y[:9]), ValueError, "x and y must have the same number"),
    ("fit-y-none", fit(y=None), ValueError, "y must be given"),
    ("fit-y-label-too-big", fit(y=Y + 1), ValueError, "y labels must be in [0, 1]"),
    ("fit-y-label-negative", fit(y=Y - 1), ValueError, "y labels must be in [0, 1]"),
    ("fit-y-label-fraction", fit(y=Y * 0.5), ValueError, "y must hold integer class labels"),
    ("fit-y-label-nan", fit(y=np.where(Y, np.nan, 0)), ValueError, "y must hold integer"),
    ("fit-y-label-strings", fit(y=np.array(["a"] * 10)), TypeError, "y must be numeric"),
    ("fit-y-2d-sparse", fit(y=np.eye(2)[Y]), ValueError, "y must be integer class labels"),
    (
        "fit-bce-y-out-of-range",
        lambda: bce_model().fit(X, Y * 2.0, verbose=0),
        ValueError,
        "y must be in [0, 1]",
    ),
    (
        "fit-cce-y-not-onehot",
        lambda: model("categorical_crossentropy").fit(X, Y, verbose=0),
        ValueError,
        "y must be one-hot",
    ),
    (
        "fit-mse-y-width",
        lambda: model("mse", "linear").fit(X, np.ones((10, 3)), verbose=0),
        ValueError,
        "y must have shape (N, 2)",
    ),
    # -- fit: other arguments -------------------------------------------------------------
    ("fit-epochs-string", fit(epochs="5"), TypeError, "epochs must be an int"),
    ("fit-epochs-zero", fit(epochs=0), ValueError, "epochs must be an int >= 1"),
    ("fit-epochs-float", fit(epochs=2.0), TypeError, "epochs must be an int"),
    ("fit-initial-epoch", fit(epochs=2, initial_epoch=2), ValueError, "initial_epoch must be <"),
    ("fit-batch-size-zero", fit(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    ("fit-batch-size-negative", fit(batch_size=-4), ValueError, "batch_size must be an int"),
    ("fit-batch-size-float", fit(batch_size=8.0), TypeError, "batch_size must be an int"),
    ("fit-verbose", fit(verbose=3), ValueError, "verbose must be 0, 1 or 2"),
    ("fit-shuffle-string", fit(shuffle="yes"), TypeError, "shuffle must be True or False"),
    ("fit-validation-split-range", fit(validation_split=1.5), ValueError, "validation_split"),
    ("fit-validation-split-type", fit(validation_split="0.2"), TypeError, "validation_split"),
    (
        "fit-validation-data-features",
        fit(validation_data=(np.ones((4, 5)), Y[:4])),
        ValueError,
        "validation_data x must have 3 features",
    ),
    (
        "fit-validation-data-length",
        fit(validation_data=(X, Y[:4])),
        ValueError,
        "validation_data x and validation_data y",
    ),
    ("fit-validation-data-type", fit(validation_data=X), TypeError, "validation_data must be"),
    ("fit-sample-weight-negative", fit(sample_weight=-np.ones(10)), ValueError, "sample_weight"),
    ("fit-sample-weight-shape", fit(sample_weight=np.ones(9)), ValueError, "sample_weight"),
    ("fit-sample-weight-nan", fit(sample_weight=np.full(10, np.nan)), ValueError, "sample_weight"),
    ("fit-class-weight-type", fit(class_weight=[1.0, 2.0]), TypeError, "class_weight"),
    ("fit-class-weight-value", fit(class_weight={0: -1.0}), ValueError, "class_weight"),
    ("fit-class-weight-key", fit(class_weight={"a": 1.0}), TypeError, "class_weight"),
    ("fit-callbacks-not-list", fit(callbacks=object()), TypeError, "callbacks must be a list"),
    # -- evaluate / predict / train_on_batch ----------------------------------------------
    (
        "evaluate-feature-count",
        lambda: model().evaluate(np.ones((10, 2)), Y),
        ValueError,
        "x must have 3 features",
    ),
    ("evaluate-batch-size", lambda: model().evaluate(X, Y, batch_size=0), ValueError, "batch_size"),
    ("evaluate-label-range", lambda: model().evaluate(X, Y + 5), ValueError, "y labels"),
    ("predict-1d", lambda: model().predict(np.ones(3)), ValueError, "x must be 2-D"),
    ("predict-nan", lambda: model().predict(X_BAD_NAN), ValueError, "x must be finite"),
    ("predict-batch-size-str", lambda: model().predict(X, batch_size="8"), TypeError, "batch_size"),
    (
        "train-on-batch-length",
        lambda: model().train_on_batch(X, Y[:5]),
        ValueError,
        "x and y must have the same number",
    ),
    ("train-on-batch-labels", lambda: model().train_on_batch(X, Y + 2), ValueError, "y labels"),
    # -- set_weights --------------------------------------------------------------------
    (
        "set-weights-count",
        lambda: model().set_weights([np.ones((3, 4))]),
        ValueError,
        "weights must be a list of 4 arrays",
    ),
    (
        "set-weights-shape",
        lambda: model().set_weights([np.ones((4, 3)), np.ones(4), np.ones((4, 2)), np.ones(2)]),
        ValueError,
        "weights[0] must have shape (3, 4)",
    ),
    (
        "set-weights-nan",
        lambda: model().set_weights([np.ones((3, 4)), np.full(4, np.nan), np.ones((4, 2)), [1, 2]]),
        ValueError,
        "weights[1] must be finite",
    ),
    (
        "set-weights-array",
        lambda: model().set_weights(np.ones((3, 4))),
        TypeError,
        "weights must be a list",
    ),
    (
        "set-weights-dtype",
        lambda: model().set_weights(
            [np.full((3, 4), "a"), np.ones(4), np.ones((4, 2)), np.ones(2)]
        ),
        TypeError,
        "weights[0] must be numeric",
    ),
    # -- layer constructors -------------------------------------------------------------
    ("dense-units-zero", lambda: Dense(0), ValueError, "units must be a positive int"),
    ("dense-units-negative", lambda: Dense(-3), ValueError, "units must be a positive int"),
    ("dense-units-float", lambda: Dense(2.5), TypeError, "units must be a positive int"),
    ("dense-units-string", lambda: Dense("8"), TypeError, "units must be a positive int"),
    (
        "dense-activation-typo",
        lambda: Dense(4, activation="rleu"),
        ValueError,
        ("activation must be one of", "Did you mean 'relu'"),
    ),
    ("dense-activation-type", lambda: Dense(4, activation=3), TypeError, "activation"),
    ("dense-input-dim-zero", lambda: Dense(4, input_dim=0), ValueError, "input_dim"),
    (
        "dense-input-shape-4d",
        lambda: Dense(4, input_shape=(2, 3, 4, 5)),
        ValueError,
        "input_shape must have 1 to 3 dimensions",
    ),
    ("dense-alpha-negative", lambda: Dense(4, alpha=-1.0), ValueError, "alpha"),
    (
        "dense-initializer-typo",
        lambda: Dense(4, kernel_initializer="glorot_unifrom"),
        ValueError,
        "kernel_initializer must be one of",
    ),
    (
        "dense-regularizer-config-keys",
        lambda: Dense(4, kernel_regularizer={"l1": 0.1, "l3": 0.2}),
        ValueError,
        ("kernel_regularizer config", "['l3']"),
    ),
    ("dropout-rate-one", lambda: Dropout(1.0), ValueError, "rate must be a number in [0, 1)"),
    ("dropout-rate-string", lambda: Dropout("0.5"), TypeError, "rate must be a number"),
    (
        "activation-typo",
        lambda: Activation("softmx"),
        ValueError,
        ("activation must", "Did you mean 'softmax'"),
    ),
    ("flatten-shape", lambda: Flatten(input_shape=(28, 0)), ValueError, "input_shape[1]"),
    # -- optimizers and losses ----------------------------------------------------------
    ("sgd-lr-zero", lambda: optimizers.SGD(learning_rate=0), ValueError, "learning_rate must"),
    ("sgd-lr-negative", lambda: optimizers.SGD(-0.1), ValueError, "learning_rate must be > 0"),
    ("adam-lr-string", lambda: optimizers.Adam("0.01"), TypeError, "learning_rate must be"),
    ("adam-lr-nan", lambda: optimizers.Adam(float("nan")), ValueError, "learning_rate must be"),
    ("sgd-momentum", lambda: optimizers.SGD(momentum=1.5), ValueError, "momentum must be < 1"),
    ("adam-beta-1", lambda: optimizers.Adam(beta_1=1.0), ValueError, "beta_1 must be < 1"),
    ("adam-epsilon-zero", lambda: optimizers.Adam(epsilon=0.0), ValueError, "epsilon must be > 0"),
    ("rmsprop-rho", lambda: optimizers.RMSprop(rho=-0.1), ValueError, "rho must be >= 0"),
    (
        "optimizer-step-int-params",
        lambda: optimizers.SGD().step(np.ones(3, dtype=int), np.ones(3, dtype=int)),
        TypeError,
        "params[0] must be a float32 or float64",
    ),
    (
        "optimizer-step-grad-shape",
        lambda: optimizers.SGD().step(np.ones(3), np.ones(4)),
        ValueError,
        "grads[0] must match params[0]",
    ),
    (
        "optimizer-step-grad-none",
        lambda: optimizers.SGD().step([np.ones(3)], [None]),
        TypeError,
        ("grads[0] must be a NumPy array", "got NoneType (leave a parameter"),
    ),
    (
        "optimizer-step-read-only-params",
        lambda: optimizers.SGD().step(np.ones(3)[::2], np.ones(2)),
        ValueError,
        "got an array that is not C-contiguous and writeable",
    ),
    (
        "loss-from-logits-type",
        lambda: losses.CategoricalCrossentropy(from_logits="yes"),
        TypeError,
        "from_logits must be True or False",
    ),
    (
        "loss-y-true-length",
        lambda: losses.MeanSquaredError()(np.ones(4), np.ones(5), backend="numpy"),
        ValueError,
        "y_true and y_pred must have the same number",
    ),
    (
        "loss-y-pred-nan",
        lambda: losses.MeanSquaredError()(np.ones(2), np.array([1.0, np.nan]), backend="numpy"),
        ValueError,
        "y_pred must be finite",
    ),
    (
        "loss-sparse-label-range",
        lambda: losses.SparseCategoricalCrossentropy()([0, 3], np.full((2, 3), 1 / 3), "numpy"),
        ValueError,
        "y_true labels must be in [0, 2]",
    ),
    # -- compile ------------------------------------------------------------------------
    (
        "compile-optimizer-typo",
        lambda: model().compile("adma", "mse"),
        ValueError,
        ("optimizer must", "Did you mean 'adam'"),
    ),
    ("compile-optimizer-type", lambda: model().compile(3, "mse"), TypeError, "optimizer"),
    (
        "compile-loss-typo",
        lambda: model().compile("sgd", "mse2"),
        ValueError,
        ("loss must", "Did you mean 'mse'"),
    ),
    ("compile-loss-missing", lambda: model().compile("sgd"), ValueError, "loss must be given"),
    (
        "compile-metric-typo",
        lambda: model().compile("sgd", "mse", metrics=["acuracy"]),
        ValueError,
        ("metrics must be one of", "Did you mean 'accuracy'"),
    ),
    (
        "compile-metrics-type",
        lambda: model().compile("sgd", "mse", metrics=5),
        TypeError,
        "metrics",
    ),
    (
        "compile-accuracy-regression",
        lambda: model().compile("sgd", "mse", metrics=["accuracy"]),
        ValueError,
        "metric 'accuracy' needs a classification loss",
    ),
    # -- Sequential ---------------------------------------------------------------------
    ("sequential-single-layer", lambda: fastnn.Sequential(Dense(3)), TypeError, "layers must be"),
    ("sequential-layer-class", lambda: fastnn.Sequential([Dense]), TypeError, "layers must be"),
    ("sequential-layer-string", lambda: fastnn.Sequential(["dense"]), TypeError, "layers must be"),
    (
        "sequential-same-layer-twice",
        lambda: fastnn.Sequential([d := Dense(3, input_dim=2), d]),
        ValueError,
        "layers must be distinct",
    ),
    ("sequential-dtype-f16", lambda: fastnn.Sequential(dtype="float16"), ValueError, "dtype"),
    ("sequential-dtype-junk", lambda: fastnn.Sequential(dtype="foo"), ValueError, "dtype"),
    ("sequential-seed-negative", lambda: fastnn.Sequential(seed=-1), ValueError, "seed must"),
    ("sequential-seed-string", lambda: fastnn.Sequential(seed="0"), TypeError, "seed must"),
    (
        "sequential-backend-typo",
        lambda: fastnn.Sequential(backend="nunpy"),
        ValueError,
        ("backend must", "Did you mean 'numpy'"),
    ),
    ("sequential-backend-type", lambda: fastnn.Sequential(backend=1), TypeError, "backend must"),
    (
        "sequential-flatten-shape",
        lambda: fastnn.Sequential([Flatten(input_shape=(2, 2)), Dense(1)]).predict(np.ones((3, 5))),
        ValueError,
        "x must have samples of shape (2, 2)",
    ),
    # -- low-level layer API ------------------------------------------------------------
    (
        "layer-forward-width",
        lambda: Dense(2, input_dim=3).build(3, backend="numpy").forward(np.ones((4, 5))),
        ValueError,
        "x must have shape (N, 3)",
    ),
    (
        "layer-forward-nan",
        lambda: Dense(2).build(3, backend="numpy").forward(X_BAD_NAN),
        ValueError,
        "x must be finite",
    ),
]


@pytest.mark.parametrize(("call", "exc", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, exc, text):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for part in (text,) if isinstance(text, str) else text:
        assert part in message
    assert "got" in message  # the actual value is always reported


def test_table_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 25


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'sparse_categorical_crossentropy'"):
        model().compile("adam", "sparse_categorical_crossentropi")
    with pytest.raises(ValueError, match="Did you mean 'he_normal'"):
        Dense(3, kernel_initializer="he_norml")


def test_layer_backward_before_forward():
    with pytest.raises(RuntimeError, match="forward"):
        Dense(2).build(3, backend="numpy").backward(np.ones((1, 2)))


def test_validation_happens_before_any_kernel(monkeypatch):
    m = model()
    weights = m.get_weights()
    calls = []
    monkeypatch.setattr(m._kernels, "run_epoch", lambda *a: calls.append(a))
    with pytest.raises(ValueError):
        m.fit(X, Y + 7, verbose=0)
    with pytest.raises(ValueError):
        m.fit(X, Y, verbose=0, validation_data=(X, Y + 7))  # validation data checked first too
    assert not calls
    for a, b in zip(weights, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_batch_size_above_data_is_clipped():
    m = model()
    m.fit(X, Y, epochs=1, batch_size=10**9, verbose=0)
    assert all(ws.rows <= len(X) for ws in m._engine._workspaces.values())
    assert np.shape(m.predict(X, batch_size=10**9)) == (10, 2)


# ---------------------------------------------------------------------------------------
# Non-finite training: NonFiniteLossError, last good weights kept


def _regression(backend, lr, scale=1.0, optimizer=None):
    m = fastnn.Sequential(
        [Dense(8, activation="relu", input_dim=5), Dense(1)], seed=1, backend=backend
    )
    m.compile(optimizer or optimizers.SGD(lr), "mse")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 5)) * scale
    y = rng.normal(size=(48, 1))
    return m, x, y


def _backends():
    return [b for b in fastnn.backend.available() if b != "cuda"]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("lr", [1e3, 1e30])
def test_nonfinite_loss_stops_fit_with_last_good_weights(backend, lr):
    m, x, y = _regression(backend, lr)
    with pytest.raises(fastnn.NonFiniteLossError, match=r"epoch 1, batch \d+") as info:
        m.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    err = info.value
    assert err.epoch == 0 and err.batch >= 1
    got = m.get_weights()
    assert all(np.isfinite(w).all() for w in got)
    assert m.optimizer.iterations == err.batch
    # replaying exactly the good steps with train_on_batch gives the same weights
    ref, _, _ = _regression(backend, lr)
    for b in range(err.batch):
        ref.train_on_batch(x[b * 8 : (b + 1) * 8], y[b * 8 : (b + 1) * 8])
    for a, b in zip(got, ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the next step fails again, in train_on_batch too, and changes nothing
    b = err.batch
    with pytest.raises(fastnn.NonFiniteLossError, match="train_on_batch"):
        m.train_on_batch(x[b * 8 : (b + 1) * 8], y[b * 8 : (b + 1) * 8])
    for a, w in zip(got, m.get_weights()):
        np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("backend", _backends())
def test_extreme_input_scale_fails_on_first_step(backend):
    m, x, y = _regression(backend, 0.01, scale=1e30, optimizer=optimizers.Adam())
    initial = m.get_weights()
    with pytest.raises(fastnn.NonFiniteLossError, match="epoch 1, batch 1"):
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(initial, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert m.optimizer.iterations == 0


@pytest.mark.parametrize("backend", _backends())
def test_update_that_overflows_the_weights_is_rolled_back(backend):
    """A finite loss (1e38 in float32) whose update overflows the weights: still an error,
    and the weights and step counter are those before that update."""
    m, x, y = _regression(backend, 1e20)
    y = np.full_like(y, 1e19)
    initial = m.get_weights()
    with pytest.raises(fastnn.NonFiniteLossError, match="epoch 1, batch 1"):
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(initial, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert m.optimizer.iterations == 0


def test_terminate_on_nan_keeps_last_good_weights():
    m, x, y = _regression("numpy", 1e3)
    stopper = fastnn.callbacks.TerminateOnNaN()
    m.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=[stopper])
    assert stopper.terminated
    assert all(np.isfinite(w).all() for w in m.get_weights())
    ref, _, _ = _regression("numpy", 1e3)
    for b in range(m.optimizer.iterations):
        ref.train_on_batch(x[b * 8 : (b + 1) * 8], y[b * 8 : (b + 1) * 8])
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_with_momentum_state_restored():
    m, x, y = _regression("numpy", 1e30, optimizer=optimizers.SGD(1e30, momentum=0.9))
    with pytest.raises(fastnn.NonFiniteLossError):
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(m._engine.host_state()).all()
    assert np.isfinite(m._engine.params).all()


@pytest.mark.parametrize("backend", _backends())
def test_overflowing_training_step_warns_about_nothing(backend):
    m, x, y = _regression(backend, 1e30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(fastnn.NonFiniteLossError):
            m.train_on_batch(x[:8], y[:8] * 1e30)


def test_objects_of_keras_get_a_message_that_says_what_to_pass():
    """Porting with ``import fastnn as keras`` mixes in a Keras object now and then: the
    TypeError says it is another library's and which name to pass instead."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    model = fastnn.Sequential([fastnn.Input((4,)), fastnn.layers.Dense(1, activation="sigmoid")],
                              backend="numpy")  # fmt: skip
    with pytest.raises(TypeError, match="another library's object.*'adam'"):
        model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    with pytest.raises(TypeError, match="'binary_crossentropy'"):
        model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy())
    with pytest.raises(TypeError, match="kernel_initializer.*'he_normal'"):
        fastnn.layers.Dense(3, kernel_initializer=keras.initializers.HeNormal(seed=1))


def test_flatten_and_reshape_backward_check_dout_as_other_layers():
    from fastnn.layers import Flatten, Reshape

    for layer, x in ((Flatten(), np.ones((2, 2, 2), np.float32)),
                     (Reshape((4,)), np.ones((3, 2, 2), np.float32))):  # fmt: skip
        with pytest.raises(RuntimeError, match="call forward"):
            layer.backward(np.ones((2, 4)))
        out = layer.forward(x)
        dx = layer.backward(np.ones(out.shape, np.float64))
        assert dx.shape == x.shape and dx.dtype == np.float32
        with pytest.raises(ValueError, match="shape of the last forward output"):
            layer.backward(np.ones((out.shape[0] + 1, *out.shape[1:])))
        with pytest.raises(ValueError, match="dout must be finite"):
            layer.backward(np.full(out.shape, np.nan))
        with pytest.raises((TypeError, ValueError), match="dout"):
            layer.backward("abcd")


def test_dataset_loaders_check_their_arguments():
    from fastnn import datasets

    cases = [
        (lambda: datasets.load_digits(seed="a"), TypeError, "seed must be an int"),
        (lambda: datasets.load_iris(seed=-1), ValueError, "seed must be an int >= 0"),
        (lambda: datasets.load_digits(test_size=100), ValueError, "test_size must be a fraction"),
        (lambda: datasets.load_digits(normalize="yes"), TypeError, "normalize must be True"),
        (lambda: datasets.load_iris(standardize=0), TypeError, "standardize must be True"),
        (lambda: datasets.make_linear_regression(noise=-1), ValueError, "noise must be >= 0"),
        (lambda: datasets.make_spirals(n_classes=0), ValueError, "n_classes must be an int"),
        (lambda: datasets.make_spirals(n_classes=1), ValueError, "n_classes must be an int >= 2"),
        (lambda: datasets.make_spirals(n_samples=10), ValueError, "each split needs at least 3"),
        (lambda: datasets.iterate_batches(np.ones((4, 2)), shuffle="yes"), TypeError, "shuffle"),
    ]
    for call, exc, text in cases:
        with pytest.raises(exc, match=re.escape(text)):
            result = call()
            if hasattr(result, "__next__"):
                next(result)


def test_a_one_dimensional_x_gets_the_reshape_that_fits_and_a_1d_gradient_keeps_its_shape():
    model = fastnn.Sequential([fastnn.Input((5,)), Dense(1)], backend="numpy")
    with pytest.raises(ValueError, match=re.escape("one sample: x.reshape(1, -1)")):
        model.predict(np.ones(5))
    with pytest.raises(ValueError, match=re.escape("per sample: x.reshape(-1, 1)")):
        model.predict(np.ones(7))
    grad = losses.MeanSquaredError().gradient(np.zeros(4), np.ones(4), backend="numpy")
    assert grad.shape == (4,) and np.allclose(grad, 2 / 4)


def test_training_flag_of_the_low_level_forward_must_be_a_bool():
    from fastnn.layers import BatchNormalization

    for layer in (Dropout(0.5), BatchNormalization()):
        with pytest.raises(TypeError, match="training must be True or False"):
            layer.forward(np.ones((4, 3), np.float32), training="yes")
