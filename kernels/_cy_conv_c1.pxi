# Included by _cython.pyx: the direct convolution of one input channel.

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
    cdef const floating* xp
    cdef floating* t = cols + (g.ho + g.kh - 1) * wp
    cdef floating* o
    for b in range(g.n):
        xp = _cv_padded(x + b * g.h * g.w, cols, g)
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
    cdef const floating* xp
    cdef floating* d = cols + (g.ho + g.kh - 1) * wp
    cdef const floating* dzb
    memset(dw, 0, g.kh * g.kw * F * sizeof(floating))
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    # the zeros between the rows, once: every image writes the same other entries
    memset(d, 0, F * plane * sizeof(floating))
    for b in range(g.n):
        xp = _cv_padded(x + b * g.h * g.w, cols, g)
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
