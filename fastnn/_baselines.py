"""Baseline MLPs for the benchmarks: plain NumPy, PyTorch eager and (when installed) JAX.

Each baseline trains the same network as fastnn: Dense layers with ReLU hidden activations, a
softmax output with sparse categorical cross-entropy (mean over the batch), Adam with PyTorch's
formula and fastnn's defaults (lr 1e-3, betas 0.9/0.999, epsilon 1e-7), Glorot-uniform weights
and zero biases.  Each offers ``train_step(x, y)`` (one optimizer step on one batch, returns
the loss) and ``train_epoch(X, Y, batch_size, rng)`` (one shuffled pass, returns the mean loss).

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
}

#: Adam hyper-parameters shared by every implementation (fastnn's defaults).
ADAM = {"lr": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


def network_sizes(name: str) -> list[int]:
    """Layer widths [in, hidden..., out] of benchmark network ``name``."""
    n_in, hidden, n_out, _ = NETWORKS[name]
    return [n_in, *hidden, n_out]


def network_label(name: str) -> str:
    """E.g. ``a 784-128-10 b64``."""
    _, _, _, batch = NETWORKS[name]
    return f"{name} {'-'.join(str(s) for s in network_sizes(name))} b{batch}"


def glorot_weights(sizes, seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] with W (in, out) Glorot-uniform and zero biases."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(dtype))
        weights.append(np.zeros(fan_out, dtype))
    return weights


def synthetic_data(n: int, n_in: int, n_classes: int = 10, seed: int = 0, dtype=np.float32):
    """(X (n, n_in) uniform in [0, 1), y (n,) int64 labels): an MNIST-shaped stand-in."""
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in), dtype=np.float32).astype(dtype, copy=False), rng.integers(
        0, n_classes, n
    )


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
    """An MLP trained with hand-written NumPy: forward, softmax-CE, backward, Adam."""

    name = "numpy"

    def __init__(self, sizes, seed: int = 0, dtype=np.float32, **adam):
        hp = {**ADAM, **adam}
        self.lr, self.beta_1, self.beta_2, self.eps = (
            hp["lr"],
            hp["beta_1"],
            hp["beta_2"],
            hp["epsilon"],
        )
        self.params = glorot_weights(sizes, seed, dtype)
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def get_weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]

    def set_weights(self, weights) -> None:
        for p, w in zip(self.params, weights):
            p[...] = w

    def forward(self, x):
        """Activations [x, h1, ..., logits]."""
        acts = [x]
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            z = acts[-1] @ self.params[2 * i] + self.params[2 * i + 1]
            acts.append(np.maximum(z, 0) if i < n_layers - 1 else z)
        return acts

    def loss_and_grads(self, x, y):
        """(mean sparse softmax cross-entropy, [dW0, db0, dW1, db1, ...])."""
        acts = self.forward(x)
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
        for i in range(len(self.params) // 2 - 1, -1, -1):
            grads[2 * i] = acts[i].T @ dz
            grads[2 * i + 1] = dz.sum(axis=0)
            if i > 0:
                dz = (dz @ self.params[2 * i].T) * (acts[i] > 0)
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


class TorchMLP:
    """The same MLP in PyTorch eager mode: nn.Sequential, CrossEntropyLoss, Adam."""

    name = "torch"

    def __init__(self, sizes, seed: int = 0, threads: int | None = None, weights=None, **adam):
        import torch

        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.set_weights(weights if weights is not None else glorot_weights(sizes, seed))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer, self.adam_impl = _torch_adam(
            torch, self.model.parameters(), {**ADAM, **adam}
        )

    def set_weights(self, weights) -> None:
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        with self.torch.no_grad():
            for lin, w, b in zip(linears, weights[0::2], weights[1::2]):
                lin.weight.copy_(self.torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(self.torch.from_numpy(b))

    def get_weights(self) -> list[np.ndarray]:
        out = []
        for m in self.model:
            if isinstance(m, self.torch.nn.Linear):
                out += [m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()]
        return out

    def tensors(self, x, y):
        """(float32 tensor, int64 tensor) sharing memory with x, y where possible."""
        return self.torch.from_numpy(np.asarray(x)), self.torch.from_numpy(
            np.asarray(y, dtype=np.int64)
        )

    def train_step(self, x, y) -> float:
        if isinstance(x, np.ndarray):
            x, y = self.tensors(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        Xt, Yt = self.tensors(X, Y)
        order = self.torch.from_numpy(rng.permutation(len(X)))
        total = 0.0
        for start in range(0, len(X), batch_size):
            idx = order[start : start + batch_size]
            total += self.train_step(Xt[idx], Yt[idx]) * len(idx)
        return total / len(X)


# ---------------------------------------------------------------------------------------
# JAX (only when importable): the whole step under one jax.jit


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


class JaxMLP:
    """The same MLP in JAX: loss, gradients and Adam in one ``jax.jit``-compiled step."""

    name = "jax"

    def __init__(self, sizes, seed: int = 0, weights=None, **adam):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        hp = {**ADAM, **adam}
        weights = weights if weights is not None else glorot_weights(sizes, seed)
        self.params = [jnp.asarray(w) for w in weights]
        self.m = [jnp.zeros_like(p) for p in self.params]
        self.v = [jnp.zeros_like(p) for p in self.params]
        self.t = jnp.zeros((), jnp.float32)
        lr, b1, b2, eps = hp["lr"], hp["beta_1"], hp["beta_2"], hp["epsilon"]

        def loss_fn(params, x, y):
            h = x
            n_layers = len(params) // 2
            for i in range(n_layers):
                h = h @ params[2 * i] + params[2 * i + 1]
                if i < n_layers - 1:
                    h = jnp.maximum(h, 0)
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(params, m, v, t, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            t = t + 1
            step_size = lr / (1 - b1**t)
            bc2_sqrt = jnp.sqrt(1 - b2**t)
            m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
            v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
            params = [
                p - step_size * mi / (jnp.sqrt(vi) / bc2_sqrt + eps)
                for p, mi, vi in zip(params, m, v)
            ]
            return params, m, v, t, loss

        self._step = jax.jit(step, donate_argnums=(0, 1, 2))

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self.params]

    def train_step(self, x, y) -> float:
        self.params, self.m, self.v, self.t, loss = self._step(
            self.params, self.m, self.v, self.t, x, y
        )
        return float(loss)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


# ---------------------------------------------------------------------------------------
# fastnn with the same network


def fastnn_model(sizes, backend: str, seed: int = 0, weights=None, dtype="float32"):
    """A compiled fastnn Sequential of the benchmark network (Adam, sparse CE)."""
    import fastnn
    from fastnn.layers import Dense

    layers = [Dense(sizes[1], activation="relu", input_dim=sizes[0])]
    layers += [Dense(w, activation="relu") for w in sizes[2:-1]]
    layers.append(Dense(sizes[-1], activation="softmax"))
    model = fastnn.Sequential(layers, seed=seed, backend=backend, dtype=dtype)
    opt = fastnn.optimizers.Adam(
        learning_rate=ADAM["lr"],
        beta_1=ADAM["beta_1"],
        beta_2=ADAM["beta_2"],
        epsilon=ADAM["epsilon"],
    )
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.set_weights(weights if weights is not None else glorot_weights(sizes, seed, dtype))
    return model


class FastnnMLP:
    """fastnn behind the baselines' interface: ``train_on_batch`` and ``fit(epochs=1)``."""

    def __init__(self, sizes, backend: str, seed: int = 0, weights=None):
        self.backend = backend
        self.name = f"fastnn-{backend}"
        self.model = fastnn_model(sizes, backend, seed, weights)

    def get_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

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
