# Included by _cython.pyx: the Dense layer.

# Dense layer

cdef void _dense_fwd(const floating* x, const floating* w, const floating* b, floating* out,
                     Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                     floating alpha) noexcept nogil:
    # out^T (no, n) = w^T (no, ni) x^T (ni, n) in column-major terms
    _gemm(c'N', c'N', no, n, ni, w, no, x, ni, out, no)
    _act_fwd(out, b, out, n, no, act, alpha)


# OpenBLAS (SkylakeX) takes its small-matrix kernel, which skips packing the operands, when
# m n k <= SMALL_GEMM; a Dense layer's GEMMs above that but made of blocks below it run faster
# in those blocks (1 thread, float32, 784 inputs, batch 64): x w 256 outputs in blocks of 4
# rows 270 -> 230 us, 128 outputs in blocks of 8 143 -> 115 us; dw in blocks of 49 input rows
# (256 outputs) 262 -> 235 us, of 98 (128 outputs) 138 -> 118 us.  Blocks of fewer rows than
# these minimums are not used (the blocks are then n itself: one GEMM).
cdef Py_ssize_t DENSE_MIN_ROWS = 4
cdef Py_ssize_t DENSE_MIN_INPUTS = 16


cdef void _dense_xw(const floating* x, const floating* w, floating* out, Py_ssize_t n,
                    Py_ssize_t ni, Py_ssize_t no) noexcept nogil:
    """out (n, no) = x (n, ni) w (ni, no) in blocks of rows small enough for the small-matrix
    kernel (_small_block, at least DENSE_MIN_ROWS rows)."""
    cdef Py_ssize_t rows = _small_block(n, <double>no * ni, DENSE_MIN_ROWS), i0 = 0
    while i0 < n:
        # out^T (no, rows) = w^T (no, ni) x^T (ni, rows) in column-major terms
        _gemm(c'N', c'N', no, min(rows, n - i0), ni, w, no, x + i0 * ni, ni, out + i0 * no,
              no)
        i0 += rows


cdef void _dense_dw(const floating* x, const floating* dz, floating* dw, Py_ssize_t n,
                    Py_ssize_t ni, Py_ssize_t no) noexcept nogil:
    """dw (ni, no) = x^T (ni, n) dz (n, no) in blocks of its rows small enough for the
    small-matrix kernel (_small_block, at least DENSE_MIN_INPUTS rows)."""
    cdef Py_ssize_t rows = _small_block(ni, <double>no * n, DENSE_MIN_INPUTS), i0 = 0
    while i0 < ni:
        # dw^T (no, rows) = dz^T (no, n) x[:, i0:i0 + rows] (n, rows) in column-major terms
        _gemm(c'N', c'T', no, min(rows, ni - i0), n, dz, no, x + i0, ni, dw + i0 * no, no)
        i0 += rows


cdef void _dense_layer_fwd(const floating* x, const floating* w, const floating* b,
                           floating* out, Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                           floating alpha) noexcept nogil:
    """The Dense layer: _dense_fwd with the GEMM in small-matrix blocks (_dense_xw)."""
    _dense_xw(x, w, out, n, ni, no)
    _act_fwd(out, b, out, n, no, act, alpha)


cdef void _dense_bwd(const floating* x, const floating* w, const floating* y,
                     const floating* dout, floating* dz, floating* dx, floating* dw,
                     floating* db, Py_ssize_t n, Py_ssize_t ni, Py_ssize_t no, int act,
                     floating alpha, bint need_dx) noexcept nogil:
    _act_bwd(y, dout, dz, db, n, no, act, alpha)
    _dense_dw(x, dz, dw, n, ni, no)
    if need_dx:
        # dx^T (ni, n) = w (ni, no) dz^T (no, n)
        _gemm(c'T', c'N', ni, n, no, w, no, dz, no, dx, ni)
