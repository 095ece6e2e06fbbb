"""Datasets that need no network: scikit-learn's bundled copies and synthetic data.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with a seeded split; its
docstring says whether the features come raw or scaled, with which statistics, and its
flag (``standardize`` or ``normalize``) gives the other form.  Standardisation always uses
the train split's statistics, never the test split's.
Files: :func:`load_mnist` / :func:`load_idx` (MNIST's IDX format), :func:`load_npz`, and
:func:`iterate_batches` for arrays that do not fit in memory.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib

import numpy as np

from ._checks import _check_bool, check_int
from .layers.base import number


def _seed(seed) -> int:
    """``seed`` checked: an int in [0, 2**32) (what NumPy and scikit-learn take)."""
    seed = check_int(seed, "seed", 0)
    if seed >= 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed}")
    return seed


def _split(x, y, test_size, seed, stratify):
    from sklearn.model_selection import train_test_split

    seed = _seed(seed)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.number)):
        raise TypeError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    n_test = int(np.ceil(test_size * len(x)))
    classes = len(np.unique(y)) if stratify else 1
    if min(n_test, len(x) - n_test) < classes:
        raise ValueError(
            f"{len(x)} samples with test_size={test_size} leave {len(x) - n_test} to train "
            f"and {n_test} to test; each split needs at least {classes} (one per class)"
        )
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y if stratify else None
    )
    return (x_tr, y_tr), (x_te, y_te)


def _standardize(x_train, x_test):
    """Both splits standardised with the train split's statistics: (x - mean) / std per
    column (std with ddof=0; a constant column is divided by 1)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1
    return (x_train - mean) / std, (x_test - mean) / std


def _sklearn(name, **kwargs):
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            "the bundled datasets need scikit-learn: pip install scikit-learn"
        ) from exc
    return getattr(datasets, name)(return_X_y=True, **kwargs)


def _images_flag(images) -> bool:
    if not isinstance(images, (bool, np.bool_)):
        raise TypeError(f"images must be True or False, got {type(images).__name__} {images!r}")
    return bool(images)


def load_digits(test_size: float = 0.2, seed: int = 0, normalize: bool = True,
                images: bool = False):  # fmt: skip
    """8x8 handwritten digits: 1797 samples, 64 pixel features, 10 classes (stratified
    split).

    Parameters
    ----------
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the split: the same seed, the same arrays.
    normalize : bool
        Divide the pixels by 16, their largest value, to put them in [0, 1]; False keeps
        the raw pixel values, whole numbers 0..16.
    images : bool
        Images of shape (8, 8, 1) (height, width, channels: for Conv2D) instead of rows of
        64 features.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 64), or (N, 8, 8, 1) with ``images``: pixels in [0, 1]
        (``normalize``) or raw 0..16; y int64 labels 0..9.
    """
    images = _images_flag(images)
    x, y = _sklearn("load_digits")
    x = x.astype(np.float32) / (16.0 if _check_bool(normalize, "normalize") else 1.0)
    (xtr, ytr), (xte, yte) = _split(x, y.astype(np.int64), test_size, seed, True)
    if images:
        xtr, xte = xtr.reshape(-1, 8, 8, 1), xte.reshape(-1, 8, 8, 1)
    return (xtr, ytr), (xte, yte)


def load_iris(test_size: float = 0.2, seed: int = 0, standardize: bool = True):
    """Iris: 150 samples, 4 features (sepal and petal length and width, cm), 3 classes
    (stratified split).

    Parameters
    ----------
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the split: the same seed, the same arrays.
    standardize : bool
        Standardise the features with the train split's mean and standard deviation
        (ddof=0), applied to both splits; False keeps the raw measurements in cm.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 4): standardised or raw features; y int64 labels 0..2.
    """
    x, y = _sklearn("load_iris")
    (xtr, ytr), (xte, yte) = _split(x.astype(np.float32), y.astype(np.int64), test_size, seed, True)
    if _check_bool(standardize, "standardize"):
        xtr, xte = _standardize(xtr, xte)
    return (xtr, ytr), (xte, yte)


def load_breast_cancer(test_size: float = 0.2, seed: int = 0, standardize: bool = True):
    """Breast cancer Wisconsin: 569 samples, 30 features, binary labels (stratified split).

    Parameters
    ----------
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the split: the same seed, the same arrays.
    standardize : bool
        Standardise the features with the train split's mean and standard deviation
        (ddof=0), applied to both splits; False keeps the raw feature values.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 30): standardised or raw features; y int64 labels 0 (malignant) and
        1 (benign).
    """
    x, y = _sklearn("load_breast_cancer")
    (xtr, ytr), (xte, yte) = _split(x.astype(np.float32), y.astype(np.int64), test_size, seed, True)
    if _check_bool(standardize, "standardize"):
        xtr, xte = _standardize(xtr, xte)
    return (xtr, ytr), (xte, yte)


