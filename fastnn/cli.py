"""The ``fastnn`` command: ``train``, ``info`` (and more subcommands registered below)."""

from __future__ import annotations

import argparse
import os
import platform
import sys

#: Defaults of ``fastnn train`` (Dense(128, relu) -> Dense(out) with Adam on digits).
TRAIN_DEFAULTS = {
    "dataset": "digits",
    "epochs": 20,
    "batch_size": 32,
    "hidden": 128,
    "optimizer": "adam",
    "lr": 0.003,
    "seed": 0,
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_train(sub):
    p = sub.add_parser("train", help="train a network on a bundled dataset and print test accuracy")
    d = TRAIN_DEFAULTS
    p.add_argument(
        "--dataset",
        default=d["dataset"],
        help="digits, iris, breast_cancer, diabetes, linear, spirals (default digits)",
    )
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"])
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    p.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=[d["hidden"]],
        help="hidden layer widths (default 128)",
    )
    p.add_argument("--optimizer", default=d["optimizer"], help="sgd, adam, adamw, adagrad, rmsprop")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate")
    p.add_argument("--backend", default=None, help="numba, cython, numpy or cuda")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    p.set_defaults(func=cmd_train)
    return p


def _task_of(y):
    import numpy as np

    y = np.asarray(y)
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        return "regression", 1
    n_classes = int(y.max()) + 1
    return ("binary", 1) if n_classes == 2 else ("multiclass", n_classes)


def build_for(task, n_out, input_dim, hidden, seed, backend):
    """The CLI's network for a task: Dense(hidden, relu)... -> task-appropriate output."""
    import fastnn
    from fastnn.layers import Dense

    layers = [Dense(hidden[0], activation="relu", input_dim=input_dim)]
    layers += [Dense(h, activation="relu") for h in hidden[1:]]
    out_act = {"regression": None, "binary": "sigmoid", "multiclass": "softmax"}[task]
    layers.append(Dense(n_out, activation=out_act))
    return fastnn.Sequential(layers, seed=seed, backend=backend)


def loss_for(task):
    return {
        "regression": "mse",
        "binary": "binary_crossentropy",
        "multiclass": "sparse_categorical_crossentropy",
    }[task]


def load_dataset(name, seed):
    """(train, test) splits of a dataset name."""
    from fastnn import datasets

    if name not in datasets.LOADERS:
        from fastnn._names import unknown_name_error

        raise CLIError(str(unknown_name_error("--dataset", name, datasets.LOADERS)))
    return datasets.LOADERS[name](seed=seed)


def cmd_train(args):
    import fastnn

    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.seed)
    task, n_out = _task_of(y_train)
    model = build_for(task, n_out, x_train.shape[1], args.hidden, args.seed, args.backend)
    opt = fastnn.optimizers.get(args.optimizer)
    opt.learning_rate = args.lr
    metrics = ["mae"] if task == "regression" else ["accuracy"]
    model.compile(optimizer=opt, loss=loss_for(task), metrics=metrics)
    print(
        f"Training on {args.dataset}: {len(x_train)} train / {len(x_test)} test samples, "
        f"backend {model.backend_name}"
    )
    model.fit(
        x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
    )
    results = model.evaluate(x_test, y_test, return_dict=True)
    for key, value in results.items():
        print(f"test {key}: {value:.4f}")
    return model, results


def cmd_info(args):
    import fastnn
    from fastnn import backend

    print(
        f"fastnn {fastnn.__version__} on Python {platform.python_version()} ({platform.machine()})"
    )
    print(f"default backend: {backend.get_backend()}")
    for name in backend.MODULES:
        why = backend.why_unavailable(name)
        print(f"  {name:<7} {'available' if why is None else 'unavailable: ' + why}")
    _print_threads()


def _print_threads():
    import numba
    from threadpoolctl import threadpool_info

    try:
        import scipy.linalg.cython_blas  # noqa: F401 - SciPy's BLAS joins the report
    except ImportError:
        pass
    layer = "not initialised yet"
    try:
        layer = numba.threading_layer()
    except ValueError:
        pass
    print(f"numba {numba.__version__}: threads {numba.get_num_threads()}, threading layer {layer}")
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY"):
        if os.environ.get(var):
            print(f"{var}={os.environ[var]}")
    for pool in threadpool_info():
        print(
            f"BLAS/OpenMP: {pool.get('internal_api')} {pool.get('version')} "
            f"threads={pool.get('num_threads')} kernel={pool.get('architecture')} "
            f"({os.path.basename(pool.get('filepath', ''))})"
        )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    sub.add_parser("info", help="version, backends, threads and BLAS").set_defaults(func=cmd_info)
    from . import bench

    bench.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"fastnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
