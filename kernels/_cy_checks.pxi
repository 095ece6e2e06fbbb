# Included by _cython.pyx: argument checks.

# Argument checks (with the GIL; they keep every C loop inside its buffers)

cdef inline uint64_t _u64(object v) except? 0xFFFFFFFFFFFFFFFF:
    """Python int -> uint64 modulo 2**64 (as the reference's ``& (2**64 - 1)``)."""
    if PyLong_Check(v):
        return PyLong_AsUnsignedLongLongMask(v)
    return <uint64_t>(int(v) & 0xFFFFFFFFFFFFFFFF)


cdef inline int _check_act(int act) except -1:
    if act < 0 or act >= N_ACTS:
        raise ValueError(f"unknown activation code {act}")
    return 0


cdef inline int _check_loss(int code) except -1:
    if code < 0 or code >= N_LOSSES:
        raise ValueError(f"unknown loss code {code}")
    return 0


cdef int _same(str what, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{what} must have shape {want}, got {got}")
    return 0


cdef int _check_opt(int code, Py_ssize_t n_params, Py_ssize_t state_rows,
                    Py_ssize_t state_cols, Py_ssize_t n_hyper, bint prefix=False) except -1:
    """``prefix``: the state may cover only the first state_cols parameters (a plan whose
    frozen layers' weights follow the trainable ones)."""
    cdef Py_ssize_t rows
    if code < 0 or code >= N_OPTS:
        raise ValueError(f"unknown optimizer code {code}")
    rows = max(1, STATE_SLOTS[code])
    if (state_cols != n_params and not (prefix and state_cols <= n_params)) or state_rows < rows:
        raise ValueError(f"state must have shape ({rows}, {n_params}) at least, got "
                         f"({state_rows}, {state_cols})")
    if n_hyper < HYPER_LEN[code]:
        raise ValueError(f"hyper needs {HYPER_LEN[code]} values for optimizer {code}, "
                         f"got {n_hyper}")
    return 0


cdef extern from *:
    """
    /* a * b for a, b >= 0; non-zero when it overflows */
    static inline int fastnn_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *r) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_mul_overflow(a, b, r);
    #else
        if (a != 0 && b > PY_SSIZE_T_MAX / a) return 1;
        *r = a * b;
        return 0;
    #endif
    }
    """
    int fastnn_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t* r) noexcept nogil


cdef inline Py_ssize_t _mul(Py_ssize_t a, Py_ssize_t b, Py_ssize_t l) except -1:
    cdef Py_ssize_t r
    if fastnn_mul_overflow(a, b, &r):
        raise ValueError(f"layer {l}: the sizes of the plan overflow ({a} * {b})")
    return r


cdef inline int _fits(Py_ssize_t l, str what, int64_t off, Py_ssize_t count, Py_ssize_t size,
                      str buf) except -1:
    """off >= 0 and [off, off + count) inside a buffer of ``size`` elements."""
    if off < 0 or off > size or count > size - off:
        raise ValueError(f"layer {l}: {what} [{off}, {off} + {count}) is not inside {buf} "
                         f"({size} elements)")
    return 0


cdef enum:
    # what a whole-network call uses beyond the forward (flags of _parse_net, _make_plan)
    NEED_GRADS = 1      # the backward: grads, gbuf at the backward rows' offsets
    NEED_STATE = 2      # the optimizer: state, params written
    NEED_LOSS = 4       # the loss: gbuf at the last row's P_DOUT_OFF
    WRITES_NONTRAIN = 8  # a training forward (BatchNormalization's moving statistics)


cdef inline tuple _group(object g, Py_ssize_t least, Py_ssize_t most, str name):
    """``g``, a tuple of ``least`` to ``most`` items (another sequence is converted)."""
    if PyTuple_Check(g) and least <= PyTuple_GET_SIZE(g) <= most:
        return <tuple>g
    return _group_slow(g, least, most, name)


