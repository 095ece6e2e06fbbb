"""Sequence models through the API: three Adam steps == PyTorch (Keras weight layouts and
gate orders), every backend == the reference, save/load, bad token ids, the refusal of the
backends that do not run the kinds, and no allocation per step."""

from __future__ import annotations

import gc
import re
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn.layers import GRU, LSTM, Dense, Dropout, Embedding, Flatten, SimpleRNN
from fastnn.optimizers import Adam
from tests.test_rnn_kernels import SEQ_BACKENDS

N, T, F, V = 6, 5, 3, 11


def _seq_data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, T, F)), rng.integers(0, 3, size=N)


def _token_data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(N, T)), rng.integers(0, 2, size=(N, 1)).astype(float)


#: name: (layers builder, data builder, loss)
CASES = {
    "simple_rnn": (lambda: [SimpleRNN(5, input_shape=(T, F)), Dense(3, activation="softmax")],
                   _seq_data, "sparse_categorical_crossentropy"),
    "lstm_seq": (lambda: [LSTM(5, return_sequences=True, input_shape=(T, F)), Flatten(),
                          Dense(3, activation="softmax")],
                 _seq_data, "sparse_categorical_crossentropy"),
    "gru": (lambda: [GRU(5, input_shape=(T, F)), Dense(3, activation="softmax")], _seq_data,
            "sparse_categorical_crossentropy"),
    "stacked": (lambda: [LSTM(4, return_sequences=True, input_shape=(T, F)), Dropout(0.0),
                         GRU(5, return_sequences=True), SimpleRNN(3),
                         Dense(3, activation="softmax")],
                _seq_data, "sparse_categorical_crossentropy"),
    "embedding_lstm": (lambda: [Embedding(V, 4, input_shape=(T,)), LSTM(5),
                                Dense(1, activation="sigmoid")],
                       _token_data, "binary_crossentropy"),
}  # fmt: skip


def _model(name, backend, dtype="float64"):
    layers, data, loss = CASES[name]
    model = fastnn.Sequential(layers(), seed=1, backend=backend, dtype=dtype)
    model.compile(optimizer=Adam(learning_rate=0.05, epsilon=1e-7), loss=loss)
    return model, data()


def _fit3(model, x, y):
    hist = model.fit(x, y, epochs=3, batch_size=N, shuffle=False, verbose=0)
    return hist.history["loss"], [w.copy() for w in model.get_weights()]


# -- PyTorch ---------------------------------------------------------------------------


def _torch_layers(model, torch):
    """torch modules holding the fastnn model's weights (Keras layout -> torch layout)."""
    mods = []
    for layer in model.layers:
        w = [torch.tensor(a) for a in layer.get_weights()]
        if isinstance(layer, Embedding):
            mod = torch.nn.Embedding(*w[0].shape, dtype=w[0].dtype)
            mod.weight.data[...] = w[0]
        elif isinstance(layer, (SimpleRNN, LSTM, GRU)):
            mod = _torch_rnn(layer, w, torch)
        elif isinstance(layer, Dense):
            mod = torch.nn.Linear(*w[0].shape, dtype=w[0].dtype)
            mod.weight.data[...], mod.bias.data[...] = w[0].T, w[1]
        else:
            mod = None
        mods.append((layer, mod))
    return mods


def _torch_rnn(layer, w, torch):
    kernel, rec, bias = w
    f, u = kernel.shape[0], layer.units
    cls = {SimpleRNN: torch.nn.RNN, LSTM: torch.nn.LSTM, GRU: torch.nn.GRU}[type(layer)]
    mod = cls(f, u, batch_first=True, dtype=kernel.dtype)
    if isinstance(layer, GRU):  # Keras z, r, h -> torch r, z, n
        perm = torch.cat([torch.arange(u, 2 * u), torch.arange(u), torch.arange(2 * u, 3 * u)])
        kernel, rec, b_in, b_rec = kernel[:, perm], rec[:, perm], bias[0][perm], bias[1][perm]
    else:  # one bias: torch's second bias stays zero and frozen
        b_in, b_rec = bias, torch.zeros_like(bias)
        mod.bias_hh_l0.requires_grad_(False)
    mod.weight_ih_l0.data[...], mod.weight_hh_l0.data[...] = kernel.T, rec.T
    mod.bias_ih_l0.data[...], mod.bias_hh_l0.data[...] = b_in, b_rec
    return mod


