"""Keras 3's activations (elu, selu, gelu, silu/swish, softplus), losses (huber,
kl_divergence, poisson) and the Nadam optimizer on every CPU backend: == reference (float32
and float64, odd shapes, aliasing), reference derivatives == finite differences (float64),
Nadam == Keras's formula written out, training steps == reference; PyTorch parity lives in
tests/test_torch_parity.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from tests.kernel_cases import (
    DTYPES,
    HYPER,
    assert_close,
    compiled_backends,
    make_targets,
    rng_for,
    smooth_stack,
    train_steps,
)
from tests.test_kernels import STEP_NAMES, _compare_runs

BACKENDS = compiled_backends()
NEW_ACTS = {"elu": C.ELU, "selu": C.SELU, "gelu": C.GELU, "silu": C.SILU,
            "softplus": C.SOFTPLUS}  # fmt: skip
NEW_LOSSES = {"huber": C.HUBER, "kl_divergence": C.KL_DIVERGENCE, "poisson": C.POISSON}
SHAPES = ((1, 1), (7, 3), (33, 65))
ALPHA = 0.7  # elu's alpha in the kernel tests (the name "elu" uses 1.0)

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
shapes = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
acts = pytest.mark.parametrize("act", list(NEW_ACTS.values()), ids=list(NEW_ACTS))


@pytest.fixture(params=BACKENDS)
def mod(request):
    from fastnn import backend

    return backend.load(request.param)


def _act_input(shape, act, dtype, key):
    x = rng_for(key, shape, act).standard_normal(shape) * 4
    x.flat[0] = 0.0
    if x.size > 2:
        x.flat[1], x.flat[2] = 30.0, -30.0  # saturated tails (exp overflow / underflow)
    return x.astype(dtype)


def _backward_arg(x, y, act):
    """What activation_backward reads: the input for codes.INPUT_ACTS, else the output."""
    return x if act in C.INPUT_ACTS else y


@dtypes
@shapes
@acts
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_activation_forward(mod, dtype, shape, act, inplace):
    x = _act_input(shape, act, dtype, "fwd")
    expected = np.empty_like(x)
    ref.activation_forward(x.copy(), expected, act, ALPHA)
    got = x.copy() if inplace else np.full_like(x, np.nan)
    x0 = x.copy()
    mod.activation_forward(got if inplace else x, got, act, ALPHA)
    np.testing.assert_array_equal(x, x0)
    assert got.dtype == dtype
    assert_close(got, expected, dtype, factor=16.0, what="out")


@dtypes
@shapes
@acts
@pytest.mark.parametrize("inplace", [False, True], ids=["dx", "dx_is_dout"])
def test_activation_backward(mod, dtype, shape, act, inplace):
    x = _act_input(shape, act, dtype, "bwd")
    y = np.empty_like(x)
    ref.activation_forward(x, y, act, ALPHA)
    arg = _backward_arg(x, y, act)
    dout = rng_for("dout", shape, act).standard_normal(shape).astype(dtype)
    expected = np.empty_like(x)
    ref.activation_backward(arg, dout.copy(), expected, act, ALPHA)
    got = dout.copy() if inplace else np.full_like(x, np.nan)
    arg0 = arg.copy()
    mod.activation_backward(arg, got if inplace else dout, got, act, ALPHA)
    np.testing.assert_array_equal(arg, arg0)
    assert_close(got, expected, dtype, factor=16.0, what="dx")


@pytest.mark.parametrize("act", list(NEW_ACTS.values()), ids=list(NEW_ACTS))
def test_activation_derivative_matches_finite_differences(act):
    x = rng_for("fd", act).standard_normal((5, 9)) * 3
    x[0, :3] = [1e-3, -1e-3, 0.5]
    y, dx = np.empty_like(x), np.empty_like(x)
    ref.activation_forward(x, y, act, ALPHA)
    ref.activation_backward(_backward_arg(x, y, act), np.ones_like(x), dx, act, ALPHA)
    h = 1e-6
    hi, lo = np.empty_like(x), np.empty_like(x)
    ref.activation_forward(x + h, hi, act, ALPHA)
    ref.activation_forward(x - h, lo, act, ALPHA)
    np.testing.assert_allclose(dx, (hi - lo) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("act", list(NEW_ACTS.values()), ids=list(NEW_ACTS))
def test_activation_values_match_the_formulas(act):
    from math import erf

    x = np.linspace(-5, 5, 41)
    y = np.empty_like(x)
    ref.activation_forward(x[None], y[None], act, 1.0)
    sig = 1 / (1 + np.exp(-x))
    elu = np.where(x > 0, x, np.exp(x) - 1)
    expected = {
        C.ELU: elu,
        C.SELU: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
        C.GELU: 0.5 * x * (1 + np.array([erf(v / np.sqrt(2)) for v in x])),
        C.SILU: x * sig,
        C.SOFTPLUS: np.log(1 + np.exp(x)),
    }[act]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)


@dtypes
@shapes
@acts
def test_dense_with_activation(mod, dtype, shape, act):
    """dense_forward == reference; dense_backward from the saved pre-activation (gelu,
    silu) or the output (the others) == reference."""
    n, o = shape
    rng = rng_for("dense", shape, act)
    i = 5
    x = rng.standard_normal((n, i)).astype(dtype)
    w = (rng.standard_normal((i, o)) / np.sqrt(i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    outs = []
    for module in (ref, mod):
        z, y = np.empty((n, o), dtype), np.empty((n, o), dtype)
        module.dense_forward(x, w, b, z, C.LINEAR, 0.0)
        module.dense_forward(x, w, b, y, act, ALPHA)
        dout = rng_for("dd", shape).standard_normal((n, o)).astype(dtype)
        dx, dw, db = np.empty((n, i), dtype), np.empty((i, o), dtype), np.empty(o, dtype)
        module.dense_backward(x, w, _backward_arg(z, y, act), dout, dout, dx, dw, db, act,
                              ALPHA, 1)  # fmt: skip
        outs.append((y, dout, dx, dw, db))
    for name, got, exp in zip(("out", "dz", "dx", "dw", "db"), outs[1], outs[0]):
        assert_close(got, exp, dtype, k=i + n, factor=16.0, what=name)


# Losses -------------------------------------------------------------------------------


def _loss_case(code, n, c, dtype, key):
    rng = rng_for(key, code, n, c)
    y = make_targets(code, n, c, rng, dtype)
    sw = rng.uniform(0.5, 1.5, n).astype(dtype)
    sw[n // 2] = 0.0
    if code == C.HUBER:  # both sides of |d| = delta
        out = y + rng.standard_normal((n, c)) * 1.5
    else:  # positive predictions, some outside KL's clip range [eps, 1]
        out = rng.uniform(0.01, 1.0, (n, c))
        out.flat[0] = 1e-9
        if out.size > 1:
            out.flat[-1] = 1.5 if code == C.KL_DIVERGENCE else 3.0
    return out.astype(dtype), y, sw


@dtypes
@pytest.mark.parametrize("shape", ((1, 1), (7, 3), (130, 10), (3, 600)), ids=str)
@pytest.mark.parametrize("name", list(NEW_LOSSES))
@pytest.mark.parametrize("alias", [False, True], ids=["dp", "dp_is_out"])
def test_loss_kernels(mod, dtype, shape, name, alias):
    code = NEW_LOSSES[name]
    out, y, sw = _loss_case(code, *shape, dtype, "loss")
    d_r = np.empty_like(out)
    l_r = getattr(ref, name)(out.copy(), y, sw, d_r)
    o = out.copy()
    d = o if alias else np.full_like(out, np.nan)
    loss = getattr(mod, name)(o, y, sw, d)
    assert isinstance(loss, float)
    assert_close(loss, l_r, dtype, k=out.size, scale=4.0, what="loss")
    assert_close(d, d_r, dtype, k=4, scale=1e-3, what="grad")
    d2 = np.full_like(out, np.nan)  # and through the dispatcher
    p = np.full_like(out, -1.0)
    assert_close(mod.loss_grad(out.copy(), y, sw, p, d2, code), l_r, dtype, k=out.size,
                 scale=4.0, what="loss_grad")  # fmt: skip
    assert_close(d2, d_r, dtype, k=4, scale=1e-3, what="loss_grad dz")
    assert np.all(p == -1.0)  # the output losses leave p alone


@pytest.mark.parametrize("name", list(NEW_LOSSES))
def test_loss_gradient_matches_finite_differences(name):
    code = NEW_LOSSES[name]
    out, y, sw = _loss_case(code, 6, 4, np.float64, "fd")
    if code != C.HUBER:  # inside the clip range: the loss is smooth there
        out = np.clip(out, 0.05, 0.95)
    grad = np.empty_like(out)
    ref.loss_grad(out.copy(), y, sw, out.copy(), grad, code)
    num = np.empty_like(out)
    h, scratch = 1e-6, np.empty_like(out)
    for k in range(out.size):
        e = np.zeros(out.size)
        e[k] = h
        e = e.reshape(out.shape)
        hi = ref.loss_grad(out + e, y, sw, scratch, scratch.copy(), code)
        lo = ref.loss_grad(out - e, y, sw, scratch, scratch.copy(), code)
        num.flat[k] = (hi - lo) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_loss_values_match_keras_formulas():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 1.2, (5, 4))
    y = rng.dirichlet(np.ones(4), 5)
    sw = np.ones(5)
    d = p - y
    huber = np.where(np.abs(d) <= 1, 0.5 * d * d, np.abs(d) - 0.5).mean(axis=1).mean()
    yc, pc = np.clip(y, 1e-7, 1), np.clip(p, 1e-7, 1)
    kld = (yc * np.log(yc / pc)).sum(axis=1).mean()
    poisson = (p - y * np.log(p + 1e-7)).mean(axis=1).mean()
    scratch = np.empty_like(p)
    for code, want in ((C.HUBER, huber), (C.KL_DIVERGENCE, kld), (C.POISSON, poisson)):
        got = ref.loss_grad(p.copy(), y, sw, scratch, scratch.copy(), code)
        assert got == pytest.approx(want, rel=1e-12)


# Nadam --------------------------------------------------------------------------------


def keras_nadam(p, grads, lr, beta_1, beta_2, epsilon):
    """Keras 3's Nadam.update_step written out (float64), with its running u_product."""
    m, v, u_product = np.zeros_like(p), np.zeros_like(p), 1.0
    for t, g in enumerate(grads, start=1):
        u_product *= beta_1 * (1.0 - 0.5 * 0.96**t)
        u_t = beta_1 * (1.0 - 0.5 * 0.96**t)
        u_t_1 = beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        m_hat = u_t_1 * m / (1 - u_product * u_t_1) + (1 - u_t) * g / (1 - u_product)
        v_hat = v / (1 - beta_2**t)
        p = p - m_hat * lr / (np.sqrt(v_hat) + epsilon)
    return p


