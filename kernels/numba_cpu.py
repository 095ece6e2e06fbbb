"""Numba CPU kernels: the contract of ``reference`` compiled with ``@njit``.

Every operation of ``reference.OPS`` is defined here with the same name, parameters and
semantics (shapes, aliasing, return values); see ``reference`` for the specification.

- Nothing is compiled at import: each function compiles on first use, once per float
  dtype, and is cached on disk (``cache=True``).  ``error_model="numpy"`` lets LLVM
  vectorise the loops; fastmath stays off, so NaN checks survive and the rounding stays
  close to NumPy's (the optimizers use the reference's operation order, Adam up to one
  reassociation).
- Scalars are cast to the arrays' dtype (``x.dtype.type(v)``): float32 loops stay float32.
- GEMMs call BLAS directly with transpose flags (``_gemm``: NumPy's bundled OpenBLAS when
  its CBLAS symbols are found, else SciPy's BLAS, which ``np.dot`` in njit uses).  The
  bias + activation epilogue, the derivative + bias-gradient pass, softmax + cross-entropy
  and each optimizer are single fused passes without temporaries.
- ``train_step``, ``eval_step``, ``forward_stack``, ``backward_stack`` and ``run_epoch`` are
  single compiled calls: no Python runs between the operations of a step or an epoch.
- Scalar types select compiled signatures: pass integer scalars (codes, flags such as
  ``training``/``logits_out``/``train``/``need_dx``/``nesterov``, steps, seeds, sizes) as
  Python ints and real ones as Python floats.  A bool or a NumPy scalar compiles another
  signature.  Kernels call each other with int64/float64 scalars, never literals, so a
  training run compiles each function once per dtype.
- The call graph is kept shallow on purpose: Numba re-optimises and re-generates the code
  of every callee inside each caller, so each extra level of wrappers costs cold-compile
  time, not run time.  Measured on 2 cores: the first ``run_epoch`` of a process with an
  empty cache compiles the whole training path in ~25 s per dtype; from the cache ~0.5 s.
"""

from __future__ import annotations

import ctypes
import math

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic, overload

from . import codes as C

_jit = njit(cache=True, error_model="numpy", nogil=True)

# Constants passed to other kernels must not be literals: Numba compiles a separate
# specialisation for each literal value (e.g. forward_stack(..., 1, ...) vs an int64).
_TRUE, _FALSE = np.bool_(True), np.bool_(False)
_LINEAR_I = np.int64(C.LINEAR)


# tanh of float32 as an odd 13/6-degree rational function on [-9, 9] (+-1 beyond), within 3
# ulp: no libm call, so the loops vectorise (libm's tanhf costs about 17 ns per element
# here, ~40x NumPy's SIMD tanh).  float64 keeps libm's tanh.
_F = np.float32
_T_NUM = tuple(
    _F(c)
    for c in (
        -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
        4.89352455891786e-03,
    )
)  # fmt: skip
_T_DEN = tuple(
    _F(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                    4.89352518554385e-03)
)  # fmt: skip
_NINE, _ONE32 = _F(9.0), _F(1.0)


def _tanh(v):
    """tanh in the precision of ``v`` (float32: the rational above)."""
    return np.tanh(v)


def _tanh_float32(v):
    c = _NINE if v > _NINE else (-_NINE if v < -_NINE else v)  # comparisons keep NaN
    c2 = c * c
    num = _T_NUM[0]
    num = num * c2 + _T_NUM[1]
    num = num * c2 + _T_NUM[2]
    num = num * c2 + _T_NUM[3]
    num = num * c2 + _T_NUM[4]
    num = num * c2 + _T_NUM[5]
    num = (num * c2 + _T_NUM[6]) * c
    den = _T_DEN[0]
    den = den * c2 + _T_DEN[1]
    den = den * c2 + _T_DEN[2]
    den = den * c2 + _T_DEN[3]
    t = num / den
    return _ONE32 if t > _ONE32 else (-_ONE32 if t < -_ONE32 else t)


@overload(_tanh, inline="always")
def _tanh_overload(v):
    if v == types.float32:
        return _tanh_float32
    return lambda v: np.tanh(v)


# exp of float32 without a libm call, so that loops of it vectorise (libm's expf is a scalar
# call, ~4x NumPy's SIMD exp in a sigmoid here); the same steps as the Cython backend's
# fastnn_expf: x = k ln2 + r with |r| <= ln2/2 (k by adding and subtracting 1.5 * 2^23, ln2
# in two parts), exp(r) by Cephes' degree-6 polynomial, 2^k as two exact powers of two so
# that k down to -150 (subnormal results) and up to 128 (overflow) need no branch.  Within
# 2 ulp; NaN stays NaN, -inf gives 0, +inf gives inf.  float64 keeps libm's exp.
_EXP_LO, _EXP_HI, _EXP_SHIFT = _F(-104.0), _F(89.0), _F(12582912.0)
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_EXP_P = tuple(
    _F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                    1.6666665459e-1, 5.0000001201e-1)
)  # fmt: skip
_ZERO32 = _F(0.0)


@intrinsic
def _pow2i(typingctx, k):
    """2.0f ** k for an integer k in [-126, 127]: k + 127 placed in float32's exponent."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        k32 = context.cast(builder, args[0], k, types.int32)
        bits = builder.shl(builder.add(k32, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(k), codegen


def _exp(v):
    """exp in the precision of ``v`` (float32: the polynomial above)."""
    return np.exp(v)


def _exp_float32(v):
    c = _EXP_LO if v < _EXP_LO else v  # comparisons keep NaN
    c = _EXP_HI if c > _EXP_HI else c
    kf = (c * _LOG2E + _EXP_SHIFT) - _EXP_SHIFT
    r = c - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p = _EXP_P[0]
    p = p * r + _EXP_P[1]
    p = p * r + _EXP_P[2]
    p = p * r + _EXP_P[3]
    p = p * r + _EXP_P[4]
    p = p * r + _EXP_P[5]
    p = p * (r * r) + r + _ONE32
    k = np.int32(kf if kf == kf else _ZERO32)  # NaN: p is NaN already
    k1 = k >> np.int32(1)
    return (p * _pow2i(k1)) * _pow2i(k - k1)


@overload(_exp)
def _exp_overload(v):
    if v == types.float32:
        return _exp_float32
    return lambda v: np.exp(v)


_LINEAR, _RELU, _LEAKY_RELU, _SIGMOID, _TANH, _SOFTMAX = (
    C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH, C.SOFTMAX,
)  # fmt: skip
_ELU, _SELU, _GELU, _SILU, _SOFTPLUS = C.ELU, C.SELU, C.GELU, C.SILU, C.SOFTPLUS
_SELU_ALPHA, _SELU_SCALE = C.SELU_ALPHA, C.SELU_SCALE
_SQRT_HALF, _INV_SQRT_2PI = 0.7071067811865476, 0.3989422804014327
_DENSE, _DROPOUT, _ACTIVATION = C.DENSE, C.DROPOUT, C.ACTIVATION
_BATCHNORM, _NORMALIZATION = C.BATCHNORM, C.NORMALIZATION
_P_KIND, _P_ACT, _P_IN0, _P_IN1, _P_IN2 = C.P_KIND, C.P_ACT, C.P_IN0, C.P_IN1, C.P_IN2
_P_OUT0, _P_OUT1, _P_OUT2 = C.P_OUT0, C.P_OUT1, C.P_OUT2
_P_IN_OFF, _P_OUT_OFF, _P_SAVE_OFF, _P_ACC_OFF = C.P_IN_OFF, C.P_OUT_OFF, C.P_SAVE_OFF, C.P_ACC_OFF
_P_W0, _P_W1, _P_S0, _P_S1 = C.P_W0, C.P_W1, C.P_S0, C.P_S1
_P_DOUT_OFF, _P_DX_OFF, _P_BACKWARD = C.P_DOUT_OFF, C.P_DX_OFF, C.P_BACKWARD
_F_ALPHA, _F_L1, _F_L2, _F_RATE = C.F_ALPHA, C.F_L1, C.F_L2, C.F_RATE
_F_MOMENTUM, _F_EPSILON, _NORM_EPS = C.F_MOMENTUM, C.F_EPSILON, C.NORM_EPS
_NORM, _RNN, _P_FROZEN = C.NORM, C.RNN, C.P_FROZEN
_CONV, _CONV2D, _MAXPOOL2D, _AVGPOOL2D = C.CONV, C.CONV2D, C.MAXPOOL2D, C.AVGPOOL2D
_GLOBAL_AVGPOOL2D, _GLOBAL_MAXPOOL2D = C.GLOBAL_AVGPOOL2D, C.GLOBAL_MAXPOOL2D
_P_KH, _P_KW, _P_SH, _P_SW = C.P_KH, C.P_KW, C.P_SH, C.P_SW
_P_PAD_TOP, _P_PAD_LEFT = C.P_PAD_TOP, C.P_PAD_LEFT
_SOFTMAX_CE, _SPARSE_SOFTMAX_CE, _SIGMOID_BCE = C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE
_CATEGORICAL_CE, _BINARY_CE, _MSE, _MAE = C.CATEGORICAL_CE, C.BINARY_CE, C.MSE, C.MAE
_SGD, _MOMENTUM, _ADAGRAD, _RMSPROP, _ADAM = C.SGD, C.MOMENTUM, C.ADAGRAD, C.RMSPROP, C.ADAM
_ACC_SPARSE, _ACC_CATEGORICAL, _ACC_BINARY = C.ACC_SPARSE, C.ACC_CATEGORICAL, C.ACC_BINARY
_M_TOP_K, _M_SPARSE_TOP_K, _M_CONFUSION, _M_HISTOGRAM = (
    C.M_TOP_K, C.M_SPARSE_TOP_K, C.M_CONFUSION, C.M_HISTOGRAM,
)  # fmt: skip
_STAT_LOSS, _STAT_CORRECT, _STAT_ABS, _STAT_SQ, _STAT_ROWS, _STAT_NONFINITE = (
    C.STAT_LOSS, C.STAT_CORRECT, C.STAT_ABS, C.STAT_SQ, C.STAT_ROWS, C.STAT_NONFINITE,
)  # fmt: skip
_PROB_EPS = C.PROB_EPS
_HUBER, _KL_DIVERGENCE, _POISSON, _HUBER_DELTA = C.HUBER, C.KL_DIVERGENCE, C.POISSON, C.HUBER_DELTA
_NADAM, _NADAM_DECAY, _NADAM_STEPS = C.NADAM, 0.96, 1000
_AMSGRAD, _RMSPROP_MC, _H_WEIGHT_DECAY = C.AMSGRAD, C.RMSPROP_MC, C.H_WEIGHT_DECAY
_N_OPTS = C.N_OPTS
_HYPER_LEN, _N_CLIP, _P_W2 = C.HYPER_LEN, C.N_CLIP, C.P_W2
_H_CLIPNORM, _H_CLIPVALUE, _H_GLOBAL_CLIPNORM = C.H_CLIPNORM, C.H_CLIPVALUE, C.H_GLOBAL_CLIPNORM

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S40 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(40)


def check_available():
    """Raises if the kernels cannot run here (the BLAS fallback needs SciPy)."""
    import scipy.linalg.cython_blas  # noqa: F401


# ---------------------------------------------------------------------------------------
# GEMM.  NumPy's bundled OpenBLAS (newer) measured 5-12% faster than SciPy's copy, which
# np.dot inside njit uses, on this project's GEMM shapes.  Compiled code calls BLAS through
# a table filled at import: [sgemm, dgemm, abi], abi 1 = NumPy's ILP64 CBLAS, abi 0 =
# SciPy's LP64 Fortran BLAS (scipy.linalg.cython_blas, always there).  Cached machine code
# only refers to the table's symbol, so a cache stays valid when the BLAS found changes.

_BLAS_SYMBOL = "fastnn_numba_cpu_blas_table_v1"
_BLAS_TABLE = (ctypes.c_void_p * 3)()
#: Which BLAS the kernels' GEMMs call: "numpy-cblas64" or "scipy-f77".
BLAS = "scipy-f77"


def _fill_blas_table(prefer_numpy=True):
    """Points the table at NumPy's ILP64 CBLAS if its symbols are found (and preferred),
    else at SciPy's BLAS.  Takes effect at once, also in compiled and cached kernels."""
    global BLAS
    BLAS = "scipy-f77"
    try:
        if not prefer_numpy:
            raise OSError("SciPy's BLAS requested")
        try:
            from numpy._core import _multiarray_umath as umath
        except ImportError:  # NumPy 1.x
            from numpy.core import _multiarray_umath as umath
        lib = ctypes.CDLL(umath.__file__)  # dlsym also searches the libraries it links
        for prefix in ("scipy_cblas_", "cblas_"):
            try:
                s_addr = ctypes.cast(getattr(lib, f"{prefix}sgemm64_"), ctypes.c_void_p).value
                d_addr = ctypes.cast(getattr(lib, f"{prefix}dgemm64_"), ctypes.c_void_p).value
            except AttributeError:
                continue
            _BLAS_TABLE[0], _BLAS_TABLE[1], _BLAS_TABLE[2] = s_addr, d_addr, 1
            BLAS = "numpy-cblas64"
            break
    except (AttributeError, ImportError, OSError):
        pass
    if BLAS != "numpy-cblas64":
        from numba.core.extending import get_cython_function_address

        _BLAS_TABLE[0] = get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
        _BLAS_TABLE[1] = get_cython_function_address("scipy.linalg.cython_blas", "dgemm")
        _BLAS_TABLE[2] = 0
    llvm_binding.add_symbol(_BLAS_SYMBOL, ctypes.addressof(_BLAS_TABLE))