def _torch_forward(mods, x, torch):
    h = x
    for layer, mod in mods:
        if isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, (SimpleRNN, LSTM, GRU)):
            h = mod(h)[0]
            h = h if layer.return_sequences else h[:, -1]
        elif mod is not None:
            h = mod(h)
    return h


def _torch_fit3(mods, x, y, loss, torch):
    params = [p for _, m in mods if m is not None for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05, eps=1e-7)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        logits = _torch_forward(mods, x, torch)
        if loss == "binary_crossentropy":
            value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        else:
            value = torch.nn.functional.cross_entropy(logits, y)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    return losses


def _torch_weights(layer, mod, torch):
    """The torch module's weights in the fastnn layer's get_weights layout."""
    if isinstance(layer, Embedding):
        return [mod.weight.detach().numpy()]
    if isinstance(layer, Dense):
        return [mod.weight.detach().numpy().T, mod.bias.detach().numpy()]
    k, r = mod.weight_ih_l0.detach().numpy().T, mod.weight_hh_l0.detach().numpy().T
    b_in, b_rec = mod.bias_ih_l0.detach().numpy(), mod.bias_hh_l0.detach().numpy()
    if isinstance(layer, GRU):
        u = layer.units
        perm = np.r_[u : 2 * u, 0:u, 2 * u : 3 * u]  # torch r, z, n -> Keras z, r, h
        return [k[:, perm], r[:, perm], np.stack([b_in[perm], b_rec[perm]])]
    return [k, r, b_in + b_rec]


