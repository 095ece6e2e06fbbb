"""Callbacks (Keras semantics) and the class_weight / sample_weight arguments of fit."""

import csv
import math

import numpy as np
import pytest

import fastnn
from fastnn import callbacks as cb
from fastnn import optimizers
from fastnn.layers import Dense

BACKEND = "numpy"


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def _model(lr=0.05, optimizer=None, seed=0):
    m = fastnn.Sequential(
        [Dense(8, activation="relu", input_dim=4), Dense(2, activation="softmax")],
        seed=seed,
        backend=BACKEND,
    )
    m.compile(
        optimizer=optimizer or optimizers.SGD(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return m


class Scripted(cb.Callback):
    """Overwrites logs[key] with a scripted value per epoch (put it before the callback
    under test) and records the weights at the end of every epoch."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values, self.weights = key, values, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def _same(ws1, ws2):
    return all(np.array_equal(a, b) for a, b in zip(ws1, ws2))


def test_standard_callbacks_keep_the_one_call_per_epoch_path():
    for c in (
        cb.EarlyStopping(),
        cb.ModelCheckpoint("x.fnn"),
        cb.LearningRateScheduler(lambda e, lr: lr),
        cb.ReduceLROnPlateau(),
        cb.TerminateOnNaN(),
        cb.CSVLogger("x.csv"),
    ):
        assert not c.wants_batches(), type(c).__name__


class _Begins(cb.Callback):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch, logs))


class _Ends(cb.Callback):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, dict(logs)))


def test_batch_hooks_reach_the_callbacks_that_override_them_in_order():
    """A callback overriding only one batch hook gets just that hook, every batch, in the
    order of the list; the end hook's logs are the running means the epoch ends with."""
    x, y = _data(n=40)
    calls: list = []
    begins, ends = _Begins(calls), _Ends(calls)
    hist = _model().fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[ends, begins])
    assert [(kind, batch) for kind, batch, _ in calls] == [
        ("begin", 0), ("end", 0), ("begin", 1), ("end", 1), ("begin", 2), ("end", 2)
    ]  # fmt: skip
    assert all(logs == {} for kind, _, logs in calls if kind == "begin")
    last = calls[-1][2]
    assert last == {"loss": hist.history["loss"][0], "accuracy": hist.history["accuracy"][0]}
    listed = cb.CallbackList([ends, cb.History(), begins], None, {})
    assert listed.overriding("on_train_batch_end") == [ends.on_train_batch_end]
    assert listed.overriding("on_train_batch_begin") == [begins.on_train_batch_begin]
    assert listed.overriding("on_epoch_end")[0].__self__.__class__ is cb.History


# -- EarlyStopping -----------------------------------------------------------------------
def test_early_stopping_patience():
    x, y = _data()
    script = Scripted("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.4])
    es = cb.EarlyStopping(monitor="val_loss", patience=2)
    hist = _model().fit(x, y, epochs=7, verbose=0, callbacks=[script, es])
    assert len(hist.epoch) == 4  # best at epoch 1, two epochs without improvement
    assert es.stopped_epoch == 3 and es.best == 0.9 and es.best_epoch == 1


def test_early_stopping_patience_zero_stops_at_first_non_improvement():
    x, y = _data()
    script = Scripted("val_loss", [1.0, 0.9, 0.95, 0.5])
    hist = _model().fit(x, y, epochs=4, verbose=0, callbacks=[script, cb.EarlyStopping()])
    assert len(hist.epoch) == 3


def test_early_stopping_min_delta_and_mode_max():
    x, y = _data()
    script = Scripted("val_accuracy", [0.5, 0.505, 0.509, 0.7])
    es = cb.EarlyStopping(monitor="val_accuracy", min_delta=0.01, patience=1)
    assert es.mode == "max"
    hist = _model().fit(x, y, epochs=4, verbose=0, callbacks=[script, es])
    assert len(hist.epoch) == 2  # +0.005 is below min_delta


def test_early_stopping_baseline():
    x, y = _data()
    script = Scripted("loss", [0.9, 0.8, 0.7, 0.6, 0.5])
    es = cb.EarlyStopping(monitor="loss", patience=2, baseline=0.55)
    hist = _model().fit(x, y, epochs=5, verbose=0, callbacks=[script, es])
    assert len(hist.epoch) == 5  # as in Keras 3: an epoch that improves never stops it
    script = Scripted("loss", [0.9, 0.8, 0.85, 0.6, 0.5])
    es = cb.EarlyStopping(monitor="loss", patience=2, baseline=0.55)
    hist = _model().fit(x, y, epochs=5, verbose=0, callbacks=[script, es])
    assert len(hist.epoch) == 3  # improving, but not past the baseline within 2 epochs
    script = Scripted("loss", [0.9, 0.5, 0.6, 0.7, 0.8])
    es = cb.EarlyStopping(monitor="loss", patience=2, baseline=0.55)
    hist = _model().fit(x, y, epochs=5, verbose=0, callbacks=[script, es])
    assert len(hist.epoch) == 4


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_restore_best_weights(restore):
    x, y = _data()
    script = Scripted("val_loss", [1.0, 0.5, 0.7, 0.8, 0.9])
    es = cb.EarlyStopping(patience=2, restore_best_weights=restore)
    model = _model()
    model.fit(x, y, epochs=5, verbose=0, callbacks=[script, es])
    assert len(script.weights) == 4
    assert not _same(script.weights[1], script.weights[3])
    if restore:
        assert _same(model.get_weights(), script.weights[1])
    else:
        assert _same(model.get_weights(), script.weights[3])


def test_early_stopping_missing_metric_warns():
    x, y = _data()
    with pytest.warns(RuntimeWarning, match="val_loss"):
        hist = _model().fit(x, y, epochs=2, verbose=0, callbacks=[cb.EarlyStopping()])
    assert len(hist.epoch) == 2


def test_early_stopping_real_validation_loss():
    x, y = _data()
    es = cb.EarlyStopping(patience=1, restore_best_weights=True)
    model = _model(lr=3.0)  # too large: validation loss goes up and down
    hist = model.fit(x, y, epochs=30, verbose=0, validation_split=0.25, callbacks=[es])
    vals = hist.history["val_loss"]
    assert len(vals) < 30
    assert es.best == min(vals)
    vx, vy = x[72:], y[72:]
    assert model.evaluate(vx, vy)[0] == pytest.approx(min(vals), rel=1e-5)


# -- ModelCheckpoint ---------------------------------------------------------------------
def test_model_checkpoint_save_best_only(tmp_path):
    x, y = _data()
    path = tmp_path / "best.fnn"
    script = Scripted("val_loss", [1.0, 0.5, 0.7, 0.8])
    ckpt = cb.ModelCheckpoint(path, save_best_only=True)
    model = _model()
    model.fit(x, y, epochs=4, verbose=0, callbacks=[script, ckpt])
    assert not _same(script.weights[1], model.get_weights())
    saved = fastnn.load_model(path, backend=BACKEND)
    assert _same(saved.get_weights(), script.weights[1])
    assert ckpt.best == 0.5


def test_model_checkpoint_every_epoch_with_pattern(tmp_path):
    x, y = _data()
    script = Scripted("val_loss", [1.0, 0.5, 0.7])
    pattern = str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.fnn")
    model = _model()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[script, cb.ModelCheckpoint(pattern)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m-01-1.00.fnn", "m-02-0.50.fnn", "m-03-0.70.fnn"]
    last = fastnn.load_model(tmp_path / "m-03-0.70.fnn", backend=BACKEND)
    assert _same(last.get_weights(), model.get_weights())


def test_model_checkpoint_weights_only(tmp_path):
    x, y = _data()
    path = tmp_path / "w.npz"
    model = _model()
    model.fit(
        x, y, epochs=2, verbose=0, callbacks=[cb.ModelCheckpoint(path, save_weights_only=True)]
    )
    other = _model(seed=9)
    other.load_weights(path)
    assert _same(other.get_weights(), model.get_weights())


# -- learning-rate callbacks -------------------------------------------------------------
def test_learning_rate_scheduler_sets_rate_each_epoch():
    x, y = _data()
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return 0.1 / (epoch + 1)

    model = _model(lr=0.05)
    hist = model.fit(x, y, epochs=3, verbose=0, callbacks=[cb.LearningRateScheduler(schedule)])
    assert seen == [(0, 0.05), (1, 0.1), (2, 0.05)]
    assert model.optimizer.learning_rate == pytest.approx(0.1 / 3)
    assert len(hist.epoch) == 3
    # History runs after the other callbacks (as in Keras), so it records the rate too
    assert hist.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_learning_rate_scheduler_changes_training_like_setting_the_rate_by_hand():
    x, y = _data()
    rates = [0.2, 0.02, 0.002]
    a = _model()
    a.fit(x, y, epochs=3, verbose=0, callbacks=[cb.LearningRateScheduler(lambda e: rates[e])])
    b = _model()
    for r in rates:
        b.optimizer.learning_rate = r
        b.fit(x, y, epochs=1, verbose=0)
    assert _same(a.get_weights(), b.get_weights())
    c = _model()
    c.fit(x, y, epochs=3, verbose=0)
    assert not _same(a.get_weights(), c.get_weights())


def test_learning_rate_scheduler_rejects_bad_rate():
    x, y = _data()
    with pytest.raises(ValueError, match="learning rate"):
        _model().fit(x, y, verbose=0, callbacks=[cb.LearningRateScheduler(lambda e, lr: -1.0)])


def test_reduce_lr_on_plateau():
    x, y = _data()
    script = Scripted("val_loss", [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    rates = []

    class Rate(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(self.model.optimizer.learning_rate)

    r = cb.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.02, cooldown=1)
    _model(lr=0.1).fit(x, y, epochs=8, verbose=0, callbacks=[script, r, Rate()])
    # Keras' order: the cooldown epoch that ends the cooldown already counts as flat
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02])
    script = Scripted("val_loss", [1.0] * 12)
    r = cb.ReduceLROnPlateau(factor=0.5, patience=1, min_lr=0.02)
    model = _model(lr=0.1)
    model.fit(x, y, epochs=12, verbose=0, callbacks=[script, r])
    assert model.optimizer.learning_rate == 0.02


def test_reduce_lr_on_plateau_rejects_schedules_and_bad_factor():
    x, y = _data()
    sched = fastnn.schedules.ExponentialDecay(0.1, 10, 0.5)
    model = _model(optimizer=optimizers.SGD(learning_rate=sched))
    with pytest.raises(ValueError, match="schedule"):
        model.fit(x, y, verbose=0, callbacks=[cb.ReduceLROnPlateau(monitor="loss")])
    with pytest.raises(ValueError, match="factor"):
        cb.ReduceLROnPlateau(factor=1.5)


# -- TerminateOnNaN ----------------------------------------------------------------------
def _exploding():
    x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None] * 1e3
    y = (3 * x[:, 0]).astype(np.float32)
    m = fastnn.Sequential([Dense(1, input_dim=1)], seed=0, backend=BACKEND)
    m.compile(optimizer=optimizers.SGD(learning_rate=10.0), loss="mse")
    return m, x, y


def test_without_terminate_on_nan_fit_raises():
    m, x, y = _exploding()
    with pytest.raises(fastnn.NonFiniteLossError):
        m.fit(x, y, epochs=5, batch_size=8, verbose=0)


def test_terminate_on_nan_stops_quietly_with_finite_weights(capsys):
    m, x, y = _exploding()
    t = cb.TerminateOnNaN()
    after = []

    class Later(cb.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            after.append(epoch)

    m.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[t, Later()])
    assert t.terminated and m.stop_training
    assert len(after) == 1  # stopped inside the first epoch
    assert all(np.all(np.isfinite(w)) for w in m.get_weights())
    assert "terminating training" in capsys.readouterr().out


# -- CSVLogger ---------------------------------------------------------------------------
def test_csv_logger(tmp_path):
    x, y = _data()
    path = tmp_path / "log.csv"
    model = _model()
    hist = model.fit(x, y, epochs=3, verbose=0, validation_split=0.25,
                     callbacks=[cb.CSVLogger(path)])  # fmt: skip
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    for key in ("loss", "val_accuracy"):
        assert [float(r[key]) for r in rows] == hist.history[key]
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb.CSVLogger(path, separator=";", append=True)])
    text = open(path).read().splitlines()
    assert len(text) == 1 + 3 + 2 and text.count(text[0]) == 1
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb.CSVLogger(path)])
    assert len(open(path).read().splitlines()) == 2


