"""NumPy reference kernels: the specification every backend implements.

Contract (shared by every backend module):

- A kernel takes its inputs, then its preallocated outputs, then scalars.  It writes into
  its outputs and returns nothing, except loss kernels and the training step (which return
  the loss as a Python float) and ``run_epoch`` (which returns the batches it completed).
- Arrays are C-contiguous, float32 or float64; all float arrays of one call share a dtype.
  ``layers`` tables are int64, ``layer_f``/``hyper``/``lrs``/``stats`` float64,
  ``order`` int64.
- Letters: N batch rows, I layer inputs, O layer outputs, C classes / targets, P parameters.
- In-place use that is allowed is stated per kernel ("may alias" means the very same
  array; partially overlapping views are not supported).
- Scalar sums (losses, penalties, metric statistics) may be accumulated in float64 by any
  backend; comparisons with constants (clip limits, thresholds) use the array dtype.
- Kernels never read or write out of bounds.  Inputs the API validates (labels in range,
  dropout rate in [0, 1), a consistent layer table) are preconditions: a backend may raise
  or return NaN when they are broken.  Reductions on a device may use internal scratch.

This module is also the NumPy baseline of the benchmarks: it is written the way a careful
NumPy user would write it, with ``out=`` arguments where NumPy offers them.
"""

from __future__ import annotations

import numpy as np

from . import codes as C

#: The operations of the contract: every backend module defines each of them.
OPS = (
    "activation_forward", "activation_backward", "dense_forward", "dense_backward",
    "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "sparse_softmax_cross_entropy", "sigmoid_binary_cross_entropy",
    "categorical_crossentropy", "binary_crossentropy", "mean_squared_error",
    "mean_absolute_error", "loss_grad", "l1l2_penalty",
    "sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    "optimizer_update", "forward_stack", "backward_stack", "train_step", "eval_step",
    "batch_stats", "run_epoch",
)  # fmt: skip

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
    else:
        raise ValueError(f"unknown activation code {act}")


def activation_backward(y, dout, dx, act, alpha):
    """dx = dL/dx from the activation's output y and dout = dL/dy.  (N, O); dx may alias dout.

    Derivatives are expressed through the output: relu y>0, leaky_relu 1 or alpha,
    sigmoid y(1-y), tanh 1-y^2, softmax y*(dout - sum(dout*y)).
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
    else:
        raise ValueError(f"unknown activation code {act}")
    np.copyto(dx, d, casting="same_kind")


# ---------------------------------------------------------------------------------------
# Dense layer


def dense_forward(x, w, b, out, act, alpha):
    """out = act(x @ w + b).  x (N, I), w (I, O), b (O,), out (N, O)."""
    np.dot(x, w, out=out)
    out += b
    activation_forward(out, out, act, alpha)


def dense_backward(x, w, y, dout, dz, dx, dw, db, act, alpha, need_dx):
    """Gradients of out = act(x @ w + b) given y = out and dout = dL/dout.

    dz (N, O) = dout * act'(.) (may alias dout); db (O,) = sum_N dz; dw (I, O) = x.T @ dz;
    dx (N, I) = dz @ w.T, written only when ``need_dx`` is non-zero.
    """
    activation_backward(y, dout, dz, act, alpha)
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


def dropout_keep(shape, rate, seed):
    """Boolean keep-mask of ``shape``: element k is kept iff
    (splitmix64(splitmix64(seed) + k) >> 40) >= int(rate * 2**24)."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed & _M64], dtype=np.uint64))[0]
        idx = np.arange(int(np.prod(shape)), dtype=np.uint64)
        h = _splitmix64(idx + base) >> np.uint64(40)
    return (h >= np.uint64(int(rate * 16777216.0))).reshape(shape)


def dropout_forward(x, out, rate, seed):
    """out = x * keep / (1 - rate), keep from ``dropout_keep``.  x, out (N, O); may alias."""
    scale = x.dtype.type(1.0 / (1.0 - rate))
    np.copyto(out, np.where(dropout_keep(x.shape, rate, seed), x * scale, 0))


def dropout_backward(dout, dx, rate, seed):
    """dx = dout * keep / (1 - rate) with the same mask as the forward.  (N, O); may alias."""
    dropout_forward(dout, dx, rate, seed)


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


def optimizer_update(params, grads, state, opt_code, hyper, step):
    """One optimizer step over the flat buffers.  params, grads (P,); state (S, P) with S =
    codes.STATE_SLOTS[opt_code] (at least 1 row); hyper float64 as in ``codes``."""
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
    else:
        raise ValueError(f"unknown optimizer code {opt_code}")


