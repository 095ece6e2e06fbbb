"""``.keras`` files both ways: a model saved by Keras 3 loads in fastnn with the same
predictions, and a fastnn model saved as ``.keras`` loads in Keras 3 with the same
predictions (Keras on its PyTorch backend; skipped without Keras, torch or h5py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastnn
from fastnn import layers as L

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("h5py")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)


def _perturb(keras_model):
    """Non-trivial values in every weight (BatchNormalization's moving statistics too)."""
    rng = np.random.default_rng(1)
    weights = keras_model.get_weights()
    keras_model.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(w.dtype) for w in weights])


def _keras_mlp():
    norm = keras.layers.Normalization()
    norm.adapt(RNG.normal(2.0, 3.0, (50, 6)).astype("float32"))
    return keras.Sequential([
        keras.Input((6,)), norm, keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.Dropout(0.3),
        keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.l2(0.01)),
        keras.layers.LeakyReLU(0.1), keras.layers.ReLU(), keras.layers.Reshape((5, 1)),
        keras.layers.Flatten(), keras.layers.Dense(3), keras.layers.Activation("sigmoid"),
        keras.layers.Dense(4), keras.layers.Softmax(),
    ])  # fmt: skip


def _keras_cnn():
    return keras.Sequential([
        keras.Input((9, 9, 2)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(3, (2, 3), strides=(1, 2), use_bias=False),
        keras.layers.AveragePooling2D(pool_size=(2, 1), padding="same"),
        keras.layers.Conv2D(5, 1), keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(3),
    ])  # fmt: skip


def _keras_cnn_global_average():
    return keras.Sequential([
        keras.Input((7, 7, 1)), keras.layers.Conv2D(3, 3, strides=2, activation="tanh"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax"),
    ])  # fmt: skip


def _keras_rnn():
    return keras.Sequential([
        keras.Input((6, 4)), keras.layers.LSTM(5, return_sequences=True),
        keras.layers.GRU(3, return_sequences=True), keras.layers.SimpleRNN(4),
        keras.layers.Dense(2),
    ])  # fmt: skip


KERAS_MODELS = {
    "mlp": (_keras_mlp, (6,)),
    "cnn": (_keras_cnn, (9, 9, 2)),
    "cnn_global_average": (_keras_cnn_global_average, (7, 7, 1)),
    "rnn": (_keras_rnn, (6, 4)),
}


def test_a_keras_embedding_model_loads_with_the_same_predictions(tmp_path):
    model = keras.Sequential([
        keras.Input((7,), dtype="int32"), keras.layers.Embedding(30, 4),
        keras.layers.LSTM(3), keras.layers.Dense(1, activation="sigmoid"),
    ])  # fmt: skip
    _perturb(model)
    ids = RNG.integers(0, 30, (5, 7)).astype("int32")
    expected = model.predict(ids, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = fastnn.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(ids), expected, rtol=1e-5, atol=1e-5)
    loaded.save(tmp_path / "back.keras")
    again = keras.saving.load_model(tmp_path / "back.keras")
    np.testing.assert_allclose(again.predict(ids, verbose=0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_a_keras_model_loads_with_the_same_predictions(name, tmp_path):
    build, shape = KERAS_MODELS[name]
    model = build()
    _perturb(model)
    x = RNG.normal(size=(7, *shape)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = fastnn.load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers
    ]
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-5)


def _fastnn_mlp():
    norm = L.Normalization()
    norm.adapt(RNG.normal(-1.0, 2.0, (40, 5)))
    model = fastnn.Sequential([
        fastnn.Input((5,)), norm, L.Dense(7, activation="relu", kernel_regularizer="l2"),
        L.BatchNormalization(), L.Dropout(0.2), L.Dense(6, activation="leaky_relu"),
        L.LeakyReLU(0.05), L.Reshape((3, 2)), L.Flatten(), L.Dense(3, activation="softmax"),
    ])  # fmt: skip
    model.compile("adam", "categorical_crossentropy")
    y = np.eye(3)[RNG.integers(0, 3, 64)]
    model.fit(RNG.normal(size=(64, 5)), y, epochs=2, batch_size=16, verbose=0)
    return model, (5,)


def _fastnn_cnn_rnn():
    model = fastnn.Sequential([
        fastnn.Input((8, 8, 1)), L.Conv2D(4, 3, padding="same", activation="relu"),
        L.MaxPooling2D(), L.BatchNormalization(), L.Conv2D(6, 3, strides=(1, 2)),
        L.Reshape((2, 6)), L.GRU(5, return_sequences=True), L.LSTM(4), L.Dense(3),
    ])  # fmt: skip
    model.compile("adam", "mse")
    model.fit(RNG.normal(size=(32, 8, 8, 1)), RNG.normal(size=(32, 3)), epochs=1, verbose=0,
              batch_size=8)  # fmt: skip
    return model, (8, 8, 1)


FASTNN_MODELS = {"mlp": _fastnn_mlp, "cnn_rnn": _fastnn_cnn_rnn}


@pytest.mark.parametrize("name", sorted(FASTNN_MODELS))
def test_a_fastnn_model_saved_as_keras_loads_in_keras(name, tmp_path):
    model, shape = FASTNN_MODELS[name]()
    x = RNG.normal(size=(9, *shape)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x), rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    back = fastnn.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


def test_weights_h5_files_move_both_ways(tmp_path):
    model, shape = _fastnn_mlp()
    model.save_weights(tmp_path / "w.weights.h5")
    twin = keras.saving.load_model(_saved(model, tmp_path))
    twin.set_weights([np.zeros_like(w) for w in twin.get_weights()])
    twin.load_weights(tmp_path / "w.weights.h5")
    x = RNG.normal(size=(4, *shape)).astype("float32")
    np.testing.assert_allclose(twin.predict(x, verbose=0), model.predict(x), rtol=1e-5, atol=1e-5)
    twin.save_weights(tmp_path / "k.weights.h5")
    other, _ = _fastnn_mlp()
    other.load_weights(tmp_path / "k.weights.h5")
    np.testing.assert_allclose(other.predict(x), model.predict(x), rtol=1e-5, atol=1e-5)


def _saved(model, tmp_path):
    model.save(tmp_path / "arch.keras")
    return tmp_path / "arch.keras"


def test_keras_options_fastnn_lacks_are_refused(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, bias_constraint="non_neg")])
    model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"Dense 'dense.*'.*bias_constraint"):
        fastnn.load_model(tmp_path / "m.keras")
    gelu = keras.Sequential([keras.Input((4,)), keras.layers.GaussianNoise(0.1)])
    gelu.save(tmp_path / "g.keras")
    with pytest.raises(ValueError, match="fastnn has no layer 'GaussianNoise'"):
        fastnn.load_model(tmp_path / "g.keras")


