"""Kernel correctness ladder: every compiled CPU backend == the NumPy reference.

Backends under test: every loadable CPU backend except the reference (numba, and cython
when its extension is built).  Per operation: float32 and float64, odd shapes (1x1, 7x5x3,
33x17x65), every activation / loss / optimizer code, the aliasing the contract allows,
inputs left unmodified.  Then whole layer stacks (forward, train/eval step, epochs), the
NaN rule, and one compiled signature per dtype after a training run.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastnn import backend
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from tests.kernel_cases import (
    ACC_NAMES,
    ACT_NAMES,
    ACTS,
    DTYPES,
    HYPER,
    LOSS_NAMES,
    LOSSES,
    OPT_NAMES,
    OPTIMIZERS,
    SHAPES,
    Stack,
    acc_mode_for,
    assert_close,
    compiled_backends,
    decayed_hyper,
    frozen_norm_stack,
    loss_args,
    make_targets,
    metrics_for,
    mixed_stack,
    mlp3,
    norm_stack,
    rng_for,
    train_steps,
)

BACKENDS = compiled_backends()
ALPHA = 0.1  # leaky_relu slope used throughout

pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled CPU backend loads here")


@pytest.fixture(params=BACKENDS)
def mod(request):
    """The kernel module of one compiled backend."""
    return backend.load(request.param)


dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
shapes = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
acts = pytest.mark.parametrize("act", ACTS, ids=ACT_NAMES.get)


def _copies(*arrays):
    return [a.copy() for a in arrays]


def _assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c, err_msg="an input was modified")


# ---------------------------------------------------------------------------------------
# 1. Contract


def _params(f):
    try:
        return list(inspect.signature(getattr(f, "py_func", f)).parameters)
    except (TypeError, ValueError):  # a compiled function without a readable signature
        return None


@pytest.mark.parametrize("name", BACKENDS)
def test_contract_every_op_with_the_reference_signature(name):
    module = backend.load(name)
    missing = [op for op in ref.OPS if not callable(getattr(module, op, None))]
    assert not missing, f"{name} lacks {missing}"
    for op in ref.OPS:
        params = _params(getattr(module, op))
        if params is not None:
            assert params == _params(getattr(ref, op)), f"{name}.{op} parameters differ"


# ---------------------------------------------------------------------------------------
# 2. Every op == reference


@dtypes
@shapes
@acts
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_activation_forward(mod, dtype, shape, act, inplace):
    n, _, o = shape
    x = (rng_for("af", shape, act).standard_normal((n, o)) * 3).astype(dtype)
    x.flat[0] = 0.0
    expected = np.empty_like(x)
    ref.activation_forward(x.copy(), expected, act, ALPHA)
    if inplace:
        got = x.copy()
        mod.activation_forward(got, got, act, ALPHA)
    else:
        got = np.full_like(x, np.nan)
        (x0,) = _copies(x)
        mod.activation_forward(x, got, act, ALPHA)
        _assert_unchanged([x], [x0])
    assert got.dtype == dtype
    assert_close(got, expected, dtype, k=o if act == C.SOFTMAX else 1, what="out")


@dtypes
@shapes
@acts
@pytest.mark.parametrize("inplace", [False, True], ids=["dx", "dx_is_dout"])
def test_activation_backward(mod, dtype, shape, act, inplace):
    n, _, o = shape
    rng = rng_for("ab", shape, act)
    y = np.empty((n, o), dtype)
    ref.activation_forward(rng.standard_normal((n, o)).astype(dtype), y, act, ALPHA)
    dout = rng.standard_normal((n, o)).astype(dtype)
    expected = np.empty_like(y)
    ref.activation_backward(y, dout.copy(), expected, act, ALPHA)
    y0, dout0 = _copies(y, dout)
    if inplace:
        got = dout.copy()
        mod.activation_backward(y, got, got, act, ALPHA)
        _assert_unchanged([y], [y0])
    else:
        got = np.full_like(y, np.nan)
        mod.activation_backward(y, dout, got, act, ALPHA)
        _assert_unchanged([y, dout], [y0, dout0])
    assert_close(got, expected, dtype, k=o if act == C.SOFTMAX else 1, what="dx")


def _dense_inputs(shape, dtype, key):
    n, i, o = shape
    rng = rng_for("dense", shape, key)
    x = rng.standard_normal((n, i)).astype(dtype)
    w = (rng.standard_normal((i, o)) / np.sqrt(i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return rng, x, w, b


@dtypes
@shapes
@acts
def test_dense_forward(mod, dtype, shape, act):
    _, x, w, b = _dense_inputs(shape, dtype, act)
    expected = np.empty((shape[0], shape[2]), dtype)
    ref.dense_forward(x, w, b, expected, act, ALPHA)
    inputs = [x, w, b]
    copies = _copies(*inputs)
    got = np.full_like(expected, np.nan)
    mod.dense_forward(x, w, b, got, act, ALPHA)
    _assert_unchanged(inputs, copies)
    assert_close(got, expected, dtype, k=shape[1] + shape[2], what="out")


@dtypes
@shapes
@acts
@pytest.mark.parametrize("alias", [False, True], ids=["dz", "dz_is_dout"])
@pytest.mark.parametrize("need_dx", [1, 0], ids=["need_dx", "no_dx"])
def test_dense_backward(mod, dtype, shape, act, alias, need_dx):
    n, i, o = shape
    rng, x, w, b = _dense_inputs(shape, dtype, act)
    y = np.empty((n, o), dtype)
    ref.dense_forward(x, w, b, y, act, ALPHA)
    dout = rng.standard_normal((n, o)).astype(dtype)
    outs_ref = [np.empty((n, o), dtype), np.zeros((n, i), dtype), np.empty((i, o), dtype),
                np.empty(o, dtype)]  # fmt: skip
    ref.dense_backward(x, w, y, dout.copy(), *outs_ref, act, ALPHA, need_dx)
    sentinel = np.full((n, i), 7.0, dtype)  # dx must stay untouched without need_dx
    dz = dout.copy() if alias else np.full((n, o), np.nan, dtype)
    dx, dw, db = sentinel.copy(), np.full((i, o), np.nan, dtype), np.full(o, np.nan, dtype)
    inputs = [x, w, y] + ([] if alias else [dout])
    copies = _copies(*inputs)
    mod.dense_backward(x, w, y, dz if alias else dout, dz, dx, dw, db, act, ALPHA, need_dx)
    _assert_unchanged(inputs, copies)
    k_act = o if act == C.SOFTMAX else 1
    assert_close(dz, outs_ref[0], dtype, k=k_act, what="dz")
    assert_close(db, outs_ref[3], dtype, k=n + k_act, what="db")
    assert_close(dw, outs_ref[2], dtype, k=n + k_act, scale=2.0, what="dw")
    if need_dx:
        assert_close(dx, outs_ref[1], dtype, k=o + k_act, scale=2.0, what="dx")
    else:
        np.testing.assert_array_equal(dx, sentinel)


#: Dense shapes (n, inputs, outputs) for the GEMMs in small-matrix blocks (_dense_xw/_dense_dw
#: in _cython.pyx: blocks with rows x the other two sizes <= 1e6, at least 4 batch rows and
#: 16 input rows): (66, 500, 130) blocks both, with a shorter last block (9 batch rows, 63
#: inputs); (64, 784, 256) is the MNIST network's first layer (4 and 49, no remainder);
#: (512, 300, 300) blocks x w only (dw blocks would be 2 rows); (64, 1000, 300) blocks dw only
#: (x w blocks would be 1 row); (40, 30, 20) blocks neither (one GEMM under the limit).
BLOCK_SHAPES = ((66, 500, 130), (64, 784, 256), (512, 300, 300), (64, 1000, 300), (40, 30, 20))


@dtypes
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_forward_blocked(mod, dtype, shape):
    """The Dense GEMM in blocks of rows, at shapes that select it and shapes that do not."""
    test_dense_forward(mod, dtype, shape, C.RELU)


@dtypes
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("need_dx", [1, 0], ids=["need_dx", "no_dx"])
def test_dense_backward_blocked(mod, dtype, shape, need_dx):
    """dw in blocks of input rows, at shapes that select it and shapes that do not."""
    test_dense_backward(mod, dtype, shape, C.RELU, False, need_dx)


@dtypes
@shapes
@pytest.mark.parametrize("blas", ["scipy", "numpy"])
def test_numba_gemm_through_either_blas(dtype, shape, blas):
    """numba_cpu calls NumPy's CBLAS when found, else SciPy's Fortran BLAS: both work."""
    if "numba" not in BACKENDS:
        pytest.skip("numba backend not available")
    from fastnn.kernels import numba_cpu

    n, i, o = shape
    rng, x, w, b = _dense_inputs(shape, dtype, blas)
    dz = rng.standard_normal((n, o)).astype(dtype)
    expected = [np.empty((n, o), dtype), np.empty((i, o), dtype), np.empty((n, i), dtype)]
    np.dot(x, w, out=expected[0])
    expected[0] += b
    np.dot(x.T, dz, out=expected[1])
    np.dot(dz, w.T, out=expected[2])
    got = [np.full_like(e, np.nan) for e in expected]
    numba_cpu._fill_blas_table(prefer_numpy=blas == "numpy")
    try:
        numba_cpu.dense_forward(x, w, b, got[0], C.LINEAR, 0.0)
        numba_cpu.dense_backward(x, w, got[0], dz.copy(), dz.copy(), got[2], got[1],
                                 np.empty(o, dtype), C.LINEAR, 0.0, 1)  # fmt: skip
    finally:
        numba_cpu._fill_blas_table()
    for name, g, e, k in zip(("out", "dw", "dx"), got, expected, (i, n, o)):
        assert_close(g, e, dtype, k=k, scale=2.0, what=name)


@dtypes
@shapes
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_dropout_forward_backward(mod, dtype, shape, rate, seed, inplace):
    n, _, o = shape
    x = rng_for("drop", shape, rate, seed).standard_normal((n, o)).astype(dtype)
    for op in ("dropout_forward", "dropout_backward"):
        expected = np.empty_like(x)
        getattr(ref, op)(x.copy(), expected, rate, seed)
        if inplace:
            got = x.copy()
            getattr(mod, op)(got, got, rate, seed)
        else:
            got = np.full_like(x, np.nan)
            x0 = x.copy()
            getattr(mod, op)(x, got, rate, seed)
            _assert_unchanged([x], [x0])
        # the same hash and the same single multiply: bit-identical
        np.testing.assert_array_equal(got, expected, err_msg=op)


@dtypes
def test_dropout_keeps_an_element_whose_hash_equals_the_threshold(mod, dtype):
    """keep iff (hash >> 40) >= int(rate * 2**24): pick the rate that puts element 0
    exactly on the threshold (random data almost never tests the boundary)."""
    seed = 4242
    with np.errstate(over="ignore"):
        base = ref._splitmix64(np.array([seed], dtype=np.uint64))[0]
        h0 = int(ref._splitmix64(np.array([base], dtype=np.uint64))[0] >> np.uint64(40))
    rate = h0 / 16777216.0
    assert ref.dropout_keep((1, 1), rate, seed)[0, 0]
    x = np.full((2, 3), 2.0, dtype)
    expected, got = np.empty_like(x), np.empty_like(x)
    ref.dropout_forward(x, expected, rate, seed)
    mod.dropout_forward(x, got, rate, seed)
    np.testing.assert_array_equal(got, expected)


def test_dropout_seed_and_mask_helpers():
    from fastnn.kernels import numba_cpu

    if "numba" not in BACKENDS:
        pytest.skip("numba backend not available")
    for seed, step, layer in [(0, 0, 0), (7, 3, 2), (2**40, 123456, 5)]:
        assert numba_cpu.dropout_seed(seed, step, layer) == ref.dropout_seed(seed, step, layer)
    for seed in (0, 99, 2**63 + 5, -3):
        np.testing.assert_array_equal(
            numba_cpu.dropout_keep((5, 7), 0.4, seed), ref.dropout_keep((5, 7), 0.4, seed)
        )


# Losses -------------------------------------------------------------------------------

LOGIT_LOSSES = {
    "softmax_cross_entropy": C.SOFTMAX_CE,
    "sparse_softmax_cross_entropy": C.SPARSE_SOFTMAX_CE,
    "sigmoid_binary_cross_entropy": C.SIGMOID_BCE,
}
PROB_LOSSES = {
    "categorical_crossentropy": C.CATEGORICAL_CE,
    "binary_crossentropy": C.BINARY_CE,
    "mean_squared_error": C.MSE,
    "mean_absolute_error": C.MAE,
}


def _loss_inputs(code, n, c, dtype, rng):
    """(out, y, sw) for a loss: logits, probabilities (some clipped) or predictions."""
    y = make_targets(code, n, c, rng, dtype)
    sw = rng.uniform(0.5, 1.5, n).astype(dtype)
    sw[n // 2] = 0.0
    if code in (C.CATEGORICAL_CE, C.BINARY_CE):
        out = rng.uniform(0.0, 1.0, (n, c))
        out.flat[0] = 0.0  # outside the clip range: zero gradient
        out.flat[-1] = 1.0
        if n * c > 2:
            out.flat[1] = 1e-9
    else:
        out = rng.standard_normal((n, c)) * 3
    return out.astype(dtype), y, sw


#: the loss kernels' shapes: SHAPES and rows wider than one buffer of terms (Cython's 256)
#: beyond SHAPES: rows wider than one 256-term loss buffer (600) and than one block of the
#: softmax cross-entropies (4100), and a batch of several row blocks ending in a partial one
loss_shapes = pytest.mark.parametrize(
    "shape",
    (*SHAPES, (3, 1, 600), (2, 1, 4100), (130, 1, 10)),
    ids=lambda s: "x".join(map(str, s)),
)


@dtypes
@loss_shapes
@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
@pytest.mark.parametrize("alias", ["none", "p_is_z", "p_is_dz"])
def test_logit_losses(mod, dtype, shape, name, alias):
    n, _, c = shape
    code = LOGIT_LOSSES[name]
    z, y, sw = _loss_inputs(code, n, c, dtype, rng_for("logit", name, shape))
    y_arg = y[:, 0].copy() if code == C.SPARSE_SOFTMAX_CE else y
    p_r, dz_r = np.empty_like(z), np.empty_like(z)
    loss_r = getattr(ref, name)(z.copy(), y_arg, sw, p_r, dz_r)
    zz, dz = z.copy(), np.full_like(z, np.nan)
    p = {"none": np.full_like(z, np.nan), "p_is_z": zz, "p_is_dz": dz}[alias]
    inputs = [y_arg, sw] + ([] if alias == "p_is_z" else [zz])
    copies = _copies(*inputs)
    loss = getattr(mod, name)(zz, y_arg, sw, p, dz)
    _assert_unchanged(inputs, copies)
    assert isinstance(loss, float)
    assert_close(loss, loss_r, dtype, k=n * c, scale=4.0, what="loss")
    assert_close(dz, dz_r, dtype, k=c, what="dz")
    if alias != "p_is_dz":
        assert_close(p, p_r, dtype, k=c, what="p")


@dtypes
@pytest.mark.parametrize("c", [0, 5])
@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
def test_logit_losses_of_no_rows(mod, dtype, c, name):
    """An empty batch gives the loss 0/0 = NaN (the reference's with classes; with none, the
    reference's np.max raises): never a crash."""
    z = np.zeros((0, c), dtype)
    y = np.zeros(0, np.int64) if LOGIT_LOSSES[name] == C.SPARSE_SOFTMAX_CE else z.copy()
    loss = getattr(mod, name)(z, y, np.zeros(0, dtype), z.copy(), z.copy())
    assert np.isnan(loss)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "sparse_softmax_cross_entropy"])
