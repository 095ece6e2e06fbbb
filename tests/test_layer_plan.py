"""The layer plan: Input, Flatten anywhere, BatchNormalization and Normalization through the
one engine, on every CPU backend; the plan's layout; Keras semantics; model files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn import backend as fastnn_backend
from fastnn import gradcheck
from fastnn.kernels import codes as C
from fastnn.layers import (
    Activation,
    BatchNormalization,
    Dense,
    Dropout,
    Flatten,
    Input,
    Normalization,
)

CPU_BACKENDS = [b for b in fastnn_backend.available() if b != "cuda"]


def _data(n=64, shape=(6,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)) * 2 + 1
    y = (x.reshape(n, -1).sum(axis=1) > shape[-1]).astype(np.int64) + (x.reshape(n, -1)[:, 0] > 1)
    return x.astype(np.float32), y % classes


def _bn_mlp(backend, dtype="float32", seed=0, n_in=6):
    return fastnn.Sequential(
        [Input(shape=(n_in,)), Dense(8), BatchNormalization(), Activation("relu"),
         Dense(3, activation="softmax")],
        seed=seed, backend=backend, dtype=dtype,
    )  # fmt: skip


# -- Input ---------------------------------------------------------------------------------
def test_input_declares_the_shape_and_is_exported_twice():
    assert fastnn.Input is Input
    model = fastnn.Sequential([Input(shape=(5,)), Dense(2)], backend="numpy")
    assert model.built and model.input_shape == (5,) and model.get_weights()[0].shape == (5, 2)
    assert [type(layer) for layer in model.layers] == [Dense]  # Input is not a layer
    legacy = fastnn.Sequential([Dense(2, input_dim=5)], backend="numpy")
    shaped = fastnn.Sequential([Dense(2, input_shape=(5,))], backend="numpy")
    assert legacy.input_shape == shaped.input_shape == (5,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: fastnn.Sequential([Dense(2), Input(shape=(3,))]), "Input must be the first"),
        (lambda: Input(shape=(2, 3, 4, 5)), "1 to 3 dimensions"),
        (lambda: Input(shape=0), "positive"),
        (
            lambda: fastnn.Sequential([Input(shape=(3,)), Dense(2, input_dim=4)]),
            "declares input shape",
        ),
        (
            lambda: fastnn.Sequential([Dense(2, input_dim=3), Dense(2, input_dim=2)]),
            "only the first layer",
        ),
        (lambda: fastnn.Sequential([Input(shape=(3, 4)), Dense(2)]), "one vector per sample"),
        (lambda: fastnn.Sequential([Dense(2, name="a"), Dense(2, name="a")]), "unique"),
        (lambda: fastnn.Sequential([Dense(2, name="a/b")]), "without '/'"),
    ],
)
def test_bad_structures_are_refused_when_built(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        assert make().built


def test_a_wrong_sample_shape_says_what_to_change():
    model = fastnn.Sequential([Input(shape=(4, 4, 1)), Flatten(), Dense(2)], backend="numpy")
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        model.predict(np.zeros((3, 4, 4)))
    flat = fastnn.Sequential([Input(shape=(16,)), Dense(2)], backend="numpy")
    with pytest.raises(ValueError, match="reshape"):
        flat.predict(np.zeros((3, 4, 4)))


# -- Flatten anywhere ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_flatten_between_layers_is_a_view(backend):
    """Dense on the last axis of (4, 3) samples, Flatten, Dense: the plan has no row for
    Flatten (the next layer reads the same memory) and predictions match NumPy."""
    model = fastnn.Sequential(
        [Input(shape=(4, 3)), Dense(5, activation="tanh"), Flatten(), Dense(2)],
        seed=1, backend=backend, dtype="float64",
    )  # fmt: skip
    assert model.built
    plan = model._engine.plan_for(7)
    assert plan.layers.shape[0] == 2
    assert plan.layers[1, C.P_IN_OFF] == plan.layers[0, C.P_OUT_OFF]
    assert tuple(plan.layers[0, C.P_OUT0 : C.P_OUT2 + 1]) == (1, 4, 5)
    assert tuple(plan.layers[1, C.P_IN0 : C.P_IN2 + 1]) == (1, 1, 20)
    x = np.random.default_rng(0).normal(size=(7, 4, 3))
    w0, b0, w1, b1 = model.get_weights()
    want = np.tanh(x @ w0 + b0).reshape(7, 20) @ w1 + b1
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-12, atol=1e-12)
    assert model.layers[1].output_shape == (20,)


def test_flatten_model_gradients_match_finite_differences():
    model = fastnn.Sequential(
        [Input(shape=(3, 4)), Dense(3, activation="sigmoid"), Flatten(), Dropout(0.3),
         Dense(2, activation="softmax")],
        seed=2, backend="numpy", dtype="float64",
    )  # fmt: skip
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(9, 3, 4))
    result = gradcheck(model, x, np.arange(9) % 2)
    assert result.passed and result.checked == model._engine.n_params, result


# -- BatchNormalization ----------------------------------------------------------------------
def test_batchnorm_weights_summary_and_counts():
    model = _bn_mlp("numpy")
    bn = model.layers[1]
    assert model.built
    assert [w.shape for w in bn.get_weights()] == [(8,), (8,), (8,), (8,)]
    np.testing.assert_array_equal(bn.get_weights()[0], 1)  # gamma
    np.testing.assert_array_equal(bn.get_weights()[3], 1)  # moving variance
    assert len(bn.trainable_weights) == 2 and len(bn.non_trainable_weights) == 2
    assert model.count_params() == 6 * 8 + 8 + 4 * 8 + 8 * 3 + 3
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "batch_normalization (BatchNormalization)" in text and "(None, 8)" in text
    assert "Total params: 115 (460 B)" in text
    assert "Trainable params: 99 (396 B)" in text
    assert "Non-trainable params: 16 (64 B)" in text
    no_affine = fastnn.Sequential(
        [Input(shape=(4,)), BatchNormalization(center=False, scale=False)]
    )
    assert [w.shape for w in no_affine.get_weights()] == [(4,), (4,)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_follows_keras_formulas(backend, dtype):
    """One training step: moving = moving * momentum + batch * (1 - momentum) with the
    biased batch variance; inference then uses the moving statistics."""
    x, y = _data(n=20)
    model = fastnn.Sequential(
        [Input(shape=(6,)), BatchNormalization(momentum=0.8, epsilon=1e-2),
         Dense(3, activation="softmax")],
        seed=0, backend=backend, dtype=dtype,
    )  # fmt: skip
    model.compile(fastnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=20, shuffle=False, verbose=0)
    gamma, beta, mm, mv = model.layers[0].get_weights()
    x64 = x.astype(np.float64)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(mm, 0.2 * x64.mean(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(mv, 0.8 + 0.2 * x64.var(axis=0), rtol=tol, atol=tol)
    normalised = (x64 - mm) / np.sqrt(mv.astype(np.float64) + 1e-2) * gamma + beta
    w, b = model.layers[1].get_weights()
    logits = normalised @ w + b
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), want, rtol=100 * tol, atol=100 * tol)


def test_batchnorm_gradients_match_finite_differences():
    model = fastnn.Sequential(
        [Input(shape=(5,)), Dense(6, activation="tanh"), BatchNormalization(),
         Activation("relu"), Dense(4), BatchNormalization(center=False),
         Dense(3, activation="softmax")],
        seed=3, backend="numpy", dtype="float64",
    )  # fmt: skip
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(2).normal(size=(11, 5))
    result = gradcheck(model, x, np.arange(11) % 3)
    assert result.passed and result.checked == model._engine.n_params, result
    layer = BatchNormalization(momentum=0.5)
    layer.build((4,), "float64", backend="numpy")
    layer.set_weights([np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4), np.zeros(4), np.ones(4)])
    assert gradcheck(layer, np.random.default_rng(3).normal(size=(7, 4)) * 3 + 2).passed


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batchnorm_low_level_api_matches_the_model(backend):
    layer = BatchNormalization(momentum=0.9)
    x = np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32) * 3
    layer.build((3,), "float32", backend=backend)
    out = layer.forward(x, training=True).copy()
    want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.get_weights()[2], 0.1 * x.mean(0), rtol=1e-5, atol=1e-6)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(dx, 0, atol=1e-5)  # a constant gradient is removed by the mean
    np.testing.assert_allclose(layer.grads[1], 10)  # dbeta = sum of dout
    layer.forward(x, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(x))


def test_batchnorm_survives_save_and_load(tmp_path):
    x, y = _data()
    model = _bn_mlp("numpy")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "bn.fnn"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert {"weights/batch_normalization/moving_mean.npy",
            "weights/batch_normalization/moving_variance.npy"} <= names  # fmt: skip
    loaded = fastnn.load_model(path, backend="numpy")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y) == model.evaluate(x, y)


def test_a_version_1_model_file_still_loads(tmp_path):
    """Files written before the layer plan (weights/000.npy in get_weights order, input_dim
    in the model config) load with the same weights and optimizer state."""
    x, y = _data()
    model = fastnn.Sequential(
        [Dense(5, activation="relu", input_dim=6), Dropout(0.2), Dense(3, activation="softmax")],
        seed=0,
        backend="numpy",
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    new, old = tmp_path / "v2.fnn", tmp_path / "v1.fnn"
    model.save(new)
    members = {"weights/dense/kernel.npy": "weights/000.npy",
               "weights/dense/bias.npy": "weights/001.npy",
               "weights/dense_1/kernel.npy": "weights/002.npy",
               "weights/dense_1/bias.npy": "weights/003.npy"}  # fmt: skip
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        config = json.loads(src.read("config.json"))
        config["version"] = 1
        config["model"]["input_dim"] = config["model"].pop("input_shape")[0]
        config["arrays"] = {members.get(k, k): v for k, v in config["arrays"].items()}
        dst.writestr("config.json", json.dumps(config))
        for info in src.infolist():
            if info.filename != "config.json":
                dst.writestr(members.get(info.filename, info.filename), src.read(info))
    loaded = fastnn.load_model(old, backend="numpy")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded._engine.host_state(), model._engine.host_state())
    future = tmp_path / "v3.fnn"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(future, "w") as dst:
        config = json.loads(src.read("config.json"))
        config["version"] = 3
        dst.writestr("config.json", json.dumps(config))
    with pytest.raises(ValueError, match="newer fastnn"):
        fastnn.load_model(future)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batchnorm_mlp_reaches_known_accuracy_on_digits(backend):
    (x_tr, y_tr), (x_te, y_te) = fastnn.datasets.load_digits(seed=0)
    model = fastnn.Sequential(
        [fastnn.Input(shape=(64,)), Dense(128), BatchNormalization(), Activation("relu"),
         Dense(10, activation="softmax")],
        seed=0, backend=backend,
    )  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.003), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(x_tr, y_tr, epochs=15, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_te, y_te)
    assert accuracy >= 0.97


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_warm_up_and_rollback_leave_the_moving_statistics_alone(backend):
    """The zero-batch warm-up step runs on copies; the snapshot that fit and train_on_batch
    restore after a non-finite step holds the moving statistics with the weights."""
    x, y = _data()
    model = _bn_mlp(backend)
    model.compile(fastnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    before = model.get_weights()
    model._warm_up(model._engine.workspace(16, 1))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    snap = model._snapshot()
    model.train_on_batch(x, y)
    assert not np.array_equal(model.layers[1].get_weights()[2], before[4])  # moving mean
    model._restore(snap)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


# -- Normalization -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_normalization_adapts_and_travels_with_the_model(backend, tmp_path):
    x, y = _data(n=200)
    raw = x * 40 + 300
    norm = Normalization()
    norm.adapt(raw)
    np.testing.assert_allclose(norm.get_weights()[0], raw.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.get_weights()[1], raw.astype(np.float64).var(0), rtol=1e-5)
    model = fastnn.Sequential([norm, Dense(8, activation="relu"), Dense(3, activation="softmax")],
                              seed=0, backend=backend)  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(raw, y, epochs=30, batch_size=16, verbose=0)
    mean, var = norm.get_weights()
    stand = ((raw - mean) / np.sqrt(var)).astype(np.float32)
    twin = fastnn.Sequential([Dense(8, activation="relu", input_dim=6),
                              Dense(3, activation="softmax")], backend=backend)  # fmt: skip
    twin.set_weights(model.get_weights()[2:])
    np.testing.assert_allclose(model.predict(raw), twin.predict(stand), rtol=1e-4, atol=1e-5)
    assert model.evaluate(raw, y)[1] > 0.9
    path = tmp_path / "n.fnn"
    model.save(path)
    loaded = fastnn.load_model(path, backend=backend)
    np.testing.assert_array_equal(loaded.predict(raw), model.predict(raw))


def test_normalization_with_given_statistics_and_bad_input():
    layer = Normalization(mean=[1.0, 2.0], variance=[4.0, 0.0])
    out = layer.forward(np.array([[3.0, 2.0]]))
    np.testing.assert_allclose(out, [[1.0, 0.0]])
    with pytest.raises(ValueError, match="both mean and variance"):
        Normalization(mean=[1.0])
    with pytest.raises(ValueError, match="variance must be >= 0"):
        Normalization(mean=[0.0], variance=[-1.0])
    with pytest.raises(ValueError, match="axis must be -1"):
        Normalization(axis=0)
    with pytest.raises(ValueError, match="data must have samples of shape"):
        layer.adapt(np.zeros((4, 3)))


# -- backends ------------------------------------------------------------------------------
def test_a_backend_without_a_kind_refuses_the_model_at_build(monkeypatch):
    """A backend exports the kinds it runs (KINDS); a model holding another one is refused
    when it is built, naming the layer and the backends that run it."""
    import types

    from fastnn.kernels import reference

    partial = types.ModuleType("partial")
    partial.__dict__.update(vars(reference))
    partial.KINDS = frozenset({C.DENSE, C.DROPOUT, C.ACTIVATION})
    monkeypatch.setitem(fastnn_backend.MODULES, "partial", "partial")
    monkeypatch.setitem(fastnn_backend._loaded, "partial", partial)
    fastnn.Sequential([Input(shape=(3,)), Dense(2)], backend="partial")  # runs
    with pytest.raises(ValueError, match=r"batch_normalization.*cython, numba, numpy"):
        assert _bn_mlp("partial", n_in=3).built


# -- PyTorch parity ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_mlp_steps_match_pytorch(backend, dtype):
    """Three Adam steps of Input -> Dense -> BatchNormalization -> relu -> Dense(softmax) ==
    torch's Linear -> BatchNorm1d(momentum=1 - momentum, eps) -> ReLU -> Linear with
    cross-entropy: losses, every trainable weight and the moving mean; the moving variance
    follows Keras (biased batch variance) where torch keeps the unbiased one."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    n, d, h, c, momentum, eps = 16, 7, 9, 4, 0.9, 1e-3
    xs = [rng.normal(size=(n, d)) * 2 + 1 for _ in range(3)]
    ys = [rng.integers(0, c, n) for _ in range(3)]
    weights = [rng.normal(size=(d, h)) * 0.5, rng.normal(size=h) * 0.1,
               rng.uniform(0.5, 1.5, h), rng.normal(size=h) * 0.1, np.zeros(h), np.ones(h),
               rng.normal(size=(h, c)) * 0.5, rng.normal(size=c) * 0.1]  # fmt: skip
    model = fastnn.Sequential(
        [Input(shape=(d,)), Dense(h), BatchNormalization(momentum=momentum, epsilon=eps),
         Activation("relu"), Dense(c, activation="softmax")],
        backend=backend, dtype=dtype,
    )  # fmt: skip
    model.set_weights(weights)
    model.compile(fastnn.optimizers.Adam(0.01, epsilon=1e-7), "sparse_categorical_crossentropy")
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    lin1, bn, lin2 = (torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h, eps=eps,
                      momentum=1 - momentum), torch.nn.Linear(h, c))  # fmt: skip
    net = torch.nn.Sequential(lin1, bn, torch.nn.ReLU(), lin2).to(tdtype)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor(weights[0].T))
        lin1.bias.copy_(torch.tensor(weights[1]))
        bn.weight.copy_(torch.tensor(weights[2]))
        bn.bias.copy_(torch.tensor(weights[3]))
        lin2.weight.copy_(torch.tensor(weights[6].T))
        lin2.bias.copy_(torch.tensor(weights[7]))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, eps=1e-7)
    keras_var = np.ones(h)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    net.train()
    for x, y in zip(xs, ys):
        loss = model.train_on_batch(x, y)
        xt = torch.tensor(x, dtype=tdtype)
        with torch.no_grad():  # the batch this step normalises, before the update
            z = lin1(xt).double().numpy()
        keras_var = keras_var * momentum + z.var(axis=0) * (1 - momentum)
        opt.zero_grad()
        want = torch.nn.functional.cross_entropy(net(xt), torch.tensor(y))
        want.backward()
        opt.step()
        assert loss == pytest.approx(want.item(), rel=tol["rtol"], abs=tol["atol"])
    got = model.get_weights()
    with torch.no_grad():
        want_w = [w.double().numpy() for w in (lin1.weight.T, lin1.bias, bn.weight, bn.bias,
                                               bn.running_mean)]  # fmt: skip
        want_w += [keras_var, lin2.weight.T.double().numpy(), lin2.bias.double().numpy()]
    for i, (g, w) in enumerate(zip(got, want_w)):
        if i in (1, 4) and dtype == "float32":
            # the bias before a BatchNormalization has a zero gradient up to roundoff, on
            # which Adam steps by up to lr either way (only that bound can be compared), and
            # the moving mean adds (1 - momentum) times that bias to each batch mean
            bound = 3 * 0.01 * 2 * (1 if i == 1 else 1 - momentum)
            np.testing.assert_allclose(g, w, atol=bound, err_msg=f"weight {i}")
            continue
        np.testing.assert_allclose(g, w, **tol, err_msg=f"weight {i}")


