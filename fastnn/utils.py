"""Keras-style utilities: ``to_categorical``, ``normalize``, ``pad_sequences`` and
``set_random_seed``."""

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


def normalize(x, axis: int = -1, order=2) -> np.ndarray:
    """``x`` divided by its ``order``-norm along ``axis`` (Keras's ``keras.utils.normalize``);
    rows whose norm is 0 are left as they are.

    Parameters
    ----------
    x : array-like
        Numbers, at least 1-D.
    axis : int, default -1
        The axis the norms are taken along.
    order : int, float or str, default 2
        The norm's order, as ``numpy.linalg.norm`` takes it for vectors (``1``, ``2``,
        ``np.inf``, ...).

    Returns
    -------
    ndarray
        A normalised copy of ``x`` (floating point).
    """
    a = as_array(x, "x")
    if a.ndim == 0:
        raise ValueError("x must have at least one axis, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis must be in [{-a.ndim}, {a.ndim - 1}] for x of shape "
                         f"{a.shape}, got {axis}")  # fmt: skip
    try:
        norm = np.linalg.norm(a, order, int(axis), keepdims=True)
    except ValueError as exc:
        raise ValueError(f"order must be a vector norm order numpy.linalg.norm takes "
                         f"(1, 2, numpy.inf, ...), got {order!r}") from exc  # fmt: skip
    norm[norm == 0] = 1
    return a / norm


def pad_sequences(sequences, maxlen: int | None = None, dtype="int32", padding: str = "pre",
                  truncating: str = "pre", value=0.0) -> np.ndarray:  # fmt: skip
    """Sequences of different lengths as one array of shape ``(len(sequences), maxlen,
    *item_shape)`` (Keras's ``keras.utils.pad_sequences``): shorter ones filled with
    ``value``, longer ones cut.

    Parameters
    ----------
    sequences : sequence of sequences
        E.g. lists of token ids; the items of every sequence must share one shape.
    maxlen : int, optional
        The length of every output row (default: the longest sequence's length).
    dtype : dtype, default "int32"
        The output's dtype.
    padding : {"pre", "post"}
        Fill before or after each sequence.
    truncating : {"pre", "post"}
        Cut a longer sequence at its beginning or its end.
    value : number
        The fill value.

    Returns
    -------
    ndarray
    """
    for name, where in (("padding", padding), ("truncating", truncating)):
        if where not in ("pre", "post"):
            raise ValueError(f'{name} must be "pre" or "post", got {where!r}')
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise TypeError(f"sequences must be a list of sequences, got {type(sequences).__name__}")
    rows = [_sequence(s, i) for i, s in enumerate(sequences)]
    if maxlen is None:
        maxlen = max((len(r) for r in rows), default=0)
    elif isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 0:
        raise ValueError(f"maxlen must be None or an int >= 0, got {maxlen!r}")
    item = next((r.shape[1:] for r in rows if len(r)), ())
    out = np.full((len(rows), int(maxlen), *item), value, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row) == 0 or maxlen == 0:
            continue
        if row.shape[1:] != item:
            raise ValueError(f"sequences[{i}] has items of shape {row.shape[1:]}, the first "
                             f"non-empty sequence {item}")  # fmt: skip
        kept = row[-maxlen:] if truncating == "pre" else row[:maxlen]
        if padding == "pre":
            out[i, maxlen - len(kept) :] = kept
        else:
            out[i, : len(kept)] = kept
    return out


def _sequence(s, i: int) -> np.ndarray:
    if isinstance(s, (str, bytes)) or not hasattr(s, "__len__"):
        raise TypeError(f"sequences[{i}] must be a sequence, got {type(s).__name__}")
    row = np.asarray(s)
    if row.ndim == 0:
        raise TypeError(f"sequences[{i}] must be a sequence, got a scalar")
    return row


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
