"""The fastnn command: train/evaluate/predict, in-process through fastnn.cli.main."""

import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import cli, datasets

BACKEND = ["--backend", "numpy"]


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _value(out, key):
    lines = [line for line in out.splitlines() if line.startswith(f"test {key}: ")]
    assert len(lines) == 1, out
    return lines[0].split(": ")[1]


def test_train_save_plot_then_evaluate_prints_the_same_accuracy(tmp_path, capsys):
    model_path, plot_path = tmp_path / "m.fnn", tmp_path / "h.png"
    code, out, err = _run(
        capsys, "train", "--dataset", "digits", "--epochs", "3", "--save", str(model_path),
        "--plot", str(plot_path), *BACKEND,
    )  # fmt: skip
    assert code == 0, err
    assert model_path.is_file()
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = _value(out, "accuracy")
    assert float(accuracy) > 0.8
    code, out2, err = _run(capsys, "evaluate", str(model_path), "--dataset", "digits", *BACKEND)
    assert code == 0, err
    assert _value(out2, "accuracy") == accuracy
    assert _value(out2, "loss") == _value(out, "loss")


def test_train_lstm_reads_digits_as_rows_and_evaluates_the_same(tmp_path, capsys):
    path = tmp_path / "lstm.fnn"
    code, out, err = _run(capsys, "train", "--dataset", "digits", "--model", "lstm",
                          "--hidden", "32", "--epochs", "3", "--lr", "0.01", "--save", str(path),
                          *BACKEND)  # fmt: skip
    assert code == 0, err
    assert float(_value(out, "accuracy")) > 0.8
    model = fastnn.load_model(path, backend="numpy")
    assert [type(layer).__name__ for layer in model.layers][-3:] == ["Reshape", "LSTM", "Dense"]
    assert model.layers[-2].input_shape == (8, 8)
    code, out2, err = _run(capsys, "evaluate", str(path), "--dataset", "digits", *BACKEND)
    assert code == 0, err
    assert _value(out2, "accuracy") == _value(out, "accuracy")


def test_train_validation_split(capsys):
    code, out, _ = _run(capsys, "train", "--dataset", "iris", "--epochs", "2",
                        "--validation-split", "0.2", *BACKEND)  # fmt: skip
    assert code == 0
    assert "val_loss" in out and "val_accuracy" in out


def test_evaluate_uses_the_models_seed_for_the_split(tmp_path, capsys):
    path = tmp_path / "m.fnn"
    code, out, _ = _run(capsys, "train", "--dataset", "iris", "--epochs", "3", "--seed", "5",
                        "--save", str(path), *BACKEND)  # fmt: skip
    assert code == 0
    code, out2, _ = _run(capsys, "evaluate", str(path), "--dataset", "iris", *BACKEND)
    assert _value(out2, "loss") == _value(out, "loss")


def test_predict(tmp_path, capsys):
    path = tmp_path / "m.fnn"
    assert cli.main(["train", "--dataset", "iris", "--epochs", "2", "--save", str(path),
                     *BACKEND]) == 0  # fmt: skip
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    code, _, err = _run(capsys, "predict", str(path), "--input", str(tmp_path / "x.npy"),
                        "--output", str(out), *BACKEND)  # fmt: skip
    assert code == 0, err
    model = fastnn.load_model(path, backend="numpy")
    np.testing.assert_array_equal(np.load(out), model.predict(x))
    code, _, _ = _run(capsys, "predict", str(path), "--input", str(tmp_path / "x.npy"),
                      "--output", str(out), "--classes", *BACKEND)  # fmt: skip
    np.testing.assert_array_equal(np.load(out), model.predict(x).argmax(1))


