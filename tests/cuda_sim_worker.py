"""CUDA kernels == NumPy reference, per op, on tiny shapes that cross the GEMM tiles (8x8
under the simulator, 16x16 on a GPU), the simulator's launch blocks and row chunks; and
plans of real fastnn layers (``fastnn._plan.build_plan``) through the whole-network ops.

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
    # launch configurations A, B, A of one kernel (the simulator's kernel[grid, block]
    # reconfigures the kernel object itself: nothing may keep an old configuration)
    for n, i in ((9, 10), (3, 4), (9, 10)):
        x, w, b = _dense_case(rng, n, i, 3, F32)
        args = [x, w, b, np.zeros((n, 3), F32), C.LINEAR, 0.0]
        _, _, a_cu, a_ref = _both("dense_forward", cu, args, [3])
        _cmp_outputs(f"dense_fwd {n}x{i}x3 after another launch", a_cu, a_ref, [3], F32, i)
    return (f"17x33 @ 33x5 (relu, softmax f32; tanh f64), launch shapes A-B-A, max abs err "
            f"{worst:.2e}")  # fmt: skip


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
    off = [0.0] * C.N_CLIP  # the clip entries before the weight decay entry
    hyper = [(C.SGD, [0.1]), (C.MOMENTUM, [0.1, 0.9, 1]), (C.ADAGRAD, [0.1, 1e-7]),
             (C.RMSPROP, [0.01, 0.9, 1e-7]), (C.ADAM, [1e-3, 0.9, 0.999, 1e-8, 0.01]),
             (C.AMSGRAD, [1e-3, 0.9, 0.999, 1e-8, 0.01]),
             (C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.5, 1]), (C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.5, 0]),
             (C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.0, 1, *off, 0.2]),
             (C.SGD, [0.1, *off, 0.2]), (C.MOMENTUM, [0.1, 0.9, 0, *off, 0.2])]  # fmt: skip
    for code, h in hyper:
        state = np.abs(_randn(rng, max(1, C.STATE_SLOTS[code]), n))
        if code == C.RMSPROP_MC:  # a mean gradient with mean^2 <= sq: sqrt(sq - mean^2) real
            state[2] = 0.5 * np.sqrt(state[0])
        args = [p, g, state, code, np.array(h, np.float64), 2]
        _, _, a_cu, a_ref = _both("optimizer_update", cu, args, [0, 2])
        _cmp_outputs(f"optimizer_update {code}", a_cu, a_ref, [0, 2], F32)
    return "5 update kernels + optimizer_update for every code, weight decay"


def _metric_table(mode, threshold=0.5):
    if mode == C.ACC_NONE:
        return np.zeros((0, C.M_COLS), np.int64), np.zeros(0)
    return np.array([[mode, C.STAT_CORRECT, 0, 0]], np.int64), np.array([threshold])


def check_batch_stats(cu):
    rng = _rng(11)
    out = rng.uniform(size=(9, 4)).astype(F32)
    onehot = np.eye(4, dtype=F32)[rng.integers(0, 4, 9)]
    labels = rng.integers(0, 4, (9, 1)).astype(F32)
    binary = (rng.uniform(size=(9, 4)) > 0.5).astype(F32)
    for mode, y in ((C.ACC_SPARSE, labels), (C.ACC_CATEGORICAL, onehot),
                    (C.ACC_BINARY, binary), (C.ACC_NONE, onehot)):  # fmt: skip
        s1, s2 = np.arange(6, dtype=np.float64), np.arange(6, dtype=np.float64)
        cu.batch_stats(out, y, *_metric_table(mode), s1)
        ref.batch_stats(out, y, *_metric_table(mode), s2)
        _close(f"batch_stats mode {mode}", s1, s2, 1e-9, 1e-9)
    tables = (
        (onehot, np.array([[C.M_TOP_K, 6, 2, 0]])),
        (labels, np.array([[C.M_SPARSE_TOP_K, 6, 1, 0]])),
        (binary, np.array([[C.M_CONFUSION, 6, 0, 0], [C.M_HISTOGRAM, 9, 5, 1]])),
    )
    for y, table in tables:
        thr = np.full(len(table), 0.5)
        s1, s2 = np.zeros(19), np.zeros(19)
        cu.batch_stats(out, y, table.astype(np.int64), thr, s1)
        ref.batch_stats(out, y, table.astype(np.int64), thr, s2)
        _close(f"batch_stats table {table[:, 0]}", s1, s2, 1e-9, 1e-9)
    wide = out * 3 - 1  # outputs outside [0, 1]: the histogram counts them as 0 and 1
    table = np.array([[C.M_HISTOGRAM, 6, 5, 0]], np.int64)
    s1, s2 = np.zeros(16), np.zeros(16)
    cu.batch_stats(wide, binary, table, np.full(1, 0.5), s1)
    ref.batch_stats(wide, binary, table, np.full(1, 0.5), s2)
    _close("batch_stats histogram outside [0, 1]", s1, s2, 1e-9, 1e-9)
    return "4 accuracy modes, top-k, confusion, histogram (also of outputs outside [0, 1])"


# ---------------------------------------------------------------------------------------
# Normalisation ops (columns of x (R, C)): 13 rows cross the simulator's 8-row chunks and
# 9 columns its 8-column blocks


def _bn_inputs(rng, r=13, c=9, dtype=F32):
    x = _randn(rng, r, c, dtype=dtype, scale=2.0) + dtype(5.0)  # |mean| >> std: the shift
    gamma, beta = _randn(rng, c, dtype=dtype), _randn(rng, c, dtype=dtype)
    mm, mv = _randn(rng, c, dtype=dtype), np.abs(_randn(rng, c, dtype=dtype)) + dtype(0.5)
    return x, gamma, beta, mm, mv


def check_batchnorm_forward(cu):
    rng = _rng(17)
    worst = 0.0
    empty = np.zeros(0, F32)
    cases = ((1, True, True, F32), (1, False, True, F32), (0, True, False, F32),
             (1, True, True, np.float64))  # fmt: skip
    for training, scale, center, dtype in cases:
        x, gamma, beta, mm, mv = _bn_inputs(rng, dtype=dtype)
        g = gamma if scale else empty.astype(dtype)
        b = beta if center else empty.astype(dtype)
        c = x.shape[1]
        args = [x, g, b, mm, mv, np.zeros((2, c), dtype), np.zeros_like(x),
                np.zeros((2, c)), training, 0.9, 1e-3]  # fmt: skip
        _, _, a_cu, a_ref = _both("batchnorm_forward", cu, args, [3, 4, 5, 6, 7])
        label = f"bn_fwd train={training} scale={scale} center={center} {np.dtype(dtype)}"
        worst = max(worst, _cmp_outputs(label, a_cu, a_ref, [3, 4, 5, 6, 7], dtype, 13))
    x, gamma, beta, mm, mv = _bn_inputs(rng)  # out aliasing x
    x1, x2, m1, m2, v1, v2 = x.copy(), x.copy(), mm.copy(), mm.copy(), mv.copy(), mv.copy()
    s1, s2 = np.zeros((2, 9), F32), np.zeros((2, 9), F32)
    cu.batchnorm_forward(x1, gamma, beta, m1, v1, s1, x1, np.zeros((2, 9)), 1, 0.99, 1e-3)
    ref.batchnorm_forward(x2, gamma, beta, m2, v2, s2, x2, np.zeros((2, 9)), 1, 0.99, 1e-3)
    _close("bn_fwd in place", x1, x2, *_tol(F32, 13))
    _close("bn_fwd in place moving var", v1, v2, *_tol(F32, 13))
    return f"13x9, train/infer, gamma/beta absent, f32/f64, in place; max abs err {worst:.2e}"


def check_batchnorm_backward(cu):
    rng = _rng(18)
    worst = 0.0
    for scale, center, need_dx in ((True, True, 1), (False, True, 1), (True, False, 0)):
        x, gamma, beta, mm, mv = _bn_inputs(rng)
        saved = np.zeros((2, 9), F32)
        ref.batchnorm_forward(x, gamma, beta, mm, mv, saved, np.zeros_like(x),
                              np.zeros((2, 9)), 1, 0.99, 1e-3)  # fmt: skip
        dout = _randn(rng, 13, 9)
        g = gamma if scale else np.zeros(0, F32)
        dg = np.zeros(9 if scale else 0, F32)
        db = np.zeros(9 if center else 0, F32)
        args = [x, g, saved, dout, np.full_like(x, 7.0), dg, db, np.zeros((2, 9)), need_dx]
        _, _, a_cu, a_ref = _both("batchnorm_backward", cu, args, [4, 5, 6, 7])
        label = f"bn_bwd scale={scale} center={center} need_dx={need_dx}"
        worst = max(worst, _cmp_outputs(label, a_cu, a_ref, [4, 5, 6, 7], F32, 13))
    d1, d2 = dout.copy(), dout.copy()  # dx aliasing dout
    cu.batchnorm_backward(x, gamma, saved, d1, d1, np.zeros(9, F32), np.zeros(9, F32),
                          np.zeros((2, 9)), 1)  # fmt: skip
    ref.batchnorm_backward(x, gamma, saved, d2, d2, np.zeros(9, F32), np.zeros(9, F32),
                           np.zeros((2, 9)), 1)  # fmt: skip
    _close("bn_bwd in place", d1, d2, *_tol(F32, 13))
    return f"13x9, gamma/beta absent, need_dx 0/1, in place; max abs err {worst:.2e}"


def check_batchnorm_inference_backward(cu):
    rng = _rng(20)
    worst = 0.0
    for scale, dtype in ((True, F32), (False, F32), (True, np.float64)):
        x, gamma, beta, mm, mv = _bn_inputs(rng, dtype=dtype)
        saved = np.zeros((2, 9), dtype)
        ref.batchnorm_forward(x, gamma, beta, mm, mv, saved, np.zeros_like(x),
                              np.zeros((2, 9)), 0, 0.99, 1e-3)  # fmt: skip
        g = gamma if scale else np.zeros(0, dtype)
        args = [g, saved, _randn(rng, 13, 9, dtype=dtype), np.full_like(x, 7.0)]
        _, _, a_cu, a_ref = _both("batchnorm_inference_backward", cu, args, [3])
        label = f"bn_inference_bwd scale={scale} {np.dtype(dtype)}"
        worst = max(worst, _cmp_outputs(label, a_cu, a_ref, [3], dtype, 2))
    d1, d2 = args[2].copy(), args[2].copy()  # dx aliasing dout
    cu.batchnorm_inference_backward(gamma, saved, d1, d1)
    ref.batchnorm_inference_backward(gamma, saved, d2, d2)
    _close("bn_inference_bwd in place", d1, d2, *_tol(np.float64, 2))
    return f"13x9, gamma absent, f32/f64, in place; max abs err {worst:.2e}"


def check_normalization(cu):
    rng = _rng(19)
    x = _randn(rng, 7, 9, scale=3.0)
    mean = _randn(rng, 9)
    var = np.abs(_randn(rng, 9))
    var[0] = 0.0  # the NORM_EPS floor
    _, _, a_cu, a_ref = _both("normalization_forward", cu, [x, mean, var, np.zeros_like(x)],
                              [3])  # fmt: skip
    worst = _cmp_outputs("norm_fwd", a_cu, a_ref, [3], F32)
    dout = _randn(rng, 7, 9)
    _, _, a_cu, a_ref = _both("normalization_backward", cu, [var, dout, np.zeros_like(x)], [2])
    worst = max(worst, _cmp_outputs("norm_bwd", a_cu, a_ref, [2], F32))
    x1, x2 = x.copy(), x.copy()
    cu.normalization_forward(x1, mean, var, x1)
    ref.normalization_forward(x2, mean, var, x2)
    _close("norm_fwd in place", x1, x2, *_tol(F32))
    return f"forward, backward, variance 0, in place; max abs err {worst:.2e}"


# ---------------------------------------------------------------------------------------
# Plans of layers over flat buffers, built by fastnn's own plan builder from real layers


def mlp_layers():
    """4 -> Dense(5, relu, l2) -> Dropout(0.25) -> Dense(3, l1)."""
    from fastnn.layers import Dense, Dropout
    from fastnn.regularizers import L1, L2

    return (4,), [Dense(5, activation="relu", kernel_regularizer=L2(0.01)), Dropout(0.25),
                  Dense(3, kernel_regularizer=L1(0.001))]  # fmt: skip


def norm_layers():
    """(2, 4) samples -> Normalization -> Dense(5, tanh) -> BatchNormalization (no beta) ->
    Normalization -> Activation(leaky_relu) -> Flatten -> Dropout(0.2) -> Dense(3)."""
    from fastnn.layers import (
        Activation,
        BatchNormalization,
        Dense,
        Dropout,
        Flatten,
        Normalization,
    )

    return (2, 4), [Normalization(), Dense(5, activation="tanh"),
                    BatchNormalization(momentum=0.9, center=False), Normalization(),
                    Activation("leaky_relu"), Flatten(), Dropout(0.2), Dense(3)]  # fmt: skip


def frozen_bn_layers():
    """4 -> Dense(5, tanh) -> frozen BatchNormalization (inference mode) -> Dense(3)."""
    from fastnn.layers import BatchNormalization, Dense

    frozen = BatchNormalization()
    frozen.trainable = False
    return (4,), [Dense(5, activation="tanh"), frozen, Dense(3)]


def bn_layers():
    """4 -> Dense(5, relu) -> BatchNormalization -> Dense(3)."""
    from fastnn.layers import BatchNormalization, Dense

    return (4,), [Dense(5, activation="relu"), BatchNormalization(), Dense(3)]


class Net:
    """A plan and fresh buffers (host arrays) for ``rows``-sample batches of ``layers``."""

    def __init__(self, make_layers, rows, dtype=F32, seed=0):
        from fastnn._engine import Engine
        from fastnn._plan import build_plan

        rng = _rng(seed)
        input_shape, layers = make_layers()
        shape = input_shape
        for layer in layers:
            layer.build(shape, dtype, rng, backend="numpy")
            shape = layer.output_shape
        offsets, n_params, n_nontrain = Engine._layout(layers)
        plan = build_plan(layers, offsets, input_shape, rows)
        self.plan = plan.args
        self.n_in = int(np.prod(input_shape))
        self.n_out = plan.output_size
        self.output_offset = plan.output_offset
        self.params = (rng.standard_normal(n_params) * 0.5).astype(dtype)
        self.nontrain = (np.abs(rng.standard_normal(n_nontrain)) + 0.5).astype(dtype)
        self.grads = np.zeros(n_params, dtype)
        self.state = np.zeros((3, n_params), dtype)  # up to AMSGRAD's / RMSPROP_MC's 3 slots
        self.acts = np.zeros(plan.acts_size, dtype)
        self.gbuf = np.zeros(plan.gbuf_size, dtype)
        self.acc = np.zeros(plan.acc_size)
        self.dtype = dtype

    def copy(self):
        other = object.__new__(Net)
        other.__dict__.update(
            {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}
        )
        return other

    @property
    def net(self):
        return self.params, self.grads, self.state, self.nontrain

    @property
    def work(self):
        return self.acts, self.gbuf, self.acc

    def compare(self, label, other, names, k=5, rtol=None, atol=None):
        tol = _tol(self.dtype, k) if rtol is None else (rtol, atol)
        return max(_close(f"{label} {name}", getattr(self, name), getattr(other, name), *tol)
                   for name in names)  # fmt: skip


def check_stack_forward_backward(cu):
    worst = 0.0
    for make in (mlp_layers, norm_layers, frozen_bn_layers):
        rng = _rng(12)
        n = 3
        base = Net(make, n)
        x = _randn(rng, n, base.n_in)
        a, b = base.copy(), base.copy()
        cu.forward_stack(x, a.plan, a.net, a.work, 1, 11, 2)
        ref.forward_stack(x, b.plan, b.net, b.work, 1, 11, 2)
        worst = max(worst, a.compare(f"{make.__name__} forward", b, ("acts", "nontrain", "acc")))
        dz_off = int(b.plan[0][-1, C.P_DOUT_OFF])
        b.gbuf[dz_off : dz_off + n * b.n_out] = _randn(rng, n * b.n_out)
        a.gbuf[...] = b.gbuf
        a.acts[...] = b.acts  # the same saved tensors for both backwards
        p1 = cu.backward_stack(x, a.plan, a.net, a.work, 11, 2)
        p2 = ref.backward_stack(x, b.plan, b.net, b.work, 11, 2)
        _close(f"{make.__name__} penalty", p1, p2, 1e-6, 1e-9)
        worst = max(worst, a.compare(f"{make.__name__} backward", b, ("grads", "gbuf", "acc"),
                                     k=6))  # fmt: skip
        # inference: moving statistics, no dropout
        a2, b2 = base.copy(), base.copy()
        cu.forward_stack(x, a2.plan, a2.net, a2.work, 0, 0, 0)
        ref.forward_stack(x, b2.plan, b2.net, b2.work, 0, 0, 0)
        worst = max(worst, a2.compare(f"{make.__name__} inference", b2, ("acts", "nontrain")))
    return (f"mlp (dense/dropout/dense, l1, l2), norm (normalization, bn, activation, "
            f"flatten, dropout on (2, 4) samples) and a frozen bn after a dense: max abs err "
            f"{worst:.2e}")  # fmt: skip


def check_stack_row0(cu):
    """A shard of rows (row0 = 2) of the mlp's batch: the reference's masks of those rows,
    forward and backward."""
    rng = _rng(13)
    base = Net(mlp_layers, 2)
    x = _randn(rng, 2, base.n_in)
    a, b = base.copy(), base.copy()
    cu.forward_stack(x, a.plan, a.net, a.work, 1, 11, 2, 2)
    ref.forward_stack(x, b.plan, b.net, b.work, 1, 11, 2, 2)
    worst = a.compare("row0 forward", b, ("acts",))
    dz_off = int(b.plan[0][-1, C.P_DOUT_OFF])
    b.gbuf[dz_off : dz_off + 2 * b.n_out] = _randn(rng, 2 * b.n_out)
    a.gbuf[...] = b.gbuf
    cu.backward_stack(x, a.plan, a.net, a.work, 11, 2, 2)
    ref.backward_stack(x, b.plan, b.net, b.work, 11, 2, 2)
    worst = max(worst, a.compare("row0 backward", b, ("grads", "gbuf"), k=6))
    return f"mlp shard at row 2, forward and backward: max abs err {worst:.2e}"


def check_stack_refuses_kinds(cu):
    net = Net(mlp_layers, 2)
    x = np.ones((2, 4), F32)
    layers = net.plan[0].copy()
    layers[1, C.P_KIND] = 99
    msgs = []
    before = net.acts.copy()
    batch = (x, np.zeros((2, 3), F32), np.ones(2, F32))
    calls = (
        lambda plan: cu.forward_stack(x, plan, net.net, net.work, 1, 0, 1),
        lambda plan: cu.backward_stack(x, plan, net.net, net.work, 0, 1),
        lambda plan: cu.eval_step(
            batch, plan, net.net, net.work, (C.MSE, 0, *_metric_table(C.ACC_NONE))
        ),
    )
    for call in calls:
        try:
            call((layers, net.plan[1], net.plan[2]))
        except ValueError as exc:
            msgs.append(str(exc))
        else:
            raise AssertionError("an unknown layer kind was accepted")
    assert all("99" in m and "layer 1" in m for m in msgs), msgs
    assert np.array_equal(net.acts, before), "acts written before the kind was refused"
    bad_act = net.plan[0].copy()
    bad_act[0, C.P_ACT] = 42
    try:
        cu.forward_stack(x, (bad_act, net.plan[1], net.plan[2]), net.net, net.work, 1, 0, 1)
    except ValueError as exc:
        assert "activation code 42" in str(exc) and "layer 0" in str(exc), exc
    else:
        raise AssertionError("an unknown activation code was accepted")
    assert np.array_equal(net.acts, before), "acts written before the plan was refused"
    saved = cu.KINDS
    cu.KINDS = frozenset({C.DENSE, C.ACTIVATION})  # a backend without Dropout
    try:
        cu.forward_stack(x, net.plan, net.net, net.work, 1, 0, 1)
    except ValueError as exc:
        msgs.append(str(exc))
        assert "Dropout" in str(exc) and "layer 1" in str(exc), exc
    else:
        raise AssertionError("a kind outside KINDS was accepted")
    finally:
        cu.KINDS = saved
    return msgs[0] + " / " + msgs[-1]


def check_refuses_keras_codes(cu):
    """Keras 3's extra activations, losses and Nadam are not CUDA kernels: the backend
    refuses them with a ValueError naming the backends that run them, before writing, and
    a model refuses them at build (activations) or compile (losses, optimizer)."""
    import fastnn
    from fastnn.layers import Dense

    net = Net(mlp_layers, 2)
    x = np.ones((2, 4), F32)
    before = net.acts.copy()
    assert not cu.ACTS & {C.ELU, C.SELU, C.GELU, C.SILU, C.SOFTPLUS}
    msgs = []
    for act in (C.ELU, C.GELU, C.SOFTPLUS):
        layers = net.plan[0].copy()
        layers[0, C.P_ACT] = act
        plan = (layers, net.plan[1], net.plan[2])
        msgs.append(_refused(lambda p=plan: cu.forward_stack(x, p, net.net, net.work, 1, 0, 1)))
    assert np.array_equal(net.acts, before), "acts written before the plan was refused"
    z = np.ones((2, 3), F32)
    for code in (C.HUBER, C.KL_DIVERGENCE, C.POISSON):
        msgs.append(_refused(lambda c=code: cu.loss_grad(z, z, np.ones(2, F32), z.copy(),
                                                         z.copy(), c)))  # fmt: skip
    p = np.ones(3, F32)
    msgs.append(_refused(lambda: cu.optimizer_update(p, p.copy(), np.zeros((2, 3), F32),
                                                     C.NADAM, np.array([0.1, 0.9, 0.9, 1e-7]),
                                                     1)))  # fmt: skip
    assert np.array_equal(p, np.ones(3, F32)), "params updated by a refused optimizer"
    model = fastnn.Sequential([Dense(3, activation="gelu", input_dim=4)], backend="cuda")
    msgs.append(_refused(lambda: model.predict(x)))
    assert "'gelu'" in msgs[-1], msgs[-1]
    ok = fastnn.Sequential([Dense(3, input_dim=4)], backend="cuda")
    msgs.append(_refused(lambda: ok.compile("nadam", "mse")))
    msgs.append(_refused(lambda: ok.compile("adam", "huber")))
    msgs.append(_refused(lambda: ok.compile(fastnn.optimizers.SGD(clipnorm=1.0), "mse")))
    assert not cu.CLIPPING and "clip" in msgs[-1]
    hyper = np.array([0.1, 1.0, 0.0, 0.0])  # SGD with clipnorm 1
    msgs.append(_refused(lambda: cu.clip_gradients(p, net.plan[0], C.SGD, hyper)))
    cu.clip_gradients(p, net.plan[0], C.SGD, np.array([0.1, 0.0, 0.0, 0.0]))  # off: no-op
    return msgs[0] + " / " + msgs[-1]


def check_model_pop_add(cu):
    """A model on the cuda backend: pop and add back of its output layer after a step
    keeps the device weights, moving statistics and Adam state (the next step equals
    the untouched model's); a new layer then trains from fresh state."""
    import fastnn
    from fastnn.layers import BatchNormalization, Dense

    rng = _rng(14)
    x, y = _randn(rng, 6, 4), rng.integers(0, 3, 6)

    def model():
        m = fastnn.Sequential([Dense(5, activation="relu", input_dim=4), BatchNormalization(),
                               Dense(3, activation="softmax")], seed=2, backend="cuda")  # fmt: skip
        m.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        m.train_on_batch(x, y)
        return m

    straight, edited = model(), model()
    edited.add(edited.pop())
    for m in (straight, edited):
        m.train_on_batch(x, y)
    for i, (a, b) in enumerate(zip(edited.get_weights(), straight.get_weights())):
        _close(f"pop/add weight {i}", a, b, 0, 0)
    edited.add(Dense(2, activation="softmax"))
    loss = edited.train_on_batch(x, y % 2)
    assert np.isfinite(loss), loss
    return f"{len(straight.get_weights())} arrays equal after pop/add, then a step with a new layer"


def _refused(call):
    try:
        call()
    except ValueError as exc:
        msg = str(exc)
        assert "cuda backend cannot" in msg and "cython, numba" in msg, msg
        return msg
    raise AssertionError("the cuda backend accepted a code it does not run")


def _train(mod, dtype, steps, make=mlp_layers, loss_code=C.SPARSE_SOFTMAX_CE, opt=C.ADAM,
           x_nan=False):  # fmt: skip
    rng = _rng(13)
    n = 6 if make is mlp_layers else 3
    net = Net(make, n, dtype)
    x = _randn(rng, n, net.n_in, dtype=dtype)
    if x_nan:
        x[1, 2] = np.nan
    if loss_code == C.SPARSE_SOFTMAX_CE:
        y = rng.integers(0, 3, (n, 1)).astype(dtype)
    else:
        y = _randn(rng, n, 3, dtype=dtype)
    sw = np.ones(n, dtype)
    hyper = {C.ADAM: [0.01, 0.9, 0.999, 1e-7, 0.0], C.MOMENTUM: [0.05, 0.9, 1],
             C.AMSGRAD: [0.01, 0.9, 0.999, 1e-7, 0.1],
             C.RMSPROP_MC: [0.01, 0.9, 1e-7, 0.5, 1, 0.0, 0.0, 0.0, 0.1]}[opt]  # fmt: skip
    hyper = np.array(hyper)
    losses = []
    for step in range(1, steps + 1):
        losses.append(mod.train_step((x, y, sw), net.plan, net.net, net.work,
                                     (loss_code, 0, *_metric_table(C.ACC_NONE)),
                                     (opt, hyper, np.zeros(1), step, 5)))  # fmt: skip
    return np.array(losses), net


def check_train_step(cu):
    l1, n1 = _train(cu, F32, 2)
    l2, n2 = _train(ref, F32, 2)
    _close("train_step losses", l1, l2, 1e-4, 1e-7)
    err = n1.compare("train_step", n2, ("params", "state", "acts"), rtol=1e-4, atol=1e-6)
    return f"2 steps 4-5-3 (relu, dropout, softmax CE, Adam): max abs err {err:.2e}"


def check_train_step_new_optimizers(cu):
    errs = []
    for opt in (C.AMSGRAD, C.RMSPROP_MC):
        l1, n1 = _train(cu, F32, 2, opt=opt)
        l2, n2 = _train(ref, F32, 2, opt=opt)
        _close(f"train_step {opt} losses", l1, l2, 1e-4, 1e-7)
        errs.append(n1.compare(f"train_step {opt}", n2, ("params", "state"), rtol=1e-4,
                               atol=1e-6))  # fmt: skip
    return f"2 steps 4-5-3, AdamW amsgrad / RMSprop momentum centered decay: {max(errs):.2e}"


def check_train_step_norm(cu):
    kw = dict(make=norm_layers, loss_code=C.MSE, opt=C.MOMENTUM)
    l1, n1 = _train(cu, F32, 2, **kw)
    l2, n2 = _train(ref, F32, 2, **kw)
    _close("train_step norm losses", l1, l2, 1e-4, 1e-7)
    err = n1.compare("train_step norm", n2, ("params", "state", "nontrain", "acts", "acc"),
                     rtol=1e-4, atol=1e-6)  # fmt: skip
    return f"2 steps of the norm net (MSE, Nesterov momentum): max abs err {err:.2e}"


def check_train_step_nan(cu):
    _, start = _train(ref, F32, 0)
    losses, net = _train(cu, F32, 1, x_nan=True)
    assert np.isnan(losses[0]), f"loss {losses[0]} should be NaN"
    assert np.array_equal(net.params, start.params), "parameters changed on a NaN loss"
    assert not net.state.any(), "optimizer state changed on a NaN loss"
    return "NaN loss: nothing updated"


def check_eval_step(cu):
    info = []
    for make in (mlp_layers, norm_layers):
        rng = _rng(14)
        n = 3
        a = Net(make, n)
        b = a.copy()
        x, y = _randn(rng, n, a.n_in), _randn(rng, n, 3)
        sw = rng.uniform(0.5, 2.0, n).astype(F32)
        loss = (C.MSE, 0, *_metric_table(C.ACC_NONE))
        l_cu = cu.eval_step((x, y, sw), a.plan, a.net, a.work, loss)
        l_ref = ref.eval_step((x, y, sw), b.plan, b.net, b.work, loss)
        _close(f"eval_step {make.__name__} loss", l_cu, l_ref, 1e-5, 1e-7)
        a.compare(f"eval_step {make.__name__}", b, ("acts", "gbuf", "params", "nontrain"))
        info.append(f"{l_cu:.6g}")
    return f"MSE + penalty, mlp and norm nets, losses {', '.join(info)}"


def _epoch(mod, make, n_rows, bs, seed, state_inf=False, nontrain_inf=False, evaluate=True):
    rng = _rng(seed)
    net = Net(make, bs)
    if state_inf:
        net.state[1, 3] = np.inf
    if nontrain_inf:
        net.nontrain[-1] = np.inf  # the last moving variance
    X = _randn(rng, n_rows, net.n_in)
    Y = rng.integers(0, 3, (n_rows, 1)).astype(F32)
    SW = rng.uniform(0.5, 2.0, n_rows).astype(F32)
    order = rng.permutation(n_rows).astype(np.int64)
    ws = (np.zeros((bs, net.n_in), F32), np.zeros((bs, 1), F32), np.zeros(bs, F32), *net.work)
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0])
    lrs = np.array([0.01, 0.005, 0.002])
    loss = (C.SPARSE_SOFTMAX_CE, 0, *_metric_table(C.ACC_SPARSE))
    stats = np.zeros(C.STAT_LEN)
    done = mod.run_epoch((X, Y, SW, order, bs), net.plan, net.net, ws, loss,
                         (C.ADAM, hyper, lrs, 1, 3), 1, stats)  # fmt: skip
    ev = np.zeros(C.STAT_LEN)
    if evaluate:
        mod.run_epoch((X, Y, SW, order, bs), net.plan, net.net, ws, loss,
                      (C.ADAM, hyper, lrs, 4, 3), 0, ev)  # fmt: skip
    return done, stats, ev, hyper, net


