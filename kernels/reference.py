"""NumPy reference kernels: the specification every backend implements.

Contract (shared by every backend module):

- A kernel takes its inputs, then its preallocated outputs, then scalars.  It writes into
  its outputs and returns nothing, except loss kernels and the training step (which return
  the loss as a Python float) and ``run_epoch`` (which returns the batches it completed).
- Arrays are C-contiguous, float32 or float64; all float arrays of one call share a dtype,
  except that the plan's ``layers`` table is int64, ``layer_f``/``hyper``/``lrs``/``stats``
  and the ``acc`` scratch are float64 and ``order`` is int64.
- The whole-network kernels (``forward_stack`` ... ``run_epoch``) take their arguments in
  groups, plain tuples: ``plan``, ``net``, ``work``/``ws``, ``batch``/``data``, ``loss``,
  ``opt`` (layouts below, before ``layer_forward``).
- Absent optional weights (BatchNormalization without gamma or beta) are empty arrays.
- Letters: N batch rows, I layer inputs, O layer outputs, C classes / targets, P parameters.
- In-place use that is allowed is stated per kernel ("may alias" means the very same
  array; partially overlapping views are not supported).
- Scalar sums (losses, penalties, metric statistics) may be accumulated in float64 by any
  backend; comparisons with constants (clip limits, thresholds) use the array dtype.
- Kernels never read or write out of bounds.  Inputs the API validates (labels in range,
  dropout rate in [0, 1), a consistent plan) are preconditions: a backend may raise or
  return NaN when they are broken, but an unknown layer kind, activation, loss or
  optimizer code always raises.  Reductions on a device may use internal scratch.

This module is also the NumPy baseline of the benchmarks: it is written the way a careful
NumPy user would write it, with ``out=`` arguments where NumPy offers them.
"""

from __future__ import annotations

import numpy as np

from . import codes as C
from .reference_rnn import (
    RNN_GATES,
    embedding_backward,
    embedding_forward,
    rnn_backward,
    rnn_forward,
    rnn_workspace_size,
)

#: The operations of the contract: every backend module defines each of them.
OPS = (
    "activation_forward", "activation_backward", "dense_forward", "dense_backward",
    "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "sparse_softmax_cross_entropy", "sigmoid_binary_cross_entropy",
    "categorical_crossentropy", "binary_crossentropy", "mean_squared_error",
    "mean_absolute_error", "huber", "kl_divergence", "poisson", "loss_grad", "l1l2_penalty",
    "sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    "nadam_update", "clip_gradients",
    "optimizer_update", "batchnorm_forward", "batchnorm_backward",
    "batchnorm_inference_backward", "normalization_forward", "normalization_backward",
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "forward_stack", "backward_stack",
    "train_step", "eval_step", "batch_stats", "run_epoch",
)  # fmt: skip
#: The kernels of the sequence kinds (Embedding, SimpleRNN, LSTM, GRU): every backend that
#: runs those kinds defines them (the cython and cuda backends do not: see their KINDS).
SEQUENCE_OPS = ("embedding_forward", "embedding_backward", "rnn_forward", "rnn_backward")

# ---------------------------------------------------------------------------------------
# Activations


def activation_forward(x, out, act, alpha):
    """out = act(x) elementwise (softmax: row-wise).  x, out (N, O); out may alias x.

    ``alpha`` is the negative slope of leaky_relu (ignored otherwise).
    """
    if act == C.LINEAR:
        out[...] = x
    elif act == C.RELU:
        np.maximum(x, 0, out=out)
    elif act == C.LEAKY_RELU:
        np.copyto(out, np.where(x > 0, x, x * x.dtype.type(alpha)))
    elif act == C.SIGMOID:
        # exp(-|x|) never overflows: sigmoid(x) = 1/(1+e) for x>=0, e/(1+e) for x<0
        e = np.exp(-np.abs(x))
        np.copyto(out, np.where(x >= 0, 1 / (1 + e), e / (1 + e)))
    elif act == C.TANH:
        np.tanh(x, out=out)
    elif act == C.SOFTMAX:
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        np.divide(e, e.sum(axis=1, keepdims=True), out=out)
    elif act in _SMOOTH_FORWARD:
        np.copyto(out, _SMOOTH_FORWARD[act](x, x.dtype.type(alpha)).astype(x.dtype))
    else:
        raise ValueError(f"unknown activation code {act}")


def activation_backward(y, dout, dx, act, alpha):
    """dx = dL/dx from the activation's output y and dout = dL/dy.  (N, O); dx may alias dout.

    Derivatives are expressed through the output: relu y>0, leaky_relu 1 or alpha,
    sigmoid y(1-y), tanh 1-y^2, softmax y*(dout - sum(dout*y)), elu 1 or y+alpha, selu
    scale or y+scale*alpha, softplus 1-exp(-y).  For gelu and silu (codes.INPUT_ACTS),
    whose derivative is not a function of the output, ``y`` is the activation's INPUT x:
    gelu Phi(x)+x phi(x), silu s(1+x(1-s)) with s = sigmoid(x).
    """
    if act == C.LINEAR:
        d = dout.copy()
    elif act == C.RELU:
        d = np.where(y > 0, dout, 0)
    elif act == C.LEAKY_RELU:
        d = np.where(y > 0, dout, dout * y.dtype.type(alpha))
    elif act == C.SIGMOID:
        d = dout * y * (1 - y)
    elif act == C.TANH:
        d = dout * (1 - y * y)
    elif act == C.SOFTMAX:
        d = y * (dout - (dout * y).sum(axis=1, keepdims=True))
    elif act in _SMOOTH_DERIVATIVE:
        d = dout * _SMOOTH_DERIVATIVE[act](y, y.dtype.type(alpha))
    else:
        raise ValueError(f"unknown activation code {act}")
    np.copyto(dx, d, casting="same_kind")


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _erf(x):
    """erf elementwise (math.erf per element: NumPy has none), in x's dtype."""
    import math

    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _selu(x, alpha):
    t = x.dtype.type
    return t(C.SELU_SCALE) * _elu(x, t(C.SELU_ALPHA))


def _gelu(x, alpha):
    t = x.dtype.type
    return t(0.5) * x * (1 + _erf(x * t(_SQRT_HALF)))


def _softplus(x, alpha):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


#: out = f(x, alpha) of the activations beyond softmax
_SMOOTH_FORWARD = {
    C.ELU: _elu,
    C.SELU: _selu,
    C.GELU: _gelu,
    C.SILU: lambda x, alpha: x * _sigmoid(x),
    C.SOFTPLUS: _softplus,
}


def _gelu_derivative(x, alpha):
    t = x.dtype.type
    return t(0.5) * (1 + _erf(x * t(_SQRT_HALF))) + x * t(_INV_SQRT_2PI) * np.exp(-x * x / 2)


def _silu_derivative(x, alpha):
    s = _sigmoid(x)
    return s * (1 + x * (1 - s))


#: act'(.) of those activations: from the output y, or from the input for INPUT_ACTS
_SMOOTH_DERIVATIVE = {
    C.ELU: lambda y, alpha: np.where(y > 0, 1, y + alpha),
    C.SELU: lambda y, alpha: np.where(
        y > 0, y.dtype.type(C.SELU_SCALE), y + y.dtype.type(C.SELU_SCALE * C.SELU_ALPHA)
    ),
    C.GELU: _gelu_derivative,
    C.SILU: _silu_derivative,
    C.SOFTPLUS: lambda y, alpha: -np.expm1(-y),
}


# ---------------------------------------------------------------------------------------
# Dense layer


def dense_forward(x, w, b, out, act, alpha):
    """out = act(x @ w + b).  x (N, I), w (I, O), b (O,) or empty (no bias), out (N, O)."""
    np.dot(x, w, out=out)
    if b.size:
        out += b
    activation_forward(out, out, act, alpha)


