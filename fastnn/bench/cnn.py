"""Convolutional benchmark networks for ``fastnn bench --networks lenet convnet``.

Both take 28x28x1 images (MNIST-shaped synthetic data, fed as rows of 784 values and
viewed as images: no copy) and end in a softmax with sparse categorical cross-entropy,
trained with Adam (PyTorch's formula, fastnn's defaults):

- ``lenet`` (batch 32): Conv2D 6 k5 same relu -> MaxPool 2 -> Conv2D 16 k5 valid relu ->
  MaxPool 2 -> Flatten -> Dense 120 relu -> Dense 84 relu -> Dense 10;
- ``convnet`` (batch 128, the keras.io "Simple MNIST convnet" without its dropout):
  Conv2D 32 k3 relu -> MaxPool 2 -> Conv2D 64 k3 relu -> MaxPool 2 -> Flatten -> Dense 10.

Implementations, all from the same weights: fastnn (``train_on_batch`` / ``fit``), the
NumPy baseline (fastnn's reference kernels: im2col + ``np.dot``, pooling by window
slices, Adam in NumPy, run layer by layer from Python: how a careful NumPy user writes a
CNN), and PyTorch eager (``nn.Conv2d``/``MaxPool2d``/``Linear`` on NCHW tensors, the
natural torch model, with fused Adam where this torch has it).  JAX, where installed:
``fastnn.bench.jax_nets``.
"""

from __future__ import annotations

import numpy as np

from .baselines import ADAM, _torch_adam, step_epoch, torch_epoch

#: name -> (layers, batch size); a layer is ("conv", filters, kernel, padding),
#: ("pool", size), ("flatten",) or ("dense", units); every hidden layer is relu
CNNS = {
    "lenet": (
        [("conv", 6, 5, "same"), ("pool", 2), ("conv", 16, 5, "valid"), ("pool", 2),
         ("flatten",), ("dense", 120), ("dense", 84), ("dense", 10)],
        32,
    ),
    "convnet": (
        [("conv", 32, 3, "valid"), ("pool", 2), ("conv", 64, 3, "valid"), ("pool", 2),
         ("flatten",), ("dense", 10)],
        128,
    ),
}  # fmt: skip
IMAGE = (28, 28, 1)


def label(name: str) -> str:
    """E.g. ``lenet c6k5-p2-c16k5-p2-120-84-10 b32``."""
    layers, batch = CNNS[name]
    parts = []
    for layer in layers:
        if layer[0] == "conv":
            parts.append(f"c{layer[1]}k{layer[2]}")
        elif layer[0] == "pool":
            parts.append(f"p{layer[1]}")
        elif layer[0] == "dense":
            parts.append(str(layer[1]))
    return f"{name} 28x28x1 {'-'.join(parts)} b{batch}"


def fastnn_cnn(name: str, backend: str, seed: int = 0, dtype="float32"):
    """The compiled fastnn Sequential of network ``name`` (Adam, sparse CE)."""
    import fastnn
    from fastnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

    layers, _ = CNNS[name]
    built = [fastnn.Input(shape=IMAGE)]
    for i, layer in enumerate(layers):
        act = "softmax" if i == len(layers) - 1 else "relu"
        if layer[0] == "conv":
            built.append(Conv2D(layer[1], layer[2], padding=layer[3], activation=act))
        elif layer[0] == "pool":
            built.append(MaxPooling2D(layer[1]))
        elif layer[0] == "flatten":
            built.append(Flatten())
        else:
            built.append(Dense(layer[1], activation=act))
    model = fastnn.Sequential(built, seed=seed, backend=backend, dtype=dtype)
    opt = fastnn.optimizers.Adam(learning_rate=ADAM["lr"], beta_1=ADAM["beta_1"],
                                 beta_2=ADAM["beta_2"], epsilon=ADAM["epsilon"])  # fmt: skip
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return model


