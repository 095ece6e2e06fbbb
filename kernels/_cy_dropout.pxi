# Included by _cython.pyx: dropout.

# Dropout: counter-based splitmix64 (identical masks on every backend)

cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z = z + 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void _dropout(const floating* x, floating* out, Py_ssize_t count, double rate,
                   uint64_t seed, uint64_t k0) noexcept nogil:
    # mask element k0 + k for out[k]: a shard of rows starting at element k0 of its batch
    cdef uint64_t base = _splitmix64(seed), thr, k
    cdef floating scale = <floating>(1.0 / (1.0 - rate))
    if rate <= 0:
        thr = 0
    elif rate >= 1:
        thr = 16777216  # nothing is kept (the hash has 24 bits)
    else:
        thr = <uint64_t>(rate * 16777216.0)
    for k in range(<uint64_t>count):
        out[k] = x[k] * scale if (_splitmix64(base + k0 + k) >> 40) >= thr else 0


cdef inline uint64_t _dropout_seed(uint64_t seed, uint64_t step, Py_ssize_t layer) noexcept nogil:
    return seed + step * 65536ULL + <uint64_t>layer
