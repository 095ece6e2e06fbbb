"""fastnn: fast small and medium neural networks on the CPU, with a Keras-style API."""

from .backend import get_backend, set_backend

__version__ = "0.1.0"
__all__ = ["get_backend", "set_backend", "__version__"]