def test_softmax_losses_of_rows_without_classes(mod, name):
    """Rows of no classes have no max: an error (the reference's sparse loss rejects the labels
    first, with an IndexError), never a read past the empty rows."""
    z = np.zeros((3, 0), np.float32)
    y = np.zeros(3, np.int64) if name.startswith("sparse") else z.copy()
    for module in (ref, mod):
        with pytest.raises((ValueError, IndexError)):
            getattr(module, name)(z, y, np.ones(3, np.float32), z.copy(), z.copy())


@dtypes
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_sparse_labels_of_any_integer_dtype(mod, dtype, label_dtype):
    n, c = 9, 4
    z, y, sw = _loss_inputs(C.SPARSE_SOFTMAX_CE, n, c, dtype, rng_for("sparse-int"))
    labels = y[:, 0].astype(label_dtype)
    p_r, dz_r, p, dz = (np.empty_like(z) for _ in range(4))
    loss_r = ref.sparse_softmax_cross_entropy(z, labels, sw, p_r, dz_r)
    loss = mod.sparse_softmax_cross_entropy(z, labels, sw, p, dz)
    assert_close(loss, loss_r, dtype, k=n * c, scale=4.0, what="loss")
    assert_close(dz, dz_r, dtype, k=c, what="dz")


@dtypes
@loss_shapes
@pytest.mark.parametrize("name", list(PROB_LOSSES))
@pytest.mark.parametrize("alias", ["none", "grad_is_out"])
def test_output_losses(mod, dtype, shape, name, alias):
    n, _, c = shape
    out, y, sw = _loss_inputs(PROB_LOSSES[name], n, c, dtype, rng_for("prob", name, shape))
    d_r = np.empty_like(out)
    loss_r = getattr(ref, name)(out.copy(), y, sw, d_r)
    inputs = [y, sw] + ([] if alias == "grad_is_out" else [out])
    copies = _copies(*inputs)
    d = out if alias == "grad_is_out" else np.full_like(out, np.nan)
    loss = getattr(mod, name)(out, y, sw, d)
    _assert_unchanged(inputs, copies)
    assert isinstance(loss, float)
    assert_close(loss, loss_r, dtype, k=n * c, scale=4.0, what="loss")
    assert_close(d, d_r, dtype, k=4, scale=1e-3, what="grad")


