"""Model files: exact round trips and resumption, and refusal of damaged or hostile files."""

import io
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn import backend as _backend
from fastnn import optimizers, saving, schedules
from fastnn.layers import Dense, Dropout, Flatten

BACKEND = "numpy"


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (np.abs(x[:, 0]) + x[:, 1] > 0.8).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def _model(optimizer=None, seed=7, backend=BACKEND, dtype="float32"):
    m = fastnn.Sequential(
        [
            Dense(16, activation="relu", input_dim=6, kernel_regularizer="l2"),
            Dropout(0.25),
            Dense(3, activation="softmax"),
        ],
        seed=seed,
        backend=backend,
        dtype=dtype,
    )
    m.compile(
        optimizer=optimizer if optimizer is not None else optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return m


def _same(ws1, ws2):
    return len(ws1) == len(ws2) and all(
        a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ws1, ws2)
    )


@pytest.fixture
def saved(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "model.fnn"
    model.save(path)
    return model, path


# -- round trip --------------------------------------------------------------------------
def test_one_zip_with_config_and_arrays(saved):
    _, path = saved
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        config = json.loads(zf.read("config.json"))
    assert names[0] == "config.json"
    assert sorted(names[1:]) == [
        "optimizer/state.npy",
        "weights/dense/bias.npy",
        "weights/dense/kernel.npy",
        "weights/dense_1/bias.npy",
        "weights/dense_1/kernel.npy",
    ]
    assert config["format"] == "fastnn.model" and config["version"] == saving.VERSION
    assert config["compile"]["optimizer"]["class_name"] == "Adam"
    assert config["compile"]["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert config["compile"]["metrics"] == ["accuracy"]
    assert config["training"]["iterations"] == 16
    assert config["training"]["shuffle_rng"]["bit_generator"] == "PCG64"
    assert config["arrays"]["weights/dense/kernel.npy"] == {"dtype": "<f4", "shape": [6, 16]}


def test_load_model_restores_everything(saved):
    model, path = saved
    loaded = fastnn.load_model(path, backend=BACKEND)
    assert isinstance(loaded, fastnn.Sequential)
    assert loaded.get_config() == model.get_config()
    assert _same(loaded.get_weights(), model.get_weights())
    assert type(loaded.optimizer) is optimizers.Adam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert loaded.metrics == ["accuracy"]
    assert np.array_equal(loaded._engine.host_state(), model._engine.host_state())
    assert loaded._dropout_seed == model._dropout_seed
    assert loaded._shuffle_rng.bit_generator.state == model._shuffle_rng.bit_generator.state
    x, y = _data(seed=1)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y) == model.evaluate(x, y)


def test_load_without_compile(saved):
    model, path = saved
    loaded = fastnn.load_model(path, backend=BACKEND, compile=False)
    assert loaded.optimizer is None
    assert _same(loaded.get_weights(), model.get_weights())


def _resume_matches(tmp_path, make, x, y, fit_kw, backend=BACKEND):
    straight = make()
    straight.fit(x, y, epochs=3, **fit_kw)
    first = make()
    first.fit(x, y, epochs=2, **fit_kw)
    path = tmp_path / "resume.fnn"
    first.save(path)
    del first
    resumed = fastnn.load_model(path, backend=backend)
    resumed.fit(x, y, epochs=1, **fit_kw)
    assert resumed.optimizer.iterations == straight.optimizer.iterations
    return _same(resumed.get_weights(), straight.get_weights())


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: optimizers.Adam(0.01),
        lambda: optimizers.AdamW(0.01, weight_decay=0.01),
        lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        lambda: optimizers.SGD(0.05),
        lambda: optimizers.RMSprop(0.005),
        lambda: optimizers.Adagrad(0.05),
        lambda: optimizers.Adam(
            schedules.CosineDecay(0.001, 30, warmup_target=0.02, warmup_steps=5)
        ),  # fmt: skip
        lambda: optimizers.SGD(schedules.PiecewiseConstantDecay([10, 20], [0.1, 0.05, 0.01])),
        lambda: optimizers.AdamW(0.01, amsgrad=True, name="adamw_ams"),
        lambda: optimizers.RMSprop(0.005, momentum=0.5, centered=True, weight_decay=0.01),
        lambda: optimizers.SGD(0.05, weight_decay=0.01),
    ],
    ids=[
        "adam",
        "adamw",
        "nesterov",
        "sgd",
        "rmsprop",
        "adagrad",
        "cosine",
        "piecewise",
        "amsgrad",
        "rmsprop_mc",
        "sgd_decay",
    ],  # fmt: skip
)
def test_save_load_fit_is_bit_identical_to_never_stopping(tmp_path, optimizer):
    x, y = _data()
    kw = {"batch_size": 16, "verbose": 0, "shuffle": True}
    assert _resume_matches(tmp_path, lambda: _model(optimizer()), x, y, kw)


