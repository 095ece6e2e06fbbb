"""NumPy reference kernels of the sequence kinds: Embedding, SimpleRNN, LSTM and GRU.

Part of the specification in ``reference`` (same contract).  Shapes: N batch, T timesteps,
F input features, U units, G = gates * U the width of the gate pre-activations (SimpleRNN
1, LSTM 4 in Keras's order i, f, c, o, GRU 3 in Keras's order z, r, h), V vocabulary, E
embedding width.  The recurrent kernels work time-major inside a flat workspace ``ws``
(layout: :func:`rnn_layout`) so that every timestep's block is one contiguous (N, *)
matrix: the input projection of all timesteps is one GEMM, each step one recurrent GEMM
followed by the gate activations, and after the backward loop dW, dR and dx are one GEMM
each.  The forward leaves the gates (after their activations), the hidden states and
(LSTM) the cell states in ``ws``; the backward reads them and overwrites the gates with
their gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import codes as C

#: Gates per unit of each recurrent kind.
RNN_GATES = {C.SIMPLE_RNN: 1, C.LSTM: 4, C.GRU: 3}


def rnn_layout(kind, n, t, f, u):
    """Offsets of the parts of a recurrent layer's workspace for n samples: (xt, gates, hs,
    cs, rec, tmp, dh, dc, end).  xt (T, N, F) the input time-major; gates (T, N, G); hs
    (T + 1, N, U) the hidden states (hs[0] = 0); cs (T + 1, N, U) the LSTM cell states;
    rec (T, N, G) the GRU recurrent pre-activations h @ R + b_rec (then their gradients);
    tmp (N, G) the step's recurrent GEMM; dh, dc (N, U) the gradients carried back."""
    g = RNN_GATES[kind] * u
    lstm, gru = kind == C.LSTM, kind == C.GRU
    sizes = (t * n * f, t * n * g, (t + 1) * n * u, (t + 1) * n * u * lstm, t * n * g * gru,
             n * g, n * u, n * u * lstm)  # fmt: skip
    return tuple(int(v) for v in np.cumsum((0, *sizes)))


def rnn_workspace_size(kind, n, t, f, u):
    """Elements of the workspace of :func:`rnn_forward` / :func:`rnn_backward`."""
    return rnn_layout(kind, n, t, f, u)[-1]


def _views(kind, ws, n, t, f, u):
    o = rnn_layout(kind, n, t, f, u)
    g = RNN_GATES[kind] * u

    def part(i, *shape):
        return ws[o[i] : o[i + 1]].reshape(shape)

    return SimpleNamespace(
        xt=part(0, t, n, f), gates=part(1, t, n, g), hs=part(2, t + 1, n, u),
        cs=part(3, t + 1, n, u) if kind == C.LSTM else None,
        rec=part(4, t, n, g) if kind == C.GRU else None,
    )  # fmt: skip


def _act(z, code):
    out = np.empty_like(z)
    if code == C.LINEAR:
        out[...] = z
    elif code == C.RELU:
        np.maximum(z, 0, out=out)
    elif code == C.SIGMOID:
        out[...] = 1 / (1 + np.exp(-z))
    elif code == C.TANH:
        np.tanh(z, out=out)
    else:
        raise ValueError(f"unknown recurrent activation code {code}")
    return out


def _act_grad(y, code):
    """d act / d z from the output y = act(z)."""
    if code == C.LINEAR:
        return np.ones_like(y)
    if code == C.RELU:
        return (y > 0).astype(y.dtype)
    if code == C.SIGMOID:
        return y * (1 - y)
    if code == C.TANH:
        return 1 - y * y
    raise ValueError(f"unknown recurrent activation code {code}")


def embedding_forward(ids, w, out):
    """out[n * T + t] = w[ids[n, t]].  ids (N, T) integers in [0, V); w (V, E); out (N*T, E)."""
    out[...] = w[ids.reshape(-1)]


def embedding_backward(ids, dout, dw):
    """dw = sum of dout rows per id (zero for ids absent).  ids (N, T); dout (N*T, E);
    dw (V, E)."""
    dw[...] = 0
    np.add.at(dw, ids.reshape(-1), dout)


def rnn_forward(kind, x, w, r, b, out, ws, act, rec_act, return_seq):
    """Runs a SimpleRNN / LSTM / GRU (``kind``) over x (N, T, F) from zero states.

    w (F, G), r (U, G), b (1, G) (GRU: (2, G): input bias, recurrent bias); out (N, T, U)
    with ``return_seq`` else (N, 1, U); ws the workspace (:func:`rnn_layout`); act the
    activation code (tanh, relu, sigmoid or linear), rec_act the gates' (LSTM, GRU)."""
    n, t, f = x.shape
    u = r.shape[0]
    v = _views(kind, ws, n, t, f, u)
    v.xt[...] = x.transpose(1, 0, 2)
    v.gates[...] = (v.xt.reshape(t * n, f) @ w).reshape(t, n, -1) + b[0]
    v.hs[0] = 0
    if kind == C.LSTM:
        v.cs[0] = 0
    for s in range(t):
        hr = v.hs[s] @ r
        if kind == C.SIMPLE_RNN:
            v.gates[s] = _act(v.gates[s] + hr, act)
            v.hs[s + 1] = v.gates[s]
        elif kind == C.LSTM:
            _lstm_step(v, s, hr, u, act, rec_act)
        else:
            _gru_step(v, s, hr + b[1], u, act, rec_act)
    out[...] = v.hs[1:].transpose(1, 0, 2) if return_seq else v.hs[t][:, None, :]


