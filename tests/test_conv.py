"""Conv2D and pooling, up the correctness ladder: every compiled CPU backend's kernels ==
the reference (float32 and float64, odd sizes, strides 2 on odd inputs, kernels 1/3/5,
valid and same, one and several channels); the reference backward == finite differences;
small CNNs train the same on every backend; the malformed plans and bad arguments a user
can give are refused with errors naming them.

Every numba model here holds the CONV and NORM families (a BatchNormalization), so that
Numba compiles the training path once per dtype for the whole file.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.gradcheck import gradcheck
from fastnn.kernels import codes as C
from fastnn.kernels import reference as ref
from fastnn.layers import (
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from fastnn.layers.convolutional import output_size
from tests.kernel_cases import assert_close, compiled_backends, rng_for

BACKENDS = compiled_backends()
CPU_BACKENDS = ["numpy", *BACKENDS]

#: (n, h, w, c, filters, kh, kw, sh, sw, padding)
GEOMETRIES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 1, "valid"),
    (3, 7, 5, 3, 4, 3, 3, 2, 2, "same"),
    (2, 9, 8, 1, 5, 5, 5, 1, 1, "same"),
    (2, 7, 7, 2, 3, 3, 3, 2, 2, "valid"),
    (2, 6, 7, 3, 2, 5, 1, 3, 2, "same"),
    (2, 5, 5, 3, 2, 1, 1, 2, 2, "valid"),
    # one input channel at stride 1 (the compiled direct loop): valid and same, odd sizes,
    # KH != KW; 2x2 windows at stride 2 over odd and even sizes
    (2, 8, 7, 1, 4, 3, 3, 1, 1, "valid"),
    (1, 5, 6, 1, 6, 3, 5, 1, 1, "same"),
    (2, 6, 7, 1, 4, 4, 2, 1, 1, "same"),
    (3, 7, 9, 1, 3, 2, 2, 2, 2, "valid"),
    # one input channel, 16 filters or a multiple of 16 at stride 1 (the compiled loop over
    # the filters, eight pixels at a time): rows of 8, 11 (8 + 3) and 2 pixels, and beside
    # them 20 filters (not a multiple: im2col + GEMM) and 16 at stride 2
    (2, 10, 10, 1, 16, 3, 3, 1, 1, "valid"),
    (3, 7, 11, 1, 32, 5, 3, 1, 1, "same"),
    (2, 4, 2, 1, 16, 1, 1, 1, 1, "valid"),
    (2, 6, 5, 1, 20, 3, 3, 1, 1, "same"),
    (2, 7, 9, 1, 16, 3, 3, 2, 2, "same"),
    (2, 6, 6, 4, 3, 2, 2, 2, 2, "valid"),
    (2, 5, 7, 3, 2, 2, 2, 2, 2, "same"),
    # several blocks of images (the backward's dcols from a transposed copy of the kernel
    # kept after the first block's columns): lenet's second convolution over 5 images (4
    # a block), an odd-sized one over 5 (2 a block); beside them 4 images (one block, no
    # room for the copy)
    (5, 14, 14, 6, 16, 5, 5, 1, 1, "valid"),
    (5, 13, 15, 6, 7, 5, 5, 1, 1, "same"),
    (4, 14, 14, 6, 16, 5, 5, 1, 1, "valid"),
    # several input channels, filters a multiple of 16 at stride 1 (the direct loop; dx
    # from dcols and col2im): same padding with rows of 11 pixels, KH != KW with rows of 5;
    # beside them C*F above the direct loop's limit (im2col + GEMM)
    (2, 9, 11, 3, 16, 3, 3, 1, 1, "same"),
    (3, 6, 7, 2, 32, 2, 3, 1, 1, "valid"),
    (2, 5, 5, 17, 16, 3, 3, 1, 1, "same"),
]
geometries = pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


@pytest.fixture(params=BACKENDS)
def mod(request):
    return fastnn.backend.load(request.param)


def _window(geom):
    n, h, w, c, f, kh, kw, sh, sw, padding = geom
    (ho, pt), (wo, pl) = output_size(h, kh, sh, padding), output_size(w, kw, sw, padding)
    return n, h, w, c, f, kh, kw, sh, sw, ho, wo, pt, pl


def _conv_run(module, x, w, b, dout, act, sh, sw, pt, pl, ho, wo, need_dx):
    n, f = x.shape[0], w.shape[3]
    cols = np.full((n * ho * wo, w.shape[0] * w.shape[1] * x.shape[3]), 7.0, x.dtype)
    out = np.full((n, ho, wo, f), 7.0, x.dtype)
    module.conv2d_forward(x, w, b, cols, out, act, 0.1, sh, sw, pt, pl)
    fwd = (out.copy(), cols.copy())
    dz, dx = np.full_like(out, 7.0), np.full_like(x, 7.0)
    dw, db = np.full_like(w, 7.0), np.full_like(b, 7.0)
    module.conv2d_backward(x, w, out, dout, cols, dz, dx, dw, db, act, 0.1, sh, sw, pt, pl,
                           need_dx)  # fmt: skip
    return (*fwd, dz, dx, dw, db, cols)


@geometries
@dtypes
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_matches_reference(mod, geom, dtype, bias):
    n, h, w, c, f, kh, kw, sh, sw, ho, wo, pt, pl = _window(geom)
    rng = rng_for("conv", geom, dtype, bias)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((kh, kw, c, f)).astype(dtype)
    b = rng.standard_normal(f if bias else 0).astype(dtype)
    dout = rng.standard_normal((n, ho, wo, f)).astype(dtype)
    act = C.TANH if bias else C.RELU
    kept = [a.copy() for a in (x, wt, b, dout)]
    for need_dx in (1, 0):
        want = _conv_run(ref, x, wt, b, dout, act, sh, sw, pt, pl, ho, wo, need_dx)
        got = _conv_run(mod, x, wt, b, dout, act, sh, sw, pt, pl, ho, wo, need_dx)
        names = ("out", "cols", "dz", "dx", "dw", "db", "cols after the backward")
        for name, g, e in zip(names, got, want):
            if name == "dx" and not need_dx:
                continue  # not written
            if name.startswith("cols"):
                continue  # the compiled backends' scratch (reference.conv2d_forward)
            # dz is the activation's derivative at out: out's roundoff carries into it
            k = {"out": kh * kw * c, "dz": kh * kw * c, "dw": n * ho * wo, "dx": kh * kw * f,
                 "db": n * ho * wo}  # fmt: skip
            assert_close(g, e, dtype, k=k.get(name, 1), scale=4.0, what=name)
        for a, k in zip((x, wt, b, dout), kept):
            np.testing.assert_array_equal(a, k, err_msg="an input was modified")


@geometries
@dtypes
def test_pooling_matches_reference(mod, geom, dtype):
    n, h, w, c, _, kh, kw, sh, sw, ho, wo, pt, pl = _window(geom)
    rng = rng_for("pool", geom, dtype)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    dout = rng.standard_normal((n, ho, wo, c)).astype(dtype)
    args = (kh, kw, sh, sw, pt, pl)
    results = []
    for module in (ref, mod):
        argmax, out, avg = (np.full((n, ho, wo, c), 7.0, dtype) for _ in range(3))
        dmax, davg = np.full_like(x, 7.0), np.full_like(x, 7.0)
        module.maxpool2d_forward(x, argmax, out, *args)
        module.maxpool2d_backward(argmax, dout, dmax, *args)
        module.avgpool2d_forward(x, avg, *args)
        module.avgpool2d_backward(dout, davg, *args)
        results.append((argmax, out, dmax, avg, davg))
    (ra, ro, rdm, rav, rdav), (ga, go, gdm, gav, gdav) = results
    np.testing.assert_array_equal(ga, ra)
    np.testing.assert_array_equal(go, ro)
    for name, g, e in (("dmax", gdm, rdm), ("avg", gav, rav), ("davg", gdav, rdav)):
        assert_close(g, e, dtype, k=kh * kw, what=name)


def test_same_padding_is_tensorflow_s():
    """'same' with stride 2 on an odd size pads the extra row at the bottom (TensorFlow),
    and the reference convolution equals a direct sum over the padded image."""
    assert output_size(7, 3, 2, "same") == (4, 1)  # total padding 2: 1 top, 1 bottom
    assert output_size(8, 3, 2, "same") == (4, 0)  # total 1: 0 top, 1 bottom
    assert output_size(7, 2, 2, "same") == (4, 0)
    assert output_size(7, 3, 2, "valid") == (3, 0)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 8, 8, 2)), rng.standard_normal((3, 3, 2, 1))
    out, cols = np.zeros((1, 4, 4, 1)), np.zeros((16, 18))
    ref.conv2d_forward(x, w, np.zeros(0), cols, out, C.LINEAR, 0.0, 2, 2, 0, 0)
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # nothing on top/left, 1 after
    direct = [[np.sum(xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3] * w[..., 0]) for j in range(4)]
              for i in range(4)]  # fmt: skip
    np.testing.assert_allclose(out[0, :, :, 0], direct, rtol=1e-12, atol=1e-12)


LAYERS = [
    (lambda: Conv2D(3, 3, strides=2, padding="same", activation="tanh"), (7, 6, 2)),
    (lambda: Conv2D(2, (1, 5), use_bias=False, kernel_regularizer="l1_l2"), (5, 6, 3)),
    (lambda: Conv2D(2, 1, strides=2, activation="sigmoid"), (5, 5, 1)),
    (lambda: MaxPooling2D(3, 2, padding="same"), (7, 5, 2)),
    (lambda: AveragePooling2D(2, padding="same"), (5, 5, 3)),
    (lambda: AveragePooling2D((3, 2), strides=(2, 1)), (7, 5, 2)),
    (lambda: GlobalAveragePooling2D(), (4, 3, 2)),
    (lambda: GlobalMaxPooling2D(), (4, 3, 2)),
]


@pytest.mark.parametrize("case", range(len(LAYERS)))
def test_reference_backward_matches_finite_differences(case):
    make, shape = LAYERS[case]
    layer = make()
    rng = np.random.default_rng(case)
    layer.build(shape, np.float64, rng, backend="numpy")
    result = gradcheck(layer, rng.standard_normal((3, *shape)))
    assert result.passed and result.checked > 20, result


def _cnn(backend, dtype, seed=0):
    """A small CNN that holds every kind of the family (and BatchNormalization)."""
    return fastnn.Sequential(
        [
            Conv2D(3, 3, strides=2, padding="same", activation="relu", input_shape=(9, 8, 2)),
            MaxPooling2D(2, padding="same"),
            Conv2D(4, (1, 3), padding="same", use_bias=False, kernel_regularizer="l2"),
            AveragePooling2D(2, 1),
            BatchNormalization(),
            Dropout(0.3),
            GlobalMaxPooling2D(),
            Dense(4, activation="softmax"),
        ],
        dtype=dtype, backend=backend, seed=seed,
    )  # fmt: skip


def _cnn_global_avg(backend, dtype, seed=0):
    return fastnn.Sequential(
        [
            Conv2D(3, 3, padding="valid", use_bias=False, input_shape=(6, 7, 1)),
            BatchNormalization(),
            Conv2D(2, 5, padding="same", activation="tanh"),
            GlobalAveragePooling2D(),
            Dense(3, activation="softmax"),
        ],
        dtype=dtype, backend=backend, seed=seed,
    )  # fmt: skip


def test_whole_cnn_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    for make, shape in ((_cnn, (9, 8, 2)), (_cnn_global_avg, (6, 7, 1))):
        model = make("numpy", "float64")
        model.compile("adam", "sparse_categorical_crossentropy")
        x, y = rng.standard_normal((5, *shape)), rng.integers(0, 3, 5)
        result = gradcheck(model, x, y)
        assert result.passed and result.checked > 50, result


def _cnn_one_channel(backend, dtype, seed=0):
    """One-channel convolutions, the second needing dx (direct loops in the compiled
    backends), and 2x2 max pooling at stride 2 over an odd size."""
    return fastnn.Sequential(
        [
            Conv2D(1, 3, padding="same", activation="relu", input_shape=(7, 9, 1)),
            Conv2D(3, (3, 5), activation="relu"),
            MaxPooling2D(2),
            Flatten(),
            Dense(3, activation="softmax"),
        ],
        dtype=dtype, backend=backend, seed=seed,
    )  # fmt: skip


def _cnn_direct(backend, dtype, seed=0):
    """Sixteen filters over two and over sixteen channels at stride 1 (the compiled
    backends' direct loop over the filters; the second needs dx), and 2x2 max pooling of
    sixteen channels (two vectors of eight in the AVX-512 build)."""
    return fastnn.Sequential(
        [
            Conv2D(16, 3, padding="same", activation="relu", input_shape=(7, 9, 2)),
            Conv2D(16, 3, activation="tanh"),
            MaxPooling2D(2),
            Flatten(),
            Dense(3, activation="softmax"),
        ],
        dtype=dtype, backend=backend, seed=seed,
    )  # fmt: skip


def _train(make, backend, dtype, x, y):
    model = make(backend, dtype)
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    hist = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    return hist.history["loss"], model.get_weights(), model.predict(x, verbose=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cnn_training_matches_reference(backend, dtype):
    """Two epochs of two small CNNs == the reference: float64 to 1e-9; float32 within the
    reference's own float32-vs-float64 difference (times 4, plus 1e-4): after a few Adam
    steps through ReLU, max pooling and a BatchNormalization of 4-sample batches, the
    rounding of any float32 implementation is amplified (see PITFALLS.md)."""
    if backend == "numba" and dtype == "float32":
        pytest.skip("numba runs the float64 models here (one compile for the file)")
    rng = np.random.default_rng(4)
    models = ((_cnn, (9, 8, 2)), (_cnn_global_avg, (6, 7, 1)), (_cnn_one_channel, (7, 9, 1)),
              (_cnn_direct, (7, 9, 2)))  # fmt: skip
    for make, shape in models:
        x, y = rng.standard_normal((10, *shape)), rng.integers(0, 3, 10)
        want = _train(make, "numpy", "float64", x, y)
        got = _train(make, backend, dtype, x, y)
        spread = _train(make, "numpy", dtype, x, y)
        for g, e, s in zip((got[0], *got[1], got[2]), (want[0], *want[1], want[2]),
                           (spread[0], *spread[1], spread[2])):  # fmt: skip
            e = np.asarray(e, dtype=np.float64)
            tol = 1e-9 if dtype == "float64" else 1e-4 + 4 * np.abs(np.asarray(s) - e)
            err = np.abs(np.asarray(g, dtype=np.float64) - e)
            assert np.all(err <= tol * (1 + np.abs(e))), (make.__name__, err, tol)


# -- PyTorch parity --------------------------------------------------------------------


def _tf_pad(x, size, window, stride, F):
    """x (N, C, H, W) padded as TensorFlow's 'same' (the odd extra row/column after)."""
    pads = []
    for axis in (3, 2):  # F.pad takes the last axis first
        out = -(-x.shape[axis] // stride)
        total = max((out - 1) * stride + window - x.shape[axis], 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_three_adam_steps_match_pytorch(backend):
    """Conv2D (same, stride 2, odd input) -> MaxPooling2D -> Conv2D (valid) ->
    BatchNormalization -> AveragePooling2D -> Flatten -> Dense(softmax), three Adam steps in
    float64 == torch's conv2d on the TensorFlow-padded input with the kernels transposed
    to (F, C, KH, KW) and the features flattened in (H, W, C) order: losses and weights."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((6, 11, 9, 2)), rng.integers(0, 5, 6)
    model = fastnn.Sequential(
        [
            Conv2D(4, 3, strides=2, padding="same", activation="relu", input_shape=(11, 9, 2)),
            MaxPooling2D(2),
            Conv2D(3, 2, activation="tanh"),
            BatchNormalization(momentum=0.9),
            AveragePooling2D(1),
            Flatten(),
            Dense(5, activation="softmax"),
        ],
        dtype="float64", backend=backend, seed=1,
    )  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01, epsilon=1e-7), "sparse_categorical_crossentropy")
    k1, b1, k2, b2, gamma, beta, _, _, k3, b3 = model.get_weights()
    start = (k1.transpose(3, 2, 0, 1), b1, k2.transpose(3, 2, 0, 1), b2, gamma, beta, k3.T, b3)
    params = [torch.tensor(a, requires_grad=True) for a in start]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999), eps=1e-7)
    xt, yt = torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        h = F.relu(F.conv2d(_tf_pad(xt, 11, 3, 2, F), params[0], params[1], stride=2))
        h = F.max_pool2d(h, 2)
        h = torch.tanh(F.conv2d(h, params[2], params[3]))
        h = F.batch_norm(h, None, None, params[4], params[5], training=True, eps=1e-3)
        logits = h.permute(0, 2, 3, 1).reshape(6, -1) @ params[6].T + params[7]
        loss = F.cross_entropy(logits, yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    hist = model.fit(x, y, epochs=3, batch_size=6, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist.history["loss"], losses, rtol=1e-9)
    got = model.get_weights()
    want = [p.detach().numpy() for p in params]
    want = [want[0].transpose(2, 3, 1, 0), want[1], want[2].transpose(2, 3, 1, 0), want[3],
            want[4], want[5], want[6].T, want[7]]  # fmt: skip
    for g, e in zip([*got[:6], *got[8:]], want):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_frozen_batchnorm_after_conv_steps_match_pytorch(backend):
    """Conv2D -> frozen BatchNormalization (inference mode over the channels of NHWC, set
    gamma, beta and moving statistics) -> MaxPooling2D -> Flatten -> Dense(softmax), three
    Adam steps in float64 == torch's conv2d -> batch_norm with the running statistics and
    constant affine weights: losses and weights; the normalisation's four are unchanged."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((5, 7, 8, 2)), rng.integers(0, 3, 5)
    model = fastnn.Sequential(
        [Conv2D(4, 3, activation="relu", input_shape=(7, 8, 2)),
         BatchNormalization(epsilon=1e-2), MaxPooling2D(2), Flatten(),
         Dense(3, activation="softmax")],
        dtype="float64", backend=backend, seed=2,
    )  # fmt: skip
    k1, b1, *_, k2, b2 = model.get_weights()
    stats = [rng.uniform(0.5, 1.5, 4), rng.normal(size=4) * 0.3, rng.normal(size=4) * 0.5,
             rng.uniform(0.2, 2.0, 4)]  # fmt: skip
    model.layers[1].set_weights(stats)
    model.layers[1].trainable = False
    model.compile(fastnn.optimizers.Adam(0.01, epsilon=1e-7), "sparse_categorical_crossentropy")
    params = [torch.tensor(a, requires_grad=True)
              for a in (k1.transpose(3, 2, 0, 1), b1, k2.T, b2)]  # fmt: skip
    fixed = [torch.tensor(a) for a in stats]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999), eps=1e-7)
    xt, yt = torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        h = F.relu(F.conv2d(xt, params[0], params[1]))
        h = F.batch_norm(h, fixed[2], fixed[3], fixed[0], fixed[1], training=False, eps=1e-2)
        h = F.max_pool2d(h, 2)
        logits = h.permute(0, 2, 3, 1).reshape(5, -1) @ params[2].T + params[3]
        loss = F.cross_entropy(logits, yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    hist = model.fit(x, y, epochs=3, batch_size=5, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist.history["loss"], losses, rtol=1e-9)
    got = model.get_weights()
    want = [p.detach().numpy() for p in params]
    for g, e in zip([got[0], got[1], got[6], got[7]],
                    [want[0].transpose(2, 3, 1, 0), want[1], want[2].T, want[3]]):  # fmt: skip
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10)
    for g, e in zip(got[2:6], stats):
        np.testing.assert_array_equal(g, e)
    assert not np.allclose(got[0], k1)  # the gradient reached the convolution


# -- the model around the kinds ------------------------------------------------------------


def test_layer_arguments_follow_keras():
    conv = Conv2D(8, 3)
    assert (conv.kernel_size, conv.strides, conv.padding, conv.use_bias) == (
        (3, 3), (1, 1), "valid", True)  # fmt: skip
    pool = MaxPooling2D()
    assert (pool.pool_size, pool.strides, pool.padding) == ((2, 2), (2, 2), "valid")
    assert AveragePooling2D(3, strides=1).strides == (1, 1)
    first = Conv2D(6, 5, padding="same", input_shape=(28, 28, 1))
    model = fastnn.Sequential([first, MaxPooling2D(), Conv2D(16, 5), GlobalAveragePooling2D()])
    model.build((28, 28, 1))
    assert [lay.output_shape for lay in model.layers] == [(28, 28, 6), (14, 14, 6),
                                                          (10, 10, 16), (16,)]  # fmt: skip
    kernel = model.layers[0].get_weights()[0]
    assert kernel.shape == (5, 5, 1, 6)
    limit = np.sqrt(6 / (25 * 1 + 25 * 6))  # glorot fans over the receptive field
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit


def test_bad_arguments_are_refused_naming_them():
    for kwargs, word in (
        ({"filters": 0, "kernel_size": 3}, "filters"),
        ({"filters": 2, "kernel_size": (3, 0)}, r"kernel_size\[1\]"),
        ({"filters": 2, "kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"filters": 2, "kernel_size": 3, "strides": -1}, "strides"),
        ({"filters": 2, "kernel_size": 3, "padding": "full"}, "padding"),
        ({"filters": 2, "kernel_size": 3, "data_format": "channels_first"}, "data_format"),
        ({"filters": 2, "kernel_size": 3, "activation": "bogus"}, "bogus"),
    ):
        with pytest.raises((ValueError, TypeError), match=word):
            Conv2D(**kwargs)
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2D(pool_size=0)
    with pytest.raises(TypeError, match="padding"):
        AveragePooling2D(padding=None)
    with pytest.raises(ValueError, match="output of 0x"):
        fastnn.Sequential([Conv2D(2, 5, input_shape=(4, 8, 1))]).build((4, 8, 1))
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        fastnn.Sequential([Conv2D(2, 3, input_shape=(8, 8))]).build((8, 8))


def test_images_without_the_channel_axis_are_refused_with_the_fix():
    model = fastnn.Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten(),
                               Dense(3, activation="softmax")], backend="numpy")  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = np.zeros((4, 8, 8)), np.zeros(4, dtype=int)
    for call in (lambda: model.fit(x, y, verbose=0), lambda: model.predict(x),
                 lambda: model.evaluate(x, y, verbose=0),
                 lambda: model.train_on_batch(x, y)):  # fmt: skip
        with pytest.raises(ValueError, match=r"add the channel axis: x\[\.\.\., None\]"):
            call()


def test_cuda_backend_refuses_conv_kinds_naming_the_backends(monkeypatch):
    """The cuda backend's KINDS leaves the CONV family out: a model holding one is refused
    at build, naming the layer and the backends that run it (also without numba-cuda)."""
    import types

    from fastnn import backend as fastnn_backend

    assert not {C.CONV2D, C.MAXPOOL2D, C.AVGPOOL2D, C.GLOBAL_AVGPOOL2D,
                C.GLOBAL_MAXPOOL2D} & _cuda_kinds()  # fmt: skip
    stand_in = types.ModuleType("cuda_kinds")
    stand_in.__dict__.update(vars(ref))
    stand_in.KINDS = _cuda_kinds()
    monkeypatch.setitem(fastnn_backend.MODULES, "cuda_kinds", "cuda_kinds")
    monkeypatch.setitem(fastnn_backend._loaded, "cuda_kinds", stand_in)
    with pytest.raises(ValueError, match=r"conv2d' \(Conv2D\).*cython, numba, numpy"):
        fastnn.Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Flatten(), Dense(2)],
                          backend="cuda_kinds").build((5, 5, 1))  # fmt: skip