def dense_backward(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
    """Gradients of out = act(x @ w + b) given y = out (for codes.INPUT_ACTS: y = x @ w + b,
    the pre-activation) and dout = dL/dout.

    dz (N, O) = dout * act'(.) (may alias dout); db (O,) = sum_N dz; dw (I, O) = x.T @ dz;
    dx (N, I) = dz @ w.T, written only when ``need_dx`` is non-zero.
    """
    activation_backward(y, dout, dz, act, alpha)
    if db.size:  # empty without a bias
        np.sum(dz, axis=0, out=db)
    np.dot(x.T, dz, out=dw)
    if need_dx:
        np.dot(dz, w.T, out=dx)


# ---------------------------------------------------------------------------------------
# Dropout (counter-based hash, so every backend draws the same mask for the same seed)

_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z):
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def dropout_keep(shape, rate, seed, first=0):
    """Boolean keep-mask of ``shape``: element k is kept iff
    (splitmix64(splitmix64(seed) + first + k) >> 40) >= int(rate * 2**24) (``first``: the
    mask's first element, for a shard of rows of a larger batch)."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed & _M64], dtype=np.uint64))[0]
        idx = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(first)
        h = _splitmix64(idx + base) >> np.uint64(40)
    return (h >= np.uint64(int(rate * 16777216.0))).reshape(shape)


def dropout_forward(x, out, rate, seed):
    """out = x * keep / (1 - rate), keep from ``dropout_keep``.  x, out (N, O); may alias."""
    _dropout_from(x, out, rate, seed, 0)


def dropout_backward(dout, dx, rate, seed):
    """dx = dout * keep / (1 - rate) with the same mask as the forward.  (N, O); may alias."""
    _dropout_from(dout, dx, rate, seed, 0)


def _dropout_from(x, out, rate, seed, first):
    """dropout_forward with the mask's elements from ``first`` on (a shard of rows of a
    larger batch, see forward_stack's row0)."""
    scale = x.dtype.type(1.0 / (1.0 - rate))
    np.copyto(out, np.where(dropout_keep(x.shape, rate, seed, first), x * scale, 0))


def dropout_seed(seed, step, layer):
    """Seed of one dropout layer at one training step (same on every backend)."""
    return seed + step * 65536 + layer


# ---------------------------------------------------------------------------------------
# Losses: each returns the batch loss sum_i sw_i * loss_i / N and writes the gradient.
# The per-sample loss of a multi-output loss is its mean over the C outputs (as Keras).


def _softmax_rows(z):
    zm = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(zm).sum(axis=1, keepdims=True))
    return zm - lse  # log-probabilities


def softmax_cross_entropy(z, y, sw, p, dz):
    """Softmax + categorical cross-entropy from logits.  z, y, p, dz (N, C); sw (N,).

    p = softmax(z); dz = sw * (p * sum(y) - y) / N.  p may alias z or dz; dz may alias p.
    """
    n = z.shape[0]
    logp = _softmax_rows(z)
    loss = float(np.sum(sw * -(y * logp).sum(axis=1)) / n)
    probs = np.exp(logp)
    grad = (probs * y.sum(axis=1, keepdims=True) - y) * (sw[:, None] / n)
    p[...] = probs
    dz[...] = grad
    return loss


def sparse_softmax_cross_entropy(z, labels, sw, p, dz):
    """Softmax + cross-entropy with integer class labels stored in ``labels`` (N,) (any
    numeric dtype; values in [0, C)).  z, p, dz (N, C); sw (N,).  Aliasing as above."""
    n, c = z.shape
    idx = labels.astype(np.int64)
    if np.any((idx < 0) | (idx >= c)):
        raise IndexError(f"class labels must be in [0, {c}), got [{idx.min()}, {idx.max()}]")
    logp = _softmax_rows(z)
    loss = float(np.sum(sw * -logp[np.arange(n), idx]) / n)
    grad = np.exp(logp)
    probs = grad.copy()
    grad[np.arange(n), idx] -= 1
    grad *= sw[:, None] / n
    p[...] = probs
    dz[...] = grad
    return loss


def sigmoid_binary_cross_entropy(z, y, sw, p, dz):
    """Sigmoid + binary cross-entropy from logits, stable for any |z|.  (N, C); sw (N,).

    loss_ij = max(z,0) - z*y + log1p(exp(-|z|)); dz = sw * (p - y) / (N*C).
    """
    n, c = z.shape
    per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    loss = float(np.sum(sw * per.mean(axis=1)) / n)
    probs = np.empty_like(z)
    activation_forward(z, probs, C.SIGMOID, 0.0)
    grad = (probs - y) * (sw[:, None] / (n * c))
    p[...] = probs
    dz[...] = grad
    return loss


def categorical_crossentropy(p, y, sw, dp):
    """Cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C); sw (N,).

    dp = -sw * y / p / N where p is inside the clip range, 0 where clipped.
    """
    n = p.shape[0]
    eps = C.PROB_EPS
    pc = np.clip(p, eps, 1 - eps)
    loss = float(np.sum(sw * -(y * np.log(pc)).sum(axis=1)) / n)
    inside = (p >= eps) & (p <= 1 - eps)
    dp[...] = np.where(inside, -y / pc, 0) * (sw[:, None] / n)
    return loss


def binary_crossentropy(p, y, sw, dp):
    """Binary cross-entropy on probabilities p (clipped to [eps, 1-eps]).  (N, C); sw (N,).

    dp = sw * (p - y) / (p (1 - p)) / (N*C) inside the clip range, 0 where clipped.
    """
    n, c = p.shape
    eps = C.PROB_EPS
    pc = np.clip(p, eps, 1 - eps)
    per = -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
    loss = float(np.sum(sw * per.mean(axis=1)) / n)
    inside = (p >= eps) & (p <= 1 - eps)
    dp[...] = np.where(inside, (pc - y) / (pc * (1 - pc)), 0) * (sw[:, None] / (n * c))
    return loss


def mean_squared_error(pred, y, sw, dpred):
    """Mean squared error.  (N, C); sw (N,).  dpred = 2 sw (pred - y) / (N*C)."""
    n, c = pred.shape
    diff = pred - y
    loss = float(np.sum(sw * (diff * diff).mean(axis=1)) / n)
    dpred[...] = 2 * diff * (sw[:, None] / (n * c))
    return loss


def mean_absolute_error(pred, y, sw, dpred):
    """Mean absolute error.  (N, C); sw (N,).  dpred = sw sign(pred - y) / (N*C)."""
    n, c = pred.shape
    diff = pred - y
    loss = float(np.sum(sw * np.abs(diff).mean(axis=1)) / n)
    dpred[...] = np.sign(diff) * (sw[:, None] / (n * c))
    return loss


def huber(pred, y, sw, dpred):
    """Huber loss with delta = codes.HUBER_DELTA.  (N, C); sw (N,).  Per element
    0.5 d^2 (|d| <= delta) or delta (|d| - delta/2), d = pred - y, averaged over outputs;
    dpred = sw * clip(d, -delta, delta) / (N*C)."""
    n, c = pred.shape
    t = pred.dtype.type
    delta = t(C.HUBER_DELTA)
    d = pred - y
    small = np.abs(d) <= delta
    per = np.where(small, t(0.5) * d * d, delta * np.abs(d) - t(0.5) * delta * delta)
    loss = float(np.sum(sw * per.mean(axis=1)) / n)
    dpred[...] = np.where(small, d, delta * np.sign(d)) * (sw[:, None] / (n * c))
    return loss


def kl_divergence(p, y, sw, dp):
    """Kullback-Leibler divergence sum_j y log(y / p) with y and p clipped to [eps, 1]
    (Keras; eps = PROB_EPS), summed over outputs.  (N, C); sw (N,).

    dp = -sw * y_c / p_c / N where p is inside [eps, 1], 0 where clipped."""
    n = p.shape[0]
    t = p.dtype.type
    eps, one = t(C.PROB_EPS), t(1)
    yc, pc = np.clip(y, eps, one), np.clip(p, eps, one)
    loss = float(np.sum(sw * (yc * np.log(yc / pc)).sum(axis=1)) / n)
    inside = (p >= eps) & (p <= one)
    dp[...] = np.where(inside, -yc / pc, 0) * (sw[:, None] / n)
    return loss


def poisson(p, y, sw, dp):
    """Poisson loss mean_j (p - y log(p + eps)) (Keras; eps = PROB_EPS).  (N, C); sw (N,).

    dp = sw * (1 - y / (p + eps)) / (N*C)."""
    n, c = p.shape
    eps = p.dtype.type(C.PROB_EPS)
    per = p - y * np.log(p + eps)
    loss = float(np.sum(sw * per.mean(axis=1)) / n)
    dp[...] = (1 - y / (p + eps)) * (sw[:, None] / (n * c))
    return loss


