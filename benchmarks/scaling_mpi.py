"""Step time of a data-parallel fit against the ranks (docs/scaling.md).

    mpiexec -n K python benchmarks/scaling_mpi.py --network c [--repeats 5] [--steps 24]

``--network`` takes the MLPs (a, c, d, bn) and the CNNs (lenet, convnet: fastnn.bench.cnn).

Every rank holds BLAS at one thread (threadpoolctl).  Without mpiexec (one process) it
times the ordinary fit (one compiled call per epoch) and, with ``--loop``, the data-parallel
per-batch loop on one rank (its Python and per-call overhead, no communication).  Rank 0
prints one JSON line: the network, ranks, epoch seconds (median and all repeats), the
wall milliseconds per step of each collective (median over the steps of the timed epochs:
the statistics' Allreduce, the gradients' reduce-scatter and the parameters' allgather,
each with the waiting for the other ranks), the CPU milliseconds of the shard's forward and
backward and of the optimizer update, BLAS and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import fastnn
from fastnn import _fit
from fastnn.bench import baselines as B


def _model(name, backend):
    if name in B.CNN:  # the convolutional benchmark networks (fastnn.bench.cnn)
        from fastnn.bench.cnn import fastnn_cnn

        return fastnn_cnn(name, backend, seed=0)
    n_in, hidden, n_out, _ = B.NETWORKS[name]
    layers = [fastnn.layers.Input((n_in,))]
    layers += [fastnn.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(fastnn.layers.Dense(n_out))
    model = fastnn.Sequential(layers, seed=0, backend=backend)
    model.compile(fastnn.optimizers.Adam(1e-3),
                  fastnn.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    return model


COLLECTIVES = {"sum_": ("stats", "sum"), "reduce_scatter": ("scatter",), "allgather_": ("gather",)}
SHARED_STEP = {"sum_stats": "stats", "reduce_scatter": "scatter", "publish": "gather"}


def _timed_collectives(dp, spent):
    """Wraps dp's collectives so that their wall seconds are recorded in ``spent`` (sum_:
    the statistics' under "stats", a gradient's under "sum"; the optimizer state's
    allgather at the end of an epoch is left out)."""
    for name, keys in COLLECTIVES.items():
        inner = getattr(dp, name)

        def timed(buf, _inner=inner, _keys=keys):
            t0 = time.perf_counter()
            out = _inner(buf)
            key = _keys[0] if buf.size <= 64 or len(_keys) == 1 else _keys[1]
            if not (key == "gather" and buf.base is not None and buf.base.ndim == 2):
                spent[key].append(time.perf_counter() - t0)
            return out

        setattr(dp, name, timed)
    from fastnn.distributed import SharedTraining

    for name, key in SHARED_STEP.items():
        inner = getattr(SharedTraining, name)

        def timed_step(self, *a, _inner=inner, _key=key):
            t0 = time.perf_counter()
            out = _inner(self, *a)
            spent[_key].append(time.perf_counter() - t0)
            return out

        setattr(SharedTraining, name, timed_step)


def _timed_compute(cpu):
    """Records the CPU seconds of each data-parallel step's compute (``cpu["shard"]``: the
    shard's forward and backward; ``cpu["update"]``: the optimizer step): what the step
    costs without waiting for the other ranks."""
    from fastnn._data_parallel import DataParallelEpochs as E

    inner_step = E._step

    def timed_step(self, *a):
        t0 = time.perf_counter()
        out = inner_step(self, *a)
        cpu["step_wall"].append(time.perf_counter() - t0)
        return out

    E._step = timed_step
    for name, key in (("_shard_gradients", "shard"), ("_update", "update")):
        inner = getattr(E, name)

        def timed(self, *a, _inner=inner, _key=key):
            t0 = time.process_time()
            out = _inner(self, *a)
            cpu[_key].append(time.process_time() - t0)
            return out

        setattr(E, name, timed)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="c", choices=sorted(B.NETWORKS))
    p.add_argument("--steps", type=int, default=24, help="global batches per epoch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="cython")
    p.add_argument("--loop", action="store_true", help="one process: the per-batch loop")
    p.add_argument("--replicated", action="store_true",
                   help="ranks: every rank runs the whole update (no segments)")  # fmt: skip
    p.add_argument("--copies", action="store_true",
                   help="ranks: collectives that copy (no shared parameters)")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="global batch (default the network's)")
    p.add_argument("--all-ranks", action="store_true", help="every rank prints its line")
    args = p.parse_args()
    batch = args.batch or B.NETWORKS[args.network][3]
    x, y = B.synthetic_data(args.steps * batch, B.NETWORKS[args.network][0])
    if args.network in B.CNN:
        from fastnn.bench.cnn import IMAGE

        x = x.reshape(len(x), *IMAGE)
    dp, spent, cpu = None, {k: [] for ks in COLLECTIVES.values() for k in ks}, {}
    cpu = {"shard": [], "update": [], "step_wall": []}
    if "PMI_RANK" in os.environ or args.loop:
        from fastnn.distributed import DataParallel, set_distribution

        dp = DataParallel()
        set_distribution(dp)
        if args.loop:  # the data-parallel loop even on one rank
            _fit._distribution = lambda: dp
        _timed_collectives(dp, spent)
        if args.copies:
            dp.shared_training = lambda *a: None
        if args.replicated:
            from fastnn import _data_parallel

            _data_parallel.SHARD_UPDATE = False
        _timed_compute(cpu)
    model = _model(args.network, args.backend)
    with threadpool_limits(1, user_api="blas"):
        model.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up
        for kept in (*spent.values(), *cpu.values()):
            kept.clear()
        times, cpu_fit, outside = [], [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            steps_before = len(cpu["step_wall"])
            model.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=True)
            times.append(time.perf_counter() - t0)
            cpu_fit.append(time.process_time() - c0)
            outside.append(times[-1] - sum(cpu["step_wall"][steps_before:]))
        blas = sorted({(i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
                       for i in threadpool_info() if i.get("user_api") == "blas"})  # fmt: skip
    if dp is None or dp.is_primary or args.all_ranks:
        print(json.dumps({
            "rank": 0 if dp is None else dp.rank,
            "network": B.network_label(args.network), "batch": batch,
            "ranks": 1 if dp is None else dp.size,
            "mode": _mode(dp, args), "steps": args.steps,
            "epoch_s": float(np.median(times)),
            "step_ms": 1e3 * float(np.median(times)) / args.steps,
            "epochs_s": [round(t, 4) for t in times],
            **{f"{k}_ms": _median_ms(v) for k, v in spent.items()},
            # CPU ms per step of the whole fit (with the collectives' busy waiting), and of
            # a rank's shard forward + backward and optimizer step alone
            "cpu_step_ms": 1e3 * float(np.median(cpu_fit)) / args.steps,
            "cpu_shard_ms": _median_ms(cpu["shard"]),
            "cpu_update_ms": _median_ms(cpu["update"]),
            # wall ms of a whole data-parallel step, and per fit of one epoch what runs
            # outside the steps (preparing, the state's gather, checks)
            "step_wall_ms": _median_ms(cpu["step_wall"]),
            "outside_steps_ms": _median_ms(outside) if cpu["step_wall"] else None,
            "params": model.count_params(), "blas": blas, "load": os.getloadavg()[0],
        }))  # fmt: skip


def _mode(dp, args):
    if dp is None:
        return "fit"
    return "dp" + " replicated" * args.replicated + " copies" * args.copies


def _median_ms(seconds):
    return round(1e3 * float(np.median(seconds)), 3) if seconds else None


if __name__ == "__main__":
    main()