_fill_blas_table()


@intrinsic
def _gemm(typingctx, a, b, c, trans_a, trans_b):
    """c = op(a) @ op(b), op = transpose where trans_* is non-zero; a, b, c C-contiguous
    2-D arrays of one float dtype (transposes are BLAS flags, never copies)."""
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
        return None
    if any(t.layout != "C" or t.dtype != c.dtype for t in arrays) or c.dtype not in (
        types.float32,
        types.float64,
    ):
        raise errors.TypingError(
            f"fastnn kernels need C-contiguous float32/float64 arrays of one dtype, got {arrays}"
        )

    def codegen(context, builder, signature, args):
        fl = context.get_value_type(c.dtype)
        i32, i64, i8 = ir.IntType(32), ir.IntType(64), ir.IntType(8)
        fp = fl.as_pointer()
        arr_a, arr_b, arr_c = (
            context.make_array(t)(context, builder, v) for t, v in zip((a, b, c), args[:3])
        )
        ta = builder.icmp_unsigned("!=", args[3], ir.Constant(args[3].type, 0))
        tb = builder.icmp_unsigned("!=", args[4], ir.Constant(args[4].type, 0))
        a_rows, a_cols = cgutils.unpack_tuple(builder, arr_a.shape, 2)
        b_cols = cgutils.unpack_tuple(builder, arr_b.shape, 2)[1]
        m, n = cgutils.unpack_tuple(builder, arr_c.shape, 2)
        k = builder.select(ta, a_rows, a_cols)
        one = ir.Constant(i64, 1)

        def ld(v):  # BLAS wants leading dimensions >= 1 even for empty matrices
            return builder.select(builder.icmp_signed(">", v, one), v, one)

        lda, ldb, ldc = ld(a_cols), ld(b_cols), ld(n)
        pa, pb, pc = (builder.bitcast(x.data, fp) for x in (arr_a, arr_b, arr_c))
        alpha, beta = ir.Constant(fl, 1.0), ir.Constant(fl, 0.0)

        table_ty = ir.ArrayType(i8.as_pointer(), 3)
        table = builder.module.globals.get(_BLAS_SYMBOL)
        if table is None:
            table = ir.GlobalVariable(builder.module, table_ty, _BLAS_SYMBOL)
            table.linkage = "external"
        idx = 0 if c.dtype == types.float32 else 1
        zero32 = ir.Constant(i32, 0)
        fn = builder.load(builder.gep(table, [zero32, ir.Constant(i32, idx)]))
        abi = builder.ptrtoint(builder.load(builder.gep(table, [zero32, ir.Constant(i32, 2)])), i64)
        with builder.if_else(builder.icmp_signed("==", abi, one)) as (cblas64, f77):
            with cblas64:  # cblas_?gemm(RowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, ...)
                fnty = ir.FunctionType(
                    ir.VoidType(), [i32, i32, i32, i64, i64, i64, fl, fp, i64, fp, i64, fl, fp, i64]
                )
                trans = [builder.select(t, ir.Constant(i32, 112), ir.Constant(i32, 111))
                         for t in (ta, tb)]  # fmt: skip
                builder.call(
                    builder.bitcast(fn, fnty.as_pointer()),
                    [ir.Constant(i32, 101), trans[0], trans[1], m, n, k, alpha, pa, lda, pb, ldb,
                     beta, pc, ldc],
                )  # fmt: skip
            with f77:  # column-major: C^T = op(B)^T op(A)^T, everything by reference, int32
                i8p, i32p, flp = i8.as_pointer(), i32.as_pointer(), fl.as_pointer()
                fnty = ir.FunctionType(
                    ir.VoidType(),
                    [i8p, i8p, i32p, i32p, i32p, flp, fp, i32p, fp, i32p, flp, fp, i32p],
                )

                def byref(v):
                    return cgutils.alloca_once_value(builder, v)

                def char(t):
                    return byref(
                        builder.select(t, ir.Constant(i8, ord("T")), ir.Constant(i8, ord("N")))
                    )

                def int32(v):
                    return byref(builder.trunc(v, i32))

                builder.call(
                    builder.bitcast(fn, fnty.as_pointer()),
                    [char(tb), char(ta), int32(n), int32(m), int32(k), byref(alpha), pb,
                     int32(ldb), pa, int32(lda), byref(beta), pc, int32(ldc)],
                )  # fmt: skip
        return context.get_dummy_value()

    return types.void(a, b, c, trans_a, trans_b), codegen


# ---------------------------------------------------------------------------------------
# Activations
#
# Explicit loops everywhere, never slice assignment: Numba's slice assignment compiles its
# string-formatting error path (seconds of cold-compile time).