# -- class_weight and sample_weight --------------------------------------------------------
def _full_batch(x, y, lr, **kw):
    m = _model(lr=lr)
    m.fit(x, y, epochs=5, batch_size=len(x), verbose=0, **kw)
    return m.get_weights()


def test_zero_class_weight_equals_removing_the_class_from_the_loss():
    """Keras' sum_over_batch_size: a zero weight keeps the sample in the denominator N,
    so with plain SGD it equals dropping the samples and scaling the rate by N'/N."""
    x, y = _data()
    kept = y == 0
    n, n_kept = len(y), int(kept.sum())
    weighted = _full_batch(x, y, 0.1, class_weight={1: 0.0})
    removed = _full_batch(x[kept], y[kept], 0.1 * n_kept / n)
    for a, b in zip(weighted, removed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    unweighted = _full_batch(x, y, 0.1)
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(weighted, unweighted))


def test_sample_weight_scales_the_loss():
    x, y = _data()
    doubled = _full_batch(x, y, 0.05, sample_weight=np.full(len(y), 2.0))
    faster = _full_batch(x, y, 0.1)
    for a, b in zip(doubled, faster):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model = _model()
    w = np.where(y == 1, 3.0, 0.5)
    base = model.evaluate(x, y)[0]
    per_sample = [model.evaluate(x[i : i + 1], y[i : i + 1])[0] for i in range(len(y))]
    assert base == pytest.approx(np.mean(per_sample), rel=1e-5)
    assert model.evaluate(x, y, sample_weight=w)[0] == pytest.approx(
        np.sum(w * per_sample) / len(y), rel=1e-5
    )


