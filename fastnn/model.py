"""The Keras-style model: ``Sequential([...])``, ``compile``, ``fit``, ``evaluate``, ``predict``.

A whole epoch runs as one compiled kernel call (batch gathering, forward, loss, backward and
the optimizer update over one flat buffer); Python runs once per epoch, or once per batch
only when a callback asks for batch hooks.
"""

from __future__ import annotations

import numpy as np

from . import backend as _backend
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from ._checks import (  # noqa: F401 - NonFiniteLossError is public here
    NonFiniteLossError,
    _batch_size,
    _check_bool,
    as_array,
    as_float,
    check_finite,
    check_int,
)
from ._engine import Engine
from ._fit import fit_loop
from ._inference import Inference, returned
from ._inputs import class_weights, shape_mismatch, to_samples
from .kernels import codes
from .layers import Dropout, Embedding, Flatten, Input, Layer, float_dtype
from .layers.base import check_name, check_weight_list, sample_shape, size_of, unique_name

#: largest parameters + optimizer state copied for a workspace's warm-up step; above it a
#: step takes tens of milliseconds and first-call costs are lost in it
WARM_UP_MAX_BYTES = 64 << 20

#: Backends whose kernels are compiled code: no NumPy floating-point warnings to silence.
_NO_FP_WARNINGS = frozenset({"numba", "cython"})


