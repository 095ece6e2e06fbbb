"""The ``fastnn`` command: ``train``, ``evaluate``, ``predict``, ``info`` (and ``bench``).

examples:
fastnn train --dataset digits --epochs 20 --save model.fnn --plot history.png
fastnn train --model cnn                   # a convnet on the digits as 8x8x1 images
fastnn train --dataset data.npz --task regression --loss mae
fastnn evaluate model.fnn                # on the dataset and split train recorded
fastnn predict model.fnn --input x.npy --output y.npy
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
from dataclasses import dataclass, field

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


#: The networks ``fastnn train --model`` builds.
MODELS = ("mlp", "cnn", "lstm")

#: The tasks ``fastnn train --task`` accepts.
TASKS = ("classification", "regression")

#: The most classes ``fastnn train`` accepts from the labels of a .npz file or an MNIST
#: folder when ``--task`` is not given (more are taken only with ``--task classification``).
MAX_GUESSED_CLASSES = 100

_REGRESSION_LOSSES = ("mean_squared_error", "mean_absolute_error")
_CLASSIFICATION_LOSSES = (
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _argument(convert, ok, expected):
    """An argparse type: ``convert(text)`` when ``ok`` accepts it, else the message
    "expected <expected>, got <what came>"."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _argument(int, lambda v: v > 0, "a positive integer")
_positive_float = _argument(float, lambda v: 0 < v < math.inf, "a positive finite number")
_seed = _argument(int, lambda v: 0 <= v < 2**32, "a seed in [0, 2**32)")
_fraction = _argument(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


DATASET_HELP = (
    "digits, iris, breast_cancer, diabetes, linear, spirals, a .npz file holding x_train, "
    "y_train, x_test, y_test, or a folder with the four MNIST IDX files"
)
_DATASET_DEFAULT = " (default: digits)"
BACKEND_HELP = "numba, cython, numpy or cuda (default: fastnn's default backend)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default (unless its help
    already says it, or it has none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        none = action.default is None or action.default is False
        if none or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parser(sub, name, help):
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


def _add_model_options(p):
    """--model and --timesteps of ``fastnn train``."""
    p.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="mlp: Dense(hidden, relu) layers; cnn: the keras.io MNIST convnet (Conv2D 32 -> "
        "MaxPooling2D -> Conv2D 64 -> MaxPooling2D -> Dropout 0.5) on square one-channel "
        "images: the digits (8x8) or an MNIST folder (28x28); lstm: each sample read as a "
        "sequence of --timesteps rows (default: the square root of the features, as 8 rows "
        "of 8 pixels for digits) through LSTM(hidden) layers",
    )
    p.add_argument(
        "--timesteps",
        type=_positive_int,
        default=None,
        help="sequence length of --model lstm (it must divide the number of features)",
    )


def _add_train(sub):
    p = _parser(sub, "train", "train a network on a bundled dataset and print test accuracy")
    d = TRAIN_DEFAULTS
    p.add_argument("--dataset", default=d["dataset"], help=DATASET_HELP + _DATASET_DEFAULT)
    p.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="default: the bundled dataset's task; for a .npz file or an MNIST folder, "
        f"classification of integer labels 0..K-1 (K <= {MAX_GUESSED_CLASSES}, every class "
        "in the training split), otherwise an error asks for --task",
    )
    p.add_argument(
        "--loss",
        default=None,
        help="default: mse for regression; binary_crossentropy for 2 classes, "
        "sparse_categorical_crossentropy for more, categorical_crossentropy for one-hot "
        "targets; mae, categorical_crossentropy or sparse_categorical_crossentropy can "
        "replace them",
    )
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="passes over the data")
    p.add_argument(
        "--batch-size", type=_positive_int, default=d["batch_size"], help="samples per step"
    )
    p.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=[d["hidden"]],
        help=f"hidden layer widths (default: {d['hidden']})",
    )
    _add_model_options(p)
    p.add_argument(
        "--optimizer", default=d["optimizer"], help="sgd, adam, adamw, adagrad, rmsprop, nadam"
    )
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate")
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.add_argument("--seed", type=_seed, default=d["seed"], help="seed of weights, split, shuffle")
    p.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=2, help="0 silent, 1 bar, 2 a line/epoch"
    )
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
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the MPI ranks: mpiexec -n 2 fastnn train --distributed ... "
        "(--batch-size is the global batch; needs pip install 'fastnn-cpu[mpi]')",
    )
    p.set_defaults(func=cmd_train)
    return p


