# Included by _cython.pyx: the contract's entry points.

# The contract (see reference.py for every docstring).  The entry points the layers, losses
# and optimizers call on every batch take NumPy arrays checked through the C API (_data):
# a fused memoryview signature costs about 0.7 us more per call to dispatch and acquire.

cdef char F_KIND = b"f"[0]


cdef Py_ssize_t _float_size(object a, str name) except -1:
    """The itemsize (4 or 8) of float array ``a``, which sets the call's dtype."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(<cnp.ndarray>a)
    if (<cnp.dtype>cnp.PyArray_DESCR(<cnp.ndarray>a)).kind != F_KIND or (isz != 4 and isz != 8):
        raise ValueError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return isz


def activation_forward(x, out, int act, double alpha):
    """out = act(x) elementwise (softmax: row-wise).  x, out (N, O); out may alias x."""
    cdef Py_ssize_t[2] sx, so
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    _check_act(act)
    _same("out", (so[0], so[1]), (sx[0], sx[1]))
    if isz == 4:
        with nogil:
            _act_fwd(<const float*>x_, <const float*>NULL, <float*>o_, sx[0], sx[1], act,
                     <float>alpha)
    else:
        with nogil:
            _act_fwd(<const double*>x_, <const double*>NULL, <double*>o_, sx[0], sx[1], act,
                     alpha)


def activation_backward(y, dout, dx, int act, double alpha):
    """dx = dL/dx from the output y and dout = dL/dy.  (N, O); dx may alias dout."""
    cdef Py_ssize_t[2] sy, sd, sdx
    cdef Py_ssize_t isz = _float_size(y, "y")
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    _check_act(act)
    _same("dout", (sd[0], sd[1]), (sy[0], sy[1]))
    _same("dx", (sdx[0], sdx[1]), (sy[0], sy[1]))
    if isz == 4:
        with nogil:
            _act_bwd(<const float*>y_, <const float*>d_, <float*>dx_, <float*>NULL, sy[0],
                     sy[1], act, <float>alpha)
    else:
        with nogil:
            _act_bwd(<const double*>y_, <const double*>d_, <double*>dx_, <double*>NULL, sy[0],
                     sy[1], act, alpha)


def dense_forward(x, w, b, out, int act, double alpha):
    """out = act(x @ w + b).  x (N, I), w (I, O), b (O,), out (N, O)."""
    cdef Py_ssize_t[2] sx, sw, so
    cdef Py_ssize_t[1] sb
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* w_ = _data(w, "w", F_KIND, isz, 2, False, sw)
    cdef char* b_ = _data(b, "b", F_KIND, isz, 1, False, sb)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    cdef Py_ssize_t n = sx[0], ni = sx[1], no = sw[1]
    _check_act(act)
    _same("w", (sw[0], sw[1]), (ni, no))
    if sb[0] != 0:  # an empty b: no bias
        _same("b", (sb[0],), (no,))
    else:
        b_ = NULL
    _same("out", (so[0], so[1]), (n, no))
    if isz == 4:
        with nogil:
            _dense_layer_fwd(<const float*>x_, <const float*>w_, <const float*>b_,
                             <float*>o_, n, ni, no, act, <float>alpha)
    else:
        with nogil:
            _dense_layer_fwd(<const double*>x_, <const double*>w_, <const double*>b_,
                             <double*>o_, n, ni, no, act, alpha)


def dense_backward(x, w, y, dout, dz, dx, dw, db, int act, double alpha, int need_dx):
    """Gradients of out = act(x @ w + b): dz (may alias dout), db, dw, and dx if need_dx."""
    cdef Py_ssize_t[2] sx, sw, sy, sd, sz, sdx, sdw
    cdef Py_ssize_t[1] sdb
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* w_ = _data(w, "w", F_KIND, isz, 2, False, sw)
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* z_ = _data(dz, "dz", F_KIND, isz, 2, True, sz)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    cdef char* dw_ = _data(dw, "dw", F_KIND, isz, 2, True, sdw)
    cdef char* db_ = _data(db, "db", F_KIND, isz, 1, True, sdb)
    cdef Py_ssize_t n = sx[0], ni = sx[1], no = sw[1]
    _check_act(act)
    _same("w", (sw[0], sw[1]), (ni, no))
    _same("y", (sy[0], sy[1]), (n, no))
    _same("dout", (sd[0], sd[1]), (n, no))
    _same("dz", (sz[0], sz[1]), (n, no))
    _same("dw", (sdw[0], sdw[1]), (ni, no))
    if sdb[0] != 0:  # an empty db: no bias
        _same("db", (sdb[0],), (no,))
    else:
        db_ = NULL
    if need_dx:
        _same("dx", (sdx[0], sdx[1]), (n, ni))
    if isz == 4:
        with nogil:
            _dense_bwd(<const float*>x_, <const float*>w_, <const float*>y_, <const float*>d_,
                       <float*>z_, <float*>dx_, <float*>dw_, <float*>db_, n, ni, no, act,
                       <float>alpha, need_dx != 0)
    else:
        with nogil:
            _dense_bwd(<const double*>x_, <const double*>w_, <const double*>y_,
                       <const double*>d_, <double*>z_, <double*>dx_, <double*>dw_,
                       <double*>db_, n, ni, no, act, alpha, need_dx != 0)


def _flat(a, str name):
    """A 1-D view of a C-contiguous array of any shape (never a copy)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(-1)