cdef tuple _group_slow(object g, Py_ssize_t least, Py_ssize_t most, str name):
    if not PyTuple_Check(g):
        try:
            g = tuple(g)
        except TypeError:
            raise TypeError(f"{name} must be a tuple, got {type(g).__name__}") from None
    if PyTuple_GET_SIZE(g) < least or PyTuple_GET_SIZE(g) > most:
        want = str(least) if least == most else f"{least} to {most}"
        raise ValueError(f"{name} must be a tuple of {want} items, got {PyTuple_GET_SIZE(g)}")
    return <tuple>g


cdef inline object _item(tuple g, Py_ssize_t i):
    # g[i] of a tuple _group checked (no bounds check)
    return <object>PyTuple_GET_ITEM(g, i)


cdef int _parse_net(Net* b, tuple net, object acts, object gbuf, object acc, Py_ssize_t isz,
                    int needs) except -1:
    """Fills ``b`` from net = (params, grads, state, nontrain) and the work buffers, reading
    grads, state and gbuf only when ``needs`` says they are used."""
    cdef Py_ssize_t[2] d2
    cdef Py_ssize_t[1] d
    cdef char f = F_KIND
    b.params = _data(_item(net, 0), "params", f, isz, 1, (needs & NEED_STATE) != 0, d)
    b.n_params = d[0]
    b.nontrain = _data(_item(net, 3), "nontrain", f, isz, 1, (needs & WRITES_NONTRAIN) != 0, d)
    b.n_nontrain = d[0]
    b.acts = _data(acts, "acts", f, isz, 1, True, d)
    b.n_acts = d[0]
    b.acc = <double*>_data(acc, "acc", f, 8, 1, True, d)
    b.n_acc = d[0]
    b.grads = NULL
    b.state = NULL
    b.gbuf = NULL
    b.state_rows = b.state_cols = b.n_gbuf = 0
    if needs & NEED_GRADS:
        b.grads = _data(_item(net, 1), "grads", f, isz, 1, True, d)
        if d[0] != b.n_params:
            raise ValueError(f"grads must have {b.n_params} elements (as params), got {d[0]}")
    if needs & NEED_STATE:
        b.state = _data(_item(net, 2), "state", f, isz, 2, True, d2)
        b.state_rows, b.state_cols = d2[0], d2[1]
    if needs & (NEED_GRADS | NEED_LOSS):
        b.gbuf = _data(gbuf, "gbuf", f, isz, 1, True, d)
        b.n_gbuf = d[0]
    return 0


cdef int _check_conv_row(Py_ssize_t l, const int64_t* row, Py_ssize_t n,
                         const Net* b) except -1:
    """The geometry of a convolution or pooling row and the extents of its weights and
    saved tensors for n samples."""
    cdef Window g
    cdef Py_ssize_t pixels, k
    _window_of_row(row, n, &g)
    _check_window(f"layer {l}", &g)
    pixels = _mul(_mul(n, g.ho, l), g.wo, l)
    if row[P_KIND] == CONV2D:
        k = _mul(_mul(g.kh, g.kw, l), g.c, l)
        _fits(l, "the Conv2D kernel (W0)", row[P_W0], _mul(k, g.co, l), b.n_params, "params")
        if row[P_W1] != -1:
            _fits(l, "the Conv2D bias (W1)", row[P_W1], g.co, b.n_params, "params")
        _fits(l, "the im2col columns", row[P_SAVE_OFF], _mul(pixels, k, l), b.n_acts, "acts")
        return 0
    if g.co != g.c:
        raise ValueError(f"layer {l}: pooling keeps the channels, got {g.c} -> {g.co}")
    if row[P_KIND] == MAXPOOL2D or row[P_KIND] == GLOBAL_MAXPOOL2D:
        if _mul(g.kh, g.kw, l) > 16777216:  # positions are stored exactly in float32
            raise ValueError(f"layer {l}: a max-pooling window of {g.kh}x{g.kw} has more "
                             "than 2**24 positions")
        _fits(l, "the argmax positions", row[P_SAVE_OFF], _mul(pixels, g.c, l), b.n_acts,
              "acts")
    return 0


