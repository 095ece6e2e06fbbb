"""Data-parallel fit over MPI: 2 ranks under ``mpiexec`` against one process (skipped
without the ``mpi`` extra), fault handling, ``fastnn info``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastnn.distributed import shard_bounds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HAS_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    not (HAS_MPI and MPIEXEC), reason="mpi4py/mpiexec not installed (pip install -e '.[mpi]')"
)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(mode, out, backend, ranks=2, timeout=120, l2=0.0, shared="default", optimizer="adam"):
    cmd = [sys.executable, str(HERE / "mpi_worker.py"), mode, str(out), backend, str(l2),
           shared, optimizer]  # fmt: skip
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    return proc, time.perf_counter() - start


def _load(out, rank):
    with open(f"{out}.{rank}") as f:
        return json.load(f)


def test_shards_are_contiguous_and_cover_the_batch():
    for rows in (1, 2, 7, 21, 256):
        for size in (1, 2, 3, 5):
            bounds = [shard_bounds(rows, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:]))
            lengths = [hi - lo for lo, hi in bounds]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@needs_mpi
@pytest.mark.parametrize(
    "backend, l2, shared",
    [("cython", 0.0, "default"), ("numba", 0.0, "all"), ("cython", 0.01, "all")],
)
def test_two_ranks_train_as_one_process(tmp_path, backend, l2, shared):
    """Same seed and global batch (21: shards of 11 and 10; a last batch of 1 row: one
    shard empty), Dropout, Adam, sample weights: the per-epoch logs and the final weights
    of 2 ranks are those of one process (Dropout masks that followed the rank rather than
    the global row would make them differ).  With an L2 penalty, whose gradient every
    rank adds, the gradients are scaled after the backward rather than through the
    sample weights.  ``shared="all"``: the gradients are summed through shared memory
    (as large ones are), else with MPI's Allreduce."""
    one, two = tmp_path / "one", tmp_path / "two"
    proc, _ = _run("single", one, backend, ranks=0, l2=l2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _run("parity", two, backend, l2=l2, shared=shared)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, rank0, rank1 = _load(one, 0), _load(two, 0), _load(two, 1)
    assert rank0["ranks"] == 2
    for key, values in single["history"].items():
        np.testing.assert_allclose(rank0["history"][key], values, rtol=1e-5, err_msg=key)
    for w1, w0, w in zip(single["weights"], rank0["weights"], rank1["weights"]):
        scale = np.abs(w1).max()
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-5 * scale)
        assert w == w0  # the ranks hold bit-identical weights
    assert rank0["evaluate"] == rank1["evaluate"]  # every rank the full evaluation
    assert rank1["predict_rows"] == 85
    _assert_same_state(single, rank0, rank1)
    if shared == "all":  # runs with the same ranks are bit-identical
        proc, _ = _run("parity", tmp_path / "again", backend, l2=l2, shared=shared)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _load(tmp_path / "again", 0) == rank0


def _assert_same_state(single, rank0, rank1):
    """The optimizer state at the end of the fit: whole on every rank (each rank updates
    its slice of it), the same bits on both ranks, that of one process to 1e-5 of its
    scale."""
    s1, s0 = np.array(single["state"]), np.array(rank0["state"])
    np.testing.assert_allclose(s0, s1, rtol=0, atol=1e-5 * max(np.abs(s1).max(), 1e-30))
    assert rank1["state"] == rank0["state"]


@needs_mpi
@pytest.mark.parametrize(
    "optimizer, ranks, shared",
    [
        ("adam", 3, "all"),  # unequal segments of the parameters (55, 54, 54)
        ("adam", 3, "sharded"),  # MPI's Reduce_scatter and Allgatherv
        ("adam", 2, "default"),  # a small network: one Allreduce, the whole update
        ("nadam", 2, "all"),
        ("adam+twice", 2, "all"),  # a second fit: the shared buffers are reused
        ("adam+zerostate", 2, "all"),  # the state set between epochs is the one updated
        ("adam+zerostate", 2, "sharded"),
        ("nesterov", 2, "sharded"),
        ("sgd", 2, "all"),
        ("rmsprop", 2, "all"),
        ("adagrad", 2, "sharded"),
        ("clipnorm", 2, "all"),  # clipping: whole gradients, the whole update on every rank
        ("global_clipnorm", 2, "sharded"),
        ("clipvalue", 2, "all"),
        ("adam+frozenbn", 2, "all"),  # a frozen BatchNormalization: no batch statistics
        ("amsgrad", 3, "sharded"),  # three state slots, sliced by segment
        ("rmsprop_mc", 2, "all"),  # three slots and the weight decay entry
    ],
)
def test_each_rank_updates_its_segment_as_one_process_would(tmp_path, optimizer, ranks, shared):
    """Every optimizer, 2 and 3 ranks: each rank updates its segment of the parameters
    (and its slice of the optimizer state) and the ranks gather the parameters; the logs,
    weights and state are those of one process, and the same bits as when every rank runs
    the whole update.  With gradient clipping every rank clips the whole summed gradient."""
    one, two, rep = tmp_path / "one", tmp_path / "two", tmp_path / "rep"
    proc, _ = _run("single", one, "cython", ranks=0, optimizer=optimizer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for mode, out in (("parity", two), ("replicated", rep)):
        proc, _ = _run(mode, out, "cython", ranks=ranks, shared=shared, optimizer=optimizer)
        assert proc.returncode == 0, proc.stderr[-3000:]
    single, rank0, last = _load(one, 0), _load(two, 0), _load(two, ranks - 1)
    assert rank0["ranks"] == ranks
    for key, values in single["history"].items():
        np.testing.assert_allclose(rank0["history"][key], values, rtol=1e-5, err_msg=key)
    for w1, w0 in zip(single["weights"], rank0["weights"]):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-5 * np.abs(w1).max())
    assert last["weights"] == rank0["weights"]
    _assert_same_state(single, rank0, last)
    replicated = _load(rep, 0)
    assert (replicated["history"], replicated["weights"], replicated["state"]) == (
        rank0["history"], rank0["weights"], rank0["state"])  # fmt: skip


