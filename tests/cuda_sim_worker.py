"""CUDA kernels == NumPy reference, per op, on tiny shapes that cross the 16x16 tiles.

Run as a script it sets ``NUMBA_ENABLE_CUDASIM=1`` before Numba is imported (the CUDA
simulator: no GPU needed), runs the checks named on the command line (all by default) and
prints one JSON line per check.  ``--device`` runs them on a real GPU instead.  The test
module imports it for ``CHECKS`` and, on a machine with a GPU, calls ``run_check`` in-process.

The simulator runs one CPU thread per GPU thread: shapes stay tiny and launches few.
"""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__" and "--device" not in sys.argv:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before anything imports numba

import warnings

import numpy as np

from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref

ACTS = {"linear": C.LINEAR, "relu": C.RELU, "leaky_relu": C.LEAKY_RELU,
        "sigmoid": C.SIGMOID, "tanh": C.TANH, "softmax": C.SOFTMAX}  # fmt: skip
F32 = np.float32


def _rng(seed=0):
    return np.random.default_rng(seed)


def _randn(rng, *shape, dtype=F32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _close(name, got, want, rtol, atol):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    bad = ~(err <= atol + rtol * np.abs(want))
    bad &= ~(np.isnan(got) & np.isnan(want))
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.size} differ, worst at {i}: "
            f"got {got[i]!r} want {want[i]!r}"
        )
    finite = np.isfinite(err)
    return float(err[finite].max()) if finite.any() else 0.0


def _tol(dtype, k=1):
    """(rtol, atol) for a result that sums k products in ``dtype``."""
    if np.dtype(dtype) == np.float32:
        return 2e-5 * max(1.0, k**0.5), 1e-6 * max(1.0, k**0.5)
    return 1e-12 * max(1.0, k**0.5), 1e-13 * max(1.0, k**0.5)


def _both(fn_name, cu, args, outputs):
    """Calls cuda.fn and reference.fn on copies of args; returns (cu_ret, ref_ret, cu_args,
    ref_args) after checking that the non-output arguments were not modified."""
    a_cu = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    a_ref = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    r_cu = getattr(cu, fn_name)(*a_cu)
    r_ref = getattr(ref, fn_name)(*a_ref)
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and i not in outputs:
            assert np.array_equal(a_cu[i], a, equal_nan=True), f"{fn_name}: input {i} modified"
        if isinstance(a, np.ndarray):
            assert a_cu[i].dtype == a.dtype, f"{fn_name}: dtype of argument {i} changed"
    return r_cu, r_ref, a_cu, a_ref


def _cmp_outputs(name, a_cu, a_ref, outputs, dtype, k=1):
    rtol, atol = _tol(dtype, k)
    return max(_close(f"{name}[{i}]", a_cu[i], a_ref[i], rtol, atol) for i in outputs)


# ---------------------------------------------------------------------------------------
# Per-op checks: each takes the cuda module and returns a short description.


def check_activation_forward(cu):
    rng = _rng(1)
    worst = 0.0
    for name, code in ACTS.items():
        x = _randn(rng, 7, 33 if name == "softmax" else 5, scale=3.0)
        out = np.zeros_like(x)
        _, _, a_cu, a_ref = _both("activation_forward", cu, [x, out, code, 0.1], [1])
        worst = max(worst, _cmp_outputs(f"act_fwd {name}", a_cu, a_ref, [1], F32))
    x = _randn(rng, 5, 3)  # in place (out aliases x)
    want = x.copy()
    ref.activation_forward(want, want, C.TANH, 0.0)
    cu.activation_forward(x, x, C.TANH, 0.0)
    _close("act_fwd in place", x, want, *_tol(F32))
    return f"6 activations, max abs err {worst:.2e}"


def check_activation_backward(cu):
    rng = _rng(2)
    worst = 0.0
    for name, code in ACTS.items():
        c = 33 if name == "softmax" else 5
        x = _randn(rng, 7, c, scale=2.0)
        y = np.zeros_like(x)
        ref.activation_forward(x, y, code, 0.1)
        dout = _randn(rng, 7, c)
        dx = np.zeros_like(x)
        _, _, a_cu, a_ref = _both("activation_backward", cu, [y, dout, dx, code, 0.1], [2])
        worst = max(worst, _cmp_outputs(f"act_bwd {name}", a_cu, a_ref, [2], F32, c))
        # dx may alias dout
        d1, d2 = dout.copy(), dout.copy()
        cu.activation_backward(y, d1, d1, code, 0.1)
        ref.activation_backward(y, d2, d2, code, 0.1)
        _close(f"act_bwd {name} in place", d1, d2, *_tol(F32, c))
    return f"6 activations (+ in place), max abs err {worst:.2e}"