@pytest.mark.parametrize("onehot", [True, False])
def test_train_on_npz_with_two_dimensional_targets(tmp_path, capsys, onehot):
    """With --task, one-hot rows train a softmax classifier and other 2-D targets a
    multi-output regression; float targets are never guessed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    labels = np.argmax(x[:, :3], axis=1)
    y = np.eye(3, dtype=np.float32)[labels] if onehot else np.c_[x[:, 0], 2 * x[:, 1]]
    np.savez(tmp_path / "d.npz", x_train=x[:70], y_train=y[:70], x_test=x[70:], y_test=y[70:])
    argv = ["train", "--dataset", str(tmp_path / "d.npz"), "--epochs", "2", "--verbose", "0"]
    code, _, err = _run(capsys, *argv, *BACKEND)
    assert code == 2 and "--task" in err
    task = "classification" if onehot else "regression"
    code, out, err = _run(capsys, *argv, "--task", task, *BACKEND)
    assert code == 0, err
    assert ("test accuracy" in out) == onehot and ("test mae" in out) != onehot


def test_train_on_npz_and_mnist_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    code, out, err = _run(capsys, "train", "--dataset", str(tmp_path / "d.npz"), "--epochs", "2",
                          *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "60 train / 20 test" in out and "test accuracy" in out
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for key, stem in datasets.MNIST_FILES.items():
        n = 30 if "train" in key else 10
        shape = (n, 28, 28) if key.startswith("x") else (n,)
        high = 256 if key.startswith("x") else 10
        datasets.save_idx(mnist / (stem + ".gz"), rng.integers(0, high, shape, dtype=np.uint8))
    code, out, err = _run(capsys, "train", "--dataset", str(mnist), "--epochs", "1",
                          "--hidden", "8", *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "30 train / 10 test" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nosuch"], "--dataset must be one of"),
        (["train", "--dataset", "missing.npz"], "no such file"),
        (["train", "--dataset", "iris", "--optimizer", "adamm"], "Did you mean 'adam'"),
        (["train", "--dataset", "iris", "--save", "/no/such/dir/m.fnn"], "does not exist"),
        (["train", "--dataset", "breast_cancer", "--model", "lstm"], "give --timesteps"),
        (
            ["train", "--dataset", "iris", "--model", "lstm", "--timesteps", "3"],
            "--timesteps must divide the 4 features",
        ),
        (["evaluate", "missing.fnn"], "no such model file"),
        (["predict", "missing.fnn", "--input", "x.npy", "--output", "y.npy"], "no such model"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv, *BACKEND)
    assert code != 0
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith(f"fastnn {argv[0]}: error: ")


def test_library_errors_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.fnn"
    garbage.write_bytes(b"\x00" * 100)
    code, _, err = _run(capsys, "evaluate", str(garbage), *BACKEND)
    assert code == 2 and err.count("\n") == 1 and "not a fastnn model file" in err
    path = tmp_path / "m.fnn"
    assert cli.main(["train", "--dataset", "iris", "--epochs", "1", "--save", str(path),
                     *BACKEND]) == 0  # fmt: skip
    capsys.readouterr()
    np.save(tmp_path / "wide.npy", np.zeros((3, 5), np.float32))
    code, _, err = _run(capsys, "predict", str(path), "--input", str(tmp_path / "wide.npy"),
                        "--output", str(tmp_path / "y.npy"), *BACKEND)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "4 features" in err
    code, _, err = _run(capsys, "evaluate", str(path), "--dataset", "digits", *BACKEND)
    assert code == 2 and err.count("\n") == 1


def test_bad_argument_values_exit_2(capsys):
    seed = "seed in [0, 2**32)"
    for argv, message in ((["train", "--epochs", "0"], "positive integer"),
                          (["train", "--lr", "inf"], "positive finite number"),
                          (["train", "--seed", "-1"], seed),
                          (["evaluate", "m.fnn", "--seed", "-3"], seed)):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_a_diverging_run_ends_with_one_line_and_status_1(capsys):
    code, _, err = _run(capsys, "train", "--epochs", "2", "--optimizer", "sgd", "--lr", "1e38",
                        "--verbose", "0", *BACKEND)  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fastnn train: training diverged: ")


def test_unknown_dataset_in_a_subprocess_prints_one_line_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.cli", "train", "--dataset", "nosuch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "--dataset must be one of" in lines[0]


def test_commands_are_registered():
    parser = cli.make_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "evaluate", "predict", "info", "bench"} <= set(sub.choices)


# -- plots (fastnn.plot, used by train --plot and the benchmarks) -------------------------
def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from fastnn import plot

    png = b"\x89PNG\r\n\x1a\n"
    hist = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "mae": [0.9, 0.4]}
    assert plot.history(hist, tmp_path / "h.png") == str(tmp_path / "h.png")
    x = np.linspace(-1, 1, 20)[:, None]
    plot.predictions(x, 2 * x[:, 0] + 1, 2 * x[:, 0] + 0.9, tmp_path / "p.png", true_line=(2, 1))
    series = {"numpy": [1.0, 1.0, 1.0], "numba": [5.0, None, 9.5]}
    plot.bar_chart(["a", "b", "c"], series, tmp_path / "b.png", title="t", ylabel="x")
    for name in ("h.png", "p.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == png
    with pytest.raises(ValueError, match="3 labels"):
        plot.bar_chart(["a", "b", "c"], {"numpy": [1.0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no epochs"):
        plot.history({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one input feature"):
        plot.predictions(np.zeros((3, 2)), [1, 2, 3], [1, 2, 3], tmp_path / "x.png")


def test_missing_matplotlib_is_a_clear_one_line_error(monkeypatch, capsys, tmp_path):
    from fastnn import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install"):
        plot.require()
    assert not plot.available()
    code, out, err = _run(capsys, "train", "--dataset", "iris", "--plot", str(tmp_path / "h.png"),
                          *BACKEND)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "matplotlib" in err
    assert "Training" not in out  # refused before training


# -- the task: recorded for bundled datasets, never guessed from doubtful labels --------
def _npz(tmp_path, y_train, y_test, name="d.npz", d=3):
    rng = np.random.default_rng(0)
    x_tr = rng.normal(size=(len(y_train), d)).astype(np.float32)
    x_te = rng.normal(size=(len(y_test), d)).astype(np.float32)
    path = tmp_path / name
    np.savez(path, x_train=x_tr, y_train=y_train, x_test=x_te, y_test=y_test)
    return str(path)


def _refused(capsys, *argv, words=()):
    code, out, err = _run(capsys, *argv, *BACKEND)
    assert code == 2, out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "Training" not in out  # refused before any model was built
    for word in words:
        assert word in err, err
    return err


def test_bundled_datasets_record_their_task():
    assert set(datasets.TASKS) == set(datasets.LOADERS)
    assert {n for n, t in datasets.TASKS.items() if t == "classification"} == {
        "digits", "iris", "breast_cancer", "spirals",
    }  # fmt: skip
    assert {n for n, t in datasets.TASKS.items() if t == "regression"} == {"diabetes", "linear"}


@pytest.mark.parametrize("dataset", ["diabetes", "linear"])
def test_bundled_regression_datasets_train_a_regression(tmp_path, capsys, dataset):
    path = tmp_path / "m.fnn"
    code, out, err = _run(capsys, "train", "--dataset", dataset, "--epochs", "1", "--verbose",
                          "0", "--save", str(path), *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "test mae" in out and "test accuracy" not in out
    assert fastnn.load_model(path).output_dim == 1


def test_whole_number_float_targets_are_not_guessed_to_be_classes(tmp_path, capsys):
    """The raw diabetes target (whole numbers stored as floats) once trained a 347-class
    classifier."""
    rng = np.random.default_rng(1)
    y = rng.integers(25, 347, size=60).astype(np.float32)
    data = _npz(tmp_path, y[:45], y[45:])
    _refused(capsys, "train", "--dataset", data, words=("--task", "float"))
    frac = _npz(tmp_path, y[:45] + 0.5, y[45:], name="frac.npz")
    _refused(capsys, "train", "--dataset", frac, words=("--task",))
    path = tmp_path / "m.fnn"
    code, out, err = _run(capsys, "train", "--dataset", data, "--task", "regression",
                          "--epochs", "1", "--save", str(path), *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "test mae" in out
    assert fastnn.load_model(path).output_dim == 1


def test_labels_that_do_not_start_at_zero_are_refused(tmp_path, capsys):
    """Wine's labels 1..3 once built a 4-class output whose class 0 was always empty."""
    y = np.tile([1, 2, 3], 20)
    data = _npz(tmp_path, y[:45], y[45:])
    _refused(capsys, "train", "--dataset", data, words=("--task", "class 0"))
    _refused(capsys, "train", "--dataset", data, "--task", "classification",
             words=("class 0", "0..K-1"))  # fmt: skip
    gaps = _npz(tmp_path, np.tile([0, 1, 3], 20)[:45], np.tile([0, 1, 3], 5), name="g.npz")
    _refused(capsys, "train", "--dataset", gaps, "--task", "classification", words=("class 2",))
    # a class only the test split holds has no training samples either
    unseen = _npz(tmp_path, np.tile([0, 1], 20), np.array([0, 1, 2]), name="u.npz")
    _refused(capsys, "train", "--dataset", unseen, words=("class 2",))


