"""Reproducibility: same seed, backend and thread count give bit-identical weights; inputs
of any numeric dtype or memory layout are converted once per fit and never make the
compiled kernels compile another signature."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import optimizers
from fastnn.layers import Dense, Dropout

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]


def _data(n=90, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    return x, y


def _train(backend, seed, x, y, epochs=3):
    model = fastnn.Sequential(
        [
            Dense(16, activation="relu", input_dim=x.shape[1]),
            Dropout(0.3),
            Dense(8, activation="tanh"),
            Dropout(0.2),
            Dense(3, activation="softmax"),
        ],
        seed=seed,
        backend=backend,
    )
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    hist = model.fit(x, y, epochs=epochs, batch_size=16, shuffle=True, verbose=0)
    return model.get_weights(), hist.history


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_seed_gives_bit_identical_weights(backend):
    x, y = _data()
    w1, h1 = _train(backend, 7, x, y)
    w2, h2 = _train(backend, 7, x, y)
    for a, b in zip(w1, w2):
        assert a.tobytes() == b.tobytes()  # bit-identical, not merely close
    assert h1 == h2
    # the seed matters: shuffle order, initial weights and dropout masks change
    w3, _ = _train(backend, 8, x, y)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(w1, w3))


_HASH_SCRIPT = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from test_determinism import CPU_BACKENDS, _data, _train

x, y = _data()
for backend in CPU_BACKENDS:
    weights, _ = _train(backend, 7, x, y)
    print(backend, hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest())
"""


def test_same_seed_same_weights_in_a_fresh_process():
    """No hidden state (global RNG, caches, first-call effects) changes the result."""
    import hashlib

    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", _HASH_SCRIPT, here], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = dict(line.split() for line in proc.stdout.strip().splitlines())
    x, y = _data()
    for backend in CPU_BACKENDS:
        weights, _ = _train(backend, 7, x, y)
        mine = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
        assert theirs[backend] == mine, backend


def test_backends_agree_closely():
    """Different backends are not bit-identical (reduction order), but close."""
    if len(CPU_BACKENDS) < 2:
        pytest.skip("only one CPU backend available")
    x, y = _data()
    ref, _ = _train("numpy", 3, x, y, epochs=1)
    for backend in CPU_BACKENDS:
        got, _ = _train(backend, 3, x, y, epochs=1)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _odd_inputs(x):
    """The same data as float16, int, float64, Fortran order and a strided view."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), np.float64)
    wide[:, ::2] = x
    return {
        "float16": x.astype(np.float16),
        "int64": np.round(x * 4).astype(np.int64),
        "int8": np.round(x * 4).astype(np.int8),
        "float64": x.astype(np.float64),
        "fortran": np.asfortranarray(x),
        "strided": wide[:, ::2],
        "reversed": x[::-1],
        "list": x.tolist(),
    }


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", list(_odd_inputs(np.zeros((2, 2)))))
def test_inputs_are_converted_once_per_fit(kind, backend, monkeypatch):
    x, y = _data(n=40)
    xin = _odd_inputs(x)[kind]
    model = fastnn.Sequential(
        [Dense(4, activation="relu", input_dim=x.shape[1]), Dense(3, activation="softmax")],
        seed=0,
        backend=backend,
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    y_strided = np.repeat(y.astype(np.float64), 2)[::2]
    # the first fit with a batch size also warms its new workspace with one scratch step
    model.fit(xin, y_strided, epochs=1, batch_size=8, verbose=0)
    seen = []
    original = model._kernels.run_epoch

    def spy(data, *rest):
        X, Y = data[:2]
        seen.append((id(X), X.dtype, X.flags.c_contiguous, id(Y), Y.flags.c_contiguous))
        return original(data, *rest)

    monkeypatch.setattr(model._kernels, "run_epoch", spy)
    model.fit(xin, y_strided, epochs=3, batch_size=8, verbose=0)
    assert len(seen) == 3  # one compiled call per epoch
    assert len({s[0] for s in seen}) == 1 and len({s[3] for s in seen}) == 1  # converted once
    assert all(s[1] == np.float32 and s[2] and s[4] for s in seen)


_SIGNATURE_SCRIPT = r"""
import json, sys
import numpy as np
import fastnn
from fastnn.layers import Dense, Dropout
from numba.core import types
from numba.core.registry import CPUDispatcher

