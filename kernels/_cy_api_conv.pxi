# Included by _cython.pyx: the convolution and pooling entry points and their geometry checks.

# Convolution and pooling: geometry checks (shared by the kernels and _make_plan)

cdef int _check_window(str where, const Window* g) except -1:
    """Every size positive, padding inside the window, and every window with at least one
    position inside the image (so that no loop leaves its arrays and no count is 0)."""
    if min(g.n, g.h, g.w, g.c, g.ho, g.wo, g.co) < 1:
        raise ValueError(f"{where}: shapes must be positive, got input "
                         f"{(g.n, g.h, g.w, g.c)} and output {(g.n, g.ho, g.wo, g.co)}")
    if min(g.kh, g.kw, g.sh, g.sw) < 1:
        raise ValueError(f"{where}: window {(g.kh, g.kw)} and strides {(g.sh, g.sw)} must be "
                         f">= 1")
    if not (0 <= g.pt < g.kh and 0 <= g.pl < g.kw):
        raise ValueError(f"{where}: padding {(g.pt, g.pl)} must be >= 0 and smaller than the "
                         f"window {(g.kh, g.kw)}")
    if (g.ho > 1 + (g.h - 1 + g.pt) // g.sh) or (g.wo > 1 + (g.w - 1 + g.pl) // g.sw):
        raise ValueError(f"{where}: an output of {g.ho}x{g.wo} with window {(g.kh, g.kw)}, "
                         f"strides {(g.sh, g.sw)} and padding {(g.pt, g.pl)} has windows "
                         f"outside the {g.h}x{g.w} input")
    return 0


cdef inline void _window_of_row(const int64_t* row, Py_ssize_t n, Window* g) noexcept nogil:
    g.n, g.h, g.w, g.c = n, row[P_IN0], row[P_IN1], row[P_IN2]
    g.ho, g.wo, g.co = row[P_OUT0], row[P_OUT1], row[P_OUT2]
    g.kh, g.kw, g.sh, g.sw = row[P_ARG0], row[P_ARG1], row[P_ARG2], row[P_ARG3]
    g.pt, g.pl = row[P_ARG4], row[P_ARG5]


cdef Window _window(tuple x_shape, tuple out_shape, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    cdef Window g
    g.n, g.h, g.w, g.c = x_shape
    _, g.ho, g.wo, g.co = out_shape
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = kh, kw, sh, sw, pt, pl
    return g


cdef int _check_pool(str where, const Window* g, tuple x_shape, tuple out_shape) except -1:
    _check_window(where, g)
    if out_shape[0] != g.n or g.co != g.c:
        raise ValueError(f"{where}: out must have {g.n} samples of {g.c} channels (as x "
                         f"{x_shape}), got {out_shape}")
    return 0


cdef tuple _shape4(const Py_ssize_t* s):
    return (s[0], s[1], s[2], s[3])


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, floating[:, ::1] cols, floating[:, :, :, ::1] out,
                   int act, double alpha, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pad_top,
                   Py_ssize_t pad_left):
    """out (N, HO, WO, F) = act(conv(x, w) + b); cols (N*HO*WO, KH*KW*C) receives im2col(x)."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), w.shape[0], w.shape[1], sh,
                            sw, pad_top, pad_left)
    _check_act(act)
    _check_conv(&g, _shape4(x.shape), _shape4(w.shape), b.shape[0], cols.shape[0],
                cols.shape[1], out.shape[0])
    with nogil:
        _conv_fwd(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &b[0] if b.shape[0] else NULL, &cols[0, 0],
                  &out[0, 0, 0, 0], &g, act, <floating>alpha)


cdef int _check_conv(const Window* g, tuple x_shape, tuple w_shape, Py_ssize_t nb,
                     Py_ssize_t cols_rows, Py_ssize_t cols_k, Py_ssize_t out_n) except -1:
    _check_window("conv2d", g)
    if w_shape[2] != g.c or w_shape[3] != g.co:
        raise ValueError(f"w must have shape (KH, KW, {g.c}, {g.co}) (x {x_shape}, out "
                         f"channels {g.co}), got {w_shape}")
    if nb != 0 and nb != g.co:
        raise ValueError(f"b must have {g.co} elements (or none), got {nb}")
    if out_n != g.n:
        raise ValueError(f"out must have {g.n} samples (as x), got {out_n}")
    _same("cols", (cols_rows, cols_k), (g.n * g.ho * g.wo, g.kh * g.kw * g.c))
    return 0


def conv2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[:, :, :, ::1] y, const floating[:, :, :, ::1] dout,
                    floating[:, ::1] cols, floating[:, :, :, ::1] dz, floating[:, :, :, ::1] dx,
                    floating[:, :, :, ::1] dw, floating[::1] db, int act, double alpha,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left,
                    int need_dx):
    """Gradients of conv2d_forward from the forward's cols (overwritten by dz @ w.T when
    ``need_dx``): dz (may alias dout), db (when not empty), dw, dx."""
    cdef Window g = _window(_shape4(x.shape), _shape4(y.shape), w.shape[0], w.shape[1], sh,
                            sw, pad_top, pad_left)
    _check_act(act)
    _check_conv(&g, _shape4(x.shape), _shape4(w.shape), db.shape[0], cols.shape[0],
                cols.shape[1], y.shape[0])
    _same("dout", _shape4(dout.shape), _shape4(y.shape))
    _same("dz", _shape4(dz.shape), _shape4(y.shape))
    _same("dx", _shape4(dx.shape), _shape4(x.shape))
    _same("dw", _shape4(dw.shape), _shape4(w.shape))
    with nogil:
        _conv_bwd(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &y[0, 0, 0, 0], &dout[0, 0, 0, 0],
                  &cols[0, 0], &dz[0, 0, 0, 0], &dx[0, 0, 0, 0], &dw[0, 0, 0, 0],
                  &db[0] if db.shape[0] else NULL, &g, act, <floating>alpha, need_dx != 0)


def maxpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] argmax,
                      floating[:, :, :, ::1] out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left):
    """out = the maximum of each window; argmax receives its position ky*KW + kx."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("maxpool2d", &g, _shape4(x.shape), _shape4(out.shape))
    _same("argmax", _shape4(argmax.shape), _shape4(out.shape))
    with nogil:
        _maxpool_fwd(&x[0, 0, 0, 0], &argmax[0, 0, 0, 0], &out[0, 0, 0, 0], &g)