def loss_grad(out, y, sw, p, dz, loss_code):
    """Dispatch to the loss ``loss_code``; returns the loss and writes dz = dL/dout.

    For the logit losses (SOFTMAX_CE, SPARSE_SOFTMAX_CE, SIGMOID_BCE) ``p`` receives the
    probabilities (it may alias ``out`` or ``dz``); y is (N, 1) class indices for the sparse
    loss.  For the others ``p`` is not touched.
    """
    if loss_code == C.SOFTMAX_CE:
        return softmax_cross_entropy(out, y, sw, p, dz)
    if loss_code == C.SPARSE_SOFTMAX_CE:
        return sparse_softmax_cross_entropy(out, y[:, 0], sw, p, dz)
    if loss_code == C.SIGMOID_BCE:
        return sigmoid_binary_cross_entropy(out, y, sw, p, dz)
    if loss_code == C.CATEGORICAL_CE:
        return categorical_crossentropy(out, y, sw, dz)
    if loss_code == C.BINARY_CE:
        return binary_crossentropy(out, y, sw, dz)
    if loss_code == C.MSE:
        return mean_squared_error(out, y, sw, dz)
    if loss_code == C.MAE:
        return mean_absolute_error(out, y, sw, dz)
    if loss_code == C.HUBER:
        return huber(out, y, sw, dz)
    if loss_code == C.KL_DIVERGENCE:
        return kl_divergence(out, y, sw, dz)
    if loss_code == C.POISSON:
        return poisson(out, y, sw, dz)
    raise ValueError(f"unknown loss code {loss_code}")


# ---------------------------------------------------------------------------------------
# Regularisation and optimizers (one fused pass each over flat buffers (P,))


def l1l2_penalty(w, dw, l1, l2):
    """Adds l1*sign(w) + 2*l2*w to dw and returns l1*sum|w| + l2*sum w^2.  w, dw any shape."""
    t = w.dtype.type
    dw += t(l1) * np.sign(w) + t(2 * l2) * w
    return float(l1 * np.abs(w).sum(dtype=np.float64) + l2 * np.square(w, dtype=np.float64).sum())


def sgd_update(p, g, lr):
    """p -= lr * g."""
    p -= p.dtype.type(lr) * g


def momentum_update(p, g, buf, lr, momentum, nesterov):
    """PyTorch SGD with momentum: buf = momentum*buf + g; p -= lr * (g + momentum*buf if
    nesterov else buf)."""
    t = p.dtype.type
    buf *= t(momentum)
    buf += g
    step = g + t(momentum) * buf if nesterov else buf
    p -= t(lr) * step


def adagrad_update(p, g, acc, lr, epsilon):
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon)."""
    t = p.dtype.type
    acc += g * g
    p -= t(lr) * g / (np.sqrt(acc) + t(epsilon))


def rmsprop_update(p, g, sq, lr, rho, epsilon):
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon)."""
    t = p.dtype.type
    sq *= t(rho)
    sq += t(1 - rho) * g * g
    p -= t(lr) * g / (np.sqrt(sq) + t(epsilon))


def adam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, weight_decay, step):
    """Adam / AdamW (PyTorch's formulas), ``step`` = t >= 1.

    p -= lr*weight_decay*p (decoupled, AdamW); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + epsilon).
    """
    t = p.dtype.type
    if weight_decay:
        p *= t(1 - lr * weight_decay)
    m *= t(beta_1)
    m += t(1 - beta_1) * g
    v *= t(beta_2)
    v += t(1 - beta_2) * g * g
    step_size = lr / (1 - beta_1**step)
    bc2_sqrt = np.sqrt(1 - beta_2**step)
    p -= t(step_size) * m / (np.sqrt(v) / t(bc2_sqrt) + t(epsilon))


def amsgrad_update(p, g, m, v, vmax, lr, beta_1, beta_2, epsilon, weight_decay, step):
    """Adam / AdamW with amsgrad (PyTorch's formulas), ``step`` = t >= 1: as adam_update,
    then vmax = max(vmax, v) and p -= (lr / (1-b1^t)) * m / (sqrt(vmax) / sqrt(1-b2^t) +
    epsilon)."""
    t = p.dtype.type
    if weight_decay:
        p *= t(1 - lr * weight_decay)
    m *= t(beta_1)
    m += t(1 - beta_1) * g
    v *= t(beta_2)
    v += t(1 - beta_2) * g * g
    np.maximum(vmax, v, out=vmax)
    step_size = lr / (1 - beta_1**step)
    bc2_sqrt = np.sqrt(1 - beta_2**step)
    p -= t(step_size) * m / (np.sqrt(vmax) / t(bc2_sqrt) + t(epsilon))


def rmsprop_mc_update(p, g, sq, buf, mean, lr, rho, epsilon, momentum, centered):
    """RMSprop with momentum and/or centering (PyTorch's formulas): sq = rho*sq +
    (1-rho)*g^2; centered: mean = rho*mean + (1-rho)*g, avg = sqrt(sq - mean^2) + epsilon,
    else avg = sqrt(sq) + epsilon; momentum > 0: buf = momentum*buf + g/avg, p -= lr*buf,
    else p -= lr * g / avg."""
    t = p.dtype.type
    sq *= t(rho)
    sq += t(1 - rho) * g * g
    if centered:
        mean *= t(rho)
        mean += t(1 - rho) * g
        avg = np.sqrt(sq - mean * mean) + t(epsilon)
    else:
        avg = np.sqrt(sq) + t(epsilon)
    if momentum > 0:
        buf *= t(momentum)
        buf += g / avg
        p -= t(lr) * buf
    else:
        p -= t(lr) * g / avg


def weight_decay_of(opt_code, hyper):
    """The decoupled weight decay in hyper's optional entry (codes.H_WEIGHT_DECAY after the
    clip entries; 0 when absent, and for the codes of codes.OWN_DECAY, which decay in their
    own update)."""
    i = C.HYPER_LEN[opt_code] + C.H_WEIGHT_DECAY
    if opt_code in C.OWN_DECAY or hyper.shape[0] <= i:
        return 0.0
    return float(hyper[i])


#: Keras's Nadam momentum schedule: u_t = beta_1 (1 - 0.5 * 0.96**t)
NADAM_DECAY = 0.96
#: Beyond this step 1 - 0.5 * 0.96**t rounds to 1.0 in float64: the product stops there.
NADAM_STEPS = 1000


def nadam_u_product(beta_1, step):
    """prod_{i=1..step} u_i of Keras's Nadam (float64; the factors beyond NADAM_STEPS are 1
    except for beta_1, whose power is taken in closed form)."""
    prod, decay = 1.0, 1.0
    for _ in range(min(int(step), NADAM_STEPS)):
        decay *= NADAM_DECAY
        prod *= 1.0 - 0.5 * decay
    return prod * beta_1 ** float(step)


def nadam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, step):
    """Nadam, Keras 3's formula, ``step`` = t >= 1: u_t = b1 (1 - 0.5 * 0.96^t),
    U_t = u_1 ... u_t; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr * (u_{t+1} m / (1 - U_t u_{t+1}) + (1 - u_t) g / (1 - U_t))
    / (sqrt(v / (1 - b2^t)) + epsilon).  (PyTorch's NAdam with momentum_decay=1.0.)"""
    t = p.dtype.type
    u_t = beta_1 * (1 - 0.5 * NADAM_DECAY**step)
    u_next = beta_1 * (1 - 0.5 * NADAM_DECAY ** (step + 1))
    prod = nadam_u_product(beta_1, step)
    m *= t(beta_1)
    m += t(1 - beta_1) * g
    v *= t(beta_2)
    v += t(1 - beta_2) * g * g
    m_hat = t(u_next / (1 - prod * u_next)) * m + t((1 - u_t) / (1 - prod)) * g
    v_hat = v / t(1 - beta_2**step)
    p -= t(lr) * m_hat / (np.sqrt(v_hat) + t(epsilon))


