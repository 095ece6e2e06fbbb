# Included by _cython.pyx: the sequence kinds.

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