def any_nonfinite(a):
    """Whether ``a``, a C-contiguous, aligned, native float32 or float64 array of any shape,
    holds an inf or NaN (one vectorised pass; the package's argument checks use it)."""
    cdef Py_ssize_t isz = _float_size(a, "a")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr)):
        raise ValueError("a must be C-contiguous, aligned and in native byte order")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(arr)
    cdef char* data = cnp.PyArray_BYTES(arr)
    cdef bint bad
    if isz == 4:
        with nogil:
            bad = _any_nonfinite(<const float*>data, n)
    else:
        with nogil:
            bad = _any_nonfinite(<const double*>data, n)
    return bad


def dropout_forward(x, out, double rate, seed):
    """out = x * keep / (1 - rate) with the splitmix64 keep-mask.  x, out (N, O); may alias."""
    if x.shape != out.shape:
        raise ValueError(f"out must have shape {x.shape}, got {out.shape}")
    _dropout_flat(_flat(x, "x"), _flat(out, "out"), rate, _u64(seed))


def _dropout_flat(const floating[::1] x, floating[::1] out, double rate, uint64_t seed):
    with nogil:
        _dropout(&x[0], &out[0], x.shape[0], rate, seed, 0)


def dropout_backward(dout, dx, double rate, seed):
    """dx = dout * keep / (1 - rate), the forward's mask.  (N, O); may alias."""
    if dout.shape != dx.shape:
        raise ValueError(f"dx must have shape {dout.shape}, got {dx.shape}")
    _dropout_flat(_flat(dout, "dout"), _flat(dx, "dx"), rate, _u64(seed))


def softmax_cross_entropy(const floating[:, ::1] z, const floating[:, ::1] y,
                          const floating[::1] sw, floating[:, ::1] p, floating[:, ::1] dz):
    """Softmax + categorical cross-entropy from logits; p = softmax(z), dz = dL/dz."""
    cdef double loss
    _check_loss_args(z.shape[0], z.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     p.shape[0], p.shape[1], dz.shape[0], dz.shape[1])
    with nogil:
        loss = _softmax_ce(&z[0, 0], &y[0, 0], &sw[0], &p[0, 0], &dz[0, 0], z.shape[0],
                           z.shape[1])
    return loss


def sparse_softmax_cross_entropy(const floating[:, ::1] z, labels, const floating[::1] sw,
                                 floating[:, ::1] p, floating[:, ::1] dz):
    """Softmax + cross-entropy with class indices ``labels`` (N,).  A label outside [0, C)
    makes that row's loss and gradient NaN (nothing outside the arrays is touched)."""
    cdef Labels lb
    cdef double loss
    cdef Py_ssize_t n = z.shape[0], c = z.shape[1]
    keep = _labels(labels, n, &lb)
    _check_loss_args(n, c, n, c, sw.shape[0], p.shape[0], p.shape[1], dz.shape[0],
                     dz.shape[1])
    with nogil:
        loss = _sparse_ce(&z[0, 0], &lb, &sw[0], &p[0, 0], &dz[0, 0], n, c)
    del keep
    return loss


cdef int _check_loss_args(Py_ssize_t n, Py_ssize_t c, Py_ssize_t yn, Py_ssize_t yc,
                          Py_ssize_t swn, Py_ssize_t pn, Py_ssize_t pc, Py_ssize_t dn,
                          Py_ssize_t dc) except -1:
    _same("y", (yn, yc), (n, c))
    _same("sw", (swn,), (n,))
    if c < 1 and n > 0:
        raise ValueError("the loss needs at least one column")
    _same("p", (pn, pc), (n, c))
    _same("dz", (dn, dc), (n, c))
    return 0


