"""Gradient checking: analytic backward vs central finite differences, in float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import reference as ref


@dataclass
class GradcheckResult:
    """Largest differences between analytic and numerical gradients."""

    max_abs_error: float
    max_rel_error: float
    checked: int
    rtol: float
    atol: float

    failed: int = 0

    @property
    def passed(self) -> bool:
        """Every checked entry satisfies |analytic - numeric| <= atol + rtol * |numeric|."""
        return self.failed == 0

    def __bool__(self) -> bool:
        return self.passed


def _compare(analytic, numeric, rtol, atol):
    analytic = np.asarray(analytic, dtype=np.float64).ravel()
    numeric = np.asarray(numeric, dtype=np.float64).ravel()
    err = np.abs(analytic - numeric)
    # elementwise relative error, measured against atol where both are tiny
    rel = err / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), atol)
    failed = int(np.sum(err > atol + rtol * np.abs(numeric)))
    return GradcheckResult(
        float(err.max(initial=0)), float(rel.max(initial=0)), err.size, rtol, atol, failed
    )


def _indices(size, max_checks, rng):
    if size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, max_checks, replace=False))


def _numeric(f, theta, idx, eps):
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = theta[i]
        theta[i] = old + eps
        up = f()
        theta[i] = old - eps
        down = f()
        theta[i] = old
        out[j] = (up - down) / (2 * eps)
    return out


def gradcheck(
    target,
    x,
    y=None,
    sample_weight=None,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-7,
    max_checks: int = 400,
    seed: int = 0,
) -> GradcheckResult:
    """Compares a compiled model's or a layer's backward with central differences.

    Parameters
    ----------
    target : Sequential (compiled) or Layer
        For a model the loss is the compiled loss (with regularisation; dropout masks are
        fixed by the seed) and its trainable weights are checked; for a layer it is
        ``sum(layer(x) * R)`` with a random R, and the gradients of the weights and of x
        are both checked.
    x, y : arrays
        Inputs and targets (y is not used for a layer).
    eps : float
        Finite-difference step.
    max_checks : int
        At most this many randomly chosen entries are checked.

    Returns
    -------
    GradcheckResult
        Truthy when every checked entry has |analytic - numeric| <= atol + rtol*|numeric|.
    """
    from .model import Sequential

    rng = np.random.default_rng(seed)
    if isinstance(target, Sequential):
        return _check_model(target, x, y, sample_weight, eps, rtol, atol, max_checks, rng)
    return _check_layer(target, x, eps, rtol, atol, max_checks, rng)


def _check_model(model, x, y, sample_weight, eps, rtol, atol, max_checks, rng):
    X, Y, SW = (np.asarray(a, dtype=np.float64) for a in model._prepare(x, y, sample_weight))
    loss_plan = model._stack_plan()
    eng = model._engine
    params = eng.pull().astype(np.float64)
    nontrain = eng.host_nontrain.astype(np.float64)
    grads = np.zeros_like(params)
    n = len(X)
    plan = eng.plan_for(n).with_last_activation(loss_plan.train_act)
    acts, gbuf, acc = (np.zeros(size) for size in (plan.acts_size, plan.gbuf_size,
                                                     plan.acc_size))  # fmt: skip
    net = (params, grads, np.zeros((1, params.size)), nontrain)
    work = (acts, gbuf, acc)
    loss_args = (loss_plan.code, loss_plan.logits_out, 0, 0.5)
    kept = nontrain.copy()  # a training forward moves BatchNormalization's statistics

    def loss_value():
        nontrain[...] = kept
        ref.forward_stack(X, plan.args, net, work, 1, 7, 1)
        return ref._stack_loss(X, Y, SW, plan.args, work, loss_args)

    def loss():
        return loss_value() + ref.penalty_stack(params, plan.args)

    loss_value()
    ref.backward_stack(X, plan.args, net, work, 7, 1)
    idx = _indices(eng.n_train, max_checks, rng)  # frozen layers' weights get no gradient
    return _compare(grads[idx], _numeric(loss, params, idx, eps), rtol, atol)


def _check_layer(layer, x, eps, rtol, atol, max_checks, rng):
    x = np.array(x, dtype=np.float64)
    if not layer.built:
        layer.build(x.shape[1:], np.float64, rng)
    if layer.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 layer, got {layer.dtype}")
    r = rng.normal(size=(x.shape[0], *layer.output_shape))
    kept = [w.copy() for w in layer.non_trainable_weights]  # moving statistics
    # a Dropout layer is checked on its training path with a fixed mask
    seed_state = getattr(layer, "_calls", None)

    def loss():
        if seed_state is not None:
            layer._calls = seed_state
        for w, k in zip(layer.non_trainable_weights, kept):
            w[...] = k
        value = float(np.sum(layer.forward(x, training=True) * r))
        return value + (layer.penalty() if hasattr(layer, "penalty") else 0.0)

    loss()
    dx = layer.backward(r)
    thetas, grads = list(layer.trainable_weights), [g.copy() for g in getattr(layer, "grads", [])]
    if dx is not None:  # None: an input with no gradient (Embedding's token ids)
        thetas, grads = [x, *thetas], [dx.copy(), *grads]
    analytic, numeric = [], []
    for theta, grad in zip(thetas, grads):
        idx = _indices(theta.size, max_checks, rng)
        analytic.append(grad.reshape(-1)[idx])
        numeric.append(_numeric(loss, theta.reshape(-1), idx, eps))
    return _compare(np.concatenate(analytic), np.concatenate(numeric), rtol, atol)
