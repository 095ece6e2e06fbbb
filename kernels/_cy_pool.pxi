# Included by _cython.pyx: pooling.

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
