# Included by _cython.pyx: normalisation layers.

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


cdef void _bn_inf_bwd(const floating* gamma, const floating* saved, const floating* dout,
                      floating* dx, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    """batchnorm_inference_backward: dx = dout * gamma * inv_std, inv_std = saved[1];
    gamma NULL when absent.  dx may alias dout."""
    cdef Py_ssize_t i, j, j0, m
    cdef const floating* inv = saved + c
    cdef const floating* dr
    cdef floating* xo
    cdef floating one = 1
    cdef floating coef[NORM_BLOCK]
    j0 = 0
    while j0 < c:
        m = min(<Py_ssize_t>NORM_BLOCK, c - j0)
        for j in range(m):
            coef[j] = inv[j0 + j] * (gamma[j0 + j] if gamma != NULL else one)
        for i in range(r):
            dr = dout + i * c + j0
            xo = dx + i * c + j0
            for j in range(m):
                xo[j] = dr[j] * coef[j]
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
