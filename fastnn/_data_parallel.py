"""The epochs of a data-parallel ``fit`` (see :mod:`fastnn.distributed`).

Every rank holds the same arrays and, after the start, the same weights and optimizer
state.  Per step each rank gathers its contiguous shard of the global batch, runs the
compiled forward, loss and backward on it with its gradients scaled by shard rows / global
rows (the kernels' batch loss is sum sw * loss / N of the batch's N), and one in-place
reduce-scatter of the flat gradient buffer gives each rank the sums of its segment of the
parameters.  Each rank runs the optimizer over its segment only (its slice of the
optimizer state is kept in a buffer of its own), then an allgather of the parameters
gives every rank the whole updated vector: the single-process update of that global batch,
each entry computed once, on one rank.  With gradient clipping (which needs whole
gradients) the gradients are summed in full and every rank runs the whole update.  A small
Allreduce of the step's statistics (loss, metric sums, an error flag) goes first, so a rank
that fails makes every rank raise at the same step instead of leaving the others in the
gradient sum.  A small network (below SHARD_UPDATE_MIN_BYTES of parameters) is summed
whole too: there one Allreduce is cheaper than two collectives.

Between the ranks of one machine (and without per-batch callbacks) the step runs in MPI
shared memory (:class:`fastnn.distributed.SharedTraining`): during an epoch the engine's
parameters are one vector every rank reads and the gradients a vector per rank that the
others read, so the reduce-scatter is an addition after the barrier at which the ranks
sum their statistics, and the allgather a barrier.  The model's own parameter vector is
brought up to date at the end of the epoch.

The engine's optimizer state is brought up to date (an allgather of the slices) wherever
it may be read: at the end of each epoch, before an error is raised, and after every step
when any rank has per-batch callbacks.
"""

from __future__ import annotations

import numpy as np

from . import _fit_events
from ._checks import NonFiniteLossError, _all_finite
from .distributed import RankError, raised_on_every_rank
from .kernels import codes


def check_supported(dp, model) -> None:
    """ValueError for what data-parallel training does not run (with more than one rank)."""
    if dp.size == 1:
        return
    eng = model._engine
    if eng.on_device:
        raise ValueError(
            f"data-parallel fit runs on the CPU backends, got backend {model.backend_name!r}"
        )
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization" and layer.trainable:
            raise ValueError(
                f"data-parallel fit does not synchronise batch statistics: layer "
                f"{layer.name!r} (BatchNormalization) would normalise each rank's shard "
                "alone; freeze it (layer.trainable = False: inference mode, its moving "
                "statistics) or train this model in one process"
            )


def agree(dp, prepare, settings):
    """Runs ``prepare()`` on every rank; raises on every rank when it raised on any (the
    first such rank's error), when the ranks' arrays differ in shape or their ``settings``
    (a dict of fit's arguments: epochs, batch size...) differ.  Returns its result:
    ((x, y, sw), validation)."""
    err, result, shapes = None, None, None
    try:
        result = prepare()
        (x, y, sw), val = result
        shapes = (x.shape, y.shape, None if val is None else val[0].shape)
    except Exception as exc:  # raised on every rank below
        err = exc
    everyone = dp.gather_all((None if err is None else _describe(err), shapes))
    _raise_first(dp, err, [e for e, _ in everyone])
    if any(s != everyone[0][1] for _, s in everyone):
        listed = "; ".join(f"rank {r}: x {s[0]}, y {s[1]}" for r, (_, s) in enumerate(everyone))
        raise raised_on_every_rank(ValueError(
            "data-parallel fit needs the same x and y (and validation data) on every rank, "
            f"got arrays of different shapes: {listed}"
        ))  # fmt: skip
    _same_settings(dp, settings)
    return result


def _same_settings(dp, settings) -> None:
    everyone = dp.gather_all(settings)
    for rank, theirs in enumerate(everyone):
        for key, value in theirs.items():
            if value != everyone[0][key]:
                raise raised_on_every_rank(ValueError(
                    f"data-parallel fit needs the same {key} on every rank (or the ranks "
                    f"would wait for each other forever), got {everyone[0][key]!r} on rank 0 "
                    f"and {value!r} on rank {rank}"
                ))  # fmt: skip