def load_diabetes(
    test_size: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    standardize_target: bool | None = None,
):
    """Diabetes regression: 442 samples, 10 features (age, sex, body mass index, blood
    pressure, six serum measurements), a disease progression target.

    Parameters
    ----------
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the split: the same seed, the same arrays.
    standardize : bool
        Standardise the features with the train split's mean and standard deviation
        (ddof=0), applied to both splits.  False gives the raw features (age in years,
        sex 1/2, ...), not scikit-learn's default pre-scaled copy, whose scaling uses
        every sample, test split included.
    standardize_target : bool, optional
        Standardise the target the same way (train mean and standard deviation), so the
        MSE is in units of its variance; default: as ``standardize``.  False keeps the
        raw target, whole numbers 25..346.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 10): standardised or raw features; y float32 (N,): standardised or
        raw target.
    """
    if standardize_target is None:
        standardize_target = standardize
    x, y = _sklearn("load_diabetes", scaled=False)
    (xtr, ytr), (xte, yte) = _split(
        x.astype(np.float32), y.astype(np.float32), test_size, seed, False
    )
    if _check_bool(standardize, "standardize"):
        xtr, xte = _standardize(xtr, xte)
    if standardize_target:
        mean, std = ytr.mean(), ytr.std()
        ytr, yte = (ytr - mean) / std, (yte - mean) / std
    return (xtr, ytr), (xte, yte)


def make_linear_regression(
    n_samples: int = 1000, noise: float = 0.1, seed: int = 0, test_size: float = 0.2
):
    """The tutorial's line: y = 2x + 1 + noise, x uniform in [-1, 1], noise normal with
    standard deviation ``noise``.

    Parameters
    ----------
    n_samples : int
        Samples in both splits together.
    noise : float
        Standard deviation of the noise added to y.
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the data and the split: the same seed, the same arrays.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 1): raw values in [-1, 1] (no scaling); y float32 (N,): raw targets.
    """
    n_samples, seed = check_int(n_samples, "n_samples", 2), _seed(seed)
    noise = number(noise, "noise", 0.0)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n_samples, 1)).astype(np.float32)
    y = (2 * x[:, 0] + 1 + rng.normal(0, noise, size=n_samples)).astype(np.float32)
    return _split(x, y, test_size, seed, False)