def test_resume_without_seed_and_in_float64(tmp_path):
    x, y = _data()
    kw = {"batch_size": 32, "verbose": 0}
    model = _model(seed=None)
    model.fit(x, y, epochs=1, **kw)
    model.save(tmp_path / "a.fnn")
    resumed = fastnn.load_model(tmp_path / "a.fnn", backend=BACKEND)
    model.fit(x, y, epochs=1, **kw)
    resumed.fit(x, y, epochs=1, **kw)
    assert _same(model.get_weights(), resumed.get_weights())
    assert _resume_matches(tmp_path, lambda: _model(dtype="float64"), x, y, kw)


def test_resume_changes_nothing_when_only_the_rng_state_differs(tmp_path):
    """The shuffle RNG matters: a fresh generator would give another weight trajectory."""
    x, y = _data()
    kw = {"batch_size": 16, "verbose": 0}
    model = _model()
    model.fit(x, y, epochs=1, **kw)
    model.save(tmp_path / "a.fnn")
    loaded = fastnn.load_model(tmp_path / "a.fnn", backend=BACKEND)
    loaded._shuffle_rng = np.random.default_rng(123)
    model.fit(x, y, epochs=1, **kw)
    loaded.fit(x, y, epochs=1, **kw)
    assert not _same(model.get_weights(), loaded.get_weights())


@pytest.mark.slow
@pytest.mark.skipif(_backend.why_unavailable("numba") is not None, reason="numba unavailable")
def test_resume_bit_identical_on_numba(tmp_path):
    x, y = _data()
    kw = {"batch_size": 16, "verbose": 0}
    assert _resume_matches(tmp_path, lambda: _model(backend="numba"), x, y, kw, backend="numba")


def test_flatten_and_unbuilt_and_uncompiled_models(tmp_path):
    m = fastnn.Sequential([Flatten(input_shape=(2, 3)), Dense(4), Dense(2)], seed=1,
                          backend=BACKEND)  # fmt: skip
    m.save(tmp_path / "f.fnn")
    loaded = fastnn.load_model(tmp_path / "f.fnn", backend=BACKEND)
    assert loaded.optimizer is None and loaded.input_dim == 6
    x = np.ones((3, 2, 3), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), m.predict(x))
    lazy = fastnn.Sequential([Dense(4), Dense(1)], backend=BACKEND)
    lazy.compile(loss="mse")
    lazy.save(tmp_path / "lazy.fnn")
    again = fastnn.load_model(tmp_path / "lazy.fnn", backend=BACKEND)
    assert not again.built and again.loss.name == "mean_squared_error"


def test_custom_schedule_cannot_be_saved(tmp_path):
    m = _model(optimizers.SGD(lambda step: 0.1))
    with pytest.raises(ValueError, match="schedule"):
        m.save(tmp_path / "x.fnn")
    assert os.listdir(tmp_path) == []


# -- weights only ------------------------------------------------------------------------
def test_save_and_load_weights(tmp_path, saved):
    model, _ = saved
    path = tmp_path / "w.npz"
    model.save_weights(path)
    other = _model(seed=99)
    assert not _same(other.get_weights(), model.get_weights())
    other.load_weights(path)
    assert _same(other.get_weights(), model.get_weights())
    with np.load(path) as npz:
        assert sorted(npz.files) == ["dense/bias", "dense/kernel", "dense_1/bias",
                                     "dense_1/kernel"]  # fmt: skip


