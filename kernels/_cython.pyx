# cython: language_level=3, binding=True
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Cython kernels, compiled ahead of time: the contract of ``reference`` (same names, same
parameters, same results) with no warm-up.

Every def function validates shapes and then runs C code without the GIL.  The whole-network
functions (``forward_stack`` ... ``run_epoch``) check the whole plan (every kind and code,
every offset and extent against its buffer) once per call and then interpret it in C: one
call runs a whole step or a whole epoch.  GEMMs go through SciPy's BLAS (row-major arrays
are handed to the column-major routine as their transposes, so nothing is copied).
"""

from cpython.buffer cimport PyBUF_STRIDES, PyBuffer_Release, PyObject_GetBuffer
from cpython.long cimport PyLong_AsUnsignedLongLongMask, PyLong_Check
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport (
    INFINITY, NAN, ceil, erf, erff, exp, expm1, expm1f, fabs, fabsf, isfinite, log, log1p, pow,
    sqrt, sqrtf, tanh,
)
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating
cimport numpy as cnp

import numpy as np

from . import codes as _codes

# The kernels by topic: textual includes, compiled as this one module (_cy_*.pxi).
include "_cy_codes.pxi"
include "_cy_scalar.pxi"
include "_cy_blas.pxi"
include "_cy_activations.pxi"
include "_cy_dense.pxi"
include "_cy_conv.pxi"
include "_cy_conv_c1.pxi"
include "_cy_conv_direct.pxi"
include "_cy_pool.pxi"
include "_cy_rnn.pxi"
include "_cy_dropout.pxi"
include "_cy_losses.pxi"
include "_cy_optimizers.pxi"
include "_cy_norm.pxi"
include "_cy_plan.pxi"
include "_cy_checks.pxi"
include "_cy_api.pxi"
include "_cy_api_conv.pxi"
include "_cy_api_network.pxi"
include "_cy_api_rnn.pxi"
