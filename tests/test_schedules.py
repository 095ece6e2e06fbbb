"""Learning-rate schedules: values vs the Keras formulas, configs, and their effect on fit."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import optimizers, schedules
from fastnn.layers import Dense

BACKEND = "numpy"


# -- values ----------------------------------------------------------------------------
@pytest.mark.parametrize("step", [0, 1, 7, 10, 25, 100])
def test_exponential_decay(step):
    s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-12)
    st = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert st(step) == pytest.approx(0.1 * 0.5 ** (step // 10), rel=1e-12)


@pytest.mark.parametrize("step", [0, 1, 7, 10, 25, 100])
def test_inverse_time_decay(step):
    s = schedules.InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(step) == pytest.approx(0.1 / (1 + 0.5 * step / 10), rel=1e-12)
    st = schedules.InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert st(step) == pytest.approx(0.1 / (1 + 0.5 * (step // 10)), rel=1e-12)


def test_piecewise_constant_boundaries_are_inclusive_like_keras():
    s = schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [s(t) for t in (0, 10, 11, 20, 21, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


@pytest.mark.parametrize("step", [0, 3, 50, 99, 100, 150])
def test_cosine_decay(step):
    s = schedules.CosineDecay(0.2, decay_steps=100, alpha=0.1)
    t = min(step, 100)
    expected = 0.2 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * t / 100)) + 0.1)
    assert s(step) == pytest.approx(expected, rel=1e-12)


def test_cosine_decay_with_warmup_keras3():
    s = schedules.CosineDecay(0.0, decay_steps=100, alpha=0.0, warmup_target=1.0, warmup_steps=10)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    assert s(500) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ExponentialDecay(0.1, 10, 0.9, staircase=True),
        schedules.InverseTimeDecay(0.1, 10, 0.9),
        schedules.PiecewiseConstantDecay([5, 9], [0.3, 0.2, 0.1]),
        schedules.CosineDecay(0.01, 50, alpha=0.2, warmup_target=0.1, warmup_steps=5),
    ],
)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    again = type(schedule).from_config(config)
    assert again == schedule
    assert [again(t) for t in range(30)] == [schedule(t) for t in range(30)]
    assert schedules.deserialize(schedules.serialize(schedule)) == schedule
    import json

    json.dumps(config)


@pytest.mark.parametrize(
    "make",
    [
        lambda: schedules.ExponentialDecay(0.1, 0, 0.5),
        lambda: schedules.ExponentialDecay(-0.1, 10, 0.5),
        lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1]),
        lambda: schedules.PiecewiseConstantDecay([2, 1], [0.1, 0.2, 0.3]),
        lambda: schedules.CosineDecay(0.1, 10, alpha=2),
        lambda: schedules.InverseTimeDecay(0.1, float("nan"), 0.5),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_deserialize_rejects_unknown():
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        schedules.deserialize({"class_name": "os.system", "config": {}})


def test_optimizer_rates_follow_the_schedule():
    s = schedules.ExponentialDecay(0.1, 4, 0.5)
    opt = optimizers.SGD(learning_rate=s)
    np.testing.assert_array_equal(opt.lrs(3, 5), [s(t) for t in range(3, 8)])


# -- effect on training ----------------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    return x, y


def _model(lr):
    m = fastnn.Sequential([Dense(4, activation="tanh", input_dim=3), Dense(1)], seed=3,
                          backend=BACKEND)  # fmt: skip
    m.compile(optimizer=optimizers.SGD(learning_rate=lr), loss="mse")
    return m


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.5),
        schedules.PiecewiseConstantDecay([4, 9], [0.05, 0.01, 0.002]),
        schedules.CosineDecay(0.01, decay_steps=12, warmup_target=0.08, warmup_steps=4),
        schedules.InverseTimeDecay(0.05, decay_steps=2, decay_rate=1.0),
    ],
)
def test_fit_uses_the_scheduled_rate_of_every_step(schedule):
    x, y = _data()
    scheduled = _model(schedule)
    scheduled.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    # the same steps by hand, each with the schedule's rate as a constant rate
    manual = _model(1.0)
    for step in range(16):
        manual.optimizer.learning_rate = schedule(step)
        rows = slice((step % 8) * 8, (step % 8) * 8 + 8)
        manual.train_on_batch(x[rows], y[rows])
    for a, b in zip(scheduled.get_weights(), manual.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    constant = _model(schedule(0))
    constant.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert not all(
        np.allclose(a, b, atol=1e-6)
        for a, b in zip(scheduled.get_weights(), constant.get_weights())
    )
    assert scheduled.optimizer.iterations == 16


def test_zero_rate_after_boundary_freezes_weights():
    x, y = _data()
    m = _model(schedules.PiecewiseConstantDecay([7], [0.05, 0.0]))
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after_first = m.get_weights()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(after_first, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_reads_as_the_current_rate_of_a_schedule():
    """As in Keras 3, ``optimizer.learning_rate`` is the rate of the next step (a float a
    logging callback can print), the schedule itself ``optimizer.schedule``; assigning a
    number or another schedule replaces it."""
    sch = schedules.ExponentialDecay(0.5, decay_steps=3, decay_rate=0.5)
    model = fastnn.Sequential([fastnn.Input((4,)), Dense(3, activation="softmax")],
                              backend="numpy")  # fmt: skip
    model.compile(optimizer=optimizers.SGD(sch), loss="sparse_categorical_crossentropy")
    model.fit(np.random.rand(40, 4), np.arange(40) % 3, epochs=3, batch_size=10, verbose=0)
    opt = model.optimizer
    assert opt.iterations == 12 and opt.schedule is sch
    assert float(opt.learning_rate) == pytest.approx(0.5 * 0.5 ** (12 / 3))
    assert opt.get_config()["learning_rate"]["schedule"] == "ExponentialDecay"
    opt.learning_rate = 0.25
    assert opt.schedule is None and opt.learning_rate == 0.25
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        opt.learning_rate = -1.0
    opt.learning_rate = sch
    assert opt.schedule is sch