def test_nadam_reference_matches_keras_formula():
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(11)
    grads = [rng.standard_normal(11) for _ in range(40)]
    p, state = p0.copy(), np.zeros((2, 11))
    hyper = np.array([0.01, 0.9, 0.999, 1e-7])
    for t, g in enumerate(grads, start=1):
        ref.optimizer_update(p, g, state, C.NADAM, hyper, t)
    np.testing.assert_allclose(p, keras_nadam(p0, grads, 0.01, 0.9, 0.999, 1e-7), rtol=1e-12)


def test_nadam_u_product_beyond_the_truncation():
    """The product stops multiplying at NADAM_STEPS (its factors are 1.0 in float64)."""
    slow = 1.0
    for t in range(1, 1301):
        slow *= 0.9 * (1.0 - 0.5 * 0.96**t)
    assert ref.nadam_u_product(0.9, 1300) == pytest.approx(slow, rel=1e-12)


@dtypes
@pytest.mark.parametrize("size", [1, 7, 1000])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "optimizer_update"])
def test_nadam_kernels(mod, dtype, size, direct):
    rng = rng_for("nadam", size)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(4)]
    grads[1][0] = 0.0
    hyper = HYPER[C.NADAM]
    results = []
    for module in (ref, mod):
        p, state = p0.copy(), np.zeros((2, size), dtype)
        for step, g in enumerate(grads, start=1):
            if direct:
                module.nadam_update(p, g, state[0], state[1], *hyper, step)
            else:
                module.optimizer_update(p, g, state, C.NADAM, np.array(hyper), step)
        results.append((p, state))
    assert_close(results[1][0], results[0][0], dtype, k=3, what="params")
    assert_close(results[1][1], results[0][1], dtype, k=3, what="state")


# Whole training steps -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("loss", list(NEW_LOSSES.values()), ids=list(NEW_LOSSES))
def test_train_step_new_activations_losses_nadam(mod, dtype, loss):
    s64 = smooth_stack(np.float64, rng_for("smooth-train", loss), loss=loss)
    s = s64.astype(dtype)
    exp = train_steps(ref, s, loss, C.NADAM, 3)
    exp64 = train_steps(ref, s64, loss, C.NADAM, 3)
    got = train_steps(mod, s, loss, C.NADAM, 3)
    _compare_runs(got, exp, exp64, dtype, STEP_NAMES)
