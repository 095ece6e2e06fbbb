# cython: language_level=3, binding=True
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Cython kernels, compiled ahead of time: the contract of ``reference`` (same names, same
parameters, same results) with no warm-up.

Every def function validates shapes and then runs C code without the GIL.  The whole-network
functions (``forward_stack`` ... ``run_epoch``) check the whole plan (every kind and code,
every offset and extent against its buffer) once per call and then interpret it in C: one
call runs a whole step or a whole epoch.  GEMMs go through SciPy's BLAS (row-major arrays
are handed to the column-major routine as their transposes, so nothing is copied).
"""

from cpython.buffer cimport PyBUF_STRIDES, PyBuffer_Release, PyObject_GetBuffer
from cpython.long cimport PyLong_AsUnsignedLongLongMask, PyLong_Check
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport (
    INFINITY, NAN, ceil, erf, erff, exp, expm1, expm1f, fabs, fabsf, isfinite, log, log1p, pow,
    sqrt, sqrtf, tanh,
)
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating
cimport numpy as cnp

import numpy as np

from . import codes as _codes

# ---------------------------------------------------------------------------------------
# Codes (checked against codes.py at import)

cdef enum:
    LINEAR = 0
    RELU = 1
    LEAKY_RELU = 2
    SIGMOID = 3
    TANH = 4
    SOFTMAX = 5
    ELU = 6
    SELU = 7
    GELU = 8
    SILU = 9
    SOFTPLUS = 10
    N_ACTS = 11

    DENSE = 0
    DROPOUT = 1
    ACTIVATION = 2
    BATCHNORM = 3
    NORMALIZATION = 4
    CONV2D = 5
    MAXPOOL2D = 6
    AVGPOOL2D = 7
    GLOBAL_AVGPOOL2D = 8
    GLOBAL_MAXPOOL2D = 9
    EMBEDDING = 10
    SIMPLE_RNN = 11
    LSTM = 12
    GRU = 13
    N_KINDS = 14

    # plan columns (codes.py)
    P_KIND = 0
    P_ACT = 1
    P_IN0 = 2
    P_IN1 = 3
    P_IN2 = 4
    P_OUT0 = 5
    P_OUT1 = 6
    P_OUT2 = 7
    P_IN_OFF = 8
    P_OUT_OFF = 9
    P_SAVE_OFF = 10
    P_ACC_OFF = 11
    P_W0 = 12
    P_W1 = 13
    P_W2 = 14
    P_S0 = 15
    P_S1 = 16
    P_DOUT_OFF = 17
    P_DX_OFF = 18
    P_BACKWARD = 19
    P_ARG0 = 20
    P_ARG1 = 21
    P_ARG2 = 22
    P_ARG3 = 23
    P_ARG4 = 24
    P_ARG5 = 25
    P_COLS = 26
    P_VOCAB = 20  # P_ARG0 of an Embedding row
    P_RETURN_SEQ = 20  # P_ARG0 .. P_ARG2 of a recurrent row
    P_UNITS = 21
    P_REC_ACT = 22

    F_ALPHA = 0
    F_L1 = 1
    F_L2 = 2
    F_RATE = 3
    F_MOMENTUM = 4
    F_EPSILON = 5
    F_COLS = 6

    SOFTMAX_CE = 0
    SPARSE_SOFTMAX_CE = 1
    SIGMOID_BCE = 2
    CATEGORICAL_CE = 3
    BINARY_CE = 4
    MSE = 5
    MAE = 6
    HUBER = 7
    KL_DIVERGENCE = 8
    POISSON = 9
    N_LOSSES = 10

    SGD = 0
    MOMENTUM = 1
    ADAGRAD = 2
    RMSPROP = 3
    ADAM = 4
    NADAM = 5
    N_OPTS = 6

    ACC_NONE = 0
    ACC_SPARSE = 1
    ACC_CATEGORICAL = 2
    ACC_BINARY = 3
    M_TOP_K = 4
    M_SPARSE_TOP_K = 5
    M_CONFUSION = 6
    M_HISTOGRAM = 7
    N_METRICS = 8
    M_KIND = 0
    M_SLOT = 1
    M_K = 2
    M_LOGITS = 3
    M_COLS = 4

    STAT_LOSS = 0
    STAT_CORRECT = 1
    STAT_ABS = 2
    STAT_SQ = 3
    STAT_ROWS = 4
    STAT_NONFINITE = 5
    STAT_LEN = 6

    # label storage kinds (sparse cross-entropy)
    LB_I64 = 0
    LB_I32 = 1
    LB_F32 = 2
    LB_F64 = 3

cnp.import_array()

#: The layer kinds this backend runs (a model with another kind refuses it at build).
KINDS = frozenset({DENSE, DROPOUT, ACTIVATION, BATCHNORM, NORMALIZATION, CONV2D, MAXPOOL2D,
                   AVGPOOL2D, GLOBAL_AVGPOOL2D, GLOBAL_MAXPOOL2D, EMBEDDING, SIMPLE_RNN,
                   LSTM, GRU})

cdef double PROB_EPS = 1e-7
cdef double NORM_EPS = 1e-7
cdef int[6] HYPER_LEN = [1, 3, 2, 3, 5, 4]
cdef int[6] STATE_SLOTS = [0, 1, 1, 1, 2, 2]
cdef double HUBER_DELTA = 1.0
cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SELU_SCALE = 1.0507009873554804934193349852946
cdef double NADAM_DECAY = 0.96
cdef int64_t NADAM_STEPS = 1000


def _check_codes():
    expected = dict(
        LINEAR=LINEAR, RELU=RELU, LEAKY_RELU=LEAKY_RELU, SIGMOID=SIGMOID, TANH=TANH,
        SOFTMAX=SOFTMAX, ELU=ELU, SELU=SELU, GELU=GELU, SILU=SILU, SOFTPLUS=SOFTPLUS,
        SELU_ALPHA=SELU_ALPHA, SELU_SCALE=SELU_SCALE, N_ACTS=N_ACTS, DENSE=DENSE,
        DROPOUT=DROPOUT, ACTIVATION=ACTIVATION, BATCHNORM=BATCHNORM,
        NORMALIZATION=NORMALIZATION, CONV2D=CONV2D, MAXPOOL2D=MAXPOOL2D, AVGPOOL2D=AVGPOOL2D,
        GLOBAL_AVGPOOL2D=GLOBAL_AVGPOOL2D, GLOBAL_MAXPOOL2D=GLOBAL_MAXPOOL2D, N_KINDS=N_KINDS,
        EMBEDDING=EMBEDDING, SIMPLE_RNN=SIMPLE_RNN, LSTM=LSTM, GRU=GRU, P_VOCAB=P_VOCAB,
        P_RETURN_SEQ=P_RETURN_SEQ, P_UNITS=P_UNITS, P_REC_ACT=P_REC_ACT,
        P_KIND=P_KIND, P_ACT=P_ACT, P_IN0=P_IN0, P_IN1=P_IN1, P_IN2=P_IN2, P_OUT0=P_OUT0,
        P_OUT1=P_OUT1, P_OUT2=P_OUT2, P_IN_OFF=P_IN_OFF, P_OUT_OFF=P_OUT_OFF,
        P_SAVE_OFF=P_SAVE_OFF, P_ACC_OFF=P_ACC_OFF, P_W0=P_W0, P_W1=P_W1, P_W2=P_W2, P_S0=P_S0,
        P_S1=P_S1, P_DOUT_OFF=P_DOUT_OFF, P_DX_OFF=P_DX_OFF, P_BACKWARD=P_BACKWARD,
        P_ARG0=P_ARG0, P_ARG1=P_ARG1, P_ARG2=P_ARG2, P_ARG3=P_ARG3, P_ARG4=P_ARG4,
        P_ARG5=P_ARG5, P_COLS=P_COLS, F_ALPHA=F_ALPHA, F_L1=F_L1, F_L2=F_L2,
        F_RATE=F_RATE, F_MOMENTUM=F_MOMENTUM, F_EPSILON=F_EPSILON, F_COLS=F_COLS,
        NORM_EPS=NORM_EPS, N_LOSSES=N_LOSSES, N_OPTS=N_OPTS, SOFTMAX_CE=SOFTMAX_CE,
        SPARSE_SOFTMAX_CE=SPARSE_SOFTMAX_CE, SIGMOID_BCE=SIGMOID_BCE,
        CATEGORICAL_CE=CATEGORICAL_CE, BINARY_CE=BINARY_CE, MSE=MSE, MAE=MAE, HUBER=HUBER,
        KL_DIVERGENCE=KL_DIVERGENCE, POISSON=POISSON, HUBER_DELTA=HUBER_DELTA, NADAM=NADAM,
        HYPER_LEN=tuple(HYPER_LEN[k] for k in range(N_OPTS)), SGD=SGD, N_CLIP=3,
        H_CLIPNORM=0, H_CLIPVALUE=1, H_GLOBAL_CLIPNORM=2,
        MOMENTUM=MOMENTUM, ADAGRAD=ADAGRAD, RMSPROP=RMSPROP, ADAM=ADAM, ACC_NONE=ACC_NONE,
        ACC_SPARSE=ACC_SPARSE, ACC_CATEGORICAL=ACC_CATEGORICAL, ACC_BINARY=ACC_BINARY,
        M_TOP_K=M_TOP_K, M_SPARSE_TOP_K=M_SPARSE_TOP_K, M_CONFUSION=M_CONFUSION,
        M_HISTOGRAM=M_HISTOGRAM, N_METRICS=N_METRICS, M_KIND=M_KIND, M_SLOT=M_SLOT, M_K=M_K,
        M_LOGITS=M_LOGITS, M_COLS=M_COLS,
        STAT_LOSS=STAT_LOSS, STAT_CORRECT=STAT_CORRECT, STAT_ABS=STAT_ABS, STAT_SQ=STAT_SQ,
        STAT_ROWS=STAT_ROWS, STAT_NONFINITE=STAT_NONFINITE, STAT_LEN=STAT_LEN, PROB_EPS=PROB_EPS,
        STATE_SLOTS=tuple(STATE_SLOTS[k] for k in range(N_OPTS)),
    )
    for name, value in expected.items():
        if getattr(_codes, name) != value:
            raise ImportError(
                f"fastnn.kernels._cython was compiled with {name}={value!r} but codes.py "
                f"says {getattr(_codes, name)!r}: rebuild the extension"
            )


_check_codes()

# ---------------------------------------------------------------------------------------
# Scalar helpers (float / double)

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* exp for float32 without a libm call, so that loops of it vectorise (libm's expf is a
       scalar call, ~10 ns per element in a loop here): x = k ln2 + r with |r| <= ln2/2
       (k by adding and subtracting 1.5 * 2^23, ln2 in two parts), exp(r) by Cephes' degree-6
       polynomial, 2^k as two exact powers of two so that k down to -150 (subnormal
       results) and up to 128 (overflow to inf) need no branch.  Within 2 ulp; NaN stays
       NaN, -inf gives 0, +inf gives inf. */
    static inline float fastnn_pow2i(int32_t k) {
        uint32_t bits = (uint32_t)(k + 127) << 23;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    static inline float fastnn_expf(float x) {
        const float shift = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */
        float c = x < -104.0f ? -104.0f : x;
        c = c > 89.0f ? 89.0f : c;
        float kf = (c * 1.44269504088896341f + shift) - shift;
        float r = c - kf * 0.693359375f;
        r = r - kf * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        int32_t k = (int32_t)(kf == kf ? kf : 0.0f);  /* NaN: p is NaN already */
        int32_t k1 = k / 2;
        return (p * fastnn_pow2i(k1)) * fastnn_pow2i(k - k1);
    }
    /* a where the mask is all ones, b where it is zero: bit operations, not a select, which
       GCC may turn into a branch (and then neither vectorise the loop nor, with trapping
       math, compute both sides) */
    static inline float fastnn_blendf(uint32_t mask, float a, float b) {
        uint32_t ab, bb;
        memcpy(&ab, &a, sizeof ab);
        memcpy(&bb, &b, sizeof bb);
        ab = (ab & mask) | (bb & ~mask);
        memcpy(&a, &ab, sizeof a);
        return a;
    }
    static inline double fastnn_blendd(uint64_t mask, double a, double b) {
        uint64_t ab, bb;
        memcpy(&ab, &a, sizeof ab);
        memcpy(&bb, &b, sizeof bb);
        ab = (ab & mask) | (bb & ~mask);
        memcpy(&a, &ab, sizeof a);
        return a;
    }
    /* log for float32 without a libm call: x = m 2^e with m in [sqrt(1/2), sqrt(2)) read
       from the bits (subnormals scaled by 2^23 first), log(x) = e ln2 + log(m) by Cephes'
       polynomial in f = m - 1, ln2 in two parts.  Within 1 ulp; x < 0 and NaN give NaN,
       +-0 gives -inf, inf gives inf.  Integer tests and bit blends, not float selects. */
    static inline float fastnn_logf(float x) {
        uint32_t bits;
        memcpy(&bits, &x, sizeof bits);
        uint32_t sub = bits < 0x00800000u;  /* +0 and the positive subnormals */
        uint32_t normal = bits - 1u < 0x7f7fffffu;  /* 0 < x < inf */
        float xs = x * fastnn_pow2i(23 * (int32_t)sub);
        uint32_t sbits;
        memcpy(&sbits, &xs, sizeof sbits);
        uint32_t mbits = (sbits & 0x007fffffu) | 0x3f800000u;  /* m in [1, 2) */
        uint32_t big = mbits >= 0x3fb504f3u;  /* m >= sqrt(2): halve m */
        mbits -= big << 23;
        int32_t e = (int32_t)((sbits >> 23) & 0xffu) - 127 - 23 * (int32_t)sub + (int32_t)big;
        float m;
        memcpy(&m, &mbits, sizeof m);
        float f = m - 1.0f;
        float fe = (float)e;
        float z = f * f;
        float y = 7.0376836292e-2f;
        y = y * f - 1.1514610310e-1f;
        y = y * f + 1.1676998740e-1f;
        y = y * f - 1.2420140846e-1f;
        y = y * f + 1.4249322787e-1f;
        y = y * f - 1.6668057665e-1f;
        y = y * f + 2.0000714765e-1f;
        y = y * f - 2.4999993993e-1f;
        y = y * f + 3.3333331174e-1f;
        y = (y * f) * z;
        y = y + fe * -2.12194440e-4f;
        y = y - 0.5f * z;
        float r = (f + y) + fe * 0.693359375f;
        uint32_t special = (bits << 1) == 0 ? 0xff800000u      /* -inf */
                           : (bits == 0x7f800000u ? bits : 0x7fc00000u);  /* inf, NaN */
        float sp;
        memcpy(&sp, &special, sizeof sp);
        return fastnn_blendf(-normal, r, sp);
    }
    /* log1p(x) = log(u) x / (u - 1) with u = 1 + x rounded (the quotient corrects u's
       rounding error); x itself where u == 1 or x == inf.  Within 3 ulp. */
    static inline float fastnn_log1pf(float x) {
        float u = 1.0f + x;
        float d = u - 1.0f;
        uint32_t xb, db;
        memcpy(&xb, &x, sizeof xb);
        memcpy(&db, &d, sizeof db);
        uint32_t same = -(uint32_t)((db << 1) == 0 || xb == 0x7f800000u);
        float r = fastnn_logf(u) * (x / fastnn_blendf(same, 1.0f, d));
        return fastnn_blendf(same, x, r);
    }
    """
    float fastnn_expf(float x) noexcept nogil
    float fastnn_blendf(uint32_t mask, float a, float b) noexcept nogil
    double fastnn_blendd(uint64_t mask, double a, double b) noexcept nogil
    float fastnn_logf(float x) noexcept nogil
    float fastnn_log1pf(float x) noexcept nogil


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return fastnn_expf(x)
    else:
        return exp(x)


cdef inline floating _where(bint cond, floating a, floating b) noexcept nogil:
    # a if cond else b, with both computed: bit operations that GCC keeps in vector loops
    # (a conditional division, say, would stop the loop vectorising)
    if floating is float:
        return fastnn_blendf(-<uint32_t>cond, a, b)
    else:
        return fastnn_blendd(-<uint64_t>cond, a, b)


