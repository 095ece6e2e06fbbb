"""Datasets that need no network: scikit-learn's bundled copies and synthetic data.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with a seeded split.
"""

from __future__ import annotations

import numpy as np


def _split(x, y, test_size, seed, stratify):
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y if stratify else None
    )
    return (x_tr, y_tr), (x_te, y_te)


def _standardize(x_train, x_test):
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1
    return (x_train - mean) / std, (x_test - mean) / std


def _sklearn(name):
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            "the bundled datasets need scikit-learn: pip install scikit-learn"
        ) from exc
    return getattr(datasets, name)(return_X_y=True)


def load_digits(test_size: float = 0.2, seed: int = 0, normalize: bool = True):
    """8x8 handwritten digits (1797 samples, 64 features, 10 classes), pixels scaled to
    [0, 1] when ``normalize``; integer labels."""
    x, y = _sklearn("load_digits")
    x = x.astype(np.float32) / (16.0 if normalize else 1.0)
    return _split(x, y.astype(np.int64), test_size, seed, True)


def load_iris(test_size: float = 0.2, seed: int = 0, standardize: bool = True):
    """Iris (150 samples, 4 features, 3 classes); features standardised on the train split."""
    x, y = _sklearn("load_iris")
    (xtr, ytr), (xte, yte) = _split(x.astype(np.float32), y.astype(np.int64), test_size, seed, True)
    if standardize:
        xtr, xte = _standardize(xtr, xte)
    return (xtr, ytr), (xte, yte)


def load_breast_cancer(test_size: float = 0.2, seed: int = 0, standardize: bool = True):
    """Breast cancer Wisconsin (569 samples, 30 features, binary labels 0/1)."""
    x, y = _sklearn("load_breast_cancer")
    (xtr, ytr), (xte, yte) = _split(x.astype(np.float32), y.astype(np.int64), test_size, seed, True)
    if standardize:
        xtr, xte = _standardize(xtr, xte)
    return (xtr, ytr), (xte, yte)


def load_diabetes(test_size: float = 0.2, seed: int = 0, standardize: bool = True):
    """Diabetes regression (442 samples, 10 features); the target is standardised too
    when ``standardize`` (train statistics), so MSE is in units of its variance."""
    x, y = _sklearn("load_diabetes")
    (xtr, ytr), (xte, yte) = _split(
        x.astype(np.float32), y.astype(np.float32), test_size, seed, False
    )
    if standardize:
        xtr, xte = _standardize(xtr, xte)
        mean, std = ytr.mean(), ytr.std()
        ytr, yte = (ytr - mean) / std, (yte - mean) / std
    return (xtr, ytr), (xte, yte)


def make_linear_regression(
    n_samples: int = 1000, noise: float = 0.1, seed: int = 0, test_size: float = 0.2
):
    """The tutorial's line: y = 2x + 1 + noise, x uniform in [-1, 1]; x (N, 1), y (N,)."""
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
    """Interleaved 2-D spirals, one arm per class; x (N, 2), integer labels."""
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
