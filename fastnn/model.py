"""The Keras-style model: ``Sequential([...])``, ``compile``, ``fit``, ``evaluate``, ``predict``.

A whole epoch runs as one compiled kernel call (batch gathering, forward, loss, backward and
the optimizer update over one flat buffer); Python runs once per epoch, or once per batch
only when a callback asks for batch hooks.
"""

from __future__ import annotations

import numpy as np

from . import backend as _backend
from . import losses as _losses
from . import optimizers as _optimizers
from ._checks import as_array, as_float, check_finite
from ._engine import Engine
from ._fit import fit_loop
from ._names import lookup
from .kernels import codes
from .layers import Flatten, Layer, float_dtype

_METRICS = {
    "accuracy": "accuracy",
    "acc": "accuracy",
    "mae": "mae",
    "mean_absolute_error": "mae",
    "mse": "mse",
    "mean_squared_error": "mse",
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (or an update that made the weights
    non-finite); the weights and optimizer state are those of the last good step.

    Attributes ``epoch`` and ``batch`` (0-based, None in ``train_on_batch``) locate the step
    that failed; ``loss`` is its loss.
    """

    def __init__(self, message: str, epoch: int | None = None, batch: int | None = None,
                 loss: float | None = None):  # fmt: skip
        super().__init__(message)
        self.epoch, self.batch, self.loss = epoch, batch, loss


#: largest parameters + optimizer state copied for a workspace's warm-up step; above it a
#: step takes tens of milliseconds and first-call costs are lost in it
WARM_UP_MAX_BYTES = 64 << 20

#: Backends whose kernels are compiled code: no NumPy floating-point warnings to silence.
_NO_FP_WARNINGS = frozenset({"numba", "cython"})


def _to_features(x, arg, dtype, flatten):
    x = as_array(x, arg)
    if x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{arg} must have at least one sample, got shape {x.shape} (empty)")
    if flatten is not None and x.ndim >= 2:
        x = x.reshape(x.shape[0], -1)
    if x.ndim == 1:
        raise ValueError(
            f"{arg} must be 2-D (samples, features), got shape {x.shape}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if x.ndim != 2:
        raise ValueError(
            f"{arg} must be 2-D (samples, features), got shape {x.shape}; "
            "add a Flatten() first layer for multi-dimensional samples"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{arg} must have at least one feature, got shape {x.shape}")
    # one conversion per call (never per batch): any float/int dtype or memory layout in,
    # C-contiguous model dtype out, so the kernels see one signature per dtype
    out = as_float(x, dtype)
    check_finite(out, arg, x)
    return out


def check_int(value, arg: str, low: int = 1) -> int:
    """``value`` as an int >= ``low``: TypeError for a non-integer, ValueError below ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{arg} must be an int >= {low}, got {value}")
    return int(value)


def _batch_size(batch_size, default, n=None):
    """The batch size to use (at most ``n`` rows, so workspaces never exceed the data)."""
    bs = default if batch_size is None else check_int(batch_size, "batch_size", 1)
    return bs if n is None else min(bs, n)


def _check_bool(value, arg):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
        Dense, Dropout, Activation layers; a Flatten may come first.
    seed : int, optional
        Seeds weight initialisation, batch shuffling and dropout: the same seed gives the
        same initial weights and the same batch order.
    dtype : {"float32", "float64"}
        Floating type of weights and computation.
    backend : str, optional
        Kernel backend ("numba", "cython", "numpy", "cuda"); default :func:`fastnn.get_backend`.

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
        self.seed = seed
        self.dtype = float_dtype(dtype)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__} {name!r}")
        if layers is not None and (
            isinstance(layers, (Layer, Flatten, str)) or not hasattr(layers, "__iter__")
        ):
            raise TypeError(
                f"layers must be a list of layers, got {type(layers).__name__}; "
                "wrap a single layer in a list: Sequential([layer])"
            )
        self.backend_name, self._kernels = _backend.resolve(backend)
        self.name = name or "sequential"
        self.layers: list[Layer] = []
        self._flatten: Flatten | None = None
        self._engine: Engine | None = None
        self.optimizer = self.loss = self._plan = None
        self.metrics: list[str] = []
        self._metric_kinds: list[str] = []  # "accuracy", "mae" or "mse" per entry of metrics
        self.stop_training = False
        self.history = None
        self.metadata: dict = {}
        seq = np.random.SeedSequence(seed)
        self._init_rng, self._shuffle_rng = (np.random.default_rng(s) for s in seq.spawn(2))
        self._dropout_seed = int(seq.generate_state(1, dtype=np.uint32)[0])
        for layer in layers or []:
            self.add(layer)

    # -- structure --------------------------------------------------------------------
    def add(self, layer) -> None:
        """Appends a layer (a Flatten only as the first layer)."""
        if self._engine is not None:
            raise RuntimeError("cannot add layers to a model that is already built")
        if isinstance(layer, Flatten):
            if self.layers or self._flatten is not None:
                raise ValueError("Flatten is supported only as the first layer")
            self._flatten = layer
            return
        if isinstance(layer, type) and issubclass(layer, (Layer, Flatten)):
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
        if layer.name is None:
            layer.name = f"{type(layer).__name__.lower()}_{len(self.layers)}"
        self.layers.append(layer)

    def _declared_input_dim(self) -> int | None:
        if self._flatten is not None and self._flatten.input_shape:
            return int(np.prod(self._flatten.input_shape))
        return getattr(self.layers[0], "declared_input_dim", None) if self.layers else None

    def _maybe_build(self) -> bool:
        """Builds the model if its input width is declared; returns whether it is built."""
        if self._engine is None and self._declared_input_dim():
            self.build(self._declared_input_dim())
        return self._engine is not None

    def build(self, input_dim: int) -> None:
        """Creates the weights for inputs of ``input_dim`` features."""
        if not self.layers:
            raise ValueError("the model has no layers: pass layers=[...] or call add() first")
        input_dim = check_int(input_dim, "input_dim", 1)
        if self._engine is not None:
            if input_dim != self._engine.input_dim:
                raise ValueError(
                    f"input_dim must be {self._engine.input_dim} (the model is already built), "
                    f"got {input_dim}"
                )
            return
        dim = input_dim
        for layer in self.layers:
            layer.build(dim, self.dtype, self._init_rng, self.backend_name)
            dim = layer.units
        self._engine = Engine(self.layers, input_dim, self.dtype, self._kernels)

    @property
    def built(self) -> bool:
        """Whether the weights exist (True from construction when the input width is
        declared, as in Keras)."""
        return self._maybe_build()

    @property
    def input_dim(self) -> int | None:
        return self._engine.input_dim if self._maybe_build() else None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].units

    def _ensure_built(self, x: np.ndarray, arg: str = "x") -> None:
        if not self._maybe_build():
            self.build(x.shape[1])
        elif x.shape[1] != self._engine.input_dim:
            raise ValueError(
                f"{arg} must have {self._engine.input_dim} features per sample to match the "
                f"model's input, got {x.shape[1]} ({arg} shape {x.shape})"
            )

    def count_params(self) -> int:
        """Number of weights (0 before the model is built)."""
        return self._engine.n_params if self._maybe_build() else 0

    # -- compile ----------------------------------------------------------------------
    def _output_activation(self) -> tuple[str, Layer] | None:
        """(activation name, layer) of the model's outputs: the last layer that has an
        activation (Dense or Activation), looking through Dropout layers; None when no
        layer has one."""
        for layer in reversed(self.layers):
            activation = getattr(layer, "activation", None)
            if isinstance(activation, str):
                return activation, layer
        return None

    def compile(self, optimizer="adam", loss=None, metrics=None) -> None:
        """Chooses the optimizer, the loss and the metrics.

        Parameters
        ----------
        optimizer : str or Optimizer
            A name (Keras defaults) or an instance.
        loss : str or Loss
            A name or an instance; it must fit the output activation: cross-entropies on
            probabilities need a softmax output (binary_crossentropy: sigmoid or softmax),
            ``from_logits=True`` needs logits (not a softmax or sigmoid output).
        metrics : list of str, optional
            "accuracy" or "acc" (classification losses), "mae" or "mean_absolute_error",
            "mse" or "mean_squared_error".  Each is logged under the name given
            (``metrics=["acc"]`` gives ``acc`` and ``val_acc``).

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
        optimizer = _optimizers.get(optimizer)
        loss = _losses.get(loss)
        output = self._output_activation()
        if output is not None:
            activation, layer = output
            loss.check_output(activation, layer.name, type(layer).__name__)
        if isinstance(metrics, str):
            metrics = [metrics]
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise TypeError(
                f"metrics must be a list of names such as ['accuracy'], got "
                f"{type(metrics).__name__} {metrics!r}"
            )
        names, kinds = [], []
        for m in metrics or []:
            kind = lookup(_METRICS, "metrics", m)
            name = m.strip()
            if name in names:
                raise ValueError(
                    f"metrics must be distinct names (each is a key of the logs), got {name!r} "
                    f"twice in {list(metrics)!r}"
                )
            names.append(name)
            kinds.append(kind)
        if "accuracy" in kinds and isinstance(
            loss, (_losses.MeanSquaredError, _losses.MeanAbsoluteError)
        ):
            raise ValueError(f"metric 'accuracy' needs a classification loss, got {loss.name}")
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = names  # logged under these names, as given
        self._metric_kinds = kinds
        self._plan = None
        if self._engine is not None:
            self._engine.state = None
        if self._maybe_build():  # weights, tables and optimizer state before the first fit
            self._stack_plan()
            self._snapshot(reuse=True)  # allocates the snapshot buffers fit reuses

    def _stack_plan(self):
        if self.optimizer is None:
            raise RuntimeError("call compile() before training or evaluating the model")
        if self._plan is None:
            last_act = int(self._engine.table[-1, 2])
            plan = self.loss.plan(last_act)
            self._plan = plan, self._engine.train_table(plan.train_act)
        if self._engine.state is None:
            self._engine.init_state(self.optimizer)
        return self._plan

    def _acc_mode(self, plan, y):
        if "accuracy" not in self._metric_kinds:
            return codes.ACC_NONE, 0.5
        if plan.target == "sparse":
            return codes.ACC_SPARSE, 0.5
        if plan.code in (codes.SIGMOID_BCE, codes.BINARY_CE):
            return (
                codes.ACC_BINARY,
                0.0 if plan.logits_out and plan.code == codes.SIGMOID_BCE else 0.5,
            )
        return codes.ACC_CATEGORICAL, 0.5

    # -- data -------------------------------------------------------------------------
    def _features(self, x, arg="x"):
        if self._flatten is not None and self._flatten.input_shape:
            xa = as_array(x, arg)
            if xa.ndim >= 1 and tuple(xa.shape[1:]) not in (
                self._flatten.input_shape,
                (int(np.prod(self._flatten.input_shape)),),
            ):
                raise ValueError(
                    f"{arg} must have samples of shape {self._flatten.input_shape} (Flatten "
                    f"input_shape), got shape {xa.shape}"
                )
            x = xa
        x = _to_features(x, arg, self.dtype, self._flatten)
        self._ensure_built(x, arg)
        return x

    def _prepare(self, x, y, sample_weight=None, class_weight=None, arg="x", y_arg="y"):
        """Validates and converts (x, y, weights) once, before any kernel runs."""
        x = self._features(x, arg)
        plan, _ = self._stack_plan()
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
            sw = sw * self._class_weights(class_weight, y_arr, plan)
        return x, y_enc, np.ascontiguousarray(sw, dtype=self.dtype)

    def _class_weights(self, class_weight, y, plan):
        if not isinstance(class_weight, dict):
            raise TypeError(
                f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}"
            )
        for cls, w in class_weight.items():
            if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
                raise TypeError(
                    f"class_weight keys must be int class indices, got {type(cls).__name__} {cls!r}"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
                raise TypeError(
                    f"class_weight[{cls}] must be a number, got {type(w).__name__} {w!r}"
                )
        if plan.target == "sparse" or plan.target == "sparse_onehot":
            labels = np.asarray(y).reshape(len(y), -1)[:, 0].astype(np.int64)
        elif self.output_dim == 1:
            labels = (np.asarray(y).reshape(len(y), -1)[:, 0] > 0.5).astype(np.int64)
        else:
            labels = np.argmax(np.asarray(y).reshape(len(y), -1), axis=1)
        table = np.ones(max(int(labels.max()) + 1, self.output_dim, 2), dtype=np.float64)
        for cls, w in class_weight.items():
            if not 0 <= int(cls) < table.size or not np.isfinite(w) or w < 0:
                raise ValueError(
                    f"class_weight must map classes in [0, {table.size - 1}] to finite weights "
                    f">= 0, got {{{cls!r}: {w!r}}}"
                )
            table[int(cls)] = w
        return table[labels]

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        x,
        y,
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
    ):
        """Trains for ``epochs`` epochs; returns a :class:`fastnn.callbacks.History`.

        ``validation_split`` takes the *last* fraction of the samples, before shuffling,
        as Keras does.  ``verbose``: 0 silent, 1 progress bar, 2 one line per epoch.
        """
        return fit_loop(
            self,
            x,
            y,
            epochs,
            batch_size,
            verbose,
            callbacks,
            validation_split,
            validation_data,
            shuffle,
            class_weight,
            sample_weight,
            initial_epoch,
        )

    def _run(self, x, y, sw, order, batch_size):
        """Evaluates the batches of x[order] in one compiled call; returns their stats."""
        eng = self._engine
        plan, table = self._stack_plan()
        acc_mode, threshold = self._acc_mode(plan, y)
        ws = eng.workspace(batch_size, y.shape[1])
        stats = np.zeros(codes.STAT_LEN)
        self._kernel_call()(
            x, y, sw, order, batch_size, ws.xb, ws.yb, ws.swb, eng.params, eng.grads,
            eng.state, ws.acts, ws.gbuf, table, eng.table_f, plan.code, plan.logits_out,
            self.optimizer.code, self.optimizer._train_hyper(), np.zeros(1), 0, 0, 0,
            acc_mode, threshold, stats,
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
        plan, table = self._stack_plan()
        loss_code, logits_out = plan.code, plan.logits_out
        acc_mode, threshold = self._acc_mode(plan, y)
        ws = self._training_workspace(batch_size, y.shape[1])
        seed, bad = self._dropout_seed, codes.STAT_NONFINITE

        def step(rows, stats):
            count = -(-len(rows) // batch_size)
            done = run_epoch(
                x, y, sw, rows, batch_size, ws.xb, ws.yb, ws.swb, eng.params, eng.grads,
                eng.state, ws.acts, ws.gbuf, table, eng.table_f, loss_code, logits_out,
                opt.code, opt._train_hyper(), opt._train_rates(count), opt.iterations + 1,
                seed, 1, acc_mode, threshold, stats,
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
        runs it, on scratch copies of the parameters and optimizer state, so that the first
        real step does not pay first-call costs: the BLAS library's packing buffers (first
        pages) and threads, the first touch of each kernel's code, the per-batch NumPy paths.
        The model's weights, optimizer state and step count are left exactly as they were."""
        ws.warmed = True
        eng = self._engine
        if eng.on_device or eng.params.nbytes + eng.state.nbytes > WARM_UP_MAX_BYTES:
            return  # no scratch copies of a large model: its steps dwarf first-call costs
        x, y, sw = ws.xb.copy(), ws.yb.copy(), ws.swb.copy()
        order = np.arange(ws.rows, dtype=np.int64)
        params, state, iterations = eng.params, eng.state, self.optimizer.iterations
        eng.params = eng.host_params = params.copy()
        eng.state = state.copy()
        try:
            stats = np.zeros(codes.STAT_LEN)
            self._train_batches(x, y, sw, order, ws.rows, stats)
            self._logs(stats)
        finally:
            eng.params = eng.host_params = params
            eng.state, self.optimizer.iterations = state, iterations

    def _logs(self, stats, prefix=""):
        # Python floats throughout: NumPy scalar arithmetic costs several times more per
        # batch, and more still the first time it runs after other work
        v = stats.tolist()
        rows = max(v[codes.STAT_ROWS], 1.0)
        logs = {prefix + "loss": v[codes.STAT_LOSS] / rows}
        for name, kind in zip(self.metrics, self._metric_kinds):
            if kind == "accuracy":
                logs[prefix + name] = v[codes.STAT_CORRECT] / rows
            else:
                key = codes.STAT_ABS if kind == "mae" else codes.STAT_SQ
                logs[prefix + name] = v[key] / (rows * self.output_dim)
        return logs

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None) -> float:
        """One optimizer step on the batch (x, y); returns its loss."""
        x, y, sw = self._prepare(x, y, sample_weight, class_weight)
        order = np.arange(x.shape[0], dtype=np.int64)
        snap = self._snapshot(reuse=True)
        stats = np.zeros(codes.STAT_LEN)
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
        return loss

    # -- recovery from non-finite training ----------------------------------------------
    def _snapshot(self, reuse: bool = False):
        """(params, optimizer state, iterations) copies, for :meth:`_restore`.  With
        ``reuse`` the copies go into buffers kept by the model (valid until the next reusing
        snapshot): no allocation, no page faults, in the per-call path."""
        eng = self._engine
        params, state = eng.pull(), eng.host_state()
        if not reuse:
            return params.copy(), np.array(state, copy=True), self.optimizer.iterations
        buf = getattr(self, "_snap_buf", None)
        if buf is None or buf[0].shape != params.shape or buf[1].shape != state.shape:
            buf = self._snap_buf = (np.empty_like(params), np.empty_like(state))
        np.copyto(buf[0], params)
        np.copyto(buf[1], state)
        return buf[0], buf[1], self.optimizer.iterations

    def _restore(self, snap) -> None:
        eng = self._engine
        params, state, iterations = snap
        eng.host_params[...] = params
        eng.push()
        if eng.on_device:
            eng.set_state(state.copy())
        else:
            np.copyto(eng.state, state)  # in place: the kernels keep their buffers
        self.optimizer.iterations = iterations

    def evaluate(
        self,
        x,
        y,
        batch_size: int | None = None,
        verbose: int = 0,
        sample_weight=None,
        return_dict: bool = False,
    ):
        """Loss (then metrics, in compile order) on (x, y): a float without metrics, else a
        list — or a dict with ``return_dict``."""
        x, y, sw = self._prepare(x, y, sample_weight)
        bs = _batch_size(batch_size, 1024, len(x))
        stats = self._run(x, y, sw, np.arange(len(x), dtype=np.int64), bs)
        logs = self._logs(stats)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Outputs for x, shape (N, units of the last layer)."""
        x = self._features(x)
        eng = self._engine
        bs = _batch_size(batch_size, 1024, len(x))
        ws = eng.workspace(bs, 1)
        out = np.empty((len(x), self.output_dim), self.dtype)
        for start in range(0, len(x), bs):
            xb = x[start : start + bs]
            n = len(xb)
            if eng.on_device:
                xb = self._kernels.to_device(xb)
            self._kernels.forward_stack(xb, eng.params, ws.acts, eng.table, eng.table_f, 0, 0, 0)
            off = eng.output_offset(n)
            res = ws.acts[off : off + n * self.output_dim]
            out[start : start + n] = (self._kernels.to_host(res) if eng.on_device else res).reshape(
                n, -1
            )
        return out

    # -- weights ----------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights in the order [W0, b0, W1, b1, ...]."""
        if not self._maybe_build():
            return []
        self._engine.pull()
        return [w.copy() for layer in self.layers if layer.has_weights for w in layer.weights]

    def set_weights(self, weights) -> None:
        """Sets the weights from a list in :meth:`get_weights` order (shapes must match)."""
        if not self._maybe_build():
            raise RuntimeError("the model is not built yet: give input_dim or call build()")
        expected = [s for layer in self.layers for s in layer.param_shapes()]
        if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
            raise TypeError(
                f"weights must be a list of {len(expected)} arrays [W0, b0, W1, b1, ...], got "
                f"{type(weights).__name__}"
            )
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(
                f"weights must be a list of {len(expected)} arrays with shapes {expected}, got "
                f"{len(weights)} arrays"
            )
        arrays = []
        for i, (w, shape) in enumerate(zip(weights, expected)):
            w = as_array(w, f"weights[{i}]")
            if w.shape != shape:
                raise ValueError(f"weights[{i}] must have shape {shape}, got {w.shape}")
            with np.errstate(over="ignore"):
                cast = w.astype(self.dtype)
            check_finite(cast, f"weights[{i}]", w)
            arrays.append(cast)
        self._engine.pull()
        targets = [t for layer in self.layers if layer.has_weights for t in layer.weights]
        for t, w in zip(targets, arrays):
            t[...] = w
        self._engine.push()

    # -- files ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the model (config, weights, optimizer state, ``metadata``) to one file;
        see :func:`fastnn.load_model` and :func:`fastnn.saving.save_model`."""
        from .saving import save_model

        save_model(self, path)

    def save_weights(self, path) -> None:
        """Writes only the weights (a .npz of arrays)."""
        from .saving import save_weights

        save_weights(self, path)

    def load_weights(self, path) -> None:
        """Reads weights written by :meth:`save_weights` (shapes must match)."""
        from .saving import load_weights

        load_weights(self, path)

    # -- display ----------------------------------------------------------------------
    def summary(self, print_fn=print) -> None:
        """Prints each layer's type, output shape and parameter count."""
        self._maybe_build()
        lines = [
            f'Model: "{self.name}"',
            f"{'Layer (type)':<32}{'Output Shape':<20}{'Param #':>10}",
        ]
        for layer in self.layers:
            shape = f"(None, {layer.units})" if layer.units else "(unbuilt)"
            count = sum(int(np.prod(s)) for s in layer.param_shapes()) if layer.built else 0
            desc = f"{layer.name} ({type(layer).__name__})"
            lines.append(f"{desc:<32}{shape:<20}{count:>10,}")
        lines.append(f"Total params: {self.count_params():,}")
        lines.append(f"Backend: {self.backend_name}, dtype: {self.dtype}")
        print_fn("\n".join(lines))

    def get_config(self) -> dict:
        layers = [
            {"class_name": type(layer).__name__, "config": layer.get_config()}
            for layer in self.layers
        ]
        if self._flatten is not None:
            layers.insert(0, {"class_name": "Flatten", "config": self._flatten.get_config()})
        return {
            "name": self.name,
            "seed": self.seed,
            "dtype": self.dtype.name,
            "input_dim": self.input_dim,
            "layers": layers,
        }