def _dense_case(rng, n, i, o, dtype):
    return _randn(rng, n, i, dtype=dtype), _randn(rng, i, o, dtype=dtype, scale=0.3), \
        _randn(rng, o, dtype=dtype)  # fmt: skip


def check_dense_forward(cu):
    rng = _rng(3)
    worst = 0.0
    for act, dtype in (("relu", F32), ("softmax", F32), ("tanh", np.float64)):
        x, w, b = _dense_case(rng, 17, 33, 5, dtype)
        out = np.zeros((17, 5), dtype)
        args = [x, w, b, out, ACTS[act], 0.0]
        _, _, a_cu, a_ref = _both("dense_forward", cu, args, [3])
        worst = max(worst, _cmp_outputs(f"dense_fwd {act}", a_cu, a_ref, [3], dtype, 33))
    return f"17x33 @ 33x5 (relu, softmax f32; tanh f64), max abs err {worst:.2e}"


def check_dense_backward(cu):
    rng = _rng(4)
    worst = 0.0
    for act, need_dx in (("sigmoid", 1), ("softmax", 0)):
        x, w, b = _dense_case(rng, 17, 33, 5, F32)
        y = np.zeros((17, 5), F32)
        ref.dense_forward(x, w, b, y, ACTS[act], 0.0)
        dout = _randn(rng, 17, 5)
        dz, dx = np.zeros_like(dout), np.full((17, 33), 7.0, F32)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        args = [x, w, y, dout, dz, dx, dw, db, ACTS[act], 0.0, need_dx]
        _, _, a_cu, a_ref = _both("dense_backward", cu, args, [4, 5, 6, 7])
        worst = max(worst, _cmp_outputs(f"dense_bwd {act}", a_cu, a_ref, [4, 5, 6, 7], F32, 33))
    # dz aliasing dout, as backward_stack calls it
    x, w, b = _dense_case(rng, 17, 33, 5, F32)
    y = np.maximum(_randn(rng, 17, 5), 0)
    g1 = _randn(rng, 17, 5)
    g2 = g1.copy()
    outs = [(np.zeros((17, 33), F32), np.zeros_like(w), np.zeros_like(b)) for _ in range(2)]
    cu.dense_backward(x, w, y, g1, g1, *outs[0], C.RELU, 0.0, 1)
    ref.dense_backward(x, w, y, g2, g2, *outs[1], C.RELU, 0.0, 1)
    _close("dense_bwd dz=dout", g1, g2, *_tol(F32))
    for j in range(3):
        worst = max(worst, _close(f"dense_bwd alias out {j}", outs[0][j], outs[1][j],
                                  *_tol(F32, 33)))  # fmt: skip
    return f"17x33x5 tails, dw = x.T @ dz, dx = dz @ w.T, max abs err {worst:.2e}"


def check_dropout(cu):
    rng = _rng(5)
    x = _randn(rng, 17, 5)
    for rate, seed in ((0.3, 12345), (0.5, -7), (0.0, 3)):
        out = np.zeros_like(x)
        _, _, a_cu, a_ref = _both("dropout_forward", cu, [x, out, rate, seed], [1])
        assert np.array_equal(a_cu[1], a_ref[1]), f"dropout mask differs (rate {rate})"
        d = x.copy()
        cu.dropout_backward(d, d, rate, seed)  # in place
        assert np.array_equal(d, a_ref[1]), "dropout_backward in place differs"
    return "masks identical to the reference hash (3 rates/seeds, in place)"


def _loss_inputs(rng, code, n=9, c=5, dtype=F32):
    sw = rng.uniform(0.5, 2.0, n).astype(dtype)
    if code in (C.SOFTMAX_CE, C.SIGMOID_BCE):
        z = _randn(rng, n, c, dtype=dtype, scale=3.0)
    else:
        z = rng.uniform(0.0, 1.0, (n, c)).astype(dtype)
        z[0, 0], z[1, 1] = 0.0, 1.0  # the clip edges
    if code == C.SOFTMAX_CE or code == C.CATEGORICAL_CE:
        y = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
        y[2] = rng.uniform(0, 1, c)  # soft targets
    elif code in (C.SIGMOID_BCE, C.BINARY_CE):
        y = (rng.uniform(size=(n, c)) > 0.5).astype(dtype)
    else:
        y = _randn(rng, n, c, dtype=dtype)
    return z, y, sw


