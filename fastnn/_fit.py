"""The epoch loop of ``Sequential.fit``: data preparation once, then one compiled call per
epoch (or per progress-bar chunk / per batch when asked)."""

from __future__ import annotations

import numpy as np

from . import callbacks as _callbacks
from .kernels import codes

#: Progress-bar updates per epoch with verbose=1 (each update is one compiled call).
PROGRESS_UPDATES = 20


def _split(model, x, y, sample_weight, class_weight, validation_split, validation_data):
    if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    X, Y, SW = model._prepare(x, y, sample_weight, class_weight)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a tuple (x_val, y_val[, sample_weight_val])")
        val = model._prepare(*validation_data[:2], *validation_data[2:], arg="validation_data x")
    elif validation_split:
        n_val = int(len(X) * validation_split)
        if n_val == 0 or n_val == len(X):
            raise ValueError(
                f"validation_split={validation_split} leaves {n_val} of {len(X)} samples for "
                "validation; it must leave at least one sample on each side"
            )
        cut = len(X) - n_val
        val = (X[cut:], Y[cut:], SW[cut:])
        X, Y, SW = X[:cut], Y[:cut], SW[:cut]
    return (X, Y, SW), val


def _epoch_chunks(n_batches, verbose, per_batch):
    if per_batch:
        return [1] * n_batches
    if verbose == 1:
        step = max(1, -(-n_batches // PROGRESS_UPDATES))
        return [min(step, n_batches - s) for s in range(0, n_batches, step)]
    return [n_batches]


def _check_int(value, arg, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    return int(value)


def fit_loop(
    model,
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
):
    from .model import NonFiniteLossError, _batch_size

    epochs = _check_int(epochs, "epochs", 0)
    initial_epoch = _check_int(initial_epoch, "initial_epoch", 0)
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    (X, Y, SW), val = _split(
        model, x, y, sample_weight, class_weight, validation_split, validation_data
    )
    bs = _batch_size(batch_size, 32)
    n = len(X)
    n_batches = -(-n // bs)
    history = _callbacks.History()
    cbs = _callbacks.CallbackList(
        [history, *(callbacks or [])],
        model,
        {"epochs": epochs, "steps": n_batches, "verbose": verbose},
    )
    chunks = _epoch_chunks(n_batches, verbose, cbs.wants_batches)
    model.stop_training = False
    model.history = history
    cbs.call("on_train_begin", {})
    logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        cbs.call("on_epoch_begin", epoch, {})
        order = model._shuffle_rng.permutation(n) if shuffle else np.arange(n)
        order = order.astype(np.int64)
        stats = np.zeros(codes.STAT_LEN)
        bar = _progress(verbose, n_batches, epoch, epochs)
        start = 0
        nan_stop = False
        for size in chunks:
            batch0 = start // bs
            if cbs.wants_batches:
                cbs.call("on_train_batch_begin", batch0, {})
            rows = order[start : start + size * bs]
            lrs = model.optimizer.lrs(model.optimizer.iterations, size)
            done, stats = model._run(X, Y, SW, rows, bs, True, lrs, stats)
            if done < size:
                bad = batch0 + done
                loss = stats[codes.STAT_LOSS]
                if bar is not None:
                    bar.close()
                if cbs.handles_nan:
                    model.stop_training = nan_stop = True
                    logs = {"loss": float(loss)}
                    cbs.call("on_train_batch_end", bad, logs)
                    break
                raise NonFiniteLossError(
                    f"loss became {loss} at epoch {epoch + 1}, batch {bad + 1}: training stopped "
                    "with the weights of the last good step; lower the learning rate or check "
                    "the data (or pass callbacks=[TerminateOnNaN()] to stop without an error)"
                )
            start += size * bs
            if cbs.wants_batches:
                cbs.call("on_train_batch_end", batch0, model._logs(stats))
            if bar is not None:
                bar.update(size)
                bar.set_postfix(model._logs(stats), refresh=False)
            if model.stop_training:
                break
        if bar is not None:
            bar.close()
        if nan_stop:
            break
        logs = model._logs(stats)
        if val is not None:
            vx, vy, vsw = val
            vbs = min(len(vx), 1024)
            _, vstats = model._run(vx, vy, vsw, np.arange(len(vx), dtype=np.int64), vbs, False)
            logs.update(model._logs(vstats, prefix="val_"))
        cbs.call("on_epoch_end", epoch, logs)
        if verbose == 2 or (verbose == 1 and bar is None):
            print(
                f"Epoch {epoch + 1}/{epochs} - "
                + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            )
        elif verbose == 1 and val is not None:
            print(
                "  " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k.startswith("val_"))
            )
        if model.stop_training:
            break
    cbs.call("on_train_end", logs)
    return history


def _progress(verbose, n_batches, epoch, epochs):
    if verbose != 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=n_batches,
        desc=f"Epoch {epoch + 1}/{epochs}",
        unit="batch",
        leave=True,
        dynamic_ncols=True,
    )