def make_spirals(
    n_samples: int = 1000,
    n_classes: int = 3,
    noise: float = 0.2,
    seed: int = 0,
    test_size: float = 0.2,
):
    """Interleaved 2-D spirals, one arm per class (stratified split).

    Parameters
    ----------
    n_samples : int
        Samples in both splits together (rounded down to a multiple of ``n_classes``).
    n_classes : int
        Number of arms (classes).
    noise : float
        Standard deviation of the normal noise on each point's angle (radians).
    test_size : float
        Fraction of the samples in the test split, in (0, 1).
    seed : int
        Seeds the data and the split: the same seed, the same arrays.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of ndarray
        x float32 (N, 2): raw coordinates, radius at most 1 (no scaling); y int64 labels
        0..n_classes-1.
    """
    n_classes, seed = check_int(n_classes, "n_classes", 2), _seed(seed)
    n_samples = check_int(n_samples, "n_samples", 2 * n_classes)
    noise = number(noise, "noise", 0.0)
    rng = np.random.default_rng(seed)
    per = n_samples // n_classes
    xs, ys = [], []
    for c in range(n_classes):
        r = np.linspace(0.05, 1, per)
        t = np.linspace(c * 4, (c + 1) * 4, per) + rng.normal(0, noise, per)
        xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
        ys.append(np.full(per, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    return _split(x, y, test_size, seed, True)


LOADERS = {
    "digits": load_digits,
    "iris": load_iris,
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "linear": make_linear_regression,
    "spirals": make_spirals,
}

#: The loader arguments that give each bundled dataset's raw features (and raw target):
#: what tools that put the preprocessing into the model (``fastnn train``: a Normalization
#: layer first) load.
RAW = {
    "digits": {"normalize": False},
    "iris": {"standardize": False},
    "breast_cancer": {"standardize": False},
    "diabetes": {"standardize": False, "standardize_target": False},
    "linear": {},
    "spirals": {},
}

#: The task of each bundled dataset ("classification" or "regression"), so that tools such
#: as ``fastnn train`` never have to guess it from the targets.
TASKS = {
    "digits": "classification",
    "iris": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
    "linear": "regression",
    "spirals": "classification",
}


# ---------------------------------------------------------------------------------------
# Files: IDX (MNIST's format), .npz splits, and batches of arrays too big for memory

#: IDX type code -> big-endian NumPy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("=").str: code for code, dt in IDX_DTYPES.items()}


def _read_bytes(path) -> bytes:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path!r}: damaged gzip data ({exc})") from None
    return data


def load_idx(path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or raw, into an array of
    native byte order.

    Raises
    ------
    ValueError
        For a bad magic number, an unknown type code, zero dimensions or a data size
        that does not match the header.
    """
    data = _read_bytes(path)
    where = os.fspath(path)
    if len(data) < 4:
        raise ValueError(f"{where!r} is not an IDX file: {len(data)} bytes, no header")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{where!r} is not an IDX file: bad magic number 0x{data[:4].hex()} (it must start "
            "with two zero bytes)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(
            f"{where!r}: unknown IDX type code 0x{code:02x} (expected one of "
            f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})"
        )
    if ndim == 0:
        raise ValueError(f"{where!r}: an IDX file needs at least one dimension, got 0")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{where!r}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{where!r}: IDX header says shape {dims} of {dtype.name} ({expected} bytes) but "
            f"the file holds {len(data) - header} bytes of data"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def save_idx(path, array) -> None:
    """Writes ``array`` as a raw IDX file (gzip-compressed when ``path`` ends in .gz)."""

    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str if array.dtype.byteorder != "|" else array.dtype.str
    code = _IDX_CODES.get(key)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(body)


MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_mnist_file(directory, stem):

    dotted = stem.replace("-idx", ".idx", 1)
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {os.fspath(directory)!r} (expected the four "
        f"files {', '.join(MNIST_FILES.values())}, raw or .gz)"
    )


def load_mnist(directory, images: bool = False):
    """MNIST (or Fashion-MNIST) from the four standard IDX files in ``directory``.

    Returns ``((x_train, y_train), (x_test, y_test))``: images as float32 in [0, 1]
    flattened to rows*cols (784) features, or of shape (N, rows, cols, 1) with ``images``
    (for Conv2D); labels as int64.
    """
    images = _images_flag(images)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MNIST folder {os.fspath(directory)!r} does not exist")
    parts = {}
    for key, stem in MNIST_FILES.items():
        path = _find_mnist_file(directory, stem)
        array = load_idx(path)
        if key.startswith("x"):
            if array.ndim != 3 or array.dtype != np.uint8:
                raise ValueError(
                    f"{path!r}: MNIST images must be uint8 of shape (N, rows, cols), got "
                    f"{array.dtype} {array.shape}"
                )
            shape = (*array.shape, 1) if images else (array.shape[0], -1)
            array = array.reshape(shape).astype(np.float32) / np.float32(255)
        else:
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise ValueError(
                    f"{path!r}: MNIST labels must be integers of shape (N,), got "
                    f"{array.dtype} {array.shape}"
                )
            array = array.astype(np.int64)
        parts[key] = array
    for split in ("train", "test"):
        nx, ny = len(parts[f"x_{split}"]), len(parts[f"y_{split}"])
        if nx != ny:
            raise ValueError(f"MNIST {split} split has {nx} images but {ny} labels")
    if parts["x_train"].shape[1:] != parts["x_test"].shape[1:]:
        raise ValueError("MNIST train and test images have different sizes")
    return (parts["x_train"], parts["y_train"]), (parts["x_test"], parts["y_test"])


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path):
    """A dataset saved as .npz with arrays x_train, y_train, x_test, y_test (read without
    pickle); returns ``((x_train, y_train), (x_test, y_test))`` as stored: no scaling, no
    dtype conversion."""

    where = os.fspath(path)
    try:
        with np.load(where, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise ValueError(
                    f"{where!r} must hold arrays {', '.join(NPZ_KEYS)}; "
                    f"missing {', '.join(missing)}"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{where!r} is not a valid .npz file ({exc})") from None
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{where!r}: {key} must be numeric, got dtype {array.dtype}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or y.ndim < 1 or len(x) != len(y):
            raise ValueError(
                f"{where!r}: x_{split} must be (N, features...) with one y_{split} entry per "
                f"sample, got shapes {x.shape} and {y.shape}"
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def iterate_batches(x, y=None, batch_size: int = 32, shuffle: bool = False, seed=None):
    """Yields ``(x_batch, y_batch)`` (or ``x_batch`` when ``y`` is None) as contiguous
    in-memory copies, for arrays that do not fit the fast path (e.g. ``np.load(...,
    mmap_mode="r")``).  With ``shuffle`` the order is a permutation drawn from ``seed``;
    the last batch may be smaller."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x and y must have the same number of samples, got {n} and {len(y)}")
    order = np.random.default_rng(seed).permutation(n) if _check_bool(shuffle, "shuffle") else None
    for start in range(0, n, batch_size):
        sl = (
            slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        )
        xb = np.array(x[sl], order="C")
        if y is None:
            yield xb
        else:
            yield xb, np.array(y[sl], order="C")