def test_load_weights_checks_shapes_and_refuses_pickles(tmp_path, saved):
    model, _ = saved
    wide = fastnn.Sequential([Dense(17, activation="relu", input_dim=6), Dropout(0.25),
                              Dense(3, activation="softmax")], backend=BACKEND)  # fmt: skip
    model.save_weights(tmp_path / "w.npz")
    before = wide.get_weights()
    with pytest.raises(ValueError, match="shape"):
        wide.load_weights(tmp_path / "w.npz")
    assert _same(wide.get_weights(), before)
    marker = tmp_path / "pwned"
    arrays = dict(zip(saving._weight_names(model), model.get_weights()))
    arrays["dense/bias"] = _evil_object_array(marker)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(ValueError, match="pickle"):
        model.load_weights(tmp_path / "evil.npz")
    assert not marker.exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a fastnn weights file"):
        model.load_weights(tmp_path / "junk.npz")


# -- hostile and damaged files -----------------------------------------------------------
class _Payload:
    """Unpickling this creates ``path`` (the attack a pickle in a model file could do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _evil_object_array(marker):
    arr = np.empty(2, dtype=object)
    arr[0] = _Payload(marker)
    arr[1] = 1.0
    return arr


def _npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _rewrite(src, dst, replace=None, extra=None, config=None):
    """Copies the zip ``src`` to ``dst`` with members replaced/added and config edited."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json" and config is not None:
                cfg = json.loads(data)
                config(cfg)
                data = json.dumps(cfg).encode()
            if replace and info.filename in replace:
                data = replace[info.filename]
            zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def test_pickle_payload_is_refused_and_never_runs(tmp_path, saved):
    _, path = saved
    marker = tmp_path / "pwned"
    # sanity: this payload really runs when unpickled
    probe = tmp_path / "probe"
    np.load(io.BytesIO(_npy(_evil_object_array(probe), allow_pickle=True)), allow_pickle=True)
    assert probe.exists()
    evil = tmp_path / "evil.fnn"
    payload = _npy(_evil_object_array(marker), allow_pickle=True)
    _rewrite(path, evil, replace={"weights/dense/bias.npy": payload})
    with pytest.raises(ValueError, match="not a valid fastnn model file"):
        fastnn.load_model(evil, backend=BACKEND)
    # the manifest may also claim the object dtype and matching shape
    _rewrite(
        path,
        evil,
        replace={"weights/dense/bias.npy": payload},
        config=lambda c: c["arrays"].update(
            {"weights/dense/bias.npy": {"dtype": "|O", "shape": [2]}}
        ),
    )
    with pytest.raises(ValueError, match="not a valid fastnn model file"):
        fastnn.load_model(evil, backend=BACKEND)
    # or ride along as an extra member
    _rewrite(path, evil, extra={"payload.npy": payload})
    with pytest.raises(ValueError, match="unexpected members"):
        fastnn.load_model(evil, backend=BACKEND)
    assert not marker.exists()


def test_truncated_file(tmp_path, saved):
    _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 10):
        bad = tmp_path / f"cut{cut}.fnn"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="fastnn model file"):
            fastnn.load_model(bad, backend=BACKEND)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, os.urandom(4096)])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "garbage.fnn"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="not a fastnn model file"):
        fastnn.load_model(bad, backend=BACKEND)


