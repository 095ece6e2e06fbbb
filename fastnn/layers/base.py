"""The layer protocol: what a layer declares so that one engine can run it.

A layer declares its output shape (:meth:`Layer.compute_output_shape`), its weights
(:meth:`Layer.weight_specs`: name, shape, initializer, regularizer, trainable, and the plan
column that locates it), the fields of its plan row (:meth:`Layer.plan_fields`) and its
workspace needs (:meth:`Layer.workspace`).  The model's engine, ``summary()``,
``get_weights``/``set_weights``, ``count_params`` and the model file all follow these
declarations; see ``docs/adding_a_layer_kind.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import backend as _backend
from .._checks import as_array, as_float, check_finite
from ..kernels import codes

#: Dimensions of a sample (besides the batch) a compiled plan supports.
MAX_SAMPLE_DIMS = 3


def float_dtype(dtype) -> np.dtype:
    """np.dtype of ``dtype`` if it is float32 or float64, else a ValueError."""
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return out


def positive_int(value, arg):
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{arg} must be a positive int, got {value}")
    return int(value)


def number(value, arg, low=None, high=None, low_open=False, high_open=True):
    """``value`` as a finite float in the given bounds, or a TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{arg} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{arg} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{arg} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def sample_shape(value, arg: str) -> tuple[int, ...]:
    """A per-sample shape (without the batch axis): an int or a tuple of 1 to 3 ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(
            f"{arg} must be a tuple of ints such as (features,), got "
            f"{type(value).__name__} {value!r}"
        )
    shape = tuple(positive_int(d, f"{arg}[{i}]") for i, d in enumerate(value))
    if not 1 <= len(shape) <= MAX_SAMPLE_DIMS:
        raise ValueError(
            f"{arg} must have 1 to {MAX_SAMPLE_DIMS} dimensions per sample (the batch axis "
            f"excluded), got {tuple(value)}"
        )
    return shape


def declared_shape(input_dim, input_shape) -> tuple[int, ...] | None:
    """The per-sample input shape a first layer declares (``input_dim`` or ``input_shape``)."""
    if input_dim is not None and input_shape is not None:
        raise ValueError(
            f"give input_dim or input_shape, not both, got input_dim={input_dim!r} and "
            f"input_shape={input_shape!r}"
        )
    if input_shape is not None:
        return sample_shape(input_shape, "input_shape")
    return None if input_dim is None else (positive_int(input_dim, "input_dim"),)


def size_of(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


@dataclass(frozen=True)
class WeightSpec:
    """One weight a layer declares.

    ``slot`` is the plan column that holds its offset: ``codes.P_W0``.. for trainable
    weights (in the flat parameter buffer), ``codes.P_S0``.. for non-trainable ones (in
    the non-trainable buffer, which no optimizer touches)."""

    name: str
    shape: tuple
    initializer: Callable
    slot: int
    trainable: bool = True
    regularizer: object = None


_NAME_COUNTS: dict[str, int] = {}


def snake_case(class_name: str) -> str:
    """Keras's default name of a class: ``BatchNormalization`` -> ``batch_normalization``,
    ``Conv2D`` -> ``conv2d``, ``SimpleRNN`` -> ``simple_rnn``."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(prefix: str) -> str:
    """``prefix`` the first time, then ``prefix_1``, ``prefix_2``... (per process, as Keras
    names its layers and models; :func:`clear_session` starts the counts again)."""
    count = _NAME_COUNTS.get(prefix, 0)
    _NAME_COUNTS[prefix] = count + 1
    return prefix if count == 0 else f"{prefix}_{count}"


def clear_session() -> None:
    """Resets the default-name counters (Keras's ``keras.utils.clear_session``)."""
    _NAME_COUNTS.clear()


