"""Per-kernel profile of a benchmark CNN's training step (fastnn.bench.cnn) on one backend.

Times each convolution and pooling kernel of ``lenet`` or ``convnet`` at its real shape
(forward and backward; the first convolution without dx, as in training), then the whole
training step two ways: ``train_on_batch`` (which also snapshots the weights for its
rollback) and one ``fit`` epoch divided by its number of steps.  Medians of ``--repeats``.

    python benchmarks/profile_cnn.py --net lenet --backend cython --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def _median_us(fn, repeats: int, inner: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times)) * 1e6


def _layer_shapes(net: str):
    """[(kind, n, h, w, c, filters_or_pool, k, pad)] of the conv/pool layers of ``net``."""
    from fastnn.bench.cnn import CNNS, IMAGE

    layers, n = CNNS[net]
    h, c, out = IMAGE[0], IMAGE[2], []
    for layer in layers:
        if layer[0] == "conv":
            k, pad = layer[2], (layer[2] - 1) // 2 if layer[3] == "same" else 0
            out.append(("conv", n, h, h, c, layer[1], k, pad))
            h, c = h + 2 * pad - k + 1, layer[1]
        elif layer[0] == "pool":
            out.append(("pool", n, h, h, c, layer[1], layer[1], 0))
            h //= layer[1]
    return out


def _conv_times(mod, n, h, w, c, f, k, pad, first, repeats):
    rng = np.random.default_rng(0)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = rng.standard_normal((k, k, c, f), dtype=np.float32) / k
    b = np.zeros(f, np.float32)
    out = np.empty((n, ho, wo, f), np.float32)
    cols = np.empty((n * ho * wo, k * k * c), np.float32)
    dz, dx, dw, db = np.empty_like(out), np.empty_like(x), np.empty_like(wt), np.empty_like(b)
    geo = (1, 1, pad, pad)
    fwd = _median_us(lambda: mod.conv2d_forward(x, wt, b, cols, out, 1, 0.0, *geo), repeats, 20)
    g = rng.standard_normal(out.shape, dtype=np.float32)
    need_dx = int(not first)

    def bwd():  # cols hold dcols after a call with dx: the same work on other values
        mod.conv2d_backward(x, wt, out, g, cols, dz, dx, dw, db, 1, 0.0, *geo, need_dx)

    return fwd, _median_us(bwd, repeats, 20)


def _pool_times(mod, n, h, w, c, p, repeats):
    # a new batch on every call, as in training: on one batch called again and again the
    # branch predictor learns the order of its maxima, and a branchy loop looks fast
    xs = np.random.default_rng(0).standard_normal((4, n, h, w, c), dtype=np.float32)
    out = np.empty((n, h // p, w // p, c), np.float32)
    argmax, dx = np.empty_like(out), np.empty_like(xs[0])
    geo = (p, p, p, p, 0, 0)
    calls = iter(range(1 << 62))

    def fwd():
        mod.maxpool2d_forward(xs[next(calls) % 4], argmax, out, *geo)

    t_fwd = _median_us(fwd, repeats, 20)
    bwd = _median_us(lambda: mod.maxpool2d_backward(argmax, out, dx, *geo), repeats, 20)
    return t_fwd, bwd


def _step_times(net: str, backend: str, repeats: int, steps: int):
    from fastnn.bench.cnn import CNNS, fastnn_cnn

    _, batch = CNNS[net]
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch * steps)
    model = fastnn_cnn(net, backend)
    tob = _median_us(lambda: model.train_on_batch(x[:batch], y[:batch]), repeats, 20)

    def epoch():
        model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)

    return tob, _median_us(epoch, repeats, 1) / steps


def _torch_step(net: str, threads: int, repeats: int, steps: int):
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    from fastnn.bench.cnn import CNNS, TorchCNN, fastnn_cnn

    _, batch = CNNS[net]
    weights = fastnn_cnn(net, "numpy").get_weights()
    impl = TorchCNN(net, weights, threads=threads)
    rng = np.random.default_rng(0)
    X = rng.random((batch * steps, 784), dtype=np.float32)
    Y = rng.integers(0, 10, batch * steps)
    xt, yt = impl.tensors(X, Y)

    def epoch():
        for s in range(0, len(X), batch):
            impl.train_step(xt[s : s + batch], yt[s : s + batch])

    return _median_us(epoch, repeats, 1) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default="lenet", choices=["lenet", "convnet"])
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--torch", action="store_true", help="also a PyTorch eager step")
    args = ap.parse_args()
    with threadpool_limits(args.threads):
        blas = [(i["internal_api"], i.get("architecture"), i["num_threads"])
                for i in threadpool_info()]  # fmt: skip
        print(f"{args.net} {args.backend} threads={args.threads} blas={blas}")
        if args.backend != "torch":
            _profile_kernels(args)
            tob, fit = _step_times(args.net, args.backend, args.repeats, args.steps)
            print(f"step train_on_batch {tob:9.0f} us   fit step {fit:9.0f} us")
        if args.torch or args.backend == "torch":
            t = _torch_step(args.net, args.threads, args.repeats, args.steps)
            print(f"torch eager step {t:9.0f} us" if t else "torch not installed")


def _profile_kernels(args) -> None:
    from fastnn import backend

    mod = backend.load(args.backend)
    first = True
    for kind, n, h, w, c, f, k, pad in _layer_shapes(args.net):
        if kind == "conv":
            fwd, bwd = _conv_times(mod, n, h, w, c, f, k, pad, first, args.repeats)
            first = False
            print(f"conv {h}x{w}x{c} -> {f} k{k} pad{pad}: fwd {fwd:7.0f} us  bwd {bwd:7.0f} us")
        else:
            fwd, bwd = _pool_times(mod, n, h, w, c, f, args.repeats)
            print(f"maxpool {h}x{w}x{c} /{f}:            fwd {fwd:7.0f} us  bwd {bwd:7.0f} us")


if __name__ == "__main__":
    main()
