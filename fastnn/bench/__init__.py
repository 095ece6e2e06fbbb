"""``fastnn bench``: training-speed ratios against NumPy (and PyTorch/JAX when installed).

For each network and thread count, every implementation trains the same MLP (float32, Adam,
ReLU hidden layers, softmax + sparse cross-entropy) on the same batch.  Timings are taken in
interleaved rounds (one timing per implementation per round, the order rotating) and the
median is reported, so a noisy machine disturbs every implementation alike; the ratios
(fastnn time / baseline time, below 1 when fastnn is faster) are the result to read.

What is timed: fastnn's step is ``model.train_on_batch(x, y)`` (input checks included) and
its epoch ``model.fit(X, y, epochs=1, shuffle=True, verbose=0)``; the baselines'
``train_step``/``train_epoch`` come from :mod:`fastnn.bench.baselines`.  ``--isolate`` runs each
implementation in a worker process of its own, so that no other runtime's thread pool
(PyTorch's OpenMP, a second OpenBLAS) sits in the process it is timed in.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .baselines import NETWORKS, network_label, network_sizes, synthetic_data
from .rnn import RNN_NETWORKS, make_rnn_impls, rnn_batch_size, rnn_data, rnn_label

#: fastnn backends benchmarked by default (the compiled CPU ones that load).
COMPILED_BACKENDS = ("numba", "cython")
BASELINES = ("numpy", "torch", "jax")
EPOCH_SAMPLES = 60000


def _threads_default() -> list[int]:
    return sorted({1, os.cpu_count() or 1})


def add_parser(sub) -> None:
    """Registers the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="measure training speed vs NumPy / PyTorch and print ratios",
        description=__doc__,
    )
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help=f"thread counts for BLAS, Numba and PyTorch (default {_threads_default()})",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds, median taken (default 5)"
    )
    p.add_argument(
        "--networks",
        nargs="+",
        choices=sorted(NETWORKS) + list(RNN_NETWORKS),
        default=None,
        help=(
            "a: 784-128-10 b64, d: 64-64-10 b32, c: 784-1024-1024-10 b256, bn: 784-256-10 b64 "
            "with BatchNormalization before the hidden ReLU; lenet, convnet: CNNs on 28x28x1 "
            "images (fastnn.bench.cnn); lstm_rows, gru_rows: LSTM/GRU(64) over 28 rows of 28 "
            "features b64; lstm_imdb: Embedding(20000, 128) -> LSTM(128) -> Dense(1) on 80 "
            "tokens b32 (default a d c)"
        ),
    )
    p.add_argument(
        "--epoch",
        action="store_true",
        help=f"also time one epoch ({EPOCH_SAMPLES} synthetic samples, shuffled)",
    )
    p.add_argument(
        "--epoch-repeats", type=int, default=None, help="interleaved epoch rounds (default 3)"
    )
    p.add_argument(
        "--epoch-samples",
        type=int,
        default=None,
        help=f"samples of the timed epoch (default {EPOCH_SAMPLES}; --quick: 8 batches)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="fastnn backends (default: the compiled CPU backends that load: numba, cython)",
    )
    p.add_argument(
        "--baselines",
        nargs="+",
        choices=BASELINES,
        default=list(BASELINES),
        help="baselines to compare with (default all that are installed)",
    )
    p.add_argument(
        "--cold-start",
        action="store_true",
        help="also time fresh processes, per network: import, build, and the first fit's step 1 "
        "vs its later steps (numba with an empty and a warm cache, cython)",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="time each implementation in its own process (still interleaved): no thread "
        "pools of another runtime in the process; recommended for threads > 1",
    )
    p.add_argument("--out", default=None, help="write bench.json and bar charts (PNG) here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings to check that it runs: network d, 1 thread, 2 short rounds, "
        "an 8-batch epoch (explicit options still apply)",
    )
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------
# Environment


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _import_blas() -> None:
    """Loads SciPy's BLAS (a second OpenBLAS copy) so threadpoolctl sees and limits it."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        pass


def blas_pools() -> list[dict]:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    _import_blas()
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def numba_threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not initialised"


def environment(impls_meta: dict) -> dict:
    import numba

    env = {
        k: os.environ.get(k)
        for k in (
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
            "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY",
            "NUMBA_NUM_THREADS",
            "NUMBA_THREADING_LAYER",
        )
    }
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": numba_threading_layer(),
        "env": env,
        "blas": blas_pools(),
        **impls_meta,
    }


def print_environment(info: dict) -> None:
    print(f"CPU: {info['cpu']} ({info['cores']} logical cores)")
    print(
        f"Python {info['python']}, NumPy {info['numpy']}, Numba {info['numba']} "
        f"(threading layer: {info['numba_threading_layer']})"
    )
    if "torch" in info:
        print(f"PyTorch {info['torch']} (Adam: {info.get('torch_adam', '?')})")
    if "jax" in info:
        print(f"JAX {info['jax']}")
    print(f"OPENBLAS_CORETYPE={info['env'].get('OPENBLAS_CORETYPE') or '(unset)'}")
    for key, value in info["env"].items():
        if value and key != "OPENBLAS_CORETYPE":
            print(f"{key}={value}")
    for pool in info["blas"]:
        print(
            f"{pool['user_api']}: {pool['internal_api']} {pool['version']} "
            f"kernel={pool['architecture']} default threads={pool['num_threads']} "
            f"({os.path.basename(pool['filepath'] or '')})"
        )


@contextlib.contextmanager
def limit_threads(n: int, torch_module=None):
    """Holds BLAS (every loaded copy), OpenMP, Numba and PyTorch at ``n`` threads."""
    import numba
    from threadpoolctl import threadpool_limits

    _import_blas()
    n_numba = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    old_numba = numba.get_num_threads()
    old_torch = torch_module.get_num_threads() if torch_module is not None else None
    with threadpool_limits(limits=n):
        numba.set_num_threads(n_numba)
        if torch_module is not None:
            torch_module.set_num_threads(n)
        try:
            yield {"blas": n, "numba": n_numba, "torch": n if torch_module else None}
        finally:
            numba.set_num_threads(old_numba)
            if torch_module is not None:
                torch_module.set_num_threads(old_torch)


# ---------------------------------------------------------------------------------------
# Implementations


def fastnn_backends(requested=None) -> tuple[list[str], list[str]]:
    """(backends to run, notes on the ones skipped)."""
    from .. import backend

    notes = []
    names = list(requested) if requested else list(COMPILED_BACKENDS)
    chosen = []
    for name in names:
        if name == "cuda":
            notes.append("fastnn-cuda: skipped (CPU benchmark)")
            continue
        if name not in backend.MODULES:
            raise ValueError(
                f"--backends: unknown backend {name!r}, expected one of {sorted(backend.MODULES)}"
            )
        why = backend.why_unavailable(name)
        if why is None:
            chosen.append(name)
        else:
            notes.append(f"fastnn-{name}: skipped ({why})")
    if not chosen and not requested:
        notes.append("no compiled backend loads: timing fastnn's NumPy reference backend")
        chosen = ["numpy"]
    return chosen, notes


def baseline_modules(requested) -> tuple[dict, list[str]]:
    """{name: imported module or None} of the baselines that can run, and skip notes."""
    mods, notes = {}, []
    for name in requested:
        if name == "numpy":
            mods[name] = None
            continue
        try:
            mods[name] = __import__(name)
        except ImportError:
            notes.append(f"{name}: skipped (not installed)")
    return mods, notes


def batch_size_of(net: str) -> int:
    return rnn_batch_size(net) if net in RNN_NETWORKS else NETWORKS[net][3]


def label_of(net: str) -> str:
    return rnn_label(net) if net in RNN_NETWORKS else network_label(net)


def data_of(net: str, n: int, seed: int):
    """(X, y) of n synthetic samples for network ``net``."""
    if net in RNN_NETWORKS:
        return rnn_data(net, n, seed)
    n_in, _, n_out, _ = NETWORKS[net]
    return synthetic_data(n, n_in, n_out, seed=seed)


def make_impls(net: str, backends, baselines, seed: int = 0) -> dict:
    """name -> object with train_step/train_epoch, all starting from the same weights."""
    from . import baselines as B

    if net in B.CNN or net in RNN_NETWORKS:
        return _layered_impls(net, backends, baselines, seed)

    sizes = network_sizes(net)
    bn = net in B.BATCHNORM
    weights = B.glorot_weights(sizes, seed, batchnorm=bn)
    impls = {}
    for be in backends:
        impls[f"fastnn-{be}"] = B.FastnnMLP(sizes, be, seed, weights, batchnorm=bn)
    if "numpy" in baselines:
        impls["numpy"] = B.NumpyMLP(sizes, seed, batchnorm=bn)
        impls["numpy"].set_weights(weights)
    if "torch" in baselines:
        impls["torch"] = B.TorchMLP(sizes, seed, weights=weights, batchnorm=bn)
    if "jax" in baselines:
        impls["jax"] = B.JaxMLP(sizes, seed, weights=weights, batchnorm=bn)
    return impls


def _layered_impls(net: str, backends, baselines, seed: int) -> dict:
    """make_impls of the convolutional and recurrent networks (JAX from fastnn.bench.jax_nets)."""
    from . import baselines as B

    others = [b for b in baselines if b != "jax"]
    if net in B.CNN:
        from .cnn import fastnn_cnn, make_cnn_impls

        impls = make_cnn_impls(net, backends, others, seed)
        weights = fastnn_cnn(net, "numpy", seed).get_weights() if "jax" in baselines else None
    else:
        from .rnn import rnn_weights

        impls = make_rnn_impls(net, backends, others, seed)
        weights = rnn_weights(net, seed) if "jax" in baselines else None
    if weights is not None:
        from .jax_nets import JaxCNN, JaxRNN

        impls["jax"] = (JaxCNN if net in B.CNN else JaxRNN)(net, weights)
    return impls


def _batch_for(impl, x, y):
    """The batch in the form the implementation's users feed it (tensors for torch/jax)."""
    name = getattr(impl, "name", "")
    if name == "torch":
        return impl.tensors(x, y)
    if name == "jax":
        return impl.jnp.asarray(x), impl.jnp.asarray(y)
    return x, y


