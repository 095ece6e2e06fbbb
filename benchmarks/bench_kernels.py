"""Kernel speed: each op group x backend x one or two sizes, the NumPy reference as the
baseline.

One benchmark group per op and size ("kernel dense_forward 64x784x128", ...), holding the
NumPy reference and every compiled CPU backend that loads (numba, cython): read the
ratios within a group.  ``extra_info`` holds GFLOP/s (GEMM ops) or GB/s (memory-bound
ops).  The Adam groups also time ``np.copyto`` of as many bytes as Adam moves (it reads
p, g, m, v and writes p, m, v: 7 arrays; a copy of 3.5 arrays reads 3.5 and writes 3.5),
so "Adam within 1.2x of a memory copy" reads off the group.  All float32.

    pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-group-by=group
    pytest benchmarks/bench_kernels.py --benchmark-disable      # each once (CI smoke run)
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import backend
from fastnn.kernels import codes as C

DTYPE = np.float32
#: NumPy reference first (the baseline), then every compiled CPU backend.
BACKENDS = ("numpy", "numba", "cython")


def _module(name):
    why = backend.why_unavailable(name)
    if why is not None:
        pytest.skip(f"backend {name} unavailable: {why}")
    return backend.load(name)


def _run(benchmark, fn, *args):
    """Times fn(*args) after one untimed call (Numba compiles or loads its cache there)."""
    if not benchmark.disabled:
        fn(*args)
    return benchmark(fn, *args)


def _rate(benchmark, key, amount):
    """extra_info[key] = amount / median seconds (when timed)."""
    stats = getattr(benchmark, "stats", None)
    if not benchmark.disabled and stats is not None:
        benchmark.extra_info[key] = amount / stats.stats.median


def _info(benchmark, name, **kw):
    benchmark.extra_info["backend"] = name
    benchmark.extra_info["dtype"] = np.dtype(DTYPE).name
    if name == "numba":
        from fastnn.kernels import numba_cpu

        benchmark.extra_info["blas"] = numba_cpu.BLAS
    benchmark.extra_info.update(kw)


# ---------------------------------------------------------------------------------------
# Dense layer (GEMM + fused epilogue): N x I x O

DENSE_SIZES = {"64x784x128": (64, 784, 128), "256x1024x1024": (256, 1024, 1024)}


def _dense_data(n, i, o):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, i)).astype(DTYPE)
    w = (rng.standard_normal((i, o)) / np.sqrt(i)).astype(DTYPE)
    b = rng.standard_normal(o).astype(DTYPE)
    return x, w, b


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_dense_forward(benchmark, name, size):
    """out = relu(x @ w + b)."""
    k = _module(name)
    n, i, o = DENSE_SIZES[size]
    x, w, b = _dense_data(n, i, o)
    out = np.empty((n, o), DTYPE)
    benchmark.group = f"kernel dense_forward {size}"
    _run(benchmark, k.dense_forward, x, w, b, out, C.RELU, 0.0)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gflops", 2.0 * n * i * o / 1e9)


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_dense_backward(benchmark, name, size):
    """dz = dout * relu'(y), db, dw = x.T @ dz, dx = dz @ w.T."""
    k = _module(name)
    n, i, o = DENSE_SIZES[size]
    x, w, b = _dense_data(n, i, o)
    y = np.maximum(x @ w + b, 0).astype(DTYPE)
    dout = np.random.default_rng(1).standard_normal((n, o)).astype(DTYPE)
    dz, dx = np.empty_like(dout), np.empty_like(x)
    dw, db = np.empty_like(w), np.empty_like(b)
    benchmark.group = f"kernel dense_backward {size}"
    _run(benchmark, k.dense_backward, x, w, y, dout, dz, dx, dw, db, C.RELU, 0.0, 1)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gflops", 4.0 * n * i * o / 1e9)


# ---------------------------------------------------------------------------------------
# Softmax + cross-entropy (forward and gradient): N x C

SCE_SIZES = {"256x10": (256, 10), "1024x1000": (1024, 1000)}


@pytest.mark.parametrize("size", SCE_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_softmax_cross_entropy(benchmark, name, size):
    """loss, p = softmax(z), dz from logits and one-hot targets."""
    k = _module(name)
    n, c = SCE_SIZES[size]
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((n, c)) * 3).astype(DTYPE)
    y = np.eye(c, dtype=DTYPE)[rng.integers(0, c, n)]
    sw = np.ones(n, DTYPE)
    p, dz = np.empty_like(z), np.empty_like(z)
    benchmark.group = f"kernel softmax_cross_entropy {size}"
    _run(benchmark, k.softmax_cross_entropy, z, y, sw, p, dz)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gb_per_s", 4.0 * z.nbytes / 1e9)  # reads z, y; writes p, dz