def test_h5_model_names_are_refused_and_fnn_is_fastnn(tmp_path):
    model, _ = _fastnn_mlp()
    with pytest.raises(ValueError, match="legacy HDF5"):
        model.save(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="legacy HDF5"):
        fastnn.load_model(tmp_path / "m.h5")
    model.save(tmp_path / "m.fnn")
    with pytest.raises(ValueError, match="lacks config.json"):
        os.replace(tmp_path / "m.fnn", tmp_path / "m2.keras")
        fastnn.load_model(tmp_path / "m2.keras")


def _rewritten(src, dst, members):
    """A copy of the zip ``src`` at ``dst`` with ``members`` (name -> bytes) replaced."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, members.get(name, zin.read(name)))
    return dst


def test_damaged_keras_files_are_refused_with_a_value_error(tmp_path):
    """A .keras zip whose members are damaged: a ValueError naming the file, never the
    exception of the zip, JSON or HDF5 reader underneath."""
    pytest.importorskip("h5py")
    model = fastnn.Sequential([fastnn.Input((4,)), L.Dense(2)], backend="numpy")
    good = tmp_path / "ok.keras"
    model.save(good)
    import json
    import zipfile

    with zipfile.ZipFile(good) as zf:
        config = json.loads(zf.read("config.json"))
    del config["config"]["layers"][-1]["config"]["units"]
    cases = {
        "h5": {"model.weights.h5": b"x" * 100},
        "list": {"config.json": b"[]"},
        "json": {"config.json": b"{not json"},
        "units": {"config.json": json.dumps(config).encode()},
    }
    for name, members in cases.items():
        bad = _rewritten(good, tmp_path / f"{name}.keras", members)
        with pytest.raises(ValueError, match=name + r"\.keras"):
            fastnn.load_model(bad, backend="numpy")
    data = bytearray(good.read_bytes())  # bytes flipped all over the archive
    for offset in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[offset : offset + 8] = bytes(b ^ 0x5A for b in flipped[offset : offset + 8])
        (tmp_path / "flip.keras").write_bytes(bytes(flipped))
        try:
            fastnn.load_model(tmp_path / "flip.keras", backend="numpy")
        except ValueError:
            pass


def test_model_from_json_reads_a_keras_models_json():
    """Keras 3's model.to_json() (the architecture alone) builds the same fastnn model: with
    the Keras model's weights set, the same predictions."""
    layers = [keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.2),
              keras.layers.Dense(3, activation="softmax")]  # fmt: skip
    km = keras.Sequential([keras.Input((6,)), *layers])
    _perturb(km)
    fm = fastnn.models.model_from_json(km.to_json(), backend="numpy")
    assert [type(layer).__name__ for layer in fm.layers] == ["Dense", "Dropout", "Dense"]
    fm.set_weights(km.get_weights())
    x = RNG.normal(size=(5, 6)).astype("float32")
    np.testing.assert_allclose(fm.predict(x), km.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in fastnn.backend.available() if b != "cuda"])
