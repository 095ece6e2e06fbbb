"""Shared fixtures of the training benchmarks.

``pytest benchmarks/`` times every implementation; ``--benchmark-disable`` runs each
benchmark once on two batches (a smoke test for CI).  ``--bench-threads N`` holds BLAS,
Numba and PyTorch at N threads for the whole session (default: as the environment sets them).
"""

from __future__ import annotations

import os

import pytest

from fastnn import bench
from fastnn.bench import baselines as B

#: Batches per "epoch" when the benchmarks are disabled (run once as plain tests).
SMOKE_BATCHES = 2


def pytest_addoption(parser):
    parser.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="threads for BLAS, Numba and PyTorch in the fastnn benchmarks",
    )


def pytest_report_header(config):
    lines = [
        f"cpu: {bench.cpu_model()}",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}",
    ]
    for pool in bench.blas_pools():
        lines.append(
            f"{pool['user_api']}: {pool['internal_api']} {pool['version']} "
            f"kernel={pool['architecture']} threads={pool['num_threads']}"
        )
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastnn"] = {
        "cpu_model": bench.cpu_model(),
        "blas": bench.blas_pools(),
        "numba_threading_layer": bench.numba_threading_layer(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "bench_threads": config.getoption("--bench-threads"),
    }


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request):
    """Thread counts in force: limited with --bench-threads, else the environment's."""
    n = request.config.getoption("--bench-threads")
    if n is None:
        yield None
        return
    torch = None
    if B.torch_available():
        import torch  # before the limits, so that its OpenMP runtime is covered too
    with bench.limit_threads(n, torch) as used:
        yield used


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    """True under --benchmark-disable: every benchmark runs once on tiny data."""
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="session")
def epoch_data(smoke):
    """net -> (X, y): synthetic MNIST-shaped data (60000 rows), two batches when smoke."""
    cache: dict = {}

    def get(net: str):
        n_in, _, n_out, batch = B.NETWORKS[net]
        n = SMOKE_BATCHES * batch if smoke else bench.EPOCH_SAMPLES
        key = (n_in, n)
        if key not in cache:
            cache[key] = B.synthetic_data(n, n_in, n_out, seed=2)
        return cache[key]

    return get


@pytest.fixture
def make_impl():
    """(net, impl name) -> a fresh implementation, all from the same initial weights."""

    def make(net: str, impl: str):
        sizes = B.network_sizes(net)
        bn = net in B.BATCHNORM
        weights = B.glorot_weights(sizes, 0, batchnorm=bn)
        if impl.startswith("fastnn-"):
            backend = impl[len("fastnn-") :].removesuffix("-layers")
            from fastnn import backend as _backend

            why = _backend.why_unavailable(backend)
            if why is not None:
                pytest.skip(f"backend {backend} unavailable: {why}")
            if impl.endswith("-layers"):
                if bn:
                    pytest.skip("the hand-written loop covers Dense stacks only")
                return B.FastnnLayersMLP(sizes, backend, 0, weights)
            return B.FastnnMLP(sizes, backend, 0, weights, batchnorm=bn)
        if impl == "numpy":
            model = B.NumpyMLP(sizes, 0, batchnorm=bn)
            model.set_weights(weights)
            return model
        if impl == "torch":
            pytest.importorskip("torch")
            return B.TorchMLP(sizes, 0, weights=weights, batchnorm=bn)
        if impl == "jax":
            pytest.importorskip("jax")
            return B.JaxMLP(sizes, 0, weights=weights, batchnorm=bn)
        raise ValueError(f"unknown implementation {impl!r}")

    return make


@pytest.fixture
def thread_info():
    """() -> the thread counts in force now (for extra_info)."""
    return _thread_info


def _thread_info() -> dict:
    import numba
    from threadpoolctl import threadpool_info

    info = {"numba_threads": numba.get_num_threads()}
    info["blas_threads"] = sorted(
        {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    )
    if B.torch_available():
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info
