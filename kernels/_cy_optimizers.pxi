# Included by _cython.pyx: regularisation and optimizers.

# Regularisation and optimizers: one branch-free fused loop each

cdef double _l1l2(const floating* w, floating* dw, Py_ssize_t count, double l1,
                  double l2) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>l1, b = <floating>(2 * l2), v
    cdef double s1 = 0.0, s2 = 0.0
    for k in range(count):  # apart from the sums, so that it vectorises
        v = w[k]
        dw[k] = dw[k] + (a * _sign(v) + b * v)
    for k in range(count):
        v = w[k]
        s1 += _abs(v)
        s2 += <double>v * <double>v
    return l1 * s1 + l2 * s2


cdef double _l1l2_sum(const floating* w, Py_ssize_t count, double l1, double l2) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v
    cdef double s1 = 0.0, s2 = 0.0
    for k in range(count):
        v = w[k]
        s1 += _abs(v)
        s2 += <double>v * <double>v
    return l1 * s1 + l2 * s2


cdef void _sgd(floating* p, const floating* g, Py_ssize_t count, double lr) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>lr
    for k in range(count):
        p[k] = p[k] - a * g[k]


cdef void _momentum(floating* p, const floating* g, floating* buf, Py_ssize_t count, double lr,
                    double momentum, bint nesterov) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating a = <floating>lr, mu = <floating>momentum, bk
    if nesterov:
        for k in range(count):
            bk = buf[k] * mu + g[k]
            buf[k] = bk
            p[k] = p[k] - a * (g[k] + mu * bk)
    else:
        for k in range(count):
            bk = buf[k] * mu + g[k]
            buf[k] = bk
            p[k] = p[k] - a * bk


# The sqrt/divide-bound updates are plain C loops so that GCC can clone them for AVX-512 and
# AVX2 (picked at load time); every clone performs the same IEEE operations in the same order
# (no FMA: neither target enables it), so the results do not depend on the machine.
cdef extern from *:
    """
    #ifndef FASTNN_CLONES
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FASTNN_CLONES
    #endif
    #endif

    #define FASTNN_UPDATES(T, SUFFIX, SQRT)                                               \
    static FASTNN_CLONES void fastnn_adagrad_##SUFFIX(                                   \
            T *p, const T *g, T *acc, Py_ssize_t count, T lr, T eps) {                   \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T a = acc[k] + g[k] * g[k];                                                  \
            acc[k] = a;                                                                  \
            p[k] = p[k] - lr * g[k] / (SQRT(a) + eps);                                   \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_rmsprop_##SUFFIX(                                   \
            T *p, const T *g, T *sq, Py_ssize_t count, T lr, T rho, T rho1, T eps) {     \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T s = sq[k] * rho + rho1 * g[k] * g[k];                                      \
            sq[k] = s;                                                                   \
            p[k] = p[k] - lr * g[k] / (SQRT(s) + eps);                                   \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_adam_##SUFFIX(                                      \
            T *p, const T *g, T *m, T *v, Py_ssize_t count, T decay, T b1, T c1, T b2,   \
            T c2, T step_size, T eps) {                                                  \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T gk = g[k];                                                                 \
            T mk = m[k] * b1 + c1 * gk;                                                  \
            T vk = v[k] * b2 + c2 * gk * gk;                                             \
            m[k] = mk;                                                                   \
            v[k] = vk;                                                                   \
            p[k] = p[k] * decay - step_size * mk / (SQRT(vk) + eps);                     \
        }                                                                                \
    }                                                                                    \
    static FASTNN_CLONES void fastnn_amsgrad_##SUFFIX(                                   \
            T *p, const T *g, T *m, T *v, T *vmax, Py_ssize_t count, T decay, T b1,      \
            T c1, T b2, T c2, T step_size, T eps) {                                      \
        for (Py_ssize_t k = 0; k < count; k++) {                                         \
            T gk = g[k];                                                                 \
            T mk = m[k] * b1 + c1 * gk;                                                  \
            T vk = v[k] * b2 + c2 * gk * gk;                                             \
            T xk = vk > vmax[k] ? vk : vmax[k];                                          \
            m[k] = mk;                                                                   \
            v[k] = vk;                                                                   \
            vmax[k] = xk;                                                                \
            p[k] = p[k] * decay - step_size * mk / (SQRT(xk) + eps);                     \
        }                                                                                \
    }

    FASTNN_UPDATES(float, f, sqrtf)
    FASTNN_UPDATES(double, d, sqrt)
    """
    void fastnn_adagrad_f(float*, const float*, float*, Py_ssize_t, float, float) noexcept nogil
    void fastnn_adagrad_d(double*, const double*, double*, Py_ssize_t, double,
                          double) noexcept nogil
    void fastnn_rmsprop_f(float*, const float*, float*, Py_ssize_t, float, float, float,
                          float) noexcept nogil
    void fastnn_rmsprop_d(double*, const double*, double*, Py_ssize_t, double, double, double,
                          double) noexcept nogil
    void fastnn_adam_f(float*, const float*, float*, float*, Py_ssize_t, float, float, float,
                       float, float, float, float) noexcept nogil
    void fastnn_adam_d(double*, const double*, double*, double*, Py_ssize_t, double, double,
                       double, double, double, double, double) noexcept nogil
    void fastnn_amsgrad_f(float*, const float*, float*, float*, float*, Py_ssize_t, float,
                          float, float, float, float, float, float) noexcept nogil
    void fastnn_amsgrad_d(double*, const double*, double*, double*, double*, Py_ssize_t,
                          double, double, double, double, double, double, double) noexcept nogil


