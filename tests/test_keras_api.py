"""Keras 3 spellings and semantics: utils, regularizers, models, the model's methods,
frozen layers (``trainable = False``)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import fastnn
from fastnn import backend as fastnn_backend
from fastnn.layers import Activation, BatchNormalization, Dense, Dropout, Input

CPU_BACKENDS = [b for b in fastnn_backend.available() if b != "cuda"]


def _data(n=48, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


# -- spellings -------------------------------------------------------------------------------
def test_to_categorical_as_keras():
    out = fastnn.utils.to_categorical([[1], [0], [2]])
    np.testing.assert_array_equal(out, np.eye(3)[[1, 0, 2]])
    assert out.dtype == np.float64 and out.shape == (3, 3)
    assert fastnn.utils.to_categorical(np.array([[0, 1], [1, 0]]), 3).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="labels in"):
        fastnn.utils.to_categorical([3], num_classes=3)
    with pytest.raises(ValueError, match="integer class labels"):
        fastnn.utils.to_categorical([0.5])


def test_set_random_seed_makes_unseeded_models_reproducible():
    def run():
        fastnn.utils.set_random_seed(7)
        draws = (random.random(), float(np.random.rand()))
        model = fastnn.Sequential([Input(shape=(3,)), Dense(2)], backend="numpy")
        return draws, model.get_weights()

    (d1, w1), (d2, w2) = run(), run()
    assert d1 == d2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        fastnn.utils.set_random_seed(-1)


@pytest.mark.parametrize(
    "spelling, want",
    [
        (lambda: fastnn.regularizers.l1(0.1), (0.1, 0.0)),
        (lambda: fastnn.regularizers.l2(0.2), (0.0, 0.2)),
        (lambda: fastnn.regularizers.l1_l2(0.1, 0.2), (0.1, 0.2)),
        (lambda: fastnn.regularizers.L1L2(l1=0.3), (0.3, 0.0)),
    ],
)
def test_regularizer_spellings(spelling, want):
    reg = spelling()
    assert (reg.l1, reg.l2) == want


def test_module_spellings():
    assert fastnn.optimizers.schedules.ExponentialDecay is fastnn.schedules.ExponentialDecay
    assert fastnn.models.Sequential is fastnn.Sequential
    assert fastnn.models.load_model is fastnn.load_model


def test_model_methods_as_keras(tmp_path):
    x, y = _data()
    model = fastnn.models.Sequential(
        [Input(shape=(6,)), Dense(8, activation="relu", name="hidden"), Dropout(0.2),
         Dense(3, activation="softmax", name="out")],
        seed=0, backend="numpy",
    )  # fmt: skip
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert isinstance(model.optimizer, fastnn.optimizers.RMSprop)  # Keras's default
    assert model.get_layer("out") is model.layers[2] is model.get_layer(index=2)
    assert model.get_layer(index=-1) is model.layers[-1]
    with pytest.raises(ValueError, match="no layer named"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="exactly one"):
        model.get_layer()
    np.testing.assert_array_equal(model(x), model.predict(x))
    np.testing.assert_array_equal(model.predict_on_batch(x[:5]), model.predict(x[:5]))
    assert model.test_on_batch(x, y) == model.evaluate(x, y, batch_size=len(x))
    with pytest.raises(ValueError, match="training=True"):
        model(x, training=True)
    clone = fastnn.models.model_from_json(model.to_json(), backend="numpy")
    assert clone.get_config() == model.get_config()
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]
    rebuilt = fastnn.Sequential.from_config(model.get_config(), backend="numpy")
    assert [layer.name for layer in rebuilt.layers] == ["hidden", "dropout", "out"]
    assert len(model.weights) == 4 and len(model.trainable_weights) == 4
    assert model.non_trainable_weights == []


# -- frozen layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_frozen_layer_gets_no_update(backend):
    x, y = _data()
    model = fastnn.Sequential(
        [Input(shape=(6,)), Dense(8, activation="relu"), Dense(8, activation="tanh"),
         Dense(3, activation="softmax")],
        seed=0, backend=backend,
    )  # fmt: skip
    model.layers[1].trainable = False
    model.compile(fastnn.optimizers.AdamW(0.01, weight_decay=0.1),
                  "sparse_categorical_crossentropy")  # fmt: skip
    before = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    after = model.get_weights()
    np.testing.assert_array_equal(after[2], before[2])  # the frozen kernel ...
    np.testing.assert_array_equal(after[3], before[3])  # ... and bias, despite weight decay
    assert not np.array_equal(after[0], before[0]) and not np.array_equal(after[4], before[4])
    assert model._engine.state.shape[1] == 6 * 8 + 8 + 8 * 3 + 3
    assert len(model.trainable_weights) == 4 and len(model.non_trainable_weights) == 2
    lines = []
    model.summary(print_fn=lines.append)
    assert any("Non-trainable params: 72" in line for line in lines)


def test_frozen_layers_train_as_if_they_were_constants():
    """A model with its first Dense frozen takes the same steps as a model without it fed
    that layer's outputs."""
    x, y = _data()
    full = fastnn.Sequential(
        [Input(shape=(6,)), Dense(5, activation="tanh"), Dense(3, activation="softmax")],
        seed=3, backend="numpy", dtype="float64",
    )  # fmt: skip
    full.layers[0].trainable = False
    full.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    w0, b0, w1, b1 = full.get_weights()
    head = fastnn.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")],
                             backend="numpy", dtype="float64")  # fmt: skip
    head.set_weights([w1, b1])
    head.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    for _ in range(3):
        a = full.train_on_batch(x, y)
        b = head.train_on_batch(np.tanh(x.astype(np.float64) @ w0 + b0), y)
        assert a == pytest.approx(b, rel=1e-12)
    np.testing.assert_allclose(full.get_weights()[2], head.get_weights()[0], rtol=1e-12)


