"""Baseline MLPs for the benchmarks: plain NumPy, PyTorch eager and (when installed) JAX.

Each baseline trains the same network as fastnn: Dense layers with ReLU hidden activations, a
softmax output with sparse categorical cross-entropy (mean over the batch), Adam with PyTorch's
formula and fastnn's defaults (lr 1e-3, betas 0.9/0.999, epsilon 1e-7), Glorot-uniform weights
and zero biases.  In the networks of ``BATCHNORM`` every hidden Dense is followed by batch
normalisation (Keras' defaults: momentum 0.99, epsilon 1e-3; gamma 1, beta 0) before its ReLU.
Each offers ``train_step(x, y)`` (one optimizer step on one batch, returns the loss) and
``train_epoch(X, Y, batch_size, rng)`` (one shuffled pass, returns the mean loss).

The NumPy MLP is written the way a user would write it — ``@``, NumPy expressions with their
temporaries, fancy indexing for the batches — so it is the honest NumPy baseline, not a
strawman: ``tests/test_bench_cli.py`` checks its gradients and its Adam step against fastnn.
"""

from __future__ import annotations

import numpy as np

#: Benchmark networks: name -> (input width, hidden widths, classes, batch size).
NETWORKS = {
    "a": (784, (128,), 10, 64),
    "d": (64, (64,), 10, 32),
    "c": (784, (1024, 1024), 10, 256),
    "bn": (784, (256,), 10, 64),
    # convolutional networks on 28x28x1 images fed as rows of 784 (fastnn.bench.cnn)
    "lenet": (784, (), 10, 32),
    "convnet": (784, (), 10, 128),
}
#: The convolutional networks (their layers: fastnn.bench.cnn.CNNS).
CNN = frozenset({"lenet", "convnet"})
#: Networks whose hidden Dense layers feed a batch normalisation before the ReLU.
BATCHNORM = frozenset({"bn"})
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3

#: Adam hyper-parameters shared by every implementation (fastnn's defaults).
ADAM = {"lr": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


def network_sizes(name: str) -> list[int]:
    """Layer widths [in, hidden..., out] of benchmark network ``name``."""
    n_in, hidden, n_out, _ = NETWORKS[name]
    return [n_in, *hidden, n_out]


def network_label(name: str) -> str:
    """E.g. ``a 784-128-10 b64``; ``bn 784-256bn-10 b64`` with batch normalisation."""
    if name in CNN:
        from .cnn import label

        return label(name)
    _, _, _, batch = NETWORKS[name]
    sizes = [str(s) for s in network_sizes(name)]
    if name in BATCHNORM:
        sizes[1:-1] = [f"{s}bn" for s in sizes[1:-1]]
    return f"{name} {'-'.join(sizes)} b{batch}"


def glorot_weights(sizes, seed: int = 0, dtype=np.float32, batchnorm=False) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] with W (in, out) Glorot-uniform and zero biases; with
    ``batchnorm`` each hidden layer's [W, b] is followed by [gamma (ones), beta (zeros)]."""
    rng = np.random.default_rng(seed)
    weights = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(dtype))
        weights.append(np.zeros(fan_out, dtype))
        if batchnorm and i < len(sizes) - 2:
            weights += [np.ones(fan_out, dtype), np.zeros(fan_out, dtype)]
    return weights


def synthetic_data(n: int, n_in: int, n_classes: int = 10, seed: int = 0, dtype=np.float32):
    """(X (n, n_in) uniform in [0, 1), y (n,) int64 labels): an MNIST-shaped stand-in."""
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in), dtype=np.float32).astype(dtype, copy=False), rng.integers(
        0, n_classes, n
    )


def layer_slots(n_weights: int, batchnorm: bool) -> list[tuple]:
    """Per Dense layer: the indices of (W, b, gamma, beta) in a glorot_weights list (gamma
    and beta None where the layer has no batch normalisation)."""
    i, out = 0, []
    while i < n_weights:
        if batchnorm and i + 2 < n_weights:
            out.append((i, i + 1, i + 2, i + 3))
            i += 4
        else:
            out.append((i, i + 1, None, None))
            i += 2
    return out


# ---------------------------------------------------------------------------------------
# NumPy


def step_epoch(train_step, X, Y, batch_size: int, rng) -> float:
    """One shuffled epoch of ``train_step(x, y)`` calls on NumPy batches; the mean loss."""
    order = rng.permutation(len(X))
    total = 0.0
    for start in range(0, len(X), batch_size):
        idx = order[start : start + batch_size]
        total += train_step(X[idx], Y[idx]) * len(idx)
    return total / len(X)


