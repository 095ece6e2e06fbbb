"""Compiled kernels of fastnn, one module per backend, all with the same contract.

``reference`` (NumPy) is the specification; ``numba_cpu``, ``_cython`` and ``cuda``
implement the same functions with the same signatures.  See ``reference`` for shapes.
"""
