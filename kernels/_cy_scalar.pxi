# Included by _cython.pyx: scalar helpers and pairwise sums.

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