cdef void _adagrad(floating* p, const floating* g, floating* acc, Py_ssize_t count, double lr,
                   double epsilon) noexcept nogil:
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    if floating is float:
        fastnn_adagrad_f(p, g, acc, count, <float>lr, <float>epsilon)
    else:
        fastnn_adagrad_d(p, g, acc, count, lr, epsilon)


cdef void _rmsprop(floating* p, const floating* g, floating* sq, Py_ssize_t count, double lr,
                   double rho, double epsilon) noexcept nogil:
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    if floating is float:
        fastnn_rmsprop_f(p, g, sq, count, <float>lr, <float>rho, <float>(1 - rho),
                         <float>epsilon)
    else:
        fastnn_rmsprop_d(p, g, sq, count, lr, rho, 1 - rho, epsilon)


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t count,
                double lr, double beta_1, double beta_2, double epsilon, double weight_decay,
                int64_t step) noexcept nogil:
    """Adam / AdamW; with weight_decay == 0 the decay factor is exactly 1 (p * 1 == p), so
    the loop needs no branch.  lr_t * m / (sqrt(v) / bc2 + eps) is computed as
    (lr_t * bc2) * m / (sqrt(v) + eps * bc2): one division per element instead of two (the
    loop is bound by division and sqrt throughput); it differs from the reference by
    rounding only."""
    cdef double decay = 1 - lr * weight_decay
    cdef double bc2 = sqrt(1 - pow(beta_2, <double>step))
    cdef double step_size = lr / (1 - pow(beta_1, <double>step)) * bc2
    cdef double eps = epsilon * bc2
    if floating is float:
        fastnn_adam_f(p, g, m, v, count, <float>decay, <float>beta_1, <float>(1 - beta_1),
                      <float>beta_2, <float>(1 - beta_2), <float>step_size, <float>eps)
    else:
        fastnn_adam_d(p, g, m, v, count, decay, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
                      step_size, eps)


cdef void _amsgrad(floating* p, const floating* g, floating* m, floating* v, floating* vmax,
                   Py_ssize_t count, double lr, double beta_1, double beta_2, double epsilon,
                   double weight_decay, int64_t step) noexcept nogil:
    """Adam / AdamW with amsgrad (reference.amsgrad_update), in _adam's single-division
    form."""
    cdef double decay = 1 - lr * weight_decay
    cdef double bc2 = sqrt(1 - pow(beta_2, <double>step))
    cdef double step_size = lr / (1 - pow(beta_1, <double>step)) * bc2
    cdef double eps = epsilon * bc2
    if floating is float:
        fastnn_amsgrad_f(p, g, m, v, vmax, count, <float>decay, <float>beta_1,
                         <float>(1 - beta_1), <float>beta_2, <float>(1 - beta_2),
                         <float>step_size, <float>eps)
    else:
        fastnn_amsgrad_d(p, g, m, v, vmax, count, decay, beta_1, 1 - beta_1, beta_2,
                         1 - beta_2, step_size, eps)