def _compiled_metrics(metrics, loss) -> _metrics.MetricSet:
    """The metrics ``compile`` was given, checked: distinct log names, none named ``loss``,
    no accuracy with a regression loss."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        raise TypeError(
            f"metrics must be a list of names such as ['accuracy'], got "
            f"{type(metrics).__name__} {metrics!r}"
        )
    metric_set = _metrics.MetricSet([_metrics.get(m) for m in metrics or []])
    seen = set()
    for name in metric_set.names:
        if name in seen or name == "loss":
            raise ValueError(
                f"metrics must be distinct names other than 'loss' (each is a key of the "
                f"logs), got {name!r} twice in {list(metrics)!r}"
            )
        seen.add(name)
    regression = isinstance(loss, (_losses.MeanSquaredError, _losses.MeanAbsoluteError))
    for m in metric_set.metrics:
        if regression and isinstance(m, _metrics.Accuracy):
            raise ValueError(f"metric {m.name!r} needs a classification loss, got {loss.name}")
    return metric_set


class Sequential(Inference):
    """A linear stack of layers.

    Parameters
    ----------
    layers : list, optional
        Optionally ``fastnn.Input(shape)`` first, then layers: Dense, Dropout, Activation,
        BatchNormalization, Normalization, Flatten (anywhere).
    seed : int, optional
        Seeds weight initialisation, batch shuffling and dropout: the same seed gives the
        same initial weights and the same batch order.
    dtype : {"float32", "float64"}
        Floating type of weights and computation.
    backend : str, optional
        Kernel backend ("cython", "numba", "numpy", "cuda"); default :func:`fastnn.get_backend`.

    Attributes
    ----------
    metadata : dict
        JSON-serialisable information about the model (string keys), saved in model files
        and restored by :func:`fastnn.load_model` (``fastnn train --save`` records the
        dataset, task, seed and loss under ``"cli"``).  Empty by default.
    """

    def __init__(
        self,
        layers=None,
        seed: int | None = None,
        dtype="float32",
        backend: str | None = None,
        name: str | None = None,
    ):
        if seed is not None:
            seed = check_int(seed, "seed", 0)
        else:
            from .utils import next_seed

            seed = next_seed()
        self.seed = seed
        self.dtype = float_dtype(dtype)
        check_name(name)
        if layers is not None and (
            isinstance(layers, (Layer, Input, str)) or not hasattr(layers, "__iter__")
        ):
            raise TypeError(
                f"layers must be a list of layers, got {type(layers).__name__}; "
                "wrap a single layer in a list: Sequential([layer])"
            )
        self.backend_name, self._kernels = _backend.resolve(backend)
        #: the backend was chosen automatically: build may pick one that runs every layer
        self._auto_backend = backend is None and _backend.automatic()
        self.name = name or unique_name("sequential")
        self.layers: list[Layer] = []
        self._input: Input | None = None
        self._engine: Engine | None = None
        self._snap_buf = None
        self.optimizer = self.loss = self._plan = None
        self._metric_set = _metrics.MetricSet([])
        self.stop_training = False
        self.history = None
        self.metadata: dict = {}
        seq = np.random.SeedSequence(seed)
        self._init_rng, self._shuffle_rng = (np.random.default_rng(s) for s in seq.spawn(2))
        self._dropout_seed = int(seq.generate_state(1, dtype=np.uint32)[0])
        #: optimizer state of the weights kept when add/pop dropped the engine
        self._carried: dict | None = None
        #: add/pop changed the layers since compile: its checks run again before training
        self._recheck = False
        try:
            for layer in layers or []:
                self.add(layer)
        except Exception:
            for layer in self.layers:  # a model that failed to construct owns no layer
                if layer._model is self:
                    layer._model = None
            raise

    # -- structure --------------------------------------------------------------------
    def add(self, layer) -> None:
        """Appends a layer (an :class:`fastnn.Input` only first).

        When the input shape is known (an ``Input``, ``input_shape=`` on the first layer,
        or a model already built) the layer's weights are created at once, as in Keras 3;
        the other layers keep theirs, and their optimizer state in a compiled model.

        Raises
        ------
        TypeError, ValueError
            For a non-layer, a second Input, a layer already in this or another model, a
            repeated name, an input shape declared after the first layer, an Embedding after
            the first layer, or a layer that cannot take the previous layer's output.  The
            model is unchanged then.
        """
        if isinstance(layer, Input):
            if self.layers or self._input is not None:
                raise ValueError("Input must be the first element of the model")
            self._input = layer
            return
        if isinstance(layer, type) and issubclass(layer, (Layer, Input)):
            raise TypeError(
                f"layers must be layer instances, got the class {layer.__name__}; "
                f"call it, e.g. {layer.__name__}(...)"
            )
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fastnn layers, got {type(layer).__name__}")
        if any(layer is other for other in self.layers):
            raise ValueError(
                f"layers must be distinct objects, got layer {layer.name!r} twice; "
                "create a new layer instead"
            )
        _check_unshared(layer, self)
        if self.layers and layer.declared_input_shape is not None:
            raise ValueError(
                f"only the first layer may declare an input shape, got input_shape="
                f"{layer.declared_input_shape} on layer {len(self.layers)}; use "
                "fastnn.Input(shape=...) first instead"
            )
        if "/" in layer.name or not layer.name:
            raise ValueError(f"layer names must be non-empty without '/', got {layer.name!r}")
        if any(other.name == layer.name for other in self.layers):
            raise ValueError(
                f"layer names must be unique in a model, got {layer.name!r} twice (model files "
                "store weights by layer name); pass name=... to one of them"
            )
        if isinstance(layer, Embedding) and self.layers:
            raise ValueError(_embedding_first(layer, len(self.layers)))
        shape = self._shape_for(layer)
        if shape is not None:
            layer.build(shape, self.dtype, self._init_rng, self.backend_name)
            layer._model = self
        self._layers_changing()
        self.layers.append(layer)

    def pop(self) -> Layer:
        """Removes the last layer and returns it, as Keras 3's ``pop``: the other layers
        keep their weights and optimizer state, and the layer keeps its weights (its own
        copies, so that it may join another model).

        Raises
        ------
        IndexError
            If the model has no layers (an ``Input`` alone is not a layer), as in Keras.
        """
        if not self.layers:
            raise IndexError(
                f"pop from a model with no layers: model {self.name!r} has none to remove"
            )
        self._layers_changing()
        layer = self.layers.pop()
        if not self.layers and self._input is None and layer.declared_input_shape:
            self._input = Input(layer.declared_input_shape)  # Keras keeps its InputLayer
        if layer._model is self:
            layer._detach()
        return layer

    def _shape_for(self, layer) -> tuple | None:
        """The per-sample shape ``layer`` receives when appended, if it is known."""
        if not self.layers:
            return self._declared_input_shape() or layer.declared_input_shape
        last = self.layers[-1]
        return last.output_shape if last._model is self and last.built else None

    def _layers_changing(self) -> None:
        """Before add/pop changes the layers: the engine goes (it is built again, for the
        new stack, at the next use), keeping the optimizer state of every trainable weight
        for :meth:`_carry_state`; compile's checks run again before the next training."""
        eng = self._engine
        if self.optimizer is not None:
            self._recheck = True
            self._plan = None
        if eng is None:
            return
        eng.pull()  # the layers' weight views hold the current values
        if eng.state is not None and self._carried is None:
            state = eng.host_state()
            self._carried = {
                id(layer): (layer, {
                    spec.name: np.array(state[:, offs[spec.name]:offs[spec.name]
                                              + size_of(spec.shape)], copy=True)
                    for spec in layer.weight_specs() if spec.trainable
                })
                for layer, offs, trains in zip(eng.layers, eng.offsets, eng.trainable_flags)
                if trains
            }  # fmt: skip
        self._engine = None
        self._snap_buf = None

    def _carry_state(self) -> None:
        """Optimizer state for a new engine after add/pop: what the kept trainable weights
        had, fresh (``init_state``) for the new ones."""
        carried, self._carried = self._carried, None
        eng = self._engine
        if carried is None or self.optimizer is None:
            return
        state = self.optimizer.init_state((eng.n_train,), self.dtype)
        for layer, offs in zip(self.layers, eng.offsets):
            layer_state = carried.get(id(layer), (None, {}))
            if layer_state[0] is not layer or not layer.trainable:
                continue
            for spec in layer.weight_specs():
                old = layer_state[1].get(spec.name)
                if old is not None and old.shape == (state.shape[0], size_of(spec.shape)):
                    state[:, offs[spec.name] : offs[spec.name] + old.shape[1]] = old
        eng.set_state(state)

    def _declared_input_shape(self) -> tuple | None:
        if self._input is not None:
            return self._input.shape
        return self.layers[0].declared_input_shape if self.layers else None

    def _maybe_build(self) -> bool:
        """Builds the model if its input shape is declared; returns whether it is built."""
        if self._engine is None and self._declared_input_shape() and self.layers:
            self.build(self._declared_input_shape())
        return self._engine is not None

    def build(self, input_shape) -> None:
        """Creates the weights for samples of ``input_shape``: an int (features), a per-sample
        tuple, or Keras' full shape with a leading None (``(None, 64)``)."""
        if not self.layers:
            raise ValueError("the model has no layers: pass layers=[...] or call add() first")
        if isinstance(input_shape, (tuple, list)) and input_shape and input_shape[0] is None:
            input_shape = tuple(input_shape[1:])
        shape = sample_shape(input_shape, "input_shape")
        if self._engine is not None:
            if shape != self._engine.input_shape:
                raise ValueError(
                    f"input_shape must be {self._engine.input_shape} (the model is already "
                    f"built), got {shape}"
                )
            return
        declared = self._declared_input_shape()
        if declared is not None and declared != shape:
            raise ValueError(
                f"input_shape must be {declared} (declared by the model's input), got {shape}"
            )
        self._backend_for_kinds()
        current = shape
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Embedding) and i > 0:
                raise ValueError(_embedding_first(layer, i))
            layer.build(current, self.dtype, self._init_rng, self.backend_name)
            current = layer.output_shape
        if len(current) != 1:
            raise ValueError(
                f"the model's output must be one vector per sample, got shape {current} from "
                f"layer {self.layers[-1].name!r}; add Flatten() (or end with a Dense on "
                "flattened features)"
            )
        self._check_backend_kinds()
        for layer in self.layers:  # added to two models before either was built
            _check_unshared(layer, self)
        self._engine = Engine(self.layers, shape, self.dtype, self._kernels)
        for layer in self.layers:
            layer._model = self
        self._carry_state()

    def _backend_for_kinds(self) -> None:
        """With an automatically chosen backend that does not run one of the layers (the
        cython backend and the sequence layers), the first of the automatic order that
        runs them all."""
        kinds = {layer.kind for layer in self.layers if layer.kind is not None}
        if not self._auto_backend or _backend.runs_kinds(self.backend_name, kinds):
            return
        for name in _backend.AUTO_ORDER:
            if _backend.runs_kinds(name, kinds):
                self.backend_name, self._kernels = _backend.resolve(name)
                return

    def _other_backends(self, kinds=()) -> str:
        """The other CPU backends (that run ``kinds``), for error messages."""
        return ", ".join(
            n for n in ("cython", "numba", "numpy")
            if n != self.backend_name and _backend.runs_kinds(n, kinds)
        )  # fmt: skip

    def _check_backend_kinds(self) -> None:
        supported = getattr(self._kernels, "KINDS", None)
        if supported is None:
            return
        acts = getattr(self._kernels, "ACTS", None)
        for layer in self.layers:
            if layer.kind is not None and layer.kind not in supported:
                raise ValueError(
                    f"the {self.backend_name} backend cannot run layer {layer.name!r} "
                    f"({type(layer).__name__}); the {self._other_backends([layer.kind])} backends "
                    "run it"
                )
            act = getattr(layer, "act", None)
            if acts is not None and act is not None and act not in acts:
                raise ValueError(
                    f"the {self.backend_name} backend cannot run activation "
                    f"{layer.activation!r} of layer {layer.name!r}; the "
                    f"{self._other_backends()} backends run it"
                )

    def _check_backend_codes(self, optimizer, loss) -> None:
        """A ValueError at compile for an optimizer or loss the backend does not run."""
        opts, losses = getattr(self._kernels, "OPTS", None), getattr(self._kernels, "LOSSES", None)
        if opts is not None and optimizer.code not in opts:
            raise ValueError(
                f"the {self.backend_name} backend cannot run optimizer {type(optimizer).__name__}; "
                f"the {self._other_backends()} backends run it"
            )
        if optimizer.clipping and not getattr(self._kernels, "CLIPPING", True):
            raise ValueError(
                f"the {self.backend_name} backend cannot clip gradients (clipnorm, clipvalue, "
                f"global_clipnorm); the {self._other_backends()} backends run it"
            )
        if losses is not None and loss.plan(codes.LINEAR).code not in losses:
            raise ValueError(
                f"the {self.backend_name} backend cannot run loss {loss.name!r}; the "
                f"{self._other_backends()} backends run it"
            )

    def _relayout_if_trainable_changed(self) -> None:
        """A new engine when a layer's ``trainable`` changed since the model was built (the
        frozen layers' weights move out of the optimizer's part of the buffer); the weights
        are kept, the optimizer state starts again (as after any compile)."""
        eng = self._engine
        if eng is None or eng.trainable_flags == tuple(lay.trainable for lay in self.layers):
            return
        eng.pull()
        self._engine = Engine(self.layers, eng.input_shape, self.dtype, self._kernels)
        self._snap_buf = None

    def _edit_weights(self, edit) -> None:
        """Runs ``edit`` on the host weights and sends the result to a device backend."""
        if self._engine is None:
            edit()
            return
        self._engine.pull()
        edit()
        self._engine.push()

    @property
    def trainable(self) -> bool:
        """Whether any layer is trainable; setting it sets every layer's (compile after)."""
        return any(layer.trainable for layer in self.layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = _check_bool(value, "trainable")
        for layer in self.layers:
            layer.trainable = value

    @property
    def built(self) -> bool:
        """Whether the weights exist (True from construction when the input shape is
        declared, as in Keras)."""
        return self._maybe_build()

    @property
    def input_shape(self) -> tuple | None:
        """The per-sample input shape (None before the model is built)."""
        return self._engine.input_shape if self._maybe_build() else None

    @property
    def input_dim(self) -> int | None:
        """Input values per sample (the size of :attr:`input_shape`)."""
        return self._engine.input_size if self._maybe_build() else None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].output_shape[-1]

    def _flat_inputs_ok(self) -> bool:
        return bool(self.layers) and isinstance(self.layers[0], Flatten)

    def count_params(self) -> int:
        """Number of weights, trainable and not (0 before the model is built)."""
        if not self._maybe_build():
            return 0
        return self._engine.n_params + self._engine.n_nontrain

    # -- compile ----------------------------------------------------------------------
    def _output_activation(self) -> tuple[str, Layer] | None:
        """(activation name, layer) of the model's outputs: that of the last layer that
        changes its input at inference, looking through Dropout and Flatten (Dense and
        Activation name theirs; any other kind, e.g. BatchNormalization, gives "linear":
        unbounded values); None for a model of views only."""
        for layer in reversed(self.layers):
            if isinstance(layer, (Dropout, Flatten)):
                continue
            activation = getattr(layer, "activation", None)
            return (activation if isinstance(activation, str) else "linear"), layer
        return None

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True) -> None:  # fmt: skip
        """Chooses the optimizer, the loss and the metrics.

        Parameters
        ----------
        optimizer : str or Optimizer
            A name (Keras defaults) or an instance; default ``"rmsprop"``, as Keras.
        loss : str or Loss
            A name or an instance; it must fit the output activation: cross-entropies on
            probabilities need a softmax output (binary_crossentropy: sigmoid or softmax),
            ``from_logits=True`` needs logits (not a softmax or sigmoid output).
        metrics : list of str, optional
            "accuracy" or "acc" (classification losses), "mae" or "mean_absolute_error",
            "mse" or "mean_squared_error".  Each is logged under the name given
            (``metrics=["acc"]`` gives ``acc`` and ``val_acc``).
        loss_weights, weighted_metrics : None
            Keras's; not supported (a ValueError says so when given).
        run_eagerly, steps_per_execution, jit_compile, auto_scale_loss
            Accepted for Keras scripts and ignored: fastnn always runs compiled epochs
            in the model's dtype.

        Raises
        ------
        ValueError
            For an unknown name, a loss that does not fit the output activation, or
            accuracy with a regression loss.  Nothing changes when compile raises.
        """
        if loss is None:
            raise ValueError(
                "loss must be given, e.g. loss='sparse_categorical_crossentropy', got None"
            )
        for name, value in (("loss_weights", loss_weights),
                            ("weighted_metrics", weighted_metrics)):  # fmt: skip
            if value is not None:
                raise ValueError(
                    f"{name} is not supported by fastnn (one output, one loss; weigh samples "
                    f"with fit's sample_weight or class_weight), got {value!r}"
                )
        optimizer = _optimizers.get(optimizer)
        loss = _losses.get(loss)
        self._check_fits(optimizer, loss)
        metric_set = _compiled_metrics(metrics, loss)
        self._relayout_if_trainable_changed()
        self.optimizer = optimizer
        self.loss = loss
        self._metric_set = metric_set
        self._plan = self._carried = None
        self._recheck = False
        if self._engine is not None:
            self._engine.state = None
        if self._maybe_build():  # weights, tables and optimizer state before the first fit
            self._metric_args(self._stack_plan())  # a metric that does not fit fails now
            self._snapshot(reuse=True)  # allocates the snapshot buffers fit reuses

    def _check_fits(self, optimizer, loss) -> None:
        """A ValueError when the backend cannot run ``optimizer`` or ``loss``, or ``loss``
        does not fit the output activation."""
        self._check_backend_codes(optimizer, loss)
        output = self._output_activation()
        if output is not None:
            activation, layer = output
            loss.check_output(activation, layer.name, type(layer).__name__)

    @property
    def metrics(self) -> list[str]:
        """The names the metrics are logged under (compile order)."""
        return self._metric_set.names

    @property
    def metric_objects(self) -> list:
        """The :class:`fastnn.metrics.Metric` objects of compile."""
        return list(self._metric_set.metrics)

    def _stack_plan(self):
        """How the loss runs in the compiled stack (a :class:`fastnn.losses.StackLoss`);
        creates the optimizer state on first use."""
        if self.optimizer is None:
            raise RuntimeError("call compile() before training or evaluating the model")
        if self._plan is None:
            if self._recheck:  # add/pop since compile: the output layer may differ
                self._check_fits(self.optimizer, self.loss)
                self._recheck = False
            self._plan = self.loss.plan(self._output_act_code())
        if self._engine.state is None:
            self._engine.init_state(self.optimizer)
        return self._plan

    def _output_act_code(self) -> int:
        """The activation code of the last compiled layer (LINEAR unless it has one)."""
        last = self._engine.plan_for(1).layers[-1]
        if last[codes.P_KIND] in (codes.DENSE, codes.ACTIVATION):
            return int(last[codes.P_ACT])
        return codes.LINEAR

    def _metric_args(self, plan) -> tuple:
        """The kernels' (metrics table, thresholds) for the loss plan."""
        return self._metric_set.table(plan, self.output_dim)

    # -- data -------------------------------------------------------------------------
    def _features(self, x, arg="x"):
        """x as the (N, input size) array the kernels read, checked against the model's
        input shape (building the model from x's sample shape when none is declared)."""
        if self.layers and isinstance(self.layers[0], Embedding):
            return self._token_ids(x, arg)
        eng = self._engine
        if (
            eng is not None
            and type(x) is np.ndarray
            and x.dtype == self.dtype
            and x.ndim == 2
            and x.shape[0]
            and x.shape[1:] == eng.input_shape
            and x.flags.c_contiguous
        ):  # the common case of a per-batch call, in a few hundred nanoseconds
            check_finite(x, arg)
            return x
        shape = self.input_shape if self._maybe_build() else None
        x, sample = to_samples(x, arg, self.dtype, shape, self._flat_inputs_ok())
        if shape is None:
            self.build(sample)
        return x

    def _token_ids(self, x, arg):
        """Token ids for a model that starts with Embedding: checked (integers in range,
        the model's timesteps) once per call and encoded for the batch buffers."""
        layer = self.layers[0]
        ids = layer.check_ids(x, arg)
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(
                f"{arg} must hold token ids of shape (N, timesteps) with N >= 1, got {ids.shape}"
            )
        shape = self.input_shape if self._maybe_build() else None
        if shape is None:
            self.build(ids.shape[1:])
        elif ids.shape[1:] != tuple(shape):
            raise ValueError(shape_mismatch(arg, ids.shape, shape))
        return layer.encode_ids(ids, self.dtype, arg)

    def _prepare(self, x, y, sample_weight=None, class_weight=None, arg="x", y_arg="y"):
        """Validates and converts (x, y, weights) once, before any kernel runs."""
        x = self._features(x, arg)
        plan = self._stack_plan()
        if y is None:
            raise ValueError(f"{y_arg} must be given for training and evaluation, got None")
        y_arr = as_array(y, y_arg)
        if y_arr.ndim == 0 or y_arr.shape[0] != x.shape[0]:
            raise ValueError(
                f"{arg} and {y_arg} must have the same number of samples, got {x.shape[0]} and "
                f"{y_arr.shape[0] if y_arr.ndim else 'a scalar'}"
            )
        y_enc = _losses.encode_targets(y_arr, plan.target, self.output_dim, self.dtype, y_arg)
        if plan.target in ("dense",) and plan.code in (codes.SIGMOID_BCE, codes.BINARY_CE):
            if y_enc.size and (y_enc.min() < 0 or y_enc.max() > 1):
                raise ValueError(
                    f"{y_arg} must be in [0, 1] for binary_crossentropy, got values in "
                    f"[{y_enc.min()}, {y_enc.max()}]"
                )
        sw_arg = "sample_weight" if y_arg == "y" else f"{y_arg[:-1]}sample_weight"
        sw = _losses.sample_weights(sample_weight, x.shape[0], self.dtype, sw_arg)
        if class_weight is not None:
            sw = sw * class_weights(class_weight, y_arr, plan.target, self.output_dim)
        return x, y_enc, np.ascontiguousarray(sw, dtype=self.dtype)

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        x,
        y=None,
        epochs: int = 1,
        batch_size: int | None = 32,
        verbose: int = 1,
        callbacks=None,
        validation_split: float = 0.0,
        validation_data=None,
        shuffle: bool = True,
        class_weight=None,
        sample_weight=None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_freq: int = 1,
    ):
        """Trains for ``epochs`` epochs; returns a :class:`fastnn.callbacks.History`.

        Parameters
        ----------
        x, y : arrays, or x an iterable of batches
            Arrays (x of shape (N, *input_shape)); or x a generator, a PyTorch
            ``DataLoader`` or any iterable of ``(x, y)`` / ``(x, y, sample_weight)`` batches
            (then y is None and ``batch_size`` and ``shuffle`` do not apply).
        steps_per_epoch : int, optional
            Batches per epoch (default: a whole pass over the data).  As in Keras 3 each
            epoch goes on where the previous one stopped: the epoch that reaches the end
            of the data (of a shuffled pass over arrays, of a re-iterable source such as
            a ``DataLoader``) is shorter and the next one starts a new pass; a generator
            that runs out ends training with a warning.  With arrays and no
            ``batch_size`` the batch is ceil(N / steps_per_epoch).
        validation_split : float
            Takes the *last* fraction of the samples, before shuffling, as Keras does
            (floor(N * (1 - validation_split)) samples train); ``class_weight`` weighs the
            training samples only.
        validation_data : tuple or iterable, optional
            ``(x_val, y_val[, sample_weight_val])`` or an iterable of such batches.
        validation_steps : int, optional
            Batches per validation (of ``batch_size`` validation samples with arrays);
            they go on from one validation to the next as ``steps_per_epoch`` does.
        validation_freq : int
            Validates after every ``validation_freq``-th epoch.
        verbose : {0, 1, 2}
            0 silent, 1 progress bar, 2 one line per epoch.
        """
        return fit_loop(
            self, x, y, epochs, batch_size, verbose, callbacks, validation_split,
            validation_data, shuffle, class_weight, sample_weight, initial_epoch,
            steps_per_epoch, validation_steps, validation_freq,
        )  # fmt: skip

    def _run(self, x, y, sw, order, batch_size):
        """Evaluates the batches of x[order] in one compiled call; returns their stats."""
        eng, opt = self._engine, self.optimizer
        plan = self._stack_plan()
        ws = eng.workspace(batch_size, y.shape[1])
        stats = self._new_stats()
        self._kernel_call()(
            (x, y, sw, order, batch_size), ws.loss_plan(plan.train_act).args, eng.net,
            ws.buffers, (plan.code, plan.logits_out, *self._metric_args(plan)),
            (opt.code, opt._train_hyper(), np.zeros(1), 0, 0), 0, stats,
        )  # fmt: skip
        return stats

    def _kernel_call(self):
        """The backend's ``run_epoch``; for NumPy-based backends wrapped to silence their
        floating-point warnings (overflow is detected from the loss and the weights)."""
        run_epoch = self._kernels.run_epoch
        if self.backend_name in _NO_FP_WARNINGS:
            return run_epoch

        def quiet(*args):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return run_epoch(*args)

        return quiet

    def _trainer(self, x, y, sw, batch_size):
        """The training call over batches of ``batch_size`` rows of (x, y, sw), for a fit:
        ``step(rows, stats)`` runs the batches of ``x[rows]`` in one compiled call
        (accumulating ``stats``) and returns (batches done, whether every batch was done and
        every weight and optimizer state entry is still finite).

        What a fit cannot change is looked up once; the rates, the hyper-parameters and the
        buffers (a callback may set new ones) are read by every call."""
        eng, opt, run_epoch = self._engine, self.optimizer, self._kernel_call()
        plan = self._stack_plan()
        loss = (plan.code, plan.logits_out, *self._metric_args(plan))
        ws = self._training_workspace(batch_size, y.shape[1])
        args, buffers = ws.loss_plan(plan.train_act).args, ws.buffers
        seed, bad = self._dropout_seed, codes.STAT_NONFINITE

        def step(rows, stats):
            count = -(-len(rows) // batch_size)
            done = run_epoch(
                (x, y, sw, rows, batch_size), args,
                (eng.params, eng.grads, eng.state, eng.nontrain), buffers, loss,
                (opt.code, opt._train_hyper(), opt._train_rates(count), opt.iterations + 1,
                 seed), 1, stats,
            )  # fmt: skip
            done = int(done)
            opt.iterations += done
            return done, done == count and stats.item(bad) == 0.0

        return step

    def _train_batches(self, x, y, sw, rows, batch_size, stats):
        """One call of :meth:`_trainer` (``train_on_batch``, a replay, the warm-up)."""
        return self._trainer(x, y, sw, batch_size)(rows, stats)

    def _training_workspace(self, rows: int, n_targets: int):
        """The workspace for training batches of ``rows`` samples, warmed up when new."""
        ws = self._engine.workspace(rows, n_targets)
        if not ws.warmed:
            self._warm_up(ws)
        return ws

    def _warm_up(self, ws) -> None:
        """One training step of a zero batch through a new training workspace, as ``fit``
        runs it, on scratch copies of the weights and optimizer state, so that the first
        real step does not pay first-call costs: the BLAS library's packing buffers (first
        pages) and threads, the first touch of each kernel's code, the per-batch NumPy paths.
        The model's weights, optimizer state and step count are left exactly as they were."""
        ws.warmed = True
        eng = self._engine
        size = eng.params.nbytes + eng.state.nbytes + eng.nontrain.nbytes
        if eng.on_device or size > WARM_UP_MAX_BYTES:
            return  # no scratch copies of a large model: its steps dwarf first-call costs
        x, y, sw = ws.xb.copy(), ws.yb.copy(), ws.swb.copy()
        order = np.arange(ws.rows, dtype=np.int64)
        kept = eng.params, eng.state, eng.nontrain, self.optimizer.iterations
        eng.params = eng.host_params = kept[0].copy()
        eng.state, eng.nontrain = kept[1].copy(), kept[2].copy()
        try:
            stats = self._new_stats()
            self._train_batches(x, y, sw, order, ws.rows, stats)
            self._logs(stats)
        finally:
            eng.params = eng.host_params = kept[0]
            eng.state, eng.nontrain, self.optimizer.iterations = kept[1:]

    def _logs(self, stats, prefix=""):
        return self._metric_set.logs(stats, self.output_dim, prefix)

    def _new_stats(self) -> np.ndarray:
        """A zeroed statistics vector: the fixed entries and every metric's slots."""
        return self._metric_set.zeros()

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None,
                       return_dict: bool = False):  # fmt: skip
        """One optimizer step on the batch (x, y); returns the batch's loss as a float
        without metrics, else a list [loss, metrics...] in compile order, or a dict with
        ``return_dict`` (as :meth:`evaluate`, as Keras 3)."""
        x, y, sw = self._prepare(x, y, sample_weight, class_weight)
        order = np.arange(x.shape[0], dtype=np.int64)
        snap = self._snapshot(reuse=True)
        stats = self._new_stats()
        done, finite = self._train_batches(x, y, sw, order, x.shape[0], stats)
        loss = float(stats[codes.STAT_LOSS] / x.shape[0])
        if not finite:
            self._restore(snap)
            what = f"loss is {loss}" if not done else "the update made weights non-finite"
            raise NonFiniteLossError(
                f"{what} in train_on_batch (step {snap[2] + 1}); the weights were not "
                "updated: lower the learning rate or check the data scale",
                loss=loss,
            )
        return returned(self._logs(stats), return_dict)

    # -- recovery from non-finite training ----------------------------------------------
    def _snapshot(self, reuse: bool = False):
        """(params, optimizer state, iterations, non-trainable weights) copies, for
        :meth:`_restore`.  With ``reuse`` the copies go into buffers kept by the model (valid
        until the next reusing snapshot): no allocation, no page faults, in the per-call
        path."""
        eng = self._engine
        params, state, nontrain = eng.pull(), eng.host_state(), eng.host_nontrain
        if not reuse:
            return (
                params.copy(),
                np.array(state, copy=True),
                self.optimizer.iterations,
                (nontrain.copy()),
            )
        buf = self._snap_buf
        if (
            buf is None
            or buf[0].shape != params.shape
            or buf[1].shape != state.shape
            or buf[2].shape != nontrain.shape
        ):
            buf = self._snap_buf = tuple(np.empty_like(a) for a in (params, state, nontrain))
        np.copyto(buf[0], params)
        np.copyto(buf[1], state)
        if nontrain.size:
            np.copyto(buf[2], nontrain)
        return buf[0], buf[1], self.optimizer.iterations, buf[2]

    def _restore(self, snap) -> None:
        eng = self._engine
        params, state, iterations, nontrain = snap
        eng.host_params[...] = params
        eng.host_nontrain[...] = nontrain
        eng.push()
        if eng.on_device:
            eng.set_state(state.copy())
        else:
            np.copyto(eng.state, state)  # in place: the kernels keep their buffers
        self.optimizer.iterations = iterations

    # -- weights ----------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Copies of every layer's weights, layer by layer in each layer's order (Dense:
        kernel, bias; BatchNormalization: gamma, beta, moving_mean, moving_variance)."""
        if not self._maybe_build():
            return []
        self._engine.pull()
        return [w.copy() for layer in self.layers for w in layer.weights]

    @property
    def weights(self) -> list[np.ndarray]:
        """Every weight (views into the model's buffers, on the CPU backends)."""
        if not self._maybe_build():
            return []
        self._engine.pull()
        return [w for layer in self.layers for w in layer.weights]

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        return [w for layer in self.layers for w in layer.trainable_weights] if self.built else []

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        if not self.built:
            return []
        return [w for layer in self.layers for w in layer.non_trainable_weights]

    def set_weights(self, weights) -> None:
        """Sets the weights from a list in :meth:`get_weights` order (shapes must match)."""
        if not self._maybe_build():
            raise RuntimeError("the model is not built yet: give input_dim or call build()")
        expected = [s for layer in self.layers for s in layer.param_shapes()]
        arrays = check_weight_list(weights, expected, self.dtype)
        targets = [t for layer in self.layers for t in layer.weights]

        def write():
            for t, w in zip(targets, arrays):
                t[...] = w

        self._edit_weights(write)

    # -- files ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the model to one file.  A ``.keras`` name writes Keras 3's format
        (architecture and weights, which ``keras.saving.load_model`` opens); any other name
        fastnn's own (``.fnn``: config, weights, optimizer state, ``metadata``); see
        :func:`fastnn.load_model`.  A ``.h5`` name (Keras 2's legacy format) is a ValueError.
        Under data parallelism only rank 0 writes (the others return)."""
        from .distributed import is_secondary
        from .saving import save_model

        if not is_secondary():
            save_model(self, path)

    def save_weights(self, path) -> None:
        """Writes only the weights: Keras 3's HDF5 layout for a ``.weights.h5`` name, else
        a .npz of arrays; under data parallelism only rank 0."""
        from .distributed import is_secondary
        from .saving import save_weights

        if not is_secondary():
            save_weights(self, path)

    def load_weights(self, path) -> None:
        """Reads weights written by :meth:`save_weights` or by Keras 3 (``.weights.h5``)
        into a model of the same structure (shapes must match)."""
        from .saving import load_weights

        load_weights(self, path)

    # -- display ----------------------------------------------------------------------
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None) -> None:  # fmt: skip
        """Prints each layer's name and type, output shape and weight count (and with
        ``show_trainable`` whether it trains), then the total, trainable and non-trainable
        counts, as Keras does.  ``print_fn`` (default print) takes the text;
        ``line_length``, ``positions``, ``expand_nested`` and ``layer_range`` (Keras's
        layout options) are accepted and do not change the table."""
        print_fn = print if print_fn is None else print_fn
        built = self._maybe_build()
        rows = [("Layer (type)", "Output Shape", "Param #", "Trainable")]
        for layer in self.layers:
            shape = f"(None, {', '.join(map(str, layer.output_shape))})" if built else "?"
            if built and len(layer.output_shape) == 1:
                shape = f"(None, {layer.output_shape[0]})"
            count = f"{layer.count_params():,}" if built else "?"
            trains = "Y" if layer.trainable else "N"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, count, trains))
        widths = [max(32, *(len(r[0]) + 2 for r in rows)), 24, 12, 11 if show_trainable else 0]
        rule = "-" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for i, (desc, shape, count, trains) in enumerate(rows):
            extra = f"{trains:>{widths[3]}}" if show_trainable else ""
            lines.append(f"{desc:<{widths[0]}}{shape:<{widths[1]}}{count:>{widths[2]}}{extra}")
            if i == 0:
                lines.append("=" * sum(widths))
        lines.append(rule)
        eng = self._engine
        trainable = eng.n_train if built else 0
        fixed = eng.n_params - eng.n_train + eng.n_nontrain if built else 0
        for label, count in (("Total", trainable + fixed), ("Trainable", trainable),
                             ("Non-trainable", fixed)):  # fmt: skip
            size = count * self.dtype.itemsize
            lines.append(f" {label} params: {count:,} ({_bytes(size)})")
        lines.append(f" Backend: {self.backend_name}, dtype: {self.dtype}")
        print_fn("\n".join(lines))

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """The layer called ``name`` or at position ``index`` of :attr:`layers`."""
        if (name is None) == (index is None):
            raise ValueError(
                f"give exactly one of name and index, got name={name!r}, index={index!r}"
            )
        if index is not None:
            index = check_int(index, "index", -len(self.layers))
            if index >= len(self.layers):
                raise ValueError(
                    f"index must be below the model's {len(self.layers)} layers, got {index}"
                )
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"no layer named {name!r}; the layers are {[lay.name for lay in self.layers]}"
        )

    def __call__(self, x, training: bool = False) -> np.ndarray:
        """Outputs for x in one batch (inference: ``training`` must be False)."""
        if training:
            raise ValueError(
                "calling a model with training=True is not supported: use train_on_batch() "
                "or fit() to train it"
            )
        return self.predict_on_batch(x)

    def __reduce__(self):
        """Pickling, ``copy.copy`` and ``copy.deepcopy`` go through fastnn's model file: the
        copy is what :func:`fastnn.load_model` gives (architecture, weights, optimizer
        state, compile settings, metadata); a model not built yet, through its config."""
        from . import saving

        if not self._maybe_build():
            return (Sequential.from_config, (self.get_config(), self.backend_name))
        return (saving.from_bytes, (saving.to_bytes(self), self.backend_name))

    def to_json(self, **kwargs) -> str:
        """The architecture as JSON (``fastnn.models.model_from_json`` rebuilds it)."""
        import json

        return json.dumps({"class_name": "Sequential", "config": self.get_config()}, **kwargs)

    @classmethod
    def from_config(cls, config: dict, backend: str | None = None) -> Sequential:
        """The model :meth:`get_config` describes, with fresh weights."""
        from .layers import from_config as layer_from_config

        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        entries = config.get("layers")
        if not isinstance(entries, list) or not entries:
            raise ValueError("config must hold a non-empty list of layers")
        layers = []
        for entry in entries:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("class_name"), str)
                and isinstance(entry.get("config"), dict)
            ):
                raise ValueError(f"config has an invalid layer entry {entry!r}")
            layers.append(layer_from_config(entry["class_name"], entry["config"]))
        if isinstance(config.get("input"), dict):
            layers.insert(0, Input(**config["input"]))
        model = cls(layers, seed=config.get("seed"), dtype=config.get("dtype", "float32"),
                    backend=backend, name=config.get("name"))  # fmt: skip
        shape = config.get("input_shape", config.get("input_dim"))  # input_dim: older files
        if shape is not None and not model.built:
            model.build(tuple(shape) if isinstance(shape, list) else shape)
        return model

    def get_config(self) -> dict:
        layers = [
            {"class_name": type(layer).__name__, "config": layer.get_config()}
            for layer in self.layers
        ]
        config = {
            "name": self.name,
            "seed": self.seed,
            "dtype": self.dtype.name,
            "input_shape": list(self.input_shape) if self.built else None,
            "layers": layers,
        }
        if self._input is not None:
            config["input"] = self._input.get_config()
        return config


def _check_unshared(layer, model) -> None:
    """A ValueError when ``layer`` already belongs to another built model: its weights are
    views into that model's buffers, so it cannot be shared (Keras's shared layers)."""
    owner = layer._model
    if owner is not None and owner is not model:
        raise ValueError(
            f"layer {layer.name!r} already belongs to model {owner.name!r}: a fastnn layer's "
            "weights live in one model's buffers, so layers cannot be shared between models; "
            "build the new model from new layers and copy the weights with "
            "new_layer.set_weights(old_layer.get_weights())"
        )


def _embedding_first(layer, position: int) -> str:
    return (
        f"an Embedding layer must be the model's first layer (it reads token ids), got "
        f"{layer.name!r} at position {position}"
    )


def _bytes(size: int) -> str:
    """A byte count as Keras prints it (B, KB, MB, GB with two decimals)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"
