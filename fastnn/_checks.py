"""Argument checks shared by the model, the layers, the losses and the optimizers: arrays
of numbers in, a ValueError or TypeError naming the argument out."""

from __future__ import annotations

import numpy as np


def as_array(x, arg: str) -> np.ndarray:
    """``x`` as a NumPy array of numbers, or a TypeError/ValueError naming ``arg``."""
    if not (hasattr(x, "__array__") or isinstance(x, (list, tuple))):
        raise TypeError(f"{arg} must be an array (NumPy array or list), got {type(x).__name__}")
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{arg} must be a rectangular array of numbers, got a ragged or mixed sequence ({exc})"
        ) from None
    if x.dtype.kind not in "biuf":
        raise TypeError(
            f"{arg} must be numeric (bool, int or float), got an array of dtype {x.dtype}"
        )
    return x


def as_float(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype``: ``x`` itself when it already is one (no
    np.errstate, which alone costs about a microsecond), else a converted copy (an overflow
    to inf is left for :func:`check_finite` to report)."""
    if x.dtype == dtype and x.flags.c_contiguous:
        return x
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, dtype=dtype)


def check_finite(a: np.ndarray, arg: str, source=None) -> None:
    """ValueError naming ``arg`` if ``a`` has NaN or infinite entries; ``source`` is the array
    ``a`` was converted from (the message then says whether the conversion overflowed).
    When ``a`` is finite the check allocates at most 32 KB (never a boolean array as large
    as a big ``a``)."""
    if a.dtype.kind != "f" or _all_finite(a):
        return
    bad = np.argwhere(~np.isfinite(a))
    where = tuple(int(i) for i in bad[0])
    note = ""
    if source is not None and source.size == a.size and source.dtype != a.dtype:
        if source.dtype.kind != "f" or np.isfinite(source.reshape(a.shape)[where]):
            value = source.reshape(a.shape)[where]
            note = f" (overflow converting {value} from {source.dtype} to {a.dtype})"
    raise ValueError(
        f"{arg} must be finite, got {len(bad)} NaN or infinite value(s){note}, the first "
        f"at index {where}: {a[where]}"
    )


#: largest array checked with np.isfinite (a boolean temporary of its size) when the cython
#: extension is not built; larger ones take a BLAS dot product, which allocates nothing
_ISFINITE_MAX = 1 << 15

#: the cython extension's any_nonfinite once looked up; False when it is not built
_compiled_check = None


def _compiled():
    """One vectorised pass in C with no temporary (0.15-0.2 us for a few thousand entries,
    against about 2 us for np.isfinite), when the cython extension is built."""
    global _compiled_check
    if _compiled_check is None:
        from . import backend

        try:
            _compiled_check = backend.load("cython").any_nonfinite
        except (RuntimeError, AttributeError):
            _compiled_check = False
    return _compiled_check


def _all_finite(a: np.ndarray) -> bool:
    """Whether every entry of ``a`` is finite.  A C-contiguous native float32/float64 array
    goes to the cython extension's single pass when it is built.  Otherwise small arrays
    take np.isfinite (the np.errstate a dot product needs costs more than the whole check)
    and large ones a BLAS dot product (NaN and inf propagate; several times faster than
    np.isfinite), confirmed exactly when it is not finite."""
    fast = _compiled()
    native = a.dtype == np.float32 or a.dtype == np.float64
    if fast and native and a.flags.c_contiguous and a.flags.aligned:
        return not fast(a)
    if a.size <= _ISFINITE_MAX:
        return bool(np.isfinite(a).all())
    flat = a.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(flat).all())


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (or an update that made the weights
    non-finite); the weights and optimizer state are those of the last good step.

    Attributes ``epoch`` and ``batch`` (0-based, None in ``train_on_batch``) locate the step
    that failed; ``loss`` is its loss.
    """

    def __init__(self, message: str, epoch: int | None = None, batch: int | None = None,
                 loss: float | None = None):  # fmt: skip
        super().__init__(message)
        self.epoch, self.batch, self.loss = epoch, batch, loss


def check_int(value, arg: str, low: int = 1) -> int:
    """``value`` as an int >= ``low``: TypeError for a non-integer, ValueError below ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{arg} must be an int >= {low}, got {value}")
    return int(value)


def _batch_size(batch_size, default, n=None):
    """The batch size to use (at most ``n`` rows, so workspaces never exceed the data)."""
    bs = default if batch_size is None else check_int(batch_size, "batch_size", 1)
    return bs if n is None else min(bs, n)


def _check_bool(value, arg):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)