def test_a_frozen_batchnorm_after_dense_trains_as_in_keras(backend, tmp_path):
    """A Keras model with a frozen BatchNormalization after a Dense (inference mode in fit,
    the gradient through the moving statistics), saved by Keras and loaded by fastnn
    (trainable = False kept): three SGD steps give Keras's losses and weights, and the
    normalisation's four weights stay as they were in both."""
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"), keras.layers.Dense(3, activation="softmax"),
    ])  # fmt: skip
    rng = np.random.default_rng(7)
    model.set_weights([  # moderate logits: no probability reaches Keras's 1e-7 clip
        rng.normal(0, 0.4, (6, 8)), rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8),
        rng.normal(0, 0.3, 8), rng.normal(0, 0.5, 8), rng.uniform(0.5, 2.0, 8),
        rng.normal(0, 0.4, (8, 3)), rng.normal(0, 0.1, 3),
    ])  # fmt: skip
    model.layers[1].trainable = False
    model.save(tmp_path / "frozen.keras")
    loaded = fastnn.load_model(tmp_path / "frozen.keras", backend=backend)
    assert [layer.trainable for layer in loaded.layers] == [True, False, True, True]
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    loaded.compile(fastnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    frozen = [np.array(w) for w in model.layers[1].get_weights()]
    for _ in range(3):
        x = rng.normal(1.0, 2.0, (16, 6)).astype("float32")
        y = rng.integers(0, 3, 16)
        want = float(model.train_on_batch(x, y))
        assert loaded.train_on_batch(x, y) == pytest.approx(want, rel=1e-5, abs=1e-6)
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, np.array(want), rtol=1e-4, atol=1e-5)
    for got, keras_w, start in zip(loaded.layers[1].get_weights(),
                                   model.layers[1].get_weights(), frozen):  # fmt: skip
        np.testing.assert_array_equal(got, start)
        np.testing.assert_array_equal(np.array(keras_w), start)
