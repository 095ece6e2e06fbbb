"""Data-parallel fits for tests/test_distributed.py, run as ``mpiexec -n 2 python
tests/mpi_worker.py MODE OUT [BACKEND [L2 [SHARED [OPTIMIZER]]]]`` (or without mpiexec,
MODE single: the same fit in one process).  Each rank writes OUT.<rank> (JSON: per-epoch
logs, final weights and optimizer state, the evaluation).  MODE replicated: every rank
runs the whole optimizer update rather than its segment; MODE batchstate (or single with
OPTIMIZER ending in "+batchstate"): rank 0 records the optimizer state after every batch;
OPTIMIZER ending in "+twice": the epochs in two fits (the second from the first's end);
"+zerostate": a callback zeroes the optimizer state at the end of every epoch; "+frozenbn":
the model has a frozen BatchNormalization (inference mode) between its Dense layers."""

from __future__ import annotations

import json
import sys

import numpy as np

import fastnn
import fastnn._data_parallel as data_parallel
from fastnn.callbacks import Callback
from fastnn.distributed import DataParallel, set_distribution

N, BATCH, EPOCHS = 85, 21, 3  # batches of 21 (shards 11 + 10) and a last one of 1 row


def data():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 1)
    sw = rng.uniform(0.5, 1.5, N)
    return x, y, sw


OPTIMIZERS = {
    "adam": lambda: fastnn.optimizers.Adam(0.01),
    "nadam": lambda: fastnn.optimizers.Nadam(0.01),
    "nesterov": lambda: fastnn.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "sgd": lambda: fastnn.optimizers.SGD(0.05),
    "rmsprop": lambda: fastnn.optimizers.RMSprop(0.01),
    "adagrad": lambda: fastnn.optimizers.Adagrad(0.05),
    "clipnorm": lambda: fastnn.optimizers.Adam(0.01, clipnorm=0.05),
    "global_clipnorm": lambda: fastnn.optimizers.Adam(0.01, global_clipnorm=0.05),
    "clipvalue": lambda: fastnn.optimizers.Adam(0.01, clipvalue=0.002),
    "amsgrad": lambda: fastnn.optimizers.AdamW(0.01, amsgrad=True),
    "rmsprop_mc": lambda: fastnn.optimizers.RMSprop(
        0.01, momentum=0.5, centered=True, weight_decay=0.01
    ),
}


def model(backend, l2=0.0, optimizer="adam"):
    reg = fastnn.regularizers.L2(l2) if l2 else None
    m = fastnn.Sequential(
        [
            fastnn.layers.Input((6,)),
            fastnn.layers.Dense(16, activation="relu", kernel_regularizer=reg),
            fastnn.layers.Dropout(0.3),
            fastnn.layers.Dense(3, activation="softmax"),
        ],
        seed=3,
        backend=backend,
    )
    m.compile(OPTIMIZERS[optimizer](), "sparse_categorical_crossentropy", ["accuracy"])
    return m


def frozen_bn_model(backend, optimizer="adam"):
    """Dense -> frozen BatchNormalization with set statistics -> relu -> Dense: no batch
    statistics, so every shard normalises as the whole batch would."""
    L = fastnn.layers
    m = fastnn.Sequential(
        [L.Input((6,)), L.Dense(16), L.BatchNormalization(), L.Activation("relu"),
         L.Dense(3, activation="softmax")],
        seed=3, backend=backend,
    )  # fmt: skip
    m.build((6,))
    rng = np.random.default_rng(4)
    bn = m.layers[1]
    bn.set_weights([rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.3, 16), rng.normal(0, 0.5, 16),
                    rng.uniform(0.5, 2.0, 16)])  # fmt: skip
    bn.trainable = False
    m.compile(OPTIMIZERS[optimizer](), "sparse_categorical_crossentropy", ["accuracy"])
    return m