def test_class_weight_equals_matching_sample_weight():
    x, y = _data()
    a = _model()
    a.fit(x, y, epochs=2, batch_size=16, verbose=0, class_weight={0: 1.0, 1: 3.0})
    b = _model()
    b.fit(x, y, epochs=2, batch_size=16, verbose=0, sample_weight=np.where(y == 1, 3.0, 1.0))
    assert _same(a.get_weights(), b.get_weights())
    c = _model()
    c.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not _same(a.get_weights(), c.get_weights())


def test_class_weight_shifts_predictions_towards_the_heavy_class():
    x, y = _data(400)
    heavy = _model(optimizer=optimizers.Adam(0.01))
    heavy.fit(x, y, epochs=20, verbose=0, class_weight={0: 1.0, 1: 20.0})
    plain = _model(optimizer=optimizers.Adam(0.01))
    plain.fit(x, y, epochs=20, verbose=0)
    assert heavy.predict(x).argmax(1).mean() > plain.predict(x).argmax(1).mean()
    assert math.isfinite(heavy.evaluate(x, y)[0])


# ---------------------------------------------------------------------------------------
# Metric names: logged as given, so callbacks find them


def test_metrics_are_logged_under_the_names_given(tmp_path, capsys):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"])
    hist = model.fit(x, y, epochs=2, verbose=2, validation_split=0.25)
    assert list(hist.history) == ["loss", "acc", "val_loss", "val_acc"]
    assert "acc: " in capsys.readouterr().out
    assert list(model.evaluate(x, y, return_dict=True)) == ["loss", "acc"]
    model.save(tmp_path / "m.fnn")
    loaded = fastnn.load_model(tmp_path / "m.fnn", backend=BACKEND)
    assert loaded.metrics == ["acc"]
    assert list(loaded.evaluate(x, y, return_dict=True)) == ["loss", "acc"]


