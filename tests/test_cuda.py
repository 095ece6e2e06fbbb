"""CUDA backend: parity with the reference under the simulator, PTX compilation, real GPU.

(a) Under ``NUMBA_ENABLE_CUDASIM=1`` every kernel == reference on tiny tail-crossing shapes,
    plus plans of real layers (built by fastnn's plan builder) run forward, backward, a few
    training steps and epochs.  Numba is already imported in this process, so the checks
    run in subprocesses (``cuda_sim_worker.py``, two shards at once on the two cores),
    started at the module's first test so that they run while (b) compiles here.
(b) Every kernel compiles to PTX for cc 8.0 and 9.0 (needs the NVVM wheels of
    ``numba-cuda[cu12]``; no GPU).
(c) On a machine with a GPU, ``pytest -m cuda`` runs the same checks on the device.

Everything skips, with the reason, when numba-cuda is not installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastnn.kernels import reference

pytestmark = pytest.mark.cuda

HERE = Path(__file__).resolve().parent
HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
NO_NUMBA_CUDA = "numba-cuda is not installed (pip install -e '.[cuda]')"


def _load_worker():
    spec = importlib.util.spec_from_file_location(
        "fastnn_cuda_sim_worker", HERE / "cuda_sim_worker.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()

# Rough simulator seconds per check (2 cores), to balance the two shards.
_COST = {"run_epoch": 10, "dense_backward": 6, "stack_forward_backward": 5,
         "dense_forward": 4, "device_resident": 4, "sparse_softmax_ce": 4,
         "run_epoch_flags_non_finite": 3.5, "train_step": 3.5, "losses": 2.5,
         "train_step_norm": 2.5}  # fmt: skip


def _shards(names, k=2):
    shards = [[] for _ in range(k)]
    load = [0.0] * k
    for name in sorted(names, key=lambda n: -_COST.get(n, 1.5)):
        i = load.index(min(load))
        shards[i].append(name)
        load[i] += _COST.get(name, 1.5)
    return [s for s in shards if s]


def _cuda_module():
    from fastnn.kernels import cuda as cu

    return cu


# ---------------------------------------------------------------------------------------
# PTX: every kernel compiles for the hardware (no GPU needed, NVVM from the cu12 wheels)

# Kernels that must not contain float64 instructions in their float32 build (the others
# sum losses, penalties and metrics in float64 on purpose, or read the float64 loss guard).
FLOAT32_ONLY = {"gemm_bias_act", "gemm_tn", "gemm_nt", "act_forward", "act_backward",
                "dropout", "softmax_rows", "softmax_back_rows", "act_grad_bias", "bn_apply",
                "normalize"}  # fmt: skip
PTX_TARGETS = [("float32", (8, 0)), ("float32", (9, 0)), ("float64", (8, 0)),
               ("float64", (9, 0))]  # fmt: skip


@pytest.fixture(scope="module")
def compile_ptx():
    if not HAS_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    from numba import config, cuda

    if config.ENABLE_CUDASIM or cuda.compile_ptx is None:
        pytest.skip("cuda.compile_ptx is unavailable under the CUDA simulator")

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=(8, 0))
    except Exception as exc:  # noqa: BLE001 - NVVM missing shows up as various errors
        pytest.skip(f"NVVM is not available: {type(exc).__name__}: {exc}")
    return cuda.compile_ptx


def _kernel_names():
    try:
        return list(_cuda_module()._KERNEL_NAMES)
    except Exception:  # noqa: BLE001 - collection must not fail; the tests then skip
        return []


@pytest.mark.parametrize("dtype,cc", PTX_TARGETS, ids=[f"{d}-sm{c[0]}{c[1]}" for d, c in
                                                       PTX_TARGETS])  # fmt: skip
@pytest.mark.parametrize("kernel", _kernel_names())
def test_ptx(compile_ptx, kernel, dtype, cc):
    cu = _cuda_module()
    fn, sig = cu.kernel_signatures(np.dtype(dtype))[kernel]
    t0 = time.perf_counter()
    ptx, _ = compile_ptx(fn, sig, cc=cc)
    seconds = time.perf_counter() - t0
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    f64 = sum(".f64" in line for line in ptx.splitlines())
    print(f"PTX {kernel} {dtype} sm_{cc[0]}{cc[1]}: {len(ptx)} chars, {f64} f64 lines, "
          f"{seconds:.2f} s")  # fmt: skip
    if dtype == "float32" and kernel in FLOAT32_ONLY:
        assert f64 == 0, f"{kernel}: {f64} float64 instructions in the float32 build"


def test_ptx_sparse_int_labels(compile_ptx):
    fn, sig = _cuda_module().kernel_signatures(np.float32, np.int64)["sparse_xent_rows"]
    ptx, _ = compile_ptx(fn, sig, cc=(8, 0))
    assert ".target sm_80" in ptx


# ---------------------------------------------------------------------------------------
# Simulator parity (workers started at the module's first test) and real-GPU parity


class _Workers:
    """The simulator worker processes: started once, at the module's first test, so they
    run while the PTX tests (defined first) compile in this process."""

    procs: list | None = None
    t0 = 0.0

    @classmethod
    def start(cls):
        if cls.procs is not None:
            return
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
        cls.t0 = time.perf_counter()
        cls.procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "cuda_sim_worker.py"), *shard],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=HERE.parent,
            )  # fmt: skip
            for shard in _shards(worker.CHECKS)
        ]

    @classmethod
    def stop(cls):
        for proc in cls.procs or ():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        cls.procs = None


@pytest.fixture(scope="module", autouse=True)
def _simulator_workers(request):
    """Starts the workers early when simulator parity tests are selected; ends them (if
    still running) with the module."""
    selected = any(
        getattr(item, "originalname", "") == "test_simulator_parity"
        for item in request.session.items
    )
    if HAS_NUMBA_CUDA and selected:
        _Workers.start()
    yield
    _Workers.stop()


@pytest.fixture(scope="module")
def sim_results():
    """{check name: result} from the simulator workers."""
    if not HAS_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    _Workers.start()
    results, errors = {}, []
    for proc in _Workers.procs:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors.append("simulator worker timed out after 600 s")
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[r["name"]] = r
        if proc.returncode:
            errors.append(f"worker exit {proc.returncode}: {err.strip()[-2000:]}")
    wall = time.perf_counter() - _Workers.t0
    total = sum(r["seconds"] for r in results.values())
    print(f"\nCUDA simulator: {len(results)} checks, {total:.1f} s of checks, {wall:.1f} s wall")
    if errors and not results:
        pytest.fail("; ".join(errors))
    return {"results": results, "errors": errors}


@pytest.mark.parametrize("name", list(worker.CHECKS))
def test_simulator_parity(sim_results, name):
    r = sim_results["results"].get(name)
    assert r is not None, f"no result for {name}: {'; '.join(sim_results['errors'])}"
    print(f"{name}: {r['info']} ({r['seconds']:.1f} s)")
    assert r["ok"], r["info"]


def _real_gpu_or_skip():
    if not HAS_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        pytest.skip("the CUDA simulator is active in this process")
    if not cuda.is_available():
        pytest.skip("no CUDA GPU here (the simulator checks cover the kernels)")


@pytest.mark.parametrize("name", [*worker.CHECKS, *worker.DEVICE_CHECKS])
def test_gpu_parity(name):
    _real_gpu_or_skip()
    check = worker.CHECKS.get(name) or worker.DEVICE_CHECKS[name]
    r = worker.run_check(name, _cuda_module(), check)
    print(f"{name}: {r['info']} ({r['seconds']:.2f} s)")
    assert r["ok"], r["info"]


# ---------------------------------------------------------------------------------------
# Contract and availability (cheap; run wherever numba-cuda is installed or not)


def test_exports_every_op_with_reference_parameters():
    cu = _cuda_module()
    for op in reference.OPS:
        assert hasattr(cu, op), f"fastnn.kernels.cuda lacks {op}"
        got = list(inspect.signature(getattr(cu, op)).parameters)
        want = list(inspect.signature(getattr(reference, op)).parameters)
        assert got == want, f"{op}: parameters {got} != {want}"
    for helper in ("zeros", "to_device", "to_host", "check_available"):
        assert callable(getattr(cu, helper))


def test_kinds():
    """The layer kinds the backend runs in a plan (the model refuses others at build)."""
    from fastnn.kernels import codes as C

    cu = _cuda_module()
    assert cu.KINDS == frozenset({C.DENSE, C.DROPOUT, C.ACTIVATION, C.BATCHNORM,
                                  C.NORMALIZATION})  # fmt: skip
    assert all(0 <= k < C.N_KINDS for k in cu.KINDS)


def test_check_available_says_why():
    cu = _cuda_module()
    try:
        from numba import cuda

        usable = cuda.is_available()  # True under the simulator too
    except Exception:  # noqa: BLE001 - numba.cuda not importable: must be reported
        usable = False
    if usable:
        cu.check_available()
        return
    with pytest.raises(RuntimeError, match="CUDA|cuda") as info:
        cu.check_available()
    print(f"check_available: {info.value}")
