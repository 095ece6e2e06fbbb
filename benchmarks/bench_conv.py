"""Convolution and pooling kernels: conv2d forward/backward and max/average pooling of the
two benchmark CNNs' layers (fastnn.bench.cnn), each backend beside the NumPy reference
(im2col + np.dot: the NumPy baseline).  One group per op and shape; ``extra_info`` holds
GFLOP/s for the convolutions.  All float32.

    pytest benchmarks/bench_conv.py --benchmark-only --benchmark-group-by=group
    pytest benchmarks/bench_conv.py --benchmark-disable      # each once (CI smoke run)
"""

from __future__ import annotations

import numpy as np
import pytest
from bench_kernels import BACKENDS, DTYPE, _info, _module, _rate, _run

#: (label, n, h, w, c, filters, k, pad): the convolutions of lenet (batch 32) and convnet
#: (batch 128)
CONVS = [
    ("lenet-conv1", 32, 28, 28, 1, 6, 5, 2),
    ("lenet-conv2", 32, 14, 14, 6, 16, 5, 0),
    ("convnet-conv1", 128, 28, 28, 1, 32, 3, 0),
    ("convnet-conv2", 128, 13, 13, 32, 64, 3, 0),
]
#: (label, n, h, c): their 2x2 max/average pooling inputs
POOLS = [("lenet-pool1", 32, 28, 6), ("convnet-pool1", 128, 26, 32)]


def _conv_arrays(n, h, w, c, f, k, pad):
    rng = np.random.default_rng(0)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    x = rng.random((n, h, w, c), dtype=np.float32)
    wt = (rng.random((k, k, c, f), dtype=np.float32) - 0.5) / k
    out = np.empty((n, ho, wo, f), DTYPE)
    cols = np.empty((n * ho * wo, k * k * c), DTYPE)
    return x, wt, np.zeros(f, DTYPE), cols, out, 2.0 * n * ho * wo * k * k * c * f


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
def test_conv2d_forward(benchmark, name, case):
    mod = _module(name)
    label, *shape = case
    x, w, b, cols, out, flops = _conv_arrays(*shape)
    pad = shape[-1]
    benchmark.group = f"conv2d_forward {label}"
    _info(benchmark, name)
    _run(benchmark, mod.conv2d_forward, x, w, b, cols, out, 1, 0.0, 1, 1, pad, pad)
    _rate(benchmark, "gflops", flops / 1e9)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
def test_conv2d_backward(benchmark, name, case):
    """dz, db, dw and (but for a first layer: one input channel) dx."""
    mod = _module(name)
    label, *shape = case
    x, w, b, cols, out, flops = _conv_arrays(*shape)
    pad, need_dx = shape[-1], int(shape[3] > 1)
    mod.conv2d_forward(x, w, b, cols, out, 1, 0.0, 1, 1, pad, pad)
    dz, dx, dw, db = np.empty_like(out), np.empty_like(x), np.empty_like(w), np.empty_like(b)
    benchmark.group = f"conv2d_backward {label}"
    _info(benchmark, name, need_dx=need_dx)
    _run(benchmark, mod.conv2d_backward, x, w, out, out, cols, dz, dx, dw, db, 1, 0.0, 1, 1,
         pad, pad, need_dx)  # fmt: skip
    _rate(benchmark, "gflops", flops * (1 + need_dx) / 1e9)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOLS, ids=[c[0] for c in POOLS])
def test_pool2d_forward_backward(benchmark, name, kind, case):
    mod = _module(name)
    label, n, h, c = case
    x = np.random.default_rng(0).random((n, h, h, c), dtype=np.float32)
    out = np.empty((n, h // 2, h // 2, c), DTYPE)
    argmax, dx = np.empty_like(out), np.empty_like(x)
    args = (2, 2, 2, 2, 0, 0)

    def step():
        if kind == "max":
            mod.maxpool2d_forward(x, argmax, out, *args)
            mod.maxpool2d_backward(argmax, out, dx, *args)
        else:
            mod.avgpool2d_forward(x, out, *args)
            mod.avgpool2d_backward(out, dx, *args)

    benchmark.group = f"{kind}pool2d forward+backward {label}"
    _info(benchmark, name)
    _run(benchmark, step)
