"""CUDA kernels (Numba's CUDA target, package ``numba-cuda``): the contract of ``reference``.

Every op of ``reference.OPS`` is a host function with the same name and parameters.  It
accepts device arrays (``numba.cuda`` device arrays, the fast path: nothing is copied) or
host NumPy arrays (copied in, outputs copied back, so parity tests call it like the
reference).  Full aliasing of two arguments (the same array passed twice, as the contract
allows) is kept on the device; partial overlaps of host arrays are not.

Device residency: ``train_step``, ``eval_step``, ``forward_stack``, ``backward_stack`` and
``run_epoch`` launch kernels over device-resident buffers (params, grads, optimizer state,
acts, gbuf); losses are reduced on the device and one scalar comes back.  ``run_epoch``
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
from .reference import OPS, dropout_seed, output_offset

# numba.cuda is imported on first use (_require): importing this module stays cheap and
# cannot fail.  The simulator is chosen by NUMBA_ENABLE_CUDASIM before numba is imported.
cuda = None
_SIM = bool(_nb_config.ENABLE_CUDASIM)
_IMPORT_ERROR: str | None = None

_INSTALL_HINT = "install the CUDA extra: pip install 'fastnn-cpu[cuda]' (numba-cuda[cu12])"

TILE = 16  # GEMM tile edge (16x16 threads per block)
_TILE1 = TILE + 1  # padded shared-memory row (no bank conflicts on transposed reads)
_RED = 256  # largest block of the reduction kernels (power of two)
# Launch shapes: the simulator runs one CPU thread per GPU thread, so it gets small blocks and
# few of them (grid-stride loops cover the rest, which also tests those loops).
_EW_BLOCK = 32 if _SIM else 256
_EW_MAX_BLOCKS = 2 if _SIM else 4096
_ROW_MIN = 8 if _SIM else 32
_ROW_CAP = 16 if _SIM else _RED
_ROW_MAX_BLOCKS = 4 if _SIM else 65535
_COL_BLOCK = (8, 4) if _SIM else (32, 8)
_RED_BLOCK = 32 if _SIM else _RED
_MAX_PARTIALS = 2 if _SIM else 1024

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
        self.stats = cuda.to_device(np.zeros(C.STAT_LEN))
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
    RELU, LEAKY, SIGMOID, TANH = C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH
    GOLDEN = np.uint64(0x9E3779B97F4A7C15)
    MIX1 = np.uint64(0xBF58476D1CE4E5B9)
    MIX2 = np.uint64(0x94D049BB133111EB)
    S27, S30, S31, S40 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(40)
    T, T1, RED = TILE, _TILE1, _RED
    CB = 32  # largest extent of the column-reduction block in either dimension
    CB1 = CB + 1
    ACC_SPARSE, ACC_CAT, ACC_BIN = C.ACC_SPARSE, C.ACC_CATEGORICAL, C.ACC_BINARY
    L_SBCE, L_CCE, L_BCE, L_MSE = C.SIGMOID_BCE, C.CATEGORICAL_CE, C.BINARY_CE, C.MSE
    S_CORRECT, S_ABS, S_SQ, S_ROWS = C.STAT_CORRECT, C.STAT_ABS, C.STAT_SQ, C.STAT_ROWS
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

    # -- GEMMs (16x16 tiles, blocks (16, 16), grid (ceil(cols/16), ceil(rows/16))) -----

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

    # -- metrics (one block) ---------------------------------------------------------

    @cuda.jit
    def batch_stats(out, y, stats, acc_mode, threshold, with_diff):
        sh = cuda.shared.array(RED, dtype=D)
        n, c = out.shape
        tid = cuda.threadIdx.x
        corr = 0.0
        sab = 0.0
        ssq = 0.0
        for r in range(tid, n, cuda.blockDim.x):
            if acc_mode == ACC_SPARSE:
                if row_argmax(out, r, c) == I64(y[r, 0]):
                    corr += 1.0
            elif acc_mode == ACC_CAT:
                if row_argmax(out, r, c) == row_argmax(y, r, y.shape[1]):
                    corr += 1.0
            elif acc_mode == ACC_BIN:
                for j in range(c):
                    if (out[r, j] > threshold) == (y[r, j] > HALF):
                        corr += 1.0
            if with_diff:
                for j in range(c):
                    d = D(out[r, j]) - D(y[r, j])
                    sab += abs(d)
                    ssq += d * d
        corr = bsum(sh, corr)
        sab = bsum(sh, sab)
        ssq = bsum(sh, ssq)
        if tid == 0:
            if acc_mode == ACC_BIN:
                corr /= c
            stats[S_CORRECT] += corr
            stats[S_ABS] += sab
            stats[S_SQ] += ssq
            stats[S_ROWS] += n

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
    "pointwise_loss", "l1l2", "reduce_to", "act_grad_bias",
    "sgd", "momentum", "adagrad", "rmsprop", "adam", "batch_stats", "flag_nonfinite",
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
        "sgd": (a1, a1, f, d1),
        "momentum": (a1, a1, a1, f, f, i, d1),
        "adagrad": (a1, a1, a1, f, f, d1),
        "rmsprop": (a1, a1, a1, f, f, f, f, d1),
        "adam": (a1, a1, a1, a1, f, f, f, f, f, f, f, f, d1),
        "batch_stats": (a2, a2, d1, i, f, i),
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
    """kernel[grid, block], cached: a launch configuration is built (and checked) once."""
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
        raise ValueError(f"unknown activation code {act}")


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
        raise ValueError(f"unknown activation code {act}")


def _dense_fwd_d(x, w, b, out, act, alpha):
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


def _dropout_d(x, out, rate, seed):
    scale = _ft(x)(1.0 / (1.0 - rate))
    base = np.uint64(_splitmix64(int(seed) & _M64))
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
                C.RMSPROP: "rmsprop", C.ADAM: "adam"}  # fmt: skip


def _optimizer_d(params, grads, rows, opt_code, hyper, step, guard):
    """One optimizer step over flat device buffers; ``rows`` are the (P,) state slots.

    Skipped on the device when guard[0] is not finite.  ``hyper``: host floats."""
    k = _k(params.dtype)
    t = _ft(params)
    grid, block = _ew(params.shape[0])
    if opt_code not in _OPT_KERNELS:
        raise ValueError(f"unknown optimizer code {opt_code}")
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
    else:
        lr, b1, b2, eps, wd = (float(v) for v in hyper[:5])
        decay = 1 - lr * wd if wd else 1.0  # multiplying by exactly 1 changes nothing
        step_size = lr / (1 - b1**step)
        bc2 = math.sqrt(1 - b2**step)
        go(params, grads, rows[0], rows[1], t(decay), t(b1), t(1 - b1), t(b2), t(1 - b2),
           t(step_size), t(bc2), t(eps), guard)  # fmt: skip


def _state_rows(state, opt_code):
    """The (P,) views of the optimizer's state slots (none for SGD or an unknown code)."""
    slots = C.STATE_SLOTS[opt_code] if opt_code in _OPT_KERNELS else 0
    return [_row(state, i) for i in range(slots)]