# ---------------------------------------------------------------------------------------
# A stack of layers over flat buffers.
#
# layers (L, 4) int64 rows: [kind, width, act, param_off]; Dense weights (I, O) start at
# param_off in ``params`` and its bias (O,) follows.  layer_f (L, 3) float64 rows:
# [alpha (leaky slope) or dropout rate, l1, l2].  Layer l writes its (N, width) output at
# acts[N*sum(widths[:l]) :].  gbuf has an even size >= 2*N*max(I0, widths); its halves
# hold the gradient flowing into and out of a layer (dL/dout starts at gbuf[0]).


def _view(buf, off, n, width):
    return buf[off : off + n * width].reshape(n, width)


def _dense_views(params, poff, n_in, width):
    w = params[poff : poff + n_in * width].reshape(n_in, width)
    b = params[poff + n_in * width : poff + n_in * width + width]
    return w, b


def output_offset(layers, n):
    """Offset in ``acts`` of the last layer's (N, width) output."""
    return n * int(np.sum(layers[:-1, 1]))


def forward_stack(x, params, acts, layers, layer_f, training, seed, step):
    """Runs the stack on x (N, I0), writing every layer's output into ``acts``.

    Dropout is active only when ``training`` is non-zero (seeded by ``dropout_seed``);
    its rate is in [0, 1)."""
    n = x.shape[0]
    inp = x
    off = 0
    for l in range(layers.shape[0]):
        kind, width, act, poff = (int(v) for v in layers[l])
        out = _view(acts, off, n, width)
        if kind == C.DENSE:
            w, b = _dense_views(params, poff, inp.shape[1], width)
            dense_forward(inp, w, b, out, act, layer_f[l, 0])
        elif kind == C.DROPOUT:
            if training and layer_f[l, 0] > 0:
                dropout_forward(inp, out, layer_f[l, 0], dropout_seed(seed, step, l))
            else:
                out[...] = inp
        else:
            activation_forward(inp, out, act, layer_f[l, 0])
        inp = out
        off += n * width


def _first_param_layer(layers):
    for l in range(layers.shape[0]):
        if layers[l, 0] == C.DENSE:
            return l
    return layers.shape[0]


def backward_stack(x, params, grads, acts, gbuf, layers, layer_f, seed, step):
    """Back-propagates dL/dout, which the caller left in gbuf[:N*C], through the stack;
    writes every Dense layer's dw, db into ``grads``; returns the regularisation penalty
    (its gradient is added to dw)."""
    n = x.shape[0]
    n_layers = layers.shape[0]
    half = gbuf.shape[0] // 2
    offs = np.concatenate([[0], np.cumsum(layers[:, 1]) * n])
    first = _first_param_layer(layers)
    penalty = 0.0
    cur = 0
    for l in range(n_layers - 1, first - 1, -1):
        kind, width, act, poff = (int(v) for v in layers[l])
        n_in = x.shape[1] if l == 0 else int(layers[l - 1, 1])
        inp = x if l == 0 else _view(acts, int(offs[l - 1]), n, n_in)
        out = _view(acts, int(offs[l]), n, width)
        g = _view(gbuf, cur, n, width)
        dx = _view(gbuf, half - cur, n, n_in)
        if kind == C.DENSE:
            w, b = _dense_views(params, poff, n_in, width)
            dw, db = _dense_views(grads, poff, n_in, width)
            dense_backward(inp, w, out, g, g, dx, dw, db, act, layer_f[l, 0], l > first)
            if layer_f[l, 1] or layer_f[l, 2]:
                penalty += l1l2_penalty(w, dw, layer_f[l, 1], layer_f[l, 2])
        elif kind == C.DROPOUT:
            if layer_f[l, 0] > 0:
                dropout_backward(g, dx, layer_f[l, 0], dropout_seed(seed, step, l))
            else:
                dx[...] = g
        else:
            activation_backward(out, g, dx, act, layer_f[l, 0])
        cur = half - cur
    return penalty


def penalty_stack(params, layers, layer_f, n_in0):
    """The regularisation penalty of every Dense layer (no gradient)."""
    total = 0.0
    n_in = n_in0
    for l in range(layers.shape[0]):
        kind, width, _, poff = (int(v) for v in layers[l])
        if kind == C.DENSE and (layer_f[l, 1] or layer_f[l, 2]):
            w, _ = _dense_views(params, poff, n_in, width)
            total += layer_f[l, 1] * float(np.abs(w).sum(dtype=np.float64)) + layer_f[l, 2] * float(
                np.square(w, dtype=np.float64).sum()
            )
        n_in = width
    return total


def _fused_loss(loss_code):
    return loss_code in (C.SOFTMAX_CE, C.SPARSE_SOFTMAX_CE, C.SIGMOID_BCE)


def _stack_loss(x, y, sw, acts, gbuf, layers, loss_code, logits_out):
    n = x.shape[0]
    width = int(layers[-1, 1])
    out = _view(acts, output_offset(layers, n), n, width)
    dz = _view(gbuf, 0, n, width)
    p = out if (_fused_loss(loss_code) and not logits_out) else dz
    return loss_grad(out, y, sw, p, dz, loss_code)