class NumpyMLP:
    """An MLP trained with hand-written NumPy: forward, softmax-CE, backward, Adam (and, with
    ``batchnorm``, batch normalisation of each hidden layer with its moving statistics)."""

    name = "numpy"

    def __init__(self, sizes, seed: int = 0, dtype=np.float32, batchnorm=False, **adam):
        hp = {**ADAM, **adam}
        self.lr, self.beta_1, self.beta_2, self.eps = (
            hp["lr"],
            hp["beta_1"],
            hp["beta_2"],
            hp["epsilon"],
        )
        self.batchnorm = batchnorm
        self.params = glorot_weights(sizes, seed, dtype, batchnorm)
        self.moving = [[np.zeros(w, dtype), np.ones(w, dtype)] for w in sizes[1:-1]]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def get_weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]

    def set_weights(self, weights) -> None:
        for p, w in zip(self.params, weights):
            p[...] = w

    def _layers(self):
        return layer_slots(len(self.params), self.batchnorm)

    def forward(self, x):
        """(activations [x, h1, ..., logits], per-layer batch-norm caches)."""
        acts, caches = [x], []
        layers = self._layers()
        for k, (w, b, g, be) in enumerate(layers):
            z = acts[-1] @ self.params[w] + self.params[b]
            cache = None
            if g is not None:
                mean, var = z.mean(axis=0), z.var(axis=0)
                inv = 1 / np.sqrt(var + BN_EPSILON)
                xhat = (z - mean) * inv
                z = xhat * self.params[g] + self.params[be]
                mm, mv = self.moving[k]
                mm *= BN_MOMENTUM
                mm += (1 - BN_MOMENTUM) * mean
                mv *= BN_MOMENTUM
                mv += (1 - BN_MOMENTUM) * var
                cache = (xhat, inv)
            caches.append(cache)
            acts.append(np.maximum(z, 0) if k < len(layers) - 1 else z)
        return acts, caches

    def loss_and_grads(self, x, y):
        """(mean sparse softmax cross-entropy, gradients in params order)."""
        acts, caches = self.forward(x)
        logits = acts[-1]
        n = x.shape[0]
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
        dz = e / s
        dz[rows, y] -= 1
        dz /= n
        grads = [None] * len(self.params)
        layers = self._layers()
        for k in range(len(layers) - 1, -1, -1):
            w, b, g, be = layers[k]
            if g is not None:
                xhat, inv = caches[k]
                grads[be] = dz.sum(axis=0)
                grads[g] = (dz * xhat).sum(axis=0)
                dz = (self.params[g] * inv / n) * (n * dz - grads[be] - xhat * grads[g])
            grads[w] = acts[k].T @ dz
            grads[b] = dz.sum(axis=0)
            if k > 0:
                dz = (dz @ self.params[w].T) * (acts[k] > 0)
        return loss, grads

    def adam(self, grads) -> None:
        """One Adam step (PyTorch's formula) over every parameter."""
        self.t += 1
        b1, b2 = self.beta_1, self.beta_2
        step_size = self.lr / (1 - b1**self.t)
        bc2_sqrt = np.sqrt(1 - b2**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            p -= step_size * m / (np.sqrt(v) / bc2_sqrt + self.eps)

    def train_step(self, x, y) -> float:
        loss, grads = self.loss_and_grads(x, y)
        self.adam(grads)
        return loss

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


# ---------------------------------------------------------------------------------------
# PyTorch (imported lazily)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_adam(torch, params, hp):
    """(optimizer, "fused" or "foreach"): fused Adam where this torch supports it on the CPU."""
    kwargs = {"lr": hp["lr"], "betas": (hp["beta_1"], hp["beta_2"]), "eps": hp["epsilon"]}
    try:
        probe = torch.nn.Parameter(torch.zeros(2))
        probe_opt = torch.optim.Adam([probe], fused=True, **kwargs)
        probe.grad = torch.ones(2)
        probe_opt.step()
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kwargs), "foreach"
    return torch.optim.Adam(params, fused=True, **kwargs), "fused"


def torch_epoch(impl, X, Y, batch_size: int, rng) -> float:
    """One shuffled epoch of a PyTorch baseline's ``train_step`` over tensors built once
    (``impl.tensors``), indexing batches on the torch side; the mean loss."""
    Xt, Yt = impl.tensors(X, Y)
    order = impl.torch.from_numpy(rng.permutation(len(X)))
    total = 0.0
    for start in range(0, len(X), batch_size):
        idx = order[start : start + batch_size]
        total += impl.train_step(Xt[idx], Yt[idx]) * len(idx)
    return total / len(X)


