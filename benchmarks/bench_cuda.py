"""CUDA kernels on a real GPU: GEMM GFLOP/s, softmax cross-entropy, Adam and
BatchNormalization GB/s, and whole training steps of a plan (an MLP, with and without
BatchNormalization) built from real layers by fastnn's plan builder.

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


@pytest.mark.parametrize("r,c", [(4096, 256), (65536, 64)], ids=["4096x256", "65536x64"])
def test_batchnorm(benchmark, cu, r, c):
    rng = np.random.default_rng(4)
    x, dout = _dev(cu, rng, r, c), _dev(cu, rng, r, c)
    gamma, beta = _dev(cu, rng, c), _dev(cu, rng, c)
    mm, mv = cu.zeros((c,), np.float32), cu.to_device(np.ones(c, np.float32))
    saved, out, dx = cu.zeros((2, c), np.float32), cu.zeros((r, c)), cu.zeros((r, c))
    dgamma, dbeta, acc = cu.zeros((c,)), cu.zeros((c,)), cu.zeros((2, c), np.float64)

    def run():
        cu.batchnorm_forward(x, gamma, beta, mm, mv, saved, out, acc, 1, 0.99, 1e-3)
        cu.batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, 1)
        cu.synchronize()

    run()
    benchmark(run)
    # forward: x read twice, out written; backward: x, dout read twice, dx written
    _report(benchmark, f"batchnorm forward+backward {r}x{c}", 8.0 * 4 * r * c, "GB/s")


def _plan(rows, n_in, hidden, n_out, bn):
    """A plan of Dense(hidden, relu) [-> BatchNormalization] -> Dense(n_out) and its sizes."""
    from fastnn._engine import Engine
    from fastnn._plan import build_plan
    from fastnn.layers import BatchNormalization, Dense

    layers = [Dense(hidden, activation="relu"), *([BatchNormalization()] if bn else []),
              Dense(n_out)]  # fmt: skip
    shape, rng = (n_in,), np.random.default_rng(5)
    for layer in layers:
        layer.build(shape, "float32", rng, backend="numpy")
        shape = layer.output_shape
    offsets, n_params, n_nontrain = Engine._layout(layers)
    return build_plan(layers, offsets, (n_in,), rows), n_params, n_nontrain


@pytest.mark.parametrize("bn", [False, True], ids=["784-256-10", "784-256-bn-10"])
def test_train_step(benchmark, cu, bn):
    """One train_step (forward, softmax cross-entropy, backward, Adam) on device buffers;
    the loss comes back to the host each call, as in run_epoch."""
    rows, n_in, hidden, n_out = 256, 784, 256, 10
    plan, n_params, n_nontrain = _plan(rows, n_in, hidden, n_out, bn)
    rng = np.random.default_rng(6)
    net = (_dev(cu, rng, n_params, scale=0.05), cu.zeros((n_params,)),
           cu.zeros((2, n_params)), cu.to_device(np.ones(n_nontrain, np.float32)))  # fmt: skip
    work = (cu.zeros((plan.acts_size,)), cu.zeros((plan.gbuf_size,)),
            cu.zeros((plan.acc_size,), np.float64))  # fmt: skip
    labels = rng.integers(0, n_out, (rows, 1)).astype(np.float32)
    batch = (_dev(cu, rng, rows, n_in), cu.to_device(labels),
             cu.to_device(np.ones(rows, np.float32)))  # fmt: skip
    hyper = np.array([1e-3, 0.9, 0.999, 1e-7, 0.0])
    loss = (C.SPARSE_SOFTMAX_CE, 0, np.zeros((0, C.M_COLS), np.int64), np.zeros(0))
    step = [0]

    def run():
        step[0] += 1
        return cu.train_step(batch, plan.args, net, work, loss,
                             (C.ADAM, hyper, np.zeros(1), step[0], 0))  # fmt: skip

    run()
    benchmark(run)
    flops = 6.0 * rows * (n_in * hidden + hidden * n_out)
    _report(benchmark, f"train_step {'with' if bn else 'without'} BN", flops, "GFLOP/s")
