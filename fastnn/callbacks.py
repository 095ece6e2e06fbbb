"""Callbacks for :meth:`fastnn.Sequential.fit` (Keras' interface).

Epoch hooks cost nothing per step.  Batch hooks (``on_train_batch_begin/end``) are honoured
when a callback overrides them, at the price of one compiled call per batch instead of one
per epoch.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import math
import os
import warnings

import numpy as np


class Callback:
    """Base class; override the hooks you need.  ``self.model`` is set by ``fit``."""

    #: True for callbacks that take over non-finite losses (fit then stops instead of raising)
    handles_nan = False

    def __init__(self):
        self.model = None
        self.params: dict = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...

    def wants_batches(self) -> bool:
        """Whether this callback overrides a per-batch hook."""
        return any(_overrides(self, hook) for hook in ("on_train_batch_begin",
                                                         "on_train_batch_end"))  # fmt: skip


def _overrides(callback, hook: str) -> bool:
    """Whether ``callback``'s ``hook`` is its class's or its own (LambdaCallback's), not the
    base class's that does nothing."""
    fn = getattr(callback, hook)
    return getattr(fn, "__func__", fn) is not getattr(Callback, hook)


class LambdaCallback(Callback):
    """A callback made of functions, as Keras's: each one given is called as that hook,
    ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)``,
    ``on_train_begin(logs)``, ``on_train_end(logs)``, ``on_train_batch_begin(batch, logs)``,
    ``on_train_batch_end(batch, logs)`` (also spelled ``on_batch_begin``/``on_batch_end``).
    A per-batch function makes ``fit`` call back after every batch."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 on_batch_begin=None, on_batch_end=None):  # fmt: skip
        super().__init__()
        hooks = {
            "on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin, "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin or on_batch_begin,
            "on_train_batch_end": on_train_batch_end or on_batch_end,
        }  # fmt: skip
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"{name} must be a function, got {type(fn).__name__} {fn!r}")
            setattr(self, name, fn)


def for_inference(model, callbacks):
    """The :class:`CallbackList` of ``evaluate``'s or ``predict``'s ``callbacks`` (a list of
    Callback instances or None), or None when there are none."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple, type(None))):
        raise TypeError(
            "callbacks must be a list of Callback instances, got "
            f"{type(callbacks).__name__}; wrap a single callback in a list"
        )
    return CallbackList(list(callbacks), model, {}) if callbacks else None


class History(Callback):
    """Records the logs of every epoch: ``history.history["loss"]`` is a list per epoch."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class CallbackList:
    """Calls a hook on every callback in order."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
            cb.set_model(model)
            cb.set_params(params)

    def set_params(self, params: dict) -> None:
        for cb in self.callbacks:
            cb.set_params(params)

    def batch_hooks(self, kind: str) -> tuple[list, list]:
        """The overridden ``on_{kind}_batch_begin`` and ``_end`` hooks ("test", "predict")."""
        return self.overriding(f"on_{kind}_batch_begin"), self.overriding(f"on_{kind}_batch_end")

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def overriding(self, hook: str) -> list:
        """The bound ``hook`` of each callback whose class overrides it, in order: the
        per-batch loop calls only these (the base class's hooks do nothing)."""
        return [getattr(cb, hook) for cb in self.callbacks if _overrides(cb, hook)]

    @property
    def handles_nan(self) -> bool:
        return any(cb.handles_nan for cb in self.callbacks)


# ---------------------------------------------------------------------------------------
# Keras' standard callbacks (epoch hooks only: they never slow the compiled epoch down)


def _monitor_mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return "max" if name in ("acc", "accuracy", "auc") or name.endswith("accuracy") else "min"


def _number(value, arg, low=0.0):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{arg} must be a finite number >= {low}, got {value}")
    return value


def _count(value, arg):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{arg} must be an int >= 0, got {value!r}")
    return int(value)


def _missing_message(who: str, monitor: str, logs) -> str:
    """Why ``monitor`` is not in ``logs``: no validation data for a val_ name, or else the
    available names and the closest one."""
    keys = sorted(logs or {})
    head = f"{who}: metric {monitor!r} is not in the logs (available: {', '.join(keys) or 'none'})"
    if monitor.startswith("val_") and not any(k.startswith("val_") for k in keys):
        return (
            f"{head}; pass validation data to fit (validation_data or validation_split) for "
            "val_ metrics"
        )
    close = difflib.get_close_matches(monitor, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{head}{hint} (metrics are logged under the names given to compile)"


class _Monitor(Callback):
    """Shared logic: which log entry to watch and what counts as an improvement."""

    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a log name such as 'val_loss', got {monitor!r}")
        self.monitor = monitor
        self.mode = _monitor_mode(monitor, mode)
        self.min_delta = abs(_number(min_delta, "min_delta", -math.inf))

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def _improved(self, current, reference) -> bool:
        if self.mode == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def _current(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(_missing_message(type(self).__name__, self.monitor, logs),
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            return None
        return float(value)


class EarlyStopping(_Monitor):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        Log entry to watch, e.g. "val_loss", "loss", "val_accuracy".
    min_delta : float
        Smallest change that counts as an improvement.
    patience : int
        Epochs without improvement after which training stops.
    mode : {"auto", "min", "max"}
        "auto" maximises accuracies and minimises everything else.
    restore_best_weights : bool
        At the end of training, set the weights of the best epoch (those of the last epoch
        otherwise).
    baseline : float, optional
        Training stops unless the monitored value beats it within ``patience`` epochs.
    start_from_epoch : int
        Epochs to wait before watching (warm-up).
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
    ):
        super().__init__(monitor, mode, min_delta)
        self.patience = _count(patience, "patience")
        self.verbose = verbose
        self.baseline = None if baseline is None else _number(baseline, "baseline", -math.inf)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _count(start_from_epoch, "start_from_epoch")
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self._worst()
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if math.isfinite(current) and self._improved(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0  # patience restarts only below the baseline
            return  # and no epoch that improved stops training, as in Keras 3
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of epoch {self.best_epoch + 1}")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Saves the model (``model.save``) or its weights after every epoch.

    ``filepath`` may hold ``str.format`` fields filled from the epoch (1-based) and the
    logs, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.fnn"``.  With ``save_best_only`` a file is
    written only when ``monitor`` improves on the best value so far.  Under data
    parallelism only rank 0 writes.
    """

    writes_files = True  # left out on the ranks other than 0 of a data-parallel fit

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        initial_value_threshold=None,
    ):
        super().__init__(monitor, mode)
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.best = (
            self._worst() if initial_value_threshold is None else float(initial_value_threshold)
        )
        self.last_saved: str | None = None

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **(logs or {}))
        except KeyError as exc:
            raise ValueError(
                f"ModelCheckpoint filepath {self.filepath!r} names {exc} which is not in the "
                f"logs (available: {', '.join(sorted(logs or {}))})"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            current = self._current(logs)
            if current is None or not math.isfinite(current):
                return
            if not self._improved(current, self.best):
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                print(
                    f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                    f"{current:.5f}, saving model"
                )
            self.best = current
        path = self._path(epoch, logs)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        self.last_saved = path


def _optimizer_of(model, who):
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise RuntimeError(f"{who} needs a compiled model (call compile() first)")
    return opt


def _current_lr(opt) -> float:
    return float(opt.learning_rate)


def _set_lr(opt, value, who) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: the schedule must return a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{who}: the learning rate must be finite and > 0, got {value}")
    opt.learning_rate = value
    return value


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of every epoch to
    ``schedule(epoch, lr)`` (``epoch`` 0-based, ``lr`` the current rate); a one-argument
    ``schedule(epoch)`` works too.  The rate is added to the epoch logs as
    ``"learning_rate"``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose
        try:
            params = inspect.signature(schedule).parameters.values()
            positional = [
                p
                for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
            self._two_args = len(positional) >= 2 or any(
                p.kind == p.VAR_POSITIONAL for p in positional
            )
        except (TypeError, ValueError):
            self._two_args = True

    def on_epoch_begin(self, epoch, logs=None):
        opt = _optimizer_of(self.model, "LearningRateScheduler")
        lr = _current_lr(opt)
        new = self.schedule(epoch, lr) if self._two_args else self.schedule(epoch)
        new = _set_lr(opt, new, "LearningRateScheduler")
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_lr(_optimizer_of(self.model, "LearningRateScheduler"))


class ReduceLROnPlateau(_Monitor):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has not improved (by
    more than ``min_delta``) for ``patience`` epochs, waits ``cooldown`` epochs, never goes
    below ``min_lr``.  Needs a constant learning rate (not a schedule)."""

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=10,
        verbose=0,
        mode="auto",
        min_delta=1e-4,
        cooldown=0,
        min_lr=0.0,
    ):
        super().__init__(monitor, mode, min_delta)
        factor = _number(factor, "factor")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1): it multiplies the rate, got {factor}")
        self.factor = factor
        self.patience = _count(patience, "patience")
        self.cooldown = _count(cooldown, "cooldown")
        self.min_lr = _number(min_lr, "min_lr")
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = self._worst()
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs=None):
        self._reset()
        opt = _optimizer_of(self.model, "ReduceLROnPlateau")
        if opt.schedule is not None:
            raise ValueError(
                "ReduceLROnPlateau needs an optimizer with a constant learning_rate, not a schedule"
            )

    def on_epoch_end(self, epoch, logs=None):
        opt = _optimizer_of(self.model, "ReduceLROnPlateau")
        if logs is not None:
            logs["learning_rate"] = _current_lr(opt)
        current = self._current(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current, self.best):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = _current_lr(opt)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    if new > 0:
                        opt.learning_rate = new
                    if self.verbose:
                        print(
                            f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stops training quietly when the loss becomes NaN or infinite.

    Without it ``fit`` raises :class:`fastnn.NonFiniteLossError`; with it ``fit`` stops
    after the last good step and returns the history.  ``terminated`` tells whether it did.
    """

    handles_nan = True

    def __init__(self):
        super().__init__()
        self.terminated = False

    def on_train_begin(self, logs=None):
        self.terminated = False

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True
            self.terminated = True

    def on_train_end(self, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.terminated = True
            print(f"Invalid loss {loss}, terminating training")


class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` then the logs' entries (sorted by name).

    With ``append`` an existing file is continued (no second header).  Under data
    parallelism only rank 0 writes."""

    writes_files = True  # left out on the ranks other than 0 of a data-parallel fit

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.sep = separator
        self.append = bool(append)
        self.keys: list[str] | None = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        has_rows = (
            self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        )
        self.keys = None
        if has_rows:
            with open(self.filename, newline="") as f:
                header = f.readline().rstrip("\r\n")
            self.keys = header.split(self.sep)[1:] if header else None
        self._file = open(self.filename, "a" if self.append else "w", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter=self.sep, lineterminator="\n")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            self._writer.writerow(["epoch", *self.keys])
        row = [epoch]
        for key in self.keys:
            value = logs.get(key, "NA")
            row.append(repr(float(value)) if isinstance(value, (int, float)) else value)
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None