@_jit
def _copy(src, dst):
    """dst[...] = src for (N, O) arrays."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@_jit
def activation_forward(x, out, act, alpha):
    """See reference.activation_forward (out may alias x)."""
    n, o = x.shape
    t = x.dtype.type
    zero, one, a = t(0), t(1), t(alpha)
    if act == _RELU:
        for i in range(n):
            for j in range(o):
                v = x[i, j]
                out[i, j] = zero if v < zero else v  # NaN passes, as np.maximum
    elif act == _LINEAR:
        _copy(x, out)
    elif act == _LEAKY_RELU:
        for i in range(n):
            for j in range(o):
                v = x[i, j]
                out[i, j] = v if v > zero else v * a
    elif act == _SIGMOID:
        for i in range(n):
            for j in range(o):
                v = x[i, j]
                e = _exp(-np.abs(v))
                out[i, j] = one / (one + e) if v >= zero else e / (one + e)
    elif act == _TANH:
        for i in range(n):
            for j in range(o):
                out[i, j] = _tanh(x[i, j])
    elif act == _SOFTMAX:
        for i in range(n if o > 0 else 0):  # a row of no columns has no max, nothing to do
            m = x[i, 0]
            for j in range(1, o):
                if x[i, j] > m:
                    m = x[i, j]
            for j in range(o):  # apart from the sum, so that it vectorises
                out[i, j] = _exp(x[i, j] - m)
            s = zero
            for j in range(o):
                s += out[i, j]
            for j in range(o):
                out[i, j] = out[i, j] / s
    elif act >= _ELU and act <= _SOFTPLUS:
        _smooth_forward(x, out, act, alpha)
    else:
        raise ValueError("unknown activation code")


@_jit
def _smooth_forward(x, out, act, alpha):
    """out = act(x) for elu, selu, gelu, silu and softplus (one loop each; out may alias x)."""
    n, o = x.shape
    t = x.dtype.type
    zero, one, half = t(0), t(1), t(0.5)
    a = t(alpha) if act == _ELU else t(_SELU_ALPHA)
    scale = t(_SELU_SCALE) if act == _SELU else one
    r2 = t(_SQRT_HALF)
    for i in range(n):
        if act == _ELU or act == _SELU:
            for j in range(o):
                v = x[i, j]
                out[i, j] = scale * (v if v > zero else a * np.expm1(v))
        elif act == _GELU:
            for j in range(o):
                v = x[i, j]
                out[i, j] = half * v * (one + math.erf(v * r2))
        elif act == _SILU:
            for j in range(o):
                v = x[i, j]
                e = _exp(-np.abs(v))
                out[i, j] = v * (one / (one + e) if v >= zero else e / (one + e))
        else:
            for j in range(o):
                v = x[i, j]
                out[i, j] = (v if v > zero else zero) + np.log1p(_exp(-np.abs(v)))


@_jit
def _smooth_backward(y, dx, i, act, alpha):
    """dx[i] *= act'(.) for the activations of _smooth_forward: from the output y, or
    (gelu, silu) from the input passed as y (see reference.activation_backward)."""
    o = y.shape[1]
    t = y.dtype.type
    zero, one, half = t(0), t(1), t(0.5)
    if act == _ELU or act == _SELU:
        scale = t(_SELU_SCALE) if act == _SELU else one
        shift = t(_SELU_SCALE * _SELU_ALPHA) if act == _SELU else t(alpha)
        for j in range(o):
            yv = y[i, j]
            dx[i, j] = dx[i, j] * (scale if yv > zero else yv + shift)
    elif act == _GELU:
        r2, c = t(_SQRT_HALF), t(_INV_SQRT_2PI)
        for j in range(o):
            v = y[i, j]
            d = half * (one + math.erf(v * r2)) + v * c * _exp(-half * v * v)
            dx[i, j] = dx[i, j] * d
    elif act == _SILU:
        for j in range(o):
            v = y[i, j]
            e = _exp(-np.abs(v))
            sg = one / (one + e) if v >= zero else e / (one + e)
            dx[i, j] = dx[i, j] * (sg * (one + v * (one - sg)))
    else:
        for j in range(o):
            dx[i, j] = dx[i, j] * -np.expm1(-y[i, j])


@_jit
def _bias_act(out, b, act, alpha):
    """out = act(out + b) in one pass: the epilogue of reference.dense_forward; an empty b
    is no bias (a select in the loops, which LLVM unswitches: calling activation_forward
    instead would compile all its branches into dense_forward once more)."""
    n, o = out.shape
    t = out.dtype.type
    zero, one, a = t(0), t(1), t(alpha)
    has_b = b.shape[0] > 0
    if act == _RELU:
        for i in range(n):
            for j in range(o):
                v = out[i, j] + (b[j] if has_b else zero)
                out[i, j] = zero if v < zero else v
    elif act == _LINEAR:
        for i in range(n):
            for j in range(o):
                out[i, j] += b[j] if has_b else zero
    elif act == _LEAKY_RELU:
        for i in range(n):
            for j in range(o):
                v = out[i, j] + (b[j] if has_b else zero)
                out[i, j] = v if v > zero else v * a
    elif act == _SIGMOID:
        for i in range(n):
            for j in range(o):
                v = out[i, j] + (b[j] if has_b else zero)
                e = _exp(-np.abs(v))
                out[i, j] = one / (one + e) if v >= zero else e / (one + e)
    elif act == _TANH:
        for i in range(n):
            for j in range(o):
                out[i, j] = _tanh(out[i, j] + (b[j] if has_b else zero))
    elif act == _SOFTMAX:
        for i in range(n if o > 0 else 0):  # a row of no columns has no max, nothing to do
            for j in range(o):
                out[i, j] += b[j] if has_b else zero
            m = out[i, 0]
            for j in range(1, o):
                if out[i, j] > m:
                    m = out[i, j]
            for j in range(o):  # apart from the sum, so that it vectorises
                out[i, j] = _exp(out[i, j] - m)
            s = zero
            for j in range(o):
                s += out[i, j]
            for j in range(o):
                out[i, j] = out[i, j] / s
    elif act >= _ELU and act <= _SOFTPLUS:
        for i in range(n):
            for j in range(o):
                out[i, j] += b[j] if has_b else zero
        _smooth_forward(out, out, act, alpha)
    else:
        raise ValueError("unknown activation code")


@_jit
def _act_backward(y, dout, dx, db, act, alpha, with_db):
    """reference.activation_backward; with ``with_db`` also db = sum_N dx, row by row."""
    n, o = y.shape
    t = y.dtype.type
    zero, one, a = t(0), t(1), t(alpha)
    # dx is computed in place from a copy of dout: when dx aliases dout (the stack's case)
    # a loop reading dout and writing dx fails LLVM's runtime overlap check and runs
    # scalar (5x slower); reading and writing dx alone vectorises either way.
    copy = dx.ctypes.data != dout.ctypes.data
    if with_db:
        for j in range(o):
            db[j] = zero
    for i in range(n):
        if copy:
            for j in range(o):
                dx[i, j] = dout[i, j]
        if act == _RELU:
            for j in range(o):
                dx[i, j] = dx[i, j] if y[i, j] > zero else zero
        elif act == _LEAKY_RELU:
            for j in range(o):
                d = dx[i, j]
                dx[i, j] = d if y[i, j] > zero else d * a
        elif act == _SIGMOID:
            for j in range(o):
                yv = y[i, j]
                dx[i, j] = dx[i, j] * yv * (one - yv)
        elif act == _TANH:
            for j in range(o):
                yv = y[i, j]
                dx[i, j] = dx[i, j] * (one - yv * yv)
        elif act == _SOFTMAX:
            s = zero
            for j in range(o):
                s += dx[i, j] * y[i, j]
            for j in range(o):
                dx[i, j] = y[i, j] * (dx[i, j] - s)
        elif act >= _ELU and act <= _SOFTPLUS:
            _smooth_backward(y, dx, i, act, alpha)
        elif act != _LINEAR:
            raise ValueError("unknown activation code")
        if with_db:  # the row is still in L1: no second pass over dz
            for j in range(o):
                db[j] += dx[i, j]


@_jit
def activation_backward(y, dout, dx, act, alpha):
    """See reference.activation_backward (dx may alias dout)."""
    _act_backward(y, dout, dx, dout[0], act, alpha, _FALSE)


# ---------------------------------------------------------------------------------------
# Dense layer


@_jit
def dense_forward(x, w, b, out, act, alpha):
    """See reference.dense_forward: the GEMM, then one bias + activation pass (b may be
    empty: no bias)."""
    _gemm(x, w, out, 0, 0)
    _bias_act(out, b, act, alpha)


@_jit
def dense_backward(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
    """See reference.dense_backward: one derivative + db pass, then the two GEMMs."""
    _act_backward(y, dout, dz, db, act, alpha, db.shape[0] > 0)  # db empty: no bias
    _gemm(x, dz, dw, 1, 0)
    if need_dx:
        _gemm(dz, w, dx, 0, 1)


# ---------------------------------------------------------------------------------------
# Dropout (the counter-based splitmix64 hash of reference.dropout_keep, in uint64)


@_jit
def _splitmix64(z):
    """The splitmix64 finaliser on a uint64 (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@_jit
def dropout_seed(seed, step, layer):
    """See reference.dropout_seed (int64 arithmetic; its 64 bits are the hash's seed)."""
    return seed + step * 65536 + layer


@_jit
def dropout_forward(x, out, rate, seed):
    """See reference.dropout_forward (out may alias x)."""
    _dropout_from(x, out, rate, seed, np.int64(0))


@_jit
def _dropout_from(x, out, rate, seed, first):
    """reference.dropout_forward with the mask's elements from ``first`` on (a shard of
    rows of a larger batch)."""
    n, o = x.shape
    t = x.dtype.type
    scale, zero = t(1.0 / (1.0 - rate)), t(0)
    base = _splitmix64(np.uint64(seed)) + np.uint64(first)
    thr = np.uint64(np.int64(rate * 16777216.0))
    for i in range(n):
        k0 = np.uint64(i) * np.uint64(o) + base
        for j in range(o):
            h = _splitmix64(k0 + np.uint64(j)) >> _S40
            out[i, j] = x[i, j] * scale if h >= thr else zero


@_jit
def dropout_backward(dout, dx, rate, seed):
    """See reference.dropout_backward (the forward's mask; dx may alias dout)."""
    dropout_forward(dout, dx, rate, seed)


@_jit
def _dropout_keep_flat(keep, rate, seed):
    """Writes reference.dropout_keep's mask into the flat bool array ``keep``."""
    base = _splitmix64(np.uint64(seed))
    thr = np.uint64(np.int64(rate * 16777216.0))
    for k in range(keep.shape[0]):
        keep[k] = (_splitmix64(np.uint64(k) + base) >> _S40) >= thr


def dropout_keep(shape, rate, seed):
    """See reference.dropout_keep (the same mask, computed by the compiled hash)."""
    seed = int(seed) & ((1 << 64) - 1)
    if seed >= 1 << 63:  # the same 64 bits as an int64
        seed -= 1 << 64
    keep = np.empty(int(np.prod(shape)), dtype=np.bool_)
    _dropout_keep_flat(keep, float(rate), seed)
    return keep.reshape(shape)


# ---------------------------------------------------------------------------------------
# Losses: sum_i sw_i * loss_i / N (accumulated in float64) and the gradient, one row pass
# (the softmax cross-entropies: one pass per block of rows).


#: rows per block of the softmax cross-entropies: their exps run as one loop over the block
#: (a 10-class row alone is too short for a vector loop) while the block stays in L1
#: (the sparse one's rows of _CE_WIDE classes or more exponentiate in a loop of their own)
_CE_ROWS, _CE_BLOCK, _CE_WIDE = 64, 4096, 512


@_jit
def _ce_rows(n, c):
    """Rows per block; a ValueError for rows without classes (whose max is undefined)."""
    if c < 1 and n > 0:
        raise ValueError("the loss needs at least one column")
    return max(1, min(_CE_ROWS, _CE_BLOCK // max(c, 1)))


def _exp_rows(p, i0, i1):
    """p[i0:i1] = exp(p[i0:i1]) in place (see the overload)."""
    p[i0:i1] = np.exp(p[i0:i1])


@overload(_exp_rows)
def _exp_rows_overload(p, i0, i1):
    if p.layout == "C":

        def flat(p, i0, i1):
            block = p[i0:i1].reshape((i1 - i0) * p.shape[1])
            for e in range(block.shape[0]):
                block[e] = _exp(block[e])

        return flat

    def nested(p, i0, i1):
        for i in range(i0, i1):
            for j in range(p.shape[1]):
                p[i, j] = _exp(p[i, j])

    return nested


@_jit
def softmax_cross_entropy(z, y, sw, p, dz):
    """See reference.softmax_cross_entropy (p may alias z or dz; dz may alias p).  z - max goes
    into p row by row, exp runs over blocks of rows, then each row is normalised."""
    n, c = z.shape
    t = z.dtype.type
    zero, tn = t(0), t(n)
    total = 0.0
    rows = _ce_rows(n, c)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        for i in range(i0, i1):
            m = z[i, 0]
            for j in range(1, c):
                if z[i, j] > m:
                    m = z[i, j]
            sy, syz = zero, zero
            for j in range(c):
                yv = y[i, j]
                d = z[i, j] - m
                sy += yv
                syz += yv * d
                p[i, j] = d  # p may alias z: the last read of z[i, j]
            # -sum_j y_j (zm_j - lse) = sy * lse - sum_j y_j zm_j; the lse part below
            total -= np.float64(sw[i]) * np.float64(syz)
        _exp_rows(p, i0, i1)
        for i in range(i0, i1):
            s, sy = zero, zero
            for j in range(c):
                s += p[i, j]
                sy += y[i, j]
            total += np.float64(sw[i]) * (np.float64(sy) * np.float64(np.log(s)))
            coef = sw[i] / tn
            for j in range(c):
                pj = p[i, j] / s
                p[i, j] = pj
                dz[i, j] = (pj * sy - y[i, j]) * coef  # written last: dz may alias p
    return total / n


@_jit
def _sparse_softmax_ce(z, labels, sw, p, dz):
    """reference.sparse_softmax_cross_entropy with the labels in labels[:, 0], in blocks of
    rows as softmax_cross_entropy."""
    n, c = z.shape
    t = z.dtype.type
    zero, one, tn = t(0), t(1), t(n)
    total = 0.0
    rows = _ce_rows(n, c)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        for i in range(i0, i1):
            k = np.int64(labels[i, 0])
            if k < 0 or k >= c:
                raise IndexError("class label out of range [0, C)")
            m = z[i, 0]
            for j in range(1, c):
                if z[i, j] > m:
                    m = z[i, j]
            total -= np.float64(sw[i]) * np.float64(z[i, k] - m)  # before p (may alias z)
            if c < _CE_WIDE:
                for j in range(c):
                    p[i, j] = z[i, j] - m
            else:  # a row long enough for a vector loop of its own: one pass fewer
                for j in range(c):
                    p[i, j] = _exp(z[i, j] - m)
        if c < _CE_WIDE:
            _exp_rows(p, i0, i1)
        for i in range(i0, i1):
            k = np.int64(labels[i, 0])
            s = zero
            for j in range(c):
                s += p[i, j]
            total += np.float64(sw[i]) * np.float64(np.log(s))
            coef = sw[i] / tn
            pk = p[i, k] / s  # read before the row is overwritten: dz may alias p
            for j in range(c):
                pj = p[i, j] / s
                p[i, j] = pj
                dz[i, j] = pj * coef
            dz[i, k] = (pk - one) * coef
    return total / n


@_jit
def sparse_softmax_cross_entropy(z, labels, sw, p, dz):
    """See reference.sparse_softmax_cross_entropy (labels (N,) of any numeric dtype)."""
    return _sparse_softmax_ce(z, labels.reshape((labels.shape[0], 1)), sw, p, dz)


@_jit
def sigmoid_binary_cross_entropy(z, y, sw, p, dz):
    """See reference.sigmoid_binary_cross_entropy (p may alias z or dz)."""
    n, c = z.shape
    t = z.dtype.type
    zero, one, tnc = t(0), t(1), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            v = z[i, j]
            yv = y[i, j]
            e = _exp(-np.abs(v))
            row += (v if v > zero else zero) - v * yv + np.log1p(e)
            s = one / (one + e) if v >= zero else e / (one + e)
            p[i, j] = s
            dz[i, j] = (s - yv) * coef
        total += np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def categorical_crossentropy(p, y, sw, dp):
    """See reference.categorical_crossentropy (dp may alias p)."""
    n, c = p.shape
    t = p.dtype.type
    zero, lo, hi, tn = t(0), t(_PROB_EPS), t(1 - _PROB_EPS), t(n)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tn
        for j in range(c):
            v = p[i, j]
            yv = y[i, j]
            pc = lo if v < lo else (hi if v > hi else v)  # NaN passes, as np.clip
            row += yv * np.log(pc)
            dp[i, j] = (-yv / pc if (v >= lo and v <= hi) else zero) * coef
        total -= np.float64(sw[i]) * np.float64(row)
    return total / n


@_jit
def binary_crossentropy(p, y, sw, dp):
    """See reference.binary_crossentropy (dp may alias p)."""
    n, c = p.shape
    t = p.dtype.type
    zero, one, lo, hi, tnc = t(0), t(1), t(_PROB_EPS), t(1 - _PROB_EPS), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            v = p[i, j]
            yv = y[i, j]
            pc = lo if v < lo else (hi if v > hi else v)
            row += yv * np.log(pc) + (one - yv) * np.log(one - pc)
            inside = v >= lo and v <= hi
            dp[i, j] = ((pc - yv) / (pc * (one - pc)) if inside else zero) * coef
        total -= np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def mean_squared_error(pred, y, sw, dpred):
    """See reference.mean_squared_error (dpred may alias pred)."""
    n, c = pred.shape
    t = pred.dtype.type
    zero, two, tnc = t(0), t(2), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            d = pred[i, j] - y[i, j]
            row += d * d
            dpred[i, j] = two * d * coef
        total += np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def mean_absolute_error(pred, y, sw, dpred):
    """See reference.mean_absolute_error (dpred may alias pred)."""
    n, c = pred.shape
    t = pred.dtype.type
    zero, tnc = t(0), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            d = pred[i, j] - y[i, j]
            row += np.abs(d)
            dpred[i, j] = np.sign(d) * coef
        total += np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def huber(pred, y, sw, dpred):
    """See reference.huber (dpred may alias pred)."""
    n, c = pred.shape
    t = pred.dtype.type
    zero, half, delta, tnc = t(0), t(0.5), t(_HUBER_DELTA), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            d = pred[i, j] - y[i, j]
            a = np.abs(d)
            small = a <= delta
            row += half * d * d if small else delta * a - half * delta * delta
            dpred[i, j] = (d if small else delta * np.sign(d)) * coef
        total += np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def kl_divergence(p, y, sw, dp):
    """See reference.kl_divergence (dp may alias p)."""
    n, c = p.shape
    t = p.dtype.type
    zero, one, lo, tn = t(0), t(1), t(_PROB_EPS), t(n)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tn
        for j in range(c):
            v = p[i, j]
            yv = y[i, j]
            yc = lo if yv < lo else (one if yv > one else yv)
            pc = lo if v < lo else (one if v > one else v)  # NaN passes, as np.clip
            row += yc * np.log(yc / pc)
            dp[i, j] = (-yc / pc if (v >= lo and v <= one) else zero) * coef
        total += np.float64(sw[i]) * np.float64(row)
    return total / n


@_jit
def poisson(p, y, sw, dp):
    """See reference.poisson (dp may alias p)."""
    n, c = p.shape
    t = p.dtype.type
    zero, one, eps, tnc = t(0), t(1), t(_PROB_EPS), t(n * c)
    total = 0.0
    for i in range(n):
        row = zero
        coef = sw[i] / tnc
        for j in range(c):
            v = p[i, j]
            yv = y[i, j]
            row += v - yv * np.log(v + eps)
            dp[i, j] = (one - yv / (v + eps)) * coef
        total += np.float64(sw[i]) * (np.float64(row) / c)
    return total / n


@_jit
def loss_grad(out, y, sw, p, dz, loss_code):
    """See reference.loss_grad (the sparse loss reads its labels from y[:, 0])."""
    if loss_code == _SOFTMAX_CE:
        return softmax_cross_entropy(out, y, sw, p, dz)
    if loss_code == _SPARSE_SOFTMAX_CE:
        return _sparse_softmax_ce(out, y, sw, p, dz)
    if loss_code == _SIGMOID_BCE:
        return sigmoid_binary_cross_entropy(out, y, sw, p, dz)
    if loss_code == _CATEGORICAL_CE:
        return categorical_crossentropy(out, y, sw, dz)
    if loss_code == _BINARY_CE:
        return binary_crossentropy(out, y, sw, dz)
    if loss_code == _MSE:
        return mean_squared_error(out, y, sw, dz)
    if loss_code == _MAE:
        return mean_absolute_error(out, y, sw, dz)
    if loss_code == _HUBER:
        return huber(out, y, sw, dz)
    if loss_code == _KL_DIVERGENCE:
        return kl_divergence(out, y, sw, dz)
    if loss_code == _POISSON:
        return poisson(out, y, sw, dz)
    raise ValueError("unknown loss code")


# ---------------------------------------------------------------------------------------
# Regularisation and optimizers: one fused loop each over the flat buffers, in the
# reference's operation order (so float32 results match NumPy's rounding; Adam differs
# by one reassociation, see there).


@_jit
def _l1l2(w, dw, l1, l2):
    """reference.l1l2_penalty on flat (P,) views."""
    t = w.dtype.type
    a, b = t(l1), t(2 * l2)
    s1 = 0.0
    s2 = 0.0
    for k in range(w.shape[0]):
        v = w[k]
        dw[k] += a * np.sign(v) + b * v
        v64 = np.float64(v)
        s1 += np.abs(v64)
        s2 += v64 * v64
    return l1 * s1 + l2 * s2


@_jit
def l1l2_penalty(w, dw, l1, l2):
    """See reference.l1l2_penalty (w, dw C-contiguous, any shape)."""
    return _l1l2(w.reshape(w.size), dw.reshape(dw.size), l1, l2)


@_jit
def sgd_update(p, g, lr):
    """See reference.sgd_update."""
    a = p.dtype.type(lr)
    for k in range(p.shape[0]):
        p[k] -= a * g[k]


@_jit
def momentum_update(p, g, buf, lr, momentum, nesterov):
    """See reference.momentum_update."""
    t = p.dtype.type
    a, mu = t(lr), t(momentum)
    if nesterov:
        for k in range(p.shape[0]):
            gk = g[k]
            bk = buf[k] * mu + gk
            buf[k] = bk
            p[k] -= a * (gk + mu * bk)
    else:
        for k in range(p.shape[0]):
            bk = buf[k] * mu + g[k]
            buf[k] = bk
            p[k] -= a * bk


@_jit
def adagrad_update(p, g, acc, lr, epsilon):
    """See reference.adagrad_update."""
    t = p.dtype.type
    a, eps = t(lr), t(epsilon)
    for k in range(p.shape[0]):
        gk = g[k]
        ak = acc[k] + gk * gk
        acc[k] = ak
        p[k] -= a * gk / (np.sqrt(ak) + eps)


@_jit
def rmsprop_update(p, g, sq, lr, rho, epsilon):
    """See reference.rmsprop_update."""
    t = p.dtype.type
    a, r, r1, eps = t(lr), t(rho), t(1 - rho), t(epsilon)
    for k in range(p.shape[0]):
        gk = g[k]
        sk = sq[k] * r + r1 * gk * gk
        sq[k] = sk
        p[k] -= a * gk / (np.sqrt(sk) + eps)


@_jit
def adam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, weight_decay, step):
    """See reference.adam_update."""
    t = p.dtype.type
    # x * 1 is exact: without weight decay the factor 1 leaves p as it is, branch-free.
    decay = t(1 - lr * weight_decay) if weight_decay else t(1)
    b1, c1, b2, c2 = t(beta_1), t(1 - beta_1), t(beta_2), t(1 - beta_2)
    # math.pow, not **: Numba's float ** int multiplies by squaring, Python calls pow().
    # lr_t * m / (sqrt(v) / bc2 + eps) == (lr_t * bc2) * m / (sqrt(v) + eps * bc2): one
    # division instead of two (the loop is bound by division and sqrt throughput while
    # the buffers fit in cache); the result differs from the reference by rounding only.
    bc2 = math.sqrt(1 - math.pow(beta_2, np.float64(step)))
    step_size = t(lr / (1 - math.pow(beta_1, np.float64(step))) * bc2)
    eps = t(epsilon * bc2)
    for k in range(p.shape[0]):
        gk = g[k]
        mk = m[k] * b1 + c1 * gk
        vk = v[k] * b2 + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] = p[k] * decay - step_size * mk / (np.sqrt(vk) + eps)


@_jit
def amsgrad_update(p, g, m, v, vmax, lr, beta_1, beta_2, epsilon, weight_decay, step):
    """See reference.amsgrad_update (adam_update's single-division form)."""
    t = p.dtype.type
    decay = t(1 - lr * weight_decay) if weight_decay else t(1)
    b1, c1, b2, c2 = t(beta_1), t(1 - beta_1), t(beta_2), t(1 - beta_2)
    bc2 = math.sqrt(1 - math.pow(beta_2, np.float64(step)))
    step_size = t(lr / (1 - math.pow(beta_1, np.float64(step))) * bc2)
    eps = t(epsilon * bc2)
    for k in range(p.shape[0]):
        gk = g[k]
        mk = m[k] * b1 + c1 * gk
        vk = v[k] * b2 + c2 * gk * gk
        xk = max(vmax[k], vk)
        m[k] = mk
        v[k] = vk
        vmax[k] = xk
        p[k] = p[k] * decay - step_size * mk / (np.sqrt(xk) + eps)


@_jit
def rmsprop_mc_update(p, g, sq, buf, mean, lr, rho, epsilon, momentum, centered):
    """See reference.rmsprop_mc_update (one fused pass)."""
    t = p.dtype.type
    a, r, r1, eps, mu = t(lr), t(rho), t(1 - rho), t(epsilon), t(momentum)
    for k in range(p.shape[0]):
        gk = g[k]
        sk = sq[k] * r + r1 * gk * gk
        sq[k] = sk
        if centered:
            ck = mean[k] * r + r1 * gk
            mean[k] = ck
            sk = sk - ck * ck
        avg = np.sqrt(sk) + eps
        if momentum > 0:
            bk = buf[k] * mu + gk / avg
            buf[k] = bk
            p[k] -= a * bk
        else:
            p[k] -= a * gk / avg


@_jit
def _weight_decay(params, opt_code, hyper):
    """reference.weight_decay_of applied: params *= 1 - lr * weight_decay when set."""
    i = _HYPER_LEN[opt_code] + _H_WEIGHT_DECAY
    if opt_code == _ADAM or opt_code == _AMSGRAD or hyper.shape[0] <= i or hyper[i] == 0:
        return
    f = params.dtype.type(1 - hyper[0] * hyper[i])
    for k in range(params.shape[0]):
        params[k] = params[k] * f


@_jit
def _nadam_u_product(beta_1, step):
    """reference.nadam_u_product (the same float64 operations)."""
    prod, decay = 1.0, 1.0
    for _ in range(min(step, _NADAM_STEPS)):
        decay *= _NADAM_DECAY
        prod *= 1.0 - 0.5 * decay
    return prod * math.pow(beta_1, np.float64(step))


@_jit
def nadam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, step):
    """See reference.nadam_update (one fused pass)."""
    t = p.dtype.type
    u_t = beta_1 * (1 - 0.5 * math.pow(_NADAM_DECAY, np.float64(step)))
    u_next = beta_1 * (1 - 0.5 * math.pow(_NADAM_DECAY, np.float64(step + 1)))
    prod = _nadam_u_product(beta_1, step)
    cm, cg = t(u_next / (1 - prod * u_next)), t((1 - u_t) / (1 - prod))
    b1, c1, b2, c2 = t(beta_1), t(1 - beta_1), t(beta_2), t(1 - beta_2)
    bc2, a, eps = t(1 - math.pow(beta_2, np.float64(step))), t(lr), t(epsilon)
    for k in range(p.shape[0]):
        gk = g[k]
        mk = m[k] * b1 + c1 * gk
        vk = v[k] * b2 + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= a * (cm * mk + cg * gk) / (np.sqrt(vk / bc2) + eps)


