"""Level 3: the reference backward == central finite differences (float64).

Every activation, every loss kernel, the dense and dropout kernels, the weight penalty, whole
models (through :func:`fastnn.gradcheck`) and single layers.  A deliberately wrong backward must
make the checker fail, so a passing check means something.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastnn
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from fastnn.layers import Activation, Dense, Dropout
from fastnn.regularizers import L1L2

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
EPS = 1e-6
# central differences in float64 with eps=1e-6 are good to ~1e-9 absolute on O(1) values
RTOL, ATOL = 1e-6, 1e-8

ACTIVATIONS = {
    "linear": (C.LINEAR, 0.0),
    "relu": (C.RELU, 0.0),
    "leaky_relu": (C.LEAKY_RELU, 0.2),
    "leaky_relu_alpha_0.05": (C.LEAKY_RELU, 0.05),
    "sigmoid": (C.SIGMOID, 0.0),
    "tanh": (C.TANH, 0.0),
    "softmax": (C.SOFTMAX, 0.0),
}


def numeric_grad(f, theta, eps=EPS):
    """Central differences of the scalar f() with respect to every entry of theta (in place)."""
    flat = theta.reshape(-1)
    out = np.empty(flat.size)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        out[i] = (up - down) / (2 * eps)
    return out.reshape(theta.shape)


def assert_grad(analytic, numeric, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def away_from_zero(rng, shape, margin=0.1):
    """Normal samples with |x| >= margin (the kinks of relu/leaky_relu/|.| are at 0)."""
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin + x, x)


# ---------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name):
    act, alpha = ACTIVATIONS[name]
    rng = np.random.default_rng(1)
    x = away_from_zero(rng, (7, 5)) * 1.5
    r = rng.normal(size=(7, 5))  # L = sum(act(x) * r), so dL/dy = r
    y = np.empty_like(x)

    def loss():
        ref.activation_forward(x, y, act, alpha)
        return float(np.sum(y * r))

    loss()
    dx = np.empty_like(x)
    ref.activation_backward(y.copy(), r, dx, act, alpha)
    assert_grad(dx, numeric_grad(loss, x))


def test_leaky_relu_uses_the_given_alpha():
    x = np.array([[-2.0, 3.0]])
    y = np.empty_like(x)
    ref.activation_forward(x, y, C.LEAKY_RELU, 0.05)
    np.testing.assert_allclose(y, [[-0.1, 3.0]])
    dx = np.empty_like(x)
    ref.activation_backward(y, np.ones_like(x), dx, C.LEAKY_RELU, 0.05)
    np.testing.assert_allclose(dx, [[0.05, 1.0]])


# ---------------------------------------------------------------------------------------
# Loss kernels (gradient with respect to the predictions, non-uniform sample weights)


def _loss_case(code, rng, n=6, c=4):
    """(prediction, targets) for a loss code, predictions away from any clip or kink."""
    if code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE):
        z = rng.normal(size=(n, c)) * 2
        if code == C.SOFTMAX_CE:
            y = rng.dirichlet(np.ones(c), size=n)  # probability rows, not only one-hot
        elif code == C.SPARSE_SOFTMAX_CE:
            y = rng.integers(0, c, size=(n, 1)).astype(np.float64)
        else:
            y = rng.uniform(0, 1, size=(n, c))
        return z, y
    if code == C.CATEGORICAL_CE:
        p = rng.dirichlet(np.ones(c) * 5, size=n)  # well inside [1e-7, 1 - 1e-7]
        y = np.eye(c)[rng.integers(0, c, size=n)]
        return p, y
    if code == C.BINARY_CE:
        return rng.uniform(0.1, 0.9, size=(n, c)), rng.uniform(0, 1, size=(n, c))
    y = rng.normal(size=(n, c))
    return y + away_from_zero(rng, (n, c)), y  # MSE / MAE: |pred - y| >= 0.1


LOSS_CODES = {
    "softmax_ce": C.SOFTMAX_CE,
    "sparse_softmax_ce": C.SPARSE_SOFTMAX_CE,
    "sigmoid_bce": C.SIGMOID_BCE,
    "categorical_ce": C.CATEGORICAL_CE,
    "binary_ce": C.BINARY_CE,
    "mse": C.MSE,
    "mae": C.MAE,
}


@pytest.mark.parametrize("name", list(LOSS_CODES))
def test_loss_gradient_matches_finite_differences(name):
    code = LOSS_CODES[name]
    rng = np.random.default_rng(2)
    pred, y = _loss_case(code, rng)
    sw = rng.uniform(0.2, 3.0, size=pred.shape[0])
    scratch_p, scratch_d = np.empty_like(pred), np.empty_like(pred)

    def loss():
        return ref.loss_grad(pred, y, sw, scratch_p, scratch_d, code)

    dz = np.empty_like(pred)
    p = np.empty_like(pred)
    value = ref.loss_grad(pred.copy(), y, sw, p, dz, code)
    assert np.isfinite(value) and value > 0
    assert_grad(dz, numeric_grad(loss, pred))


@pytest.mark.parametrize("name", list(LOSS_CODES))
def test_loss_sample_weights_scale_per_sample(name):
    """Doubling one sample's weight adds exactly that sample's share to loss and gradient."""
    code = LOSS_CODES[name]
    rng = np.random.default_rng(3)
    pred, y = _loss_case(code, rng)
    n = pred.shape[0]
    sw = rng.uniform(0.5, 2.0, size=n)
    sw2 = sw.copy()
    sw2[2] *= 2
    d1, d2, p = np.empty_like(pred), np.empty_like(pred), np.empty_like(pred)
    l1 = ref.loss_grad(pred.copy(), y, sw, p, d1, code)
    l2 = ref.loss_grad(pred.copy(), y, sw2, p, d2, code)
    one = np.zeros(n)
    one[2] = sw[2]
    d3 = np.empty_like(pred)
    l3 = ref.loss_grad(pred.copy(), y, one, p, d3, code)
    assert l2 == pytest.approx(l1 + l3, rel=1e-12)
    np.testing.assert_allclose(d2, d1 + d3, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.delete(d3, 2, axis=0), 0)


# ---------------------------------------------------------------------------------------
# Dense, dropout, penalty kernels


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_dense_backward_matches_finite_differences(name):
    act, alpha = ACTIVATIONS[name]
    rng = np.random.default_rng(4)
    n, i, o = 5, 4, 3
    x = rng.normal(size=(n, i))
    w = rng.normal(size=(i, o))
    b = rng.normal(size=o)
    r = rng.normal(size=(n, o))
    # relu-type kinks at z = 0 would spoil finite differences: keep z away from 0
    assert np.abs(x @ w + b).min() > 1e-3
    out = np.empty((n, o))

    def loss():
        ref.dense_forward(x, w, b, out, act, alpha)
        return float(np.sum(out * r))

    loss()
    dz, dx = np.empty((n, o)), np.empty((n, i))
    dw, db = np.empty((i, o)), np.empty(o)
    ref.dense_backward(x, w, out.copy(), r.copy(), dz, dx, dw, db, act, alpha, 1)
    assert_grad(dw, numeric_grad(loss, w))
    assert_grad(db, numeric_grad(loss, b))
    assert_grad(dx, numeric_grad(loss, x))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 6),
    i=st.integers(1, 6),
    o=st.integers(1, 6),
    name=st.sampled_from(list(ACTIVATIONS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_backward_any_shape(n, i, o, name, seed):
    act, alpha = ACTIVATIONS[name]
    rng = np.random.default_rng(seed)
    x, w, b = rng.normal(size=(n, i)), rng.normal(size=(i, o)), rng.normal(size=o)
    r = rng.normal(size=(n, o))
    assume(np.abs(x @ w + b).min() > 1e-4)  # no relu kink within the difference step
    out = np.empty((n, o))

    def loss():
        ref.dense_forward(x, w, b, out, act, alpha)
        return float(np.sum(out * r))

    loss()
    dz, dx, dw, db = np.empty((n, o)), np.empty((n, i)), np.empty((i, o)), np.empty(o)
    ref.dense_backward(x, w, out.copy(), r.copy(), dz, dx, dw, db, act, alpha, 1)
    for analytic, theta in ((dw, w), (db, b), (dx, x)):
        assert_grad(analytic, numeric_grad(loss, theta), rtol=1e-5, atol=1e-7)


def test_dense_backward_leaves_dx_alone_without_need_dx():
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=(3, 2)), rng.normal(size=(2, 4)), rng.normal(size=4)
    out = np.empty((3, 4))
    ref.dense_forward(x, w, b, out, C.TANH, 0.0)
    dx = np.full((3, 2), 7.0)
    dz, dw, db = np.empty((3, 4)), np.empty((2, 4)), np.empty(4)
    ref.dense_backward(x, w, out, np.ones((3, 4)), dz, dx, dw, db, C.TANH, 0.0, 0)
    np.testing.assert_array_equal(dx, 7.0)


def test_dropout_backward_matches_finite_differences():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(9, 8))
    r = rng.normal(size=(9, 8))
    rate, seed = 0.4, 12345
    out = np.empty_like(x)

    def loss():
        ref.dropout_forward(x, out, rate, seed)
        return float(np.sum(out * r))

    loss()
    keep = out != 0
    assert 0.3 < 1 - keep.mean() < 0.5  # the mask really drops about `rate`
    np.testing.assert_allclose(out[keep], x[keep] / (1 - rate), rtol=1e-15)
    dx = np.empty_like(x)
    ref.dropout_backward(r, dx, rate, seed)
    assert_grad(dx, numeric_grad(loss, x))
    # a different seed draws a different mask, so the gradient changes
    dx2 = np.empty_like(x)
    ref.dropout_backward(r, dx2, rate, seed + 1)
    assert not np.array_equal(dx, dx2)


@pytest.mark.parametrize("l1, l2", [(0.01, 0.0), (0.0, 0.03), (0.02, 0.05)])
def test_l1l2_penalty_gradient(l1, l2):
    rng = np.random.default_rng(7)
    w = away_from_zero(rng, (4, 3))
    base = rng.normal(size=(4, 3))  # the penalty gradient is ADDED to dw
    dw = base.copy()
    penalty = ref.l1l2_penalty(w, dw, l1, l2)
    assert penalty == pytest.approx(l1 * np.abs(w).sum() + l2 * np.square(w).sum(), rel=1e-14)

    def value():
        return ref.l1l2_penalty(w, np.zeros_like(w), l1, l2)

    assert_grad(dw - base, numeric_grad(value, w))


# ---------------------------------------------------------------------------------------
# Whole models through fastnn.gradcheck


def _classifier(reg):
    return fastnn.Sequential(
        [
            Dense(7, activation="tanh", input_dim=5, kernel_regularizer=reg),
            Dropout(0.3),
            Dense(6, activation="relu"),
            Dense(4, activation="softmax"),
        ],
        seed=3,
        dtype="float64",
        backend="numpy",
    )


def _data(rng, n=12, d=5):
    return rng.normal(size=(n, d))


def test_gradcheck_classifier_sparse_ce_with_dropout_and_regularizer():
    rng = np.random.default_rng(8)
    model = _classifier(L1L2(0.01, 0.02))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = _data(rng)
    y = rng.integers(0, 4, size=len(x))
    sw = rng.uniform(0.5, 2.0, size=len(x))
    res = fastnn.gradcheck(model, x, y, sample_weight=sw, rtol=1e-5, atol=1e-8)
    assert res, res
    assert res.checked == model.count_params()


@pytest.mark.parametrize("from_logits", [False, True])
def test_gradcheck_categorical_ce(from_logits):
    rng = np.random.default_rng(9)
    last = None if from_logits else "softmax"
    model = fastnn.Sequential(
        [Dense(6, activation="leaky_relu", input_dim=5), Dense(3, activation=last)],
        seed=1,
        dtype="float64",
        backend="numpy",
    )
    model.compile(loss=fastnn.losses.CategoricalCrossentropy(from_logits=from_logits))
    x = _data(rng)
    y = np.eye(3)[rng.integers(0, 3, size=len(x))]
    assert fastnn.gradcheck(model, x, y, rtol=1e-5)


def test_gradcheck_regression_mse_with_l2():
    rng = np.random.default_rng(10)
    model = fastnn.Sequential(
        [
            Dense(8, activation="tanh", input_dim=5),
            Dense(6, activation="sigmoid", kernel_regularizer="l2"),
            Dense(2),
        ],
        seed=2,
        dtype="float64",
        backend="numpy",
    )
    model.compile(optimizer="adam", loss="mse")
    x = _data(rng)
    y = rng.normal(size=(len(x), 2))
    assert fastnn.gradcheck(model, x, y, rtol=1e-5)


def test_gradcheck_regression_mae():
    rng = np.random.default_rng(11)
    model = fastnn.Sequential(
        [Dense(6, activation="tanh", input_dim=5), Dense(1)],
        seed=4,
        dtype="float64",
        backend="numpy",
    )
    model.compile(loss="mae")
    x = _data(rng)
    y = rng.normal(size=len(x)) * 3  # far from the predictions: no kink of |.| nearby
    assert fastnn.gradcheck(model, x, y, rtol=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
def test_gradcheck_binary_crossentropy(from_logits):
    rng = np.random.default_rng(12)
    model = fastnn.Sequential(
        [
            Dense(6, activation="relu", input_dim=5, kernel_regularizer=L1L2(0.01, 0.01)),
            Dropout(0.25),
            Dense(5, activation="tanh"),
            Dense(3, activation=None if from_logits else "sigmoid"),
        ],
        seed=5,
        dtype="float64",
        backend="numpy",
    )
    model.compile(loss=fastnn.losses.BinaryCrossentropy(from_logits=from_logits))
    x = _data(rng)
    y = (rng.uniform(size=(len(x), 3)) > 0.5).astype(float)
    assert fastnn.gradcheck(model, x, y, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Single layers through fastnn.gradcheck(layer, x)


def _built(layer, d, backend):
    return layer.build(d, "float64", np.random.default_rng(0), backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "activation", ["linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"]
)
def test_gradcheck_dense_layer(backend, activation):
    layer = _built(
        Dense(4, activation=activation, alpha=0.1, kernel_regularizer=L1L2(0.01, 0.02)),
        5,
        backend,
    )
    x = np.random.default_rng(13).normal(size=(6, 5))
    res = fastnn.gradcheck(layer, x, rtol=1e-5)
    assert res, res
    assert res.checked == x.size + 5 * 4 + 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_gradcheck_activation_layer(backend, activation):
    layer = _built(Activation(activation, alpha=0.3), 4, backend)
    x = away_from_zero(np.random.default_rng(14), (5, 4))
    assert fastnn.gradcheck(layer, x, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_dropout_layer(backend):
    layer = _built(Dropout(0.5, seed=3), 6, backend)
    x = np.random.default_rng(15).normal(size=(8, 6))
    assert fastnn.gradcheck(layer, x, rtol=1e-5)


def test_gradcheck_builds_an_unbuilt_layer_in_float64():
    layer = Dense(3, activation="tanh")
    assert fastnn.gradcheck(layer, np.random.default_rng(16).normal(size=(4, 2)))
    assert layer.dtype == np.float64 and layer.kernel.shape == (2, 3)


def test_gradcheck_rejects_a_float32_layer():
    layer = Dense(3).build(2, "float32", np.random.default_rng(0), "numpy")
    with pytest.raises(ValueError, match="float64"):
        fastnn.gradcheck(layer, np.ones((2, 2)))


# ---------------------------------------------------------------------------------------
# The checker can fail


def test_gradcheck_fails_for_a_wrong_layer_backward(monkeypatch):
    layer = _built(Dense(4, activation="tanh"), 5, "numpy")
    x = np.random.default_rng(17).normal(size=(6, 5))
    assert fastnn.gradcheck(layer, x)
    right = layer.backward
    monkeypatch.setattr(layer, "backward", lambda dout: right(dout) * 1.01)
    res = fastnn.gradcheck(layer, x)
    assert not res
    assert res.failed > 0 and res.max_rel_error > 0.005


def test_gradcheck_fails_for_a_wrong_model_backward(monkeypatch):
    rng = np.random.default_rng(18)
    model = _classifier(None)
    model.compile(loss="sparse_categorical_crossentropy")
    x, y = _data(rng), rng.integers(0, 4, size=12)
    assert fastnn.gradcheck(model, x, y)
    right = ref.dense_backward

    def wrong(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
        right(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx)
        dw *= 1.01

    monkeypatch.setattr(ref, "dense_backward", wrong)
    res = fastnn.gradcheck(model, x, y)
    assert not res
    assert res.failed > 0


def test_gradcheck_fails_when_a_penalty_gradient_is_missing(monkeypatch):
    rng = np.random.default_rng(19)
    model = _classifier(L1L2(0.0, 0.5))
    model.compile(loss="sparse_categorical_crossentropy")
    x, y = _data(rng), rng.integers(0, 4, size=12)
    assert fastnn.gradcheck(model, x, y)
    monkeypatch.setattr(ref, "l1l2_penalty", lambda w, dw, l1, l2: 0.0)
    assert not fastnn.gradcheck(model, x, y)


def test_gradcheck_module_is_importable():
    mod = importlib.import_module("fastnn.gradcheck")
    assert mod.gradcheck is fastnn.gradcheck


# ---------------------------------------------------------------------------------------
# The public loss objects: Loss.gradient == finite differences of Loss.__call__


LOSS_OBJECTS = [
    (fastnn.losses.SparseCategoricalCrossentropy(), "labels"),
    (fastnn.losses.SparseCategoricalCrossentropy(from_logits=True), "labels"),
    (fastnn.losses.CategoricalCrossentropy(), "onehot"),
    (fastnn.losses.CategoricalCrossentropy(from_logits=True), "onehot"),
    (fastnn.losses.BinaryCrossentropy(), "binary"),
    (fastnn.losses.BinaryCrossentropy(from_logits=True), "binary"),
    (fastnn.losses.MeanSquaredError(), "values"),
    (fastnn.losses.MeanAbsoluteError(), "values"),
]


@pytest.mark.parametrize("loss, kind", LOSS_OBJECTS, ids=[repr(lo) for lo, _ in LOSS_OBJECTS])
def test_loss_object_gradient_matches_finite_differences(loss, kind):
    rng = np.random.default_rng(20)
    n, c = 5, 4
    if getattr(loss, "from_logits", False) or kind == "values":
        pred = rng.normal(size=(n, c))
    elif kind == "binary":
        pred = rng.uniform(0.1, 0.9, size=(n, c))
    else:
        pred = rng.dirichlet(np.ones(c) * 5, size=n)
    labels = rng.integers(0, c, size=n)
    y = {
        "labels": labels,
        "onehot": np.eye(c)[labels],
        "binary": (rng.uniform(size=(n, c)) > 0.5).astype(float),
        "values": pred + away_from_zero(rng, (n, c)),
    }[kind]
    sw = rng.uniform(0.5, 2.0, size=n)
    grad = loss.gradient(y, pred, sample_weight=sw, backend="numpy")
    assert grad.shape == pred.shape
    numeric = numeric_grad(lambda: loss(y, pred, sample_weight=sw, backend="numpy"), pred)
    assert_grad(grad, numeric)


def test_gradcheck_embedding_layer_checks_its_table():
    """Token ids have no gradient (backward returns None): the table's is checked."""
    ids = np.random.default_rng(0).integers(0, 6, (3, 4)).astype(np.float64)
    res = fastnn.gradcheck(fastnn.layers.Embedding(6, 3), ids)
    assert res.passed and res.checked > 0
