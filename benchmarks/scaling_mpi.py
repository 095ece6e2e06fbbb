"""Step time of a data-parallel fit against the ranks (docs/scaling.md).

    mpiexec -n K python benchmarks/scaling_mpi.py --network c [--repeats 5] [--steps 24]

Every rank holds BLAS at one thread (threadpoolctl).  Without mpiexec (one process) it
times the ordinary fit (one compiled call per epoch) and, with ``--loop``, the data-parallel
per-batch loop on one rank (its Python and per-call overhead, no communication).  Rank 0
prints one JSON line: the network, ranks, epoch seconds (median and all repeats), the
Allreduce seconds per step (median over the steps of the timed epochs), BLAS and the load.
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
    n_in, hidden, n_out, _ = B.NETWORKS[name]
    layers = [fastnn.layers.Input((n_in,))]
    layers += [fastnn.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(fastnn.layers.Dense(n_out))
    model = fastnn.Sequential(layers, seed=0, backend=backend)
    model.compile(fastnn.optimizers.Adam(1e-3),
                  fastnn.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    return model


def _timed_allreduce(dp, spent):
    """Wraps dp.sum_ so that the gradient Allreduce's seconds are recorded."""
    inner = dp.sum_

    def timed(buf):
        t0 = time.perf_counter()
        out = inner(buf)
        if buf.size > 64:  # the gradients, not the statistics
            spent.append(time.perf_counter() - t0)
        return out

    dp.sum_ = timed


def _timed_compute(cpu):
    """Records the CPU seconds of each data-parallel step's compute (``cpu["shard"]``: the
    shard's forward and backward; ``cpu["update"]``: the optimizer step): what the step
    costs without waiting for the other ranks."""
    from fastnn._data_parallel import DataParallelEpochs as E

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
    p.add_argument("--batch", type=int, default=None, help="global batch (default the network's)")
    args = p.parse_args()
    batch = args.batch or B.NETWORKS[args.network][3]
    x, y = B.synthetic_data(args.steps * batch, B.NETWORKS[args.network][0])
    dp, spent, cpu = None, [], {"shard": [], "update": []}
    if "PMI_RANK" in os.environ or args.loop:
        from fastnn.distributed import DataParallel, set_distribution

        dp = DataParallel()
        set_distribution(dp)
        if args.loop:  # the data-parallel loop even on one rank
            _fit._distribution = lambda: dp
        _timed_allreduce(dp, spent)
        _timed_compute(cpu)
    model = _model(args.network, args.backend)
    with threadpool_limits(1, user_api="blas"):
        model.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up
        spent.clear()
        cpu["shard"].clear()
        cpu["update"].clear()
        times, cpu_fit = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=True)
            times.append(time.perf_counter() - t0)
            cpu_fit.append(time.process_time() - c0)
        blas = sorted({(i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
                       for i in threadpool_info() if i.get("user_api") == "blas"})  # fmt: skip
    if dp is None or dp.is_primary:
        print(json.dumps({
            "network": B.network_label(args.network), "batch": batch,
            "ranks": 1 if dp is None else dp.size,
            "mode": "dp" if dp is not None else "fit", "steps": args.steps,
            "epoch_s": float(np.median(times)),
            "step_ms": 1e3 * float(np.median(times)) / args.steps,
            "epochs_s": [round(t, 4) for t in times],
            "allreduce_ms": 1e3 * float(np.median(spent)) if spent else 0.0,
            # CPU ms per step of the whole fit (with the collectives' busy waiting), and of
            # a rank's shard forward + backward and optimizer step alone
            "cpu_step_ms": 1e3 * float(np.median(cpu_fit)) / args.steps,
            "cpu_shard_ms": 1e3 * float(np.median(cpu["shard"])) if cpu["shard"] else None,
            "cpu_update_ms": 1e3 * float(np.median(cpu["update"])) if cpu["update"] else None,
            "params": model.count_params(), "blas": blas, "load": os.getloadavg()[0],
        }))  # fmt: skip


if __name__ == "__main__":
    main()