@_jit
def _next_bound(layers, start, n):
    """The end of the trainable weight that starts at ``start`` (reference.weight_bounds):
    the smallest weight offset of the plan above it, or n."""
    end = n
    for l in range(layers.shape[0]):
        for col in range(_P_W0, _P_W2 + 1):
            o = layers[l, col]
            if o > start and o < end:
                end = o
    return end


@_jit
def _sum_squares(g):
    """sum(g**2) in float64 over eight interleaved partial sums: eight independent add
    chains instead of one (a single float64 accumulator, which LLVM may not reorder, runs
    at one add per 4 cycles: ~130 us for 100k weights)."""
    n8 = g.shape[0] - g.shape[0] % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for k in range(0, n8, 8):
        v0, v1, v2, v3 = (
            np.float64(g[k]),
            np.float64(g[k + 1]),
            np.float64(g[k + 2]),
            np.float64(g[k + 3]),
        )
        v4, v5, v6, v7 = (
            np.float64(g[k + 4]),
            np.float64(g[k + 5]),
            np.float64(g[k + 6]),
            np.float64(g[k + 7]),
        )
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
        s4 += v4 * v4
        s5 += v5 * v5
        s6 += v6 * v6
        s7 += v7 * v7
    for k in range(n8, g.shape[0]):
        v = np.float64(g[k])
        s0 += v * v
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@_jit
def _scale_to_norm(g, limit):
    """reference._scale_to_norm on a flat (P,) view."""
    norm = np.sqrt(_sum_squares(g))
    scale = limit / max(norm, limit) if np.isfinite(norm) else np.nan
    t = g.dtype.type(scale)
    for k in range(g.shape[0]):
        g[k] = g[k] * t


