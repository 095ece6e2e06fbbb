# Included by _cython.pyx: losses.

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
