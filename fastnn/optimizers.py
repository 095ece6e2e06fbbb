"""Optimizers: Keras names and defaults, PyTorch's update formulas, one fused kernel call.

Inside a model the update runs once over the model's flat parameter buffer.  Directly::

    opt = Adam(learning_rate=1e-3)
    opt.step([w, b], [dw, db])     # updates w and b in place

In direct use the optimizer state belongs to each parameter array, as in PyTorch: every
array passed to :meth:`Optimizer.step` has its own moments and its own step count, however
the calls group or order the arrays.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from . import backend as _backend
from . import schedules  # noqa: F401 - Keras's spelling: fastnn.optimizers.schedules
from ._checks import check_finite
from ._names import lookup
from .kernels import codes


def _number(value, arg, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{arg} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{arg} must be {bound}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"{arg} must be < {high}, got {value}")
    return value


def _flag(value, arg) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _weight_decay(value):
    """None (no decay) or a number >= 0 (Keras 3's decoupled decay)."""
    return None if value is None else _number(value, "weight_decay", 0.0)


#: Keras 3's base-optimizer options fastnn accepts at their Keras defaults only.
_KERAS_DEFAULTS = {
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def _check_keras_defaults(given: dict) -> None:
    for arg, value in given.items():
        default = _KERAS_DEFAULTS[arg]
        same = value is None if default is None else (
            not isinstance(value, str) and value is not None and value == default
        )  # fmt: skip
        if not same:
            raise ValueError(
                f"{arg}={value!r} is not implemented by fastnn: only Keras's default "
                f"{arg}={default!r} is accepted"
            )


def _checked_pair(i, p, g) -> tuple[np.ndarray, np.ndarray]:
    """params[i] and grads[i] as flat views for an update, or the error naming them."""
    if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
        raise TypeError(
            f"params[{i}] must be a float32 or float64 NumPy array (updated in place), "
            f"got {type(p).__name__} {getattr(p, 'dtype', '')}"
        )
    if not p.flags.c_contiguous or not p.flags.writeable:
        raise ValueError(
            f"params[{i}] must be C-contiguous and writeable, got an array that is "
            f"{'' if p.flags.c_contiguous else 'not '}C-contiguous and "
            f"{'' if p.flags.writeable else 'not '}writeable"
        )
    if not isinstance(g, np.ndarray):
        raise TypeError(
            f"grads[{i}] must be a NumPy array like params[{i}] (shape {p.shape}, dtype "
            f"{p.dtype}), got {type(g).__name__}"
            + (" (leave a parameter without a gradient out of params)" if g is None else "")
        )
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(
            f"grads[{i}] must match params[{i}] (shape {p.shape}, dtype {p.dtype}), got "
            f"shape {getattr(g, 'shape', None)}, dtype {getattr(g, 'dtype', None)}"
        )
    check_finite(g, f"grads[{i}]")
    return p.reshape(-1), np.ascontiguousarray(g).reshape(-1)


def _clip_options(clipnorm, clipvalue, global_clipnorm):
    """The validated clip options: each None or a number > 0, at most one set (Keras)."""
    given = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    set_ = [name for name, v in given.items() if v is not None]
    if len(set_) > 1:
        raise ValueError(
            "only one of clipnorm, clipvalue and global_clipnorm can be set, got "
            + ", ".join(f"{name}={given[name]!r}" for name in set_)
        )
    return tuple(
        None if v is None else _number(v, name, 0.0, low_open=True) for name, v in given.items()
    )


def _norm_scale(norm: float, limit: float) -> float:
    """Keras's factor limit / max(norm, limit); NaN for a non-finite norm."""
    return limit / max(norm, limit) if np.isfinite(norm) else float("nan")


class _ParamState:
    """The state of one parameter array in direct use: a weak reference to the array, its
    state slots (max(slots, 1), size) and the number of updates it has had."""

    __slots__ = ("ref", "slots", "steps")

    def __init__(self, ref, slots):
        self.ref, self.slots, self.steps = ref, slots, 0


def _forget_on_free(table: dict, key: int):
    """The weakref callback that drops ``table[key]`` when its array is freed."""

    def forget(ref):
        entry = table.get(key)
        if entry is not None and entry.ref is ref:
            del table[key]

    return forget


class Optimizer:
    """Base class of the optimizers.

    Parameters
    ----------
    learning_rate : float or callable
        A positive number, or a schedule: a callable step -> rate (see
        :mod:`fastnn.schedules`), evaluated once per step.
    weight_decay : float, optional
        Keras 3's decoupled weight decay: before each update every trainable weight is
        scaled by ``1 - learning_rate * weight_decay`` (Keras: ``p -= p * weight_decay *
        lr``), with the rate of that step.  None or 0: off.  (PyTorch's ``SGD``, ``Adagrad``
        and ``RMSprop`` ``weight_decay`` adds an L2 term to the gradient instead.)  Every
        trainable weight decays: Keras's ``exclude_from_weight_decay`` is not supported.
    clipnorm, clipvalue, global_clipnorm : float, optional
        Keras's gradient clipping (at most one may be set): each weight's gradient scaled
        to an L2 norm of at most ``clipnorm``; every gradient entry clipped to
        [-clipvalue, clipvalue]; all gradients together scaled to a norm of at most
        ``global_clipnorm``.  Inside a model it runs in the compiled step, after the
        regularisation gradients are added; a gradient whose norm is not finite becomes
        NaN (and fit stops with NonFiniteLossError).  In direct use (:meth:`step`) a
        "weight" is each array passed and the global norm spans one call's arrays.
    use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor, \
gradient_accumulation_steps
        Keras 3's options, accepted at Keras's defaults only (False, 0.99, None, None,
        None): fastnn does not implement them, and any other value is a ValueError.
    name : str, optional
        The optimizer's name (default the class's: "adam", "sgd", ...).

    Attributes
    ----------
    iterations : int
        Inside a model, the number of training steps taken (batches); schedules and
        Adam's bias correction use it.  In direct use, the number of :meth:`step` (or
        :meth:`apply_gradients`) calls; there each parameter also counts its own updates,
        and those counts drive the bias correction and the schedule.
    """

    code = -1
    name = "optimizer"

    def __init__(self, learning_rate: float | Callable = 0.001, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, weight_decay=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name: str | None = None):  # fmt: skip
        self.learning_rate = learning_rate
        self.clipnorm, self.clipvalue, self.global_clipnorm = _clip_options(
            clipnorm, clipvalue, global_clipnorm
        )
        self.weight_decay = weight_decay
        _check_keras_defaults({
            "use_ema": use_ema, "ema_momentum": ema_momentum,
            "ema_overwrite_frequency": ema_overwrite_frequency,
            "loss_scale_factor": loss_scale_factor,
            "gradient_accumulation_steps": gradient_accumulation_steps,
        })  # fmt: skip
        if name is not None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"name must be a non-empty str, got {name!r}")
            self.name = name
        self.iterations = 0
        self._state: dict[int, _ParamState] = {}  # id(array) -> state, in direct use
        self._kept_rates: tuple = (None, np.empty(0))
        self._kept_hyper: tuple = (None, np.empty(0))

    @property
    def learning_rate(self) -> float:
        """The rate of the next step: the number given, or the schedule's rate at
        :attr:`iterations` (as Keras 3; the schedule itself is :attr:`schedule`).  Set it
        to a positive number or a schedule."""
        return self.lr_at(self.iterations)

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if isinstance(value, type):
            raise TypeError(
                f"learning_rate must be a positive number or a schedule instance, got the "
                f"class {value.__name__}"
            )
        if not callable(value):
            value = _number(value, "learning_rate", 0.0, low_open=True)
        self._learning_rate = value

    @property
    def weight_decay(self) -> float | None:
        """Keras 3's decoupled weight decay (None: off); set it to None or a number >= 0."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value) -> None:
        self._weight_decay = _weight_decay(value)

    @property
    def schedule(self):
        """The learning-rate schedule (a callable step -> rate), or None for a constant
        rate."""
        return self._learning_rate if callable(self._learning_rate) else None

    @property
    def slots(self) -> int:
        """Number of state arrays per parameter array."""
        return codes.STATE_SLOTS[self.code]

    def lr_at(self, iteration: int) -> float:
        """The learning rate used by step number ``iteration`` (0-based)."""
        if callable(self._learning_rate):
            lr = self._learning_rate(iteration)
            if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
                raise TypeError(
                    f"learning_rate schedule must return a number, got {type(lr).__name__} "
                    f"{lr!r} at step {iteration}"
                )
            lr = float(lr)
            if not np.isfinite(lr) or lr < 0:
                raise ValueError(
                    f"learning_rate schedule must return a finite rate >= 0, got {lr} at step "
                    f"{iteration}"
                )
            return lr
        return self._learning_rate

    def lrs(self, start: int, count: int) -> np.ndarray:
        """Rates of steps start .. start+count-1 as a float64 array."""
        if not callable(self._learning_rate):
            return np.full(count, self._learning_rate)
        return np.array([self.lr_at(start + i) for i in range(count)], dtype=np.float64)

    def hyper(self) -> np.ndarray:
        """The float64 hyper-parameter vector of the kernel (layout in kernels.codes)."""
        return np.array([self.lr_at(self.iterations), *self._tail()], dtype=np.float64)

    def _extra(self) -> list[float]:
        return []

    @property
    def clipping(self) -> bool:
        """Whether one of clipnorm, clipvalue, global_clipnorm is set."""
        return any(v is not None for v in (self.clipnorm, self.clipvalue, self.global_clipnorm))

    def _decay_entry(self) -> float:
        """The weight decay of hyper's optional entry (codes.H_WEIGHT_DECAY); 0 for the codes
        whose own entries carry it (codes.OWN_DECAY)."""
        return 0.0 if self.code in codes.OWN_DECAY else (self.weight_decay or 0.0)

    def _tail(self) -> list[float]:
        """hyper after the rate: the optimizer's entries, then (when clipping or decaying)
        the three clip entries at codes.H_* (0: off), then (when decaying) the weight
        decay entry at codes.H_WEIGHT_DECAY."""
        decay = self._decay_entry()
        if not self.clipping and not decay:
            return self._extra()
        clip = [0.0] * codes.N_CLIP
        clip[codes.H_CLIPNORM] = self.clipnorm or 0.0
        clip[codes.H_CLIPVALUE] = self.clipvalue or 0.0
        clip[codes.H_GLOBAL_CLIPNORM] = self.global_clipnorm or 0.0
        return [*self._extra(), *clip, *([decay] if decay else [])]

    # Training calls pass these kept arrays (no NumPy call per batch); kernels only read the
    # rates and set hyper[0] from them themselves.
    def _train_rates(self, count: int) -> np.ndarray:
        """The rates of the next ``count`` steps (a constant rate: a kept array of at least
        ``count`` entries)."""
        lr = self._learning_rate
        if callable(lr):
            return self.lrs(self.iterations, count)
        rate, kept = self._kept_rates
        if rate != lr or kept.shape[0] < count:
            kept = np.full(max(count, 16), lr)
            self._kept_rates = (lr, kept)
        return kept

    def _train_hyper(self) -> np.ndarray:
        """:meth:`hyper` in a kept array, rebuilt when a hyper-parameter other than the rate
        changes."""
        extra, kept = self._kept_hyper
        now = self._tail()
        if extra != now:
            kept = np.array([self.lr_at(self.iterations), *now], dtype=np.float64)
            self._kept_hyper = (now, kept)
        return kept

    def init_state(self, shape, dtype) -> np.ndarray:
        """Fresh optimizer state for parameters of ``shape``: (max(slots, 1), *shape)."""
        return np.zeros((max(self.slots, 1), *shape), dtype=dtype)

    def get_config(self) -> dict:
        lr = self._learning_rate
        cfg = lr.get_config() if hasattr(lr, "get_config") else None
        lr_entry = {"schedule": type(lr).__name__, "config": cfg} if callable(lr) else lr
        clip = {
            name: getattr(self, name)
            for name in ("clipnorm", "clipvalue", "global_clipnorm")
            if getattr(self, name) is not None
        }
        decay = {} if self.weight_decay is None else {"weight_decay": self.weight_decay}
        named = {} if self.name == type(self).name else {"name": self.name}
        return {"learning_rate": lr_entry, **self._config(), **decay, **clip, **named}

    def _config(self) -> dict:
        return {}

    # -- direct use -----------------------------------------------------------------
    def _entry(self, p: np.ndarray) -> _ParamState | None:
        """The state of array ``p`` (None if this optimizer has not updated it)."""
        entry = self._state.get(id(p))
        return entry if entry is not None and entry.ref() is p else None

    def _new_entry(self, p: np.ndarray) -> _ParamState:
        key = id(p)
        ref = weakref.ref(p, _forget_on_free(self._state, key))
        entry = self._state[key] = _ParamState(ref, self.init_state((p.size,), p.dtype))
        return entry

    def step(self, params, grads, backend: str | None = None) -> None:
        """Updates ``params`` in place from ``grads``.

        Parameters
        ----------
        params : ndarray or list of ndarray
            Float32 or float64 arrays, C-contiguous and writeable, each at most once.
        grads : ndarray or list of ndarray
            One gradient per parameter, of the same shape and dtype, finite.
        backend : str, optional
            Kernel backend of the update (default :func:`fastnn.get_backend`).

        Notes
        -----
        The state belongs to each parameter array, as in PyTorch: its moments (or momentum
        buffer, or accumulator) and its step count, which Adam's bias correction and a
        learning-rate schedule use (a parameter's k-th update gets ``schedule(k - 1)``).
        Stepping two layers in separate calls, in any order, or all parameters in one call
        gives the same updates.  An array the optimizer has not updated before starts with
        fresh state; the state of an array is dropped when the array is freed.  A parameter
        is the array object passed: a new view of the same memory (``w.reshape(...)``,
        ``w[:]``) is a new parameter, so pass the same objects every step (a layer's
        ``weights`` list holds stable objects).  ``iterations`` counts the calls.

        Every pair is checked before any is updated: an error leaves the parameters, the
        state and ``iterations`` as they were.

        Raises
        ------
        TypeError
            If a parameter is not a float32/float64 array.
        ValueError
            If a gradient does not match its parameter or is not finite, if an array
            appears twice, or if an array's size or dtype changed since its last update.
        """
        single = isinstance(params, np.ndarray)
        params = [params] if single else list(params)
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(params) != len(grads):
            raise ValueError(f"params and grads must pair up, got {len(params)} and {len(grads)}")
        _, k = _backend.resolve(backend)
        flat = [_checked_pair(i, p, g) for i, (p, g) in enumerate(zip(params, grads))]
        flat = self._clipped(flat)
        entries = self._checked_entries(params)
        # the rates of every parameter's step count, before any update (a schedule may fail)
        hypers: dict[int, np.ndarray] = {}
        for entry in entries:
            t = 0 if entry is None else entry.steps
            if t not in hypers:
                hypers[t] = np.array([self.lr_at(t), *self._tail()], dtype=np.float64)
        for p, entry, (p_flat, g_flat) in zip(params, entries, flat):
            if entry is None:
                entry = self._new_entry(p)
            hyper = hypers[entry.steps]
            k.optimizer_update(p_flat, g_flat, entry.slots, self.code, hyper, entry.steps + 1)
            entry.steps += 1
        self.iterations += 1

    def _checked_entries(self, params) -> list:
        """The state of each array of a direct step (None: fresh), after checking that no
        array appears twice and that each kept its size and dtype."""
        first: dict[int, int] = {}
        entries = []
        for i, p in enumerate(params):
            j = first.setdefault(id(p), i)
            if j != i:
                raise ValueError(
                    f"params[{i}] is the same array as params[{j}]: each parameter may appear "
                    "once per step (add up its gradients instead)"
                )
            entry = self._entry(p)
            if entry is not None and (
                entry.slots.shape[1] != p.size or entry.slots.dtype != p.dtype
            ):
                raise ValueError(
                    f"params[{i}] must keep its size and dtype between steps (state for "
                    f"{entry.slots.shape[1]} {entry.slots.dtype} values), got {p.size} "
                    f"{p.dtype} values"
                )
            entries.append(entry)
        return entries

    def _clipped(self, flat):
        """(param, grad) pairs of a direct step with the gradients clipped (copies: the
        caller's arrays are left alone), as the compiled step clips inside a model."""
        if not self.clipping:
            return flat
        if self.clipvalue is not None:
            v = self.clipvalue
            return [(p, np.clip(g, -v, v).astype(g.dtype)) for p, g in flat]
        sq = [float(np.square(g, dtype=np.float64).sum()) for _, g in flat]
        if self.clipnorm is not None:
            scales = [_norm_scale(np.sqrt(s), self.clipnorm) for s in sq]
        else:
            scales = [_norm_scale(np.sqrt(sum(sq)), self.global_clipnorm)] * len(flat)
        return [(p, g * g.dtype.type(s)) for (p, g), s in zip(flat, scales)]

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras-style: ``apply_gradients(zip(grads, variables))``; the same as
        ``step(variables, grads)`` (state per variable).

        Parameters
        ----------
        grads_and_vars : iterable of (ndarray, ndarray)
            (gradient, variable) pairs; variables are updated in place.
        """
        pairs = list(grads_and_vars)
        self.step([v for _, v in pairs], [g for g, _ in pairs])

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum (PyTorch's form:
    buf = momentum*buf + g; p -= lr*buf, or lr*(g + momentum*buf) with nesterov).

    ``weight_decay`` is Keras 3's decoupled decay (see :class:`Optimizer`), not PyTorch's
    L2 term.  Other keyword arguments: :class:`Optimizer`'s.
    """

    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 **kwargs):  # fmt: skip
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, weight_decay=weight_decay,
                         **kwargs)  # fmt: skip
        self.momentum = _number(momentum, "momentum", 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError(f"nesterov=True requires momentum > 0, got momentum={momentum!r}")
        self.nesterov = nesterov
        self.code = codes.MOMENTUM if self.momentum > 0 else codes.SGD

    def _extra(self):
        return [self.momentum, float(self.nesterov)] if self.code == codes.MOMENTUM else []

    def _config(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adagrad(Optimizer):
    """acc += g^2; p -= lr * g / (sqrt(acc) + epsilon); acc starts at
    ``initial_accumulator_value``.  Other keyword arguments (``weight_decay``, clipping):
    :class:`Optimizer`'s."""

    name = "adagrad"
    code = codes.ADAGRAD

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 **kwargs):  # fmt: skip
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, weight_decay=weight_decay,
                         **kwargs)  # fmt: skip
        self.initial_accumulator_value = _number(
            initial_accumulator_value, "initial_accumulator_value", 0.0
        )
        self.epsilon = _number(epsilon, "epsilon", 0.0, low_open=True)

    def _extra(self):
        return [self.epsilon]

    def init_state(self, shape, dtype):
        return np.full((1, *shape), self.initial_accumulator_value, dtype=dtype)

    def _config(self):
        return {
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }


class RMSprop(Optimizer):
    """sq = rho*sq + (1-rho)*g^2; p -= lr * g / (sqrt(sq) + epsilon) (PyTorch's epsilon
    placement; Keras adds epsilon inside the square root).

    Parameters
    ----------
    momentum : float
        In [0, 1).  With momentum > 0, PyTorch's buffer buf = momentum*buf + g / avg and
        p -= lr * buf.  Keras's buffer holds lr * g / avg: with a constant rate the two
        agree, with a schedule Keras's keeps the rates of past steps.
    centered : bool
        Divide by an estimate of the gradient's standard deviation: avg = sqrt(sq -
        mean^2) + epsilon with mean = rho*mean + (1-rho)*g (PyTorch's and Keras's).

    Other keyword arguments (``weight_decay``, clipping): :class:`Optimizer`'s.
    """

    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, momentum=0.0,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, **kwargs):  # fmt: skip
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, weight_decay=weight_decay,
                         **kwargs)  # fmt: skip
        self.rho = _number(rho, "rho", 0.0, 1.0)
        self.epsilon = _number(epsilon, "epsilon", 0.0, low_open=True)
        self.momentum = _number(momentum, "momentum", 0.0, 1.0)
        self.centered = _flag(centered, "centered")
        plain = self.momentum == 0 and not self.centered
        self.code = codes.RMSPROP if plain else codes.RMSPROP_MC

    def _extra(self):
        if self.code == codes.RMSPROP:
            return [self.rho, self.epsilon]
        return [self.rho, self.epsilon, self.momentum, float(self.centered)]

    def _config(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}  # fmt: skip


