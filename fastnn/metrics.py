"""Metrics (Keras 3 names), accumulated as sums inside the compiled epoch.

Each metric owns a few entries of the statistics vector the kernels fill (its "slots":
hits, confusion counts, a histogram of predictions); its value is computed from them once
per logging, so a metric costs no Python per step.  Pass names or instances to
``compile(metrics=[...])``; a name is logged as given, an instance under its ``name``.
"""

from __future__ import annotations

import math

import numpy as np

from ._names import lookup
from .kernels import codes


class Metric:
    """Base class: ``kind`` (a codes.M_* metric kind, or None for the error sums every
    batch adds), ``slots`` (entries of the statistics vector it owns) and ``result``."""

    kind: int | None = None
    slots = 0
    #: True for a metric compile built from a name (logged and saved as that name)
    from_name = False

    def __init__(self, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__}")
        self.name = name or _snake(type(self).__name__)

    def row(self, loss_plan, n_out) -> tuple[int, int, int, float]:
        """(kind, k, from_logits, threshold) of its kernel row, for a model's loss and output
        width; a ValueError when the metric does not apply."""
        return self.kind, 0, 0, 0.5

    def result(self, stats, slot, rows, n_out) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


def _snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or name[i + 1 : i + 2].islower()):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _dense_only(metric, loss_plan):
    if loss_plan.target == "sparse":
        raise ValueError(
            f"metric {metric.name!r} compares outputs with 0/1 targets of the output's width; "
            "the model's loss takes integer class labels"
        )


def _logit(threshold, loss_plan):
    """The threshold on the model's outputs: on logits (from_logits losses) the logit of
    the probability threshold."""
    if not loss_plan.logits_out or loss_plan.code != codes.SIGMOID_BCE:
        return threshold
    if threshold <= 0:
        return -math.inf
    return math.inf if threshold >= 1 else math.log(threshold / (1 - threshold))


class Accuracy(Metric):
    """ "accuracy": the kind of accuracy the loss implies (sparse, categorical or binary)."""

    slots = 1

    def row(self, loss_plan, n_out):
        if loss_plan.code in (codes.MSE, codes.MAE):
            raise ValueError(f"metric {self.name!r} needs a classification loss")
        if loss_plan.target == "sparse":
            return codes.ACC_SPARSE, 0, 0, 0.5
        if loss_plan.code in (codes.SIGMOID_BCE, codes.BINARY_CE):
            return codes.ACC_BINARY, 0, 0, _logit(0.5, loss_plan)
        return codes.ACC_CATEGORICAL, 0, 0, 0.5

    def result(self, stats, slot, rows, n_out):
        return stats[slot] / rows


class CategoricalAccuracy(Accuracy):
    """argmax of the output == argmax of one-hot targets."""

    def row(self, loss_plan, n_out):
        if loss_plan.target == "sparse":
            raise ValueError(
                f"metric {self.name!r} needs one-hot targets; the loss takes integer labels: "
                "use 'sparse_categorical_accuracy'"
            )
        return codes.ACC_CATEGORICAL, 0, 0, 0.5


class SparseCategoricalAccuracy(Accuracy):
    """argmax of the output == the integer label."""

    def row(self, loss_plan, n_out):
        if loss_plan.target != "sparse":
            raise ValueError(
                f"metric {self.name!r} needs integer labels (a sparse loss); the loss takes "
                "rows of targets: use 'categorical_accuracy'"
            )
        return codes.ACC_SPARSE, 0, 0, 0.5