class LocalRunner:
    """Times one implementation in this process."""

    def __init__(self, name: str, impl, net: str, data_cache: dict | None = None):
        batch = batch_size_of(net)
        self.name, self.impl, self.net, self.batch = name, impl, net, batch
        self.adam_impl = getattr(impl, "adam_impl", None)
        self.xb, self.yb = _batch_for(impl, *data_of(net, batch, 1))
        self.data_cache = {} if data_cache is None else data_cache

    def warm(self, steps: int) -> None:
        for _ in range(steps):
            self.impl.train_step(self.xb, self.yb)

    def steps(self, k: int) -> float:
        """Seconds per step over k consecutive steps on the same batch."""
        step, xb, yb = self.impl.train_step, self.xb, self.yb
        t0 = time.perf_counter()
        for _ in range(k):
            step(xb, yb)
        return (time.perf_counter() - t0) / k

    def epoch(self, n: int, seed: int) -> float:
        """Seconds for one shuffled epoch over n synthetic samples (data made beforehand)."""
        key = (self.net, n)
        if key not in self.data_cache:
            self.data_cache[key] = data_of(self.net, n, 2)
        X, Y = self.data_cache[key]
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        self.impl.train_epoch(X, Y, self.batch, rng)
        return time.perf_counter() - t0

    def close(self) -> None:
        pass


