"""Property tests (hypothesis) on every kernel of every CPU backend.

Random shapes (1, primes, odd sizes) and random values including large magnitudes; every
backend must match the NumPy reference within a tolerance that follows the dtype and the
reduction length, never modify its inputs, and stay finite: softmax rows sum to 1 for
logits up to |1e4|, losses are finite for finite inputs (logits up to 1e4 for the
from-logits losses), optimizer updates are finite for finite inputs.

Values are drawn as (seed, scale) and generated with NumPy, so every drawn case is cheap;
only float32/float64 arrays and Python int/float scalars are passed (one compiled
signature per dtype).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import fastnn
from fastnn import losses, optimizers
from fastnn.kernels import codes as C
from fastnn.kernels import reference as R
from fastnn.layers import Activation, BatchNormalization, Dense, Dropout, Normalization
from fastnn.regularizers import L1L2

BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
KERNELS = {b: fastnn.backend.load(b) for b in BACKENDS}

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
STACK = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

dims = st.sampled_from([1, 2, 3, 5, 7, 13, 17, 31, 33]) | st.integers(1, 40)
dtypes = st.sampled_from([np.float32, np.float64])
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e4])
seeds = st.integers(0, 2**31 - 1)
ACTS = [C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH, C.SOFTMAX, C.ELU, C.SELU, C.GELU, C.SILU,
        C.SOFTPLUS]  # fmt: skip
acts = st.sampled_from(ACTS)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _rtol(dtype):
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-9


def close(got, ref, dtype, mag=None, factor=1.0, what="", slack=0.0):
    """|got - ref| <= rtol * (|ref| + mag) + slack, mag defaulting to max |ref| (the size
    of the values the result is made of, for reductions)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if mag is None:
        mag = float(np.nanmax(np.abs(ref))) if ref.size else 0.0
    rtol = _rtol(dtype) * factor
    atol = rtol * mag + slack + 1e-300
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=what)


def ref64(name, args):
    """The reference kernel run in float64 on float32 inputs: (result, arrays)."""
    args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32
            else (a.copy() if isinstance(a, np.ndarray) else a) for a in args]  # fmt: skip
    with np.errstate(all="ignore"):
        return getattr(R, name)(*args), args


def slack(ref32, ref64_value):
    """Allowance for ill-conditioned float32 results (e.g. tanh' = 1 - y^2 of a saturated
    unit): ten times the float32 reference's own distance from float64."""
    diff = np.abs(np.asarray(ref32, np.float64) - np.asarray(ref64_value, np.float64))
    return 10.0 * float(np.nanmax(diff)) if diff.size else 0.0


GUARD = 7
SENTINEL = 12345.0


def guarded(a):
    """A C-contiguous copy of ``a`` that sits inside a larger buffer whose extra leading and
    trailing rows/elements hold SENTINEL: (view, base).  A kernel writing out of bounds
    changes the sentinels."""
    shape = (a.shape[0] + 2 * GUARD, *a.shape[1:]) if a.ndim else (2 * GUARD + 1,)
    base = np.full(shape, SENTINEL, dtype=a.dtype)
    view = base[GUARD : GUARD + a.shape[0]] if a.ndim else base[GUARD]
    view[...] = a
    assert view.flags.c_contiguous
    return view, base


def check_guards(bases, name):
    for i, (view, base) in enumerate(bases):
        n = view.shape[0]
        for part in (base[:GUARD], base[GUARD + n :]):
            assert (part == SENTINEL).all(), f"{name} wrote out of bounds of array {i}"


def run(backend, name, arrays, scalars, n_in):
    """Runs kernel ``name`` on copies of ``arrays`` for the reference and ``backend``.

    Returns (ref result, ref arrays, backend result, backend arrays); checks the first
    ``n_in`` arrays (inputs) are left unchanged by the backend and that it writes nothing
    outside its arrays."""
    ref_arrays = [a.copy() for a in arrays]
    bases = [guarded(a) for a in arrays]
    got_arrays = [view for view, _ in bases]
    with np.errstate(all="ignore"):
        ref = getattr(R, name)(*ref_arrays, *scalars)
    got = getattr(KERNELS[backend], name)(*got_arrays, *scalars)
    check_guards(bases, name)
    for i in range(n_in):
        np.testing.assert_array_equal(got_arrays[i], arrays[i], err_msg=f"{name} input {i}")
    return ref, ref_arrays, got, got_arrays


def rand(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def empty(shape, dtype):
    """An output buffer pre-filled with NaN, so unwritten elements show up."""
    return np.full(shape, np.nan, dtype=dtype)


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request):
    return request.param


# ---------------------------------------------------------------------------------------
# Activations and the dense layer


@FAST
@given(n=dims, o=dims, dtype=dtypes, scale=scales, seed=seeds, act=acts)
def test_activation_forward_backward(backend, n, o, dtype, scale, seed, act):
    x = rand(seed, (n, o), dtype, scale)
    _, (_, ref), _, (_, got) = run(backend, "activation_forward", [x, empty((n, o), dtype)],
                                   [act, 0.2], 1)  # fmt: skip
    assert np.isfinite(got).all()
    # float32 rounds |x| ~ 1e4 to 1e-3: bounded activations of such inputs inherit it
    close(got, ref, dtype, mag=float(np.abs(ref).max()) + 1e-2 * scale, factor=4)
    if act == C.SOFTMAX:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=10 * _rtol(dtype))
    dout = rand(seed + 1, (n, o), dtype)
    _, (_, _, ref_dx), _, (_, _, got_dx) = run(
        backend, "activation_backward", [ref, dout, empty((n, o), dtype)], [act, 0.2], 2
    )
    assert np.isfinite(got_dx).all()
    close(got_dx, ref_dx, dtype, mag=float(np.abs(dout).max()), factor=4)


