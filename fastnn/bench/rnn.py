"""Recurrent benchmark networks for ``fastnn bench``: fastnn, PyTorch eager and NumPy.

``lstm_rows`` and ``gru_rows``: 28 steps of 28 features (an MNIST image read row by row)
-> LSTM(64) / GRU(64) -> Dense(10) with softmax cross-entropy, batch 64.  ``lstm_imdb``:
the keras.io IMDB LSTM, Embedding(20000, 128) -> LSTM(128) -> Dense(1) with sigmoid
cross-entropy on 80 tokens, batch 32.  Every implementation starts from the same weights
(Keras layout and initializers) and trains with Adam (PyTorch's formula, lr 1e-3,
epsilon 1e-7; PyTorch's fused Adam where it has one).  The NumPy baseline is the
reference kernels (``fastnn.kernels.reference_rnn``: per-step NumPy expressions with their
temporaries) with a NumPy Adam.  JAX, where installed: ``fastnn.bench.jax_nets``.
"""

from __future__ import annotations

import numpy as np

from .baselines import ADAM, _torch_adam, step_epoch, torch_epoch

#: name -> (cell, timesteps, features, units, outputs, batch size, vocabulary or None)
RNN_NETWORKS = {
    "lstm_rows": ("lstm", 28, 28, 64, 10, 64, None),
    "gru_rows": ("gru", 28, 28, 64, 10, 64, None),
    "lstm_imdb": ("lstm", 80, 128, 128, 1, 32, 20000),
}


def rnn_label(name: str) -> str:
    cell, t, f, u, out, batch, vocab = RNN_NETWORKS[name]
    head = f"emb{vocab}x{f}-" if vocab else f"{t}x{f}-"
    return f"{name} {head}{cell}{u}-{out} b{batch}"


def rnn_batch_size(name: str) -> int:
    return RNN_NETWORKS[name][5]


def rnn_data(name: str, n: int, seed: int = 0):
    """(X, y): rows uniform in [0, 1) (n, T, F) float32 with labels 0..9, or token ids
    (n, T) int64 with 0/1 labels (n, 1) float32."""
    _, t, f, _, out, _, vocab = RNN_NETWORKS[name]
    rng = np.random.default_rng(seed)
    if vocab:
        return rng.integers(0, vocab, (n, t)), rng.integers(0, 2, (n, 1)).astype(np.float32)
    return rng.random((n, t, f), dtype=np.float32), rng.integers(0, out, n)


def rnn_weights(name: str, seed: int = 0) -> list[np.ndarray]:
    """Keras-layout float32 weights: [embeddings,] kernel, recurrent_kernel, bias, dense
    kernel, dense bias (Keras's initializers: uniform, glorot_uniform, orthogonal, zeros with
    the LSTM's forget bias 1)."""
    from .. import initializers

    cell, _, f, u, out, _, vocab = RNN_NETWORKS[name]
    rng = np.random.default_rng(seed)
    gates = 4 if cell == "lstm" else 3
    glorot, orth = initializers.get("glorot_uniform", ""), initializers.get("orthogonal", "")
    weights = [initializers.get("uniform", "")((vocab, f), rng)] if vocab else []
    bias = np.zeros(gates * u) if cell == "lstm" else np.zeros((2, gates * u))
    if cell == "lstm":
        bias[u : 2 * u] = 1.0
    weights += [glorot((f, gates * u), rng), orth((u, gates * u), rng), bias,
                glorot((u, out), rng), np.zeros(out)]  # fmt: skip
    return [w.astype(np.float32) for w in weights]


# ---------------------------------------------------------------------------------------
# fastnn


class FastnnRNN:
    """fastnn's Sequential of the network: ``train_on_batch`` and ``fit(epochs=1)``."""

    def __init__(self, name: str, backend: str, seed: int = 0, weights=None):
        import fastnn
        from fastnn.layers import GRU, LSTM, Dense, Embedding

        cell, t, f, u, out, _, vocab = RNN_NETWORKS[name]
        self.name = f"fastnn-{backend}"
        rnn = (LSTM if cell == "lstm" else GRU)(u, **({} if vocab else {"input_shape": (t, f)}))
        layers = [Embedding(vocab, f, input_shape=(t,))] if vocab else []
        layers += [rnn, Dense(out, activation="sigmoid" if vocab else "softmax")]
        self.model = fastnn.Sequential(layers, seed=seed, backend=backend)
        opt = fastnn.optimizers.Adam(learning_rate=ADAM["lr"], beta_1=ADAM["beta_1"],
                                     beta_2=ADAM["beta_2"], epsilon=ADAM["epsilon"])  # fmt: skip
        loss = "binary_crossentropy" if vocab else "sparse_categorical_crossentropy"
        self.model.compile(optimizer=opt, loss=loss)
        self.model.set_weights(weights if weights is not None else rnn_weights(name, seed))

    def train_step(self, x, y) -> float:
        return self.model.train_on_batch(x, y)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        hist = self.model.fit(X, Y, epochs=1, batch_size=batch_size, verbose=0, shuffle=True)
        return hist.history["loss"][-1]


# ---------------------------------------------------------------------------------------
# PyTorch eager


