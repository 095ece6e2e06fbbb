# Included by _cython.pyx: convolution through im2col and GEMM.

# Convolution and pooling on NHWC images (see reference).  A Window holds the geometry of
# one call; _check_window (and _make_plan) settle that every window has at least one
# position inside the image, so no loop below reads or writes outside its arrays.

cdef struct Window:
    Py_ssize_t n, h, w, c, ho, wo, co, kh, kw, sh, sw, pt, pl


cdef inline void _span(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t window,
                       Py_ssize_t size, Py_ssize_t* first, Py_ssize_t* end) noexcept nogil:
    # the window positions of output o that fall inside an axis of ``size``
    cdef Py_ssize_t start = o * stride - pad
    first[0] = -start if start < 0 else 0
    end[0] = window if size - start > window else size - start


cdef const floating* _cv_padded(const floating* x, floating* xp, const Window* g) noexcept nogil:
    # one image x (H, W, C), zero-padded into xp (HO+KH-1, WP, C) with x at row pt, column
    # pl, for the direct loops at stride 1; x itself where it is that grid already (valid
    # padding)
    cdef Py_ssize_t r, iy, wp = g.wo + g.kw - 1, C = g.c
    cdef Py_ssize_t lo = g.pl, hi = g.pl + g.w if g.pl + g.w < wp else wp
    if g.pt == 0 and g.pl == 0 and g.h == g.ho + g.kh - 1 and g.w == wp:
        return x
    memset(xp, 0, (g.ho + g.kh - 1) * wp * C * sizeof(floating))
    for r in range(g.ho + g.kh - 1):
        iy = r - g.pt
        if 0 <= iy < g.h and hi > lo:
            memcpy(xp + (r * wp + lo) * C, x + (iy * g.w + lo - g.pl) * C,
                   (hi - lo) * C * sizeof(floating))
    return xp


cdef void _im2col(const floating* x, floating* cols, const Window* g, Py_ssize_t b0,
                  Py_ssize_t b1) noexcept nogil:
    # the columns of images b0 <= b < b1 (image b0's first row at cols); one image row of a
    # window (kw*c values) is contiguous in x: copied as one run where the window lies
    # inside the image, position by position at the edges
    cdef Py_ssize_t b, oy, ox, ky, kx, iy, ix, j, k = g.kh * g.kw * g.c, run = g.kw * g.c
    cdef floating* dst
    cdef const floating* src
    for b in range(b0, b1):
        for oy in range(g.ho):
            for ky in range(g.kh):
                iy = oy * g.sh - g.pt + ky
                for ox in range(g.wo):
                    dst = cols + (((b - b0) * g.ho + oy) * g.wo + ox) * k + ky * run
                    ix = ox * g.sw - g.pl
                    if iy < 0 or iy >= g.h:
                        memset(dst, 0, run * sizeof(floating))
                        continue
                    src = x + ((b * g.h + iy) * g.w + ix) * g.c
                    if ix >= 0 and ix + g.kw <= g.w:
                        for j in range(run):
                            dst[j] = src[j]
                        continue
                    for kx in range(g.kw):
                        if 0 <= ix + kx < g.w:
                            for j in range(g.c):
                                dst[kx * g.c + j] = src[kx * g.c + j]
                        else:
                            for j in range(g.c):
                                dst[kx * g.c + j] = 0