@FAST
@given(n=dims, c=dims, dtype=dtypes, seed=seeds, big=st.sampled_from([1.0, 100.0, 1e4]))
def test_softmax_rows_sum_to_one_for_logits_up_to_1e4(backend, n, c, dtype, seed, big):
    z = rand(seed, (n, c), dtype, big)
    z[0, 0] = big  # the extremes themselves
    if z.size > 1:
        z.flat[-1] = -big
    out = empty((n, c), dtype)
    KERNELS[backend].activation_forward(z, out, C.SOFTMAX, 0.0)
    assert not np.isnan(out).any() and np.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=10 * _rtol(dtype))


@FAST
@given(n=dims, i=dims, o=dims, dtype=dtypes, scale=scales, seed=seeds, act=acts,
       need_dx=st.sampled_from([0, 1]))  # fmt: skip
def test_dense_forward_backward(backend, n, i, o, dtype, scale, seed, act, need_dx):
    x = rand(seed, (n, i), dtype, scale)
    w = rand(seed + 1, (i, o), dtype, 1 / np.sqrt(i))
    b = rand(seed + 2, (o,), dtype)
    mag = i * float(np.abs(x).max()) * float(np.abs(w).max()) + float(np.abs(b).max())
    _, r_arr, _, g_arr = run(backend, "dense_forward", [x, w, b, empty((n, o), dtype)],
                             [act, 0.2], 3)  # fmt: skip
    y = r_arr[3]
    assert np.isfinite(g_arr[3]).all()
    # bounded activations pass on the pre-activation's rounding (slope <= 1)
    close(g_arr[3], y, dtype, mag=mag, factor=4, what="dense_forward")
    dout = rand(seed + 3, (n, o), dtype)
    arrays = [x, w, y, dout] + [empty(s, dtype) for s in ((n, o), (n, i), (i, o), (o,))]
    _, r_arr, _, g_arr = run(backend, "dense_backward", arrays, [act, 0.2, need_dx], 4)
    # dz is a difference for softmax (y * (dout - sum(dout * y))): measure its rounding
    # against the size of dout, as in the activation test, not against the (cancelled) result
    dz_mag = max(float(np.abs(r_arr[4]).max()), float(np.abs(dout).max()))
    checks = [
        (4, "dz", dz_mag),
        (6, "dw", n * dz_mag * float(np.abs(x).max())),
        (7, "db", n * dz_mag),
    ]
    if need_dx:
        checks.append((5, "dx", o * dz_mag * float(np.abs(w).max())))
    for k, what, m in checks:
        assert np.isfinite(g_arr[k]).all(), what
        close(g_arr[k], r_arr[k], dtype, mag=m, factor=4, what=what)


# ---------------------------------------------------------------------------------------
# Dropout


@FAST
@given(n=dims, o=dims, dtype=dtypes, seed=seeds, rate=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       mask_seed=st.integers(0, 2**40))  # fmt: skip
def test_dropout_masks_match_reference(backend, n, o, dtype, seed, rate, mask_seed):
    x = rand(seed, (n, o), dtype, 1e3)
    for name in ("dropout_forward", "dropout_backward"):
        _, (_, ref), _, (_, got) = run(backend, name, [x, empty((n, o), dtype)],
                                       [rate, mask_seed], 1)  # fmt: skip
        np.testing.assert_array_equal(got == 0, ref == 0)  # the same mask everywhere
        close(got, ref, dtype)


# ---------------------------------------------------------------------------------------
# Losses


def _targets(kind, seed, n, c, dtype):
    rng = np.random.default_rng(seed)
    if kind == "onehot":
        return np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
    if kind == "labels":
        return rng.integers(0, c, n).astype(dtype)
    if kind == "binary":
        return rng.integers(0, 2, (n, c)).astype(dtype)
    return rng.uniform(-1, 1, (n, c)).astype(dtype)


LOSS_KERNELS = {
    # name: (target kind, logits?, has p output)
    "softmax_cross_entropy": ("onehot", True, True),
    "sparse_softmax_cross_entropy": ("labels", True, True),
    "sigmoid_binary_cross_entropy": ("binary", True, True),
    "categorical_crossentropy": ("onehot", False, False),
    "binary_crossentropy": ("binary", False, False),
    "mean_squared_error": ("values", None, False),
    "mean_absolute_error": ("values", None, False),
    "huber": ("values", None, False),
    "kl_divergence": ("values", False, False),  # targets clipped to [eps, 1] by the loss
    "poisson": ("values", False, False),
}


@FAST
@given(name=st.sampled_from(sorted(LOSS_KERNELS)), n=dims, c=dims, dtype=dtypes, seed=seeds,
       scale=scales)  # fmt: skip
