"""Every example runs in smoke mode and prints the numbers it promises."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from fastnn import backend, datasets

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
RUNS = {
    "linear_regression": [],
    "binary_classifier": [],
    "mnist_mlp": [],
    "gradcheck_walkthrough": [],
    "two_layer_loop": [],
    "mnist_mlp_idx": ["--mnist", "{mnist}"],
    # the compiled default backend: the NumPy reference's im2col takes minutes for 30 epochs
    "mnist_convnet": ["--backend", "{compiled}"],
    "mnist_convnet_idx": ["--mnist", "{mnist}"],
    "sequence_lstm": [],
}
COMPILED = next((b for b in ("cython", "numba") if b in backend.available()), "numpy")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts every example at once (each in its own folder), returns name -> result."""
    root = tmp_path_factory.mktemp("examples")
    mnist = root / "mnist"
    mnist.mkdir()
    rng = np.random.default_rng(0)
    for key, stem in datasets.MNIST_FILES.items():
        n = 40 if "train" in key else 10
        shape, high = ((n, 28, 28), 256) if key.startswith("x") else ((n,), 10)
        datasets.save_idx(mnist / stem, rng.integers(0, high, shape, dtype=np.uint8))
    env = dict(os.environ, FASTNN_BACKEND="numpy", FASTNN_SMOKE="1", MPLBACKEND="Agg")
    procs = {}
    for name, extra in RUNS.items():
        script = EXAMPLES / (name.replace("_idx", "") + ".py")
        cwd = root / name
        cwd.mkdir()
        args = [a.format(mnist=mnist, compiled=COMPILED) for a in extra]
        procs[name] = (
            subprocess.Popen(
                [sys.executable, str(script), "--smoke", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            cwd,
        )
    results = {}
    for name, (proc, cwd) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out, err, cwd)
    return results


def _number(out, label):
    match = re.search(rf"^{re.escape(label)}:?\s*([0-9.eE+-]+)", out, re.MULTILINE)
    assert match, f"{label!r} not printed:\n{out}"
    return float(match.group(1))


def _ok(runs, name):
    code, out, err, cwd = runs[name]
    assert code == 0, err
    return out, cwd


def test_linear_regression_reaches_the_true_line(runs):
    out, cwd = _ok(runs, "linear_regression")
    assert _number(out, "MSE vs true line") <= 0.01
    pytest.importorskip("matplotlib")
    assert (cwd / "linear_regression.png").read_bytes()[:4] == b"\x89PNG"


def test_binary_classifier(runs):
    out, _ = _ok(runs, "binary_classifier")
    assert _number(out, "test accuracy") >= 0.85


def test_digits_mlp_reaches_097(runs):
    out, _ = _ok(runs, "mnist_mlp")
    assert _number(out, "test accuracy") >= 0.97


def test_mlp_on_idx_files(runs):
    out, _ = _ok(runs, "mnist_mlp_idx")
    assert "MNIST: 40 train / 10 test" in out
    assert 0 <= _number(out, "test accuracy") <= 1


def test_gradcheck_walkthrough(runs):
    out, _ = _ok(runs, "gradcheck_walkthrough")
    assert "Dense layer gradcheck: passed" in out
    assert "model gradcheck: passed" in out


def test_two_layers_stepped_separately_match_one_call(runs):
    out, _ = _ok(runs, "two_layer_loop")
    assert _number(out, "max weight difference vs one step call") == 0.0
    assert float(out.split("train MSE ")[1].split()[0]) <= 0.05


def test_digits_convnet_reaches_098(runs):
    out, _ = _ok(runs, "mnist_convnet")
    assert "images of shape (8, 8, 1)" in out
    assert _number(out, "test accuracy") >= 0.98


def test_convnet_on_idx_files(runs):
    out, _ = _ok(runs, "mnist_convnet_idx")
    assert "MNIST: 40 train / 10 test images of shape (28, 28, 1)" in out
    assert 0 <= _number(out, "test accuracy") <= 1


def test_sequence_lstm_reads_digits_rows_and_classifies_tokens(runs):
    out, _ = _ok(runs, "sequence_lstm")
    assert _number(out, "digits test accuracy") >= 0.95
    assert _number(out, "tokens test accuracy") >= 0.9
