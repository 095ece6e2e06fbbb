"""Level 4: optimizers == their formulas written out by hand; defaults; convergence; errors."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.kernels import codes as C
from fastnn.optimizers import SGD, Adagrad, Adam, AdamW, Nadam, RMSprop

CPU_BACKENDS = [b for b in fastnn.backend.available() if b != "cuda"]
DTYPES = [np.float32, np.float64]
STEPS = 6


# ---------------------------------------------------------------------------------------
# The updates written out by hand (float64 NumPy, one parameter array)


def hand_sgd(lr):
    def step(p, g, state, t):
        return p - lr * g

    return step


def hand_momentum(lr, momentum, nesterov):
    def step(p, g, state, t):
        buf = state.get("buf", np.zeros_like(p))
        buf = momentum * buf + g
        state["buf"] = buf
        return p - lr * (g + momentum * buf if nesterov else buf)

    return step


def hand_adagrad(lr, initial_accumulator_value, epsilon):
    def step(p, g, state, t):
        acc = state.get("acc", np.full_like(p, initial_accumulator_value)) + g * g
        state["acc"] = acc
        return p - lr * g / (np.sqrt(acc) + epsilon)

    return step


def hand_rmsprop(lr, rho, epsilon):
    def step(p, g, state, t):
        sq = rho * state.get("sq", np.zeros_like(p)) + (1 - rho) * g * g
        state["sq"] = sq
        return p - lr * g / (np.sqrt(sq) + epsilon)

    return step


def hand_adam(lr, beta_1, beta_2, epsilon, weight_decay=0.0):
    def step(p, g, state, t):
        p = p * (1 - lr * weight_decay)
        m = beta_1 * state.get("m", np.zeros_like(p)) + (1 - beta_1) * g
        v = beta_2 * state.get("v", np.zeros_like(p)) + (1 - beta_2) * g * g
        state["m"], state["v"] = m, v
        m_hat = m / (1 - beta_1**t)
        v_hat = v / (1 - beta_2**t)
        return p - lr * m_hat / (np.sqrt(v_hat) + epsilon)

    return step


def hand_amsgrad(lr, beta_1, beta_2, epsilon, weight_decay=0.0):
    """PyTorch's Adam(amsgrad=True): the running maximum of v in the denominator."""

    def step(p, g, state, t):
        p = p * (1 - lr * weight_decay)
        m = beta_1 * state.get("m", np.zeros_like(p)) + (1 - beta_1) * g
        v = beta_2 * state.get("v", np.zeros_like(p)) + (1 - beta_2) * g * g
        vmax = np.maximum(state.get("vmax", np.zeros_like(p)), v)
        state["m"], state["v"], state["vmax"] = m, v, vmax
        denom = np.sqrt(vmax) / np.sqrt(1 - beta_2**t) + epsilon
        return p - lr / (1 - beta_1**t) * m / denom

    return step


def hand_rmsprop_mc(lr, rho, epsilon, momentum, centered):
    """PyTorch's RMSprop(momentum, centered)."""

    def step(p, g, state, t):
        sq = rho * state.get("sq", np.zeros_like(p)) + (1 - rho) * g * g
        state["sq"] = sq
        if centered:
            mean = rho * state.get("mean", np.zeros_like(p)) + (1 - rho) * g
            state["mean"] = mean
            avg = np.sqrt(sq - mean * mean) + epsilon
        else:
            avg = np.sqrt(sq) + epsilon
        if momentum > 0:
            buf = momentum * state.get("buf", np.zeros_like(p)) + g / avg
            state["buf"] = buf
            return p - lr * buf
        return p - lr * g / avg

    return step


def hand_decayed(lr, weight_decay, update):
    """Keras 3's decoupled weight decay, p -= p * weight_decay * lr, then ``update``."""

    def step(p, g, state, t):
        return update(p - p * weight_decay * lr, g, state, t)

    return step


def hand_nadam(lr, beta_1, beta_2, epsilon):
    """Keras 3's Nadam."""

    def step(p, g, state, t):
        u_t = beta_1 * (1 - 0.5 * 0.96**t)
        u_next = beta_1 * (1 - 0.5 * 0.96 ** (t + 1))
        prod = state.get("prod", 1.0) * u_t
        m = beta_1 * state.get("m", np.zeros_like(p)) + (1 - beta_1) * g
        v = beta_2 * state.get("v", np.zeros_like(p)) + (1 - beta_2) * g * g
        state["m"], state["v"], state["prod"] = m, v, prod
        m_hat = u_next * m / (1 - prod * u_next) + (1 - u_t) * g / (1 - prod)
        return p - lr * m_hat / (np.sqrt(v / (1 - beta_2**t)) + epsilon)

    return step