def maxpool2d_backward(const floating[:, :, :, ::1] argmax, const floating[:, :, :, ::1] dout,
                       floating[:, :, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                       Py_ssize_t sw, Py_ssize_t pad_top, Py_ssize_t pad_left):
    """dx = dout summed into each window's maximum."""
    cdef Window g = _window(_shape4(dx.shape), _shape4(dout.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("maxpool2d", &g, _shape4(dx.shape), _shape4(dout.shape))
    _same("argmax", _shape4(argmax.shape), _shape4(dout.shape))
    with nogil:
        _maxpool_bwd(&argmax[0, 0, 0, 0], &dout[0, 0, 0, 0], &dx[0, 0, 0, 0], &g)


def avgpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pad_top, Py_ssize_t pad_left):
    """out = the mean of each window over its positions inside the image."""
    cdef Window g = _window(_shape4(x.shape), _shape4(out.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("avgpool2d", &g, _shape4(x.shape), _shape4(out.shape))
    with nogil:
        _avgpool(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &g, True)


def avgpool2d_backward(const floating[:, :, :, ::1] dout, floating[:, :, :, ::1] dx,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pad_top, Py_ssize_t pad_left):
    """dx = each window's dout / count spread over its positions inside the image."""
    cdef Window g = _window(_shape4(dx.shape), _shape4(dout.shape), kh, kw, sh, sw, pad_top,
                            pad_left)
    _check_pool("avgpool2d", &g, _shape4(dx.shape), _shape4(dout.shape))
    with nogil:
        _avgpool(&dout[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, False)
