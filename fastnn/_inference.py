"""evaluate, predict and their one-batch forms, for :class:`fastnn.Sequential` (a mixin:
the model's own methods prepare the data, run the compiled calls and name the logs)."""

from __future__ import annotations

import itertools

import numpy as np

from . import callbacks as _callbacks
from ._checks import _batch_size, check_int
from ._fit import as_numpy, check_x, is_batch_source, split_batch
from .kernels import codes


class Inference:
    """Sequential's evaluation and prediction."""

    def evaluate(
        self,
        x,
        y=None,
        batch_size: int | None = None,
        verbose: int = 0,
        sample_weight=None,
        return_dict: bool = False,
        steps: int | None = None,
        callbacks=None,
    ):
        """Loss (then metrics, in compile order) on (x, y): a float without metrics, else a
        list — or a dict with ``return_dict``.  x may also be an iterable of ``(x, y[,
        sample_weight])`` batches.  ``steps``: the first ``steps`` batches only (all by
        default).  ``callbacks``: their ``on_test_*`` hooks are called (per-batch ones
        make the evaluation run batch by batch)."""
        check_x(x)
        cbl = _callbacks.for_inference(self, callbacks)
        if cbl is not None:
            cbl.call("on_test_begin", {})
        if is_batch_source(x):
            stats = self._evaluate_batches(x, steps, cbl)
        else:
            x, y, sw = self._prepare(x, y, sample_weight)
            bs = _batch_size(batch_size, 1024, len(x))
            rows = np.arange(len(x), dtype=np.int64)
            if steps is not None:
                rows = rows[: check_int(steps, "steps", 1) * bs]
            stats = self._evaluate_rows(x, y, sw, rows, bs, cbl)
        logs = self._logs(stats)
        if cbl is not None:
            cbl.call("on_test_end", logs)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return returned(logs, return_dict)

    def _evaluate_rows(self, x, y, sw, rows, bs, cbl=None) -> np.ndarray:
        """The statistics of x[rows] in batches of ``bs``: one compiled call, or one per
        batch between the per-batch test hooks of ``cbl`` when it has any."""
        begin, end = cbl.batch_hooks("test") if cbl is not None else ((), ())
        if not (begin or end):
            return self._run(x, y, sw, rows, bs)
        stats = self._new_stats()
        for b, start in enumerate(range(0, len(rows), bs)):
            for hook in begin:
                hook(b, {})
            stats += self._run(x, y, sw, rows[start : start + bs], bs)
            logs = self._logs(stats)
            for hook in end:
                hook(b, logs)
        return stats

    def _evaluate_batches(self, source, steps=None, cbl=None) -> np.ndarray:
        """The summed statistics of an iterable's batches, each one compiled call (with the
        per-batch test hooks of ``cbl`` around it)."""
        if steps is not None:
            steps = check_int(steps, "steps", 1)
        begin, end = cbl.batch_hooks("test") if cbl is not None else ((), ())
        stats = self._new_stats()
        for b, batch in enumerate(itertools.islice(source, steps)):  # none past steps
            for hook in begin:
                hook(b, {})
            x, y, sw = self._prepare(*split_batch(batch))
            stats += self._run(x, y, sw, np.arange(len(x), dtype=np.int64), len(x))
            if end:
                logs = self._logs(stats)
                for hook in end:
                    hook(b, logs)
        if not stats[codes.STAT_ROWS]:
            raise ValueError("the evaluation batches are empty: the iterable yielded no batch")
        return stats

    def predict(self, x, batch_size: int | None = None, verbose: int = 0,
                steps: int | None = None, callbacks=None) -> np.ndarray:  # fmt: skip
        """Outputs for x (N, *input_shape), shape (N, outputs of the last layer).  x may also
        be an iterable of batches (each x, or a tuple whose first item is x; ``steps`` of
        them: all by default).  ``callbacks``: their ``on_predict_*`` hooks are called
        (``on_predict_batch_end`` with ``{"outputs": the batch's outputs}``)."""
        check_x(x)
        cbl = _callbacks.for_inference(self, callbacks)
        if cbl is not None:
            cbl.call("on_predict_begin", {})
        if is_batch_source(x):
            out = self._predict_batches(x, steps, cbl)
        else:
            out = self._predict_array(self._features(x), batch_size, cbl)
        if cbl is not None:
            cbl.call("on_predict_end", {})
        return out

    def _predict_array(self, x, batch_size, cbl=None) -> np.ndarray:
        eng = self._engine
        bs = _batch_size(batch_size, 1024, len(x))
        ws = eng.workspace(bs, 1)
        args, off = ws.plan.args, ws.plan.output_offset
        begin, end = cbl.batch_hooks("predict") if cbl is not None else ((), ())
        out = np.empty((len(x), self.output_dim), self.dtype)
        for b, start in enumerate(range(0, len(x), bs)):
            for hook in begin:
                hook(b, {})
            xb = x[start : start + bs]
            n = len(xb)
            if eng.on_device:
                xb = self._kernels.to_device(xb)
            self._kernels.forward_stack(xb, args, eng.net, ws.work, 0, 0, 0)
            res = ws.acts[off : off + n * self.output_dim]
            res = self._kernels.to_host(res) if eng.on_device else res
            out[start : start + n] = res.reshape(n, -1)
            for hook in end:
                hook(b, {"outputs": out[start : start + n]})
        return out

    def _predict_batches(self, source, steps=None, cbl=None) -> np.ndarray:
        if steps is not None:
            steps = check_int(steps, "steps", 1)
        begin, end = cbl.batch_hooks("predict") if cbl is not None else ((), ())
        outs = []
        for b, batch in enumerate(itertools.islice(source, steps)):
            for hook in begin:
                hook(b, {})
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = as_numpy(x, "x")
            outs.append(self.predict(x, batch_size=len(x)))
            for hook in end:
                hook(b, {"outputs": outs[-1]})
        if not outs:
            raise ValueError("the prediction batches are empty: the iterable yielded no batch")
        return np.concatenate(outs)

    def predict_on_batch(self, x) -> np.ndarray:
        """:meth:`predict` on x as one batch."""
        return self.predict(x, batch_size=max(len(x), 1) if hasattr(x, "__len__") else None)

    def test_on_batch(self, x, y, sample_weight=None, return_dict: bool = False):
        """:meth:`evaluate` on (x, y) as one batch."""
        n = max(len(x), 1) if hasattr(x, "__len__") else None
        return self.evaluate(x, y, batch_size=n, sample_weight=sample_weight,
                             return_dict=return_dict)  # fmt: skip


def returned(logs: dict, return_dict: bool):
    """``logs`` as evaluate and train_on_batch return them: the dict, the loss alone, or
    the list [loss, metrics...]."""
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values