@_jit
def clip_gradients(grads, layers, opt_code, hyper):
    """See reference.clip_gradients (a norm pass, then a scaling pass; or one clip pass)."""
    base = _HYPER_LEN[opt_code]
    if hyper.shape[0] < base + _N_CLIP:
        return
    clipnorm, clipvalue = hyper[base + _H_CLIPNORM], hyper[base + _H_CLIPVALUE]
    global_clipnorm = hyper[base + _H_GLOBAL_CLIPNORM]
    n = grads.shape[0]
    if clipnorm > 0:
        start = 0
        while start < n:
            end = _next_bound(layers, start, n)
            _scale_to_norm(grads[start:end], clipnorm)
            start = end
    elif global_clipnorm > 0:
        _scale_to_norm(grads, global_clipnorm)
    elif clipvalue > 0:
        hi = grads.dtype.type(clipvalue)
        lo = -hi
        for k in range(n):
            v = grads[k]
            grads[k] = lo if v < lo else (hi if v > hi else v)  # NaN passes, as np.clip


@_jit
def optimizer_update(params, grads, state, opt_code, hyper, step):
    """See reference.optimizer_update."""
    if opt_code < 0 or opt_code >= _N_OPTS:
        raise ValueError("unknown optimizer code")
    _weight_decay(params, opt_code, hyper)
    if opt_code == _SGD:
        sgd_update(params, grads, hyper[0])
    elif opt_code == _MOMENTUM:
        momentum_update(params, grads, state[0], hyper[0], hyper[1], np.int64(hyper[2]))
    elif opt_code == _ADAGRAD:
        adagrad_update(params, grads, state[0], hyper[0], hyper[1])
    elif opt_code == _RMSPROP:
        rmsprop_update(params, grads, state[0], hyper[0], hyper[1], hyper[2])
    elif opt_code == _ADAM:
        adam_update(params, grads, state[0], state[1], hyper[0], hyper[1], hyper[2],
                    hyper[3], hyper[4], np.int64(step))  # fmt: skip
    elif opt_code == _NADAM:
        nadam_update(params, grads, state[0], state[1], hyper[0], hyper[1], hyper[2],
                     hyper[3], np.int64(step))  # fmt: skip
    elif opt_code == _AMSGRAD:
        amsgrad_update(params, grads, state[0], state[1], state[2], hyper[0], hyper[1],
                       hyper[2], hyper[3], hyper[4], np.int64(step))  # fmt: skip
    elif opt_code == _RMSPROP_MC:
        rmsprop_mc_update(params, grads, state[0], state[1], state[2], hyper[0], hyper[1],
                          hyper[2], hyper[3], hyper[4] != 0)  # fmt: skip
    else:
        raise ValueError("unknown optimizer code")


# ---------------------------------------------------------------------------------------
# Normalisation layers (see reference): float64 per-channel sums in acc, rows outer so the
# inner loops stream x along its channels and vectorise.


@_jit
def batchnorm_forward(x, gamma, beta, moving_mean, moving_var, saved, out, acc, training,
                      momentum, epsilon):  # fmt: skip
    """See reference.batchnorm_forward (out may alias x)."""
    r, c = x.shape
    t = x.dtype.type
    zero, one = t(0), t(1)
    if training:
        s1, s2 = acc[0], acc[1]
        for j in range(c):
            s1[j] = 0.0
            s2[j] = 0.0
        for i in range(r):
            for j in range(c):
                d = np.float64(x[i, j]) - np.float64(x[0, j])
                s1[j] += d
                s2[j] += d * d
        keep, mom = 1.0 - momentum, t(momentum)
        for j in range(c):
            m1 = s1[j] / r
            var = max(s2[j] / r - m1 * m1, 0.0)
            mean = np.float64(x[0, j]) + m1
            moving_mean[j] = moving_mean[j] * mom + t(mean * keep)
            moving_var[j] = moving_var[j] * mom + t(var * keep)
            saved[0, j] = t(mean)
            saved[1, j] = t(1.0 / np.sqrt(var + epsilon))
    else:
        for j in range(c):
            saved[0, j] = moving_mean[j]
            saved[1, j] = t(1.0 / np.sqrt(np.float64(moving_var[j]) + epsilon))
    scale, center = gamma.shape[0] > 0, beta.shape[0] > 0
    for i in range(r):
        for j in range(c):
            v = (x[i, j] - saved[0, j]) * saved[1, j]
            v = v * gamma[j] if scale else v * one
            out[i, j] = v + beta[j] if center else v + zero


@_jit
def batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, need_dx):
    """See reference.batchnorm_backward (dx may alias dout): two float64 reductions, then
    one elementwise pass."""
    r, c = x.shape
    t = x.dtype.type
    one, tr = t(1), t(r)
    sdy, sdyx = acc[0], acc[1]
    for j in range(c):
        sdy[j] = 0.0
        sdyx[j] = 0.0
    for i in range(r):
        for j in range(c):
            dy = np.float64(dout[i, j])
            sdy[j] += dy
            sdyx[j] += dy * np.float64((x[i, j] - saved[0, j]) * saved[1, j])
    for j in range(dbeta.shape[0]):
        dbeta[j] = t(sdy[j])
    for j in range(dgamma.shape[0]):
        dgamma[j] = t(sdyx[j])
    if need_dx:
        scale = gamma.shape[0] > 0
        for i in range(r):
            for j in range(c):
                xh = (x[i, j] - saved[0, j]) * saved[1, j]
                coef = saved[1, j] * (gamma[j] if scale else one) / tr
                dx[i, j] = coef * (tr * dout[i, j] - t(sdy[j]) - xh * t(sdyx[j]))


@_jit
def batchnorm_inference_backward(gamma, saved, dout, dx):
    """See reference.batchnorm_inference_backward (dx may alias dout)."""
    r, c = dout.shape
    one = dout.dtype.type(1)
    scale = gamma.shape[0] > 0
    for i in range(r):
        for j in range(c):
            coef = saved[1, j] * gamma[j] if scale else saved[1, j] * one
            dx[i, j] = dout[i, j] * coef


@_jit
def _norm_divisor(variance, j):
    """max(sqrt(variance[j]), NORM_EPS) in the array's dtype (NaN stays NaN)."""
    t = variance.dtype.type
    s = np.sqrt(variance[j])
    return t(_NORM_EPS) if s < t(_NORM_EPS) else s


@_jit
def normalization_forward(x, mean, variance, out):
    """See reference.normalization_forward (out may alias x)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - mean[j]) / _norm_divisor(variance, j)


@_jit
def normalization_backward(variance, dout, dx):
    """See reference.normalization_backward (dx may alias dout)."""
    for i in range(dout.shape[0]):
        for j in range(dout.shape[1]):
            dx[i, j] = dout[i, j] / _norm_divisor(variance, j)


# ---------------------------------------------------------------------------------------
# Convolution and pooling (see reference): 4-D NHWC arrays; the window of output (oy, ox)
# reads input rows oy*sh - pad_top + ky and columns ox*sw - pad_left + kx.


@_jit
def _span(o, stride, pad, window, size):
    """(first, end) window positions of output ``o`` that fall inside an axis of ``size``."""
    start = o * stride - pad
    return max(0, -start), min(window, size - start)


@_jit
def _im2col(x, cols, kh, kw, sh, sw, pad_top, pad_left, ho, wo):
    """reference.im2col: one image row of a window (kw*c values, contiguous in x) copied
    as a run where the window lies inside the image, zeros where it leaves it."""
    n, h, w, c = x.shape
    zero = cols.dtype.type(0)
    run = kw * c
    xf = x.reshape(x.size)
    for b in range(n):
        for oy in range(ho):
            for ky in range(kh):
                iy = oy * sh - pad_top + ky
                for ox in range(wo):
                    r = (b * ho + oy) * wo + ox
                    base = ky * run
                    ix = ox * sw - pad_left
                    if iy < 0 or iy >= h:
                        for j in range(run):
                            cols[r, base + j] = zero
                        continue
                    src = ((b * h + iy) * w + ix) * c
                    if ix >= 0 and ix + kw <= w:
                        for j in range(run):
                            cols[r, base + j] = xf[src + j]
                        continue
                    for kx in range(kw):
                        inside = 0 <= ix + kx < w
                        for j in range(c):
                            cols[r, base + kx * c + j] = xf[src + kx * c + j] if inside else zero


@_jit
def _col2im(cols, dx, kh, kw, sh, sw, pad_top, pad_left, ho, wo):
    """reference.col2im: each window row's run added back where it lies in the image."""
    n, h, w, c = dx.shape
    _zero_images(dx)
    run = kw * c
    df = dx.reshape(dx.size)
    for b in range(n):
        for oy in range(ho):
            for ky in range(kh):
                iy = oy * sh - pad_top + ky
                if iy < 0 or iy >= h:
                    continue
                for ox in range(wo):
                    r = (b * ho + oy) * wo + ox
                    base = ky * run
                    ix = ox * sw - pad_left
                    dst = ((b * h + iy) * w + ix) * c
                    if ix >= 0 and ix + kw <= w:
                        for j in range(run):
                            df[dst + j] += cols[r, base + j]
                        continue
                    for kx in range(kw):
                        if 0 <= ix + kx < w:
                            for j in range(c):
                                df[dst + kx * c + j] += cols[r, base + kx * c + j]


@_jit
def _zero_images(a):
    flat = a.reshape(a.size)
    zero = a.dtype.type(0)
    for k in range(flat.shape[0]):
        flat[k] = zero


