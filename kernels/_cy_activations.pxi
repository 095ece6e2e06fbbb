# Included by _cython.pyx: activations.

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