@dtypes
@pytest.mark.parametrize("code", LOSSES, ids=LOSS_NAMES.get)
@pytest.mark.parametrize("alias", ["none", "p_is_out", "p_is_dz"])
def test_loss_grad(mod, dtype, code, alias):
    n, c = 7, 3
    out, y, sw = _loss_inputs(code, n, c, dtype, rng_for("loss_grad", code))
    p_r, dz_r = np.full_like(out, -1.0), np.empty_like(out)
    loss_r = ref.loss_grad(out.copy(), y, sw, p_r, dz_r, code)
    o, dz = out.copy(), np.full_like(out, np.nan)
    p = {"none": np.full_like(out, -1.0), "p_is_out": o, "p_is_dz": dz}[alias]
    loss = mod.loss_grad(o, y, sw, p, dz, code)
    assert isinstance(loss, float)
    assert_close(loss, loss_r, dtype, k=n * c, scale=4.0, what="loss")
    assert_close(dz, dz_r, dtype, k=c, scale=1e-3, what="dz")
    if alias == "none":  # untouched (-1) by the output losses, probabilities otherwise
        assert_close(p, p_r, dtype, k=c, what="p")


# Regularisation and optimizers --------------------------------------------------------


@dtypes
@pytest.mark.parametrize("wshape", [(1,), (17,), (5, 3), (33, 65)], ids=str)
def test_l1l2_penalty(mod, dtype, wshape):
    rng = rng_for("l1l2", wshape)
    w = rng.standard_normal(wshape).astype(dtype)
    w.flat[0] = 0.0  # sign(0) = 0
    dw = rng.standard_normal(wshape).astype(dtype)
    dw_r = dw.copy()
    pen_r = ref.l1l2_penalty(w, dw_r, 1e-2, 3e-3)
    w0 = w.copy()
    pen = mod.l1l2_penalty(w, dw, 1e-2, 3e-3)
    _assert_unchanged([w], [w0])
    assert isinstance(pen, float)
    assert_close(pen, pen_r, dtype, k=w.size, what="penalty")
    assert_close(dw, dw_r, dtype, k=2, what="dw")


OPT_CASES = [
    ("sgd_update", C.SGD, [0.05]),
    ("momentum_update", C.MOMENTUM, [0.05, 0.9, 0]),
    ("momentum_update", C.MOMENTUM, [0.05, 0.9, 1]),
    ("adagrad_update", C.ADAGRAD, [0.05, 1e-7]),
    ("rmsprop_update", C.RMSPROP, [0.01, 0.9, 1e-7]),
    ("adam_update", C.ADAM, [0.01, 0.9, 0.999, 1e-7, 0.0]),
    ("adam_update", C.ADAM, [0.01, 0.9, 0.999, 1e-7, 0.05]),
    # through optimizer_update only: amsgrad, RMSprop's momentum / centered, Keras 3's
    # decoupled weight decay in the entry after the clip entries
    (None, C.AMSGRAD, [0.01, 0.9, 0.999, 1e-7, 0.0]),
    (None, C.AMSGRAD, [0.01, 0.8, 0.99, 1e-7, 0.05]),
    (None, C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.6, 0.0]),
    (None, C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.0, 1.0]),
    (None, C.RMSPROP_MC, [0.01, 0.8, 1e-7, 0.6, 1.0]),
    (None, C.SGD, [0.05, 0.0, 0.0, 0.0, 0.3]),
    (None, C.MOMENTUM, [0.05, 0.9, 1, 0.0, 0.0, 0.0, 0.3]),
    (None, C.ADAGRAD, [0.05, 1e-7, 0.0, 0.0, 0.0, 0.3]),
    (None, C.RMSPROP, [0.01, 0.9, 1e-7, 0.0, 0.0, 0.0, 0.3]),
    (None, C.RMSPROP_MC, [0.01, 0.9, 1e-7, 0.6, 1.0, 0.0, 0.0, 0.0, 0.3]),
    (None, C.NADAM, [0.01, 0.9, 0.999, 1e-7, 0.0, 0.0, 0.0, 0.3]),
]


def _opt_call(module, name, code, hyper, p, g, state, step, direct):
    if not direct:
        module.optimizer_update(p, g, state, code, np.array(hyper, dtype=np.float64), step)
    elif name == "sgd_update":
        module.sgd_update(p, g, hyper[0])
    elif name == "momentum_update":
        module.momentum_update(p, g, state[0], hyper[0], hyper[1], int(hyper[2]))
    elif name == "adam_update":
        module.adam_update(p, g, state[0], state[1], *hyper, step)
    else:
        getattr(module, name)(p, g, state[0], *hyper)


@dtypes
@pytest.mark.parametrize("size", [1, 7, 1000])
@pytest.mark.parametrize(
    "case", OPT_CASES, ids=lambda c: f"{c[0] or OPT_NAMES.get(c[1], c[1])}-{len(c[2])}-{c[2][-1]}"
)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "optimizer_update"])
def test_optimizer_updates(mod, dtype, size, case, direct):
    name, code, hyper = case
    if name is None and direct:
        pytest.skip("no update function of its own: optimizer_update only")
    rng = rng_for("opt", size, name)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    grads[1][0] = 0.0
    results = []
    for module in (ref, mod):
        p = p0.copy()
        state = np.zeros((max(1, C.STATE_SLOTS[code]), size), dtype)
        for step, g in enumerate(grads, start=1):
            g0 = g.copy()
            _opt_call(module, name, code, hyper, p, g, state, step, direct)
            _assert_unchanged([g], [g0])
        results.append((p, state))
    (p_r, s_r), (p, s) = results
    # the reference's operation order: the same rounding up to the last few bits
    assert_close(p, p_r, dtype, k=3, what="params")
    assert_close(s, s_r, dtype, k=3, what="state")


@dtypes
@pytest.mark.parametrize("acc_mode", list(ACC_NAMES), ids=ACC_NAMES.get)
def test_batch_stats(mod, dtype, acc_mode):
    rng = rng_for("stats", acc_mode)
    n, c = 23, 4
    out = rng.random((n, c)).astype(dtype)
    out[3] = out[3, 0]  # a tie: argmax takes the first
    out[5, 1] = 0.3  # on the threshold in out's dtype: NumPy compares with a Python float
    if acc_mode == C.ACC_SPARSE:
        y = rng.integers(0, c, (n, 1)).astype(dtype)
    elif acc_mode == C.ACC_BINARY:
        y = (rng.random((n, c)) > 0.5).astype(dtype)
    else:
        y = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
    for threshold in (0.5, 0.3):
        s_r = np.arange(C.STAT_LEN, dtype=np.float64)
        s = s_r.copy()
        ref.batch_stats(out, y, *metrics_for(acc_mode, threshold), s_r)
        inputs = [out, y]
        copies = _copies(*inputs)
        mod.batch_stats(out, y, *metrics_for(acc_mode, threshold), s)
        _assert_unchanged(inputs, copies)
        assert_close(s, s_r, np.float64, k=n * c, scale=10.0, what="stats")


@dtypes
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (33, 10)], ids=str)
@pytest.mark.parametrize("logits", [0, 1])
def test_batch_stats_every_metric_kind(mod, dtype, shape, logits):
    """All metric kinds in one table, their slots side by side after the fixed entries, on
    odd shapes: top-k (one-hot and sparse), confusion counts, the AUC histogram (sigmoid of
    logits or probabilities, values on the thresholds included)."""
    n, c = shape
    rng = rng_for("metric-kinds", shape, logits)
    out = rng.standard_normal((n, c)) if logits else rng.random((n, c))
    out.flat[0] = 0.0 if logits else 0.5
    if not logits and out.size > 2:
        out.flat[1], out.flat[2] = 1.0, 2 / 9  # a threshold of 10 buckets exactly
    if not logits and out.size > 4:
        out.flat[3], out.flat[4] = -0.3, 1.7  # outside [0, 1]: counted as 0 and 1
    out = out.astype(dtype)
    onehot = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
    labels = np.argmax(onehot, axis=1)[:, None].astype(dtype)
    binary = (rng.random((n, c)) > 0.5).astype(dtype)
    k = 10
    table = np.array(
        [
            [C.M_TOP_K, 6, 2, 0],
            [C.M_CONFUSION, 7, 0, 0],
            [C.M_HISTOGRAM, 10, k, logits],
            [C.ACC_BINARY, 30, 0, 0],
        ],
        np.int64,
    )
    sparse_table = np.array([[C.M_SPARSE_TOP_K, 6, 1, 0], [C.ACC_SPARSE, 7, 0, 0]], np.int64)
    thr = np.array([0.5, 0.0 if logits else 0.5, 0.5, 0.5])
    for y, tab, th in ((onehot, table[:1], thr[:1]), (binary, table[1:], thr[1:]),
                       (labels, sparse_table, thr[:2])):  # fmt: skip
        s_r = np.zeros(31)
        s = s_r.copy()
        ref.batch_stats(out, y, tab, th, s_r)
        mod.batch_stats(out, y, tab, th, s)
        np.testing.assert_allclose(s, s_r, rtol=1e-12, atol=1e-12)
    assert s_r[C.STAT_ROWS] == n