# A convolution of one input channel is a skinny GEMM (K = KH*KW, F small) whose im2col
# copies runs of KW values: a direct loop is faster (as in the cython backend).  Image by
# image, x is zero-padded to the (HO+KH-1, WP = WO+KW-1) grid of every window position in
# the columns' scratch; at stride 1 the outputs (oy, ox) lie at j = oy*WP + ox of a flat
# run of L = (HO-1)*WP + WO and window position (ky, kx) reads the padded image at
# j + ky*WP + kx: one long axpy (forward) or dot (dw) per (ky, kx, f).


@_jit
def _direct_c1(c, sh, sw, f, ho, wo, kh, kw, cols):
    """Whether the direct one-channel loop runs (one channel at stride 1, and room)."""
    return c == 1 and sh == 1 and sw == 1 and (ho + kh - 1 + f * ho) * (wo + kw - 1) <= cols.size


@_jit
def _c1_pad(x, b, xp, hp, wp, pad_top, pad_left):
    """Image b of x (N, H, W, 1) zero-padded into the flat xp (hp*wp,)."""
    h, w = x.shape[1], x.shape[2]
    zero = xp.dtype.type(0)
    for j in range(hp * wp):
        xp[j] = zero
    for iy in range(h):
        base = (iy + pad_top) * wp + pad_left
        for ix in range(w):
            xp[base + ix] = x[b, iy, ix, 0]


