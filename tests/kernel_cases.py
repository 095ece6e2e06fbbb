"""Shared helpers of the kernel tests: backends under test, tolerances, layer stacks.

Importable from any test module as ``from tests.kernel_cases import ...``.
"""

from __future__ import annotations

import zlib

import numpy as np

from fastnn import backend
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref

DTYPES = (np.float32, np.float64)
ACTS = (C.LINEAR, C.RELU, C.LEAKY_RELU, C.SIGMOID, C.TANH, C.SOFTMAX)
LOSSES = (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE, C.CATEGORICAL_CE, C.BINARY_CE,
          C.MSE, C.MAE)  # fmt: skip
OPTIMIZERS = (C.SGD, C.MOMENTUM, C.ADAGRAD, C.RMSPROP, C.ADAM, C.AMSGRAD, C.RMSPROP_MC)
ACT_NAMES = dict(zip(ACTS, ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax")))
LOSS_NAMES = dict(
    zip(LOSSES, ("softmax_ce", "sparse_ce", "sigmoid_bce", "cce", "bce", "mse", "mae"))
)
OPT_NAMES = dict(
    zip(OPTIMIZERS, ("sgd", "momentum", "adagrad", "rmsprop", "adam", "amsgrad", "rmsprop_mc"))
)
ACC_NAMES = {C.ACC_NONE: "acc_none", C.ACC_SPARSE: "acc_sparse",
             C.ACC_CATEGORICAL: "acc_categorical", C.ACC_BINARY: "acc_binary"}  # fmt: skip
#: (N, I, O) shapes that catch tail and edge bugs.
SHAPES = ((1, 1, 1), (7, 5, 3), (33, 17, 65))

#: Hyper-parameter vectors per optimizer code (layout in codes.py); AdamW via weight_decay.
HYPER = {
    C.SGD: [0.05],
    C.MOMENTUM: [0.05, 0.9, 1.0],
    C.ADAGRAD: [0.05, 1e-7],
    C.RMSPROP: [0.01, 0.9, 1e-7],
    C.ADAM: [0.01, 0.9, 0.999, 1e-7, 0.01],
    C.NADAM: [0.01, 0.9, 0.999, 1e-7],
    C.AMSGRAD: [0.01, 0.9, 0.999, 1e-7, 0.01],
    C.RMSPROP_MC: [0.01, 0.9, 1e-7, 0.5, 1.0],  # momentum and centered
}


def decayed_hyper(opt, weight_decay):
    """HYPER[opt] with Keras 3's decoupled weight decay: the own entry of codes.OWN_DECAY,
    else the optional entry after the (off) clip entries."""
    hyper = list(HYPER[opt])
    if opt in C.OWN_DECAY:
        hyper[4] = weight_decay
        return hyper
    return [*hyper, *[0.0] * C.N_CLIP, weight_decay]


def compiled_backends() -> list[str]:
    """Every CPU backend that loads here except the NumPy reference itself.

    Like ``backend.available()`` minus numpy and cuda, but without importing the CUDA
    backend (it is opt-in, and its tests configure Numba's simulator before importing).
    """
    return [
        name
        for name in backend.MODULES
        if name not in ("numpy", "cuda") and backend.why_unavailable(name) is None
    ]


def tolerance(dtype, ref_value, k=1, scale=1.0, factor=8.0):
    """Elementwise tolerance atol + rtol*|ref| for ``dtype``.

    Both terms are ``factor`` units of roundoff; ``k`` is the reduction length (a GEMM's
    inner dimension, a row sum), ``scale`` the typical magnitude of the summed terms.
    """
    eps = float(np.finfo(dtype).eps)
    return factor * eps * k * (scale + np.abs(np.asarray(ref_value, dtype=np.float64)))


def assert_close(actual, expected, dtype, k=1, scale=1.0, factor=8.0, extra=0.0, what=""):
    """Asserts |actual - expected| <= tolerance(...) + extra elementwise (``extra`` scalar or
    broadcastable); NaNs must be in the same places."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN positions differ"
    tol = tolerance(dtype, np.where(nan, 0.0, expected), k, scale, factor) + extra
    tol = np.broadcast_to(tol, expected.shape)[~nan]
    err = np.abs(actual - expected)[~nan]
    err[np.isnan(err)] = 0.0  # equal infinities
    bad = err > tol
    if np.any(bad):
        i = int(np.argmax(err - tol))
        a, e = actual[~nan][i], expected[~nan][i]
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{err.size} elements off; worst actual={a!r} "
            f"expected={e!r} err={err[i]:.3g} tol={tol[i]:.3g}"
        )


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by a test's parameters (reproducible, distinct per case)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------------------------------
# Layer stacks: real layers, the model's plan builder, and every buffer the kernels take


def _spec_layer(kind, width, act, a, l1, l2):
    """A layer for a spec row (kind, width, act, a, l1, l2): ``a`` is the leaky slope of
    Dense/Activation, the rate of Dropout and the momentum of BatchNormalization (whose
    ``l1``/``l2`` are its epsilon and ``center and scale`` flags: 1 both, 2 gamma only, 3 beta
    only, 4 neither; negative: the layer is frozen, inference mode)."""
    from fastnn import layers as L
    from fastnn.activations import NAMES
    from fastnn.regularizers import L1L2

    if kind == C.DENSE:
        reg = L1L2(l1, l2) if (l1 or l2) else None
        return L.Dense(width, activation=NAMES[act], kernel_regularizer=reg, alpha=a)
    if kind == C.DROPOUT:
        return L.Dropout(a)
    if kind == C.ACTIVATION:
        return L.Activation(NAMES[act], alpha=a)
    if kind == C.BATCHNORM:
        flags = abs(int(l2)) or 1
        layer = L.BatchNormalization(momentum=a, epsilon=l1, scale=flags in (1, 2),
                                     center=flags in (1, 3))  # fmt: skip
        layer.trainable = l2 >= 0
        return layer
    if kind == C.NORMALIZATION:
        return L.Normalization()
    raise ValueError(kind)


class Buffers:
    """Fresh buffers of one stack for a batch of ``n`` rows (params and nontrain copied)."""

    def __init__(self, stack, n, n_state):
        z = lambda size, dtype=stack.dtype: np.zeros(size, dtype=dtype)  # noqa: E731
        self.plan_obj = stack.plan_for(n)
        self.plan = self.plan_obj.args
        self.params = stack.params.copy()
        self.grads = z(stack.n_params)
        self.state = np.zeros((n_state, stack.n_params), stack.dtype)
        self.nontrain = stack.nontrain.copy()
        self.acts = z(self.plan_obj.acts_size)
        self.gbuf = z(self.plan_obj.gbuf_size)
        self.acc = z(self.plan_obj.acc_size, np.float64)

    @property
    def net(self):
        return self.params, self.grads, self.state, self.nontrain

    @property
    def work(self):
        return self.acts, self.gbuf, self.acc

    def output(self, n):
        off, size = self.plan_obj.output_offset, self.plan_obj.output_size
        return self.acts[off : off + n * size].reshape(n, size)

    def dout(self, n):
        """Where the loss writes dL/d(output) (the last layer's P_DOUT_OFF of gbuf)."""
        off, size = int(self.plan[0][-1, C.P_DOUT_OFF]), self.plan_obj.output_size
        return self.gbuf[off : off + n * size].reshape(n, size)


class Stack:
    """A layer stack built by the model's plan builder, with weights, data and targets for
    one dtype.

    ``spec`` is a list of (kind, width, act, a, l1, l2) (see ``_spec_layer``).
    """

    def __init__(self, spec, n_in, n, dtype, rng, n_targets=None, loss=C.MSE):
        from fastnn._engine import Engine

        self.dtype = np.dtype(dtype)
        self.n, self.n_in, self.loss, self.spec = n, n_in, loss, spec
        self.model_layers, shape = [], (n_in,)
        for row in spec:
            layer = _spec_layer(*row)
            layer.build(shape, np.float64, rng, "numpy")
            self.model_layers.append(layer)
            shape = layer.output_shape
        self.offsets, self.n_params, self.n_nontrain = Engine._layout(self.model_layers)
        self._plans = {}
        self.n_out = int(shape[-1])
        params, nontrain = np.zeros(self.n_params), np.zeros(self.n_nontrain)
        for layer, offs in zip(self.model_layers, self.offsets):
            for ws in layer.weight_specs():
                size = int(np.prod(ws.shape))
                buf = params if ws.trainable else nontrain
                buf[offs[ws.name] : offs[ws.name] + size] = _initial(ws, rng)
        self.params = params.astype(dtype)
        self.nontrain = nontrain.astype(dtype)
        self.x = rng.standard_normal((n, n_in)).astype(dtype)
        self.y = make_targets(loss, n, self.n_out, rng, dtype, n_targets)
        self.sw = rng.uniform(0.5, 1.5, n).astype(dtype)
        self.sw[0] = 0.0  # a zero-weight sample

    def plan_for(self, n=None):
        """The plan (fastnn._plan.Plan) for batches of up to ``n`` rows (default self.n)."""
        from fastnn._plan import build_plan

        n = self.n if n is None else n
        if n not in self._plans:
            self._plans[n] = build_plan(self.model_layers, self.offsets, (self.n_in,), n)
        return self._plans[n]

    @property
    def plan(self):
        """The kernels' plan tuple for self.n rows."""
        return self.plan_for().args

    def buffers(self, n=None, n_state=2) -> Buffers:
        """Fresh buffers for a batch of ``n`` rows (params and nontrain copied)."""
        return Buffers(self, self.n if n is None else n, n_state)

    def astype(self, dtype):
        """A copy of this stack's data in ``dtype`` (same layers, weights, inputs)."""
        other = object.__new__(Stack)
        other.__dict__.update(self.__dict__)
        other.dtype = np.dtype(dtype)
        for name in ("params", "nontrain", "x", "y", "sw"):
            setattr(other, name, getattr(self, name).astype(dtype))
        return other


def _initial(spec, rng):
    """Test weights: Glorot-ish kernels, small biases, gammas and variances near 1."""
    size = int(np.prod(spec.shape))
    if spec.name == "kernel":
        fan_in, fan_out = spec.shape
        return rng.standard_normal(size) * np.sqrt(2.0 / (fan_in + fan_out))
    if spec.name in ("gamma", "moving_variance", "variance"):
        return rng.uniform(0.5, 1.5, size)
    return rng.standard_normal(size) * 0.1


def make_targets(loss, n, c, rng, dtype, n_targets=None):
    """Targets suited to ``loss`` for an (n, c) output."""
    if loss == C.SPARSE_SOFTMAX_CE:
        return rng.integers(0, c, (n, 1)).astype(dtype)
    if loss in (C.SOFTMAX_CE, C.CATEGORICAL_CE):
        y = np.eye(c)[rng.integers(0, c, n)]
        y[0] = 0.5 / c + 0.5 * y[0]  # one soft row: sum(y) is used by the gradient
        return y.astype(dtype)
    if loss in (C.SIGMOID_BCE, C.BINARY_CE):
        return (rng.random((n, c)) > 0.5).astype(dtype)
    if loss == C.KL_DIVERGENCE:  # distributions, one entry below the clip floor
        y = rng.dirichlet(np.ones(c), n)
        y.flat[0] = 0.0
        return y.astype(dtype)
    if loss == C.POISSON:
        return rng.poisson(1.5, (n, c)).astype(dtype)
    return rng.standard_normal((n, c if n_targets is None else n_targets)).astype(dtype)


#: The output activation each loss expects, and whether the stack keeps logits.
OUTPUT_ACT = {
    C.SOFTMAX_CE: C.LINEAR,
    C.SPARSE_SOFTMAX_CE: C.LINEAR,
    C.SIGMOID_BCE: C.LINEAR,
    C.CATEGORICAL_CE: C.SOFTMAX,
    C.BINARY_CE: C.SIGMOID,
    C.MSE: C.LINEAR,
    C.MAE: C.TANH,
    C.HUBER: C.LINEAR,
    C.KL_DIVERGENCE: C.SOFTMAX,
    C.POISSON: C.SOFTPLUS,
}


def mlp3(loss, dtype, rng, n=24, n_in=9, hidden=16, n_out=5, rate=0.3, l2=1e-3):
    """Dense(hidden, relu, l2) -> Dropout(rate) -> Dense(n_out, loss's output activation)."""
    spec = [
        (C.DENSE, hidden, C.RELU, 0.0, 0.0, l2),
        (C.DROPOUT, hidden, C.LINEAR, rate, 0.0, 0.0),
        (C.DENSE, n_out, OUTPUT_ACT[loss], 0.0, 1e-4, 0.0),
    ]
    return Stack(spec, n_in, n, dtype, rng, loss=loss)


def mixed_stack(dtype, rng, n=13, n_in=6):
    """Input dropout (before the first Dense), Dense tanh with l1+l2, a standalone
    leaky-relu Activation layer, Dense sigmoid: exercises the core kinds and the
    'first layer with weights' rule of backward_stack."""
    spec = [
        (C.DROPOUT, n_in, C.LINEAR, 0.2, 0.0, 0.0),
        (C.DENSE, 11, C.TANH, 0.0, 1e-3, 1e-3),
        (C.ACTIVATION, 11, C.LEAKY_RELU, 0.1, 0.0, 0.0),
        (C.DENSE, 4, C.SIGMOID, 0.0, 0.0, 0.0),
    ]
    return Stack(spec, n_in, n, dtype, rng, loss=C.BINARY_CE)


def norm_stack(dtype, rng, n=11, n_in=5, loss=C.SOFTMAX_CE):
    """Normalization, BatchNormalization without beta (the first layer with weights: it
    writes no dx), Dense relu, BatchNormalization, Dropout, Dense tanh, leaky-relu
    Activation, Dense with the loss's output activation: every kind of the plan.  (No Dense
    feeds a BatchNormalization directly: its bias gradient would be zero up to roundoff,
    and Adam's or Adagrad's step on such noise is arbitrary.)"""
    spec = [
        (C.NORMALIZATION, n_in, C.LINEAR, 0.0, 0.0, 0.0),
        (C.BATCHNORM, n_in, C.LINEAR, 0.99, 1e-2, 2),
        (C.DENSE, 9, C.RELU, 0.0, 0.0, 1e-3),
        (C.BATCHNORM, 9, C.LINEAR, 0.9, 1e-3, 1),
        (C.DROPOUT, 9, C.LINEAR, 0.25, 0.0, 0.0),
        (C.DENSE, 7, C.TANH, 0.0, 0.0, 0.0),
        (C.ACTIVATION, 7, C.LEAKY_RELU, 0.1, 0.0, 0.0),
        (C.DENSE, 4, OUTPUT_ACT[loss], 0.0, 0.0, 0.0),
    ]
    return Stack(spec, n_in, n, dtype, rng, loss=loss)


def frozen_norm_stack(dtype, rng, n=11, n_in=5, loss=C.SOFTMAX_CE):
    """Dense tanh, a frozen BatchNormalization (inference mode: the gradient flows through
    it to the Dense, its weights get none), relu Activation, Dense, a frozen
    BatchNormalization without gamma, Dense with the loss's output activation."""
    spec = [
        (C.DENSE, 8, C.TANH, 0.0, 0.0, 0.0),
        (C.BATCHNORM, 8, C.LINEAR, 0.9, 1e-3, -1),
        (C.ACTIVATION, 8, C.RELU, 0.0, 0.0, 0.0),
        (C.DENSE, 6, C.LINEAR, 0.0, 0.0, 1e-3),
        (C.BATCHNORM, 6, C.LINEAR, 0.99, 1e-2, -3),
        (C.DENSE, 4, OUTPUT_ACT[loss], 0.0, 0.0, 0.0),
    ]
    return Stack(spec, n_in, n, dtype, rng, loss=loss)


def smooth_stack(dtype, rng, loss=C.HUBER, n=12, n_in=5):
    """Dense gelu (its pre-activation saved), Activation elu, Dense silu, Activation selu,
    Activation gelu (reading its input), Dense with the loss's output activation: the
    activations of Keras 3 beyond the core ones, in both kinds that apply them."""
    spec = [
        (C.DENSE, 8, C.GELU, 0.0, 0.0, 1e-3),
        (C.ACTIVATION, 8, C.ELU, 0.0, 0.0, 0.0),
        (C.DENSE, 7, C.SILU, 0.0, 0.0, 0.0),
        (C.ACTIVATION, 7, C.SELU, 0.0, 0.0, 0.0),
        (C.ACTIVATION, 7, C.GELU, 0.0, 0.0, 0.0),
        (C.DENSE, 4, OUTPUT_ACT[loss], 0.0, 0.0, 0.0),
    ]
    return Stack(spec, n_in, n, dtype, rng, loss=loss)


def train_steps(module, stack, loss, opt, steps, logits_out=0, seed=11, hyper=None):
    """Runs ``steps`` train_step calls of ``module`` on ``stack`` (``hyper`` default
    HYPER[opt]); returns the final (params, grads, state, nontrain, acts, gbuf, losses)."""
    b = stack.buffers(n_state=max(1, C.STATE_SLOTS[opt]))
    hyper = np.array(HYPER[opt] if hyper is None else hyper, dtype=np.float64)
    losses = []
    for step in range(1, steps + 1):
        losses.append(
            module.train_step(
                (stack.x, stack.y, stack.sw),
                b.plan,
                b.net,
                b.work,
                loss_args(loss, logits_out),
                (opt, hyper, np.zeros(1), step, seed),
            )  # fmt: skip
        )
    return b.params, b.grads, b.state, b.nontrain, b.acts, b.gbuf, np.array(losses)


def metrics_for(acc_mode=C.ACC_NONE, threshold=0.5):
    """The (metrics table, thresholds) of batch_stats for one accuracy in STAT_CORRECT (or
    none)."""
    if acc_mode == C.ACC_NONE:
        return np.zeros((0, C.M_COLS), np.int64), np.zeros(0)
    return np.array([[acc_mode, C.STAT_CORRECT, 0, 0]], np.int64), np.array([threshold])


def loss_args(loss, logits_out=0, acc_mode=C.ACC_NONE, threshold=0.5):
    """The ``loss`` group of the whole-network kernels."""
    return (loss, logits_out, *metrics_for(acc_mode, threshold))


def acc_mode_for(loss):
    """The accuracy mode a model would use with ``loss``."""
    return {
        C.SPARSE_SOFTMAX_CE: C.ACC_SPARSE,
        C.SOFTMAX_CE: C.ACC_CATEGORICAL,
        C.CATEGORICAL_CE: C.ACC_CATEGORICAL,
        C.SIGMOID_BCE: C.ACC_BINARY,
        C.BINARY_CE: C.ACC_BINARY,
    }.get(loss, C.ACC_NONE)


__all__ = [
    "ACC_NAMES",
    "ACT_NAMES",
    "LOSS_NAMES",
    "OPT_NAMES",
    "ACTS", "DTYPES", "HYPER", "LOSSES", "OPTIMIZERS", "OUTPUT_ACT", "SHAPES", "Stack",
    "decayed_hyper",
    "Buffers", "acc_mode_for", "loss_args", "metrics_for", "assert_close", "compiled_backends",
    "frozen_norm_stack", "make_targets", "mixed_stack", "mlp3", "norm_stack", "smooth_stack",
    "ref", "rng_for",
    "tolerance", "train_steps",
]  # fmt: skip
