"""CUDA kernels on a real GPU: GEMM GFLOP/s, softmax cross-entropy and Adam GB/s.

Skips (with the reason) where no GPU is usable, and under the CUDA simulator.  Every array
lives on the device; each timed call ends with a device synchronisation.  The rates are in
``extra_info`` (``--benchmark-json``) and printed (``-s``).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnn.kernels import codes as C

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def cu():
    try:
        from fastnn.kernels import cuda as module

        module.check_available()
    except Exception as exc:  # noqa: BLE001 - any reason means: nothing to measure here
        pytest.skip(f"no usable CUDA GPU: {exc}")
    if module._SIM:
        pytest.skip("the CUDA simulator is active: not a benchmark")
    return module


def _dev(cu, rng, *shape, scale=1.0):
    return cu.to_device((rng.standard_normal(shape) * scale).astype(np.float32))


def _report(benchmark, name, amount, unit):
    """amount per call (FLOP or bytes) -> rate from the benchmark's mean (or one timing)."""
    stats = getattr(benchmark, "stats", None)
    mean = stats.stats.mean if stats is not None and getattr(stats, "stats", None) else None
    if mean:
        rate = amount / mean / 1e9
        benchmark.extra_info[unit] = round(rate, 2)
        print(f"\n{name}: {rate:.1f} {unit} ({mean * 1e6:.1f} us/call)")


GEMM_SHAPES = [(256, 784, 128), (1024, 1024, 1024), (4096, 4096, 4096)]


@pytest.mark.parametrize("n,i,o", GEMM_SHAPES, ids=[f"{n}x{i}x{o}" for n, i, o in GEMM_SHAPES])
def test_gemm_forward(benchmark, cu, n, i, o):
    rng = np.random.default_rng(0)
    x, w, b = _dev(cu, rng, n, i), _dev(cu, rng, i, o, scale=0.05), _dev(cu, rng, o)
    out = cu.zeros((n, o), np.float32)

    def run():
        cu.dense_forward(x, w, b, out, C.RELU, 0.0)
        cu.synchronize()

    run()  # compile
    benchmark(run)
    _report(benchmark, f"dense_forward {n}x{i}x{o}", 2.0 * n * i * o, "GFLOP/s")


@pytest.mark.parametrize("n,i,o", GEMM_SHAPES, ids=[f"{n}x{i}x{o}" for n, i, o in GEMM_SHAPES])
def test_gemm_backward(benchmark, cu, n, i, o):
    rng = np.random.default_rng(1)
    x, w = _dev(cu, rng, n, i), _dev(cu, rng, i, o, scale=0.05)
    y, dout = _dev(cu, rng, n, o), _dev(cu, rng, n, o)
    dz, dx = cu.zeros((n, o), np.float32), cu.zeros((n, i), np.float32)
    dw, db = cu.zeros((i, o), np.float32), cu.zeros((o,), np.float32)

    def run():
        cu.dense_backward(x, w, y, dout, dz, dx, dw, db, C.LINEAR, 0.0, 1)
        cu.synchronize()

    run()
    benchmark(run)
    _report(benchmark, f"dense_backward {n}x{i}x{o}", 4.0 * n * i * o, "GFLOP/s")


@pytest.mark.parametrize("n,c", [(256, 10), (4096, 1000)], ids=["256x10", "4096x1000"])
def test_softmax_cross_entropy(benchmark, cu, n, c):
    rng = np.random.default_rng(2)
    z = _dev(cu, rng, n, c)
    y = cu.to_device(np.eye(c, dtype=np.float32)[rng.integers(0, c, n)])
    sw = cu.to_device(np.ones(n, np.float32))
    p, dz = cu.zeros((n, c), np.float32), cu.zeros((n, c), np.float32)

    def run():
        return cu.softmax_cross_entropy(z, y, sw, p, dz)  # reads the loss back: synchronous

    run()
    benchmark(run)
    _report(benchmark, f"softmax_cross_entropy {n}x{c}", 4.0 * 4 * n * c, "GB/s")


@pytest.mark.parametrize("n_params", [100_000, 10_000_000], ids=["100k", "10M"])
def test_adam(benchmark, cu, n_params):
    rng = np.random.default_rng(3)
    p, g = _dev(cu, rng, n_params), _dev(cu, rng, n_params)
    m, v = cu.zeros((n_params,), np.float32), cu.zeros((n_params,), np.float32)

    def run():
        cu.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 0.0, 1)
        cu.synchronize()

    run()
    benchmark(run)
    _report(benchmark, f"adam_update {n_params}", 7.0 * 4 * n_params, "GB/s")