@pytest.mark.parametrize("backend", ["numpy", *SEQ_BACKENDS])
@pytest.mark.parametrize("name", list(CASES))
def test_three_adam_steps_match_torch(name, backend):
    torch = pytest.importorskip("torch")
    model, (x, y) = _model(name, backend)
    mods = _torch_layers(model, torch)
    losses, weights = _fit3(model, x, y)
    loss = CASES[name][2]
    tx = torch.tensor(x) if name != "embedding_lstm" else torch.tensor(x, dtype=torch.long)
    ty = torch.tensor(y) if loss == "binary_crossentropy" else torch.tensor(y, dtype=torch.long)
    want_losses = _torch_fit3(mods, tx, ty, loss, torch)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-9, atol=1e-12)
    want = [w for layer, m in mods if m is not None for w in _torch_weights(layer, m, torch)]
    assert len(want) == len(weights)
    for got, exp in zip(weights, want):
        np.testing.assert_allclose(got, exp, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", SEQ_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["stacked", "embedding_lstm"])
def test_training_steps_match_the_reference(name, dtype, backend):
    ref_model, (x, y) = _model(name, "numpy", dtype)
    model, _ = _model(name, backend, dtype)
    want_losses, want = _fit3(ref_model, x, y)
    losses, got = _fit3(model, x, y)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(losses, want_losses, rtol=tol, atol=tol)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


# -- API: errors, save/load, refusal, allocation ----------------------------------------


def test_bad_token_ids_are_refused_naming_the_largest():
    model, (x, y) = _model("embedding_lstm", "numpy")
    bad = x.copy()
    bad[2, 3] = V + 4
    with pytest.raises(ValueError, match=rf"largest id {V + 4}\b"):
        model.fit(bad, y, epochs=1, verbose=0)
    bad[2, 3] = -1
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model.predict(bad, verbose=0)
    with pytest.raises(ValueError, match="integer token ids"):
        model.predict(x + 0.5, verbose=0)
    with pytest.raises(TypeError, match="x must be numeric"):
        model.predict(np.full(x.shape, "a"), verbose=0)
    with pytest.raises(TypeError, match="integer token ids, got dtype bool"):
        model.predict(x > 3, verbose=0)
    with pytest.raises(ValueError, match="must have 5 features per sample"):
        model.predict(x[:, :4], verbose=0)
    # float arrays holding integers are ids too (Keras casts them)
    np.testing.assert_array_equal(
        model.predict(x.astype(np.float64), verbose=0), model.predict(x, verbose=0)
    )


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="units"):
        LSTM(0)
    with pytest.raises(ValueError, match="activation must be one of"):
        SimpleRNN(3, activation="softmax")
    with pytest.raises(ValueError, match="recurrent_activation"):
        GRU(3, recurrent_activation="elu")
    with pytest.raises(ValueError, match="reset_after"):
        GRU(3, reset_after=False)
    with pytest.raises(TypeError, match="return_sequences"):
        LSTM(3, return_sequences=1)
    # Keras's third (SimpleRNN) and fourth (LSTM, GRU) positional argument is use_bias: the
    # arguments after the activations are keyword-only, not read as return_sequences
    with pytest.raises(TypeError, match="positional"):
        SimpleRNN(4, "tanh", True)
    for kind in (LSTM, GRU):
        with pytest.raises(TypeError, match="positional"):
            kind(4, "tanh", "sigmoid", True)
    with pytest.raises(ValueError, match="input_dim"):
        Embedding(0, 3)
    with pytest.raises(ValueError, match=r"\(N, timesteps, features\)"):
        fastnn.Sequential([LSTM(3, input_shape=(4,)), Dense(1)], backend="numpy").build((4,))
    with pytest.raises(ValueError, match="Embedding layer must be the model's first layer"):
        fastnn.Sequential([Dense(3, input_shape=(4, 2)), Embedding(5, 2)], backend="numpy")
    model = fastnn.Sequential([Dense(3)], backend="numpy")  # not built: refused at add too
    with pytest.raises(ValueError, match="Embedding layer must be the model's first layer"):
        model.add(Embedding(5, 2))
    assert len(model.layers) == 1


def test_weight_layouts_and_initializers_follow_keras():
    model = fastnn.Sequential(
        [Embedding(V, 4, input_shape=(T,)), LSTM(6, return_sequences=True), GRU(5),
         Dense(1)], seed=0, backend="numpy",
    )  # fmt: skip
    model.build((T,))
    shapes = [[w.shape for w in layer.get_weights()] for layer in model.layers]
    assert shapes == [[(V, 4)], [(4, 24), (6, 24), (24,)], [(6, 15), (5, 15), (2, 15)],
                      [(5, 1), (1,)]]  # fmt: skip
    emb, lstm, gru = (layer.get_weights() for layer in model.layers[:3])
    assert np.abs(emb[0]).max() <= 0.05
    np.testing.assert_allclose(lstm[1] @ lstm[1].T, np.eye(6), atol=1e-6)  # orthogonal rows
    np.testing.assert_allclose(gru[1] @ gru[1].T, np.eye(5), atol=1e-6)
    np.testing.assert_array_equal(lstm[2], np.r_[np.zeros(6), np.ones(6), np.zeros(12)])
    np.testing.assert_array_equal(gru[2], np.zeros((2, 15)))


@pytest.mark.parametrize("backend", SEQ_BACKENDS[:1] or ["numpy"])
def test_save_and_load_keep_the_predictions(backend, tmp_path):
    model, (x, y) = _model("embedding_lstm", backend, "float32")
    model.fit(x, y, epochs=2, batch_size=3, verbose=0)
    path = tmp_path / "seq.fastnn"
    model.save(path)
    loaded = fastnn.load_model(path, backend=backend)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    stacked, (xs, ys) = _model("stacked", backend, "float32")
    stacked.save(tmp_path / "stacked.fastnn")
    again = fastnn.load_model(tmp_path / "stacked.fastnn", backend=backend)
    np.testing.assert_array_equal(again.predict(xs, verbose=0), stacked.predict(xs, verbose=0))