class FastnnCNN:
    """fastnn behind the baselines' interface (``train_on_batch`` and ``fit``)."""

    def __init__(self, net: str, backend: str, weights, seed: int = 0, name=None):
        self.backend = backend
        self.name = name or f"fastnn-{backend}"
        self.model = fastnn_cnn(net, backend, seed)
        self.model.set_weights(weights)

    def _images(self, x):
        return x.reshape(len(x), *IMAGE)  # a view of the rows

    def get_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

    def train_step(self, x, y) -> float:
        return self.model.train_on_batch(self._images(x), y)

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        hist = self.model.fit(self._images(X), Y, epochs=1, batch_size=batch_size, verbose=0)
        return hist.history["loss"][-1]


class NumpyCNN(FastnnCNN):
    """The NumPy baseline: fastnn's reference kernels (im2col + np.dot, NumPy pooling and
    Adam), run one kernel call after another from Python."""

    def __init__(self, net: str, weights, seed: int = 0):
        super().__init__(net, "numpy", weights, seed, name="numpy")

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return step_epoch(self.train_step, X, Y, batch_size, rng)


class TorchCNN:
    """The same network in PyTorch eager mode on NCHW tensors (its native layout)."""

    name = "torch"

    def __init__(self, net: str, weights, threads: int | None = None, seed: int = 0):
        import torch

        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        layers, _ = CNNS[net]
        mods, c, side = [], IMAGE[2], IMAGE[0]
        for i, layer in enumerate(layers):
            if layer[0] == "conv":
                pad = layer[2] // 2 if layer[3] == "same" else 0
                mods += [torch.nn.Conv2d(c, layer[1], layer[2], padding=pad), torch.nn.ReLU()]
                c, side = layer[1], side + 2 * pad - layer[2] + 1
            elif layer[0] == "pool":
                mods.append(torch.nn.MaxPool2d(layer[1]))
                side //= layer[1]
            elif layer[0] == "flatten":
                mods.append(torch.nn.Flatten())
                self._flat, width = (side, side, c), side * side * c
            else:
                mods.append(torch.nn.Linear(width, layer[1]))
                width = layer[1]
                if i < len(layers) - 1:
                    mods.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*mods)
        self.set_weights(weights)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer, self.adam_impl = _torch_adam(torch, self.model.parameters(), ADAM)

    def set_weights(self, weights) -> None:
        """From fastnn's layout: kernels (KH, KW, C, F) -> (F, C, KH, KW); the first Dense
        after Flatten reads (H, W, C)-ordered features -> torch's (C, H, W) order."""
        nn, it = self.torch.nn, iter(weights)
        first_dense = True
        with self.torch.no_grad():
            for m in self.model:
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_(self.torch.from_numpy(next(it).transpose(3, 2, 0, 1).copy()))
                elif isinstance(m, nn.Linear):
                    w = next(it)
                    if first_dense:
                        h, wd, c = self._flat
                        w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
                        first_dense = False
                    m.weight.copy_(self.torch.from_numpy(np.ascontiguousarray(w.T)))
                else:
                    continue
                m.bias.copy_(self.torch.from_numpy(next(it)))

    def tensors(self, x, y):
        """NCHW float32 and int64 tensors sharing memory with the rows (one channel)."""
        t = self.torch.from_numpy(np.asarray(x)).reshape(len(x), IMAGE[2], *IMAGE[:2])
        return t, self.torch.from_numpy(np.asarray(y, dtype=np.int64))

    def train_step(self, x, y) -> float:
        if isinstance(x, np.ndarray):
            x, y = self.tensors(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def train_epoch(self, X, Y, batch_size: int, rng) -> float:
        return torch_epoch(self, X, Y, batch_size, rng)


def make_cnn_impls(net: str, backends, baselines, seed: int = 0) -> dict:
    """name -> implementation of network ``net``, all from fastnn's initial weights."""
    weights = fastnn_cnn(net, "numpy", seed).get_weights()
    impls = {f"fastnn-{be}": FastnnCNN(net, be, weights, seed) for be in backends}
    if "numpy" in baselines:
        impls["numpy"] = NumpyCNN(net, weights, seed)
    if "torch" in baselines:
        impls["torch"] = TorchCNN(net, weights, seed=seed)
    return impls