# ---------------------------------------------------------------------------------------
# Adam over one flat buffer of P parameters, and a memory copy of the same traffic

ADAM_SIZES = {"1M": 1_000_000, "10M": 10_000_000}


def _adam_data(size):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(size).astype(DTYPE)
    g = rng.standard_normal(size).astype(DTYPE)
    return p, g, np.zeros_like(p), np.zeros_like(p)


@pytest.mark.parametrize("size", ADAM_SIZES)
@pytest.mark.parametrize("name", BACKENDS + ("memcpy",))
def test_adam_update(benchmark, name, size):
    """One Adam step on P float32 parameters ("memcpy": np.copyto of 3.5 P floats)."""
    n = ADAM_SIZES[size]
    benchmark.group = f"kernel adam_update {size}"
    moved = 7 * n * np.dtype(DTYPE).itemsize  # bytes read + written by Adam
    if name == "memcpy":
        half = 7 * n // 2
        src, dst = np.ones(half, DTYPE), np.zeros(half, DTYPE)
        _run(benchmark, np.copyto, dst, src)
    else:
        k = _module(name)
        p, g, m, v = _adam_data(n)
        _run(benchmark, k.adam_update, p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 0.0, 10)
    _info(benchmark, name, params=n, bytes_moved=moved)
    _rate(benchmark, "gb_per_s", moved / 1e9)


# ---------------------------------------------------------------------------------------
# ReLU activation (forward), N x O

RELU_SIZES = {"64x128": (64, 128), "1024x4096": (1024, 4096)}


@pytest.mark.parametrize("size", RELU_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_relu_activation(benchmark, name, size):
    """out = relu(x)."""
    k = _module(name)
    n, o = RELU_SIZES[size]
    x = np.random.default_rng(4).standard_normal((n, o)).astype(DTYPE)
    out = np.empty_like(x)
    benchmark.group = f"kernel relu {size}"
    _run(benchmark, k.activation_forward, x, out, C.RELU, 0.0)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gb_per_s", 2.0 * x.nbytes / 1e9)


# ---------------------------------------------------------------------------------------
# The other activations (forward) and every activation's backward, N x O

ACTIVATIONS = {
    "leaky_relu": C.LEAKY_RELU,
    "sigmoid": C.SIGMOID,
    "tanh": C.TANH,
    "softmax": C.SOFTMAX,
    "elu": C.ELU,
    "selu": C.SELU,
    "gelu": C.GELU,
    "silu": C.SILU,
    "softplus": C.SOFTPLUS,
}
ACT_SIZE = (1024, 1024)


def _act_data():
    return np.random.default_rng(5).standard_normal(ACT_SIZE).astype(DTYPE)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("name", BACKENDS)
def test_activation_forward(benchmark, name, act):
    """out = act(x)."""
    k = _module(name)
    x = _act_data()
    out = np.empty_like(x)
    benchmark.group = f"kernel activation {act} 1024x1024"
    _run(benchmark, k.activation_forward, x, out, ACTIVATIONS[act], 0.2)
    _info(benchmark, name, shape="1024x1024")
    _rate(benchmark, "gb_per_s", 2.0 * x.nbytes / 1e9)


@pytest.mark.parametrize("act", ("relu", *ACTIVATIONS))
@pytest.mark.parametrize("name", BACKENDS)
def test_activation_backward(benchmark, name, act):
    """dx = dout * act'(from the output y; from the input x for gelu and silu)."""
    k = _module(name)
    code = C.RELU if act == "relu" else ACTIVATIONS[act]
    y = np.empty(ACT_SIZE, DTYPE)
    if code in C.INPUT_ACTS:
        y[...] = _act_data()
    else:
        backend.load("numpy").activation_forward(_act_data(), y, code, 0.2)
    dout = np.random.default_rng(6).standard_normal(ACT_SIZE).astype(DTYPE)
    dx = np.empty_like(y)
    benchmark.group = f"kernel activation_backward {act} 1024x1024"
    _run(benchmark, k.activation_backward, y, dout, dx, code, 0.2)
    _info(benchmark, name, shape="1024x1024")
    _rate(benchmark, "gb_per_s", 3.0 * y.nbytes / 1e9)  # reads y, dout; writes dx


# ---------------------------------------------------------------------------------------
# The other losses (loss and gradient), N x C

LOSS_SIZE = (1024, 100)


def _loss_args(loss):
    """Arguments of one loss kernel on LOSS_SIZE: logits or probabilities, targets, sw, outs."""
    n, c = LOSS_SIZE
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((n, c)) * 2).astype(DTYPE)
    sw = np.ones(n, DTYPE)
    dz = np.empty_like(z)
    if loss == "sparse_softmax_cross_entropy":
        return z, rng.integers(0, c, n).astype(DTYPE), sw, np.empty_like(z), dz
    bits = (rng.random((n, c)) < 0.5).astype(DTYPE)
    if loss == "sigmoid_binary_cross_entropy":
        return z, bits, sw, np.empty_like(z), dz
    if loss == "categorical_crossentropy":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p.astype(DTYPE), np.eye(c, dtype=DTYPE)[rng.integers(0, c, n)], sw, dz
    if loss == "binary_crossentropy":
        return (1 / (1 + np.exp(-z))).astype(DTYPE), bits, sw, dz
    if loss in ("kl_divergence", "poisson"):  # probabilities against probabilities
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        q = rng.random((n, c))
        return p.astype(DTYPE), (q / q.sum(axis=1, keepdims=True)).astype(DTYPE), sw, dz
    return z, rng.standard_normal((n, c)).astype(DTYPE), sw, dz  # mse, mae, huber