def _add_evaluate(sub):
    p = _parser(sub, "evaluate", "evaluate a saved model on a dataset's test split")
    p.add_argument("model", help="a model file written by fastnn train --save or model.save")
    p.add_argument(
        "--dataset",
        default=None,
        help=DATASET_HELP + " (default: the dataset recorded by fastnn train --save)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="seed of the train/test split (default: the seed fastnn train recorded, else "
        "the model's seed)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=None, help="samples per call (default: 32)"
    )
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.set_defaults(func=cmd_evaluate)


def _add_predict(sub):
    p = _parser(sub, "predict", "run a saved model on the samples of a .npy file")
    p.add_argument("model", help="a model file written by fastnn train --save or model.save")
    p.add_argument("--input", required=True, metavar="X.npy", help="samples, shape (N, ...)")
    p.add_argument("--output", required=True, metavar="Y.npy", help="where to write outputs")
    p.add_argument(
        "--classes",
        action="store_true",
        help="write predicted class indices instead of the model's outputs",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=None, help="samples per call (default: 32)"
    )
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.set_defaults(func=cmd_predict)


@dataclass
class TrainPlan:
    """What ``fastnn train`` builds for a dataset: the task, the loss (its Keras name), the
    output width and activation, and whether integer labels become one-hot rows."""

    task: str
    loss: str
    n_out: int
    activation: str | None
    onehot_labels: bool = False
    metrics: list = field(default_factory=list)


def _squeezed(y):
    import numpy as np

    y = np.asarray(y)
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


def _int_labels(y, arg):
    """``y`` (N,) as int64 labels, or the CLIError saying why it cannot be."""
    import numpy as np

    y = _squeezed(y)
    if y.ndim != 1:
        raise CLIError(f"{arg} must hold one class label per sample, got shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        i = int(np.argmax(np.mod(y, 1) != 0))
        raise CLIError(
            f"classification needs integer class labels, got the value {y[i]} in {arg} "
            f"(index {i}): pass --task regression for numeric targets"
        )
    return y.astype(np.int64)


def _class_count(y_train, y_test, guessing: bool) -> int:
    """The number of classes K of integer labels that are 0..K-1 with training samples for
    every class, or the CLIError that says what is wrong (naming --task when guessing)."""
    import numpy as np

    train, test = _int_labels(y_train, "y_train"), _int_labels(y_test, "y_test")
    both = np.concatenate([train, test])
    low, k = int(both.min()), int(both.max()) + 1
    or_task = "; or pass --task regression if these are numbers" if guessing else ""
    if low < 0:
        raise CLIError(
            f"class labels must be 0..K-1, got the negative label {low}: relabel them to "
            f"0..K-1{or_task}"
        )
    if int(train.min()) > 0:
        raise CLIError(
            f"class labels must be 0..K-1, but y_train's labels run from {int(train.min())} "
            f"to {int(train.max())}: class 0 would be an output that is never right; "
            f"relabel them, e.g. y - {int(train.min())}{or_task}"
        )
    missing = np.flatnonzero(np.bincount(train, minlength=k) == 0)
    if missing.size:
        shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if missing.size > 10 else "")
        which = f"class {shown} has" if missing.size == 1 else f"classes {shown} have"
        raise CLIError(
            f"class labels must be 0..K-1 with training samples for every class, but {which} "
            f"no samples in y_train (labels 0..{k - 1}): relabel them to 0..K-1 without "
            f"gaps{or_task}"
        )
    if k < 2:
        raise CLIError(f"classification needs at least 2 classes, y_train holds only class {k - 1}")
    if guessing and k > MAX_GUESSED_CLASSES:
        raise CLIError(
            f"y_train holds {k} classes (more than {MAX_GUESSED_CLASSES}): pass "
            "--task classification if they are classes, or --task regression"
        )
    return k


def task_for(dataset: str, y_train, y_test) -> str:
    """The task of ``dataset`` when ``--task`` is not given: recorded for the bundled
    datasets (:data:`fastnn.datasets.TASKS`); for a .npz file or an MNIST folder,
    classification only when the targets are integer labels 0..K-1 (K at most
    :data:`MAX_GUESSED_CLASSES`, every class in the training split); otherwise a CLIError
    asks for ``--task``."""
    from fastnn import datasets

    if dataset in datasets.TASKS:
        return datasets.TASKS[dataset]
    y = _squeezed(y_train)
    hint = "pass --task classification or --task regression"
    if y.ndim != 1:
        raise CLIError(f"cannot tell the task from y_train of shape {y.shape}: {hint}")
    if y.dtype.kind not in "biu":
        import numpy as np

        whole = ", all whole numbers" if np.all(np.mod(y, 1) == 0) else ""
        raise CLIError(
            f"cannot tell the task from float targets (y_train dtype {y.dtype}{whole}): {hint}"
        )
    _class_count(y_train, y_test, guessing=True)
    return "classification"


def _loss_name(name):
    import fastnn

    try:
        return fastnn.losses.get(name).name
    except (TypeError, ValueError) as exc:
        raise CLIError("--" + str(exc)) from None


def plan_training(task: str, loss, y_train, y_test, guessing: bool = False) -> TrainPlan:
    """The network output, loss and metrics for ``task`` on these targets, with ``loss``
    (a name) replacing the task's default; a CLIError for a loss that does not fit."""
    import numpy as np

    loss = None if loss is None else _loss_name(loss)
    y = _squeezed(y_train)
    if task == "regression":
        if loss is not None and loss not in _REGRESSION_LOSSES:
            raise CLIError(
                f"--loss {loss} is a classification loss; --task regression needs mse or mae"
            )
        if y.ndim > 2:
            raise CLIError(f"regression targets must be (N,) or (N, outputs), got {y.shape}")
        n_out = 1 if y.ndim == 1 else y.shape[1]
        return TrainPlan("regression", loss or "mean_squared_error", n_out, None, False, ["mae"])
    if loss is not None and loss not in _CLASSIFICATION_LOSSES:
        raise CLIError(
            f"--loss {loss} is a regression loss; --task classification needs "
            + ", ".join(_CLASSIFICATION_LOSSES)
        )
    if y.ndim == 2:  # one row of 0/1 targets per sample: one-hot classes or multi-label
        if not np.isin(y, (0, 1)).all():
            raise CLIError(
                f"classification targets of shape {y.shape} must be 0/1 rows (one-hot or "
                "multi-label): pass --task regression for numeric targets"
            )
        onehot = bool(np.all(y.sum(axis=1) == 1))
        loss = loss or ("categorical_crossentropy" if onehot else "binary_crossentropy")
        if loss == "sparse_categorical_crossentropy":
            raise CLIError(
                f"--loss sparse_categorical_crossentropy needs integer labels of shape (N,), "
                f"y_train has rows of shape {y.shape}: use categorical_crossentropy"
            )
        if loss == "categorical_crossentropy" and not onehot:
            raise CLIError(
                "categorical_crossentropy needs one-hot rows (a single 1 per row), y_train has "
                "rows with several or no 1s: use --loss binary_crossentropy for multi-label "
                "targets"
            )
        if onehot:
            empty = np.flatnonzero(y.sum(axis=0) == 0)
            if empty.size:
                raise CLIError(
                    f"class {int(empty[0])} (column {int(empty[0])} of y_train) has no training "
                    "samples: it would be an output that is never right"
                )
        act = "softmax" if loss == "categorical_crossentropy" else "sigmoid"
        return TrainPlan("classification", loss, y.shape[1], act, False, ["accuracy"])
    k = _class_count(y_train, y_test, guessing)
    loss = loss or ("binary_crossentropy" if k == 2 else "sparse_categorical_crossentropy")
    if loss == "binary_crossentropy":
        if k != 2:
            raise CLIError(
                f"--loss binary_crossentropy needs 2 classes (labels 0 and 1), got {k} "
                "classes: use sparse_categorical_crossentropy"
            )
        return TrainPlan("classification", loss, 1, "sigmoid", False, ["accuracy"])
    onehot = loss == "categorical_crossentropy"
    return TrainPlan("classification", loss, k, "softmax", onehot, ["accuracy"])


def _sequence_layers(features, hidden, timesteps):
    """Reshape to (timesteps, features // timesteps) then LSTM(h)... (every one but the last
    returning sequences)."""
    from fastnn.layers import LSTM, Reshape

    if timesteps is None:
        timesteps = int(round(features**0.5))
        if timesteps * timesteps != features:
            raise ValueError(
                f"--model lstm reads each sample as rows: give --timesteps, a divisor of the "
                f"{features} features (the default, their square root, is not an integer)"
            )
    if features % timesteps:
        raise ValueError(f"--timesteps must divide the {features} features, got {timesteps}")
    layers = [Reshape((timesteps, features // timesteps))]
    last = len(hidden) - 1
    return layers + [LSTM(h, return_sequences=i < last) for i, h in enumerate(hidden)]


def build_for(plan: TrainPlan, x_train, hidden, seed, backend, model="mlp", timesteps=None):
    """The CLI's network for a plan: Normalization (adapted on ``x_train``, so that the
    model takes raw features) -> Dense(hidden, relu)... (or, for ``model="lstm"``, the
    features read as ``timesteps`` rows through LSTM layers) -> the plan's output layer."""
    import fastnn
    from fastnn.layers import Dense, Normalization

    norm = Normalization(name="normalization")
    norm.adapt(x_train)
    mean, variance = norm.get_weights()
    variance[variance == 0] = 1  # a constant feature passes through centred, not divided by 0
    norm.set_weights([mean, variance])
    layers = [fastnn.Input(shape=(x_train.shape[1],)), norm]
    if model == "lstm":
        layers += _sequence_layers(x_train.shape[1], hidden, timesteps)
    else:
        layers += [Dense(h, activation="relu") for h in hidden]
    layers.append(Dense(plan.n_out, activation=plan.activation))
    return fastnn.Sequential(layers, seed=seed, backend=backend)


def image_shape(x_train, dataset) -> tuple:
    """(side, side, 1) of flattened square one-channel images, or a CLIError."""
    side = math.isqrt(x_train.shape[1])
    if side * side != x_train.shape[1] or side < 4:
        raise CLIError(
            f"--model cnn needs square one-channel images (the digits, an MNIST folder), but "
            f"{dataset!r} has {x_train.shape[1]} features per sample"
        )
    return side, side, 1


def build_cnn(plan: TrainPlan, x_train, seed, backend):
    """The keras.io convnet for images x_train (N, H, W, 1) after a Normalization (adapted
    on them, so that the model takes raw pixels); 'same' convolutions below 16x16."""
    import fastnn
    from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Normalization

    norm = Normalization(name="normalization")
    norm.adapt(x_train)
    padding = "same" if x_train.shape[1] < 16 else "valid"
    layers = [
        fastnn.Input(shape=x_train.shape[1:]),
        norm,
        Conv2D(32, 3, padding=padding, activation="relu"),
        MaxPooling2D(2),
        Conv2D(64, 3, padding=padding, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dropout(0.5),
        Dense(plan.n_out, activation=plan.activation),
    ]
    return fastnn.Sequential(layers, seed=seed, backend=backend)


def as_model_input(model, x):
    """Flattened samples reshaped to the model's image input shape (a CNN); else x."""
    shape = model.input_shape
    if shape is not None and len(shape) > 1 and x.ndim == 2 and x.shape[1] == math.prod(shape):
        return x.reshape(len(x), *shape)
    return x


def _target_scaler(y_train):
    """{"target_mean", "target_std"} of regression targets (per output, std 1 for a constant
    one): ``fastnn train`` trains on (y - mean) / std and records both, so that evaluate
    scores in the same units and predict answers in the data's own."""
    import numpy as np

    y = np.asarray(y_train, dtype=np.float64).reshape(len(y_train), -1)
    std = y.std(axis=0)
    std[std == 0] = 1
    return {"target_mean": y.mean(axis=0).tolist(), "target_std": std.tolist()}


def _scaled_targets(y, record, inverse=False):
    """Regression targets in the units the model was trained in (or, ``inverse``, model
    outputs back in the data's units), when ``record`` holds a target scaler."""
    import numpy as np

    if "target_mean" not in record:
        return y
    mean, std = (np.asarray(record[k], dtype=np.float64) for k in ("target_mean", "target_std"))
    y = np.asarray(y, dtype=np.float64)
    shaped = y.reshape(len(y), -1)
    out = shaped * std + mean if inverse else (shaped - mean) / std
    return out.reshape(y.shape)


def targets_for(model, y):
    """``y`` as the model's loss takes it: integer labels become one-hot rows for
    categorical_crossentropy (out-of-range labels raise a ValueError)."""
    import numpy as np

    import fastnn

    labels = _squeezed(y)
    if isinstance(model.loss, fastnn.losses.CategoricalCrossentropy) and labels.ndim == 1:
        return fastnn.losses.sparse_to_onehot(labels, model.output_dim, np.float32, "y")
    return y


def load_dataset(name, seed, raw=True):
    """(train, test) splits of a dataset: a bundled name, a .npz file or an MNIST folder.
    Samples come back as 2-D float32 (N, features): raw (``datasets.RAW``; the models
    ``fastnn train`` builds start with a Normalization layer), or with ``raw=False`` as the
    bundled loaders scale them by default (models saved before the layer existed)."""
    import numpy as np

    from fastnn import datasets

    if name in datasets.LOADERS:
        kwargs = datasets.RAW[name] if raw else {}
        (x_tr, y_tr), (x_te, y_te) = datasets.LOADERS[name](seed=seed, **kwargs)
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


def _recorded_name(dataset: str) -> str:
    """How train records ``dataset``: a bundled name as is, a file or folder absolute."""
    from fastnn import datasets

    return dataset if dataset in datasets.LOADERS else os.path.abspath(dataset)


def cmd_train(args):
    """``fastnn train``; with ``--distributed`` data-parallel over the MPI ranks, rank 0
    alone printing and writing files."""
    dp = None
    if getattr(args, "distributed", False):
        from .distributed import DataParallel, set_distribution

        dp = DataParallel()
        set_distribution(dp)
    with contextlib.ExitStack() as stack:
        if dp is not None and not dp.is_primary:
            devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            stack.enter_context(contextlib.redirect_stdout(devnull))
        try:
            return _train(args, dp)
        finally:
            if dp is not None:
                set_distribution(None)


def _train(args, dp):
    import fastnn

    if args.loss is not None:
        _loss_name(args.loss)  # an unknown name fails before the data is loaded
    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.seed)
    guessing = args.task is None
    task = args.task or task_for(args.dataset, y_train, y_test)
    plan = plan_training(task, args.loss, y_train, y_test, guessing=guessing)
    if args.model == "cnn":
        shape = image_shape(x_train, args.dataset)
        x_train, x_test = x_train.reshape(-1, *shape), x_test.reshape(-1, *shape)
        model = build_cnn(plan, x_train, args.seed, args.backend)
    else:
        model = build_for(plan, x_train, args.hidden, args.seed, args.backend, args.model,
                          args.timesteps)  # fmt: skip
    opt = fastnn.optimizers.get(args.optimizer)
    opt.learning_rate = args.lr
    model.compile(optimizer=opt, loss=plan.loss, metrics=plan.metrics)
    record = {
        "dataset": _recorded_name(args.dataset),
        "task": plan.task,
        "seed": args.seed,
        "loss": plan.loss,
    }
    if plan.task == "regression":
        record.update(_target_scaler(y_train))
    y_train, y_test = (targets_for(model, _scaled_targets(y, record)) for y in (y_train, y_test))
    model.metadata = {"cli": record}
    if args.plot:
        from fastnn import plot

        plot.require()  # fail on a missing matplotlib before training
        _check_folder(args.plot)
    if args.save:
        _check_folder(args.save)
    print(
        f"Training on {args.dataset} ({plan.task}, {plan.loss}): {len(x_train)} train / "
        f"{len(x_test)} test samples, backend {model.backend_name}"
        + (f", data-parallel on {dp.size} MPI ranks" if dp is not None else "")
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
    if args.plot and (dp is None or dp.is_primary):
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


def _train_record(model) -> dict:
    """What ``fastnn train --save`` recorded in the model file (empty if nothing)."""
    meta = getattr(model, "metadata", None)
    record = meta.get("cli") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else {}


def _takes_raw_features(model) -> bool:
    """Whether the model standardises its own features (a Normalization first, as every
    model ``fastnn train`` builds now has); older CLI models were trained on the bundled
    loaders' scaled features."""
    from fastnn.layers import Normalization

    return bool(model.layers) and isinstance(model.layers[0], Normalization)


def cmd_evaluate(args):
    model = _load_model(args.model, args.backend)
    if model.optimizer is None:
        raise CLIError(f"{args.model!r} holds an uncompiled model: it has no loss to evaluate")
    record = _train_record(model)
    dataset = args.dataset
    if dataset is None:
        dataset = record.get("dataset")
        if not isinstance(dataset, str):
            raise CLIError(
                f"{args.model!r} records no dataset (it was not written by fastnn train "
                "--save): pass --dataset"
            )
    seed = args.seed
    if seed is None:
        recorded = record.get("seed")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            seed = recorded
        else:
            seed = model.seed if model.seed is not None else 0
    _, (x_test, y_test) = load_dataset(dataset, seed, raw=_takes_raw_features(model))
    y_test = targets_for(model, _scaled_targets(y_test, record))
    x_test = as_model_input(model, x_test)
    results = model.evaluate(x_test, y_test, batch_size=args.batch_size, return_dict=True)
    print(f"Evaluating {args.model} on {dataset}: {len(x_test)} test samples")
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
    shape = model.input_shape
    if x.ndim > 2 and shape is not None and len(shape) == 1:
        x = x.reshape(len(x), -1)
    x = as_model_input(model, x)
    _check_folder(args.output)
    y = model.predict(x, batch_size=args.batch_size)
    if args.classes:
        y = (y[:, 0] > 0.5).astype(np.int64) if y.shape[1] == 1 else np.argmax(y, axis=1)
    else:  # regression outputs back in the units of the data train saw
        y = _scaled_targets(y, _train_record(model), inverse=True).astype(y.dtype)
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
    from .distributed import mpi_status

    print(f"MPI: {mpi_status()}")
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


BENCH_HELP = "measure training speed vs NumPy / PyTorch and print ratios"


def make_parser(bench: bool = False) -> argparse.ArgumentParser:
    """The command's parser; ``bench`` registers ``fastnn bench``'s options, which needs the
    benchmark package (imported only then), else a placeholder that lists the command."""
    parser = argparse.ArgumentParser(
        prog="fastnn", description=__doc__.replace("``", ""), formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _parser(sub, "info", "version, backends, threads and BLAS").set_defaults(func=cmd_info)
    if bench:
        from . import bench as bench_package

        bench_package.add_parser(sub)
    else:
        sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(bench=bool(argv) and argv[0] == "bench")
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastnn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # NonFiniteLossError: the run diverged, not a usage error
        message = " ".join(str(exc).split())
        print(f"fastnn {args.command}: training diverged: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
