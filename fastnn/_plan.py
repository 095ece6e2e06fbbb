"""The plan: one int64 row (and one float64 row) per compiled layer, computed once per model
and batch size, so that the kernels only follow offsets (layout in ``kernels/codes.py``).

Every shape and bounds question is settled here: where each layer reads its input and
writes its output, what it saves for the backward, where its weights and non-trainable
state live, which layers run backward and where the gradient flowing between them goes.
Layers that are views of their input (Flatten) get no row: the next layer reads the same
memory under the view's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import codes


def _padded(shape) -> tuple[int, int, int]:
    """A per-sample shape of 1 to 3 axes as three, padded on the left with 1s."""
    return (1,) * (3 - len(shape)) + tuple(int(d) for d in shape)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


@dataclass
class Plan:
    """The tables of one model for batches of up to ``rows`` samples, and the buffer sizes
    they assume (elements of acts, gbuf and the float64 acc)."""

    layers: np.ndarray
    layer_f: np.ndarray
    kinds: tuple
    rows: int
    acts_size: int
    gbuf_size: int
    acc_size: int
    names: tuple

    def __post_init__(self):
        #: The ``plan`` argument of the kernels: (layers, layer_f, kinds).
        self.args = (self.layers, self.layer_f, self.kinds)

    @property
    def output_size(self) -> int:
        row = self.layers[-1]
        return int(row[codes.P_OUT0] * row[codes.P_OUT1] * row[codes.P_OUT2])

    @property
    def output_offset(self) -> int:
        return int(self.layers[-1, codes.P_OUT_OFF])

    def with_last_activation(self, act: int) -> Plan:
        """This plan with the last layer's activation replaced (the fused losses train the
        last layer on logits); the same plan when the last layer has no activation."""
        if self.layers[-1, codes.P_KIND] not in (codes.DENSE, codes.ACTIVATION):
            return self
        if self.layers[-1, codes.P_ACT] == act:
            return self
        layers = self.layers.copy()
        layers[-1, codes.P_ACT] = act
        return Plan(layers, self.layer_f, self.kinds, self.rows, self.acts_size,
                    self.gbuf_size, self.acc_size, self.names)  # fmt: skip


#: The kinds whose kernels keep the input of gelu and silu (codes.INPUT_ACTS) for the
#: backward: the Activation layer reads its input, Dense saves its pre-activation.
_INPUT_ACT_KINDS = (codes.DENSE, codes.ACTIVATION)


def _check_input_act(layer, act: int) -> None:
    if act in codes.INPUT_ACTS and layer.kind not in _INPUT_ACT_KINDS:
        raise ValueError(
            f"activation {getattr(layer, 'activation', act)!r} on layer {layer.name!r} "
            f"({type(layer).__name__}) is supported on Dense and Activation layers only: "
            "add an Activation layer after it"
        )


def _fields(layer, trainable: bool):
    """``layer.plan_fields()`` as if ``layer.trainable`` were ``trainable``."""
    now = layer.trainable
    layer.trainable = trainable
    try:
        return layer.plan_fields()
    finally:
        layer.trainable = now


def build_plan(layers, offsets, input_shape, rows: int, trainable=None) -> Plan:
    """The plan of built ``layers`` (each with ``offsets``: weight name -> offset in params or
    nontrain) on samples of ``input_shape``, for batches of up to ``rows`` samples.

    ``trainable``: the layers' trainable flags the offsets were laid out for (default:
    their flags now); a flag changed since then takes effect when the model is laid out
    again (at compile), not in a plan for a new batch size."""
    trainable = [layer.trainable for layer in layers] if trainable is None else list(trainable)
    table, ftable, names, flags = [], [], [], []
    shape, in_off, acts, acc = tuple(input_shape), -1, 0, 0
    for layer, offs, layer_trainable in zip(layers, offsets, trainable):
        out_shape = tuple(layer.output_shape)
        if layer.kind is None:  # a view: the next layer reads the same memory
            shape = out_shape
            continue
        row = np.full(codes.P_COLS, -1, dtype=np.int64)
        frow = np.zeros(codes.F_COLS, dtype=np.float64)
        act, floats, ints = _fields(layer, bool(layer_trainable))
        _check_input_act(layer, act)
        row[codes.P_KIND], row[codes.P_ACT] = layer.kind, act
        row[codes.P_IN0 : codes.P_IN2 + 1] = _padded(shape)
        row[codes.P_OUT0 : codes.P_OUT2 + 1] = _padded(out_shape)
        row[codes.P_IN_OFF], row[codes.P_OUT_OFF] = in_off, acts
        acts += rows * _size(out_shape)
        saved, acc_size = layer.workspace(rows)
        if saved:
            row[codes.P_SAVE_OFF], acts = acts, acts + saved
        if acc_size:
            row[codes.P_ACC_OFF], acc = acc, acc + acc_size
        for spec in layer.weight_specs():
            row[spec.slot] = offs[spec.name]
        row[codes.P_ARG0 :] = 0
        for col, value in ints.items():
            row[col] = value
        for col, value in floats.items():
            frow[col] = value
        table.append(row)
        ftable.append(frow)
        names.append(layer.name)
        flags.append(bool(layer_trainable))
        in_off, shape = row[codes.P_OUT_OFF], out_shape
    if not table:
        raise ValueError(
            "the model has no layer that computes anything (only Input/Flatten): add a Dense layer"
        )
    layers_t = np.array(table, dtype=np.int64)
    computing = [lay for lay in layers if lay.kind is not None]
    gbuf = _plan_backward(layers_t, computing, flags, rows)
    kinds = codes.kinds_marker({int(k) for k in layers_t[:, codes.P_KIND]})
    return Plan(layers_t, np.array(ftable), kinds, rows, max(acts, 1), gbuf, max(acc, 1),
                tuple(names))  # fmt: skip


def _plan_backward(table, computing, trainable, rows) -> int:
    """Fills P_BACKWARD, P_DOUT_OFF and P_DX_OFF: the backward runs from the last layer down
    to the first one with trainable weights (which writes no dx) through every layer between,
    frozen ones included (a frozen BatchNormalization's is that of inference mode); the
    gradient flows through the two halves of gbuf in turn.  Returns the size gbuf needs."""
    n = len(table)
    sizes = [
        max(_size(r[codes.P_IN0 : codes.P_IN2 + 1]), _size(r[codes.P_OUT0 : codes.P_OUT2 + 1]))
        for r in table
    ]
    half = rows * max(sizes)
    first = next(
        (
            i
            for i, (layer, flag) in enumerate(zip(computing, trainable))
            if flag and any(s.trainable for s in layer.weight_specs())
        ),
        n,
    )
    table[:, codes.P_BACKWARD] = 0
    table[:, codes.P_DOUT_OFF] = -1
    table[:, codes.P_DX_OFF] = -1
    table[n - 1, codes.P_DOUT_OFF] = 0  # dL/d(output) from the loss
    cur = 0
    for l in range(n - 1, first - 1, -1):
        table[l, codes.P_BACKWARD] = 1
        table[l, codes.P_DOUT_OFF] = cur
        if l > first:
            table[l, codes.P_DX_OFF] = half - cur
        cur = half - cur
    return 2 * half