class ZeroStateAtEpochEnd(Callback):
    """Sets the optimizer state to zeros between epochs (every rank does the same)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model._engine.state[...] = 0


class StateAfterBatch(Callback):
    """Records the sum of |optimizer state| after every batch (the state must be whole)."""

    def __init__(self):
        super().__init__()
        self.sums = []

    def on_train_batch_end(self, batch, logs=None):
        self.sums.append(float(np.abs(self.model._engine.host_state()).sum(dtype=np.float64)))


class RaiseAt(Callback):
    """Raises ValueError at one batch of the second epoch on one rank."""

    def __init__(self, rank, hook):
        super().__init__()
        self.rank, self.hook, self.epoch = rank, hook, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.hook == "begin":
            self._maybe(batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.hook == "end":
            self._maybe(batch)

    def _maybe(self, batch):
        if self.epoch == 1 and batch == 2 and self.rank == 1:
            raise ValueError("rank 1 fails on purpose at epoch 2, batch 3")


def check_sums(dp, out):
    """dp.sum_ of float32 buffers (shared memory when large, Allreduce when small) against
    float64 sums; every rank's bits and the shared and Allreduce paths compared."""
    import fastnn.distributed as D

    found = {}
    for n in (3, 100_003):
        buf = np.random.default_rng(dp.rank).standard_normal(n).astype(np.float32)
        want = sum(np.random.default_rng(r).standard_normal(n) for r in range(dp.size))
        got = dp.sum_(buf.copy())
        plain = buf.copy()
        dp.comm.Allreduce(dp._MPI.IN_PLACE, plain)
        everyone = dp.gather_all(got.tobytes())
        found[n] = {
            "shared": n * 4 >= D.SHARED_SUM_MIN_BYTES and dp._shared_ok(),
            "err": float(np.abs(got - want).max()),
            "vs_allreduce": float(np.abs(got - plain).max()),
            "same_bits": all(b == everyone[0] for b in everyone),
        }
    with open(f"{out}.{dp.rank}", "w") as f:
        json.dump(found, f)


def main(mode, out, backend="cython", l2="0", shared="default", optimizer="adam"):
    x, y, sw = data()
    dp = None if mode == "single" else DataParallel()
    set_distribution(dp)
    if shared == "all":  # every buffer, the gradients too, through shared memory
        fastnn.distributed.SHARED_SUM_MIN_BYTES = 0
    if shared in ("all", "sharded"):  # "sharded": MPI's reduce-scatter and allgather
        data_parallel.SHARD_UPDATE_MIN_BYTES = 0
    if mode == "sums":
        return check_sums(dp, out)
    if mode == "replicated":
        data_parallel.SHARD_UPDATE = False
    optimizer, _, extra = optimizer.partition("+")
    if extra == "frozenbn":
        m, callbacks = frozen_bn_model(backend, optimizer), []
    else:
        m, callbacks = model(backend, float(l2), optimizer), []
    recorder = None
    if (mode == "batchstate" and dp.rank == 0) or extra == "batchstate":
        recorder = StateAfterBatch()  # on rank 0 only: the other ranks must follow anyway
        callbacks = [recorder]
    if extra == "zerostate":
        callbacks = [ZeroStateAtEpochEnd()]
    if mode == "shapes" and dp.rank == 1:
        x, y, sw = x[:-1], y[:-1], sw[:-1]
    if mode == "badx" and dp.rank == 1:
        x = x.copy()
        x[7, 2] = np.nan  # fit's checks refuse it on rank 1, before any step
    if mode == "nonfinite" and dp.rank == 1:
        x = x.copy()
        x[40] = 3e38  # finite, but overflows float32 in the first layer
    if mode in ("raise", "abort"):
        callbacks = [RaiseAt(dp.rank, "begin" if mode == "raise" else "end")]
    if mode == "batchnorm":
        m = fastnn.Sequential([fastnn.layers.Input((6,)), fastnn.layers.BatchNormalization(),
                               fastnn.layers.Dense(3, activation="softmax")])  # fmt: skip
        m.compile("adam", "sparse_categorical_crossentropy")
    verbose = 0
    if mode == "files":
        rank = dp.rank
        callbacks = [
            fastnn.callbacks.CSVLogger(f"{out}.csv.{rank}"),
            fastnn.callbacks.ModelCheckpoint(f"{out}.ckpt.{rank}.fnn", "loss"),
        ]
        verbose = 2  # fmt: skip
    epochs = EPOCHS + 1 if mode == "epochs" and dp.rank == 1 else EPOCHS
    first = 0
    if extra == "twice":  # a second fit starts from the first's weights and state
        m.fit(x, y, sample_weight=sw, epochs=epochs - 1, batch_size=BATCH, verbose=0)
        first = epochs - 1
    hist = m.fit(x, y, sample_weight=sw, epochs=epochs, batch_size=BATCH, verbose=verbose,
                 callbacks=callbacks, initial_epoch=first)  # fmt: skip
    if mode == "files":
        m.save(f"{out}.save.{dp.rank}.fnn")
    result = {
        "history": hist.history,
        "weights": [w.tolist() for w in m.get_weights()],
        "state": m._engine.host_state().tolist(),
        "state_after_batch": None if recorder is None else recorder.sums,
        "evaluate": m.evaluate(x, y, return_dict=True),
        "predict_rows": int(m.predict(x).shape[0]),
        "ranks": 1 if dp is None else dp.size,
    }
    with open(f"{out}.{0 if dp is None else dp.rank}", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