CASES = {
    "sgd": (lambda: SGD(learning_rate=0.1), hand_sgd(0.1)),
    "momentum": (
        lambda: SGD(learning_rate=0.05, momentum=0.9),
        hand_momentum(0.05, 0.9, False),
    ),
    "nesterov": (
        lambda: SGD(learning_rate=0.05, momentum=0.8, nesterov=True),
        hand_momentum(0.05, 0.8, True),
    ),
    "adagrad": (
        lambda: Adagrad(learning_rate=0.1, initial_accumulator_value=0.3, epsilon=1e-6),
        hand_adagrad(0.1, 0.3, 1e-6),
    ),
    "rmsprop": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-6),
        hand_rmsprop(0.01, 0.8, 1e-6),
    ),
    "adam": (
        lambda: Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
        hand_adam(0.01, 0.8, 0.99, 1e-6),
    ),
    "adamw": (
        lambda: AdamW(learning_rate=0.01, weight_decay=0.1, beta_1=0.85, beta_2=0.995),
        hand_adam(0.01, 0.85, 0.995, 1e-7, 0.1),
    ),
    "adam_amsgrad": (
        lambda: Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6, amsgrad=True),
        hand_amsgrad(0.01, 0.8, 0.99, 1e-6),
    ),
    "adamw_amsgrad": (
        lambda: AdamW(learning_rate=0.01, weight_decay=0.1, beta_2=0.99, amsgrad=True),
        hand_amsgrad(0.01, 0.9, 0.99, 1e-7, 0.1),
    ),
    "rmsprop_momentum": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-6, momentum=0.7),
        hand_rmsprop_mc(0.01, 0.8, 1e-6, 0.7, False),
    ),
    "rmsprop_centered": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-6, centered=True),
        hand_rmsprop_mc(0.01, 0.8, 1e-6, 0.0, True),
    ),
    "rmsprop_momentum_centered": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, momentum=0.5, centered=True),
        hand_rmsprop_mc(0.01, 0.8, 1e-7, 0.5, True),
    ),
    "sgd_decay": (
        lambda: SGD(learning_rate=0.1, weight_decay=0.3),
        hand_decayed(0.1, 0.3, hand_sgd(0.1)),
    ),
    "momentum_decay": (
        lambda: SGD(learning_rate=0.05, momentum=0.9, weight_decay=0.2),
        hand_decayed(0.05, 0.2, hand_momentum(0.05, 0.9, False)),
    ),
    "adagrad_decay": (
        lambda: Adagrad(learning_rate=0.1, epsilon=1e-6, weight_decay=0.2),
        hand_decayed(0.1, 0.2, hand_adagrad(0.1, 0.1, 1e-6)),
    ),
    "rmsprop_decay": (
        lambda: RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-6, weight_decay=0.5),
        hand_decayed(0.01, 0.5, hand_rmsprop(0.01, 0.8, 1e-6)),
    ),
    "rmsprop_centered_decay": (
        lambda: RMSprop(learning_rate=0.01, centered=True, momentum=0.3, weight_decay=0.5),
        hand_decayed(0.01, 0.5, hand_rmsprop_mc(0.01, 0.9, 1e-7, 0.3, True)),
    ),
    "adam_decay": (
        lambda: Adam(learning_rate=0.01, beta_1=0.8, epsilon=1e-6, weight_decay=0.1),
        hand_adam(0.01, 0.8, 0.999, 1e-6, 0.1),
    ),
    "nadam_decay": (
        lambda: Nadam(learning_rate=0.01, epsilon=1e-6, weight_decay=0.1),
        hand_decayed(0.01, 0.1, hand_nadam(0.01, 0.9, 0.999, 1e-6)),
    ),
    "sgd_decay_clipped": (
        lambda: SGD(learning_rate=0.1, weight_decay=0.3, clipvalue=100.0),
        hand_decayed(0.1, 0.3, hand_sgd(0.1)),
    ),
}


