"""The hand-written NumPy MLP baseline (it lives in :mod:`fastnn.bench.baselines` so that
``fastnn bench`` can use it from an installed package)."""

from fastnn.bench.baselines import ADAM, NETWORKS, NumpyMLP, glorot_weights, synthetic_data

__all__ = ["ADAM", "NETWORKS", "NumpyMLP", "glorot_weights", "synthetic_data"]
