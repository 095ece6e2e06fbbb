"""``fastnn bench``: training-speed ratios against NumPy (and PyTorch/JAX when installed)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Registers the ``bench`` subcommand."""
    p = sub.add_parser("bench", help="measure training speed vs NumPy / PyTorch and print ratios")
    p.set_defaults(func=run)


def run(args) -> None:
    raise RuntimeError("fastnn bench is not available in this build")