def weight_bounds(layers, n):
    """[(start, end)] of the trainable weights in params[:n]: the distinct offsets of the
    plan's weight columns (P_W0..P_W2) below n, each weight ending where the next begins."""
    cols = layers[:, C.P_W0 : C.P_W2 + 1].ravel()
    starts = sorted({int(o) for o in cols if 0 <= o < n} | {0})
    return list(zip(starts, starts[1:] + [n])) if n > 0 else []


def _scale_to_norm(g, limit):
    """g *= limit / max(||g||, limit) (Keras); NaN when the norm is not finite."""
    norm = float(np.sqrt(np.square(g, dtype=np.float64).sum()))
    scale = limit / max(norm, limit) if np.isfinite(norm) else float("nan")
    g *= g.dtype.type(scale)


def clip_gradients(grads, layers, opt_code, hyper):
    """Keras's gradient clipping of grads (P,) in place: with hyper's clip entries (codes.H_*
    after HYPER_LEN[opt_code] entries; absent or 0: off) the first set of clipnorm (each
    weight of the plan's ``layers`` table scaled to norm <= clipnorm), global_clipnorm (all
    of grads) and clipvalue (each entry clipped to [-clipvalue, clipvalue]).  A weight (or
    for global_clipnorm the whole gradient) whose norm is not finite becomes NaN."""
    base = C.HYPER_LEN[opt_code]
    if hyper.shape[0] < base + C.N_CLIP:
        return
    clipnorm, clipvalue = hyper[base + C.H_CLIPNORM], hyper[base + C.H_CLIPVALUE]
    global_clipnorm = hyper[base + C.H_GLOBAL_CLIPNORM]
    if clipnorm > 0:
        for start, end in weight_bounds(layers, grads.shape[0]):
            _scale_to_norm(grads[start:end], clipnorm)
    elif global_clipnorm > 0:
        _scale_to_norm(grads, global_clipnorm)
    elif clipvalue > 0:
        t = grads.dtype.type
        np.clip(grads, t(-clipvalue), t(clipvalue), out=grads)


def optimizer_update(params, grads, state, opt_code, hyper, step):
    """One optimizer step over the flat buffers.  params, grads (P,); state (S, P) with S =
    codes.STATE_SLOTS[opt_code] (at least 1 row); hyper float64 as in ``codes`` (its clip
    entries are not read here: train_step clips with ``clip_gradients`` first).  With a
    weight decay entry (``weight_decay_of``) the parameters are first scaled by
    1 - lr * weight_decay (Keras 3's decoupled decay)."""
    if not 0 <= opt_code < C.N_OPTS:
        raise ValueError(f"unknown optimizer code {opt_code}")
    weight_decay = weight_decay_of(opt_code, hyper)
    if weight_decay:
        params *= params.dtype.type(1 - hyper[0] * weight_decay)
    if opt_code == C.SGD:
        sgd_update(params, grads, hyper[0])
    elif opt_code == C.MOMENTUM:
        momentum_update(params, grads, state[0], hyper[0], hyper[1], int(hyper[2]))
    elif opt_code == C.ADAGRAD:
        adagrad_update(params, grads, state[0], hyper[0], hyper[1])
    elif opt_code == C.RMSPROP:
        rmsprop_update(params, grads, state[0], hyper[0], hyper[1], hyper[2])
    elif opt_code == C.ADAM:
        adam_update(params, grads, state[0], state[1], *hyper[:5], step)
    elif opt_code == C.NADAM:
        nadam_update(params, grads, state[0], state[1], *hyper[:4], step)
    elif opt_code == C.AMSGRAD:
        amsgrad_update(params, grads, state[0], state[1], state[2], *hyper[:5], step)
    elif opt_code == C.RMSPROP_MC:
        rmsprop_mc_update(params, grads, state[0], state[1], state[2], hyper[0], hyper[1],
                          hyper[2], hyper[3], hyper[4] != 0)  # fmt: skip
    else:
        raise ValueError(f"unknown optimizer code {opt_code}")


# ---------------------------------------------------------------------------------------
# Normalisation layers (the last axis: x (R, C) with R = N * D0 * D1 rows)


def _moments(x):
    """(mean, biased variance) of each column of x (R, C) in float64, from one pass of sums
    shifted by the first row (no cancellation when |mean| >> std)."""
    x64 = x.astype(np.float64)
    d = x64 - x64[0]
    r = x.shape[0]
    s1 = d.sum(axis=0)
    s2 = (d * d).sum(axis=0)
    mean = x64[0] + s1 / r
    var = np.maximum(s2 / r - (s1 / r) ** 2, 0.0)
    return mean, var


def batchnorm_forward(x, gamma, beta, moving_mean, moving_var, saved, out, acc, training,
                      momentum, epsilon):  # fmt: skip
    """Batch normalisation of each column of x (R, C) (Keras semantics).

    gamma, beta (C,) or empty (scale / center off: 1 and 0); moving_mean, moving_var (C,);
    saved (2, C) receives [mean, inv_std] for the backward; out (R, C) may alias x; acc
    (2, C) float64 is scratch.  Training: batch mean and biased variance (float64 sums),
    inv_std = 1 / sqrt(var + epsilon), moving = moving * momentum + batch * (1 - momentum);
    inference: the moving statistics.  out = (x - mean) * inv_std * gamma + beta.
    """
    t = x.dtype.type
    if training:
        mean, var = _moments(x)
        acc[0], acc[1] = mean, var
        moving_mean *= t(momentum)
        moving_mean += (mean * (1 - momentum)).astype(x.dtype)
        moving_var *= t(momentum)
        moving_var += (var * (1 - momentum)).astype(x.dtype)
        saved[0] = mean
        saved[1] = 1.0 / np.sqrt(var + epsilon)
    else:
        saved[0] = moving_mean
        saved[1] = 1.0 / np.sqrt(moving_var.astype(np.float64) + epsilon)
    y = (x - saved[0]) * saved[1]
    if gamma.shape[0]:
        y = y * gamma
    if beta.shape[0]:
        y = y + beta
    np.copyto(out, y, casting="same_kind")


def batchnorm_backward(x, gamma, saved, dout, dx, dgamma, dbeta, acc, need_dx):
    """Gradients of batchnorm_forward in training, from saved = [mean, inv_std].

    With xhat = (x - mean) * inv_std: dbeta = sum_R dout, dgamma = sum_R dout * xhat
    (float64 sums; each written only when its weight exists: dgamma, dbeta empty
    otherwise); dx = gamma * inv_std / R * (R * dout - dbeta - xhat * dgamma), written only
    when ``need_dx``.  dx may alias dout; acc (2, C) float64 is scratch.
    """
    r = x.shape[0]
    xhat = (x - saved[0]) * saved[1]
    acc[0] = dout.sum(axis=0, dtype=np.float64)
    acc[1] = (dout.astype(np.float64) * xhat).sum(axis=0)
    if dbeta.shape[0]:
        dbeta[...] = acc[0]
    if dgamma.shape[0]:
        dgamma[...] = acc[1]
    if need_dx:
        t = x.dtype.type
        coef = saved[1] * (gamma if gamma.shape[0] else t(1)) / t(r)
        sum_dy, sum_dyx = acc[0].astype(x.dtype), acc[1].astype(x.dtype)
        np.copyto(dx, coef * (t(r) * dout - sum_dy - xhat * sum_dyx), casting="same_kind")


def batchnorm_inference_backward(gamma, saved, dout, dx):
    """dL/dx of batchnorm_forward in inference mode (a frozen layer, as Keras runs it),
    from saved = [mean, inv_std] of that forward: dx = dout * gamma * inv_std.

    gamma (C,) or empty (scale off: 1); dout, dx (R, C) (may alias).  The statistics are
    constants there: no gradient reaches gamma, beta or them."""
    t = dout.dtype.type
    coef = saved[1] * gamma if gamma.shape[0] else saved[1] * t(1)
    np.copyto(dx, dout * coef, casting="same_kind")


def normalization_forward(x, mean, variance, out):
    """out = (x - mean) / max(sqrt(variance), NORM_EPS) per column (Keras' Normalization).

    x, out (R, C) (may alias); mean, variance (C,)."""
    t = x.dtype.type
    np.copyto(out, (x - mean) / np.maximum(np.sqrt(variance), t(C.NORM_EPS)))


def normalization_backward(variance, dout, dx):
    """dx = dout / max(sqrt(variance), NORM_EPS).  dout, dx (R, C) (may alias)."""
    t = dout.dtype.type
    np.copyto(dx, dout / np.maximum(np.sqrt(variance), t(C.NORM_EPS)))