def check_losses(cu):
    rng = _rng(6)
    worst = 0.0
    cases = (("softmax_cross_entropy", C.SOFTMAX_CE, True),
             ("sigmoid_binary_cross_entropy", C.SIGMOID_BCE, True),
             ("categorical_crossentropy", C.CATEGORICAL_CE, False),
             ("binary_crossentropy", C.BINARY_CE, False),
             ("mean_squared_error", C.MSE, False),
             ("mean_absolute_error", C.MAE, False))  # fmt: skip
    for fn, code, with_p in cases:
        z, y, sw = _loss_inputs(rng, code)
        if with_p:
            args, outs = [z, y, sw, np.zeros_like(z), np.zeros_like(z)], [3, 4]
        else:
            args, outs = [z, y, sw, np.zeros_like(z)], [3]
        l_cu, l_ref, a_cu, a_ref = _both(fn, cu, args, outs)
        assert isinstance(l_cu, float), f"{fn} returned {type(l_cu)}"
        worst = max(worst, _close(f"{fn} loss", l_cu, l_ref, 1e-5, 1e-6))
        worst = max(worst, _cmp_outputs(fn, a_cu, a_ref, outs, F32, 5))
    return f"6 losses: loss and gradients, max abs err {worst:.2e}"


def check_sparse_softmax_ce(cu):
    rng = _rng(7)
    z = _randn(rng, 9, 33, scale=3.0)  # 33 classes: more columns than the row block
    sw = rng.uniform(0.5, 2.0, 9).astype(F32)
    worst = 0.0
    for labels in (rng.integers(0, 33, 9).astype(F32), rng.integers(0, 33, 9).astype(np.int64)):
        args = [z, labels, sw, np.zeros_like(z), np.zeros_like(z)]
        l_cu, l_ref, a_cu, a_ref = _both("sparse_softmax_cross_entropy", cu, args, [3, 4])
        worst = max(worst, _close("sparse loss", l_cu, l_ref, 1e-5, 1e-6))
        worst = max(worst, _cmp_outputs("sparse", a_cu, a_ref, [3, 4], F32, 33))
    # p aliasing z, then dz aliasing p (both allowed)
    for alias in ("p=z", "dz=p"):
        z1, z2 = z.copy(), z.copy()
        d1, d2 = np.zeros_like(z), np.zeros_like(z)
        y = rng.integers(0, 33, (9, 1)).astype(F32)
        if alias == "p=z":
            l1 = cu.loss_grad(z1, y, sw, z1, d1, C.SPARSE_SOFTMAX_CE)
            l2 = ref.loss_grad(z2, y, sw, z2, d2, C.SPARSE_SOFTMAX_CE)
        else:
            l1 = cu.loss_grad(z1, y, sw, d1, d1, C.SPARSE_SOFTMAX_CE)
            l2 = ref.loss_grad(z2, y, sw, d2, d2, C.SPARSE_SOFTMAX_CE)
        _close(f"loss_grad {alias}", l1, l2, 1e-5, 1e-6)
        _close(f"loss_grad {alias} z", z1, z2, *_tol(F32, 33))
        _close(f"loss_grad {alias} dz", d1, d2, *_tol(F32, 33))
    return f"float and int64 labels, 33 classes, aliasing; max abs err {worst:.2e}"


def check_loss_grad(cu):
    rng = _rng(8)
    for code in (C.SOFTMAX_CE, C.SIGMOID_BCE, C.MSE):
        z, y, sw = _loss_inputs(rng, code, n=5, c=3)
        args = [z, y, sw, np.zeros_like(z), np.zeros_like(z), code]
        l_cu, l_ref, a_cu, a_ref = _both("loss_grad", cu, args, [3, 4])
        _close(f"loss_grad {code}", l_cu, l_ref, 1e-5, 1e-6)
        _cmp_outputs(f"loss_grad {code}", a_cu, a_ref, [3, 4], F32, 3)
    return "dispatch of 3 codes"