def test_more_than_100_classes_need_an_explicit_task(tmp_path, capsys):
    y = np.arange(101).repeat(2)
    data = _npz(tmp_path, y, y[:10])
    _refused(capsys, "train", "--dataset", data, words=("--task", "101 classes"))
    code, out, err = _run(capsys, "train", "--dataset", data, "--task", "classification",
                          "--epochs", "1", "--hidden", "4", *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "test accuracy" in out


def test_integer_labels_from_zero_are_classified_without_a_task(tmp_path, capsys):
    y = np.tile([0, 1, 2], 20)
    code, out, err = _run(capsys, "train", "--dataset", _npz(tmp_path, y[:45], y[45:]),
                          "--epochs", "1", *BACKEND)  # fmt: skip
    assert code == 0, err
    assert "test accuracy" in out


def test_loss_option(tmp_path, capsys):
    path = tmp_path / "m.fnn"
    code, out, err = _run(capsys, "train", "--dataset", "iris", "--loss",
                          "categorical_crossentropy", "--epochs", "2", "--save", str(path),
                          *BACKEND)  # fmt: skip
    assert code == 0, err
    model = fastnn.load_model(path)
    assert model.loss.name == "categorical_crossentropy" and model.output_dim == 3
    code, out2, err = _run(capsys, "evaluate", str(path), *BACKEND)  # labels -> one-hot again
    assert code == 0, err
    assert _value(out2, "loss") == _value(out, "loss")
    code, _, err = _run(capsys, "train", "--dataset", "breast_cancer", "--loss",
                        "sparse_categorical_crossentropy", "--epochs", "1", "--save",
                        str(path), *BACKEND)  # fmt: skip
    assert code == 0, err
    assert fastnn.load_model(path).output_dim == 2
    code, out, err = _run(capsys, "train", "--dataset", "linear", "--loss", "mae", "--epochs",
                          "1", "--save", str(path), *BACKEND)  # fmt: skip
    assert code == 0, err
    assert fastnn.load_model(path).loss.name == "mean_absolute_error"
    _refused(capsys, "train", "--dataset", "iris", "--loss", "mse",
             words=("--loss", "regression loss", "classification"))  # fmt: skip
    _refused(capsys, "train", "--dataset", "diabetes", "--loss", "binary_crossentropy",
             words=("--loss", "classification loss", "regression"))  # fmt: skip
    _refused(capsys, "train", "--dataset", "iris", "--loss", "binary_crossentropy",
             words=("binary_crossentropy", "2 classes", "3"))  # fmt: skip
    _refused(capsys, "train", "--dataset", "iris", "--loss", "msee", words=("Did you mean",))


def test_task_option_values(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--task", "clustering"])
    assert exc.value.code == 2
    assert "--task" in capsys.readouterr().err


# -- evaluate: the dataset and seed recorded by train ----------------------------------
def test_evaluate_defaults_to_the_recorded_dataset_and_seed(tmp_path, capsys, monkeypatch):
    path = tmp_path / "m.fnn"
    code, out, err = _run(capsys, "train", "--dataset", "iris", "--epochs", "3", "--seed", "5",
                          "--save", str(path), *BACKEND)  # fmt: skip
    assert code == 0, err
    meta = fastnn.load_model(path).metadata["cli"]
    assert meta == {
        "dataset": "iris", "task": "classification", "seed": 5,
        "loss": "sparse_categorical_crossentropy",
    }  # fmt: skip
    code, out2, err = _run(capsys, "evaluate", str(path), *BACKEND)
    assert code == 0, err
    assert "on iris" in out2
    assert _value(out2, "loss") == _value(out, "loss")
    # an explicit --dataset (and --seed) still wins
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 10)
    other = _npz(tmp_path, y, y, name="other.npz", d=4)
    code, out3, err = _run(capsys, "evaluate", str(path), "--dataset", other, *BACKEND)
    assert code == 0, err
    assert "on " + other in out3 and "30 test samples" in out3
    code, out4, err = _run(capsys, "evaluate", str(path), "--seed", "6", *BACKEND)
    assert code == 0, err
    assert _value(out4, "loss") != _value(out, "loss")
    # a relative .npz path is recorded so that evaluate finds it from another folder
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "train", "--dataset", "other.npz", "--epochs", "1",
                        "--save", "n.fnn", *BACKEND)  # fmt: skip
    assert code == 0, err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out5, err = _run(capsys, "evaluate", "../n.fnn", *BACKEND)
    assert code == 0, err
    assert "30 test samples" in out5
    del rng