def test_batch_stats_rejects_a_bad_metrics_table():
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    cy = backend.load("cython")
    out, y = np.ones((3, 2)), np.ones((3, 2))
    cases = [
        (np.array([[99, 6, 0, 0]]), "unknown metric kind"),
        (np.array([[C.M_CONFUSION, 8, 0, 0]]), "do not fit"),
        (np.array([[C.M_HISTOGRAM, 6, 1, 0]]), "k >= 2"),
        (np.array([[C.ACC_SPARSE, -1, 0, 0]]), "do not fit"),
    ]
    for table, message in cases:
        with pytest.raises(ValueError, match=message):
            cy.batch_stats(out, y, table.astype(np.int64), np.full(1, 0.5), np.zeros(10))
    with pytest.raises(ValueError, match="thresholds needs"):
        cy.batch_stats(out, y, np.zeros((1, C.M_COLS), np.int64), np.zeros(2), np.zeros(10))


# ---------------------------------------------------------------------------------------
# 3. Normalisation kernels


def _bn_case(dtype, shape, flags, rng):
    """x (R, C) with a large mean (the statistics' shift), weights per ``flags`` ("gs": gamma
    and beta, "g", "s" or "")."""
    r, _, c = shape
    x = rng.standard_normal((r, c)) * rng.uniform(0.5, 3, c) + rng.uniform(-20, 20, c)
    gamma = rng.uniform(0.5, 1.5, c) if "g" in flags else np.zeros(0)
    beta = rng.standard_normal(c) if "s" in flags else np.zeros(0)
    moving = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    return [a.astype(dtype) for a in (x, gamma, beta, *moving)]


BN_FLAGS = pytest.mark.parametrize("flags", ["gs", "g", "s", ""], ids=lambda f: f or "none")


@dtypes
@shapes
@BN_FLAGS
@pytest.mark.parametrize("training", [1, 0], ids=["train", "infer"])
def test_batchnorm_forward(mod, dtype, shape, flags, training):
    r, _, c = shape
    x, gamma, beta, mm, mv = _bn_case(dtype, shape, flags, rng_for("bnf", shape, flags))
    results = []
    for module in (ref, mod):
        moving = [mm.copy(), mv.copy()]
        saved, out = np.zeros((2, c), dtype), np.zeros((r, c), dtype)
        acc = np.zeros((2, c))
        inputs = [x, gamma, beta]
        copies = _copies(*inputs)
        module.batchnorm_forward(x, gamma, beta, *moving, saved, out, acc, training, 0.9, 1e-3)
        _assert_unchanged(inputs, copies)
        results.append((out, saved, *moving))
    for name, got, want in zip(("out", "saved", "moving_mean", "moving_var"), *results):
        assert got.dtype == dtype
        # the inverse std of a single-row batch (variance 0) is 1/sqrt(eps): scale 30
        assert_close(got, want, dtype, k=r, scale=32.0, what=name)


@dtypes
@shapes
@BN_FLAGS
def test_batchnorm_backward(mod, dtype, shape, flags):
    r, _, c = shape
    rng = rng_for("bnb", shape, flags)
    x, gamma, beta, mm, mv = _bn_case(dtype, shape, flags, rng)
    saved = np.zeros((2, c), dtype)
    ref.batchnorm_forward(x, gamma, beta, mm, mv, saved, np.zeros((r, c), dtype),
                          np.zeros((2, c)), 1, 0.9, 1e-3)  # fmt: skip
    dout = rng.standard_normal((r, c)).astype(dtype)
    for need_dx, alias in ((1, False), (1, True), (0, False)):
        results = []
        for module in (ref, mod):
            d = dout.copy()
            dx = d if alias else np.full((r, c), 7, dtype)
            dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(beta)
            module.batchnorm_backward(x, gamma, saved, d, dx, dgamma, dbeta, np.zeros((2, c)),
                                      need_dx)  # fmt: skip
            results.append((dx, dgamma, dbeta))
        for name, got, want in zip(("dx", "dgamma", "dbeta"), *results):
            assert_close(got, want, dtype, k=r, scale=32.0, what=f"{name} ({need_dx=})")
        if not need_dx and not alias:
            assert np.all(results[1][0] == 7), "dx written without need_dx"


@dtypes
@shapes
@BN_FLAGS
def test_batchnorm_inference_backward(mod, dtype, shape, flags):
    """A frozen layer's gradient, dout * gamma / sqrt(moving_var + eps), from the saved
    statistics of an inference-mode forward; dx may alias dout."""
    r, _, c = shape
    rng = rng_for("bnib", shape, flags)
    x, gamma, beta, mm, mv = _bn_case(dtype, shape, flags, rng)
    saved = np.zeros((2, c), dtype)
    ref.batchnorm_forward(x, gamma, beta, mm, mv, saved, np.zeros((r, c), dtype),
                          np.zeros((2, c)), 0, 0.9, 1e-3)  # fmt: skip
    dout = rng.standard_normal((r, c)).astype(dtype)
    want = dout * (gamma if gamma.size else 1) / np.sqrt(mv.astype(np.float64) + 1e-3)
    for alias in (False, True):
        results = []
        for module in (ref, mod):
            d = dout.copy()
            dx = d if alias else np.full((r, c), 7, dtype)
            inputs = [gamma, saved] if alias else [gamma, saved, d]
            copies = _copies(*inputs)
            module.batchnorm_inference_backward(gamma, saved, d, dx)
            _assert_unchanged(inputs, copies)
            results.append(dx)
        assert results[1].dtype == dtype
        assert_close(results[1], results[0], dtype, k=2, what=f"dx ({alias=})")
        assert_close(results[0], want, dtype, k=4, what="reference dx vs the formula")


@dtypes
@shapes
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_normalization_forward_backward(mod, dtype, shape, inplace):
    r, _, c = shape
    rng = rng_for("norm", shape)
    x = (rng.standard_normal((r, c)) * 3 + 1).astype(dtype)
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0, 4, c).astype(dtype)
    var[0] = 0.0  # the divisor's floor
    for module_out in ("forward", "backward"):
        results = []
        for module in (ref, mod):
            a = x.copy()
            out = a if inplace else np.zeros_like(a)
            if module_out == "forward":
                module.normalization_forward(a, mean, var, out)
            else:
                module.normalization_backward(var, a, out)
            results.append(out)
        assert_close(results[1], results[0], dtype, what=module_out)


# ---------------------------------------------------------------------------------------
# 4. Layer stacks (plans built by the model's plan builder)


def _tol32(r32, r64):
    """float32 stack results are compared with the float32 reference up to roundoff plus
    4x the reference's own float32-vs-float64 difference: after several steps, weights
    near a ReLU kink or gradients near Adam's epsilon make any float32 implementation
    diverge by that much (see PITFALLS: float32 parity is ill-conditioned)."""
    return 4.0 * np.abs(np.asarray(r32, np.float64) - np.asarray(r64, np.float64))


def _compare_runs(got, exp, exp64, dtype, names, k=64):
    for name, a, e, e64 in zip(names, got, exp, exp64):
        extra = _tol32(e, e64) if dtype == np.float32 else 0.0
        assert_close(a, e, dtype, k=k, extra=extra, what=name)


STEP_NAMES = ("params", "grads", "state", "nontrain", "acts", "gbuf", "losses")
STACKS = {
    "mlp3": lambda dtype, rng: mlp3(C.SOFTMAX_CE, dtype, rng),
    "mixed": mixed_stack,
    "norm": norm_stack,
    "frozen_norm": frozen_norm_stack,
}


@dtypes
@pytest.mark.parametrize("stack", sorted(STACKS))
@pytest.mark.parametrize("training", [0, 1], ids=["eval", "train"])
def test_forward_stack(mod, dtype, stack, training):
    s = STACKS[stack](dtype, rng_for("fwd", stack))
    results = []
    for module in (ref, mod):
        b = s.buffers()
        inputs = [s.x, s.params, *b.plan[:2]]
        copies = _copies(*inputs)
        module.forward_stack(s.x, b.plan, b.net, b.work, training, 5, 3)
        _assert_unchanged(inputs, copies)
        results.append((b.acts, b.nontrain))
    (acts_r, nt_r), (acts, nt) = results
    assert_close(acts, acts_r, dtype, k=32, scale=4.0, what="acts")
    assert_close(nt, nt_r, dtype, k=32, what="nontrain")


@dtypes
@pytest.mark.parametrize("stack", ["mixed", "norm", "frozen_norm"])
def test_backward_stack(mod, dtype, stack):
    s = STACKS[stack](dtype, rng_for("bwd", stack))
    results = []
    for module in (ref, mod):
        b = s.buffers()
        module.forward_stack(s.x, b.plan, b.net, b.work, 1, 9, 2)
        b.dout(s.n)[...] = rng_for("dout").standard_normal((s.n, s.n_out))
        params0 = b.params.copy()
        pen = module.backward_stack(s.x, b.plan, b.net, b.work, 9, 2)
        _assert_unchanged([b.params], [params0])
        results.append((b.grads, b.gbuf, pen))
    (g_r, gb_r, pen_r), (g, gb, pen) = results
    assert isinstance(pen, float)
    assert_close(pen, pen_r, dtype, k=64, what="penalty")
    assert_close(g, g_r, dtype, k=32, scale=8.0, what="grads")
    assert_close(gb, gb_r, dtype, k=32, scale=8.0, what="gbuf")