class Adam(Optimizer):
    """Adam with bias correction (PyTorch's formula, epsilon added to the square root).

    Parameters
    ----------
    amsgrad : bool
        Keep the running maximum of the second moment and divide by it: p -= lr_t * m /
        (sqrt(max_v) / sqrt(1 - beta_2^t) + epsilon), PyTorch's amsgrad (Keras's v_hat is
        the same maximum; Keras adds epsilon after folding the bias corrections into the
        rate, as for plain Adam).

    Other keyword arguments (``weight_decay``, clipping): :class:`Optimizer`'s.
    """

    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, **kwargs):  # fmt: skip
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, weight_decay=weight_decay,
                         **kwargs)  # fmt: skip
        self.beta_1 = _number(beta_1, "beta_1", 0.0, 1.0)
        self.beta_2 = _number(beta_2, "beta_2", 0.0, 1.0)
        # epsilon > 0: with 0, a parameter whose gradient is 0 would get 0/0 = NaN
        self.epsilon = _number(epsilon, "epsilon", 0.0, low_open=True)
        self.amsgrad = _flag(amsgrad, "amsgrad")
        self.code = codes.AMSGRAD if self.amsgrad else codes.ADAM

    def _extra(self):
        return [self.beta_1, self.beta_2, self.epsilon, self.weight_decay or 0.0]

    def _config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad}  # fmt: skip


