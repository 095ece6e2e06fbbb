"""Learning-rate schedules (Keras 3 formulas): callables ``step -> rate``.

Pass one as the ``learning_rate`` of any optimizer; the rate of every step is computed
before the compiled epoch runs, so a schedule costs nothing inside the kernel::

    lr = schedules.ExponentialDecay(1e-2, decay_steps=100, decay_rate=0.9)
    model.compile(optimizer=optimizers.Adam(learning_rate=lr), loss="mse")

``step`` is the optimizer's iteration counter: 0 for the first update.
"""

from __future__ import annotations

import math

import numpy as np


def _number(value, arg, low=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{arg} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{arg} must be {'>' if low_open else '>='} {low}, got {value}")
    return value


def _step(step) -> float:
    step = float(step)
    if not step >= 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


class LearningRateSchedule:
    """Base class: ``schedule(step)`` returns the rate of update number ``step``."""

    def __call__(self, step) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


class _DecaySchedule(LearningRateSchedule):
    """Shared by the decays of ``initial_learning_rate`` over ``step / decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", 0)
        self.decay_steps = _number(decay_steps, "decay_steps", 0, low_open=True)
        self.decay_rate = _number(decay_rate, "decay_rate", 0)
        self.staircase = bool(staircase)

    def _progress(self, step) -> float:
        """step / decay_steps, floored with ``staircase``."""
        p = _step(step) / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


class ExponentialDecay(_DecaySchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase``
    the exponent is ``floor(step / decay_steps)``."""

    def __call__(self, step):
        return self.initial_learning_rate * self.decay_rate ** self._progress(step)


class InverseTimeDecay(_DecaySchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; with
    ``staircase`` the ratio ``step / decay_steps`` is floored."""

    def __call__(self, step):
        return self.initial_learning_rate / (1 + self.decay_rate * self._progress(step))


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values):
        boundaries = [_number(b, f"boundaries[{i}]") for i, b in enumerate(boundaries)]
        values = [_number(v, f"values[{i}]", 0) for i, v in enumerate(values)]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "values must have one more entry than boundaries, got "
                f"{len(values)} values and {len(boundaries)} boundaries"
            )
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
        self.boundaries = boundaries
        self.values = values

    def __call__(self, step):
        step = _step(step)
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


class CosineDecay(LearningRateSchedule):
    """Cosine decay with optional linear warmup (Keras 3).

    Without ``warmup_target``: ``initial_learning_rate * d(min(step, decay_steps))`` where
    ``d(s) = (1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha``.

    With ``warmup_target``: a linear ramp from ``initial_learning_rate`` to
    ``warmup_target`` over ``warmup_steps`` steps, then ``warmup_target * d(step -
    warmup_steps)`` for ``decay_steps`` steps, then constant ``warmup_target * alpha``.
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        alpha=0.0,
        warmup_target=None,
        warmup_steps=0,
    ):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", 0)
        self.decay_steps = _number(decay_steps, "decay_steps", 0, low_open=True)
        self.alpha = _number(alpha, "alpha", 0)
        if self.alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        self.warmup_target = (
            None if warmup_target is None else _number(warmup_target, "warmup_target", 0)
        )
        self.warmup_steps = _number(warmup_steps, "warmup_steps", 0)

    def _decay(self, step, start_lr):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return start_lr * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = _step(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return self.initial_learning_rate + delta * step / self.warmup_steps
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


CLASSES = {
    cls.__name__: cls
    for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, CosineDecay)
}


def serialize(schedule) -> dict:
    """``{"class_name": ..., "config": ...}`` of a schedule from this module."""
    if type(schedule).__name__ not in CLASSES or not isinstance(schedule, LearningRateSchedule):
        raise ValueError(
            f"cannot serialise learning-rate schedule {schedule!r}: only the schedules of "
            f"fastnn.schedules ({', '.join(sorted(CLASSES))}) can be saved"
        )
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict) -> LearningRateSchedule:
    """Inverse of :func:`serialize` (also accepts ``{"schedule": ..., "config": ...}``, the
    form of ``Optimizer.get_config``)."""
    if not isinstance(config, dict):
        raise ValueError(f"a schedule config must be a dict, got {type(config).__name__}")
    name = config.get("class_name", config.get("schedule"))
    if name not in CLASSES:
        raise ValueError(
            f"unknown learning-rate schedule {name!r}; expected one of {sorted(CLASSES)}"
        )
    cfg = config.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"the config of schedule {name} must be a dict, got {cfg!r}")
    try:
        return CLASSES[name].from_config(cfg)
    except TypeError as exc:
        raise ValueError(f"invalid config for schedule {name}: {exc}") from None
