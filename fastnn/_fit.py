"""The epoch loop of ``Sequential.fit``.

Arrays are prepared once and each epoch runs as one compiled call (or one per progress-bar
chunk, or per batch when a callback asks for batch hooks).  An iterable of batches (a
generator, a PyTorch ``DataLoader``, any iterable of ``(x, y[, sample_weight])``) runs one
compiled call per batch, which is the same update as the arrays' path for the same batches.
"""

from __future__ import annotations

import collections.abc
import math
import warnings

import numpy as np

from . import callbacks as _callbacks
from ._checks import _batch_size, _check_bool, check_int
from ._fit_events import _non_finite, _progress, _Stop
from .kernels import codes
from .losses import sample_weights

#: Progress-bar updates per epoch with verbose=1 (each update is one compiled call).
PROGRESS_UPDATES = 20

#: What fit, evaluate and predict accept as x.
ACCEPTED_X = (
    "a NumPy array (or list), or an iterable of (x, y) or (x, y, sample_weight) batches "
    "such as a generator or a PyTorch DataLoader"
)


def is_batch_source(x) -> bool:
    """Whether ``x`` is an iterable of batches rather than an array-like."""
    if hasattr(x, "__array__") or isinstance(x, (list, tuple, str, bytes, dict)):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def check_x(x, arg: str = "x") -> None:
    """TypeError naming what is accepted, for an x that is neither kind."""
    if is_batch_source(x) or hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        return
    raise TypeError(f"{arg} must be {ACCEPTED_X}, got {type(x).__name__}")


def as_numpy(value, arg):
    """A batch element as a NumPy array (torch tensors through their ``numpy()``)."""
    if value is None or isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if callable(detach):  # a torch tensor
        value = detach().cpu().numpy()
    return np.asarray(value) if hasattr(value, "__array__") else value


