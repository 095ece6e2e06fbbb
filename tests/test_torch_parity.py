"""Level 5 against PyTorch: forward, gradients and three optimizer steps == torch's.

A fastnn model built through the API gets its weights from outside (set_weights); the same
weights go into an equivalent ``torch.nn.Sequential``.  Keras hyper-parameter names map onto
torch's: epsilon -> eps, rho -> alpha, beta_1/beta_2 -> betas.  Skips without torch.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.layers import Dense
from fastnn.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop
from fastnn.regularizers import L1L2

torch = pytest.importorskip("torch")
F = torch.nn.functional

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
N, D, H1, H2, C = 16, 5, 8, 6, 3
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}

# family: (fastnn last activation, fastnn loss)
FAMILIES = {
    "softmax_sparse_ce": ("softmax", "sparse_categorical_crossentropy"),
    "sigmoid_bce": ("sigmoid", "binary_crossentropy"),
    "mse": (None, "mse"),
}

# name: (fastnn optimizer, torch optimizer factory) with the same hyper-parameters
OPTIMIZERS = {
    "sgd": (lambda: SGD(learning_rate=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "momentum": (
        lambda: SGD(learning_rate=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "nesterov": (
        lambda: SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    "adagrad": (
        lambda: Adagrad(learning_rate=0.1, initial_accumulator_value=0.1, epsilon=1e-7),
        lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1, eps=1e-7),
    ),
    "rmsprop": (
        lambda: RMSprop(learning_rate=0.01, rho=0.9, epsilon=1e-7),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-7),
    ),
    "adam": (
        lambda: Adam(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-7),
    ),
    "adamw": (
        lambda: AdamW(learning_rate=0.01, weight_decay=0.004, beta_1=0.9, beta_2=0.999),
        lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.004),
    ),
    "amsgrad": (
        lambda: Adam(learning_rate=0.01, beta_2=0.99, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-7, amsgrad=True),
    ),
    "adamw_amsgrad": (
        lambda: AdamW(learning_rate=0.01, weight_decay=0.1, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, eps=1e-7, weight_decay=0.1, amsgrad=True),
    ),
    "rmsprop_momentum": (
        lambda: RMSprop(learning_rate=0.01, momentum=0.9),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-7, momentum=0.9),
    ),
    "rmsprop_centered": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, centered=True),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.8, eps=1e-7, centered=True),
    ),
    "rmsprop_momentum_centered": (
        lambda: RMSprop(learning_rate=0.01, momentum=0.5, centered=True),
        lambda p: torch.optim.RMSprop(
            p, lr=0.01, alpha=0.9, eps=1e-7, momentum=0.5, centered=True
        ),  # fmt: skip
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores; these problems are tiny
    yield
    torch.set_num_threads(old)


def _data(family, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    if family == "softmax_sparse_ce":
        y = rng.integers(0, C, size=N)
    elif family == "sigmoid_bce":
        y = (rng.uniform(size=(N, C)) > 0.5).astype(np.float64)
    else:
        y = rng.normal(size=(N, C))
    return x, y


def _weights(seed=1):
    rng = np.random.default_rng(seed)
    shapes = [(D, H1), (H1,), (H1, H2), (H2,), (H2, C), (C,)]
    return [rng.normal(size=s) * (0.6 if len(s) == 2 else 0.1) for s in shapes]


def _fastnn_model(family, backend, dtype, weights, reg=None):
    last, _ = FAMILIES[family]
    model = fastnn.Sequential(
        [
            Dense(H1, activation="relu", input_dim=D, kernel_regularizer=reg),
            Dense(H2, activation="tanh"),
            Dense(C, activation=last),
        ],
        backend=backend,
        dtype=dtype,
    )
    model.set_weights(weights)
    return model


def _torch_model(weights, dtype):
    net = torch.nn.Sequential(
        torch.nn.Linear(D, H1),
        torch.nn.ReLU(),
        torch.nn.Linear(H1, H2),
        torch.nn.Tanh(),
        torch.nn.Linear(H2, C),
    ).to(TORCH_DTYPE[dtype])
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(linears, weights[::2], weights[1::2]):
            lin.weight.copy_(torch.tensor(w.T))  # Keras kernel (in, out) -> torch (out, in)
            lin.bias.copy_(torch.tensor(b))
    return net, linears


def _torch_loss(family, logits, y, sw=None):
    """The fastnn loss of ``family`` on the torch model's last Linear output."""
    if family == "softmax_sparse_ce":
        per = F.cross_entropy(logits, torch.as_tensor(y), reduction="none")
    elif family == "sigmoid_bce":
        target = torch.as_tensor(y, dtype=logits.dtype)
        per = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none").mean(1)
    else:
        target = torch.as_tensor(y, dtype=logits.dtype)
        per = F.mse_loss(logits, target, reduction="none").mean(1)
    if sw is not None:
        per = per * torch.as_tensor(sw, dtype=logits.dtype)
    return per.sum() / per.shape[0]