# ---------------------------------------------------------------------------------------
# Convolution and pooling on channels-last images: x (N, H, W, C), outputs (N, HO, WO, F)
# or (N, HO, WO, C).  A window's output (oy, ox) reads the input rows oy*sh - pad_top + ky,
# ky < KH, and columns ox*sw - pad_left + kx, kx < KW; positions outside the image are
# zeros for the convolution and skipped by the pooling (TensorFlow's "same" padding).


def _padded_image(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left):
    """x zero-padded so that every window of the (ho, wo) output lies inside it."""
    n, h, w, c = x.shape
    hp = max((ho - 1) * sh + kh, h + pad_top)
    wp = max((wo - 1) * sw + kw, w + pad_left)
    xp = np.zeros((n, hp, wp, c), dtype=x.dtype)
    xp[:, pad_top : pad_top + h, pad_left : pad_left + w] = x
    return xp


def _window(xp, ky, kx, ho, wo, sh, sw):
    """The (N, ho, wo, C) inputs that position (ky, kx) of every window reads."""
    return xp[:, ky : ky + (ho - 1) * sh + 1 : sh, kx : kx + (wo - 1) * sw + 1 : sw]


def im2col(x, cols, kh, kw, sh, sw, pad_top, pad_left, ho, wo):
    """cols (N*HO*WO, KH*KW*C): row (n, oy, ox) holds the window of output (oy, ox), in
    (ky, kx, c) order (that of the kernel's (KH, KW, C, F) axes)."""
    c = x.shape[3]
    xp = _padded_image(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left)
    view = cols.reshape(x.shape[0], ho, wo, kh, kw, c)
    for ky in range(kh):
        for kx in range(kw):
            view[:, :, :, ky, kx, :] = _window(xp, ky, kx, ho, wo, sh, sw)


def col2im(cols, dx, kh, kw, sh, sw, pad_top, pad_left, ho, wo):
    """dx (N, H, W, C) = the sum of each column entry into the input position it came from
    (the adjoint of im2col)."""
    n, h, w, c = dx.shape
    dxp = np.zeros_like(_padded_image(dx, ho, wo, kh, kw, sh, sw, pad_top, pad_left))
    view = cols.reshape(n, ho, wo, kh, kw, c)
    for ky in range(kh):
        for kx in range(kw):
            _window(dxp, ky, kx, ho, wo, sh, sw)[...] += view[:, :, :, ky, kx, :]
    dx[...] = dxp[:, pad_top : pad_top + h, pad_left : pad_left + w]


def conv2d_forward(x, w, b, cols, out, act, alpha, sh, sw, pad_top, pad_left):
    """out = act(conv(x, w) + b).  x (N, H, W, C), w (KH, KW, C, F), b (F,) or empty (no
    bias), out (N, HO, WO, F); cols (N*HO*WO, KH*KW*C) receives im2col(x), kept for the
    backward; out = cols @ w.reshape(KH*KW*C, F), already NHWC.  A compiled backend may
    use cols as scratch (its contents unspecified), convolving directly or im2col block
    by block; its backward then reads x, not cols."""
    kh, kw, c, f = w.shape
    _, ho, wo, _ = out.shape
    im2col(x, cols, kh, kw, sh, sw, pad_top, pad_left, ho, wo)
    flat = out.reshape(-1, f)
    np.dot(cols, w.reshape(-1, f), out=flat)
    if b.shape[0]:
        flat += b
    activation_forward(flat, flat, act, alpha)


def conv2d_backward(x, w, y, dout, cols, dz, dx, dw, db, act, alpha, sh, sw, pad_top, pad_left,
                    need_dx):  # fmt: skip
    """Gradients of conv2d_forward given y = out, dout = dL/dout (N, HO, WO, F) and cols =
    im2col(x) of the forward.  dz (N, HO, WO, F) = dout * act'(.) (may alias dout); db (F,)
    = sum dz (when db is not empty); dw (KH, KW, C, F) = cols.T @ dz; with ``need_dx``: cols
    is overwritten by dz @ w.T and dx (N, H, W, C) = col2im(cols)."""
    kh, kw, c, f = w.shape
    _, ho, wo, _ = y.shape
    flat_dz = dz.reshape(-1, f)
    activation_backward(y.reshape(-1, f), dout.reshape(-1, f), flat_dz, act, alpha)
    if db.shape[0]:
        np.sum(flat_dz, axis=0, out=db)
    np.dot(cols.T, flat_dz, out=dw.reshape(-1, f))
    if need_dx:
        np.dot(flat_dz, w.reshape(-1, f).T, out=cols)
        col2im(cols, dx, kh, kw, sh, sw, pad_top, pad_left, ho, wo)


def _pool_windows(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left, fill):
    """(KH*KW, N, HO, WO, C): each window position's inputs (``fill`` outside the image)
    and a matching mask of the positions inside it."""
    xp = _padded_image(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left)
    inside = _padded_image(np.ones_like(x[:1, :, :, :1]), ho, wo, kh, kw, sh, sw, pad_top,
                           pad_left) > 0  # fmt: skip
    vals = np.stack([_window(xp, ky, kx, ho, wo, sh, sw) for ky in range(kh) for kx in range(kw)])
    mask = np.stack(
        [_window(inside, ky, kx, ho, wo, sh, sw) for ky in range(kh) for kx in range(kw)]
    )
    return np.where(mask, vals, fill), mask


def maxpool2d_forward(x, argmax, out, kh, kw, sh, sw, pad_top, pad_left):
    """out = the maximum of each window of each channel, over positions inside the image;
    argmax (N, HO, WO, C) receives the first maximum's window position ky*KW + kx (as a
    float).  x (N, H, W, C), out (N, HO, WO, C)."""
    _, ho, wo, _ = out.shape
    vals, _ = _pool_windows(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left, -np.inf)
    pos = np.argmax(vals, axis=0)
    argmax[...] = pos
    out[...] = np.take_along_axis(vals, pos[None], axis=0)[0]