def check_l1l2_penalty(cu):
    rng = _rng(9)
    w = _randn(rng, 7, 5)
    w[0, 0] = 0.0
    dw = _randn(rng, 7, 5)
    r_cu, r_ref, a_cu, a_ref = _both("l1l2_penalty", cu, [w, dw, 0.01, 0.02], [1])
    _close("penalty", r_cu, r_ref, 1e-6, 1e-9)
    err = _cmp_outputs("l1l2 dw", a_cu, a_ref, [1], F32)
    return f"penalty {r_cu:.6g}, dw max abs err {err:.2e}"


def check_optimizers(cu):
    rng = _rng(10)
    n = 37
    p, g = _randn(rng, n), _randn(rng, n)
    s1, s2 = np.abs(_randn(rng, n)), np.abs(_randn(rng, n))
    cases = (
        ("sgd_update", [p, g, 0.1], [0]),
        ("momentum_update", [p, g, s1, 0.1, 0.9, 0], [0, 2]),
        ("momentum_update", [p, g, s1, 0.1, 0.9, 1], [0, 2]),
        ("adagrad_update", [p, g, s1, 0.1, 1e-7], [0, 2]),
        ("rmsprop_update", [p, g, s1, 0.01, 0.9, 1e-7], [0, 2]),
        ("adam_update", [p, g, s1 - 0.5, s2, 1e-3, 0.9, 0.999, 1e-8, 0.0, 3], [0, 2, 3]),
        ("adam_update", [p, g, s1 - 0.5, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1], [0, 2, 3]),
    )
    for fn, args, outs in cases:
        _, _, a_cu, a_ref = _both(fn, cu, args, outs)
        _cmp_outputs(fn, a_cu, a_ref, outs, F32)
    hyper = {C.SGD: [0.1], C.MOMENTUM: [0.1, 0.9, 1], C.ADAGRAD: [0.1, 1e-7],
             C.RMSPROP: [0.01, 0.9, 1e-7], C.ADAM: [1e-3, 0.9, 0.999, 1e-8, 0.01]}  # fmt: skip
    for code, h in hyper.items():
        state = np.abs(_randn(rng, max(1, C.STATE_SLOTS[code]), n))
        args = [p, g, state, code, np.array(h, np.float64), 2]
        _, _, a_cu, a_ref = _both("optimizer_update", cu, args, [0, 2])
        _cmp_outputs(f"optimizer_update {code}", a_cu, a_ref, [0, 2], F32)
    return "5 update kernels + optimizer_update for every code"


def check_batch_stats(cu):
    rng = _rng(11)
    out = rng.uniform(size=(9, 4)).astype(F32)
    onehot = np.eye(4, dtype=F32)[rng.integers(0, 4, 9)]
    labels = rng.integers(0, 4, (9, 1)).astype(F32)
    binary = (rng.uniform(size=(9, 4)) > 0.5).astype(F32)
    for mode, y in ((C.ACC_SPARSE, labels), (C.ACC_CATEGORICAL, onehot),
                    (C.ACC_BINARY, binary), (C.ACC_NONE, onehot)):  # fmt: skip
        s1, s2 = np.arange(5, dtype=np.float64), np.arange(5, dtype=np.float64)
        cu.batch_stats(out, y, mode, 0.5, s1)
        ref.batch_stats(out, y, mode, 0.5, s2)
        _close(f"batch_stats mode {mode}", s1, s2, 1e-9, 1e-9)
    return "4 accuracy modes"


# ---------------------------------------------------------------------------------------
# The layer stack on flat buffers


def make_stack(rng, n_in, spec, n, dtype=F32):
    """(layers, layer_f, params) for spec rows (kind, width, act, f0, l1, l2)."""
    layers, lf = [], []
    off, fan_in = 0, n_in
    for kind, width, act, f0, l1, l2 in spec:
        layers.append([kind, width, act, off if kind == C.DENSE else 0])
        lf.append([f0, l1, l2])
        if kind == C.DENSE:
            off += fan_in * width + width
        fan_in = width
    params = (rng.standard_normal(off) * 0.5).astype(dtype)
    layers = np.array(layers, np.int64)
    acts = np.zeros(n * int(layers[:, 1].sum()), dtype)
    gbuf = np.zeros(2 * n * max(n_in, int(layers[:, 1].max())), dtype)
    return layers, np.array(lf, np.float64), params, acts, gbuf


