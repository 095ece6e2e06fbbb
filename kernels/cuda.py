"""CUDA kernels (Numba's CUDA target, package ``numba-cuda``): the contract of ``reference``.

Every op of ``reference.OPS`` is a host function with the same name and parameters.  It
accepts device arrays (``numba.cuda`` device arrays, the fast path: nothing is copied) or
host NumPy arrays (copied in, outputs copied back, so parity tests call it like the
reference).  Full aliasing of two arguments (the same array passed twice, as the contract
allows) is kept on the device; partial overlaps of host arrays are not.

Device residency: ``train_step``, ``eval_step``, ``forward_stack``, ``backward_stack`` and
``run_epoch`` launch kernels over device-resident buffers (``net``: params, grads, optimizer
state, nontrain; ``work``: acts, gbuf, the float64 acc); losses are reduced on the device and
one scalar comes back.  The plan tables (``plan[0]``, ``plan[1]``) are read on the host,
parsed once per table contents; ``KINDS`` are the layer kinds this backend runs (all of
them today: Dense, Dropout, Activation, BatchNormalization, Normalization); any other kind
raises ValueError, naming the kind and the plan row, before anything runs.  ``run_epoch``
gathers each batch on the host (X, Y, SW and order stay host arrays), copies it to the
device and reads back one loss per batch; the metric sums stay on the device until the end
of the epoch.

Kernels are built per float dtype on first use and compiled lazily per signature (nothing
compiles at import).  ``kernel_signatures(dtype)`` lists every kernel with the signature the
host functions launch it with, for ahead-of-time checks with ``cuda.compile_ptx``.

Importing this module never fails and does not import ``numba.cuda`` (that happens on first
use); without a usable one, ``check_available()`` and every op raise ``RuntimeError`` saying
why.  Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported) every op runs on the
CPU, slowly, with smaller launch configurations.

Scratch buffers (partial sums, the loss scalar, batch staging) are module state that grows
and is reused: the module is not thread-safe.
"""

from __future__ import annotations

import math
import warnings
import weakref

import numba
import numpy as np
from numba import config as _nb_config

from . import codes as C
from .reference import OPS, dropout_seed

# numba.cuda is imported on first use (_require): importing this module stays cheap and
# cannot fail.  The simulator is chosen by NUMBA_ENABLE_CUDASIM before numba is imported.
cuda = None
_SIM = bool(_nb_config.ENABLE_CUDASIM)
_IMPORT_ERROR: str | None = None

_INSTALL_HINT = "install the CUDA extra: pip install 'fastnn-cpu[cuda]' (numba-cuda[cu12])"

# Launch shapes: the simulator runs one CPU thread per GPU thread (a few milliseconds each),
# so it gets small blocks and few of them (grid-stride loops cover the rest, which also
# tests those loops), and 8x8 GEMM tiles: the same kernel code as the 16x16 tiles of a real
# GPU (and of the PTX checks, which run without the simulator).
TILE = 8 if _SIM else 16  # GEMM tile edge (TILE x TILE threads per block)
_TILE1 = TILE + 1  # padded shared-memory row (no bank conflicts on transposed reads)
_RED = 256  # largest block of the reduction kernels (power of two)
_EW_BLOCK = 16 if _SIM else 256
_EW_MAX_BLOCKS = 2 if _SIM else 4096
_ROW_MIN = 8 if _SIM else 32
_ROW_CAP = 16 if _SIM else _RED
_ROW_MAX_BLOCKS = 2 if _SIM else 65535
_COL_BLOCK = (4, 4) if _SIM else (32, 8)
_RED_BLOCK = 16 if _SIM else _RED
_MAX_PARTIALS = 2 if _SIM else 1024
# Column reductions (BatchNormalization) split the rows into chunks of about this many rows,
# one block row of the grid each, reduced in order afterwards (deterministic).
_CHUNK_ROWS = 8 if _SIM else 512
_MAX_CHUNKS = 2 if _SIM else 64

_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------
# Availability and device-array helpers


def check_available() -> None:
    """Raises RuntimeError with the reason when no CUDA device can run the kernels.

    Passes under the CUDA simulator."""
    cu = _require()
    if _SIM:
        return
    if not cu.is_available():
        reason = "no CUDA driver or GPU found"
        try:
            cu.current_context()
        except Exception as exc:  # noqa: BLE001 - the driver's own reason is the message
            reason = " ".join(str(exc).split()).rstrip(" :") or reason
        raise RuntimeError(f"CUDA is not usable here: {reason}{_missing_numba_cuda()}")


def _missing_numba_cuda():
    import importlib.util

    if _SIM or importlib.util.find_spec("numba_cuda") is not None:
        return ""
    return f" (numba-cuda is not installed: {_INSTALL_HINT})"


def _require():
    """numba.cuda, imported on first use; RuntimeError saying why when it cannot be."""
    global cuda, _IMPORT_ERROR
    if cuda is None and _IMPORT_ERROR is None:
        try:  # numba-cuda without its CUDA wheels fails at import: catch everything
            from numba import cuda as module
        except Exception as exc:  # noqa: BLE001
            _IMPORT_ERROR = f"numba.cuda cannot be imported ({type(exc).__name__}: {exc})"
        else:
            # Small batches launch small grids on purpose; the warning would fire every step.
            warnings.filterwarnings(
                "ignore", message=r"Grid size \d+ will likely result in GPU under-utilization"
            )
            cuda = module
    if cuda is None:
        raise RuntimeError(f"{_IMPORT_ERROR}; {_INSTALL_HINT}")
    return cuda


def is_device_array(a) -> bool:
    """True for a device array (anything array-like that is not a NumPy array)."""
    return a is not None and not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")


def zeros(shape, dtype=np.float32):
    """A zero-filled device array."""
    return _require().to_device(np.zeros(shape, dtype=dtype))


def to_device(a):
    """Copies a host array to a new device array (device arrays are returned as they are)."""
    if is_device_array(a):
        return a
    return _require().to_device(np.ascontiguousarray(a))


def to_host(a) -> np.ndarray:
    """A NumPy array with the contents of ``a`` (a copy for device arrays)."""
    if is_device_array(a):
        return a.copy_to_host()
    return np.asarray(a)


def synchronize() -> None:
    """Waits until every launched kernel has finished."""
    _require().synchronize()