def _torch_output(family, logits):
    if family == "softmax_sparse_ce":
        return torch.softmax(logits, dim=1)
    if family == "sigmoid_bce":
        return torch.sigmoid(logits)
    return logits


def _torch_weights(linears):
    out = []
    for lin in linears:
        out += [lin.weight.detach().numpy().T, lin.bias.detach().numpy()]
    return out


def _tolerance(dtype):
    # float64: both sides compute the same formulas; only the summation order differs.
    # float32: rounding differences of ~1e-7 grow through 3 steps of the optimizer.
    return dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_matches_torch(family, dtype, backend):
    weights = _weights()
    x, _ = _data(family)
    model = _fastnn_model(family, backend, dtype, weights)
    net, _ = _torch_model(weights, dtype)
    with torch.no_grad():
        want = _torch_output(family, net(torch.tensor(x, dtype=TORCH_DTYPE[dtype]))).numpy()
    np.testing.assert_allclose(model.predict(x), want, **_tolerance(dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_match_torch_autograd(family, weighted, backend):
    """With SGD(lr=1) one train_on_batch moves every weight by exactly -gradient."""
    weights = _weights(seed=2)
    x, y = _data(family, seed=3)
    sw = np.random.default_rng(4).uniform(0.2, 2.0, size=N) if weighted else None
    reg = L1L2(0.0, 0.01) if weighted else None  # a kernel penalty on the first layer
    model = _fastnn_model(family, backend, "float64", weights, reg)
    model.compile(optimizer=SGD(learning_rate=1.0), loss=FAMILIES[family][1])
    loss = model.train_on_batch(x, y, sample_weight=sw)
    grads = [w0 - w1 for w0, w1 in zip(weights, model.get_weights())]

    net, linears = _torch_model(weights, "float64")
    t_loss = _torch_loss(family, net(torch.tensor(x)), y, sw)
    if reg is not None:
        t_loss = t_loss + reg.l2 * (linears[0].weight ** 2).sum()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    t_grads = []
    for lin in linears:
        t_grads += [lin.weight.grad.numpy().T, lin.bias.grad.numpy()]
    for g, tg in zip(grads, t_grads):
        assert g.shape == tg.shape
        np.testing.assert_allclose(g, tg, rtol=1e-9, atol=1e-12)
        assert np.abs(tg).max() > 1e-4  # a real gradient, not all zeros


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_three_optimizer_steps_match_torch(family, opt, dtype, backend):
    weights = _weights(seed=5)
    x, y = _data(family, seed=6)
    make_ours, make_torch = OPTIMIZERS[opt]
    model = _fastnn_model(family, backend, dtype, weights)
    model.compile(optimizer=make_ours(), loss=FAMILIES[family][1])
    net, linears = _torch_model(weights, dtype)
    topt = make_torch(net.parameters())
    tx = torch.tensor(x, dtype=TORCH_DTYPE[dtype])
    tol = _tolerance(dtype)
    for step in range(3):
        loss = model.train_on_batch(x.astype(dtype), y)  # the whole batch: no shuffling
        topt.zero_grad()
        t_loss = _torch_loss(family, net(tx), y)
        t_loss.backward()
        topt.step()
        assert loss == pytest.approx(t_loss.item(), rel=tol["rtol"]), step
    got = model.get_weights()
    want = _torch_weights(linears)
    moved = 0.0
    for g, w, w0 in zip(got, want, weights):
        np.testing.assert_allclose(g, w, **tol)
        moved = max(moved, float(np.abs(w - w0).max()))
    assert moved > 1e-3  # the three steps changed the weights
