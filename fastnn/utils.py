"""Keras-style utilities: ``to_categorical`` and ``set_random_seed``."""

from __future__ import annotations

import random

import numpy as np

from ._checks import as_array
from .layers.base import clear_session  # noqa: F401 - Keras's keras.utils.clear_session

#: The generator ``set_random_seed`` seeds: models created without a seed draw theirs from
#: it (None until the first call: such models are then seeded from the OS's entropy).
_seeds: np.random.Generator | None = None


def to_categorical(x, num_classes: int | None = None) -> np.ndarray:
    """Integer class labels as one-hot rows (Keras's ``keras.utils.to_categorical``).

    Parameters
    ----------
    x : array-like of ints
        Labels in ``[0, num_classes)``, any shape; a trailing axis of size 1 is dropped.
    num_classes : int, optional
        Number of classes (default: the largest label + 1).

    Returns
    -------
    ndarray
        float64 array of shape ``x.shape + (num_classes,)``.
    """
    labels = as_array(x, "x")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (np.mod(np.where(np.isfinite(labels), labels, 0), 1) == 0)
        if not whole.all():
            raise ValueError(f"x must hold integer class labels, got {labels[~whole].ravel()[0]}")
    elif labels.dtype.kind not in "biu":
        raise TypeError(f"x must hold integer class labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    shape = labels.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    labels = labels.reshape(-1)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"x must hold labels in [0, {num_classes - 1}] for num_classes={num_classes}, got "
            f"values in [{labels.min()}, {labels.max()}]"
        )
    out = np.zeros((labels.size, int(num_classes)))
    out[np.arange(labels.size), labels] = 1
    return out.reshape((*shape, int(num_classes)))


def set_random_seed(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and fastnn: a model created
    afterwards without ``seed=`` takes one from this sequence, so a script that calls this
    first builds, shuffles and drops out the same way on every run (Keras's
    ``keras.utils.set_random_seed``)."""
    global _seeds
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    _seeds = np.random.default_rng(int(seed))


def next_seed() -> int | None:
    """The seed of a model created without one: drawn from ``set_random_seed``'s sequence,
    or None when it was never called."""
    return None if _seeds is None else int(_seeds.integers(0, 2**31 - 1))