LOSSES = (
    "sparse_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "kl_divergence",
    "poisson",
)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", BACKENDS)
def test_loss(benchmark, name, loss):
    """loss value and dL/d(input) of one loss kernel."""
    k = _module(name)
    args = _loss_args(loss)
    benchmark.group = f"kernel {loss} 1024x100"
    _run(benchmark, getattr(k, loss), *args)
    _info(benchmark, name, shape="1024x100")
    _rate(benchmark, "gb_per_s", sum(a.nbytes for a in args) / 1e9)


# ---------------------------------------------------------------------------------------
# The other optimizers over one flat buffer of P parameters

OPTIMIZERS = {
    "sgd": lambda k, p, g, s: (k.sgd_update, p, g, 1e-2),
    "momentum": lambda k, p, g, s: (k.momentum_update, p, g, s, 1e-2, 0.9, False),
    "nesterov": lambda k, p, g, s: (k.momentum_update, p, g, s, 1e-2, 0.9, True),
    "adagrad": lambda k, p, g, s: (k.adagrad_update, p, g, s, 1e-2, 1e-7),
    "rmsprop": lambda k, p, g, s: (k.rmsprop_update, p, g, s, 1e-3, 0.9, 1e-7),
    "nadam": lambda k, p, g, s: (
        k.nadam_update,
        p,
        g,
        s,
        np.zeros_like(s),
        1e-3,
        0.9,
        0.999,
        1e-7,
        10,
    ),
}


@pytest.mark.parametrize("size", ADAM_SIZES)
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("name", BACKENDS)
def test_optimizer_update(benchmark, name, opt, size):
    """One update step on P float32 parameters (state: one slot, except plain SGD)."""
    k = _module(name)
    n = ADAM_SIZES[size]
    p, g, state, _ = _adam_data(n)
    fn, *args = OPTIMIZERS[opt](k, p, g, state)
    benchmark.group = f"kernel {opt}_update {size}"
    _run(benchmark, fn, *args)
    moved = {"sgd": 3, "nadam": 7}.get(opt, 5) * n * np.dtype(DTYPE).itemsize
    _info(benchmark, name, params=n, bytes_moved=moved)
    _rate(benchmark, "gb_per_s", moved / 1e9)


# ---------------------------------------------------------------------------------------
# Gradient clipping of a flat gradient in place (Keras's clipnorm per weight,
# global_clipnorm, clipvalue); repeated calls on the clipped gradient run the same passes

CLIPS = {
    "clipnorm": C.H_CLIPNORM,
    "global_clipnorm": C.H_GLOBAL_CLIPNORM,
    "clipvalue": C.H_CLIPVALUE,
}


def _clip_args(clip, n):
    """(grads, layers, hyper): Adam's hyper with one clip entry set; two weights in layers."""
    hyper = np.zeros(C.HYPER_LEN[C.ADAM] + C.N_CLIP)
    hyper[: C.HYPER_LEN[C.ADAM]] = (1e-3, 0.9, 0.999, 1e-7, 0.0)
    hyper[C.HYPER_LEN[C.ADAM] + CLIPS[clip]] = 1.0
    layers = np.full((1, C.P_COLS), -1, np.int64)
    layers[0, C.P_W0], layers[0, C.P_W1] = 0, n // 2
    grads = np.random.default_rng(8).standard_normal(n).astype(DTYPE)
    return grads, layers, hyper


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("name", BACKENDS)
def test_clip_gradients(benchmark, name, clip):
    """One clipping pass over 1M float32 gradient entries (two weights for clipnorm)."""
    k = _module(name)
    n = ADAM_SIZES["1M"]
    grads, layers, hyper = _clip_args(clip, n)
    benchmark.group = f"kernel clip_gradients {clip} 1M"
    _run(benchmark, k.clip_gradients, grads, layers, C.ADAM, hyper)
    _info(benchmark, name, params=n)
    _rate(benchmark, "gb_per_s", 2.0 * grads.nbytes / 1e9)