def check_run_epoch(cu):
    worst = 0.0
    for make, n_rows, evaluate in ((mlp_layers, 6, True), (bn_layers, 5, False)):
        (d1, s1, e1, h1, n1), (d2, s2, e2, h2, n2) = (_epoch(m, make, n_rows, 4, 15,
                                                             evaluate=evaluate)
                                                      for m in (cu, ref))  # fmt: skip
        name = make.__name__
        assert d1 == d2 == -(-n_rows // 4), f"{name}: batches done {d1} vs {d2}"
        _close(f"run_epoch {name} train stats", s1, s2, 1e-4, 1e-6)
        _close(f"run_epoch {name} eval stats", e1, e2, 1e-4, 1e-6)
        _close(f"run_epoch {name} hyper", h1, h2, 0, 0)
        worst = max(worst, n1.compare(f"run_epoch {name}", n2, ("params", "state", "nontrain"),
                                      rtol=1e-4, atol=1e-6))  # fmt: skip
    return (f"mlp 6 rows (train + eval) and dense-bn-dense 5 rows (train), batch 4 (last "
            f"smaller): "
            f"max abs err {worst:.2e}")  # fmt: skip


def check_run_epoch_flags_non_finite(cu):
    """An infinite optimizer state or non-trainable entry: finite losses, every batch done,
    the flag set."""
    flags = []
    for kw in (dict(state_inf=True), dict(nontrain_inf=True)):
        for mod in (cu, ref):
            done, stats, _, _, _ = _epoch(mod, bn_layers, 3, 4, 16, evaluate=False, **kw)
            flags.append((done, stats[C.STAT_NONFINITE], bool(np.isfinite(stats[C.STAT_LOSS]))))
    assert flags == [(1, 1.0, True)] * 4, flags
    return "inf in Adam's v, inf in a moving variance: the batch done, flag 1 (as the reference)"


def check_device_resident(cu):
    """The plan on device arrays: same result as with host arrays."""
    l_host, n_host = _train(cu, F32, 1)
    rng = _rng(13)
    n = 6
    net = Net(mlp_layers, n)
    x = _randn(rng, n, 4)
    y = rng.integers(0, 3, (n, 1)).astype(F32)
    d = {k: cu.to_device(v) for k, v in dict(x=x, y=y, sw=np.ones(n, F32), params=net.params,
                                              nontrain=net.nontrain, acts=net.acts,
                                              gbuf=net.gbuf, acc=net.acc).items()}  # fmt: skip
    grads, state = cu.zeros(net.params.size, F32), cu.zeros((2, net.params.size), F32)
    hyper = np.array([0.01, 0.9, 0.999, 1e-7, 0.0])
    value = cu.train_step((d["x"], d["y"], d["sw"]), net.plan,
                          (d["params"], grads, state, d["nontrain"]),
                          (d["acts"], d["gbuf"], d["acc"]),
                          (C.SPARSE_SOFTMAX_CE, 0, *_metric_table(C.ACC_NONE)),
                          (C.ADAM, hyper, np.zeros(1), 1, 5))  # fmt: skip
    assert isinstance(value, float)
    _close("device loss", value, l_host[0], 1e-6, 1e-7)
    _close("device params", cu.to_host(d["params"]), n_host.params, 1e-6, 1e-7)
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
    from fastnn.layers import BatchNormalization, Dense
    from fastnn.regularizers import L2

    def make():
        return (64,), [Dense(32, activation="tanh", kernel_regularizer=L2(1e-4)),
                       BatchNormalization(), Dense(10)]  # fmt: skip

    res = []
    for mod in (cu, ref):
        rng = _rng(22)
        bs = 64
        net = Net(make, bs)
        net.params *= 0.3
        X = _randn(rng, 1000, 64)
        Y = rng.integers(0, 10, (1000, 1)).astype(F32)
        SW = np.ones(1000, F32)
        order = rng.permutation(1000).astype(np.int64)
        ws = (np.zeros((bs, 64), F32), np.zeros((bs, 1), F32), np.zeros(bs, F32), *net.work)
        hyper = np.array([1e-3, 0.9, 0.999, 1e-7, 0.0])
        stats = np.zeros(C.STAT_LEN)
        done = mod.run_epoch((X, Y, SW, order, bs), net.plan, net.net, ws,
                             (C.SPARSE_SOFTMAX_CE, 0, *_metric_table(C.ACC_SPARSE)),
                             (C.ADAM, hyper, np.full(16, 1e-3), 1, 0), 1, stats)  # fmt: skip
        res.append((done, stats, net))
    assert res[0][0] == res[1][0] == 16
    _close("large epoch stats", res[0][1], res[1][1], 1e-3, 1e-4)
    err = res[0][2].compare("large epoch", res[1][2], ("params", "nontrain"), rtol=1e-3,
                            atol=1e-5)  # fmt: skip
    return f"1000 rows 64-32-bn-10 batch 64, Adam: max abs err {err:.2e}"


def device_batchnorm_large(cu):
    rng = _rng(23)
    x, gamma, beta, mm, mv = _bn_inputs(rng, 20000, 67)
    args = [x, gamma, beta, mm, mv, np.zeros((2, 67), F32), np.zeros_like(x),
            np.zeros((2, 67)), 1, 0.99, 1e-3]  # fmt: skip
    _, _, a_cu, a_ref = _both("batchnorm_forward", cu, args, [3, 4, 5, 6, 7])
    worst = _cmp_outputs("bn_fwd large", a_cu, a_ref, [3, 4, 5, 6, 7], F32, 20000)
    dout = _randn(rng, 20000, 67)
    args = [x, gamma, a_ref[5], dout, np.zeros_like(x), np.zeros(67, F32), np.zeros(67, F32),
            np.zeros((2, 67)), 1]  # fmt: skip
    _, _, a_cu, a_ref = _both("batchnorm_backward", cu, args, [4, 5, 6, 7])
    worst = max(worst, _cmp_outputs("bn_bwd large", a_cu, a_ref, [4, 5, 6, 7], F32, 20000))
    return f"20000x67 (many row chunks) forward + backward, max abs err {worst:.2e}"


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