cdef int _check_seq_acts(str where, int64_t act, int64_t rec_act) except -1:
    for name, code in (("activation", act), ("recurrent activation", rec_act)):
        if code != LINEAR and code != RELU and code != SIGMOID and code != TANH:
            raise ValueError(f"{where}: the {name} code of a recurrent layer must be linear, "
                             f"relu, sigmoid or tanh ({LINEAR}, {RELU}, {SIGMOID}, {TANH}), "
                             f"got {code}")
    return 0


cdef int _check_seq_row(Py_ssize_t l, const int64_t* row, Py_ssize_t n,
                        const Net* b) except -1:
    """The shapes of an Embedding or recurrent row and the extents of its weights and
    workspace for n samples."""
    cdef int64_t kind = row[P_KIND], t = row[P_IN1], f = row[P_IN2], u = row[P_UNITS]
    cdef Py_ssize_t g
    if kind == EMBEDDING:
        if row[P_IN0] != 1 or row[P_IN1] != 1 or row[P_OUT0] != 1 or row[P_OUT1] != f:
            raise ValueError(f"layer {l}: an Embedding row maps (1, 1, T) ids to (1, T, E), "
                             f"got {(row[P_IN0], t, f)} -> "
                             f"{(row[P_OUT0], row[P_OUT1], row[P_OUT2])}")
        if row[P_VOCAB] < 1:
            raise ValueError(f"layer {l}: the Embedding's input_dim must be >= 1, got "
                             f"{row[P_VOCAB]}")
        _fits(l, "the embeddings (W0)", row[P_W0], _mul(row[P_VOCAB], row[P_OUT2], l),
              b.n_params, "params")
        return 0
    if (row[P_RETURN_SEQ] != 0 and row[P_RETURN_SEQ] != 1) or row[P_IN0] != 1 \
            or row[P_OUT0] != 1 or u != row[P_OUT2] \
            or row[P_OUT1] != (t if row[P_RETURN_SEQ] else 1):
        raise ValueError(f"layer {l}: a recurrent row maps (1, T, F) to (1, T, U) "
                         f"(return_sequences) or (1, 1, U) with U the units, got "
                         f"{(row[P_IN0], t, f)} -> {(row[P_OUT0], row[P_OUT1], row[P_OUT2])}, "
                         f"units {u}, return_sequences {row[P_RETURN_SEQ]}")
    _check_seq_acts(f"layer {l}", row[P_ACT], row[P_REC_ACT])
    g = _mul(_gates_of(kind), u, l)
    _fits(l, "the kernel (W0)", row[P_W0], _mul(f, g, l), b.n_params, "params")
    _fits(l, "the recurrent kernel (W1)", row[P_W1], _mul(u, g, l), b.n_params, "params")
    _fits(l, "the bias (W2)", row[P_W2], _mul(2 if kind == GRU else 1, g, l), b.n_params,
          "params")
    _fits(l, "the workspace", row[P_SAVE_OFF], _seq_size(kind, n, t, f, u, b.n_acts + 1),
          b.n_acts, "acts")
    return 0


cdef Py_ssize_t _seq_size(int64_t kind, Py_ssize_t n, Py_ssize_t t, Py_ssize_t f,
                          Py_ssize_t u, Py_ssize_t cap) except -1:
    """Elements of a recurrent workspace (rnn_layout), or ``cap`` when it is larger (no
    overflow)."""
    size = rnn_layout(int(kind), int(n), int(t), int(f), int(u))[8]
    return size if size < cap else cap


def rnn_layout(int kind, n, t, f, u):
    """Offsets of the parts of a recurrent layer's workspace (reference_rnn.rnn_layout),
    exact integers (no overflow)."""
    g = _gates_of(kind) * u
    lstm, gru = int(kind == LSTM), int(kind == GRU)
    sizes = (t * n * f, t * n * g, (t + 1) * n * u, (t + 1) * n * u * lstm,
             t * n * g * gru, n * g, n * u, n * u * lstm)
    out = [0]
    for s in sizes:
        out.append(out[len(out) - 1] + s)
    return tuple(out)