# ---------------------------------------------------------------------------------------
# BatchNormalization (training forward with the moving statistics, backward with dx), R x C

BN_SIZES = {"64x256": (64, 256), "4096x64": (4096, 64)}


def _bn_data(r, c):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((r, c)).astype(DTYPE)
    gamma, beta = rng.random(c).astype(DTYPE) + 0.5, rng.standard_normal(c).astype(DTYPE)
    return x, gamma, beta


@pytest.mark.parametrize("size", BN_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_batchnorm_forward(benchmark, name, size):
    """Batch mean and variance (float64 sums), moving statistics, out = xhat * gamma + beta."""
    k = _module(name)
    r, c = BN_SIZES[size]
    x, gamma, beta = _bn_data(r, c)
    mean, var = np.zeros(c, DTYPE), np.ones(c, DTYPE)
    saved, out, acc = np.empty((2, c), DTYPE), np.empty_like(x), np.empty((2, c))
    benchmark.group = f"kernel batchnorm_forward {size}"
    args = (x, gamma, beta, mean, var, saved, out, acc, 1, 0.99, 1e-3)
    _run(benchmark, k.batchnorm_forward, *args)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gb_per_s", 3.0 * x.nbytes / 1e9)  # reads x twice, writes out


@pytest.mark.parametrize("size", BN_SIZES)
@pytest.mark.parametrize("name", BACKENDS)
def test_batchnorm_backward(benchmark, name, size):
    """dgamma, dbeta (float64 sums) and dx from the saved mean and inverse deviation."""
    k = _module(name)
    r, c = BN_SIZES[size]
    x, gamma, beta = _bn_data(r, c)
    saved, acc = np.empty((2, c), DTYPE), np.empty((2, c))
    mean, var = np.zeros(c, DTYPE), np.ones(c, DTYPE)
    k.batchnorm_forward(x, gamma, beta, mean, var, saved, np.empty_like(x), acc, 1, 0.99, 1e-3)
    dout = np.random.default_rng(10).standard_normal((r, c)).astype(DTYPE)
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(beta)
    benchmark.group = f"kernel batchnorm_backward {size}"
    _run(benchmark, k.batchnorm_backward, x, gamma, saved, dout, dx, dgamma, dbeta, acc, 1)
    _info(benchmark, name, shape=size)
    _rate(benchmark, "gb_per_s", 5.0 * x.nbytes / 1e9)  # x, dout twice each; writes dx


# ---------------------------------------------------------------------------------------
# Dropout (forward; the backward is the same mask pass), N x O


@pytest.mark.parametrize("name", BACKENDS)
def test_dropout_forward(benchmark, name):
    """out = x * keep / (1 - rate), keep from a counter-based hash of the seed."""
    k = _module(name)
    x = _act_data()
    out = np.empty_like(x)
    benchmark.group = "kernel dropout_forward 1024x1024"
    _run(benchmark, k.dropout_forward, x, out, 0.5, 12345)
    _info(benchmark, name, shape="1024x1024")
    _rate(benchmark, "gb_per_s", 2.0 * x.nbytes / 1e9)


# ---------------------------------------------------------------------------------------
# The argument checks' finite pass: the cython extension's any_nonfinite against np.isfinite

FINITE_SIZES = {"4096": 4096, "1M": 1 << 20}


@pytest.mark.parametrize("size", FINITE_SIZES)
@pytest.mark.parametrize("name", ("numpy", "cython"))
def test_any_nonfinite(benchmark, name, size):
    """Whether an array holds an inf or NaN (every API call checks its float arguments)."""
    a = np.random.default_rng(0).standard_normal(FINITE_SIZES[size]).astype(DTYPE)
    if name == "numpy":
        fn = lambda a: not np.isfinite(a).all()  # noqa: E731
    else:
        fn = _module(name).any_nonfinite
    benchmark.group = f"kernel any_nonfinite {size}"
    assert _run(benchmark, fn, a) is False
    _info(benchmark, name, entries=a.size)
    _rate(benchmark, "gb_per_s", a.nbytes / 1e9)
