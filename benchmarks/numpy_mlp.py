"""The hand-written NumPy MLP baseline (it lives in :mod:`fastnn._baselines` so that
``fastnn bench`` can use it from an installed package)."""

from fastnn._baselines import ADAM, NETWORKS, NumpyMLP, glorot_weights, synthetic_data

__all__ = ["ADAM", "NETWORKS", "NumpyMLP", "glorot_weights", "synthetic_data"]
