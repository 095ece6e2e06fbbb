"""The ``fastnn`` command: ``train``, ``evaluate``, ``predict``, ``info`` (and ``bench``).

fastnn train --dataset digits --epochs 20 --save model.fnn --plot history.png
fastnn evaluate model.fnn --dataset digits
fastnn predict model.fnn --input x.npy --output y.npy
"""

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


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


DATASET_HELP = (
    "digits, iris, breast_cancer, diabetes, linear, spirals, a .npz file holding x_train, "
    "y_train, x_test, y_test, or a folder with the four MNIST IDX files (default digits)"
)


def _add_train(sub):
    p = sub.add_parser("train", help="train a network on a bundled dataset and print test accuracy")
    d = TRAIN_DEFAULTS
    p.add_argument("--dataset", default=d["dataset"], help=DATASET_HELP)
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
    p.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.0,
        help="fraction of the training samples (the last ones) held out for validation",
    )
    p.add_argument("--save", metavar="MODEL.fnn", help="write the trained model to this file")
    p.add_argument(
        "--plot", metavar="HISTORY.png", help="plot loss and metrics per epoch to this image"
    )
    p.set_defaults(func=cmd_train)
    return p


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset's test split")
    p.add_argument("model", help="a model file written by fastnn train --save or model.save")
    p.add_argument("--dataset", default=TRAIN_DEFAULTS["dataset"], help=DATASET_HELP)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the train/test split (default: the model's seed, as fastnn train used)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--backend", default=None, help="numba, cython, numpy or cuda")
    p.set_defaults(func=cmd_evaluate)


def _add_predict(sub):
    p = sub.add_parser("predict", help="run a saved model on the samples of a .npy file")
    p.add_argument("model", help="a model file written by fastnn train --save or model.save")
    p.add_argument("--input", required=True, metavar="X.npy", help="samples, shape (N, ...)")
    p.add_argument("--output", required=True, metavar="Y.npy", help="where to write outputs")
    p.add_argument(
        "--classes",
        action="store_true",
        help="write predicted class indices instead of the model's outputs",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--backend", default=None, help="numba, cython, numpy or cuda")
    p.set_defaults(func=cmd_predict)


def _task_of(y):
    import numpy as np

    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:  # one row of targets per sample: one-hot classes or several outputs
        onehot = np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1)
        return ("onehot", y.shape[1]) if onehot else ("regression", y.shape[1])
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
    acts = {"regression": None, "binary": "sigmoid", "multiclass": "softmax", "onehot": "softmax"}
    out_act = acts[task]
    layers.append(Dense(n_out, activation=out_act))
    return fastnn.Sequential(layers, seed=seed, backend=backend)


def loss_for(task):
    return {
        "regression": "mse",
        "binary": "binary_crossentropy",
        "multiclass": "sparse_categorical_crossentropy",
        "onehot": "categorical_crossentropy",
    }[task]


def load_dataset(name, seed):
    """(train, test) splits of a dataset: a bundled name, a .npz file or an MNIST folder.
    Samples come back as 2-D float32 (N, features)."""
    import numpy as np

    from fastnn import datasets

    if name in datasets.LOADERS:
        (x_tr, y_tr), (x_te, y_te) = datasets.LOADERS[name](seed=seed)
    elif name.endswith(".npz") or os.path.isfile(name):
        if not os.path.isfile(name):
            raise CLIError(f"--dataset: no such file {name!r}")
        (x_tr, y_tr), (x_te, y_te) = datasets.load_npz(name)
    elif os.path.isdir(name):
        (x_tr, y_tr), (x_te, y_te) = datasets.load_mnist(name)
    else:
        from fastnn._names import unknown_name_error

        msg = str(unknown_name_error("--dataset", name, datasets.LOADERS))
        raise CLIError(msg.replace(", got", ", a .npz file or an MNIST folder, got", 1))

    def features(x):
        x = np.asarray(x)
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)

    return (features(x_tr), y_tr), (features(x_te), y_te)


def cmd_train(args):
    import fastnn

    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.seed)
    task, n_out = _task_of(y_train)
    model = build_for(task, n_out, x_train.shape[1], args.hidden, args.seed, args.backend)
    opt = fastnn.optimizers.get(args.optimizer)
    opt.learning_rate = args.lr
    metrics = ["mae"] if task == "regression" else ["accuracy"]
    model.compile(optimizer=opt, loss=loss_for(task), metrics=metrics)
    if args.plot:
        from fastnn import plot

        plot.require()  # fail on a missing matplotlib before training
        _check_folder(args.plot)
    if args.save:
        _check_folder(args.save)
    print(
        f"Training on {args.dataset}: {len(x_train)} train / {len(x_test)} test samples, "
        f"backend {model.backend_name}"
    )
    history = model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
        validation_split=args.validation_split,
    )
    results = model.evaluate(x_test, y_test, return_dict=True)
    _print_results(results)
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    if args.plot:
        from fastnn import plot

        plot.history(history, args.plot, title=f"fastnn train --dataset {args.dataset}")
        print(f"saved plot to {args.plot}")
    return model, results


def _print_results(results):
    for key, value in results.items():
        print(f"test {key}: {value:.4f}")


def _check_folder(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"folder {folder!r} of {path!r} does not exist")


def _load_model(path, backend):
    import fastnn

    if not os.path.isfile(path):
        raise CLIError(f"no such model file: {path!r}")
    return fastnn.load_model(path, backend=backend)


def cmd_evaluate(args):
    model = _load_model(args.model, args.backend)
    if model.optimizer is None:
        raise CLIError(f"{args.model!r} holds an uncompiled model: it has no loss to evaluate")
    seed = args.seed if args.seed is not None else (model.seed if model.seed is not None else 0)
    _, (x_test, y_test) = load_dataset(args.dataset, seed)
    results = model.evaluate(x_test, y_test, batch_size=args.batch_size, return_dict=True)
    print(f"Evaluating {args.model} on {args.dataset}: {len(x_test)} test samples")
    _print_results(results)
    return results


def cmd_predict(args):
    import numpy as np

    model = _load_model(args.model, args.backend)
    if not os.path.isfile(args.input):
        raise CLIError(f"--input: no such file {args.input!r}")
    try:
        x = np.load(args.input, allow_pickle=False)
    except ValueError as exc:
        raise CLIError(f"--input {args.input!r} is not a numeric .npy array ({exc})") from None
    if not isinstance(x, np.ndarray):
        raise CLIError(f"--input {args.input!r} must be a .npy array, not an archive")
    if x.ndim >= 2:
        x = x.reshape(len(x), -1)
    _check_folder(args.output)
    y = model.predict(x, batch_size=args.batch_size)
    if args.classes:
        y = (y[:, 0] > 0.5).astype(np.int64) if y.shape[1] == 1 else np.argmax(y, axis=1)
    np.save(args.output, y, allow_pickle=False)
    print(f"wrote predictions of shape {y.shape} to {args.output}")
    return y


def cmd_info(args):
    import fastnn
    from fastnn import backend

    print(
        f"fastnn {fastnn.__version__} on Python {platform.python_version()} ({platform.machine()})"
    )
    print(f"default backend: {backend.get_backend()}")
    for name in backend.MODULES:
        why = backend.why_unavailable(name)
        state = "available" if why is None else "unavailable: " + why
        if name == "cython" and why is None:
            state += f" ({backend.cython_simd()} build)"
        print(f"  {name:<7} {state}")
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
    _add_evaluate(sub)
    _add_predict(sub)
    sub.add_parser("info", help="version, backends, threads and BLAS").set_defaults(func=cmd_info)
    from . import bench

    bench.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastnn {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