class BinaryAccuracy(Accuracy):
    """The fraction of outputs on the right side of ``threshold``."""

    def __init__(self, name=None, threshold: float = 0.5):
        super().__init__(name)
        self.threshold = _fraction(threshold, "threshold")

    def row(self, loss_plan, n_out):
        _dense_only(self, loss_plan)
        return codes.ACC_BINARY, 0, 0, _logit(self.threshold, loss_plan)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class TopKCategoricalAccuracy(Accuracy):
    """Whether the target class is among the ``k`` largest outputs (one-hot targets)."""

    _sparse = False

    def __init__(self, k: int = 5, name=None):
        super().__init__(name)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.k = int(k)

    def row(self, loss_plan, n_out):
        if (loss_plan.target == "sparse") != self._sparse:
            other = "sparse_top_k" if not self._sparse else "top_k"
            raise ValueError(f"metric {self.name!r} does not fit the loss's targets: use "
                             f"'{other}_categorical_accuracy'")  # fmt: skip
        return codes.M_SPARSE_TOP_K if self._sparse else codes.M_TOP_K, self.k, 0, 0.5

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """Whether the integer label is among the ``k`` largest outputs."""

    _sparse = True


def _fraction(value, arg):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg} must be a number in [0, 1], got {type(value).__name__}")
    if not 0 <= value <= 1:
        raise ValueError(f"{arg} must be in [0, 1], got {value}")
    return float(value)


class _Confusion(Metric):
    kind, slots = codes.M_CONFUSION, 3

    def __init__(self, thresholds: float | None = None, name=None):
        super().__init__(name)
        self.thresholds = 0.5 if thresholds is None else _fraction(thresholds, "thresholds")

    def row(self, loss_plan, n_out):
        _dense_only(self, loss_plan)
        return self.kind, 0, 0, _logit(self.thresholds, loss_plan)

    def get_config(self):
        return {**super().get_config(), "thresholds": self.thresholds}


class Precision(_Confusion):
    """True positives / predicted positives (outputs above ``thresholds``; 0.5)."""

    def result(self, stats, slot, rows, n_out):
        tp, fp = stats[slot], stats[slot + 1]
        return tp / (tp + fp) if tp + fp else 0.0


class Recall(_Confusion):
    """True positives / actual positives (outputs above ``thresholds``; 0.5)."""

    def result(self, stats, slot, rows, n_out):
        tp, fn = stats[slot], stats[slot + 2]
        return tp / (tp + fn) if tp + fn else 0.0


class AUC(Metric):
    """Area under the ROC curve by the trapezoidal rule over ``num_thresholds`` thresholds
    (Keras's, 0 - eps, j / (n - 1), 1 + eps), from a histogram of the predictions.

    Parameters
    ----------
    num_thresholds : int
        At least 2.
    curve : {"ROC"}
        Only the ROC curve.
    from_logits : bool
        Whether the model's outputs are logits (a sigmoid is applied first).
    """

    kind = codes.M_HISTOGRAM

    def __init__(self, num_thresholds: int = 200, curve: str = "ROC", name=None,
                 from_logits: bool = False):  # fmt: skip
        super().__init__(name)
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
            raise TypeError(f"num_thresholds must be an int > 1, got {num_thresholds!r}")
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be > 1, got {num_thresholds}")
        if curve != "ROC":
            raise ValueError(f"curve must be 'ROC' (the only one supported), got {curve!r}")
        self.num_thresholds, self.curve = int(num_thresholds), curve
        self.from_logits = bool(from_logits)
        self.slots = 2 * self.num_thresholds

    def row(self, loss_plan, n_out):
        _dense_only(self, loss_plan)
        logits = self.from_logits or (loss_plan.logits_out and loss_plan.code == codes.SIGMOID_BCE)
        return self.kind, self.num_thresholds, int(logits), 0.5

    def result(self, stats, slot, rows, n_out):
        k = self.num_thresholds
        pos = np.asarray(stats[slot : slot + k], dtype=np.float64)
        neg = np.asarray(stats[slot + k : slot + 2 * k], dtype=np.float64)
        # predictions above threshold j: those in buckets j + 1 and up
        tp = np.cumsum(pos[::-1])[::-1][1:]
        fp = np.cumsum(neg[::-1])[::-1][1:]
        tp, fp = np.append(tp, 0.0), np.append(fp, 0.0)
        tpr = tp / pos.sum() if pos.sum() else np.zeros_like(tp)
        fpr = fp / neg.sum() if neg.sum() else np.zeros_like(fp)
        return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))

    def get_config(self):
        return {**super().get_config(), "num_thresholds": self.num_thresholds,
                "curve": self.curve, "from_logits": self.from_logits}  # fmt: skip