# -- the layer stack ----------------------------------------------------------------------


def _plan(layers, layer_f):
    """Host tuples (kind, width, act, param_off, f0, l1, l2) of the layer tables."""
    lay = to_host(layers)
    lf = to_host(layer_f)
    return tuple(
        (int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(f[0]), float(f[1]), float(f[2]))
        for r, f in zip(lay, lf, strict=True)
    )


def _dense_params(params, poff, n_in, width):
    return _view(params, poff, (n_in, width)), _view(params, poff + n_in * width, (width,))


def _forward_d(x, params, acts, plan, training, seed, step):
    n, n_in = x.shape
    inp = x
    off = 0
    for l, (kind, width, act, poff, f0, _, _) in enumerate(plan):
        out = _view(acts, off, (n, width))
        if kind == C.DENSE:
            w, b = _dense_params(params, poff, n_in, width)
            _dense_fwd_d(inp, w, b, out, act, f0)
        elif kind == C.DROPOUT:
            if training and f0 > 0:
                _dropout_d(inp, out, f0, dropout_seed(seed, step, l))
            else:
                _act_fwd_d(inp, out, C.LINEAR, 0.0)
        else:
            _act_fwd_d(inp, out, act, f0)
        inp = out
        off += n * width
        n_in = width


def _backward_d(x, params, grads, acts, gbuf, plan, seed, step, acc, accumulate):
    """Device back-propagation; penalties go to acc[0].  Returns True if it wrote acc[0]."""
    n = x.shape[0]
    half = gbuf.shape[0] // 2
    offs = [0]
    for row in plan:
        offs.append(offs[-1] + row[1] * n)
    first = next((l for l, row in enumerate(plan) if row[0] == C.DENSE), len(plan))
    cur = 0
    for l in range(len(plan) - 1, first - 1, -1):
        kind, width, act, poff, f0, l1, l2 = plan[l]
        n_in = x.shape[1] if l == 0 else plan[l - 1][1]
        inp = x if l == 0 else _view(acts, offs[l - 1], (n, n_in))
        out = _view(acts, offs[l], (n, width))
        g = _view(gbuf, cur, (n, width))
        dx = _view(gbuf, half - cur, (n, n_in))
        if kind == C.DENSE:
            w, _ = _dense_params(params, poff, n_in, width)
            dw, db = _dense_params(grads, poff, n_in, width)
            _dense_bwd_d(inp, w, out, g, g, dx, dw, db, act, f0, l > first)
            if l1 or l2:
                size = n_in * width
                _l1l2_d(_view(params, poff, (size,)), _view(grads, poff, (size,)), l1, l2,
                        acc, 0, accumulate)  # fmt: skip
                accumulate = True
        elif kind == C.DROPOUT:
            if f0 > 0:
                _dropout_d(g, dx, f0, dropout_seed(seed, step, l))
            else:
                _act_fwd_d(g, dx, C.LINEAR, 0.0)
        else:
            _act_bwd_d(out, g, dx, act, f0)
        cur = half - cur
    return accumulate


