"""Losses (Keras names).  Each loss reduces as Keras' "sum_over_batch_size":
``sum_i sample_weight_i * loss_i / N``, where loss_i of a multi-output loss is its mean over
outputs.  Calling a loss computes its value; :meth:`Loss.gradient` its gradient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend as _backend
from ._checks import as_array, as_float, check_finite
from ._names import lookup
from .kernels import codes


@dataclass(frozen=True)
class StackLoss:
    """How a loss runs inside a compiled stack: the kernel loss code, the activation the
    last layer computes while training, whether outputs stay logits, and the target form."""

    code: int
    train_act: int
    logits_out: int
    target: str  # "sparse" (N, 1) indices, "onehot" (N, C), "dense" (N, C) values


#: Keras 3's loss options with the one value fastnn computes (their defaults); ``name``
#: and ``dtype`` are accepted and have no effect (the logs say "loss"; the model's dtype
#: is the loss's).
_KERAS_OPTIONS = {"reduction": "sum_over_batch_size", "label_smoothing": 0.0, "axis": -1,
                  "ignore_class": None}  # fmt: skip


class Loss:
    """Base class.  ``from_logits`` (cross-entropies): predictions are logits.

    Keras 3's options are accepted with the value fastnn computes: ``reduction=
    "sum_over_batch_size"``, ``label_smoothing=0``, ``axis=-1``, ``ignore_class=None``
    (another value is a ValueError), ``name`` and ``dtype`` (no effect)."""

    name = "loss"
    from_logits = False

    def __init__(self, **keras_options):
        cls = type(self).__name__
        for key, value in keras_options.items():
            if key in ("name", "dtype"):
                continue
            if key not in _KERAS_OPTIONS:
                raise TypeError(f"{cls}() got an unexpected keyword argument {key!r}")
            if value != _KERAS_OPTIONS[key]:
                raise ValueError(
                    f"{cls}: {key}={value!r} is not supported; fastnn computes Keras's "
                    f"default {key}={_KERAS_OPTIONS[key]!r}"
                )

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits} if hasattr(self, "_has_logits") else {}

    def plan(self, last_act: int) -> StackLoss:
        """The compiled-stack form of this loss after a last layer with activation code
        ``last_act``."""
        raise NotImplementedError

    def check_output(self, activation: str, layer: str, layer_type: str = "Dense") -> None:
        """Checks that this loss fits a model whose outputs come from ``activation``.

        Parameters
        ----------
        activation : str
            The output activation (e.g. "softmax", "linear").
        layer : str
            Name of the layer that applies it, for the message.
        layer_type : str
            Its class name ("Dense" or "Activation"), for the suggested fix.

        Raises
        ------
        ValueError
            If the pairing trains on the wrong quantity (for example probabilities fed to
            a loss that expects logits).  Regression losses accept any activation.
        """

    def _direct_code(self, y_pred_is_logits: bool) -> tuple[int, str]:
        raise NotImplementedError

    # -- direct use -----------------------------------------------------------------
    def _run(self, y_true, y_pred, sample_weight, backend):
        _, k = _backend.resolve(backend)
        y_pred = as_array(y_pred, "y_pred")
        src = y_pred
        dtype = src.dtype if src.dtype in (np.float32, np.float64) else np.float32
        if y_pred.ndim == 1:
            y_pred = y_pred[:, None]
        if y_pred.ndim != 2 or 0 in y_pred.shape:
            raise ValueError(
                f"y_pred must have shape (N,) or (N, C) with N, C >= 1, got {y_pred.shape}"
            )
        y_pred = as_float(y_pred, dtype)
        check_finite(y_pred, "y_pred", src)
        n = y_pred.shape[0]
        y_arr = as_array(y_true, "y_true")
        if y_arr.ndim == 0 or y_arr.shape[0] != n:
            raise ValueError(
                f"y_true and y_pred must have the same number of samples, got "
                f"{y_arr.shape[0] if y_arr.ndim else 'a scalar'} and {n}"
            )
        code, target = self._direct_code(self.from_logits)
        y = encode_targets(y_arr, target, y_pred.shape[1], y_pred.dtype, "y_true")
        if code in (codes.SIGMOID_BCE, codes.BINARY_CE) and (y.min() < 0 or y.max() > 1):
            raise ValueError(
                f"y_true must be in [0, 1] for {self.name}, got values in [{y.min()}, {y.max()}]"
            )
        sw = sample_weights(sample_weight, n, y_pred.dtype)
        grad = np.empty_like(y_pred)
        probs = np.empty_like(y_pred)
        loss = k.loss_grad(y_pred, y, sw, probs, grad, code)
        return loss, grad

    def __call__(self, y_true, y_pred, sample_weight=None, backend: str | None = None) -> float:
        """The loss of predictions ``y_pred`` (N, C) against ``y_true``."""
        return self._run(y_true, y_pred, sample_weight, backend)[0]

    def gradient(self, y_true, y_pred, sample_weight=None, backend: str | None = None):
        """dL/dy_pred, of ``y_pred``'s shape ((N,) or (N, C))."""
        grad = self._run(y_true, y_pred, sample_weight, backend)[1]
        shape = np.shape(y_pred)
        return grad.reshape(shape) if len(shape) == 1 else grad

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)**2) over outputs, averaged over the batch."""

    name = "mean_squared_error"

    def plan(self, last_act):
        return StackLoss(codes.MSE, last_act, 1, "dense")

    def _direct_code(self, logits):
        return codes.MSE, "dense"


class MeanAbsoluteError(Loss):
    """mean(|y_pred - y_true|) over outputs, averaged over the batch."""

    name = "mean_absolute_error"

    def plan(self, last_act):
        return StackLoss(codes.MAE, last_act, 1, "dense")

    def _direct_code(self, logits):
        return codes.MAE, "dense"


class Huber(Loss):
    """Huber loss (Keras): 0.5 d**2 where |d| <= delta, else delta * (|d| - delta / 2), with
    d = y_pred - y_true, averaged over outputs.

    Parameters
    ----------
    delta : float
        Where the loss turns from quadratic to linear.  The compiled kernels compute
        Keras's default, 1.0; another value raises a ValueError.
    """

    name = "huber"

    def __init__(self, delta: float = 1.0, **keras_options):
        super().__init__(**keras_options)
        if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)):
            raise TypeError(f"delta must be a number, got {type(delta).__name__} {delta!r}")
        if float(delta) != codes.HUBER_DELTA:
            raise ValueError(
                f"delta must be {codes.HUBER_DELTA} (Keras's default, the one the kernels "
                f"compute), got {delta!r}"
            )
        self.delta = float(delta)

    def get_config(self):
        return {"delta": self.delta}

    def plan(self, last_act):
        return StackLoss(codes.HUBER, last_act, 1, "dense")

    def _direct_code(self, logits):
        return codes.HUBER, "dense"


class KLDivergence(Loss):
    """Kullback-Leibler divergence sum(y_true * log(y_true / y_pred)) over outputs, with
    y_true and y_pred clipped to [1e-7, 1] (Keras)."""

    name = "kl_divergence"

    def plan(self, last_act):
        return StackLoss(codes.KL_DIVERGENCE, last_act, 1, "dense")

    def _direct_code(self, logits):
        return codes.KL_DIVERGENCE, "dense"


class Poisson(Loss):
    """Poisson loss mean(y_pred - y_true * log(y_pred + 1e-7)) over outputs (Keras)."""

    name = "poisson"

    def plan(self, last_act):
        return StackLoss(codes.POISSON, last_act, 1, "dense")

    def _direct_code(self, logits):
        return codes.POISSON, "dense"


class _CrossEntropy(Loss):
    _has_logits = True
    #: output activations whose values this loss accepts as probabilities
    _prob_acts = ("softmax",)
    _fused_act = codes.SOFTMAX
    _logit_code = codes.SOFTMAX_CE
    _prob_code = codes.CATEGORICAL_CE
    _target = "onehot"

    def __init__(self, from_logits: bool = False, **keras_options):
        super().__init__(**keras_options)
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(
                f"from_logits must be True or False, got {type(from_logits).__name__} "
                f"{from_logits!r}"
            )
        self.from_logits = bool(from_logits)

    def plan(self, last_act):
        if self.from_logits:
            return StackLoss(self._logit_code, last_act, 1, self._target)
        if last_act == self._fused_act:  # fused: the last layer emits logits
            return StackLoss(self._logit_code, codes.LINEAR, 0, self._target)
        return StackLoss(self._prob_code, last_act, 1, self._prob_target)

    _prob_target = "onehot"

    def check_output(self, activation, layer, layer_type="Dense"):
        where = f"activation '{activation}' on layer '{layer}'"
        if self.from_logits:
            if activation in ("softmax", "sigmoid"):
                fix = (
                    "make the last Dense linear"
                    if layer_type == "Dense"
                    else f"remove the last {layer_type} layer"
                )
                raise ValueError(
                    f"{self.name}: from_logits=True expects a linear last layer (logits), got "
                    f"{where}, whose outputs are already probabilities (the loss would apply "
                    f"{'sigmoid' if self._target == 'dense' else 'softmax'} to them again): "
                    f"drop from_logits or {fix}"
                )
            return
        if activation in self._prob_acts:
            return
        if activation == "sigmoid":
            raise ValueError(
                f"{self.name} expects probabilities that sum to 1 over the classes, got "
                f"{where} (independent probabilities per output): give the last layer "
                "activation='softmax', or use binary_crossentropy for independent "
                "(multi-label) outputs"
            )
        raise ValueError(
            f"{self.name} (from_logits=False) expects probabilities, got {where}: give the "
            "last layer activation='softmax' (or 'sigmoid' for binary_crossentropy), or pass "
            "from_logits=True for a linear output"
        )

    def _direct_code(self, logits):
        return (self._logit_code, self._target) if logits else (self._prob_code, self._prob_target)


class CategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy with one-hot (or probability) targets (N, C)."""

    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy with integer class targets (N,)."""

    name = "sparse_categorical_crossentropy"
    _logit_code = codes.SPARSE_SOFTMAX_CE
    _target = "sparse"
    _prob_target = "sparse_onehot"


class BinaryCrossentropy(_CrossEntropy):
    """Binary cross-entropy per output, targets in [0, 1]."""

    name = "binary_crossentropy"
    _prob_acts = ("sigmoid", "softmax")  # softmax outputs are probabilities in [0, 1] too
    _fused_act = codes.SIGMOID
    _logit_code = codes.SIGMOID_BCE
    _prob_code = codes.BINARY_CE
    _target = "dense"
    _prob_target = "dense"


_LOSSES = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "huber": Huber,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
    "poisson": Poisson,
}
CLASSES = {cls.__name__: cls for cls in set(_LOSSES.values())}


def get(loss) -> Loss:
    """A :class:`Loss` from a name or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    return lookup(_LOSSES, "loss", loss)()