def _tolerance(dtype):
    # float64: the same arithmetic in another order; float32: a few ulps per step on O(1)
    return dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_step_matches_hand_written_update(name, dtype, backend):
    make, hand = CASES[name]
    opt = make()
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (3,), (1, 1)]
    params = [rng.normal(size=s).astype(dtype) for s in shapes]
    expected = [p.astype(np.float64) for p in params]
    states = [{} for _ in shapes]
    for t in range(1, STEPS + 1):
        grads = [rng.normal(size=s).astype(dtype) for s in shapes]
        opt.step(params, grads, backend=backend)
        for i, g in enumerate(grads):
            expected[i] = hand(expected[i], g.astype(np.float64), states[i], t)
    assert opt.iterations == STEPS
    for p, e in zip(params, expected):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, e, **_tolerance(dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_step_on_a_single_array_and_apply_gradients(backend):
    p = np.ones(4)
    opt = SGD(learning_rate=0.5)
    opt.step(p, np.full(4, 2.0), backend=backend)
    np.testing.assert_array_equal(p, 0.0)
    w = np.ones(3)
    Adam(learning_rate=0.1).apply_gradients(zip([np.ones(3)], [w]))
    np.testing.assert_allclose(w, 0.9, rtol=1e-6)  # Adam's first step is lr * sign(g)


def test_state_is_kept_per_parameter():
    """Each array has its own momentum buffer, whatever its position in the call."""
    opt = SGD(learning_rate=1.0, momentum=0.5)
    a, b = np.zeros(2), np.zeros(2)
    opt.step([a, b], [np.ones(2), np.zeros(2)])
    opt.step([b, a], [np.zeros(2), np.ones(2)])  # the order changed: the state follows
    np.testing.assert_allclose(a, -(1 + 1.5))
    np.testing.assert_array_equal(b, 0.0)  # b's buffer did not pick up a's gradients


def test_adam_state_and_step_count_belong_to_each_parameter():
    """Two same-shaped arrays stepped in separate calls keep separate moments and step
    counts: a constant-sign gradient moves each by lr per step (bias correction uses the
    parameter's own step count)."""
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float32)
    opt = Adam(learning_rate=0.1)
    for _ in range(3):
        opt.step([a], [np.ones(3, np.float32)])
        opt.step([b], [-np.ones(3, np.float32)])
    np.testing.assert_allclose(a, -0.3, rtol=1e-5)
    np.testing.assert_allclose(b, 0.3, rtol=1e-5)
    assert opt.iterations == 6  # the number of step calls


def _three_ways(make, backend, shapes=((4, 3), (4, 3), (3,))):
    """The same gradients applied (1) in one call, (2) one call per parameter and (3) one
    call per parameter in reverse order; returns the three parameter lists."""
    rng = np.random.default_rng(3)
    start = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(STEPS)]
    results = []
    for way in range(3):
        opt = make()
        params = [p.copy() for p in start]
        for gs in grads:
            if way == 0:
                opt.step(params, gs, backend=backend)
            else:
                order = range(len(params)) if way == 1 else reversed(range(len(params)))
                for i in order:
                    opt.step([params[i]], [gs[i]], backend=backend)
        results.append(params)
    return results


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_updates_do_not_depend_on_how_calls_group_the_parameters(name, backend):
    together, separate, reversed_ = _three_ways(CASES[name][0], backend)
    for p, q, r in zip(together, separate, reversed_):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(p, r)


def test_a_schedule_runs_on_each_parameters_own_step_count():
    """With a schedule, stepping the parameters one call each gives every parameter the
    rates schedule(0), schedule(1), ... as stepping them together does."""

    def make():
        return Adam(learning_rate=lambda step: 0.1 * 0.5**step)

    together, separate, reversed_ = _three_ways(make, None)
    for p, q, r in zip(together, separate, reversed_):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(p, r)


def test_a_new_parameter_starts_with_fresh_state():
    opt = Adam(learning_rate=0.1)
    a = np.zeros(3)
    for _ in range(5):
        opt.step(a, np.full(3, 7.0))
    c = np.zeros(3)  # never seen: its first step is Adam's first step, lr * sign(g)
    opt.step(c, np.full(3, -1.0))
    np.testing.assert_allclose(c, 0.1, rtol=1e-6)


