# Included by _cython.pyx: the direct convolution over the filters.

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
