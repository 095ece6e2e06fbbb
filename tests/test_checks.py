"""The shared argument checks: the finite check on both sides of its size threshold, and the
conversion that returns its input when there is nothing to convert."""

import warnings

import numpy as np
import pytest

from fastnn import _checks
from fastnn._checks import _all_finite, as_float, check_finite

SIZES = (1, 7, _checks._ISFINITE_MAX, _checks._ISFINITE_MAX + 1, 100_003)


@pytest.fixture(params=["compiled", "numpy"])
def finite_path(request, monkeypatch):
    """Runs a test through the cython extension's check (skipped when it is not built) and
    through NumPy's."""
    if request.param == "numpy":
        monkeypatch.setattr(_checks, "_compiled_check", False)
    elif not _checks._compiled():
        pytest.skip("the cython extension is not built")
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_all_finite_on_both_sides_of_the_threshold(finite_path, dtype, n):
    big = np.finfo(dtype).max
    a = np.full(n, big, dtype)  # finite, but a dot product of it overflows
    a[::2] = -big
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from a finite array
        assert _all_finite(a)
        assert _all_finite(a.reshape(1, n))
    for bad in (np.nan, np.inf, -np.inf):
        for where in sorted({0, n // 2, n - 1}):
            b = a.copy()
            b[where] = bad
            assert not _all_finite(b)
            with pytest.raises(ValueError, match=rf"x must be finite.*index \({where},\)"):
                check_finite(b, "x")


def test_all_finite_of_views_byte_orders_and_other_floats(finite_path):
    """Arrays the compiled pass does not take (strided, swapped, float16, unaligned) are
    still checked exactly."""
    a = np.arange(24, dtype=np.float64).reshape(4, 6)
    raw = np.zeros(8 * 24 + 1, np.uint8)[1:].view(np.float64)  # an unaligned buffer
    raw[...] = a.reshape(-1)
    assert not raw.flags.aligned
    for view in (a[:, ::2], a.T, a.astype(">f8"), a.astype(np.float16), raw):
        assert _all_finite(view)
        bad = view.copy()
        bad.reshape(-1)[5] = np.inf
        assert not _all_finite(bad)
    raw[7] = np.nan
    assert not _all_finite(raw)


def test_as_float_returns_its_input_only_when_nothing_changes():
    a = np.ones((3, 4), np.float32)
    assert as_float(a, np.float32) is a
    for other, dtype in ((a.T, np.float32), (a, np.float64), (a.astype(np.int64), np.float32)):
        out = as_float(other, dtype)
        assert out is not other and out.dtype == dtype and out.flags.c_contiguous
        np.testing.assert_array_equal(out, other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow is check_finite's to report
        assert np.isinf(as_float(np.array([1e300]), np.float32)).all()
