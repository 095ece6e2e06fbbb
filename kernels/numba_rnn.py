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
#: What numba_cpu re-exports: the kernels of reference.SEQUENCE_OPS.
EXPORTS = ("embedding_forward", "embedding_backward", "rnn_forward", "rnn_backward")


def _ids_view(x):
    """Token ids stored bit for bit in a float array (reference.ids_view)."""


@overload(_ids_view, inline="always")
def _ids_view_overload(x):
    if isinstance(x, types.Array) and x.dtype == types.float32:
        return lambda x: x.view(np.int32)
    return lambda x: x.view(np.int64)


@_jit
def _act_seg(a, lo, hi, code):
    """a[lo:hi] = act(a[lo:hi]) (1-D; the code's branch outside the loop, so it
    vectorises)."""
    one = a.dtype.type(1)
    if code == _TANH:
        for j in range(lo, hi):
            a[j] = _tanh(a[j])
    elif code == _SIGMOID:
        for j in range(lo, hi):
            v = a[j]
            e = _exp(-np.abs(v))
            a[j] = one / (one + e) if v >= 0 else e / (one + e)
    elif code == _RELU:
        for j in range(lo, hi):
            a[j] = max(a[j], 0)
    elif code != _LINEAR:
        raise ValueError("unknown recurrent activation code")


@_jit
def _dact_mul(out, o0, y, y0, d, d0, count, code):
    """out[o0 + j] = d[d0 + j] * act'(from the output y[y0 + j]) for j < count (1-D)."""
    one = out.dtype.type(1)
    if code == _TANH:
        for j in range(count):
            v = y[y0 + j]
            out[o0 + j] = d[d0 + j] * (one - v * v)
    elif code == _SIGMOID:
        for j in range(count):
            v = y[y0 + j]
            out[o0 + j] = d[d0 + j] * (v * (one - v))
    elif code == _RELU:
        for j in range(count):
            out[o0 + j] = d[d0 + j] if y[y0 + j] > 0 else 0
    elif code == _LINEAR:
        for j in range(count):
            out[o0 + j] = d[d0 + j]
    else:
        raise ValueError("unknown recurrent activation code")


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
    _zero(ws, o[2], n * u)  # h_0
    _zero(ws, o[3], n * u * (kind == _LSTM))  # c_0
    for s in range(t):
        if s > 0:
            _gemm(_mat(ws, o[2] + s * n * u, n, u), r, tmp, 0, 0)
        else:
            _zero(ws, o[5], n * g)
        if kind == _SIMPLE_RNN:
            _simple_step(gates, hs, tmp, s, n, u, act)
        elif kind == _LSTM:
            _lstm_step(gates, hs, _mat(ws, o[3], (t + 1) * n, u), tmp, s, n, u, act, rec_act)
        else:
            _gru_step(gates, hs, _mat(ws, o[4], t * n, g), tmp, b, s, n, u, act, rec_act)
    _write_out(hs, out, n, t, u, return_seq)


@_jit
def _write_out(hs, out, n, t, u, return_seq):
    for i in range(n):
        for s in range(t if return_seq else 1):
            src = (s + 1) * n + i if return_seq else t * n + i
            for j in range(u):
                out[i, s, j] = hs[src, j]


@_jit
def _simple_step(gates, hs, tmp, s, n, u, act):
    for i in range(n):
        z, h, tr = gates[s * n + i], hs[(s + 1) * n + i], tmp[i]
        for j in range(u):
            z[j] += tr[j]
        _act_seg(z, 0, u, act)
        for j in range(u):
            h[j] = z[j]


@_jit
def _lstm_step(gates, hs, cs, tmp, s, n, u, act, rec_act):
    """Gates i, f, c, o of one step (saved after their activations), then c and h."""
    for i in range(n):
        row = s * n + i
        z, tr, c, cp, h = gates[row], tmp[i], cs[row + n], cs[row], hs[row + n]
        for j in range(4 * u):
            z[j] += tr[j]
        _act_seg(z, 0, 2 * u, rec_act)
        _act_seg(z, 2 * u, 3 * u, act)
        _act_seg(z, 3 * u, 4 * u, rec_act)
        for j in range(u):
            c[j] = z[u + j] * cp[j] + z[j] * z[2 * u + j]
            h[j] = c[j]
        _act_seg(h, 0, u, act)
        for j in range(u):
            h[j] *= z[3 * u + j]


@_jit
def _gru_step(gates, hs, rec, tmp, b, s, n, u, act, rec_act):
    """Gates z, r, h of one step (saved after their activations; rec keeps h @ R + b_rec),
    then h."""
    b1 = b[1]
    for i in range(n):
        row = s * n + i
        z, tr, hr, hp, h = gates[row], tmp[i], rec[row], hs[row], hs[row + n]
        for j in range(3 * u):
            hr[j] = tr[j] + b1[j]
        for j in range(2 * u):
            z[j] += hr[j]
        _act_seg(z, 0, 2 * u, rec_act)
        for j in range(u):
            z[2 * u + j] += z[u + j] * hr[2 * u + j]
        _act_seg(z, 2 * u, 3 * u, act)
        for j in range(u):
            zj = z[j]
            h[j] = zj * hp[j] + (1 - zj) * z[2 * u + j]


