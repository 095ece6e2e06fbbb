"""Plots written to image files (matplotlib, the optional ``plot`` extra; drawn with the
Agg canvas, so they work without a display and leave pyplot alone).

    from fastnn import plot
    plot.history(model.fit(...), "history.png")
"""

from __future__ import annotations

import os

import numpy as np


def require() -> None:
    """Raises ImportError, saying how to install it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "fastnn.plot needs matplotlib: pip install 'fastnn-cpu[plot]' (or pip install "
            "matplotlib)"
        ) from None


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        require()
    except ImportError:
        return False
    return True


def _figure(nrows=1, ncols=1, figsize=(6, 4.5)):
    """A figure drawn by the Agg canvas, never touching pyplot's global state."""
    require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} does not exist")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def history(history, path, title: str = ""):
    """Loss and every metric per epoch, training vs validation, one panel each.

    ``history``: the :class:`fastnn.callbacks.History` returned by ``fit``, or its
    ``.history`` dict.  Returns ``path``.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError("history has no epochs to plot (train for at least one epoch)")
    names = [k for k in logs if not k.startswith("val_") and k != "learning_rate"]
    names += [k[4:] for k in logs if k.startswith("val_") and k[4:] not in names]
    epochs_of = getattr(history, "epoch", None)
    fig, axes = _figure(1, len(names), figsize=(5 * len(names), 4))
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes[0], names):
        for key, label in ((name, "train"), ("val_" + name, "validation")):
            values = logs.get(key)
            if values:
                xs = (
                    [e + 1 for e in epochs_of]
                    if epochs_of and len(epochs_of) == len(values)
                    else range(1, len(values) + 1)
                )
                ax.plot(list(xs), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def predictions(x, y_true, y_pred, path, title: str = "", true_line=None):
    """Scatter plot of a 1-D regression: the data (x, y_true) and the model's fitted
    line (x, y_pred).  ``true_line``: optional (slope, intercept) drawn dashed.
    Returns ``path``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != 1:
        raise ValueError(f"predictions() plots one input feature, got x of shape {x.shape}")
    x = x[:, 0]
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if not len(x) == len(y_true) == len(y_pred):
        raise ValueError(
            f"x, y_true and y_pred must have one value per sample, got {len(x)}, "
            f"{len(y_true)} and {len(y_pred)}"
        )
    order = np.argsort(x)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.scatter(x, y_true, s=10, alpha=0.6, label="data")
    ax.plot(x[order], y_pred[order], color="C3", linewidth=2, label="model")
    if true_line is not None:
        slope, intercept = true_line
        ends = np.array([x.min(), x.max()])
        ax.plot(ends, slope * ends + intercept, "k--", linewidth=1, label="true line")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def bar_chart(labels, series: dict, path, title: str = "", ylabel: str = ""):
    """Grouped bars: one group per label, one bar per series (``{name: values}``, one
    value per label; None or NaN leaves a gap).  Returns ``path``."""
    labels = [str(label) for label in labels]
    if not labels or not series:
        raise ValueError("bar_chart needs at least one label and one series")
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
    n = len(series)
    width = 0.8 / n
    xs = np.arange(len(labels))
    fig, axes = _figure(figsize=(max(6, 1.2 * len(labels) * max(1, n / 2)), 4.5))
    ax = axes[0, 0]
    for i, (name, values) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else float(v) for v in values])
        bars = ax.bar(xs + (i - (n - 1) / 2) * width, heights, width, label=str(name))
        ax.bar_label(
            bars, labels=[f"{h:.3g}" if np.isfinite(h) else "" for h in heights], fontsize=7
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20 if max(len(s) for s in labels) > 8 else 0)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)