# ---------------------------------------------------------------------------------------
# Target encoding (done once per fit, never per batch)


def _as_labels(y, n_classes, arg):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{arg} must be integer class labels of shape (N,) for a sparse loss, got shape "
            f"{y.shape}; use categorical_crossentropy for one-hot targets"
        )
    if y.dtype.kind not in "iuf":
        raise TypeError(f"{arg} must hold integer class labels, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (np.mod(np.where(np.isfinite(y), y, 0), 1) != 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{arg} must hold integer class labels, got the non-integer value {y[i]} at "
                f"index {i} (dtype {y.dtype})"
            )
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{arg} labels must be in [0, {n_classes - 1}] for a model with {n_classes} "
            f"outputs, got values in [{y.min()}, {y.max()}]"
        )
    return y.astype(np.int64)


def encode_targets(y, target: str, n_out: int, dtype, arg: str = "y") -> np.ndarray:
    """y as the (N, T) contiguous float array a compiled stack consumes.

    target "sparse": labels -> (N, 1) indices; "sparse_onehot": labels -> one-hot (N, C);
    "onehot": one-hot or probability rows (N, C); "dense": values (N,) or (N, C).
    """
    y_arr = np.asarray(y)
    if y_arr.dtype.kind not in "biuf":
        raise TypeError(f"{arg} must be numeric, got dtype {y_arr.dtype}")
    if target == "sparse":
        if np.dtype(dtype) == np.float32 and n_out > 2**24:
            # labels travel as float32: above 2**24 they would round to a wrong class
            raise ValueError(
                f"{arg} labels for {n_out} classes cannot be stored exactly in float32; "
                "use Sequential(dtype='float64')"
            )
        return np.ascontiguousarray(_as_labels(y_arr, n_out, arg)[:, None], dtype=dtype)
    if target == "sparse_onehot":
        return sparse_to_onehot(y_arr, n_out, dtype, arg)
    if target == "onehot" and (
        y_arr.ndim == 1 or (y_arr.ndim == 2 and y_arr.shape[1] == 1 and n_out > 1)
    ):
        raise ValueError(
            f"{arg} must be one-hot of shape (N, {n_out}) for categorical_crossentropy, got "
            f"shape {y_arr.shape}; use sparse_categorical_crossentropy for integer labels"
        )
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    if y_arr.ndim != 2 or y_arr.shape[1] != n_out:
        raise ValueError(
            f"{arg} must have shape (N, {n_out}) to match the model's outputs, got {y_arr.shape}"
        )
    out = np.ascontiguousarray(y_arr, dtype=dtype)
    check_finite(out, arg, y_arr)
    return out


def sparse_to_onehot(y, n_out, dtype, arg="y"):
    """Integer labels -> one-hot (N, n_out)."""
    labels = _as_labels(np.asarray(y), n_out, arg)
    out = np.zeros((labels.shape[0], n_out), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def sample_weights(sample_weight, n, dtype, arg="sample_weight") -> np.ndarray:
    """(N,) contiguous weights (ones when None), validated."""
    if sample_weight is None:
        return np.ones(n, dtype=dtype)
    sw = as_array(sample_weight, arg)
    if sw.shape != (n,):
        raise ValueError(f"{arg} must have shape ({n},), got {sw.shape}")
    if not np.all(np.isfinite(sw)) or (sw.size and sw.min() < 0):
        bad = ~np.isfinite(sw) | (sw < 0)
        i = int(np.argmax(bad))
        raise ValueError(
            f"{arg} must be finite and >= 0, got {sw[i]} at index {i} ({int(bad.sum())} bad)"
        )
    return np.ascontiguousarray(sw, dtype=dtype)