cdef void _col2im(const floating* cols, floating* dx, const Window* g, Py_ssize_t b0,
                  Py_ssize_t b1) noexcept nogil:
    # the adjoint of _im2col for images b0 <= b < b1 (image b0's first row at cols): each
    # window row's run added back where it lies in the image
    cdef Py_ssize_t b, oy, ox, ky, kx, iy, ix, j, k = g.kh * g.kw * g.c, run = g.kw * g.c
    cdef const floating* src
    cdef floating* dst
    # window rows innermost: the runs added one after the other lie in different rows of
    # dx (the next window's run in the same row overlaps this one's: read right after its
    # store, it waited for it); each element gets its terms in the same order as before.
    # lenet's second convolution 137-152 -> 116-124 us, convnet's 2.37 -> 1.34 ms (the
    # function alone, one thread)
    memset(dx + b0 * g.h * g.w * g.c, 0, (b1 - b0) * g.h * g.w * g.c * sizeof(floating))
    for b in range(b0, b1):
        for oy in range(g.ho):
            for ox in range(g.wo):
                ix = ox * g.sw - g.pl
                for ky in range(g.kh):
                    iy = oy * g.sh - g.pt + ky
                    if iy < 0 or iy >= g.h:
                        continue
                    src = cols + (((b - b0) * g.ho + oy) * g.wo + ox) * k + ky * run
                    dst = dx + ((b * g.h + iy) * g.w + ix) * g.c
                    if ix >= 0 and ix + g.kw <= g.w:
                        for j in range(run):
                            dst[j] += src[j]
                        continue
                    for kx in range(g.kw):
                        if 0 <= ix + kx < g.w:
                            for j in range(g.c):
                                dst[kx * g.c + j] += src[kx * g.c + j]


# The columns of the whole batch do not fit in L2 (convnet's second convolution: 17 MB), so
# the GEMMs run over blocks of images whose columns do, in one block-sized buffer at the
# start of cols that stays in cache: forward im2col then GEMM and epilogue; backward dz,
# im2col again (cheaper than reading back saved columns), dw += cols^T dz, dcols = dz w^T,
# col2im.  Measured on convnet's second convolution (one thread, CPU time): forward 10.2 ->
# 9.0 ms and backward 19.5 -> 17.0 ms in blocks (128 KB to 1 MB alike), and convnet's
# training step 30.5 -> 28.1 ms with one buffer instead of the whole batch's columns.
# Whole steps (wall, one thread): lenet (4 images of 60 KB a block) 1.69 ms at 256 KB,
# 1.90 at 6 images; convnet (139 KB an image) 28.7 ms at one image a block, 27.2 at 5,
# 27.8 at 9, 40.5 with the whole batch; at two threads too the whole batch was slowest.
cdef enum:
    CONV_BLOCK_BYTES = 262144
    CONV_BLOCK_ROWS = 384