cdef void _rmsprop_mc(floating* p, const floating* g, floating* sq, floating* buf,
                      floating* mean, Py_ssize_t count, double lr, double rho, double epsilon,
                      double momentum, bint centered) noexcept nogil:
    """RMSprop with momentum and/or centering (reference.rmsprop_mc_update): one loop per
    combination of the options, each without branches so that it vectorises."""
    cdef floating a = <floating>lr, r = <floating>rho, r1 = <floating>(1 - rho)
    cdef floating eps = <floating>epsilon, mu = <floating>momentum, gk, sk, ck, bk
    cdef Py_ssize_t k
    if not centered and momentum == 0:
        _rmsprop(p, g, sq, count, lr, rho, epsilon)
    elif centered and momentum > 0:
        for k in range(count):
            gk = g[k]
            sk = sq[k] * r + r1 * gk * gk
            ck = mean[k] * r + r1 * gk
            sq[k] = sk
            mean[k] = ck
            bk = buf[k] * mu + gk / (_sqrt(sk - ck * ck) + eps)
            buf[k] = bk
            p[k] = p[k] - a * bk
    elif centered:
        for k in range(count):
            gk = g[k]
            sk = sq[k] * r + r1 * gk * gk
            ck = mean[k] * r + r1 * gk
            sq[k] = sk
            mean[k] = ck
            p[k] = p[k] - a * gk / (_sqrt(sk - ck * ck) + eps)
    else:
        for k in range(count):
            gk = g[k]
            sk = sq[k] * r + r1 * gk * gk
            sq[k] = sk
            bk = buf[k] * mu + gk / (_sqrt(sk) + eps)
            buf[k] = bk
            p[k] = p[k] - a * bk


cdef void _scale(floating* p, Py_ssize_t count, double factor) noexcept nogil:
    """p *= factor (the decoupled weight decay before an update)."""
    cdef floating f = <floating>factor
    cdef Py_ssize_t k
    for k in range(count):
        p[k] = p[k] * f

cdef double _nadam_u_product(double beta_1, int64_t step) noexcept nogil:
    cdef double prod = 1.0, decay = 1.0
    cdef int64_t i
    for i in range(min(step, NADAM_STEPS)):
        decay *= NADAM_DECAY
        prod *= 1.0 - 0.5 * decay
    return prod * pow(beta_1, <double>step)


cdef void _nadam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t count,
                 double lr, double beta_1, double beta_2, double epsilon,
                 int64_t step) noexcept nogil:
    """Keras 3's Nadam (reference.nadam_update), one fused pass."""
    cdef double u_t = beta_1 * (1 - 0.5 * pow(NADAM_DECAY, <double>step))
    cdef double u_next = beta_1 * (1 - 0.5 * pow(NADAM_DECAY, <double>(step + 1)))
    cdef double prod = _nadam_u_product(beta_1, step)
    cdef floating cm = <floating>(u_next / (1 - prod * u_next))
    cdef floating cg = <floating>((1 - u_t) / (1 - prod))
    cdef floating b1 = <floating>beta_1, c1 = <floating>(1 - beta_1)
    cdef floating b2 = <floating>beta_2, c2 = <floating>(1 - beta_2)
    cdef floating bc2 = <floating>(1 - pow(beta_2, <double>step))
    cdef floating a = <floating>lr, eps = <floating>epsilon, gk, mk, vk
    cdef Py_ssize_t k
    for k in range(count):
        gk = g[k]
        mk = m[k] * b1 + c1 * gk
        vk = v[k] * b2 + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= a * (cm * mk + cg * gk) / (_sqrt(vk / bc2) + eps)


cdef void _opt(floating* params, const floating* grads, floating* state, Py_ssize_t count,
               int code, const double* hyper, int64_t step, double weight_decay) noexcept nogil:
    """One update; ``weight_decay`` (hyper's optional entry, _clip_of) scales the parameters
    by 1 - lr * weight_decay first (0: off; ADAM and AMSGRAD decay in their own loop)."""
    if weight_decay != 0:
        _scale(params, count, 1 - hyper[0] * weight_decay)
    if code == SGD:
        _sgd(params, grads, count, hyper[0])
    elif code == MOMENTUM:
        _momentum(params, grads, state, count, hyper[0], hyper[1],
                  hyper[2] >= 1 or hyper[2] <= -1)  # int(hyper[2]) != 0
    elif code == ADAGRAD:
        _adagrad(params, grads, state, count, hyper[0], hyper[1])
    elif code == RMSPROP:
        _rmsprop(params, grads, state, count, hyper[0], hyper[1], hyper[2])
    elif code == NADAM:
        _nadam(params, grads, state, state + count, count, hyper[0], hyper[1], hyper[2],
               hyper[3], step)
    elif code == AMSGRAD:
        _amsgrad(params, grads, state, state + count, state + 2 * count, count, hyper[0],
                 hyper[1], hyper[2], hyper[3], hyper[4], step)
    elif code == RMSPROP_MC:
        _rmsprop_mc(params, grads, state, state + count, state + 2 * count, count, hyper[0],
                    hyper[1], hyper[2], hyper[3], hyper[4] != 0)
    else:
        _adam(params, grads, state, state + count, count, hyper[0], hyper[1], hyper[2],
              hyper[3], hyper[4], step)
