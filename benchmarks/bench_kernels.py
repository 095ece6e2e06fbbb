"""Kernel speed: each op group x backend x 2 sizes, the NumPy reference as the baseline.

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