def _cuda_kinds():
    """cuda.KINDS, read from the module's source when numba-cuda cannot be imported here."""
    import ast
    import pathlib

    src = pathlib.Path(ref.__file__).with_name("cuda.py").read_text()
    line = next(ln for ln in src.splitlines() if ln.startswith("KINDS = "))
    names = [n.attr for n in ast.walk(ast.parse(line)) if isinstance(n, ast.Attribute)]
    return frozenset(getattr(C, n) for n in names)


@pytest.mark.parametrize("backend", BACKENDS[:1] or ["numpy"])
def test_save_and_load_keep_a_cnn(tmp_path, backend):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10, 6, 7, 1)), rng.integers(0, 3, 10)
    model = _cnn_global_avg(backend, "float64")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=5, verbose=0)
    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = fastnn.models.load_model(path, backend=backend)
    assert [type(a).__name__ for a in loaded.layers] == [type(a).__name__ for a in model.layers]
    assert loaded.layers[2].get_config() == model.layers[2].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS[:1] or ["numpy"])
def test_cnn_memory_does_not_grow_with_the_number_of_steps(backend):
    """Nothing is kept per training step once the workspaces exist (the probe of
    tests/test_model.py, which is shown there to catch a 16-byte leak per step)."""
    from tests.test_model import _memory_growth

    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((400, 6, 7, 1)).astype(np.float32), rng.integers(0, 3, 400)
    model = _cnn_global_avg(backend, "float32")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    retained, peak = _memory_growth(model, x, y)
    bound = 8192  # 600 more steps in the long fit: 16 bytes per step would be 9.6 KB
    assert abs(retained) < bound, retained
    assert abs(peak) < bound, peak