def test_loss_kernels_finite_and_match_reference(backend, name, n, c, dtype, seed, scale):
    kind, logits, has_p = LOSS_KERNELS[name]
    y = _targets(kind, seed + 1, n, c, dtype)
    sw = np.random.default_rng(seed + 2).uniform(0, 2, n).astype(dtype)
    z = rand(seed, (n, c), dtype, scale)
    if logits is False:  # probabilities, including exact 0 and 1 (clipped)
        z = (1 / (1 + np.exp(-z.astype(np.float64)))).astype(dtype)
        z[0, 0] = 1.0
        z.flat[-1] = 0.0
    arrays = [z, y, sw] + ([empty((n, c), dtype)] if has_p else []) + [empty((n, c), dtype)]
    ref, r_arr, got, g_arr = run(backend, name, arrays, [], 3)
    assert np.isfinite(got), f"{name} gave {got}"
    assert np.isfinite(g_arr[-1]).all()
    # the loss sums N*C terms of size up to |z| (+ log terms)
    mag = float(np.abs(ref)) + (scale if logits is not False else 20.0)
    close(got, ref, dtype, mag=mag, factor=4, what=f"{name} loss")
    grad_mag = float(np.abs(r_arr[-1]).max())
    if logits:  # p * sum(y) - y: a saturated p (1 - 1e-7) leaves a difference of O(1) terms
        per_row = float(sw.max()) / (n if name != "sigmoid_binary_cross_entropy" else n * c)
        grad_mag = max(grad_mag, per_row * (1.0 + float(np.abs(y).sum(axis=-1).max())))
    close(g_arr[-1], r_arr[-1], dtype, mag=grad_mag, factor=10, what=f"{name} grad")
    if has_p:
        p = g_arr[3]
        assert np.isfinite(p).all()
        close(p, r_arr[3], dtype, mag=1.0, factor=10, what=f"{name} p")
        if name != "sigmoid_binary_cross_entropy":
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=10 * _rtol(dtype))


@FAST
@given(code=st.sampled_from(range(C.N_LOSSES)), n=dims, c=dims, dtype=dtypes, seed=seeds,
       scale=st.sampled_from([1.0, 1e4]))  # fmt: skip
def test_loss_grad_dispatch_matches_reference(backend, code, n, c, dtype, seed, scale):
    kind = {0: "onehot", 1: "labels", 2: "binary", 3: "onehot", 4: "binary"}.get(code, "values")
    y = _targets(kind, seed + 1, n, c, dtype)
    if kind == "labels":
        y = np.ascontiguousarray(y[:, None])
    sw = np.random.default_rng(seed + 2).uniform(0, 2, n).astype(dtype)
    out = rand(seed, (n, c), dtype, scale)
    if code in (C.CATEGORICAL_CE, C.BINARY_CE, C.KL_DIVERGENCE, C.POISSON):
        out = (1 / (1 + np.exp(-out.astype(np.float64)))).astype(dtype)
    arrays = [out, y, sw, empty((n, c), dtype), empty((n, c), dtype)]
    ref, r_arr, got, g_arr = run(backend, "loss_grad", arrays, [code], 3)
    assert np.isfinite(got)
    close(got, ref, dtype, mag=float(np.abs(ref)) + scale, factor=4)
    close(g_arr[4], r_arr[4], dtype, mag=float(np.abs(r_arr[4]).max()), factor=10)


# ---------------------------------------------------------------------------------------
# Regularisation and optimizers


@FAST
@given(i=dims, o=dims, dtype=dtypes, seed=seeds, scale=scales,
       l1=st.sampled_from([0.0, 0.01, 1.0]), l2=st.sampled_from([0.0, 0.01, 1.0]))  # fmt: skip
def test_l1l2_penalty(backend, i, o, dtype, seed, scale, l1, l2):
    w = rand(seed, (i, o), dtype, scale)
    dw = rand(seed + 1, (i, o), dtype)
    ref, r_arr, got, g_arr = run(backend, "l1l2_penalty", [w, dw], [l1, l2], 1)
    assert np.isfinite(got) and np.isfinite(g_arr[1]).all()
    close(got, ref, dtype, factor=4 * i * o)
    close(g_arr[1], r_arr[1], dtype, mag=float(np.abs(r_arr[1]).max()), factor=4)


def _opt_case(name, seed, p_size, dtype, scale, lr):
    p = rand(seed, (p_size,), dtype, scale)
    g = rand(seed + 1, (p_size,), dtype, scale)
    s1 = np.abs(rand(seed + 2, (p_size,), dtype, scale))
    s2 = np.abs(rand(seed + 3, (p_size,), dtype, scale)) ** 2
    step = 1 + seed % 50
    if name == "sgd_update":
        return [p, g], [lr]
    if name == "momentum_update":
        return [p, g, s1], [lr, 0.9, seed % 2]
    if name == "adagrad_update":
        return [p, g, s2], [lr, 1e-7]
    if name == "rmsprop_update":
        return [p, g, s2], [lr, 0.9, 1e-7]
    if name == "nadam_update":
        return [p, g, s1, s2], [lr, 0.9, 0.999, 1e-7, step]
    return [p, g, s1, s2], [lr, 0.9, 0.999, 1e-7, (seed % 3) * 0.01, step]


@FAST
@given(name=st.sampled_from(["sgd_update", "momentum_update", "adagrad_update",
                             "rmsprop_update", "adam_update", "nadam_update"]),
       size=dims, dtype=dtypes, seed=seeds, scale=scales,
       lr=st.sampled_from([1e-4, 1e-2, 0.5]))  # fmt: skip
def test_optimizer_updates_finite_and_match_reference(backend, name, size, dtype, seed, scale,
                                                      lr):  # fmt: skip
    arrays, scalars = _opt_case(name, seed, size, dtype, scale, lr)
    _, r_arr, _, g_arr = run(backend, name, arrays, scalars, 0)
    np.testing.assert_array_equal(g_arr[1], arrays[1])  # the gradient is an input
    for k, (got, ref) in enumerate(zip(g_arr, r_arr)):
        assert np.isfinite(got).all(), f"{name} array {k}"
        close(got, ref, dtype, mag=float(np.abs(ref).max()), factor=8, what=f"{name} {k}")


@FAST
@given(opt=st.sampled_from([C.SGD, C.MOMENTUM, C.ADAGRAD, C.RMSPROP, C.ADAM, C.NADAM]),
       size=dims, dtype=dtypes, seed=seeds, scale=scales)  # fmt: skip