def test_trainable_changes_take_effect_at_compile(tmp_path):
    x, y = _data()
    model = fastnn.Sequential([Input(shape=(6,)), Dense(4), Dense(3, activation="softmax")],
                              seed=0, backend="numpy")  # fmt: skip
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.trainable = False
    model.layers[1].trainable = True
    before = model.get_weights()
    model.compile("sgd", "sparse_categorical_crossentropy")  # re-lays the buffers out
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, verbose=0)
    after = model.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.array_equal(after[2], before[2])
    path = tmp_path / "frozen.fnn"
    model.save(path)
    loaded = fastnn.load_model(path, backend="numpy")
    assert [layer.trainable for layer in loaded.layers] == [False, True]
    np.testing.assert_array_equal(loaded._engine.host_state(), model._engine.host_state())


def test_a_frozen_batchnorm_runs_in_inference_mode():
    x, y = _data()
    model = fastnn.Sequential(
        [Input(shape=(6,)), BatchNormalization(), Dense(3, activation="softmax")],
        seed=0, backend="numpy", dtype="float64",
    )  # fmt: skip
    model.layers[0].trainable = False
    model.compile("adam", "sparse_categorical_crossentropy")
    moving = model.layers[0].get_weights()
    loss = model.train_on_batch(x, y)
    for a, b in zip(model.layers[0].get_weights(), moving):
        np.testing.assert_array_equal(a, b)  # statistics and affine weights untouched
    assert loss == pytest.approx(model.evaluate(x, y), rel=0.05)  # the same normalisation


def _dense_bn_model(backend):
    return fastnn.Sequential(
        [Input(shape=(6,)), Dense(4), BatchNormalization(), Activation("relu"),
         Dense(3, activation="softmax")],
        seed=0, backend=backend,
    )  # fmt: skip