def check_name(name):
    """``name`` unchanged if it is a string or None, else a TypeError."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__} {name!r}")
    return name


class Layer:
    """Base class of the layers.

    Subclasses set ``kind`` (a ``codes`` kind; None for a layer that is a view of its input,
    such as Flatten) and override the protocol methods they need.
    """

    kind: int | None = None

    def __init__(self, name: str | None = None, input_dim=None, input_shape=None):
        self.name = check_name(name) or unique_name(snake_case(type(self).__name__))
        self.declared_input_shape = declared_shape(input_dim, input_shape)
        self.input_shape: tuple | None = None
        self.output_shape: tuple | None = None
        self.dtype = np.dtype(np.float32)
        self.built = False
        #: False freezes the layer: its weights get no update (set it before compile; a
        #: frozen BatchNormalization runs in inference mode, as in Keras)
        self.trainable = True
        self.backend_name = None
        self._kernels = None
        self._values: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._cache: dict = {}

    # -- protocol ---------------------------------------------------------------------
    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """The per-sample output shape for a per-sample ``input_shape``."""
        return tuple(input_shape)

    def weight_specs(self) -> list[WeightSpec]:
        """The weights of the built layer, in get_weights order (trainable first)."""
        return []

    def plan_fields(self) -> tuple[int, dict, dict]:
        """(activation code, {F_* column: value}, {P_ARG* column: value}) of the plan row."""
        return codes.LINEAR, {}, {}

    def workspace(self, rows: int) -> tuple[int, int]:
        """Elements of (saved tensors and scratch in acts, float64 accumulators) the layer
        needs besides its output, for batches of up to ``rows`` samples."""
        return 0, 0

    # -- building ---------------------------------------------------------------------
    def build(self, input_shape, dtype="float32", rng=None, backend: str | None = None):
        """Fixes the per-sample input shape (an int is one feature axis) and dtype,
        resolves the kernel backend and creates the weights (a layer built before for the
        same input shape keeps its weights, converted to ``dtype``)."""
        shape = sample_shape(input_shape, "input_shape")
        if self.declared_input_shape is not None and self.declared_input_shape != shape:
            raise ValueError(
                f"layer {self.name!r} declares input shape {self.declared_input_shape} but "
                f"receives samples of shape {shape}"
            )
        kept = self._values if self.built and shape == self.input_shape else {}
        self.dtype = float_dtype(dtype)
        self.backend_name, self._kernels = _backend.resolve(backend)
        self.input_shape = shape
        self._check_input_shape(shape)
        self.output_shape = tuple(self.compute_output_shape(shape))
        rng = rng if rng is not None else np.random.default_rng()
        # a layer built before (by the user, or adapt) keeps its weights, as in Keras
        self._values = {
            s.name: (kept[s.name].astype(self.dtype) if s.name in kept else self._initial(s, rng))
            for s in self.weight_specs()
        }
        self._grads = {
            s.name: np.zeros(s.shape, self.dtype) for s in self.weight_specs() if s.trainable
        }
        self._cache = {}
        self.built = True
        return self

    def _check_input_shape(self, shape) -> None:
        """Raises when the layer cannot take samples of ``shape``."""

    def _initial(self, spec: WeightSpec, rng) -> np.ndarray:
        arg = f"{spec.name} initializer"
        value = as_array(spec.initializer(spec.shape, rng), f"{arg} result")
        if value.shape != tuple(spec.shape):
            raise ValueError(f"{arg} must return an array of shape {spec.shape}, got {value.shape}")
        value = np.ascontiguousarray(value, dtype=self.dtype)
        check_finite(value, f"{arg} result")
        return value

    def bind(self, params, grads, nontrain, offsets: dict) -> None:
        """Makes the weights (and gradients) views into the model's flat buffers at
        ``offsets`` (weight name -> offset in params or nontrain), copying values in."""
        for spec in self.weight_specs():
            off, size = offsets[spec.name], size_of(spec.shape)
            buf = params if spec.trainable else nontrain
            view = buf[off : off + size].reshape(spec.shape)
            if isinstance(buf, np.ndarray):
                view[...] = self._values[spec.name]
            self._values[spec.name] = view
            if spec.trainable:
                self._grads[spec.name] = grads[off : off + size].reshape(spec.shape)

    # -- weights ----------------------------------------------------------------------
    @property
    def has_weights(self) -> bool:
        return bool(self.built and self.weight_specs())

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the layer's weights, in get_weights order."""
        return [tuple(s.shape) for s in self.weight_specs()] if self.built else []

    def _live(self, grads: bool = False) -> dict:
        """The weights (or gradients) by name.  A layer of a model that has not made its
        flat buffers yet has them made first when the model can build, so that a view
        handed out now is the weight the model trains, not an array it copies once."""
        model = self._model
        if model is not None and model._engine is None:
            try:
                model._maybe_build()
            except (ValueError, TypeError):
                pass  # an unfinished stack (e.g. no flat output yet): the layer's own arrays
        return self._grads if grads else self._values

    @property
    def weights(self) -> list[np.ndarray]:
        """Every weight, trainable first (views: writing into them changes the layer)."""
        if not self.built:
            return []
        values = self._live()
        return [values[s.name] for s in self.weight_specs()]

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        """The weights the optimizer updates (none while the layer is frozen)."""
        if not (self.built and self.trainable):
            return []
        values = self._live()
        return [values[s.name] for s in self.weight_specs() if s.trainable]

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        """The other weights (all of them while the layer is frozen)."""
        if not self.built:
            return []
        specs, values = self.weight_specs(), self._live()
        return [values[s.name] for s in specs if not (s.trainable and self.trainable)]

    @property
    def grads(self) -> list[np.ndarray]:
        """Gradients of the trainable weights from the last backward."""
        grads = self._live(grads=True)
        return [grads[s.name] for s in self.weight_specs() if s.trainable]

    def count_params(self) -> int:
        return sum(size_of(s.shape) for s in self.weight_specs()) if self.built else 0

    def get_weights(self) -> list[np.ndarray]:
        """Copies of :attr:`weights`."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        """Sets every weight from a list in :meth:`get_weights` order (shapes must match)."""
        if not self.built:
            raise RuntimeError(f"layer {self.name!r} is not built yet: it has no weights")
        specs = self.weight_specs()
        checked = check_weight_list(weights, [s.shape for s in specs], self.dtype)

        def write():
            for spec, value in zip(specs, checked):
                self._values[spec.name][...] = value

        self._edit_weights(write)

    #: the model whose buffers hold this layer's weights (set when the model builds it)
    _model = None

    def _detach(self) -> None:
        """Leaves its model (``Sequential.pop``): the weights become the layer's own
        copies instead of views into the model's buffers."""
        self._values = {k: np.array(v, copy=True) for k, v in self._values.items()}
        self._grads = {k: np.array(v, copy=True) for k, v in self._grads.items()}
        self._cache = {}
        self._model = None

    def _edit_weights(self, edit) -> None:
        """Runs ``edit`` (which writes into the weight views) so that the model, if any,
        sees the change (a device backend keeps its own copy)."""
        if self._model is None:
            edit()
        else:
            self._model._edit_weights(edit)

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments."""
        config = {"name": self.name}
        if self.declared_input_shape is not None:
            config["input_shape"] = list(self.declared_input_shape)
        if not self.trainable:
            config["trainable"] = False
        return config

    # -- low-level forward/backward --------------------------------------------------
    def _rows(self, shape, n):
        """(rows, width): a batch of ``n`` samples of ``shape`` seen along its last axis."""
        return n * size_of(shape[:-1]), shape[-1]

    def _buffers(self, n: int) -> dict:
        if n not in self._cache:
            self._cache = {n: self._alloc(n)}
        return self._cache[n]

    def _alloc(self, n) -> dict:
        return {
            "out": np.empty((n, *self.output_shape), self.dtype),
            "dx": np.empty((n, *self.input_shape), self.dtype),
        }

    def _check_input(self, x):
        x = as_array(x, "x")
        if not self.built:
            if x.ndim < 2 or x.shape[0] == 0:
                raise ValueError(
                    f"x must have shape (N, features...) with N >= 1 for layer {self.name!r}, "
                    f"got {x.shape}"
                )
            self.build(x.shape[1:], x.dtype if x.dtype in (np.float32, np.float64) else "float32")
        if x.ndim < 2 or x.shape[0] == 0 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.input_shape))}) with N >= 1 "
                f"for layer {self.name!r}, got {x.shape}"
            )
        out = as_float(x, self.dtype)
        check_finite(out, "x", x)
        return out

    def _check_dout(self, dout):
        if not self._cache:
            raise RuntimeError(f"call forward() on layer {self.name!r} before backward()")
        out = next(iter(self._cache.values()))["out"]
        dout = as_array(dout, "dout")
        if dout.shape != out.shape:
            raise ValueError(
                f"dout must have the shape of the last forward output {out.shape}, got {dout.shape}"
            )
        dout = np.ascontiguousarray(dout, dtype=self.dtype)
        check_finite(dout, "dout")
        return dout

    def _last_batch(self) -> int:
        return next(iter(self._cache))

    def forward(self, x, training: bool = False) -> np.ndarray:
        """Output for x (N, *input_shape); keeps what backward needs.  The returned array
        is reused by the next call of the same batch size (copy it to keep it)."""
        raise NotImplementedError(f"{type(self).__name__} has no low-level forward")

    def backward(self, dout) -> np.ndarray:
        """dL/dx for dL/dout of the last forward; layers with weights also fill ``grads``."""
        raise NotImplementedError(f"{type(self).__name__} has no low-level backward")

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


def check_weight_list(weights, shapes, dtype, what="weights") -> list[np.ndarray]:
    """``weights`` (a list of arrays of ``shapes``) converted to ``dtype`` and checked."""
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"{what} must be a list of {len(shapes)} arrays, got {type(weights).__name__}"
        )
    weights = list(weights)
    if len(weights) != len(shapes):
        raise ValueError(
            f"{what} must be a list of {len(shapes)} arrays with shapes "
            f"{[tuple(s) for s in shapes]}, got {len(weights)} arrays"
        )
    out = []
    for i, (w, shape) in enumerate(zip(weights, shapes)):
        w = as_array(w, f"{what}[{i}]")
        if w.shape != tuple(shape):
            raise ValueError(f"{what}[{i}] must have shape {tuple(shape)}, got {w.shape}")
        with np.errstate(over="ignore"):
            cast = w.astype(dtype)
        check_finite(cast, f"{what}[{i}]", w)
        out.append(cast)
    return out