sys.path.insert(0, sys.argv[1])
from test_determinism import _data, _odd_inputs

x, y = _data(n=40)
for dtype in ("float32", "float64"):
    for loss, last, target in (
        ("sparse_categorical_crossentropy", "softmax", y),
        ("categorical_crossentropy", "softmax", np.eye(3)[y].astype(np.float16)),
        ("mse", "linear", np.eye(3)[y].astype(np.int32)),
    ):
        for name, xin in _odd_inputs(x).items():
            m = fastnn.Sequential(
                [Dense(5, activation="relu", input_dim=x.shape[1]), Dropout(0.25),
                 Dense(3, activation=last)],
                seed=1, backend="numba", dtype=dtype,
            )
            m.compile("adam", loss, metrics=["mae"])
            m.fit(xin, target, epochs=2, batch_size=16, verbose=0,
                  validation_data=(np.asfortranarray(x), target))
            m.evaluate(xin, target, batch_size=7)
            m.predict(xin, batch_size=9)
            m.train_on_batch(xin, target)

# the low-level API with the same odd inputs
from fastnn import losses, optimizers
from fastnn.layers import Activation
from fastnn.regularizers import L1L2
for dtype in ("float32", "float64"):
    dense = Dense(4, activation="tanh", kernel_regularizer=L1L2(l1=1, l2=0)).build(
        x.shape[1], dtype, backend="numba")
    act = Activation("relu").build(4, dtype, backend="numba")
    drop = Dropout(0.5, seed=3).build(4, dtype, backend="numba")
    opt = optimizers.Adam()
    for xin in _odd_inputs(x).values():
        out = drop.forward(act.forward(dense.forward(xin, training=True)), training=True)
        dx = dense.backward(act.backward(drop.backward(np.asfortranarray(out))))
        opt.step(dense.weights, [np.asfortranarray(g) for g in dense.grads])
        for loss in (losses.MeanSquaredError(), losses.CategoricalCrossentropy(from_logits=True)):
            loss(np.eye(4)[y % 4].astype(np.int8), np.asfortranarray(out).astype(dtype),
                 backend="numba")
        losses.SparseCategoricalCrossentropy()(y % 4, out[::-1], backend="numba")

import fastnn.kernels.numba_cpu as k
report = {}
for attr in dir(k):
    fn = getattr(k, attr)
    if not isinstance(fn, CPUDispatcher):
        continue
    by_dtype = {}

    def arrays(ts):  # the array types of a signature, inside the grouped tuples too
        for t in ts:
            if isinstance(t, types.BaseTuple):
                yield from arrays(t.types)
            elif isinstance(t, types.Array):
                yield t

    for sig in fn.signatures:
        key = sorted({str(t.dtype) for t in arrays(sig)
                      if t.dtype in (types.float32, types.float64)})
        by_dtype.setdefault(",".join(key), []).append(str(sig))
    report[attr] = by_dtype
print(json.dumps(report))
"""


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba backend unavailable")
def test_odd_inputs_never_recompile_numba_kernels():
    """After fits with odd dtypes/layouts (fresh process, so other tests cannot add
    signatures), every numba dispatcher has at most one signature per float dtype."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNATURE_SCRIPT, here],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report, "no numba dispatchers found"
    assert report.get("run_epoch"), "run_epoch never compiled"
    bad = {
        name: sigs
        for name, by_dtype in report.items()
        for key, sigs in by_dtype.items()
        if len(sigs) > 1
    }
    assert not bad, f"kernels compiled more than one signature per dtype: {bad}"
