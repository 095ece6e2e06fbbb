"""fastnn.utils.normalize and pad_sequences: Keras 3's behaviour (compared with Keras's own
functions where Keras is installed) and the checks of their arguments."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn.utils import normalize, pad_sequences

SEQUENCES = [[1], [2, 3], [4, 5, 6], []]


def _keras_utils():
    pytest.importorskip("torch")
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    return keras.utils


def test_normalize_rows_have_unit_norm_and_zero_rows_stay():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    out = normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [2**-0.5, -(2**-0.5)]])
    np.testing.assert_allclose(normalize(x, axis=0, order=1)[:, 0], [0.75, 0.0, 0.25])
    np.testing.assert_allclose(normalize([1, 2, 2]), [1 / 3, 2 / 3, 2 / 3])  # ints, a list
    assert x[0, 0] == 3.0  # a copy


@pytest.mark.parametrize("axis, order", [(-1, 2), (-2, 2), (1, 1), (-1, np.inf), (-2, 3)])
def test_normalize_as_keras(axis, order):
    """(Keras 3's NumPy path reads axis=0 as -1: its axis=0 is checked above instead.)"""
    utils = _keras_utils()
    x = np.random.default_rng(0).normal(size=(5, 4))
    x[2] = 0
    np.testing.assert_allclose(normalize(x, axis, order), utils.normalize(x, axis, order))


def test_normalize_checks_its_arguments():
    with pytest.raises(ValueError, match="axis must be in"):
        normalize(np.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        normalize(np.ones(3), axis=None)
    with pytest.raises(ValueError, match="order must be"):
        normalize(np.ones(3), order="fro")
    with pytest.raises(ValueError, match="scalar"):
        normalize(np.float64(3.0))
    with pytest.raises(TypeError, match="x must be numeric"):
        normalize(np.array(["a", "b"]))


def test_pad_sequences_pads_and_cuts_as_documented():
    np.testing.assert_array_equal(pad_sequences(SEQUENCES),
                                  [[0, 0, 1], [0, 2, 3], [4, 5, 6], [0, 0, 0]])  # fmt: skip
    np.testing.assert_array_equal(pad_sequences(SEQUENCES, padding="post", value=-1),
                                  [[1, -1, -1], [2, 3, -1], [4, 5, 6], [-1, -1, -1]])  # fmt: skip
    np.testing.assert_array_equal(pad_sequences(SEQUENCES, maxlen=2),
                                  [[0, 1], [2, 3], [5, 6], [0, 0]])  # fmt: skip
    np.testing.assert_array_equal(pad_sequences(SEQUENCES, maxlen=2, truncating="post"),
                                  [[0, 1], [2, 3], [4, 5], [0, 0]])  # fmt: skip
    assert pad_sequences(SEQUENCES).dtype == np.int32
    assert pad_sequences(SEQUENCES, maxlen=0).shape == (4, 0)
    assert pad_sequences([]).shape == (0, 0)
    vectors = pad_sequences([np.ones((2, 3)), np.ones((1, 3))], dtype="float32")
    assert vectors.shape == (2, 2, 3) and vectors[1, 0].sum() == 0 and vectors[1, 1].sum() == 3


@pytest.mark.parametrize("maxlen", [None, 1, 2, 5])
@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_pad_sequences_as_keras(maxlen, padding, truncating):
    utils = _keras_utils()
    kw = dict(maxlen=maxlen, padding=padding, truncating=truncating, value=7)
    ours, theirs = pad_sequences(SEQUENCES, **kw), utils.pad_sequences(SEQUENCES, **kw)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == theirs.dtype


def test_pad_sequences_checks_its_arguments():
    with pytest.raises(ValueError, match='padding must be "pre" or "post"'):
        pad_sequences(SEQUENCES, padding="middle")
    with pytest.raises(ValueError, match='truncating must be "pre" or "post"'):
        pad_sequences(SEQUENCES, truncating=None)
    with pytest.raises(ValueError, match="maxlen must be None or an int >= 0"):
        pad_sequences(SEQUENCES, maxlen=-1)
    with pytest.raises(TypeError, match="list of sequences"):
        pad_sequences(5)
    with pytest.raises(TypeError, match=r"sequences\[1\] must be a sequence"):
        pad_sequences([[1], 2])
    with pytest.raises(ValueError, match=r"sequences\[1\] has items of shape"):
        pad_sequences([np.ones((2, 3)), np.ones((1, 4))])
