# Included by _cython.pyx: the whole-network entry points (a step, an epoch).

# The whole-network entry points take their arguments in groups (tuples, unpacked here
# through the C API): plan = (layers, layer_f, kinds) (kinds is for Numba: ignored),
# net = (params, grads, state, nontrain), work = (acts, gbuf, acc), batch = (x, y, sw),
# loss = (loss_code, logits_out, metrics, thresholds), opt = (opt_code, hyper, lrs, step,
# seed); see reference.py.

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