class AdamW(Adam):
    """Adam with decoupled weight decay: p -= lr * weight_decay * p before the Adam step
    (``weight_decay`` a number >= 0, default 0.004)."""

    name = "adamw"

    def __init__(
        self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
        amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None, **kwargs,
    ):  # fmt: skip
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad=amsgrad,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, **kwargs)  # fmt: skip
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)


class Nadam(Optimizer):
    """Adam with Nesterov momentum, Keras 3's formula (Dozat's momentum schedule
    u_t = beta_1 * (1 - 0.5 * 0.96**t)); PyTorch's ``NAdam`` with ``momentum_decay=1.0``
    computes the same (its default 0.004 decays the momentum far more slowly).  Other
    keyword arguments (``weight_decay``, clipping): :class:`Optimizer`'s."""

    name = "nadam"
    code = codes.NADAM

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 **kwargs):  # fmt: skip
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, weight_decay=weight_decay,
                         **kwargs)  # fmt: skip
        self.beta_1 = _number(beta_1, "beta_1", 0.0, 1.0)
        self.beta_2 = _number(beta_2, "beta_2", 0.0, 1.0)
        self.epsilon = _number(epsilon, "epsilon", 0.0, low_open=True)

    def _extra(self):
        return [self.beta_1, self.beta_2, self.epsilon]

    def _config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


_OPTIMIZERS = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "nadam": Nadam,
}
CLASSES = {cls.__name__: cls for cls in _OPTIMIZERS.values()}


def get(optimizer) -> Optimizer:
    """An :class:`Optimizer` from a name (Keras defaults) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        return optimizer()
    return lookup(_OPTIMIZERS, "optimizer", optimizer)()