def test_digits_images():
    (xtr, ytr), (xte, _) = fastnn.datasets.load_digits(images=True)
    (ftr, _), _ = fastnn.datasets.load_digits()
    assert xtr.shape[1:] == (8, 8, 1) and xte.shape[1:] == (8, 8, 1)
    np.testing.assert_array_equal(xtr.reshape(len(xtr), -1), ftr)
    with pytest.raises(TypeError, match="images"):
        fastnn.datasets.load_digits(images="yes")


def test_mnist_images(tmp_path):
    from fastnn.datasets import MNIST_FILES, load_mnist, save_idx

    rng = np.random.default_rng(0)
    for key, stem in MNIST_FILES.items():
        n = 5 if "train" in key else 3
        data = rng.integers(0, 256, (n, 4, 6)) if key.startswith("x") else rng.integers(0, 10, n)
        save_idx(tmp_path / stem, data.astype(np.uint8))
    (xtr, _), (xte, _) = load_mnist(tmp_path, images=True)
    assert xtr.shape == (5, 4, 6, 1) and xte.shape == (3, 4, 6, 1)
    (ftr, _), _ = load_mnist(tmp_path)
    np.testing.assert_array_equal(xtr.reshape(5, -1), ftr)


MALFORMED = [
    (0, C.P_KH, 10**6),  # windows past the image, a kernel past params
    (0, C.P_KH, 0),
    (0, C.P_SW, 0),
    (0, C.P_PAD_TOP, 3),  # padding as large as the window
    (0, C.P_PAD_LEFT, -1),
    (0, C.P_OUT0, 40),  # outputs whose windows start below the image
    (0, C.P_W0, 10**9),
    (0, C.P_W1, 10**9),
    (0, C.P_SAVE_OFF, 10**9),  # the im2col columns past acts
    (1, C.P_SAVE_OFF, 10**9),  # the argmax positions past acts
    (1, C.P_OUT2, 4),  # pooling that changes the channels
    (3, C.P_SH, -2),
    (6, C.P_KH, 0),  # the global max pooling
]


