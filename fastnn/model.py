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
from ._engine import Engine
from ._names import lookup
from .kernels import codes
from .layers import Flatten, Layer

_METRICS = {
    "accuracy": "accuracy",
    "acc": "accuracy",
    "mae": "mae",
    "mean_absolute_error": "mae",
    "mse": "mse",
    "mean_squared_error": "mse",
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the weights are those of the last good step."""


def _to_features(x, arg, dtype, flatten):
    if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        x = np.asarray(x)
    else:
        raise TypeError(f"{arg} must be an array, got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{arg} must be numeric, got dtype {x.dtype}")
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
    if x.shape[0] == 0:
        raise ValueError(f"{arg} is empty (0 samples)")
    out = np.ascontiguousarray(x, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{arg} contains NaN or infinite values")
    return out


def _batch_size(batch_size, default):
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    return int(batch_size)


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
    """

    def __init__(
        self,
        layers=None,
        seed: int | None = None,
        dtype="float32",
        backend: str | None = None,
        name: str | None = None,
    ):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.backend_name, self._kernels = _backend.resolve(backend)
        self.name = name or "sequential"
        self.layers: list[Layer] = []
        self._flatten: Flatten | None = None
        self._engine: Engine | None = None
        self.optimizer = self.loss = self._plan = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.history = None
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
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fastnn layers, got {type(layer).__name__}")
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
            raise ValueError("the model has no layers")
        dim = input_dim
        for layer in self.layers:
            layer.build(dim, self.dtype, self._init_rng, self.backend_name)
            dim = layer.units
        self._engine = Engine(self.layers, input_dim, self.dtype, self._kernels)

    @property
    def built(self) -> bool:
        return self._engine is not None

    @property
    def input_dim(self) -> int | None:
        return self._engine.input_dim if self._engine else None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].units

    def _ensure_built(self, x: np.ndarray) -> None:
        if not self._maybe_build():
            self.build(x.shape[1])
        elif x.shape[1] != self._engine.input_dim:
            raise ValueError(
                f"x must have {self._engine.input_dim} features per sample to match the model's "
                f"input, got {x.shape[1]} (x shape {x.shape})"
            )

    def count_params(self) -> int:
        """Number of weights (0 before the model is built)."""
        return self._engine.n_params if self._maybe_build() else 0

    # -- compile ----------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None) -> None:
        """Chooses the optimizer (name or instance), the loss and the metrics.

        Metrics: "accuracy" (classification losses), "mae", "mse".
        """
        if loss is None:
            raise ValueError("loss must be given, e.g. loss='sparse_categorical_crossentropy'")
        self.optimizer = _optimizers.get(optimizer)
        self.loss = _losses.get(loss)
        names = []
        for m in metrics or []:
            names.append(lookup(_METRICS, "metrics", m))
        if "accuracy" in names and isinstance(
            self.loss, (_losses.MeanSquaredError, _losses.MeanAbsoluteError)
        ):
            raise ValueError(f"metric 'accuracy' needs a classification loss, got {self.loss.name}")
        self.metrics = names
        self._plan = None
        if self._engine is not None:
            self._engine.state = None

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
        if "accuracy" not in self.metrics:
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
        x = _to_features(x, arg, self.dtype, self._flatten)
        self._ensure_built(x)
        return x

    def _prepare(self, x, y, sample_weight=None, class_weight=None, arg="x"):
        """Validates and converts (x, y, weights) once, before any kernel runs."""
        x = self._features(x, arg)
        plan, _ = self._stack_plan()
        if y is None:
            raise ValueError("y must be given for training and evaluation")
        y_arr = np.asarray(y)
        if y_arr.ndim == 0 or y_arr.shape[0] != x.shape[0]:
            raise ValueError(
                f"x and y must have the same number of samples, got {x.shape[0]} and "
                f"{y_arr.shape[0] if y_arr.ndim else 'a scalar'}"
            )
        y_enc = _losses.encode_targets(y_arr, plan.target, self.output_dim, self.dtype, "y")
        if plan.target in ("dense",) and plan.code in (codes.SIGMOID_BCE, codes.BINARY_CE):
            if y_enc.size and (y_enc.min() < 0 or y_enc.max() > 1):
                raise ValueError(
                    "y must be in [0, 1] for binary_crossentropy, got values in "
                    f"[{y_enc.min()}, {y_enc.max()}]"
                )
        sw = _losses.sample_weights(sample_weight, x.shape[0], self.dtype)
        if class_weight is not None:
            sw = sw * self._class_weights(class_weight, y_arr, plan)
        return x, y_enc, np.ascontiguousarray(sw, dtype=self.dtype)

    def _class_weights(self, class_weight, y, plan):
        if not isinstance(class_weight, dict):
            raise TypeError(
                f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}"
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
                raise ValueError(f"class_weight has an invalid entry {cls!r}: {w!r}")
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
        from ._fit import fit_loop

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

    def _run(self, x, y, sw, order, batch_size, train, lrs=None, stats=None):
        """Runs batches of x[order] through the compiled epoch kernel; returns (batches
        done, stats)."""
        eng = self._engine
        plan, table = self._stack_plan()
        acc_mode, threshold = self._acc_mode(plan, y)
        ws = eng.workspace(batch_size, y.shape[1])
        n_batches = (len(order) + batch_size - 1) // batch_size
        if stats is None:
            stats = np.zeros(codes.STAT_LEN)
        if lrs is None:
            lrs = np.zeros(n_batches)
        hyper = self.optimizer.hyper()
        done = self._kernels.run_epoch(
            x,
            y,
            sw,
            order,
            batch_size,
            ws.xb,
            ws.yb,
            ws.swb,
            eng.params,
            eng.grads,
            eng.state,
            ws.acts,
            ws.gbuf,
            table,
            eng.table_f,
            plan.code,
            plan.logits_out,
            self.optimizer.code,
            hyper,
            lrs,
            self.optimizer.iterations + 1,
            self._dropout_seed,
            int(train),
            acc_mode,
            threshold,
            stats,
        )
        if train:
            self.optimizer.iterations += int(done)
        return int(done), stats

    def _logs(self, stats, prefix=""):
        rows = max(stats[codes.STAT_ROWS], 1)
        logs = {prefix + "loss": float(stats[codes.STAT_LOSS] / rows)}
        for m in self.metrics:
            if m == "accuracy":
                logs[prefix + m] = float(stats[codes.STAT_CORRECT] / rows)
            else:
                key = codes.STAT_ABS if m == "mae" else codes.STAT_SQ
                logs[prefix + m] = float(stats[key] / (rows * self.output_dim))
        return logs

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None) -> float:
        """One optimizer step on the batch (x, y); returns its loss."""
        x, y, sw = self._prepare(x, y, sample_weight, class_weight)
        order = np.arange(x.shape[0], dtype=np.int64)
        lrs = self.optimizer.lrs(self.optimizer.iterations, 1)
        done, stats = self._run(x, y, sw, order, x.shape[0], True, lrs)
        loss = float(stats[codes.STAT_LOSS] / x.shape[0])
        if not done:
            raise NonFiniteLossError(
                f"loss is {loss} in train_on_batch; the weights were not updated"
            )
        return loss

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
        bs = _batch_size(batch_size, min(len(x), 1024))
        _, stats = self._run(x, y, sw, np.arange(len(x), dtype=np.int64), bs, False)
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
        bs = _batch_size(batch_size, min(len(x), 1024))
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
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(
                f"weights must be a list of {len(expected)} arrays, got {len(weights)}"
            )
        arrays = []
        for i, (w, shape) in enumerate(zip(weights, expected)):
            w = np.asarray(w)
            if w.shape != shape:
                raise ValueError(f"weights[{i}] must have shape {shape}, got {w.shape}")
            if w.dtype.kind not in "biuf" or not np.all(np.isfinite(w)):
                raise ValueError(f"weights[{i}] must be finite numbers")
            arrays.append(w)
        self._engine.pull()
        targets = [t for layer in self.layers if layer.has_weights for t in layer.weights]
        for t, w in zip(targets, arrays):
            t[...] = w
        self._engine.push()

    # -- files ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the model (config, weights, optimizer state) to one file; see
        :func:`fastnn.load_model`."""
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