def _stack_case(loss, opt, dtype, logits_out):
    rng = rng_for("train", loss, opt, logits_out)
    s64 = mlp3(loss, np.float64, rng)
    return s64.astype(dtype), s64


@dtypes
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_NAMES.get)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_NAMES.get)
def test_train_step(mod, dtype, loss, opt):
    s, s64 = _stack_case(loss, opt, dtype, 0)
    exp = train_steps(ref, s, loss, opt, 3)
    exp64 = train_steps(ref, s64, loss, opt, 3)
    inputs = [s.x, s.y, s.sw, *s.plan[:2]]
    copies = _copies(*inputs)
    got = train_steps(mod, s, loss, opt, 3)
    _assert_unchanged(inputs, copies)
    _compare_runs(got, exp, exp64, dtype, STEP_NAMES)


@dtypes
@pytest.mark.parametrize(
    "opt", [C.SGD, C.MOMENTUM, C.RMSPROP_MC, C.AMSGRAD, C.NADAM], ids=lambda o: str(o)
)
def test_train_step_weight_decay(mod, dtype, opt):
    """Keras 3's decoupled weight decay inside the compiled step == the reference, and the
    reference == a step without decay on parameters scaled by 1 - lr * weight_decay."""
    loss = C.MSE
    s, s64 = _stack_case(loss, opt, dtype, 0)
    hyper = decayed_hyper(opt, 0.5)
    exp = train_steps(ref, s, loss, opt, 3, hyper=hyper)
    exp64 = train_steps(ref, s64, loss, opt, 3, hyper=hyper)
    got = train_steps(mod, s, loss, opt, 3, hyper=hyper)
    _compare_runs(got, exp, exp64, dtype, STEP_NAMES)
    plain = train_steps(ref, s64, loss, opt, 3)
    assert not np.allclose(plain[0], exp64[0])  # the decay changed the parameters


def test_reference_weight_decay_is_a_scaling_before_the_update():
    rng = rng_for("decay")
    p0, g = rng.standard_normal(9), rng.standard_normal(9)
    for opt in (C.SGD, C.MOMENTUM, C.ADAGRAD, C.RMSPROP, C.NADAM, C.RMSPROP_MC, C.ADAM,
                C.AMSGRAD):  # fmt: skip
        state = np.full((max(1, C.STATE_SLOTS[opt]), 9), 0.1)
        want_state = state.copy()
        lr = HYPER[opt][0]
        want = p0 * (1 - lr * 0.2)
        plain = list(HYPER[opt])
        if opt in C.OWN_DECAY:
            plain[4] = 0.0
        ref.optimizer_update(want, g, want_state, opt, np.array(plain), 2)
        p, got_state = p0.copy(), state.copy()
        ref.optimizer_update(p, g, got_state, opt, np.array(decayed_hyper(opt, 0.2)), 2)
        np.testing.assert_allclose(p, want, rtol=1e-14, atol=1e-15, err_msg=str(opt))
        np.testing.assert_allclose(got_state, want_state, rtol=1e-14, err_msg=str(opt))


@dtypes
@pytest.mark.parametrize("loss", LOSSES[:3], ids=LOSS_NAMES.get)  # the logit losses
def test_train_step_logits_out(mod, dtype, loss):
    s, s64 = _stack_case(loss, C.ADAM, dtype, 1)
    exp = train_steps(ref, s, loss, C.ADAM, 2, logits_out=1)
    exp64 = train_steps(ref, s64, loss, C.ADAM, 2, logits_out=1)
    got = train_steps(mod, s, loss, C.ADAM, 2, logits_out=1)
    _compare_runs(got, exp, exp64, dtype, STEP_NAMES)


@dtypes
@pytest.mark.parametrize("stack", ["mixed", "norm", "frozen_norm"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_NAMES.get)
def test_train_step_every_kind(mod, dtype, stack, opt):
    s64 = STACKS[stack](np.float64, rng_for("kinds-train", stack, opt))
    s = s64.astype(dtype)
    loss = s.loss
    exp = train_steps(ref, s, loss, opt, 3)
    exp64 = train_steps(ref, s64, loss, opt, 3)
    got = train_steps(mod, s, loss, opt, 3)
    _compare_runs(got, exp, exp64, dtype, STEP_NAMES)


@dtypes
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_NAMES.get)
def test_eval_step(mod, dtype, loss):
    s = mlp3(loss, dtype, rng_for("eval", loss))
    results = []
    for module in (ref, mod):
        b = s.buffers()
        params0 = b.params.copy()
        value = module.eval_step((s.x, s.y, s.sw), b.plan, b.net, b.work, loss_args(loss))
        results.append((value, b.acts, b.gbuf))
        _assert_unchanged([b.params], [params0])
    (l_r, a_r, g_r), (l, a, g) = results
    assert isinstance(l, float)
    assert_close(l, l_r, dtype, k=64, scale=4.0, what="loss")
    assert_close(a, a_r, dtype, k=32, what="acts")
    assert_close(g, g_r, dtype, k=32, what="gbuf")


def _epoch_data(s, loss, n_rows=50):
    """(X, Y, SW, order) of a small epoch for stack ``s``."""
    rng = rng_for("epoch-data", loss)
    X = rng.standard_normal((n_rows, s.n_in)).astype(s.dtype)
    Y = make_targets(loss, n_rows, s.n_out, rng, s.dtype)
    SW = rng.uniform(0.5, 1.5, n_rows).astype(s.dtype)
    return X, Y, SW, rng.permutation(n_rows).astype(np.int64)