def test_optimizer_update_dispatch(backend, opt, size, dtype, seed, scale):
    p = rand(seed, (size,), dtype, scale)
    g = rand(seed + 1, (size,), dtype, scale)
    state = np.abs(rand(seed + 2, (max(C.STATE_SLOTS[opt], 1), size), dtype, scale))
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.01][: C.HYPER_LEN[opt]])
    if opt == C.MOMENTUM:
        hyper[2] = seed % 2
    if opt == C.ADAGRAD:
        hyper[1] = 1e-7
    if opt == C.RMSPROP:
        hyper[2] = 1e-7
    hyper = np.ascontiguousarray(hyper, dtype=np.float64)
    _, r_arr, _, g_arr = run(backend, "optimizer_update", [p, g, state], [opt, hyper, 3], 0)
    for k in (0, 2):
        assert np.isfinite(g_arr[k]).all()
        close(g_arr[k], r_arr[k], dtype, mag=float(np.abs(r_arr[k]).max()), factor=8)


@FAST
@given(size=dims, dtype=dtypes, seed=seeds, scale=scales, mode=st.sampled_from(range(4)),
       offsets=st.lists(st.integers(-1, 45), min_size=0, max_size=9),
       limit=st.sampled_from([1e-3, 0.5, 10.0]))  # fmt: skip
def test_clip_gradients(backend, size, dtype, seed, scale, mode, offsets, limit):
    """Any weight offsets in the table (absent, beyond the gradient, repeated) and each
    mode: == reference, nothing written outside grads, the table untouched."""
    g = rand(seed, (size,), dtype, scale)
    layers = np.full((3, C.P_COLS), -1, np.int64)
    cols = layers[:, C.P_W0 : C.P_W2 + 1].reshape(-1)
    cols[: len(offsets)] = offsets
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0, 0.0, 0.0, 0.0])  # Adam + clip entries
    if mode:
        hyper[C.HYPER_LEN[C.ADAM] + mode - 1] = limit
    table0 = layers.copy()
    _, r_arr, _, g_arr = run(backend, "clip_gradients", [g, layers], [C.ADAM, hyper], 0)
    np.testing.assert_array_equal(g_arr[1], table0)
    assert np.isfinite(g_arr[0]).all()
    close(g_arr[0], r_arr[0], dtype, mag=float(np.abs(r_arr[0]).max()), factor=8)


# ---------------------------------------------------------------------------------------
# Normalisation kernels


def _bn_arrays(r, c, dtype, seed, scale, flags):
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((r, c)) + 3 * rng.standard_normal(c)) * scale).astype(dtype)
    gamma = rng.uniform(0.5, 2, c if "g" in flags else 0).astype(dtype)
    beta = rng.standard_normal(c if "s" in flags else 0).astype(dtype)
    moving = rng.standard_normal(c).astype(dtype), rng.uniform(0.1, 3, c).astype(dtype)
    return x, gamma, beta, *moving


@FAST
@given(r=dims, c=dims, dtype=dtypes, seed=seeds, scale=scales, training=st.sampled_from([0, 1]),
       flags=st.sampled_from(["gs", "g", "s", ""]))  # fmt: skip
def test_batchnorm_kernels(backend, r, c, dtype, seed, scale, training, flags):
    x, gamma, beta, mm, mv = _bn_arrays(r, c, dtype, seed, scale, flags)
    arrays = [x, gamma, beta, mm, mv, empty((2, c), dtype), empty((r, c), dtype),
              empty((2, c), np.float64)]  # fmt: skip
    _, r_arr, _, g_arr = run(backend, "batchnorm_forward", arrays, [training, 0.9, 1e-3], 3)
    tol = 50.0 * (1 + np.log2(r))
    for k, what in ((6, "out"), (5, "saved"), (3, "moving_mean"), (4, "moving_var")):
        assert np.isfinite(g_arr[k]).all(), what
        close(g_arr[k], r_arr[k], dtype, factor=tol, what=what)
    dout = rand(seed + 1, (r, c), dtype)
    if not training:  # a frozen layer's gradient: dx only, from the moving statistics
        arrays = [gamma, r_arr[5], dout, empty((r, c), dtype)]
        _, r_arr, _, g_arr = run(backend, "batchnorm_inference_backward", arrays, [], 3)
        assert np.isfinite(g_arr[3]).all(), "dx"
        close(g_arr[3], r_arr[3], dtype, factor=4.0, what="dx")
        return
    arrays = [x, gamma, r_arr[5], dout, empty((r, c), dtype), empty(gamma.shape, dtype),
              empty(beta.shape, dtype), empty((2, c), np.float64)]  # fmt: skip
    _, r_arr, _, g_arr = run(backend, "batchnorm_backward", arrays, [1], 4)
    for k, what in ((4, "dx"), (5, "dgamma"), (6, "dbeta")):
        assert np.isfinite(g_arr[k]).all(), what
        close(g_arr[k], r_arr[k], dtype, factor=tol * (1 + np.sqrt(r)), what=what)


@FAST
@given(r=dims, c=dims, dtype=dtypes, seed=seeds, scale=scales)
def test_normalization_kernels(backend, r, c, dtype, seed, scale):
    x = rand(seed, (r, c), dtype, scale)
    mean = rand(seed + 1, (c,), dtype, scale)
    var = np.abs(rand(seed + 2, (c,), dtype, scale * scale))
    var[0] = 0.0
    _, r_arr, _, g_arr = run(
        backend, "normalization_forward", [x, mean, var, empty((r, c), dtype)], [], 3
    )
    close(g_arr[3], r_arr[3], dtype, factor=4, what="forward")
    dout = rand(seed + 3, (r, c), dtype)
    _, r_arr, _, g_arr = run(
        backend, "normalization_backward", [var, dout, empty((r, c), dtype)], [], 2
    )
    close(g_arr[2], r_arr[2], dtype, factor=4, what="backward")