def maxpool2d_backward(argmax, dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """dx (N, H, W, C) = the sum of dout (N, HO, WO, C) into each window's maximum."""
    n, h, w, c = dx.shape
    _, ho, wo, _ = dout.shape
    dxp = np.zeros_like(_padded_image(dx, ho, wo, kh, kw, sh, sw, pad_top, pad_left))
    for ky in range(kh):
        for kx in range(kw):
            hit = argmax == ky * kw + kx
            _window(dxp, ky, kx, ho, wo, sh, sw)[...] += np.where(hit, dout, 0)
    dx[...] = dxp[:, pad_top : pad_top + h, pad_left : pad_left + w]


def _window_counts(shape, ho, wo, kh, kw, sh, sw, pad_top, pad_left):
    """(HO, WO, 1): the number of positions of each window inside the image."""
    ones = np.ones((1, *shape[1:3], 1))
    _, mask = _pool_windows(ones, ho, wo, kh, kw, sh, sw, pad_top, pad_left, 0.0)
    return mask.sum(axis=0)[0]


def avgpool2d_forward(x, out, kh, kw, sh, sw, pad_top, pad_left):
    """out = the mean of each window of each channel over its positions inside the image.
    x (N, H, W, C), out (N, HO, WO, C)."""
    _, ho, wo, _ = out.shape
    vals, _ = _pool_windows(x, ho, wo, kh, kw, sh, sw, pad_top, pad_left, 0)
    count = _window_counts(x.shape, ho, wo, kh, kw, sh, sw, pad_top, pad_left)
    np.copyto(out, vals.sum(axis=0) / count.astype(x.dtype), casting="same_kind")


def avgpool2d_backward(dout, dx, kh, kw, sh, sw, pad_top, pad_left):
    """dx (N, H, W, C): each window's dout / count spread over its positions in the image."""
    n, h, w, c = dx.shape
    _, ho, wo, _ = dout.shape
    count = _window_counts(dx.shape, ho, wo, kh, kw, sh, sw, pad_top, pad_left)
    share = (dout / count.astype(dout.dtype)).astype(dout.dtype)
    dxp = np.zeros_like(_padded_image(dx, ho, wo, kh, kw, sh, sw, pad_top, pad_left))
    for ky in range(kh):
        for kx in range(kw):
            _window(dxp, ky, kx, ho, wo, sh, sw)[...] += share
    dx[...] = dxp[:, pad_top : pad_top + h, pad_left : pad_left + w]


# ---------------------------------------------------------------------------------------
# A plan of layers over flat buffers (layout: kernels/codes.py, built by fastnn._plan).
#
# plan = (layers, layer_f, kinds): layers (L, P_COLS) int64, layer_f (L, F_COLS) float64,
# kinds the marker of codes.kinds_marker (only the Numba backend reads it).
# net = (params, grads, state, nontrain): the weights that have gradients (P,) and those
# gradients (P,), the optimizer state (S, P') and the non-trainable weights (Q,).  The
# optimizer updates params[:P'] only: the weights of frozen layers (trainable = False) follow
# the trainable ones.
# work = (acts, gbuf, acc): layer outputs, saved tensors and scratch; the two halves of the
# backward's gradient flow; float64 accumulators.  x is the batch (N, I0) (its samples
# flattened); a layer's input with P_IN_OFF = -1 is x.


def _last_axis(row, first):
    """(rows per sample, width) of the input (first = P_IN0) or output (P_OUT0) shape."""
    return int(row[first]) * int(row[first + 1]), int(row[first + 2])


def _acts_view(x, acts, off, n, rows, width):
    if off < 0:
        return x.reshape(n * rows, width)
    return acts[off : off + n * rows * width].reshape(n * rows, width)


def _vec(buf, off, size):
    """buf[off : off + size], or an empty array when off < 0 (an absent weight)."""
    return buf[0:0] if off < 0 else buf[off : off + size]


def _mat(buf, off, rows, cols):
    return buf[off : off + rows * cols].reshape(rows, cols)


def _layer_views(x, acts, row, n):
    ri, wi = _last_axis(row, C.P_IN0)
    ro, wo = _last_axis(row, C.P_OUT0)
    inp = _acts_view(x, acts, int(row[C.P_IN_OFF]), n, ri, wi)
    out = _acts_view(x, acts, int(row[C.P_OUT_OFF]), n, ro, wo)
    return inp, out


def ids_view(x):
    """Token ids (int32 for float32, int64 for float64) that a model stores bit for bit in
    its float batch buffers (fastnn.layers.Embedding.encode_ids), as integers again."""
    return x.view(np.int32 if x.dtype == np.float32 else np.int64)


def _rnn_args(inp, params, acts, row, n):
    """(x (N, T, F), w, r, b, ws) of a recurrent layer's plan row (w, r, b in ``params``:
    the weights, or their gradients)."""
    kind, t, f, u = int(row[C.P_KIND]), int(row[C.P_IN1]), int(row[C.P_IN2]), int(row[C.P_UNITS])
    g = RNN_GATES[kind] * u
    w = _mat(params, int(row[C.P_W0]), f, g)
    r = _mat(params, int(row[C.P_W1]), u, g)
    b = _mat(params, int(row[C.P_W2]), 2 if kind == C.GRU else 1, g)
    off = int(row[C.P_SAVE_OFF])
    ws = acts[off : off + rnn_workspace_size(kind, n, t, f, u)]
    return inp.reshape(n, t, f), w, r, b, ws


def layer_forward(l, x, plan, net, work, n, training, seed, step, row0=0):
    """Runs layer ``l`` of the plan forward on a batch of n rows (dropout active and batch
    statistics used only when ``training``).  Raises on an unknown layer kind."""
    layers, layer_f, _ = plan
    params, _, _, nontrain = net
    acts, _, acc = work
    row, f = layers[l], layer_f[l]
    kind, act = int(row[C.P_KIND]), int(row[C.P_ACT])
    inp, out = _layer_views(x, acts, row, n)
    width = inp.shape[1]
    if kind == C.DENSE:
        w = _mat(params, int(row[C.P_W0]), width, out.shape[1])
        b = _vec(params, int(row[C.P_W1]), out.shape[1])
        if act in C.INPUT_ACTS:  # the pre-activation is saved for the backward
            z = _mat(acts, int(row[C.P_SAVE_OFF]), out.shape[0], out.shape[1])
            dense_forward(inp, w, b, z, C.LINEAR, 0.0)
            activation_forward(z, out, act, f[C.F_ALPHA])
        else:
            dense_forward(inp, w, b, out, act, f[C.F_ALPHA])
    elif kind == C.DROPOUT:
        if training and f[C.F_RATE] > 0:
            _dropout_from(inp, out, f[C.F_RATE], dropout_seed(seed, step, l),
                          row0 * (inp.size // n))  # fmt: skip
        else:
            out[...] = inp
    elif kind == C.ACTIVATION:
        activation_forward(inp, out, act, f[C.F_ALPHA])
    elif kind == C.BATCHNORM:
        batchnorm_forward(
            inp, _vec(params, int(row[C.P_W0]), width), _vec(params, int(row[C.P_W1]), width),
            _vec(nontrain, int(row[C.P_S0]), width), _vec(nontrain, int(row[C.P_S1]), width),
            _mat(acts, int(row[C.P_SAVE_OFF]), 2, width), out,
            _mat(acc, int(row[C.P_ACC_OFF]), 2, width), training and not row[C.P_FROZEN],
            f[C.F_MOMENTUM], f[C.F_EPSILON],
        )  # fmt: skip
    elif kind == C.NORMALIZATION:
        normalization_forward(inp, _vec(nontrain, int(row[C.P_S0]), width),
                              _vec(nontrain, int(row[C.P_S1]), width), out)  # fmt: skip
    elif kind in _CONV_KINDS:
        _conv_family_forward(row, f, params, acts, inp, out, n)
    elif kind == C.EMBEDDING:
        embedding_forward(ids_view(inp), _mat(params, int(row[C.P_W0]), int(row[C.P_VOCAB]),
                                              out.shape[1]), out)  # fmt: skip
    elif kind in RNN_GATES:
        x3, w, r, b, ws = _rnn_args(inp, params, acts, row, n)
        rnn_forward(kind, x3, w, r, b, out.reshape(n, -1, r.shape[0]), ws, act,
                    int(row[C.P_REC_ACT]), int(row[C.P_RETURN_SEQ]))  # fmt: skip
    else:
        raise ValueError(f"unknown layer kind {kind} (layer {l})")


_CONV_KINDS = (C.CONV2D, C.MAXPOOL2D, C.AVGPOOL2D, C.GLOBAL_AVGPOOL2D, C.GLOBAL_MAXPOOL2D)


def _images(a, row, first, n):
    """A (rows, width) view of a plan row's input (first = P_IN0) or output as (N, H, W, C)."""
    return a.reshape(n, int(row[first]), int(row[first + 1]), int(row[first + 2]))


def _window_args(row):
    return tuple(int(row[c]) for c in (C.P_KH, C.P_KW, C.P_SH, C.P_SW, C.P_PAD_TOP,
                                        C.P_PAD_LEFT))  # fmt: skip


def _conv_weights(buf, row):
    """(kernel (KH, KW, C, F), bias (F,) or empty) of a Conv2D row in params or grads."""
    kh, kw = int(row[C.P_KH]), int(row[C.P_KW])
    c, f = int(row[C.P_IN2]), int(row[C.P_OUT2])
    w0 = int(row[C.P_W0])
    return buf[w0 : w0 + kh * kw * c * f].reshape(kh, kw, c, f), _vec(buf, int(row[C.P_W1]), f)


def _saved(acts, row, n, per_sample_cols):
    out_pixels = int(row[C.P_OUT0] * row[C.P_OUT1])
    return _mat(acts, int(row[C.P_SAVE_OFF]), n * out_pixels, per_sample_cols)


def _conv_family_forward(row, f, params, acts, inp, out, n):
    """A convolution or pooling row's forward (see layer_forward)."""
    kind, (kh, kw, sh, sw, pt, pl) = int(row[C.P_KIND]), _window_args(row)
    x, y = _images(inp, row, C.P_IN0, n), _images(out, row, C.P_OUT0, n)
    if kind == C.CONV2D:
        w, b = _conv_weights(params, row)
        cols = _saved(acts, row, n, kh * kw * int(row[C.P_IN2]))
        conv2d_forward(x, w, b, cols, y, int(row[C.P_ACT]), f[C.F_ALPHA], sh, sw, pt, pl)
    elif kind in (C.MAXPOOL2D, C.GLOBAL_MAXPOOL2D):
        argmax = _saved(acts, row, n, int(row[C.P_OUT2])).reshape(y.shape)
        maxpool2d_forward(x, argmax, y, kh, kw, sh, sw, pt, pl)
    else:
        avgpool2d_forward(x, y, kh, kw, sh, sw, pt, pl)


def _conv_family_backward(row, f, net, acts, inp, out, g, dx, n, need_dx):
    """A convolution or pooling row's backward (see layer_backward)."""
    params, grads = net[0], net[1]
    kind, (kh, kw, sh, sw, pt, pl) = int(row[C.P_KIND]), _window_args(row)
    y, dout = _images(out, row, C.P_OUT0, n), _images(g, row, C.P_OUT0, n)
    dxi = _images(dx, row, C.P_IN0, n)
    if kind == C.CONV2D:
        w, _ = _conv_weights(params, row)
        dw, db = _conv_weights(grads, row)
        cols = _saved(acts, row, n, kh * kw * int(row[C.P_IN2]))
        conv2d_backward(_images(inp, row, C.P_IN0, n), w, y, dout, cols, dout, dxi, dw, db,
                        int(row[C.P_ACT]), f[C.F_ALPHA], sh, sw, pt, pl, int(need_dx))  # fmt: skip
        if f[C.F_L1] or f[C.F_L2]:
            return l1l2_penalty(w, dw, f[C.F_L1], f[C.F_L2])
    elif not need_dx:
        pass
    elif kind in (C.MAXPOOL2D, C.GLOBAL_MAXPOOL2D):
        argmax = _saved(acts, row, n, int(row[C.P_OUT2])).reshape(y.shape)
        maxpool2d_backward(argmax, dout, dxi, kh, kw, sh, sw, pt, pl)
    else:
        avgpool2d_backward(dout, dxi, kh, kw, sh, sw, pt, pl)
    return 0.0


def layer_backward(l, x, plan, net, work, n, seed, step, row0=0):
    """Back-propagates layer ``l``: reads dL/dout at P_DOUT_OFF of gbuf, writes the layer's
    weight gradients into grads and dL/dx at P_DX_OFF (when it is not -1); returns the
    regularisation penalty of its weights (whose gradient it adds)."""
    layers, layer_f, _ = plan
    params, grads, _, nontrain = net
    acts, gbuf, acc = work
    row, f = layers[l], layer_f[l]
    kind, act = int(row[C.P_KIND]), int(row[C.P_ACT])
    inp, out = _layer_views(x, acts, row, n)
    g = _acts_view(None, gbuf, int(row[C.P_DOUT_OFF]), n, *_last_axis(row, C.P_OUT0))
    dx_off = int(row[C.P_DX_OFF])  # -1 only on a layer with weights: it writes no dx then
    dx = _acts_view(None, gbuf, max(dx_off, 0), n, *_last_axis(row, C.P_IN0))
    width = inp.shape[1]
    if kind == C.DENSE:
        w0, w1 = int(row[C.P_W0]), int(row[C.P_W1])
        o = out.shape[1]
        w, dw = _mat(params, w0, width, o), _mat(grads, w0, width, o)
        y = _mat(acts, int(row[C.P_SAVE_OFF]), out.shape[0], o) if act in C.INPUT_ACTS else out
        dense_backward(inp, w, y, g, g, dx, dw, _vec(grads, w1, o), act, f[C.F_ALPHA],
                       int(dx_off >= 0))  # fmt: skip
        if f[C.F_L1] or f[C.F_L2]:
            return l1l2_penalty(w, dw, f[C.F_L1], f[C.F_L2])
    elif kind == C.DROPOUT:
        if f[C.F_RATE] > 0:
            _dropout_from(g, dx, f[C.F_RATE], dropout_seed(seed, step, l),
                          row0 * (g.size // n))  # fmt: skip
        else:
            dx[...] = g
    elif kind == C.ACTIVATION:
        activation_backward(inp if act in C.INPUT_ACTS else out, g, dx, act, f[C.F_ALPHA])
    elif kind == C.BATCHNORM and row[C.P_FROZEN]:  # inference mode: statistics are constants
        gamma = _vec(params, int(row[C.P_W0]), width)
        batchnorm_inference_backward(gamma, _mat(acts, int(row[C.P_SAVE_OFF]), 2, width), g, dx)
    elif kind == C.BATCHNORM:
        w0, w1 = int(row[C.P_W0]), int(row[C.P_W1])
        batchnorm_backward(
            inp, _vec(params, w0, width), _mat(acts, int(row[C.P_SAVE_OFF]), 2, width), g, dx,
            _vec(grads, w0, width), _vec(grads, w1, width),
            _mat(acc, int(row[C.P_ACC_OFF]), 2, width), int(dx_off >= 0),
        )  # fmt: skip
    elif kind == C.NORMALIZATION:
        normalization_backward(_vec(nontrain, int(row[C.P_S1]), width), g, dx)
    elif kind in _CONV_KINDS:
        return _conv_family_backward(row, f, net, acts, inp, out, g, dx, n, dx_off >= 0)
    elif kind == C.EMBEDDING:
        embedding_backward(ids_view(inp), g, _mat(grads, int(row[C.P_W0]),
                                                  int(row[C.P_VOCAB]), g.shape[1]))  # fmt: skip
    elif kind in RNN_GATES:
        x3, w, r, b, ws = _rnn_args(inp, params, acts, row, n)
        _, dw, dr, db, _ = _rnn_args(inp, grads, acts, row, n)
        u = r.shape[0]
        rnn_backward(kind, x3, w, r, g.reshape(n, -1, u), dx.reshape(x3.shape), dw, dr, db, ws,
                     act, int(row[C.P_REC_ACT]), int(row[C.P_RETURN_SEQ]),
                     int(dx_off >= 0))  # fmt: skip
    else:
        raise ValueError(f"unknown layer kind {kind} (layer {l})")
    return 0.0


def output_view(plan, acts, n):
    """The last layer's output (N, outputs) in ``acts``."""
    row = plan[0][-1]
    size = int(row[C.P_OUT0] * row[C.P_OUT1] * row[C.P_OUT2])
    off = int(row[C.P_OUT_OFF])
    return acts[off : off + n * size].reshape(n, size)


def _check_row0(row0):
    if isinstance(row0, bool) or not isinstance(row0, (int, np.integer)) or row0 < 0:
        raise ValueError(f"row0 must be an int >= 0, got {row0!r}")


def forward_stack(x, plan, net, work, training, seed, step, row0=0):
    """Runs every layer of the plan on x (N, I0), writing outputs (and, training, the saved
    tensors and BatchNormalization's moving statistics) into acts and nontrain.

    Dropout is active and batch statistics are used only when ``training`` is non-zero
    (dropout masks seeded by ``dropout_seed(seed, step, layer)``).  ``row0`` (an int >= 0):
    x is rows row0.. of a larger batch, and each Dropout layer applies those rows of the
    batch's mask (its mask elements from row0 * sample size on): the shards of a batch
    see the masks of the whole batch."""
    _check_row0(row0)
    for l in range(plan[0].shape[0]):
        layer_forward(l, x, plan, net, work, x.shape[0], training, seed, step, row0)


def backward_stack(x, plan, net, work, seed, step, row0=0):
    """Back-propagates dL/dout, which the caller left at the last layer's P_DOUT_OFF of
    gbuf, through the layers whose P_BACKWARD is set (last to first); writes the weight
    gradients into grads; returns the regularisation penalty (its gradient is added).
    ``row0`` as in :func:`forward_stack`."""
    _check_row0(row0)
    penalty = 0.0
    layers = plan[0]
    for l in range(layers.shape[0] - 1, -1, -1):
        if layers[l, C.P_BACKWARD]:
            penalty += layer_backward(l, x, plan, net, work, x.shape[0], seed, step, row0)
    return penalty


def penalty_stack(params, plan):
    """The regularisation penalty of every layer's W0 (no gradient)."""
    layers, layer_f, _ = plan
    total = 0.0
    for l in range(layers.shape[0]):
        l1, l2 = layer_f[l, C.F_L1], layer_f[l, C.F_L2]
        if layers[l, C.P_KIND] in (C.DENSE, C.CONV2D) and (l1 or l2):
            row = layers[l]
            size = int(row[C.P_IN2] * row[C.P_OUT2])
            if row[C.P_KIND] == C.CONV2D:
                size *= int(row[C.P_KH] * row[C.P_KW])
            w = params[int(row[C.P_W0]) : int(row[C.P_W0]) + size]
            total += l1 * float(np.abs(w).sum(dtype=np.float64)) + l2 * float(
                np.square(w, dtype=np.float64).sum()
            )
    return total


def _fused_loss(loss_code):
    return loss_code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE)


def _stack_loss(x, y, sw, plan, work, loss):
    acts, gbuf, _ = work
    loss_code, logits_out = int(loss[0]), int(loss[1])
    n = x.shape[0]
    out = output_view(plan, acts, n)
    off = int(plan[0][-1, C.P_DOUT_OFF])
    dz = gbuf[off : off + out.size].reshape(out.shape)
    p = out if (_fused_loss(loss_code) and not logits_out) else dz
    return loss_grad(out, y, sw, p, dz, loss_code)


def train_step(batch, plan, net, work, loss, opt):
    """One training step: forward, loss, backward, optimizer update.

    batch = (x (N, I0), y (N, T) targets (class indices in column 0 for the sparse loss),
    sw (N,) sample weights); loss = (loss_code, logits_out, metrics, thresholds) (the
    metrics of batch_stats, unused here); opt = (opt_code, hyper, lrs, step, seed) (lrs
    unused: hyper[0] is the rate).  For the logit losses the last layer must be linear; the
    probabilities replace the logits in acts unless ``logits_out``.  Returns the loss including the
    regularisation penalty; when it is not finite the parameters and optimizer state are
    not updated (grads still hold the step's gradients); otherwise the trainable prefix of
    grads is clipped in place by hyper's clip entries (``clip_gradients``) and the
    optimizer steps.
    """
    x, y, sw = batch
    opt_code, hyper, _, step, seed = opt
    forward_stack(x, plan, net, work, 1, seed, step)
    value = _stack_loss(x, y, sw, plan, work, loss)
    value += backward_stack(x, plan, net, work, seed, step)
    if np.isfinite(value):
        params, grads, state, _ = net
        n = state.shape[1]  # the trainable prefix: the frozen layers' weights follow
        clip_gradients(grads[:n], plan[0], opt_code, hyper)
        optimizer_update(params[:n], grads[:n], state, opt_code, hyper, step)
    return value


def eval_step(batch, plan, net, work, loss):
    """Forward (no dropout, moving statistics) and loss with the regularisation penalty;
    nothing is updated.  Arguments as :func:`train_step`."""
    x, y, sw = batch
    forward_stack(x, plan, net, work, 0, 0, 0)
    return _stack_loss(x, y, sw, plan, work, loss) + penalty_stack(net[0], plan)


def _bucket(p, k):
    """The number of thresholds j / (k - 1), j = 1..k-2, and -eps below p (Keras's AUC
    thresholds, the last one 1 + eps): p's bucket in 1..k-1, p clipped to [0, 1] first as
    Keras does (a linear output or a logit below 0 counts as 0); 0 for NaN."""
    nan = np.isnan(p)
    inner = np.clip(np.ceil(np.where(nan, 0, p) * (k - 1)) - 1, 0, k - 2)
    return np.where(nan, 0, 1 + inner.astype(np.int64))


def batch_stats(out, y, metrics, thresholds, stats):
    """Adds a batch's metric sums to ``stats``: STAT_ROWS; STAT_ABS and STAT_SQ when y has
    out's width; each metrics row's slots (codes.M_*).  out (N, C); y (N, T) (labels in
    column 0 for the sparse kinds); metrics (M, M_COLS) int64; thresholds (M,) float64.
    A histogram row with from_logits set buckets sigmoid(out); a confusion row compares out
    with its threshold as it is (on logits: the logit of the probability threshold)."""
    n, c = out.shape
    for m in range(metrics.shape[0]):
        kind, slot, k, logits = (int(v) for v in metrics[m])
        thr = out.dtype.type(thresholds[m])
        if kind == C.ACC_SPARSE:
            stats[slot] += np.sum(np.argmax(out, axis=1) == y[:, 0].astype(np.int64))
        elif kind == C.ACC_CATEGORICAL:
            stats[slot] += np.sum(np.argmax(out, axis=1) == np.argmax(y, axis=1))
        elif kind == C.ACC_BINARY:
            stats[slot] += np.sum((out > thr) == (y > 0.5)) / c
        elif kind in (C.M_TOP_K, C.M_SPARSE_TOP_K):
            label = y[:, 0].astype(np.int64) if kind == C.M_SPARSE_TOP_K else np.argmax(y, 1)
            score = out[np.arange(n), label]
            stats[slot] += np.sum(np.sum(out > score[:, None], axis=1) < k)
        elif kind == C.M_CONFUSION:
            pred, positive = out > thr, y > 0.5
            stats[slot] += np.sum(pred & positive)
            stats[slot + 1] += np.sum(pred & ~positive)
            stats[slot + 2] += np.sum(~pred & positive)
        elif kind == C.M_HISTOGRAM:
            p = out.astype(np.float64)
            if logits:
                p = 1 / (1 + np.exp(-p))
            b, positive = _bucket(p, k), y > 0.5
            stats[slot : slot + k] += np.bincount(b[positive], minlength=k)
            stats[slot + k : slot + 2 * k] += np.bincount(b[~positive], minlength=k)
        elif kind != C.ACC_NONE:
            raise ValueError(f"unknown metric kind {kind}")
    if y.shape[1] == c:
        diff = out.astype(np.float64) - y
        stats[C.STAT_ABS] += np.abs(diff).sum()
        stats[C.STAT_SQ] += np.square(diff).sum()
    stats[C.STAT_ROWS] += n


def run_epoch(data, plan, net, ws, loss, opt, train, stats):
    """Runs the batches of X[order] in order (the last batch may be smaller).

    data = (X (M, I0), Y (M, T), SW (M,), order (K,) int64, batch_size); ws = (xb (B, I0),
    yb (B, T), swb (B,), acts, gbuf, acc) with B >= batch_size; loss as train_step (with
    the metrics table and thresholds of batch_stats); opt = (opt_code, hyper, lrs, step,
    seed).
    Gathers each batch into xb, yb, swb; with ``train`` runs ``train_step`` at steps step,
    step+1, ... with hyper[0] = lrs[b]; otherwise ``eval_step``.  Accumulates loss*rows
    and metrics into ``stats``.  Stops early at a batch whose loss is not finite (after
    adding it to stats) and returns the number of batches completed before it; otherwise
    returns the number of batches.  A training call ends by setting stats[STAT_NONFINITE]
    to whether params, the optimizer state or the non-trainable weights hold a non-finite
    entry.
    """
    X, Y, SW, order, batch_size = data
    xb, yb, swb, acts, gbuf, acc = ws
    opt_code, hyper, lrs, step, seed = opt
    work = (acts, gbuf, acc)
    total = order.shape[0]
    n_batches = (total + batch_size - 1) // batch_size
    done = n_batches
    for b in range(n_batches):
        start = b * batch_size
        n = min(batch_size, total - start)
        idx = order[start : start + n]
        np.take(X, idx, axis=0, out=xb[:n])
        np.take(Y, idx, axis=0, out=yb[:n])
        np.take(SW, idx, axis=0, out=swb[:n])
        batch = (xb[:n], yb[:n], swb[:n])
        if train:
            hyper[0] = lrs[b]
            value = train_step(batch, plan, net, work, loss, (opt_code, hyper, lrs, step + b,
                                                              seed))  # fmt: skip
        else:
            value = eval_step(batch, plan, net, work, loss)
        stats[C.STAT_LOSS] += value * n
        if not np.isfinite(value):
            done = b
            break
        batch_stats(output_view(plan, acts, n), yb[:n], loss[2], loss[3], stats)
    if train:
        params, _, state, nontrain = net
        finite = all(np.isfinite(a).all() for a in (params, state, nontrain))
        stats[C.STAT_NONFINITE] = 0.0 if finite else 1.0
    return done