@_jit
def rnn_backward(kind, x, w, r, dout, dx, dw, dr, db, ws, act, rec_act, return_seq, need_dx):
    """See reference.rnn_backward."""
    n, t, f = x.shape
    u, g = r.shape
    o = rnn_layout(kind, n, t, f, u)
    xt, gates = _mat(ws, o[0], t * n, f), _mat(ws, o[1], t * n, g)
    hs, dh = _mat(ws, o[2], (t + 1) * n, u), _mat(ws, o[6], n, u)
    drec = _mat(ws, o[4], t * n, g) if kind == _GRU else gates
    tmp = _mat(ws, o[5], n, g)
    _zero(ws, o[6], n * u + n * u * (kind == _LSTM))  # dh, dc
    for s in range(t - 1, -1, -1):
        if return_seq or s == t - 1:
            _add_dout(dh, dout, 0 if s == t - 1 and not return_seq else s)
        if kind == _SIMPLE_RNN:
            _simple_step_back(gates, dh, s, n, u, act)
        elif kind == _LSTM:
            _lstm_step_back(gates, _mat(ws, o[3], (t + 1) * n, u), dh, _mat(ws, o[7], n, u),
                            tmp, s, n, u, act, rec_act)  # fmt: skip
        else:
            _gru_step_back(gates, drec, hs, dh, tmp, s, n, u, act, rec_act)
        if s > 0:
            if kind == _GRU:
                dh_rec = _mat(ws, o[5], n, u)
                _gemm(_mat(ws, o[4] + s * n * g, n, g), r, dh_rec, 0, 1)
                _add(dh, dh_rec)
            else:
                _gemm(_mat(ws, o[1] + s * n * g, n, g), r, dh, 0, 1)
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
def _simple_step_back(gates, dh, s, n, u, act):
    for i in range(n):
        z = gates[s * n + i]
        _dact_mul(z, 0, z, 0, dh[i], 0, u, act)


@_jit
def _lstm_step_back(gates, cs, dh, dc, tmp, s, n, u, act, rec_act):
    """Pre-activation gradients of step s in place of its gates; dc becomes dL/dc_{s-1}.
    Row scratch (tmp): [tanh(c), dL/dc, dc * g, dc * i]; dh's row is free after use."""
    for i in range(n):
        row = s * n + i
        z, c, cp, d, dcr, sc = gates[row], cs[row + n], cs[row], dh[i], dc[i], tmp[i]
        for j in range(u):
            sc[j] = c[j]
        _act_seg(sc, 0, u, act)
        _dact_mul(sc, u, sc, 0, d, 0, u, act)
        for j in range(u):
            dct = dcr[j] + sc[u + j] * z[3 * u + j]
            sc[j] *= d[j]  # dh * act(c): the output gate's gradient
            sc[2 * u + j] = dct * z[2 * u + j]
            sc[3 * u + j] = dct * z[j]
            dcr[j] = dct * z[u + j]
            d[j] = dct * cp[j]
        _dact_mul(z, 0, z, 0, sc, 2 * u, u, rec_act)
        _dact_mul(z, u, z, u, d, 0, u, rec_act)
        _dact_mul(z, 2 * u, z, 2 * u, sc, 3 * u, u, act)
        _dact_mul(z, 3 * u, z, 3 * u, sc, 0, u, rec_act)


@_jit
def _gru_step_back(gates, rec, hs, dh, tmp, s, n, u, act, rec_act):
    """Pre-activation gradients of step s: the input side in place of the gates, the
    recurrent side (the candidate's scaled by r) in place of rec; dh becomes its direct
    part dh * z (the GEMM through R is added after)."""
    for i in range(n):
        row = s * n + i
        z, hr, hp, d, sc = gates[row], rec[row], hs[row], dh[i], tmp[i]
        for j in range(u):
            sc[j] = d[j] * (1 - z[j])
            sc[u + j] = d[j] * (hp[j] - z[2 * u + j])
        _dact_mul(z, 2 * u, z, 2 * u, sc, 0, u, act)
        for j in range(u):
            sc[2 * u + j] = z[2 * u + j] * hr[2 * u + j]
            hr[2 * u + j] = z[2 * u + j] * z[u + j]
            d[j] *= z[j]
        _dact_mul(z, u, z, u, sc, 2 * u, u, rec_act)
        _dact_mul(z, 0, z, 0, sc, u, u, rec_act)
        for j in range(2 * u):
            hr[j] = z[j]


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
