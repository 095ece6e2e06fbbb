"""Embedding: integer token ids (N, T) to vectors (N, T, output_dim) (Keras's layer)."""

from __future__ import annotations

import numpy as np

from .. import initializers
from .._checks import as_array
from ..kernels import codes, reference
from .base import Layer, WeightSpec, positive_int


class Embedding(Layer):
    """Looks up a row of ``embeddings`` (input_dim, output_dim) for every token id.

    Must be the first layer of a model: ``fit``/``evaluate``/``predict`` take the ids
    (N, T) as integers (or floats holding integers), check once per call that they lie in
    ``[0, input_dim)`` and hand them to the compiled kernels as integers (int32 for a
    float32 model, int64 for float64; carried bit for bit in the float batch buffers, never
    converted to floating-point values).

    Parameters
    ----------
    input_dim : int
        Vocabulary size: ids lie in [0, input_dim).
    output_dim : int
        Width of each embedding vector.
    embeddings_initializer : str or callable(shape, rng)
        Keras's default "uniform" draws from U(-0.05, 0.05).
    input_length : int, optional
        Tokens per sample (Keras 2's argument; the same as ``input_shape=(input_length,)``).
    """

    kind = codes.EMBEDDING

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform",
                 input_length: int | None = None, name: str | None = None,
                 input_shape=None):  # fmt: skip
        if input_length is not None:
            input_length = positive_int(input_length, "input_length")
            if input_shape is None:
                input_shape = (input_length,)
        super().__init__(name, input_shape=input_shape)
        self.input_dim = positive_int(input_dim, "input_dim")
        self.output_dim = positive_int(output_dim, "output_dim")
        self.input_length = input_length
        self._init = initializers.get(embeddings_initializer, "embeddings_initializer")
        named = isinstance(embeddings_initializer, str)
        self._init_name = embeddings_initializer if named else None
        max_id = np.iinfo(np.int32).max
        if self.input_dim > max_id:
            raise ValueError(f"input_dim must be <= {max_id}, got {self.input_dim}")

    def _check_input_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(
                f"Embedding takes token ids of shape (N, T) (one axis per sample), got samples "
                f"of shape {shape}"
            )
        if self.input_length is not None and shape[0] != self.input_length:
            raise ValueError(
                f"input_length is {self.input_length} but the samples have {shape[0]} tokens"
            )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def weight_specs(self):
        shape = (self.input_dim, self.output_dim)
        return [WeightSpec("embeddings", shape, self._init, codes.P_W0)]

    def plan_fields(self):
        return codes.LINEAR, {}, {codes.P_VOCAB: self.input_dim}

    def get_config(self):
        config = {**super().get_config(), "input_dim": self.input_dim,
                  "output_dim": self.output_dim}  # fmt: skip
        if self._init_name is not None:
            config["embeddings_initializer"] = self._init_name
        if self.input_length is not None:
            config["input_length"] = self.input_length
        return config

    # -- ids ----------------------------------------------------------------------------
    def check_ids(self, x, arg="x") -> np.ndarray:
        """``x`` as C-contiguous int64 ids (N, T), or a TypeError/ValueError naming ``arg``
        (not integers, or an id outside [0, input_dim): the message names the largest)."""
        x = as_array(x, arg)
        if x.dtype.kind in "fc" or x.dtype == np.bool_:
            if x.dtype.kind == "c" or x.dtype == np.bool_ or not np.all(np.isfinite(x)):
                raise TypeError(f"{arg} must hold integer token ids, got dtype {x.dtype}")
            if np.any(x != np.round(x)):
                raise ValueError(f"{arg} must hold integer token ids, got fractional values")
        elif x.dtype.kind not in "iu":
            raise TypeError(f"{arg} must hold integer token ids, got dtype {x.dtype}")
        if x.size:
            low, high = x.min(), x.max()
            if low < 0 or high >= self.input_dim:
                raise ValueError(
                    f"{arg} token ids must be in [0, {self.input_dim}) (input_dim), got ids in "
                    f"[{low}, {high}] (largest id {high})"
                )
        return np.ascontiguousarray(x, dtype=np.int64)

    def encode_ids(self, x, dtype, arg="x") -> np.ndarray:
        """Checked ids (N, T) as integers of ``dtype``'s width (int32 for float32, int64 for
        float64) viewed as a ``dtype`` array: what a model's float batch buffers carry to
        the kernels (``reference.ids_view`` reads them back)."""
        ids = self.check_ids(x, arg)
        width = np.int32 if np.dtype(dtype) == np.float32 else np.int64
        return ids.reshape(ids.shape[0], -1).astype(width).view(dtype)

    # -- low-level API ----------------------------------------------------------------
    def _kernel(self, name):
        return getattr(self._kernels, name, None) or getattr(reference, name)

    def forward(self, x, training=False):
        ids = self.check_ids(x)
        if not self.built:
            self.build(ids.shape[1:], self.dtype)
        if ids.ndim != 2 or ids.shape[1:] != self.input_shape:
            raise ValueError(
                f"x must have shape (N, {self.input_shape[0]}) for layer {self.name!r}, got "
                f"{ids.shape}"
            )
        buf = self._buffers(ids.shape[0])
        self._kernel("embedding_forward")(ids, self._values["embeddings"],
                                          buf["out"].reshape(-1, self.output_dim))  # fmt: skip
        self._ids = ids
        return buf["out"]

    def backward(self, dout):
        dout = self._check_dout(dout)
        self._kernel("embedding_backward")(self._ids, dout.reshape(-1, self.output_dim),
                                           self._grads["embeddings"])  # fmt: skip
        return None
