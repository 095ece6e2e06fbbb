"""Keras 3's activations, losses and Nadam against PyTorch, through the model API: forward,
gradients (SGD with lr 1) and three Nadam steps == torch's.  Skips without torch.

torch.nn.ELU / SELU / GELU / SiLU / Softplus; HuberLoss (delta 1, mean over outputs),
KLDivLoss on log(clip(p)) with clipped targets (Keras clips both to [1e-7, 1]),
PoissonNLLLoss(log_input=False, eps=1e-7) (torch adds eps inside the log as Keras does);
NAdam with momentum_decay=1.0 (Keras's momentum schedule 0.96**t; torch's default 0.004
decays far more slowly, so the default NAdam is a different optimizer).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.layers import Activation, Dense
from fastnn.optimizers import SGD, Nadam

torch = pytest.importorskip("torch")
F = torch.nn.functional

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
N, D, H1, H2, C = 16, 5, 8, 6, 3
EPS = 1e-7
TORCH_ACTS = {"elu": torch.nn.ELU(), "selu": torch.nn.SELU(), "gelu": torch.nn.GELU(),
              "silu": torch.nn.SiLU(), "swish": torch.nn.SiLU(),
              "softplus": torch.nn.Softplus()}  # fmt: skip
# loss: (last activation, torch loss of the model's output and the targets)
LOSSES = {
    "huber": (None, lambda out, y: F.huber_loss(out, y, delta=1.0, reduction="none").mean(1)),
    "kl_divergence": (
        "softmax",
        lambda out, y: F.kl_div(
            torch.log(out.clamp(EPS, 1)), y.clamp(EPS, 1), reduction="none"
        ).sum(1),
    ),
    "poisson": (
        "softplus",
        lambda out, y: F.poisson_nll_loss(
            out, y, log_input=False, full=False, eps=EPS, reduction="none"
        ).mean(1),
    ),
}


def _weights(seed):
    rng = np.random.default_rng(seed)
    shapes = [(D, H1), (H1,), (H1, H2), (H2,), (H2, C), (C,)]
    return [rng.normal(size=s) * (0.6 if len(s) == 2 else 0.1) for s in shapes]


def _targets(loss, rng):
    if loss == "kl_divergence":
        return rng.dirichlet(np.ones(C), N)
    if loss == "poisson":
        return rng.poisson(1.5, (N, C)).astype(np.float64)
    return rng.normal(size=(N, C)) * 2


def _models(act1, act2, last, backend, dtype, weights):
    """A fastnn model (act1 on a Dense, act2 as an Activation layer after a linear Dense)
    and the same torch model."""
    model = fastnn.Sequential(
        [Dense(H1, activation=act1, input_dim=D), Dense(H2), Activation(act2),
         Dense(C, activation=last)],
        backend=backend, dtype=dtype,
    )  # fmt: skip
    model.set_weights(weights)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    layers = [torch.nn.Linear(D, H1), TORCH_ACTS[act1], torch.nn.Linear(H1, H2),
              TORCH_ACTS[act2], torch.nn.Linear(H2, C)]  # fmt: skip
    if last == "softmax":
        layers.append(torch.nn.Softmax(dim=1))
    elif last == "softplus":
        layers.append(torch.nn.Softplus())
    net = torch.nn.Sequential(*layers).to(tdt)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(linears, weights[::2], weights[1::2]):
            lin.weight.copy_(torch.tensor(w.T))
            lin.bias.copy_(torch.tensor(b))
    return model, net, linears, tdt


def _torch_weights(linears):
    out = []
    for lin in linears:
        out += [lin.weight.detach().numpy().T, lin.bias.detach().numpy()]
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


ACT_PAIRS = [("elu", "selu"), ("gelu", "softplus"), ("silu", "gelu"), ("swish", "elu")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("acts", ACT_PAIRS, ids="-".join)
@pytest.mark.parametrize("loss", list(LOSSES))
def test_gradients_match_torch_autograd(loss, acts, backend):
    """SGD(lr=1): one train_on_batch moves every weight by exactly -gradient (float64)."""
    weights = _weights(2)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(N, D)), _targets(loss, rng)
    last, t_loss_fn = LOSSES[loss]
    model, net, linears, _ = _models(*acts, last, backend, "float64", weights)
    np.testing.assert_allclose(model.predict(x), net(torch.tensor(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-13)  # fmt: skip
    model.compile(optimizer=SGD(learning_rate=1.0), loss=loss)
    value = model.train_on_batch(x, y)
    grads = [w0 - w1 for w0, w1 in zip(weights, model.get_weights())]
    t_loss = t_loss_fn(net(torch.tensor(x)), torch.tensor(y)).mean()
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-11)
    for g, lin_grad in zip(grads, _torch_weights_grads(linears)):
        np.testing.assert_allclose(g, lin_grad, rtol=1e-8, atol=1e-11)
        assert np.abs(lin_grad).max() > 1e-5


def _torch_weights_grads(linears):
    out = []
    for lin in linears:
        out += [lin.weight.grad.numpy().T, lin.bias.grad.numpy()]
    return out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_three_nadam_steps_match_torch(dtype, backend):
    weights = _weights(5)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(N, D)), _targets("huber", rng)
    model, net, linears, tdt = _models("gelu", "elu", None, backend, dtype, weights)
    model.compile(optimizer=Nadam(learning_rate=0.01, epsilon=1e-7), loss="huber")
    topt = torch.optim.NAdam(net.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-7,
                             momentum_decay=1.0)  # fmt: skip
    tx, ty = torch.tensor(x, dtype=tdt), torch.tensor(y, dtype=tdt)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-6)
    # NAdam keeps its step count, hence its momentum schedule, in the default dtype (made
    # at the first step): float32 would round the schedule's coefficients to ~1e-8
    old_default = torch.get_default_dtype()
    torch.set_default_dtype(tdt)
    try:
        for step in range(3):
            value = model.train_on_batch(x.astype(dtype), y)
            topt.zero_grad()
            t_loss = LOSSES["huber"][1](net(tx), ty).mean()
            t_loss.backward()
            topt.step()
            assert value == pytest.approx(t_loss.item(), rel=tol["rtol"]), step
    finally:
        torch.set_default_dtype(old_default)
    for g, w in zip(model.get_weights(), _torch_weights(linears)):
        np.testing.assert_allclose(g, w, **tol)


def test_torch_default_nadam_differs_from_keras():
    """Why momentum_decay=1.0 above: torch's default schedule is another optimizer."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    a = torch.optim.NAdam([p], lr=0.1)
    b = torch.optim.NAdam([q], lr=0.1, momentum_decay=1.0)
    for _ in range(3):
        for opt, prm in ((a, p), (b, q)):
            opt.zero_grad()
            (prm**2).sum().backward()
            opt.step()
    w = np.ones(3)
    opt = Nadam(learning_rate=0.1)
    for _ in range(3):
        opt.step(w, 2 * w)
    np.testing.assert_allclose(w, q.detach().numpy(), rtol=1e-6)
    assert np.abs(w - p.detach().numpy()).max() > 1e-4