def _penalty_d(params, plan, n_in, acc, accumulate):
    for kind, width, _, poff, _, l1, l2 in plan:
        if kind == C.DENSE and (l1 or l2):
            w = _view(params, poff, (n_in * width,))
            _l1l2_d(w, w, l1, l2, acc, 0, accumulate, write_grad=False)
            accumulate = True
        n_in = width


def _is_fused(loss_code):
    return loss_code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE)


def _stack_loss_d(x, y, sw, acts, gbuf, plan, loss_code, logits_out, acc):
    n = x.shape[0]
    width = plan[-1][1]
    out = _view(acts, _out_off(plan, n), (n, width))
    dz = _view(gbuf, 0, (n, width))
    p = out if (_is_fused(loss_code) and not logits_out) else dz
    _loss_d(out, y, sw, p, dz, loss_code, acc, 0, False)


def _train_d(x, y, sw, params, grads, state, acts, gbuf, plan, loss_code, logits_out,
             opt_code, hyper, step, seed):  # fmt: skip
    acc = _scratch().acc
    _forward_d(x, params, acts, plan, 1, seed, step)
    _stack_loss_d(x, y, sw, acts, gbuf, plan, loss_code, logits_out, acc)
    _backward_d(x, params, grads, acts, gbuf, plan, seed, step, acc, True)
    _optimizer_d(params, grads, _state_rows(state, opt_code), opt_code, hyper, step, acc)
    return _scratch().read(0)


def _eval_d(x, y, sw, params, acts, gbuf, plan, loss_code, logits_out):
    acc = _scratch().acc
    _forward_d(x, params, acts, plan, 0, 0, 0)
    _stack_loss_d(x, y, sw, acts, gbuf, plan, loss_code, logits_out, acc)
    _penalty_d(params, plan, x.shape[1], acc, True)
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


def loss_grad(out, y, sw, p, dz, loss_code):
    """Dispatch to the loss ``loss_code``; returns the loss, writes dz (and p)."""
    if loss_code not in range(C.SOFTMAX_CE, C.MAE + 1):
        raise ValueError(f"unknown loss code {loss_code}")
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


def optimizer_update(params, grads, state, opt_code, hyper, step):
    """One fused optimizer kernel over the flat buffers; state (S, P)."""
    st = _Stage()
    p, g, s = st(params, True), st(grads), st(state, True)
    hyper = [float(v) for v in to_host(hyper)]
    _optimizer_d(p, g, _state_rows(s, opt_code), opt_code, hyper, step, _scratch().guard)
    st.finish()


def forward_stack(x, params, acts, layers, layer_f, training, seed, step):
    """Runs the stack on x (N, I0), writing every layer's output into ``acts``."""
    st = _Stage()
    _forward_d(st(x), st(params), st(acts, True), _plan(layers, layer_f), training, seed, step)
    st.finish()


def backward_stack(x, params, grads, acts, gbuf, layers, layer_f, seed, step):
    """Back-propagates dL/dout from gbuf[:N*C]; writes grads; returns the penalty."""
    st = _Stage()
    sc = _scratch()
    wrote = _backward_d(st(x), st(params), st(grads, True), st(acts), st(gbuf, True),
                        _plan(layers, layer_f), seed, step, sc.acc, False)  # fmt: skip
    penalty = sc.read(0) if wrote else 0.0
    st.finish()
    return penalty


def train_step(
    x, y, sw, params, grads, state, acts, gbuf, layers, layer_f,
    loss_code, logits_out, opt_code, hyper, step, seed,
):  # fmt: skip
    """Forward, loss, backward, optimizer update; returns the loss with the penalty.

    The optimizer kernel reads the loss on the device and skips the update when it is not
    finite, so nothing waits for the host before the update."""
    st = _Stage()
    loss = _train_d(
        st(x), st(y), st(sw), st(params, True), st(grads, True), st(state, True),
        st(acts, True), st(gbuf, True), _plan(layers, layer_f), loss_code, logits_out,
        opt_code, [float(v) for v in to_host(hyper)], step, seed,
    )  # fmt: skip
    st.finish()
    return loss