SPEC = (
    (C.DENSE, 5, C.RELU, 0.0, 0.0, 0.01),
    (C.DROPOUT, 5, C.LINEAR, 0.25, 0.0, 0.0),
    (C.DENSE, 3, C.LINEAR, 0.0, 0.001, 0.0),
)


def check_stack_forward_backward(cu):
    rng = _rng(12)
    n = 6
    layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, n)
    x = _randn(rng, n, 4)
    a1, a2 = acts.copy(), acts.copy()
    cu.forward_stack(x, params, a1, layers, lf, 1, 11, 2)
    ref.forward_stack(x, params, a2, layers, lf, 1, 11, 2)
    _close("forward_stack acts", a1, a2, *_tol(F32, 5))
    g1, g2 = gbuf.copy(), gbuf.copy()
    g1[: n * 3] = g2[: n * 3] = _randn(rng, n * 3)
    gr1, gr2 = np.zeros_like(params), np.zeros_like(params)
    p1 = cu.backward_stack(x, params, gr1, a2, g1, layers, lf, 11, 2)
    p2 = ref.backward_stack(x, params, gr2, a2.copy(), g2, layers, lf, 11, 2)
    _close("backward_stack penalty", p1, p2, 1e-6, 1e-9)
    err = _close("backward_stack grads", gr1, gr2, *_tol(F32, 6))
    return f"dense-relu/dropout/dense (+l1, l2), grads max abs err {err:.2e}"


def _train(mod, dtype, steps, loss_code=C.SPARSE_SOFTMAX_CE, opt=C.ADAM, x_nan=False):
    rng = _rng(13)
    n = 6
    layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, n, dtype)
    x = _randn(rng, n, 4, dtype=dtype)
    if x_nan:
        x[1, 2] = np.nan
    y = rng.integers(0, 3, (n, 1)).astype(dtype)
    sw = np.ones(n, dtype)
    grads = np.zeros_like(params)
    state = np.zeros((2, params.size), dtype)
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0])
    losses = []
    for step in range(1, steps + 1):
        losses.append(mod.train_step(x, y, sw, params, grads, state, acts, gbuf, layers, lf,
                                     loss_code, 0, opt, hyper, step, 5))  # fmt: skip
    return np.array(losses), params, state, acts


def check_train_step(cu):
    l1, p1, s1, a1 = _train(cu, F32, 3)
    l2, p2, s2, a2 = _train(ref, F32, 3)
    _close("train_step losses", l1, l2, 1e-4, 1e-7)
    err = _close("train_step params", p1, p2, 1e-4, 1e-6)
    _close("train_step adam state", s1, s2, 1e-4, 1e-7)
    _close("train_step acts", a1, a2, 1e-4, 1e-6)
    return f"3 steps 4-5-3 (relu, dropout, softmax CE, Adam): params max abs err {err:.2e}"


def check_train_step_nan(cu):
    rng_params = _train(ref, F32, 0)[1]
    losses, params, state, _ = _train(cu, F32, 1, x_nan=True)
    assert np.isnan(losses[0]), f"loss {losses[0]} should be NaN"
    assert np.array_equal(params, rng_params), "parameters changed on a NaN loss"
    assert not state.any(), "optimizer state changed on a NaN loss"
    return "NaN loss: nothing updated"


def check_eval_step(cu):
    rng = _rng(14)
    n = 6
    layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, n)
    x, y = _randn(rng, n, 4), _randn(rng, n, 3)
    sw = np.ones(n, F32)
    args = [x, y, sw, params, acts, gbuf, layers, lf, C.MSE, 0]
    l_cu, l_ref, a_cu, a_ref = _both("eval_step", cu, args, [4, 5])
    _close("eval_step loss", l_cu, l_ref, 1e-5, 1e-7)
    _cmp_outputs("eval_step", a_cu, a_ref, [4, 5], F32, 5)
    return f"MSE + penalty, loss {l_cu:.6g}"