cdef int _make_plan(Plan* pl, object plan, const Net* b, Py_ssize_t n, Py_ssize_t n_x,
                    int needs) except -1:
    """Fills ``pl`` from plan = (layers, layer_f[, kinds]) for a batch x (n, n_x), after
    checking every row: kind and activation codes known, shapes positive and consistent
    (a Dense row keeps the rows per sample, other kinds keep the shape; a row reading the
    previous row's output reads as many values), and every offset and extent inside its
    buffer for n samples (gbuf only where ``needs`` uses it).  O(L)."""
    cdef tuple t = _group(plan, 2, 3, "plan")
    cdef Py_ssize_t[2] dl, df
    cdef const int64_t* rows = <const int64_t*>_data(_item(t, 0), "layers", b"i"[0], 8, 2,
                                                     False, dl)
    cdef const double* fs = <const double*>_data(_item(t, 1), "layer_f", F_KIND, 8, 2, False,
                                                 df)
    cdef Py_ssize_t L = dl[0], l, k, c, wo, in_size = 0, out_size = 0, n_in, n_out = 0
    cdef int64_t kind, prev_off = -2, prev_size = 0
    cdef const int64_t* row = rows
    if L < 1 or dl[1] != P_COLS:
        raise ValueError(f"layers must have shape (L, {P_COLS}) with L >= 1, got "
                         f"({dl[0]}, {dl[1]})")
    if df[0] != L or df[1] != F_COLS:
        raise ValueError(f"layer_f must have shape ({L}, {F_COLS}), got ({df[0]}, {df[1]})")
    for l in range(L):
        row = rows + l * P_COLS
        kind = row[P_KIND]
        if kind < 0 or kind >= N_KINDS:
            raise ValueError(f"unknown layer kind {kind} (layer {l})")
        if row[P_ACT] < 0 or row[P_ACT] >= N_ACTS:
            raise ValueError(f"unknown activation code {row[P_ACT]} (layer {l})")
        if (row[P_ACT] == GELU or row[P_ACT] == SILU) and kind != DENSE and kind != ACTIVATION:
            raise ValueError(f"layer {l}: activation code {row[P_ACT]} (gelu, silu) runs on "
                             "Dense and Activation rows only")
        for k in range(P_IN0, P_OUT2 + 1):
            if row[k] < 1:
                raise ValueError(
                    f"layer {l}: shapes must be positive, got input "
                    f"{(row[P_IN0], row[P_IN1], row[P_IN2])} and output "
                    f"{(row[P_OUT0], row[P_OUT1], row[P_OUT2])}"
                )
        c, wo = row[P_IN2], row[P_OUT2]
        in_size = _mul(_mul(row[P_IN0], row[P_IN1], l), c, l)
        out_size = _mul(_mul(row[P_OUT0], row[P_OUT1], l), wo, l)
        n_in, n_out = _mul(n, in_size, l), _mul(n, out_size, l)
        if row[P_IN_OFF] == -1:
            if in_size != n_x:
                raise ValueError(f"layer {l} reads x as {in_size} values per sample, but x "
                                 f"has {n_x}")
        else:
            _fits(l, "input", row[P_IN_OFF], n_in, b.n_acts, "acts")
            if row[P_IN_OFF] == prev_off and in_size != prev_size:
                raise ValueError(f"layer {l} reads the previous layer's output ({prev_size} "
                                 f"values per sample) as {in_size}")
        _fits(l, "output", row[P_OUT_OFF], n_out, b.n_acts, "acts")
        if kind == DENSE:
            if row[P_IN0] != row[P_OUT0] or row[P_IN1] != row[P_OUT1]:
                raise ValueError(f"layer {l}: a Dense layer keeps the leading axes of its "
                                 f"input, got {(row[P_IN0], row[P_IN1])} -> "
                                 f"{(row[P_OUT0], row[P_OUT1])}")
            _fits(l, "the Dense kernel (W0)", row[P_W0], _mul(c, wo, l), b.n_params, "params")
            if row[P_ACT] == GELU or row[P_ACT] == SILU:
                _fits(l, "the saved pre-activation", row[P_SAVE_OFF], n_out, b.n_acts, "acts")
            if row[P_W1] != -1:
                _fits(l, "the Dense bias (W1)", row[P_W1], wo, b.n_params, "params")
        elif kind >= EMBEDDING:
            _check_seq_row(l, row, n, b)
        elif kind >= CONV2D:
            _check_conv_row(l, row, n, b)
        else:
            if in_size != out_size or c != wo or row[P_IN0] != row[P_OUT0]:
                raise ValueError(f"layer {l}: the output shape must equal the input shape, "
                                 f"got {(row[P_IN0], row[P_IN1], c)} -> "
                                 f"{(row[P_OUT0], row[P_OUT1], wo)}")
            if kind == BATCHNORM:
                if row[P_W0] != -1:
                    _fits(l, "gamma (W0)", row[P_W0], c, b.n_params, "params")
                if row[P_W1] != -1:
                    _fits(l, "beta (W1)", row[P_W1], c, b.n_params, "params")
                _fits(l, "the moving mean (S0)", row[P_S0], c, b.n_nontrain, "nontrain")
                _fits(l, "the moving variance (S1)", row[P_S1], c, b.n_nontrain, "nontrain")
                _fits(l, "the saved statistics", row[P_SAVE_OFF], _mul(2, c, l), b.n_acts,
                      "acts")
                _fits(l, "the accumulators", row[P_ACC_OFF], _mul(2, c, l), b.n_acc, "acc")
            elif kind == NORMALIZATION:
                _fits(l, "the mean (S0)", row[P_S0], c, b.n_nontrain, "nontrain")
                _fits(l, "the variance (S1)", row[P_S1], c, b.n_nontrain, "nontrain")
        if (needs & NEED_GRADS) and row[P_BACKWARD] != 0:
            _fits(l, "dL/dout", row[P_DOUT_OFF], n_out, b.n_gbuf, "gbuf")
            if row[P_DX_OFF] != -1:
                _fits(l, "dL/dx", row[P_DX_OFF], n_in, b.n_gbuf, "gbuf")
        prev_off, prev_size = row[P_OUT_OFF], out_size
    if needs & NEED_LOSS:
        _fits(L - 1, "the loss gradient (dL/dout)", row[P_DOUT_OFF], n_out, b.n_gbuf, "gbuf")
    pl.rows = rows
    pl.f = fs
    pl.n_layers = L
    pl.n_out = out_size
    pl.out_off = row[P_OUT_OFF]
    pl.dz_off = row[P_DOUT_OFF]
    return 0


