"""The PyTorch eager MLP baseline (it lives in :mod:`fastnn.bench.baselines` so that
``fastnn bench`` can use it from an installed package; torch is imported only when a
:class:`TorchMLP` is made)."""

from fastnn.bench.baselines import TorchMLP, torch_available

__all__ = ["TorchMLP", "torch_available"]