class MeanAbsoluteError(Metric):
    """mean |output - target| over outputs and samples."""

    def row(self, loss_plan, n_out):
        return None

    def result(self, stats, slot, rows, n_out):
        return stats[codes.STAT_ABS] / (rows * n_out)


class MeanSquaredError(MeanAbsoluteError):
    """mean (output - target)^2 over outputs and samples."""

    def result(self, stats, slot, rows, n_out):
        return stats[codes.STAT_SQ] / (rows * n_out)


class RootMeanSquaredError(MeanAbsoluteError):
    """The square root of the mean squared error."""

    def result(self, stats, slot, rows, n_out):
        return math.sqrt(stats[codes.STAT_SQ] / (rows * n_out))


_NAMES = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "auc": AUC,
    "precision": Precision,
    "recall": Recall,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "root_mean_squared_error": RootMeanSquaredError,
    "rmse": RootMeanSquaredError,
}
CLASSES = {cls.__name__: cls for cls in set(_NAMES.values())}


def get(metric) -> Metric:
    """A :class:`Metric` from a name (logged as given) or an instance (logged as its name)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, type) and issubclass(metric, Metric):
        return metric()
    cls = lookup(_NAMES, "metrics", metric)
    out = cls(name=metric.strip())
    out.from_name = True
    return out


def serialize(metric: Metric):
    """A metric as compile's config holds it: the name it was given, or its class and
    config."""
    if getattr(metric, "from_name", False):
        return metric.name
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(entry) -> Metric:
    """The inverse of :func:`serialize` (a ValueError for anything else)."""
    if isinstance(entry, str):
        return get(entry)
    if not (isinstance(entry, dict) and entry.get("class_name") in CLASSES):
        raise ValueError(f"invalid metric entry {entry!r}")
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"invalid metric config {config!r}")
    return CLASSES[entry["class_name"]](**config)


class MetricSet:
    """A model's metrics with their slots: the kernels' metrics table and thresholds for a
    loss plan, the statistics vector, and the logs."""

    def __init__(self, metrics):
        self.metrics = list(metrics)
        self.slots, end = [], codes.STAT_LEN
        for m in self.metrics:
            self.slots.append(end)
            end += m.slots
        self.size = end
        self._tables: dict = {}

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size)

    def table(self, loss_plan, n_out):
        """(metrics (M, M_COLS) int64, thresholds (M,) float64) for the kernels (validated
        once per loss plan: a ValueError for a metric that does not fit the loss)."""
        key = (loss_plan, n_out)
        if key not in self._tables:
            rows, thresholds = [], []
            for m, slot in zip(self.metrics, self.slots):
                spec = m.row(loss_plan, n_out)
                if spec is None:
                    continue
                kind, k, logits, thr = spec
                rows.append([kind, slot, k, logits])
                thresholds.append(thr)
            table = np.array(rows, dtype=np.int64).reshape(len(rows), codes.M_COLS)
            self._tables[key] = (table, np.array(thresholds, dtype=np.float64))
        return self._tables[key]

    def logs(self, stats, n_out, prefix="") -> dict:
        """{prefix + loss, prefix + name: value} from an epoch's statistics."""
        v = stats.tolist()
        rows = max(v[codes.STAT_ROWS], 1.0)
        logs = {prefix + "loss": v[codes.STAT_LOSS] / rows}
        for m, slot in zip(self.metrics, self.slots):
            logs[prefix + m.name] = float(m.result(v, slot, rows, n_out))
        return logs
