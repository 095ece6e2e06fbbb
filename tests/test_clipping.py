"""Keras's gradient clipping (clipnorm per weight, global_clipnorm, clipvalue) on every
optimizer: the kernels == reference == the formula, training steps on each backend ==
reference, the model API == the formula applied to the unclipped gradient, direct
Optimizer.step, validation, and PyTorch's clip_grad_norm_/clip_grad_value_ (skips without
torch)."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import optimizers
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from fastnn.layers import Dense, Input
from tests.kernel_cases import HYPER, assert_close, compiled_backends, mlp3, rng_for

BACKENDS = compiled_backends()
CLIPS = {"clipnorm": 0.05, "global_clipnorm": 0.08, "clipvalue": 0.004}
ALL_OPTS = {
    "SGD": lambda **k: optimizers.SGD(0.1, **k),
    "momentum": lambda **k: optimizers.SGD(0.1, momentum=0.9, **k),
    "Adagrad": lambda **k: optimizers.Adagrad(0.05, **k),
    "RMSprop": lambda **k: optimizers.RMSprop(0.01, **k),
    "Adam": lambda **k: optimizers.Adam(0.01, **k),
    "AdamW": lambda **k: optimizers.AdamW(0.01, **k),
    "Nadam": lambda **k: optimizers.Nadam(0.01, **k),
}


@pytest.fixture(params=BACKENDS)
def mod(request):
    from fastnn import backend

    return backend.load(request.param)


def _hyper(opt_code, option, value):
    clip = [0.0] * C.N_CLIP
    index = {"clipnorm": C.H_CLIPNORM, "clipvalue": C.H_CLIPVALUE,
             "global_clipnorm": C.H_GLOBAL_CLIPNORM}[option]  # fmt: skip
    clip[index] = value
    return np.array([*HYPER[opt_code], *clip], dtype=np.float64)


def _keras_clip(grads, bounds, option, value):
    """Keras's _clip_gradients on the weights [a, b) of the flat gradient (float64)."""
    g = grads.astype(np.float64)
    if option == "clipvalue":
        return np.clip(g, -value, value)
    parts = [g[a:b] for a, b in bounds]
    if option == "clipnorm":
        return np.concatenate([p * value / max(np.linalg.norm(p), value) for p in parts])
    norm = np.sqrt(sum(float(np.sum(p * p)) for p in parts))
    return g * value * min(1.0 / norm, 1.0 / value)


def test_weight_bounds_follow_the_layers_weights():
    s = mlp3(C.MSE, np.float64, rng_for("bounds"))
    layers = s.plan[0]
    bounds = ref.weight_bounds(layers, s.n_params)
    sizes = [int(np.prod(w.shape)) for layer in s.model_layers for w in layer.weight_specs()]
    assert [b - a for a, b in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == s.n_params


@pytest.mark.parametrize("option", list(CLIPS))
def test_reference_clip_is_keras_formula(option):
    s = mlp3(C.MSE, np.float64, rng_for("clip-ref", option))
    g = rng_for("g", option).standard_normal(s.n_params) * 0.01
    g[:7] *= 40  # one weight far above the limit, others below
    got = g.copy()
    ref.clip_gradients(got, s.plan[0], C.ADAM, _hyper(C.ADAM, option, CLIPS[option]))
    want = _keras_clip(g, ref.weight_bounds(s.plan[0], s.n_params), option, CLIPS[option])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-17)
    assert not np.allclose(got, g)  # the limit bites
    off = g.copy()
    ref.clip_gradients(off, s.plan[0], C.ADAM, np.array(HYPER[C.ADAM]))  # no clip entries
    ref.clip_gradients(off, s.plan[0], C.ADAM, _hyper(C.ADAM, option, 0.0))  # zeros: off
    np.testing.assert_array_equal(off, g)


def test_non_finite_norm_poisons_the_gradient():
    s = mlp3(C.MSE, np.float64, rng_for("nan"))
    g = np.ones(s.n_params)
    g[3] = np.inf
    ref.clip_gradients(g, s.plan[0], C.SGD, _hyper(C.SGD, "global_clipnorm", 1.0))
    assert np.isnan(g).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("option", list(CLIPS))
def test_clip_kernels_match_reference(mod, dtype, option):
    s = mlp3(C.MSE, np.float64, rng_for("clip-k", option))
    g = (rng_for("gk", option).standard_normal(s.n_params) * 0.01).astype(dtype)
    g[:7] *= 40
    g[11] = np.nan if option == "clipvalue" else g[11]  # NaN passes the value clip
    hyper = _hyper(C.NADAM, option, CLIPS[option])
    want, got = g.copy(), g.copy()
    ref.clip_gradients(want, s.plan[0], C.NADAM, hyper)
    mod.clip_gradients(got, s.plan[0], C.NADAM, hyper)
    assert_close(got, want, dtype, k=4, what=option)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("option", list(CLIPS))
@pytest.mark.parametrize("opt", [C.MOMENTUM, C.ADAM, C.NADAM], ids=["momentum", "adam", "nadam"])
def test_train_steps_with_clipping_match_reference(mod, dtype, option, opt):
    s64 = mlp3(C.MSE, np.float64, rng_for("clip-train", option, opt))
    s = s64.astype(dtype)
    results = []
    for module in (ref, mod):
        b = s.buffers(n_state=max(1, C.STATE_SLOTS[opt]))
        hyper = _hyper(opt, option, CLIPS[option])
        for step in range(1, 4):
            module.train_step((s.x, s.y, s.sw), b.plan, b.net, b.work, (C.MSE, 0, *_no_metrics()),
                              (opt, hyper, np.zeros(1), step, 3))  # fmt: skip
        results.append((b.params.copy(), b.state.copy(), b.grads.copy()))
    for name, got, want in zip(("params", "state", "grads"), results[1], results[0]):
        assert_close(got, want, dtype, k=64, scale=2.0, what=name)