def test_evaluate_without_a_record_needs_a_dataset(tmp_path, capsys):
    model = fastnn.Sequential(
        [fastnn.layers.Dense(3, activation="softmax", input_dim=4)], seed=0, backend="numpy"
    )
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "m.fnn")
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "m.fnn"), *BACKEND)
    assert code == 2 and err.count("\n") == 1 and "--dataset" in err
    code, out, err = _run(capsys, "evaluate", str(tmp_path / "m.fnn"), "--dataset", "iris",
                          *BACKEND)  # fmt: skip
    assert code == 0, err


def test_predict_takes_raw_features_the_model_standardises_itself(tmp_path, capsys):
    """The model train saves starts with a Normalization layer adapted on the training
    split: predict on raw iris features gives the classes evaluate scored (before the
    layer, raw features gave one class for everything)."""
    path = tmp_path / "m.fnn"
    assert cli.main(["train", "--dataset", "iris", "--epochs", "40", "--save", str(path),
                     *BACKEND]) == 0  # fmt: skip
    out = capsys.readouterr().out
    accuracy = float(_value(out, "accuracy"))
    (x_raw_tr, _), (x_raw, y) = datasets.load_iris(seed=0, standardize=False)
    (x_std_tr, _), (x_std, _) = datasets.load_iris(seed=0)
    np.save(tmp_path / "raw.npy", x_raw)
    code, _, err = _run(capsys, "predict", str(path), "--input", str(tmp_path / "raw.npy"),
                        "--output", str(tmp_path / "y.npy"), "--classes", *BACKEND)  # fmt: skip
    assert code == 0, err
    classes = np.load(tmp_path / "y.npy")
    assert f"{np.mean(classes == y):.4f}" == f"{accuracy:.4f}" and accuracy > 0.9
    model = fastnn.load_model(path, backend="numpy")
    assert type(model.layers[0]).__name__ == "Normalization"
    mean, var = model.layers[0].get_weights()
    np.testing.assert_allclose(mean, x_raw_tr.mean(axis=0), rtol=1e-6)
    # the layer's standardisation is the loaders': the rest of the model on standardised
    # features gives the same outputs
    rest = fastnn.Sequential([fastnn.Input(shape=(4,)), *[
        fastnn.layers.Dense(layer.units, activation=layer.activation) for layer in
        model.layers[1:]]], backend="numpy")  # fmt: skip
    rest.set_weights(model.get_weights()[2:])
    np.testing.assert_allclose(rest.predict(x_std), model.predict(x_raw), rtol=1e-4, atol=1e-5)