def _epoch(module, s, loss, opt, train, data, batch=16):
    """One run_epoch of ``module`` (batches of 16, the last one partial, an lr schedule
    and a start step of 5); returns (batches done, (params, state, nontrain, stats, hyper,
    acts))."""
    X, Y, SW, order = (a.astype(s.dtype) if a.dtype.kind == "f" else a for a in data)
    ws = _workspace(s, batch, Y.shape[1], opt)
    hyper = np.array(HYPER[opt], dtype=np.float64)
    lrs = np.linspace(0.05, 0.01, -(-len(order) // batch))
    stats = np.arange(C.STAT_LEN, dtype=np.float64)  # run_epoch accumulates
    inputs = [X, Y, SW, order, lrs, *ws.plan[:2]]
    copies = _copies(*inputs)
    done = module.run_epoch(
        (X, Y, SW, order, batch), ws.plan, ws.net, ws.ws, loss_args(loss, 0, acc_mode_for(loss)),
        (opt, hyper, lrs, 5, 77), train, stats,
    )  # fmt: skip
    _assert_unchanged(inputs, copies)
    return done, (ws.params, ws.state, ws.nontrain, stats, hyper, ws.acts)


def _workspace(s, batch, n_targets, opt):
    b = s.buffers(n=batch, n_state=max(1, C.STATE_SLOTS[opt]))
    b.xb = np.zeros((batch, s.n_in), s.dtype)
    b.yb = np.zeros((batch, n_targets), s.dtype)
    b.swb = np.zeros(batch, s.dtype)
    b.ws = (b.xb, b.yb, b.swb, b.acts, b.gbuf, b.acc)
    return b


EPOCH_NAMES = ("params", "state", "nontrain", "stats", "hyper", "acts")


@dtypes
@pytest.mark.parametrize("loss", [C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE, C.MSE], ids=LOSS_NAMES.get)
@pytest.mark.parametrize("train", [1, 0], ids=["train", "eval"])
def test_run_epoch(mod, dtype, loss, train):
    s64 = mlp3(loss, np.float64, rng_for("epoch", loss))
    s = s64.astype(dtype)
    data = _epoch_data(s64, loss)
    done_r, exp = _epoch(ref, s, loss, C.ADAM, train, data)
    _, exp64 = _epoch(ref, s64, loss, C.ADAM, train, data)
    done, got = _epoch(mod, s, loss, C.ADAM, train, data)
    assert done == done_r == 4 and isinstance(done, int | np.integer)
    _compare_runs(got, exp, exp64, dtype, EPOCH_NAMES)


@dtypes
@pytest.mark.parametrize("train", [1, 0], ids=["train", "eval"])
def test_run_epoch_every_kind(mod, dtype, train):
    s64 = norm_stack(np.float64, rng_for("epoch-norm"), loss=C.SPARSE_SOFTMAX_CE)
    s = s64.astype(dtype)
    data = _epoch_data(s64, C.SPARSE_SOFTMAX_CE)
    done_r, exp = _epoch(ref, s, C.SPARSE_SOFTMAX_CE, C.ADAM, train, data)
    _, exp64 = _epoch(ref, s64, C.SPARSE_SOFTMAX_CE, C.ADAM, train, data)
    done, got = _epoch(mod, s, C.SPARSE_SOFTMAX_CE, C.ADAM, train, data)
    assert done == done_r == 4
    _compare_runs(got, exp, exp64, dtype, EPOCH_NAMES)


@pytest.mark.parametrize("module", ["numpy", *BACKENDS])
@pytest.mark.parametrize("where", ["forward", "backward", "epoch"])
def test_an_unknown_layer_kind_raises(module, where):
    """A kind no backend knows reaching the interpreter raises (never runs as something
    else): each backend's forward, backward and epoch."""
    k = backend.load(module)
    s = mixed_stack(np.float64, rng_for("unknown-kind"))
    b = s.buffers()
    layers = b.plan[0].copy()
    layers[2, C.P_KIND] = 99
    plan = (layers, b.plan[1], b.plan[2])
    with pytest.raises(ValueError, match="kind"):
        if where == "forward":
            k.forward_stack(s.x, plan, b.net, b.work, 1, 0, 1)
        elif where == "backward":
            k.backward_stack(s.x, plan, b.net, b.work, 0, 1)
        else:
            ws = _workspace(s, s.n, s.y.shape[1], C.SGD)
            k.run_epoch((s.x, s.y, s.sw, np.arange(s.n), s.n), plan, ws.net, ws.ws,
                        loss_args(C.MSE), (C.SGD, np.array([0.1]), np.full(1, 0.1), 1, 0),
                        1, np.zeros(C.STAT_LEN))  # fmt: skip


@pytest.mark.parametrize("module", ["numpy", *BACKENDS])
def test_unknown_activation_loss_and_optimizer_codes_raise(module):
    """Codes outside the contract raise in every backend, alone and inside a plan (an
    activation code on a Dense row), never run as another code."""
    k = backend.load(module)
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="activation"):
        k.activation_forward(x, np.empty_like(x), 99, 0.0)
    with pytest.raises(ValueError, match="loss"):
        k.loss_grad(x, x, np.ones(3), np.empty_like(x), np.empty_like(x), 99)
    with pytest.raises(ValueError, match="optimizer"):
        k.optimizer_update(np.ones(4), np.ones(4), np.zeros((2, 4)), 99, np.ones(5), 1)
    s = mixed_stack(np.float64, rng_for("unknown-act"))
    b = s.buffers()
    layers = b.plan[0].copy()
    layers[1, C.P_ACT] = 99  # the first Dense
    with pytest.raises(ValueError, match="activation"):
        k.forward_stack(s.x, (layers, b.plan[1], b.plan[2]), b.net, b.work, 1, 0, 1)


# ---------------------------------------------------------------------------------------
# 5. The NaN rule


@pytest.mark.parametrize("opt", [C.SGD, C.ADAM], ids=OPT_NAMES.get)
def test_nan_loss_leaves_params_untouched(mod, opt):
    s = mlp3(C.MSE, np.float32, rng_for("nan"))
    s.x[3, 2] = np.nan
    b = s.buffers(n_state=2)
    b.state += 0.5
    state0 = b.state.copy()
    hyper = np.array(HYPER[opt], dtype=np.float64)
    loss = mod.train_step((s.x, s.y, s.sw), b.plan, b.net, b.work, loss_args(C.MSE),
                          (opt, hyper, np.zeros(1), 1, 3))  # fmt: skip
    assert np.isnan(loss)
    np.testing.assert_array_equal(b.params, s.params)
    np.testing.assert_array_equal(b.state, state0)


def test_run_epoch_stops_at_the_nan_batch(mod):
    s = mlp3(C.MSE, np.float64, rng_for("nan-epoch"))
    X, Y, SW, order = _epoch_data(s, C.MSE)
    X[order[40], 1] = np.nan  # position 40 of the order: batch 2 (rows 32..47)
    done_r, exp = _epoch(ref, s, C.MSE, C.ADAM, 1, (X, Y, SW, order))
    done, got = _epoch(mod, s, C.MSE, C.ADAM, 1, (X, Y, SW, order))
    assert done_r == 2 and done == 2
    _compare_runs(got, exp, exp, np.float64, EPOCH_NAMES)
    assert np.isnan(got[3][C.STAT_LOSS])


class EpochArgs:
    """run_epoch's arguments (a valid training call of 4 batches of 16) by name; ``args()``
    groups them as the contract does."""

    def __init__(self, s, X, Y, SW, order):
        self.s = s
        self.b = b = _workspace(s, 16, Y.shape[1], C.ADAM)
        self.X, self.Y, self.SW, self.order, self.batch_size = X, Y, SW, order, 16
        self.xb, self.yb, self.swb = X[:16].copy(), Y[:16].copy(), SW[:16].copy()
        self.params, self.grads, self.state, self.nontrain = (
            b.params,
            b.grads,
            b.state,
            (b.nontrain),
        )
        self.acts, self.gbuf, self.acc = b.acts, b.gbuf, b.acc
        self.layers, self.layer_f, self.kinds = b.plan
        self.loss = loss_args(C.MSE)
        self.hyper, self.lrs = np.array(HYPER[C.ADAM]), np.full(4, 0.01)
        self.opt_code, self.step, self.seed, self.train = C.ADAM, 1, 3, 1
        self.stats = np.zeros(C.STAT_LEN)

    def args(self):
        return (
            (self.X, self.Y, self.SW, self.order, self.batch_size),
            (self.layers, self.layer_f, self.kinds),
            (self.params, self.grads, self.state, self.nontrain),
            (self.xb, self.yb, self.swb, self.acts, self.gbuf, self.acc),
            self.loss, (self.opt_code, self.hyper, self.lrs, self.step, self.seed), self.train,
            self.stats,
        )  # fmt: skip


@dtypes
@pytest.mark.parametrize("where", ["finite", "huge", "state-inf", "param-nan", "nontrain-nan"])
def test_run_epoch_flags_non_finite_weights(mod, dtype, where):
    """A training call sets (not adds) stats[STAT_NONFINITE]: 1 when params, state or the
    non-trainable weights end with an inf or NaN, 0 otherwise, huge finite values included;
    evaluation leaves it."""
    s = norm_stack(dtype, rng_for("flag", where), loss=C.MSE)
    data = _epoch_data(s, C.MSE)
    expect = {"finite": (4, 0.0), "huge": (4, 0.0), "state-inf": (4, 1.0),
              "param-nan": (0, 1.0), "nontrain-nan": (0, 1.0)}  # fmt: skip
    for module in (ref, mod):
        for train in (1, 0):
            a = EpochArgs(s, *data)
            a.train = train
            if where == "huge":
                a.state[1] = np.finfo(dtype).max / 4  # Adam's v: its square overflows
            elif where == "state-inf":
                a.state[1, 3] = np.inf  # the loss stays finite; v stays infinite
            elif where == "param-nan":
                a.params[2] = np.nan
            elif where == "nontrain-nan":
                a.nontrain[1] = np.nan  # Normalization's mean: every output NaN
            a.stats[C.STAT_NONFINITE] = 7.0
            done = module.run_epoch(*a.args())
            want_done, want_flag = expect[where] if train else (expect[where][0], 7.0)
            assert (done, a.stats[C.STAT_NONFINITE]) == (want_done, want_flag), (module, train)


@dtypes
def test_run_epoch_non_finite_flag_on_special_values(mod, dtype):
    """With no batch to run, a training call only checks params, state and nontrain: every
    finite extreme (+-max, +-tiny, subnormals, -0) leaves the flag 0; any inf or NaN (either
    sign, any payload) anywhere in any of them, the vector tails included, sets it."""
    s = norm_stack(dtype, rng_for("flag-values"), loss=C.MSE)
    info = np.finfo(dtype)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    quiet_nan_payload = (np.array(np.nan, dtype).view(bits) | bits(5)).view(dtype)
    finite = [info.max, -info.max, info.tiny, -info.tiny, info.smallest_subnormal, -0.0]
    specials = [np.inf, -np.inf, np.nan, -np.nan, quiet_nan_payload]
    for module in (ref, mod):
        a = EpochArgs(s, *_epoch_data(s, C.MSE))
        a.order = np.arange(0, dtype=np.int64)
        a.params[: len(finite)] = finite
        a.state[1, -len(finite) :] = finite
        assert (module.run_epoch(*a.args()), a.stats[C.STAT_NONFINITE]) == (0, 0.0)
        for array in (a.params, a.state.reshape(-1), a.nontrain):
            for where in (0, array.size // 2, array.size - 1):
                for value in specials:
                    keep = array[where]
                    array[where] = value
                    module.run_epoch(*a.args())
                    array[where] = keep
                    assert a.stats[C.STAT_NONFINITE] == 1.0, (module, where, value)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("X", lambda a: a.astype(np.float64), "Y must have dtype float64"),
        ("params", lambda a: a.astype(np.float64), "params must have dtype float32"),
        ("order", lambda a: a.astype(np.int32), "order must have dtype int64"),
        ("order", lambda a: np.repeat(a, 2)[::2], "order must be C-contiguous"),
        ("stats", _read_only, "stats must be writeable"),
        ("state", lambda a: a[0], "state must be 2-D"),
        ("gbuf", list, "gbuf must be a NumPy array, got list"),
        ("X", lambda a: a.astype(">f4"), "X must have dtype float32 (native byte order)"),
        ("lrs", lambda a: a[:2], "lrs needs 4 values, got 2"),
        ("xb", lambda a: a[:8], "xb must have shape (16, 9) at least, got (8, 9)"),
        ("layers", lambda a: a[:, :3].copy(), "layers must have shape (L, 26)"),
        ("acts", lambda a: a[:10], "acts"),
        ("gbuf", lambda a: a[:10], "gbuf"),
        ("acc", lambda a: a.astype(np.float32), "acc must have dtype float64"),
        ("nontrain", lambda a: a.astype(np.float64), "nontrain must have dtype float32"),
    ],
)
def test_cython_run_epoch_rejects_bad_arrays(name, bad, message):
    """The arrays of the per-batch call are checked through the NumPy C API: a clear error
    that names the argument, never a read or write outside a buffer."""
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    s = norm_stack(np.float32, rng_for("bad-epoch"), n_in=9, loss=C.MSE)
    a = EpochArgs(s, *_epoch_data(s, C.MSE))
    setattr(a, name, bad(getattr(a, name)))
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        backend.load("cython").run_epoch(*a.args())