@pytest.mark.parametrize("row, column, value", MALFORMED)
def test_cython_refuses_a_malformed_conv_plan(row, column, value):
    """Every window geometry and extent of a CONV-family row is checked before any loop
    runs: a ValueError, never a read or write outside a buffer."""
    if "cython" not in BACKENDS:
        pytest.skip("cython backend not available")
    cy = fastnn.backend.load("cython")
    model = _cnn("cython", "float32")
    model.compile("adam", "sparse_categorical_crossentropy")
    eng, n = model._engine, 3
    plan = eng.plan_for(n)
    x = np.random.default_rng(0).standard_normal((n, 9 * 8 * 2)).astype(np.float32)
    work = tuple(np.zeros(s, t) for s, t in ((plan.acts_size, np.float32),
                 (plan.gbuf_size, np.float32), (plan.acc_size, np.float64)))  # fmt: skip
    cy.forward_stack(x, plan.args, eng.net, work, 1, 0, 1)  # the plan as built runs
    assert plan.layers[row, C.P_KIND] in (C.CONV2D, C.MAXPOOL2D, C.AVGPOOL2D,
                                          C.GLOBAL_MAXPOOL2D)  # fmt: skip
    layers = plan.layers.copy()
    layers[row, column] = value
    before = work[0].copy()
    with pytest.raises(ValueError, match=f"layer {row}"):
        cy.forward_stack(x, (layers, plan.layer_f, plan.kinds), eng.net, work, 1, 0, 1)
    np.testing.assert_array_equal(work[0], before)
