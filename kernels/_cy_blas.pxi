# Included by _cython.pyx: the GEMMs (BLAS).

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