def eval_step(x, y, sw, params, acts, gbuf, layers, layer_f, loss_code, logits_out):
    """Forward (no dropout) and loss with the regularisation penalty."""
    st = _Stage()
    loss = _eval_d(st(x), st(y), st(sw), st(params), st(acts, True), st(gbuf, True),
                   _plan(layers, layer_f), loss_code, logits_out)  # fmt: skip
    st.finish()
    return loss


def batch_stats(out, y, acc_mode, threshold, stats):
    """Adds a batch's metric sums to ``stats`` (codes.STAT_*), on the device."""
    st = _Stage()
    o, yd, s = st(out), st(y), st(stats, True)
    _batch_stats_d(o, yd, acc_mode, threshold, s)
    st.finish()


def _batch_stats_d(out, y, acc_mode, threshold, stats):
    k = _k(out.dtype)
    with_diff = int(y.shape[1] == out.shape[1])
    _launch(k, "batch_stats", 1, _RED_BLOCK)(out, y, stats, int(acc_mode), _ft(out)(threshold),
                                    with_diff)  # fmt: skip


def _batch_buffers(sc, xb, yb, swb):
    """(host staging, device buffer) pairs for the batch arrays."""
    pairs = []
    for name, b in (("xb", xb), ("yb", yb), ("swb", swb)):
        if is_device_array(b):
            pairs.append((sc.buffer(name, b.shape, b.dtype, False), b))
        else:
            pairs.append((b, sc.buffer(name, b.shape, b.dtype, True)))
    return pairs


def run_epoch(
    X, Y, SW, order, batch_size, xb, yb, swb,
    params, grads, state, acts, gbuf, layers, layer_f,
    loss_code, logits_out, opt_code, hyper, lrs, step, seed,
    train, acc_mode, threshold, stats,
):  # fmt: skip
    """The batches of X[order]: gathered on the host, copied to the device, one
    train_step / eval_step each; one loss per batch comes back, metric sums at the end."""
    X, Y, SW, order = to_host(X), to_host(Y), to_host(SW), to_host(order)
    st = _Stage()
    sc = _scratch()
    p, g, s = st(params, True), st(grads, True), st(state, True)
    a, gb = st(acts, True), st(gbuf, True)
    plan = _plan(layers, layer_f)
    host_hyper = hyper if isinstance(hyper, np.ndarray) else to_host(hyper).copy()
    lrs = to_host(lrs)
    (hx, dx), (hy, dy), (hw, dw) = _batch_buffers(sc, xb, yb, swb)
    dstats = sc.stats
    dstats.copy_to_device(np.zeros(C.STAT_LEN))
    host_stats = stats if isinstance(stats, np.ndarray) else to_host(stats)
    total = order.shape[0]
    n_batches = (total + batch_size - 1) // batch_size
    width = plan[-1][1]
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
            loss = _train_d(xd, yd, wd, p, g, s, a, gb, plan, loss_code, logits_out, opt_code,
                            [float(v) for v in host_hyper], step + b, seed)  # fmt: skip
        else:
            loss = _eval_d(xd, yd, wd, p, a, gb, plan, loss_code, logits_out)
        host_stats[C.STAT_LOSS] += loss * n
        if not math.isfinite(loss):
            done = b
            break
        out = _view(a, _out_off(plan, n), (n, width))
        _batch_stats_d(out, yd, acc_mode, threshold, dstats)
    if train:
        flag = _launch(_k(p.dtype), "flag_nonfinite", 1, _RED_BLOCK)
        flag(p, dstats)
        flag(s.reshape(s.size), dstats)
    extra = dstats.copy_to_host()
    host_stats[1 : C.STAT_NONFINITE] += extra[1 : C.STAT_NONFINITE]
    if train:
        host_stats[C.STAT_NONFINITE] = extra[C.STAT_NONFINITE]
    if not isinstance(stats, np.ndarray):
        stats.copy_to_device(host_stats)
    if not isinstance(hyper, np.ndarray):
        hyper.copy_to_device(host_hyper)
    st.finish()
    return done


def _out_off(plan, n):
    """Offset in ``acts`` of the last layer's (N, width) output."""
    return n * sum(row[1] for row in plan[:-1])


__all__ = [
    *OPS,
    "check_available", "zeros", "to_device", "to_host", "synchronize", "is_device_array",
    "kernel_signatures", "output_offset",
]  # fmt: skip