def sigmoid_binary_cross_entropy(const floating[:, ::1] z, const floating[:, ::1] y,
                                 const floating[::1] sw, floating[:, ::1] p,
                                 floating[:, ::1] dz):
    """Sigmoid + binary cross-entropy from logits, stable for any |z|.  (N, C); sw (N,)."""
    cdef double loss
    _check_loss_args(z.shape[0], z.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     p.shape[0], p.shape[1], dz.shape[0], dz.shape[1])
    with nogil:
        loss = _sigmoid_bce(&z[0, 0], &y[0, 0], &sw[0], &p[0, 0], &dz[0, 0], z.shape[0],
                            z.shape[1])
    return loss


def categorical_crossentropy(const floating[:, ::1] p, const floating[:, ::1] y,
                             const floating[::1] sw, floating[:, ::1] dp):
    """Cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C); sw (N,)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _categorical_ce(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def binary_crossentropy(const floating[:, ::1] p, const floating[:, ::1] y,
                        const floating[::1] sw, floating[:, ::1] dp):
    """Binary cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _binary_ce(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def mean_squared_error(const floating[:, ::1] pred, const floating[:, ::1] y,
                       const floating[::1] sw, floating[:, ::1] dpred):
    """Mean squared error.  (N, C); sw (N,).  dpred = 2 sw (pred - y) / (N*C)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _mse(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                    pred.shape[1])
    return loss


def mean_absolute_error(const floating[:, ::1] pred, const floating[:, ::1] y,
                        const floating[::1] sw, floating[:, ::1] dpred):
    """Mean absolute error.  (N, C); sw (N,).  dpred = sw sign(pred - y) / (N*C)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _mae(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                    pred.shape[1])
    return loss


def huber(const floating[:, ::1] pred, const floating[:, ::1] y, const floating[::1] sw,
          floating[:, ::1] dpred):
    """Huber loss, delta = codes.HUBER_DELTA (see reference.huber)."""
    cdef double loss
    _check_loss_args(pred.shape[0], pred.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dpred.shape[0], dpred.shape[1], dpred.shape[0], dpred.shape[1])
    with nogil:
        loss = _huber(&pred[0, 0], &y[0, 0], &sw[0], &dpred[0, 0], pred.shape[0],
                      pred.shape[1])
    return loss


def kl_divergence(const floating[:, ::1] p, const floating[:, ::1] y, const floating[::1] sw,
                  floating[:, ::1] dp):
    """Kullback-Leibler divergence (see reference.kl_divergence)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _kld(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def poisson(const floating[:, ::1] p, const floating[:, ::1] y, const floating[::1] sw,
            floating[:, ::1] dp):
    """Poisson loss (see reference.poisson)."""
    cdef double loss
    _check_loss_args(p.shape[0], p.shape[1], y.shape[0], y.shape[1], sw.shape[0],
                     dp.shape[0], dp.shape[1], dp.shape[0], dp.shape[1])
    with nogil:
        loss = _poisson(&p[0, 0], &y[0, 0], &sw[0], &dp[0, 0], p.shape[0], p.shape[1])
    return loss


def loss_grad(out, y, sw, p, dz, int loss_code):
    """Dispatch to the loss ``loss_code``; returns the loss and writes dz = dL/dout (and the
    probabilities into p for the logit losses).  y is (N, 1) class indices when sparse."""
    cdef double loss
    cdef Py_ssize_t[2] so, sy, sp, sz
    cdef Py_ssize_t[1] ssw
    cdef Py_ssize_t isz = _float_size(out, "out")
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, False, so)
    cdef char* y_ = _data(y, "y", F_KIND, isz, 2, False, sy)
    cdef char* sw_ = _data(sw, "sw", F_KIND, isz, 1, False, ssw)
    cdef char* p_ = _data(p, "p", F_KIND, isz, 2, True, sp)
    cdef char* z_ = _data(dz, "dz", F_KIND, isz, 2, True, sz)
    cdef Py_ssize_t n = so[0], c = so[1]
    _check_targets(sy[0], sy[1], ssw[0], n, c, loss_code)
    _same("dz", (sz[0], sz[1]), (n, c))
    if _fused_loss(loss_code):
        _same("p", (sp[0], sp[1]), (n, c))
    if c < 1 and n > 0:
        raise ValueError("out must have at least one column")
    if isz == 4:
        with nogil:
            loss = _loss(<const float*>o_, <const float*>y_, sy[1], <const float*>sw_,
                         <float*>p_, <float*>z_, n, c, loss_code)
    else:
        with nogil:
            loss = _loss(<const double*>o_, <const double*>y_, sy[1], <const double*>sw_,
                         <double*>p_, <double*>z_, n, c, loss_code)
    return loss


def l1l2_penalty(w, dw, double l1, double l2):
    """Adds l1*sign(w) + 2*l2*w to dw and returns l1*sum|w| + l2*sum w^2.  Any shape."""
    if w.shape != dw.shape:
        raise ValueError(f"dw must have shape {w.shape}, got {dw.shape}")
    return _l1l2_flat(_flat(w, "w"), _flat(dw, "dw"), l1, l2)


def _l1l2_flat(const floating[::1] w, floating[::1] dw, double l1, double l2):
    cdef double r
    with nogil:
        r = _l1l2(&w[0], &dw[0], w.shape[0], l1, l2)
    return r


cdef int _same_len(str name, Py_ssize_t got, Py_ssize_t want) except -1:
    if got != want:
        raise ValueError(f"{name} must have {want} elements, got {got}")
    return 0


def sgd_update(floating[::1] p, const floating[::1] g, double lr):
    """p -= lr * g."""
    _same_len("g", g.shape[0], p.shape[0])
    with nogil:
        _sgd(&p[0], &g[0], p.shape[0], lr)


def momentum_update(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
                    double momentum, nesterov):
    """PyTorch SGD with momentum (and Nesterov when ``nesterov`` is true)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("buf", buf.shape[0], p.shape[0])
    cdef bint nest = bool(nesterov)
    with nogil:
        _momentum(&p[0], &g[0], &buf[0], p.shape[0], lr, momentum, nest)


def adagrad_update(floating[::1] p, const floating[::1] g, floating[::1] acc, double lr,
                   double epsilon):
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("acc", acc.shape[0], p.shape[0])
    with nogil:
        _adagrad(&p[0], &g[0], &acc[0], p.shape[0], lr, epsilon)


def rmsprop_update(floating[::1] p, const floating[::1] g, floating[::1] sq, double lr,
                   double rho, double epsilon):
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("sq", sq.shape[0], p.shape[0])
    with nogil:
        _rmsprop(&p[0], &g[0], &sq[0], p.shape[0], lr, rho, epsilon)


def adam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                double lr, double beta_1, double beta_2, double epsilon, double weight_decay,
                int64_t step):
    """Adam / AdamW (PyTorch's formulas), ``step`` = t >= 1."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("m", m.shape[0], p.shape[0])
    _same_len("v", v.shape[0], p.shape[0])
    with nogil:
        _adam(&p[0], &g[0], &m[0], &v[0], p.shape[0], lr, beta_1, beta_2, epsilon,
              weight_decay, step)


def nadam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                 double lr, double beta_1, double beta_2, double epsilon, int64_t step):
    """Nadam, Keras 3's formula, ``step`` = t >= 1 (see reference.nadam_update)."""
    _same_len("g", g.shape[0], p.shape[0])
    _same_len("m", m.shape[0], p.shape[0])
    _same_len("v", v.shape[0], p.shape[0])
    with nogil:
        _nadam(&p[0], &g[0], &m[0], &v[0], p.shape[0], lr, beta_1, beta_2, epsilon, step)


