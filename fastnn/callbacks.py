"""Callbacks for :meth:`fastnn.Sequential.fit` (Keras' interface).

Epoch hooks cost nothing per step.  Batch hooks (``on_train_batch_begin/end``) are honoured
when a callback overrides them, at the price of one compiled call per batch instead of one
per epoch.
"""

from __future__ import annotations


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

    def wants_batches(self) -> bool:
        """Whether this callback overrides a per-batch hook."""
        cls = type(self)
        return any(
            getattr(cls, hook) is not getattr(Callback, hook)
            for hook in ("on_train_batch_begin", "on_train_batch_end")
        )


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
                raise TypeError(
                    f"callbacks must be Callback instances, got {type(cb).__name__}"
                )
            cb.set_model(model)
            cb.set_params(params)

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    @property
    def wants_batches(self) -> bool:
        return any(cb.wants_batches() for cb in self.callbacks)

    @property
    def handles_nan(self) -> bool:
        return any(cb.handles_nan for cb in self.callbacks)