def _changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(before, after)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_frozen_batchnorm_after_a_trainable_layer_passes_the_gradient_on(backend):
    x, y = _data()
    model = _dense_bn_model(backend)
    model.layers[1].trainable = False
    model.compile("adam", "sparse_categorical_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert _changed(before, model.get_weights()) == [True, True] + [False] * 4 + [True, True]


def test_freezing_a_batchnorm_takes_effect_at_compile():
    """As every trainable change: a fit before the next compile (even with a new batch
    size) trains the layer as compiled; after compile it runs in inference mode; unfrozen
    and compiled again it trains."""
    x, y = _data()
    model = _dense_bn_model("numpy")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    bn = model.layers[1]
    bn.trainable = False
    before = bn.get_weights()
    model.fit(x, y, epochs=1, batch_size=10, verbose=0)  # a plan for a new batch size
    assert _changed(before, bn.get_weights()) == [True] * 4
    model.compile("adam", "sparse_categorical_crossentropy")
    before = bn.get_weights()
    model.fit(x, y, epochs=1, batch_size=12, verbose=0)
    assert _changed(before, bn.get_weights()) == [False] * 4
    bn.trainable = True
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=12, verbose=0)
    assert _changed(before, bn.get_weights()) == [True] * 4


# -- activation layers and Reshape -------------------------------------------------------
def test_activation_layers_match_activation():
    from fastnn.layers import LeakyReLU, ReLU, Softmax

    x = np.random.default_rng(1).normal(size=(5, 4))
    pairs = [
        (ReLU(), Activation("relu")),
        (ReLU(negative_slope=0.1), Activation("leaky_relu", alpha=0.1)),
        (LeakyReLU(), Activation("leaky_relu", alpha=0.3)),
        (Softmax(), Activation("softmax")),
    ]
    for layer, same in pairs:
        for lay in (layer, same):
            lay.build((4,), "float64", backend="numpy")
        np.testing.assert_array_equal(layer.forward(x), same.forward(x))
        assert type(layer)(**{k: v for k, v in layer.get_config().items()}).get_config() == (
            layer.get_config()
        )
    with pytest.raises(ValueError, match="max_value"):
        ReLU(max_value=6.0)
    with pytest.raises(ValueError, match="axis"):
        Softmax(axis=1)


def test_reshape_is_a_view_and_takes_minus_one():
    from fastnn.layers import Flatten, Reshape

    model = fastnn.Sequential(
        [Input(shape=(12,)), Reshape((3, -1)), Dense(5, activation="tanh"), Flatten(), Dense(2)],
        seed=0, backend="numpy", dtype="float64",
    )  # fmt: skip
    assert model.built and model.layers[0].output_shape == (3, 4)
    assert model._engine.plan_for(2).layers.shape[0] == 2  # no row for views
    x = np.random.default_rng(0).normal(size=(7, 12))
    w0, b0, w1, b1 = model.get_weights()
    want = np.tanh(x.reshape(7, 3, 4) @ w0 + b0).reshape(7, 15) @ w1 + b1
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-12)
    with pytest.raises(ValueError, match="cannot reshape"):
        assert fastnn.Sequential([Input(shape=(10,)), Reshape((3, -1)), Flatten()]).built
    with pytest.raises(ValueError, match="one -1"):
        Reshape((-1, -1))


# -- data pipelines ----------------------------------------------------------------------
def _pipeline_model(backend="numpy"):
    model = fastnn.Sequential(
        [Input(shape=(6,)), Dense(8, activation="relu"), Dropout(0.25),
         Dense(3, activation="softmax")],
        seed=5, backend=backend, dtype="float64",
    )  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    return model


def _batches(x, y, bs, epochs=1):
    for _ in range(epochs):
        for start in range(0, len(x), bs):
            yield x[start : start + bs], y[start : start + bs]


class _Recorded:
    """A re-iterable source of batches (as a DataLoader) that records which it gave."""

    def __init__(self, x, y, bs):
        self.batches = [(x[s : s + bs], y[s : s + bs]) for s in range(0, len(x), bs)]
        self.given = []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            self.given.append(i)
            yield batch