# ---------------------------------------------------------------------------------------
# Convolution and pooling (NHWC)

small = st.integers(1, 9)
windows = st.sampled_from([1, 2, 3, 5])
strides = st.integers(1, 3)
paddings = st.sampled_from(["valid", "same"])


def _conv_geometry(h, w, kh, kw, sh, sw, padding):
    from fastnn.layers.convolutional import output_size

    (ho, pt), (wo, pl) = output_size(h, kh, sh, padding), output_size(w, kw, sw, padding)
    assume(ho > 0 and wo > 0)
    return ho, wo, pt, pl


@FAST
@given(n=st.integers(1, 3), h=small, w=small, c=st.integers(1, 4), f=st.integers(1, 4),
       kh=windows, kw=windows, sh=strides, sw=strides, padding=paddings, dtype=dtypes,
       seed=seeds, scale=scales, act=acts, bias=st.booleans())  # fmt: skip
def test_conv2d_kernels(backend, n, h, w, c, f, kh, kw, sh, sw, padding, dtype, seed, scale,
                        act, bias):  # fmt: skip
    ho, wo, pt, pl = _conv_geometry(h, w, kh, kw, sh, sw, padding)
    x = rand(seed, (n, h, w, c), dtype, scale)
    wt = rand(seed + 1, (kh, kw, c, f), dtype)
    b = rand(seed + 2, (f if bias else 0,), dtype)
    cols = empty((n * ho * wo, kh * kw * c), dtype)
    arrays = [x, wt, b, cols, empty((n, ho, wo, f), dtype)]
    geo = [sh, sw, pt, pl]
    _, r_arr, _, g_arr = run(backend, "conv2d_forward", arrays, [act, 0.1, *geo], 3)
    k = kh * kw * c
    # cols (g_arr[3]) is the compiled backends' scratch (reference.conv2d_forward)
    close(g_arr[4], r_arr[4], dtype, factor=4 * k, what="out")
    dout = rand(seed + 3, (n, ho, wo, f), dtype)
    arrays = [x, wt, r_arr[4], dout, r_arr[3].copy(), empty(dout.shape, dtype),
              empty(x.shape, dtype), empty(wt.shape, dtype), empty(b.shape, dtype)]  # fmt: skip
    _, r_arr, _, g_arr = run(backend, "conv2d_backward", arrays, [act, 0.1, *geo, 1], 4)
    m = n * ho * wo
    for i, what, red in ((5, "dz", 1), (6, "dx", kh * kw * f), (7, "dw", m), (8, "db", m)):
        assert np.isfinite(g_arr[i]).all() or not np.isfinite(r_arr[i]).all(), what
        close(g_arr[i], r_arr[i], dtype, factor=4 * red, what=what)


@FAST
@given(n=st.integers(1, 3), h=small, w=small, c=st.integers(1, 5), kh=windows, kw=windows,
       sh=strides, sw=strides, padding=paddings, dtype=dtypes, seed=seeds,
       scale=scales)  # fmt: skip
def test_pooling_kernels(backend, n, h, w, c, kh, kw, sh, sw, padding, dtype, seed, scale):
    ho, wo, pt, pl = _conv_geometry(h, w, kh, kw, sh, sw, padding)
    x = rand(seed, (n, h, w, c), dtype, scale)
    dout = rand(seed + 1, (n, ho, wo, c), dtype)
    geo = [kh, kw, sh, sw, pt, pl]
    out = (n, ho, wo, c)
    _, r_arr, _, g_arr = run(backend, "maxpool2d_forward", [x, empty(out, dtype),
                                                            empty(out, dtype)], geo, 1)  # fmt: skip
    np.testing.assert_array_equal(g_arr[1], r_arr[1])
    np.testing.assert_array_equal(g_arr[2], r_arr[2])
    _, r_b, _, g_b = run(backend, "maxpool2d_backward", [r_arr[1], dout, empty(x.shape, dtype)],
                         geo, 2)  # fmt: skip
    close(g_b[2], r_b[2], dtype, factor=kh * kw, what="maxpool dx")
    _, r_arr, _, g_arr = run(backend, "avgpool2d_forward", [x, empty(out, dtype)], geo, 1)
    close(g_arr[1], r_arr[1], dtype, factor=kh * kw, what="avgpool out")
    _, r_arr, _, g_arr = run(backend, "avgpool2d_backward", [dout, empty(x.shape, dtype)], geo, 1)
    close(g_arr[1], r_arr[1], dtype, factor=kh * kw, what="avgpool dx")


# ---------------------------------------------------------------------------------------
# Whole stacks: forward, backward, training step, evaluation, epochs, statistics

LOSS_SETUPS = [
    # (loss, last activation, target kind)
    ("sparse_categorical_crossentropy", "softmax", "labels"),
    (losses.SparseCategoricalCrossentropy(from_logits=True), "linear", "labels"),
    ("categorical_crossentropy", "softmax", "onehot"),
    ("categorical_crossentropy", "softmax+dropout", "onehot"),  # not fused: probabilities
    (losses.CategoricalCrossentropy(from_logits=True), "linear", "onehot"),
    ("binary_crossentropy", "sigmoid", "binary"),
    (losses.BinaryCrossentropy(from_logits=True), "linear", "binary"),
    ("binary_crossentropy", "softmax", "binary"),
    ("mse", "linear", "values"),
    ("mae", "tanh", "values"),
]
OPTIMIZERS = [
    lambda: optimizers.SGD(0.05),
    lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: optimizers.Adagrad(0.05),
    lambda: optimizers.RMSprop(0.01),
    lambda: optimizers.Adam(0.01),
    lambda: optimizers.AdamW(0.01, weight_decay=0.1),
]
ACT_NAMES = ["linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu",
             "silu", "softplus"]  # fmt: skip