def test_corrupted_bytes_inside(tmp_path, saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights/dense_1/kernel.npy")
    start = info.header_offset + 30 + len(info.filename) + 5
    data[start : start + 8] = b"\xff" * 8
    bad = tmp_path / "flipped.fnn"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fastnn model file"):
        fastnn.load_model(bad, backend=BACKEND)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(version=99), "version 99 is not supported"),
        (lambda c: c.update(format="keras"), "format"),
        (lambda c: c.pop("model"), "model"),
        (lambda c: c["model"]["layers"][0].update(class_name="Lambda"), "layer class"),
        (lambda c: c["model"]["layers"][0]["config"].update(units=17), "declared"),
        (lambda c: c["arrays"].pop("optimizer/state.npy"), "unexpected members"),
        (lambda c: c["arrays"].pop("weights/dense/kernel.npy"), "do not match"),
        (lambda c: c["compile"]["optimizer"].update(class_name="Evil"), "unknown optimizer"),
        (lambda c: c["compile"]["optimizer"]["config"].update(beta_1=5), "beta_1"),
        (lambda c: c["training"].update(iterations=-1), "iterations"),
        (lambda c: c["training"]["shuffle_rng"].update(state=5), "RNG"),
    ],
)
def test_tampered_config(tmp_path, saved, edit, message):
    _, path = saved
    bad = tmp_path / "tampered.fnn"
    _rewrite(path, bad, config=edit)
    with pytest.raises(ValueError, match=message):
        fastnn.load_model(bad, backend=BACKEND)


def test_config_that_is_not_json(tmp_path, saved):
    _, path = saved
    bad = tmp_path / "bad.fnn"
    _rewrite(path, bad, replace={"config.json": b"{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        fastnn.load_model(bad, backend=BACKEND)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((6, 15), np.float32), "shape"),
        (np.zeros((6, 16), np.float64), "dtype"),
        (np.full((6, 16), np.nan, np.float32), "NaN"),
    ],
)
def test_tampered_arrays(tmp_path, saved, array, message):
    _, path = saved
    bad = tmp_path / "tampered.fnn"
    _rewrite(path, bad, replace={"weights/dense/kernel.npy": _npy(array)})
    with pytest.raises(ValueError, match=message):
        fastnn.load_model(bad, backend=BACKEND)
    _rewrite(path, bad, replace={"weights/dense/kernel.npy": b"\x93NUMPY garbage"})
    with pytest.raises(ValueError, match="weights/dense/kernel.npy"):
        fastnn.load_model(bad, backend=BACKEND)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastnn.load_model(tmp_path / "nope.fnn")


# -- atomic writes -----------------------------------------------------------------------
def test_interrupted_save_leaves_the_old_file_intact(tmp_path, saved, monkeypatch):
    old_model, path = saved
    before = path.read_bytes()
    x, y = _data()
    new_model = _model(seed=1)
    new_model.fit(x, y, epochs=1, verbose=0)
    real = saving._write_array
    calls = []

    def failing(zf, name, array):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        real(zf, name, array)

    monkeypatch.setattr(saving, "_write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        new_model.save(path)
    assert len(calls) == 3
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.fnn"]  # no temporary file left
    monkeypatch.setattr(saving, "_write_array", real)
    assert _same(fastnn.load_model(path, backend=BACKEND).get_weights(), old_model.get_weights())
    new_model.save(path)
    assert _same(fastnn.load_model(path, backend=BACKEND).get_weights(), new_model.get_weights())


def test_interrupted_save_weights_leaves_the_old_file_intact(tmp_path, saved, monkeypatch):
    model, _ = saved
    path = tmp_path / "w.npz"
    model.save_weights(path)
    before = path.read_bytes()

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", failing)
    with pytest.raises(KeyboardInterrupt):
        _model(seed=5).save_weights(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fnn", "w.npz"]


def test_save_into_missing_folder(tmp_path, saved):
    model, _ = saved
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "no" / "such" / "m.fnn")


# -- file permissions --------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_files_get_the_mode_of_a_normal_file(tmp_path, saved):
    """0666 & ~umask, as open() gives, not the 0600 of a temporary file; an existing file
    keeps its mode when it is overwritten."""
    import stat

    model, _ = saved

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    old = os.umask(0o022)
    try:
        model.save(tmp_path / "a.fnn")
        model.save_weights(tmp_path / "w.npz")
        with open(tmp_path / "plain", "w"):
            pass
        assert mode(tmp_path / "a.fnn") == mode(tmp_path / "w.npz") == 0o644
        assert mode(tmp_path / "plain") == 0o644
        os.umask(0o027)
        model.save(tmp_path / "b.fnn")
        assert mode(tmp_path / "b.fnn") == 0o640
        os.chmod(tmp_path / "a.fnn", 0o604)
        model.save(tmp_path / "a.fnn")  # overwritten: the file keeps its mode
        assert mode(tmp_path / "a.fnn") == 0o604
    finally:
        os.umask(old)


# -- metadata ------------------------------------------------------------------------------
def test_metadata_round_trips_and_is_optional(tmp_path, saved):
    model, path = saved
    assert fastnn.load_model(path).metadata == {}  # a file without metadata
    model.metadata = {"cli": {"dataset": "iris", "seed": 3}, "note": [1, 2.5, None]}
    model.save(tmp_path / "meta.fnn")
    loaded = fastnn.load_model(tmp_path / "meta.fnn")
    assert loaded.metadata == model.metadata
    assert fastnn.load_model(tmp_path / "meta.fnn", compile=False).metadata == model.metadata
    with zipfile.ZipFile(tmp_path / "meta.fnn") as zf:
        config = json.loads(zf.read("config.json"))
    assert config["metadata"] == model.metadata
    config["metadata"] = ["not", "a", "dict"]
    with zipfile.ZipFile(tmp_path / "meta.fnn") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "bad.fnn", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="not a valid fastnn model file.*metadata"):
        fastnn.load_model(tmp_path / "bad.fnn")