def check_run_epoch(cu):
    results = []
    for mod in (cu, ref):
        rng = _rng(15)
        n_rows, bs = 10, 4
        layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, bs)
        X = _randn(rng, n_rows, 4)
        Y = rng.integers(0, 3, (n_rows, 1)).astype(F32)
        SW = np.ones(n_rows, F32)
        order = rng.permutation(n_rows).astype(np.int64)
        xb, yb, swb = np.zeros((bs, 4), F32), np.zeros((bs, 1), F32), np.zeros(bs, F32)
        grads, state = np.zeros_like(params), np.zeros((2, params.size), F32)
        hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0])
        lrs = np.array([0.01, 0.005, 0.002])
        stats = np.zeros(C.STAT_LEN)
        done = mod.run_epoch(X, Y, SW, order, bs, xb, yb, swb, params, grads, state, acts,
                             gbuf, layers, lf, C.SPARSE_SOFTMAX_CE, 0, C.ADAM, hyper, lrs,
                             1, 3, 1, C.ACC_SPARSE, 0.5, stats)  # fmt: skip
        ev = np.zeros(C.STAT_LEN)
        mod.run_epoch(X, Y, SW, order, bs, xb, yb, swb, params, grads, state, acts, gbuf,
                      layers, lf, C.SPARSE_SOFTMAX_CE, 0, C.ADAM, hyper, lrs, 4, 3, 0,
                      C.ACC_SPARSE, 0.5, ev)  # fmt: skip
        results.append((done, stats, params, hyper, ev))
    (d1, s1, p1, h1, e1), (d2, s2, p2, h2, e2) = results
    assert d1 == d2 == 3, f"batches done {d1} vs {d2}"
    _close("run_epoch train stats", s1, s2, 1e-4, 1e-6)
    _close("run_epoch eval stats", e1, e2, 1e-4, 1e-6)
    _close("run_epoch hyper", h1, h2, 0, 0)
    err = _close("run_epoch params", p1, p2, 1e-4, 1e-6)
    return f"10 rows, batch 4 (last 2), train + eval: params max abs err {err:.2e}"


def check_run_epoch_flags_non_finite(cu):
    """An infinite optimizer state entry: finite loss, every batch done, the flag set."""
    flags = []
    for mod in (cu, ref):
        rng = _rng(16)
        layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, 4)
        X, Y = _randn(rng, 8, 4), rng.integers(0, 3, (8, 1)).astype(F32)
        grads, state = np.zeros_like(params), np.zeros((2, params.size), F32)
        state[1, 3] = np.inf
        stats = np.zeros(C.STAT_LEN)
        done = mod.run_epoch(X, Y, np.ones(8, F32), np.arange(8, dtype=np.int64), 4,
                             X[:4].copy(), Y[:4].copy(), np.ones(4, F32), params, grads,
                             state, acts, gbuf, layers, lf, C.SPARSE_SOFTMAX_CE, 0, C.ADAM,
                             np.array([0.01, 0.9, 0.999, 1e-7, 0.0]), np.full(2, 0.01), 1, 3,
                             1, C.ACC_SPARSE, 0.5, stats)  # fmt: skip
        flags.append((done, stats[C.STAT_NONFINITE], np.isfinite(stats[C.STAT_LOSS])))
    assert flags[0] == flags[1] == (2, 1.0, True), flags
    return "inf in Adam's v: 2 batches done, flag 1 (as the reference)"


def check_device_resident(cu):
    """The stack on device arrays: same result as with host arrays."""
    l_host, p_host, _, _ = _train(cu, F32, 1)
    rng = _rng(13)
    n = 6
    layers, lf, params, acts, gbuf = make_stack(rng, 4, SPEC, n)
    x = _randn(rng, n, 4)
    y = rng.integers(0, 3, (n, 1)).astype(F32)
    dev = {k: cu.to_device(v) for k, v in dict(x=x, y=y, sw=np.ones(n, F32), params=params,
                                                acts=acts, gbuf=gbuf).items()}  # fmt: skip
    grads, state = cu.zeros(params.size, F32), cu.zeros((2, params.size), F32)
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0])
    losses = [cu.train_step(dev["x"], dev["y"], dev["sw"], dev["params"], grads, state,
                            dev["acts"], dev["gbuf"], layers, lf, C.SPARSE_SOFTMAX_CE, 0,
                            C.ADAM, hyper, step, 5) for step in (1,)]  # fmt: skip
    assert all(isinstance(v, float) for v in losses)
    _close("device losses", losses, l_host, 1e-6, 1e-7)
    _close("device params", cu.to_host(dev["params"]), p_host, 1e-6, 1e-7)
    return "a step on device buffers == the host-staged step"


# ---------------------------------------------------------------------------------------
# Larger shapes, for a real GPU only (far too slow for the simulator)