@st.composite
def stacks(draw):
    """A small random model (numpy backend, only for its tables and buffers) and data."""
    dtype = draw(dtypes)
    n = draw(st.sampled_from([1, 2, 3, 5, 7, 13, 17]))
    d = draw(st.sampled_from([1, 2, 3, 5, 7, 11]))
    loss, last, kind = draw(st.sampled_from(LOSS_SETUPS))
    n_out = draw(st.sampled_from([1, 2, 3, 5]))
    if "sparse" in str(loss) or "Sparse" in type(loss).__name__:
        n_out = max(n_out, 2)
    layers = []
    if draw(st.booleans()):
        layers.append(
            Normalization(
                mean=rand(seed0 := draw(seeds), (d,), np.float64),
                variance=np.abs(rand(seed0 + 1, (d,), np.float64)),
            )
        )
    for _ in range(draw(st.integers(0, 2))):
        reg = draw(st.sampled_from([None, L1L2(0.01, 0.02)]))
        layers.append(
            Dense(
                draw(st.sampled_from([1, 2, 3, 7])),
                activation=draw(st.sampled_from(ACT_NAMES)),
                kernel_regularizer=reg,
            )  # fmt: skip
        )
        extra = draw(st.sampled_from(["none", "dropout", "activation", "batchnorm"]))
        if extra == "dropout":
            layers.append(Dropout(draw(st.sampled_from([0.0, 0.25, 0.5]))))
        elif extra == "activation":
            layers.append(Activation(draw(st.sampled_from(ACT_NAMES))))
        elif extra == "batchnorm":
            layers.append(
                BatchNormalization(
                    momentum=0.9, center=draw(st.booleans()), scale=draw(st.booleans())
                )
            )
    last, _, tail = last.partition("+")
    layers.append(Dense(n_out, activation=last))
    if tail == "dropout":
        layers.append(Dropout(draw(st.sampled_from([0.0, 0.25]))))
    seed = draw(seeds)
    model = fastnn.Sequential(layers, seed=seed % 1000, dtype=dtype, backend="numpy")
    model.compile(draw(st.sampled_from(OPTIMIZERS))(), loss)
    scale = draw(st.sampled_from([1e-2, 1.0, 100.0]))
    rng = np.random.default_rng(seed)
    total = n * draw(st.sampled_from([1, 2, 3])) + draw(st.integers(0, n - 1))
    x = rng.standard_normal((total, d)) * scale
    y = _targets(kind, seed + 1, total, n_out, np.float64)
    if kind == "labels":
        y = y.astype(np.int64)
    sw = rng.uniform(0, 2, total)
    X, Y, SW = model._prepare(x, y, sw)
    note(f"model {model.get_config()}, loss {model.loss}, optimizer {model.optimizer}")
    return model, X, Y, SW, n, seed


def _stack_args(model, n, y_cols):
    eng = model._engine
    loss = model._stack_plan()
    ws = eng.workspace(n, y_cols)
    return eng, loss, ws.loss_plan(loss.train_act), ws


def _stack_tol(model):
    return 50.0 * (1 + len(model.layers))


def _guard_all(arrays):
    """(reference copies, guarded backend copies, their bases) of a dict of arrays."""
    refs = {k: v.copy() for k, v in arrays.items()}
    bases = {k: guarded(v) for k, v in arrays.items()}
    return refs, {k: view for k, (view, _) in bases.items()}, list(bases.values())


def _net(a):
    return a["params"], a["grads"], a["state"], a["nontrain"]


def _work(a):
    return a["acts"], a["gbuf"], a["acc"]


def _buffers(eng, ws, dtype, **extra):
    return dict(
        params=eng.params.copy(), grads=empty(eng.grads.shape, dtype), state=eng.state.copy(),
        nontrain=eng.nontrain.copy(), acts=empty(ws.acts.shape, dtype),
        gbuf=empty(ws.gbuf.shape, dtype), acc=empty(ws.acc.shape, np.float64), **extra,
    )  # fmt: skip


@STACK
@given(case=stacks())
def test_forward_backward_stack(backend, case):
    model, X, Y, SW, n, seed = case
    eng, _, plan, ws = _stack_args(model, n, Y.shape[1])
    x = np.ascontiguousarray(X[:n])
    dtype = model.dtype
    k = KERNELS[backend]
    arrays = _buffers(eng, ws, dtype, x=x)
    ref, got, bases = _guard_all(arrays)
    with np.errstate(all="ignore"):
        R.forward_stack(ref["x"], plan.args, _net(ref), _work(ref), 1, seed, 3)
    k.forward_stack(got["x"], plan.args, _net(got), _work(got), 1, seed, 3)
    check_guards(bases, "forward_stack")
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["params"], eng.params)
    tol = _stack_tol(model)
    out = slice(plan.output_offset, plan.output_offset + n * plan.output_size)
    assert np.isfinite(got["acts"][out]).all()
    close(got["acts"][out], ref["acts"][out], dtype, factor=tol, what="output")
    close(got["nontrain"], ref["nontrain"], dtype, factor=tol, what="nontrain")
    # backward from dL/dout (the rest of gbuf starts as NaN: scratch) on the reference's
    # forward, so that both backends differentiate the same activations
    for a in (ref, got):
        a["acts"][...] = ref["acts"]
        a["gbuf"][: n * plan.output_size] = rand(seed + 5, (n * plan.output_size,), dtype)
    with np.errstate(all="ignore"):
        r64_args = {k2: (v.astype(np.float64) if v.dtype == np.float32 else v.copy())
                    for k2, v in ref.items()}  # fmt: skip
        pen_ref = R.backward_stack(ref["x"], plan.args, _net(ref), _work(ref), seed, 3)
        R.backward_stack(r64_args["x"], plan.args, _net(r64_args), _work(r64_args), seed, 3)
    pen = k.backward_stack(got["x"], plan.args, _net(got), _work(got), seed, 3)
    check_guards(bases, "backward_stack")
    assert np.isfinite(pen) and np.isfinite(got["grads"]).all()
    close(pen, pen_ref, dtype, factor=tol, what="penalty")
    close(got["grads"], ref["grads"], dtype, factor=tol * n, what="grads",
          slack=slack(ref["grads"], r64_args["grads"]))  # fmt: skip