class TorchMLP:
    """The same MLP in PyTorch eager mode: nn.Sequential, CrossEntropyLoss, Adam."""

    name = "torch"

    def __init__(self, sizes, seed: int = 0, threads: int | None = None, weights=None,
                 batchnorm=False, **adam):  # fmt: skip
        import torch

        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                if batchnorm:  # Keras' momentum 0.99 is torch's 0.01
                    layers.append(torch.nn.BatchNorm1d(fan_out, eps=BN_EPSILON,
                                                       momentum=1 - BN_MOMENTUM))  # fmt: skip
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        if weights is None:
            weights = glorot_weights(sizes, seed, batchnorm=batchnorm)
        self.set_weights(weights)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer, self.adam_impl = _torch_adam(
            torch, self.model.parameters(), {**ADAM, **adam}
        )

    def _weighted(self):
        nn = self.torch.nn
        return [m for m in self.model if isinstance(m, (nn.Linear, nn.BatchNorm1d))]

    def set_weights(self, weights) -> None:
        with self.torch.no_grad():
            for m, w, b in zip(self._weighted(), weights[0::2], weights[1::2]):
                w = w.T if isinstance(m, self.torch.nn.Linear) else w
                m.weight.copy_(self.torch.from_numpy(np.ascontiguousarray(w)))
                m.bias.copy_(self.torch.from_numpy(b))

    def get_weights(self) -> list[np.ndarray]:
        out = []
        for m in self._weighted():
            w = m.weight.detach().numpy()
            w = w.T if isinstance(m, self.torch.nn.Linear) else w
            out += [w.copy(), m.bias.detach().numpy().copy()]
        return out

    def tensors(self, x, y):
        """(float32 tensor, int64 tensor) sharing memory with x, y where possible."""
        return self.torch.from_numpy(np.asarray(x)), self.torch.from_numpy(
            np.asarray(y, dtype=np.int64)
        )

    def train_step(self, x, y) -> float:
        if isinstance(x, np.ndarray):
            x, y = self.tensors(x, y)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return torch_epoch(self, X, Y, batch_size, rng)


# ---------------------------------------------------------------------------------------
# JAX (only when importable): the whole step under one jax.jit


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def jax_adam(jnp, params, m, v, t, grads, hp=ADAM):
    """One Adam step (PyTorch's formula) over lists of JAX arrays, inside a jitted step:
    the new (params, m, v, t)."""
    lr, b1, b2, eps = hp["lr"], hp["beta_1"], hp["beta_2"], hp["epsilon"]
    t = t + 1
    step_size = lr / (1 - b1**t)
    bc2_sqrt = jnp.sqrt(1 - b2**t)
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
    params = [
        p - step_size * mi / (jnp.sqrt(vi) / bc2_sqrt + eps) for p, mi, vi in zip(params, m, v)
    ]
    return params, m, v, t


class JaxMLP:
    """The same MLP in JAX: loss, gradients and Adam in one ``jax.jit``-compiled step."""

    name = "jax"

    def __init__(self, sizes, seed: int = 0, weights=None, batchnorm=False, **adam):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        hp = {**ADAM, **adam}
        if weights is None:
            weights = glorot_weights(sizes, seed, batchnorm=batchnorm)
        self.params = [jnp.asarray(w) for w in weights]
        self.m = [jnp.zeros_like(p) for p in self.params]
        self.v = [jnp.zeros_like(p) for p in self.params]
        self.t = jnp.zeros((), jnp.float32)
        hidden = sizes[1:-1] if batchnorm else []
        self.moving = [f(w) for w in hidden for f in (jnp.zeros, jnp.ones)]
        layout = layer_slots(len(weights), batchnorm)

        def loss_fn(params, x, y):
            h, stats = x, []
            for k, (w, b, g, be) in enumerate(layout):
                h = h @ params[w] + params[b]
                if g is not None:
                    mean, var = h.mean(axis=0), h.var(axis=0)
                    h = (h - mean) * jax.lax.rsqrt(var + BN_EPSILON) * params[g] + params[be]
                    stats += [mean, var]
                if k < len(layout) - 1:
                    h = jnp.maximum(h, 0)
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), stats

        def step(params, m, v, t, moving, x, y):
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
            moving = [mo * BN_MOMENTUM + st * (1 - BN_MOMENTUM) for mo, st in zip(moving, stats)]
            params, m, v, t = jax_adam(jnp, params, m, v, t, grads, hp)
            return params, m, v, t, moving, loss

        self._step = jax.jit(step, donate_argnums=(0, 1, 2, 4))

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self.params]

    def train_step(self, x, y) -> float:
        self.params, self.m, self.v, self.t, self.moving, loss = self._step(
            self.params, self.m, self.v, self.t, self.moving, x, y
        )
        return float(loss)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