def device_dense_large(cu):
    rng = _rng(20)
    worst = 0.0
    x, w, b = _dense_case(rng, 257, 300, 129, F32)
    out = np.zeros((257, 129), F32)
    _, _, a_cu, a_ref = _both("dense_forward", cu, [x, w, b, out, C.TANH, 0.0], [3])
    worst = max(worst, _cmp_outputs("dense_fwd large", a_cu, a_ref, [3], F32, 300))
    y = a_ref[3]
    dout = _randn(rng, 257, 129)
    args = [x, w, y, dout, np.zeros_like(dout), np.zeros_like(x), np.zeros_like(w),
            np.zeros_like(b), C.TANH, 0.0, 1]  # fmt: skip
    _, _, a_cu, a_ref = _both("dense_backward", cu, args, [4, 5, 6, 7])
    worst = max(worst, _cmp_outputs("dense_bwd large", a_cu, a_ref, [4, 5, 6, 7], F32, 300))
    return f"257x300x129 forward + backward, max abs err {worst:.2e}"


def device_softmax_ce_large(cu):
    rng = _rng(21)
    z = _randn(rng, 257, 1000, scale=3.0)
    labels = rng.integers(0, 1000, 257).astype(F32)
    sw = rng.uniform(0.5, 2.0, 257).astype(F32)
    args = [z, labels, sw, np.zeros_like(z), np.zeros_like(z)]
    l_cu, l_ref, a_cu, a_ref = _both("sparse_softmax_cross_entropy", cu, args, [3, 4])
    _close("large loss", l_cu, l_ref, 1e-5, 1e-6)
    err = _cmp_outputs("large sparse", a_cu, a_ref, [3, 4], F32, 1000)
    return f"257x1000, max abs err {err:.2e}"


def device_run_epoch_large(cu):
    spec = ((C.DENSE, 32, C.TANH, 0.0, 0.0, 1e-4), (C.DENSE, 10, C.LINEAR, 0.0, 0.0, 0.0))
    res = []
    for mod in (cu, ref):
        rng = _rng(22)
        bs = 64
        layers, lf, params, acts, gbuf = make_stack(rng, 64, spec, bs)
        params *= 0.3
        X = _randn(rng, 1000, 64)
        Y = rng.integers(0, 10, (1000, 1)).astype(F32)
        SW = np.ones(1000, F32)
        order = rng.permutation(1000).astype(np.int64)
        bufs = np.zeros((bs, 64), F32), np.zeros((bs, 1), F32), np.zeros(bs, F32)
        grads, state = np.zeros_like(params), np.zeros((2, params.size), F32)
        hyper = np.array([1e-3, 0.9, 0.999, 1e-7, 0.0])
        stats = np.zeros(C.STAT_LEN)
        done = mod.run_epoch(X, Y, SW, order, bs, *bufs, params, grads, state, acts, gbuf,
                             layers, lf, C.SPARSE_SOFTMAX_CE, 0, C.ADAM, hyper,
                             np.full(16, 1e-3), 1, 0, 1, C.ACC_SPARSE, 0.5, stats)  # fmt: skip
        res.append((done, stats, params))
    assert res[0][0] == res[1][0] == 16
    _close("large epoch stats", res[0][1], res[1][1], 1e-3, 1e-4)
    err = _close("large epoch params", res[0][2], res[1][2], 1e-3, 1e-5)
    return f"1000 rows 64-32-10 batch 64, Adam: params max abs err {err:.2e}"


def _named(prefix):
    return {
        name[len(prefix) :]: fn
        for name, fn in sorted(globals().items())
        if name.startswith(prefix) and callable(fn)
    }


CHECKS = _named("check_")
DEVICE_CHECKS = _named("device_")


def run_check(name, cu=None, check=None):
    """Runs one check; returns {name, ok, info, seconds}."""
    if cu is None:
        from fastnn.kernels import cuda as cu
    check = check or CHECKS[name]
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # uint64 wrap-around in the hash
            info = check(cu)
        ok = True
    except Exception as exc:  # noqa: BLE001 - reported to the test
        info, ok = f"{type(exc).__name__}: {exc}", False
    return {"name": name, "ok": ok, "info": info, "seconds": time.perf_counter() - t0}


def main(argv):
    names = [a for a in argv if not a.startswith("--")] or list(CHECKS)
    # simulator threads do not inherit catch_warnings: silence the hash's wrap-around there
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="overflow encountered")
    from fastnn.kernels import cuda as cu

    cu.check_available()
    for name in names:
        print(json.dumps(run_check(name, cu)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