def clip_gradients(grads, layers, int opt_code, hyper):
    """Keras's gradient clipping of grads (P,) in place by hyper's clip entries (see
    reference.clip_gradients); ``layers`` is the plan's int64 table (its weight offsets
    delimit the weights for clipnorm)."""
    cdef Py_ssize_t[1] sg, sh
    cdef Py_ssize_t[2] dl
    cdef Plan pl
    cdef Clip clip
    cdef Py_ssize_t isz = _float_size(grads, "grads")
    cdef char* g_ = _data(grads, "grads", F_KIND, isz, 1, True, sg)
    cdef const double* h_ = <const double*>_data(hyper, "hyper", F_KIND, 8, 1, False, sh)
    pl.rows = <const int64_t*>_data(layers, "layers", b"i"[0], 8, 2, False, dl)
    if dl[1] != P_COLS:
        raise ValueError(f"layers must have shape (L, {P_COLS}), got ({dl[0]}, {dl[1]})")
    if opt_code < 0 or opt_code >= N_OPTS:
        raise ValueError(f"unknown optimizer code {opt_code}")
    pl.n_layers = dl[0]
    clip = _clip_of(opt_code, h_, sh[0])
    if isz == 4:
        with nogil:
            _clip_grads(&pl, <float*>g_, sg[0], &clip)
    else:
        with nogil:
            _clip_grads(&pl, <double*>g_, sg[0], &clip)


