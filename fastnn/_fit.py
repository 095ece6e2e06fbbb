"""The epoch loop of ``Sequential.fit``: data preparation once, then one compiled call per
epoch (or per progress-bar chunk / per batch when asked)."""

from __future__ import annotations

import numpy as np

from . import callbacks as _callbacks
from .kernels import codes

#: Progress-bar updates per epoch with verbose=1 (each update is one compiled call).
PROGRESS_UPDATES = 20


def _split(model, x, y, sample_weight, class_weight, validation_split, validation_data):
    if isinstance(validation_split, bool) or not isinstance(
        validation_split, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"validation_split must be a number in [0, 1), got "
            f"{type(validation_split).__name__} {validation_split!r}"
        )
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)):
            raise TypeError(
                "validation_data must be a tuple (x_val, y_val[, sample_weight_val]), got "
                f"{type(validation_data).__name__}"
            )
        if len(validation_data) not in (2, 3):
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val[, sample_weight_val]), got "
                f"a {type(validation_data).__name__} of {len(validation_data)} items"
            )
    X, Y, SW = model._prepare(x, y, sample_weight, class_weight)
    val = None
    if validation_data is not None:
        val = model._prepare(
            validation_data[0],
            validation_data[1],
            validation_data[2] if len(validation_data) == 3 else None,
            arg="validation_data x",
            y_arg="validation_data y",
        )
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


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    if not isinstance(verbose, (int, np.integer)):
        raise TypeError(f"verbose must be 0, 1 or 2, got {type(verbose).__name__} {verbose!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    return int(verbose)


def _replay(model, snap, X, Y, SW, rows, bs):
    """Restores ``snap`` (the start of the epoch) and re-runs the batches of ``rows`` one at a
    time (bit-identical: same order, rates and dropout seeds) until the first one whose loss
    or update is not finite; leaves the weights of the step before it.

    Returns (batch index, loss, reason) or None if every batch now succeeds."""
    model._restore(snap)
    for b in range(-(-len(rows) // bs)):
        before = model._snapshot()
        batch = rows[b * bs : (b + 1) * bs]
        stats = np.zeros(codes.STAT_LEN)
        done, finite = model._train_batches(X, Y, SW, batch, bs, stats)
        loss = float(stats[codes.STAT_LOSS] / len(batch))
        if not finite:
            model._restore(before)
            return b, loss, "loss" if not done else "weights"
    return None


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
    from .callbacks import Callback
    from .model import NonFiniteLossError, _batch_size, _check_bool, check_int

    epochs = check_int(epochs, "epochs", 1)
    initial_epoch = check_int(initial_epoch, "initial_epoch", 0)
    if initial_epoch >= epochs:
        raise ValueError(
            f"initial_epoch must be < epochs ({epochs}): nothing would be trained, got "
            f"{initial_epoch}"
        )
    verbose = _check_verbose(verbose)
    shuffle = _check_bool(shuffle, "shuffle")
    bs = _batch_size(batch_size, 32)
    if isinstance(callbacks, Callback) or (
        callbacks is not None and not isinstance(callbacks, (list, tuple))
    ):
        raise TypeError(
            "callbacks must be a list of Callback instances, got "
            f"{type(callbacks).__name__}; wrap a single callback in a list"
        )
    (X, Y, SW), val = _split(
        model, x, y, sample_weight, class_weight, validation_split, validation_data
    )
    n = len(X)
    bs = min(bs, n)
    n_batches = -(-n // bs)
    history = _callbacks.History()
    cbs = _callbacks.CallbackList(
        [*(callbacks or []), history],  # last, as in Keras: it records what others add
        model,
        {"epochs": epochs, "steps": n_batches, "verbose": verbose},
    )
    batch_begin = cbs.overriding("on_train_batch_begin")
    batch_end = cbs.overriding("on_train_batch_end")
    per_batch = bool(batch_begin or batch_end)
    chunks = _epoch_chunks(n_batches, verbose, per_batch)
    train = model._trainer(X, Y, SW, bs)  # its workspace is allocated and warmed up here
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
        snap = model._snapshot(reuse=True)  # replay point should a step go non-finite
        for size in chunks:
            batch0 = start // bs
            for hook in batch_begin:
                hook(batch0, {})
            rows = order[start : start + size * bs]
            done, finite = train(rows, stats)
            if not finite:
                found = _replay(model, snap, X, Y, SW, order[: start + size * bs], bs)
                if found is None and done == size:
                    found = (0, 0.0, "ok")  # the replay ended finite: keep its weights
                bad, loss, reason = found or (batch0 + done, float("nan"), "loss")
            else:
                reason = "ok"
            if reason != "ok":
                if bar is not None:
                    bar.close()
                if cbs.handles_nan:
                    model.stop_training = nan_stop = True
                    # a finite loss whose update broke the weights still reports non-finite
                    logs = {"loss": float(loss) if reason == "loss" else float("nan")}
                    cbs.call("on_train_batch_end", bad, logs)
                    break
                what = (
                    f"loss became {loss}"
                    if reason == "loss"
                    else f"the update made the weights non-finite (loss {loss})"
                )
                raise NonFiniteLossError(
                    f"{what} at epoch {epoch + 1}, batch {bad + 1}: training stopped with the "
                    "weights of the last good step; lower the learning rate or check the data "
                    "scale (or pass callbacks=[TerminateOnNaN()] to stop without an error)",
                    epoch=epoch,
                    batch=bad,
                    loss=loss,
                )
            start += size * bs
            if batch_end:
                batch_logs = model._logs(stats)
                for hook in batch_end:
                    hook(batch0, batch_logs)
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
            vstats = model._run(vx, vy, vsw, np.arange(len(vx), dtype=np.int64), vbs)
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