class _Stage:
    """Copies host arguments to the device once per call and outputs back at the end.

    Device arguments pass through; two host arguments that are the same view (same data
    pointer, shape, strides, dtype) share one device array, so allowed aliasing holds."""

    __slots__ = ("_map", "_back")

    def __init__(self):
        _require()
        self._map = {}
        self._back = {}

    def __call__(self, a, out=False):
        if not isinstance(a, np.ndarray):
            return a
        key = (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
        d = self._map.get(key)
        if d is None:
            d = cuda.to_device(np.ascontiguousarray(a))
            self._map[key] = d
        if out:
            self._back[key] = (a, d)
        return d

    def finish(self):
        for a, d in self._back.values():
            if a.flags.c_contiguous:
                d.copy_to_host(a)
            else:
                a[...] = d.copy_to_host()


# id(device array) -> (weak reference to it, {what: view}).  Device-array slicing costs
# microseconds of Python per call and a step takes the same views every time.  The views
# hold the memory, not the array object: when the array is collected its entry goes too.
_VIEWS: dict = {}
_VIEWS_PER_ARRAY = 256


def _cached(buf, what, make):
    key = id(buf)
    entry = _VIEWS.get(key)
    if entry is None or entry[0]() is not buf:
        try:
            ref = weakref.ref(buf, lambda r, k=key: _forget(k, r))
        except TypeError:  # not weak-referenceable: no caching
            return make()
        entry = (ref, {})
        _VIEWS[key] = entry
    views = entry[1]
    v = views.get(what)
    if v is None:
        if len(views) >= _VIEWS_PER_ARRAY:
            views.clear()
        v = views[what] = make()
    return v


def _forget(key, ref):
    entry = _VIEWS.get(key)
    if entry is not None and entry[0] is ref:
        del _VIEWS[key]


def _view(buf, off, shape):
    """Cached contiguous view buf[off : off+prod(shape)].reshape(shape) of a flat array."""
    return _cached(buf, (off, shape), lambda: _make_view(buf, off, shape))


def _make_view(buf, off, shape):
    size = 1
    for s in shape:
        size *= s
    v = buf[off : off + size]
    return v if len(shape) == 1 else v.reshape(shape)


def _row(buf, r):
    """Cached view buf[r] (a row of a 2-D device array)."""
    return _cached(buf, ("row", r), lambda: buf[r])


def _head(buf, n):
    """Cached view buf[:n] (the first n rows)."""
    return _cached(buf, ("head", n), lambda: buf[:n])


class _Scratch:
    """Device scratch: partial sums, the loss accumulator, a zero guard, batch staging."""

    def __init__(self):
        self.partials = cuda.device_array(max(_MAX_PARTIALS, 64), np.float64)
        self.acc = cuda.to_device(np.zeros(4))
        self.guard = cuda.to_device(np.zeros(1))
        self.host = _pinned((4,), np.float64)
        self.staging = {}

    def partials_for(self, n):
        if self.partials.shape[0] < n:
            self.partials = cuda.device_array(max(n, 2 * self.partials.shape[0]), np.float64)
        return self.partials

    def read(self, slot=0):
        """One float64 scalar back from acc[slot] (waits for the kernels before it)."""
        self.acc.copy_to_host(self.host)
        return float(self.host[slot])

    def buffer(self, name, shape, dtype, device):
        key = (name, shape, np.dtype(dtype).str, device)
        b = self.staging.get(key)
        if b is None:
            b = cuda.device_array(shape, dtype) if device else _pinned(shape, dtype)
            self.staging[key] = b
        return b


def _pinned(shape, dtype):
    try:
        return cuda.pinned_array(shape, dtype)
    except Exception:  # noqa: BLE001 - pinned memory is an optimisation only
        return np.empty(shape, dtype)


_SCRATCH: _Scratch | None = None


def _scratch() -> _Scratch:
    global _SCRATCH
    if _SCRATCH is None:
        _require()
        _SCRATCH = _Scratch()
    return _SCRATCH


# ---------------------------------------------------------------------------------------
# Kernels, built once per float dtype.  F is the Numba float type; constants are cast to
# it so float32 kernels do no float64 arithmetic (except the loss and penalty sums).


def _build(F):  # noqa: C901 - one namespace of kernels
    D = numba.float64
    U = numba.uint64
    I64 = numba.int64
    ZERO, ONE, TWO, HALF = F(0.0), F(1.0), F(2.0), F(0.5)
    NEG_INF = F(-np.inf)
    EPS, ONE_EPS = F(C.PROB_EPS), F(1.0 - C.PROB_EPS)
    NORM_EPS = F(C.NORM_EPS)
    RELU, LEAKY, SIGMOID, TANH = C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH
    GOLDEN = np.uint64(0x9E3779B97F4A7C15)
    MIX1 = np.uint64(0xBF58476D1CE4E5B9)
    MIX2 = np.uint64(0x94D049BB133111EB)
    S27, S30, S31, S40 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(40)
    T, T1, RED = TILE, _TILE1, _RED
    CB = 32  # largest extent of the column-reduction block in either dimension
    CB1 = CB + 1
    ACC_SPARSE, ACC_CAT, ACC_BIN = C.ACC_SPARSE, C.ACC_CATEGORICAL, C.ACC_BINARY
    M_TOPK, M_STOPK, M_CONF, M_HIST = C.M_TOP_K, C.M_SPARSE_TOP_K, C.M_CONFUSION, C.M_HISTOGRAM
    L_SBCE, L_CCE, L_BCE, L_MSE = C.SIGMOID_BCE, C.CATEGORICAL_CE, C.BINARY_CE, C.MSE
    S_ABS, S_SQ, S_ROWS = C.STAT_ABS, C.STAT_SQ, C.STAT_ROWS
    S_NONFINITE = C.STAT_NONFINITE

    dev = cuda.jit(device=True, inline="always")

    # -- device functions -------------------------------------------------------------

    @dev
    def sigmoid(v):
        e = math.exp(-abs(v))
        if v >= ZERO:
            return ONE / (ONE + e)
        return e / (ONE + e)

    @dev
    def act_f(v, act, alpha):
        if act == RELU:
            if v < ZERO:  # NaN passes through, as np.maximum
                return ZERO
            return v
        if act == LEAKY:
            return v if v > ZERO else v * alpha
        if act == SIGMOID:
            return sigmoid(v)
        if act == TANH:
            return math.tanh(v)
        return v

    @dev
    def act_d(y, d, act, alpha):
        if act == RELU:
            return d if y > ZERO else ZERO
        if act == LEAKY:
            return d if y > ZERO else d * alpha
        if act == SIGMOID:
            return d * y * (ONE - y)
        if act == TANH:
            return d * (ONE - y * y)
        return d

    @dev
    def mix64(z):
        z = z + GOLDEN
        z = (z ^ (z >> S30)) * MIX1
        z = (z ^ (z >> S27)) * MIX2
        return z ^ (z >> S31)

    @dev
    def bsum(sh, v):
        """Sum of v over a 1-D block (power-of-two size) through shared memory sh."""
        tid = cuda.threadIdx.x
        sh[tid] = v
        cuda.syncthreads()
        s = cuda.blockDim.x // 2
        while s > 0:
            if tid < s:
                sh[tid] += sh[tid + s]
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    @dev
    def bsum2(sh, sh2, v, v2):
        """(sum of v, sum of v2) over a 1-D block, sharing the barriers."""
        tid = cuda.threadIdx.x
        sh[tid] = v
        sh2[tid] = v2
        cuda.syncthreads()
        s = cuda.blockDim.x // 2
        while s > 0:
            if tid < s:
                sh[tid] += sh[tid + s]
                sh2[tid] += sh2[tid + s]
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        r2 = sh2[0]
        cuda.syncthreads()
        return r, r2

    @dev
    def bmax(sh, v):
        tid = cuda.threadIdx.x
        sh[tid] = v
        cuda.syncthreads()
        s = cuda.blockDim.x // 2
        while s > 0:
            if tid < s and sh[tid + s] > sh[tid]:
                sh[tid] = sh[tid + s]
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    @dev
    def row_argmax(a, r, c):
        """np.argmax of row r: first maximum, or the first NaN."""
        best = a[r, 0]
        if best != best:
            return 0
        bi = 0
        for j in range(1, c):
            v = a[r, j]
            if v != v:
                return j
            if v > best:
                best = v
                bi = j
        return bi

    # -- GEMMs (TxT tiles, blocks (T, T), grid (ceil(cols/T), ceil(rows/T))) ------------

    @cuda.jit
    def gemm_bias_act(x, w, b, out, act, alpha):
        """out (N, O) = act(x (N, I) @ w (I, O) + b (O,))."""
        xs = cuda.shared.array((T, T1), dtype=F)
        ws = cuda.shared.array((T, T1), dtype=F)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * T + ty
        col = cuda.blockIdx.x * T + tx
        n, k = x.shape
        o = w.shape[1]
        acc = ZERO
        for k0 in range(0, k, T):
            kx = k0 + tx
            xs[ty, tx] = x[row, kx] if (row < n and kx < k) else ZERO
            kw = k0 + ty
            ws[ty, tx] = w[kw, col] if (kw < k and col < o) else ZERO
            cuda.syncthreads()
            for j in range(T):
                acc += xs[ty, j] * ws[j, tx]
            cuda.syncthreads()
        if row < n and col < o:
            out[row, col] = act_f(acc + b[col], act, alpha)

    @cuda.jit
    def gemm_tn(x, dz, dw):
        """dw (I, O) = x (N, I).T @ dz (N, O); tiles of x are read row-wise (coalesced)."""
        xs = cuda.shared.array((T, T1), dtype=F)  # xs[k, i]
        ds = cuda.shared.array((T, T1), dtype=F)  # ds[k, o]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.y * T
        row = i0 + ty
        col = cuda.blockIdx.x * T + tx
        n, ni = x.shape
        o = dz.shape[1]
        acc = ZERO
        for k0 in range(0, n, T):
            kr = k0 + ty
            xi = i0 + tx
            xs[ty, tx] = x[kr, xi] if (kr < n and xi < ni) else ZERO
            ds[ty, tx] = dz[kr, col] if (kr < n and col < o) else ZERO
            cuda.syncthreads()
            for j in range(T):
                acc += xs[j, ty] * ds[j, tx]
            cuda.syncthreads()
        if row < ni and col < o:
            dw[row, col] = acc

    @cuda.jit
    def gemm_nt(dz, w, dx):
        """dx (N, I) = dz (N, O) @ w (I, O).T; tiles of w are read row-wise (coalesced)."""
        ds = cuda.shared.array((T, T1), dtype=F)  # ds[n, k]
        ws = cuda.shared.array((T, T1), dtype=F)  # ws[i, k]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.x * T
        row = cuda.blockIdx.y * T + ty
        col = i0 + tx
        n, o = dz.shape
        ni = w.shape[0]
        acc = ZERO
        for k0 in range(0, o, T):
            kc = k0 + tx
            ds[ty, tx] = dz[row, kc] if (row < n and kc < o) else ZERO
            wi = i0 + ty
            ws[ty, tx] = w[wi, kc] if (wi < ni and kc < o) else ZERO
            cuda.syncthreads()
            for j in range(T):
                acc += ds[ty, j] * ws[tx, j]
            cuda.syncthreads()
        if row < n and col < ni:
            dx[row, col] = acc

    # -- activations, dropout (grid-stride over the N*O elements) ----------------------

    @cuda.jit
    def act_forward(x, out, act, alpha):
        n, o = x.shape
        for i in range(cuda.grid(1), n * o, cuda.gridsize(1)):
            r = i // o
            c = i - r * o
            out[r, c] = act_f(x[r, c], act, alpha)

    @cuda.jit
    def act_backward(y, dout, dx, act, alpha):
        n, o = y.shape
        for i in range(cuda.grid(1), n * o, cuda.gridsize(1)):
            r = i // o
            c = i - r * o
            dx[r, c] = act_d(y[r, c], dout[r, c], act, alpha)

    @cuda.jit
    def dropout(x, out, scale, base, threshold):
        """out = x*scale where (mix64(k + base) >> 40) >= threshold, k the flat index."""
        n, o = x.shape
        for i in range(cuda.grid(1), n * o, cuda.gridsize(1)):
            r = i // o
            c = i - r * o
            h = mix64(U(i) + base) >> S40
            out[r, c] = x[r, c] * scale if h >= threshold else ZERO

    # -- row kernels (one block per row, grid-stride over rows) ------------------------

    @cuda.jit
    def softmax_rows(x, out):
        sh = cuda.shared.array(RED, dtype=F)
        n, c = x.shape
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            m = NEG_INF
            for j in range(tid, c, bs):
                if x[r, j] > m:
                    m = x[r, j]
            m = bmax(sh, m)
            s = ZERO
            for j in range(tid, c, bs):
                s += math.exp(x[r, j] - m)
            s = bsum(sh, s)
            for j in range(tid, c, bs):
                out[r, j] = math.exp(x[r, j] - m) / s

    @cuda.jit
    def softmax_back_rows(y, dout, dx):
        """dx = y * (dout - sum(dout*y)); dx may alias dout (all reads precede writes)."""
        sh = cuda.shared.array(RED, dtype=F)
        n, c = y.shape
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            s = ZERO
            for j in range(tid, c, bs):
                s += dout[r, j] * y[r, j]
            s = bsum(sh, s)
            for j in range(tid, c, bs):
                dx[r, j] = y[r, j] * (dout[r, j] - s)

    @cuda.jit
    def softmax_xent_rows(z, y, sw, p, dz, rowloss):
        """Softmax + cross-entropy of a row; rowloss[r] = sw * loss_r (float64)."""
        sh = cuda.shared.array(RED, dtype=F)
        sh2 = cuda.shared.array(RED, dtype=F)
        n, c = z.shape
        nf = F(n)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            m = NEG_INF
            for j in range(tid, c, bs):
                if z[r, j] > m:
                    m = z[r, j]
            m = bmax(sh, m)
            s = ZERO
            for j in range(tid, c, bs):
                s += math.exp(z[r, j] - m)
            lse = math.log(bsum(sh, s))
            a = ZERO
            ys = ZERO
            for j in range(tid, c, bs):
                a -= y[r, j] * (z[r, j] - m - lse)
                ys += y[r, j]
            a, ys = bsum2(sh, sh2, a, ys)
            scale = sw[r] / nf
            for j in range(tid, c, bs):
                pj = math.exp(z[r, j] - m - lse)
                g = (pj * ys - y[r, j]) * scale
                p[r, j] = pj
                dz[r, j] = g
            if tid == 0:
                rowloss[r] = D(sw[r]) * D(a)

    @cuda.jit
    def sparse_xent_rows(z, labels, sw, p, dz, rowloss):
        """As softmax_xent_rows with the class index in labels[r, 0]; an index outside
        [0, C) makes the row's loss NaN."""
        sh = cuda.shared.array(RED, dtype=F)
        n, c = z.shape
        nf = F(n)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            lab = I64(labels[r, 0])
            valid = lab >= 0 and lab < c
            zl = z[r, lab] if valid else ZERO  # read before any write (p may alias z)
            m = NEG_INF
            for j in range(tid, c, bs):
                if z[r, j] > m:
                    m = z[r, j]
            m = bmax(sh, m)
            s = ZERO
            for j in range(tid, c, bs):
                s += math.exp(z[r, j] - m)
            lse = math.log(bsum(sh, s))
            scale = sw[r] / nf
            for j in range(tid, c, bs):
                pj = math.exp(z[r, j] - m - lse)
                g = pj - ONE if j == lab else pj
                p[r, j] = pj
                dz[r, j] = g * scale
            if tid == 0:
                if valid:
                    rowloss[r] = D(sw[r]) * D(-(zl - m - lse))
                else:
                    rowloss[r] = math.nan

    # -- pointwise losses: per-block float64 partial sums of sw_r * loss_rj ------------

    @cuda.jit
    def pointwise_loss(out, y, sw, p, dz, partials, code):
        sh = cuda.shared.array(RED, dtype=D)
        n, c = out.shape
        nf = F(n)
        ncf = F(n * c)
        acc = 0.0
        for i in range(cuda.grid(1), n * c, cuda.gridsize(1)):
            r = i // c
            j = i - r * c
            v = out[r, j]
            t = y[r, j]
            w = sw[r]
            if code == L_SBCE:
                per = (max(v, ZERO) - v * t) + math.log1p(math.exp(-abs(v)))
                pr = sigmoid(v)
                g = (pr - t) * (w / ncf)
                p[r, j] = pr
                dz[r, j] = g
            elif code == L_CCE:
                pc = min(max(v, EPS), ONE_EPS)
                per = -(t * math.log(pc))
                inside = v >= EPS and v <= ONE_EPS
                dz[r, j] = (-t / pc) * (w / nf) if inside else ZERO
            elif code == L_BCE:
                pc = min(max(v, EPS), ONE_EPS)
                per = -(t * math.log(pc) + (ONE - t) * math.log(ONE - pc))
                inside = v >= EPS and v <= ONE_EPS
                dz[r, j] = (pc - t) / (pc * (ONE - pc)) * (w / ncf) if inside else ZERO
            elif code == L_MSE:
                d = v - t
                per = d * d
                dz[r, j] = TWO * d * (w / ncf)
            else:  # MAE
                d = v - t
                per = abs(d)
                sg = d
                if d > ZERO:
                    sg = ONE
                elif d < ZERO:
                    sg = -ONE
                dz[r, j] = sg * (w / ncf)
            acc += D(w) * D(per)
        s = bsum(sh, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = s

    @cuda.jit
    def l1l2(w, dw, partials, l1, l2x2, l1d, l2d, write_grad):
        """dw += l1*sign(w) + 2*l2*w (if write_grad); partials = sums of l1|w| + l2 w^2."""
        sh = cuda.shared.array(RED, dtype=D)
        acc = 0.0
        for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
            v = w[i]
            if write_grad:
                sg = v
                if v > ZERO:
                    sg = ONE
                elif v < ZERO:
                    sg = -ONE
                dw[i] += l1 * sg + l2x2 * v
            vd = D(v)
            acc += l1d * abs(vd) + l2d * vd * vd
        s = bsum(sh, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = s

    @cuda.jit
    def reduce_to(partials, count, acc, slot, div, accumulate):
        """acc[slot] (+)= sum(partials[:count]) / div, in one block (deterministic)."""
        sh = cuda.shared.array(RED, dtype=D)
        s = 0.0
        for i in range(cuda.threadIdx.x, count, cuda.blockDim.x):
            s += partials[i]
        s = bsum(sh, s)
        if cuda.threadIdx.x == 0:
            if accumulate:
                acc[slot] += s / div
            else:
                acc[slot] = s / div

    # -- activation derivative + bias gradient (blocks (BX, BY): BX columns, BY rows) ---

    @cuda.jit
    def act_grad_bias(y, dout, dz, db, act, alpha):
        """dz = dout * act'(y) (may alias dout); db = column sums of dz."""
        sh = cuda.shared.array((CB, CB1), dtype=F)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n, o = dz.shape
        c = cuda.blockIdx.x * cuda.blockDim.x + tx
        part = ZERO
        if c < o:
            for r in range(ty, n, cuda.blockDim.y):
                g = act_d(y[r, c], dout[r, c], act, alpha)
                dz[r, c] = g
                part += g
        sh[ty, tx] = part
        cuda.syncthreads()
        if ty == 0 and c < o:
            s = ZERO
            for k in range(cuda.blockDim.y):
                s += sh[k, tx]
            db[c] = s

    # -- normalisation layers (columns of x (R, C)) -------------------------------------
    # Column sums: blocks (BX, BY) over BX columns, grid (column groups, row chunks); each
    # block writes float64 partials[chunk*2*C + k*C + c] (k = 0, 1), summed in chunk order
    # by a per-column kernel afterwards (deterministic, whatever the launch).

    @cuda.jit
    def col_moments(x, partials, rpc):
        """Chunk sums of d and d*d, d = x[r, c] - x[0, c] in float64 (shifted moments)."""
        sh = cuda.shared.array((CB, CB1), dtype=D)
        sh2 = cuda.shared.array((CB, CB1), dtype=D)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        nr, nc = x.shape
        c = cuda.blockIdx.x * cuda.blockDim.x + tx
        chunk = cuda.blockIdx.y
        r0 = chunk * rpc
        r1 = min(r0 + rpc, nr)
        s1 = 0.0
        s2 = 0.0
        if c < nc:
            x0 = D(x[0, c])
            for r in range(r0 + ty, r1, cuda.blockDim.y):
                d = D(x[r, c]) - x0
                s1 += d
                s2 += d * d
        sh[ty, tx] = s1
        sh2[ty, tx] = s2
        cuda.syncthreads()
        if ty == 0 and c < nc:
            a = 0.0
            b = 0.0
            for k in range(cuda.blockDim.y):
                a += sh[k, tx]
                b += sh2[k, tx]
            base = chunk * 2 * nc
            partials[base + c] = a
            partials[base + nc + c] = b

    @cuda.jit
    def col_grad_sums(x, saved, dout, partials, rpc):
        """Chunk sums of dout and dout * xhat (float64), xhat = (x - mean) * inv_std."""
        sh = cuda.shared.array((CB, CB1), dtype=D)
        sh2 = cuda.shared.array((CB, CB1), dtype=D)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        nr, nc = x.shape
        c = cuda.blockIdx.x * cuda.blockDim.x + tx
        chunk = cuda.blockIdx.y
        r0 = chunk * rpc
        r1 = min(r0 + rpc, nr)
        s1 = 0.0
        s2 = 0.0
        if c < nc:
            m = saved[0, c]
            inv = saved[1, c]
            for r in range(r0 + ty, r1, cuda.blockDim.y):
                g = D(dout[r, c])
                xh = (x[r, c] - m) * inv
                s1 += g
                s2 += g * D(xh)
        sh[ty, tx] = s1
        sh2[ty, tx] = s2
        cuda.syncthreads()
        if ty == 0 and c < nc:
            a = 0.0
            b = 0.0
            for k in range(cuda.blockDim.y):
                a += sh[k, tx]
                b += sh2[k, tx]
            base = chunk * 2 * nc
            partials[base + c] = a
            partials[base + nc + c] = b

    @cuda.jit
    def bn_stats(x, partials, chunks, acc, mmean, mvar, saved, mom, one_m_mom, eps, training):
        """Per column: training, the batch mean and biased variance from the partials
        (into acc), the moving statistics' update and saved = [mean, inv_std]; inference,
        saved from the moving statistics."""
        nr, nc = x.shape
        rf = D(nr)
        for c in range(cuda.grid(1), nc, cuda.gridsize(1)):
            if training:
                s1 = 0.0
                s2 = 0.0
                for k in range(chunks):
                    s1 += partials[k * 2 * nc + c]
                    s2 += partials[k * 2 * nc + nc + c]
                m1 = s1 / rf
                mean = D(x[0, c]) + m1
                var = s2 / rf - m1 * m1
                if var < 0.0:  # NaN stays NaN, as np.maximum
                    var = 0.0
                acc[0, c] = mean
                acc[1, c] = var
                mmean[c] = mmean[c] * mom + F(mean * one_m_mom)
                mvar[c] = mvar[c] * mom + F(var * one_m_mom)
                saved[0, c] = F(mean)
                saved[1, c] = F(1.0 / math.sqrt(var + eps))
            else:
                saved[0, c] = mmean[c]
                saved[1, c] = F(1.0 / math.sqrt(D(mvar[c]) + eps))

    @cuda.jit
    def bn_apply(x, saved, gamma, beta, out, has_gamma, has_beta):
        """out = (x - mean) * inv_std (* gamma) (+ beta); out may alias x."""
        n, nc = x.shape
        for i in range(cuda.grid(1), n * nc, cuda.gridsize(1)):
            r = i // nc
            c = i - r * nc
            y = (x[r, c] - saved[0, c]) * saved[1, c]
            if has_gamma:
                y = y * gamma[c]
            if has_beta:
                y = y + beta[c]
            out[r, c] = y

    @cuda.jit
    def bn_grad_sums(partials, chunks, acc, dgamma, dbeta, has_gamma, has_beta):
        """Per column: acc = [sum dout, sum dout*xhat] from the partials; dbeta, dgamma."""
        nc = acc.shape[1]
        for c in range(cuda.grid(1), nc, cuda.gridsize(1)):
            s1 = 0.0
            s2 = 0.0
            for k in range(chunks):
                s1 += partials[k * 2 * nc + c]
                s2 += partials[k * 2 * nc + nc + c]
            acc[0, c] = s1
            acc[1, c] = s2
            if has_beta:
                dbeta[c] = F(s1)
            if has_gamma:
                dgamma[c] = F(s2)

    @cuda.jit
    def bn_dx(x, saved, gamma, dout, acc, dx, has_gamma):
        """dx = gamma * inv_std / R * (R * dout - sum_dy - xhat * sum_dyx); may alias dout."""
        n, nc = x.shape
        rf = F(n)
        for i in range(cuda.grid(1), n * nc, cuda.gridsize(1)):
            r = i // nc
            c = i - r * nc
            inv = saved[1, c]
            g = gamma[c] if has_gamma else ONE
            coef = inv * g / rf
            xh = (x[r, c] - saved[0, c]) * inv
            dx[r, c] = coef * (rf * dout[r, c] - F(acc[0, c]) - xh * F(acc[1, c]))

    @cuda.jit
    def bn_inference_dx(saved, gamma, dout, dx, has_gamma):
        """dx = dout * gamma * inv_std (inference mode: constant statistics); may alias
        dout."""
        n, nc = dout.shape
        for i in range(cuda.grid(1), n * nc, cuda.gridsize(1)):
            r = i // nc
            c = i - r * nc
            coef = saved[1, c] * gamma[c] if has_gamma else saved[1, c] * ONE
            dx[r, c] = dout[r, c] * coef

    @cuda.jit
    def normalize(x, mean, variance, out, centered):
        """out = (x - mean (if centered)) / max(sqrt(variance), NORM_EPS); may alias x."""
        n, nc = x.shape
        for i in range(cuda.grid(1), n * nc, cuda.gridsize(1)):
            r = i // nc
            c = i - r * nc
            d = math.sqrt(variance[c])
            if d < NORM_EPS:  # NaN stays NaN, as np.maximum
                d = NORM_EPS
            v = x[r, c]
            if centered:
                v = v - mean[c]
            out[r, c] = v / d

    # -- optimizers: one fused pass over the flat buffers, skipped when the guard (the
    #    step's loss) is not finite -------------------------------------------------------

    @cuda.jit
    def sgd(p, g, lr, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            p[i] -= lr * g[i]

    @cuda.jit
    def momentum(p, g, buf, lr, mom, nesterov, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            b = buf[i] * mom + gi
            buf[i] = b
            step = gi + mom * b if nesterov else b
            p[i] -= lr * step

    @cuda.jit
    def adagrad(p, g, acc, lr, eps, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            a = acc[i] + gi * gi
            acc[i] = a
            p[i] -= lr * gi / (math.sqrt(a) + eps)

    @cuda.jit
    def rmsprop(p, g, sq, lr, rho, one_m_rho, eps, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            s = sq[i] * rho + one_m_rho * gi * gi
            sq[i] = s
            p[i] -= lr * gi / (math.sqrt(s) + eps)

    @cuda.jit
    def adam(p, g, m, v, decay, b1, one_m_b1, b2, one_m_b2, step_size, bc2, eps, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            mi = m[i] * b1 + one_m_b1 * gi
            vi = v[i] * b2 + one_m_b2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) / bc2 + eps)

    @cuda.jit
    def amsgrad(p, g, m, v, vmax, decay, b1, one_m_b1, b2, one_m_b2, step_size, bc2, eps, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            mi = m[i] * b1 + one_m_b1 * gi
            vi = v[i] * b2 + one_m_b2 * gi * gi
            xi = max(vmax[i], vi)
            m[i] = mi
            v[i] = vi
            vmax[i] = xi
            p[i] = p[i] * decay - step_size * mi / (math.sqrt(xi) / bc2 + eps)

    @cuda.jit
    def rmsprop_mc(p, g, sq, buf, mean, lr, rho, one_m_rho, eps, mom, centered, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i]
            s = sq[i] * rho + one_m_rho * gi * gi
            sq[i] = s
            if centered:
                c = mean[i] * rho + one_m_rho * gi
                mean[i] = c
                s = s - c * c
            avg = math.sqrt(s) + eps
            if mom > 0:
                b = buf[i] * mom + gi / avg
                buf[i] = b
                p[i] -= lr * b
            else:
                p[i] -= lr * gi / avg

    @cuda.jit
    def scale(p, factor, guard):
        if not math.isfinite(guard[0]):
            return
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            p[i] = p[i] * factor

    # -- metrics (one block) ---------------------------------------------------------

    @cuda.jit
    def batch_stats(out, y, stats, with_diff):
        """The fixed sums of reference.batch_stats: |out - y|, (out - y)^2, rows."""
        sh = cuda.shared.array(RED, dtype=D)
        n, c = out.shape
        tid = cuda.threadIdx.x
        sab = 0.0
        ssq = 0.0
        if with_diff:
            for r in range(tid, n, cuda.blockDim.x):
                for j in range(c):
                    d = D(out[r, j]) - D(y[r, j])
                    sab += abs(d)
                    ssq += d * d
        sab = bsum(sh, sab)
        ssq = bsum(sh, ssq)
        if tid == 0:
            stats[S_ABS] += sab
            stats[S_SQ] += ssq
            stats[S_ROWS] += n

    @cuda.jit
    def metric_sums(out, y, stats, kind, slot, k, logits, threshold):
        """One row of reference.batch_stats's metrics table (one block; the histogram
        buckets are atomic adds)."""
        sh = cuda.shared.array(RED, dtype=D)
        n, c = out.shape
        tid = cuda.threadIdx.x
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        for r in range(tid, n, cuda.blockDim.x):
            if kind == ACC_SPARSE or kind == ACC_CAT or kind == M_TOPK or kind == M_STOPK:
                sparse = kind == ACC_SPARSE or kind == M_STOPK
                lab = I64(y[r, 0]) if sparse else row_argmax(y, r, y.shape[1])
                if lab < 0 or lab >= c:
                    continue
                if kind == ACC_SPARSE or kind == ACC_CAT:
                    if row_argmax(out, r, c) == lab:
                        a0 += 1.0
                else:
                    higher = 0
                    for j in range(c):
                        if out[r, j] > out[r, lab]:
                            higher += 1
                    if higher < k:
                        a0 += 1.0
            elif kind == ACC_BIN:
                ycol = 1 if y.shape[1] == c else 0
                hits = 0.0
                for j in range(c):
                    if (out[r, j] > threshold) == (y[r, j * ycol] > HALF):
                        hits += 1.0
                a0 += hits / c
            elif kind == M_CONF:
                for j in range(c):
                    pred, pos = out[r, j] > threshold, y[r, j] > HALF
                    if pred and pos:
                        a0 += 1.0
                    elif pred:
                        a1 += 1.0
                    elif pos:
                        a2 += 1.0
            elif kind == M_HIST:
                for j in range(c):
                    p = D(out[r, j])
                    if logits:
                        p = 1.0 / (1.0 + math.exp(-p))
                    b = 0  # NaN; p below 0 counts as 0 (reference._bucket)
                    if p == p:
                        q = math.ceil(p * (k - 1)) - 1
                        b = 1 + min(max(I64(q), 0), k - 2)
                    side = 0 if y[r, j] > HALF else k
                    cuda.atomic.add(stats, slot + side + b, 1.0)
        a0 = bsum(sh, a0)
        a1 = bsum(sh, a1)
        a2 = bsum(sh, a2)
        if tid == 0 and kind != M_HIST:
            stats[slot] += a0
            if kind == M_CONF:
                stats[slot + 1] += a1
                stats[slot + 2] += a2

    @cuda.jit
    def flag_nonfinite(a, stats):
        """Sets stats[STAT_NONFINITE] to 1 when a (1-D) holds an inf or NaN (one block)."""
        sh = cuda.shared.array(RED, dtype=D)
        tid = cuda.threadIdx.x
        bad = 0.0
        for i in range(tid, a.shape[0], cuda.blockDim.x):
            if not math.isfinite(a[i]):
                bad += 1.0
        bad = bsum(sh, bad)
        if tid == 0 and bad > 0.0:
            stats[S_NONFINITE] = 1.0

    return {
        name: obj
        for name, obj in locals().items()
        if name in _KERNEL_NAMES  # the launchable kernels (device functions excluded)
    }


_KERNEL_NAMES = (
    "gemm_bias_act", "gemm_tn", "gemm_nt", "act_forward", "act_backward", "dropout",
    "softmax_rows", "softmax_back_rows", "softmax_xent_rows", "sparse_xent_rows",
    "pointwise_loss", "l1l2", "reduce_to", "act_grad_bias", "col_moments", "col_grad_sums",
    "bn_stats", "bn_apply", "bn_grad_sums", "bn_dx", "bn_inference_dx", "normalize",
    "sgd", "momentum", "adagrad", "rmsprop", "adam", "amsgrad", "rmsprop_mc", "scale",
    "batch_stats", "metric_sums", "flag_nonfinite",
)  # fmt: skip

_KERNELS: dict = {}


def _k(dtype):
    """The kernels for float dtype ``dtype`` (built on first use, compiled per signature)."""
    dt = np.dtype(dtype)
    ns = _KERNELS.get(dt)
    if ns is None:
        _require()
        if dt == np.float32:
            ns = _build(numba.float32)
        elif dt == np.float64:
            ns = _build(numba.float64)
        else:
            raise TypeError(f"arrays must be float32 or float64, got {dt}")
        _KERNELS[dt] = ns
    return ns


def kernel_signatures(dtype=np.float32, label_dtype=None):
    """{name: (python_function, signature)} of every kernel as the host code launches it
    for float ``dtype`` (labels of the sparse loss: ``label_dtype``, default ``dtype``).

    For ahead-of-time checks: ``cuda.compile_ptx(fn, sig, cc=(8, 0))`` needs no GPU."""
    from numba import types as nt

    ns = _k(dtype)
    f = numba.from_dtype(np.dtype(dtype))
    lab = numba.from_dtype(np.dtype(label_dtype or dtype))
    a1, a2 = nt.Array(f, 1, "C"), nt.Array(f, 2, "C")
    d1, l2 = nt.Array(nt.float64, 1, "C"), nt.Array(lab, 2, "C")
    d2 = nt.Array(nt.float64, 2, "C")
    i, d, u = nt.int64, nt.float64, nt.uint64
    sigs = {
        "gemm_bias_act": (a2, a2, a1, a2, i, f),
        "gemm_tn": (a2, a2, a2),
        "gemm_nt": (a2, a2, a2),
        "act_forward": (a2, a2, i, f),
        "act_backward": (a2, a2, a2, i, f),
        "dropout": (a2, a2, f, u, u),
        "softmax_rows": (a2, a2),
        "softmax_back_rows": (a2, a2, a2),
        "softmax_xent_rows": (a2, a2, a1, a2, a2, d1),
        "sparse_xent_rows": (a2, l2, a1, a2, a2, d1),
        "pointwise_loss": (a2, a2, a1, a2, a2, d1, i),
        "l1l2": (a1, a1, d1, f, f, d, d, i),
        "reduce_to": (d1, i, d1, i, d, i),
        "act_grad_bias": (a2, a2, a2, a1, i, f),
        "col_moments": (a2, d1, i),
        "col_grad_sums": (a2, a2, a2, d1, i),
        "bn_stats": (a2, d1, i, d2, a1, a1, a2, f, d, d, i),
        "bn_apply": (a2, a2, a1, a1, a2, i, i),
        "bn_grad_sums": (d1, i, d2, a1, a1, i, i),
        "bn_dx": (a2, a2, a1, a2, d2, a2, i),
        "bn_inference_dx": (a2, a1, a2, a2, i),
        "normalize": (a2, a1, a1, a2, i),
        "sgd": (a1, a1, f, d1),
        "momentum": (a1, a1, a1, f, f, i, d1),
        "adagrad": (a1, a1, a1, f, f, d1),
        "rmsprop": (a1, a1, a1, f, f, f, f, d1),
        "adam": (a1, a1, a1, a1, f, f, f, f, f, f, f, f, d1),
        "amsgrad": (a1, a1, a1, a1, a1, f, f, f, f, f, f, f, f, d1),
        "rmsprop_mc": (a1, a1, a1, a1, a1, f, f, f, f, f, i, d1),
        "scale": (a1, f, d1),
        "batch_stats": (a2, a2, d1, i),
        "metric_sums": (a2, a2, d1, i, i, i, i, f),
        "flag_nonfinite": (a1, d1),
    }
    return {name: (ns[name].py_func, sigs[name]) for name in _KERNEL_NAMES}


# ---------------------------------------------------------------------------------------
# Launch configurations


def _ew(size, cap=_EW_MAX_BLOCKS):
    """(blocks, threads) for a grid-stride loop over ``size`` elements."""
    return max(1, min((size + _EW_BLOCK - 1) // _EW_BLOCK, cap)), _EW_BLOCK


def _rows(n, c):
    """(blocks, threads) for one block per row of width c (power-of-two threads)."""
    bs = _ROW_MIN
    while bs < c and bs < _ROW_CAP:
        bs *= 2
    return max(1, min(n, _ROW_MAX_BLOCKS)), bs


def _tiles(rows, cols):
    return ((cols + TILE - 1) // TILE, (rows + TILE - 1) // TILE), (TILE, TILE)


_LAUNCHERS: dict = {}


def _launch(k, name, grid, block):
    """kernel[grid, block], cached: a launch configuration is built (and checked) once.

    Not under the simulator, whose ``kernel[grid, block]`` configures and returns the kernel
    object itself: a cached configuration would change under the next one."""
    if _SIM:
        return k[name][grid, block]
    key = (name, id(k), grid, block)
    cfg = _LAUNCHERS.get(key)
    if cfg is None:
        if len(_LAUNCHERS) >= 4096:
            _LAUNCHERS.clear()
        cfg = _LAUNCHERS[key] = k[name][grid, block]
    return cfg


def _ft(a):
    return a.dtype.type


# ---------------------------------------------------------------------------------------
# Device-level launchers (device arrays in, nothing copied, nothing synchronised)


#: The activations, losses and optimizers this backend runs; models with others are refused
#: at build (activations) or compile (losses, optimizers), naming the backends that run them.
ACTS = frozenset({C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH, C.SOFTMAX})
LOSSES = frozenset(range(C.SOFTMAX_CE, C.MAE + 1))
OPTS = frozenset({C.SGD, C.MOMENTUM, C.ADAGRAD, C.RMSPROP, C.ADAM, C.AMSGRAD, C.RMSPROP_MC})
_CPU_ONLY = "; the cython, numba and numpy backends run it"
#: Gradient clipping (hyper's clip entries) has no CUDA kernels.
CLIPPING = False


def _refuse(what, code, where=""):
    """The ValueError for a code this backend does not run (or that does not exist)."""
    known = {"activation": C.N_ACTS, "loss": C.N_LOSSES, "optimizer": C.N_OPTS}[what]
    if 0 <= int(code) < known:
        return ValueError(f"the cuda backend cannot run {what} code {code}{where}{_CPU_ONLY}")
    return ValueError(f"unknown {what} code {code}{where}")


def _act_fwd_d(x, out, act, alpha):
    k = _k(x.dtype)
    n, o = x.shape
    if act == C.SOFTMAX:
        grid, block = _rows(n, o)
        _launch(k, "softmax_rows", grid, block)(x, out)
    elif act in (C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH):
        grid, block = _ew(n * o)
        _launch(k, "act_forward", grid, block)(x, out, int(act), _ft(x)(alpha))
    else:
        raise _refuse("activation", act)


def _act_bwd_d(y, dout, dx, act, alpha):
    k = _k(y.dtype)
    n, o = y.shape
    if act == C.SOFTMAX:
        grid, block = _rows(n, o)
        _launch(k, "softmax_back_rows", grid, block)(y, dout, dx)
    elif act in (C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH):
        grid, block = _ew(n * o)
        _launch(k, "act_backward", grid, block)(y, dout, dx, int(act), _ft(y)(alpha))
    else:
        raise _refuse("activation", act)


def _dense_fwd_d(x, w, b, out, act, alpha):
    if act not in ACTS:
        raise _refuse("activation", act)
    k = _k(x.dtype)
    grid, block = _tiles(x.shape[0], w.shape[1])
    fused = act != C.SOFTMAX
    _launch(k, "gemm_bias_act", grid, block)(x, w, b, out, int(act) if fused else C.LINEAR,
                                    _ft(x)(alpha))  # fmt: skip
    if not fused:
        _act_fwd_d(out, out, act, alpha)


def _dense_bwd_d(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
    k = _k(x.dtype)
    n, o = dz.shape
    ni = x.shape[1]
    bx, by = _COL_BLOCK
    col_grid = max(1, (o + bx - 1) // bx)
    t = _ft(x)
    if act == C.SOFTMAX:
        _act_bwd_d(y, dout, dz, act, alpha)
        _launch(k, "act_grad_bias", col_grid, (bx, by))(dz, dz, dz, db, C.LINEAR, t(alpha))
    elif act in (C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH):
        _launch(k, "act_grad_bias", col_grid, (bx, by))(y, dout, dz, db, int(act), t(alpha))
    else:
        raise ValueError(f"unknown activation code {act}")
    grid, block = _tiles(ni, o)
    _launch(k, "gemm_tn", grid, block)(x, dz, dw)
    if need_dx:
        grid, block = _tiles(n, ni)
        _launch(k, "gemm_nt", grid, block)(dz, w, dx)


def _splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _dropout_d(x, out, rate, seed, first=0):
    """reference.dropout_forward (its mask's elements from ``first`` on)."""
    scale = _ft(x)(1.0 / (1.0 - rate))
    base = np.uint64((_splitmix64(int(seed) & _M64) + int(first)) & _M64)
    threshold = np.uint64(int(rate * 16777216.0))
    n, o = x.shape
    grid, block = _ew(n * o)
    _launch(_k(x.dtype), "dropout", grid, block)(x, out, scale, base, threshold)


def _reduce(partials, count, acc, slot, div, accumulate):
    _launch(_k(np.float32), "reduce_to", 1, _RED_BLOCK)(
        partials, int(count), acc, int(slot), float(div), int(accumulate)
    )


def _loss_d(out, y, sw, p, dz, loss_code, acc, slot=0, accumulate=False):
    """Writes dz (and p for the logit losses); acc[slot] (+)= the batch loss."""
    k = _k(out.dtype)
    sc = _scratch()
    n, c = out.shape
    if loss_code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE):
        rowloss = sc.partials_for(n)
        grid, block = _rows(n, c)
        name = "softmax_xent_rows" if loss_code == C.SOFTMAX_CE else "sparse_xent_rows"
        _launch(k, name, grid, block)(out, y, sw, p, dz, rowloss)
        _reduce(rowloss, n, acc, slot, n, accumulate)
    elif loss_code in (C.SIGMOID_BCE, C.CATEGORICAL_CE, C.BINARY_CE, C.MSE, C.MAE):
        grid, block = _ew(n * c, _MAX_PARTIALS)
        partials = sc.partials_for(grid)
        _launch(k, "pointwise_loss", grid, block)(out, y, sw, p, dz, partials, int(loss_code))
        div = n if loss_code == C.CATEGORICAL_CE else n * c
        _reduce(partials, grid, acc, slot, div, accumulate)
    else:
        raise ValueError(f"unknown loss code {loss_code}")


def _l1l2_d(w, dw, l1, l2, acc, slot, accumulate, write_grad=True):
    """w, dw flat (P,); dw += penalty gradient (if write_grad); acc[slot] (+)= penalty."""
    k = _k(w.dtype)
    t = _ft(w)
    grid, block = _ew(w.shape[0], _MAX_PARTIALS)
    partials = _scratch().partials_for(grid)
    _launch(k, "l1l2", grid, block)(w, dw, partials, t(l1), t(2 * l2), float(l1), float(l2),
                           int(write_grad))  # fmt: skip
    _reduce(partials, grid, acc, slot, 1.0, accumulate)


_OPT_KERNELS = {C.SGD: "sgd", C.MOMENTUM: "momentum", C.ADAGRAD: "adagrad",
                C.RMSPROP: "rmsprop", C.ADAM: "adam", C.AMSGRAD: "amsgrad",
                C.RMSPROP_MC: "rmsprop_mc"}  # fmt: skip


def _weight_decay_of(opt_code, hyper):
    """reference.weight_decay_of (hyper: host floats)."""
    i = C.HYPER_LEN[opt_code] + C.H_WEIGHT_DECAY
    return 0.0 if opt_code in C.OWN_DECAY or len(hyper) <= i else float(hyper[i])


def _optimizer_d(params, grads, rows, opt_code, hyper, step, guard):
    """One optimizer step over flat device buffers; ``rows`` are the (P,) state slots.

    Skipped on the device when guard[0] is not finite.  ``hyper``: host floats."""
    k = _k(params.dtype)
    t = _ft(params)
    grid, block = _ew(params.shape[0])
    if opt_code not in _OPT_KERNELS:
        raise ValueError(f"unknown optimizer code {opt_code}")
    wd = _weight_decay_of(opt_code, hyper)
    if wd:
        _launch(k, "scale", grid, block)(params, t(1 - float(hyper[0]) * wd), guard)
    go = _launch(k, _OPT_KERNELS[opt_code], grid, block)
    if opt_code == C.SGD:
        go(params, grads, t(hyper[0]), guard)
    elif opt_code == C.MOMENTUM:
        go(params, grads, rows[0], t(hyper[0]), t(hyper[1]), int(hyper[2]), guard)
    elif opt_code == C.ADAGRAD:
        go(params, grads, rows[0], t(hyper[0]), t(hyper[1]), guard)
    elif opt_code == C.RMSPROP:
        lr, rho, eps = (float(v) for v in hyper[:3])
        go(params, grads, rows[0], t(lr), t(rho), t(1 - rho), t(eps), guard)
    elif opt_code == C.RMSPROP_MC:
        lr, rho, eps, mom = (float(v) for v in hyper[:4])
        go(params, grads, rows[0], rows[1], rows[2], t(lr), t(rho), t(1 - rho), t(eps), t(mom),
           int(hyper[4] != 0), guard)  # fmt: skip
    else:
        lr, b1, b2, eps, wd = (float(v) for v in hyper[:5])
        decay = 1 - lr * wd if wd else 1.0  # multiplying by exactly 1 changes nothing
        step_size = lr / (1 - b1**step)
        bc2 = math.sqrt(1 - b2**step)
        rows = rows[:3] if opt_code == C.AMSGRAD else rows[:2]
        go(params, grads, *rows, t(decay), t(b1), t(1 - b1), t(b2), t(1 - b2), t(step_size),
           t(bc2), t(eps), guard)  # fmt: skip


def _state_rows(state, opt_code):
    """The (P,) views of the optimizer's state slots (none for SGD or an unknown code)."""
    slots = C.STATE_SLOTS[opt_code] if opt_code in _OPT_KERNELS else 0
    return [_row(state, i) for i in range(slots)]


# -- normalisation layers -------------------------------------------------------------------


def _col_grid(r, c):
    """(chunks, rows per chunk, grid, block) of a column reduction over x (r, c)."""
    bx, by = _COL_BLOCK
    chunks = max(1, min((r + _CHUNK_ROWS - 1) // _CHUNK_ROWS, _MAX_CHUNKS))
    rpc = (r + chunks - 1) // chunks
    return chunks, rpc, ((c + bx - 1) // bx, chunks), (bx, by)


def _bn_fwd_d(x, gamma, beta, mmean, mvar, saved, out, acc, training, momentum, epsilon):
    """Device BatchNormalization forward; gamma, beta: None when absent."""
    k = _k(x.dtype)
    r, c = x.shape
    sc = _scratch()
    chunks = 0
    partials = sc.partials
    if training:
        chunks, rpc, grid, block = _col_grid(r, c)
        partials = sc.partials_for(chunks * 2 * c)
        _launch(k, "col_moments", grid, block)(x, partials, rpc)
    grid, block = _ew(c)
    _launch(k, "bn_stats", grid, block)(
        x, partials, chunks, acc, mmean, mvar, saved, _ft(x)(momentum), 1.0 - float(momentum),
        float(epsilon), int(bool(training)),
    )  # fmt: skip
    dummy = _row(saved, 0)
    grid, block = _ew(r * c)
    _launch(k, "bn_apply", grid, block)(
        x, saved, dummy if gamma is None else gamma, dummy if beta is None else beta, out,
        int(gamma is not None), int(beta is not None),
    )  # fmt: skip


def _bn_bwd_d(x, gamma, saved, dout, dx, dgamma, dbeta, acc, need_dx):
    """Device BatchNormalization backward; gamma, dgamma, dbeta: None when absent."""
    k = _k(x.dtype)
    r, c = x.shape
    chunks, rpc, grid, block = _col_grid(r, c)
    partials = _scratch().partials_for(chunks * 2 * c)
    _launch(k, "col_grad_sums", grid, block)(x, saved, dout, partials, rpc)
    dummy = _row(saved, 0)
    grid, block = _ew(c)
    _launch(k, "bn_grad_sums", grid, block)(
        partials, chunks, acc, dummy if dgamma is None else dgamma,
        dummy if dbeta is None else dbeta, int(dgamma is not None), int(dbeta is not None),
    )  # fmt: skip
    if need_dx:
        grid, block = _ew(r * c)
        _launch(k, "bn_dx", grid, block)(x, saved, dummy if gamma is None else gamma, dout, acc,
                                         dx, int(gamma is not None))  # fmt: skip


def _bn_inf_bwd_d(gamma, saved, dout, dx):
    """Device BatchNormalization backward in inference mode; gamma: None when absent."""
    grid, block = _ew(dout.shape[0] * dout.shape[1])
    _launch(_k(dout.dtype), "bn_inference_dx", grid, block)(
        saved, _row(saved, 0) if gamma is None else gamma, dout, dx, int(gamma is not None)
    )


def _norm_d(x, mean, variance, out, centered):
    grid, block = _ew(x.shape[0] * x.shape[1])
    _launch(_k(x.dtype), "normalize", grid, block)(x, mean, variance, out, int(centered))


# -- the plan of layers -----------------------------------------------------------------------

#: The layer kinds this backend runs in a plan.
KINDS = frozenset({C.DENSE, C.DROPOUT, C.ACTIVATION, C.BATCHNORM, C.NORMALIZATION})

_KIND_NAMES = {C.DENSE: "Dense", C.DROPOUT: "Dropout", C.ACTIVATION: "Activation",
               C.BATCHNORM: "BatchNormalization", C.NORMALIZATION: "Normalization",
               C.CONV2D: "Conv2D", C.MAXPOOL2D: "MaxPooling2D",
               C.AVGPOOL2D: "AveragePooling2D", C.GLOBAL_AVGPOOL2D: "GlobalAveragePooling2D",
               C.GLOBAL_MAXPOOL2D: "GlobalMaxPooling2D"}  # fmt: skip


class _Row:
    """One plan row as host Python numbers (what the launchers need)."""

    __slots__ = ("index", "kind", "act", "ri", "wi", "ro", "wo", "in_off", "out_off",
                 "save_off", "acc_off", "w0", "w1", "s0", "s1", "dout_off", "dx_off",
                 "backward", "alpha", "l1", "l2", "rate", "momentum", "epsilon",
                 "frozen")  # fmt: skip

    def __init__(self, index, row, f):
        r = [int(v) for v in row]
        self.index = index
        self.kind, self.act = r[C.P_KIND], r[C.P_ACT]
        self.ri, self.wi = r[C.P_IN0] * r[C.P_IN1], r[C.P_IN2]
        self.ro, self.wo = r[C.P_OUT0] * r[C.P_OUT1], r[C.P_OUT2]
        self.in_off, self.out_off = r[C.P_IN_OFF], r[C.P_OUT_OFF]
        self.save_off, self.acc_off = r[C.P_SAVE_OFF], r[C.P_ACC_OFF]
        self.w0, self.w1, self.s0, self.s1 = r[C.P_W0], r[C.P_W1], r[C.P_S0], r[C.P_S1]
        self.dout_off, self.dx_off = r[C.P_DOUT_OFF], r[C.P_DX_OFF]
        self.backward = bool(r[C.P_BACKWARD])
        self.frozen = bool(r[C.P_FROZEN])
        self.alpha, self.l1, self.l2 = float(f[C.F_ALPHA]), float(f[C.F_L1]), float(f[C.F_L2])
        self.rate = float(f[C.F_RATE])
        self.momentum, self.epsilon = float(f[C.F_MOMENTUM]), float(f[C.F_EPSILON])


_PLANS: dict = {}


def _rows_of(plan):
    """The plan's rows as host :class:`_Row` objects (parsed once per table contents).

    Raises ValueError, before anything runs, on a layer kind that is unknown or that this
    backend does not run (not in KINDS), naming the kind and the plan row."""
    layers = np.ascontiguousarray(to_host(plan[0]), dtype=np.int64)
    layer_f = np.ascontiguousarray(to_host(plan[1]), dtype=np.float64)
    key = (layers.shape, layer_f.shape, layers.tobytes(), layer_f.tobytes())
    rows = _PLANS.get(key)
    if rows is None:
        if layers.ndim != 2 or layers.shape[0] == 0 or layers.shape[1] < C.P_COLS:
            raise ValueError(f"the plan's layers table must be (L >= 1, {C.P_COLS}) int64, "
                             f"got shape {layers.shape}")  # fmt: skip
        if layer_f.shape != (layers.shape[0], layer_f.shape[-1]) or layer_f.shape[1] < C.F_COLS:
            raise ValueError(f"the plan's layer_f table must be ({layers.shape[0]}, "
                             f"{C.F_COLS}) float64, got shape {layer_f.shape}")  # fmt: skip
        rows = tuple(_Row(l, layers[l], layer_f[l]) for l in range(layers.shape[0]))
        if len(_PLANS) >= 64:
            _PLANS.clear()
        _PLANS[key] = rows
    for row in rows:
        if row.kind not in KINDS:
            if row.kind not in _KIND_NAMES:
                raise ValueError(f"unknown layer kind {row.kind} (layer {row.index})")
            raise ValueError(
                f"the cuda backend cannot run layer kind {row.kind} "
                f"({_KIND_NAMES[row.kind]}, layer {row.index}); the cython, numba and numpy "
                "backends run it"
            )
        if row.act not in ACTS:
            raise _refuse("activation", row.act, f" (layer {row.index})")
    return rows


def _batch_view(x, n, rows, width):
    """x (N, ...) as (N * rows, width) (a cached reshape when its shape differs)."""
    shape = (n * rows, width)
    if tuple(x.shape) == shape:
        return x
    return _cached(x, ("as", shape), lambda: x.reshape(shape))


def _layer_io(x, acts, row, n):
    if row.in_off < 0:
        inp = _batch_view(x, n, row.ri, row.wi)
    else:
        inp = _view(acts, row.in_off, (n * row.ri, row.wi))
    return inp, _view(acts, row.out_off, (n * row.ro, row.wo))


def _opt_view(buf, off, size):
    """buf[off : off + size], or None for an absent weight (off < 0)."""
    return None if off < 0 else _view(buf, off, (size,))


def _forward_d(x, rows, net, work, training, seed, step, row0=0):
    params, _, _, nontrain = net
    acts, _, acc = work
    n = x.shape[0]
    for row in rows:
        inp, out = _layer_io(x, acts, row, n)
        kind, width = row.kind, row.wi
        if kind == C.DENSE:
            w = _view(params, row.w0, (width, row.wo))
            _dense_fwd_d(inp, w, _view(params, row.w1, (row.wo,)), out, row.act, row.alpha)
        elif kind == C.DROPOUT:
            if training and row.rate > 0:
                _dropout_d(inp, out, row.rate, dropout_seed(seed, step, row.index),
                           row0 * (inp.size // max(n, 1)))  # fmt: skip
            else:
                _act_fwd_d(inp, out, C.LINEAR, 0.0)
        elif kind == C.ACTIVATION:
            _act_fwd_d(inp, out, row.act, row.alpha)
        elif kind == C.BATCHNORM:
            _bn_fwd_d(
                inp, _opt_view(params, row.w0, width), _opt_view(params, row.w1, width),
                _view(nontrain, row.s0, (width,)), _view(nontrain, row.s1, (width,)),
                _view(acts, row.save_off, (2, width)), out,
                _view(acc, row.acc_off, (2, width)), training and not row.frozen, row.momentum,
                row.epsilon,
            )  # fmt: skip
        else:  # NORMALIZATION (_rows_of admits nothing else)
            _norm_d(inp, _view(nontrain, row.s0, (width,)), _view(nontrain, row.s1, (width,)),
                    out, True)  # fmt: skip


def _backward_d(x, rows, net, work, seed, step, sacc, accumulate, row0=0):
    """Device back-propagation; penalties go to sacc[0].  Returns True if it wrote sacc[0]."""
    params, grads, _, nontrain = net
    acts, gbuf, acc = work
    n = x.shape[0]
    for row in reversed(rows):
        if not row.backward:
            continue
        inp, out = _layer_io(x, acts, row, n)
        kind, width = row.kind, row.wi
        g = _view(gbuf, row.dout_off, (n * row.ro, row.wo))
        need_dx = row.dx_off >= 0
        dx = _view(gbuf, max(row.dx_off, 0), (n * row.ri, width))
        if kind == C.DENSE:
            shape = (width, row.wo)
            w, dw = _view(params, row.w0, shape), _view(grads, row.w0, shape)
            _dense_bwd_d(inp, w, out, g, g, dx, dw, _view(grads, row.w1, (row.wo,)), row.act,
                         row.alpha, need_dx)  # fmt: skip
            if row.l1 or row.l2:
                size = width * row.wo
                _l1l2_d(_view(params, row.w0, (size,)), _view(grads, row.w0, (size,)), row.l1,
                        row.l2, sacc, 0, accumulate)  # fmt: skip
                accumulate = True
        elif kind == C.DROPOUT:
            if row.rate > 0:
                _dropout_d(g, dx, row.rate, dropout_seed(seed, step, row.index),
                           row0 * (g.size // max(x.shape[0], 1)))  # fmt: skip
            else:
                _act_fwd_d(g, dx, C.LINEAR, 0.0)
        elif kind == C.ACTIVATION:
            _act_bwd_d(out, g, dx, row.act, row.alpha)
        elif kind == C.BATCHNORM and row.frozen:  # inference mode: statistics are constants
            _bn_inf_bwd_d(_opt_view(params, row.w0, width),
                          _view(acts, row.save_off, (2, width)), g, dx)  # fmt: skip
        elif kind == C.BATCHNORM:
            _bn_bwd_d(
                inp, _opt_view(params, row.w0, width), _view(acts, row.save_off, (2, width)), g,
                dx, _opt_view(grads, row.w0, width), _opt_view(grads, row.w1, width),
                _view(acc, row.acc_off, (2, width)), need_dx,
            )  # fmt: skip
        else:  # NORMALIZATION
            var = _view(nontrain, row.s1, (width,))
            _norm_d(g, var, var, dx, False)
    return accumulate


def _penalty_d(params, rows, sacc, accumulate):
    for row in rows:
        if row.kind == C.DENSE and (row.l1 or row.l2):
            w = _view(params, row.w0, (row.wi * row.wo,))
            _l1l2_d(w, w, row.l1, row.l2, sacc, 0, accumulate, write_grad=False)
            accumulate = True


def _is_fused(loss_code):
    return loss_code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE)


def _output_d(acts, rows, n):
    last = rows[-1]
    return _view(acts, last.out_off, (n, last.ro * last.wo))


def _stack_loss_d(batch, rows, work, loss_code, logits_out, sacc):
    x, y, sw = batch
    acts, gbuf, _ = work
    n = x.shape[0]
    out = _output_d(acts, rows, n)
    dz = _view(gbuf, rows[-1].dout_off, out.shape)
    p = out if (_is_fused(loss_code) and not logits_out) else dz
    _loss_d(out, y, sw, p, dz, loss_code, sacc, 0, False)


def _check_loss(loss_code):
    if loss_code not in LOSSES:
        raise _refuse("loss", loss_code)


def _check_opt(opt_code):
    if opt_code not in _OPT_KERNELS:
        raise _refuse("optimizer", opt_code)


def _check_no_clipping(opt_code, hyper):
    """Gradient clipping has no CUDA kernels: hyper's clip entries (codes.H_*) must be off."""
    if int(opt_code) not in range(C.N_OPTS):
        return  # an unknown code is refused by _check_opt
    base = C.HYPER_LEN[int(opt_code)]
    if any(float(v) > 0 for v in list(hyper)[base : base + C.N_CLIP]):
        raise ValueError(
            "the cuda backend cannot clip gradients (clipnorm, clipvalue, global_clipnorm)"
            + _CPU_ONLY
        )


def clip_gradients(grads, layers, opt_code, hyper):
    """Clipping is not run by this backend: a no-op when hyper's clip entries are off, else
    the ValueError naming the backends that run it."""
    _check_opt(opt_code)
    _check_no_clipping(opt_code, to_host(hyper))


def _train_d(batch, rows, net, work, loss_code, logits_out, opt_code, hyper, step, seed):
    sacc = _scratch().acc
    x = batch[0]
    params, grads, state, _ = net
    _forward_d(x, rows, net, work, 1, seed, step)
    _stack_loss_d(batch, rows, work, loss_code, logits_out, sacc)
    _backward_d(x, rows, net, work, seed, step, sacc, True)
    n_train = state.shape[1]  # the frozen layers' weights follow, never updated
    if n_train:
        _optimizer_d(params[:n_train], grads[:n_train], _state_rows(state, opt_code), opt_code,
                     hyper, step, sacc)  # fmt: skip
    return _scratch().read(0)


def _eval_d(batch, rows, net, work, loss_code, logits_out):
    sacc = _scratch().acc
    _forward_d(batch[0], rows, net, work, 0, 0, 0)
    _stack_loss_d(batch, rows, work, loss_code, logits_out, sacc)
    _penalty_d(net[0], rows, sacc, True)
    return _scratch().read(0)


# ---------------------------------------------------------------------------------------
# The contract (see reference for shapes and semantics)


def activation_forward(x, out, act, alpha):
    """out = act(x) (softmax: row-wise).  x, out (N, O); out may alias x."""
    st = _Stage()
    _act_fwd_d(st(x), st(out, True), act, alpha)
    st.finish()


def activation_backward(y, dout, dx, act, alpha):
    """dx from the activation's output y and dout.  (N, O); dx may alias dout."""
    st = _Stage()
    _act_bwd_d(st(y), st(dout), st(dx, True), act, alpha)
    st.finish()


def dense_forward(x, w, b, out, act, alpha):
    """out = act(x @ w + b): tiled GEMM with the bias and activation in its epilogue."""
    st = _Stage()
    _dense_fwd_d(st(x), st(w), st(b), st(out, True), act, alpha)
    st.finish()


def dense_backward(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
    """dz = dout*act'(.), db = sum_N dz (one pass), dw = x.T @ dz, dx = dz @ w.T."""
    st = _Stage()
    _dense_bwd_d(st(x), st(w), st(y), st(dout), st(dz, True), st(dx, True), st(dw, True),
                 st(db, True), act, alpha, need_dx)  # fmt: skip
    st.finish()


def dropout_forward(x, out, rate, seed):
    """out = x * keep / (1 - rate) with reference.dropout_keep's mask.  May alias."""
    st = _Stage()
    _dropout_d(st(x), st(out, True), rate, seed)
    st.finish()


def dropout_backward(dout, dx, rate, seed):
    """dx = dout * keep / (1 - rate), the forward's mask.  May alias."""
    dropout_forward(dout, dx, rate, seed)


def _loss_call(out, y, sw, p, dz, loss_code, write_p):
    st = _Stage()
    args = (st(out), st(y), st(sw), st(p, write_p), st(dz, True))
    acc = _scratch().acc
    _loss_d(*args, loss_code, acc, 0, False)
    loss = _scratch().read(0)
    st.finish()
    return loss


def softmax_cross_entropy(z, y, sw, p, dz):
    """Softmax + categorical cross-entropy from logits; returns the loss."""
    return _loss_call(z, y, sw, p, dz, C.SOFTMAX_CE, True)


def sparse_softmax_cross_entropy(z, labels, sw, p, dz):
    """Softmax + cross-entropy with class indices labels (N,); returns the loss."""
    labels2 = labels.reshape(labels.shape[0], 1)
    return _loss_call(z, labels2, sw, p, dz, C.SPARSE_SOFTMAX_CE, True)


def sigmoid_binary_cross_entropy(z, y, sw, p, dz):
    """Sigmoid + binary cross-entropy from logits; returns the loss."""
    return _loss_call(z, y, sw, p, dz, C.SIGMOID_BCE, True)


def categorical_crossentropy(p, y, sw, dp):
    """Cross-entropy on clipped probabilities; returns the loss."""
    return _loss_call(p, y, sw, dp, dp, C.CATEGORICAL_CE, False)


def binary_crossentropy(p, y, sw, dp):
    """Binary cross-entropy on clipped probabilities; returns the loss."""
    return _loss_call(p, y, sw, dp, dp, C.BINARY_CE, False)


def mean_squared_error(pred, y, sw, dpred):
    """Mean squared error; returns the loss."""
    return _loss_call(pred, y, sw, dpred, dpred, C.MSE, False)


def mean_absolute_error(pred, y, sw, dpred):
    """Mean absolute error; returns the loss."""
    return _loss_call(pred, y, sw, dpred, dpred, C.MAE, False)


def huber(pred, y, sw, dpred):
    """Not run by this backend: raises the ValueError naming the backends that run it."""
    raise _refuse("loss", C.HUBER)


def kl_divergence(p, y, sw, dp):
    """Not run by this backend: raises the ValueError naming the backends that run it."""
    raise _refuse("loss", C.KL_DIVERGENCE)


def poisson(p, y, sw, dp):
    """Not run by this backend: raises the ValueError naming the backends that run it."""
    raise _refuse("loss", C.POISSON)


def loss_grad(out, y, sw, p, dz, loss_code):
    """Dispatch to the loss ``loss_code``; returns the loss, writes dz (and p)."""
    _check_loss(loss_code)
    fused = _is_fused(loss_code)
    return _loss_call(out, y, sw, p if fused else dz, dz, loss_code, fused)


def l1l2_penalty(w, dw, l1, l2):
    """dw += l1*sign(w) + 2*l2*w; returns l1*sum|w| + l2*sum w^2.  Any shape."""
    st = _Stage()
    wd, dwd = st(w), st(dw, True)
    size = int(np.prod(w.shape))
    acc = _scratch().acc
    _l1l2_d(wd.reshape(size), dwd.reshape(size), l1, l2, acc, 0, False)
    penalty = _scratch().read(0)
    st.finish()
    return penalty


def _opt_call(opt_code, params, grads, rows, hyper, step):
    st = _Stage()
    p, g = st(params, True), st(grads)
    _optimizer_d(p, g, [st(r, True) for r in rows], opt_code, hyper, step, _scratch().guard)
    st.finish()


def sgd_update(p, g, lr):
    """p -= lr * g."""
    _opt_call(C.SGD, p, g, [], (lr,), 0)


def momentum_update(p, g, buf, lr, momentum, nesterov):
    """PyTorch SGD with momentum (optionally Nesterov)."""
    _opt_call(C.MOMENTUM, p, g, [buf], (lr, momentum, nesterov), 0)


def adagrad_update(p, g, acc, lr, epsilon):
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    _opt_call(C.ADAGRAD, p, g, [acc], (lr, epsilon), 0)


def rmsprop_update(p, g, sq, lr, rho, epsilon):
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    _opt_call(C.RMSPROP, p, g, [sq], (lr, rho, epsilon), 0)


def adam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, weight_decay, step):
    """Adam / AdamW (PyTorch's formulas), ``step`` = t >= 1."""
    _opt_call(C.ADAM, p, g, [m, v], (lr, beta_1, beta_2, epsilon, weight_decay), step)


def nadam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, step):
    """Not run by this backend: raises the ValueError naming the backends that run it."""
    raise _refuse("optimizer", C.NADAM)


def optimizer_update(params, grads, state, opt_code, hyper, step):
    """One fused optimizer kernel over the flat buffers; state (S, P)."""
    _check_opt(opt_code)
    st = _Stage()
    p, g, s = st(params, True), st(grads), st(state, True)
    hyper = [float(v) for v in to_host(hyper)]
    _optimizer_d(p, g, _state_rows(s, opt_code), opt_code, hyper, step, _scratch().guard)
    st.finish()


def _opt_arg(st, a, out=False):
    """An optional weight argument: None when absent (empty), else staged."""
    if a is None or a.shape[0] == 0:
        return None
    return st(a, out)


def batchnorm_forward(x, gamma, beta, moving_mean, moving_var, saved, out, acc, training,
                      momentum, epsilon):  # fmt: skip
    """Batch normalisation of each column of x (R, C): shifted float64 column sums in row
    chunks, then one pass per column (moments, moving statistics, saved) and one
    elementwise pass.  gamma, beta may be empty (absent); out may alias x."""
    st = _Stage()
    _bn_fwd_d(st(x), _opt_arg(st, gamma), _opt_arg(st, beta), st(moving_mean, True),
              st(moving_var, True), st(saved, True), st(out, True), st(acc, True), training,
              momentum, epsilon)  # fmt: skip
    st.finish()


def batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, need_dx):
    """Gradients of batchnorm_forward in training from saved = [mean, inv_std]; dx may
    alias dout; dgamma, dbeta empty when the weight is absent."""
    st = _Stage()
    _bn_bwd_d(st(x), _opt_arg(st, gamma), st(saved), st(dout), st(dx, True),
              _opt_arg(st, dgamma, True), _opt_arg(st, dbeta, True), st(acc, True),
              need_dx)  # fmt: skip
    st.finish()


def batchnorm_inference_backward(gamma, saved, dout, dx):
    """dL/dx of batchnorm_forward in inference mode from saved = [mean, inv_std]: dx =
    dout * gamma * inv_std; gamma may be empty (absent); dx may alias dout."""
    st = _Stage()
    _bn_inf_bwd_d(_opt_arg(st, gamma), st(saved), st(dout), st(dx, True))
    st.finish()


def normalization_forward(x, mean, variance, out):
    """out = (x - mean) / max(sqrt(variance), NORM_EPS) per column; out may alias x."""
    st = _Stage()
    _norm_d(st(x), st(mean), st(variance), st(out, True), True)
    st.finish()


def normalization_backward(variance, dout, dx):
    """dx = dout / max(sqrt(variance), NORM_EPS); dx may alias dout."""
    st = _Stage()
    var = st(variance)
    _norm_d(st(dout), var, var, st(dx, True), False)
    st.finish()


# -- convolution and pooling: not run by this backend (the CPU backends run them) --------


def _no_conv(op):
    raise ValueError(
        f"the cuda backend has no {op} kernel (Conv2D and pooling run on the cython, numba "
        "and numpy backends)"
    )


def conv2d_forward(x, w, b, cols, out, act, alpha, sh, sw, pad_top, pad_left):
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("conv2d_forward")


def conv2d_backward(x, w, y, dout, cols, dz, dx, dw, db, act, alpha, sh, sw, pad_top, pad_left,
                    need_dx):  # fmt: skip
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("conv2d_backward")


def maxpool2d_forward(x, argmax, out, kh, kw, sh, sw, pad_top, pad_left):
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("maxpool2d_forward")


def maxpool2d_backward(argmax, dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("maxpool2d_backward")


def avgpool2d_forward(x, out, kh, kw, sh, sw, pad_top, pad_left):
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("avgpool2d_forward")


def avgpool2d_backward(dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """Not run by this backend: raises ValueError (see KINDS)."""
    _no_conv("avgpool2d_backward")


def _stage_net(st, net, write_params, write_grads, write_state, write_nontrain):
    params, grads, state, nontrain = net
    return (st(params, write_params), st(grads, write_grads), st(state, write_state),
            st(nontrain, write_nontrain))  # fmt: skip


def _stage_work(st, work, write_acts, write_gbuf):
    acts, gbuf, acc = work
    return st(acts, write_acts), st(gbuf, write_gbuf), st(acc, True)


def _row0(row0) -> int:
    """row0 of forward_stack/backward_stack: an int >= 0."""
    if isinstance(row0, bool) or not isinstance(row0, (int, np.integer)) or row0 < 0:
        raise ValueError(f"row0 must be an int >= 0, got {row0!r}")
    return int(row0)


def forward_stack(x, plan, net, work, training, seed, step, row0=0):
    """Runs every layer of the plan on x, writing acts (and, training, the saved tensors and
    the moving statistics in nontrain); row0 as reference.forward_stack."""
    rows = _rows_of(plan)
    st = _Stage()
    dnet = _stage_net(st, net, False, False, False, bool(training))
    _forward_d(st(x), rows, dnet, _stage_work(st, work, True, False), training, seed, step,
               _row0(row0))  # fmt: skip
    st.finish()


def backward_stack(x, plan, net, work, seed, step, row0=0):
    """Back-propagates dL/dout from the last row's P_DOUT_OFF of gbuf; writes grads;
    returns the regularisation penalty; row0 as reference.forward_stack."""
    rows = _rows_of(plan)
    st = _Stage()
    sc = _scratch()
    dnet = _stage_net(st, net, False, True, False, False)
    wrote = _backward_d(st(x), rows, dnet, _stage_work(st, work, False, True), seed, step,
                        sc.acc, False, _row0(row0))  # fmt: skip
    penalty = sc.read(0) if wrote else 0.0
    st.finish()
    return penalty


def train_step(batch, plan, net, work, loss, opt):
    """Forward, loss, backward, optimizer update; returns the loss with the penalty.

    The optimizer kernel reads the loss on the device and skips the update when it is not
    finite, so nothing waits for the host before the update."""
    rows = _rows_of(plan)
    loss_code, logits_out = int(loss[0]), int(loss[1])
    opt_code, hyper, _, step, seed = opt
    _check_loss(loss_code)
    _check_opt(opt_code)
    _check_no_clipping(opt_code, to_host(hyper))
    st = _Stage()
    dbatch = tuple(st(a) for a in batch)
    value = _train_d(
        dbatch, rows, _stage_net(st, net, True, True, True, True),
        _stage_work(st, work, True, True), loss_code, logits_out, opt_code,
        [float(v) for v in to_host(hyper)], int(step), int(seed),
    )  # fmt: skip
    st.finish()
    return value


def eval_step(batch, plan, net, work, loss):
    """Forward (no dropout, moving statistics) and loss with the regularisation penalty."""
    rows = _rows_of(plan)
    loss_code, logits_out = int(loss[0]), int(loss[1])
    _check_loss(loss_code)
    st = _Stage()
    dbatch = tuple(st(a) for a in batch)
    value = _eval_d(dbatch, rows, _stage_net(st, net, False, False, False, False),
                    _stage_work(st, work, True, True), loss_code, logits_out)  # fmt: skip
    st.finish()
    return value


def batch_stats(out, y, metrics, thresholds, stats):
    """Adds a batch's metric sums to ``stats`` (see reference.batch_stats), on the device."""
    table, thr = _metric_table(metrics, thresholds, len(stats))
    st = _Stage()
    o, yd, s = st(out), st(y), st(stats, True)
    _batch_stats_d(o, yd, table, thr, s)
    st.finish()


def _metric_table(metrics, thresholds, n_stats):
    """The metrics table and thresholds on the host, checked (kinds known, slots inside
    stats)."""
    table = np.ascontiguousarray(to_host(metrics), dtype=np.int64).reshape(-1, C.M_COLS)
    thr = np.ascontiguousarray(to_host(thresholds), dtype=np.float64).reshape(-1)
    if thr.shape[0] != table.shape[0]:
        raise ValueError(f"thresholds needs {table.shape[0]} values, got {thr.shape[0]}")
    for m, (kind, slot, k, _) in enumerate(table):
        if not 0 <= kind < C.N_METRICS:
            raise ValueError(f"unknown metric kind {kind} (metric {m})")
        width = {C.M_CONFUSION: 3, C.M_HISTOGRAM: 2 * k, C.ACC_NONE: 0}.get(int(kind), 1)
        if kind == C.M_HISTOGRAM and k < 2:
            raise ValueError(f"metric {m}: a histogram needs k >= 2 buckets, got {k}")
        if slot < 0 or slot + width > n_stats:
            raise ValueError(f"metric {m}: slots [{slot}, {slot + width}) do not fit in stats "
                             f"of {n_stats} entries")  # fmt: skip
    return table, thr


def _batch_stats_d(out, y, table, thresholds, stats):
    k = _k(out.dtype)
    t = _ft(out)
    _launch(k, "batch_stats", 1, _RED_BLOCK)(out, y, stats, int(y.shape[1] == out.shape[1]))
    go = _launch(k, "metric_sums", 1, _RED_BLOCK)
    for (kind, slot, kk, logits), thr in zip(table.tolist(), thresholds.tolist()):
        if kind != C.ACC_NONE:
            go(out, y, stats, kind, slot, kk, logits, t(thr))


def _batch_buffers(sc, xb, yb, swb):
    """(host staging, device buffer) pairs for the batch arrays."""
    pairs = []
    for name, b in (("xb", xb), ("yb", yb), ("swb", swb)):
        if is_device_array(b):
            pairs.append((sc.buffer(name, b.shape, b.dtype, False), b))
        else:
            pairs.append((b, sc.buffer(name, b.shape, b.dtype, True)))
    return pairs


def _flat(a):
    """A 1-D view of a (contiguous) device array, or None when it is absent or empty."""
    if a is None or a.size == 0:
        return None
    return a if a.ndim == 1 else _cached(a, ("flat",), lambda: a.reshape(a.size))


def run_epoch(data, plan, net, ws, loss, opt, train, stats):
    """The batches of X[order]: gathered on the host, copied to the device, one
    train_step / eval_step each; one loss per batch comes back, metric sums at the end."""
    X, Y, SW, order, batch_size = data
    xb, yb, swb, acts, gbuf, acc = ws
    opt_code, hyper, lrs, step, seed = opt
    loss_code, logits_out, metrics, thresholds = loss
    loss_code, logits_out = int(loss_code), int(logits_out)
    rows = _rows_of(plan)
    _check_loss(loss_code)
    if train:
        _check_opt(opt_code)
    X, Y, SW, order = to_host(X), to_host(Y), to_host(SW), to_host(order)
    batch_size = int(batch_size)
    st = _Stage()
    sc = _scratch()
    dnet = _stage_net(st, net, bool(train), bool(train), bool(train), True)
    work = _stage_work(st, (acts, gbuf, acc), True, True)
    host_hyper = hyper if isinstance(hyper, np.ndarray) else to_host(hyper).copy()
    if train:
        _check_no_clipping(int(opt_code), host_hyper)
    lrs = to_host(lrs)
    (hx, dx), (hy, dy), (hw, dw) = _batch_buffers(sc, xb, yb, swb)
    host_stats = stats if isinstance(stats, np.ndarray) else to_host(stats)
    table, thr = _metric_table(metrics, thresholds, host_stats.shape[0])
    dstats = sc.buffer("stats", host_stats.shape, np.float64, True)
    dstats.copy_to_device(np.zeros(host_stats.shape[0]))
    total = order.shape[0]
    n_batches = (total + batch_size - 1) // batch_size
    done = n_batches
    for b in range(n_batches):
        start = b * batch_size
        n = min(batch_size, total - start)
        idx = order[start : start + n]
        np.take(X, idx, axis=0, out=hx[:n])
        np.take(Y, idx, axis=0, out=hy[:n])
        np.take(SW, idx, axis=0, out=hw[:n])
        xd, yd, wd = _head(dx, n), _head(dy, n), _head(dw, n)
        xd.copy_to_device(hx[:n])
        yd.copy_to_device(hy[:n])
        wd.copy_to_device(hw[:n])
        if train:
            host_hyper[0] = lrs[b]
            value = _train_d((xd, yd, wd), rows, dnet, work, loss_code, logits_out, opt_code,
                             [float(v) for v in host_hyper], int(step) + b, int(seed))  # fmt: skip
        else:
            value = _eval_d((xd, yd, wd), rows, dnet, work, loss_code, logits_out)
        host_stats[C.STAT_LOSS] += value * n
        if not math.isfinite(value):
            done = b
            break
        _batch_stats_d(_output_d(work[0], rows, n), yd, table, thr, dstats)
    if train:
        params, _, state, nontrain = dnet
        flag = _launch(_k(work[0].dtype), "flag_nonfinite", 1, _RED_BLOCK)
        for a in (params, state, nontrain):
            a = _flat(a)
            if a is not None:
                flag(a, dstats)
    extra = dstats.copy_to_host()
    host_stats[1 : C.STAT_NONFINITE] += extra[1 : C.STAT_NONFINITE]
    host_stats[C.STAT_LEN :] += extra[C.STAT_LEN :]
    if train:
        host_stats[C.STAT_NONFINITE] = extra[C.STAT_NONFINITE]
    if not isinstance(stats, np.ndarray):
        stats.copy_to_device(host_stats)
    if not isinstance(hyper, np.ndarray):
        hyper.copy_to_device(host_hyper)
    st.finish()
    return done


__all__ = [
    *OPS,
    "KINDS", "ACTS", "LOSSES", "OPTS", "CLIPPING", "check_available", "zeros", "to_device",
    "to_host", "synchronize", "is_device_array", "kernel_signatures",
]  # fmt: skip