@STACK
@given(case=stacks())
def test_train_and_eval_step(backend, case):
    model, X, Y, SW, n, seed = case
    eng, loss, plan, ws = _stack_args(model, n, Y.shape[1])
    x, y, sw = (np.ascontiguousarray(a[:n]) for a in (X, Y, SW))
    dtype = model.dtype
    opt = model.optimizer
    hyper = opt.hyper()
    k = KERNELS[backend]
    arrays = _buffers(eng, ws, dtype, x=x, y=y, sw=sw)
    ref, got, bases = _guard_all(arrays)
    r64 = {k2: (v.astype(np.float64) if v.dtype == np.float32 else v.copy())
           for k2, v in arrays.items()}  # fmt: skip
    loss_args = (loss.code, loss.logits_out, *_metrics(C.ACC_NONE, 0.5))
    opt_args = (opt.code, hyper, np.zeros(1), 1, seed)
    with np.errstate(all="ignore"):
        value_ref = R.train_step((ref["x"], ref["y"], ref["sw"]), plan.args, _net(ref),
                                 _work(ref), loss_args, opt_args)  # fmt: skip
        R.train_step((r64["x"], r64["y"], r64["sw"]), plan.args, _net(r64), _work(r64),
                     loss_args, opt_args)  # fmt: skip
    value = k.train_step((got["x"], got["y"], got["sw"]), plan.args, _net(got), _work(got),
                         loss_args, opt_args)  # fmt: skip
    check_guards(bases, "train_step")
    for name in ("x", "y", "sw"):
        np.testing.assert_array_equal(got[name], arrays[name])
    tol = _stack_tol(model)
    assert np.isfinite(value), f"train_step loss {value}"
    # a loss of exactly 0 in one backend may be 1e-13 in another (a saturated softmax):
    # compare on the scale of one sample's loss at least, as run_epoch's test does
    mag = max(abs(float(value_ref)), 1.0)
    close(value, value_ref, dtype, mag=mag, factor=tol, what="train_step loss")
    close(got["grads"], ref["grads"], dtype, factor=tol * n, what="grads",
          slack=slack(ref["grads"], r64["grads"]))  # fmt: skip
    # SGD/momentum steps inherit the gradient's rounding times lr; adaptive steps are about
    # lr * sign(g), so a gradient within rounding of 0 may move a weight by up to 2 lr
    lr = hyper[0]
    gmax = float(np.abs(ref["grads"]).max()) if ref["grads"].size else 0.0
    g_atol = _rtol(dtype) * tol * n * gmax + slack(ref["grads"], r64["grads"])
    adaptive = opt.code in (C.ADAGRAD, C.RMSPROP, C.ADAM)
    p_atol = (3 * lr if adaptive else 2 * lr * g_atol) + slack(ref["params"], r64["params"])
    assert np.isfinite(got["params"]).all() and np.isfinite(got["state"]).all()
    np.testing.assert_allclose(got["params"], ref["params"], rtol=4 * _rtol(dtype),
                               atol=p_atol + 1e-30, err_msg="params")  # fmt: skip
    # state is linear (momentum buffer, Adam m) or quadratic (squares) in the gradient
    np.testing.assert_allclose(got["state"], ref["state"], rtol=4 * _rtol(dtype),
                               atol=g_atol * (1 + 2 * gmax) + 1e-30, err_msg="state")  # fmt: skip
    close(got["nontrain"], ref["nontrain"], dtype, factor=tol, what="nontrain",
          slack=slack(ref["nontrain"], r64["nontrain"]))  # fmt: skip
    arrays = _buffers(eng, ws, dtype, x=x, y=y, sw=sw)
    ref, got, bases = _guard_all(arrays)
    with np.errstate(all="ignore"):
        value_ref = R.eval_step((ref["x"], ref["y"], ref["sw"]), plan.args, _net(ref),
                                _work(ref), loss_args)  # fmt: skip
    value = k.eval_step((got["x"], got["y"], got["sw"]), plan.args, _net(got), _work(got),
                        loss_args)  # fmt: skip
    check_guards(bases, "eval_step")
    assert np.isfinite(value)
    # a loss of exactly 0 in one backend may be 1e-13 in another (a saturated softmax):
    # compare on the scale of one sample's loss at least, as run_epoch's test does
    mag = max(abs(float(value_ref)), 1.0)
    close(value, value_ref, dtype, mag=mag, factor=tol, what="eval_step loss")