def test_steps_per_epoch_on_arrays_goes_on_through_the_data_as_keras_3():
    """Arrays, 5 batches, steps_per_epoch=2: epochs of batches 0-1, 2-3, then 4 alone (the
    end of the pass), the weights of one pass over the 5 batches; without batch_size the
    batch is ceil(n / steps_per_epoch)."""
    x, y = _data(n=50)
    model = _pipeline_model()
    hist = model.fit(x, y, batch_size=10, epochs=3, steps_per_epoch=2, shuffle=False,
                     verbose=0)  # fmt: skip
    assert hist.params["steps"] == 2 and len(hist.epoch) == 3
    assert model.optimizer.iterations == 5
    once = _pipeline_model()
    once.fit(_batches(x, y, 10), epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), once.get_weights()):
        np.testing.assert_array_equal(a, b)
    model = _pipeline_model()
    model.fit(x, y, epochs=2, steps_per_epoch=2, verbose=0)
    assert model.optimizer.iterations == 4  # batches of 25


def test_steps_per_epoch_continues_a_reiterable_source_and_its_validation():
    """A re-iterable source (a DataLoader) with steps_per_epoch: each epoch goes on where
    the last one stopped (the epoch that ends the pass is shorter, the next starts a new
    pass), for the training batches and for validation_steps; validation arrays with
    validation_steps go on the same way in batches of batch_size."""
    x, y = _data(n=50)
    train, val = _Recorded(x, y, 10), _Recorded(x[:30], y[:30], 10)
    model = _pipeline_model()
    model.fit(train, epochs=4, steps_per_epoch=2, validation_data=val, validation_steps=2,
              verbose=0)  # fmt: skip
    assert train.given == [0, 1, 2, 3, 4, 0, 1]
    assert val.given == [0, 1, 2, 0, 1, 2]
    assert model.optimizer.iterations == 7
    model = _pipeline_model()
    model.compile(fastnn.optimizers.SGD(1e-12), "sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=10, epochs=3, validation_data=(x[:30], y[:30]),
                     validation_steps=2, verbose=0)  # fmt: skip
    expected = [model.evaluate(x[a:b], y[a:b]) for a, b in ((0, 20), (20, 30), (0, 20))]
    np.testing.assert_allclose(hist.history["val_loss"], expected, rtol=1e-6)
    hist = model.fit(_Recorded(x, y, 10), epochs=1, verbose=0)  # sized, as a DataLoader
    assert hist.params["steps"] == 5
    # no batch_size: the validation arrays in validation_steps batches, all of them each time
    hist = model.fit(x, y, epochs=2, validation_data=(x[:30], y[:30]), validation_steps=2,
                     verbose=0)  # fmt: skip
    whole = model.evaluate(x[:30], y[:30])
    np.testing.assert_allclose(hist.history["val_loss"], [whole, whole], rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fit_on_a_generator_equals_fit_on_arrays(backend):
    """The same batches in the same order: the same steps (dropout masks and rates follow
    the step count), hence the same weights, as the arrays' one-call epochs."""
    x, y = _data(n=50)
    arrays, gen = _pipeline_model(backend), _pipeline_model(backend)
    h1 = arrays.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    h2 = gen.fit(_batches(x, y, 16, epochs=3), epochs=3, steps_per_epoch=4, verbose=0)
    for a, b in zip(arrays.get_weights(), gen.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-12)
    assert h1.history["accuracy"] == h2.history["accuracy"]


def test_fit_on_a_torch_dataloader_equals_fit_on_arrays():
    torch = pytest.importorskip("torch")
    x, y = _data(n=50)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float64), torch.tensor(y)),
        batch_size=16, shuffle=False,
    )  # fmt: skip
    arrays, loaded = _pipeline_model(), _pipeline_model()
    arrays.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(loader, epochs=2, steps_per_epoch=4, verbose=0)  # re-iterated every epoch
    for a, b in zip(arrays.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert loaded.evaluate(loader) == pytest.approx(arrays.evaluate(x, y), rel=1e-12)
    assert loaded.evaluate(loader, steps=1) == pytest.approx(
        arrays.evaluate(x[:16], y[:16]), rel=1e-12
    )
    np.testing.assert_allclose(loaded.predict(loader), arrays.predict(x), rtol=1e-12)


def test_validation_data_steps_and_freq():
    x, y = _data(n=64)
    model = _pipeline_model()
    hist = model.fit(x[:48], y[:48], epochs=4, batch_size=16, verbose=0,
                     validation_data=_batches(x[48:], y[48:], 8, epochs=2),
                     validation_steps=2, validation_freq=2)  # fmt: skip
    assert "val_loss" in hist.history and len(hist.history["val_loss"]) == 2
    assert len(hist.history["loss"]) == 4
    assert hist.history["val_loss"][-1] == pytest.approx(model.evaluate(x[48:], y[48:])[0])


def test_pipeline_errors():
    x, y = _data()
    model = _pipeline_model()
    with pytest.warns(RuntimeWarning, match="ran out"):
        hist = model.fit(_batches(x, y, 16), epochs=3, steps_per_epoch=3, verbose=0)
    assert len(hist.history["loss"]) == 1
    with pytest.raises(ValueError, match="y and sample_weight must be None"):
        model.fit(_batches(x, y, 16), y, verbose=0)
    with pytest.raises(ValueError, match=r"tuple \(x, y\)"):
        model.fit(iter([x]), verbose=0)
    with pytest.raises(TypeError, match="or an iterable of"):
        model.evaluate(object(), y)
    with pytest.raises(ValueError, match="y must be given"):
        model.fit(x, verbose=0)


# -- metrics ---------------------------------------------------------------------------------
def _binary_model(backend, logits=False):
    model = fastnn.Sequential(
        [Input(shape=(6,)), Dense(8, activation="relu"),
         Dense(1, activation=None if logits else "sigmoid")],
        seed=1, backend=backend, dtype="float64",
    )  # fmt: skip
    loss = fastnn.losses.BinaryCrossentropy(from_logits=logits)
    metrics = ["binary_accuracy", "auc", "precision", "recall",
               fastnn.metrics.AUC(num_thresholds=50, name="auc50"), "rmse"]  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01), loss, metrics=metrics)
    return model


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("logits", [False, True])
def test_binary_metrics_match_their_definitions(backend, logits):
    """evaluate's metrics == sklearn's (AUC: over Keras's thresholds, within their
    resolution), with probability or logit outputs."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    x, y3 = _data(n=200)
    y = (y3 > 0).astype(np.float64)
    model = _binary_model(backend, logits)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    logs = model.evaluate(x, y, return_dict=True)
    out = model.predict(x)[:, 0]
    p = 1 / (1 + np.exp(-out)) if logits else out
    pred = p > 0.5
    assert logs["binary_accuracy"] == pytest.approx(np.mean(pred == y))
    assert logs["precision"] == pytest.approx(precision_score(y, pred))
    assert logs["recall"] == pytest.approx(recall_score(y, pred))
    assert logs["auc"] == pytest.approx(roc_auc_score(y, p), abs=5e-3)
    assert logs["auc50"] == pytest.approx(roc_auc_score(y, p), abs=2e-2)
    assert logs["rmse"] == pytest.approx(np.sqrt(np.mean((out - y) ** 2)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_auc_clips_outputs_outside_0_1_as_keras_does(backend):
    """A linear output's AUC (values far outside [0, 1]): the ROC AUC of the outputs
    clipped to [0, 1], as Keras's AUC computes it (once 0.18 where 0.76 was right)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1))
    y = (x[:, 0] + rng.normal(size=200) > 0).astype(np.float64)
    model = fastnn.Sequential([Input(shape=(1,)), Dense(1)], backend=backend, dtype="float64")
    model.set_weights([np.array([[3.0]]), np.array([0.5])])  # outputs in about [-7, 7]
    model.compile("sgd", "mse", metrics=["AUC"])
    auc = model.evaluate(x, y, return_dict=True)["AUC"]
    clipped = np.clip(model.predict(x)[:, 0], 0, 1)
    assert auc == pytest.approx(roc_auc_score(y, clipped), abs=5e-3)
    assert 0.7 < auc < 0.8


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_class_metrics_and_their_names(backend, tmp_path):
    x, y = _data(n=120)
    model = fastnn.Sequential([Input(shape=(6,)), Dense(3, activation="softmax")], seed=0,
                              backend=backend, dtype="float64")  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=["acc", "sparse_categorical_accuracy",
                           fastnn.metrics.SparseTopKCategoricalAccuracy(k=2)])  # fmt: skip
    hist = model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y))
    assert set(hist.history) == {
        "loss", "acc", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy",
        "val_loss", "val_acc", "val_sparse_categorical_accuracy",
        "val_sparse_top_k_categorical_accuracy",
    }  # fmt: skip
    logs = model.evaluate(x, y, return_dict=True)
    out = model.predict(x)
    assert logs["acc"] == logs["sparse_categorical_accuracy"]
    assert logs["acc"] == pytest.approx(np.mean(out.argmax(1) == y))
    top2 = np.argsort(-out, axis=1)[:, :2]
    assert logs["sparse_top_k_categorical_accuracy"] == pytest.approx(
        np.mean([y[i] in top2[i] for i in range(len(y))])
    )
    path = tmp_path / "m.fnn"
    model.save(path)
    loaded = fastnn.load_model(path, backend=backend)
    assert loaded.metrics == model.metrics
    assert loaded.evaluate(x, y, return_dict=True) == logs
    onehot = fastnn.utils.to_categorical(y, 3)
    model.compile("adam", "categorical_crossentropy",
                  metrics=["categorical_accuracy", "top_k_categorical_accuracy"])  # fmt: skip
    logs = model.evaluate(x, onehot, return_dict=True)
    assert logs["top_k_categorical_accuracy"] == 1.0  # k = 5 > 3 classes


