"""The compiled-stack engine under a model: flat buffers, layer tables, workspaces.

All parameters of a model are views into one contiguous buffer, all gradients into another
and the optimizer state into a (slots, P) array, so one kernel call updates everything.
Workspaces (activations, gradients, gathered batches) are allocated once per batch size.
"""

from __future__ import annotations

import numpy as np

from .kernels import codes


def _touched_zeros(shape, dtype) -> np.ndarray:
    """Zeros whose pages are already mapped: np.zeros maps them lazily, so the first
    training step would pay one page fault per 4 KiB of parameters, state and workspace."""
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


class Workspace:
    """Per-batch-size buffers of one stack: acts, gbuf and gathered batch xb, yb, swb."""

    def __init__(self, engine, rows: int, n_targets: int):
        widths = engine.widths
        zeros = engine.zeros
        self.rows = rows
        self.acts = zeros((rows * int(sum(widths)),))
        self.gbuf = zeros((2 * rows * max(engine.input_dim, *widths),))
        self.xb = zeros((rows, engine.input_dim))
        self.yb = zeros((rows, n_targets))
        self.swb = zeros((rows,))
        self.warmed = False  # set once a zero batch has run through it (Sequential._warm_up)


class Engine:
    """Flat parameter/gradient/state buffers and tables of a built layer stack."""

    def __init__(self, layers, input_dim: int, dtype, kernels):
        self.kernels = kernels
        self.dtype = np.dtype(dtype)
        self.input_dim = input_dim
        self.layers = layers
        self.widths = [layer.units for layer in layers]
        self.n_params = sum(int(np.prod(s)) for layer in layers for s in layer.param_shapes())
        host = _touched_zeros(self.n_params, self.dtype)
        self.host_grads = _touched_zeros(self.n_params, self.dtype)
        rows, frows, offset = [], [], 0
        for layer in layers:
            row, frow = layer.table_row(offset)
            rows.append(row)
            frows.append(frow)
            if layer.has_weights:
                offset = layer.bind(host, self.host_grads, offset)
        self.table = np.array(rows, dtype=np.int64).reshape(len(layers), 4)
        self.table_f = np.array(frows, dtype=np.float64).reshape(len(layers), 3)
        self.host_params = host
        self.on_device = hasattr(kernels, "to_device")
        self.params = kernels.to_device(host) if self.on_device else host
        self.grads = self.zeros((self.n_params,)) if self.on_device else self.host_grads
        self.state = None
        self._workspaces: dict = {}

    # -- memory -----------------------------------------------------------------------
    def zeros(self, shape):
        if hasattr(self.kernels, "zeros"):
            return self.kernels.zeros(shape, self.dtype)
        return _touched_zeros(shape, self.dtype)

    def workspace(self, rows: int, n_targets: int) -> Workspace:
        key = (rows, n_targets)
        if key not in self._workspaces:
            if len(self._workspaces) >= 4:
                self._workspaces.clear()
            self._workspaces[key] = Workspace(self, rows, n_targets)
        return self._workspaces[key]

    def pull(self) -> np.ndarray:
        """The parameters as a host array (the layers' views see them)."""
        if self.on_device:
            self.host_params[...] = self.kernels.to_host(self.params)
        return self.host_params

    def push(self) -> None:
        """Sends host parameter edits to the device (no-op on the CPU)."""
        if self.on_device:
            self.params = self.kernels.to_device(self.host_params)

    def init_state(self, optimizer) -> None:
        state = optimizer.init_state((self.n_params,), self.dtype)
        state += 0  # touch every page now rather than in the first training step
        self.state = self.kernels.to_device(state) if self.on_device else state

    def host_state(self) -> np.ndarray:
        return self.kernels.to_host(self.state) if self.on_device else self.state

    def set_state(self, state: np.ndarray) -> None:
        state = np.ascontiguousarray(state, dtype=self.dtype)
        self.state = self.kernels.to_device(state) if self.on_device else state

    # -- tables -----------------------------------------------------------------------
    def train_table(self, train_act: int) -> np.ndarray:
        """The layer table with the last layer's activation replaced (fused losses)."""
        table = self.table.copy()
        if table[-1, 0] != codes.DROPOUT:
            table[-1, 2] = train_act
        return table

    def output_offset(self, rows: int) -> int:
        return rows * int(sum(self.widths[:-1]))
