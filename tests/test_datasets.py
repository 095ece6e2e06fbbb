"""Datasets: IDX/MNIST files, .npz datasets, batch iteration, bundled loaders."""

import gzip

import numpy as np
import pytest

from fastnn import datasets


# -- IDX ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i2", "i4", "f4", ">f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    datasets.save_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = datasets.load_idx(path)
    assert back.shape == array.shape
    assert back.dtype.itemsize == array.dtype.itemsize and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_mnist_layout(tmp_path):
    path = tmp_path / "labels"
    datasets.save_idx(path, np.array([7, 2, 1], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def _write(tmp_path, data, name="bad"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no header"),
        (b"\x00\x00", "no header"),
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "at least one dimension"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "holds 2 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "holds 2 bytes"),
        (b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"\x00" * 7, "holds 7 bytes"),
    ],
)
def test_idx_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        datasets.load_idx(_write(tmp_path, data))


def test_idx_damaged_gzip(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))
    with pytest.raises(ValueError, match="gzip"):
        datasets.load_idx(_write(tmp_path, good[: len(good) // 2]))


def test_save_idx_rejects_unsupported_dtypes(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        datasets.save_idx(tmp_path / "x", np.zeros(3, np.int64))


# -- MNIST -------------------------------------------------------------------------------
def _fake_mnist(folder, n_train=12, n_test=5, gz=("x_train",), dotted=False, rows=28):
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, rows, rows), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, rows, rows), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in datasets.MNIST_FILES.items():
        name = stem.replace("-idx", ".idx", 1) if dotted else stem
        datasets.save_idx(folder / (name + (".gz" if key in gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("dotted", [False, True])
def test_load_mnist(tmp_path, dotted):
    arrays = _fake_mnist(tmp_path, gz=("x_train", "y_test"), dotted=dotted)
    (x, y), (xt, yt) = datasets.load_mnist(tmp_path)
    assert x.shape == (12, 784) and xt.shape == (5, 784)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(x, arrays["x_train"].reshape(12, -1) / np.float32(255))
    np.testing.assert_array_equal(yt, arrays["y_test"])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_mnist(tmp_path / "missing")
    _fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)
    datasets.save_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        datasets.load_mnist(tmp_path)
    datasets.save_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((5, 2), np.uint8))
    with pytest.raises(ValueError, match="labels must be"):
        datasets.load_mnist(tmp_path)


# -- .npz datasets -----------------------------------------------------------------------
def test_load_npz(tmp_path):
    rng = np.random.default_rng(0)
    parts = {
        "x_train": rng.normal(size=(10, 3)),
        "y_train": np.arange(10) % 2,
        "x_test": rng.normal(size=(4, 3)),
        "y_test": np.arange(4) % 2,
    }
    np.savez(tmp_path / "d.npz", **parts)
    (x, y), (xt, yt) = datasets.load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(x, parts["x_train"])
    np.testing.assert_array_equal(yt, parts["y_test"])
    np.savez(tmp_path / "missing.npz", x_train=parts["x_train"])
    with pytest.raises(ValueError, match="missing y_train, x_test, y_test"):
        datasets.load_npz(tmp_path / "missing.npz")
    obj = dict(parts, y_test=np.array([object()] * 4))
    np.savez(tmp_path / "obj.npz", **obj)
    with pytest.raises(ValueError):
        datasets.load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError):
        datasets.load_npz(tmp_path / "junk.npz")


# -- iterate_batches ---------------------------------------------------------------------
def test_iterate_batches_covers_everything_in_order():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    batches = list(datasets.iterate_batches(x, y, batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert all(b[0].flags.c_contiguous and b[0].base is None for b in batches)


def test_iterate_batches_shuffle_is_seeded(tmp_path):
    x = np.arange(30, dtype=np.float64).reshape(15, 2)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = list(datasets.iterate_batches(mm, batch_size=4, shuffle=True, seed=3))
    b = list(datasets.iterate_batches(x, batch_size=4, shuffle=True, seed=3))
    c = list(datasets.iterate_batches(x, batch_size=4, shuffle=True, seed=4))
    assert all(isinstance(xb, np.ndarray) and not isinstance(xb, np.memmap) for xb in a)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    rows = np.concatenate(a)
    assert sorted(rows[:, 0].tolist()) == x[:, 0].tolist()
    assert rows[:, 0].tolist() != x[:, 0].tolist()


def test_iterate_batches_errors():
    with pytest.raises(ValueError, match="same number"):
        list(datasets.iterate_batches(np.zeros((3, 1)), np.zeros(2)))
    with pytest.raises(ValueError, match="batch_size"):
        list(datasets.iterate_batches(np.zeros((3, 1)), batch_size=0))


# -- bundled loaders ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, n_train, n_test, features, kind",
    [
        ("digits", 1437, 360, 64, "i"),
        ("iris", 120, 30, 4, "i"),
        ("breast_cancer", 455, 114, 30, "i"),
        ("diabetes", 353, 89, 10, "f"),
        ("linear", 800, 200, 1, "f"),
        ("spirals", 799, 200, 2, "i"),
    ],
)
def test_loaders_shapes_and_seeding(name, n_train, n_test, features, kind):
    load = datasets.LOADERS[name]
    (x, y), (xt, yt) = load(seed=0)
    assert x.shape == (n_train, features) and xt.shape == (n_test, features)
    assert y.shape == (n_train,) and yt.shape == (n_test,)
    assert x.dtype == np.float32 and y.dtype.kind == kind
    (x2, y2), _ = load(seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    (x3, _), _ = load(seed=1)
    assert not np.array_equal(x, x3)


def test_digits_is_scaled_and_stratified():
    (x, y), (xt, yt) = datasets.load_digits()
    assert x.min() == 0 and x.max() == 1
    assert set(np.unique(yt)) == set(range(10))
    assert abs(np.bincount(yt).min() - np.bincount(yt).max()) <= 2


def test_standardized_train_split():
    (x, _), _ = datasets.load_breast_cancer()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-4)


@pytest.mark.parametrize("name", sorted(datasets.LOADERS))
def test_every_loader_documents_what_it_returns(name):
    doc = datasets.LOADERS[name].__doc__
    assert "Returns\n    -------" in doc
    assert "x_train" in doc and "y_train" in doc


def _rows_of(x, reference):
    """Whether every row of x is a row of reference (float32 comparison)."""
    ref = {tuple(r) for r in reference.astype(np.float32)}
    return all(tuple(r) in ref for r in x.astype(np.float32))


@pytest.mark.parametrize(
    "name, flag, sk_name, sk_kwargs",
    [
        ("iris", "standardize", "load_iris", {}),
        ("breast_cancer", "standardize", "load_breast_cancer", {}),
        ("diabetes", "standardize", "load_diabetes", {"scaled": False}),
        ("digits", "normalize", "load_digits", {}),
    ],
)
def test_raw_features_are_the_original_values(name, flag, sk_name, sk_kwargs):
    import sklearn.datasets

    raw_x, raw_y = getattr(sklearn.datasets, sk_name)(return_X_y=True, **sk_kwargs)
    (x, y), (xt, yt) = datasets.LOADERS[name](**{flag: False})
    assert _rows_of(x, raw_x) and _rows_of(xt, raw_x)
    assert set(np.unique(np.concatenate([y, yt]))) <= set(np.unique(raw_y))


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes"])
def test_standardized_features_use_the_train_split_statistics(name):
    (x, _), (xt, _) = datasets.LOADERS[name]()
    (rx, _), (rxt, _) = datasets.LOADERS[name](standardize=False)
    mean, std = rx.mean(axis=0), rx.std(axis=0)
    np.testing.assert_allclose(x, (rx - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt, (rxt - mean) / std, rtol=1e-4, atol=1e-4)


def test_diabetes_target_raw_or_standardized():
    (_, y_raw), (_, yt_raw) = datasets.load_diabetes(standardize=False)
    assert y_raw.dtype == np.float32 and np.all(np.mod(y_raw, 1) == 0)
    assert 25 <= y_raw.min() and y_raw.max() <= 346
    (x, y), (_, yt) = datasets.load_diabetes()
    mean, std = y_raw.mean(), y_raw.std()
    np.testing.assert_allclose(y, (y_raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(yt, (yt_raw - mean) / std, rtol=1e-5, atol=1e-5)
    (x2, y2), _ = datasets.load_diabetes(standardize_target=False)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y_raw)
