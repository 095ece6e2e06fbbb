"""Checks and conversions of a model's inputs, run once per call before any kernel: the
samples against the model's input shape, and the per-sample weights of ``class_weight``."""

from __future__ import annotations

import numpy as np

from ._checks import as_array, as_float, check_finite
from .layers.base import size_of


def to_samples(x, arg, dtype, shape, flat_ok):
    """x (N, *shape) as a C-contiguous (N, size) array of ``dtype``, checked once per call
    (never per batch).  With ``flat_ok`` (a model starting with Flatten) samples may also
    come flattened already; ``shape`` None accepts any 1 to 3 axes per sample."""
    x = as_array(x, arg)
    if x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{arg} must have at least one sample, got shape {x.shape} (empty)")
    if x.ndim == 1:
        one_sample = shape is not None and x.shape == tuple(shape) and x.size > 1
        hint = ("one sample: x.reshape(1, -1)" if one_sample
                else "a single feature per sample: x.reshape(-1, 1)")  # fmt: skip
        raise ValueError(f"{arg} must be 2-D (samples, features), got shape {x.shape}; for {hint}")
    got = tuple(x.shape[1:])
    if 0 in got:
        raise ValueError(f"{arg} must have at least one feature, got shape {x.shape}")
    if shape is None:
        if len(got) > 3:
            raise ValueError(
                f"{arg} must have 1 to 3 axes per sample, got shape {x.shape}; declare the "
                "input with Input(shape=...) and reshape the data to it"
            )
    elif got != tuple(shape) and not (flat_ok and got == (size_of(shape),)):
        raise ValueError(shape_mismatch(arg, x.shape, shape))
    # one conversion per call (never per batch): any float/int dtype or memory layout in,
    # C-contiguous model dtype out, so the kernels see one signature per dtype
    out = as_float(x.reshape(x.shape[0], -1), dtype)
    check_finite(out, arg, x)
    return out, got


def shape_mismatch(arg, got, shape) -> str:
    if len(shape) == 1 and len(got) == 2:
        return (
            f"{arg} must have {shape[0]} features per sample to match the model's input, got "
            f"{got[1]} ({arg} shape {got})"
        )
    msg = (
        f"{arg} must have samples of shape {tuple(shape)} to match the model's input, got "
        f"shape {got}"
    )
    if tuple(got[1:]) + (1,) == tuple(shape):
        msg += f"; add the channel axis: {arg}[..., None]"
    elif len(shape) == 1 and size_of(got[1:]) == shape[0]:
        msg += f"; flatten the samples: {arg}.reshape(len({arg}), -1)"
    return msg


def class_weights(class_weight, y, target, output_dim):
    """The weight ``class_weight`` ({class: weight}) gives each sample of the targets ``y``
    (labels, one-hot rows or, with one output, probabilities thresholded at 0.5), for a
    loss whose targets are ``target`` (``_stack_plan().target``); classes it leaves out
    weigh 1."""
    if not isinstance(class_weight, dict):
        raise TypeError(
            f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}"
        )
    for cls, w in class_weight.items():
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
            raise TypeError(
                f"class_weight keys must be int class indices, got {type(cls).__name__} {cls!r}"
            )
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise TypeError(f"class_weight[{cls}] must be a number, got {type(w).__name__} {w!r}")
    if target == "sparse" or target == "sparse_onehot":
        labels = np.asarray(y).reshape(len(y), -1)[:, 0].astype(np.int64)
    elif output_dim == 1:
        labels = (np.asarray(y).reshape(len(y), -1)[:, 0] > 0.5).astype(np.int64)
    else:
        labels = np.argmax(np.asarray(y).reshape(len(y), -1), axis=1)
    table = np.ones(max(int(labels.max()) + 1, output_dim, 2), dtype=np.float64)
    for cls, w in class_weight.items():
        if not 0 <= int(cls) < table.size or not np.isfinite(w) or w < 0:
            raise ValueError(
                f"class_weight must map classes in [0, {table.size - 1}] to finite weights "
                f">= 0, got {{{cls!r}: {w!r}}}"
            )
        table[int(cls)] = w
    return table[labels]