# ---------------------------------------------------------------------------------------
# fastnn with the same network


def fastnn_model(sizes, backend: str, seed: int = 0, weights=None, dtype="float32",
                 batchnorm=False):  # fmt: skip
    """A compiled fastnn Sequential of the benchmark network (Adam, sparse CE)."""
    import fastnn
    from fastnn.layers import Activation, BatchNormalization, Dense

    layers = [fastnn.Input(shape=(sizes[0],))]
    for width in sizes[1:-1]:
        if batchnorm:
            layers += [Dense(width), BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON),
                       Activation("relu")]  # fmt: skip
        else:
            layers.append(Dense(width, activation="relu"))
    layers.append(Dense(sizes[-1], activation="softmax"))
    model = fastnn.Sequential(layers, seed=seed, backend=backend, dtype=dtype)
    opt = fastnn.optimizers.Adam(
        learning_rate=ADAM["lr"],
        beta_1=ADAM["beta_1"],
        beta_2=ADAM["beta_2"],
        epsilon=ADAM["epsilon"],
    )
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    if weights is None:
        weights = glorot_weights(sizes, seed, dtype, batchnorm)
    model.set_weights(_with_moving_statistics(weights, batchnorm))
    return model


def _with_moving_statistics(weights, batchnorm):
    """A glorot_weights list in fastnn's get_weights order: each batch normalisation's
    [gamma, beta] followed by its moving mean (zeros) and variance (ones)."""
    out = []
    for w, b, g, be in layer_slots(len(weights), batchnorm):
        out += [weights[w], weights[b]]
        if g is not None:
            out += [weights[g], weights[be], np.zeros_like(weights[g]), np.ones_like(weights[g])]
    return out


class FastnnMLP:
    """fastnn behind the baselines' interface: ``train_on_batch`` and ``fit(epochs=1)``."""

    def __init__(self, sizes, backend: str, seed: int = 0, weights=None, batchnorm=False):
        self.backend = backend
        self.name = f"fastnn-{backend}"
        self.batchnorm = batchnorm
        self.model = fastnn_model(sizes, backend, seed, weights, batchnorm=batchnorm)

    def get_weights(self) -> list[np.ndarray]:
        """Trainable weights, in the baselines' order."""
        self.model._engine.pull()
        return [w.copy() for w in self.model.trainable_weights]

    def train_step(self, x, y) -> float:
        return self.model.train_on_batch(x, y)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        hist = self.model.fit(X, Y, epochs=1, batch_size=batch_size, verbose=0, shuffle=True)
        return hist.history["loss"][-1]


class FastnnLayersMLP:
    """fastnn's low-level API in a hand-written loop, as a user writing their own loop runs
    it: each Dense layer's forward, the loss and its gradient, each layer's backward, then
    Adam's step over the layers' weights (every call checks its arguments)."""

    def __init__(self, sizes, backend: str, seed: int = 0, weights=None):
        from fastnn.layers import Dense
        from fastnn.losses import SparseCategoricalCrossentropy
        from fastnn.optimizers import Adam

        self.backend = backend
        self.name = f"fastnn-{backend}-layers"
        acts = ["relu"] * (len(sizes) - 2) + ["softmax"]
        rng = np.random.default_rng(seed)
        self.layers = [
            Dense(width, activation=act).build(fan_in, "float32", rng, backend)
            for fan_in, width, act in zip(sizes[:-1], sizes[1:], acts)
        ]
        self.params = [w for layer in self.layers for w in layer.weights]
        self.grads = [g for layer in self.layers for g in layer.grads]
        for dst, w in zip(
            self.params, weights if weights is not None else glorot_weights(sizes, seed)
        ):
            dst[...] = w
        self.loss = SparseCategoricalCrossentropy()
        self.opt = Adam(
            learning_rate=ADAM["lr"],
            beta_1=ADAM["beta_1"],
            beta_2=ADAM["beta_2"],
            epsilon=ADAM["epsilon"],
        )

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.params]

    def train_step(self, x, y) -> float:
        out = x
        for layer in self.layers:
            out = layer.forward(out, training=True)
        loss = self.loss(y, out, backend=self.backend)
        grad = self.loss.gradient(y, out, backend=self.backend)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        self.opt.step(self.params, self.grads, backend=self.backend)
        return loss

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)
