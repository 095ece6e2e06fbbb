"""Training speed: one step and one MNIST-shaped epoch, fastnn vs NumPy vs PyTorch (vs JAX).

Networks (float32, Adam, ReLU hidden layers, softmax + sparse cross-entropy):
(a) 784-128-10 batch 64, (d) 64-64-10 batch 32, (c) 784-1024-1024-10 batch 256, (bn)
784-256-10 batch 64 with BatchNormalization between the hidden Dense and its ReLU.

One benchmark group per network and kind ("a step", "a epoch", ...): read the ratios
within a group.  ``extra_info`` holds samples/s and the thread counts.  Under
``--benchmark-disable`` each benchmark runs once on two batches.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=group
    pytest benchmarks/ --benchmark-only -k "d and step" --bench-threads 1
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnn.bench import baselines as B

NETS = ("a", "d", "c", "bn")
IMPLS = ("fastnn-numba", "fastnn-cython", "numpy", "torch", "jax")
#: fastnn's low-level API in a hand-written loop (layers, loss, optimizer step): steps only
LAYER_IMPLS = ("fastnn-numba-layers", "fastnn-cython-layers")
#: Timed rounds of a full epoch (pedantic; the (c) epoch is seconds long).
EPOCH_ROUNDS = {"a": 3, "d": 3, "c": 2, "bn": 3}


def _group(net: str, kind: str) -> str:
    return f"{B.network_label(net)} {kind}"


def _info(benchmark, thread_info, impl, obj, samples: int) -> None:
    benchmark.extra_info.update(thread_info())
    benchmark.extra_info["impl"] = impl
    if getattr(obj, "adam_impl", None):
        benchmark.extra_info["torch_adam"] = obj.adam_impl
    stats = getattr(benchmark, "stats", None)
    if not benchmark.disabled and stats is not None:
        benchmark.extra_info["samples_per_s"] = samples / stats.stats.median


def _batch(obj, impl, x, y):
    if impl == "torch":
        return obj.tensors(x, y)
    if impl == "jax":
        return obj.jnp.asarray(x), obj.jnp.asarray(y)
    return x, y


@pytest.mark.parametrize("impl", IMPLS + LAYER_IMPLS)
@pytest.mark.parametrize("net", NETS)
def test_step(benchmark, make_impl, thread_info, net, impl):
    """One optimizer step on one batch (fastnn: ``train_on_batch``; ``-layers``: the
    low-level API's calls)."""
    obj = make_impl(net, impl)
    n_in, _, n_out, batch = B.NETWORKS[net]
    x, y = _batch(obj, impl, *B.synthetic_data(batch, n_in, n_out, seed=1))
    for _ in range(0 if benchmark.disabled else 3):  # compile / warm up
        obj.train_step(x, y)
    benchmark.group = _group(net, "step")
    loss = benchmark(obj.train_step, x, y)
    assert np.isfinite(loss)
    _info(benchmark, thread_info, impl, obj, batch)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("net", NETS)
def test_epoch(benchmark, make_impl, epoch_data, thread_info, net, impl):
    """One shuffled epoch over 60000 synthetic samples (fastnn: ``fit(epochs=1)``)."""
    obj = make_impl(net, impl)
    X, Y = epoch_data(net)
    batch = B.NETWORKS[net][3]
    if not benchmark.disabled:  # compile / warm up
        obj.train_epoch(X[: 2 * batch], Y[: 2 * batch], batch, np.random.default_rng(1))
    rng = np.random.default_rng(0)
    benchmark.group = _group(net, "epoch")
    rounds = 1 if benchmark.disabled else EPOCH_ROUNDS[net]
    loss = benchmark.pedantic(obj.train_epoch, args=(X, Y, batch, rng), rounds=rounds)
    assert np.isfinite(loss)
    _info(benchmark, thread_info, impl, obj, len(X))