def _pin_cores(threads: int) -> None:
    """Keeps this process on its first ``threads`` allowed cores: XLA has no thread-count
    setting (its CPU client sizes its pools from the machine), so an isolated JAX worker is
    limited this way."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 0 < threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])


def _worker_main(conn, net: str, name: str, threads: int) -> None:
    """Body of an isolated worker process: builds one implementation, then serves timings."""
    try:
        if name == "jax":
            _pin_cores(threads)
        if name.startswith("fastnn-"):
            impls = make_impls(net, [name[len("fastnn-") :]], {})
        else:
            impls = make_impls(net, [], {name: None})
        torch_mod = impls[name].torch if name == "torch" else None
        with limit_threads(threads, torch_mod):
            runner = LocalRunner(name, impls[name], net)
            info = {
                "adam_impl": getattr(impls[name], "adam_impl", None),
                "numba_threading_layer": numba_threading_layer(),
            }
            conn.send(("ok", info))
            while True:
                op, *args = conn.recv()
                if op == "stop":
                    break
                conn.send(("ok", getattr(runner, op)(*args)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class WorkerRunner:
    """Times one implementation in its own process (no other runtime's threads around)."""

    def __init__(self, ctx, name: str, net: str, threads: int):
        self.name, self.net, self.batch = name, net, batch_size_of(net)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, net, name, threads), daemon=True)
        self.proc.start()
        child.close()
        self.info = self._reply()
        self.adam_impl = self.info["adam_impl"]

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} worker process died") from None
        if status != "ok":
            raise RuntimeError(f"{self.name} worker: {value}")
        return value

    def _call(self, op, *args):
        self.conn.send((op, *args))
        return self._reply()

    def warm(self, steps: int) -> None:
        self._call("warm", steps)

    def steps(self, k: int) -> float:
        return self._call("steps", k)

    def epoch(self, n: int, seed: int) -> float:
        return self._call("epoch", n, seed)

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def start_workers(names, net: str, threads: int) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    runners: dict = {}
    try:
        for name in names:
            runners[name] = WorkerRunner(ctx, name, net, threads)
    except BaseException:
        for r in runners.values():
            r.close()
        raise
    return runners