@_jit
def _dot_run(x, xo, y, yo, n):
    """sum x[xo + j] * y[yo + j] over j < n in eight interleaved partial sums (independent
    add chains; nothing allocated)."""
    t = x.dtype.type
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = t(0)
    n8 = n - n % 8
    for j in range(0, n8, 8):
        a, c = xo + j, yo + j
        s0 += x[a] * y[c]
        s1 += x[a + 1] * y[c + 1]
        s2 += x[a + 2] * y[c + 2]
        s3 += x[a + 3] * y[c + 3]
        s4 += x[a + 4] * y[c + 4]
        s5 += x[a + 5] * y[c + 5]
        s6 += x[a + 6] * y[c + 6]
        s7 += x[a + 7] * y[c + 7]
    for j in range(n8, n):
        s0 += x[xo + j] * y[yo + j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@_jit
def _conv_c1_forward(x, w, cols, out, pad_top, pad_left):
    """out = conv(x, w) (no bias, no activation) for one input channel at stride 1."""
    n = x.shape[0]
    kh, kw, f = w.shape[0], w.shape[1], w.shape[3]
    ho, wo = out.shape[1], out.shape[2]
    wp, hp = wo + kw - 1, ho + kh - 1
    plane, run = ho * wp, (ho - 1) * wp + wo
    flat = cols.reshape(cols.size)
    xp, t = flat[: hp * wp], flat[hp * wp : hp * wp + f * plane]
    zero = cols.dtype.type(0)
    for b in range(n):
        _c1_pad(x, b, xp, hp, wp, pad_top, pad_left)
        for j in range(f * plane):
            t[j] = zero
        for ky in range(kh):
            for kx in range(kw):
                off = ky * wp + kx
                for ff in range(f):
                    wv, base = w[ky, kx, 0, ff], ff * plane
                    for j in range(run):
                        t[base + j] += xp[off + j] * wv
        for oy in range(ho):
            for ox in range(wo):
                for ff in range(f):
                    out[b, oy, ox, ff] = t[ff * plane + oy * wp + ox]


@_jit
def _conv_c1_dw(x, dz, cols, dw, pad_top, pad_left):
    """dw[ky, kx, 0, f] = sum over (b, oy, ox) of xpadded[oy + ky, ox + kx] dz[b, oy, ox, f]."""
    n = x.shape[0]
    kh, kw, f = dw.shape[0], dw.shape[1], dw.shape[3]
    ho, wo = dz.shape[1], dz.shape[2]
    wp, hp = wo + kw - 1, ho + kh - 1
    plane, run = ho * wp, (ho - 1) * wp + wo
    flat = cols.reshape(cols.size)
    xp, d = flat[: hp * wp], flat[hp * wp : hp * wp + f * plane]
    zero = cols.dtype.type(0)
    _zero_images(dw)
    for b in range(n):
        _c1_pad(x, b, xp, hp, wp, pad_top, pad_left)
        for j in range(f * plane):
            d[j] = zero  # zeros between the rows
        for oy in range(ho):
            for ox in range(wo):
                for ff in range(f):
                    d[ff * plane + oy * wp + ox] = dz[b, oy, ox, ff]
        for ky in range(kh):
            for kx in range(kw):
                for ff in range(f):
                    dw[ky, kx, 0, ff] += _dot_run(xp, ky * wp + kx, d, ff * plane, run)


@_jit
def conv2d_forward(x, w, b, cols, out, act, alpha, sh, sw, pad_top, pad_left):
    """See reference.conv2d_forward: im2col, one GEMM into the NHWC output, one bias +
    activation pass (or the direct one-channel loop, then that pass)."""
    kh, kw, c, f = w.shape
    n, ho, wo = out.shape[0], out.shape[1], out.shape[2]
    flat = out.reshape((n * ho * wo, f))
    if _direct_c1(c, sh, sw, f, ho, wo, kh, kw, cols):
        _conv_c1_forward(x, w, cols, out, pad_top, pad_left)
    else:
        _im2col(x, cols, kh, kw, sh, sw, pad_top, pad_left, ho, wo)
        _gemm(cols, w.reshape((kh * kw * c, f)), flat, 0, 0)
    if b.shape[0] > 0:
        _bias_act(flat, b, act, alpha)
    else:
        activation_forward(flat, flat, act, alpha)


@_jit
def conv2d_backward(x, w, y, dout, cols, dz, dx, dw, db, act, alpha, sh, sw, pad_top, pad_left,
                    need_dx):  # fmt: skip
    """See reference.conv2d_backward: one derivative (+ bias gradient) pass, dw as one
    GEMM (or the direct one-channel loop), then dcols = dz @ w.T over the saved columns
    and col2im."""
    kh, kw, c, f = w.shape
    n, ho, wo = y.shape[0], y.shape[1], y.shape[2]
    m, k = n * ho * wo, kh * kw * c
    dz2 = dz.reshape((m, f))
    has_b = db.shape[0] > 0
    _act_backward(y.reshape((m, f)), dout.reshape((m, f)), dz2, db if has_b else dz2[0], act,
                  alpha, has_b)  # fmt: skip
    direct = _direct_c1(c, sh, sw, f, ho, wo, kh, kw, cols)
    if direct and not need_dx:
        _conv_c1_dw(x, dz, cols, dw, pad_top, pad_left)
        return
    if direct:  # the direct forward did not save the columns
        _im2col(x, cols, kh, kw, sh, sw, pad_top, pad_left, ho, wo)
    _gemm(cols, dz2, dw.reshape((k, f)), 1, 0)
    if need_dx:
        _gemm(dz2, w.reshape((k, f)), cols, 0, 1)
        _col2im(cols, dx, kh, kw, sh, sw, pad_top, pad_left, ho, wo)


@_jit
def _pool_2x2(h, w, ho, wo, kh, kw, sh, sw, pad_top, pad_left):
    """2x2 windows at stride 2, each inside the image (an odd last row/column left over)."""
    square = kh == 2 and kw == 2 and sh == 2 and sw == 2
    return square and pad_top == 0 and pad_left == 0 and 2 * ho <= h and 2 * wo <= w


@_jit
def _maxpool_2x2_forward(x, argmax, out):
    """maxpool2d_forward of 2x2 windows at stride 2: the same first maximum, by selects."""
    n, c = x.shape[0], x.shape[3]
    t = out.dtype.type
    one, two, three = t(1), t(2), t(3)
    for b in range(n):
        for oy in range(out.shape[1]):
            for ox in range(out.shape[2]):
                iy, ix = 2 * oy, 2 * ox
                for ch in range(c):
                    m, a = x[b, iy, ix, ch], t(0)
                    v = x[b, iy, ix + 1, ch]
                    a, m = (one, v) if v > m else (a, m)
                    v = x[b, iy + 1, ix, ch]
                    a, m = (two, v) if v > m else (a, m)
                    v = x[b, iy + 1, ix + 1, ch]
                    a, m = (three, v) if v > m else (a, m)
                    out[b, oy, ox, ch] = m
                    argmax[b, oy, ox, ch] = a


@_jit
def _maxpool_2x2_backward(argmax, dout, dx):
    """maxpool2d_backward of 2x2 windows at stride 2: each window zeroed, then dout stored
    at its argmax (no division, no data-dependent branch); an argmax outside the window is
    skipped, an odd last row/column zeroed first."""
    n, h, w, c = dx.shape
    ho, wo = dout.shape[1], dout.shape[2]
    zero = dx.dtype.type(0)
    if 2 * ho < h or 2 * wo < w:
        _zero_images(dx)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                iy, ix = 2 * oy, 2 * ox
                for dy in range(2):
                    for dxx in range(2):
                        for ch in range(c):
                            dx[b, iy + dy, ix + dxx, ch] = zero
                for ch in range(c):
                    p = np.int64(argmax[b, oy, ox, ch])
                    if 0 <= p < 4:
                        dx[b, iy + (p >> 1), ix + (p & 1), ch] = dout[b, oy, ox, ch]


@_jit
def maxpool2d_forward(x, argmax, out, kh, kw, sh, sw, pad_top, pad_left):
    """See reference.maxpool2d_forward (the first maximum in (ky, kx) order)."""
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    if _pool_2x2(h, w, ho, wo, kh, kw, sh, sw, pad_top, pad_left):
        _maxpool_2x2_forward(x, argmax, out)
        return
    for b in range(n):
        for oy in range(ho):
            ky0, ky1 = _span(oy, sh, pad_top, kh, h)
            for ox in range(wo):
                kx0, kx1 = _span(ox, sw, pad_left, kw, w)
                iy, ix = oy * sh - pad_top + ky0, ox * sw - pad_left + kx0
                first = out.dtype.type(ky0 * kw + kx0)
                for ch in range(c):
                    out[b, oy, ox, ch] = x[b, iy, ix, ch]
                    argmax[b, oy, ox, ch] = first
                for ky in range(ky0, ky1):
                    iy = oy * sh - pad_top + ky
                    for kx in range(kx0, kx1):
                        ix = ox * sw - pad_left + kx
                        pos = out.dtype.type(ky * kw + kx)
                        for ch in range(c):  # selects, no branch: random data mispredicts
                            v = x[b, iy, ix, ch]
                            m = out[b, oy, ox, ch]
                            argmax[b, oy, ox, ch] = pos if v > m else argmax[b, oy, ox, ch]
                            out[b, oy, ox, ch] = v if v > m else m


@_jit
def maxpool2d_backward(argmax, dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """See reference.maxpool2d_backward (a position outside the window or the image is
    skipped, never written)."""
    n, h, w, c = dx.shape
    ho, wo = dout.shape[1], dout.shape[2]
    if _pool_2x2(h, w, ho, wo, kh, kw, sh, sw, pad_top, pad_left):
        _maxpool_2x2_backward(argmax, dout, dx)
        return
    _zero_images(dx)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    p = np.int64(argmax[b, oy, ox, ch])
                    iy = oy * sh - pad_top + p // kw
                    ix = ox * sw - pad_left + p % kw
                    if 0 <= p < kh * kw and 0 <= iy < h and 0 <= ix < w:
                        dx[b, iy, ix, ch] += dout[b, oy, ox, ch]


@_jit
def avgpool2d_forward(x, out, kh, kw, sh, sw, pad_top, pad_left):
    """See reference.avgpool2d_forward (the mean over the window's positions in the image)."""
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    t = out.dtype.type
    for b in range(n):
        for oy in range(ho):
            ky0, ky1 = _span(oy, sh, pad_top, kh, h)
            for ox in range(wo):
                kx0, kx1 = _span(ox, sw, pad_left, kw, w)
                for ch in range(c):
                    out[b, oy, ox, ch] = t(0)
                for ky in range(ky0, ky1):
                    iy = oy * sh - pad_top + ky
                    for kx in range(kx0, kx1):
                        ix = ox * sw - pad_left + kx
                        for ch in range(c):
                            out[b, oy, ox, ch] += x[b, iy, ix, ch]
                count = t((ky1 - ky0) * (kx1 - kx0))
                for ch in range(c):
                    out[b, oy, ox, ch] = out[b, oy, ox, ch] / count


@_jit
def avgpool2d_backward(dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """See reference.avgpool2d_backward."""
    n, h, w, c = dx.shape
    ho, wo = dout.shape[1], dout.shape[2]
    t = dx.dtype.type
    _zero_images(dx)
    for b in range(n):
        for oy in range(ho):
            ky0, ky1 = _span(oy, sh, pad_top, kh, h)
            for ox in range(wo):
                kx0, kx1 = _span(ox, sw, pad_left, kw, w)
                count = t((ky1 - ky0) * (kx1 - kx0))
                for ky in range(ky0, ky1):
                    iy = oy * sh - pad_top + ky
                    for kx in range(kx0, kx1):
                        ix = ox * sw - pad_left + kx
                        for ch in range(c):
                            dx[b, iy, ix, ch] += dout[b, oy, ox, ch] / count


# ---------------------------------------------------------------------------------------
# A plan of layers over flat buffers (layout: kernels/codes.py and the reference).
#
# The core kinds (Dense, Dropout, Activation) are branches of forward_stack/backward_stack;
# every other family of kinds runs in a function of its own that takes the family's slot of
# the kinds marker (the plan's third entry) as its first argument.  When the slot is None
# Numba prunes that function's body before typing, so the family's kernels are never
# compiled into the training path of a model that does not use them.


@_jit
def _in_out(x, acts, row, n):
    """(input, output) of a plan row for n samples, each seen along its last axis."""
    ri, wi = row[_P_IN0] * row[_P_IN1], row[_P_IN2]
    ro, wo = row[_P_OUT0] * row[_P_OUT1], row[_P_OUT2]
    off = row[_P_IN_OFF]
    if off < 0:
        inp = x.reshape((n * ri, wi))
    else:
        inp = acts[off : off + n * ri * wi].reshape((n * ri, wi))
    off = row[_P_OUT_OFF]
    return inp, acts[off : off + n * ro * wo].reshape((n * ro, wo))


@_jit
def _vec(buf, off, size):
    """buf[off : off + size], empty when off < 0 (an absent weight)."""
    if off < 0:
        return buf[0:0]
    return buf[off : off + size]


@_jit
def _mat(buf, off, rows, cols):
    return buf[off : off + rows * cols].reshape((rows, cols))


@_jit
def _norm_forward(present, kind, inp, out, row, f, params, nontrain, acts, acc, training):
    """A normalisation layer's forward (see reference.layer_forward); False when ``kind``
    is not one, or when ``present`` (the family's slot of the kinds marker) is None."""
    if present is None:
        return False
    c = inp.shape[1]
    if kind == _BATCHNORM:
        batchnorm_forward(
            inp, _vec(params, row[_P_W0], c), _vec(params, row[_P_W1], c),
            _vec(nontrain, row[_P_S0], c), _vec(nontrain, row[_P_S1], c),
            _mat(acts, row[_P_SAVE_OFF], 2, c), out, _mat(acc, row[_P_ACC_OFF], 2, c),
            np.int64(training != 0 and row[_P_FROZEN] == 0), f[_F_MOMENTUM], f[_F_EPSILON],
        )  # fmt: skip
        return True
    if kind == _NORMALIZATION:
        normalization_forward(inp, _vec(nontrain, row[_P_S0], c), _vec(nontrain, row[_P_S1], c),
                              out)  # fmt: skip
        return True
    return False


@_jit
def _norm_backward(present, kind, inp, g, dx, need_dx, row, params, grads, nontrain, acts,
                   acc):  # fmt: skip
    """A normalisation layer's backward (see reference.layer_backward); False as
    _norm_forward."""
    if present is None:
        return False
    c = inp.shape[1]
    if kind == _BATCHNORM and row[_P_FROZEN] != 0:  # inference mode: statistics are constants
        batchnorm_inference_backward(_vec(params, row[_P_W0], c),
                                     _mat(acts, row[_P_SAVE_OFF], 2, c), g, dx)  # fmt: skip
        return True
    if kind == _BATCHNORM:
        batchnorm_backward(
            inp, _vec(params, row[_P_W0], c), _mat(acts, row[_P_SAVE_OFF], 2, c), g, dx,
            _vec(grads, row[_P_W0], c), _vec(grads, row[_P_W1], c),
            _mat(acc, row[_P_ACC_OFF], 2, c), need_dx,
        )  # fmt: skip
        return True
    if kind == _NORMALIZATION:
        normalization_backward(_vec(nontrain, row[_P_S1], c), g, dx)
        return True
    return False


@_jit
def _images(a, row, first, n):
    """A plan row's (rows, width) input (first = P_IN0) or output view as (N, H, W, C)."""
    return a.reshape((n, row[first], row[first + 1], row[first + 2]))


@_jit
def _conv_kernel(buf, row):
    kh, kw, c, f = row[_P_KH], row[_P_KW], row[_P_IN2], row[_P_OUT2]
    w0 = row[_P_W0]
    return buf[w0 : w0 + kh * kw * c * f].reshape((kh, kw, c, f))


@_jit
def _conv_forward(present, kind, inp, out, row, f, params, acts, n):
    """A convolution or pooling layer's forward (see reference.layer_forward); False when
    ``kind`` is not one, or when ``present`` (the CONV slot of the kinds marker) is None."""
    if present is None:
        return False
    x, y = _images(inp, row, _P_IN0, n), _images(out, row, _P_OUT0, n)
    kh, kw, sh, sw = row[_P_KH], row[_P_KW], row[_P_SH], row[_P_SW]
    pt, pl, save = row[_P_PAD_TOP], row[_P_PAD_LEFT], row[_P_SAVE_OFF]
    if kind == _CONV2D:
        cols = _mat(acts, save, out.shape[0], kh * kw * row[_P_IN2])
        conv2d_forward(x, _conv_kernel(params, row), _vec(params, row[_P_W1], out.shape[1]),
                       cols, y, row[_P_ACT], f[_F_ALPHA], sh, sw, pt, pl)  # fmt: skip
    elif kind == _MAXPOOL2D or kind == _GLOBAL_MAXPOOL2D:
        argmax = _images(acts[save : save + out.size], row, _P_OUT0, n)
        maxpool2d_forward(x, argmax, y, kh, kw, sh, sw, pt, pl)
    elif kind == _AVGPOOL2D or kind == _GLOBAL_AVGPOOL2D:
        avgpool2d_forward(x, y, kh, kw, sh, sw, pt, pl)
    else:
        return False
    return True


@_jit
def _conv_backward(present, kind, inp, out, g, dx, need_dx, row, f, params, grads, acts, n):
    """A convolution or pooling layer's backward: (handled, penalty), handled False as
    _conv_forward."""
    if present is None:
        return False, 0.0
    y, dout = _images(out, row, _P_OUT0, n), _images(g, row, _P_OUT0, n)
    dxi = _images(dx, row, _P_IN0, n)
    kh, kw, sh, sw = row[_P_KH], row[_P_KW], row[_P_SH], row[_P_SW]
    pt, pl, save = row[_P_PAD_TOP], row[_P_PAD_LEFT], row[_P_SAVE_OFF]
    if kind == _CONV2D:
        w, dw = _conv_kernel(params, row), _conv_kernel(grads, row)
        cols = _mat(acts, save, out.shape[0], kh * kw * row[_P_IN2])
        conv2d_backward(_images(inp, row, _P_IN0, n), w, y, dout, cols, dout, dxi, dw,
                        _vec(grads, row[_P_W1], out.shape[1]), row[_P_ACT], f[_F_ALPHA], sh,
                        sw, pt, pl, need_dx)  # fmt: skip
        l1, l2 = f[_F_L1], f[_F_L2]
        if l1 != 0 or l2 != 0:
            return True, _l1l2(w.reshape(w.size), dw.reshape(dw.size), l1, l2)
    elif kind == _MAXPOOL2D or kind == _GLOBAL_MAXPOOL2D:
        if need_dx:
            argmax = _images(acts[save : save + out.size], row, _P_OUT0, n)
            maxpool2d_backward(argmax, dout, dxi, kh, kw, sh, sw, pt, pl)
    elif kind == _AVGPOOL2D or kind == _GLOBAL_AVGPOOL2D:
        if need_dx:
            avgpool2d_backward(dout, dxi, kh, kw, sh, sw, pt, pl)
    else:
        return False, 0.0
    return True, 0.0


@_jit
def _check_row0(row0):
    """row0 of forward_stack/backward_stack as an int64 (ValueError when negative)."""
    if row0 < 0:
        raise ValueError("row0 must be an int >= 0")
    return np.int64(row0)


@_jit
def forward_stack(x, plan, net, work, training, seed, step, row0=0):
    """See reference.forward_stack."""
    layers, layer_f, kinds = plan
    params, nontrain = net[0], net[3]
    acts, acc = work[0], work[2]
    n, training = x.shape[0], np.int64(training)
    seed, step = np.int64(seed), np.int64(step)
    row0 = _check_row0(row0)
    for l in range(layers.shape[0]):
        row = layers[l]
        kind, act = row[_P_KIND], row[_P_ACT]
        inp, out = _in_out(x, acts, row, n)
        if kind == _DENSE:
            c, o = inp.shape[1], out.shape[1]
            w, b = _mat(params, row[_P_W0], c, o), _vec(params, row[_P_W1], o)
            if act == _GELU or act == _SILU:  # codes.INPUT_ACTS: the pre-activation is saved
                z = _mat(acts, row[_P_SAVE_OFF], out.shape[0], o)
                dense_forward(inp, w, b, z, _LINEAR_I, layer_f[l, _F_ALPHA])
                activation_forward(z, out, act, layer_f[l, _F_ALPHA])
            else:
                dense_forward(inp, w, b, out, act, layer_f[l, _F_ALPHA])
        elif kind == _DROPOUT:
            rate = layer_f[l, _F_RATE]
            if training and rate > 0:
                _dropout_from(inp, out, rate, dropout_seed(seed, step, l),
                              row0 * (inp.size // max(n, 1)))  # fmt: skip
            else:
                _copy(inp, out)
        elif kind == _ACTIVATION:
            activation_forward(inp, out, act, layer_f[l, _F_ALPHA])
        elif _norm_forward(kinds[_NORM], kind, inp, out, row, layer_f[l], params, nontrain,
                           acts, acc, training):  # fmt: skip
            pass
        elif _conv_forward(kinds[_CONV], kind, inp, out, row, layer_f[l], params, acts, n):
            pass
        elif not _rnn.rnn_family_forward(kinds[_RNN], kind, inp, out, row, params, acts, n):
            raise ValueError("unknown layer kind (or a kind the plan's kinds marker lacks)")


@_jit
def backward_stack(x, plan, net, work, seed, step, row0=0):
    """See reference.backward_stack."""
    layers, layer_f, kinds = plan
    params, grads, nontrain = net[0], net[1], net[3]
    acts, gbuf, acc = work
    n, seed, step = x.shape[0], np.int64(seed), np.int64(step)
    row0 = _check_row0(row0)
    penalty = 0.0
    for l in range(layers.shape[0] - 1, -1, -1):
        if not layers[l, _P_BACKWARD]:
            continue
        row = layers[l]
        kind, act = row[_P_KIND], row[_P_ACT]
        inp, out = _in_out(x, acts, row, n)
        c, o = inp.shape[1], out.shape[1]
        g = _mat(gbuf, row[_P_DOUT_OFF], out.shape[0], o)
        dx_off = row[_P_DX_OFF]  # -1 only on a layer with weights: it writes no dx then
        dx = _mat(gbuf, max(dx_off, 0), inp.shape[0], c)
        need_dx = np.int64(dx_off >= 0)
        if kind == _DENSE:
            w0, nw = row[_P_W0], c * o
            input_act = act == _GELU or act == _SILU
            dense_backward(
                inp,
                _mat(params, w0, c, o),
                _mat(acts, row[_P_SAVE_OFF], out.shape[0], o) if input_act else out,
                g,
                g,
                dx,
                _mat(grads, w0, c, o),
                _vec(grads, row[_P_W1], o),
                act,
                layer_f[l, _F_ALPHA],
                need_dx,
            )
            l1, l2 = layer_f[l, _F_L1], layer_f[l, _F_L2]
            if l1 != 0 or l2 != 0:
                penalty += _l1l2(params[w0 : w0 + nw], grads[w0 : w0 + nw], l1, l2)
        elif kind == _DROPOUT:
            rate = layer_f[l, _F_RATE]
            if rate > 0:
                _dropout_from(g, dx, rate, dropout_seed(seed, step, l),
                              row0 * (g.size // max(n, 1)))  # fmt: skip
            else:
                _copy(g, dx)
        elif kind == _ACTIVATION:
            y = inp if act == _GELU or act == _SILU else out  # codes.INPUT_ACTS read x
            _act_backward(y, g, dx, g[0], act, layer_f[l, _F_ALPHA], _FALSE)
        elif _norm_backward(kinds[_NORM], kind, inp, g, dx, need_dx, row, params, grads,
                            nontrain, acts, acc):  # fmt: skip
            pass
        else:
            handled, value = _conv_backward(kinds[_CONV], kind, inp, out, g, dx, need_dx, row,
                                            layer_f[l], params, grads, acts, n)  # fmt: skip
            if handled:
                penalty += value
            elif not _rnn.rnn_family_backward(kinds[_RNN], kind, inp, g, dx, need_dx, row,
                                              params, grads, acts, n):  # fmt: skip
                raise ValueError("unknown layer kind (or a kind the plan's kinds marker lacks)")
    return penalty


@_jit
def _penalty_stack(params, layers, layer_f):
    """reference.penalty_stack: the regularisation penalty, without gradient."""
    total = 0.0
    for l in range(layers.shape[0]):
        l1, l2 = layer_f[l, _F_L1], layer_f[l, _F_L2]
        kind = layers[l, _P_KIND]
        if (kind == _DENSE or kind == _CONV2D) and (l1 != 0 or l2 != 0):
            w0 = layers[l, _P_W0]
            size = layers[l, _P_IN2] * layers[l, _P_OUT2]
            if kind == _CONV2D:
                size *= layers[l, _P_KH] * layers[l, _P_KW]
            s1 = 0.0
            s2 = 0.0
            for k in range(w0, w0 + size):
                v = np.float64(params[k])
                s1 += np.abs(v)
                s2 += v * v
            total += l1 * s1 + l2 * s2
    return total


@_jit
def _output(layers, acts, n):
    """The last layer's output (N, outputs) in acts (reference.output_view)."""
    row = layers[layers.shape[0] - 1]
    width = row[_P_OUT0] * row[_P_OUT1] * row[_P_OUT2]
    off = row[_P_OUT_OFF]
    return acts[off : off + n * width].reshape((n, width))


@_jit
def _loss_views(n, layers, acts, gbuf, loss_code, logits_out):
    """(out, p, dz) of reference._stack_loss: the stack's output, where the probabilities
    go (over the logits unless ``logits_out``; only the logit losses write p) and dL/dout."""
    out = _output(layers, acts, n)
    off = layers[layers.shape[0] - 1, _P_DOUT_OFF]
    dz = gbuf[off : off + out.size].reshape(out.shape)
    logit_loss = loss_code == _SOFTMAX_CE or loss_code == _SPARSE_SOFTMAX_CE
    logit_loss = logit_loss or loss_code == _SIGMOID_BCE
    p = out if (logit_loss and not logits_out) else dz
    return out, p, dz


@_jit
def train_step(batch, plan, net, work, loss, opt):
    """See reference.train_step (no update when the loss is not finite)."""
    x, y, sw = batch
    params, grads, state = net[0], net[1], net[2]
    # scalars passed on as int64 (never literals or bools): one signature per callee
    loss_code, logits_out = np.int64(loss[0]), np.int64(loss[1])
    opt_code, hyper = np.int64(opt[0]), opt[1]
    step, seed = np.int64(opt[3]), np.int64(opt[4])
    forward_stack(x, plan, net, work, np.int64(1), seed, step)
    out, p, dz = _loss_views(x.shape[0], plan[0], work[0], work[1], loss_code, logits_out)
    value = loss_grad(out, y, sw, p, dz, loss_code)
    value += backward_stack(x, plan, net, work, seed, step)
    if np.isfinite(value):
        n = state.shape[1]  # the trainable prefix: frozen layers' weights follow
        clip_gradients(grads[:n], plan[0], opt_code, hyper)
        optimizer_update(params[:n], grads[:n], state, opt_code, hyper, step)
    return value


@_jit
def eval_step(batch, plan, net, work, loss):
    """See reference.eval_step."""
    x, y, sw = batch
    zero, loss_code, logits_out = np.int64(0), np.int64(loss[0]), np.int64(loss[1])
    forward_stack(x, plan, net, work, zero, zero, zero)
    out, p, dz = _loss_views(x.shape[0], plan[0], work[0], work[1], loss_code, logits_out)
    value = loss_grad(out, y, sw, p, dz, loss_code)
    return value + _penalty_stack(net[0], plan[0], plan[1])


@_jit
def _argmax_row(a, i):
    """np.argmax(a[i]): the first maximum, or the first NaN."""
    best = a[i, 0]
    if np.isnan(best):
        return 0
    k = 0
    for j in range(1, a.shape[1]):
        v = a[i, j]
        if np.isnan(v):
            return j
        if v > best:
            best = v
            k = j
    return k


@_jit
def _top_k_hit(out, i, label, k):
    """Whether fewer than k scores of row i beat the label's (ties count as in the top k)."""
    score = out[i, label]
    higher = 0
    for j in range(out.shape[1]):
        if out[i, j] > score:
            higher += 1
    return higher < k


@_jit
def _bucket(p, k):
    """reference._bucket for one probability."""
    if p != p:
        return 0
    inner = np.int64(np.ceil(p * (k - 1))) - 1
    return 1 + min(max(inner, 0), k - 2)


@_jit
def _metric(out, y, kind, slot, k, logits, threshold, stats):
    """One row of reference.batch_stats's metrics table."""
    n, c = out.shape
    thr, half = out.dtype.type(threshold), y.dtype.type(0.5)
    if (
        kind == _ACC_SPARSE
        or kind == _ACC_CATEGORICAL
        or kind == _M_TOP_K
        or (kind == _M_SPARSE_TOP_K)
    ):
        hits = 0
        for i in range(n):
            sparse = kind == _ACC_SPARSE or kind == _M_SPARSE_TOP_K
            label = np.int64(y[i, 0]) if sparse else _argmax_row(y, i)
            if kind == _ACC_SPARSE or kind == _ACC_CATEGORICAL:
                hits += _argmax_row(out, i) == label
            else:
                hits += _top_k_hit(out, i, label, k)
        stats[slot] += hits
    elif kind == _ACC_BINARY:
        # compared in the arrays' dtype, as NumPy compares an array with a Python float
        hits = 0
        for i in range(n):
            for j in range(c):
                if (out[i, j] > thr) == (y[i, j] > half):
                    hits += 1
        stats[slot] += hits / c
    elif kind == _M_CONFUSION:
        tp, fp, fn = 0, 0, 0
        for i in range(n):
            for j in range(c):
                pred, pos = out[i, j] > thr, y[i, j] > half
                tp += pred and pos
                fp += pred and not pos
                fn += pos and not pred
        stats[slot] += tp
        stats[slot + 1] += fp
        stats[slot + 2] += fn
    elif kind == _M_HISTOGRAM:
        for i in range(n):
            for j in range(c):
                p = np.float64(out[i, j])
                if logits:
                    p = 1.0 / (1.0 + np.exp(-p))
                side = 0 if y[i, j] > half else k
                stats[slot + side + _bucket(p, k)] += 1
    elif kind != 0:
        raise ValueError("unknown metric kind")


@_jit
def batch_stats(out, y, metrics, thresholds, stats):
    """See reference.batch_stats."""
    n, c = out.shape
    for m in range(metrics.shape[0]):
        _metric(out, y, metrics[m, 0], metrics[m, 1], metrics[m, 2], metrics[m, 3],
                thresholds[m], stats)  # fmt: skip
    if y.shape[1] == c:
        s_abs = 0.0
        s_sq = 0.0
        for i in range(n):
            for j in range(c):
                d = np.float64(out[i, j]) - np.float64(y[i, j])
                s_abs += np.abs(d)
                s_sq += d * d
        stats[_STAT_ABS] += s_abs
        stats[_STAT_SQ] += s_sq
    stats[_STAT_ROWS] += n


@_jit
def _count_nonfinite(a):
    """Entries of the 1-D array ``a`` that are inf or NaN (v - v is NaN exactly for those;
    the integer count vectorises where a float sum could not be reordered)."""
    bad = 0
    for i in range(a.shape[0]):
        d = a[i] - a[i]
        bad += d != d
    return bad


@_jit
def run_epoch(data, plan, net, ws, loss, opt, train, stats):
    """See reference.run_epoch (the whole epoch is one compiled call)."""
    X, Y, SW, order, batch_size = data
    xb, yb, swb, acts, gbuf, acc = ws
    opt_code, hyper, lrs, step, seed = opt
    work = (acts, gbuf, acc)
    loss4 = (np.int64(loss[0]), np.int64(loss[1]), loss[2], loss[3])
    total = order.shape[0]
    n_batches = (total + batch_size - 1) // batch_size
    done = n_batches
    for b in range(n_batches):
        start = b * batch_size
        n = min(batch_size, total - start)
        for r in range(n):
            src = order[start + r]
            for j in range(X.shape[1]):
                xb[r, j] = X[src, j]
            for j in range(Y.shape[1]):
                yb[r, j] = Y[src, j]
            swb[r] = SW[src]
        batch = (xb[:n], yb[:n], swb[:n])
        if train:
            hyper[0] = lrs[b]
            value = train_step(batch, plan, net, work, loss4, (np.int64(opt_code), hyper, lrs,
                               np.int64(step + b), np.int64(seed)))  # fmt: skip
        else:
            value = eval_step(batch, plan, net, work, loss4)
        stats[_STAT_LOSS] += value * n
        if not np.isfinite(value):
            done = b
            break
        batch_stats(_output(plan[0], acts, n), batch[1], loss4[2], loss4[3], stats)
    if train:
        bad = _count_nonfinite(net[0]) + _count_nonfinite(net[2].reshape(-1))  # 1 signature
        bad += _count_nonfinite(net[3])
        stats[_STAT_NONFINITE] = 1.0 if bad > 0 else 0.0
    return done


# The sequence kinds' kernels live in numba_rnn (which imports the helpers above); the
# stack calls them through the module, and the module re-exports them for the contract
# (either module may be imported first).
from . import numba_rnn as _rnn  # noqa: E402


def __getattr__(name):
    if name in _rnn.EXPORTS:
        return getattr(_rnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
