# Included by _cython.pyx: the layer plan, the step and the epoch.

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
    elif kind == BATCHNORM and row[P_ARG0] != 0:  # frozen: inference mode
        _bn_inf_bwd(_at(params, row[P_W0]), acts + row[P_SAVE_OFF], g, dx, r, w)
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
    double weight_decay  # hyper's optional decay entry (codes.H_WEIGHT_DECAY; 0: off)


cdef Clip _clip_of(int opt_code, const double* hyper, Py_ssize_t n_hyper) noexcept:
    """The clipping hyper's clip entries ask for (codes.H_*; opt_code already checked)."""
    cdef Clip c
    cdef Py_ssize_t base = HYPER_LEN[opt_code]
    c.mode, c.limit, c.weight_decay = CLIP_NONE, 0.0, 0.0
    if n_hyper > base + 3 and opt_code != ADAM and opt_code != AMSGRAD:
        c.weight_decay = hyper[base + 3]
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
             opt_code, hyper, step, clip.weight_decay)  # the trainable prefix
    return loss


cdef double _eval(const Plan* pl, const Net* b, const floating* x, const floating* y,
                  Py_ssize_t ty, const floating* sw, Py_ssize_t n, int loss_code,
                  bint logits_out) noexcept nogil:
    cdef double loss
    _forward(pl, b, x, n, False, 0, 0, 0)
    loss = _stack_loss(pl, b, y, ty, sw, n, loss_code, logits_out)
    return loss + _penalty(pl, <const floating*>b.params)


cdef inline Py_ssize_t _bucket(double p, Py_ssize_t k) noexcept nogil:
    """The number of Keras's AUC thresholds (-eps, j / (k - 1), 1 + eps) below p clipped to
    [0, 1] (reference._bucket); 0 for NaN."""
    cdef double q
    cdef Py_ssize_t inner
    if p != p:
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