@needs_mpi
def test_per_batch_callbacks_see_the_whole_optimizer_state(tmp_path):
    """A per-batch callback on rank 0 alone (the other ranks still gather the state with it
    after every step): it reads the optimizer state of one process after every batch."""
    proc, _ = _run("single", tmp_path / "one", "cython", ranks=0, optimizer="adam+batchstate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _run("batchstate", tmp_path / "two", "cython", shared="all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _load(tmp_path / "one", 0)["state_after_batch"]
    got = _load(tmp_path / "two", 0)["state_after_batch"]
    assert len(want) == 15 and len(got) == 15  # 5 batches, 3 epochs
    np.testing.assert_allclose(got, want, rtol=1e-5)


@needs_mpi
@pytest.mark.parametrize(
    "mode, rank0_says",
    [
        ("raise", "rank 1 of the data-parallel fit raised ValueError"),
        ("abort", None),  # raised after the step, outside the collectives: MPI abort
        ("nonfinite", "NonFiniteLossError"),
        ("shapes", "got arrays of different shapes"),
        ("badx", "rank 1 of the data-parallel fit raised ValueError"),
        ("epochs", "needs the same epochs on every rank"),
    ],
)
def test_a_failing_rank_stops_every_rank(tmp_path, mode, rank0_says):
    proc, seconds = _run(mode, tmp_path / "out", "cython", timeout=60)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said[-3000:]
    assert seconds < 30, f"{mode}: the ranks took {seconds:.1f} s to stop"
    if mode in ("raise", "abort"):
        assert "rank 1 fails on purpose at epoch 2, batch 3" in said, said[-3000:]
    if rank0_says:
        assert rank0_says in said, said[-3000:]
    assert not (tmp_path / "out.0").exists() and not (tmp_path / "out.1").exists()


@needs_mpi
def test_sums_over_three_ranks_are_the_same_bits_everywhere(tmp_path):
    """DataParallel.sum_ on 3 ranks (unequal segments of 100003 floats): shared memory for
    the large buffer, Allreduce for the small; float32 sums, identical on every rank."""
    proc, _ = _run("sums", tmp_path / "s", "cython", ranks=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(3):
        found = _load(tmp_path / "s", rank)
        assert found["100003"]["shared"] and not found["3"]["shared"]
        for case in found.values():
            assert case["same_bits"] and case["err"] < 1e-5
            assert case["vs_allreduce"] < 1e-5


@needs_mpi
def test_only_rank_0_prints_and_writes_files(tmp_path):
    out = tmp_path / "out"
    proc, _ = _run("files", out, "cython")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Epoch 1/3") == 1, proc.stdout
    for kind in ("csv.{}", "ckpt.{}.fnn", "save.{}.fnn"):
        assert Path(f"{out}.{kind.format(0)}").exists(), kind
        assert not Path(f"{out}.{kind.format(1)}").exists(), kind
    assert (tmp_path / "out.1").exists()  # rank 1 trained to the end


@needs_mpi
def test_batch_normalization_is_refused_on_every_rank(tmp_path):
    proc, _ = _run("batchnorm", tmp_path / "out", "cython", timeout=60)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "does not synchronise batch statistics" in said, said[-3000:]


def _train_cli(ranks, tmp_path):
    cmd = [sys.executable, "-m", "fastnn.cli", "train", "--epochs", "2", "--batch-size", "64",
           "--save", str(tmp_path / f"m{ranks}.fnn")]  # fmt: skip
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd, "--distributed"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@needs_mpi
def test_cli_train_distributed_prints_the_single_process_results(tmp_path):
    one, two = _train_cli(0, tmp_path), _train_cli(2, tmp_path)
    assert "data-parallel on 2 MPI ranks" in two and two.count("Training on") == 1
    results = [[ln for ln in out.splitlines() if ln.startswith(("Epoch", "test "))]
               for out in (one, two)]  # fmt: skip
    assert len(results[0]) == 4 and results[0] == results[1]
    assert (tmp_path / "m2.fnn").exists()


@needs_mpi
def test_info_reports_mpi_and_ranks():
    cmd = [sys.executable, "-m", "fastnn.cli", "info"]
    proc = subprocess.run([MPIEXEC, "-n", "2", *cmd], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks' lines may interleave: count what each rank says
    assert proc.stdout.count("MPI: mpi4py") == 2, proc.stdout
    assert proc.stdout.count(", 2 ranks") == 2 and "MPICH" in proc.stdout, proc.stdout


def test_without_mpi4py_info_and_data_parallel_say_why():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from fastnn.cli import main; main(['info'])\n"
        "from fastnn.distributed import DataParallel\n"
        "try:\n    DataParallel()\nexcept ImportError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MPI: unavailable: mpi4py is not installed" in proc.stdout, proc.stdout
    said = proc.stdout.split("data-parallel training needs mpi4py")
    assert len(said) == 2 and 'pip install "fastnn-cpu[mpi]"' in said[1], proc.stdout


def test_set_distribution_checks_its_argument():
    from fastnn import distributed

    with pytest.raises(TypeError, match="DataParallel or None"):
        distributed.set_distribution("mirrored")
    distributed.set_distribution(None)
    assert distributed.get_distribution() is None