def optimizer_update(params, grads, state, int opt_code, hyper, int64_t step):
    """One optimizer step over the flat buffers; state (S, P); hyper as in ``codes``."""
    cdef Py_ssize_t[2] ss
    cdef Py_ssize_t[1] sp, sg, sh
    cdef Py_ssize_t isz = _float_size(params, "params")
    cdef char* p_ = _data(params, "params", F_KIND, isz, 1, True, sp)
    cdef char* g_ = _data(grads, "grads", F_KIND, isz, 1, False, sg)
    cdef char* s_ = _data(state, "state", F_KIND, isz, 2, True, ss)
    cdef const double* h_ = <const double*>_data(hyper, "hyper", F_KIND, 8, 1, False, sh)
    _same_len("grads", sg[0], sp[0])
    _check_opt(opt_code, sp[0], ss[0], ss[1], sh[0])
    cdef double wd = _clip_of(opt_code, h_, sh[0]).weight_decay
    if isz == 4:
        with nogil:
            _opt(<float*>p_, <const float*>g_, <float*>s_, sp[0], opt_code, h_, step, wd)
    else:
        with nogil:
            _opt(<double*>p_, <const double*>g_, <double*>s_, sp[0], opt_code, h_, step, wd)


cdef char* _weight(object a, str name, Py_ssize_t isz, Py_ssize_t c,
                   bint writeable) except? NULL:
    """The data of an optional weight (C,), or NULL when it is empty (absent)."""
    cdef Py_ssize_t[1] d
    cdef char* p = _data(a, name, F_KIND, isz, 1, writeable, d)
    if d[0] == 0:
        return NULL
    if d[0] != c:
        raise ValueError(f"{name} must have shape ({c},) or (0,), got ({d[0]},)")
    return p


cdef int _same2(str name, const Py_ssize_t* got, Py_ssize_t r, Py_ssize_t c) except -1:
    if got[0] != r or got[1] != c:
        raise ValueError(f"{name} must have shape ({r}, {c}), got ({got[0]}, {got[1]})")
    return 0


def batchnorm_forward(x, gamma, beta, moving_mean, moving_var, saved, out, acc, int training,
                      double momentum, double epsilon):
    """Batch normalisation of each column of x (R, C) (Keras semantics).  gamma, beta (C,)
    or empty (absent); moving_mean, moving_var (C,) (updated when training); saved (2, C)
    receives [mean, inv_std]; out (R, C) may alias x; acc (2, C) float64 scratch."""
    cdef Py_ssize_t[2] sx, ss, so, sa
    cdef Py_ssize_t[1] smm, smv
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef Py_ssize_t r = sx[0], c = sx[1]
    cdef char* g_ = _weight(gamma, "gamma", isz, c, False)
    cdef char* b_ = _weight(beta, "beta", isz, c, False)
    cdef char* mm_ = _data(moving_mean, "moving_mean", F_KIND, isz, 1, training != 0, smm)
    cdef char* mv_ = _data(moving_var, "moving_var", F_KIND, isz, 1, training != 0, smv)
    cdef char* s_ = _data(saved, "saved", F_KIND, isz, 2, True, ss)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    cdef double* a_ = <double*>_data(acc, "acc", F_KIND, 8, 2, True, sa)
    _same_len("moving_mean", smm[0], c)
    _same_len("moving_var", smv[0], c)
    _same2("saved", ss, 2, c)
    _same2("out", so, r, c)
    _same2("acc", sa, 2, c)
    if isz == 4:
        with nogil:
            _bn_fwd(<const float*>x_, <const float*>g_, <const float*>b_, <float*>mm_,
                    <float*>mv_, <float*>s_, <float*>o_, a_, r, c, training != 0, momentum,
                    epsilon)
    else:
        with nogil:
            _bn_fwd(<const double*>x_, <const double*>g_, <const double*>b_, <double*>mm_,
                    <double*>mv_, <double*>s_, <double*>o_, a_, r, c, training != 0, momentum,
                    epsilon)


def batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, int need_dx):
    """Gradients of batchnorm_forward in training from saved = [mean, inv_std]: dbeta,
    dgamma (when not empty) and dx (when ``need_dx``; may alias dout)."""
    cdef Py_ssize_t[2] sx, ss, sd, sdx, sa
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef Py_ssize_t r = sx[0], c = sx[1]
    cdef char* g_ = _weight(gamma, "gamma", isz, c, False)
    cdef char* s_ = _data(saved, "saved", F_KIND, isz, 2, False, ss)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    cdef char* dg_ = _weight(dgamma, "dgamma", isz, c, True)
    cdef char* db_ = _weight(dbeta, "dbeta", isz, c, True)
    cdef double* a_ = <double*>_data(acc, "acc", F_KIND, 8, 2, True, sa)
    _same2("saved", ss, 2, c)
    _same2("dout", sd, r, c)
    _same2("acc", sa, 2, c)
    if need_dx:
        _same2("dx", sdx, r, c)
    if isz == 4:
        with nogil:
            _bn_bwd(<const float*>x_, <const float*>g_, <const float*>s_, <const float*>d_,
                    <float*>dx_, <float*>dg_, <float*>db_, a_, r, c, need_dx != 0)
    else:
        with nogil:
            _bn_bwd(<const double*>x_, <const double*>g_, <const double*>s_,
                    <const double*>d_, <double*>dx_, <double*>dg_, <double*>db_, a_, r, c,
                    need_dx != 0)


def batchnorm_inference_backward(gamma, saved, dout, dx):
    """dL/dx of batchnorm_forward in inference mode from saved = [mean, inv_std]: dx =
    dout * gamma * inv_std.  gamma (C,) or empty (absent); dout, dx (R, C) (may alias)."""
    cdef Py_ssize_t[2] ss, sd, sdx
    cdef Py_ssize_t isz = _float_size(dout, "dout")
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef Py_ssize_t r = sd[0], c = sd[1]
    cdef char* g_ = _weight(gamma, "gamma", isz, c, False)
    cdef char* s_ = _data(saved, "saved", F_KIND, isz, 2, False, ss)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    _same2("saved", ss, 2, c)
    _same2("dx", sdx, r, c)
    if isz == 4:
        with nogil:
            _bn_inf_bwd(<const float*>g_, <const float*>s_, <const float*>d_, <float*>dx_, r,
                        c)
    else:
        with nogil:
            _bn_inf_bwd(<const double*>g_, <const double*>s_, <const double*>d_,
                        <double*>dx_, r, c)


def normalization_forward(x, mean, variance, out):
    """out = (x - mean) / max(sqrt(variance), NORM_EPS) per column.  x, out (R, C) (may
    alias); mean, variance (C,)."""
    cdef Py_ssize_t[2] sx, so
    cdef Py_ssize_t[1] sm, sv
    cdef Py_ssize_t isz = _float_size(x, "x")
    cdef char* x_ = _data(x, "x", F_KIND, isz, 2, False, sx)
    cdef char* m_ = _data(mean, "mean", F_KIND, isz, 1, False, sm)
    cdef char* v_ = _data(variance, "variance", F_KIND, isz, 1, False, sv)
    cdef char* o_ = _data(out, "out", F_KIND, isz, 2, True, so)
    _same_len("mean", sm[0], sx[1])
    _same_len("variance", sv[0], sx[1])
    _same2("out", so, sx[0], sx[1])
    if isz == 4:
        with nogil:
            _norm(<const float*>x_, <const float*>m_, <const float*>v_, <float*>o_, sx[0],
                  sx[1])
    else:
        with nogil:
            _norm(<const double*>x_, <const double*>m_, <const double*>v_, <double*>o_, sx[0],
                  sx[1])


def normalization_backward(variance, dout, dx):
    """dx = dout / max(sqrt(variance), NORM_EPS).  dout, dx (R, C) (may alias)."""
    cdef Py_ssize_t[2] sd, sdx
    cdef Py_ssize_t[1] sv
    cdef Py_ssize_t isz = _float_size(dout, "dout")
    cdef char* v_ = _data(variance, "variance", F_KIND, isz, 1, False, sv)
    cdef char* d_ = _data(dout, "dout", F_KIND, isz, 2, False, sd)
    cdef char* dx_ = _data(dx, "dx", F_KIND, isz, 2, True, sdx)
    _same_len("variance", sv[0], sd[1])
    _same2("dx", sdx, sd[0], sd[1])
    if isz == 4:
        with nogil:
            _norm(<const float*>d_, <const float*>NULL, <const float*>v_, <float*>dx_, sd[0],
                  sd[1])
    else:
        with nogil:
            _norm(<const double*>d_, <const double*>NULL, <const double*>v_, <double*>dx_,
                  sd[0], sd[1])