def _frozen_bn_case(rng, d, h, c):
    """Weights of Dense(h) -> BatchNormalization -> relu -> Dense(c): non-trivial gamma,
    beta and moving statistics (a pretrained block)."""
    return [rng.normal(size=(d, h)) * 0.5, rng.normal(size=h) * 0.1,
            rng.uniform(0.5, 1.5, h), rng.normal(size=h) * 0.3, rng.normal(size=h),
            rng.uniform(0.5, 3.0, h), rng.normal(size=(h, c)) * 0.5,
            rng.normal(size=c) * 0.1]  # fmt: skip


def _frozen_bn_mlp(backend, dtype, weights, d, h, c):
    model = fastnn.Sequential(
        [Input(shape=(d,)), Dense(h), BatchNormalization(momentum=0.9, epsilon=1e-2),
         Activation("relu"), Dense(c, activation="softmax")],
        backend=backend, dtype=dtype,
    )  # fmt: skip
    model.set_weights(weights)
    model.layers[1].trainable = False
    model.compile(fastnn.optimizers.Adam(0.01, epsilon=1e-7), "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_frozen_batchnorm_after_dense_steps_match_pytorch(backend, dtype):
    """Three Adam steps of Input -> Dense -> frozen BatchNormalization -> relu ->
    Dense(softmax) == torch's Linear -> BatchNorm1d in eval() with weight and bias not
    requiring gradients -> ReLU -> Linear (Keras 3 runs a frozen BatchNormalization in
    inference mode, also in fit): the losses, the Dense weights (the gradient flows through
    the normalisation with the moving statistics) and the four BatchNormalization weights,
    unchanged; on every backend == the reference backend."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    n, d, h, c, eps = 16, 7, 9, 4, 1e-2
    xs = [rng.normal(size=(n, d)) * 2 + 1 for _ in range(3)]
    ys = [rng.integers(0, c, n) for _ in range(3)]
    weights = _frozen_bn_case(rng, d, h, c)
    model = _frozen_bn_mlp(backend, dtype, weights, d, h, c)
    reference = _frozen_bn_mlp("numpy", dtype, weights, d, h, c)
    assert model._engine.n_train == d * h + h + h * c + c
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    lin1, bn, lin2 = (torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h, eps=eps, momentum=0.1),
                      torch.nn.Linear(h, c))  # fmt: skip
    net = torch.nn.Sequential(lin1, bn, torch.nn.ReLU(), lin2).to(tdtype)
    with torch.no_grad():
        for p, w in ((lin1.weight, weights[0].T), (lin1.bias, weights[1]),
                     (bn.weight, weights[2]), (bn.bias, weights[3]),
                     (bn.running_mean, weights[4]), (bn.running_var, weights[5]),
                     (lin2.weight, weights[6].T), (lin2.bias, weights[7])):  # fmt: skip
            p.copy_(torch.tensor(w))
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    net.eval()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01, eps=1e-7)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    for x, y in zip(xs, ys):
        loss = model.train_on_batch(x, y)
        assert loss == reference.train_on_batch(x, y) or backend != "numpy"
        opt.zero_grad()
        want = torch.nn.functional.cross_entropy(net(torch.tensor(x, dtype=tdtype)),
                                                 torch.tensor(y))  # fmt: skip
        want.backward()
        opt.step()
        assert loss == pytest.approx(want.item(), rel=tol["rtol"], abs=tol["atol"])
    got = model.get_weights()
    with torch.no_grad():
        want_w = [w.double().numpy() for w in (lin1.weight.T, lin1.bias, bn.weight, bn.bias,
                  bn.running_mean, bn.running_var, lin2.weight.T, lin2.bias)]  # fmt: skip
    for i, (g, w, r) in enumerate(zip(got, want_w, reference.get_weights())):
        np.testing.assert_allclose(g, w, **tol, err_msg=f"weight {i} vs torch")
        np.testing.assert_allclose(g, r, **tol, err_msg=f"weight {i} vs the reference")
    for i in (2, 3, 4, 5):  # gamma, beta, moving mean and variance: untouched
        np.testing.assert_array_equal(got[i], np.asarray(weights[i], dtype))
    assert not np.allclose(got[1], weights[1])  # the gradient reached the Dense before it


def test_frozen_batchnorm_gradients_match_finite_differences():
    """The whole model's gradients through frozen BatchNormalizations (with and without
    gamma) and a frozen layer's low-level backward, == central differences (float64)."""
    model = fastnn.Sequential(
        [Input(shape=(5,)), Dense(6, activation="tanh"), BatchNormalization(),
         Activation("relu"), Dense(4), BatchNormalization(scale=False),
         Dense(3, activation="softmax")],
        seed=3, backend="numpy", dtype="float64",
    )  # fmt: skip
    model.build((5,))
    rng = np.random.default_rng(6)
    for i in (1, 4):
        layer = model.layers[i]
        c = layer.input_shape[-1]
        layer.set_weights([rng.uniform(0.5, 1.5, c) for _ in layer.get_weights()])
        layer.trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = rng.normal(size=(11, 5))
    result = gradcheck(model, x, np.arange(11) % 3)
    assert result.passed and result.checked == model._engine.n_train, result
    layer = BatchNormalization(epsilon=0.1)
    layer.build((4,), "float64", backend="numpy")
    layer.set_weights([np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4), np.linspace(-2, 2, 4),
                       np.linspace(0.2, 3, 4)])  # fmt: skip
    layer.trainable = False
    result = gradcheck(layer, rng.normal(size=(7, 4)) * 3 + 2)
    assert result.passed and result.checked > 0, result


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_frozen_batchnorm_low_level_api_runs_in_inference_mode(backend):
    """A frozen layer's forward uses the moving statistics even with training=True (and
    leaves them), its backward is dout * gamma / sqrt(moving_variance + epsilon)."""
    layer = BatchNormalization(momentum=0.9, epsilon=1e-2)
    x = np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32) * 3
    layer.build((3,), "float32", backend=backend)
    weights = [np.array([0.5, 1.0, 2.0]), np.array([0.1, -0.2, 0.3]), np.array([1.0, -1, 0]),
               np.array([0.5, 2.0, 4.0])]  # fmt: skip
    layer.set_weights(weights)
    layer.trainable = False
    out = layer.forward(x, training=True).copy()
    scale = weights[0] / np.sqrt(weights[3] + 1e-2)
    np.testing.assert_allclose(out, (x - weights[2]) * scale + weights[1], rtol=1e-5, atol=1e-5)
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    dout = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dout), dout * scale, rtol=1e-6, atol=1e-6)
    layer.trainable = True
    layer.forward(x, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(dout)


def test_a_batchnorm_output_counts_as_logits_for_the_loss_check():
    """compile's loss/output check sees what the last layer that changes its input emits:
    after a BatchNormalization, unbounded values, whatever the Dense before it applied."""
    model = fastnn.Sequential(
        [Input(shape=(4,)), Dense(3, activation="softmax"), BatchNormalization(), Dropout(0.1)],
        backend="numpy",
    )
    with pytest.raises(ValueError, match="expects probabilities"):
        model.compile("adam", "categorical_crossentropy")
    model.compile("adam", fastnn.losses.CategoricalCrossentropy(from_logits=True))