@STACK
@given(case=stacks(), train=st.sampled_from([0, 1]), acc=st.sampled_from(range(4)))
def test_run_epoch(backend, case, train, acc):
    model, X, Y, SW, n, seed = case
    eng, loss, plan, ws = _stack_args(model, n, Y.shape[1])
    if acc == C.ACC_SPARSE and loss.target != "sparse":
        acc = C.ACC_NONE
    if acc == C.ACC_CATEGORICAL and Y.shape[1] != model.output_dim:
        acc = C.ACC_NONE
    dtype = model.dtype
    order = np.random.default_rng(seed).permutation(len(X)).astype(np.int64)
    n_batches = -(-len(X) // n)
    # several steps: keep SGD stable for inputs up to 100 (divergence is tested elsewhere)
    lrs = np.full(n_batches, model.optimizer.hyper()[0] / (1 + float(np.abs(X).max()) ** 2))
    arrays = _buffers(eng, ws, dtype, X=X, Y=Y, SW=SW, order=order,
                      xb=empty(ws.xb.shape, dtype), yb=empty(ws.yb.shape, dtype),
                      swb=empty(ws.swb.shape, dtype))  # fmt: skip
    hyper = model.optimizer.hyper()
    ref, got, bases = _guard_all(arrays)
    r64 = {k2: (v.astype(np.float64) if v.dtype == np.float32 else v.copy())
           for k2, v in arrays.items()}  # fmt: skip
    loss_args = (loss.code, loss.logits_out, *_metrics(acc, 0.5))

    def call(module, a, stats, hyper):
        return module.run_epoch(
            (a["X"], a["Y"], a["SW"], a["order"], n), plan.args, _net(a),
            (a["xb"], a["yb"], a["swb"], *_work(a)), loss_args,
            (model.optimizer.code, hyper, lrs, 1, seed), train, stats,
        )  # fmt: skip

    ref_stats, got_stats = np.zeros(C.STAT_LEN), np.zeros(C.STAT_LEN)
    with np.errstate(all="ignore"):
        done_ref = call(R, ref, ref_stats, hyper.copy())
        call(R, r64, np.zeros(C.STAT_LEN), hyper.copy())
    done = call(KERNELS[backend], got, got_stats, hyper.copy())
    check_guards(bases, "run_epoch")
    for name in ("X", "Y", "SW", "order"):
        np.testing.assert_array_equal(got[name], arrays[name])
    assert done == done_ref == n_batches
    tol = _stack_tol(model) * n_batches
    # a loss of exactly 0 in one backend may be 1e-17 in another: compare on the scale of
    # one sample's loss at least
    mag = max(abs(ref_stats[C.STAT_LOSS]), 1.0)
    close(got_stats[C.STAT_LOSS], ref_stats[C.STAT_LOSS], dtype, mag=mag, factor=tol, what="loss")
    assert got_stats[C.STAT_ROWS] == ref_stats[C.STAT_ROWS] == len(X)
    if acc == C.ACC_NONE:
        assert got_stats[C.STAT_CORRECT] == 0
    p_atol = 3 * lrs[0] * n_batches + 1e-6 + slack(ref["params"], r64["params"])
    np.testing.assert_allclose(got["params"], ref["params"], rtol=_rtol(dtype) * tol,
                               atol=p_atol)  # fmt: skip
    assert np.isfinite(got["params"]).all()


def _metrics(acc, threshold):
    """One accuracy metric in STAT_CORRECT (none for ACC_NONE)."""
    if acc == C.ACC_NONE:
        return np.zeros((0, C.M_COLS), np.int64), np.zeros(0)
    return np.array([[acc, C.STAT_CORRECT, 0, 0]], np.int64), np.array([threshold])


@FAST
@given(n=dims, c=dims, dtype=dtypes, seed=seeds, acc=st.sampled_from(range(4)),
       threshold=st.sampled_from([0.0, 0.5]), k=st.integers(1, 4),
       buckets=st.integers(2, 9))  # fmt: skip
def test_batch_stats(backend, n, c, dtype, seed, acc, threshold, k, buckets):
    """Every metric kind: one accuracy in STAT_CORRECT, then top-k, confusion counts and a
    histogram in slots of their own (the latter on binary targets)."""
    out = rand(seed, (n, c), dtype)
    if acc == C.ACC_SPARSE:
        y = np.random.default_rng(seed + 1).integers(0, c, (n, 1)).astype(dtype)
    elif acc == C.ACC_BINARY:
        y = _targets("binary", seed + 1, n, c, dtype)
    else:
        y = _targets("onehot", seed + 1, n, c, dtype)
    table, thresholds = _metrics(acc, threshold)
    extra = []
    if acc in (C.ACC_SPARSE, C.ACC_CATEGORICAL):
        extra.append([C.M_SPARSE_TOP_K if acc == C.ACC_SPARSE else C.M_TOP_K, 6, k, 0])
    if acc == C.ACC_BINARY:
        extra += [[C.M_CONFUSION, 6, 0, 0], [C.M_HISTOGRAM, 9, buckets, seed % 2]]
    if extra:
        table = np.concatenate([table, np.array(extra, np.int64)])
        thresholds = np.concatenate([thresholds, np.full(len(extra), threshold)])
    size = 9 + 2 * buckets
    ref, got = np.zeros(size), np.zeros(size)
    name = "batch_stats"
    getattr(R, name)(out, y, table, thresholds, ref)
    out_copy, y_copy = out.copy(), y.copy()
    getattr(KERNELS[backend], name)(out_copy, y_copy, table, thresholds, got)
    np.testing.assert_array_equal(out_copy, out)
    counts = [C.STAT_CORRECT, C.STAT_ROWS, *range(C.STAT_LEN, size)]
    np.testing.assert_array_equal(got[counts], ref[counts])
    close(got, ref, np.float64, factor=1e3, what="stats")


def test_every_kernel_is_covered():
    """Each op of the contract is exercised by one of the tests above."""
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    missing = [op for op in R.OPS if f'"{op}"' not in source and f"R.{op}(" not in source]
    assert not missing, missing