def _describe(err) -> str:
    return f"{type(err).__name__}: {err}"


def _raise_first(dp, err, messages) -> None:
    """Raises ``err`` on the rank that had it, RankError naming the first failed rank on the
    others; nothing when no rank failed."""
    failed = [r for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if err is not None:
        raise raised_on_every_rank(err)
    raise raised_on_every_rank(
        RankError(f"rank {failed[0]} of the data-parallel fit raised {messages[failed[0]]}")
    )


#: Whether each rank updates only its segment of the parameters (then an allgather); False:
#: every rank sums the whole gradient and runs the whole update (as with clipping).
SHARD_UPDATE = True

#: Trainable parameters of fewer bytes are summed whole and updated on every rank: for a
#: small network a second collective costs more than the update it splits (measured here,
#: (d), 19 KB: reduce-scatter + allgather 26 us a step against 14 us for the Allreduce, and
#: the whole update 5-8 us).
SHARD_UPDATE_MIN_BYTES = 1 << 16


def broadcast_start(dp, model) -> None:
    """Rank 0's weights, optimizer state and step, shuffle and dropout seeds on every rank."""
    eng = model._engine
    for buf in (eng.host_params, eng.host_nontrain, eng.state):
        if buf.size:
            dp.broadcast_(buf)
    rng_state, seed, it = dp.broadcast(
        (model._shuffle_rng.bit_generator.state, model._dropout_seed, model.optimizer.iterations)
    )
    model._shuffle_rng.bit_generator.state = rng_state
    model._dropout_seed, model.optimizer.iterations = seed, it


def _non_finite(*args) -> None:
    """_fit_events._non_finite, whose NonFiniteLossError every rank raises (the loss and
    the weights are the same on every rank)."""
    try:
        _fit_events._non_finite(*args)
    except NonFiniteLossError as exc:
        raised_on_every_rank(exc)
        raise


class DataParallelEpochs:
    """Epochs over prepared arrays, each global batch split over the ranks of ``dp``: one
    compiled forward/backward per shard, the step's statistics summed over the ranks, the
    gradients reduce-scattered, the optimizer update of this rank's segment and an
    allgather of the parameters per step."""

    def __init__(self, dp, model, data, batch_size, shuffle, verbose, cbs):
        self.dp, self.model, (self.X, self.Y, self.SW) = dp, model, data
        self.n = len(self.X)
        self.bs = min(batch_size, self.n)
        self.shuffle, self.verbose, self.cbs = shuffle, verbose, cbs
        self.steps = -(-self.n // self.bs)
        self.batch_begin = cbs.overriding("on_train_batch_begin")
        self.batch_end = cbs.overriding("on_train_batch_end")
        shard_rows = -(-self.bs // dp.size)
        self.ws = model._training_workspace(shard_rows, self.Y.shape[1])
        plan = model._stack_plan()
        self.loss_code, self.logits_out = plan.code, plan.logits_out
        self.metrics, self.thresholds = model._metric_args(plan)
        self.plan = self.ws.loss_plan(plan.train_act)
        #: whether a layer adds a regularisation penalty (and its gradient, on every rank)
        self.penalised = bool(np.any(self.plan.layer_f[:, [codes.F_L1, codes.F_L2]]))
        # the step's statistics, then the number of ranks whose step raised
        self.part = np.zeros(model._new_stats().size + 1)
        eng = model._engine
        self.grads = eng.grads[: eng.n_train]
        self.params = eng.params[: eng.n_train]
        broadcast_start(dp, model)
        self.sharded = (SHARD_UPDATE and not model.optimizer.clipping
                        and self.grads.nbytes >= SHARD_UPDATE_MIN_BYTES)  # fmt: skip
        #: this rank's segment of the parameters, and its slice of the optimizer state
        self.lo, self.hi = dp.segment(eng.n_train) if self.sharded else (0, eng.n_train)
        # the ranks agree: a callback that only rank 0 has still needs the other ranks
        hooks = any(dp.gather_all(bool(self.batch_begin or self.batch_end)))
        self.sync_each_step = self.sharded and hooks
        #: the step in shared memory (None: the collectives of dp); per-batch callbacks may
        #: read or set the weights: they see the model's own vector, updated every step
        self.shared = None
        if self.sharded and not hooks:
            self.shared = dp.shared_training(eng.n_params, eng.n_train, eng.dtype,
                                             self.part.size, eng.state.shape[0])  # fmt: skip
        self.own = eng.params, eng.grads
        self.state = self._state_slice()

    def run(self, epoch, epochs):
        """Trains one epoch; returns its global logs (raises _Stop, NonFiniteLossError or
        the error of a failed rank)."""
        model = self.model
        order = model._shuffle_rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        order = order.astype(np.int64)
        stats = model._new_stats()
        bar = _fit_events._progress(self.verbose, self.steps, epoch, epochs)
        try:
            self._enter_shared()
            self._load_state()
            for b in range(self.steps):
                self._step(order[b * self.bs : (b + 1) * self.bs], b, stats, epoch)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(model._logs(stats), refresh=False)
                if model.stop_training:
                    break
        finally:
            self._leave_shared()
            if bar is not None:
                bar.close()
        self._gather_state()
        self._check_weights(epoch)
        return model._logs(stats)

    def _step(self, rows, b, stats, epoch):
        part, dp, model = self.part, self.dp, self.model
        part.fill(0)
        err = None
        try:
            for hook in self.batch_begin:
                hook(b, {})
            self._shard_gradients(rows, part)
        except Exception as exc:  # every rank raises it after the statistics' sum
            err, part[-1] = exc, 1.0
        if self.shared is not None:  # also waits until every rank has its gradients
            self.shared.sum_stats(part)
        else:
            dp.sum_(part)
        if part[-1]:
            self._gather_state()
            _raise_first(dp, err, dp.gather_all(None if err is None else _describe(err)))
        loss = part[codes.STAT_LOSS] / len(rows)
        if not np.isfinite(loss):
            self._gather_state()
            _non_finite(model, self.cbs, epoch, b, float(loss), "loss")
        if self.shared is not None:
            self._update(self.shared.reduce_scatter())
            self.shared.publish()
        elif self.sharded:
            self._update(dp.reduce_scatter(self.grads))
            dp.allgather_(self.params)
        else:
            self._update(self._clipped(dp.sum_(self.grads)))
        if self.sync_each_step:
            self._gather_state()
        stats += part[:-1]
        if self.batch_end:
            logs = model._logs(stats)
            for hook in self.batch_end:
                hook(b, logs)

    def _state_slice(self):
        """The optimizer state this rank updates: a buffer for its slice [lo, hi) of the
        engine's (filled by :meth:`_load_state`), or the engine's whole state when every
        rank runs the whole update."""
        state = self.model._engine.state
        if self.shared is not None:
            return self.shared.state
        if self.sharded:
            return np.empty((state.shape[0], self.hi - self.lo), state.dtype)
        return state

    def _load_state(self):
        """This rank's slice of the engine's optimizer state into its buffer, at the start
        of every epoch (a callback between epochs may have set the state; the engine's is
        whole after every epoch).  In shared memory after :meth:`_enter_shared`, whose
        barriers keep it from overwriting a slice another rank is still gathering."""
        state = self.model._engine.state
        if state is not self.state:
            np.copyto(self.state, state[:, self.lo : self.hi])

    def _enter_shared(self):
        """The engine trains on the shared parameters and this rank's shared gradients."""
        if self.shared is None:
            return
        eng, shared = self.model._engine, self.shared
        shared.load(eng.params)
        eng.params, eng.grads = shared.params, shared.grads
        self.params, self.grads = shared.params[: eng.n_train], shared.grads[: eng.n_train]

    def _leave_shared(self):
        """The model's own parameters (updated) and gradients back in the engine."""
        if self.shared is None:
            return
        eng, (params, grads) = self.model._engine, self.own
        if eng.params is self.shared.params:
            np.copyto(params, self.shared.params)
        eng.params, eng.grads = params, grads
        self.params, self.grads = params[: eng.n_train], grads[: eng.n_train]

    def _shard_gradients(self, rows, part):
        """This rank's shard of the batch ``rows``: forward, loss, backward, its metric
        sums into ``part`` and its gradients, scaled by shard rows / batch rows, into
        grads (zeros for an empty shard).  The kernels' loss is sum sw * loss / n over the
        shard's n rows: with the sample weights scaled by n / N (N the batch's rows) it is
        the shard's share of the batch loss, and so are the gradients."""
        model, ws, k = self.model, self.ws, self.model._kernels
        start, stop = self.dp.shard(len(rows))
        n = stop - start
        if n == 0:
            self.grads.fill(0)
            return
        idx = rows[start:stop]
        x, y, sw = ws.xb[:n], ws.yb[:n], ws.swb[:n]
        np.take(self.X, idx, axis=0, out=x)
        np.take(self.Y, idx, axis=0, out=y)
        np.take(self.SW, idx, axis=0, out=sw)
        share = n / len(rows)
        if not self.penalised:  # the loss gradient comes out scaled: no pass over grads
            sw *= sw.dtype.type(share)
        eng, args, step = model._engine, self.plan.args, model.optimizer.iterations + 1
        seed = model._dropout_seed
        k.forward_stack(x, args, eng.net, ws.work, 1, seed, step, start)
        out, dz = self._output_and_gradient(n)
        fused = self.loss_code in (codes.SOFTMAX_CE, codes.SPARSE_SOFTMAX_CE, codes.SIGMOID_BCE)
        p = out if fused and not self.logits_out else dz
        value = k.loss_grad(out, y, sw, p, dz, self.loss_code)
        value += k.backward_stack(x, args, eng.net, ws.work, seed, step, start)
        if self.penalised:  # the penalty's gradient, added on every rank, is shared too
            self.grads *= self.grads.dtype.type(share)
            value *= share
        part[codes.STAT_LOSS] += value * len(rows)
        k.batch_stats(out, y, self.metrics, self.thresholds, part)

    def _output_and_gradient(self, n):
        """Views (n, outputs) of the last layer's output in acts and of dL/dout in gbuf."""
        row, width = self.plan.layers[-1], self.plan.output_size
        off, doff = int(row[codes.P_OUT_OFF]), int(row[codes.P_DOUT_OFF])
        out = self.ws.acts[off : off + n * width].reshape(n, width)
        return out, self.ws.gbuf[doff : doff + n * width].reshape(n, width)

    def _clipped(self, grads):
        """``grads`` (the whole summed gradient) clipped in place as the optimizer asks."""
        opt = self.model.optimizer
        if opt.clipping:
            self.model._kernels.clip_gradients(grads, self.plan.layers, opt.code,
                                               self._hyper())  # fmt: skip
        return grads

    def _hyper(self):
        """The optimizer's hyper-parameters with the rate of the coming step."""
        opt = self.model.optimizer
        hyper = opt._train_hyper()
        hyper[0] = opt._train_rates(1)[0]
        return hyper

    def _update(self, grads):
        """The optimizer step of this rank's segment [lo, hi) of the parameters over
        ``grads``, the summed gradients of that segment."""
        model, opt = self.model, self.model.optimizer
        if self.hi > self.lo:
            params = self.params[self.lo : self.hi]
            model._kernels.optimizer_update(params, grads, self.state, opt.code, self._hyper(),
                                            opt.iterations + 1)  # fmt: skip
        opt.iterations += 1

    def _gather_state(self):
        """The engine's optimizer state made whole: this rank's slice, then every rank's
        (an allgather of each row; every rank must call it at the same point)."""
        state = self.model._engine.state
        if state is self.state:
            return
        if self.shared is not None:
            self.shared.gather_state(state)
            return
        state[:, self.lo : self.hi] = self.state
        for row in state[: self.model.optimizer.slots]:
            self.dp.allgather_(row)

    def _check_weights(self, epoch):
        eng = self.model._engine
        if not all(_all_finite(a) for a in (eng.params, eng.state, eng.nontrain)):
            _non_finite(self.model, self.cbs, epoch, self.steps - 1, float("nan"), "weights")