def test_a_freed_parameter_leaves_no_state_behind():
    """State is dropped with its array; an array that reuses a freed array's id (CPython
    recycles them) starts fresh rather than inheriting the old moments."""
    opt = SGD(learning_rate=1.0, momentum=0.9)
    for _ in range(50):
        a = np.zeros(4)
        old = id(a)
        opt.step(a, np.ones(4))
        opt.step(a, np.ones(4))
        del a
        b = np.zeros(4)
        opt.step(b, np.ones(4))  # a first step: no momentum from a (or from any old array)
        np.testing.assert_array_equal(b, -1.0)
        if id(b) == old:
            break
        del b
    assert len(opt._state) <= 1


def test_each_parameter_may_appear_once_per_call():
    opt = Adam()
    a = np.zeros(3)
    with pytest.raises(ValueError, match=r"params\[1\] is the same array as params\[0\]"):
        opt.step([a, a], [np.ones(3), np.ones(3)])
    np.testing.assert_array_equal(a, 0.0)
    assert opt.iterations == 0


def test_apply_gradients_keeps_state_per_variable():
    a, b = np.zeros(3), np.zeros(3)
    opt = Adam(learning_rate=0.1)
    for _ in range(3):
        opt.apply_gradients([(np.ones(3), a)])
        opt.apply_gradients(zip([-np.ones(3)], [b]))
    np.testing.assert_allclose(a, -0.3, rtol=1e-6)
    np.testing.assert_allclose(b, 0.3, rtol=1e-6)


def test_two_dense_layers_stepped_separately_match_one_call():
    """The hand-written loop of the user guide: the layers' weight lists are stable
    objects, so each layer's kernel and bias keep their own state across calls."""
    from fastnn.layers import Dense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.normal(size=(16, 4)).astype(np.float32)
    runs = []
    for together in (True, False):
        l1 = Dense(4, activation="tanh").build(4, "float32", np.random.default_rng(1))
        l2 = Dense(4).build(4, "float32", np.random.default_rng(2))
        opt = Adam(learning_rate=0.01)
        loss = fastnn.losses.MeanSquaredError()
        for _ in range(5):
            out = l2.forward(l1.forward(x, training=True), training=True)
            l1.backward(l2.backward(loss.gradient(y, out)))
            if together:
                opt.step(l1.weights + l2.weights, l1.grads + l2.grads)
            else:
                opt.step(l1.weights, l1.grads)
                opt.step(l2.weights, l2.grads)
        runs.append([w.copy() for w in l1.weights + l2.weights])
    for p, q in zip(*runs):
        np.testing.assert_array_equal(p, q)


def test_step_with_a_bad_pair_updates_nothing():
    """Every pair is checked before the first update: an error leaves the parameters, the
    state and the step counter as they were."""
    opt = Adam(learning_rate=0.1)
    a, b = np.ones(3), np.ones(2)
    opt.step([a, b], [np.ones(3), np.ones(2)])

    def state():
        return {k: (e.slots.copy(), e.steps) for k, e in opt._state.items()}

    before = (a.copy(), b.copy(), state())
    c = np.ones(4)
    bad_calls = [
        ([a, b], [np.ones(3), np.array([1.0, np.nan])]),
        ([a, b], [np.ones(3), np.ones(3)]),
        ([a, b, c], [np.ones(3), np.ones(2), np.ones(5)]),
    ]
    for params, grads in bad_calls:
        with pytest.raises(ValueError, match=r"grads\[(1|2)\]"):
            opt.step(params, grads)
        np.testing.assert_array_equal(a, before[0])
        np.testing.assert_array_equal(b, before[1])
        np.testing.assert_array_equal(c, 1.0)
        after = state()
        assert after.keys() == before[2].keys()
        for key, (slots, steps) in before[2].items():
            np.testing.assert_array_equal(after[key][0], slots)
            assert after[key][1] == steps
        assert opt.iterations == 1