def test_metadata_must_be_a_json_dict(tmp_path, saved):
    model, _ = saved
    for bad in ({"x": np.zeros(2)}, {"x": float("nan")}, {1: "a"}, ["a"]):
        model.metadata = bad
        with pytest.raises(TypeError, match="metadata must be a dict"):
            model.save(tmp_path / "m.fnn")
        assert not (tmp_path / "m.fnn").exists()


def test_a_callable_initializer_is_named_in_the_config_and_never_silently_replaced(tmp_path):
    """A config cannot hold a Python callable: from_config without weights refuses to
    initialise that weight (it was silently glorot_uniform, even for a bias); a model
    file, whose weights follow, loads with the same predictions."""
    from fastnn.layers import BatchNormalization, Dense

    def half(shape, rng):
        return np.full(shape, 0.5)

    model = fastnn.Sequential([Dense(3, input_dim=2, kernel_initializer=half,
                                     bias_initializer=half),
                               BatchNormalization(gamma_initializer=half)],
                              seed=0, backend="numpy")  # fmt: skip
    config = model.get_config()
    dense, bn = (entry["config"] for entry in config["layers"])
    assert dense["bias_initializer"].startswith("callable:") and "half" in dense["bias_initializer"]
    assert bn["gamma_initializer"] == dense["kernel_initializer"]
    with pytest.raises(ValueError, match="kernel_initializer was the Python callable .*half"):
        fastnn.Sequential.from_config(config, backend="numpy")
    x = np.ones((4, 2), np.float32)
    for path in (tmp_path / "m.fnn", tmp_path / "m.keras"):
        model.save(path)
        np.testing.assert_array_equal(fastnn.load_model(path, backend="numpy").predict(x),
                                      model.predict(x))  # fmt: skip


def test_deepcopy_and_pickle_copy_the_whole_model_and_clone_model_the_architecture():
    import copy
    import pickle

    from fastnn.layers import Dense

    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    y = np.arange(16) % 3
    layers = [Dense(5, input_dim=4, activation="relu"), Dense(3, activation="softmax")]
    model = fastnn.Sequential(layers, seed=0, backend="numpy")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(twin.predict(x), model.predict(x))
        assert twin.optimizer.iterations == model.optimizer.iterations
        twin.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)  # its own weights
        assert not np.array_equal(twin.predict(x), model.predict(x))
    clone = fastnn.models.clone_model(model)
    assert clone.get_config() == model.get_config() and clone.optimizer is None
    unbuilt = fastnn.Sequential([Dense(2)], backend="numpy")
    assert copy.deepcopy(unbuilt).get_config() == unbuilt.get_config()
