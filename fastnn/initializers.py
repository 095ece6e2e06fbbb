"""Weight initialisers (Keras names and formulas).  Each takes (shape, rng) -> float64 array."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._names import foreign_object_hint, lookup


def _fans(shape):
    """(fan_in, fan_out) as Keras: a convolution kernel (..., in, out) multiplies both by
    its receptive field (the product of the leading axes)."""
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2], dtype=np.int64))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, std):
    """Normal(0, std) re-drawn outside 2 std, as Keras' truncated initialisers."""
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


def _variance_scaling(scale, mode, distribution):
    def init(shape, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if distribution == "uniform":
            limit = np.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, size=shape)
        # 0.879... is the std of a unit normal truncated at 2 std (Keras' correction)
        return _truncated_normal(rng, shape, np.sqrt(var) / 0.87962566103423978)

    return init


def _orthogonal(shape, rng):
    """Keras's Orthogonal (gain 1): the Q of a QR decomposition of a normal matrix, signs
    fixed by R's diagonal, over the shape flattened to (prod(shape[:-1]), shape[-1])."""
    rows, cols = int(np.prod(shape[:-1])), int(shape[-1])
    a = rng.normal(0.0, 1.0, size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape)


def _identity(shape, rng):
    """Keras's Identity (gain 1): the identity matrix of a 2-D shape (rectangular: ones on
    the main diagonal)."""
    if len(shape) != 2:
        raise ValueError(f"the identity initializer needs a 2-D weight, got shape {shape}")
    return np.eye(*shape)


_INITS: dict[str, Callable] = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "zeros": lambda shape, rng: np.zeros(shape),
    "ones": lambda shape, rng: np.ones(shape),
    "random_normal": lambda shape, rng: rng.normal(0.0, 0.05, size=shape),
    "random_uniform": lambda shape, rng: rng.uniform(-0.05, 0.05, size=shape),
    "uniform": lambda shape, rng: rng.uniform(-0.05, 0.05, size=shape),
    "normal": lambda shape, rng: rng.normal(0.0, 0.05, size=shape),
    "truncated_normal": lambda shape, rng: _truncated_normal(rng, shape, 0.05),
    "variance_scaling": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "orthogonal": _orthogonal,
    "identity": _identity,
    "one": lambda shape, rng: np.ones(shape),
    "zero": lambda shape, rng: np.zeros(shape),
}


#: How a config names an initialiser that was a Python callable (it cannot hold one).
CALLABLE_PREFIX = "callable:"


def config_name(init: str | Callable) -> str:
    """An initialiser as a layer's config holds it: its name, or for a callable
    ``"callable:<its name>"``, which :func:`get` turns into an initialiser that refuses to
    run (the weights must come from elsewhere: a file, ``set_weights``)."""
    if isinstance(init, str):
        return init
    return CALLABLE_PREFIX + getattr(init, "__qualname__", type(init).__name__)


def without_callables(config: dict, replacement: str = "zeros") -> dict:
    """A layer config with :func:`config_name`'s callable entries replaced (for a layer
    whose weights are loaded right after it is built)."""
    return {key: replacement if isinstance(value, str) and value.startswith(CALLABLE_PREFIX)
            else value for key, value in config.items()}  # fmt: skip


class _NotInConfig:
    """The initialiser of a config entry that was a callable: raises when called."""

    def __init__(self, name: str, arg: str):
        self.name, self.arg = name, arg

    def __call__(self, shape, rng):
        name = self.name.removeprefix(CALLABLE_PREFIX)
        raise ValueError(
            f"{self.arg} was the Python callable {name}, which a config cannot hold: pass "
            f"{self.arg}=... to the layer again, or load the weights (load_model restores them)"
        )


def get(init: str | Callable, arg: str) -> Callable:
    """The initialiser for a name, or ``init`` itself if it is callable(shape, rng)."""
    if isinstance(init, str) and init.startswith(CALLABLE_PREFIX):
        return _NotInConfig(init, arg)
    hint = foreign_object_hint(init, instead="")
    if hint:  # a Keras initializer is callable too, but as (shape, dtype)
        raise TypeError(
            f"{arg} must be a name or a callable (shape, rng) -> array, got "
            f"{type(init).__name__}{hint}"
        )
    if callable(init):
        return init
    return lookup(_INITS, arg, init)


def names() -> list[str]:
    """The initialiser names fastnn knows."""
    return sorted(_INITS)
