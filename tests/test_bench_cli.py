"""``fastnn bench`` runs and prints its ratio table; the baselines are correct networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import bench
from fastnn.bench import baselines as B
from fastnn.cli import main

SIZES = [20, 16, 12, 5]


def _quick_args(tmp_path, *extra):
    baselines = ["numpy"] + (["torch"] if B.torch_available() else [])
    return [
        "bench",
        "--quick",
        "--networks",
        "d",
        "--threads",
        "1",
        "--backends",
        "numpy",
        "--baselines",
        *baselines,
        "--out",
        str(tmp_path),
        *extra,
    ]


def test_bench_quick_prints_table_and_writes_json(tmp_path, capsys):
    assert main(_quick_args(tmp_path, "--epoch")) == 0
    out = capsys.readouterr().out
    assert "Training step" in out and "One epoch" in out
    assert "d 64-64-10 b32" in out
    assert "numpy/NumPy" in out
    if B.torch_available():
        assert "numpy/torch" in out
        assert "PyTorch" in out and "Adam:" in out
    assert "OPENBLAS_CORETYPE" in out
    assert "threading layer" in out
    assert "CPU:" in out
    row = next(line for line in out.splitlines() if line.startswith("d 64-64-10 b32"))
    assert row.count("x") >= 1  # ratio cells such as 0.85x
    data = json.loads((tmp_path / "bench.json").read_text())
    kinds = {(r["kind"], r["impl"]) for r in data["results"]}
    assert ("step", "fastnn-numpy") in kinds and ("step", "numpy") in kinds
    assert ("epoch", "fastnn-numpy") in kinds
    for r in data["results"]:
        assert r["samples_per_s"] > 0
    assert data["environment"]["blas"], "threadpoolctl found no BLAS"


def test_bench_writes_chart(tmp_path):
    pytest.importorskip("matplotlib")
    assert main(_quick_args(tmp_path)) == 0
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_isolated_workers(tmp_path, capsys):
    args = ["bench", "--quick", "--networks", "d", "--threads", "1", "--isolate"]
    assert main([*args, "--backends", "numpy", "--baselines", "numpy", "--epoch"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("d 64-64-10 b32"))
    assert row.split()[-2].endswith("x")  # numpy/NumPy ratio


def test_bench_rejects_bad_settings(capsys):
    assert main(["bench", "--quick", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["bench", "--quick", "--epoch", "--epoch-samples", "0"]) == 2
    assert "--epoch-samples" in capsys.readouterr().err
    assert main(["bench", "--quick", "--backends", "nope"]) == 2


def test_bench_epoch_samples(tmp_path):
    args = ["bench", "--quick", "--networks", "d", "--threads", "1", "--backends", "numpy"]
    args += ["--baselines", "numpy", "--epoch", "--epoch-samples", "100", "--out", str(tmp_path)]
    assert main(args) == 0
    records = json.loads((tmp_path / "bench.json").read_text())["results"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs and all(r["samples"] == 100 for r in epochs)
    assert all(r["samples"] == 32 for r in records if r["kind"] == "step")


def test_format_table_ratios():
    rows = [
        {
            "network": "a",
            "threads": 1,
            "medians": {"fastnn-numba": 100.0, "numpy": 400.0, "torch": 200.0, "jax": 80.0},
            "spread": 0.1,
        }
    ]
    text = bench.format_table(rows, "µs per step", "title")
    header, row = text.splitlines()[2:4]
    assert header.split()[-4:] == ["numba/NumPy", "numba/torch", "numba/JAX", "spread"]
    assert row.split()[-4:] == ["0.25x", "0.50x", "1.25x", "10%"]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs a process allowed on two cores or more",
)
def test_isolated_jax_worker_is_pinned_to_its_thread_count():
    code = "import os; from fastnn.bench import _pin_cores; _pin_cores(1); " + (
        "print(len(os.sched_getaffinity(0)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_cold_start_script_runs():
    env = dict(os.environ)
    res = bench._cold_run("d", "numpy", env, timeout=120)
    assert set(res) == {
        "import_s", "build_s", "first_fit_s", "process_s", "setup_s", "first_step_s",
        "later_step_s", "second_first_step_s", "second_later_step_s",
    }  # fmt: skip
    assert res["process_s"] >= res["import_s"] > 0
    assert res["first_fit_s"] >= res["setup_s"] + res["first_step_s"] > 0
    assert res["first_fit_s"] >= res["later_step_s"] > 0
    assert res["second_first_step_s"] > 0 and res["second_later_step_s"] > 0
    text = bench.format_cold([{**res, "case": "numpy", "network": "d"}])
    row = text.splitlines()[2].split()
    assert row[:2] == ["d", "numpy"]
    second = res["second_first_step_s"] / res["second_later_step_s"]
    assert row[-1] == f"{second:.2f}x"


# ---------------------------------------------------------------------------------------
# The baselines train the same network as fastnn


def _pair(dtype):
    x, y = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=1, dtype=dtype)
    weights = B.glorot_weights(SIZES, 0, dtype)
    ref = B.NumpyMLP(SIZES, dtype=dtype)
    ref.set_weights(weights)
    model = B.fastnn_model(SIZES, "numpy", weights=weights, dtype=np.dtype(dtype).name)
    return x, y, ref, model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_baseline_matches_fastnn_step(dtype):
    x, y, ref, model = _pair(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    loss_ref, grads = ref.loss_and_grads(x, y)
    loss = model.train_on_batch(x, y)
    assert loss == pytest.approx(loss_ref, rel=tol)
    flat = np.concatenate([g.ravel() for g in grads])
    scale = np.abs(flat).max()
    np.testing.assert_allclose(model._engine.host_grads, flat, rtol=0, atol=tol * scale)
    ref.adam(grads)
    for w_ref, w in zip(ref.get_weights(), model.get_weights()):
        assert w.dtype == w_ref.dtype == dtype
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=tol)
    for seed in range(3):  # a few more steps on other batches
        xb, yb = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=10 + seed, dtype=dtype)
        ref.train_step(xb, yb)
        model.train_on_batch(xb, yb)
    for w_ref, w in zip(ref.get_weights(), model.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=10 * tol)


def test_numpy_baseline_epoch_learns():
    x, y = B.synthetic_data(256, SIZES[0], SIZES[-1], seed=3)
    ref = B.NumpyMLP(SIZES, lr=0.01)
    rng = np.random.default_rng(0)
    first = ref.train_epoch(x, y, 32, rng)
    for _ in range(20):
        last = ref.train_epoch(x, y, 32, rng)
    assert last < first


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_low_level_loop_matches_numpy_baseline(backend):
    """The hand-written loop on fastnn's layers, loss and optimizer trains the same network
    as the NumPy MLP, on every backend."""
    from fastnn import backend as _backend

    why = _backend.why_unavailable(backend)
    if why is not None:
        pytest.skip(f"backend {backend} unavailable: {why}")
    ref = B.NumpyMLP(SIZES)
    net = B.FastnnLayersMLP(SIZES, backend, weights=ref.get_weights())
    assert net.name == f"fastnn-{backend}-layers"
    for seed in range(3):
        xb, yb = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=seed)
        assert net.train_step(xb, yb) == pytest.approx(ref.train_step(xb, yb), rel=1e-5)
    for w_ref, w in zip(ref.get_weights(), net.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5)
    rng = np.random.default_rng(0)
    x, y = B.synthetic_data(96, SIZES[0], SIZES[-1], seed=5)
    first = net.train_epoch(x, y, 32, rng)
    assert net.train_epoch(x, y, 32, rng) < first


def test_jax_baseline_matches_numpy_baseline():
    """The JAX step (one jit: gradients and Adam) trains the same network as the others."""
    pytest.importorskip("jax")
    ref = B.NumpyMLP(SIZES)
    net = B.JaxMLP(SIZES, weights=ref.get_weights())
    for seed in range(3):
        xb, yb = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=seed)
        assert net.train_step(xb, yb) == pytest.approx(ref.train_step(xb, yb), rel=1e-5)
    for w_ref, w in zip(ref.get_weights(), net.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5)


def test_torch_baseline_matches_numpy_baseline():
    pytest.importorskip("torch")
    x, y = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=1)
    ref = B.NumpyMLP(SIZES)
    net = B.TorchMLP(SIZES, weights=ref.get_weights())
    assert net.adam_impl in ("fused", "foreach")
    for seed in range(3):
        xb, yb = B.synthetic_data(32, SIZES[0], SIZES[-1], seed=seed)
        assert net.train_step(xb, yb) == pytest.approx(ref.train_step(xb, yb), rel=1e-5)
    for w_ref, w in zip(ref.get_weights(), net.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("other", ["fastnn", "torch", "jax"])
def test_batchnorm_baselines_train_the_same_network(other):
    """The (bn) network: the NumPy baseline's batch normalisation (forward, backward and
    moving statistics) == fastnn's, torch's and JAX's, in float64 where they allow it.  The
    bias before the normalisation has a zero gradient up to roundoff (Adam steps on noise):
    it is compared within that bound."""
    sizes = [12, 7, 4]
    weights = B.glorot_weights(sizes, 0, np.float64, batchnorm=True)
    ref = B.NumpyMLP(sizes, dtype=np.float64, batchnorm=True)
    ref.set_weights(weights)
    if other == "fastnn":
        net = B.FastnnMLP(sizes, "numpy", weights=weights, batchnorm=True)
        net.model = B.fastnn_model(sizes, "numpy", weights=weights, dtype="float64",
                                   batchnorm=True)  # fmt: skip
        tol = 1e-10
    elif other == "torch":
        pytest.importorskip("torch")
        net = B.TorchMLP(sizes, weights=[w.astype(np.float32) for w in weights],
                         batchnorm=True)  # fmt: skip
        tol = 2e-5
    else:
        pytest.importorskip("jax")
        net = B.JaxMLP(sizes, weights=[w.astype(np.float32) for w in weights], batchnorm=True)
        tol = 2e-5
    for seed in range(3):
        xb, yb = B.synthetic_data(16, sizes[0], sizes[-1], seed=seed)
        want = ref.train_step(xb.astype(np.float64), yb)
        assert net.train_step(xb, yb) == pytest.approx(want, rel=tol)
    for i, (w_ref, w) in enumerate(zip(ref.get_weights(), net.get_weights())):
        atol = 3 * 2e-3 if i == 1 else tol  # the bias before the normalisation
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=atol, err_msg=f"weight {i}")
    if other == "fastnn":
        mm, mv = net.model.layers[1].get_weights()[2:]
        np.testing.assert_allclose(mm, ref.moving[0][0], rtol=0, atol=tol)
        np.testing.assert_allclose(mv, ref.moving[0][1], rtol=0, atol=tol)


@pytest.mark.parametrize("net", ["lenet", "convnet"])
def test_cnn_baselines_train_the_same_network(net):
    """The CNN benchmark networks: PyTorch's NCHW model, given fastnn's weights in its own
    layout, takes the same three Adam steps as fastnn (float32) and the NumPy baseline."""
    from fastnn.bench import cnn

    pytest.importorskip("torch")
    impls = cnn.make_cnn_impls(net, ["numpy"], {"numpy": None, "torch": None})
    batch = cnn.CNNS[net][1]
    for seed in range(3):
        x, y = B.synthetic_data(batch, 784, 10, seed=seed)
        losses = {name: impl.train_step(*bench._batch_for(impl, x, y))
                  for name, impl in impls.items()}  # fmt: skip
        assert losses["torch"] == pytest.approx(losses["numpy"], rel=1e-4), losses
        assert losses["fastnn-numpy"] == losses["numpy"]
    probe = cnn.TorchCNN(net, impls["numpy"].get_weights())  # fastnn's trained weights in
    for a, b in zip(probe.model.parameters(), impls["torch"].model.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-4)


def test_bench_runs_the_cnns(tmp_path, capsys):
    args = ["bench", "--quick", "--networks", "lenet", "convnet", "--threads", "1",
            "--backends", "numpy", "--baselines", "numpy", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lenet 28x28x1 c6k5-p2-c16k5-p2-120-84-10 b32" in out
    assert "convnet 28x28x1 c32k3-p2-c64k3-p2-10 b128" in out


@pytest.mark.parametrize("net", ["lstm_rows", "gru_rows", "lstm_imdb"])
def test_rnn_baselines_train_the_same_network_as_fastnn(net):
    """Two steps from the same weights: the losses (the second after one Adam update)
    agree between fastnn, the NumPy baseline and PyTorch."""
    from fastnn.bench import rnn

    x, y = rnn.rnn_data(net, 8, seed=1)
    impls = rnn.make_rnn_impls(net, ["numpy"], ["numpy", "torch"] if B.torch_available()
                               else ["numpy"])  # fmt: skip
    losses = {name: [impl.train_step(x, y) for _ in range(2)] for name, impl in impls.items()}
    want = losses["fastnn-numpy"]
    for name, got in losses.items():
        np.testing.assert_allclose(got, want, rtol=2e-4, err_msg=name)


def test_bench_runs_the_recurrent_networks(tmp_path, capsys):
    args = _quick_args(tmp_path)
    args[args.index("d")] = "gru_rows"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "gru_rows 28x28-gru64-10 b64" in out