def test_backends_without_the_kinds_refuse_them_at_build(monkeypatch):
    """cuda.KINDS leaves the sequence kinds out: a model holding one is refused at build,
    naming the layer and the backends that run it (cython among them), also without
    numba-cuda (a stand-in module with cuda's KINDS)."""
    import types

    from fastnn.kernels import codes as C
    from fastnn.kernels import reference as ref
    from tests.test_conv import _cuda_kinds

    kinds = _cuda_kinds()
    assert not kinds & {C.EMBEDDING, C.SIMPLE_RNN, C.LSTM, C.GRU}
    stand_in = types.ModuleType("cuda_kinds")
    stand_in.__dict__.update(vars(ref))
    stand_in.KINDS = kinds
    monkeypatch.setitem(fastnn.backend.MODULES, "cuda_kinds", "cuda_kinds")
    monkeypatch.setitem(fastnn.backend._loaded, "cuda_kinds", stand_in)
    runners = [n for n in ("cython", "numba", "numpy") if fastnn.backend.runs_kinds(n, [C.LSTM])]
    assert "numpy" in runners and ("cython" in runners) == ("cython" in SEQ_BACKENDS)
    model = fastnn.Sequential([LSTM(3, input_shape=(T, F)), Dense(1)], backend="cuda_kinds")
    with pytest.raises(ValueError, match=rf"cannot run layer 'lstm\w*' \(LSTM\); the "
                       rf"{', '.join(runners)} backends run it"):  # fmt: skip
        model.build((T, F))


@pytest.mark.skipif("numba" not in SEQ_BACKENDS, reason="numba backend not available")
def test_numba_sequence_epoch_allocates_nothing_per_step():
    """NRT's allocation counter: the compiled epoch allocates the same for 25 and 100
    steps of an Embedding -> LSTM -> GRU -> Dense model."""
    from numba.core.runtime import _nrt_python, rtsys

    _nrt_python.memsys_enable_stats()
    model = fastnn.Sequential([Embedding(V, 4, input_shape=(T,)), LSTM(5, return_sequences=True),
                               GRU(3), Dense(1, activation="sigmoid")], seed=0,
                              backend="numba")  # fmt: skip
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, size=(100, T)), rng.integers(0, 2, size=(100, 1))

    def allocations(xs, ys):
        before = rtsys.get_allocation_stats()
        model.fit(xs, ys, epochs=1, batch_size=4, verbose=0)
        after = rtsys.get_allocation_stats()
        return after.alloc - before.alloc, after.mi_alloc - before.mi_alloc

    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # compile, workspaces
    few = allocations(x[:100], y[:100])  # 25 steps
    many = allocations(np.tile(x, (4, 1)), np.tile(y, (4, 1)))  # 100 steps
    assert many == few
    assert few[0] < 200


def test_an_automatic_backend_choice_takes_one_that_runs_the_layers(monkeypatch):
    from fastnn import backend as B
    from fastnn.kernels import codes as C

    monkeypatch.delenv("FASTNN_BACKEND", raising=False)
    monkeypatch.setattr(B, "_chosen", None)
    model = fastnn.Sequential([GRU(3, input_shape=(T, F)), Dense(1)])
    model.build((T, F))
    assert B.runs_kinds(model.backend_name, [C.GRU])
    assert model.backend_name == next(n for n in B.AUTO_ORDER if B.runs_kinds(n, [C.GRU]))
    mlp = fastnn.Sequential([Dense(2, input_shape=(3,))])
    mlp.build((3,))
    assert mlp.backend_name == B.get_backend()  # the first that loads, as before