def test_regression_predicts_in_the_targets_units(tmp_path, capsys):
    """Regression trains on standardised targets and records their scale: evaluate scores
    in those units, predict answers in the data's own (raw diabetes: about 25..346)."""
    path = tmp_path / "d.fnn"
    assert cli.main(["train", "--dataset", "diabetes", "--epochs", "30", "--save", str(path),
                     *BACKEND]) == 0  # fmt: skip
    out = capsys.readouterr().out
    code, out2, _ = _run(capsys, "evaluate", str(path), *BACKEND)
    assert code == 0 and _value(out2, "loss") == _value(out, "loss")
    (_, y_tr), (x_raw, y) = datasets.load_diabetes(seed=0, standardize=False,
                                                   standardize_target=False)  # fmt: skip
    np.save(tmp_path / "raw.npy", x_raw)
    code, _, err = _run(capsys, "predict", str(path), "--input", str(tmp_path / "raw.npy"),
                        "--output", str(tmp_path / "y.npy"), *BACKEND)  # fmt: skip
    assert code == 0, err
    pred = np.load(tmp_path / "y.npy")[:, 0]
    baseline = np.mean(np.abs(y - y_tr.mean()))  # always predicting the mean
    assert np.mean(np.abs(pred - y)) < 0.85 * baseline
    assert abs(pred.mean() - y.mean()) < 0.2 * y.std()