cdef inline floating _clip(floating v, floating lo, floating hi) noexcept nogil:
    # np.clip: NaN stays NaN
    return lo if v < lo else (hi if v > hi else v)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return fastnn_logf(x)
    else:
        return log(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return fastnn_log1pf(x)
    else:
        return log1p(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _erf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating _sigmoid(floating v) noexcept nogil:
    cdef floating one = 1
    cdef floating e = _exp(-v if v >= 0 else v)
    return (one / (one + e)) if v >= 0 else (e / (one + e))


cdef double SQRT_HALF = 0.7071067811865476
cdef double INV_SQRT_2PI = 0.3989422804014327


cdef void _smooth_fwd(const floating* xr, floating* orow, Py_ssize_t o, int act,
                      floating alpha) noexcept nogil:
    """orow = act(xr) for elu, selu, gelu, silu, softplus (orow may alias xr)."""
    cdef Py_ssize_t j
    cdef floating v, one = 1, half = 0.5, zero = 0
    cdef floating a = alpha if act == ELU else <floating>SELU_ALPHA
    cdef floating scale = <floating>SELU_SCALE if act == SELU else one
    cdef floating r2 = <floating>SQRT_HALF
    if act == ELU or act == SELU:
        for j in range(o):
            v = xr[j]
            orow[j] = scale * (v if v > zero else a * _expm1(v))
    elif act == GELU:
        for j in range(o):
            v = xr[j]
            orow[j] = half * v * (one + _erf(v * r2))
    elif act == SILU:
        for j in range(o):
            v = xr[j]
            orow[j] = v * _sigmoid(v)
    else:
        for j in range(o):
            v = xr[j]
            orow[j] = (v if v > zero else zero) + _log1p(_exp(v if v < zero else -v))


cdef void _smooth_bwd(const floating* yr, floating* xr, Py_ssize_t o, int act,
                      floating alpha) noexcept nogil:
    """xr *= act'(.) for the activations of _smooth_fwd: from the output yr, or for gelu
    and silu from the input passed as yr."""
    cdef Py_ssize_t j
    cdef floating v, sg, one = 1, half = 0.5, zero = 0
    cdef floating scale = <floating>SELU_SCALE if act == SELU else one
    cdef floating shift = <floating>(SELU_SCALE * SELU_ALPHA) if act == SELU else alpha
    cdef floating r2 = <floating>SQRT_HALF, c = <floating>INV_SQRT_2PI
    if act == ELU or act == SELU:
        for j in range(o):
            v = yr[j]
            xr[j] = xr[j] * (scale if v > zero else v + shift)
    elif act == GELU:
        for j in range(o):
            v = yr[j]
            xr[j] = xr[j] * (half * (one + _erf(v * r2)) + v * c * _exp(-half * v * v))
    elif act == SILU:
        for j in range(o):
            v = yr[j]
            sg = _sigmoid(v)
            xr[j] = xr[j] * (sg * (one + v * (one - sg)))
    else:
        for j in range(o):
            xr[j] = xr[j] * -_expm1(-yr[j])


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline float _tanhf_rational(float x) noexcept nogil:
    # tanh as an odd 13/6-degree rational function on [-9, 9] (+-1 beyond, in float32),
    # within 3 ulp of tanh: no libm call, so the loops vectorise (libm's tanhf costs
    # about 17 ns per element here, ~40x NumPy's SIMD tanh).  Comparisons keep NaN.
    cdef float nine = 9.0, one = 1.0, c = x, c2, num, den, t
    if c > nine:
        c = nine
    if c < -nine:
        c = -nine
    c2 = c * c
    num = <float>-2.76076847742355e-16
    num = num * c2 + <float>2.00018790482477e-13
    num = num * c2 + <float>-8.60467152213735e-11
    num = num * c2 + <float>5.12229709037114e-08
    num = num * c2 + <float>1.48572235717979e-05
    num = num * c2 + <float>6.37261928875436e-04
    num = (num * c2 + <float>4.89352455891786e-03) * c
    den = <float>1.19825839466702e-06
    den = den * c2 + <float>1.18534705686654e-04
    den = den * c2 + <float>2.26843463243900e-03
    den = den * c2 + <float>4.89352518554385e-03
    t = num / den
    if t > one:
        t = one
    if t < -one:
        t = -one
    return t


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return _tanhf_rational(x)
    else:
        return tanh(x)


cdef inline floating _abs(floating x) noexcept nogil:
    # fabs clears the sign bit; "x if x >= 0 else -x" compiled to a branch, mispredicted on
    # data of random sign
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _sign(floating x) noexcept nogil:
    # np.sign: -1, 0, 1, NaN for NaN; selects, not branches (mispredicted on noisy data)
    cdef floating s = <floating>(x > 0) - <floating>(x < 0)
    return s if x == x else x


cdef inline Py_ssize_t _argmax(const floating* row, Py_ssize_t c) noexcept nogil:
    # np.argmax: first maximum; the first NaN wins
    cdef Py_ssize_t j, best = 0
    cdef floating m = row[0]
    if m != m:
        return 0
    for j in range(1, c):
        if row[j] > m:
            m = row[j]
            best = j
        elif row[j] != row[j]:
            return j
    return best


cdef inline floating _rowmax(const floating* row, Py_ssize_t c) noexcept nogil:
    # max that propagates NaN like np.max; selects and a NaN flag instead of branches (on
    # logits the branch of "v > m" is mispredicted about half the time)
    cdef Py_ssize_t j
    cdef floating m = row[0], v
    cdef bint nan = m != m
    for j in range(1, c):
        v = row[j]
        m = v if v > m else m
        nan = nan | (v != v)
    return <floating>NAN if nan else m


cdef inline floating _term(const floating* a, const floating* b, floating shift, Py_ssize_t i,
                          int mode) noexcept nogil:
    if mode == 0:
        return a[i]
    if mode == 1:
        return a[i] * b[i]
    return _exp(a[i] - shift)


cdef floating _pwsum(const floating* a, const floating* b, floating shift, Py_ssize_t n,
                     int mode) noexcept nogil:
    """Sum over a row of a[i] (mode 0), a[i]*b[i] (1) or exp(a[i] - shift) (2), each term
    rounded to the dtype, added in the order of NumPy's pairwise sum (np.add.reduce on a
    contiguous row), so a row sum equals the reference's bit for bit."""
    cdef floating r0, r1, r2, r3, r4, r5, r6, r7, res
    cdef Py_ssize_t i, n2
    if n < 8:
        res = 0
        for i in range(n):
            res = res + _term(a, b, shift, i, mode)
        return res
    if n <= 128:
        r0 = _term(a, b, shift, 0, mode)
        r1 = _term(a, b, shift, 1, mode)
        r2 = _term(a, b, shift, 2, mode)
        r3 = _term(a, b, shift, 3, mode)
        r4 = _term(a, b, shift, 4, mode)
        r5 = _term(a, b, shift, 5, mode)
        r6 = _term(a, b, shift, 6, mode)
        r7 = _term(a, b, shift, 7, mode)
        i = 8
        while i < n - n % 8:
            r0 = r0 + _term(a, b, shift, i, mode)
            r1 = r1 + _term(a, b, shift, i + 1, mode)
            r2 = r2 + _term(a, b, shift, i + 2, mode)
            r3 = r3 + _term(a, b, shift, i + 3, mode)
            r4 = r4 + _term(a, b, shift, i + 4, mode)
            r5 = r5 + _term(a, b, shift, i + 5, mode)
            r6 = r6 + _term(a, b, shift, i + 6, mode)
            r7 = r7 + _term(a, b, shift, i + 7, mode)
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res = res + _term(a, b, shift, i, mode)
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return (_pwsum(a, b, shift, n2, mode)
            + _pwsum(a + n2, (b + n2) if b != NULL else b, shift, n - n2, mode))


ctypedef void (*sgemm64_t)(char*, char*, int64_t*, int64_t*, int64_t*, float*, float*,
                          int64_t*, float*, int64_t*, float*, float*, int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(char*, char*, int64_t*, int64_t*, int64_t*, double*, double*,
                          int64_t*, double*, int64_t*, double*, double*, int64_t*) noexcept nogil

# NumPy's bundled OpenBLAS (ILP64), when found: measured ~10% faster than SciPy's copy here
cdef sgemm64_t _sgemm64 = NULL
cdef dgemm64_t _dgemm64 = NULL


def _find_numpy_blas():
    """Points the GEMMs at the sgemm/dgemm that NumPy's wheel bundles (OpenBLAS, 64-bit
    integers), if it exports them; otherwise SciPy's BLAS is used.  FASTNN_BLAS=scipy
    forces SciPy's.  Returns the library's path or None."""
    global _sgemm64, _dgemm64
    import ctypes
    import glob
    import os

    if os.environ.get("FASTNN_BLAS", "").strip().lower() == "scipy":
        return None
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)
            s = ctypes.cast(lib.scipy_sgemm_64_, ctypes.c_void_p).value
            d = ctypes.cast(lib.scipy_dgemm_64_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        if s and d:
            _sgemm64 = <sgemm64_t><size_t>s
            _dgemm64 = <dgemm64_t><size_t>d
            return path
    return None


BLAS_LIBRARY = _find_numpy_blas()


cdef inline void _gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                       floating* c, Py_ssize_t ldc) noexcept nogil:
    """Column-major C (m, n) = op(A) op(B), beta = 0."""
    _gemm_beta(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, 0)


cdef inline void _gemm_beta(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                            const floating* a, Py_ssize_t lda, const floating* b,
                            Py_ssize_t ldb, floating* c, Py_ssize_t ldc,
                            floating beta) noexcept nogil:
    """Column-major C (m, n) = op(A) op(B) + beta C (beta 0: C is only written)."""
    cdef int im = <int>m, jn = <int>n, ik = <int>k
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    cdef int64_t lm = m, ln = n, lk = k, llda = lda, lldb = ldb, lldc = ldc
    cdef floating one = 1
    cdef Py_ssize_t j, i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            memset(c, 0, m * n * sizeof(floating))
        elif beta != 1:
            for j in range(n):
                for i in range(m):
                    c[j * ldc + i] *= beta
        return
    if floating is float:
        if _sgemm64 != NULL:
            _sgemm64(&ta, &tb, &lm, &ln, &lk, &one, <float*>a, &llda, <float*>b, &lldb, &beta,
                     c, &lldc)
        else:
            sgemm(&ta, &tb, &im, &jn, &ik, &one, <float*>a, &ilda, <float*>b, &ildb, &beta, c,
                  &ildc)
    else:
        if _dgemm64 != NULL:
            _dgemm64(&ta, &tb, &lm, &ln, &lk, &one, <double*>a, &llda, <double*>b, &lldb,
                     &beta, c, &lldc)
        else:
            dgemm(&ta, &tb, &im, &jn, &ik, &one, <double*>a, &ilda, <double*>b, &ildb, &beta,
                  c, &ildc)


# ---------------------------------------------------------------------------------------
# Activations (rows of width o)

# The element-wise epilogues of the Dense layers (bias + linear / relu / leaky relu, and their
# backward with the bias gradient) work in place on one buffer, so they need no overlap check,
# and are cloned for AVX-512 and AVX2 like the optimizer updates (selects, adds, multiplies:
# the same IEEE results on every clone).
cdef extern from *:
    """
    #ifndef FASTNN_CLONES
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FASTNN_CLONES
    #endif
    #endif

    #define FASTNN_EPILOGUES(T, SUFFIX)                                                  \
    static FASTNN_CLONES void fastnn_act_fwd_##SUFFIX(                                   \
            T *out, const T *x, const T *b, Py_ssize_t n, Py_ssize_t o, int act,         \
            T alpha) {                                                                   \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            T *r = out + i * o;                                                          \
            const T *xr = x + i * o;                                                     \
            if (b != NULL) {                                                             \
                if (act == 1) {                                                          \
                    for (Py_ssize_t j = 0; j < o; j++) {                                 \
                        T v = xr[j] + b[j];                                              \
                        r[j] = v < (T)0 ? (T)0 : v;                                      \
                    }                                                                    \
                } else if (act == 2) {                                                   \
                    for (Py_ssize_t j = 0; j < o; j++) {                                 \
                        T v = xr[j] + b[j];                                              \
                        r[j] = v > (T)0 ? v : v * alpha;                                 \
                    }                                                                    \
                } else {                                                                 \
                    for (Py_ssize_t j = 0; j < o; j++)                                   \
                        r[j] = xr[j] + b[j];                                             \
                }                                                                        \
            } else if (act == 1) {                                                       \
                for (Py_ssize_t j = 0; j < o; j++) {                                     \
                    T v = xr[j];                                                         \
                    r[j] = v < (T)0 ? (T)0 : v;                                          \
                }                                                                        \
            } else if (act == 2) {                                                       \
                for (Py_ssize_t j = 0; j < o; j++) {                                     \
                    T v = xr[j];                                                         \
                    r[j] = v > (T)0 ? v : v * alpha;                                     \
                }                                                                        \
            } else if (r != xr) {                                                        \
                memmove(r, xr, (size_t)o * sizeof(T));                                   \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_act_bwd_##SUFFIX(                                   \
            const T *y, T *dx, T *db, Py_ssize_t n, Py_ssize_t o, int act, T alpha) {    \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            const T *yr = y + i * o;                                                     \
            T *r = dx + i * o;                                                           \
            if (act == 1) {                                                              \
                for (Py_ssize_t j = 0; j < o; j++) {                                     \
                    T d = r[j];                                                          \
                    r[j] = yr[j] > (T)0 ? d : (T)0;                                      \
                }                                                                        \
            } else if (act == 2) {                                                       \
                for (Py_ssize_t j = 0; j < o; j++) {                                     \
                    T d = r[j];                                                          \
                    r[j] = yr[j] > (T)0 ? d : d * alpha;                                 \
                }                                                                        \
            }                                                                            \
            if (db != NULL) {                                                            \
                for (Py_ssize_t j = 0; j < o; j++)                                       \
                    db[j] = db[j] + r[j];                                                \
            }                                                                            \
        }                                                                                \
    }

    FASTNN_EPILOGUES(float, f)
    FASTNN_EPILOGUES(double, d)
    """
    void fastnn_act_fwd_f(float*, const float*, const float*, Py_ssize_t, Py_ssize_t, int,
                          float) noexcept nogil
    void fastnn_act_fwd_d(double*, const double*, const double*, Py_ssize_t, Py_ssize_t, int,
                          double) noexcept nogil
    void fastnn_act_bwd_f(const float*, float*, float*, Py_ssize_t, Py_ssize_t, int,
                          float) noexcept nogil
    void fastnn_act_bwd_d(const double*, double*, double*, Py_ssize_t, Py_ssize_t, int,
                          double) noexcept nogil


cdef void _act_fwd(const floating* x, const floating* b, floating* out, Py_ssize_t n,
                   Py_ssize_t o, int act, floating alpha) noexcept nogil:
    """out = act(x + b) row by row (b may be NULL; out may alias x)."""
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef floating* orow
    cdef floating v, e, mx, sf, one = 1  # typed 1: a bare literal would compute in double
    if act == LINEAR or act == RELU or act == LEAKY_RELU:  # one pass from x to out
        if floating is float:
            fastnn_act_fwd_f(out, x, b, n, o, act, alpha)
        else:
            fastnn_act_fwd_d(out, x, b, n, o, act, alpha)
        return
    for i in range(n):
        xr = x + i * o
        orow = out + i * o
        if b != NULL:
            for j in range(o):
                orow[j] = xr[j] + b[j]
            xr = orow
        if act == RELU:
            for j in range(o):
                v = xr[j]
                orow[j] = 0 if v < 0 else v
        elif act == LEAKY_RELU:
            for j in range(o):
                v = xr[j]
                orow[j] = v if v > 0 else v * alpha
        elif act == SIGMOID:
            for j in range(o):
                v = xr[j]
                e = _exp(-v if v >= 0 else v)
                orow[j] = (one / (one + e)) if v >= 0 else (e / (one + e))
        elif act == TANH:
            for j in range(o):
                orow[j] = _tanh(xr[j])
        elif act == SOFTMAX:
            if o > 0:
                mx = _rowmax(xr, o)
                for j in range(o):
                    orow[j] = _exp(xr[j] - mx)
                sf = _pwsum(orow, <const floating*>NULL, <floating>0, o, 0)
                for j in range(o):
                    orow[j] = orow[j] / sf
        elif act >= ELU and act <= SOFTPLUS:
            _smooth_fwd(xr, orow, o, act, alpha)
        elif xr != orow:
            memmove(orow, xr, o * sizeof(floating))


cdef void _act_bwd(const floating* y, const floating* dout, floating* dx, floating* db,
                   Py_ssize_t n, Py_ssize_t o, int act, floating alpha) noexcept nogil:
    """dx = dout * act'(y) from the output y; also db = sum over rows when db != NULL.
    dx may alias dout.  dout is copied into dx first (when they differ) and every loop
    then reads and writes dx alone, loading before selecting: branch-free loops that GCC
    vectorises whether or not dx aliases dout."""
    if db != NULL:
        memset(db, 0, o * sizeof(floating))
    _act_bwd_acc(y, dout, dx, db, n, o, act, alpha)


cdef void _act_bwd_acc(const floating* y, const floating* dout, floating* dx, floating* db,
                       Py_ssize_t n, Py_ssize_t o, int act, floating alpha) noexcept nogil:
    """_act_bwd that adds the rows' sum to db (when not NULL) instead of overwriting it."""
    cdef Py_ssize_t i, j
    cdef const floating* yr
    cdef floating* xr
    cdef floating v, d, sf, one = 1, zero = 0
    if dx != dout:
        memmove(dx, dout, n * o * sizeof(floating))
    if act == LINEAR or act == RELU or act == LEAKY_RELU:
        if floating is float:
            fastnn_act_bwd_f(y, dx, db, n, o, act, alpha)
        else:
            fastnn_act_bwd_d(y, dx, db, n, o, act, alpha)
        return
    for i in range(n):
        yr = y + i * o
        xr = dx + i * o
        if act == RELU:
            for j in range(o):
                d = xr[j]
                v = yr[j]
                xr[j] = d if v > zero else zero
        elif act == LEAKY_RELU:
            for j in range(o):
                d = xr[j]
                v = yr[j]
                xr[j] = d if v > zero else d * alpha
        elif act == SIGMOID:
            for j in range(o):
                v = yr[j]
                xr[j] = xr[j] * v * (one - v)
        elif act == TANH:
            for j in range(o):
                v = yr[j]
                xr[j] = xr[j] * (one - v * v)
        elif act == SOFTMAX:
            sf = _pwsum(<const floating*>xr, yr, <floating>0, o, 1)
            for j in range(o):
                xr[j] = yr[j] * (xr[j] - sf)
        elif act >= ELU and act <= SOFTPLUS:
            _smooth_bwd(yr, xr, o, act, alpha)
        if db != NULL:  # the row is still in L1: no second pass over dx
            for j in range(o):
                db[j] += xr[j]


# ---------------------------------------------------------------------------------------
# Dense layer

cdef void _dense_fwd(const floating* x, const floating* w, const floating* b, floating* out,
                     Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                     floating alpha) noexcept nogil:
    # out^T (no, n) = w^T (no, ni) x^T (ni, n) in column-major terms
    _gemm(c'N', c'N', no, n, ni, w, no, x, ni, out, no)
    _act_fwd(out, b, out, n, no, act, alpha)


# OpenBLAS (SkylakeX) takes its small-matrix kernel, which skips packing the operands, when
# m n k <= SMALL_GEMM; a Dense layer's GEMMs above that but made of blocks below it run faster
# in those blocks (1 thread, float32, 784 inputs, batch 64): x w 256 outputs in blocks of 4
# rows 270 -> 230 us, 128 outputs in blocks of 8 143 -> 115 us; dw in blocks of 49 input rows
# (256 outputs) 262 -> 235 us, of 98 (128 outputs) 138 -> 118 us.  Blocks of fewer rows than
# these minimums are not used (the blocks are then n itself: one GEMM).
cdef Py_ssize_t DENSE_MIN_ROWS = 4
cdef Py_ssize_t DENSE_MIN_INPUTS = 16


cdef void _dense_xw(const floating* x, const floating* w, floating* out, Py_ssize_t n,
                    Py_ssize_t ni, Py_ssize_t no) noexcept nogil:
    """out (n, no) = x (n, ni) w (ni, no) in blocks of rows small enough for the small-matrix
    kernel (_small_block, at least DENSE_MIN_ROWS rows)."""
    cdef Py_ssize_t rows = _small_block(n, <double>no * ni, DENSE_MIN_ROWS), i0 = 0
    while i0 < n:
        # out^T (no, rows) = w^T (no, ni) x^T (ni, rows) in column-major terms
        _gemm(c'N', c'N', no, min(rows, n - i0), ni, w, no, x + i0 * ni, ni, out + i0 * no,
              no)
        i0 += rows


cdef void _dense_dw(const floating* x, const floating* dz, floating* dw, Py_ssize_t n,
                    Py_ssize_t ni, Py_ssize_t no) noexcept nogil:
    """dw (ni, no) = x^T (ni, n) dz (n, no) in blocks of its rows small enough for the
    small-matrix kernel (_small_block, at least DENSE_MIN_INPUTS rows)."""
    cdef Py_ssize_t rows = _small_block(ni, <double>no * n, DENSE_MIN_INPUTS), i0 = 0
    while i0 < ni:
        # dw^T (no, rows) = dz^T (no, n) x[:, i0:i0 + rows] (n, rows) in column-major terms
        _gemm(c'N', c'T', no, min(rows, ni - i0), n, dz, no, x + i0, ni, dw + i0 * no, no)
        i0 += rows


cdef void _dense_layer_fwd(const floating* x, const floating* w, const floating* b,
                           floating* out, Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                           floating alpha) noexcept nogil:
    """The Dense layer: _dense_fwd with the GEMM in small-matrix blocks (_dense_xw)."""
    _dense_xw(x, w, out, n, ni, no)
    _act_fwd(out, b, out, n, no, act, alpha)


cdef void _dense_bwd(const floating* x, const floating* w, const floating* y,
                     const floating* dout, floating* dz, floating* dx, floating* dw,
                     floating* db, Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                     floating alpha, bint need_dx) noexcept nogil:
    _act_bwd(y, dout, dz, db, n, no, act, alpha)
    _dense_dw(x, dz, dw, n, ni, no)
    if need_dx:
        # dx^T (ni, n) = w (ni, no) dz^T (no, n)
        _gemm(c'T', c'N', ni, n, no, w, no, dz, no, dx, ni)


# ---------------------------------------------------------------------------------------
# Convolution and pooling on NHWC images (see reference).  A Window holds the geometry of
# one call; _check_window (and _make_plan) settle that every window has at least one
# position inside the image, so no loop below reads or writes outside its arrays.

cdef struct Window:
    Py_ssize_t n, h, w, c, ho, wo, co, kh, kw, sh, sw, pt, pl


cdef inline void _span(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t window,
                       Py_ssize_t size, Py_ssize_t* first, Py_ssize_t* end) noexcept nogil:
    # the window positions of output o that fall inside an axis of ``size``
    cdef Py_ssize_t start = o * stride - pad
    first[0] = -start if start < 0 else 0
    end[0] = window if size - start > window else size - start


cdef void _im2col(const floating* x, floating* cols, const Window* g, Py_ssize_t b0,
                  Py_ssize_t b1) noexcept nogil:
    # the columns of images b0 <= b < b1 (image b0's first row at cols); one image row of a
    # window (kw*c values) is contiguous in x: copied as one run where the window lies
    # inside the image, position by position at the edges
    cdef Py_ssize_t b, oy, ox, ky, kx, iy, ix, j, k = g.kh * g.kw * g.c, run = g.kw * g.c
    cdef floating* dst
    cdef const floating* src
    for b in range(b0, b1):
        for oy in range(g.ho):
            for ky in range(g.kh):
                iy = oy * g.sh - g.pt + ky
                for ox in range(g.wo):
                    dst = cols + (((b - b0) * g.ho + oy) * g.wo + ox) * k + ky * run
                    ix = ox * g.sw - g.pl
                    if iy < 0 or iy >= g.h:
                        memset(dst, 0, run * sizeof(floating))
                        continue
                    src = x + ((b * g.h + iy) * g.w + ix) * g.c
                    if ix >= 0 and ix + g.kw <= g.w:
                        for j in range(run):
                            dst[j] = src[j]
                        continue
                    for kx in range(g.kw):
                        if 0 <= ix + kx < g.w:
                            for j in range(g.c):
                                dst[kx * g.c + j] = src[kx * g.c + j]
                        else:
                            for j in range(g.c):
                                dst[kx * g.c + j] = 0


cdef void _col2im(const floating* cols, floating* dx, const Window* g, Py_ssize_t b0,
                  Py_ssize_t b1) noexcept nogil:
    # the adjoint of _im2col for images b0 <= b < b1 (image b0's first row at cols): each
    # window row's run added back where it lies in the image
    cdef Py_ssize_t b, oy, ox, ky, kx, iy, ix, j, k = g.kh * g.kw * g.c, run = g.kw * g.c
    cdef const floating* src
    cdef floating* dst
    # window rows innermost: the runs added one after the other lie in different rows of
    # dx (the next window's run in the same row overlaps this one's: read right after its
    # store, it waited for it); each element gets its terms in the same order as before.
    # lenet's second convolution 137-152 -> 116-124 us, convnet's 2.37 -> 1.34 ms (the
    # function alone, one thread)
    memset(dx + b0 * g.h * g.w * g.c, 0, (b1 - b0) * g.h * g.w * g.c * sizeof(floating))
    for b in range(b0, b1):
        for oy in range(g.ho):
            for ox in range(g.wo):
                ix = ox * g.sw - g.pl
                for ky in range(g.kh):
                    iy = oy * g.sh - g.pt + ky
                    if iy < 0 or iy >= g.h:
                        continue
                    src = cols + (((b - b0) * g.ho + oy) * g.wo + ox) * k + ky * run
                    dst = dx + ((b * g.h + iy) * g.w + ix) * g.c
                    if ix >= 0 and ix + g.kw <= g.w:
                        for j in range(run):
                            dst[j] += src[j]
                        continue
                    for kx in range(g.kw):
                        if 0 <= ix + kx < g.w:
                            for j in range(g.c):
                                dst[kx * g.c + j] += src[kx * g.c + j]


# The columns of the whole batch do not fit in L2 (convnet's second convolution: 17 MB), so
# the GEMMs run over blocks of images whose columns do, in one block-sized buffer at the
# start of cols that stays in cache: forward im2col then GEMM and epilogue; backward dz,
# im2col again (cheaper than reading back saved columns), dw += cols^T dz, dcols = dz w^T,
# col2im.  Measured on convnet's second convolution (one thread, CPU time): forward 10.2 ->
# 9.0 ms and backward 19.5 -> 17.0 ms in blocks (128 KB to 1 MB alike), and convnet's
# training step 30.5 -> 28.1 ms with one buffer instead of the whole batch's columns.
# Whole steps (wall, one thread): lenet (4 images of 60 KB a block) 1.69 ms at 256 KB,
# 1.90 at 6 images; convnet (139 KB an image) 28.7 ms at one image a block, 27.2 at 5,
# 27.8 at 9, 40.5 with the whole batch; at two threads too the whole batch was slowest.
cdef enum:
    CONV_BLOCK_BYTES = 262144
    CONV_BLOCK_ROWS = 384


cdef inline Py_ssize_t _conv_block(const Window* g, Py_ssize_t itemsize) noexcept nogil:
    # images per block: columns of about CONV_BLOCK_BYTES, and at least CONV_BLOCK_ROWS
    # rows (GEMMs of fewer rows run slower) and one image
    cdef Py_ssize_t rows = max(1, g.ho * g.wo)
    cdef Py_ssize_t per_image = rows * g.kh * g.kw * g.c * itemsize
    return max(max(1, CONV_BLOCK_BYTES // max(1, per_image)),
               (CONV_BLOCK_ROWS + rows - 1) // rows)


cdef void _conv_fwd(const floating* x, const floating* w, const floating* b, floating* cols,
                    floating* out, const Window* g, int act, floating alpha) noexcept nogil:
    # out (N*HO*WO, F) = act(cols @ w + b): the Dense epilogue on the im2col columns
    cdef Py_ssize_t b0, b1, rows = g.ho * g.wo, k = g.kh * g.kw * g.c
    cdef Py_ssize_t block = _conv_block(g, sizeof(floating))
    if _direct_c1(g):
        _conv_c1_fwd(x, w, b, cols, out, g, act, alpha)
        return
    if _direct_cv(g):
        _conv_cv_fwd(x, w, b, cols, out, g, act, alpha)
        return
    b0 = 0
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        _im2col(x, cols, g, b0, b1)
        _dense_fwd(<const floating*>cols, w, b, out + b0 * rows * g.co, (b1 - b0) * rows, k,
                   g.co, act, alpha)
        b0 = b1


# dcols = dz w^T with w as stored is a TN GEMM, slow at few filters (k = F = 16 in lenet's
# second convolution: 27.5 us a block); with a copy of w transposed once per call it is
# NN (21.5 us).  The copy lives in the columns' scratch after the block's columns, when
# the batch has more than one block (the scratch holds the whole batch's columns).
cdef floating* _conv_wt(const floating* w, floating* cols, const Window* g,
                        Py_ssize_t block) noexcept nogil:
    # w^T (F, k) after the first block's columns, or NULL where the scratch has no room
    cdef Py_ssize_t i, j, rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef floating* wt = cols + min(block, g.n) * rows * k
    if (min(block, g.n) * rows + F) * k > g.n * rows * k:
        return NULL
    for i in range(k):
        for j in range(F):
            wt[j * k + i] = w[i * F + j]
    return wt


cdef void _conv_bwd(const floating* x, const floating* w, const floating* y,
                    const floating* dout, floating* cols, floating* dz, floating* dx,
                    floating* dw, floating* db, const Window* g,
                    int act, floating alpha, bint need_dx) noexcept nogil:
    # block by block: dz, the columns, dw, then dcols = dz @ w.T over the columns
    cdef Py_ssize_t b0, b1, r0, nr, rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef Py_ssize_t block = _conv_block(g, sizeof(floating))
    if _direct_c1(g) and not need_dx and act != SOFTMAX:
        # an elementwise derivative over one long row (rows of F few values run slowly)
        _act_bwd(y, dout, dz, <floating*>NULL, 1, g.n * g.ho * g.wo * g.co, act, alpha)
        _conv_c1_dw(x, <const floating*>dz, cols, dw, db, g)
        return
    if _direct_cv(g):
        _conv_cv_dw(x, y, dout, cols, dz, dw, db, g, act, alpha)
        if need_dx:
            _conv_dx(w, <const floating*>dz, cols, dx, g, block)
        return
    cdef floating* wt = _conv_wt(w, cols, g, block) if need_dx else NULL
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    b0 = 0
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        r0, nr = b0 * rows, (b1 - b0) * rows
        _im2col(x, cols, g, b0, b1)
        _act_bwd_acc(y + r0 * F, dout + r0 * F, dz + r0 * F, db, nr, F, act, alpha)
        # dw^T (F, k) (+)= dz^T (F, nr) cols (nr, k)
        _gemm_beta(c'N', c'T', F, k, nr, <const floating*>dz + r0 * F, F,
                   <const floating*>cols, k, dw, F, b0 > 0)
        if need_dx:
            _dcols_col2im(w, wt, <const floating*>dz, cols, dx, g, b0, b1)
        b0 = b1


cdef void _dcols_col2im(const floating* w, const floating* wt, const floating* dz,
                        floating* cols, floating* dx, const Window* g, Py_ssize_t b0,
                        Py_ssize_t b1) noexcept nogil:
    # dx of images b0 <= b < b1: dcols = dz @ w.T into cols, then col2im
    cdef Py_ssize_t rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef Py_ssize_t r0 = b0 * rows, nr = (b1 - b0) * rows
    if wt != NULL:
        # dcols^T (k, nr) = w^T^T (k, F) dz^T (F, nr), both operands as stored
        _gemm(c'N', c'N', k, nr, F, wt, k, dz + r0 * F, F, cols, k)
    else:
        # dcols^T (k, nr) = w (k, F) dz^T (F, nr)
        _gemm(c'T', c'N', k, nr, F, w, F, dz + r0 * F, F, cols, k)
    _col2im(<const floating*>cols, dx, g, b0, b1)


cdef void _conv_dx(const floating* w, const floating* dz, floating* cols, floating* dx,
                   const Window* g, Py_ssize_t block) noexcept nogil:
    # dx block by block (after a direct dw: the scratch is free)
    cdef Py_ssize_t b0 = 0, b1
    cdef const floating* wt = _conv_wt(w, cols, g, block)
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        _dcols_col2im(w, wt, dz, cols, dx, g, b0, b1)
        b0 = b1


# A convolution of one input channel is a skinny GEMM (K = KH*KW, F small) that BLAS runs
# slowly, and its im2col copies runs of KW values: a direct loop is faster.  Image by
# image, x is zero-padded to the (HO+KH-1, WP = WO+KW-1) grid of every window position in
# the columns' scratch; at stride 1 the outputs (oy, ox) then lie at j = oy*WP + ox of a
# flat run of L = (HO-1)*WP + WO and window position (ky, kx) reads the padded image at
# j + ky*WP + kx: one long axpy (forward) or dot (dw) per (ky, kx, f), which vectorise
# (the WP - WO columns between rows are computed and dropped).  The forward leaves the
# columns unsaved: the backward reads x again (and builds them when it needs dx).

# The planes of both loops are computed register-blocked (GCC vector extensions, 64-byte
# vectors that each build splits into what its target has).  Forward: six (or three, or
# one) filters by two vectors of outputs at a time, twelve accumulators; per window
# position two loads of the image and six broadcast weights; bias and a piecewise-linear
# activation applied before the store.  Weight gradient: two window positions by six
# filters, twelve accumulators over the run; per vector of outputs six loads of dz and two
# of the image.  The long axpys and dots they replace were bound by loads and stores
# (forward) and by the latency of one accumulator chain (weight gradient).
cdef extern from *:
    """
    #define FASTNN_C1_FWD(T, IT, SUFFIX, FG, PV)                                         \
    static void fastnn_c1_planes_##SUFFIX##FG(                                          \
            const T *xp, Py_ssize_t wp, const T *w, const T *bias, int act, T alpha,     \
            T *t, Py_ssize_t plane, Py_ssize_t run, Py_ssize_t kh, Py_ssize_t kw,        \
            Py_ssize_t F, Py_ssize_t f0) {                                               \
        typedef T V __attribute__((vector_size(64), aligned(sizeof(T))));               \
        typedef IT IV __attribute__((vector_size(64)));                                  \
        const Py_ssize_t L = 64 / sizeof(T);                                             \
        const V zero = {0};                                                              \
        Py_ssize_t j = 0;                                                                \
        for (; j + PV * L <= run; j += PV * L) {                                         \
            V a[FG][PV];                                                                 \
            for (int g = 0; g < FG; g++)                                                 \
                for (int p = 0; p < PV; p++)                                             \
                    a[g][p] = zero;                                                      \
            for (Py_ssize_t ky = 0; ky < kh; ky++)                                       \
                for (Py_ssize_t kx = 0; kx < kw; kx++) {                                 \
                    const T *q = xp + j + ky * wp + kx;                                  \
                    const T *wk = w + (ky * kw + kx) * F + f0;                           \
                    V v[PV];                                                             \
                    for (int p = 0; p < PV; p++)                                         \
                        v[p] = *(const V *)(q + p * L);                                  \
                    for (int g = 0; g < FG; g++)                                         \
                        for (int p = 0; p < PV; p++)                                     \
                            a[g][p] += v[p] * wk[g];                                     \
                }                                                                        \
            for (int g = 0; g < FG; g++)                                                 \
                for (int p = 0; p < PV; p++) {                                           \
                    V u = a[g][p] + (bias != NULL ? bias[f0 + g] : (T)0);                \
                    if (act == 1) {  /* relu as v < 0 ? 0 : v (a NaN stays) */          \
                        u = (V)((IV)u & ~(IV)(u < zero));                                \
                    } else if (act == 2) {                                               \
                        IV m = (IV)(u > zero);                                           \
                        u = (V)(((IV)u & m) | ((IV)(u * alpha) & ~m));                   \
                    }                                                                    \
                    *(V *)(t + (f0 + g) * plane + j + p * L) = u;                        \
                }                                                                        \
        }                                                                                \
        /* then single vectors, the last one ending at run (it recomputes, and stores    \
           again, outputs of the vector before it); scalars only when run < L */        \
        for (Py_ssize_t jv = j; jv < run; jv += L) {                                     \
            Py_ssize_t j1 = jv + L <= run ? jv : run - L;                                \
            if (j1 < 0) {                                                                \
                for (Py_ssize_t jj = jv; jj < run; jj++)                                 \
                    for (int g = 0; g < FG; g++) {                                       \
                        T s = 0;                                                         \
                        for (Py_ssize_t ky = 0; ky < kh; ky++)                           \
                            for (Py_ssize_t kx = 0; kx < kw; kx++)                       \
                                s += xp[jj + ky * wp + kx] * w[(ky * kw + kx) * F + f0 + g]; \
                        s = s + (bias != NULL ? bias[f0 + g] : (T)0);                    \
                        if (act == 1)                                                    \
                            s = s < (T)0 ? (T)0 : s;                                     \
                        else if (act == 2)                                               \
                            s = s > (T)0 ? s : s * alpha;                                \
                        t[(f0 + g) * plane + jj] = s;                                    \
                    }                                                                    \
                break;                                                                   \
            }                                                                            \
            V a[FG];                                                                     \
            for (int g = 0; g < FG; g++)                                                 \
                a[g] = zero;                                                             \
            for (Py_ssize_t ky = 0; ky < kh; ky++)                                       \
                for (Py_ssize_t kx = 0; kx < kw; kx++) {                                 \
                    V v = *(const V *)(xp + j1 + ky * wp + kx);                          \
                    const T *wk = w + (ky * kw + kx) * F + f0;                           \
                    for (int g = 0; g < FG; g++)                                         \
                        a[g] += v * wk[g];                                               \
                }                                                                        \
            for (int g = 0; g < FG; g++) {                                               \
                V u = a[g] + (bias != NULL ? bias[f0 + g] : (T)0);                       \
                if (act == 1) {                                                          \
                    u = (V)((IV)u & ~(IV)(u < zero));                                    \
                } else if (act == 2) {                                                   \
                    IV m = (IV)(u > zero);                                               \
                    u = (V)(((IV)u & m) | ((IV)(u * alpha) & ~m));                       \
                }                                                                        \
                *(V *)(t + (f0 + g) * plane + j1) = u;                                   \
            }                                                                            \
        }                                                                                \
    }

    #define FASTNN_C1_DW(T, SUFFIX, FG, TG)                                              \
    static void fastnn_c1_dw_planes_##SUFFIX##FG##_##TG(                                \
            const T *xp, Py_ssize_t wp, const T *d, Py_ssize_t plane, Py_ssize_t run,    \
            Py_ssize_t kw, Py_ssize_t F, Py_ssize_t f0, Py_ssize_t k0, T *dw) {          \
        typedef T V __attribute__((vector_size(64), aligned(sizeof(T))));               \
        const Py_ssize_t L = 64 / sizeof(T);                                             \
        const Py_ssize_t full = run - run % L;                                           \
        const T *q[TG];                                                                  \
        V a[TG][FG];                                                                     \
        for (int k = 0; k < TG; k++) {                                                   \
            q[k] = xp + ((k0 + k) / kw) * wp + (k0 + k) % kw;                            \
            for (int g = 0; g < FG; g++)                                                 \
                a[k][g] = (V){0};                                                        \
        }                                                                                \
        for (Py_ssize_t j = 0; j < full; j += L) {                                       \
            V dv[FG];                                                                    \
            for (int g = 0; g < FG; g++)                                                 \
                dv[g] = *(const V *)(d + (f0 + g) * plane + j);                          \
            for (int k = 0; k < TG; k++) {                                               \
                V v = *(const V *)(q[k] + j);                                            \
                for (int g = 0; g < FG; g++)                                             \
                    a[k][g] += v * dv[g];                                                \
            }                                                                            \
        }                                                                                \
        if (full < run) {  /* the last run - full outputs, zeros in the other lanes */  \
            V dv[FG];                                                                    \
            for (int g = 0; g < FG; g++)                                                 \
                for (Py_ssize_t l = 0; l < L; l++)                                       \
                    dv[g][l] = full + l < run ? d[(f0 + g) * plane + full + l] : (T)0;   \
            for (int k = 0; k < TG; k++) {                                               \
                V v;                                                                     \
                for (Py_ssize_t l = 0; l < L; l++)                                       \
                    v[l] = full + l < run ? q[k][full + l] : (T)0;                       \
                for (int g = 0; g < FG; g++)                                             \
                    a[k][g] += v * dv[g];                                                \
            }                                                                            \
        }                                                                                \
        for (int k = 0; k < TG; k++)                                                     \
            for (int g = 0; g < FG; g++) {                                               \
                T s = 0;                                                                 \
                for (Py_ssize_t l = 0; l < L; l++)                                       \
                    s += a[k][g][l];                                                     \
                dw[(k0 + k) * F + f0 + g] += s;                                          \
            }                                                                            \
    }

    #define FASTNN_C1_ALL(T, IT, SUFFIX)                                                 \
    FASTNN_C1_FWD(T, IT, SUFFIX, 6, 2)                                                   \
    FASTNN_C1_FWD(T, IT, SUFFIX, 3, 3)                                                   \
    FASTNN_C1_FWD(T, IT, SUFFIX, 1, 3)                                                   \
    FASTNN_C1_DW(T, SUFFIX, 6, 2)                                                        \
    FASTNN_C1_DW(T, SUFFIX, 6, 1)                                                        \
    FASTNN_C1_DW(T, SUFFIX, 3, 2)                                                        \
    FASTNN_C1_DW(T, SUFFIX, 3, 1)                                                        \
    FASTNN_C1_DW(T, SUFFIX, 1, 2)                                                        \
    FASTNN_C1_DW(T, SUFFIX, 1, 1)                                                        \
    static void fastnn_c1_planes_##SUFFIX(                                              \
            const T *xp, Py_ssize_t wp, const T *w, const T *bias, int act, T alpha,     \
            T *t, Py_ssize_t plane, Py_ssize_t run, Py_ssize_t kh, Py_ssize_t kw,        \
            Py_ssize_t F) {                                                              \
        Py_ssize_t f = 0;                                                                \
        for (; f + 6 <= F; f += 6)                                                       \
            fastnn_c1_planes_##SUFFIX##6(xp, wp, w, bias, act, alpha, t, plane, run,     \
                                         kh, kw, F, f);                                  \
        for (; f + 3 <= F; f += 3)                                                       \
            fastnn_c1_planes_##SUFFIX##3(xp, wp, w, bias, act, alpha, t, plane, run,     \
                                         kh, kw, F, f);                                  \
        for (; f < F; f++)                                                               \
            fastnn_c1_planes_##SUFFIX##1(xp, wp, w, bias, act, alpha, t, plane, run,     \
                                         kh, kw, F, f);                                  \
    }                                                                                    \
    static void fastnn_c1_dw_planes_##SUFFIX(                                           \
            const T *xp, Py_ssize_t wp, const T *d, Py_ssize_t plane, Py_ssize_t run,    \
            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F, T *dw) {                         \
        for (Py_ssize_t k = 0; k < kh * kw; k += 2) {                                    \
            int two = k + 2 <= kh * kw;                                                  \
            Py_ssize_t f = 0;                                                            \
            for (; f + 6 <= F; f += 6) {                                                 \
                if (two) fastnn_c1_dw_planes_##SUFFIX##6_2(xp, wp, d, plane, run, kw,    \
                                                           F, f, k, dw);                 \
                else fastnn_c1_dw_planes_##SUFFIX##6_1(xp, wp, d, plane, run, kw, F, f,  \
                                                       k, dw);                           \
            }                                                                            \
            for (; f + 3 <= F; f += 3) {                                                 \
                if (two) fastnn_c1_dw_planes_##SUFFIX##3_2(xp, wp, d, plane, run, kw,    \
                                                           F, f, k, dw);                 \
                else fastnn_c1_dw_planes_##SUFFIX##3_1(xp, wp, d, plane, run, kw, F, f,  \
                                                       k, dw);                           \
            }                                                                            \
            for (; f < F; f++) {                                                         \
                if (two) fastnn_c1_dw_planes_##SUFFIX##1_2(xp, wp, d, plane, run, kw,    \
                                                           F, f, k, dw);                 \
                else fastnn_c1_dw_planes_##SUFFIX##1_1(xp, wp, d, plane, run, kw, F, f,  \
                                                       k, dw);                           \
            }                                                                            \
        }                                                                                \
    }

    FASTNN_C1_ALL(float, int32_t, f)
    FASTNN_C1_ALL(double, int64_t, d)
    """
    void fastnn_c1_planes_f(const float*, Py_ssize_t, const float*, const float*, int, float,
                            float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t) noexcept nogil
    void fastnn_c1_planes_d(const double*, Py_ssize_t, const double*, const double*, int,
                            double, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t) noexcept nogil
    void fastnn_c1_dw_planes_f(const float*, Py_ssize_t, const float*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, Py_ssize_t, Py_ssize_t, float*) noexcept nogil
    void fastnn_c1_dw_planes_d(const double*, Py_ssize_t, const double*, Py_ssize_t,
                               Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               double*) noexcept nogil


cdef inline bint _direct_c1(const Window* g) noexcept nogil:
    # measured (one thread, AVX-512): 2.6x faster than im2col + GEMM at 6 filters, slower
    # from 16 (where BLAS's GEMM is no longer skinny)
    return (g.c == 1 and g.co < 16 and g.sh == 1 and g.sw == 1
            and _c1_scratch(g) <= g.n * g.ho * g.wo * g.kh * g.kw)


cdef inline Py_ssize_t _c1_scratch(const Window* g) noexcept nogil:
    # the padded image, then F planes of HO*WP (outputs, or dz in the backward)
    return (g.ho + g.kh - 1 + g.co * g.ho) * (g.wo + g.kw - 1)


cdef void _c1_pad(const floating* x, floating* xp, const Window* g) noexcept nogil:
    # one image x (H, W) zero-padded into xp (HO+KH-1, WP); x at row pt, column pl
    cdef Py_ssize_t r, iy, j, wp = g.wo + g.kw - 1
    cdef Py_ssize_t lo = g.pl, hi = g.pl + g.w if g.pl + g.w < wp else wp
    memset(xp, 0, (g.ho + g.kh - 1) * wp * sizeof(floating))
    for r in range(g.ho + g.kh - 1):
        iy = r - g.pt
        if 0 <= iy < g.h:
            for j in range(lo, hi):
                xp[r * wp + j] = x[iy * g.w + j - g.pl]


cdef floating _sum_run(const floating* x, Py_ssize_t n) noexcept nogil:
    # sixteen interleaved partial sums: independent chains that vectorise
    cdef floating lanes[16]
    cdef floating s = 0
    cdef Py_ssize_t j, l, n16 = n - n % 16
    for l in range(16):
        lanes[l] = 0
    for j in range(0, n16, 16):
        for l in range(16):
            lanes[l] = lanes[l] + x[j + l]
    for j in range(n16, n):
        s = s + x[j]
    for l in range(16):
        s = s + lanes[l]
    return s


cdef void _conv_c1_fwd(const floating* x, const floating* w, const floating* bias,
                       floating* cols, floating* out, const Window* g, int act,
                       floating alpha) noexcept nogil:
    # out = act(conv(x, w) + bias); bias and a piecewise-linear activation applied to the
    # planes (long runs), any other activation after the transposition into out
    cdef Py_ssize_t b, f, oy, ox, F = g.co, wp = g.wo + g.kw - 1
    cdef Py_ssize_t plane = g.ho * wp, run = (g.ho - 1) * wp + g.wo
    cdef bint fused = act == LINEAR or act == RELU or act == LEAKY_RELU
    cdef floating* xp = cols
    cdef floating* t = cols + (g.ho + g.kh - 1) * wp
    cdef floating* o
    for b in range(g.n):
        _c1_pad(x + b * g.h * g.w, xp, g)
        if floating is float:
            fastnn_c1_planes_f(xp, wp, w, bias if fused else NULL, act if fused else LINEAR,
                               alpha, t, plane, run, g.kh, g.kw, F)
        else:
            fastnn_c1_planes_d(xp, wp, w, bias if fused else NULL, act if fused else LINEAR,
                               alpha, t, plane, run, g.kh, g.kw, F)
        o = out + b * g.ho * g.wo * F
        for oy in range(g.ho):
            for ox in range(g.wo):
                for f in range(F):
                    o[(oy * g.wo + ox) * F + f] = t[f * plane + oy * wp + ox]
    if not fused:
        _act_fwd(<const floating*>out, bias, out, g.n * g.ho * g.wo, F, act, alpha)


cdef void _conv_c1_dw(const floating* x, const floating* dz, floating* cols, floating* dw,
                      floating* db, const Window* g) noexcept nogil:
    # dw[ky, kx, f] = sum over (b, oy, ox) of xpadded[oy + ky, ox + kx] dz[b, oy, ox, f];
    # db[f] (when not NULL) = the sum of dz's plane f
    cdef Py_ssize_t b, f, oy, ox, F = g.co, wp = g.wo + g.kw - 1
    cdef Py_ssize_t plane = g.ho * wp, run = (g.ho - 1) * wp + g.wo
    cdef floating* xp = cols
    cdef floating* d = cols + (g.ho + g.kh - 1) * wp
    cdef const floating* dzb
    memset(dw, 0, g.kh * g.kw * F * sizeof(floating))
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    # the zeros between the rows, once: every image writes the same other entries
    memset(d, 0, F * plane * sizeof(floating))
    for b in range(g.n):
        _c1_pad(x + b * g.h * g.w, xp, g)
        dzb = dz + b * g.ho * g.wo * F
        for oy in range(g.ho):
            for ox in range(g.wo):
                for f in range(F):
                    d[f * plane + oy * wp + ox] = dzb[(oy * g.wo + ox) * F + f]
        if floating is float:
            fastnn_c1_dw_planes_f(xp, wp, d, plane, run, g.kh, g.kw, F, dw)
        else:
            fastnn_c1_dw_planes_d(xp, wp, d, plane, run, g.kh, g.kw, F, dw)
        if db != NULL:
            for f in range(F):
                db[f] += _sum_run(d + f * plane, run)


# From 16 filters (a multiple of 16) the direct loop runs over the filters instead: the F
# outputs of a pixel are whole SIMD vectors (GCC vector extensions: 64 bytes, split into
# what the build's target has), eight pixels of a row at a time, so that each window
# element costs one weight vector and eight broadcasts of the padded image for eight
# independent multiply-adds.  In NHWC a window row's KW*C inputs are contiguous (pixel i of
# the eight C values further), and so are the matching KW*C rows of the kernel: one loop of
# KW*C per window row, whatever C.  The weight gradient takes the same shape: eight pixels'
# dz vectors times each window element's eight inputs added to that element's row of dw.
# Measured on convnet's first convolution (28x28x1 -> 32 k3, batch 128, one thread, CPU
# time): forward 2.7 -> 1.0 ms and backward (dz, db, dw) 2.5 -> 1.8 ms against im2col +
# GEMM.  C = 1 runs row by row (the eight inputs at constant offsets, a short row's last
# pixels one at a time).  From C = 2 the eight pixels run on over the image's rows (each at
# its own offset; a last block of fewer repeats the last pixel): row by row, the two last
# pixels of lenet's rows of ten ran as long as the eight.  lenet's second convolution
# (14x14x6 -> 16 k5, batch 32, one thread, wall): forward 295 -> 170 us, dz + db + dw
# 315 -> 220 us, with dx (dcols and col2im as before) 670 -> 520 us; convnet's second
# (32 -> 64 channels) measured no faster than im2col + GEMM (its GEMM is not skinny).
cdef extern from *:
    """
    #define FASTNN_CV_OFFSETS(p0)                                                        \
        Py_ssize_t o[8];                                                                 \
        for (int i = 0; i < 8; i++) {                                                    \
            Py_ssize_t p = p0 + i < npx ? p0 + i : npx - 1;                              \
            o[i] = ((p / wo) * wp + p % wo) * C;                                         \
        }                                                                                \
        const Py_ssize_t o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3];                     \
        const Py_ssize_t o4 = o[4], o5 = o[5], o6 = o[6], o7 = o[7];
    #define FASTNN_CV(T, SUFFIX)                                                        \
    typedef T fastnn_vec_##SUFFIX __attribute__((vector_size(64), aligned(sizeof(T)))); \
    static inline __attribute__((always_inline)) void fastnn_cv_fwd_body_##SUFFIX(      \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *w, T *out, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        typedef fastnn_vec_##SUFFIX V;                                                   \
        const Py_ssize_t lanes = 64 / sizeof(T), run = kw * C, npx = ho * wo;            \
        for (Py_ssize_t p0 = 0; p0 < npx; p0 += 8) {                                     \
            FASTNN_CV_OFFSETS(p0)                                                        \
            for (Py_ssize_t f = 0; f < F; f += lanes) {                                  \
                V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                \
                V a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};                                \
                for (Py_ssize_t ky = 0; ky < kh; ky++) {                                 \
                    const T *xr = xp + ky * wp * C;                                      \
                    const T *wr = w + ky * run * F + f;                                  \
                    for (Py_ssize_t j = 0; j < run; j++) {                               \
                        V v = *(const V *)(wr + j * F);                                  \
                        const T *q = xr + j;                                             \
                        a0 += q[o0] * v; a1 += q[o1] * v; a2 += q[o2] * v;               \
                        a3 += q[o3] * v; a4 += q[o4] * v; a5 += q[o5] * v;               \
                        a6 += q[o6] * v; a7 += q[o7] * v;                                \
                    }                                                                    \
                }                                                                        \
                /* a pixel past the last is the last again: the same value stored */     \
                V a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};                               \
                for (int i = 7; i >= 0; i--)                                             \
                    *(V *)(out + (p0 + i < npx ? p0 + i : npx - 1) * F + f) = a[i];      \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static inline __attribute__((always_inline)) void fastnn_cv_dw_body_##SUFFIX(       \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *dz, T *dw, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        typedef fastnn_vec_##SUFFIX V;                                                   \
        const Py_ssize_t lanes = 64 / sizeof(T), run = kw * C, npx = ho * wo;            \
        for (Py_ssize_t p0 = 0; p0 < npx; p0 += 8) {                                     \
            FASTNN_CV_OFFSETS(p0)                                                        \
            for (Py_ssize_t f = 0; f < F; f += lanes) {                                  \
                /* a pixel past the last contributes nothing: its dz taken as zero */    \
                V d[8];                                                                  \
                for (int i = 0; i < 8; i++) {                                            \
                    if (p0 + i < npx) d[i] = *(const V *)(dz + (p0 + i) * F + f);        \
                    else { V zero = {0}; d[i] = zero; }                                  \
                }                                                                        \
                V d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];                            \
                V d4 = d[4], d5 = d[5], d6 = d[6], d7 = d[7];                            \
                for (Py_ssize_t ky = 0; ky < kh; ky++) {                                 \
                    const T *xr = xp + ky * wp * C;                                      \
                    T *wr = dw + ky * run * F + f;                                       \
                    for (Py_ssize_t j = 0; j < run; j++) {                               \
                        const T *q = xr + j;                                             \
                        V a = q[o0] * d0 + q[o1] * d1;                                   \
                        V c = q[o2] * d2 + q[o3] * d3;                                   \
                        V e = q[o4] * d4 + q[o5] * d5;                                   \
                        V h = q[o6] * d6 + q[o7] * d7;                                   \
                        *(V *)(wr + j * F) += (a + c) + (e + h);                         \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static inline __attribute__((always_inline)) void fastnn_cv_fwd_rows_##SUFFIX(      \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *w, T *out, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        typedef fastnn_vec_##SUFFIX V;                                                   \
        const Py_ssize_t lanes = 64 / sizeof(T), run = kw * C;                           \
        for (Py_ssize_t oy = 0; oy < ho; oy++) {                                         \
            Py_ssize_t ox = 0;                                                           \
            for (; ox + 8 <= wo; ox += 8) {                                              \
                for (Py_ssize_t f = 0; f < F; f += lanes) {                              \
                    V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                            \
                    V a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};                            \
                    for (Py_ssize_t ky = 0; ky < kh; ky++) {                             \
                        const T *xr = xp + ((oy + ky) * wp + ox) * C;                    \
                        const T *wr = w + ky * run * F + f;                              \
                        for (Py_ssize_t j = 0; j < run; j++) {                           \
                            V v = *(const V *)(wr + j * F);                              \
                            const T *q = xr + j;                                         \
                            a0 += q[0] * v; a1 += q[C] * v; a2 += q[2 * C] * v;          \
                            a3 += q[3 * C] * v; a4 += q[4 * C] * v;                      \
                            a5 += q[5 * C] * v; a6 += q[6 * C] * v;                      \
                            a7 += q[7 * C] * v;                                          \
                        }                                                                \
                    }                                                                    \
                    T *o = out + (oy * wo + ox) * F + f;                                 \
                    *(V *)o = a0; *(V *)(o + F) = a1; *(V *)(o + 2 * F) = a2;            \
                    *(V *)(o + 3 * F) = a3; *(V *)(o + 4 * F) = a4;                      \
                    *(V *)(o + 5 * F) = a5; *(V *)(o + 6 * F) = a6;                      \
                    *(V *)(o + 7 * F) = a7;                                              \
                }                                                                        \
            }                                                                            \
            for (; ox < wo; ox++) {                                                      \
                for (Py_ssize_t f = 0; f < F; f += lanes) {                              \
                    V a0 = {0};                                                          \
                    for (Py_ssize_t ky = 0; ky < kh; ky++) {                             \
                        const T *xr = xp + ((oy + ky) * wp + ox) * C;                    \
                        const T *wr = w + ky * run * F + f;                              \
                        for (Py_ssize_t j = 0; j < run; j++)                             \
                            a0 += xr[j] * *(const V *)(wr + j * F);                      \
                    }                                                                    \
                    *(V *)(out + (oy * wo + ox) * F + f) = a0;                           \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static inline __attribute__((always_inline)) void fastnn_cv_dw_rows_##SUFFIX(       \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *dz, T *dw, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        typedef fastnn_vec_##SUFFIX V;                                                   \
        const Py_ssize_t lanes = 64 / sizeof(T), run = kw * C;                           \
        for (Py_ssize_t oy = 0; oy < ho; oy++) {                                         \
            Py_ssize_t ox = 0;                                                           \
            for (; ox + 8 <= wo; ox += 8) {                                              \
                for (Py_ssize_t f = 0; f < F; f += lanes) {                              \
                    const T *d = dz + (oy * wo + ox) * F + f;                            \
                    V d0 = *(const V *)d, d1 = *(const V *)(d + F);                      \
                    V d2 = *(const V *)(d + 2 * F), d3 = *(const V *)(d + 3 * F);        \
                    V d4 = *(const V *)(d + 4 * F), d5 = *(const V *)(d + 5 * F);        \
                    V d6 = *(const V *)(d + 6 * F), d7 = *(const V *)(d + 7 * F);        \
                    for (Py_ssize_t ky = 0; ky < kh; ky++) {                             \
                        const T *xr = xp + ((oy + ky) * wp + ox) * C;                    \
                        T *wr = dw + ky * run * F + f;                                   \
                        for (Py_ssize_t j = 0; j < run; j++) {                           \
                            const T *q = xr + j;                                         \
                            V a = q[0] * d0 + q[C] * d1;                                 \
                            V c = q[2 * C] * d2 + q[3 * C] * d3;                         \
                            V e = q[4 * C] * d4 + q[5 * C] * d5;                         \
                            V h = q[6 * C] * d6 + q[7 * C] * d7;                         \
                            *(V *)(wr + j * F) += (a + c) + (e + h);                     \
                        }                                                                \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
            for (; ox < wo; ox++) {                                                      \
                for (Py_ssize_t f = 0; f < F; f += lanes) {                              \
                    V d0 = *(const V *)(dz + (oy * wo + ox) * F + f);                    \
                    for (Py_ssize_t ky = 0; ky < kh; ky++) {                             \
                        const T *xr = xp + ((oy + ky) * wp + ox) * C;                    \
                        T *wr = dw + ky * run * F + f;                                   \
                        for (Py_ssize_t j = 0; j < run; j++)                             \
                            *(V *)(wr + j * F) += xr[j] * d0;                            \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static void fastnn_cv_fwd_##SUFFIX(                                                 \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *w, T *out, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        if (C == 1)                                                                      \
            fastnn_cv_fwd_rows_##SUFFIX(xp, wp, 1, w, out, ho, wo, kh, kw, F);           \
        else                                                                             \
            fastnn_cv_fwd_body_##SUFFIX(xp, wp, C, w, out, ho, wo, kh, kw, F);           \
    }                                                                                    \
    static void fastnn_cv_dw_##SUFFIX(                                                  \
            const T *xp, Py_ssize_t wp, Py_ssize_t C, const T *dz, T *dw, Py_ssize_t ho, \
            Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t F) {                 \
        if (C == 1)                                                                      \
            fastnn_cv_dw_rows_##SUFFIX(xp, wp, 1, dz, dw, ho, wo, kh, kw, F);            \
        else                                                                             \
            fastnn_cv_dw_body_##SUFFIX(xp, wp, C, dz, dw, ho, wo, kh, kw, F);            \
    }

    FASTNN_CV(float, f)
    FASTNN_CV(double, d)
    """
    void fastnn_cv_fwd_f(const float*, Py_ssize_t, Py_ssize_t, const float*, float*,
                         Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t) noexcept nogil
    void fastnn_cv_fwd_d(const double*, Py_ssize_t, Py_ssize_t, const double*, double*,
                         Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t) noexcept nogil
    void fastnn_cv_dw_f(const float*, Py_ssize_t, Py_ssize_t, const float*, float*,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t) noexcept nogil
    void fastnn_cv_dw_d(const double*, Py_ssize_t, Py_ssize_t, const double*, double*,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t) noexcept nogil


cdef enum:
    # the direct loop over several input channels while C*F is at most this (lenet's
    # second convolution: 6*16; convnet's second, 32*64, stays im2col + GEMM)
    DIRECT_CV_MAX_CF = 256


cdef inline bint _direct_cv(const Window* g) noexcept nogil:
    # stride 1, filters in whole vectors; the padded image and one image's dw
    # (KH*KW*C*F) fit in the columns' scratch
    return (g.co % 16 == 0 and g.sh == 1 and g.sw == 1
            and (g.c == 1 or g.c * g.co <= DIRECT_CV_MAX_CF)
            and (g.ho + g.kh - 1) * (g.wo + g.kw - 1) * g.c + g.kh * g.kw * g.c * g.co
            <= g.n * g.ho * g.wo * g.kh * g.kw * g.c)


cdef const floating* _cv_padded(const floating* x, floating* xp, const Window* g) noexcept nogil:
    # one image x (H, W, C), zero-padded into xp (HO+KH-1, WP, C) with x at row pt, column
    # pl; x itself where it is that grid already (valid padding at stride 1)
    cdef Py_ssize_t r, iy, wp = g.wo + g.kw - 1, C = g.c
    cdef Py_ssize_t lo = g.pl, hi = g.pl + g.w if g.pl + g.w < wp else wp
    if g.pt == 0 and g.pl == 0 and g.h == g.ho + g.kh - 1 and g.w == wp:
        return x
    memset(xp, 0, (g.ho + g.kh - 1) * wp * C * sizeof(floating))
    for r in range(g.ho + g.kh - 1):
        iy = r - g.pt
        if 0 <= iy < g.h and hi > lo:
            memcpy(xp + (r * wp + lo) * C, x + (iy * g.w + lo - g.pl) * C,
                   (hi - lo) * C * sizeof(floating))
    return xp


cdef void _conv_cv_fwd(const floating* x, const floating* w, const floating* bias,
                       floating* cols, floating* out, const Window* g, int act,
                       floating alpha) noexcept nogil:
    # image by image: pad, convolve into out, then bias and activation while it is in cache
    cdef Py_ssize_t b, wp = g.wo + g.kw - 1, rows = g.ho * g.wo, F = g.co
    cdef const floating* xp
    cdef floating* o
    for b in range(g.n):
        xp = _cv_padded(x + b * g.h * g.w * g.c, cols, g)
        o = out + b * rows * F
        if floating is float:
            fastnn_cv_fwd_f(xp, wp, g.c, w, o, g.ho, g.wo, g.kh, g.kw, F)
        else:
            fastnn_cv_fwd_d(xp, wp, g.c, w, o, g.ho, g.wo, g.kh, g.kw, F)
        _act_fwd(<const floating*>o, bias, o, rows, F, act, alpha)


cdef void _conv_cv_dw(const floating* x, const floating* y, const floating* dout,
                      floating* cols, floating* dz, floating* dw, floating* db,
                      const Window* g, int act, floating alpha) noexcept nogil:
    # image by image: dz (and db) while the image's rows are in cache, then its dw into
    # the scratch after the padded image, added to dw
    cdef Py_ssize_t b, j, wp = g.wo + g.kw - 1, rows = g.ho * g.wo, F = g.co
    cdef Py_ssize_t k = g.kh * g.kw * g.c * F
    cdef floating* acc = cols + (g.ho + g.kh - 1) * wp * g.c
    cdef const floating* xp
    cdef Py_ssize_t r0
    memset(dw, 0, k * sizeof(floating))
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    for b in range(g.n):
        r0 = b * rows * F
        _act_bwd_acc(y + r0, dout + r0, dz + r0, db, rows, F, act, alpha)
        xp = _cv_padded(x + b * g.h * g.w * g.c, cols, g)
        memset(acc, 0, k * sizeof(floating))
        if floating is float:
            fastnn_cv_dw_f(xp, wp, g.c, dz + r0, acc, g.ho, g.wo, g.kh, g.kw, F)
        else:
            fastnn_cv_dw_d(xp, wp, g.c, dz + r0, acc, g.ho, g.wo, g.kh, g.kw, F)
        for j in range(k):
            dw[j] += acc[j]


cdef inline bint _pool_2x2(const Window* g) noexcept nogil:
    # 2x2 windows at stride 2, each inside the image (an odd last row/column left over)
    return (g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.pt == 0 and g.pl == 0
            and 2 * g.ho <= g.h and 2 * g.wo <= g.w)


# The float selects of the 2x2 forward compiled to branches where the channel loop does not
# vectorise (fewer than a vector of channels: lenet's six), and branches on the order of
# random data mispredict: 300 us per call on lenet's first pooling against 70 us when the
# same data repeats (as in a benchmark of the kernel alone).  The selects are made on the
# bits (a mask from the comparison), which compile to no branch; the results are the same.
# Where the build has AVX-512 (VL) the channels go eight floats (four doubles) at a time,
# the last few masked off in the loads and stores (the same comparisons lane by lane;
# lenet's six channels are one masked vector): lenet's first pooling (28x28x6, batch 32,
# one thread, the kernel alone) forward 77-91 -> 17-25 us and backward 60-73 -> 17-20 us.
# AVX2's masked moves (vmaskmov) measured no faster than the scalar loop here.
cdef extern from *:
    """
    #if defined(__AVX512F__) && defined(__AVX512VL__)
    #include <immintrin.h>
    #define FASTNN_POOL2_AVX512 1
    #else
    #define FASTNN_POOL2_AVX512 0
    #endif

    #define FASTNN_POOL2(T, SUFFIX)                                                      \
    static void fastnn_maxpool2x2_scalar_##SUFFIX(                                      \
            const T *x, T *argmax, T *out, Py_ssize_t n, Py_ssize_t h, Py_ssize_t w,     \
            Py_ssize_t c, Py_ssize_t ho, Py_ssize_t wo) {                                \
        for (Py_ssize_t b = 0; b < n; b++)                                               \
            for (Py_ssize_t oy = 0; oy < ho; oy++)                                       \
                for (Py_ssize_t ox = 0; ox < wo; ox++) {                                 \
                    const T *p0 = x + ((b * h + 2 * oy) * w + 2 * ox) * c;               \
                    const T *p2 = p0 + w * c;                                            \
                    Py_ssize_t i = ((b * ho + oy) * wo + ox) * c;                        \
                    for (Py_ssize_t ch = 0; ch < c; ch++) {                              \
                        T v0 = p0[ch], v1 = p0[c + ch], v2 = p2[ch], v3 = p2[c + ch];    \
                        int k1 = v1 > v0;                                                \
                        T m = v1 > v0 ? v1 : v0;                                         \
                        int k2 = v2 > m;                                                 \
                        m = v2 > m ? v2 : m;                                             \
                        int k3 = v3 > m;                                                 \
                        m = v3 > m ? v3 : m;                                             \
                        out[i + ch] = m;                                                 \
                        argmax[i + ch] = (T)(k3 * 3 + (1 - k3) * (k2 * 2 + (1 - k2) * k1)); \
                    }                                                                    \
                }                                                                        \
    }                                                                                    \
    static void fastnn_maxpool2x2_bwd_scalar_##SUFFIX(                                  \
            const T *argmax, const T *dout, T *dx, Py_ssize_t n, Py_ssize_t h,           \
            Py_ssize_t w, Py_ssize_t c, Py_ssize_t ho, Py_ssize_t wo) {                  \
        Py_ssize_t row = w * c;                                                          \
        for (Py_ssize_t b = 0; b < n; b++)                                               \
            for (Py_ssize_t oy = 0; oy < ho; oy++)                                       \
                for (Py_ssize_t ox = 0; ox < wo; ox++) {                                 \
                    T *q = dx + ((b * h + 2 * oy) * w + 2 * ox) * c;                     \
                    Py_ssize_t i = ((b * ho + oy) * wo + ox) * c;                        \
                    for (Py_ssize_t ch = 0; ch < 2 * c; ch++) {                          \
                        q[ch] = 0;                                                       \
                        q[row + ch] = 0;                                                 \
                    }                                                                    \
                    for (Py_ssize_t ch = 0; ch < c; ch++) {                              \
                        Py_ssize_t p = (Py_ssize_t)argmax[i + ch];                       \
                        if (0 <= p && p < 4)                                             \
                            q[(p >> 1) * row + (p & 1) * c + ch] = dout[i + ch];         \
                    }                                                                    \
                }                                                                        \
    }

    FASTNN_POOL2(float, f)
    FASTNN_POOL2(double, d)

    #if FASTNN_POOL2_AVX512
    /* VEC: __m256 / __m256d; S: ps / pd; L lanes; the last lanes masked off */
    #define FASTNN_POOL2_V(T, SUFFIX, VEC, S, L, MATCH)                                 \
    static void fastnn_maxpool2x2_##SUFFIX(                                             \
            const T *x, T *argmax, T *out, Py_ssize_t n, Py_ssize_t h, Py_ssize_t w,     \
            Py_ssize_t c, Py_ssize_t ho, Py_ssize_t wo) {                                \
        const VEC one = _mm256_set1_##S(1), two = _mm256_set1_##S(2);                    \
        const VEC three = _mm256_set1_##S(3), zero = _mm256_setzero_##S();              \
        for (Py_ssize_t b = 0; b < n; b++)                                               \
            for (Py_ssize_t oy = 0; oy < ho; oy++)                                       \
                for (Py_ssize_t ox = 0; ox < wo; ox++) {                                 \
                    const T *p0 = x + ((b * h + 2 * oy) * w + 2 * ox) * c;               \
                    const T *p2 = p0 + w * c;                                            \
                    Py_ssize_t i = ((b * ho + oy) * wo + ox) * c;                        \
                    for (Py_ssize_t ch = 0; ch < c; ch += L) {                           \
                        __mmask8 k = (__mmask8)((1u << (c - ch < L ? c - ch : L)) - 1);  \
                        VEC v0 = _mm256_maskz_loadu_##S(k, p0 + ch);                     \
                        VEC v1 = _mm256_maskz_loadu_##S(k, p0 + c + ch);                 \
                        VEC v2 = _mm256_maskz_loadu_##S(k, p2 + ch);                     \
                        VEC v3 = _mm256_maskz_loadu_##S(k, p2 + c + ch);                 \
                        __mmask8 k1 = _mm256_cmp_##S##_mask(v1, v0, _CMP_GT_OQ);         \
                        VEC m = _mm256_mask_blend_##S(k1, v0, v1);                       \
                        __mmask8 k2 = _mm256_cmp_##S##_mask(v2, m, _CMP_GT_OQ);          \
                        m = _mm256_mask_blend_##S(k2, m, v2);                            \
                        __mmask8 k3 = _mm256_cmp_##S##_mask(v3, m, _CMP_GT_OQ);          \
                        m = _mm256_mask_blend_##S(k3, m, v3);                            \
                        VEC a = _mm256_mask_blend_##S(k1, zero, one);                    \
                        a = _mm256_mask_blend_##S(k2, a, two);                           \
                        a = _mm256_mask_blend_##S(k3, a, three);                         \
                        _mm256_mask_storeu_##S(out + i + ch, k, m);                      \
                        _mm256_mask_storeu_##S(argmax + i + ch, k, a);                   \
                    }                                                                    \
                }                                                                        \
    }                                                                                    \
    static void fastnn_maxpool2x2_bwd_##SUFFIX(                                         \
            const T *argmax, const T *dout, T *dx, Py_ssize_t n, Py_ssize_t h,           \
            Py_ssize_t w, Py_ssize_t c, Py_ssize_t ho, Py_ssize_t wo) {                  \
        Py_ssize_t row = w * c;                                                          \
        for (Py_ssize_t b = 0; b < n; b++)                                               \
            for (Py_ssize_t oy = 0; oy < ho; oy++)                                       \
                for (Py_ssize_t ox = 0; ox < wo; ox++) {                                 \
                    T *q = dx + ((b * h + 2 * oy) * w + 2 * ox) * c;                     \
                    Py_ssize_t i = ((b * ho + oy) * wo + ox) * c;                        \
                    for (Py_ssize_t ch = 0; ch < c; ch += L) {                           \
                        __mmask8 k = (__mmask8)((1u << (c - ch < L ? c - ch : L)) - 1);  \
                        VEC a = _mm256_maskz_loadu_##S(k, argmax + i + ch);              \
                        VEC d = _mm256_maskz_loadu_##S(k, dout + i + ch);                \
                        /* dout where the truncated argmax is the position, else 0 */    \
                        _mm256_mask_storeu_##S(q + ch, k, MATCH(a, 0, d));               \
                        _mm256_mask_storeu_##S(q + c + ch, k, MATCH(a, 1, d));           \
                        _mm256_mask_storeu_##S(q + row + ch, k, MATCH(a, 2, d));         \
                        _mm256_mask_storeu_##S(q + row + c + ch, k, MATCH(a, 3, d));     \
                    }                                                                    \
                }                                                                        \
    }
    static inline __m256 fastnn_match8(__m256 a, int k, __m256 d) {
        __mmask8 e = _mm256_cmpeq_epi32_mask(_mm256_cvttps_epi32(a), _mm256_set1_epi32(k));
        return _mm256_maskz_mov_ps(e, d);
    }
    static inline __m256d fastnn_match4(__m256d a, int k, __m256d d) {
        __mmask8 e = _mm_cmpeq_epi32_mask(_mm256_cvttpd_epi32(a), _mm_set1_epi32(k));
        return _mm256_maskz_mov_pd(e, d);
    }
    FASTNN_POOL2_V(float, f, __m256, ps, 8, fastnn_match8)
    FASTNN_POOL2_V(double, d, __m256d, pd, 4, fastnn_match4)
    #else
    #define fastnn_maxpool2x2_f fastnn_maxpool2x2_scalar_f
    #define fastnn_maxpool2x2_d fastnn_maxpool2x2_scalar_d
    #define fastnn_maxpool2x2_bwd_f fastnn_maxpool2x2_bwd_scalar_f
    #define fastnn_maxpool2x2_bwd_d fastnn_maxpool2x2_bwd_scalar_d
    #endif
    """
    void fastnn_maxpool2x2_f(const float*, float*, float*, Py_ssize_t, Py_ssize_t,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fastnn_maxpool2x2_d(const double*, double*, double*, Py_ssize_t, Py_ssize_t,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fastnn_maxpool2x2_bwd_f(const float*, const float*, float*, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fastnn_maxpool2x2_bwd_d(const double*, const double*, double*, Py_ssize_t,
                                 Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t) noexcept nogil


cdef void _maxpool_2x2_fwd(const floating* x, floating* argmax, floating* out,
                           const Window* g) noexcept nogil:
    # the first maximum in the order (0,0) (0,1) (1,0) (1,1) as the general loop
    if floating is float:
        fastnn_maxpool2x2_f(x, argmax, out, g.n, g.h, g.w, g.c, g.ho, g.wo)
    else:
        fastnn_maxpool2x2_d(x, argmax, out, g.n, g.h, g.w, g.c, g.ho, g.wo)


cdef void _maxpool_2x2_bwd(const floating* argmax, const floating* dout, floating* dx,
                           const Window* g) noexcept nogil:
    # each window's four positions written (dout at the argmax, zeros elsewhere): no
    # division, no data-dependent branch (comparing the argmax with each position compiled
    # to branches that random data mispredicts); an argmax outside the window is skipped,
    # and an odd last row/column zeroed first
    if 2 * g.ho < g.h or 2 * g.wo < g.w:
        memset(dx, 0, g.n * g.h * g.w * g.c * sizeof(floating))
    if floating is float:
        fastnn_maxpool2x2_bwd_f(argmax, dout, dx, g.n, g.h, g.w, g.c, g.ho, g.wo)
    else:
        fastnn_maxpool2x2_bwd_d(argmax, dout, dx, g.n, g.h, g.w, g.c, g.ho, g.wo)


cdef void _maxpool_fwd(const floating* x, floating* argmax, floating* out,
                       const Window* g) noexcept nogil:
    cdef Py_ssize_t b, oy, ox, ky, kx, ky0, ky1, kx0, kx1, ch
    cdef const floating* src
    cdef floating* o
    cdef floating* a
    cdef floating v, m, pos
    if _pool_2x2(g):
        _maxpool_2x2_fwd(x, argmax, out, g)
        return
    for b in range(g.n):
        for oy in range(g.ho):
            _span(oy, g.sh, g.pt, g.kh, g.h, &ky0, &ky1)
            for ox in range(g.wo):
                _span(ox, g.sw, g.pl, g.kw, g.w, &kx0, &kx1)
                o = out + ((b * g.ho + oy) * g.wo + ox) * g.c
                a = argmax + ((b * g.ho + oy) * g.wo + ox) * g.c
                src = x + ((b * g.h + oy * g.sh - g.pt + ky0) * g.w + ox * g.sw - g.pl + kx0) * g.c
                pos = <floating>(ky0 * g.kw + kx0)
                for ch in range(g.c):
                    o[ch] = src[ch]
                    a[ch] = pos
                for ky in range(ky0, ky1):
                    for kx in range(kx0, kx1):
                        src = x + ((b * g.h + oy * g.sh - g.pt + ky) * g.w
                                   + ox * g.sw - g.pl + kx) * g.c
                        pos = <floating>(ky * g.kw + kx)
                        for ch in range(g.c):  # selects, no branch: random data mispredicts
                            v = src[ch]
                            m = o[ch]
                            a[ch] = pos if v > m else a[ch]
                            o[ch] = v if v > m else m


cdef void _maxpool_bwd(const floating* argmax, const floating* dout, floating* dx,
                       const Window* g) noexcept nogil:
    # a position outside the window or the image (a corrupted argmax) is skipped
    cdef Py_ssize_t b, oy, ox, ch, p, iy, ix, i
    if _pool_2x2(g):
        _maxpool_2x2_bwd(argmax, dout, dx, g)
        return
    memset(dx, 0, g.n * g.h * g.w * g.c * sizeof(floating))
    for b in range(g.n):
        for oy in range(g.ho):
            for ox in range(g.wo):
                i = ((b * g.ho + oy) * g.wo + ox) * g.c
                for ch in range(g.c):
                    p = <Py_ssize_t>argmax[i + ch]
                    if p < 0 or p >= g.kh * g.kw:
                        continue
                    iy = oy * g.sh - g.pt + p // g.kw
                    ix = ox * g.sw - g.pl + p % g.kw
                    if 0 <= iy < g.h and 0 <= ix < g.w:
                        dx[((b * g.h + iy) * g.w + ix) * g.c + ch] += dout[i + ch]


cdef void _avgpool(const floating* src, floating* dst, const Window* g,
                   bint forward) noexcept nogil:
    # forward: dst (outputs) = mean over each window's positions in the image of src;
    # backward: dst (dx) = sum of src (dout) / count into each window's positions
    cdef Py_ssize_t b, oy, ox, ky, kx, ky0, ky1, kx0, kx1, ch
    cdef const floating* pi
    cdef floating* po
    cdef floating count
    if not forward:
        memset(dst, 0, g.n * g.h * g.w * g.c * sizeof(floating))
    for b in range(g.n):
        for oy in range(g.ho):
            _span(oy, g.sh, g.pt, g.kh, g.h, &ky0, &ky1)
            for ox in range(g.wo):
                _span(ox, g.sw, g.pl, g.kw, g.w, &kx0, &kx1)
                count = <floating>((ky1 - ky0) * (kx1 - kx0))
                if forward:
                    po = dst + ((b * g.ho + oy) * g.wo + ox) * g.c
                    memset(po, 0, g.c * sizeof(floating))
                else:
                    pi = src + ((b * g.ho + oy) * g.wo + ox) * g.c
                for ky in range(ky0, ky1):
                    for kx in range(kx0, kx1):
                        if forward:
                            pi = src + ((b * g.h + oy * g.sh - g.pt + ky) * g.w
                                        + ox * g.sw - g.pl + kx) * g.c
                            for ch in range(g.c):
                                po[ch] += pi[ch]
                        else:
                            po = dst + ((b * g.h + oy * g.sh - g.pt + ky) * g.w
                                        + ox * g.sw - g.pl + kx) * g.c
                            for ch in range(g.c):
                                po[ch] += pi[ch] / count
                if forward:
                    for ch in range(g.c):
                        po[ch] = po[ch] / count


# ---------------------------------------------------------------------------------------
# Sequence kinds (reference_rnn): Embedding, SimpleRNN, LSTM and GRU.  The recurrent kernels
# run time-major in the workspace of reference_rnn.rnn_layout: the input projection of every
# timestep is one GEMM; each step is one recurrent GEMM into tmp and one fused pass over its
# (N, G) block that applies the gates and writes the states (the gates are saved in place of
# the projection); the backward is one fused gate pass and one GEMM for dh per step, then dW,
# dR and dx one GEMM each.  Nothing is allocated.  Token ids are read from the float batch
# buffer bit for bit as int32 (float32) or int64 (float64), as reference.ids_view does.

cdef struct Seq:
    # geometry of one recurrent call; o: the offsets of rnn_layout (xt, gates, hs, cs, rec,
    # tmp, dh, dc, end)
    int kind, act, rec_act
    bint ret
    Py_ssize_t n, t, f, u, g
    Py_ssize_t o[9]


cdef inline Py_ssize_t _gates_of(int64_t kind) noexcept nogil:
    return 1 if kind == SIMPLE_RNN else (4 if kind == LSTM else 3)


cdef void _seq_init(Seq* q, int kind, Py_ssize_t n, Py_ssize_t t, Py_ssize_t f, Py_ssize_t u,
                    int act, int rec_act, bint ret) noexcept nogil:
    cdef Py_ssize_t g = _gates_of(kind) * u
    cdef Py_ssize_t lstm = kind == LSTM, gru = kind == GRU
    q.kind, q.act, q.rec_act, q.ret = kind, act, rec_act, ret
    q.n, q.t, q.f, q.u, q.g = n, t, f, u, g
    q.o[0] = 0
    q.o[1] = t * n * f
    q.o[2] = q.o[1] + t * n * g
    q.o[3] = q.o[2] + (t + 1) * n * u
    q.o[4] = q.o[3] + (t + 1) * n * u * lstm
    q.o[5] = q.o[4] + t * n * g * gru
    q.o[6] = q.o[5] + n * g
    q.o[7] = q.o[6] + n * u
    q.o[8] = q.o[7] + n * u * lstm


cdef inline void _seq_of_row(const int64_t* row, Py_ssize_t n, Seq* q) noexcept nogil:
    _seq_init(q, <int>row[P_KIND], n, row[P_IN1], row[P_IN2], row[P_UNITS], <int>row[P_ACT],
              <int>row[P_REC_ACT], row[P_RETURN_SEQ] != 0)


cdef inline int64_t _token(const void* ids, Py_ssize_t k, bint wide) noexcept nogil:
    return (<const int64_t*>ids)[k] if wide else (<const int32_t*>ids)[k]


cdef void _embedding_fwd(const void* ids, bint wide, const floating* w, floating* out,
                         Py_ssize_t count, Py_ssize_t v, Py_ssize_t e) noexcept nogil:
    """out[k] = w[ids[k]] for k < count (an id outside [0, v), a broken precondition,
    gives a row of zeros: never a read outside w)."""
    cdef Py_ssize_t k
    cdef int64_t tok
    for k in range(count):
        tok = _token(ids, k, wide)
        if 0 <= tok < v:
            memcpy(out + k * e, w + tok * e, e * sizeof(floating))
        else:
            memset(out + k * e, 0, e * sizeof(floating))


cdef void _embedding_bwd(const void* ids, bint wide, const floating* dout, floating* dw,
                         Py_ssize_t count, Py_ssize_t v, Py_ssize_t e) noexcept nogil:
    """dw = 0, then each dout row added to its id's row (only the rows of ids seen)."""
    cdef Py_ssize_t k, j
    cdef int64_t tok
    cdef floating* dst
    cdef const floating* src
    memset(dw, 0, v * e * sizeof(floating))
    for k in range(count):
        tok = _token(ids, k, wide)
        if 0 <= tok < v:
            dst = dw + tok * e
            src = dout + k * e
            for j in range(e):
                dst[j] += src[j]


cdef inline floating _gate_sigmoid(floating v) noexcept nogil:
    """sigmoid without a branch in float32 (fastnn_expf clamps its argument, so exp(-v)
    neither overflows nor needs a select: the gate loops vectorise); _sigmoid in float64."""
    cdef float one = 1
    if floating is float:
        return one / (one + fastnn_expf(-v))
    else:
        return _sigmoid(v)


cdef inline void _seg_act(floating* a, Py_ssize_t count, int code) noexcept nogil:
    """a = act(a) in place (the recurrent activations: linear, relu, sigmoid, tanh)."""
    cdef Py_ssize_t j
    if code == TANH:
        for j in range(count):
            a[j] = _tanh(a[j])
    elif code == SIGMOID:
        for j in range(count):
            a[j] = _gate_sigmoid(a[j])
    elif code == RELU:
        for j in range(count):
            a[j] = a[j] if a[j] > 0 else 0


cdef inline void _seg_add_act(floating* a, const floating* b, Py_ssize_t count,
                              int code) noexcept nogil:
    """a = act(a + b) in place, one pass (b: the gates' bias)."""
    cdef Py_ssize_t j
    cdef floating v
    if code == TANH:
        for j in range(count):
            a[j] = _tanh(a[j] + b[j])
    elif code == SIGMOID:
        for j in range(count):
            a[j] = _gate_sigmoid(a[j] + b[j])
    elif code == RELU:
        for j in range(count):
            v = a[j] + b[j]
            a[j] = v if v > 0 else 0
    else:
        for j in range(count):
            a[j] += b[j]


cdef inline void _seg_add2_act(floating* a, const floating* b, const floating* c,
                               const floating* d, Py_ssize_t count, int code) noexcept nogil:
    """a = act((a + b) + (c + d)) in place, one pass."""
    cdef Py_ssize_t j
    cdef floating v
    if code == TANH:
        for j in range(count):
            a[j] = _tanh((a[j] + b[j]) + (c[j] + d[j]))
    elif code == SIGMOID:
        for j in range(count):
            a[j] = _gate_sigmoid((a[j] + b[j]) + (c[j] + d[j]))
    elif code == RELU:
        for j in range(count):
            v = (a[j] + b[j]) + (c[j] + d[j])
            a[j] = v if v > 0 else 0
    else:
        for j in range(count):
            a[j] = (a[j] + b[j]) + (c[j] + d[j])


cdef inline void _seg_add_mul_act(floating* a, const floating* b, const floating* c,
                                  const floating* d, Py_ssize_t count,
                                  int code) noexcept nogil:
    """a = act((a + b) + c * d) in place, one pass."""
    cdef Py_ssize_t j
    cdef floating v
    if code == TANH:
        for j in range(count):
            a[j] = _tanh((a[j] + b[j]) + c[j] * d[j])
    elif code == SIGMOID:
        for j in range(count):
            a[j] = _gate_sigmoid((a[j] + b[j]) + c[j] * d[j])
    elif code == RELU:
        for j in range(count):
            v = (a[j] + b[j]) + c[j] * d[j]
            a[j] = v if v > 0 else 0
    else:
        for j in range(count):
            a[j] = (a[j] + b[j]) + c[j] * d[j]


cdef inline void _dact_mul(floating* out, const floating* y, const floating* d,
                           Py_ssize_t count, int code) noexcept nogil:
    """out = d * act'(z) from the output y = act(z); out may alias y or d."""
    cdef Py_ssize_t j
    cdef floating one = 1, v
    if code == TANH:
        for j in range(count):
            v = y[j]
            out[j] = d[j] * (one - v * v)
    elif code == SIGMOID:
        for j in range(count):
            v = y[j]
            out[j] = d[j] * (v * (one - v))
    elif code == RELU:
        for j in range(count):
            out[j] = d[j] if y[j] > 0 else 0
    else:
        for j in range(count):
            out[j] = d[j]


cdef void _simple_step(const Seq* q, floating* z, floating* h,
                       const floating* b) noexcept nogil:
    """z (the step's x @ W + h_prev @ R) = act(z + b), copied to h."""
    cdef Py_ssize_t i, u = q.u
    for i in range(q.n):
        _seg_add_act(z + i * u, b, u, q.act)
        memcpy(h + i * u, z + i * u, u * sizeof(floating))


cdef void _lstm_step(const Seq* q, floating* zs, floating* cprev, floating* hs,
                     const floating* b) noexcept nogil:
    """Gates i, f, c, o of one step (zs: x @ W + h_prev @ R, the bias b added here; saved
    after their activations), then c and h (the cell states of the step follow cprev by
    N*U, as its hidden states hs)."""
    cdef Py_ssize_t i, j, u = q.u
    cdef floating* z
    cdef floating* c
    cdef floating* h
    cdef const floating* cp
    for i in range(q.n):
        z = zs + i * 4 * u
        cp, c, h = cprev + i * u, cprev + (q.n + i) * u, hs + i * u
        _seg_add_act(z, b, 2 * u, q.rec_act)
        _seg_add_act(z + 2 * u, b + 2 * u, u, q.act)
        _seg_add_act(z + 3 * u, b + 3 * u, u, q.rec_act)
        for j in range(u):
            c[j] = z[u + j] * cp[j] + z[j] * z[2 * u + j]
            h[j] = c[j]
        _seg_act(h, u, q.act)
        for j in range(u):
            h[j] *= z[3 * u + j]


cdef void _gru_step(const Seq* q, floating* zs, floating* recs, floating* hprev,
                    const floating* tmp, const floating* b0, const floating* b1) noexcept nogil:
    """Gates z, r, h of one step (zs: x @ W, the input bias b0 added here; saved after
    their activations; recs keeps the candidate's h @ R + b1, the part the backward
    reads), then h (after hprev by N*U).  One pass per gate group."""
    cdef Py_ssize_t i, j, u = q.u
    cdef floating one = 1
    cdef floating* z
    cdef floating* hr
    cdef floating* h
    cdef const floating* hp
    cdef const floating* tr
    for i in range(q.n):
        z, hr, tr = zs + i * 3 * u, recs + i * 3 * u, tmp + i * 3 * u
        hp, h = hprev + i * u, hprev + (q.n + i) * u
        _seg_add2_act(z, b0, tr, b1, 2 * u, q.rec_act)
        for j in range(2 * u, 3 * u):
            hr[j] = tr[j] + b1[j]
        _seg_add_mul_act(z + 2 * u, b0 + 2 * u, z + u, hr + 2 * u, u, q.act)
        for j in range(u):
            h[j] = z[j] * hp[j] + (one - z[j]) * z[2 * u + j]


# OpenBLAS (0.3.x, SkylakeX kernels) multiplies products of m * n * k <= 1e6 with its small
# matrix kernel, which reads the operands in place; larger ones pay for packing both, which
# a recurrent step repeats for the same R every step.  Measured on (N, U) @ (U, G) steps:
# 64x64 @ 64x256 as 2 halves of the batch 24.0 -> 21.1 us, 32x128 @ 128x512 as 4 quarters
# 54 -> 42 us.  The GEMMs over all timesteps (1792 rows of 28 features into 192 or 256
# gates) gain less, and only in blocks of ~100 rows or more: the projection 212 -> 192 us,
# dw 229 -> 198 us (GRU(64)); blocks of 15 or 32 rows (LSTM(128)) took as long or longer.
cdef double SMALL_GEMM = 1e6
cdef Py_ssize_t MIN_ROW_BLOCK = 96
# dr = h_prev^T drec, a (G, U) sum over the rows of all steps, gains from blocks of fewer
# rows: GRU(64)'s 1728 rows into 192 x 64 in blocks of 54, 550 -> 448 us (LSTM(128)'s
# 512 x 128 would need blocks of 10 rows: it stays one GEMM)
cdef Py_ssize_t MIN_DR_BLOCK = 32


cdef Py_ssize_t _small_block(Py_ssize_t n, double mk, Py_ssize_t least) noexcept nogil:
    """The size of the blocks of n (n halved until a block times mk is small, SMALL_GEMM);
    n itself when that is less than ``least``."""
    cdef Py_ssize_t parts = 1, block
    while parts < n and <double>((n + parts - 1) // parts) * mk > SMALL_GEMM:
        parts *= 2
    block = (n + parts - 1) // parts
    return block if block >= least else n


cdef void _gemm_cols(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                     Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                     Py_ssize_t ldc, floating beta, Py_ssize_t least) noexcept nogil:
    """Column-major C (m, n) = A B + beta C (no transposes) in blocks of the n columns (the
    batch rows of a step, the rows of all steps) small enough for the small kernel
    (_small_block with ``least``)."""
    cdef Py_ssize_t cols = _small_block(n, <double>m * k, least), j0 = 0
    while j0 < n:
        _gemm_beta(c'N', c'N', m, min(cols, n - j0), k, a, lda, b + j0 * ldb, ldb,
                   c + j0 * ldc, ldc, beta)
        j0 += cols


cdef void _gemm_nt_sum(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                       Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                       Py_ssize_t ldc, Py_ssize_t least) noexcept nogil:
    """Column-major C (m, n) = A B^T, the sum over k in blocks of at least ``least`` rows
    (the rows of all steps) small enough for the small kernel, added up by beta 1."""
    cdef Py_ssize_t block = _small_block(k, <double>m * n, least), k0 = 0
    if k <= 0:
        _gemm(c'N', c'T', m, n, k, a, lda, b, ldb, c, ldc)
    while k0 < k:
        _gemm_beta(c'N', c'T', m, n, min(block, k - k0), a + k0 * lda, lda, b + k0 * ldb,
                   ldb, c, ldc, 0 if k0 == 0 else 1)
        k0 += block


cdef void _rnn_project(const Seq* q, const floating* x, const floating* w,
                       floating* ws) noexcept nogil:
    """xt = x time-major; gates = xt @ w (every timestep in one GEMM, or blocks of rows:
    _gemm_cols); the steps add the bias in their gate pass."""
    cdef Py_ssize_t s, i, n = q.n, t = q.t, f = q.f, g = q.g
    cdef floating* xt = ws + q.o[0]
    cdef floating* gates = ws + q.o[1]
    for s in range(t):
        for i in range(n):
            memcpy(xt + (s * n + i) * f, x + (i * t + s) * f, f * sizeof(floating))
    _gemm_cols(g, t * n, f, w, g, xt, f, gates, g, 0, MIN_ROW_BLOCK)


cdef void _rnn_fwd(const Seq* q, const floating* x, const floating* w, const floating* r,
                   const floating* b, floating* out, floating* ws) noexcept nogil:
    """reference_rnn.rnn_forward: x (N, T, F), w (F, G), r (U, G), b (1 or 2, G), out
    (N, T or 1, U), ws the workspace."""
    cdef Py_ssize_t s, i, n = q.n, t = q.t, u = q.u, g = q.g
    cdef floating* hs = ws + q.o[2]
    cdef floating* tmp = ws + q.o[5]
    _rnn_project(q, x, w, ws)
    memset(hs, 0, n * u * sizeof(floating))
    if q.kind == LSTM:
        memset(ws + q.o[3], 0, n * u * sizeof(floating))
    for s in range(t):
        # SimpleRNN and LSTM: h_prev @ R added to the step's projection by the GEMM itself
        # (beta 1); the first step's h_prev is zero
        if s > 0 and q.kind == GRU:
            _gemm_cols(g, n, u, r, g, hs + s * n * u, u, tmp, g, 0, 1)
        elif s > 0:
            _gemm_cols(g, n, u, r, g, hs + s * n * u, u, ws + q.o[1] + s * n * g, g, 1, 1)
        elif q.kind == GRU:
            memset(tmp, 0, n * g * sizeof(floating))
        if q.kind == SIMPLE_RNN:
            _simple_step(q, ws + q.o[1] + s * n * g, hs + (s + 1) * n * u, b)
        elif q.kind == LSTM:
            _lstm_step(q, ws + q.o[1] + s * n * g, ws + q.o[3] + s * n * u,
                       hs + (s + 1) * n * u, b)
        else:
            _gru_step(q, ws + q.o[1] + s * n * g, ws + q.o[4] + s * n * g, hs + s * n * u, tmp,
                      b, b + g)
    for i in range(n):
        if q.ret:
            for s in range(t):
                memcpy(out + (i * t + s) * u, hs + ((s + 1) * n + i) * u, u * sizeof(floating))
        else:
            memcpy(out + i * u, hs + (t * n + i) * u, u * sizeof(floating))


cdef void _lstm_step_back(const Seq* q, floating* zs, const floating* cprev, floating* dh,
                          floating* dc, floating* tmp) noexcept nogil:
    """Pre-activation gradients of one step in place of its gates; dc becomes dL/dc of the
    step before.  Row scratch (tmp): [act(c) * dh, dL/dc, dc * g, dc * i]; dh's row is
    free after use (the GEMM through R overwrites it)."""
    cdef Py_ssize_t i, j, u = q.u
    cdef floating* z
    cdef floating* sc
    cdef floating* d
    cdef floating* dcr
    cdef const floating* c
    cdef const floating* cp
    for i in range(q.n):
        z, sc, d, dcr = zs + i * 4 * u, tmp + i * 4 * u, dh + i * u, dc + i * u
        cp, c = cprev + i * u, cprev + (q.n + i) * u
        memcpy(sc, c, u * sizeof(floating))
        _seg_act(sc, u, q.act)
        _dact_mul(sc + u, sc, d, u, q.act)
        # one store per loop: GCC vectorises a loop whose stores may alias its loads only
        # after a run-time overlap check, and gives up (scalar code) past a few of them
        for j in range(u):
            sc[u + j] = dcr[j] + sc[u + j] * z[3 * u + j]  # dL/dc of this step
        for j in range(u):
            sc[j] *= d[j]
        for j in range(u):
            sc[2 * u + j] = sc[u + j] * z[2 * u + j]
        for j in range(u):
            sc[3 * u + j] = sc[u + j] * z[j]
        for j in range(u):
            dcr[j] = sc[u + j] * z[u + j]
        for j in range(u):
            d[j] = sc[u + j] * cp[j]
        _dact_mul(z, z, sc + 2 * u, u, q.rec_act)
        _dact_mul(z + u, z + u, d, u, q.rec_act)
        _dact_mul(z + 2 * u, z + 2 * u, sc + 3 * u, u, q.act)
        _dact_mul(z + 3 * u, z + 3 * u, sc, u, q.rec_act)


cdef void _gru_step_back(const Seq* q, floating* zs, floating* recs, const floating* hprev,
                         floating* dh, floating* tmp) noexcept nogil:
    """Pre-activation gradients of one step: the input side in place of the gates, the
    recurrent side (the candidate's scaled by r) in place of recs; dh becomes its direct
    part dh * z (the GEMM through R is added after)."""
    cdef Py_ssize_t i, j, u = q.u
    cdef floating one = 1
    cdef floating* z
    cdef floating* hr
    cdef floating* sc
    cdef floating* d
    cdef const floating* hp
    for i in range(q.n):
        z, hr, sc = zs + i * 3 * u, recs + i * 3 * u, tmp + i * 3 * u
        hp, d = hprev + i * u, dh + i * u
        for j in range(u):
            sc[j] = d[j] * (one - z[j])
        for j in range(u):
            sc[u + j] = d[j] * (hp[j] - z[2 * u + j])
        _dact_mul(z + 2 * u, z + 2 * u, sc, u, q.act)
        for j in range(u):  # one store per loop, as in _lstm_step_back
            sc[2 * u + j] = z[2 * u + j] * hr[2 * u + j]
        for j in range(u):
            hr[2 * u + j] = z[2 * u + j] * z[u + j]
        for j in range(u):
            d[j] *= z[j]
        _dact_mul(z + u, z + u, sc + 2 * u, u, q.rec_act)
        _dact_mul(z, z, sc + u, u, q.rec_act)
        memcpy(hr, z, 2 * u * sizeof(floating))


cdef void _rnn_add_dout(const Seq* q, floating* dh, const floating* dout,
                        Py_ssize_t s) noexcept nogil:
    """dh += dL/dout of step s (the last step's only without return_sequences)."""
    cdef Py_ssize_t i, j, u = q.u, t = q.t
    cdef const floating* src
    if not q.ret and s != t - 1:
        return
    for i in range(q.n):
        src = dout + ((i * t + s) * u if q.ret else i * u)
        for j in range(u):
            dh[i * u + j] += src[j]


cdef void _rnn_bwd(const Seq* q, const floating* w, const floating* r, const floating* dout,
                   floating* dx, floating* dw, floating* dr, floating* db, floating* ws,
                   bint need_dx) noexcept nogil:
    """reference_rnn.rnn_backward after _rnn_fwd with the same ws: back-propagation through
    time from the last step, then dw, dr, db (and dx when need_dx)."""
    cdef Py_ssize_t s, i, j, n = q.n, t = q.t, u = q.u, g = q.g, f = q.f
    cdef floating* gates = ws + q.o[1]
    cdef floating* hs = ws + q.o[2]
    cdef floating* drec = ws + q.o[4] if q.kind == GRU else gates
    cdef floating* tmp = ws + q.o[5]
    cdef floating* dh = ws + q.o[6]
    cdef floating* rt = dr  # R^T (G, U) while the loop runs; dr is written after it
    cdef floating* zs
    memset(dh, 0, (q.o[8] - q.o[6]) * sizeof(floating))  # dh, dc
    for i in range(u):
        for j in range(g):
            rt[j * u + i] = r[i * g + j]
    for s in range(t - 1, -1, -1):
        _rnn_add_dout(q, dh, dout, s)
        zs = gates + s * n * g
        if q.kind == SIMPLE_RNN:
            _dact_mul(zs, zs, dh, n * u, q.act)
        elif q.kind == LSTM:
            _lstm_step_back(q, zs, ws + q.o[3] + s * n * u, dh, ws + q.o[7], tmp)
        else:
            _gru_step_back(q, zs, drec + s * n * g, hs + s * n * u, dh, tmp)
        # dh = dz @ R^T with R^T stored row-major: OpenBLAS's untransposed GEMM is ~40%
        # faster here than the transposed one on R
        if s > 0 and q.kind == GRU:  # dh (its direct part) += drec @ R^T
            _gemm_cols(u, n, g, rt, u, drec + s * n * g, g, dh, u, 1, 1)
        elif s > 0:
            _gemm_cols(u, n, g, rt, u, zs, g, dh, u, 0, 1)
    _rnn_weight_grads(q, dw, dr, db, ws)
    if need_dx:
        _gemm(c'T', c'N', f, t * n, g, w, g, gates, g, ws + q.o[0], f)
        for s in range(t):
            for i in range(n):
                memcpy(dx + (i * t + s) * f, ws + q.o[0] + (s * n + i) * f, f * sizeof(floating))


cdef void _rnn_weight_grads(const Seq* q, floating* dw, floating* dr, floating* db,
                            floating* ws) noexcept nogil:
    """dw = xt^T dz, dr = h_prev^T drec (sums over the rows of all steps, _gemm_nt_sum; the
    first step, whose h_prev is zero, left out of dr's), db the column sums."""
    cdef Py_ssize_t n = q.n, rows = q.t * q.n, g = q.g
    cdef bint gru = q.kind == GRU
    cdef const floating* dz = ws + q.o[1]
    cdef const floating* drec = ws + q.o[4] if gru else dz
    _gemm_nt_sum(g, q.f, rows, dz, g, ws + q.o[0], q.f, dw, g, MIN_ROW_BLOCK)
    _gemm_nt_sum(g, q.u, rows - n, drec + n * g, g, ws + q.o[2] + n * q.u, q.u, dr, g,
                 MIN_DR_BLOCK)
    _col_sums(dz, rows, g, db)
    if gru:
        _col_sums(drec, rows, g, db + g)


cdef void _col_sums(const floating* a, Py_ssize_t rows, Py_ssize_t cols,
                    floating* out) noexcept nogil:
    """out = the column sums of a (rows, cols), four rows per pass over out (a pass per row
    is bound by out's loads and stores)."""
    cdef Py_ssize_t k = 0, j
    cdef const floating* a0
    memset(out, 0, cols * sizeof(floating))
    while k + 4 <= rows:
        a0 = a + k * cols
        for j in range(cols):
            out[j] += (a0[j] + a0[cols + j]) + (a0[2 * cols + j] + a0[3 * cols + j])
        k += 4
    while k < rows:
        a0 = a + k * cols
        for j in range(cols):
            out[j] += a0[j]
        k += 1


# ---------------------------------------------------------------------------------------
# Dropout: counter-based splitmix64 (identical masks on every backend)

cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z = z + 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void _dropout(const floating* x, floating* out, Py_ssize_t count, double rate,
                   uint64_t seed, uint64_t k0) noexcept nogil:
    # mask element k0 + k for out[k]: a shard of rows starting at element k0 of its batch
    cdef uint64_t base = _splitmix64(seed), thr, k
    cdef floating scale = <floating>(1.0 / (1.0 - rate))
    if rate <= 0:
        thr = 0
    elif rate >= 1:
        thr = 16777216  # nothing is kept (the hash has 24 bits)
    else:
        thr = <uint64_t>(rate * 16777216.0)
    for k in range(<uint64_t>count):
        out[k] = x[k] * scale if (_splitmix64(base + k0 + k) >> 40) >= thr else 0


cdef inline uint64_t _dropout_seed(uint64_t seed, uint64_t step, Py_ssize_t layer) noexcept nogil:
    return seed + step * 65536ULL + <uint64_t>layer


# ---------------------------------------------------------------------------------------
# Losses: return sum_i sw_i * loss_i / N, write the gradient; one pass per row (the softmax
# cross-entropies: one pass per block of rows).

cdef enum:
    LOSS_CHUNK = 256  # loss terms per stack buffer: computed vectorised, then summed in order


cdef struct Labels:
    const char* data
    Py_ssize_t stride
    int kind


cdef inline Py_ssize_t _label(const Labels* lb, Py_ssize_t i, Py_ssize_t c) noexcept nogil:
    """Class index of row i (truncated like astype(int64)), or -1 when not in [0, c)."""
    cdef const char* q = lb.data + i * lb.stride
    cdef int64_t k
    cdef double v
    if lb.kind == LB_I64:
        k = (<const int64_t*>q)[0]
        return <Py_ssize_t>k if 0 <= k < c else -1
    if lb.kind == LB_I32:
        k = (<const int32_t*>q)[0]
        return <Py_ssize_t>k if 0 <= k < c else -1
    if lb.kind == LB_F32:
        v = (<const float*>q)[0]
    else:
        v = (<const double*>q)[0]
    if v > -1.0 and v < <double>c:  # False for NaN
        return <Py_ssize_t>v
    return -1


cdef enum:
    CE_ROWS = 64  # rows per block of the softmax cross-entropies
    CE_BLOCK = 4096  # elements per block at most (a wider row is a block of its own)
    CE_WIDE = 512  # classes from which a row's exps are a loop of their own


cdef inline Py_ssize_t _ce_rows(Py_ssize_t c) noexcept nogil:
    # blocks of rows so that the exps run as one flat loop over the block (with 10 classes
    # a row alone is too short for a vector loop) while the block stays in L1
    return max(<Py_ssize_t>1, min(<Py_ssize_t>CE_ROWS, <Py_ssize_t>CE_BLOCK // max(c, 1)))


cdef inline void _exp_inplace(floating* a, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t e
    for e in range(count):
        a[e] = _exp(a[e])


cdef inline void _row_sums(const floating* a, Py_ssize_t rows, Py_ssize_t c,
                           double* out) noexcept nogil:
    # each row summed in double, in order (the same bits on every build)
    cdef Py_ssize_t i, j
    cdef double acc
    for i in range(rows):
        acc = 0.0
        for j in range(c):
            acc += a[i * c + j]
        out[i] = acc


cdef double _softmax_ce(const floating* z, const floating* y, const floating* sw, floating* p,
                        floating* dz, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """One exp per element: z - max goes into p (each element after its last read of z,
    which p may alias), then e = exp(p) over a block of rows, then p = e / s and dz (which may
    alias p) last.  The sums are in double; loss_i = -sum_j y_j (zm_j - lse)
    = sum(y) lse - sum_j y_j zm_j."""
    cdef Py_ssize_t i, j, i0, r, rows = _ce_rows(c)
    cdef const floating* zr
    cdef const floating* yr
    cdef floating* pr
    cdef floating* dr
    cdef floating mx, t, d, s, pj, ysum, scale
    cdef double acc, sy, syz, total = 0.0
    cdef double sys[CE_ROWS]
    cdef double syzs[CE_ROWS]
    cdef double accs[CE_ROWS]
    i0 = 0
    while i0 < n:
        r = min(rows, n - i0)
        for i in range(i0, i0 + r):
            zr = z + i * c
            yr = y + i * c
            pr = p + i * c
            mx = _rowmax(zr, c)
            sy = 0.0
            syz = 0.0
            for j in range(c):
                t = yr[j]
                d = zr[j] - mx
                sy += t
                syz += <double>t * <double>d
                pr[j] = d
            sys[i - i0] = sy
            syzs[i - i0] = syz
        _exp_inplace(p + i0 * c, r * c)
        _row_sums(p + i0 * c, r, c, accs)
        for i in range(i0, i0 + r):
            yr = y + i * c
            pr = p + i * c
            dr = dz + i * c
            scale = sw[i] / <floating>n
            acc = accs[i - i0]
            sy = sys[i - i0]
            s = <floating>acc
            ysum = <floating>sy
            for j in range(c):
                pj = pr[j] / s
                pr[j] = pj
                dr[j] = (pj * ysum - yr[j]) * scale
            total += <double>sw[i] * (sy * log(acc) - syzs[i - i0])
        i0 += r
    return total / n


cdef double _sparse_ce(const floating* z, const Labels* lb, const floating* sw, floating* p,
                       floating* dz, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """One exp per element, over blocks of rows as in _softmax_ce: e = exp(z - max) in p,
    summed in double, then p = e / s; loss_i = log(s) - (z_k - max), accumulated in double."""
    cdef Py_ssize_t i, j, k, i0, r, rows = _ce_rows(c)
    cdef const floating* zr
    cdef floating* pr
    cdef floating* dr
    cdef floating mx, s, pk, pj, scale, one = 1
    cdef double total = 0.0
    cdef double accs[CE_ROWS]
    cdef floating zks[CE_ROWS]
    cdef floating sums[CE_ROWS]
    cdef floating logs[CE_ROWS]
    cdef Py_ssize_t ks[CE_ROWS]
    i0 = 0
    while i0 < n:
        r = min(rows, n - i0)
        for i in range(i0, i0 + r):
            zr = z + i * c
            pr = p + i * c
            k = _label(lb, i, c)
            mx = _rowmax(zr, c)
            ks[i - i0] = k
            # read z[k] before p (which may alias z) is written
            zks[i - i0] = (zr[k] - mx) if k >= 0 else <floating>NAN
            if c < CE_WIDE:
                for j in range(c):
                    pr[j] = zr[j] - mx
            else:  # a row long enough for a vector loop of its own: one pass fewer
                for j in range(c):
                    pr[j] = _exp(zr[j] - mx)
        if c < CE_WIDE:
            _exp_inplace(p + i0 * c, r * c)
        _row_sums(p + i0 * c, r, c, accs)
        for i in range(r):
            sums[i] = <floating>accs[i]
            logs[i] = _log(sums[i])
        for i in range(i0, i0 + r):
            pr = p + i * c
            dr = dz + i * c
            k = ks[i - i0]
            s = sums[i - i0]
            scale = sw[i] / <floating>n
            pk = pr[k] / s if k >= 0 else <floating>NAN  # read before dz (may alias p) is written
            for j in range(c):
                pj = pr[j] / s
                pr[j] = pj
                dr[j] = pj * scale
            if k >= 0:
                dr[k] = (pk - one) * scale
            else:  # label out of range: the loss and the row's gradient are NaN
                for j in range(c):
                    dr[j] = <floating>NAN
            total += <double>sw[i] * (<double>logs[i - i0] - <double>zks[i - i0])
        i0 += r
    return total / n


cdef double _sigmoid_bce(const floating* z, const floating* y, const floating* sw, floating* p,
                         floating* dz, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j, j0, m
    cdef floating v, t, e, scale, one = 1
    cdef floating buf[LOSS_CHUNK]
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        j0 = 0
        while j0 < c:
            m = min(<Py_ssize_t>LOSS_CHUNK, c - j0)
            for j in range(j0, j0 + m):  # the terms vectorise; the sum keeps its order
                v = z[i * c + j]
                buf[j - j0] = ((v if v > 0 else 0) - v * y[i * c + j]) + _log1p(_exp(-_abs(v)))
            for j in range(m):
                acc += buf[j]
            j0 += m
        for j in range(c):  # after the sum: p may alias z
            v = z[i * c + j]
            t = y[i * c + j]
            e = _exp(-_abs(v))
            v = _where(v >= 0, one / (one + e), e / (one + e))
            p[i * c + j] = v
            dz[i * c + j] = (v - t) * scale
        total += sw[i] * (acc / c)
    return total / n


cdef double _categorical_ce(const floating* pp, const floating* y, const floating* sw,
                            floating* dp, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j, j0, m
    cdef floating lo = <floating>PROB_EPS, hi = <floating>(1 - PROB_EPS)
    cdef floating v, pc, scale
    cdef floating buf[LOSS_CHUNK]
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>n
        acc = 0.0
        j0 = 0
        while j0 < c:
            m = min(<Py_ssize_t>LOSS_CHUNK, c - j0)
            for j in range(j0, j0 + m):  # the terms vectorise; the sum keeps its order
                buf[j - j0] = y[i * c + j] * _log(_clip(pp[i * c + j], lo, hi))
            for j in range(m):
                acc += buf[j]
            j0 += m
        for j in range(c):  # after the sum: dp may alias pp
            v = pp[i * c + j]
            pc = _clip(v, lo, hi)
            dp[i * c + j] = _where((v >= lo) & (v <= hi), -y[i * c + j] / pc, 0) * scale
        total += sw[i] * -acc
    return total / n


cdef double _binary_ce(const floating* pp, const floating* y, const floating* sw, floating* dp,
                       Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j, j0, m
    cdef floating lo = <floating>PROB_EPS, hi = <floating>(1 - PROB_EPS)
    cdef floating v, pc, t, scale, one = 1
    cdef floating buf[LOSS_CHUNK]
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        j0 = 0
        while j0 < c:
            m = min(<Py_ssize_t>LOSS_CHUNK, c - j0)
            for j in range(j0, j0 + m):  # the terms vectorise; the sum keeps its order
                pc = _clip(pp[i * c + j], lo, hi)
                t = y[i * c + j]
                buf[j - j0] = -(t * _log(pc) + (one - t) * _log(one - pc))
            for j in range(m):
                acc += buf[j]
            j0 += m
        for j in range(c):  # after the sum: dp may alias pp
            v = pp[i * c + j]
            t = y[i * c + j]
            pc = _clip(v, lo, hi)
            dp[i * c + j] = _where((v >= lo) & (v <= hi), (pc - t) / (pc * (one - pc)), 0) * scale
        total += sw[i] * (acc / c)
    return total / n


cdef double _mse(const floating* pred, const floating* y, const floating* sw, floating* dpred,
                 Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating d, scale
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        for j in range(c):
            d = pred[i * c + j] - y[i * c + j]
            acc += d * d
        for j in range(c):  # apart from the sum, so that it vectorises (dpred may alias pred)
            d = pred[i * c + j] - y[i * c + j]
            dpred[i * c + j] = (d + d) * scale  # 2*d, exactly, in the dtype
        total += sw[i] * (acc / c)
    return total / n


cdef double _mae(const floating* pred, const floating* y, const floating* sw, floating* dpred,
                 Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating d, scale
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        for j in range(c):
            d = pred[i * c + j] - y[i * c + j]
            acc += _abs(d)
        for j in range(c):  # apart from the sum, so that it vectorises (dpred may alias pred)
            dpred[i * c + j] = _sign(pred[i * c + j] - y[i * c + j]) * scale
        total += sw[i] * (acc / c)
    return total / n


cdef double _huber(const floating* pred, const floating* y, const floating* sw,
                   floating* dpred, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating d, a, scale, half = 0.5, delta = <floating>HUBER_DELTA
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        for j in range(c):
            d = pred[i * c + j] - y[i * c + j]
            a = _abs(d)
            acc += (half * d * d) if a <= delta else (delta * a - half * delta * delta)
        for j in range(c):  # apart from the sum, so that it vectorises (dpred may alias pred)
            d = pred[i * c + j] - y[i * c + j]
            dpred[i * c + j] = (d if _abs(d) <= delta else delta * _sign(d)) * scale
        total += sw[i] * (acc / c)
    return total / n


cdef double _kld(const floating* pp, const floating* y, const floating* sw, floating* dp,
                 Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating v, yc, pc, scale, zero = 0, one = 1, lo = <floating>PROB_EPS
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>n
        acc = 0.0
        for j in range(c):
            v = pp[i * c + j]
            yc = _clip(y[i * c + j], lo, one)
            pc = _clip(v, lo, one)
            acc += yc * _log(yc / pc)
            dp[i * c + j] = (-yc / pc if (v >= lo and v <= one) else zero) * scale
        total += sw[i] * acc
    return total / n


cdef double _poisson(const floating* pp, const floating* y, const floating* sw, floating* dp,
                     Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating v, yv, scale, one = 1, eps = <floating>PROB_EPS
    cdef double acc, total = 0.0
    for i in range(n):
        scale = sw[i] / <floating>(n * c)
        acc = 0.0
        for j in range(c):
            v = pp[i * c + j]
            yv = y[i * c + j]
            acc += v - yv * _log(v + eps)
            dp[i * c + j] = (one - yv / (v + eps)) * scale
        total += sw[i] * (acc / c)
    return total / n


cdef double _loss(const floating* out, const floating* y, Py_ssize_t ty, const floating* sw,
                  floating* p, floating* dz, Py_ssize_t n, Py_ssize_t c,
                  int code) noexcept nogil:
    """loss_grad on pointers; y is (n, ty) (ty == c except for the sparse loss)."""
    cdef Labels lb
    if code == SOFTMAX_CE:
        return _softmax_ce(out, y, sw, p, dz, n, c)
    if code == SPARSE_SOFTMAX_CE:
        lb.data = <const char*>y
        lb.stride = ty * sizeof(floating)
        lb.kind = LB_F32 if floating is float else LB_F64
        return _sparse_ce(out, &lb, sw, p, dz, n, c)
    if code == SIGMOID_BCE:
        return _sigmoid_bce(out, y, sw, p, dz, n, c)
    if code == CATEGORICAL_CE:
        return _categorical_ce(out, y, sw, dz, n, c)
    if code == BINARY_CE:
        return _binary_ce(out, y, sw, dz, n, c)
    if code == MSE:
        return _mse(out, y, sw, dz, n, c)
    if code == HUBER:
        return _huber(out, y, sw, dz, n, c)
    if code == KL_DIVERGENCE:
        return _kld(out, y, sw, dz, n, c)
    if code == POISSON:
        return _poisson(out, y, sw, dz, n, c)
    return _mae(out, y, sw, dz, n, c)


# ---------------------------------------------------------------------------------------
# Regularisation and optimizers: one branch-free fused loop each

cdef double _l1l2(const floating* w, floating* dw, Py_ssize_t count, double l1,
                  double l2) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>l1, b = <floating>(2 * l2), v
    cdef double s1 = 0.0, s2 = 0.0
    for k in range(count):  # apart from the sums, so that it vectorises
        v = w[k]
        dw[k] = dw[k] + (a * _sign(v) + b * v)
    for k in range(count):
        v = w[k]
        s1 += _abs(v)
        s2 += <double>v * <double>v
    return l1 * s1 + l2 * s2


cdef double _l1l2_sum(const floating* w, Py_ssize_t count, double l1, double l2) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v
    cdef double s1 = 0.0, s2 = 0.0
    for k in range(count):
        v = w[k]
        s1 += _abs(v)
        s2 += <double>v * <double>v
    return l1 * s1 + l2 * s2


cdef void _sgd(floating* p, const floating* g, Py_ssize_t count, double lr) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>lr
    for k in range(count):
        p[k] = p[k] - a * g[k]


cdef void _momentum(floating* p, const floating* g, floating* buf, Py_ssize_t count, double lr,
                    double momentum, bint nesterov) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>lr, mu = <floating>momentum, bk
    if nesterov:
        for k in range(count):
            bk = buf[k] * mu + g[k]
            buf[k] = bk
            p[k] = p[k] - a * (g[k] + mu * bk)
    else:
        for k in range(count):
            bk = buf[k] * mu + g[k]
            buf[k] = bk
            p[k] = p[k] - a * bk


# The sqrt/divide-bound updates are plain C loops so that GCC can clone them for AVX-512 and
# AVX2 (picked at load time); every clone performs the same IEEE operations in the same order
# (no FMA: neither target enables it), so the results do not depend on the machine.
cdef extern from *:
    """
    #ifndef FASTNN_CLONES
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FASTNN_CLONES
    #endif
    #endif

    #define FASTNN_UPDATES(T, SUFFIX, SQRT)                                               \
    static FASTNN_CLONES void fastnn_adagrad_##SUFFIX(                                   \
            T *p, const T *g, T *acc, Py_ssize_t count, T lr, T eps) {                   \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T a = acc[k] + g[k] * g[k];                                                  \
            acc[k] = a;                                                                  \
            p[k] = p[k] - lr * g[k] / (SQRT(a) + eps);                                   \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_rmsprop_##SUFFIX(                                   \
            T *p, const T *g, T *sq, Py_ssize_t count, T lr, T rho, T rho1, T eps) {     \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T s = sq[k] * rho + rho1 * g[k] * g[k];                                      \
            sq[k] = s;                                                                   \
            p[k] = p[k] - lr * g[k] / (SQRT(s) + eps);                                   \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_adam_##SUFFIX(                                      \
            T *p, const T *g, T *m, T *v, Py_ssize_t count, T decay, T b1, T c1, T b2,   \
            T c2, T step_size, T eps) {                                                  \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T gk = g[k];                                                                 \
            T mk = m[k] * b1 + c1 * gk;                                                  \
            T vk = v[k] * b2 + c2 * gk * gk;                                             \
            m[k] = mk;                                                                   \
            v[k] = vk;                                                                   \
            p[k] = p[k] * decay - step_size * mk / (SQRT(vk) + eps);                     \
        }                                                                                \
    }

    FASTNN_UPDATES(float, f, sqrtf)
    FASTNN_UPDATES(double, d, sqrt)
    """
    void fastnn_adagrad_f(float*, const float*, float*, Py_ssize_t, float, float) noexcept nogil
    void fastnn_adagrad_d(double*, const double*, double*, Py_ssize_t, double,
                          double) noexcept nogil
    void fastnn_rmsprop_f(float*, const float*, float*, Py_ssize_t, float, float, float,
                          float) noexcept nogil
    void fastnn_rmsprop_d(double*, const double*, double*, Py_ssize_t, double, double, double,
                          double) noexcept nogil
    void fastnn_adam_f(float*, const float*, float*, float*, Py_ssize_t, float, float, float,
                       float, float, float, float) noexcept nogil
    void fastnn_adam_d(double*, const double*, double*, double*, Py_ssize_t, double, double,
                       double, double, double, double, double) noexcept nogil


cdef void _adagrad(floating* p, const floating* g, floating* acc, Py_ssize_t count, double lr,
                   double epsilon) noexcept nogil:
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    if floating is float:
        fastnn_adagrad_f(p, g, acc, count, <float>lr, <float>epsilon)
    else:
        fastnn_adagrad_d(p, g, acc, count, lr, epsilon)


cdef void _rmsprop(floating* p, const floating* g, floating* sq, Py_ssize_t count, double lr,
                   double rho, double epsilon) noexcept nogil:
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    if floating is float:
        fastnn_rmsprop_f(p, g, sq, count, <float>lr, <float>rho, <float>(1 - rho),
                         <float>epsilon)
    else:
        fastnn_rmsprop_d(p, g, sq, count, lr, rho, 1 - rho, epsilon)


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t count,
                double lr, double beta_1, double beta_2, double epsilon, double weight_decay,
                int64_t step) noexcept nogil:
    """Adam / AdamW; with weight_decay == 0 the decay factor is exactly 1 (p * 1 == p), so
    the loop needs no branch.  lr_t * m / (sqrt(v) / bc2 + eps) is computed as
    (lr_t * bc2) * m / (sqrt(v) + eps * bc2): one division per element instead of two (the
    loop is bound by division and sqrt throughput); it differs from the reference by
    rounding only."""
    cdef double decay = 1 - lr * weight_decay
    cdef double bc2 = sqrt(1 - pow(beta_2, <double>step))
    cdef double step_size = lr / (1 - pow(beta_1, <double>step)) * bc2
    cdef double eps = epsilon * bc2
    if floating is float:
        fastnn_adam_f(p, g, m, v, count, <float>decay, <float>beta_1, <float>(1 - beta_1),
                      <float>beta_2, <float>(1 - beta_2), <float>step_size, <float>eps)
    else:
        fastnn_adam_d(p, g, m, v, count, decay, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
                      step_size, eps)


cdef double _nadam_u_product(double beta_1, int64_t step) noexcept nogil:
    cdef double prod = 1.0, decay = 1.0
    cdef int64_t i
    for i in range(min(step, NADAM_STEPS)):
        decay *= NADAM_DECAY
        prod *= 1.0 - 0.5 * decay
    return prod * pow(beta_1, <double>step)


cdef void _nadam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t count,
                 double lr, double beta_1, double beta_2, double epsilon,
                 int64_t step) noexcept nogil:
    """Keras 3's Nadam (reference.nadam_update), one fused pass."""
    cdef double u_t = beta_1 * (1 - 0.5 * pow(NADAM_DECAY, <double>step))
    cdef double u_next = beta_1 * (1 - 0.5 * pow(NADAM_DECAY, <double>(step + 1)))
    cdef double prod = _nadam_u_product(beta_1, step)
    cdef floating cm = <floating>(u_next / (1 - prod * u_next))
    cdef floating cg = <floating>((1 - u_t) / (1 - prod))
    cdef floating b1 = <floating>beta_1, c1 = <floating>(1 - beta_1)
    cdef floating b2 = <floating>beta_2, c2 = <floating>(1 - beta_2)
    cdef floating bc2 = <floating>(1 - pow(beta_2, <double>step))
    cdef floating a = <floating>lr, eps = <floating>epsilon, gk, mk, vk
    cdef Py_ssize_t k
    for k in range(count):
        gk = g[k]
        mk = m[k] * b1 + c1 * gk
        vk = v[k] * b2 + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= a * (cm * mk + cg * gk) / (_sqrt(vk / bc2) + eps)


cdef void _opt(floating* params, const floating* grads, floating* state, Py_ssize_t count,
               int code, const double* hyper, int64_t step) noexcept nogil:
    if code == SGD:
        _sgd(params, grads, count, hyper[0])
    elif code == MOMENTUM:
        _momentum(params, grads, state, count, hyper[0], hyper[1],
                  hyper[2] >= 1 or hyper[2] <= -1)  # int(hyper[2]) != 0
    elif code == ADAGRAD:
        _adagrad(params, grads, state, count, hyper[0], hyper[1])
    elif code == RMSPROP:
        _rmsprop(params, grads, state, count, hyper[0], hyper[1], hyper[2])
    elif code == NADAM:
        _nadam(params, grads, state, state + count, count, hyper[0], hyper[1], hyper[2],
               hyper[3], step)
    else:
        _adam(params, grads, state, state + count, count, hyper[0], hyper[1], hyper[2],
              hyper[3], hyper[4], step)


# ---------------------------------------------------------------------------------------
# Normalisation layers (x (R, C): the rows of the last axis).  Per-channel sums go to the
# float64 scratch ``acc`` over rows-outer loops (the data is streamed once and the inner
# loops over channels vectorise); the per-channel factors of the elementwise passes go to
# stack blocks of NORM_BLOCK channels.

cdef enum:
    NORM_BLOCK = 256


cdef void _bn_moments(const floating* x, double* s1, double* s2, Py_ssize_t r,
                      Py_ssize_t c) noexcept nogil:
    """s1, s2 = the sums over rows of d and d * d, d = x - x[0] in float64, then the mean
    and the biased variance (reference._moments; r >= 1)."""
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef double d, a, v
    memset(s1, 0, c * sizeof(double))
    memset(s2, 0, c * sizeof(double))
    for i in range(r):
        xr = x + i * c
        for j in range(c):
            d = <double>xr[j] - <double>x[j]
            s1[j] += d
            s2[j] += d * d
    for j in range(c):
        a = s1[j] / r
        v = s2[j] / r - a * a
        s1[j] = <double>x[j] + a
        s2[j] = 0.0 if v < 0 else v  # np.maximum(v, 0): NaN stays NaN


cdef inline void _bn_row(const floating* x, const floating* mean, const floating* inv,
                         const floating* gamma, const floating* beta, floating* out,
                         Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t j
    if gamma != NULL and beta != NULL:
        for j in range(c):
            out[j] = (x[j] - mean[j]) * inv[j] * gamma[j] + beta[j]
    elif gamma != NULL:
        for j in range(c):
            out[j] = (x[j] - mean[j]) * inv[j] * gamma[j]
    elif beta != NULL:
        for j in range(c):
            out[j] = (x[j] - mean[j]) * inv[j] + beta[j]
    else:
        for j in range(c):
            out[j] = (x[j] - mean[j]) * inv[j]


cdef void _bn_fwd(const floating* x, const floating* gamma, const floating* beta,
                  floating* mmean, floating* mvar, floating* saved, floating* out,
                  double* acc, Py_ssize_t r, Py_ssize_t c, bint training, double momentum,
                  double epsilon) noexcept nogil:
    """batchnorm_forward (gamma, beta NULL when absent).  A training batch of no rows
    changes nothing."""
    cdef Py_ssize_t i, j
    cdef floating* mean = saved
    cdef floating* inv = saved + c
    cdef floating mom = <floating>momentum
    cdef double keep = 1 - momentum
    if training:
        if r == 0:
            return
        _bn_moments(x, acc, acc + c, r, c)
        for j in range(c):
            mmean[j] = mmean[j] * mom + <floating>(acc[j] * keep)
            mvar[j] = mvar[j] * mom + <floating>(acc[c + j] * keep)
            mean[j] = <floating>acc[j]
            inv[j] = <floating>(1.0 / sqrt(acc[c + j] + epsilon))
    else:
        for j in range(c):
            mean[j] = mmean[j]
            inv[j] = <floating>(1.0 / sqrt(<double>mvar[j] + epsilon))
    for i in range(r):
        _bn_row(x + i * c, mean, inv, gamma, beta, out + i * c, c)


cdef void _bn_bwd(const floating* x, const floating* gamma, const floating* saved,
                  const floating* dout, floating* dx, floating* dgamma, floating* dbeta,
                  double* acc, Py_ssize_t r, Py_ssize_t c, bint need_dx) noexcept nogil:
    """batchnorm_backward: the float64 sums of dout and dout * xhat into acc, then (need_dx)
    dx = coef * (r dout - sum_dy - xhat sum_dyx), a column block at a time.  dx may alias
    dout; gamma, dgamma, dbeta NULL when absent."""
    cdef Py_ssize_t i, j, j0, m
    cdef const floating* mean = saved
    cdef const floating* inv = saved + c
    cdef double* sdy = acc
    cdef double* sdyx = acc + c
    cdef const floating* xr
    cdef const floating* dr
    cdef floating* xo
    cdef floating xh, one = 1, rt = <floating>r
    cdef double d
    cdef floating coef[NORM_BLOCK]
    cdef floating sy[NORM_BLOCK]
    cdef floating syx[NORM_BLOCK]
    memset(acc, 0, 2 * c * sizeof(double))
    for i in range(r):
        xr = x + i * c
        dr = dout + i * c
        for j in range(c):
            xh = (xr[j] - mean[j]) * inv[j]
            d = <double>dr[j]
            sdy[j] += d
            sdyx[j] += d * <double>xh
    if dbeta != NULL:
        for j in range(c):
            dbeta[j] = <floating>sdy[j]
    if dgamma != NULL:
        for j in range(c):
            dgamma[j] = <floating>sdyx[j]
    if not need_dx:
        return
    j0 = 0
    while j0 < c:
        m = min(<Py_ssize_t>NORM_BLOCK, c - j0)
        for j in range(m):
            coef[j] = inv[j0 + j] * (gamma[j0 + j] if gamma != NULL else one) / rt
            sy[j] = <floating>sdy[j0 + j]
            syx[j] = <floating>sdyx[j0 + j]
        for i in range(r):
            xr = x + i * c + j0
            dr = dout + i * c + j0
            xo = dx + i * c + j0
            for j in range(m):
                xh = (xr[j] - mean[j0 + j]) * inv[j0 + j]
                xo[j] = coef[j] * ((rt * dr[j] - sy[j]) - xh * syx[j])
        j0 += m


cdef void _norm(const floating* x, const floating* mean, const floating* var, floating* out,
                Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    """normalization_forward: out = (x - mean) / max(sqrt(var), NORM_EPS); with mean NULL,
    normalization_backward: out = x / max(sqrt(var), NORM_EPS).  out may alias x."""
    cdef Py_ssize_t i, j, j0, m
    cdef floating eps = <floating>NORM_EPS, s
    cdef const floating* xr
    cdef floating* orow
    cdef floating den[NORM_BLOCK]
    j0 = 0
    while j0 < c:
        m = min(<Py_ssize_t>NORM_BLOCK, c - j0)
        for j in range(m):
            s = _sqrt(var[j0 + j])
            den[j] = eps if s < eps else s  # np.maximum: NaN stays NaN
        for i in range(r):
            xr = x + i * c + j0
            orow = out + i * c + j0
            if mean != NULL:
                for j in range(m):
                    orow[j] = (xr[j] - mean[j0 + j]) / den[j]
            else:
                for j in range(m):
                    orow[j] = xr[j] / den[j]
        j0 += m


# ---------------------------------------------------------------------------------------
# A plan of layers over flat buffers (codes.py: one int64 row of P_* columns and one
# float64 row of F_* columns per layer).  _make_plan checks every row before any of this
# runs; the interpreter only follows the offsets.

cdef struct Plan:
    const int64_t* rows  # (L, P_COLS)
    const double* f      # (L, F_COLS)
    Py_ssize_t n_layers
    Py_ssize_t n_out     # outputs per sample of the last row (the loss's columns)
    Py_ssize_t out_off   # the last row's output in acts
    Py_ssize_t dz_off    # the last row's dL/dout in gbuf (where the loss writes)


cdef struct Net:
    # the buffers of net and work in the call's dtype (acc: float64); sizes in elements
    char* params
    char* grads
    char* state
    char* nontrain
    char* acts
    char* gbuf
    double* acc
    Py_ssize_t n_params
    Py_ssize_t state_rows
    Py_ssize_t state_cols
    Py_ssize_t n_nontrain
    Py_ssize_t n_acts
    Py_ssize_t n_gbuf
    Py_ssize_t n_acc


cdef inline floating* _at(floating* buf, int64_t off) noexcept nogil:
    # an optional weight: NULL when absent (offset -1)
    return NULL if off < 0 else buf + off


cdef void _layer_fwd(const Plan* pl, const Net* b, Py_ssize_t l, const floating* x,
                     Py_ssize_t n, bint training, uint64_t seed, uint64_t step,
                     uint64_t row0) noexcept nogil:
    cdef const int64_t* row = pl.rows + l * P_COLS
    cdef const double* f = pl.f + l * F_COLS
    cdef int kind = <int>row[P_KIND], act = <int>row[P_ACT]
    cdef Py_ssize_t r = n * row[P_IN0] * row[P_IN1], w = row[P_IN2]
    cdef floating* acts = <floating*>b.acts
    cdef floating* params = <floating*>b.params
    cdef floating* nontrain = <floating*>b.nontrain
    cdef const floating* inp = x if row[P_IN_OFF] < 0 else <const floating*>(acts + row[P_IN_OFF])
    cdef floating* out = acts + row[P_OUT_OFF]
    cdef floating* z
    cdef Seq q
    if kind == DENSE and (act == GELU or act == SILU):  # the pre-activation is saved
        z = acts + row[P_SAVE_OFF]
        _dense_layer_fwd(inp, params + row[P_W0], _at(params, row[P_W1]), z, r, w,
                         row[P_OUT2], LINEAR, <floating>0)
        _act_fwd(<const floating*>z, <const floating*>NULL, out, r, row[P_OUT2], act,
                 <floating>f[F_ALPHA])
    elif kind == DENSE:
        _dense_layer_fwd(inp, params + row[P_W0], _at(params, row[P_W1]), out, r, w,
                         row[P_OUT2], act, <floating>f[F_ALPHA])
    elif kind == DROPOUT:
        if training and f[F_RATE] > 0:
            _dropout(inp, out, r * w, f[F_RATE], _dropout_seed(seed, step, l),
                     row0 * <uint64_t>(row[P_IN0] * row[P_IN1] * w))
        elif <const floating*>out != inp:
            memmove(out, inp, r * w * sizeof(floating))
    elif kind == ACTIVATION:
        _act_fwd(inp, <const floating*>NULL, out, r, w, act, <floating>f[F_ALPHA])
    elif kind == BATCHNORM:
        _bn_fwd(inp, _at(params, row[P_W0]), _at(params, row[P_W1]), nontrain + row[P_S0],
                nontrain + row[P_S1], acts + row[P_SAVE_OFF], out, b.acc + row[P_ACC_OFF], r, w,
                training and row[P_ARG0] == 0, f[F_MOMENTUM], f[F_EPSILON])  # P_ARG0: frozen
    elif kind == NORMALIZATION:
        _norm(inp, nontrain + row[P_S0], nontrain + row[P_S1], out, r, w)
    elif kind == EMBEDDING:
        _embedding_fwd(<const void*>inp, sizeof(floating) == 8, params + row[P_W0], out, r * w,
                       row[P_VOCAB], row[P_OUT2])
    elif kind >= SIMPLE_RNN:
        _seq_of_row(row, n, &q)
        _rnn_fwd(&q, inp, params + row[P_W0], params + row[P_W1], params + row[P_W2], out,
                 acts + row[P_SAVE_OFF])
    else:
        _conv_family_fwd(row, f, params, acts, inp, out, n)


cdef void _conv_family_fwd(const int64_t* row, const double* f, floating* params,
                           floating* acts, const floating* inp, floating* out,
                           Py_ssize_t n) noexcept nogil:
    cdef Window g
    cdef int kind = <int>row[P_KIND]
    _window_of_row(row, n, &g)
    if kind == CONV2D:
        _conv_fwd(inp, params + row[P_W0], _at(params, row[P_W1]), acts + row[P_SAVE_OFF], out,
                  &g, <int>row[P_ACT], <floating>f[F_ALPHA])
    elif kind == MAXPOOL2D or kind == GLOBAL_MAXPOOL2D:
        _maxpool_fwd(inp, acts + row[P_SAVE_OFF], out, &g)
    else:
        _avgpool(inp, out, &g, True)


cdef void _pool_bwd(const int64_t* row, floating* acts, const floating* g, floating* dx,
                    Py_ssize_t n) noexcept nogil:
    cdef Window win
    _window_of_row(row, n, &win)
    if row[P_KIND] == MAXPOOL2D or row[P_KIND] == GLOBAL_MAXPOOL2D:
        _maxpool_bwd(acts + row[P_SAVE_OFF], g, dx, &win)
    else:
        _avgpool(g, dx, &win, False)


cdef void _forward(const Plan* pl, const Net* b, const floating* x, Py_ssize_t n,
                   bint training, uint64_t seed, uint64_t step, uint64_t row0) noexcept nogil:
    cdef Py_ssize_t l
    for l in range(pl.n_layers):
        _layer_fwd(pl, b, l, x, n, training, seed, step, row0)


cdef double _layer_bwd(const Plan* pl, const Net* b, Py_ssize_t l, const floating* x,
                       Py_ssize_t n, uint64_t seed, uint64_t step, uint64_t row0) noexcept nogil:
    """Back-propagates row l (dL/dout at P_DOUT_OFF, dL/dx to P_DX_OFF unless -1); returns
    the penalty of its weights."""
    cdef const int64_t* row = pl.rows + l * P_COLS
    cdef const double* f = pl.f + l * F_COLS
    cdef int kind = <int>row[P_KIND], act = <int>row[P_ACT]
    cdef Py_ssize_t r = n * row[P_IN0] * row[P_IN1], w = row[P_IN2], wo = row[P_OUT2]
    cdef floating* acts = <floating*>b.acts
    cdef floating* params = <floating*>b.params
    cdef floating* grads = <floating*>b.grads
    cdef floating* gbuf = <floating*>b.gbuf
    cdef const floating* inp = x if row[P_IN_OFF] < 0 else <const floating*>(acts + row[P_IN_OFF])
    cdef floating* out = acts + row[P_OUT_OFF]
    cdef floating* g = gbuf + row[P_DOUT_OFF]
    cdef bint need_dx = row[P_DX_OFF] >= 0
    cdef floating* dx = gbuf + row[P_DX_OFF] if need_dx else <floating*>NULL
    cdef double l1 = f[F_L1], l2 = f[F_L2]
    cdef Window win
    cdef Seq q
    cdef bint input_act = act == GELU or act == SILU  # their derivative reads the input
    cdef const floating* y = <const floating*>(acts + row[P_SAVE_OFF]) if input_act else out
    if kind == DENSE:
        _dense_bwd(inp, params + row[P_W0], y, g, g, dx, grads + row[P_W0],
                   _at(grads, row[P_W1]), r, w, wo, act, <floating>f[F_ALPHA], need_dx)
        if l1 != 0 or l2 != 0:
            return _l1l2(params + row[P_W0], grads + row[P_W0], w * wo, l1, l2)
    elif kind == BATCHNORM:
        _bn_bwd(inp, _at(params, row[P_W0]), acts + row[P_SAVE_OFF], g, dx,
                _at(grads, row[P_W0]), _at(grads, row[P_W1]), b.acc + row[P_ACC_OFF], r, w,
                need_dx)
    elif kind == CONV2D:
        _window_of_row(row, n, &win)
        _conv_bwd(inp, params + row[P_W0], out, g, acts + row[P_SAVE_OFF], g, dx,
                  grads + row[P_W0], _at(grads, row[P_W1]), &win, act, <floating>f[F_ALPHA],
                  need_dx)
        if l1 != 0 or l2 != 0:
            return _l1l2(params + row[P_W0], grads + row[P_W0],
                         win.kh * win.kw * win.c * win.co, l1, l2)
    elif kind == EMBEDDING:
        _embedding_bwd(<const void*>inp, sizeof(floating) == 8, g, grads + row[P_W0], r * w,
                       row[P_VOCAB], wo)
    elif kind >= SIMPLE_RNN:
        _seq_of_row(row, n, &q)
        _rnn_bwd(&q, params + row[P_W0], params + row[P_W1], g, dx, grads + row[P_W0],
                 grads + row[P_W1], grads + row[P_W2], acts + row[P_SAVE_OFF], need_dx)
    elif not need_dx:  # a layer without weights whose dx nobody reads
        pass
    elif kind == DROPOUT:
        if f[F_RATE] > 0:
            _dropout(g, dx, r * w, f[F_RATE], _dropout_seed(seed, step, l),
                     row0 * <uint64_t>(row[P_IN0] * row[P_IN1] * w))
        elif dx != g:
            memmove(dx, g, r * w * sizeof(floating))
    elif kind == ACTIVATION:
        _act_bwd(inp if input_act else out, g, dx, <floating*>NULL, r, w, act,
                 <floating>f[F_ALPHA])
    elif kind != NORMALIZATION:
        _pool_bwd(row, acts, g, dx, n)
    else:
        _norm(g, <const floating*>NULL, <floating*>b.nontrain + row[P_S1], dx, r, w)
    return 0.0


cdef double _backward(const Plan* pl, const Net* b, const floating* x, Py_ssize_t n,
                      uint64_t seed, uint64_t step, uint64_t row0) noexcept nogil:
    cdef Py_ssize_t l
    cdef double penalty = 0.0
    for l in range(pl.n_layers - 1, -1, -1):
        if pl.rows[l * P_COLS + P_BACKWARD] != 0:
            penalty += _layer_bwd(pl, b, l, x, n, seed, step, row0)
    return penalty


cdef double _penalty(const Plan* pl, const floating* params) noexcept nogil:
    cdef Py_ssize_t l
    cdef const int64_t* row
    cdef double l1, l2, total = 0.0
    for l in range(pl.n_layers):
        row = pl.rows + l * P_COLS
        l1 = pl.f[l * F_COLS + F_L1]
        l2 = pl.f[l * F_COLS + F_L2]
        if row[P_KIND] == DENSE and (l1 != 0 or l2 != 0):
            total += _l1l2_sum(params + row[P_W0], row[P_IN2] * row[P_OUT2], l1, l2)
        elif row[P_KIND] == CONV2D and (l1 != 0 or l2 != 0):
            total += _l1l2_sum(params + row[P_W0],
                               row[P_ARG0] * row[P_ARG1] * row[P_IN2] * row[P_OUT2], l1, l2)
    return total


cdef inline bint _fused_loss(int code) noexcept nogil:
    return code == SOFTMAX_CE or code == SPARSE_SOFTMAX_CE or code == SIGMOID_BCE


cdef double _stack_loss(const Plan* pl, const Net* b, const floating* y, Py_ssize_t ty,
                        const floating* sw, Py_ssize_t n, int loss_code,
                        bint logits_out) noexcept nogil:
    cdef floating* out = <floating*>b.acts + pl.out_off
    cdef floating* dz = <floating*>b.gbuf + pl.dz_off
    cdef floating* p = out if (_fused_loss(loss_code) and not logits_out) else dz
    return _loss(out, y, ty, sw, p, dz, n, pl.n_out, loss_code)


cdef enum:
    CLIP_NONE = 0
    CLIP_NORM = 1    # clipnorm: each weight of the plan
    CLIP_GLOBAL = 2  # global_clipnorm: the whole trainable gradient
    CLIP_VALUE = 3   # clipvalue: each entry


cdef struct Clip:
    int mode
    double limit


cdef Clip _clip_of(int opt_code, const double* hyper, Py_ssize_t n_hyper) noexcept:
    """The clipping hyper's clip entries ask for (codes.H_*; opt_code already checked)."""
    cdef Clip c
    cdef Py_ssize_t base = HYPER_LEN[opt_code]
    c.mode, c.limit = CLIP_NONE, 0.0
    if n_hyper >= base + 3:
        if hyper[base] > 0:
            c.mode, c.limit = CLIP_NORM, hyper[base]
        elif hyper[base + 2] > 0:
            c.mode, c.limit = CLIP_GLOBAL, hyper[base + 2]
        elif hyper[base + 1] > 0:
            c.mode, c.limit = CLIP_VALUE, hyper[base + 1]
    return c


cdef Py_ssize_t _next_bound(const Plan* pl, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    """The end of the trainable weight starting at ``start``: the next weight offset of the
    plan, or n (reference.weight_bounds)."""
    cdef Py_ssize_t l, col, end = n
    cdef int64_t o
    for l in range(pl.n_layers):
        for col in range(P_W0, P_W2 + 1):
            o = pl.rows[l * P_COLS + col]
            if o > start and o < end:
                end = o
    return end


cdef double _sum_squares(const floating* g, Py_ssize_t count) noexcept nogil:
    """sum(g**2) in float64 over eight interleaved partial sums (eight independent add
    chains: one float64 accumulator runs at one add per 4 cycles)."""
    cdef double[8] s
    cdef Py_ssize_t k, j, n8 = count - count % 8
    cdef double v
    for j in range(8):
        s[j] = 0.0
    for k in range(0, n8, 8):
        for j in range(8):
            v = <double>g[k + j]
            s[j] += v * v
    for k in range(n8, count):
        v = <double>g[k]
        s[0] += v * v
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


cdef void _scale_to_norm(floating* g, Py_ssize_t count, double limit) noexcept nogil:
    cdef Py_ssize_t k
    cdef double norm, scale
    cdef floating f
    norm = sqrt(_sum_squares(g, count))
    scale = limit / (norm if norm > limit else limit) if isfinite(norm) else NAN
    f = <floating>scale
    for k in range(count):
        g[k] = g[k] * f


cdef void _clip_grads(const Plan* pl, floating* g, Py_ssize_t n, const Clip* c) noexcept nogil:
    """reference.clip_gradients of the trainable prefix g (n,) in place."""
    cdef Py_ssize_t k, start = 0, end
    cdef floating hi = <floating>c.limit, lo = -hi
    if c.mode == CLIP_NORM:
        while start < n:
            end = _next_bound(pl, start, n)
            _scale_to_norm(g + start, end - start, c.limit)
            start = end
    elif c.mode == CLIP_GLOBAL:
        _scale_to_norm(g, n, c.limit)
    elif c.mode == CLIP_VALUE:  # branch-free blends (NaN passes): the loop vectorises
        for k in range(n):
            g[k] = _where(g[k] > hi, hi, _where(g[k] < lo, lo, g[k]))


cdef double _train(const Plan* pl, const Net* b, const floating* x, const floating* y,
                   Py_ssize_t ty, const floating* sw, Py_ssize_t n, int loss_code,
                   bint logits_out, int opt_code, const double* hyper, int64_t step,
                   uint64_t seed, const Clip* clip) noexcept nogil:
    cdef double loss
    _forward(pl, b, x, n, True, seed, <uint64_t>step, 0)
    loss = _stack_loss(pl, b, y, ty, sw, n, loss_code, logits_out)
    loss += _backward(pl, b, x, n, seed, <uint64_t>step, 0)
    if isfinite(loss):
        _clip_grads(pl, <floating*>b.grads, b.state_cols, clip)
        _opt(<floating*>b.params, <const floating*>b.grads, <floating*>b.state, b.state_cols,
             opt_code, hyper, step)  # the trainable prefix: frozen weights follow
    return loss


cdef double _eval(const Plan* pl, const Net* b, const floating* x, const floating* y,
                  Py_ssize_t ty, const floating* sw, Py_ssize_t n, int loss_code,
                  bint logits_out) noexcept nogil:
    cdef double loss
    _forward(pl, b, x, n, False, 0, 0, 0)
    loss = _stack_loss(pl, b, y, ty, sw, n, loss_code, logits_out)
    return loss + _penalty(pl, <const floating*>b.params)


cdef inline Py_ssize_t _bucket(double p, Py_ssize_t k) noexcept nogil:
    """The number of Keras's AUC thresholds (-eps, j / (k - 1), 1 + eps) below p."""
    cdef double q
    cdef Py_ssize_t inner
    if p < 0:
        return 0
    q = ceil(p * (k - 1)) - 1
    inner = 0 if q < 0 else (k - 2 if q > k - 2 else <Py_ssize_t>q)
    return 1 + inner


cdef void _metric(const floating* out, const floating* y, Py_ssize_t n, Py_ssize_t c,
                  Py_ssize_t ty, const int64_t* row, double threshold,
                  double* stats) noexcept nogil:
    """One row of the metrics table (see reference.batch_stats)."""
    cdef int kind = <int>row[M_KIND]
    cdef Py_ssize_t slot = row[M_SLOT], k = row[M_K], i, j, lab, higher, ycol
    cdef floating thr = <floating>threshold
    cdef floating score
    cdef Py_ssize_t hits = 0, tp = 0, fp = 0, fn = 0
    cdef bint pred, pos
    cdef double p
    cdef Labels lb
    lb.data = <const char*>y
    lb.stride = ty * sizeof(floating)
    lb.kind = LB_F32 if floating is float else LB_F64
    if kind == ACC_SPARSE or kind == ACC_CATEGORICAL or kind == M_TOP_K or kind == M_SPARSE_TOP_K:
        for i in range(n):
            if kind == ACC_SPARSE or kind == M_SPARSE_TOP_K:
                lab = _label(&lb, i, c)
            else:
                lab = _argmax(y + i * ty, ty)
            if lab < 0 or lab >= c:
                continue
            if kind == ACC_SPARSE or kind == ACC_CATEGORICAL:
                hits += _argmax(out + i * c, c) == lab
            else:
                score = out[i * c + lab]
                higher = 0
                for j in range(c):
                    higher += out[i * c + j] > score
                hits += higher < k
        stats[slot] += <double>hits
    elif kind == ACC_BINARY:
        ycol = 1 if ty == c else 0  # (N, 1) targets broadcast over the outputs
        for i in range(n):
            for j in range(c):
                hits += (out[i * c + j] > thr) == (y[i * ty + j * ycol] > 0.5)
        stats[slot] += <double>hits / c
    elif kind == M_CONFUSION:
        for i in range(n * c):
            pred = out[i] > thr
            pos = y[i] > 0.5
            tp += pred and pos
            fp += pred and not pos
            fn += pos and not pred
        stats[slot] += <double>tp
        stats[slot + 1] += <double>fp
        stats[slot + 2] += <double>fn
    else:  # M_HISTOGRAM (the checks admit nothing else)
        for i in range(n * c):
            p = <double>out[i]
            if row[M_LOGITS]:
                p = 1.0 / (1.0 + exp(-p))
            stats[slot + (0 if y[i] > 0.5 else k) + _bucket(p, k)] += 1.0


cdef void _batch_stats(const floating* out, const floating* y, Py_ssize_t n, Py_ssize_t c,
                       Py_ssize_t ty, const int64_t* metrics, const double* thresholds,
                       Py_ssize_t n_metrics, double* stats) noexcept nogil:
    cdef Py_ssize_t i, m
    cdef double d, sa = 0.0, sq = 0.0
    for m in range(n_metrics):
        if metrics[m * M_COLS + M_KIND] != ACC_NONE:
            _metric(out, y, n, c, ty, metrics + m * M_COLS, thresholds[m], stats)
    if ty == c:
        for i in range(n * c):
            d = <double>out[i] - <double>y[i]
            sa += fabs(d)
            sq += d * d
        stats[STAT_ABS] += sa
        stats[STAT_SQ] += sq
    stats[STAT_ROWS] += n


cdef int _check_metrics(object metrics, object thresholds, Py_ssize_t n_stats, Py_ssize_t c,
                        Py_ssize_t ty, const int64_t** rows, const double** thr,
                        Py_ssize_t* count) except -1:
    """Reads the metrics table (M, M_COLS) int64 and thresholds (M,) float64, and checks
    every row: a known kind, its slots inside stats, targets of a width it can read."""
    cdef Py_ssize_t dm[2]
    cdef Py_ssize_t dt[1]
    cdef Py_ssize_t m, kind, slot, k, width
    rows[0] = <const int64_t*>_data(metrics, "metrics", b"i"[0], 8, 2, False, dm)
    thr[0] = <const double*>_data(thresholds, "thresholds", F_KIND, 8, 1, False, dt)
    if dm[0] > 0 and dm[1] != M_COLS:
        raise ValueError(f"metrics must have shape (M, {M_COLS}), got ({dm[0]}, {dm[1]})")
    if dt[0] != dm[0]:
        raise ValueError(f"thresholds needs {dm[0]} values (one per metric), got {dt[0]}")
    if n_stats < STAT_LEN:
        raise ValueError(f"stats needs {STAT_LEN} elements, got {n_stats}")
    for m in range(dm[0]):
        kind, slot, k = rows[0][m * M_COLS], rows[0][m * M_COLS + 1], rows[0][m * M_COLS + 2]
        if kind < 0 or kind >= N_METRICS:
            raise ValueError(f"unknown metric kind {kind} (metric {m})")
        if (kind == M_TOP_K or kind == M_SPARSE_TOP_K) and k < 1:
            raise ValueError(f"metric {m}: top-k needs k >= 1, got {k}")
        if kind == M_HISTOGRAM and (k < 2 or k > n_stats):
            raise ValueError(f"metric {m}: a histogram needs k >= 2 buckets, got {k}")
        width = (3 if kind == M_CONFUSION else (2 * k if kind == M_HISTOGRAM
                 else (0 if kind == ACC_NONE else 1)))
        if slot < 0 or slot > n_stats - width:
            raise ValueError(f"metric {m}: slots [{slot}, {slot + width}) do not fit in stats "
                             f"of {n_stats} entries")
        if (kind == M_CONFUSION or kind == M_HISTOGRAM or kind == ACC_CATEGORICAL
                or kind == M_TOP_K) and ty != c:
            raise ValueError(f"metric {m} needs y with {c} columns (the outputs), got {ty}")
        if kind == ACC_BINARY and ty != c and ty != 1:
            raise ValueError(f"y must have 1 or {c} columns for binary accuracy, got {ty}")
        if (kind == ACC_SPARSE or kind == M_SPARSE_TOP_K) and ty < 1:
            raise ValueError("y must have a column of class labels")
    count[0] = dm[0]
    return 0


cdef struct Epoch:
    # run_epoch's data, gathered batch, loss and optimizer arguments
    const int64_t* order
    Py_ssize_t total  # len(order)
    Py_ssize_t m      # rows of X
    Py_ssize_t n_x    # columns of X
    Py_ssize_t ty     # columns of Y
    Py_ssize_t batch_size
    char* xb
    char* yb
    char* swb
    int loss_code
    bint logits_out
    const int64_t* metrics
    const double* thresholds
    Py_ssize_t n_metrics
    int opt_code
    double* hyper
    const double* lrs
    int64_t step
    uint64_t seed
    Clip clip


# The batch gather reads rows of X in shuffled order: each row starts with a cache miss to
# memory that the hardware prefetcher cannot foresee.  Prefetching GATHER_AHEAD rows ahead of
# the copy keeps several rows' misses in flight at once.
cdef extern from *:
    """
    static inline void fastnn_prefetch(const char *p, Py_ssize_t bytes) {
        for (Py_ssize_t o = 0; o < bytes; o += 64)
            __builtin_prefetch(p + o, 0, 0);
    }
    """
    void fastnn_prefetch(const char*, Py_ssize_t) noexcept nogil

cdef Py_ssize_t GATHER_AHEAD = 4


cdef inline void _prefetch_row(const floating* X, const Epoch* e, Py_ssize_t k) noexcept nogil:
    """Prefetches row order[k] of X (nothing when k is past the end or out of bounds)."""
    cdef Py_ssize_t idx
    if k >= e.total:
        return
    idx = e.order[k]
    if idx < 0:
        idx += e.m
    if 0 <= idx < e.m:
        fastnn_prefetch(<const char*>(X + idx * e.n_x), e.n_x * sizeof(floating))


cdef Py_ssize_t _epoch(const Plan* pl, const Net* b, const Epoch* e, const floating* X,
                       const floating* Y, const floating* SW, bint train,
                       double* stats) noexcept nogil:
    cdef Py_ssize_t bi, r, start, n, idx, nx = e.n_x, ty = e.ty
    cdef Py_ssize_t n_batches = (e.total + e.batch_size - 1) // e.batch_size
    cdef floating* xb = <floating*>e.xb
    cdef floating* yb = <floating*>e.yb
    cdef floating* swb = <floating*>e.swb
    cdef double loss
    for bi in range(n_batches):
        start = bi * e.batch_size
        n = e.batch_size if e.batch_size < e.total - start else e.total - start
        for r in range(min(n, GATHER_AHEAD)):
            _prefetch_row(X, e, start + r)
        for r in range(n):
            _prefetch_row(X, e, start + r + GATHER_AHEAD)
            idx = e.order[start + r]
            if idx < 0:
                idx += e.m
            memcpy(xb + r * nx, X + idx * nx, nx * sizeof(floating))
            memcpy(yb + r * ty, Y + idx * ty, ty * sizeof(floating))
            swb[r] = SW[idx]
        if train:
            e.hyper[0] = e.lrs[bi]
            loss = _train(pl, b, xb, yb, ty, swb, n, e.loss_code, e.logits_out, e.opt_code,
                          e.hyper, e.step + bi, e.seed, &e.clip)
        else:
            loss = _eval(pl, b, xb, yb, ty, swb, n, e.loss_code, e.logits_out)
        stats[STAT_LOSS] += loss * n
        if not isfinite(loss):
            return bi
        _batch_stats(<const floating*>b.acts + pl.out_off, yb, n, pl.n_out, ty, e.metrics,
                     e.thresholds, e.n_metrics, stats)
    return n_batches


cdef bint _any_nonfinite(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether a[:n] holds an inf or NaN: only an all-ones exponent carries into the sign bit
    when one exponent unit is added to it, so an integer OR over the entries decides (it
    vectorises in full and needs no order)."""
    cdef Py_ssize_t i
    cdef uint32_t acc32 = 0
    cdef uint64_t acc64 = 0
    cdef const uint32_t* b32
    cdef const uint64_t* b64
    if floating is float:
        b32 = <const uint32_t*>a
        for i in range(n):
            acc32 |= (b32[i] & 0x7F800000U) + 0x00800000U
        return (acc32 >> 31) != 0
    else:
        b64 = <const uint64_t*>a
        for i in range(n):
            acc64 |= (b64[i] & 0x7FF0000000000000ULL) + 0x0010000000000000ULL
        return (acc64 >> 63) != 0


# ---------------------------------------------------------------------------------------
# Argument checks (with the GIL; they keep every C loop inside its buffers)

cdef inline uint64_t _u64(object v) except? 0xFFFFFFFFFFFFFFFF:
    """Python int -> uint64 modulo 2**64 (as the reference's ``& (2**64 - 1)``)."""
    if PyLong_Check(v):
        return PyLong_AsUnsignedLongLongMask(v)
    return <uint64_t>(int(v) & 0xFFFFFFFFFFFFFFFF)


cdef inline int _check_act(int act) except -1:
    if act < 0 or act >= N_ACTS:
        raise ValueError(f"unknown activation code {act}")
    return 0


cdef inline int _check_loss(int code) except -1:
    if code < 0 or code >= N_LOSSES:
        raise ValueError(f"unknown loss code {code}")
    return 0


cdef int _same(str what, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{what} must have shape {want}, got {got}")
    return 0


cdef int _check_opt(int code, Py_ssize_t n_params, Py_ssize_t state_rows,
                    Py_ssize_t state_cols, Py_ssize_t n_hyper, bint prefix=False) except -1:
    """``prefix``: the state may cover only the first state_cols parameters (a plan whose
    frozen layers' weights follow the trainable ones)."""
    cdef Py_ssize_t rows
    if code < 0 or code >= N_OPTS:
        raise ValueError(f"unknown optimizer code {code}")
    rows = max(1, STATE_SLOTS[code])
    if (state_cols != n_params and not (prefix and state_cols <= n_params)) or state_rows < rows:
        raise ValueError(f"state must have shape ({rows}, {n_params}) at least, got "
                         f"({state_rows}, {state_cols})")
    if n_hyper < HYPER_LEN[code]:
        raise ValueError(f"hyper needs {HYPER_LEN[code]} values for optimizer {code}, "
                         f"got {n_hyper}")
    return 0


cdef extern from *:
    """
    /* a * b for a, b >= 0; non-zero when it overflows */
    static inline int fastnn_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *r) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_mul_overflow(a, b, r);
    #else
        if (a != 0 && b > PY_SSIZE_T_MAX / a) return 1;
        *r = a * b;
        return 0;
    #endif
    }
    """
    int fastnn_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t* r) noexcept nogil


cdef inline Py_ssize_t _mul(Py_ssize_t a, Py_ssize_t b, Py_ssize_t l) except -1:
    cdef Py_ssize_t r
    if fastnn_mul_overflow(a, b, &r):
        raise ValueError(f"layer {l}: the sizes of the plan overflow ({a} * {b})")
    return r


cdef inline int _fits(Py_ssize_t l, str what, int64_t off, Py_ssize_t count, Py_ssize_t size,
                      str buf) except -1:
    """off >= 0 and [off, off + count) inside a buffer of ``size`` elements."""
    if off < 0 or off > size or count > size - off:
        raise ValueError(f"layer {l}: {what} [{off}, {off} + {count}) is not inside {buf} "
                         f"({size} elements)")
    return 0


cdef enum:
    # what a whole-network call uses beyond the forward (flags of _parse_net, _make_plan)
    NEED_GRADS = 1      # the backward: grads, gbuf at the backward rows' offsets
    NEED_STATE = 2      # the optimizer: state, params written
    NEED_LOSS = 4       # the loss: gbuf at the last row's P_DOUT_OFF
    WRITES_NONTRAIN = 8  # a training forward (BatchNormalization's moving statistics)


cdef inline tuple _group(object g, Py_ssize_t least, Py_ssize_t most, str name):
    """``g``, a tuple of ``least`` to ``most`` items (another sequence is converted)."""
    if PyTuple_Check(g) and least <= PyTuple_GET_SIZE(g) <= most:
        return <tuple>g
    return _group_slow(g, least, most, name)


cdef tuple _group_slow(object g, Py_ssize_t least, Py_ssize_t most, str name):
    if not PyTuple_Check(g):
        try:
            g = tuple(g)
        except TypeError:
            raise TypeError(f"{name} must be a tuple, got {type(g).__name__}") from None
    if PyTuple_GET_SIZE(g) < least or PyTuple_GET_SIZE(g) > most:
        want = str(least) if least == most else f"{least} to {most}"
        raise ValueError(f"{name} must be a tuple of {want} items, got {PyTuple_GET_SIZE(g)}")
    return <tuple>g


cdef inline object _item(tuple g, Py_ssize_t i):
    # g[i] of a tuple _group checked (no bounds check)
    return <object>PyTuple_GET_ITEM(g, i)


cdef int _parse_net(Net* b, tuple net, object acts, object gbuf, object acc, Py_ssize_t isz,
                    int needs) except -1:
    """Fills ``b`` from net = (params, grads, state, nontrain) and the work buffers, reading
    grads, state and gbuf only when ``needs`` says they are used."""
    cdef Py_ssize_t[2] d2
    cdef Py_ssize_t[1] d
    cdef char f = F_KIND
    b.params = _data(_item(net, 0), "params", f, isz, 1, (needs & NEED_STATE) != 0, d)
    b.n_params = d[0]
    b.nontrain = _data(_item(net, 3), "nontrain", f, isz, 1, (needs & WRITES_NONTRAIN) != 0, d)
    b.n_nontrain = d[0]
    b.acts = _data(acts, "acts", f, isz, 1, True, d)
    b.n_acts = d[0]
    b.acc = <double*>_data(acc, "acc", f, 8, 1, True, d)
    b.n_acc = d[0]
    b.grads = NULL
    b.state = NULL
    b.gbuf = NULL
    b.state_rows = b.state_cols = b.n_gbuf = 0
    if needs & NEED_GRADS:
        b.grads = _data(_item(net, 1), "grads", f, isz, 1, True, d)
        if d[0] != b.n_params:
            raise ValueError(f"grads must have {b.n_params} elements (as params), got {d[0]}")
    if needs & NEED_STATE:
        b.state = _data(_item(net, 2), "state", f, isz, 2, True, d2)
        b.state_rows, b.state_cols = d2[0], d2[1]
    if needs & (NEED_GRADS | NEED_LOSS):
        b.gbuf = _data(gbuf, "gbuf", f, isz, 1, True, d)
        b.n_gbuf = d[0]
    return 0


cdef int _check_conv_row(Py_ssize_t l, const int64_t* row, Py_ssize_t n,
                         const Net* b) except -1:
    """The geometry of a convolution or pooling row and the extents of its weights and
    saved tensors for n samples."""
    cdef Window g
    cdef Py_ssize_t pixels, k
    _window_of_row(row, n, &g)
    _check_window(f"layer {l}", &g)
    pixels = _mul(_mul(n, g.ho, l), g.wo, l)
    if row[P_KIND] == CONV2D:
        k = _mul(_mul(g.kh, g.kw, l), g.c, l)
        _fits(l, "the Conv2D kernel (W0)", row[P_W0], _mul(k, g.co, l), b.n_params, "params")
        if row[P_W1] != -1:
            _fits(l, "the Conv2D bias (W1)", row[P_W1], g.co, b.n_params, "params")
        _fits(l, "the im2col columns", row[P_SAVE_OFF], _mul(pixels, k, l), b.n_acts, "acts")
        return 0
    if g.co != g.c:
        raise ValueError(f"layer {l}: pooling keeps the channels, got {g.c} -> {g.co}")
    if row[P_KIND] == MAXPOOL2D or row[P_KIND] == GLOBAL_MAXPOOL2D:
        if _mul(g.kh, g.kw, l) > 16777216:  # positions are stored exactly in float32
            raise ValueError(f"layer {l}: a max-pooling window of {g.kh}x{g.kw} has more "
                             "than 2**24 positions")
        _fits(l, "the argmax positions", row[P_SAVE_OFF], _mul(pixels, g.c, l), b.n_acts,
              "acts")
    return 0


cdef int _check_seq_acts(str where, int64_t act, int64_t rec_act) except -1:
    for name, code in (("activation", act), ("recurrent activation", rec_act)):
        if code != LINEAR and code != RELU and code != SIGMOID and code != TANH:
            raise ValueError(f"{where}: the {name} code of a recurrent layer must be linear, "
                             f"relu, sigmoid or tanh ({LINEAR}, {RELU}, {SIGMOID}, {TANH}), "
                             f"got {code}")
    return 0


cdef int _check_seq_row(Py_ssize_t l, const int64_t* row, Py_ssize_t n,
                        const Net* b) except -1:
    """The shapes of an Embedding or recurrent row and the extents of its weights and
    workspace for n samples."""
    cdef int64_t kind = row[P_KIND], t = row[P_IN1], f = row[P_IN2], u = row[P_UNITS]
    cdef Py_ssize_t g
    if kind == EMBEDDING:
        if row[P_IN0] != 1 or row[P_IN1] != 1 or row[P_OUT0] != 1 or row[P_OUT1] != f:
            raise ValueError(f"layer {l}: an Embedding row maps (1, 1, T) ids to (1, T, E), "
                             f"got {(row[P_IN0], t, f)} -> "
                             f"{(row[P_OUT0], row[P_OUT1], row[P_OUT2])}")
        if row[P_VOCAB] < 1:
            raise ValueError(f"layer {l}: the Embedding's input_dim must be >= 1, got "
                             f"{row[P_VOCAB]}")
        _fits(l, "the embeddings (W0)", row[P_W0], _mul(row[P_VOCAB], row[P_OUT2], l),
              b.n_params, "params")
        return 0
    if (row[P_RETURN_SEQ] != 0 and row[P_RETURN_SEQ] != 1) or row[P_IN0] != 1 \
            or row[P_OUT0] != 1 or u != row[P_OUT2] \
            or row[P_OUT1] != (t if row[P_RETURN_SEQ] else 1):
        raise ValueError(f"layer {l}: a recurrent row maps (1, T, F) to (1, T, U) "
                         f"(return_sequences) or (1, 1, U) with U the units, got "
                         f"{(row[P_IN0], t, f)} -> {(row[P_OUT0], row[P_OUT1], row[P_OUT2])}, "
                         f"units {u}, return_sequences {row[P_RETURN_SEQ]}")
    _check_seq_acts(f"layer {l}", row[P_ACT], row[P_REC_ACT])
    g = _mul(_gates_of(kind), u, l)
    _fits(l, "the kernel (W0)", row[P_W0], _mul(f, g, l), b.n_params, "params")
    _fits(l, "the recurrent kernel (W1)", row[P_W1], _mul(u, g, l), b.n_params, "params")
    _fits(l, "the bias (W2)", row[P_W2], _mul(2 if kind == GRU else 1, g, l), b.n_params,
          "params")
    _fits(l, "the workspace", row[P_SAVE_OFF], _seq_size(kind, n, t, f, u, b.n_acts + 1),
          b.n_acts, "acts")
    return 0


cdef Py_ssize_t _seq_size(int64_t kind, Py_ssize_t n, Py_ssize_t t, Py_ssize_t f,
                          Py_ssize_t u, Py_ssize_t cap) except -1:
    """Elements of a recurrent workspace (rnn_layout), or ``cap`` when it is larger (no
    overflow)."""
    size = rnn_layout(int(kind), int(n), int(t), int(f), int(u))[8]
    return size if size < cap else cap


def rnn_layout(int kind, n, t, f, u):
    """Offsets of the parts of a recurrent layer's workspace (reference_rnn.rnn_layout),
    exact integers (no overflow)."""
    g = _gates_of(kind) * u
    lstm, gru = int(kind == LSTM), int(kind == GRU)
    sizes = (t * n * f, t * n * g, (t + 1) * n * u, (t + 1) * n * u * lstm,
             t * n * g * gru, n * g, n * u, n * u * lstm)
    out = [0]
    for s in sizes:
        out.append(out[len(out) - 1] + s)
    return tuple(out)


cdef int _make_plan(Plan* pl, object plan, const Net* b, Py_ssize_t n, Py_ssize_t n_x,
                    int needs) except -1:
    """Fills ``pl`` from plan = (layers, layer_f[, kinds]) for a batch x (n, n_x), after
    checking every row: kind and activation codes known, shapes positive and consistent
    (a Dense row keeps the rows per sample, other kinds keep the shape; a row reading the
    previous row's output reads as many values), and every offset and extent inside its
    buffer for n samples (gbuf only where ``needs`` uses it).  O(L)."""
    cdef tuple t = _group(plan, 2, 3, "plan")
    cdef Py_ssize_t[2] dl, df
    cdef const int64_t* rows = <const int64_t*>_data(_item(t, 0), "layers", b"i"[0], 8, 2,
                                                     False, dl)
    cdef const double* fs = <const double*>_data(_item(t, 1), "layer_f", F_KIND, 8, 2, False,
                                                 df)
    cdef Py_ssize_t L = dl[0], l, k, c, wo, in_size = 0, out_size = 0, n_in, n_out = 0
    cdef int64_t kind, prev_off = -2, prev_size = 0
    cdef const int64_t* row = rows
    if L < 1 or dl[1] != P_COLS:
        raise ValueError(f"layers must have shape (L, {P_COLS}) with L >= 1, got "
                         f"({dl[0]}, {dl[1]})")
    if df[0] != L or df[1] != F_COLS:
        raise ValueError(f"layer_f must have shape ({L}, {F_COLS}), got ({df[0]}, {df[1]})")
    for l in range(L):
        row = rows + l * P_COLS
        kind = row[P_KIND]
        if kind < 0 or kind >= N_KINDS:
            raise ValueError(f"unknown layer kind {kind} (layer {l})")
        if row[P_ACT] < 0 or row[P_ACT] >= N_ACTS:
            raise ValueError(f"unknown activation code {row[P_ACT]} (layer {l})")
        if (row[P_ACT] == GELU or row[P_ACT] == SILU) and kind != DENSE and kind != ACTIVATION:
            raise ValueError(f"layer {l}: activation code {row[P_ACT]} (gelu, silu) runs on "
                             "Dense and Activation rows only")
        for k in range(P_IN0, P_OUT2 + 1):
            if row[k] < 1:
                raise ValueError(
                    f"layer {l}: shapes must be positive, got input "
                    f"{(row[P_IN0], row[P_IN1], row[P_IN2])} and output "
                    f"{(row[P_OUT0], row[P_OUT1], row[P_OUT2])}"
                )
        c, wo = row[P_IN2], row[P_OUT2]
        in_size = _mul(_mul(row[P_IN0], row[P_IN1], l), c, l)
        out_size = _mul(_mul(row[P_OUT0], row[P_OUT1], l), wo, l)
        n_in, n_out = _mul(n, in_size, l), _mul(n, out_size, l)
        if row[P_IN_OFF] == -1:
            if in_size != n_x:
                raise ValueError(f"layer {l} reads x as {in_size} values per sample, but x "
                                 f"has {n_x}")
        else:
            _fits(l, "input", row[P_IN_OFF], n_in, b.n_acts, "acts")
            if row[P_IN_OFF] == prev_off and in_size != prev_size:
                raise ValueError(f"layer {l} reads the previous layer's output ({prev_size} "
                                 f"values per sample) as {in_size}")
        _fits(l, "output", row[P_OUT_OFF], n_out, b.n_acts, "acts")
        if kind == DENSE:
            if row[P_IN0] != row[P_OUT0] or row[P_IN1] != row[P_OUT1]:
                raise ValueError(f"layer {l}: a Dense layer keeps the leading axes of its "
                                 f"input, got {(row[P_IN0], row[P_IN1])} -> "
                                 f"{(row[P_OUT0], row[P_OUT1])}")
            _fits(l, "the Dense kernel (W0)", row[P_W0], _mul(c, wo, l), b.n_params, "params")
            if row[P_ACT] == GELU or row[P_ACT] == SILU:
                _fits(l, "the saved pre-activation", row[P_SAVE_OFF], n_out, b.n_acts, "acts")
            if row[P_W1] != -1:
                _fits(l, "the Dense bias (W1)", row[P_W1], wo, b.n_params, "params")
        elif kind >= EMBEDDING:
            _check_seq_row(l, row, n, b)
        elif kind >= CONV2D:
            _check_conv_row(l, row, n, b)
        else:
            if in_size != out_size or c != wo or row[P_IN0] != row[P_OUT0]:
                raise ValueError(f"layer {l}: the output shape must equal the input shape, "
                                 f"got {(row[P_IN0], row[P_IN1], c)} -> "
                                 f"{(row[P_OUT0], row[P_OUT1], wo)}")
            if kind == BATCHNORM:
                if row[P_W0] != -1:
                    _fits(l, "gamma (W0)", row[P_W0], c, b.n_params, "params")
                if row[P_W1] != -1:
                    _fits(l, "beta (W1)", row[P_W1], c, b.n_params, "params")
                _fits(l, "the moving mean (S0)", row[P_S0], c, b.n_nontrain, "nontrain")
                _fits(l, "the moving variance (S1)", row[P_S1], c, b.n_nontrain, "nontrain")
                _fits(l, "the saved statistics", row[P_SAVE_OFF], _mul(2, c, l), b.n_acts,
                      "acts")
                _fits(l, "the accumulators", row[P_ACC_OFF], _mul(2, c, l), b.n_acc, "acc")
            elif kind == NORMALIZATION:
                _fits(l, "the mean (S0)", row[P_S0], c, b.n_nontrain, "nontrain")
                _fits(l, "the variance (S1)", row[P_S1], c, b.n_nontrain, "nontrain")
        if (needs & NEED_GRADS) and row[P_BACKWARD] != 0:
            _fits(l, "dL/dout", row[P_DOUT_OFF], n_out, b.n_gbuf, "gbuf")
            if row[P_DX_OFF] != -1:
                _fits(l, "dL/dx", row[P_DX_OFF], n_in, b.n_gbuf, "gbuf")
        prev_off, prev_size = row[P_OUT_OFF], out_size
    if needs & NEED_LOSS:
        _fits(L - 1, "the loss gradient (dL/dout)", row[P_DOUT_OFF], n_out, b.n_gbuf, "gbuf")
    pl.rows = rows
    pl.f = fs
    pl.n_layers = L
    pl.n_out = out_size
    pl.out_off = row[P_OUT_OFF]
    pl.dz_off = row[P_DOUT_OFF]
    return 0


cdef int _check_targets(Py_ssize_t ny, Py_ssize_t ty, Py_ssize_t nsw, Py_ssize_t n,
                        Py_ssize_t c, int loss_code) except -1:
    _check_loss(loss_code)
    if ny != n or nsw != n:
        raise ValueError(f"y and sw must have {n} rows, got {ny} and {nsw}")
    if loss_code == SPARSE_SOFTMAX_CE:
        if ty < 1:
            raise ValueError("y must have at least one column (the class index)")
    elif ty != c:
        raise ValueError(f"y must have {c} columns (the outputs), got {ty}")
    return 0


cdef object _labels(object labels, Py_ssize_t n, Labels* lb):
    """Describes ``labels`` (N,) of any numeric dtype and stride; returns the array that
    must stay alive while ``lb`` is used."""
    cdef object a = np.asarray(labels)
    cdef object dt = a.dtype
    cdef Py_ssize_t itemsize
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {a.shape}")
    if not dt.isnative or dt.kind not in "if" or dt.itemsize not in (4, 8):
        a = a.astype(np.int64)  # other dtypes: converted (truncated) as the reference does
        dt = a.dtype
    itemsize = dt.itemsize
    if dt.kind == "i":
        lb.kind = LB_I64 if itemsize == 8 else LB_I32
    else:
        lb.kind = LB_F64 if itemsize == 8 else LB_F32
    # the buffer protocol gives the pointer without building __array_interface__ (~2 us);
    # the array returned keeps it valid after the view is released
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_STRIDES)
    lb.data = <const char*>view.buf
    lb.stride = view.strides[0]
    PyBuffer_Release(&view)
    return a


# ---------------------------------------------------------------------------------------
# The contract (see reference.py for every docstring).  The entry points the layers, losses
# and optimizers call on every batch take NumPy arrays checked through the C API (_data):
# a fused memoryview signature costs about 0.7 us more per call to dispatch and acquire.

cdef char F_KIND = b"f"[0]


cdef Py_ssize_t _float_size(object a, str name) except -1:
    """The itemsize (4 or 8) of float array ``a``, which sets the call's dtype."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(<cnp.ndarray>a)
    if (<cnp.dtype>cnp.PyArray_DESCR(<cnp.ndarray>a)).kind != F_KIND or (isz != 4 and isz != 8):
        raise ValueError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return isz


def activation_forward(x, out, int act, double alpha):
    """out = act(x) elementwise (softmax: row-wise).  x, out (N, O); out may alias x."""
    cdef Py_ssize_t[2] sx, so
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    _check_act(act)
    _same("out", (so[0], so[1]), (sx[0], sx[1]))
    if isz == 4:
        with nogil:
            _act_fwd(<const float*>x_, <const float*>NULL, <float*>o_, sx[0], sx[1], act,
                     <float>alpha)
    else:
        with nogil:
            _act_fwd(<const double*>x_, <const double*>NULL, <double*>o_, sx[0], sx[1], act,
                     alpha)


def activation_backward(y, dout, dx, int act, double alpha):
    """dx = dL/dx from the output y and dout = dL/dy.  (N, O); dx may alias dout."""
    cdef Py_ssize_t[2] sy, sd, sdx
    cdef Py_ssize_t isz = _float_size(y, "y")
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    _check_act(act)
    _same("dout", (sd[0], sd[1]), (sy[0], sy[1]))
    _same("dx", (sdx[0], sdx[1]), (sy[0], sy[1]))
    if isz == 4:
        with nogil:
            _act_bwd(<const float*>y_, <const float*>d_, <float*>dx_, <float*>NULL, sy[0],
                     sy[1], act, <float>alpha)
    else:
        with nogil:
            _act_bwd(<const double*>y_, <const double*>d_, <double*>dx_, <double*>NULL, sy[0],
                     sy[1], act, alpha)


def dense_forward(x, w, b, out, int act, double alpha):
    """out = act(x @ w + b).  x (N, I), w (I, O), b (O,), out (N, O)."""
    cdef Py_ssize_t[2] sx, sw, so
    cdef Py_ssize_t[1] sb
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* w_ = _data(w, "w", F_KIND, isz, 2, False, sw)
    cdef char* b_ = _data(b, "b", F_KIND, isz, 1, False, sb)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    cdef Py_ssize_t n = sx[0], ni = sx[1], no = sw[1]
    _check_act(act)
    _same("w", (sw[0], sw[1]), (ni, no))
    if sb[0] != 0:  # an empty b: no bias
        _same("b", (sb[0],), (no,))
    else:
        b_ = NULL
    _same("out", (so[0], so[1]), (n, no))
    if isz == 4:
        with nogil:
            _dense_layer_fwd(<const float*>x_, <const float*>w_, <const float*>b_,
                             <float*>o_, n, ni, no, act, <float>alpha)
    else:
        with nogil:
            _dense_layer_fwd(<const double*>x_, <const double*>w_, <const double*>b_,
                             <double*>o_, n, ni, no, act, alpha)


def dense_backward(x, w, y, dout, dz, dx, dw, db, int act, double alpha, int need_dx):
    """Gradients of out = act(x @ w + b): dz (may alias dout), db, dw, and dx if need_dx."""
    cdef Py_ssize_t[2] sx, sw, sy, sd, sz, sdx, sdw
    cdef Py_ssize_t[1] sdb
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* w_ = _data(w, "w", F_KIND, isz, 2, False, sw)
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* z_ = _data(dz, "dz", F_KIND, isz, 2, True, sz)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    cdef char* dw_ = _data(dw, "dw", F_KIND, isz, 2, True, sdw)
    cdef char* db_ = _data(db, "db", F_KIND, isz, 1, True, sdb)
    cdef Py_ssize_t n = sx[0], ni = sx[1], no = sw[1]
    _check_act(act)
    _same("w", (sw[0], sw[1]), (ni, no))
    _same("y", (sy[0], sy[1]), (n, no))
    _same("dout", (sd[0], sd[1]), (n, no))
    _same("dz", (sz[0], sz[1]), (n, no))
    _same("dw", (sdw[0], sdw[1]), (ni, no))
    if sdb[0] != 0:  # an empty db: no bias
        _same("db", (sdb[0],), (no,))
    else:
        db_ = NULL
    if need_dx:
        _same("dx", (sdx[0], sdx[1]), (n, ni))
    if isz == 4:
        with nogil:
            _dense_bwd(<const float*>x_, <const float*>w_, <const float*>y_, <const float*>d_,
                       <float*>z_, <float*>dx_, <float*>dw_, <float*>db_, n, ni, no, act,
                       <float>alpha, need_dx != 0)
    else:
        with nogil:
            _dense_bwd(<const double*>x_, <const double*>w_, <const double*>y_,
                       <const double*>d_, <double*>z_, <double*>dx_, <double*>dw_,
                       <double*>db_, n, ni, no, act, alpha, need_dx != 0)


def _flat(a, str name):
    """A 1-D view of a C-contiguous array of any shape (never a copy)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(-1)


def any_nonfinite(a):
    """Whether ``a``, a C-contiguous, aligned, native float32 or float64 array of any shape,
    holds an inf or NaN (one vectorised pass; the package's argument checks use it)."""
    cdef Py_ssize_t isz = _float_size(a, "a")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr)):
        raise ValueError("a must be C-contiguous, aligned and in native byte order")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(arr)
    cdef char* data = cnp.PyArray_BYTES(arr)
    cdef bint bad
    if isz == 4:
        with nogil:
            bad = _any_nonfinite(<const float*>data, n)
    else:
        with nogil:
            bad = _any_nonfinite(<const double*>data, n)
    return bad


def dropout_forward(x, out, double rate, seed):
    """out = x * keep / (1 - rate) with the splitmix64 keep-mask.  x, out (N, O); may alias."""
    if x.shape != out.shape:
        raise ValueError(f"out must have shape {x.shape}, got {out.shape}")
    _dropout_flat(_flat(x, "x"), _flat(out, "out"), rate, _u64(seed))


def _dropout_flat(const floating[::1] x, floating[::1] out, double rate, uint64_t seed):
    with nogil:
        _dropout(&x[0], &out[0], x.shape[0], rate, seed, 0)


def dropout_backward(dout, dx, double rate, seed):
    """dx = dout * keep / (1 - rate), the forward's mask.  (N, O); may alias."""
    if dout.shape != dx.shape:
        raise ValueError(f"dx must have shape {dout.shape}, got {dx.shape}")
    _dropout_flat(_flat(dout, "dout"), _flat(dx, "dx"), rate, _u64(seed))


def softmax_cross_entropy(const floating[:, ::1] z, const floating[:, ::1] y,
                          const floating[::1] sw, floating[:, ::1] p, floating[:, ::1] dz):
    """Softmax + categorical cross-entropy from logits; p = softmax(z), dz = dL/dz."""
    cdef double loss
    _check_loss_args(z.shape[0], z.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     p.shape[0], p.shape[1], dz.shape[0], dz.shape[1])
    with nogil:
        loss = _softmax_ce(&z[0, 0], &y[0, 0], &sw[0], &p[0, 0], &dz[0, 0], z.shape[0],
                           z.shape[1])
    return loss


def sparse_softmax_cross_entropy(const floating[:, ::1] z, labels, const floating[::1] sw,
                                 floating[:, ::1] p, floating[:, ::1] dz):
    """Softmax + cross-entropy with class indices ``labels`` (N,).  A label outside [0, C)
    makes that row's loss and gradient NaN (nothing outside the arrays is touched)."""
    cdef Labels lb
    cdef double loss
    cdef Py_ssize_t n = z.shape[0], c = z.shape[1]
    keep = _labels(labels, n, &lb)
    _check_loss_args(n, c, n, c, sw.shape[0], p.shape[0], p.shape[1], dz.shape[0],
                     dz.shape[1])
    with nogil:
        loss = _sparse_ce(&z[0, 0], &lb, &sw[0], &p[0, 0], &dz[0, 0], n, c)
    del keep
    return loss


cdef int _check_loss_args(Py_ssize_t n, Py_ssize_t c, Py_ssize_t yn, Py_ssize_t yc,
                          Py_ssize_t swn, Py_ssize_t pn, Py_ssize_t pc, Py_ssize_t dn,
                          Py_ssize_t dc) except -1:
    _same("y", (yn, yc), (n, c))
    _same("sw", (swn,), (n,))
    if c < 1 and n > 0:
        raise ValueError("the loss needs at least one column")
    _same("p", (pn, pc), (n, c))
    _same("dz", (dn, dc), (n, c))
    return 0


def sigmoid_binary_cross_entropy(const floating[:, ::1] z, const floating[:, ::1] y,
                                 const floating[::1] sw, floating[:, ::1] p,
                                 floating[:, ::1] dz):
    """Sigmoid + binary cross-entropy from logits, stable for any |z|.  (N, C); sw (N,)."""
    cdef double loss
    _check_loss_args(z.shape[0], z.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     p.shape[0], p.shape[1], dz.shape[0], dz.shape[1])
    with nogil:
        loss = _sigmoid_bce(&z[0, 0], &y[0, 0], &sw[0], &p[0, 0], &dz[0, 0], z.shape[0],
                            z.shape[1])
    return loss


def categorical_crossentropy(const floating[:, ::1] p, const floating[:, ::1] y,
                             const floating[::1] sw, floating[:, ::1] dp):
    """Cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C); sw (N,)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _categorical_ce(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def binary_crossentropy(const floating[:, ::1] p, const floating[:, ::1] y,
                        const floating[::1] sw, floating[:, ::1] dp):
    """Binary cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _binary_ce(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def mean_squared_error(const floating[:, ::1] pred, const floating[:, ::1] y,
                       const floating[::1] sw, floating[:, ::1] dpred):
    """Mean squared error.  (N, C); sw (N,).  dpred = 2 sw (pred - y) / (N*C)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _mse(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                    pred.shape[1])
    return loss


def mean_absolute_error(const floating[:, ::1] pred, const floating[:, ::1] y,
                        const floating[::1] sw, floating[:, ::1] dpred):
    """Mean absolute error.  (N, C); sw (N,).  dpred = sw sign(pred - y) / (N*C)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _mae(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                    pred.shape[1])
    return loss


def huber(const floating[:, ::1] pred, const floating[:, ::1] y, const floating[::1] sw,
          floating[:, ::1] dpred):
    """Huber loss, delta = codes.HUBER_DELTA (see reference.huber)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _huber(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                      pred.shape[1])
    return loss


def kl_divergence(const floating[:, ::1] p, const floating[:, ::1] y, const floating[::1] sw,
                  floating[:, ::1] dp):
    """Kullback-Leibler divergence (see reference.kl_divergence)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _kld(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def poisson(const floating[:, ::1] p, const floating[:, ::1] y, const floating[::1] sw,
            floating[:, ::1] dp):
    """Poisson loss (see reference.poisson)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _poisson(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def loss_grad(out, y, sw, p, dz, int loss_code):
    """Dispatch to the loss ``loss_code``; returns the loss and writes dz = dL/dout (and the
    probabilities into p for the logit losses).  y is (N, 1) class indices when sparse."""
    cdef double loss
    cdef Py_ssize_t[2] so, sy, sp, sz
    cdef Py_ssize_t[1] ssw
    cdef Py_ssize_t isz = _float_size(out, "out")
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, False, so)
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* sw_ = _data(sw, "sw", F_KIND, isz, 1, False, ssw)
    cdef char* p_ = _data(p, "p", F_KIND, isz, 2, True, sp)
    cdef char* z_ = _data(dz, "dz", F_KIND, isz, 2, True, sz)
    cdef Py_ssize_t n = so[0], c = so[1]
    _check_targets(sy[0], sy[1], ssw[0], n, c, loss_code)
    _same("dz", (sz[0], sz[1]), (n, c))
    if _fused_loss(loss_code):
        _same("p", (sp[0], sp[1]), (n, c))
    if c < 1 and n > 0:
        raise ValueError("out must have at least one column")
    if isz == 4:
        with nogil:
            loss = _loss(<const float*>o_, <const float*>y_, sy[1], <const float*>sw_,
                         <float*>p_, <float*>z_, n, c, loss_code)
    else:
        with nogil:
            loss = _loss(<const double*>o_, <const double*>y_, sy[1], <const double*>sw_,
                         <double*>p_, <double*>z_, n, c, loss_code)
    return loss


def l1l2_penalty(w, dw, double l1, double l2):
    """Adds l1*sign(w) + 2*l2*w to dw and returns l1*sum|w| + l2*sum w^2.  Any shape."""
    if w.shape != dw.shape:
        raise ValueError(f"dw must have shape {w.shape}, got {dw.shape}")
    return _l1l2_flat(_flat(w, "w"), _flat(dw, "dw"), l1, l2)


def _l1l2_flat(const floating[::1] w, floating[::1] dw, double l1, double l2):
    cdef double r
    with nogil:
        r = _l1l2(&w[0], &dw[0], w.shape[0], l1, l2)
    return r


cdef int _same_len(str name, Py_ssize_t got, Py_ssize_t want) except -1:
    if got != want:
        raise ValueError(f"{name} must have {want} elements, got {got}")
    return 0


def sgd_update(floating[::1] p, const floating[::1] g, double lr):
    """p -= lr * g."""
    _same_len("g", g.shape[0], p.shape[0])
    with nogil:
        _sgd(&p[0], &g[0], p.shape[0], lr)


def momentum_update(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
                    double momentum, nesterov):
    """PyTorch SGD with momentum (and Nesterov when ``nesterov`` is true)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("buf", buf.shape[0], p.shape[0])
    cdef bint nest = bool(nesterov)
    with nogil:
        _momentum(&p[0], &g[0], &buf[0], p.shape[0], lr, momentum, nest)


def adagrad_update(floating[::1] p, const floating[::1] g, floating[::1] acc, double lr,
                   double epsilon):
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("acc", acc.shape[0], p.shape[0])
    with nogil:
        _adagrad(&p[0], &g[0], &acc[0], p.shape[0], lr, epsilon)


def rmsprop_update(floating[::1] p, const floating[::1] g, floating[::1] sq, double lr,
                   double rho, double epsilon):
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("sq", sq.shape[0], p.shape[0])
    with nogil:
        _rmsprop(&p[0], &g[0], &sq[0], p.shape[0], lr, rho, epsilon)


def adam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                double lr, double beta_1, double beta_2, double epsilon, double weight_decay,
                int64_t step):
    """Adam / AdamW (PyTorch's formulas), ``step`` = t >= 1."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("m", m.shape[0], p.shape[0])
    _same_len("v", v.shape[0], p.shape[0])
    with nogil:
        _adam(&p[0], &g[0], &m[0], &v[0], p.shape[0], lr, beta_1, beta_2, epsilon,
              weight_decay, step)


def nadam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                 double lr, double beta_1, double beta_2, double epsilon, int64_t step):
    """Nadam, Keras 3's formula, ``step`` = t >= 1 (see reference.nadam_update)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("m", m.shape[0], p.shape[0])
    _same_len("v", v.shape[0], p.shape[0])
    with nogil:
        _nadam(&p[0], &g[0], &m[0], &v[0], p.shape[0], lr, beta_1, beta_2, epsilon, step)


def clip_gradients(grads, layers, int opt_code, hyper):
    """Keras's gradient clipping of grads (P,) in place by hyper's clip entries (see
    reference.clip_gradients); ``layers`` is the plan's int64 table (its weight offsets
    delimit the weights for clipnorm)."""
    cdef Py_ssize_t[1] sg, sh
    cdef Py_ssize_t[2] dl
    cdef Plan pl
    cdef Clip clip
    cdef Py_ssize_t isz = _float_size(grads, "grads")
    cdef char* g_ = _data(grads, "grads", F_KIND, isz, 1, True, sg)
    cdef const double* h_ = <const double*>_data(hyper, "hyper", F_KIND, 8, 1, False, sh)
    pl.rows = <const int64_t*>_data(layers, "layers", b"i"[0], 8, 2, False, dl)
    if dl[1] != P_COLS:
        raise ValueError(f"layers must have shape (L, {P_COLS}), got ({dl[0]}, {dl[1]})")
    if opt_code < 0 or opt_code >= N_OPTS:
        raise ValueError(f"unknown optimizer code {opt_code}")
    pl.n_layers = dl[0]
    clip = _clip_of(opt_code, h_, sh[0])
    if isz == 4:
        with nogil:
            _clip_grads(&pl, <float*>g_, sg[0], &clip)
    else:
        with nogil:
            _clip_grads(&pl, <double*>g_, sg[0], &clip)


def optimizer_update(params, grads, state, int opt_code, hyper, int64_t step):
    """One optimizer step over the flat buffers; state (S, P); hyper as in ``codes``."""
    cdef Py_ssize_t[2] ss
    cdef Py_ssize_t[1] sp, sg, sh
    cdef Py_ssize_t isz = _float_size(params, "params")
    cdef char* p_ = _data(params, "params", F_KIND, isz, 1, True, sp)
    cdef char* g_ = _data(grads, "grads", F_KIND, isz, 1, False, sg)
    cdef char* s_ = _data(state, "state", F_KIND, isz, 2, True, ss)
    cdef const double* h_ = <const double*>_data(hyper, "hyper", F_KIND, 8, 1, False, sh)
    _same_len("grads", sg[0], sp[0])
    _check_opt(opt_code, sp[0], ss[0], ss[1], sh[0])
    if isz == 4:
        with nogil:
            _opt(<float*>p_, <const float*>g_, <float*>s_, sp[0], opt_code, h_, step)
    else:
        with nogil:
            _opt(<double*>p_, <const double*>g_, <double*>s_, sp[0], opt_code, h_, step)


cdef char* _weight(object a, str name, Py_ssize_t isz, Py_ssize_t c,
                   bint writeable) except? NULL:
    """The data of an optional weight (C,), or NULL when it is empty (absent)."""
    cdef Py_ssize_t[1] d
    cdef char* p = _data(a, name, F_KIND, isz, 1, writeable, d)
    if d[0] == 0:
        return NULL
    if d[0] != c:
        raise ValueError(f"{name} must have shape ({c},) or (0,), got ({d[0]},)")
    return p


cdef int _same2(str name, const Py_ssize_t* got, Py_ssize_t r, Py_ssize_t c) except -1:
    if got[0] != r or got[1] != c:
        raise ValueError(f"{name} must have shape ({r}, {c}), got ({got[0]}, {got[1]})")
    return 0


def batchnorm_forward(x, gamma, beta, moving_mean, moving_var, saved, out, acc, int training,
                      double momentum, double epsilon):
    """Batch normalisation of each column of x (R, C) (Keras semantics).  gamma, beta (C,)
    or empty (absent); moving_mean, moving_var (C,) (updated when training); saved (2, C)
    receives [mean, inv_std]; out (R, C) may alias x; acc (2, C) float64 scratch."""
    cdef Py_ssize_t[2] sx, ss, so, sa
    cdef Py_ssize_t[1] smm, smv
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef Py_ssize_t r = sx[0], c = sx[1]
    cdef char* g_ = _weight(gamma, "gamma", isz, c, False)
    cdef char* b_ = _weight(beta, "beta", isz, c, False)
    cdef char* mm_ = _data(moving_mean, "moving_mean", F_KIND, isz, 1, training != 0, smm)
    cdef char* mv_ = _data(moving_var, "moving_var", F_KIND, isz, 1, training != 0, smv)
    cdef char* s_ = _data(saved, "saved", F_KIND, isz, 2, True, ss)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    cdef double* a_ = <double*>_data(acc, "acc", F_KIND, 8, 2, True, sa)
    _same_len("moving_mean", smm[0], c)
    _same_len("moving_var", smv[0], c)
    _same2("saved", ss, 2, c)
    _same2("out", so, r, c)
    _same2("acc", sa, 2, c)
    if isz == 4:
        with nogil:
            _bn_fwd(<const float*>x_, <const float*>g_, <const float*>b_, <float*>mm_,
                    <float*>mv_, <float*>s_, <float*>o_, a_, r, c, training != 0, momentum,
                    epsilon)
    else:
        with nogil:
            _bn_fwd(<const double*>x_, <const double*>g_, <const double*>b_, <double*>mm_,
                    <double*>mv_, <double*>s_, <double*>o_, a_, r, c, training != 0, momentum,
                    epsilon)


def batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, int need_dx):
    """Gradients of batchnorm_forward in training from saved = [mean, inv_std]: dbeta,
    dgamma (when not empty) and dx (when ``need_dx``; may alias dout)."""
    cdef Py_ssize_t[2] sx, ss, sd, sdx, sa
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef Py_ssize_t r = sx[0], c = sx[1]
    cdef char* g_ = _weight(gamma, "gamma", isz, c, False)
    cdef char* s_ = _data(saved, "saved", F_KIND, isz, 2, False, ss)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    cdef char* dg_ = _weight(dgamma, "dgamma", isz, c, True)
    cdef char* db_ = _weight(dbeta, "dbeta", isz, c, True)
    cdef double* a_ = <double*>_data(acc, "acc", F_KIND, 8, 2, True, sa)
    _same2("saved", ss, 2, c)
    _same2("dout", sd, r, c)
    _same2("acc", sa, 2, c)
    if need_dx:
        _same2("dx", sdx, r, c)
    if isz == 4:
        with nogil:
            _bn_bwd(<const float*>x_, <const float*>g_, <const float*>s_, <const float*>d_,
                    <float*>dx_, <float*>dg_, <float*>db_, a_, r, c, need_dx != 0)
    else:
        with nogil:
            _bn_bwd(<const double*>x_, <const double*>g_, <const double*>s_,
                    <const double*>d_, <double*>dx_, <double*>dg_, <double*>db_, a_, r, c,
                    need_dx != 0)


def normalization_forward(x, mean, variance, out):
    """out = (x - mean) / max(sqrt(variance), NORM_EPS) per column.  x, out (R, C) (may
    alias); mean, variance (C,)."""
    cdef Py_ssize_t[2] sx, so
    cdef Py_ssize_t[1] sm, sv
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* m_ = _data(mean, "mean", F_KIND, isz, 1, False, sm)
    cdef char* v_ = _data(variance, "variance", F_KIND, isz, 1, False, sv)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    _same_len("mean", sm[0], sx[1])
    _same_len("variance", sv[0], sx[1])
    _same2("out", so, sx[0], sx[1])
    if isz == 4:
        with nogil:
            _norm(<const float*>x_, <const float*>m_, <const float*>v_, <float*>o_, sx[0],
                  sx[1])
    else:
        with nogil:
            _norm(<const double*>x_, <const double*>m_, <const double*>v_, <double*>o_, sx[0],
                  sx[1])


def normalization_backward(variance, dout, dx):
    """dx = dout / max(sqrt(variance), NORM_EPS).  dout, dx (R, C) (may alias)."""
    cdef Py_ssize_t[2] sd, sdx
    cdef Py_ssize_t[1] sv
    cdef Py_ssize_t isz = _float_size(dout, "dout")
    cdef char* v_ = _data(variance, "variance", F_KIND, isz, 1, False, sv)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    _same_len("variance", sv[0], sd[1])
    _same2("dx", sdx, sd[0], sd[1])
    if isz == 4:
        with nogil:
            _norm(<const float*>d_, <const float*>NULL, <const float*>v_, <float*>dx_, sd[0],
                  sd[1])
    else:
        with nogil:
            _norm(<const double*>d_, <const double*>NULL, <const double*>v_, <double*>dx_,
                  sd[0], sd[1])


# The whole-network entry points take their arguments in groups (tuples, unpacked here
# through the C API): plan = (layers, layer_f, kinds) (kinds is for Numba: ignored),
# net = (params, grads, state, nontrain), work = (acts, gbuf, acc), batch = (x, y, sw),
# loss = (loss_code, logits_out, metrics, thresholds), opt = (opt_code, hyper, lrs, step,
# seed); see reference.py.

# ---------------------------------------------------------------------------------------
# Convolution and pooling: geometry checks (shared by the kernels and _make_plan)

cdef int _check_window(str where, const Window* g) except -1:
    """Every size positive, padding inside the window, and every window with at least one
    position inside the image (so that no loop leaves its arrays and no count is 0)."""
    if min(g.n, g.h, g.w, g.c, g.ho, g.wo, g.co) < 1:
        raise ValueError(f"{where}: shapes must be positive, got input "
                         f"{(g.n, g.h, g.w, g.c)} and output {(g.n, g.ho, g.wo, g.co)}")
    if min(g.kh, g.kw, g.sh, g.sw) < 1:
        raise ValueError(f"{where}: window {(g.kh, g.kw)} and strides {(g.sh, g.sw)} must be "
                         f">= 1")
    if not (0 <= g.pt < g.kh and 0 <= g.pl < g.kw):
        raise ValueError(f"{where}: padding {(g.pt, g.pl)} must be >= 0 and smaller than the "
                         f"window {(g.kh, g.kw)}")
    if (g.ho > 1 + (g.h - 1 + g.pt) // g.sh) or (g.wo > 1 + (g.w - 1 + g.pl) // g.sw):
        raise ValueError(f"{where}: an output of {g.ho}x{g.wo} with window {(g.kh, g.kw)}, "
                         f"strides {(g.sh, g.sw)} and padding {(g.pt, g.pl)} has windows "
                         f"outside the {g.h}x{g.w} input")
    return 0


cdef inline void _window_of_row(const int64_t* row, Py_ssize_t n, Window* g) noexcept nogil:
    g.n, g.h, g.w, g.c = n, row[P_IN0], row[P_IN1], row[P_IN2]
    g.ho, g.wo, g.co = row[P_OUT0], row[P_OUT1], row[P_OUT2]
    g.kh, g.kw, g.sh, g.sw = row[P_ARG0], row[P_ARG1], row[P_ARG2], row[P_ARG3]
    g.pt, g.pl = row[P_ARG4], row[P_ARG5]


cdef Window _window(tuple x_shape, tuple out_shape, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    cdef Window g
    g.n, g.h, g.w, g.c = x_shape
    _, g.ho, g.wo, g.co = out_shape
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = kh, kw, sh, sw, pt, pl
    return g


cdef int _check_pool(str where, const Window* g, tuple x_shape, tuple out_shape) except -1:
    _check_window(where, g)
    if out_shape[0] != g.n or g.co != g.c:
        raise ValueError(f"{where}: out must have {g.n} samples of {g.c} channels (as x "
                         f"{x_shape}), got {out_shape}")
    return 0


cdef tuple _shape4(const Py_ssize_t* s):
    return (s[0], s[1], s[2], s[3])


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, floating[:, ::1] cols, floating[:, :, :, ::1] out,
                   int act, double alpha, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pad_top,
                   Py_ssize_t pad_left):
    """out (N, HO, WO, F) = act(conv(x, w) + b); cols (N*HO*WO, KH*KW*C) receives im2col(x)."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), w.shape[0], w.shape[1], sh,
                            sw, pad_top, pad_left)
    _check_act(act)
    _check_conv(&g, _shape4(x.shape), _shape4(w.shape), b.shape[0], cols.shape[0],
                cols.shape[1], out.shape[0])
    with nogil:
        _conv_fwd(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &b[0] if b.shape[0] else NULL, &cols[0, 0],
                  &out[0, 0, 0, 0], &g, act, <floating>alpha)


cdef int _check_conv(const Window* g, tuple x_shape, tuple w_shape, Py_ssize_t nb,
                     Py_ssize_t cols_rows, Py_ssize_t cols_k, Py_ssize_t out_n) except -1:
    _check_window("conv2d", g)
    if w_shape[2] != g.c or w_shape[3] != g.co:
        raise ValueError(f"w must have shape (KH, KW, {g.c}, {g.co}) (x {x_shape}, out "
                         f"channels {g.co}), got {w_shape}")
    if nb != 0 and nb != g.co:
        raise ValueError(f"b must have {g.co} elements (or none), got {nb}")
    if out_n != g.n:
        raise ValueError(f"out must have {g.n} samples (as x), got {out_n}")
    _same("cols", (cols_rows, cols_k), (g.n * g.ho * g.wo, g.kh * g.kw * g.c))
    return 0


def conv2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[:, :, :, ::1] y, const floating[:, :, :, ::1] dout,
                    floating[:, ::1] cols, floating[:, :, :, ::1] dz, floating[:, :, :, ::1] dx,
                    floating[:, :, :, ::1] dw, floating[::1] db, int act, double alpha,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left,
                    int need_dx):
    """Gradients of conv2d_forward from the forward's cols (overwritten by dz @ w.T when
    ``need_dx``): dz (may alias dout), db (when not empty), dw, dx."""
    cdef Window g = _window(_shape4(x.shape), _shape4(y.shape), w.shape[0], w.shape[1], sh,
                            sw, pad_top, pad_left)
    _check_act(act)
    _check_conv(&g, _shape4(x.shape), _shape4(w.shape), db.shape[0], cols.shape[0],
                cols.shape[1], y.shape[0])
    _same("dout", _shape4(dout.shape), _shape4(y.shape))
    _same("dz", _shape4(dz.shape), _shape4(y.shape))
    _same("dx", _shape4(dx.shape), _shape4(x.shape))
    _same("dw", _shape4(dw.shape), _shape4(w.shape))
    with nogil:
        _conv_bwd(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &y[0, 0, 0, 0], &dout[0, 0, 0, 0],
                  &cols[0, 0], &dz[0, 0, 0, 0], &dx[0, 0, 0, 0], &dw[0, 0, 0, 0],
                  &db[0] if db.shape[0] else NULL, &g, act, <floating>alpha, need_dx != 0)


def maxpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] argmax,
                      floating[:, :, :, ::1] out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left):
    """out = the maximum of each window; argmax receives its position ky*KW + kx."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("maxpool2d", &g, _shape4(x.shape), _shape4(out.shape))
    _same("argmax", _shape4(argmax.shape), _shape4(out.shape))
    with nogil:
        _maxpool_fwd(&x[0, 0, 0, 0], &argmax[0, 0, 0, 0], &out[0, 0, 0, 0], &g)


def maxpool2d_backward(const floating[:, :, :, ::1] argmax, const floating[:, :, :, ::1] dout,
                       floating[:, :, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                       Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left):
    """dx = dout summed into each window's maximum."""
    cdef Window g = _window(_shape4(dx.shape), _shape4(dout.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("maxpool2d", &g, _shape4(dx.shape), _shape4(dout.shape))
    _same("argmax", _shape4(argmax.shape), _shape4(dout.shape))
    with nogil:
        _maxpool_bwd(&argmax[0, 0, 0, 0], &dout[0, 0, 0, 0], &dx[0, 0, 0, 0], &g)


def avgpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pad_top, Py_ssize_t pad_left):
    """out = the mean of each window over its positions inside the image."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("avgpool2d", &g, _shape4(x.shape), _shape4(out.shape))
    with nogil:
        _avgpool(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &g, True)


def avgpool2d_backward(const floating[:, :, :, ::1] dout, floating[:, :, :, ::1] dx,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pad_top, Py_ssize_t pad_left):
    """dx = each window's dout / count spread over its positions inside the image."""
    cdef Window g = _window(_shape4(dx.shape), _shape4(dout.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("avgpool2d", &g, _shape4(dx.shape), _shape4(dout.shape))
    with nogil:
        _avgpool(&dout[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, False)


cdef uint64_t _row0(row0) except? 0:
    """row0 of forward_stack/backward_stack: an int >= 0."""
    if isinstance(row0, bool) or not isinstance(row0, (int, np.integer)) or row0 < 0:
        raise ValueError(f"row0 must be an int >= 0, got {row0!r}")
    return <uint64_t>row0


def forward_stack(x, plan, net, work, int training, seed, step, row0=0):
    """Runs every layer of the plan on x (N, I0) (training: dropout, batch statistics and
    their moving averages); x is rows row0.. of the batch whose dropout masks apply."""
    cdef Plan pl
    cdef Net b
    cdef Py_ssize_t[2] sx
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef tuple w = _group(work, 3, 3, "work")
    cdef uint64_t s = _u64(seed), t = _u64(step), r0 = _row0(row0)
    _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 0), None, _item(w, 2), isz,
               WRITES_NONTRAIN if training else 0)
    _make_plan(&pl, plan, &b, sx[0], sx[1], 0)
    if isz == 4:
        with nogil:
            _forward(&pl, &b, <const float*>x_, sx[0], training != 0, s, t, r0)
    else:
        with nogil:
            _forward(&pl, &b, <const double*>x_, sx[0], training != 0, s, t, r0)


def backward_stack(x, plan, net, work, seed, step, row0=0):
    """Back-propagates dL/dout (at the last row's P_DOUT_OFF of gbuf) through the rows with
    P_BACKWARD set; writes the weight gradients into grads; returns the regularisation
    penalty (its gradient is added).  row0 as forward_stack."""
    cdef Plan pl
    cdef Net b
    cdef Py_ssize_t[2] sx
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef tuple w = _group(work, 3, 3, "work")
    cdef uint64_t s = _u64(seed), t = _u64(step), r0 = _row0(row0)
    cdef double penalty
    _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 0), _item(w, 1), _item(w, 2), isz,
               NEED_GRADS)
    _make_plan(&pl, plan, &b, sx[0], sx[1], NEED_GRADS)
    if isz == 4:
        with nogil:
            penalty = _backward(&pl, &b, <const float*>x_, sx[0], s, t, r0)
    else:
        with nogil:
            penalty = _backward(&pl, &b, <const double*>x_, sx[0], s, t, r0)
    return penalty


cdef int _parse_batch(tuple batch, Py_ssize_t* isz, char** x, char** y, char** sw,
                      Py_ssize_t* sx, Py_ssize_t* sy) except -1:
    """batch = (x (N, I0), y (N, T), sw (N,)): data, shapes and the call's itemsize."""
    cdef Py_ssize_t[1] ssw
    isz[0] = _float_size(_item(batch, 0), "x")
    x[0] = _data(_item(batch, 0), "x", F_KIND, isz[0], 2, False, sx)
    y[0] = _data(_item(batch, 1), "y", F_KIND, isz[0], 2, False, sy)
    sw[0] = _data(_item(batch, 2), "sw", F_KIND, isz[0], 1, False, ssw)
    if sy[0] != sx[0] or ssw[0] != sx[0]:
        raise ValueError(f"y and sw must have {sx[0]} rows, got {sy[0]} and {ssw[0]}")
    return 0


def train_step(batch, plan, net, work, loss, opt):
    """One training step: forward, loss, backward, optimizer update (hyper[0] is the rate;
    lrs unused).  Returns the loss with the regularisation penalty; nothing is updated when
    it is not finite."""
    cdef Plan pl
    cdef Net b
    cdef Py_ssize_t isz
    cdef Py_ssize_t[2] sx, sy
    cdef Py_ssize_t[1] sh
    cdef char* x_
    cdef char* y_
    cdef char* sw_
    cdef tuple w = _group(work, 3, 3, "work")
    cdef tuple ls = _group(loss, 2, 4, "loss")
    cdef tuple o = _group(opt, 5, 5, "opt")
    cdef int loss_code = _item(ls, 0), opt_code = _item(o, 0)
    cdef bint logits_out = _item(ls, 1)
    cdef int64_t step = _item(o, 3)
    cdef uint64_t s = _u64(_item(o, 4))
    cdef const double* h_ = <const double*>_data(_item(o, 1), "hyper", F_KIND, 8, 1, False, sh)
    cdef double value
    cdef Clip clip
    _parse_batch(_group(batch, 3, 3, "batch"), &isz, &x_, &y_, &sw_, sx, sy)
    _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 0), _item(w, 1), _item(w, 2), isz,
               NEED_GRADS | NEED_STATE | NEED_LOSS | WRITES_NONTRAIN)
    _check_opt(opt_code, b.n_params, b.state_rows, b.state_cols, sh[0], True)
    clip = _clip_of(opt_code, h_, sh[0])
    _make_plan(&pl, plan, &b, sx[0], sx[1], NEED_GRADS | NEED_LOSS)
    _check_targets(sy[0], sy[1], sx[0], sx[0], pl.n_out, loss_code)
    if isz == 4:
        with nogil:
            value = _train(&pl, &b, <const float*>x_, <const float*>y_, sy[1],
                           <const float*>sw_, sx[0], loss_code, logits_out, opt_code, h_, step,
                           s, &clip)
    else:
        with nogil:
            value = _train(&pl, &b, <const double*>x_, <const double*>y_, sy[1],
                           <const double*>sw_, sx[0], loss_code, logits_out, opt_code, h_, step,
                           s, &clip)
    return value


def eval_step(batch, plan, net, work, loss):
    """Forward (no dropout, moving statistics) and loss with the regularisation penalty;
    nothing is updated."""
    cdef Plan pl
    cdef Net b
    cdef Py_ssize_t isz
    cdef Py_ssize_t[2] sx, sy
    cdef char* x_
    cdef char* y_
    cdef char* sw_
    cdef tuple w = _group(work, 3, 3, "work")
    cdef tuple ls = _group(loss, 2, 4, "loss")
    cdef int loss_code = _item(ls, 0)
    cdef bint logits_out = _item(ls, 1)
    cdef double value
    _parse_batch(_group(batch, 3, 3, "batch"), &isz, &x_, &y_, &sw_, sx, sy)
    _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 0), _item(w, 1), _item(w, 2), isz,
               NEED_LOSS)
    _make_plan(&pl, plan, &b, sx[0], sx[1], NEED_LOSS)
    _check_targets(sy[0], sy[1], sx[0], sx[0], pl.n_out, loss_code)
    if isz == 4:
        with nogil:
            value = _eval(&pl, &b, <const float*>x_, <const float*>y_, sy[1],
                          <const float*>sw_, sx[0], loss_code, logits_out)
    else:
        with nogil:
            value = _eval(&pl, &b, <const double*>x_, <const double*>y_, sy[1],
                          <const double*>sw_, sx[0], loss_code, logits_out)
    return value


def batch_stats(const floating[:, ::1] out, const floating[:, ::1] y, metrics, thresholds,
                double[::1] stats):
    """Adds a batch's metric sums to ``stats`` (see reference.batch_stats)."""
    cdef Py_ssize_t n = out.shape[0], c = out.shape[1], ty = y.shape[1], count
    cdef const int64_t* rows
    cdef const double* thr
    if y.shape[0] != n:
        raise ValueError(f"y must have {n} rows, got {y.shape[0]}")
    if n > 0 and (c < 1 or ty < 1):
        raise ValueError("out and y need at least one column")
    _check_metrics(metrics, thresholds, stats.shape[0], c, ty, &rows, &thr, &count)
    with nogil:
        _batch_stats(&out[0, 0], &y[0, 0], n, c, ty, rows, thr, count, &stats[0])


# run_epoch is the per-batch call of fit and train_on_batch: its arrays are read through the
# NumPy C API (one type and flags check each) rather than typed memoryviews, whose buffer
# acquisition and view objects cost ~0.25 us per argument, about 4 us per call.

cdef char* _data(object a, str name, char kind, Py_ssize_t itemsize, int ndim,
                 bint writeable, Py_ssize_t* dims) except? NULL:
    """The data of ``a``, checked to be a C-contiguous, aligned, native-order NumPy array
    with ``ndim`` dimensions and elements of ``kind`` and ``itemsize`` (and writeable when
    asked); its shape goes to ``dims``."""
    cdef cnp.ndarray arr
    cdef int k
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if ((<cnp.dtype>cnp.PyArray_DESCR(arr)).kind != kind or cnp.PyArray_ITEMSIZE(arr) != itemsize
            or not cnp.PyArray_ISNOTSWAPPED(arr)):
        want = ("float" if kind == b"f"[0] else "int") + str(8 * itemsize)
        raise ValueError(f"{name} must have dtype {want} (native byte order), got {a.dtype}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)):
        raise ValueError(f"{name} must be C-contiguous")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writeable")
    for k in range(ndim):
        dims[k] = cnp.PyArray_DIM(arr, k)
    return cnp.PyArray_BYTES(arr)


cdef Py_ssize_t _epoch_checked(const Plan* pl, const Net* b, const Epoch* e,
                               const floating* X, const floating* Y, const floating* SW,
                               bint train, double* stats, Py_ssize_t* bad_row) noexcept nogil:
    """Checks order (the first entry out of bounds goes to bad_row, and nothing runs), then
    _epoch, then (training) the non-finite flag of params, state and nontrain.  One block
    without the GIL: each release and acquisition costs about 30 ns."""
    cdef Py_ssize_t k, idx, n_batches = 0
    cdef bint bad
    for k in range(e.total):
        idx = e.order[k]
        if idx < -e.m or idx >= e.m:
            bad_row[0] = k
            return 0
    if e.total > 0:
        n_batches = _epoch(pl, b, e, X, Y, SW, train, stats)
    if train:
        bad = (_any_nonfinite(<const floating*>b.params, b.n_params)
               or _any_nonfinite(<const floating*>b.state, b.state_rows * b.state_cols)
               or _any_nonfinite(<const floating*>b.nontrain, b.n_nontrain))
        stats[STAT_NONFINITE] = 1.0 if bad else 0.0
    return n_batches


def run_epoch(data, plan, net, ws, loss, opt, int train, stats):
    """Runs the batches of X[order] (the last batch may be smaller) through train_step or
    eval_step; accumulates stats; stops after a batch whose loss is not finite and returns
    the number of batches completed; a training call ends by setting stats[STAT_NONFINITE]
    (params, state or nontrain not finite)."""
    cdef Plan pl
    cdef Net b
    cdef Epoch e
    cdef tuple d = _group(data, 5, 5, "data")
    cdef tuple w = _group(ws, 6, 6, "ws")
    cdef tuple ls = _group(loss, 4, 4, "loss")
    cdef tuple o = _group(opt, 5, 5, "opt")
    cdef Py_ssize_t[2] dx, dy, dxb, dyb
    cdef Py_ssize_t[1] dsw, dord, dswb, dh, dlr, dstats
    cdef Py_ssize_t isz, n_batches, rows, bad = -1
    cdef char f = F_KIND
    cdef object X = _item(d, 0)
    isz = _float_size(X, "X")
    cdef char* X_ = _data(X, "X", f, isz, 2, False, dx)
    cdef char* Y_ = _data(_item(d, 1), "Y", f, isz, 2, False, dy)
    cdef char* SW_ = _data(_item(d, 2), "SW", f, isz, 1, False, dsw)
    e.order = <const int64_t*>_data(_item(d, 3), "order", b"i"[0], 8, 1, False, dord)
    e.batch_size = _item(d, 4)
    e.xb = _data(_item(w, 0), "xb", f, isz, 2, True, dxb)
    e.yb = _data(_item(w, 1), "yb", f, isz, 2, True, dyb)
    e.swb = _data(_item(w, 2), "swb", f, isz, 1, True, dswb)
    cdef double* stats_ = <double*>_data(stats, "stats", f, 8, 1, True, dstats)
    e.loss_code = _item(ls, 0)
    e.logits_out = _item(ls, 1)
    e.m, e.n_x, e.ty, e.total = dx[0], dx[1], dy[1], dord[0]
    if e.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {e.batch_size}")
    rows = min(e.batch_size, e.total)
    n_batches = (e.total + e.batch_size - 1) // e.batch_size
    e.opt_code, e.hyper, e.lrs, e.step, e.seed = 0, NULL, NULL, 0, 0
    e.clip.mode, e.clip.limit = CLIP_NONE, 0.0
    if train:
        e.opt_code = _item(o, 0)
        e.hyper = <double*>_data(_item(o, 1), "hyper", f, 8, 1, True, dh)
        e.lrs = <const double*>_data(_item(o, 2), "lrs", f, 8, 1, False, dlr)
        e.step = _item(o, 3)
        e.seed = _u64(_item(o, 4))
        _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 3), _item(w, 4), _item(w, 5), isz,
                   NEED_GRADS | NEED_STATE | NEED_LOSS | WRITES_NONTRAIN)
        _check_opt(e.opt_code, b.n_params, b.state_rows, b.state_cols, dh[0], True)
        e.clip = _clip_of(e.opt_code, e.hyper, dh[0])
        if dlr[0] < n_batches:
            raise ValueError(f"lrs needs {n_batches} values, got {dlr[0]}")
        _make_plan(&pl, plan, &b, rows, e.n_x, NEED_GRADS | NEED_LOSS)
    else:
        _parse_net(&b, _group(net, 4, 4, "net"), _item(w, 3), _item(w, 4), _item(w, 5), isz,
                   NEED_LOSS)
        _make_plan(&pl, plan, &b, rows, e.n_x, NEED_LOSS)
    _check_targets(dy[0], e.ty, dsw[0], e.m, pl.n_out, e.loss_code)
    if dxb[0] < rows or dxb[1] != e.n_x:
        raise ValueError(f"xb must have shape ({rows}, {e.n_x}) at least, got "
                         f"({dxb[0]}, {dxb[1]})")
    if dyb[0] < rows or dyb[1] != e.ty:
        raise ValueError(f"yb must have shape ({rows}, {e.ty}) at least, got "
                         f"({dyb[0]}, {dyb[1]})")
    if dswb[0] < rows:
        raise ValueError(f"swb needs {rows} elements, got {dswb[0]}")
    _check_metrics(_item(ls, 2), _item(ls, 3), dstats[0], pl.n_out, e.ty, &e.metrics,
                   &e.thresholds, &e.n_metrics)
    if isz == 4:
        with nogil:
            n_batches = _epoch_checked(&pl, &b, &e, <const float*>X_, <const float*>Y_,
                                       <const float*>SW_, train != 0, stats_, &bad)
    else:
        with nogil:
            n_batches = _epoch_checked(&pl, &b, &e, <const double*>X_, <const double*>Y_,
                                       <const double*>SW_, train != 0, stats_, &bad)
    if bad >= 0:
        raise IndexError(f"order[{bad}] = {e.order[bad]} is out of bounds for {e.m} rows")
    return n_batches


# ---------------------------------------------------------------------------------------
# Sequence kinds (see reference_rnn)

cdef object _ids_array(object ids, Py_ssize_t v):
    """``ids`` as a C-contiguous int32/int64 (N, T) array with every id in [0, v)."""
    cdef object a = np.asarray(ids)
    if a.dtype != np.int32 and a.dtype != np.int64:
        raise TypeError(f"ids must be an int32 or int64 array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"ids must be 2-D (N, T), got shape {a.shape}")
    a = np.ascontiguousarray(a)
    if a.size and (a.min() < 0 or a.max() >= v):
        raise ValueError(f"ids must be in [0, {v}) (the rows of w), got ids in "
                         f"[{a.min()}, {a.max()}] (largest id {a.max()})")
    return a


def embedding_forward(ids, const floating[:, ::1] w, floating[:, ::1] out):
    """out[n * T + t] = w[ids[n, t]]: ids (N, T) int32/int64 in [0, V); w (V, E); out
    (N*T, E)."""
    cdef object a = _ids_array(ids, w.shape[0])
    cdef Py_ssize_t count = a.size
    cdef const void* p = <const void*>cnp.PyArray_DATA(a)
    cdef bint wide = a.dtype.itemsize == 8
    _same("out", (out.shape[0], out.shape[1]), (count, w.shape[1]))
    with nogil:
        _embedding_fwd(p, wide, &w[0, 0], &out[0, 0], count, w.shape[0], w.shape[1])


def embedding_backward(ids, const floating[:, ::1] dout, floating[:, ::1] dw):
    """dw = the sum of the dout rows of each id (zero for ids absent): ids (N, T); dout
    (N*T, E); dw (V, E)."""
    cdef object a = _ids_array(ids, dw.shape[0])
    cdef Py_ssize_t count = a.size
    cdef const void* p = <const void*>cnp.PyArray_DATA(a)
    cdef bint wide = a.dtype.itemsize == 8
    _same("dout", (dout.shape[0], dout.shape[1]), (count, dw.shape[1]))
    with nogil:
        _embedding_bwd(p, wide, &dout[0, 0], &dw[0, 0], count, dw.shape[0], dw.shape[1])


cdef tuple _dims(const Py_ssize_t* shape, int ndim):
    return tuple([shape[k] for k in range(ndim)])


cdef int _check_rnn(Seq* q, int kind, tuple x_shape, tuple w_shape, tuple r_shape,
                    tuple b_shape, tuple out_shape, Py_ssize_t ws_size, int act, int rec_act,
                    int return_seq) except -1:
    """Fills q from the arrays' shapes after checking them against each other."""
    if kind != SIMPLE_RNN and kind != LSTM and kind != GRU:
        raise ValueError(f"kind must be SIMPLE_RNN, LSTM or GRU ({SIMPLE_RNN}, {LSTM}, "
                         f"{GRU}), got {kind}")
    _check_seq_acts("rnn", act, rec_act)
    n, t, f = x_shape
    u = r_shape[0]
    if min(n, t, f, u) < 1:
        raise ValueError(f"x (N, T, F) and r (U, G) must have positive sizes, got {x_shape} "
                         f"and {r_shape}")
    g = _gates_of(kind) * u
    _same("w", w_shape, (f, g))
    _same("r", r_shape, (u, g))
    _same("b", b_shape, (2 if kind == GRU else 1, g))
    _same("out", out_shape, (n, t if return_seq else 1, u))
    need = rnn_layout(kind, n, t, f, u)[8]
    if ws_size < need:
        raise ValueError(f"ws must have at least {need} elements (rnn_layout), got {ws_size}")
    _seq_init(q, kind, n, t, f, u, act, rec_act, return_seq != 0)
    return 0


def rnn_forward(int kind, const floating[:, :, ::1] x, const floating[:, ::1] w,
                const floating[:, ::1] r, const floating[:, ::1] b, floating[:, :, ::1] out,
                floating[::1] ws, int act, int rec_act, int return_seq):
    """A SimpleRNN / LSTM / GRU (``kind``) over x (N, T, F) from zero states
    (reference_rnn.rnn_forward); ws receives what the backward reads."""
    cdef Seq q
    _check_rnn(&q, kind, _dims(x.shape, 3), _dims(w.shape, 2), _dims(r.shape, 2),
               _dims(b.shape, 2), _dims(out.shape, 3), ws.shape[0], act, rec_act, return_seq)
    with nogil:
        _rnn_fwd(&q, &x[0, 0, 0], &w[0, 0], &r[0, 0], &b[0, 0], &out[0, 0, 0], &ws[0])


def rnn_backward(int kind, const floating[:, :, ::1] x, const floating[:, ::1] w,
                 const floating[:, ::1] r, const floating[:, :, ::1] dout,
                 floating[:, :, ::1] dx, floating[:, ::1] dw, floating[:, ::1] dr,
                 floating[:, ::1] db, floating[::1] ws, int act, int rec_act, int return_seq,
                 int need_dx):
    """Gradients of rnn_forward (after it, with the same ws; reference_rnn.rnn_backward):
    dw, dr, db and, when ``need_dx``, dx."""
    cdef Seq q
    _check_rnn(&q, kind, _dims(x.shape, 3), _dims(dw.shape, 2), _dims(dr.shape, 2),
               _dims(db.shape, 2), _dims(dout.shape, 3), ws.shape[0], act, rec_act,
               return_seq)
    _same("w", _dims(w.shape, 2), _dims(dw.shape, 2))
    _same("r", _dims(r.shape, 2), _dims(dr.shape, 2))
    _same("dx", _dims(dx.shape, 3), _dims(x.shape, 3))
    with nogil:
        _rnn_bwd(&q, &w[0, 0], &r[0, 0], &dout[0, 0, 0], &dx[0, 0, 0], &dw[0, 0], &dr[0, 0],
                 &db[0, 0], &ws[0], need_dx != 0)