@pytest.mark.parametrize(
    "column, value",
    [
        (C.P_OUT_OFF, 10**9),
        (C.P_IN_OFF, 10**9),
        (C.P_W0, 10**9),
        (C.P_S0, 10**9),
        (C.P_SAVE_OFF, 10**9),
        (C.P_ACC_OFF, 10**9),
        (C.P_DOUT_OFF, 10**9),
        (C.P_DX_OFF, 10**9),
        (C.P_OUT2, 10**6),
        (C.P_IN2, 3),
        (C.P_ACT, 42),
        (C.P_OUT_OFF, -5),
        (C.P_W0, -1),
    ],
)
def test_cython_run_epoch_rejects_a_malformed_plan(column, value):
    """Every offset and extent of a plan is checked against its buffer before any loop
    runs: a malformed plan is a ValueError, never a read or write out of bounds."""
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    s = norm_stack(np.float32, rng_for("bad-plan"), n_in=9, loss=C.MSE)
    a = EpochArgs(s, *_epoch_data(s, C.MSE))
    a.layers = a.layers.copy()
    row = 3 if column in (C.P_S0, C.P_SAVE_OFF, C.P_ACC_OFF) else 2  # BatchNorm, Dense
    a.layers[row, column] = value
    with pytest.raises(ValueError):
        backend.load("cython").run_epoch(*a.args())


def _per_batch_calls(rng):
    """name -> (function name, keyword arguments) of valid float32 calls of the entry
    points the layers, losses and optimizers make on every batch."""
    f = np.float32

    def arr(*shape):
        return rng.standard_normal(shape).astype(f)

    x, w, b, out = arr(6, 4), arr(4, 3), arr(3), arr(6, 3)
    hyper = np.array(HYPER[C.ADAM], dtype=np.float64)
    probs = np.full((6, 3), 1 / 3, f)
    onehot = np.eye(3, dtype=f)[np.arange(6) % 3]
    return {
        "act_fwd": ("activation_forward", dict(x=x, out=arr(6, 4), act=C.RELU, alpha=0.0)),
        "act_bwd": ("activation_backward",
                    dict(y=x, dout=arr(6, 4), dx=arr(6, 4), act=C.RELU, alpha=0.0)),
        "dense_fwd": ("dense_forward", dict(x=x, w=w, b=b, out=out, act=C.RELU, alpha=0.0)),
        "dense_bwd": ("dense_backward",
                      dict(x=x, w=w, y=out, dout=arr(6, 3), dz=arr(6, 3), dx=arr(6, 4),
                           dw=arr(4, 3), db=arr(3), act=C.RELU, alpha=0.0, need_dx=1)),
        "loss_grad": ("loss_grad", dict(out=probs, y=onehot, sw=np.ones(6, f), p=arr(6, 3),
                                        dz=arr(6, 3), loss_code=C.CATEGORICAL_CE)),
        "opt": ("optimizer_update", dict(params=arr(12), grads=arr(12),
                                         state=np.abs(arr(2, 12)), opt_code=C.ADAM,
                                         hyper=hyper, step=1)),
    }  # fmt: skip


_BAD_CALLS = [
    ("dense_fwd", "w", lambda a: a.astype(np.float64), "w must have dtype float32"),
    ("dense_fwd", "x", lambda a: a.astype(np.int32), "x must have dtype float32 or float64"),
    ("dense_fwd", "out", _read_only, "out must be writeable"),
    ("dense_fwd", "b", lambda a: a[None], "b must be 1-D"),
    ("dense_fwd", "x", list, "x must be a NumPy array, got list"),
    ("dense_bwd", "dw", lambda a: np.asfortranarray(a), "dw must be C-contiguous"),
    ("dense_bwd", "db", lambda a: a[:2], "db must have shape (3,)"),
    ("dense_bwd", "dx", lambda a: a[:, :3].copy(), "dx must have shape (6, 4)"),
    ("act_fwd", "out", lambda a: a.astype(">f4"), "out must have dtype float32 (native"),
    ("act_bwd", "dx", _read_only, "dx must be writeable"),
    ("loss_grad", "sw", lambda a: a[:4], "y and sw must have 6 rows"),
    ("loss_grad", "p", lambda a: a.astype(np.float64), "p must have dtype float32"),
    ("opt", "hyper", lambda a: a.astype(np.float32), "hyper must have dtype float64"),
    ("opt", "state", lambda a: a[0], "state must be 2-D"),
    ("opt", "grads", lambda a: a[:5], "grads must have 12 elements"),
]


@pytest.mark.parametrize("case, name, bad, message", _BAD_CALLS)
def test_cython_per_batch_calls_reject_bad_arrays(case, name, bad, message):
    """The per-batch entry points check their arrays through the NumPy C API: a clear error
    naming the argument, never a read or write outside a buffer."""
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    module = backend.load("cython")
    func, kwargs = _per_batch_calls(rng_for("bad-call", case))[case]
    getattr(module, func)(**kwargs)  # the valid call runs
    kwargs[name] = bad(kwargs[name])
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        getattr(module, func)(**kwargs)


#: the read-only arguments of each per-batch call
_CALL_INPUTS = {
    "act_fwd": ("x",),
    "act_bwd": ("y", "dout"),
    "dense_fwd": ("x", "w", "b"),
    "dense_bwd": ("x", "w", "y", "dout"),
    "loss_grad": ("out", "y", "sw"),
    "opt": ("grads", "hyper"),
}


@dtypes
def test_cython_per_batch_calls_take_read_only_inputs(dtype):
    """Inputs may be read-only (only outputs must be writeable): the same results as with
    writeable inputs."""
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    module = backend.load("cython")
    for case, (func, kwargs) in _per_batch_calls(rng_for("read-only")).items():
        kwargs = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and k != "hyper" else v)
                  for k, v in kwargs.items()}  # fmt: skip
        runs = []
        for read_only in (False, True):
            kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
            if read_only:
                kw.update({k: _read_only(kw[k]) for k in _CALL_INPUTS[case]})
            runs.append((getattr(module, func)(**kw), kw))
        (r0, kw0), (r1, kw1) = runs
        assert r0 == r1, case
        for k in kwargs:
            if isinstance(kwargs[k], np.ndarray):
                np.testing.assert_array_equal(kw1[k], kw0[k], err_msg=f"{case} {k}")


# ---------------------------------------------------------------------------------------
# 6. One compiled signature per dtype after a training run (numba)