def test_regression_metric_aliases_keep_their_names():
    x, y = _data()
    model = fastnn.Sequential([Dense(3, input_dim=4)], seed=0, backend=BACKEND)
    model.compile(loss="mse", metrics=["mean_absolute_error", "mae", "mean_squared_error"])
    yt = np.eye(3)[y % 3]
    logs = model.evaluate(x, yt, return_dict=True)
    assert list(logs) == ["loss", "mean_absolute_error", "mae", "mean_squared_error"]
    pred = model.predict(x)
    assert logs["mae"] == logs["mean_absolute_error"] == pytest.approx(np.abs(pred - yt).mean())
    assert logs["mean_squared_error"] == pytest.approx(logs["loss"])
    with pytest.raises(ValueError, match="metrics must be distinct.*'mae' twice"):
        model.compile(loss="mse", metrics=["mae", "mae"])


def test_early_stopping_on_val_acc_fires(recwarn):
    x, y = _data()
    es = cb.EarlyStopping(monitor="val_acc", patience=1, min_delta=2.0)  # never improves
    model = _model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["acc"])
    hist = model.fit(x, y, epochs=10, verbose=0, validation_split=0.25, callbacks=[es])
    assert len(hist.epoch) == 2 and es.stopped_epoch == 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_missing_monitor_warning_names_the_cause():
    x, y = _data()
    with pytest.warns(RuntimeWarning, match="pass validation data") as record:
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[cb.EarlyStopping("val_accuracy")])
    assert "val_accuracy" in str(record[0].message)
    with pytest.warns(RuntimeWarning) as record:
        _model().fit(x, y, epochs=1, verbose=0, validation_split=0.25,
                     callbacks=[cb.EarlyStopping("val_acc")])  # fmt: skip
    msg = str(record[0].message)
    assert "pass validation data" not in msg
    assert "available: accuracy, loss, val_accuracy, val_loss" in msg
    assert "did you mean 'val_accuracy'?" in msg.lower()
    with pytest.warns(RuntimeWarning) as record:
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[cb.ReduceLROnPlateau("acc")])
    msg = str(record[0].message)
    assert "pass validation data" not in msg and "did you mean 'accuracy'?" in msg