def train_step(
    x, y, sw, params, grads, state, acts, gbuf, layers, layer_f,
    loss_code, logits_out, opt_code, hyper, step, seed,
):  # fmt: skip
    """One training step of a layer stack: forward, loss, backward, optimizer update.

    x (N, I0); y (N, T) targets (class indices in column 0 for the sparse loss); sw (N,)
    sample weights.  For the logit losses the last layer must be linear; the probabilities
    replace the logits in ``acts`` unless ``logits_out``.  Returns the loss including the
    regularisation penalty; when it is not finite the parameters and optimizer state are
    not updated (``grads`` still hold the step's gradients).
    """
    forward_stack(x, params, acts, layers, layer_f, 1, seed, step)
    loss = _stack_loss(x, y, sw, acts, gbuf, layers, loss_code, logits_out)
    loss += backward_stack(x, params, grads, acts, gbuf, layers, layer_f, seed, step)
    if np.isfinite(loss):
        optimizer_update(params, grads, state, opt_code, hyper, step)
    return loss


def eval_step(x, y, sw, params, acts, gbuf, layers, layer_f, loss_code, logits_out):
    """Forward (no dropout) and loss with the regularisation penalty; nothing is updated."""
    forward_stack(x, params, acts, layers, layer_f, 0, 0, 0)
    loss = _stack_loss(x, y, sw, acts, gbuf, layers, loss_code, logits_out)
    return loss + penalty_stack(params, layers, layer_f, x.shape[1])


def batch_stats(out, y, acc_mode, threshold, stats):
    """Adds a batch's metric sums to ``stats`` (see codes.STAT_*).  out (N, C); y (N, T)."""
    n, c = out.shape
    if acc_mode == C.ACC_SPARSE:
        stats[C.STAT_CORRECT] += np.sum(np.argmax(out, axis=1) == y[:, 0].astype(np.int64))
    elif acc_mode == C.ACC_CATEGORICAL:
        stats[C.STAT_CORRECT] += np.sum(np.argmax(out, axis=1) == np.argmax(y, axis=1))
    elif acc_mode == C.ACC_BINARY:
        stats[C.STAT_CORRECT] += np.sum((out > threshold) == (y > 0.5)) / c
    if y.shape[1] == c:
        diff = out.astype(np.float64) - y
        stats[C.STAT_ABS] += np.abs(diff).sum()
        stats[C.STAT_SQ] += np.square(diff).sum()
    stats[C.STAT_ROWS] += n


def run_epoch(
    X, Y, SW, order, batch_size, xb, yb, swb,
    params, grads, state, acts, gbuf, layers, layer_f,
    loss_code, logits_out, opt_code, hyper, lrs, step, seed,
    train, acc_mode, threshold, stats,
):  # fmt: skip
    """Runs the batches of X[order] in order (last batch may be smaller).

    Gathers each batch into xb (B, I0), yb (B, T), swb (B,); with ``train`` runs
    ``train_step`` at steps step, step+1, ... with hyper[0] = lrs[b]; otherwise
    ``eval_step``.  Accumulates loss*rows and metrics into ``stats``.  Stops early at a
    batch whose loss is not finite (after adding it to stats) and returns the number of
    batches completed before it; otherwise returns the number of batches.  A training call
    ends by setting stats[STAT_NONFINITE] to whether params or state hold a non-finite entry.
    """
    total = order.shape[0]
    n_batches = (total + batch_size - 1) // batch_size
    width = int(layers[-1, 1])
    done = n_batches
    for b in range(n_batches):
        start = b * batch_size
        n = min(batch_size, total - start)
        idx = order[start : start + n]
        np.take(X, idx, axis=0, out=xb[:n])
        np.take(Y, idx, axis=0, out=yb[:n])
        np.take(SW, idx, axis=0, out=swb[:n])
        if train:
            hyper[0] = lrs[b]
            loss = train_step(
                xb[:n], yb[:n], swb[:n], params, grads, state, acts, gbuf, layers,
                layer_f, loss_code, logits_out, opt_code, hyper, step + b, seed,
            )  # fmt: skip
        else:
            loss = eval_step(
                xb[:n], yb[:n], swb[:n], params, acts, gbuf, layers, layer_f,
                loss_code, logits_out,
            )  # fmt: skip
        stats[C.STAT_LOSS] += loss * n
        if not np.isfinite(loss):
            done = b
            break
        out = _view(acts, output_offset(layers, n), n, width)
        batch_stats(out, yb[:n], acc_mode, threshold, stats)
    if train:
        finite = np.isfinite(params).all() and np.isfinite(state).all()
        stats[C.STAT_NONFINITE] = 0.0 if finite else 1.0
    return done
