"""The JAX baselines of the convolutional and recurrent benchmark networks train the same
networks as fastnn (skipped where JAX is not installed: it is not a dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import bench
from fastnn.bench import baselines as B

pytest.importorskip("jax")


def _same_steps(impls, batches, rtol, atol):
    ref, jax_net = impls["fastnn-numpy"], impls["jax"]
    for x, y in batches:
        want = ref.train_step(x, y)
        got = jax_net.train_step(*bench._batch_for(jax_net, x, y))
        assert got == pytest.approx(want, rel=rtol)
    for i, (a, b) in enumerate(zip(ref.model.get_weights(), jax_net.get_weights())):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol, err_msg=f"weight {i}")


@pytest.mark.parametrize("net", ["lenet", "convnet"])
def test_jax_cnn_baseline_trains_the_same_network(net):
    from fastnn.bench import cnn

    impls = bench.make_impls(net, ["numpy"], {"jax": None})
    assert set(impls) == {"fastnn-numpy", "jax"}
    batch = cnn.CNNS[net][1]
    batches = [B.synthetic_data(batch, 784, 10, seed=s) for s in range(3)]
    _same_steps(impls, batches, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("net", ["lstm_rows", "gru_rows", "lstm_imdb"])
def test_jax_rnn_baseline_trains_the_same_network(net):
    from fastnn.bench import rnn

    impls = bench.make_impls(net, ["numpy"], {"jax": None})
    batches = [rnn.rnn_data(net, 8, seed=s) for s in (1, 2)]
    _same_steps(impls, batches, rtol=2e-4, atol=1e-4)