def _torch_rnn_params(mod, cell, kernel, rec, bias, torch):
    """Keras-layout weights into torch's LSTM/GRU (GRU gates z, r, h -> r, z, n; the
    LSTM's second bias zero and frozen)."""
    u = rec.shape[0]
    if cell == "gru":
        perm = np.r_[u : 2 * u, 0:u, 2 * u : 3 * u]
        kernel, rec, b_in, b_rec = kernel[:, perm], rec[:, perm], bias[0][perm], bias[1][perm]
    else:
        b_in, b_rec = bias, np.zeros_like(bias)
        mod.bias_hh_l0.requires_grad_(False)
    with torch.no_grad():
        for p, v in ((mod.weight_ih_l0, kernel.T), (mod.weight_hh_l0, rec.T),
                     (mod.bias_ih_l0, b_in), (mod.bias_hh_l0, b_rec)):  # fmt: skip
            p.copy_(torch.from_numpy(np.ascontiguousarray(v)))


class TorchRNN:
    """The same network in PyTorch eager mode (nn.LSTM/nn.GRU, batch_first)."""

    name = "torch"

    def __init__(self, name: str, seed: int = 0, threads: int | None = None, weights=None):
        import torch

        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        cell, _, f, u, out, _, vocab = RNN_NETWORKS[name]
        w = list(weights if weights is not None else rnn_weights(name, seed))
        self.emb = torch.nn.Embedding(vocab, f) if vocab else None
        if vocab:
            with torch.no_grad():
                self.emb.weight.copy_(torch.from_numpy(w.pop(0)))
        self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(f, u, batch_first=True)
        _torch_rnn_params(self.rnn, cell, *w[:3], torch)
        self.out = torch.nn.Linear(u, out)
        with torch.no_grad():
            self.out.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[3].T)))
            self.out.bias.copy_(torch.from_numpy(w[4]))
        mods = [m for m in (self.emb, self.rnn, self.out) if m is not None]
        params = [p for m in mods for p in m.parameters() if p.requires_grad]
        self.loss_fn = torch.nn.BCEWithLogitsLoss() if vocab else torch.nn.CrossEntropyLoss()
        self.optimizer, self.adam_impl = _torch_adam(torch, params, ADAM)

    def tensors(self, x, y):
        t = self.torch
        return t.from_numpy(np.asarray(x)), t.from_numpy(np.asarray(y))

    def train_step(self, x, y) -> float:
        if isinstance(x, np.ndarray):
            x, y = self.tensors(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        h = self.emb(x) if self.emb is not None else x
        loss = self.loss_fn(self.out(self.rnn(h)[0][:, -1]), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return torch_epoch(self, X, Y, batch_size, rng)


# ---------------------------------------------------------------------------------------
# NumPy


class NumpyRNN:
    """NumPy: the reference recurrent kernels, a Dense head, the loss and Adam in NumPy."""

    name = "numpy"

    def __init__(self, name: str, seed: int = 0, weights=None):
        from ..kernels import codes
        from ..kernels import reference_rnn as R

        self.R, self.codes = R, codes
        cell, self.t, self.f, self.u, _, _, self.vocab = RNN_NETWORKS[name]
        self.kind = codes.LSTM if cell == "lstm" else codes.GRU
        self.params = [w.copy() for w in (weights if weights is not None else
                                          rnn_weights(name, seed))]  # fmt: skip
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.step = 0

    def _grads(self, x, y):
        R, C, k = self.R, self.codes, int(self.vocab is not None)
        w, r, b, wd, bd = self.params[k:]
        ids = x
        x = self.params[0][ids] if k else x
        n = x.shape[0]
        ws = np.empty(R.rnn_workspace_size(self.kind, n, self.t, self.f, self.u), x.dtype)
        h = np.empty((n, 1, self.u), x.dtype)
        b2 = b.reshape(-1, w.shape[1])
        R.rnn_forward(self.kind, x, w, r, b2, h, ws, C.TANH, C.SIGMOID, 0)
        z = h[:, 0] @ wd + bd
        if k:  # sigmoid + binary cross-entropy
            p = 1 / (1 + np.exp(-z))
            loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
            dz = (p - y) / z.size
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            loss = float(-np.mean(np.log(p[np.arange(n), y])))
            dz = p.copy()
            dz[np.arange(n), y] -= 1
            dz /= n
        grads = [np.zeros_like(a) for a in self.params]
        grads[-2], grads[-1] = h[:, 0].T @ dz, dz.sum(axis=0)
        dx = np.empty_like(x)
        R.rnn_backward(self.kind, x, w, r, (dz @ wd.T)[:, None], dx, grads[k], grads[k + 1],
                       grads[k + 2].reshape(b2.shape), ws, C.TANH, C.SIGMOID, 0, k)  # fmt: skip
        if k:
            np.add.at(grads[0], ids, dx)
        return loss, grads

    def train_step(self, x, y) -> float:
        loss, grads = self._grads(x, y)
        self.step += 1
        b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        step_size = ADAM["lr"] / (1 - b1**self.step)
        bc2 = np.sqrt(1 - b2**self.step)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            p -= step_size * m / (np.sqrt(v) / bc2 + eps)
        return loss

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


def make_rnn_impls(name: str, backends, baselines, seed: int = 0) -> dict:
    """name -> implementation, all from the same weights (JAX: fastnn.bench.jax_nets)."""
    weights = rnn_weights(name, seed)
    impls = {f"fastnn-{be}": FastnnRNN(name, be, seed, weights) for be in backends}
    if "numpy" in baselines:
        impls["numpy"] = NumpyRNN(name, seed, weights)
    if "torch" in baselines:
        impls["torch"] = TorchRNN(name, seed, weights=weights)
    return impls