def split_batch(batch, arg="batch"):
    """(x, y, sample_weight) of one batch of an iterable."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(
            f"each {arg} must be a tuple (x, y) or (x, y, sample_weight), got "
            f"{type(batch).__name__}"
            + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        )
    x, y, sw = (*batch, None)[:3]
    return as_numpy(x, "x"), as_numpy(y, "y"), as_numpy(sw, "sample_weight")


# ---------------------------------------------------------------------------------------
# Checks of fit's arguments


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
    X, Y, SW = model._prepare(x, y, sample_weight, class_weight)
    val = _validation_arrays(model, validation_data)
    if val is None and validation_split:
        cut = int(math.floor(len(X) * (1.0 - validation_split)))  # Keras's split point
        if cut == 0 or cut == len(X):
            raise ValueError(
                f"validation_split={validation_split} leaves {len(X) - cut} of {len(X)} "
                "samples for validation; it must leave at least one sample on each side"
            )
        val_sw = SW
        if class_weight is not None:  # class weights weigh the training samples only
            val_sw = sample_weights(sample_weight, len(X), model.dtype, "sample_weight")
        val = (X[cut:], Y[cut:], np.ascontiguousarray(val_sw[cut:]))
        X, Y, SW = X[:cut], Y[:cut], SW[:cut]
    return (X, Y, SW), val


def _validation_arrays(model, validation_data):
    """validation_data prepared once: arrays (x, y[, sample_weight]), or None."""
    if validation_data is None or is_batch_source(validation_data):
        return None
    if not isinstance(validation_data, (tuple, list)):
        raise TypeError(
            "validation_data must be a tuple (x_val, y_val[, sample_weight_val]) or an "
            f"iterable of such batches, got {type(validation_data).__name__}"
        )
    if len(validation_data) not in (2, 3):
        raise ValueError(
            "validation_data must be a tuple (x_val, y_val[, sample_weight_val]), got "
            f"a {type(validation_data).__name__} of {len(validation_data)} items"
        )
    return model._prepare(
        validation_data[0],
        validation_data[1],
        validation_data[2] if len(validation_data) == 3 else None,
        arg="validation_data x",
        y_arg="validation_data y",
    )


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


def _optional_steps(value, arg):

    return None if value is None else check_int(value, arg, 1)


def _check_callbacks(callbacks):
    from .callbacks import Callback

    if isinstance(callbacks, Callback) or (
        callbacks is not None and not isinstance(callbacks, (list, tuple))
    ):
        raise TypeError(
            "callbacks must be a list of Callback instances, got "
            f"{type(callbacks).__name__}; wrap a single callback in a list"
        )
    return list(callbacks or [])


# ---------------------------------------------------------------------------------------
# Training on arrays: one compiled call per epoch (or chunk)


def _epoch_chunks(n_batches, verbose, per_batch):
    if per_batch:
        return [1] * n_batches
    if verbose == 1:
        step = max(1, -(-n_batches // PROGRESS_UPDATES))
        return [min(step, n_batches - s) for s in range(0, n_batches, step)]
    return [n_batches]


def _replay(model, snap, X, Y, SW, rows, bs):
    """Restores ``snap`` (the start of the epoch) and re-runs the batches of ``rows`` one at a
    time (bit-identical: same order, rates and dropout seeds) until the first one whose loss
    or update is not finite; leaves the weights of the step before it.

    Returns (batch index, loss, reason) or None if every batch now succeeds."""
    model._restore(snap)
    for b in range(-(-len(rows) // bs)):
        before = model._snapshot()
        batch = rows[b * bs : (b + 1) * bs]
        stats = model._new_stats()
        done, finite = model._train_batches(X, Y, SW, batch, bs, stats)
        loss = float(stats[codes.STAT_LOSS] / len(batch))
        if not finite:
            model._restore(before)
            return b, loss, "loss" if not done else "weights"
    return None


class ArrayEpochs:
    """Epochs over prepared arrays: each a compiled call per chunk of batches.

    With ``steps_per_epoch`` an epoch is that many batches of a pass over the (shuffled)
    samples, the next epoch going on where it stopped, as Keras 3's iterator does: the
    epoch that reaches the end of the pass is shorter, and the next one starts a new
    (reshuffled) pass."""

    def __init__(self, model, data, batch_size, shuffle, verbose, cbs, steps_per_epoch=None):
        self.model, (self.X, self.Y, self.SW) = model, data
        self.n = len(self.X)
        self.bs = min(batch_size, self.n)
        self.shuffle, self.verbose, self.cbs = shuffle, verbose, cbs
        self.per_pass = -(-self.n // self.bs)
        self.steps = steps_per_epoch or self.per_pass
        self.batch_begin = cbs.overriding("on_train_batch_begin")
        self.batch_end = cbs.overriding("on_train_batch_end")
        self.train = model._trainer(self.X, self.Y, self.SW, self.bs)  # warms its workspace
        self._pass, self._next = None, 0  # the pass's sample order, its next batch

    def _epoch_rows(self):
        """This epoch's samples, in order: the next ``steps`` batches of the pass."""
        if self._pass is None or self._next >= self.per_pass:
            order = self.model._shuffle_rng.permutation(self.n) if self.shuffle else None
            self._pass = np.arange(self.n) if order is None else order
            self._pass, self._next = self._pass.astype(np.int64), 0
        first, stop = self._next, min(self._next + self.steps, self.per_pass)
        self._next = stop
        return self._pass[first * self.bs : stop * self.bs]

    def run(self, epoch, epochs):
        """Trains one epoch; returns its logs (raises _Stop or NonFiniteLossError)."""
        model = self.model
        order = self._epoch_rows()
        steps = -(-len(order) // self.bs)
        chunks = _epoch_chunks(steps, self.verbose, bool(self.batch_begin or self.batch_end))
        stats = model._new_stats()
        bar = _progress(self.verbose, steps, epoch, epochs)
        snap = model._snapshot(reuse=True)  # replay point should a step go non-finite
        start = 0
        try:
            for size in chunks:
                self._chunk(order, start, size, stats, snap, epoch)
                start += size * self.bs
                if bar is not None:
                    bar.update(size)
                    bar.set_postfix(model._logs(stats), refresh=False)
                if model.stop_training:
                    break
        finally:
            if bar is not None:
                bar.close()
        return model._logs(stats)

    def _chunk(self, order, start, size, stats, snap, epoch):
        batch0 = start // self.bs
        for hook in self.batch_begin:
            hook(batch0, {})
        rows = order[start : start + size * self.bs]
        done, finite = self.train(rows, stats)
        if not finite:
            end = start + size * self.bs
            found = _replay(self.model, snap, self.X, self.Y, self.SW, order[:end], self.bs)
            if found is not None or done != size:
                bad, loss, reason = found or (batch0 + done, float("nan"), "loss")
                _non_finite(self.model, self.cbs, epoch, bad, float(loss), reason)
        if self.batch_end:
            logs = self.model._logs(stats)
            for hook in self.batch_end:
                hook(batch0, logs)


# ---------------------------------------------------------------------------------------
# Training on an iterable of batches: one compiled call per batch


_NO_BATCH = object()


def _reiterable(source) -> bool:
    """Whether iterating ``source`` starts a new pass (a DataLoader, a list of batches)
    rather than continuing the one pass of an iterator (a generator); asked without
    iterating it (a DataLoader's iterator would start its workers)."""
    return not isinstance(source, collections.abc.Iterator)


class BatchEpochs:
    """Epochs over an iterable of (x, y[, sample_weight]) batches."""

    def __init__(self, model, source, steps, class_weight, verbose, cbs):
        self.model, self.source, self.steps = model, source, steps
        self.class_weight, self.verbose, self.cbs = class_weight, verbose, cbs
        self._iterator = None
        self.exhausted = False
        #: a source that gives a new pass each time it is iterated (not its own iterator)
        self.reiterable = _reiterable(source)

    def _batches(self):
        """This epoch's iterator: the one iterator of a generator, continued; of a
        re-iterable source (a DataLoader) a fresh one each epoch, or with
        ``steps_per_epoch`` the previous epoch's, continued until it runs out (Keras 3)."""
        if self._iterator is None or (self.steps is None and self.reiterable):
            self._iterator = iter(self.source)
        return self._iterator

    def run(self, epoch, epochs):
        model = self.model
        stats = model._new_stats()
        bar = _progress(self.verbose, self.steps, epoch, epochs)
        it, b = self._batches(), 0
        try:
            while self.steps is None or b < self.steps:
                try:
                    batch = next(it)
                except StopIteration:
                    if not (self.reiterable and self.steps is not None):
                        self._ran_out(b)
                        if b == 0:  # nothing left for this epoch: training ends before it
                            raise _Stop(model._logs(stats)) from None
                        break
                    self._iterator = it = iter(self.source)  # a new pass
                    if b > 0:
                        break  # this epoch ends early, as in Keras 3; the next one goes on
                    batch = next(it, _NO_BATCH)
                    if batch is _NO_BATCH:
                        raise ValueError(
                            "the training batches are empty: the iterable yielded no batch"
                        ) from None
                self._one(batch, b, stats, epoch)
                b += 1
                if bar is not None:
                    bar.update(1)
                if model.stop_training:
                    break
        finally:
            if bar is not None:
                bar.close()
        return model._logs(stats)

    def _ran_out(self, b):
        if self.steps is not None:
            warnings.warn(
                f"the batches ran out after {b} of steps_per_epoch={self.steps}: training "
                "stops (give a source that yields steps_per_epoch * epochs batches)",
                RuntimeWarning,
                stacklevel=4,
            )
            self.exhausted = True
            self.model.stop_training = True
        elif b == 0:
            raise ValueError("the training batches are empty: the iterable yielded no batch")

    def _one(self, batch, b, stats, epoch):
        model = self.model
        for hook in self.cbs.overriding("on_train_batch_begin"):
            hook(b, {})
        x, y, sw = split_batch(batch)
        x, y, sw = model._prepare(x, y, sw, self.class_weight)
        snap = model._snapshot(reuse=True)
        part = model._new_stats()
        done, finite = model._train_batches(x, y, sw, np.arange(len(x), dtype=np.int64),
                                            len(x), part)  # fmt: skip
        if not finite:
            model._restore(snap)
            loss = float(part[codes.STAT_LOSS] / len(x))
            _non_finite(model, self.cbs, epoch, b, loss, "loss" if not done else "weights")
        stats += part
        stats[codes.STAT_NONFINITE] = 0.0
        hooks = self.cbs.overriding("on_train_batch_end")
        if hooks:
            logs = model._logs(stats)
            for hook in hooks:
                hook(b, logs)


# ---------------------------------------------------------------------------------------
# The loop


class _Validation:
    """Each epoch's validation logs (prefixed val_): all the validation arrays, or with
    ``steps`` the next ``steps`` batches of ``batch_size`` of them; all the batches of an
    iterable, or with ``steps`` the next ``steps`` of them.  Like Keras 3's iterator the
    batches go on from one validation to the next, a validation that reaches the end of
    the data is shorter, and the next one starts over (the one iterator of a generator is
    simply continued)."""

    def __init__(self, model, val, source, steps, batch_size):
        self.model, self.val, self.source, self.steps = model, val, source, steps
        self.bs = batch_size
        self._next, self._iterator = 0, None

    def logs(self, cbs):
        """The validation's logs, between ``cbs``'s on_test_begin and on_test_end (which
        is given the logs without the val_ prefix, as in Keras)."""
        model = self.model
        cbs.call("on_test_begin", {})
        if self.val is not None:
            vx, vy, vsw = self.val
            if self.steps is None:
                rows = np.arange(len(vx), dtype=np.int64)
                stats = model._evaluate_rows(vx, vy, vsw, rows, min(len(vx), 1024), cbs)
            else:
                stats = model._evaluate_rows(vx, vy, vsw, self._rows(len(vx)),
                                             min(self.bs, len(vx)), cbs)  # fmt: skip
        elif self.steps is None:
            stats = model._evaluate_batches(self.source, None, cbs)
        else:
            stats = self._continued(cbs)
        cbs.call("on_test_end", model._logs(stats))
        return model._logs(stats, prefix="val_")

    def _rows(self, n):
        per_pass = -(-n // self.bs)
        if self._next >= per_pass:
            self._next = 0
        first, stop = self._next, min(self._next + self.steps, per_pass)
        self._next = stop
        return np.arange(first * self.bs, min(stop * self.bs, n), dtype=np.int64)

    def _continued(self, cbs):
        reiterable = _reiterable(self.source)
        if self._iterator is None:
            self._iterator = iter(self.source)
        counted = _Counted(self._iterator)
        try:
            stats = self.model._evaluate_batches(counted, self.steps, cbs)
        except ValueError:
            if counted.n or not reiterable:
                raise
            self._iterator = iter(self.source)  # the pass ended with the last validation
            counted = _Counted(self._iterator)
            stats = self.model._evaluate_batches(counted, self.steps, cbs)
        if reiterable and counted.ended:
            self._iterator = None  # a new pass next time
        return stats


class _Counted:
    """An iterator's items, counted (``n``), and whether it ran out (``ended``)."""

    def __init__(self, iterator):
        self._it, self.n, self.ended = iterator, 0, False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self._it)
        except StopIteration:
            self.ended = True
            raise
        self.n += 1
        return item


def _print_epoch(verbose, bar_shown, epoch, epochs, logs, has_val):
    if verbose == 2 or (verbose == 1 and not bar_shown):
        print(
            f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        )
    elif verbose == 1 and has_val:
        print("  " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k.startswith("val_")))