def test_lambda_callback_calls_its_functions_as_the_hooks():
    x, y = _data()
    seen = []
    lam = cb.LambdaCallback(
        on_train_begin=lambda logs: seen.append("begin"),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch", epoch, sorted(logs))),
        on_batch_end=lambda batch, logs: seen.append(("batch", batch)),
        on_train_end=lambda logs: seen.append("end"),
    )
    _model().fit(x, y, epochs=2, batch_size=len(x) // 2 + 1, verbose=0, callbacks=[lam])
    assert seen[0] == "begin" and seen[-1] == "end"
    assert [s for s in seen if s[0] == "batch"] == [("batch", 0), ("batch", 1)] * 2
    assert [s[:2] for s in seen if s[0] == "epoch"] == [("epoch", 0), ("epoch", 1)]
    with pytest.raises(TypeError, match="on_epoch_end must be a function"):
        cb.LambdaCallback(on_epoch_end=3)


class _Recorder(cb.Callback):
    """Records the test and predict hooks it is given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_test_begin(self, logs=None):
        self.calls.append("test_begin")

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("test_batch", batch, sorted(logs)))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", sorted(logs)))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("predict_batch", batch, logs["outputs"].shape))

    def on_predict_end(self, logs=None):
        self.calls.append("predict_end")


def test_test_and_predict_hooks_run_in_fit_evaluate_and_predict():
    """As in Keras: fit's validation calls on_test_begin, the per-batch test hooks and
    on_test_end (with the logs unprefixed); evaluate and predict take callbacks."""
    x, y = _data(n=40)
    model, rec = _model(), _Recorder()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=20, validation_data=(x[:8], y[:8]), verbose=0,
              callbacks=[rec])  # fmt: skip
    assert rec.calls == ["test_begin", ("test_batch", 0, ["accuracy", "loss"]),
                         ("test_end", ["accuracy", "loss"])]  # fmt: skip
    rec.calls = []
    logs = model.evaluate(x, y, batch_size=16, callbacks=[rec], return_dict=True)
    assert rec.calls[0] == "test_begin" and rec.calls[-1] == ("test_end", sorted(logs))
    assert [c[1] for c in rec.calls[1:-1]] == [0, 1, 2]
    whole = model.evaluate(x, y, batch_size=16, return_dict=True)  # one compiled call
    assert logs == pytest.approx(whole, rel=1e-6)
    rec.calls = []
    model.predict(x, batch_size=32, callbacks=[rec])
    assert rec.calls == [("predict_batch", 0, (32, 2)), ("predict_batch", 1, (8, 2)),
                         "predict_end"]  # fmt: skip
    with pytest.raises(TypeError, match="list of Callback"):
        model.evaluate(x, y, callbacks=rec)