cdef inline Py_ssize_t _conv_block(const Window* g, Py_ssize_t itemsize) noexcept nogil:
    # images per block: columns of about CONV_BLOCK_BYTES, and at least CONV_BLOCK_ROWS
    # rows (GEMMs of fewer rows run slower) and one image
    cdef Py_ssize_t rows = max(1, g.ho * g.wo)
    cdef Py_ssize_t per_image = rows * g.kh * g.kw * g.c * itemsize
    return max(max(1, CONV_BLOCK_BYTES // max(1, per_image)),
               (CONV_BLOCK_ROWS + rows - 1) // rows)


cdef void _conv_fwd(const floating* x, const floating* w, const floating* b, floating* cols,
                    floating* out, const Window* g, int act, floating alpha) noexcept nogil:
    # out (N*HO*WO, F) = act(cols @ w + b): the Dense epilogue on the im2col columns
    cdef Py_ssize_t b0, b1, rows = g.ho * g.wo, k = g.kh * g.kw * g.c
    cdef Py_ssize_t block = _conv_block(g, sizeof(floating))
    if _direct_c1(g):
        _conv_c1_fwd(x, w, b, cols, out, g, act, alpha)
        return
    if _direct_cv(g):
        _conv_cv_fwd(x, w, b, cols, out, g, act, alpha)
        return
    b0 = 0
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        _im2col(x, cols, g, b0, b1)
        _dense_fwd(<const floating*>cols, w, b, out + b0 * rows * g.co, (b1 - b0) * rows, k,
                   g.co, act, alpha)
        b0 = b1


# dcols = dz w^T with w as stored is a TN GEMM, slow at few filters (k = F = 16 in lenet's
# second convolution: 27.5 us a block); with a copy of w transposed once per call it is
# NN (21.5 us).  The copy lives in the columns' scratch after the block's columns, when
# the batch has more than one block (the scratch holds the whole batch's columns).
cdef floating* _conv_wt(const floating* w, floating* cols, const Window* g,
                        Py_ssize_t block) noexcept nogil:
    # w^T (F, k) after the first block's columns, or NULL where the scratch has no room
    cdef Py_ssize_t i, j, rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef floating* wt = cols + min(block, g.n) * rows * k
    if (min(block, g.n) * rows + F) * k > g.n * rows * k:
        return NULL
    for i in range(k):
        for j in range(F):
            wt[j * k + i] = w[i * F + j]
    return wt


cdef void _conv_bwd(const floating* x, const floating* w, const floating* y,
                    const floating* dout, floating* cols, floating* dz, floating* dx,
                    floating* dw, floating* db, const Window* g,
                    int act, floating alpha, bint need_dx) noexcept nogil:
    # block by block: dz, the columns, dw, then dcols = dz @ w.T over the columns
    cdef Py_ssize_t b0, b1, r0, nr, rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef Py_ssize_t block = _conv_block(g, sizeof(floating))
    if _direct_c1(g) and not need_dx and act != SOFTMAX:
        # an elementwise derivative over one long row (rows of F few values run slowly)
        _act_bwd(y, dout, dz, <floating*>NULL, 1, g.n * g.ho * g.wo * g.co, act, alpha)
        _conv_c1_dw(x, <const floating*>dz, cols, dw, db, g)
        return
    if _direct_cv(g):
        _conv_cv_dw(x, y, dout, cols, dz, dw, db, g, act, alpha)
        if need_dx:
            _conv_dx(w, <const floating*>dz, cols, dx, g, block)
        return
    cdef floating* wt = _conv_wt(w, cols, g, block) if need_dx else NULL
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    b0 = 0
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        r0, nr = b0 * rows, (b1 - b0) * rows
        _im2col(x, cols, g, b0, b1)
        _act_bwd_acc(y + r0 * F, dout + r0 * F, dz + r0 * F, db, nr, F, act, alpha)
        # dw^T (F, k) (+)= dz^T (F, nr) cols (nr, k)
        _gemm_beta(c'N', c'T', F, k, nr, <const floating*>dz + r0 * F, F,
                   <const floating*>cols, k, dw, F, b0 > 0)
        if need_dx:
            _dcols_col2im(w, wt, <const floating*>dz, cols, dx, g, b0, b1)
        b0 = b1


cdef void _dcols_col2im(const floating* w, const floating* wt, const floating* dz,
                        floating* cols, floating* dx, const Window* g, Py_ssize_t b0,
                        Py_ssize_t b1) noexcept nogil:
    # dx of images b0 <= b < b1: dcols = dz @ w.T into cols, then col2im
    cdef Py_ssize_t rows = g.ho * g.wo, k = g.kh * g.kw * g.c, F = g.co
    cdef Py_ssize_t r0 = b0 * rows, nr = (b1 - b0) * rows
    if wt != NULL:
        # dcols^T (k, nr) = w^T^T (k, F) dz^T (F, nr), both operands as stored
        _gemm(c'N', c'N', k, nr, F, wt, k, dz + r0 * F, F, cols, k)
    else:
        # dcols^T (k, nr) = w (k, F) dz^T (F, nr)
        _gemm(c'T', c'N', k, nr, F, w, F, dz + r0 * F, F, cols, k)
    _col2im(<const floating*>cols, dx, g, b0, b1)


cdef void _conv_dx(const floating* w, const floating* dz, floating* cols, floating* dx,
                   const Window* g, Py_ssize_t block) noexcept nogil:
    # dx block by block (after a direct dw: the scratch is free)
    cdef Py_ssize_t b0 = 0, b1
    cdef const floating* wt = _conv_wt(w, cols, g, block)
    while b0 < g.n:
        b1 = min(b0 + block, g.n)
        _dcols_col2im(w, wt, dz, cols, dx, g, b0, b1)
        b0 = b1