_SIGNATURE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numba
    import numpy as np
    from fastnn.kernels import codes as C, numba_cpu as nb
    from tests import kernel_cases as kc

    for dtype in (np.float32, np.float64):
        for loss in (C.SPARSE_SOFTMAX_CE, C.MSE):
            s = kc.mlp3(loss, dtype, kc.rng_for("sig", loss))
            kc.train_steps(nb, s, loss, C.ADAM, 2)
            b = s.buffers()
            lossg = kc.loss_args(loss, 0, kc.acc_mode_for(loss))
            nb.eval_step((s.x, s.y, s.sw), b.plan, b.net, b.work, lossg)
            nb.forward_stack(s.x, b.plan, b.net, b.work, 0, 0, 0)
            stats = np.zeros(C.STAT_LEN)
            order = np.arange(s.n, dtype=np.int64)
            ws = (s.x[:8].copy(), s.y[:8].copy(), s.sw[:8].copy(), b.acts, b.gbuf, b.acc)
            for train in (1, 0):
                nb.run_epoch((s.x, s.y, s.sw, order, 8), b.plan, b.net, ws, lossg,
                             (C.ADAM, np.array(kc.HYPER[C.ADAM]), np.full(3, 0.01), 3, 5),
                             train, stats)
    out = {}
    for name, f in vars(nb).items():
        if isinstance(f, numba.core.dispatcher.Dispatcher):
            out[name] = [str(sig) for sig in f.signatures]
    json.dump(out, sys.stdout)
    """
)


def test_one_signature_per_dtype_after_a_training_run():
    if "numba" not in BACKENDS:
        pytest.skip("numba backend not available")
    # a fresh process: other tests compile extra signatures on purpose (e.g. int labels)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNATURE_SCRIPT], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sigs = json.loads(proc.stdout)
    for top in ("train_step", "eval_step", "forward_stack", "run_epoch"):
        assert len(sigs[top]) == 2, (top, sigs[top])  # float32 and float64 both compiled
    for name, found in sigs.items():
        by_dtype = {}
        for sig in found:  # keyed by the first float type in the signature (its arrays')
            m = re.search(r"float(32|64)", sig)
            by_dtype.setdefault(m.group(0) if m else "none", []).append(sig)
        for key, same in by_dtype.items():
            assert len(same) == 1, f"{name} compiled {len(same)} {key} signatures: {same}"


def test_module_imports_without_compiling():
    if "numba" not in BACKENDS:
        pytest.skip("numba backend not available")
    code = (
        "import numba, fastnn.kernels.numba_cpu as nb\n"
        "d = [f for f in vars(nb).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]\n"
        "assert d and all(not f.signatures for f in d)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", compiled_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_over_its_whole_range(name, dtype):
    """tanh (float32: a rational approximation in the compiled backends) against NumPy's
    on a dense grid, tiny and huge values, infinities and NaN, standalone and fused."""
    k = backend.load(name)
    grid = np.linspace(-12, 12, 200_005)  # with the rest: 7 columns
    tiny = np.geomspace(1e-30, 1e-2, 2_000)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 8.99, 9.0, 9.01]
    x = np.concatenate([grid, tiny, -tiny, special]).astype(dtype).reshape(-1, 7)
    out = np.empty_like(x)
    k.activation_forward(x, out, C.TANH, 0.0)
    assert_close(out, np.tanh(x.astype(np.float64)), dtype, what=f"{name} tanh")
    assert np.nanmax(np.abs(out)) <= 1.0
    finite = np.where(np.isfinite(x), x, 0).astype(dtype)  # x @ I would turn inf to NaN
    fused = np.empty_like(x)
    k.dense_forward(finite, np.eye(7, dtype=dtype), np.zeros(7, dtype), fused, C.TANH, 0.0)
    assert_close(fused, np.tanh(finite.astype(np.float64)), dtype, what=f"{name} fused tanh")


def _ulps(got, want) -> np.ndarray:
    """|got - want| in units of the float32 spacing at ``want`` (float64 ``want``)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.mark.parametrize("name", compiled_backends())
def test_float32_exp_over_its_whole_range(name):
    """float32 exp (in the compiled backends possibly a polynomial with no libm call), as
    sigmoid and as softmax see it: within 3 ulp from overflow to the subnormal range, exact
    at the specials, standalone and fused into the dense epilogue."""
    k = backend.load(name)
    grid = np.linspace(-110, 95, 400_001)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 88.72, -87.33, -103.97]
    x = np.concatenate([grid, special]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    out = np.empty_like(x).reshape(-1, 1)
    k.activation_forward(x.reshape(-1, 1), out, C.SIGMOID, 0.0)
    out = out.ravel()
    assert np.array_equal(np.isnan(out), np.isnan(x))
    ok = ~np.isnan(x)
    assert _ulps(out[ok], want[ok]).max() <= 3.0, f"{name} sigmoid"
    fused = np.empty((x.size - 1, 1), np.float32)
    finite = np.where(np.isfinite(x[ok]), x[ok], 0).astype(np.float32).reshape(-1, 1)
    k.dense_forward(finite, np.ones((1, 1), np.float32), np.zeros(1, np.float32), fused,
                    C.SIGMOID, 0.0)  # fmt: skip
    with np.errstate(over="ignore"):
        want_f = 1.0 / (1.0 + np.exp(-finite.astype(np.float64)))
    assert _ulps(fused, want_f).max() <= 3.0, f"{name} fused sigmoid"
    # softmax rows of [0, t]: exp(t - max) for t down to the subnormal range
    t = np.linspace(-104, 0, 50_001).astype(np.float32)
    rows = np.stack([np.zeros_like(t), t], axis=1)
    soft = np.empty_like(rows)
    k.activation_forward(rows, soft, C.SOFTMAX, 0.0)
    e = np.exp(t.astype(np.float64))
    assert _ulps(soft[:, 1], e / (1 + e)).max() <= 3.0, f"{name} softmax"


def _one_element_losses(fn, values, target, alias):
    """fn's loss of each float32 value alone (a 1x1 batch with the given target), with its
    first output (the probabilities, else the gradient) in its own array or (alias) written
    over the input, as the kernels allow."""
    y, sw = np.full((1, 1), target, np.float32), np.ones(1, np.float32)
    two_outputs = fn.__name__ == "sigmoid_binary_cross_entropy"
    out = []
    for v in values:
        x = np.full((1, 1), v, np.float32)
        outputs = [x if alias else np.empty_like(x)] + ([np.empty_like(x)] if two_outputs else [])
        out.append(fn(x, y, sw, *outputs))
    return np.array(out)


@pytest.mark.parametrize("alias", [False, True], ids=["own_output", "output_over_input"])
@pytest.mark.parametrize("name", compiled_backends())
def test_float32_log_in_the_losses(name, alias):
    """float32 log and log1p (in the compiled backends possibly polynomials with no libm
    call) as the losses see them, one element per call: -log(p) over the whole clip range
    of the cross-entropy, log1p(exp(z)) (sigmoid cross-entropy) down to exp's subnormals."""
    k = backend.load(name)
    lo, hi = np.float32(C.PROB_EPS), np.float32(1 - C.PROB_EPS)
    probs = np.concatenate([np.geomspace(1e-7, 1, 1500), 1 - np.geomspace(1e-7, 0.5, 500)])
    pc = np.clip(probs.astype(np.float32), lo, hi)
    got = _one_element_losses(k.categorical_crossentropy, pc, 1.0, alias)
    assert _ulps(got, -np.log(pc.astype(np.float64))).max() <= 1.0, f"{name} log"
    z = -np.geomspace(1e-30, 100, 2000).astype(np.float32)
    got = _one_element_losses(k.sigmoid_binary_cross_entropy, z, 0.0, alias)
    want = np.log1p(np.exp(z.astype(np.float64)))
    assert _ulps(got, want).max() <= 3.0, f"{name} log1p(exp)"


def _dropout_sandwich(dtype):
    """Input Dropout -> Dense(7, relu) -> Dropout(0.5) -> Dense(3): no penalties, so the
    weight gradients of a batch are the sums of its shards'."""
    spec = [
        (C.DROPOUT, 6, C.LINEAR, 0.3, 0.0, 0.0),
        (C.DENSE, 7, C.RELU, 0.0, 0.0, 0.0),
        (C.DROPOUT, 7, C.LINEAR, 0.5, 0.0, 0.0),
        (C.DENSE, 3, C.LINEAR, 0.0, 0.0, 0.0),
    ]
    return Stack(spec, 6, 11, dtype, rng_for("row0"))


def _forward_backward(module, s, rows, row0, dout):
    """Forward (training) and backward of the rows [row0, row0 + len) of the batch with
    dL/dout ``dout``; returns (output, weight gradients)."""
    b = s.buffers(len(rows))
    x = np.ascontiguousarray(s.x[rows])
    module.forward_stack(x, b.plan, b.net, b.work, 1, 21, 4, row0)
    out = b.output(len(rows)).copy()
    b.dout(len(rows))[...] = dout
    module.backward_stack(x, b.plan, b.net, b.work, 21, 4, row0)
    return out, b.grads.copy()


@dtypes
def test_shards_of_a_batch_see_the_batch_dropout_masks(mod, dtype):
    """forward_stack/backward_stack with row0: the rows of a shard get the outputs and the
    masks they have in the whole batch, so the shards' weight gradients sum to the batch's
    (what a data-parallel step relies on)."""
    s = _dropout_sandwich(dtype)
    dout = rng_for("row0 dout").standard_normal((s.n, 3)).astype(dtype)
    out_full, g_full = _forward_backward(ref, s, np.arange(s.n), 0, dout)
    cuts = (0, 4, 5, s.n)  # unequal shards, one of a single row
    for module in (ref, mod):
        outs, g_sum = [], np.zeros_like(g_full)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            out, g = _forward_backward(module, s, np.arange(lo, hi), lo, dout[lo:hi])
            outs.append(out)
            g_sum += g
        assert_close(np.concatenate(outs), out_full, dtype, k=8, what="shard outputs")
        assert_close(g_sum, g_full, dtype, k=16, scale=4.0, what="summed shard grads")
    # without row0 the second shard would draw the first rows' masks: the test can fail
    out_wrong, _ = _forward_backward(ref, s, np.arange(4, 5), 0, dout[4:5])
    assert not np.allclose(out_wrong, out_full[4:5])


@pytest.mark.parametrize("module", [ref, *BACKENDS], ids=lambda m: getattr(m, "__name__", m))
def test_negative_row0_is_refused(module):
    module = backend.load(module) if isinstance(module, str) else module
    s = _dropout_sandwich(np.float32)
    b = s.buffers()
    with pytest.raises(ValueError, match="row0"):
        module.forward_stack(s.x, b.plan, b.net, b.work, 1, 21, 4, -1)
    with pytest.raises(ValueError, match="row0"):
        module.backward_stack(s.x, b.plan, b.net, b.work, 21, 4, -1)