def test_step_rejects_mismatched_grads():
    opt = SGD()
    with pytest.raises(ValueError, match="grads"):
        opt.step([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="grads"):
        opt.step([np.zeros(3)], [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="pair"):
        opt.step([np.zeros(3), np.zeros(2)], [np.zeros(3)])


# ---------------------------------------------------------------------------------------
# Learning-rate schedules


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_callable_learning_rate_is_evaluated_per_step(backend):
    calls = []

    def schedule(step):
        calls.append(step)
        return 0.1 * 0.5**step

    opt = SGD(learning_rate=schedule)
    p = np.zeros(2)
    for _ in range(4):
        opt.step(p, np.ones(2), backend=backend)
    assert calls == [0, 1, 2, 3]
    np.testing.assert_allclose(p, -(0.1 + 0.05 + 0.025 + 0.0125))


def test_callable_learning_rate_with_adam_matches_hand_written():
    rates = [0.1, 0.05, 0.02, 0.01]
    opt = Adam(learning_rate=lambda step: rates[step])
    rng = np.random.default_rng(1)
    p = rng.normal(size=5)
    expected, state = p.copy(), {}
    for t in range(1, 5):
        g = rng.normal(size=5)
        opt.step(p, g)
        expected = hand_adam(rates[t - 1], 0.9, 0.999, 1e-7)(expected, g, state, t)
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_schedule_giving_a_bad_rate_raises():
    opt = SGD(learning_rate=lambda step: -1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.step(np.zeros(2), np.ones(2))


# ---------------------------------------------------------------------------------------
# Keras defaults


def test_keras_defaults():
    sgd = SGD()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    adam = Adam()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (
        0.001,
        0.9,
        0.999,
        1e-7,
    )
    assert adam.weight_decay is None and adam.amsgrad is False
    adamw = AdamW()
    assert (adamw.learning_rate, adamw.weight_decay, adamw.beta_1, adamw.beta_2) == (
        0.001,
        0.004,
        0.9,
        0.999,
    )
    assert adamw.epsilon == 1e-7
    ada = Adagrad()
    assert (ada.learning_rate, ada.initial_accumulator_value, ada.epsilon) == (0.001, 0.1, 1e-7)
    rms = RMSprop()
    assert (rms.learning_rate, rms.rho, rms.epsilon) == (0.001, 0.9, 1e-7)
    assert (rms.momentum, rms.centered, rms.weight_decay) == (0.0, False, None)
    assert (sgd.weight_decay, ada.weight_decay, Nadam().weight_decay) == (None, None, None)
    # no option given: the plain kernels and their state
    assert (adam.code, rms.code, adam.slots, rms.slots) == (C.ADAM, C.RMSPROP, 2, 1)


@pytest.mark.parametrize(
    "name, cls",
    [("sgd", SGD), ("adam", Adam), ("adamw", AdamW), ("adagrad", Adagrad), ("RMSprop", RMSprop)],
)
def test_get_by_name_uses_defaults(name, cls):
    opt = fastnn.optimizers.get(name)
    assert type(opt) is cls
    assert opt.get_config() == cls().get_config()
    inst = cls(learning_rate=0.5)
    assert fastnn.optimizers.get(inst) is inst


def test_adagrad_state_starts_at_initial_accumulator_value():
    state = Adagrad(initial_accumulator_value=0.25).init_state((3,), np.float32)
    np.testing.assert_array_equal(state, np.full((1, 3), 0.25, np.float32))


# ---------------------------------------------------------------------------------------
# Convergence


CENTER = np.array([1.0, -2.0, 0.5])
CURV = np.array([1.0, 4.0, 10.0])  # condition number 10


def _quadratic_grad(p):
    return CURV * (p - CENTER)


CONVERGE = {
    # name: (optimizer, steps, tolerance on |p - center|_inf)
    "sgd": (lambda: SGD(learning_rate=0.09), 300, 1e-6),
    "momentum": (lambda: SGD(learning_rate=0.02, momentum=0.9), 400, 1e-6),
    "nesterov": (lambda: SGD(learning_rate=0.02, momentum=0.9, nesterov=True), 400, 1e-6),
    "adagrad": (lambda: Adagrad(learning_rate=0.5), 750, 1e-6),
    "rmsprop": (lambda: RMSprop(learning_rate=lambda t: 0.05 * 0.995**t), 750, 1e-5),
    "adam": (lambda: Adam(learning_rate=0.05), 750, 1e-6),
    # decoupled weight decay pulls the fixed point slightly towards 0
    "adamw": (lambda: AdamW(learning_rate=0.05, weight_decay=1e-4), 750, 1e-3),
    "amsgrad": (lambda: Adam(learning_rate=0.05, amsgrad=True), 750, 1e-6),
    "rmsprop_momentum_centered": (
        lambda: RMSprop(learning_rate=lambda t: 0.02 * 0.99**t, momentum=0.5, centered=True),
        750,
        1e-5,
    ),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(CONVERGE))
def test_converges_on_a_quadratic(name, backend):
    make, steps, tol = CONVERGE[name]
    opt = make()
    p = np.array([-3.0, 3.0, 4.0])
    start = np.abs(p - CENTER).max()
    for _ in range(steps):
        opt.step(p, _quadratic_grad(p), backend=backend)
    assert np.abs(p - CENTER).max() < tol, p
    assert start > 1000 * tol


def _rosenbrock_grad(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adam_converges_on_rosenbrock(backend):
    # the classic start in the curved valley; a slowly decaying rate lets Adam settle
    opt = Adam(learning_rate=lambda t: 0.05 * 0.9995**t)
    p = np.array([-1.5, 2.0])
    for _ in range(4000):
        opt.step(p, _rosenbrock_grad(p), backend=backend)
    np.testing.assert_allclose(p, [1.0, 1.0], atol=1e-4)


# ---------------------------------------------------------------------------------------
# Bad hyper-parameters


BAD = [
    (SGD, {"learning_rate": -0.1}, ValueError, "learning_rate"),
    (SGD, {"learning_rate": 0.0}, ValueError, "learning_rate"),
    (SGD, {"learning_rate": float("nan")}, ValueError, "learning_rate"),
    (SGD, {"learning_rate": "fast"}, TypeError, "learning_rate"),
    (SGD, {"momentum": 1.0}, ValueError, "momentum"),
    (SGD, {"momentum": -0.5}, ValueError, "momentum"),
    (SGD, {"momentum": "0.9"}, TypeError, "momentum"),
    (SGD, {"nesterov": "yes", "momentum": 0.9}, TypeError, "nesterov"),
    (SGD, {"nesterov": True}, ValueError, "nesterov"),
    (Adam, {"beta_1": 1.0}, ValueError, "beta_1"),
    (Adam, {"beta_2": -0.1}, ValueError, "beta_2"),
    (Adam, {"epsilon": -1e-7}, ValueError, "epsilon"),
    (Adam, {"learning_rate": float("inf")}, ValueError, "learning_rate"),
    (AdamW, {"weight_decay": -0.01}, ValueError, "weight_decay"),
    (AdamW, {"weight_decay": None}, TypeError, "weight_decay"),
    (Adagrad, {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_value"),
    (Adagrad, {"epsilon": True}, TypeError, "epsilon"),
    (RMSprop, {"rho": 1.5}, ValueError, "rho"),
    (RMSprop, {"epsilon": -1.0}, ValueError, "epsilon"),
    (RMSprop, {"momentum": 1.0}, ValueError, "momentum"),
    (RMSprop, {"momentum": -0.1}, ValueError, "momentum"),
    (RMSprop, {"momentum": "0.9"}, TypeError, "momentum"),
    (RMSprop, {"centered": 1}, TypeError, "centered"),
    (Adam, {"amsgrad": "yes"}, TypeError, "amsgrad"),
    (AdamW, {"amsgrad": None}, TypeError, "amsgrad"),
    (SGD, {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    (Adam, {"weight_decay": "0.1"}, TypeError, "weight_decay"),
    (Nadam, {"weight_decay": float("nan")}, ValueError, "weight_decay"),
    (Adagrad, {"use_ema": True}, ValueError, "use_ema.*not implemented"),
    (Adam, {"ema_momentum": 0.9}, ValueError, "ema_momentum.*not implemented"),
    (SGD, {"ema_overwrite_frequency": 10}, ValueError, "ema_overwrite_frequency"),
    (RMSprop, {"loss_scale_factor": 128.0}, ValueError, "loss_scale_factor"),
    (Nadam, {"gradient_accumulation_steps": 4}, ValueError, "gradient_accumulation_steps"),
    (Adam, {"name": 3}, TypeError, "name"),
    (Adam, {"nesterov": True}, TypeError, "nesterov"),
]


@pytest.mark.parametrize(
    "cls, kwargs, exc, arg", BAD, ids=[f"{c.__name__}-{a}" for c, _, _, a in BAD]
)
def test_bad_hyper_parameters_raise_naming_the_argument(cls, kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        cls(**kwargs)


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match="optimizer.*adam"):
        fastnn.optimizers.get("adamm")
    with pytest.raises(TypeError, match="optimizer"):
        fastnn.optimizers.get(3)


def test_training_rates_and_hyper_parameters_follow_changes():
    """A model's training calls reuse kept rate and hyper-parameter arrays: a new rate, a
    new hyper-parameter or a schedule is still what the next step gets."""
    opt = Adam(learning_rate=0.1)
    np.testing.assert_array_equal(opt._train_rates(3)[:3], 0.1)
    assert opt._train_rates(3) is opt._train_rates(2)  # kept: no array per batch
    opt.learning_rate = 0.01
    np.testing.assert_array_equal(opt._train_rates(40)[:40], 0.01)
    np.testing.assert_array_equal(opt._train_hyper()[1:], [0.9, 0.999, 1e-7, 0.0])
    opt.beta_1 = 0.5
    assert opt._train_hyper()[1] == 0.5
    schedule = fastnn.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    sched = SGD(learning_rate=schedule)
    sched.iterations = 5
    np.testing.assert_allclose(sched._train_rates(2), [schedule(5), schedule(6)])


# ---------------------------------------------------------------------------------------
# Keras 3's options: weight_decay, amsgrad, RMSprop's momentum and centered


NEW_OPTIONS = [
    (SGD, {"weight_decay": 1e-4}),
    (SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    (Adagrad, {"weight_decay": 0.01}),
    (RMSprop, {"momentum": 0.9}),
    (RMSprop, {"centered": True, "weight_decay": 0.01}),
    (Adam, {"amsgrad": True, "weight_decay": 0.02}),
    (AdamW, {"amsgrad": True, "clipnorm": 1.0}),
    (Nadam, {"weight_decay": 0.01, "name": "my_nadam"}),
]


@pytest.mark.parametrize("cls, kwargs", NEW_OPTIONS, ids=[c.__name__ for c, _ in NEW_OPTIONS])
def test_new_options_round_trip_through_the_config(cls, kwargs):
    opt = cls(**kwargs)
    cfg = opt.get_config()
    for key, value in kwargs.items():
        assert cfg[key] == value
    again = cls(**cfg)
    assert again.get_config() == cfg and again.code == opt.code and again.name == opt.name
    np.testing.assert_array_equal(again.hyper(), opt.hyper())


def test_options_select_codes_state_and_hyper_layout():
    assert Adam(amsgrad=True).code == C.AMSGRAD and Adam(amsgrad=True).slots == 3
    assert AdamW(amsgrad=True).code == C.AMSGRAD
    for kw in ({"momentum": 0.5}, {"centered": True}, {"momentum": 0.5, "centered": True}):
        opt = RMSprop(**kw)
        assert opt.code == C.RMSPROP_MC and opt.slots == 3
        assert list(opt.hyper()) == [0.001, 0.9, 1e-7, kw.get("momentum", 0.0),
                                     float(kw.get("centered", False))]  # fmt: skip
    # the decay of the codes without an entry of their own follows the clip entries
    h = SGD(learning_rate=0.1, weight_decay=0.25).hyper()
    assert list(h) == [0.1, 0.0, 0.0, 0.0, 0.25]
    assert len(h) == C.HYPER_LEN[C.SGD] + C.H_WEIGHT_DECAY + 1
    h = Adam(weight_decay=0.25).hyper()
    assert list(h) == [0.001, 0.9, 0.999, 1e-7, 0.25]  # Adam's own entry
    assert list(SGD(weight_decay=0.0).hyper()) == [0.01]  # 0: off, no entry
    assert SGD(weight_decay=0.0).get_config()["weight_decay"] == 0.0


def test_keras_base_options_at_their_defaults_are_accepted():
    opt = Adam(use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
               loss_scale_factor=None, gradient_accumulation_steps=None, name="adam_1")  # fmt: skip
    assert opt.name == "adam_1" and Adam().name == "adam"
    assert opt.get_config()["name"] == "adam_1" and "name" not in Adam().get_config()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weight_decay_uses_each_steps_scheduled_rate(backend):
    opt = SGD(learning_rate=lambda t: 0.1 / (t + 1), weight_decay=0.5)
    p = np.ones(3)
    want = np.ones(3)
    for t in range(3):
        g = np.full(3, 0.2)
        opt.step(p, g, backend=backend)
        lr = 0.1 / (t + 1)
        want = want - want * 0.5 * lr - lr * g
    np.testing.assert_allclose(p, want, rtol=1e-14)


def test_weight_decay_set_later_is_checked_and_used():
    opt = SGD(learning_rate=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.weight_decay = -0.5
    opt.weight_decay = 0.5
    assert list(opt.hyper()) == [0.1, 0.0, 0.0, 0.0, 0.5]
    p = np.ones(2)
    opt.step(p, np.zeros(2), backend="numpy")
    np.testing.assert_allclose(p, 0.95, rtol=1e-15)