#: idle seconds before each timing: a runtime's worker threads keep spinning for a while
#: after its last parallel call (OpenBLAS's up to ~0.1 s), and must not steal a core from
#: the next implementation's timing (another process with --isolate)
SETTLE_S = 0.25


def _interleaved(names, repeats):
    """(round, name) pairs: every round times every implementation, the order rotating;
    each pair comes after ``SETTLE_S`` idle seconds."""
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(SETTLE_S)
            yield r, name


def measure_steps(runners: dict, repeats: int, target_s: float, warmup: int = 2) -> dict:
    """name -> list of µs per step, one per interleaved round."""
    ks = {}
    for name, runner in runners.items():
        runner.warm(warmup)
        t1 = runner.steps(1)
        ks[name] = int(min(100000, max(1, math.ceil(target_s / max(t1, 1e-7)))))
    rounds: dict = {name: [] for name in runners}
    for _, name in _interleaved(list(runners), repeats):
        rounds[name].append(runners[name].steps(ks[name]) * 1e6)
    return rounds


def measure_epochs(runners: dict, n: int, repeats: int) -> dict:
    """name -> list of seconds per shuffled epoch of n samples, one per interleaved round."""
    for runner in runners.values():
        runner.epoch(2 * runner.batch, 1)  # warm-up: compile, workspaces
    rounds: dict = {name: [] for name in runners}
    for r, name in _interleaved(list(runners), repeats):
        rounds[name].append(runners[name].epoch(n, r))
    return rounds


# ---------------------------------------------------------------------------------------
# Cold start

#: batches in the fresh process's first fit: step 1 is compared with the median of the rest
COLD_STEPS = 8

_COLD_SCRIPT = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
import fastnn
from fastnn.bench.baselines import BATCHNORM, NETWORKS, fastnn_model, network_sizes, synthetic_data
t1 = time.perf_counter()
net, backend, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sizes = network_sizes(net)
batch = NETWORKS[net][3]
x, y = synthetic_data(steps * batch, sizes[0], sizes[-1])
model = fastnn_model(sizes, backend, batchnorm=net in BATCHNORM)