cdef int _check_targets(Py_ssize_t ny, Py_ssize_t ty, Py_ssize_t nsw, Py_ssize_t n,
                        Py_ssize_t c, int loss_code) except -1:
    _check_loss(loss_code)
    if ny != n or nsw != n:
        raise ValueError(f"y and sw must have {n} rows, got {ny} and {nsw}")
    if loss_code == SPARSE_SOFTMAX_CE:
        if ty < 1:
            raise ValueError("y must have at least one column (the class index)")
    elif ty != c:
        raise ValueError(f"y must have {c} columns (the outputs), got {ty}")
    return 0


cdef object _labels(object labels, Py_ssize_t n, Labels* lb):
    """Describes ``labels`` (N,) of any numeric dtype and stride; returns the array that
    must stay alive while ``lb`` is used."""
    cdef object a = np.asarray(labels)
    cdef object dt = a.dtype
    cdef Py_ssize_t itemsize
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {a.shape}")
    if not dt.isnative or dt.kind not in "if" or dt.itemsize not in (4, 8):
        a = a.astype(np.int64)  # other dtypes: converted (truncated) as the reference does
        dt = a.dtype
    itemsize = dt.itemsize
    if dt.kind == "i":
        lb.kind = LB_I64 if itemsize == 8 else LB_I32
    else:
        lb.kind = LB_F64 if itemsize == 8 else LB_F32
    # the buffer protocol gives the pointer without building __array_interface__ (~2 us);
    # the array returned keeps it valid after the view is released
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_STRIDES)
    lb.data = <const char*>view.buf
    lb.stride = view.strides[0]
    PyBuffer_Release(&view)
    return a