def fit_loop(model, x, y, epochs, batch_size, verbose, callbacks, validation_split,
             validation_data, shuffle, class_weight, sample_weight, initial_epoch,
             steps_per_epoch=None, validation_steps=None, validation_freq=1):  # fmt: skip

    epochs = check_int(epochs, "epochs", 1)
    initial_epoch = check_int(initial_epoch, "initial_epoch", 0)
    if initial_epoch >= epochs:
        raise ValueError(
            f"initial_epoch must be < epochs ({epochs}): nothing would be trained, got "
            f"{initial_epoch}"
        )
    verbose, shuffle = _check_verbose(verbose), _check_bool(shuffle, "shuffle")
    steps = _optional_steps(steps_per_epoch, "steps_per_epoch")
    validation_steps = _optional_steps(validation_steps, "validation_steps")
    validation_freq = check_int(validation_freq, "validation_freq", 1)
    history = _callbacks.History()
    callbacks = _check_callbacks(callbacks)
    dp = _distribution()
    if dp is not None and not dp.is_primary:  # rank 0 alone prints and writes files
        verbose = 0
        callbacks = [cb for cb in callbacks if not getattr(cb, "writes_files", False)]
    cbs = _callbacks.CallbackList([*callbacks, history], model, {})
    check_x(x)
    if is_batch_source(x) and dp is not None:
        raise ValueError(
            "data-parallel fit takes arrays x and y (the same on every rank), got "
            f"{type(x).__name__}; call set_distribution(None) to fit on batches"
        )
    if is_batch_source(x):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "y and sample_weight must be None when x is an iterable of batches (each batch "
                "holds them)"
            )
        if validation_split:
            raise ValueError("validation_split needs arrays: pass validation_data instead")
        source = BatchEpochs(model, x, steps, class_weight, verbose, cbs)
        val, n_steps = None, steps
        if n_steps is None and source.reiterable and hasattr(x, "__len__"):
            n_steps = len(x)  # a DataLoader's batches, as Keras reports them
        if validation_data is not None and not is_batch_source(validation_data):
            val = _validation_arrays(model, validation_data)
    elif dp is not None:
        if steps is not None:
            raise ValueError(
                "steps_per_epoch is not supported by a data-parallel fit of arrays (every "
                f"epoch is a whole pass over them), got {steps}; call set_distribution(None)"
            )
        source = _data_parallel_epochs(dp, model, x, y, batch_size, shuffle, verbose, cbs,
                                       (sample_weight, class_weight, validation_split,
                                        validation_data), (epochs, initial_epoch))  # fmt: skip
        val, n_steps = source.val, source.steps
    else:
        data, val = _split(model, x, y, sample_weight, class_weight, validation_split,
                           validation_data)  # fmt: skip
        default = -(-len(data[0]) // steps) if steps else 32  # Keras 3's batch for steps
        source = ArrayEpochs(model, data, _batch_size(batch_size, default), shuffle, verbose,
                             cbs, steps)  # fmt: skip
        n_steps = source.steps
    cbs.set_params({"epochs": epochs, "steps": n_steps, "verbose": verbose})
    validation = None
    if val is not None or validation_data is not None:
        # without batch_size, Keras 3 splits validation arrays into validation_steps batches
        whole = val is not None and validation_steps
        default = -(-len(val[0]) // validation_steps) if whole else 32
        validation = _Validation(model, val, validation_data, validation_steps,
                                 _batch_size(batch_size, default))  # fmt: skip
    return _epochs(model, source, cbs, history, validation, validation_freq, initial_epoch,
                   epochs, verbose)  # fmt: skip


def _distribution():
    """The data-parallel distribution of the process, or None (also for one rank)."""
    from .distributed import get_distribution

    dp = get_distribution()
    return dp if dp is not None and dp.size > 1 else None


def _data_parallel_epochs(dp, model, x, y, batch_size, shuffle, verbose, cbs, rest, epochs):
    """The data-parallel epoch runner (its ``val``: the validation arrays)."""
    from . import _data_parallel as par

    sample_weight, class_weight, validation_split, validation_data = rest
    batch_size = _batch_size(batch_size, 32)
    settings = {"epochs": epochs[0], "initial_epoch": epochs[1], "batch_size": batch_size,
                "shuffle": shuffle}  # fmt: skip
    data, val = par.agree(dp, lambda: _split(model, x, y, sample_weight, class_weight,
                                             validation_split, validation_data),
                          settings)  # fmt: skip
    par.check_supported(dp, model)
    source = par.DataParallelEpochs(dp, model, data, batch_size, shuffle, verbose, cbs)
    source.val = val
    return source


def _epochs(model, source, cbs, history, validation, validation_freq, initial_epoch, epochs,
            verbose):  # fmt: skip
    model.stop_training = False
    model.history = history
    cbs.call("on_train_begin", {})
    logs: dict = {}
    has_val = validation is not None
    for epoch in range(initial_epoch, epochs):
        cbs.call("on_epoch_begin", epoch, {})
        try:
            logs = source.run(epoch, epochs)
        except _Stop as stop:
            logs = stop.logs
            break
        if has_val and (epoch + 1) % validation_freq == 0:
            logs.update(validation.logs(cbs))
        cbs.call("on_epoch_end", epoch, logs)
        bar_shown = verbose == 1 and getattr(source, "steps", None) is not None
        _print_epoch(verbose, bar_shown, epoch, epochs, logs, has_val)
        if model.stop_training:
            break
    cbs.call("on_train_end", logs)
    return history