def test_evaluate_feeds_older_models_the_scaled_features(tmp_path, capsys):
    """A model saved by train before it added the Normalization layer was trained on the
    loaders' standardised features: evaluate still gives it those."""
    (x_tr, y_tr), (x_te, y_te) = datasets.load_iris(seed=0)
    model = fastnn.Sequential([fastnn.layers.Dense(16, activation="relu", input_dim=4),
                               fastnn.layers.Dense(3, activation="softmax")], seed=0,
                              backend="numpy")  # fmt: skip
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(x_tr, y_tr, epochs=60, verbose=0)
    model.metadata = {"cli": {"dataset": "iris", "task": "classification", "seed": 0}}
    path = tmp_path / "old.fnn"
    model.save(path)
    code, out, _ = _run(capsys, "evaluate", str(path), *BACKEND)
    assert code == 0
    assert _value(out, "accuracy") == f"{model.evaluate(x_te, y_te)[1]:.4f}"


def test_help_shows_each_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [("--epochs", "20"), ("--batch-size", "32"), ("--lr", "0.003"),
                            ("--optimizer", "adam"), ("--seed", "0"), ("--dataset", "digits"),
                            ("--validation-split", "0.0"), ("--hidden", "128")]:  # fmt: skip
        assert option in text
        assert f"(default: {default})" in text.split(option, 2)[-1].split(" --", 1)[0], option
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    examples = [line for line in lines if line.startswith("fastnn ")]
    assert len(examples) >= 4  # one example per line


def test_train_a_cnn_on_digit_images_then_evaluate_and_predict(tmp_path, capsys):
    """--model cnn: the keras.io convnet on the digits as 8x8x1 images; the saved model
    evaluates and predicts from the flattened rows the other commands read."""
    path = tmp_path / "cnn.fnn"
    code, out, err = _run(capsys, "train", "--model", "cnn", "--epochs", "2", "--save",
                          str(path))  # fmt: skip
    assert code == 0, err
    assert float(_value(out, "accuracy")) > 0.8
    model = fastnn.load_model(path)
    assert [type(lay).__name__ for lay in model.layers][:3] == [
        "Normalization", "Conv2D", "MaxPooling2D"]  # fmt: skip
    assert model.input_shape == (8, 8, 1)
    code, out2, err = _run(capsys, "evaluate", str(path))
    assert code == 0, err
    assert _value(out2, "accuracy") == _value(out, "accuracy")
    (_, _), (x_test, _) = datasets.load_digits(normalize=False)
    np.save(tmp_path / "x.npy", x_test[:5])
    code, _, err = _run(capsys, "predict", str(path), "--input", str(tmp_path / "x.npy"),
                        "--output", str(tmp_path / "y.npy"))  # fmt: skip
    assert code == 0, err
    want = model.predict(x_test[:5].reshape(5, 8, 8, 1))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_cnn_needs_square_images(capsys):
    _refused(capsys, "train", "--model", "cnn", "--dataset", "iris", words=("--model cnn",))


def test_only_fastnn_bench_imports_the_benchmark_package():
    code = ("import sys; from fastnn import cli; cli.main(['info']); "
            "assert 'fastnn.bench' not in sys.modules, 'imported'; "
            "cli.make_parser(bench=True); assert 'fastnn.bench' in sys.modules")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
