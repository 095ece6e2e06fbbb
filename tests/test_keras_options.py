"""Keras 3 spellings of the extra activations, losses and Nadam through the public API:
strings and classes, the functions of fastnn.activations, model files, errors, a malformed
plan refused by the Cython plan check, and real data (digits) reaching a known accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import activations, losses, optimizers
from fastnn.kernels import codes as C
from fastnn.layers import Activation, Dense, Input
from tests.kernel_cases import compiled_backends

ACT_NAMES = ["elu", "selu", "gelu", "silu", "swish", "softplus"]


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_strings_on_dense_and_activation(name):
    model = fastnn.Sequential(
        [Input(shape=(4,)), Dense(5, activation=name), Activation(name), Dense(2)],
        backend="numpy", seed=0,
    )  # fmt: skip
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    got = model.predict(x)
    dense, act, last = model.layers[0], model.layers[1], model.layers[2]
    fn = getattr(activations, name)
    h = fn(fn(x @ dense.kernel + dense.bias))
    np.testing.assert_allclose(got, h @ last.kernel + last.bias, rtol=1e-5, atol=1e-6)
    assert dense.get_config()["activation"] == name and act.get_config()["activation"] == name


def test_activation_functions():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(activations.elu(x), np.where(x > 0, x, np.expm1(x)))
    np.testing.assert_allclose(activations.elu(x, alpha=0.5), np.where(x > 0, x, 0.5 * np.expm1(x)))
    np.testing.assert_allclose(activations.softplus(x), np.log1p(np.exp(x)))
    np.testing.assert_allclose(activations.silu(x), x / (1 + np.exp(-x)))
    assert activations.swish is activations.silu
    np.testing.assert_allclose(activations.gelu(np.array([1.0])), [0.8413447460685429])
    np.testing.assert_allclose(activations.selu(np.array([1.0, -1.0])),
                               [1.0507009873554805, 1.0507009873554805 * 1.6732632423543772
                                * np.expm1(-1.0)])  # fmt: skip
    np.testing.assert_allclose(activations.relu(x), np.maximum(x, 0))
    assert activations.gelu(np.ones((2, 3), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="approximate"):
        activations.gelu(x, approximate=True)


def test_elu_name_uses_keras_alpha_not_the_leaky_slope():
    layer = Dense(3, activation="elu", input_dim=2, alpha=0.2)
    layer.build((2,), "float64", np.random.default_rng(0), "numpy")
    act, floats, _ = layer.plan_fields()
    assert act == C.ELU and floats[C.F_ALPHA] == 1.0


@pytest.mark.parametrize(
    "name, cls",
    [("huber", losses.Huber), ("kl_divergence", losses.KLDivergence),
     ("kld", losses.KLDivergence), ("kullback_leibler_divergence", losses.KLDivergence),
     ("poisson", losses.Poisson)],
)  # fmt: skip
def test_loss_names_and_direct_values(name, cls):
    loss = losses.get(name)
    assert type(loss) is cls and losses.CLASSES[cls.__name__] is cls
    y = np.array([[0.2, 0.8], [0.6, 0.4]])
    p = np.array([[0.3, 0.7], [0.5, 1.6]])
    d = p - y
    want = {
        losses.Huber: np.where(np.abs(d) <= 1, 0.5 * d * d, np.abs(d) - 0.5).mean(),
        losses.KLDivergence: (y * np.log(y / np.clip(p, 1e-7, 1))).sum(1).mean(),
        losses.Poisson: (p - y * np.log(p + 1e-7)).mean(),
    }[cls]
    assert loss(y, p) == pytest.approx(want, rel=1e-12)
    assert loss.gradient(y, p).shape == p.shape


def test_huber_delta_other_than_one_is_refused():
    assert losses.Huber(delta=1).delta == 1.0
    with pytest.raises(ValueError, match="delta must be 1.0"):
        losses.Huber(delta=2.0)
    with pytest.raises(TypeError, match="delta"):
        losses.Huber(delta="1")


def test_nadam_spellings_and_config():
    opt = optimizers.get("nadam")
    assert isinstance(opt, optimizers.Nadam) and opt.code == C.NADAM
    assert optimizers.CLASSES["Nadam"] is optimizers.Nadam
    assert opt.get_config() == {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                                "epsilon": 1e-7}  # fmt: skip
    assert opt.slots == 2
    with pytest.raises(ValueError, match="beta_1"):
        optimizers.Nadam(beta_1=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        optimizers.Nadam(epsilon=0.0)


def test_nadam_direct_step_keeps_per_array_state():
    """Two arrays stepped in separate calls == stepped together (state per array)."""
    rng = np.random.default_rng(1)
    a0, b0 = rng.normal(size=4), rng.normal(size=3)
    ga, gb = rng.normal(size=4), rng.normal(size=3)
    a1, b1, a2, b2 = a0.copy(), b0.copy(), a0.copy(), b0.copy()
    o1, o2 = optimizers.Nadam(0.05), optimizers.Nadam(0.05)
    for _ in range(3):
        o1.step([a1, b1], [ga, gb])
        o2.step(a2, ga)
    for _ in range(3):
        o2.step(b2, gb)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)


def test_model_file_keeps_new_names(tmp_path):
    model = fastnn.Sequential(
        [Input(shape=(3,)), Dense(4, activation="gelu"), Activation("swish"),
         Dense(2, activation="softplus")], backend="numpy", seed=1,
    )  # fmt: skip
    model.compile(optimizer=optimizers.Nadam(0.01), loss="poisson")
    x = np.random.default_rng(2).normal(size=(8, 3))
    y = np.random.default_rng(3).poisson(1.0, (8, 2))
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "m.fnn"
    model.save(path)
    back = fastnn.load_model(path)
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-6)
    assert isinstance(back.optimizer, optimizers.Nadam)
    assert isinstance(back.loss, losses.Poisson)
    assert [lay.activation for lay in back.layers[:2]] == ["gelu", "swish"]


def _cython():
    from fastnn import backend

    if "cython" not in compiled_backends():
        pytest.skip("the cython backend is not built")
    return backend.load("cython")


def test_cython_plan_check_wants_the_saved_pre_activation():
    """A Dense row with gelu/silu whose P_SAVE_OFF is missing or too short is a ValueError
    before any loop runs."""
    cy = _cython()
    from tests.kernel_cases import smooth_stack

    s = smooth_stack(np.float64, np.random.default_rng(0))
    b = s.buffers()
    layers = b.plan[0].copy()
    assert layers[0, C.P_ACT] == C.GELU and layers[0, C.P_SAVE_OFF] >= 0
    for bad in (-1, b.acts.size - 1):
        broken = layers.copy()
        broken[0, C.P_SAVE_OFF] = bad
        acts0 = b.acts.copy()
        with pytest.raises(ValueError, match="pre-activation"):
            cy.forward_stack(s.x, (broken, b.plan[1], b.plan[2]), b.net, b.work, 1, 0, 1)
        np.testing.assert_array_equal(b.acts, acts0)
    kinds = layers.copy()
    kinds[0, C.P_KIND] = C.DROPOUT
    kinds[0, C.P_OUT2] = kinds[0, C.P_IN2]
    with pytest.raises(ValueError, match="gelu, silu"):
        cy.forward_stack(s.x, (kinds, b.plan[1], b.plan[2]), b.net, b.work, 1, 0, 1)


def test_plan_refuses_input_activations_on_other_kinds():
    from fastnn._plan import _check_input_act

    class Fake:
        kind, name, activation = C.BATCHNORM, "bn", "gelu"

    with pytest.raises(ValueError, match="Dense and Activation"):
        _check_input_act(Fake(), C.GELU)
    _check_input_act(Fake(), C.ELU)  # output-derivative activations run anywhere


@pytest.mark.parametrize("backend", compiled_backends())
def test_digits_gelu_nadam_reaches_known_accuracy(backend):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1400], idx[1400:]
    model = fastnn.Sequential(
        [Input(shape=(64,)), Dense(64, activation="gelu"), Dense(32, activation="selu"),
         Dense(10, activation="softmax")], backend=backend, seed=0,
    )  # fmt: skip
    model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(x[tr], y[tr], epochs=15, batch_size=32, verbose=0)
    _, acc = model.evaluate(x[te], y[te], verbose=0)
    assert acc >= 0.94


# use_bias=False -----------------------------------------------------------------------


def _no_bias_model(backend, seed=4):
    return fastnn.Sequential(
        [Input(shape=(5,)), Dense(6, activation="gelu", use_bias=False),
         Dense(3, use_bias=False)], backend=backend, dtype="float64", seed=seed,
    )  # fmt: skip


def test_dense_without_bias_has_only_a_kernel(tmp_path):
    model = _no_bias_model("numpy")
    x = np.random.default_rng(0).normal(size=(4, 5))
    out = model.predict(x)
    k0, k1 = model.get_weights()
    assert k0.shape == (5, 6) and k1.shape == (6, 3) and model.count_params() == 48
    np.testing.assert_allclose(out, activations.gelu(x @ k0) @ k1, rtol=1e-12)
    assert model.layers[0].bias is None and model.layers[0].get_config()["use_bias"] is False
    model.compile("sgd", "mse")
    path = tmp_path / "nb.fnn"
    model.save(path)
    np.testing.assert_allclose(fastnn.load_model(path).predict(x), out, rtol=1e-12)
    with pytest.raises(TypeError, match="use_bias"):
        Dense(2, use_bias="no")


@pytest.mark.parametrize("backend", ["numpy", *compiled_backends()])
def test_dense_without_bias_trains_by_the_exact_gradient(backend):
    """SGD(lr=1) moves the kernel of a linear no-bias layer by its MSE gradient
    2/(N*C) x^T (x W - y), on every backend; a second layer and gelu train too."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 5)), rng.normal(size=(8, 3))
    lin = fastnn.Sequential([Input(shape=(5,)), Dense(3, use_bias=False)], backend=backend,
                            dtype="float64", seed=2)  # fmt: skip
    lin.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse")
    lin.predict(x)
    (w0,) = lin.get_weights()
    lin.train_on_batch(x, y)
    grad = 2.0 / (8 * 3) * x.T @ (x @ w0 - y)
    np.testing.assert_allclose(lin.get_weights()[0], w0 - grad, rtol=1e-12, atol=1e-14)
    ref_model, model = _no_bias_model("numpy"), _no_bias_model(backend)
    for m in (ref_model, model):
        m.compile(optimizer="nadam", loss="huber")
        m.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_dense_without_bias_low_level_api():
    layer = Dense(3, activation="silu", use_bias=False, input_dim=4)
    layer.build((4,), "float64", np.random.default_rng(0), "numpy")
    x = np.random.default_rng(1).normal(size=(2, 4))
    out = layer.forward(x, training=True)
    np.testing.assert_allclose(out, activations.silu(x @ layer.kernel), rtol=1e-12)
    dx = layer.backward(np.ones_like(out))
    z = x @ layer.kernel
    s = 1 / (1 + np.exp(-z))
    dz = s * (1 + z * (1 - s))
    np.testing.assert_allclose(layer.dkernel, x.T @ dz, rtol=1e-12)
    np.testing.assert_allclose(dx, dz @ layer.kernel.T, rtol=1e-12)


@pytest.mark.parametrize("loss", ["huber", "kl_divergence", "poisson"])
def test_whole_model_gradients_match_finite_differences(loss):
    """fastnn.gradcheck on float64 models with every new activation (gelu's saved
    pre-activation included) and each new loss."""
    rng = np.random.default_rng(8)
    last = {"huber": None, "kl_divergence": "softmax", "poisson": "softplus"}[loss]
    model = fastnn.Sequential(
        [Input(shape=(4,)), Dense(6, activation="gelu"), Activation("elu"),
         Dense(5, activation="silu"), Activation("selu"), Dense(3, activation=last)],
        backend="numpy", dtype="float64", seed=3,
    )  # fmt: skip
    model.compile("sgd", loss)
    x = rng.normal(size=(7, 4))
    y = rng.dirichlet(np.ones(3), 7) if loss == "kl_divergence" else rng.poisson(1.0, (7, 3))
    result = fastnn.gradcheck(model, x, y.astype(np.float64), rtol=1e-5, atol=1e-8)
    assert result.passed and result.checked > 50, result
