"""Numba CPU kernels of the sequence kinds (Embedding, SimpleRNN, LSTM, GRU): the contract
of ``reference_rnn`` (see it for shapes and the workspace layout), re-exported by
``numba_cpu``.

The recurrent kernels run time-major in their workspace: the input projection of every
timestep is one BLAS GEMM, each step one recurrent GEMM into ``tmp`` followed by one fused
pass over (N, U) that adds it, applies the gate activations and writes the states (the
gates are saved in place of the projection); the backward runs one fused gate pass and
one GEMM for dh per step, then dW, dR and dx as one GEMM each.  Nothing is allocated.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from . import codes as C
from .numba_cpu import _exp, _gemm, _jit, _mat, _tanh

_LINEAR, _RELU, _SIGMOID, _TANH = C.LINEAR, C.RELU, C.SIGMOID, C.TANH
_SIMPLE_RNN, _LSTM, _GRU = C.SIMPLE_RNN, C.LSTM, C.GRU


def _ids_view(x):
    """Token ids stored bit for bit in a float array (reference.ids_view)."""


@overload(_ids_view, inline="always")
def _ids_view_overload(x):
    if isinstance(x, types.Array) and x.dtype == types.float32:
        return lambda x: x.view(np.int32)
    return lambda x: x.view(np.int64)


@_jit
def _act1(v, code, one):
    """act(v) for the recurrent activations (``one`` of v's type keeps float32 float32)."""
    if code == _TANH:
        return _tanh(v)
    if code == _SIGMOID:
        e = _exp(-np.abs(v))
        return one / (one + e) if v >= 0 else e / (one + e)
    if code == _RELU:
        return v if v > 0 else v * 0
    return v


@_jit
def _dact(y, code, one):
    """d act / dz from the output y."""
    if code == _TANH:
        return one - y * y
    if code == _SIGMOID:
        return y * (one - y)
    if code == _RELU:
        return one if y > 0 else one * 0
    return one


@_jit
def _zero(buf, off, size):
    for k in range(off, off + size):
        buf[k] = 0


@_jit
def embedding_forward(ids, w, out):
    """See reference.embedding_forward."""
    n, t = ids.shape
    e = w.shape[1]
    for i in range(n):
        for s in range(t):
            k, row = ids[i, s], i * t + s
            for j in range(e):
                out[row, j] = w[k, j]


@_jit
def embedding_backward(ids, dout, dw):
    """See reference.embedding_backward."""
    n, t = ids.shape
    e = dw.shape[1]
    _zero(dw.reshape(-1), 0, dw.size)
    for i in range(n):
        for s in range(t):
            k, row = ids[i, s], i * t + s
            for j in range(e):
                dw[k, j] += dout[row, j]


@_jit
def rnn_layout(kind, n, t, f, u):
    """See reference.rnn_layout."""
    g = u if kind == _SIMPLE_RNN else (4 * u if kind == _LSTM else 3 * u)
    lstm, gru = np.int64(kind == _LSTM), np.int64(kind == _GRU)
    o1 = t * n * f
    o2 = o1 + t * n * g
    o3 = o2 + (t + 1) * n * u
    o4 = o3 + (t + 1) * n * u * lstm
    o5 = o4 + t * n * g * gru
    o6 = o5 + n * g
    o7 = o6 + n * u
    return (0, o1, o2, o3, o4, o5, o6, o7, o7 + n * u * lstm)


@_jit
def _project(x, w, b, xt, gates):
    """xt = x time-major; gates = xt @ w + b[0] (every timestep in one GEMM)."""
    n, t, f = x.shape
    for s in range(t):
        for i in range(n):
            for j in range(f):
                xt[s * n + i, j] = x[i, s, j]
    _gemm(xt, w, gates, 0, 0)
    for k in range(gates.shape[0]):
        for j in range(gates.shape[1]):
            gates[k, j] += b[0, j]


@_jit
def rnn_forward(kind, x, w, r, b, out, ws, act, rec_act, return_seq):
    """See reference.rnn_forward."""
    n, t, f = x.shape
    u, g = r.shape
    o = rnn_layout(kind, n, t, f, u)
    xt, gates = _mat(ws, o[0], t * n, f), _mat(ws, o[1], t * n, g)
    hs, tmp = _mat(ws, o[2], (t + 1) * n, u), _mat(ws, o[5], n, g)
    _project(x, w, b, xt, gates)
    one = ws.dtype.type(1)
    _zero(ws, o[2], n * u)  # h_0
    _zero(ws, o[3], n * u * (kind == _LSTM))  # c_0
    for s in range(t):
        if s > 0:
            _gemm(_mat(ws, o[2] + s * n * u, n, u), r, tmp, 0, 0)
        else:
            _zero(ws, o[5], n * g)
        if kind == _SIMPLE_RNN:
            _simple_step(gates, hs, tmp, s, n, u, act, one)
        elif kind == _LSTM:
            _lstm_step(gates, hs, _mat(ws, o[3], (t + 1) * n, u), tmp, s, n, u, act, rec_act,
                       one)  # fmt: skip
        else:
            _gru_step(gates, hs, _mat(ws, o[4], t * n, g), tmp, b, s, n, u, act, rec_act, one)
    _write_out(hs, out, n, t, u, return_seq)


@_jit
def _write_out(hs, out, n, t, u, return_seq):
    for i in range(n):
        for s in range(t if return_seq else 1):
            src = (s + 1) * n + i if return_seq else t * n + i
            for j in range(u):
                out[i, s, j] = hs[src, j]


@_jit
def _simple_step(gates, hs, tmp, s, n, u, act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            h = _act1(gates[row, j] + tmp[i, j], act, one)
            gates[row, j] = h
            hs[row + n, j] = h


@_jit
def _lstm_step(gates, hs, cs, tmp, s, n, u, act, rec_act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            gi = _act1(gates[row, j] + tmp[i, j], rec_act, one)
            gf = _act1(gates[row, u + j] + tmp[i, u + j], rec_act, one)
            gg = _act1(gates[row, 2 * u + j] + tmp[i, 2 * u + j], act, one)
            go = _act1(gates[row, 3 * u + j] + tmp[i, 3 * u + j], rec_act, one)
            c = gf * cs[row, j] + gi * gg
            gates[row, j], gates[row, u + j] = gi, gf
            gates[row, 2 * u + j], gates[row, 3 * u + j] = gg, go
            cs[row + n, j] = c
            hs[row + n, j] = go * _act1(c, act, one)


@_jit
def _gru_step(gates, hs, rec, tmp, b, s, n, u, act, rec_act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            hz = tmp[i, j] + b[1, j]
            hr = tmp[i, u + j] + b[1, u + j]
            hh = tmp[i, 2 * u + j] + b[1, 2 * u + j]
            z = _act1(gates[row, j] + hz, rec_act, one)
            rr = _act1(gates[row, u + j] + hr, rec_act, one)
            cand = _act1(gates[row, 2 * u + j] + rr * hh, act, one)
            rec[row, j], rec[row, u + j], rec[row, 2 * u + j] = hz, hr, hh
            gates[row, j], gates[row, u + j], gates[row, 2 * u + j] = z, rr, cand
            hs[row + n, j] = z * hs[row, j] + (one - z) * cand


@_jit
def rnn_backward(kind, x, w, r, dout, dx, dw, dr, db, ws, act, rec_act, return_seq, need_dx):
    """See reference.rnn_backward."""
    n, t, f = x.shape
    u, g = r.shape
    o = rnn_layout(kind, n, t, f, u)
    xt, gates = _mat(ws, o[0], t * n, f), _mat(ws, o[1], t * n, g)
    hs, dh = _mat(ws, o[2], (t + 1) * n, u), _mat(ws, o[6], n, u)
    drec = _mat(ws, o[4], t * n, g) if kind == _GRU else gates
    one = ws.dtype.type(1)
    _zero(ws, o[6], n * u + n * u * (kind == _LSTM))  # dh, dc
    for s in range(t - 1, -1, -1):
        if return_seq or s == t - 1:
            _add_dout(dh, dout, 0 if s == t - 1 and not return_seq else s)
        if kind == _SIMPLE_RNN:
            _simple_step_back(gates, dh, s, n, u, act, one)
        elif kind == _LSTM:
            _lstm_step_back(gates, _mat(ws, o[3], (t + 1) * n, u), dh, _mat(ws, o[7], n, u),
                            s, n, u, act, rec_act, one)  # fmt: skip
        else:
            _gru_step_back(gates, drec, hs, dh, s, n, u, act, rec_act, one)
        if s > 0:
            block = _mat(ws, o[1] + s * n * g, n, g)
            if kind == _GRU:
                tmp = _mat(ws, o[5], n, u)
                _gemm(_mat(ws, o[4] + s * n * g, n, g), r, tmp, 0, 1)
                _add(dh, tmp)
            else:
                _gemm(block, r, dh, 0, 1)
    _weight_grads(xt, gates, _mat(ws, o[2], t * n, u), drec, dw, dr, db, kind == _GRU)
    if need_dx:
        _gemm(gates, w, xt, 0, 1)
        for s in range(t):
            for i in range(n):
                for j in range(f):
                    dx[i, s, j] = xt[s * n + i, j]


@_jit
def _add_dout(dh, dout, s):
    for i in range(dh.shape[0]):
        for j in range(dh.shape[1]):
            dh[i, j] += dout[i, s, j]


@_jit
def _add(a, b):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[i, j]


@_jit
def _weight_grads(xt, dz, hprev, drec, dw, dr, db, two_biases):
    """dw = xt^T dz, dr = h_prev^T drec (one GEMM each), db the column sums."""
    _gemm(xt, dz, dw, 1, 0)
    _gemm(hprev, drec, dr, 1, 0)
    rows, g = dz.shape
    for j in range(g):
        db[0, j] = 0
        if two_biases:
            db[1, j] = 0
    for k in range(rows):
        for j in range(g):
            db[0, j] += dz[k, j]
        if two_biases:
            for j in range(g):
                db[1, j] += drec[k, j]


@_jit
def _simple_step_back(gates, dh, s, n, u, act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            gates[row, j] = dh[i, j] * _dact(gates[row, j], act, one)


@_jit
def _lstm_step_back(gates, cs, dh, dc, s, n, u, act, rec_act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            gi, gf = gates[row, j], gates[row, u + j]
            gg, go = gates[row, 2 * u + j], gates[row, 3 * u + j]
            tc = _act1(cs[row + n, j], act, one)
            d = dh[i, j]
            c = dc[i, j] + d * go * _dact(tc, act, one)
            gates[row, j] = c * gg * _dact(gi, rec_act, one)
            gates[row, u + j] = c * cs[row, j] * _dact(gf, rec_act, one)
            gates[row, 2 * u + j] = c * gi * _dact(gg, act, one)
            gates[row, 3 * u + j] = d * tc * _dact(go, rec_act, one)
            dc[i, j] = c * gf


@_jit
def _gru_step_back(gates, rec, hs, dh, s, n, u, act, rec_act, one):
    for i in range(n):
        row = s * n + i
        for j in range(u):
            z, rr, cand = gates[row, j], gates[row, u + j], gates[row, 2 * u + j]
            d = dh[i, j]
            dcand = d * (one - z) * _dact(cand, act, one)
            dz = d * (hs[row, j] - cand) * _dact(z, rec_act, one)
            drr = dcand * rec[row, 2 * u + j] * _dact(rr, rec_act, one)
            gates[row, j], gates[row, u + j], gates[row, 2 * u + j] = dz, drr, dcand
            rec[row, j], rec[row, u + j], rec[row, 2 * u + j] = dz, drr, dcand * rr
            dh[i, j] = d * z


# ---------------------------------------------------------------------------------------
# The RNN family's slot functions of numba_cpu.forward_stack / backward_stack


@_jit
def _rnn_weights(buf, row, kind, f, u):
    g = u * (1 if kind == _SIMPLE_RNN else (4 if kind == _LSTM else 3))
    w = _mat(buf, row[C.P_W0], f, g)
    return w, _mat(buf, row[C.P_W1], u, g), _mat(buf, row[C.P_W2], 2 if kind == _GRU else 1, g)


@_jit
def _rnn_x_ws(inp, acts, row, n):
    kind, t, f, u = row[C.P_KIND], row[C.P_IN1], row[C.P_IN2], row[C.P_UNITS]
    o = rnn_layout(kind, n, t, f, u)
    off = row[C.P_SAVE_OFF]
    return inp.reshape((n, t, f)), acts[off : off + o[8]]


@_jit
def rnn_family_forward(present, kind, inp, out, row, params, acts, n):
    """A sequence layer's forward (reference.layer_forward); False when ``kind`` is not
    one, or when ``present`` (the family's slot of the kinds marker) is None."""
    if present is None:
        return False
    if kind == C.EMBEDDING:
        embedding_forward(_ids_view(inp), _mat(params, row[C.P_W0], row[C.P_VOCAB],
                                               out.shape[1]), out)  # fmt: skip
        return True
    if kind == _SIMPLE_RNN or kind == _LSTM or kind == _GRU:
        x3, ws = _rnn_x_ws(inp, acts, row, n)
        u = row[C.P_UNITS]
        w, r, b = _rnn_weights(params, row, kind, x3.shape[2], u)
        rnn_forward(kind, x3, w, r, b, out.reshape((n, out.shape[0] // n, u)), ws, row[C.P_ACT],
                    row[C.P_REC_ACT], row[C.P_RETURN_SEQ])  # fmt: skip
        return True
    return False


@_jit
def rnn_family_backward(present, kind, inp, g, dx, need_dx, row, params, grads, acts, n):
    """A sequence layer's backward (reference.layer_backward); False as the forward."""
    if present is None:
        return False
    if kind == C.EMBEDDING:
        embedding_backward(_ids_view(inp), g, _mat(grads, row[C.P_W0], row[C.P_VOCAB],
                                                   g.shape[1]))  # fmt: skip
        return True
    if kind == _SIMPLE_RNN or kind == _LSTM or kind == _GRU:
        x3, ws = _rnn_x_ws(inp, acts, row, n)
        u, f = row[C.P_UNITS], x3.shape[2]
        w, r, _ = _rnn_weights(params, row, kind, f, u)
        dw, dr, db = _rnn_weights(grads, row, kind, f, u)
        rnn_backward(kind, x3, w, r, g.reshape((n, g.shape[0] // n, u)), dx.reshape(x3.shape),
                     dw, dr, db, ws, row[C.P_ACT], row[C.P_REC_ACT], row[C.P_RETURN_SEQ],
                     need_dx)  # fmt: skip
        return True
    return False
