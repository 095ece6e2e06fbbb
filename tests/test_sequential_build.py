"""A Sequential model is built as soon as its input shape is known (Keras 3): layer weights
are readable right after construction, with the initial values a model built at its first
use gets; ``add`` and ``pop`` work on a built, compiled or trained model and keep every
kept layer's weights, non-trainable state and optimizer state."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastnn
from fastnn import backend as fastnn_backend
from fastnn.layers import (
    LSTM,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Input,
    MaxPooling2D,
)

CPU_BACKENDS = [b for b in fastnn_backend.available() if b != "cuda"]


def _data(n=96, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.5)


def _layer_weights(model):
    return [w for layer in model.layers for w in layer.get_weights()]


# -- built at construction -------------------------------------------------------------------
def _mlp():
    return [Dense(16, activation="relu"), Dropout(0.2), BatchNormalization(),
            Dense(3, activation="softmax")]  # fmt: skip


def _cnn():
    return [Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(3)]


DECLARED = {
    "Input": lambda: ([Input((6,)), *_mlp()], (6,)),
    "input_shape": lambda: ([Dense(16, activation="relu", input_shape=(6,)), *_mlp()[1:]], (6,)),
    "input_dim": lambda: ([Dense(16, activation="relu", input_dim=6), *_mlp()[1:]], (6,)),
    "Input 3-D": lambda: ([Input((8, 8, 1)), *_cnn()], (8, 8, 1)),
    "input_length": lambda: ([Embedding(20, 5, input_length=7), LSTM(4), Dense(2)], (7,)),
}


@pytest.mark.parametrize("name", list(DECLARED))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_weights_exist_at_construction_with_the_values_of_a_lazily_built_model(name, dtype):
    """The same seed gives the same initial weights as a model whose first use builds
    it (no input shape declared): initialisation order and random draws are unchanged."""
    layers, shape = DECLARED[name]()
    model = fastnn.Sequential(layers, seed=7, dtype=dtype)
    eager = _layer_weights(model)
    assert model.layers[0].get_weights(), "no weights right after construction"
    undeclared = [lay for lay in DECLARED[name]()[0] if not isinstance(lay, Input)]
    first = undeclared[0]
    first.declared_input_shape = None  # the same layers, no input shape: built at first use
    lazy = fastnn.Sequential(undeclared, seed=7, dtype=dtype)
    assert lazy.layers[0].get_weights() == []
    lazy.build(shape)
    expected = lazy.get_weights()
    assert len(eager) == len(expected) > 0
    for got, want in zip(eager, expected):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in model.get_weights()]),
                                  np.concatenate([w.ravel() for w in expected]))  # fmt: skip
    assert model.built


def test_add_calls_build_each_layer_as_its_input_shape_becomes_known():
    model = fastnn.Sequential(seed=3)
    model.add(Input((6,)))
    model.add(Dense(4))
    assert [w.shape for w in model.layers[0].get_weights()] == [(6, 4), (4,)]
    model.add(Dense(2))
    assert [w.shape for w in model.layers[1].get_weights()] == [(4, 2), (2,)]
    reference = fastnn.Sequential([Input((6,)), Dense(4), Dense(2)], seed=3)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    unshaped = fastnn.Sequential([Dense(4)], seed=3)
    unshaped.add(Dense(2))  # no input shape: built at first use, as before
    assert unshaped.layers[1].get_weights() == [] and not unshaped.built


def test_a_layer_that_cannot_take_its_input_is_refused_at_add_and_leaves_the_model_as_it_was():
    model = fastnn.Sequential([Input((6,)), Dense(4)], seed=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match="takes images of shape"):
        model.add(Conv2D(2, 3))  # Conv2D needs (H, W, C) samples
    assert len(model.layers) == 1
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_layer_weight_edits_before_the_first_use_reach_the_model():
    model = fastnn.Sequential([Input((3,)), Dense(2, use_bias=False)], seed=0)
    kernel = np.arange(6, dtype=np.float32).reshape(3, 2)
    model.layers[0].set_weights([kernel])
    np.testing.assert_array_equal(model.predict(np.eye(3, dtype=np.float32), verbose=0), kernel)


def test_weight_views_taken_at_construction_are_the_weights_the_model_trains():
    """layer.kernel / layer.weights right after construction are views into the model's
    buffers: a write reaches the model, and after fit they hold the trained values (they
    were the layer's own arrays, copied once into the model at its first use)."""
    model = fastnn.Sequential([Input((3,)), Dense(2), Dense(1)], seed=0)
    kernel, out_weights = model.layers[0].kernel, model.layers[1].weights
    kernel[...] = 0.5
    np.testing.assert_array_equal(model.get_weights()[0], np.full((3, 2), 0.5, np.float32))
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    model.fit(x, x[:, :1], epochs=2, batch_size=4, verbose=0)
    trained = model.get_weights()
    assert not np.array_equal(trained[0], np.full((3, 2), 0.5, np.float32))
    np.testing.assert_array_equal(kernel, trained[0])
    np.testing.assert_array_equal(out_weights[0], trained[2])
    np.testing.assert_array_equal(model.layers[0].dkernel.shape, (3, 2))


def test_a_model_that_fails_to_construct_owns_no_layer():
    dense = Dense(4)
    with pytest.raises(ValueError):
        fastnn.Sequential([Input((6,)), dense, Conv2D(2, 3)])
    model = fastnn.Sequential([Input((6,)), dense, Dense(1)])  # dense may join another one
    assert model.layers[0] is dense


# -- add and pop on a built model --------------------------------------------------------------
@pytest.mark.parametrize("use", ["summary", "get_weights", "built", "predict"])
def test_add_after_the_model_was_used(use):
    x, y = _data()
    model = fastnn.Sequential([Input((6,)), Dense(8, activation="tanh")], seed=1)
    {
        "summary": lambda: model.summary(print_fn=lambda _: None),
        "get_weights": model.get_weights,
        "built": lambda: model.built,
        "predict": lambda: model.predict(x, verbose=0),
    }[use]()
    kept = model.get_weights()
    model.add(Dense(3, activation="softmax"))
    for got, want in zip(model.get_weights(), kept):
        np.testing.assert_array_equal(got, want)
    assert model.predict(x, verbose=0).shape == (len(x), 3)
    model.compile("adam", "sparse_categorical_crossentropy")
    losses = model.fit(x, y, epochs=8, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_add_after_compile_and_fit_keeps_weights_and_state_then_trains(backend):
    """Kept layers keep their weights and BatchNormalization statistics exactly; fit goes
    on with the compile settings (the new layer's optimizer state starts fresh)."""
    x, y = _data()
    model = fastnn.Sequential([Input((6,)), Dense(8, activation="relu"), BatchNormalization(),
                               Dense(5, activation="relu")], seed=2, backend=backend)  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01), "mse")
    model.fit(x, np.eye(5, dtype=np.float32)[y], epochs=2, verbose=0)
    trained = model.get_weights()
    iterations = model.optimizer.iterations
    model.add(Dense(3, activation="softmax"))
    model.summary(print_fn=lambda _: None)
    for got, want in zip(model.get_weights(), trained):
        np.testing.assert_array_equal(got, want)  # moving mean and variance included
    assert len(model.get_weights()) == len(trained) + 2
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    assert model.optimizer.iterations == 0
    losses = model.fit(x, y, epochs=10, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert iterations > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pop_and_add_back_continue_training_exactly(backend):
    """Removing the last layer and adding it back changes nothing: weights, moving
    statistics, optimizer state and step count carry over, so training goes on as if
    the model had not been touched."""
    x, y = _data()

    def model():
        layers = [Input((6,)), Dense(8, activation="relu"), BatchNormalization(),
                  Dense(3, activation="softmax")]  # fmt: skip
        return fastnn.Sequential(layers, seed=4, backend=backend)

    straight, edited = model(), model()
    for m in (straight, edited):
        m.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    last = edited.pop()
    edited.add(last)
    for m in (straight, edited):
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert edited.optimizer.iterations == straight.optimizer.iterations
    for got, want in zip(edited.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_add_then_fit_without_compile_keeps_the_kept_weights_optimizer_state():
    """Adam's moments of the kept weights go on: the kept layers' first update after the
    add is the one the untouched model makes (the new layer's gradient aside)."""
    x, y = _data()

    def model():
        m = fastnn.Sequential([Input((6,)), Dense(8, activation="relu"),
                               Dense(3, activation="softmax")], seed=5)  # fmt: skip
        m.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return m

    carried, recompiled = model(), model()
    for m in (carried, recompiled):
        m.add(Dense(3, activation="softmax"))
    recompiled.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    recompiled.optimizer.iterations = carried.optimizer.iterations
    before = carried.get_weights()
    for m in (carried, recompiled):
        losses = m.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
        assert np.isfinite(losses).all()
    assert carried.optimizer.iterations == recompiled.optimizer.iterations
    moved = [not np.array_equal(a, b) for a, b in zip(carried.get_weights(), before)]
    assert all(moved)  # every weight trained, the kept and the new
    # with fresh moments the kept layers take other steps
    assert not np.allclose(carried.get_weights()[0], recompiled.get_weights()[0])


def test_pop_returns_the_layer_with_its_own_weights():
    x, y = _data()
    model = fastnn.Sequential([Input((6,)), Dense(8, activation="relu"),
                               Dense(3, activation="softmax")], seed=6)  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    trained = model.get_weights()
    popped = model.pop()
    assert len(model.layers) == 1 and isinstance(popped, Dense)
    for got, want in zip(popped.get_weights(), trained[2:]):
        np.testing.assert_array_equal(got, want)
    model.add(Dense(3, activation="softmax"))
    model.fit(x, y, epochs=2, verbose=0)
    for got, want in zip(popped.get_weights(), trained[2:]):  # not views into the model
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(model.get_weights()[0], trained[0])
    other = fastnn.Sequential([Input((8,)), popped])  # it left the model: it may join another
    np.testing.assert_array_equal(other.layers[0].get_weights()[0], trained[2])
    with pytest.raises(ValueError, match="already belongs"):
        fastnn.Sequential([Input((6,)), model.layers[0]])


def test_pop_of_the_output_layer_asks_for_a_loss_that_fits():
    x, y = _data()
    model = fastnn.Sequential([Input((6,)), Dense(8, activation="relu"),
                               Dense(3, activation="softmax")], seed=6)  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.pop()
    model.add(Dense(3))  # logits: the compiled loss expects probabilities
    with pytest.raises(ValueError, match="expects probabilities"):
        model.fit(x, y, epochs=1, verbose=0)
    model.compile("adam", fastnn.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"]).all()


def test_pop_on_a_model_without_layers_is_an_index_error_as_in_keras():
    with pytest.raises(IndexError, match="no layers"):
        fastnn.Sequential().pop()
    with pytest.raises(IndexError, match="no layers"):
        fastnn.Sequential([Input((3,))]).pop()


@pytest.mark.parametrize("first", ["Input", "input_shape"])
def test_pop_every_layer_then_add_builds_on_the_declared_input(first):
    layers = [Input((5,)), Dense(4)] if first == "Input" else [Dense(4, input_shape=(5,))]
    model = fastnn.Sequential([*layers, Dense(2)], seed=0)
    model.pop()
    model.pop()
    assert not model.built and model.layers == []
    model.add(Dense(3))
    assert [w.shape for w in model.layers[0].get_weights()] == [(5, 3), (3,)]
    assert model.input_shape == (5,)


@pytest.mark.parametrize("suffix", [".fnn", ".keras"])
def test_a_model_changed_by_add_and_pop_round_trips_through_files(suffix, tmp_path):
    if suffix == ".keras":
        pytest.importorskip("h5py")
    x, y = _data()
    model = fastnn.Sequential([Input((6,)), Dense(8, activation="relu"),
                               Dense(2, activation="softmax")], seed=8)  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    model.add(Dense(3, activation="softmax"))
    model.fit(x, y, epochs=1, verbose=0)
    model.pop()
    model.add(Dense(3, activation="softmax", name="out"))
    path = tmp_path / f"m{suffix}"
    model.save(path)  # the engine is built again by save, the optimizer state carried
    loaded = fastnn.load_model(path)
    assert [lay.name for lay in loaded.layers] == [lay.name for lay in model.layers]
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    if suffix == ".fnn":  # optimizer state too: training goes on identically
        for m in (model, loaded):
            m.fit(x, y, epochs=1, shuffle=False, verbose=0)
        for got, want in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(got, want)


# -- Keras 3 ------------------------------------------------------------------------------------
def _operations(lib, layers, inp, x, y):
    """What a user may do to a Sequential, in order; each step's outcome (None when it
    ran, else the exception's type)."""
    model = lib.Sequential([inp((6,)), layers.Dense(4, activation="relu"),
                            layers.Dense(3, activation="softmax")])  # fmt: skip
    steps = {
        "built at construction": lambda: model.built or 1 / 0,
        "layer weights at construction": lambda: model.layers[0].get_weights() or 1 / 0,
        "add after summary": lambda: (model.summary(print_fn=lambda *a, **k: None),
                                      model.add(layers.Dense(3, activation="softmax"))),
        "compile and fit": lambda: (model.compile("adam", "sparse_categorical_crossentropy"),
                                    model.fit(x, y, epochs=1, verbose=0)),
        "pop after fit": model.pop,
        "fit after pop": lambda: model.fit(x, y, epochs=1, verbose=0),
        "add after fit": lambda: model.add(layers.Dense(3, activation="softmax")),
        "evaluate after add": lambda: model.evaluate(x, y, verbose=0),
        "fit after add": lambda: model.fit(x, y, epochs=1, verbose=0),
        "compile and fit again": lambda: (
            model.compile("adam", "sparse_categorical_crossentropy"),
            model.fit(x, y, epochs=1, verbose=0)),
        "pop all": lambda: [model.pop() for _ in range(len(model.layers))],
        "pop on empty": model.pop,
    }  # fmt: skip
    outcomes = {}
    for name, step in steps.items():
        try:
            step()
            outcomes[name] = None
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            outcomes[name] = type(exc).__name__
    return outcomes


def test_the_operations_keras_3_allows_on_a_sequential_are_allowed():
    """fastnn allows what Keras 3 allows and raises what it raises (the same type), with
    one documented difference: after ``add`` on a trained model Keras's optimizer refuses
    the new weights until ``compile`` (a ValueError), while fastnn goes on training, the
    new weights with fresh optimizer state."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    x, y = _data()
    theirs = _operations(keras, keras.layers, keras.Input, x, y)
    ours = _operations(fastnn, fastnn.layers, Input, x, y)
    assert theirs.pop("fit after add") == "ValueError"
    assert ours.pop("fit after add") is None
    assert ours == theirs
    assert ours["pop on empty"] == "IndexError"