class StepTimes(fastnn.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times, self.start, self.first_begin = [], 0.0, None

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()
        if self.first_begin is None:
            self.first_begin = self.start

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


timer = StepTimes()
t2 = time.perf_counter()
model.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=False, callbacks=[timer])
t3 = time.perf_counter()
again = StepTimes()  # a second fit in the now warm process: its step 1 has no first calls
model.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=False, callbacks=[again])
print("COLD " + json.dumps({
    "import_s": t1 - t0, "build_s": t2 - t1, "first_fit_s": t3 - t2,
    "setup_s": timer.first_begin - t2, "first_step_s": timer.times[0],
    "later_step_s": statistics.median(timer.times[1:]),
    "second_first_step_s": again.times[0],
    "second_later_step_s": statistics.median(again.times[1:]),
}))
"""


def _cold_run(net: str, backend: str, env: dict, timeout: float = 600) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_SCRIPT, net, backend, str(COLD_STEPS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("COLD "):
            return {**json.loads(line[5:]), "process_s": wall}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"cold-start run of backend {backend} failed: {tail[0]}")


def cold_start(net: str = "a", backends=("numba", "cython")) -> list[dict]:
    """Fresh-process timings in seconds: import, build, the first fit (``COLD_STEPS``
    batches), its setup before step 1 (checks, workspace), step 1 and the median later step;
    then step 1 and the median later step of a second fit in the same process."""
    from .. import backend as _backend

    results = []
    env = dict(os.environ)
    if "numba" in backends and _backend.why_unavailable("numba") is None:
        with tempfile.TemporaryDirectory(prefix="fastnn-numba-cache-") as cache:
            env_n = {**env, "NUMBA_CACHE_DIR": cache}
            results.append({"case": "numba, empty cache", **_cold_run(net, "numba", env_n)})
            results.append({"case": "numba, warm cache", **_cold_run(net, "numba", env_n)})
    if "cython" in backends and _backend.why_unavailable("cython") is None:
        results.append({"case": "cython", **_cold_run(net, "cython", env)})
    for r in results:
        r["network"] = net
    return results


# ---------------------------------------------------------------------------------------
# Report


def format_cold(cold: list[dict]) -> str:
    """The cold-start table: seconds for the process phases, milliseconds for the steps;
    the last column is step 1 / later step of the second fit in the same process."""
    lines = [
        f"Cold start (fresh process; first fit of {COLD_STEPS} batches; step 1 vs the median "
        "of steps 2+; then the same ratio for a second fit in the same process)",
        f"  {'network':<8}{'case':<20}{'import s':>9}{'build s':>9}{'first fit s':>12}"
        f"{'setup ms':>10}{'step 1 ms':>11}{'later ms':>10}{'step 1/later':>14}"
        f"{'2nd fit':>9}",
    ]
    for c in cold:
        lines.append(
            f"  {c['network']:<8}{c['case']:<20}{c['import_s']:>9.2f}{c['build_s']:>9.2f}"
            f"{c['first_fit_s']:>12.2f}{c['setup_s'] * 1e3:>10.2f}"
            f"{c['first_step_s'] * 1e3:>11.3f}{c['later_step_s'] * 1e3:>10.3f}"
            f"{c['first_step_s'] / c['later_step_s']:>13.2f}x"
            f"{c['second_first_step_s'] / c['second_later_step_s']:>8.2f}x"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio_columns(names) -> list[tuple[str, str, str]]:
    """(header, fastnn impl, baseline) for every fastnn backend vs each baseline that ran."""
    cols = []
    for name in names:
        if name.startswith("fastnn-"):
            for base, label in (("numpy", "NumPy"), ("torch", "torch"), ("jax", "JAX")):
                if base in names:
                    cols.append((f"{name[len('fastnn-') :]}/{label}", name, base))
    return cols


def format_table(rows: list[dict], unit: str, title: str) -> str:
    """rows: {network, threads, medians {impl: value}, spread}; a fixed-width table."""
    names = []
    for row in rows:
        names += [n for n in row["medians"] if n not in names]
    ratios = ratio_columns(names)
    header = ["network", "threads", *names, *(h for h, _, _ in ratios), "spread"]
    lines = []
    for row in rows:
        med = row["medians"]
        cells = [label_of(row["network"]), str(row["threads"])]
        cells += [_fmt(med[n]) if n in med else "-" for n in names]
        for _, fast, base in ratios:
            ok = fast in med and base in med and med[base] > 0
            cells.append(f"{med[fast] / med[base]:.2f}x" if ok else "-")
        cells.append(f"{row['spread'] * 100:.0f}%")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = [
        title,
        f"  (times in {unit}; ratio backend/baseline = fastnn-backend time / baseline time, "
        "< 1: fastnn faster; "
        "spread = largest (max-min)/median over the rounds)",
    ]
    out.append(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))
        )
    )
    for cells in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
        )
    return "\n".join(out)


def _summarise(rounds: dict) -> tuple[dict, float]:
    medians = {n: statistics.median(v) for n, v in rounds.items()}
    spread = max(((max(v) - min(v)) / statistics.median(v) for v in rounds.values()), default=0)
    return medians, spread


def write_charts(out_dir: str, step_rows: list[dict], epoch_rows: list[dict]) -> list[str]:
    """Bar charts of time relative to NumPy (absolute times if NumPy was not run)."""
    try:
        from ..plot import bar_chart
    except ImportError as exc:
        raise RuntimeError(
            f"cannot draw the charts: fastnn.plot.bar_chart is missing ({exc})"
        ) from exc
    written = []
    for rows, fname, what in (
        (step_rows, "bench.png", "step"),
        (epoch_rows, "bench_epoch.png", "epoch"),
    ):
        if not rows:
            continue
        labels = [f"{r['network']} {r['threads']}t" for r in rows]
        names = [n for n in rows[0]["medians"]]
        relative = all("numpy" in r["medians"] for r in rows)
        series = {}
        for name in names:
            vals = []
            for r in rows:
                v = r["medians"].get(name, float("nan"))
                vals.append(v / r["medians"]["numpy"] if relative else v)
            series[name] = vals
        ylabel = (
            f"time per {what} relative to NumPy (lower is faster)"
            if relative
            else ("µs per step" if what == "step" else "s per epoch")
        )
        path = os.path.join(out_dir, fname)
        bar_chart(labels, series, path, f"fastnn training {what} time", ylabel)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------
# Command


def _settings(args) -> dict:
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if quick else 5)
    epoch_repeats = args.epoch_repeats if args.epoch_repeats is not None else (1 if quick else 3)
    if repeats < 1 or epoch_repeats < 1:
        raise ValueError("--repeats and --epoch-repeats must be >= 1")
    epoch_samples = getattr(args, "epoch_samples", None)
    if epoch_samples is not None and epoch_samples < 1:
        raise ValueError(f"--epoch-samples must be >= 1, got {epoch_samples}")
    threads = args.threads or ([1] if quick else _threads_default())
    if any(t < 1 for t in threads):
        raise ValueError(f"--threads must be positive, got {threads}")
    networks = args.networks or (["d"] if quick else ["a", "d", "c"])
    return {
        "quick": quick,
        "repeats": repeats,
        "epoch_repeats": epoch_repeats,
        "threads": list(dict.fromkeys(threads)),
        "networks": list(dict.fromkeys(networks)),
        "target_s": 0.005 if quick else 0.2,
        "epoch_batches": 8 if quick else None,
        "epoch_samples": epoch_samples,
    }


def _epoch_samples(cfg: dict, batch: int) -> int:
    """Samples of a timed epoch: --epoch-samples, else 8 batches with --quick, else
    EPOCH_SAMPLES."""
    if cfg["epoch_samples"]:
        return cfg["epoch_samples"]
    return batch * cfg["epoch_batches"] if cfg["epoch_batches"] else EPOCH_SAMPLES


def _row(net, threads, rounds) -> dict:
    medians, spread = _summarise(rounds)
    return {"network": net, "threads": threads, "medians": medians, "spread": spread}


def _records(kind, net, threads, used, rounds, samples, unit) -> list[dict]:
    """JSON records; ``samples`` per timed unit (a step's batch or an epoch's rows)."""
    seconds = 1e-6 if unit == "us" else 1.0
    out = []
    for name, vals in rounds.items():
        med = statistics.median(vals)
        out.append(
            {
                "kind": kind,
                "network": net,
                "threads": threads,
                "impl": name,
                "threads_used": used,
                f"median_{unit}": med,
                f"rounds_{unit}": vals,
                "samples": samples,
                "samples_per_s": samples / (med * seconds),
            }
        )
    return out


def run(args) -> dict:
    cfg = _settings(args)
    backends, notes = fastnn_backends(args.backends)
    mods, base_notes = baseline_modules(args.baselines)
    notes += base_notes
    torch_mod = mods.get("torch")
    meta: dict = {}
    if torch_mod is not None:
        meta["torch"] = torch_mod.__version__
    if "jax" in mods:
        meta["jax"] = mods["jax"].__version__
        notes.append(
            "jax: its worker is pinned to as many cores as threads (XLA has no thread setting)"
            if args.isolate
            else "jax: thread count not limited (XLA decides; --isolate pins its worker)"
        )
    print(
        f"fastnn bench: networks {' '.join(cfg['networks'])}, threads {cfg['threads']}, "
        f"{cfg['repeats']} interleaved rounds" + (" (quick)" if cfg["quick"] else "")
    )
    for note in notes:
        print(f"  note: {note}")
    sys.stdout.flush()

    step_rows, epoch_rows, records = [], [], []
    data_cache: dict = {}
    for net in cfg["networks"]:
        batch = batch_size_of(net)
        impls = {} if args.isolate else make_impls(net, backends, mods)
        names = [f"fastnn-{be}" for be in backends] + list(mods)
        for threads in cfg["threads"]:
            if args.isolate:
                runners = start_workers(names, net, threads)
                for runner in runners.values():
                    meta["numba_threading_layer"] = runner.info["numba_threading_layer"]
                ctx = contextlib.nullcontext({"blas": threads, "numba": threads, "torch": threads})
            else:
                runners = {n: LocalRunner(n, impls[n], net, data_cache) for n in names}
                ctx = limit_threads(threads, torch_mod)
            if "torch" in runners:
                meta["torch_adam"] = runners["torch"].adam_impl
            try:
                with ctx as used:
                    rounds = measure_steps(runners, cfg["repeats"], cfg["target_s"])
                    step_rows.append(_row(net, threads, rounds))
                    records += _records("step", net, threads, used, rounds, batch, "us")
                    if args.epoch:
                        n = _epoch_samples(cfg, batch)
                        e_rounds = measure_epochs(runners, n, cfg["epoch_repeats"])
                        epoch_rows.append(_row(net, threads, e_rounds))
                        records += _records("epoch", net, threads, used, e_rounds, n, "s")
            finally:
                for runner in runners.values():
                    runner.close()
            print(f"  measured {label_of(net)} at {threads} thread(s)")
            sys.stdout.flush()
        del impls

    cold = []
    if args.cold_start:
        print("  cold start: fresh processes (numba empty cache / warm cache, cython) ...")
        sys.stdout.flush()
        for net in (n for n in cfg["networks"] if n not in RNN_NETWORKS):
            cold += cold_start(net, backends if args.backends else COMPILED_BACKENDS)

    info = environment(meta)
    print()
    print_environment(info)
    print()
    reps = cfg["repeats"]
    print(format_table(step_rows, "µs per step", f"Training step (median of {reps} rounds)"))
    if epoch_rows:
        n_ep = cfg["epoch_repeats"]
        print()
        print(format_table(epoch_rows, "s per epoch", f"One epoch (median of {n_ep} rounds)"))
    if cold:
        print()
        print(format_cold(cold))
    result = {"settings": cfg, "environment": info, "results": records, "cold_start": cold}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bench.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {path}")
        try:
            for chart in write_charts(args.out, step_rows, epoch_rows):
                print(f"wrote {chart}")
        except (RuntimeError, AttributeError) as exc:
            print(f"charts not written: {exc}", file=sys.stderr)
    return result