def _lstm_step(v, s, hr, u, act, rec_act):
    z = v.gates[s] + hr
    i, f, g, o = (z[:, k * u : (k + 1) * u] for k in range(4))
    i, f, o, g = _act(i, rec_act), _act(f, rec_act), _act(o, rec_act), _act(g, act)
    v.gates[s] = np.concatenate([i, f, g, o], axis=1)
    v.cs[s + 1] = f * v.cs[s] + i * g
    v.hs[s + 1] = o * _act(v.cs[s + 1], act)


def _gru_step(v, s, hr, u, act, rec_act):
    xw = v.gates[s]
    z = _act(xw[:, :u] + hr[:, :u], rec_act)
    rr = _act(xw[:, u : 2 * u] + hr[:, u : 2 * u], rec_act)
    hh = _act(xw[:, 2 * u :] + rr * hr[:, 2 * u :], act)
    v.rec[s] = hr
    v.gates[s] = np.concatenate([z, rr, hh], axis=1)
    v.hs[s + 1] = z * v.hs[s] + (1 - z) * hh


def rnn_backward(kind, x, w, r, dout, dx, dw, dr, db, ws, act, rec_act, return_seq, need_dx):
    """Gradients of :func:`rnn_forward` (after it, with the same ws) given dout = dL/dout
    (N, T or 1, U): dw (F, G), dr (U, G), db (1 or 2, G) and, when ``need_dx``, dx
    (N, T, F).  Back-propagation through time from the last step."""
    n, t, f = x.shape
    u = r.shape[0]
    v = _views(kind, ws, n, t, f, u)
    dh = np.zeros((n, u), x.dtype)
    dc = np.zeros((n, u), x.dtype)
    drec = v.rec if kind == C.GRU else v.gates
    for s in range(t - 1, -1, -1):
        if return_seq:
            dh = dh + dout[:, s]
        elif s == t - 1:
            dh = dh + dout[:, 0]
        if kind == C.SIMPLE_RNN:
            v.gates[s] = dh * _act_grad(v.gates[s], act)
            dh = v.gates[s] @ r.T
        elif kind == C.LSTM:
            dh, dc = _lstm_step_back(v, s, dh, dc, r, u, act, rec_act)
        else:
            dh = _gru_step_back(v, s, dh, r, u, act, rec_act)
    dz = v.gates.reshape(t * n, -1)
    dw[...] = v.xt.reshape(t * n, f).T @ dz
    dr[...] = v.hs[:t].reshape(t * n, u).T @ drec.reshape(t * n, -1)
    db[0] = dz.sum(axis=0)
    if kind == C.GRU:
        db[1] = drec.reshape(t * n, -1).sum(axis=0)
    if need_dx:
        dx[...] = (dz @ w.T).reshape(t, n, f).transpose(1, 0, 2)


def _lstm_step_back(v, s, dh, dc, r, u, act, rec_act):
    i, f, g, o = (v.gates[s][:, k * u : (k + 1) * u].copy() for k in range(4))
    tc = _act(v.cs[s + 1], act)
    dc = dc + dh * o * _act_grad(tc, act)
    dzi = dc * g * _act_grad(i, rec_act)
    dzf = dc * v.cs[s] * _act_grad(f, rec_act)
    dzg = dc * i * _act_grad(g, act)
    dzo = dh * tc * _act_grad(o, rec_act)
    v.gates[s] = np.concatenate([dzi, dzf, dzg, dzo], axis=1)
    return v.gates[s] @ r.T, dc * f


def _gru_step_back(v, s, dh, r, u, act, rec_act):
    z, rr, hh = (v.gates[s][:, k * u : (k + 1) * u].copy() for k in range(3))
    hr_h = v.rec[s][:, 2 * u :].copy()
    dhh = dh * (1 - z) * _act_grad(hh, act)
    dz = dh * (v.hs[s] - hh) * _act_grad(z, rec_act)
    drr = dhh * hr_h * _act_grad(rr, rec_act)
    v.gates[s] = np.concatenate([dz, drr, dhh], axis=1)
    v.rec[s] = np.concatenate([dz, drr, dhh * rr], axis=1)
    return v.rec[s] @ r.T + dh * z