@pytest.mark.parametrize(
    "loss, metric, message",
    [
        ("sparse_categorical_crossentropy", "categorical_accuracy", "sparse_categorical"),
        ("categorical_crossentropy", "sparse_categorical_accuracy", "use 'categorical_acc"),
        ("sparse_categorical_crossentropy", "auc", "integer class labels"),
        ("mse", "accuracy", "classification loss"),
        ("mse", fastnn.metrics.AUC(curve="ROC"), None),
    ],
)
def test_metrics_that_do_not_fit_the_loss_are_refused(loss, metric, message):
    model = fastnn.Sequential([Input(shape=(4,)), Dense(3, activation="softmax")],
                              backend="numpy")  # fmt: skip
    if message is None:
        model.compile("adam", loss, metrics=[metric])
        return
    with pytest.raises(ValueError, match=message):
        model.compile("adam", loss, metrics=[metric])
    with pytest.raises(ValueError, match="curve"):
        fastnn.metrics.AUC(curve="PR")


def test_default_names_follow_keras():
    from fastnn.utils import clear_session

    clear_session()
    first = fastnn.Sequential([fastnn.Input((4,)), Dense(3), BatchNormalization(), Dense(2)])
    second = fastnn.Sequential([Dense(2, input_dim=3), Dropout(0.1), Dense(1, name="out")])
    assert [layer.name for layer in first.layers] == ["dense", "batch_normalization", "dense_1"]
    assert [layer.name for layer in second.layers] == ["dense_2", "dropout", "out"]
    assert (first.name, second.name) == ("sequential", "sequential_1")
    clear_session()
    assert Dense(1).name == "dense"


def test_weights_files_load_into_any_model_of_the_same_structure(tmp_path):
    source = fastnn.Sequential([Dense(3, input_dim=4), Dense(2)], backend="numpy")
    target = fastnn.Sequential([Dense(3, input_dim=4, name="a"), Dense(2, name="b")],
                               backend="numpy")  # fmt: skip
    source.save_weights(tmp_path / "w.weights.npz")
    target.load_weights(tmp_path / "w.weights.npz")
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_compile_takes_keras_3_execution_options_and_refuses_loss_weights():
    model = _pipeline_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  run_eagerly=True, jit_compile=False, steps_per_execution=4,
                  auto_scale_loss=False)  # fmt: skip
    assert model.metrics == ["accuracy"]
    for name in ("loss_weights", "weighted_metrics"):
        with pytest.raises(ValueError, match=f"{name} is not supported"):
            model.compile("adam", "sparse_categorical_crossentropy", **{name: [1.0]})