def _no_metrics():
    return np.zeros((0, C.M_COLS), np.int64), np.zeros(0)


def _model(backend, opt):
    model = fastnn.Sequential(
        [Input(shape=(4,)), Dense(5, activation="tanh"), Dense(3)],
        backend=backend, dtype="float64", seed=7,
    )  # fmt: skip
    model.compile(optimizer=opt, loss="mse")
    return model


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
@pytest.mark.parametrize("option", list(CLIPS))
def test_model_step_uses_the_clipped_gradient(backend, option):
    """SGD(lr=1) with clipping moves the weights by Keras's clip of the plain gradient."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 3)) * 5
    plain = _model(backend, optimizers.SGD(1.0))
    clipped = _model(backend, optimizers.SGD(1.0, **{option: CLIPS[option]}))
    w0 = plain.get_weights()
    plain.train_on_batch(x, y)
    clipped.train_on_batch(x, y)
    grads = [a - b for a, b in zip(w0, plain.get_weights())]
    flat = np.concatenate([g.ravel() for g in grads])
    sizes = np.cumsum([0, *[g.size for g in grads]])
    want = _keras_clip(flat, list(zip(sizes[:-1], sizes[1:])), option, CLIPS[option])
    got = np.concatenate([(a - b).ravel() for a, b in zip(w0, clipped.get_weights())])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    assert not np.allclose(got, flat)


@pytest.mark.parametrize("name", list(ALL_OPTS))
def test_every_optimizer_takes_the_options(name):
    for option, value in CLIPS.items():
        opt = ALL_OPTS[name](**{option: value})
        assert getattr(opt, option) == value and opt.clipping
        cfg = opt.get_config()
        assert cfg[option] == value
        again = type(opt)(**cfg)
        np.testing.assert_array_equal(again.hyper(), opt.hyper())
        tail = opt.hyper()[-C.N_CLIP :]
        assert tail[{"clipnorm": 0, "clipvalue": 1, "global_clipnorm": 2}[option]] == value
        assert len(opt.hyper()) == C.HYPER_LEN[opt.code] + C.N_CLIP
    assert len(ALL_OPTS[name]().hyper()) == C.HYPER_LEN[ALL_OPTS[name]().code]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "only one"),
     ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "only one"),
     ({"clipnorm": 0.0}, ValueError, "clipnorm must be > 0"),
     ({"clipvalue": -1.0}, ValueError, "clipvalue must be > 0"),
     ({"global_clipnorm": "1"}, TypeError, "global_clipnorm must be a number"),
     ({"clipnorm": float("inf")}, ValueError, "clipnorm must be finite")],
)  # fmt: skip
def test_bad_clip_options(kwargs, error, words):
    with pytest.raises(error, match=words):
        optimizers.Adam(**kwargs)


@pytest.mark.parametrize("option", list(CLIPS))
def test_direct_step_clips_without_touching_the_gradients(option):
    rng = np.random.default_rng(2)
    w = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    g = [rng.normal(size=(3, 4)) * 0.1, rng.normal(size=4) * 0.01]
    g0 = [a.copy() for a in g]
    w0 = [a.copy() for a in w]
    optimizers.SGD(1.0, **{option: CLIPS[option]}).step(w, g)
    for a, b in zip(g, g0):
        np.testing.assert_array_equal(a, b)
    flat = np.concatenate([a.ravel() for a in g0])
    want = _keras_clip(flat, [(0, 12), (12, 16)], option, CLIPS[option])
    got = np.concatenate([(a - b).ravel() for a, b in zip(w0, w)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("option", list(CLIPS))
def test_clipping_matches_torch(option):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 3)) * 5
    model = _model("numpy", optimizers.SGD(0.5, **{option: CLIPS[option]}))
    model.predict(x)
    weights = model.get_weights()
    lin1, lin2 = torch.nn.Linear(4, 5).double(), torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        for lin, w, b in ((lin1, *weights[:2]), (lin2, *weights[2:])):
            lin.weight.copy_(torch.tensor(w.T))
            lin.bias.copy_(torch.tensor(b))
    params = [lin1.weight, lin1.bias, lin2.weight, lin2.bias]
    model.train_on_batch(x, y)
    out = lin2(torch.tanh(lin1(torch.tensor(x))))
    ((out - torch.tensor(y)) ** 2).mean().backward()
    if option == "clipvalue":
        torch.nn.utils.clip_grad_value_(params, CLIPS[option])
    elif option == "global_clipnorm":
        torch.nn.utils.clip_grad_norm_(params, CLIPS[option])
    else:
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], CLIPS[option])
    torch.optim.SGD(params, lr=0.5).step()
    # torch divides by norm + 1e-6 where Keras divides by the norm
    for got, p in zip(model.get_weights(), params):
        want = p.detach().numpy()
        np.testing.assert_allclose(got, want.T if want.ndim == 2 else want, rtol=1e-5,
                                   atol=1e-7)  # fmt: skip
