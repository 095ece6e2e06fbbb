"""Sequence kernels (Embedding, SimpleRNN, LSTM, GRU): the reference backward == finite
differences through time, and every backend that runs them == the reference."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import backend
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from tests.kernel_cases import assert_close

RNN_KINDS = {"simple_rnn": C.SIMPLE_RNN, "lstm": C.LSTM, "gru": C.GRU}
#: (N, T, F, U); (37, 3, 5, 100) takes the steps' GEMMs in blocks of the batch (N * G * U >
#: 1e6 for LSTM and GRU: 2 blocks of 19 and 18 rows), (1, 2, 2, 520) not though large (N =
#: 1); (7, 33, 30, 40) the LSTM's GEMMs over all steps in blocks of 116 and 99 rows;
#: (20, 9, 3, 64) dR over the 160 rows of steps 2..9 in blocks of fewer than 96 rows (80
#: for GRU, 40 for LSTM), (37, 3, 5, 100) dR in one GEMM (blocks would hold 19 rows)
RNN_SHAPES = [(1, 1, 1, 1), (3, 5, 4, 5), (4, 1, 3, 9), (5, 7, 6, 19), (37, 3, 5, 100),
              (1, 2, 2, 520), (7, 33, 30, 40), (20, 9, 3, 64)]  # fmt: skip
#: compiled backends that run the sequence kinds (those whose KINDS, if any, include them)
SEQ_BACKENDS = [
    name
    for name in backend.MODULES
    if name not in ("numpy", "cuda")
    and backend.why_unavailable(name) is None
    and C.LSTM in getattr(backend.load(name), "KINDS", {C.LSTM})
]


def _case(kind, n, t, f, u, ret, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = ref.RNN_GATES[kind] * u
    x = rng.normal(size=(n, t, f)).astype(dtype)
    w = (rng.normal(size=(f, g)) * 0.5).astype(dtype)
    r = (rng.normal(size=(u, g)) * 0.5).astype(dtype)
    b = (rng.normal(size=(2 if kind == C.GRU else 1, g)) * 0.5).astype(dtype)
    dout = rng.normal(size=(n, t if ret else 1, u)).astype(dtype)
    return x, w, r, b, dout


def _run(mod, kind, x, w, r, b, dout, ret, act=C.TANH, rec_act=C.SIGMOID):
    n, t, f = x.shape
    u = r.shape[0]
    ws = np.zeros(ref.rnn_workspace_size(kind, n, t, f, u), x.dtype)
    out = np.zeros((n, t if ret else 1, u), x.dtype)
    mod.rnn_forward(kind, x, w, r, b, out, ws, act, rec_act, ret)
    grads = [np.zeros_like(a) for a in (x, w, r, b)]
    mod.rnn_backward(kind, x, w, r, dout, *grads, ws, act, rec_act, ret, 1)
    return out, grads


@pytest.mark.parametrize("ret", [0, 1])
@pytest.mark.parametrize("name", list(RNN_KINDS))
def test_reference_backward_matches_finite_differences_through_time(name, ret):
    kind = RNN_KINDS[name]
    x, w, r, b, dout = _case(kind, 2, 4, 3, 3, ret, np.float64)
    _, grads = _run(ref, kind, x, w, r, b, dout, ret)

    def loss():
        return float((_run(ref, kind, x, w, r, b, dout, ret)[0] * dout).sum())

    for arr, grad in zip((x, w, r, b), grads):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            plus = loss()
            arr[i] = old - 1e-6
            num[i] = (plus - loss()) / 2e-6
            arr[i] = old
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("act, rec_act", [(C.RELU, C.TANH), (C.SIGMOID, C.LINEAR)])
def test_reference_other_activations_match_finite_differences(act, rec_act):
    x, w, r, b, dout = _case(C.LSTM, 2, 3, 2, 2, 1, np.float64, seed=3)
    _, grads = _run(ref, C.LSTM, x, w, r, b, dout, 1, act, rec_act)
    num = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        old = w[i]
        w[i] = old + 1e-6
        plus = (_run(ref, C.LSTM, x, w, r, b, dout, 1, act, rec_act)[0] * dout).sum()
        w[i] = old - 1e-6
        minus = (_run(ref, C.LSTM, x, w, r, b, dout, 1, act, rec_act)[0] * dout).sum()
        w[i] = old
        num[i] = (plus - minus) / 2e-6
    np.testing.assert_allclose(grads[1], num, rtol=1e-6, atol=1e-8)


def test_embedding_reference_gathers_and_scatters():
    ids = np.array([[0, 2, 2], [1, 0, 2]])
    w = np.arange(12.0).reshape(3, 4)
    out = np.zeros((6, 4))
    ref.embedding_forward(ids, w, out)
    np.testing.assert_array_equal(out, w[ids.reshape(-1)])
    dout = np.arange(24.0).reshape(6, 4)
    dw = np.full_like(w, 7.0)
    ref.embedding_backward(ids, dout, dw)
    np.testing.assert_array_equal(dw[1], dout[3])
    np.testing.assert_array_equal(dw[2], dout[1] + dout[2] + dout[5])


@pytest.mark.parametrize("backend_name", SEQ_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", RNN_SHAPES)
@pytest.mark.parametrize("name", list(RNN_KINDS))
def test_kernels_match_the_reference(name, shape, dtype, backend_name):
    mod = backend.load(backend_name)
    kind = RNN_KINDS[name]
    n, t, f, u = shape
    for ret in (0, 1):
        case = _case(kind, n, t, f, u, ret, dtype, seed=sum(shape))
        kept = [a.copy() for a in case]
        want_out, want = _run(ref, kind, *case, ret)
        got_out, got = _run(mod, kind, *case, ret)
        for a, k in zip(case, kept):
            np.testing.assert_array_equal(a, k)  # inputs unmodified
        k = t * max(f, u, n)
        assert_close(got_out, want_out, dtype, k=k, what=f"{name} out")
        for label, g, e in zip(("dx", "dw", "dr", "db"), got, want):
            assert_close(g, e, dtype, k=k, scale=1.0 + float(np.abs(e).max()), what=label)


@pytest.mark.parametrize("backend_name", SEQ_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_kernels_match_the_reference(dtype, backend_name):
    mod = backend.load(backend_name)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, size=(3, 5)).astype(np.int32 if dtype == np.float32 else np.int64)
    w = rng.normal(size=(7, 3)).astype(dtype)
    out, want = np.zeros((15, 3), dtype), np.zeros((15, 3), dtype)
    mod.embedding_forward(ids, w, out)
    ref.embedding_forward(ids, w, want)
    np.testing.assert_array_equal(out, want)
    dout = rng.normal(size=(15, 3)).astype(dtype)
    dw, dw_ref = np.ones_like(w), np.zeros_like(w)
    mod.embedding_backward(ids, dout, dw)
    ref.embedding_backward(ids, dout, dw_ref)
    assert_close(dw, dw_ref, dtype, k=15)


def test_sequence_backends_export_the_sequence_ops():
    for name in SEQ_BACKENDS:
        mod = backend.load(name)
        assert [op for op in ref.SEQUENCE_OPS if not callable(getattr(mod, op, None))] == []
