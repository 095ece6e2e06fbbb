"""Keras 3's optimizer options == Keras 3 itself: weight_decay (decoupled), amsgrad,
RMSprop's momentum (with a constant rate) and centered, over several steps."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastnn import optimizers as fo

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

# fastnn adds epsilon outside the square root (PyTorch's placement), Keras inside (RMSprop)
# or after folding the bias corrections into the rate (Adam): a tiny epsilon makes the two
# placements agree to far below the tolerance (rtol 1e-8: a float32 rounding of a
# hyper-parameter would show), so the comparison checks everything else.
EPS = 1e-12
# Keras keeps the learning rate in a float32 variable: rates and decays exact in float32
STEPS = 5

CASES = {
    "sgd_decay": dict(cls="SGD", learning_rate=0.125, weight_decay=0.375),
    "momentum_decay": dict(cls="SGD", learning_rate=0.0625, momentum=0.9, weight_decay=0.25),
    "adam_decay": dict(cls="Adam", learning_rate=0.0078125, epsilon=EPS, weight_decay=0.125),
    "adam_amsgrad": dict(
        cls="Adam", learning_rate=0.0078125, epsilon=EPS, amsgrad=True, beta_2=0.9
    ),  # fmt: skip
    "adamw_amsgrad": dict(
        cls="AdamW",
        learning_rate=0.0078125,
        epsilon=EPS,
        amsgrad=True,
        weight_decay=0.125,
        beta_2=0.9,
    ),  # fmt: skip
    "adagrad_decay": dict(cls="Adagrad", learning_rate=0.125, epsilon=EPS, weight_decay=0.25),
    "nadam_decay": dict(cls="Nadam", learning_rate=0.0078125, epsilon=EPS, weight_decay=0.25),
    "rmsprop_decay": dict(cls="RMSprop", learning_rate=0.0078125, epsilon=EPS, weight_decay=0.5),
    "rmsprop_momentum": dict(cls="RMSprop", learning_rate=0.0078125, epsilon=EPS, momentum=0.8),
    "rmsprop_centered": dict(cls="RMSprop", learning_rate=0.0078125, epsilon=EPS, centered=True),
    "rmsprop_momentum_centered": dict(
        cls="RMSprop",
        learning_rate=0.0078125,
        epsilon=EPS,
        momentum=0.5,
        centered=True,
        weight_decay=0.125,
    ),  # fmt: skip
}


def _run_both(kw, learning_rate=None):
    kw = dict(kw)
    name = kw.pop("cls")
    rng = np.random.default_rng(3)
    p0 = [rng.normal(size=s) for s in ((4, 3), (3,))]
    grads = [[rng.normal(size=p.shape) for p in p0] for _ in range(STEPS)]
    ours = getattr(fo, name)(**{**kw, **({"learning_rate": learning_rate[0]}
                                         if learning_rate else {})})  # fmt: skip
    theirs = getattr(keras.optimizers, name)(
        **{**kw, **({"learning_rate": learning_rate[1]} if learning_rate else {})}
    )
    params = [p.copy() for p in p0]
    variables = [keras.Variable(p, dtype="float64") for p in p0]
    for g in grads:
        ours.step(params, [x.copy() for x in g], backend="numpy")
        theirs.apply_gradients(
            zip([keras.ops.convert_to_tensor(x, dtype="float64") for x in g], variables)
        )
    return p0, params, [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_keras(case):
    p0, got, want = _run_both(CASES[case])
    for g, w, w0 in zip(got, want, p0):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)
        assert np.abs(w - w0).max() > 1e-3


def test_decay_without_option_differs_from_keras_with_it():
    kw = dict(CASES["sgd_decay"])
    _, plain, _ = _run_both({**kw, "weight_decay": None})
    _, _, keras_decayed = _run_both(kw)
    assert not np.allclose(plain[0], keras_decayed[0], rtol=1e-6)


def test_rmsprop_momentum_with_a_schedule_differs_from_keras():
    """Keras's momentum buffer holds lr * g / avg: with a changing rate the buffers weigh the
    past steps differently (fastnn follows PyTorch; documented)."""
    ours_rate = fo.schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.5)
    keras_rate = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1,
                                                             decay_rate=0.5)  # fmt: skip
    kw = CASES["rmsprop_momentum"]
    _, got, want = _run_both(kw, (ours_rate, keras_rate))
    assert not np.allclose(got[0], want[0], rtol=1e-6)
