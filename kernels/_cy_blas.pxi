# Included by _cython.pyx: the GEMMs (BLAS) and their blocking for its small-matrix kernel.

ctypedef void (*sgemm64_t)(char*, char*, int64_t*, int64_t*, int64_t*, float*, float*,
                          int64_t*, float*, int64_t*, float*, float*, int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(char*, char*, int64_t*, int64_t*, int64_t*, double*, double*,
                          int64_t*, double*, int64_t*, double*, double*, int64_t*) noexcept nogil

# NumPy's bundled OpenBLAS (ILP64), when found: measured ~10% faster than SciPy's copy here
cdef sgemm64_t _sgemm64 = NULL
cdef dgemm64_t _dgemm64 = NULL


def _find_numpy_blas():
    """Points the GEMMs at the sgemm/dgemm that NumPy's wheel bundles (OpenBLAS, 64-bit
    integers), if it exports them; otherwise SciPy's BLAS is used.  FASTNN_BLAS=scipy
    forces SciPy's.  Returns the library's path or None."""
    global _sgemm64, _dgemm64
    import ctypes
    import glob
    import os

    if os.environ.get("FASTNN_BLAS", "").strip().lower() == "scipy":
        return None
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)
            s = ctypes.cast(lib.scipy_sgemm_64_, ctypes.c_void_p).value
            d = ctypes.cast(lib.scipy_dgemm_64_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        if s and d:
            _sgemm64 = <sgemm64_t><size_t>s
            _dgemm64 = <dgemm64_t><size_t>d
            return path
    return None


BLAS_LIBRARY = _find_numpy_blas()


cdef inline void _gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                       floating* c, Py_ssize_t ldc) noexcept nogil:
    """Column-major C (m, n) = op(A) op(B), beta = 0."""
    _gemm_beta(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, 0)


cdef inline void _gemm_beta(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                            const floating* a, Py_ssize_t lda, const floating* b,
                            Py_ssize_t ldb, floating* c, Py_ssize_t ldc,
                            floating beta) noexcept nogil:
    """Column-major C (m, n) = op(A) op(B) + beta C (beta 0: C is only written)."""
    cdef int im = <int>m, jn = <int>n, ik = <int>k
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    cdef int64_t lm = m, ln = n, lk = k, llda = lda, lldb = ldb, lldc = ldc
    cdef floating one = 1
    cdef Py_ssize_t j, i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            memset(c, 0, m * n * sizeof(floating))
        elif beta != 1:
            for j in range(n):
                for i in range(m):
                    c[j * ldc + i] *= beta
        return
    if floating is float:
        if _sgemm64 != NULL:
            _sgemm64(&ta, &tb, &lm, &ln, &lk, &one, <float*>a, &llda, <float*>b, &lldb, &beta,
                     c, &lldc)
        else:
            sgemm(&ta, &tb, &im, &jn, &ik, &one, <float*>a, &ilda, <float*>b, &ildb, &beta, c,
                  &ildc)
    else:
        if _dgemm64 != NULL:
            _dgemm64(&ta, &tb, &lm, &ln, &lk, &one, <double*>a, &llda, <double*>b, &lldb,
                     &beta, c, &lldc)
        else:
            dgemm(&ta, &tb, &im, &jn, &ik, &one, <double*>a, &ilda, <double*>b, &ildb, &beta,
                  c, &ildc)


# OpenBLAS (0.3.x, SkylakeX kernels) multiplies products of m * n * k <= 1e6 with its small
# matrix kernel, which reads the operands in place; larger ones pay for packing both, which
# a recurrent step repeats for the same R every step.  Measured on (N, U) @ (U, G) steps:
# 64x64 @ 64x256 as 2 halves of the batch 24.0 -> 21.1 us, 32x128 @ 128x512 as 4 quarters
# 54 -> 42 us.  The GEMMs over all timesteps (1792 rows of 28 features into 192 or 256
# gates) gain less, and only in blocks of ~100 rows or more: the projection 212 -> 192 us,
# dw 229 -> 198 us (GRU(64)); blocks of 15 or 32 rows (LSTM(128)) took as long or longer.
cdef double SMALL_GEMM = 1e6
cdef Py_ssize_t MIN_ROW_BLOCK = 96
# dr = h_prev^T drec, a (G, U) sum over the rows of all steps, gains from blocks of fewer
# rows: GRU(64)'s 1728 rows into 192 x 64 in blocks of 54, 550 -> 448 us (LSTM(128)'s
# 512 x 128 would need blocks of 10 rows: it stays one GEMM)
cdef Py_ssize_t MIN_DR_BLOCK = 32


cdef Py_ssize_t _small_block(Py_ssize_t n, double mk, Py_ssize_t least) noexcept nogil:
    """The size of the blocks of n (n halved until a block times mk is small, SMALL_GEMM);
    n itself when that is less than ``least``."""
    cdef Py_ssize_t parts = 1, block
    while parts < n and <double>((n + parts - 1) // parts) * mk > SMALL_GEMM:
        parts *= 2
    block = (n + parts - 1) // parts
    return block if block >= least else n


cdef void _gemm_cols(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                     Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                     Py_ssize_t ldc, floating beta, Py_ssize_t least) noexcept nogil:
    """Column-major C (m, n) = A B + beta C (no transposes) in blocks of the n columns (the
    batch rows of a step, the rows of all steps) small enough for the small kernel
    (_small_block with ``least``)."""
    cdef Py_ssize_t cols = _small_block(n, <double>m * k, least), j0 = 0
    while j0 < n:
        _gemm_beta(c'N', c'N', m, min(cols, n - j0), k, a, lda, b + j0 * ldb, ldb,
                   c + j0 * ldc, ldc, beta)
        j0 += cols


cdef void _gemm_nt_sum(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                       Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                       Py_ssize_t ldc, Py_ssize_t least) noexcept nogil:
    """Column-major C (m, n) = A B^T, the sum over k in blocks of at least ``least`` rows
    (the rows of all steps) small enough for the small kernel, added up by beta 1."""
    cdef Py_ssize_t block = _small_block(k, <double>m * n, least), k0 = 0
    if k <= 0:
        _gemm(c'N', c'T', m, n, k, a, lda, b, ldb, c, ldc)
    while k0 < k:
        _gemm_beta(c'N', c'T', m, n, min(block, k - k0), a + k0 * lda, lda, b + k0 * ldb,
                   ldb, c, ldc, 0 if k0 == 0 else 1)
        k0 += block
