"""The compiled-stack engine under a model: flat buffers, plans, workspaces.

All trainable weights of a model are views into one contiguous buffer (``params``), all
gradients into another, the optimizer state into a (slots, P) array and the non-trainable
weights into a fourth buffer (``nontrain``) that no optimizer touches, so one kernel call
updates everything.  Workspaces (the plan for a batch size, activations and saved tensors,
gradients, float64 accumulators, gathered batches) are allocated once per batch size.
"""

from __future__ import annotations

import numpy as np

from ._plan import build_plan
from .layers.base import size_of


def _touched_zeros(shape, dtype) -> np.ndarray:
    """Zeros whose pages are already mapped: np.zeros maps them lazily, so the first
    training step would pay one page fault per 4 KiB of parameters, state and workspace."""
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


class Workspace:
    """Per-batch-size buffers of one model: the plan for ``rows`` samples, acts, gbuf, acc
    and the gathered batch xb, yb, swb."""

    def __init__(self, engine, rows: int, n_targets: int):
        self.rows = rows
        self.plan = engine.plan_for(rows)
        zeros = engine.zeros
        self.acts = zeros((self.plan.acts_size,))
        self.gbuf = zeros((self.plan.gbuf_size,))
        self.acc = engine.zeros((self.plan.acc_size,), np.float64)
        self.xb = zeros((rows, engine.input_size))
        self.yb = zeros((rows, n_targets))
        self.swb = zeros((rows,))
        self.warmed = False  # set once a zero batch has run through it (Sequential._warm_up)
        self._loss_plans: dict = {}
        #: The ``work`` argument of forward_stack/backward_stack: (acts, gbuf, acc).
        self.work = (self.acts, self.gbuf, self.acc)
        #: The ``ws`` argument of run_epoch: (xb, yb, swb, acts, gbuf, acc).
        self.buffers = (self.xb, self.yb, self.swb, self.acts, self.gbuf, self.acc)

    def loss_plan(self, train_act: int):
        """The plan with the last activation a fused loss replaces."""
        if train_act not in self._loss_plans:
            self._loss_plans[train_act] = self.plan.with_last_activation(train_act)
        return self._loss_plans[train_act]


class Engine:
    """Flat parameter/gradient/state buffers and the plans of a built layer stack."""

    def __init__(self, layers, input_shape, dtype, kernels):
        self.kernels = kernels
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.input_size = size_of(self.input_shape)
        self.layers = layers
        self.offsets, self.n_params, self.n_nontrain = self._layout(layers)
        #: the trainable prefix of params: what the optimizer updates
        self.n_train = sum(
            size_of(spec.shape)
            for layer in layers
            if layer.trainable
            for spec in layer.weight_specs()
            if spec.trainable
        )
        #: the layers' trainable flags the layout follows (compile re-lays a model out
        #: when they change)
        self.trainable_flags = tuple(layer.trainable for layer in layers)
        self._plans: dict = {}
        self.plan_for(1)  # every shape and bounds check runs now, before the layers are bound
        host = _touched_zeros(self.n_params, self.dtype)
        self.host_grads = _touched_zeros(self.n_params, self.dtype)
        self.host_nontrain = _touched_zeros(self.n_nontrain, self.dtype)
        for layer, offs in zip(layers, self.offsets):
            layer.bind(host, self.host_grads, self.host_nontrain, offs)
        self.host_params = host
        self.on_device = hasattr(kernels, "to_device")
        self.params = kernels.to_device(host) if self.on_device else host
        self.grads = self.zeros((self.n_params,)) if self.on_device else self.host_grads
        host_nontrain = self.host_nontrain
        self.nontrain = kernels.to_device(host_nontrain) if self.on_device else host_nontrain
        self.state = None
        self._workspaces: dict = {}

    @staticmethod
    def _layout(layers):
        """Offsets of every weight: those with gradients in params, the others in nontrain,
        layer by layer in declaration order (an MLP's params: kernel then bias, layer by
        layer); the weights of frozen layers (``trainable = False``) come after every other
        one in params, out of the optimizer's reach."""
        offsets = [{} for _ in layers]
        n_params = n_nontrain = 0
        for frozen in (False, True):
            for layer, offs in zip(layers, offsets):
                if (not layer.trainable) != frozen:
                    continue
                for spec in layer.weight_specs():
                    if spec.trainable:
                        offs[spec.name], n_params = n_params, n_params + size_of(spec.shape)
        for layer, offs in zip(layers, offsets):
            for spec in layer.weight_specs():
                if not spec.trainable:
                    offs[spec.name], n_nontrain = n_nontrain, n_nontrain + size_of(spec.shape)
        return offsets, n_params, n_nontrain

    # -- memory -----------------------------------------------------------------------
    def zeros(self, shape, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if hasattr(self.kernels, "zeros"):
            return self.kernels.zeros(shape, dtype)
        return _touched_zeros(shape, dtype)

    def plan_for(self, rows: int):
        if rows not in self._plans:
            self._plans[rows] = build_plan(self.layers, self.offsets, self.input_shape, rows,
                                           self.trainable_flags)  # fmt: skip
        return self._plans[rows]

    def workspace(self, rows: int, n_targets: int) -> Workspace:
        key = (rows, n_targets)
        if key not in self._workspaces:
            if len(self._workspaces) >= 4:
                self._workspaces.clear()
            self._workspaces[key] = Workspace(self, rows, n_targets)
        return self._workspaces[key]

    @property
    def net(self) -> tuple:
        """The ``net`` argument of the kernels: (params, grads, state, nontrain)."""
        return self.params, self.grads, self.state, self.nontrain

    def pull(self) -> np.ndarray:
        """The weights as host arrays (the layers' views see them); returns params."""
        if self.on_device:
            self.host_params[...] = self.kernels.to_host(self.params)
            self.host_nontrain[...] = self.kernels.to_host(self.nontrain)
        return self.host_params

    def push(self) -> None:
        """Sends host weight edits to the device (no-op on the CPU)."""
        if self.on_device:
            self.params = self.kernels.to_device(self.host_params)
            self.nontrain = self.kernels.to_device(self.host_nontrain)

    def init_state(self, optimizer) -> None:
        state = optimizer.init_state((self.n_train,), self.dtype)
        state += 0  # touch every page now rather than in the first training step
        self.state = self.kernels.to_device(state) if self.on_device else state

    def host_state(self) -> np.ndarray:
        return self.kernels.to_host(self.state) if self.on_device else self.state

    def set_state(self, state: np.ndarray) -> None:
        state = np.ascontiguousarray(state, dtype=self.dtype)
        self.state = self.kernels.to_device(state) if self.on_device else state