def _cython_stack_call(name, mutate):
    """forward_stack and backward_stack of the cython backend on a model's plan after
    ``mutate(layers)``: the plan check's error."""
    cy = fastnn.backend.load("cython")
    model, (x, y) = _model(name, "numpy", "float32")
    model.build((T,) if name == "embedding_lstm" else (T, F))
    eng = model._engine
    ws = eng.workspace(N, 1)
    layers = ws.plan.args[0].copy()
    mutate(layers)
    plan = (layers, *ws.plan.args[1:])
    net = (eng.params, eng.grads, np.zeros((2, eng.n_params), np.float32), eng.nontrain)
    xb = np.zeros((N, T if name == "embedding_lstm" else T * F), np.float32)
    with pytest.raises(ValueError) as err:
        cy.forward_stack(xb, plan, net, ws.work, 0, 0, 0)
    return str(err.value)


def _set(l, col, value):
    def mutate(layers):
        layers[l, col] = value

    return mutate


@pytest.mark.skipif("cython" not in SEQ_BACKENDS, reason="cython backend not built")
def test_the_cython_plan_check_rejects_malformed_sequence_rows_before_any_loop():
    from fastnn.kernels import codes as C

    big = 1 << 40
    # stacked: LSTM(4, seq) 0, Dropout 1, GRU(5, seq) 2, SimpleRNN(3) 3, Dense 4
    cases = [
        ("stacked", _set(0, C.P_W0, big), "kernel \\(W0\\)"),
        ("stacked", _set(0, C.P_W1, -5), "recurrent kernel \\(W1\\)"),
        ("stacked", _set(2, C.P_W2, big), "bias \\(W2\\)"),
        ("stacked", _set(0, C.P_SAVE_OFF, big), "workspace"),
        ("stacked", _set(3, C.P_IN1, 1 << 30), "."),  # T larger than the input read
        ("stacked", _set(2, C.P_UNITS, 9), "recurrent row maps"),
        ("stacked", _set(0, C.P_RETURN_SEQ, 2), "recurrent row maps"),
        ("stacked", _set(3, C.P_REC_ACT, C.SOFTMAX), "recurrent activation code"),
        ("stacked", _set(0, C.P_ACT, C.ELU), "activation code"),
        ("embedding_lstm", _set(0, C.P_VOCAB, big), "embeddings \\(W0\\)"),
        ("embedding_lstm", _set(0, C.P_VOCAB, 0), "input_dim"),
        ("embedding_lstm", _set(0, C.P_OUT1, T + 1), "Embedding row maps"),
        ("embedding_lstm", _set(1, C.P_SAVE_OFF, -1), "workspace"),
    ]
    for name, mutate, match in cases:
        msg = _cython_stack_call(name, mutate)
        assert re.search(match, msg), (match, msg)
        assert "layer " in msg


@pytest.mark.skipif("cython" not in SEQ_BACKENDS, reason="cython backend not built")
def test_cython_sequence_epoch_allocates_nothing_per_step():
    """tracemalloc: a 24-epoch fit of an Embedding -> LSTM -> GRU -> Dense model keeps and
    peaks at what a 3-epoch fit does (1050 more steps: 16 bytes each would show)."""
    model = fastnn.Sequential([Embedding(V, 4, input_shape=(T,)), LSTM(5, return_sequences=True),
                               GRU(3), Dense(1, activation="sigmoid")], seed=0,
                              backend="cython")  # fmt: skip
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, size=(200, T)), rng.integers(0, 2, size=(200, 1))
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)  # workspaces

    def memory(epochs):
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            model.fit(x, y, epochs=epochs, batch_size=4, verbose=0)
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return current - base, peak - base

    short, long = memory(3), memory(24)
    assert 16 * 21 * 50 > 2 * 8192
    assert abs(long[0] - short[0]) < 8192, (short, long)
    assert abs(long[1] - short[1]) < 8192, (short, long)
