# Included by _cython.pyx: the sequence entry points.

# Sequence kinds (see reference_rnn)

cdef object _ids_array(object ids, Py_ssize_t v):
    """``ids`` as a C-contiguous int32/int64 (N, T) array with every id in [0, v)."""
    cdef object a = np.asarray(ids)
    if a.dtype != np.int32 and a.dtype != np.int64:
        raise TypeError(f"ids must be an int32 or int64 array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"ids must be 2-D (N, T), got shape {a.shape}")
    a = np.ascontiguousarray(a)
    if a.size and (a.min() < 0 or a.max() >= v):
        raise ValueError(f"ids must be in [0, {v}) (the rows of w), got ids in "
                         f"[{a.min()}, {a.max()}] (largest id {a.max()})")
    return a


def embedding_forward(ids, const floating[:, ::1] w, floating[:, ::1] out):
    """out[n * T + t] = w[ids[n, t]]: ids (N, T) int32/int64 in [0, V); w (V, E); out
    (N*T, E)."""
    cdef object a = _ids_array(ids, w.shape[0])
    cdef Py_ssize_t count = a.size
    cdef const void* p = <const void*>cnp.PyArray_DATA(a)
    cdef bint wide = a.dtype.itemsize == 8
    _same("out", (out.shape[0], out.shape[1]), (count, w.shape[1]))
    with nogil:
        _embedding_fwd(p, wide, &w[0, 0], &out[0, 0], count, w.shape[0], w.shape[1])


def embedding_backward(ids, const floating[:, ::1] dout, floating[:, ::1] dw):
    """dw = the sum of the dout rows of each id (zero for ids absent): ids (N, T); dout
    (N*T, E); dw (V, E)."""
    cdef object a = _ids_array(ids, dw.shape[0])
    cdef Py_ssize_t count = a.size
    cdef const void* p = <const void*>cnp.PyArray_DATA(a)
    cdef bint wide = a.dtype.itemsize == 8
    _same("dout", (dout.shape[0], dout.shape[1]), (count, dw.shape[1]))
    with nogil:
        _embedding_bwd(p, wide, &dout[0, 0], &dw[0, 0], count, dw.shape[0], dw.shape[1])


cdef tuple _dims(const Py_ssize_t* shape, int ndim):
    return tuple([shape[k] for k in range(ndim)])


cdef int _check_rnn(Seq* q, int kind, tuple x_shape, tuple w_shape, tuple r_shape,
                    tuple b_shape, tuple out_shape, Py_ssize_t ws_size, int act, int rec_act,
                    int return_seq) except -1:
    """Fills q from the arrays' shapes after checking them against each other."""
    if kind != SIMPLE_RNN and kind != LSTM and kind != GRU:
        raise ValueError(f"kind must be SIMPLE_RNN, LSTM or GRU ({SIMPLE_RNN}, {LSTM}, "
                         f"{GRU}), got {kind}")
    _check_seq_acts("rnn", act, rec_act)
    n, t, f = x_shape
    u = r_shape[0]
    if min(n, t, f, u) < 1:
        raise ValueError(f"x (N, T, F) and r (U, G) must have positive sizes, got {x_shape} "
                         f"and {r_shape}")
    g = _gates_of(kind) * u
    _same("w", w_shape, (f, g))
    _same("r", r_shape, (u, g))
    _same("b", b_shape, (2 if kind == GRU else 1, g))
    _same("out", out_shape, (n, t if return_seq else 1, u))
    need = rnn_layout(kind, n, t, f, u)[8]
    if ws_size < need:
        raise ValueError(f"ws must have at least {need} elements (rnn_layout), got {ws_size}")
    _seq_init(q, kind, n, t, f, u, act, rec_act, return_seq != 0)
    return 0


def rnn_forward(int kind, const floating[:, :, ::1] x, const floating[:, ::1] w,
                const floating[:, ::1] r, const floating[:, ::1] b, floating[:, :, ::1] out,
                floating[::1] ws, int act, int rec_act, int return_seq):
    """A SimpleRNN / LSTM / GRU (``kind``) over x (N, T, F) from zero states
    (reference_rnn.rnn_forward); ws receives what the backward reads."""
    cdef Seq q
    _check_rnn(&q, kind, _dims(x.shape, 3), _dims(w.shape, 2), _dims(r.shape, 2),
               _dims(b.shape, 2), _dims(out.shape, 3), ws.shape[0], act, rec_act, return_seq)
    with nogil:
        _rnn_fwd(&q, &x[0, 0, 0], &w[0, 0], &r[0, 0], &b[0, 0], &out[0, 0, 0], &ws[0])


def rnn_backward(int kind, const floating[:, :, ::1] x, const floating[:, ::1] w,
                 const floating[:, ::1] r, const floating[:, :, ::1] dout,
                 floating[:, :, ::1] dx, floating[:, ::1] dw, floating[:, ::1] dr,
                 floating[:, ::1] db, floating[::1] ws, int act, int rec_act, int return_seq,
                 int need_dx):
    """Gradients of rnn_forward (after it, with the same ws; reference_rnn.rnn_backward):
    dw, dr, db and, when ``need_dx``, dx."""
    cdef Seq q
    _check_rnn(&q, kind, _dims(x.shape, 3), _dims(dw.shape, 2), _dims(dr.shape, 2),
               _dims(db.shape, 2), _dims(dout.shape, 3), ws.shape[0], act, rec_act,
               return_seq)
    _same("w", _dims(w.shape, 2), _dims(dw.shape, 2))
    _same("r", _dims(r.shape, 2), _dims(dr.shape, 2))
    _same("dx", _dims(dx.shape, 3), _dims(x.shape, 3))
    with nogil:
        _rnn_bwd(&q, &w[0, 0], &r[0, 0], &dout[0, 0, 0], &dx[0, 0, 0], &dw[0, 0], &dr[0, 0],
                 &db[0, 0], &ws[0], need_dx != 0)
