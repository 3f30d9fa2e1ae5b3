"""ISTA / FISTA against scikit-learn's Lasso; LISTA against ISTA."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _problems import dictionary_problem as _problem
from hypothesis import given, settings
from sklearn.linear_model import Lasso

from sparsejax.dictionary import (
    fista,
    ista,
    lasso_objective,
    lista_apply,
    lista_init,
    soft_threshold,
)


def _sklearn_codes(d, y, alpha, positive=False):
    out = []
    for row in y:
        m = Lasso(alpha=alpha / d.shape[0], fit_intercept=False, tol=1e-12, max_iter=200_000,
                  positive=positive)
        out.append(m.fit(d, row).coef_)
    return np.stack(out)


def _obj(d, y, z, alpha):
    return 0.5 * np.sum((y - z @ d.T) ** 2, 1) + alpha * np.abs(z).sum(1)


@pytest.mark.parametrize("solver", ["ista", "fista", "fista_bt"])
@pytest.mark.parametrize("positive", [False, True])
def test_objective_matches_sklearn_lasso(solver, positive):
    d, y = _problem(0)
    alpha = 0.3
    ref = _sklearn_codes(d, y, alpha, positive)
    with jax.enable_x64(True):
        dj, yj = jnp.asarray(d), jnp.asarray(y)
        if solver == "ista":
            z = ista(dj, yj, alpha, n_iter=4000, positive=positive)
        else:
            z = fista(dj, yj, alpha, n_iter=1500, backtracking=solver == "fista_bt",
                      positive=positive)
        ours = np.asarray(lasso_objective(dj, yj, z, alpha))
    theirs = _obj(d, y, ref, alpha)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert np.all(ours >= theirs * (1 - 1e-7))  # cannot beat the optimum
    if positive:
        assert np.all(np.asarray(z) >= 0)


def test_float32_fista_close_to_sklearn():
    d, y = _problem(1)
    ref = _sklearn_codes(d, y, 0.2)
    z = fista(jnp.asarray(d, jnp.float32), jnp.asarray(y, jnp.float32), 0.2, n_iter=800)
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(_obj(d, y, np.asarray(z, np.float64), 0.2), _obj(d, y, ref, 0.2),
                               rtol=1e-5)


def test_backtracking_from_tiny_lipschitz_and_batch_shape():
    d, y = _problem(2, n_signals=8)
    with jax.enable_x64(True):
        z = fista(jnp.asarray(d), jnp.asarray(y).reshape(2, 4, 30), 0.1, n_iter=600,
                  backtracking=True, lipschitz=1e-3)
        assert z.shape == (2, 4, 50)
        ref = _sklearn_codes(d, y, 0.1)
        np.testing.assert_allclose(_obj(d, y, np.asarray(z).reshape(8, 50), 0.1),
                                   _obj(d, y, ref, 0.1), rtol=1e-5)


def test_large_alpha_gives_zero_codes():
    d, y = _problem(3)
    alpha = float(np.abs(y @ d).max()) + 1e-3  # alpha >= ||D^T y||_inf => z* = 0
    np.testing.assert_array_equal(ista(jnp.asarray(d), jnp.asarray(y), alpha, n_iter=10), 0)
    np.testing.assert_array_equal(fista(jnp.asarray(d), jnp.asarray(y), alpha, n_iter=10), 0)


def test_soft_threshold_by_hand():
    x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    np.testing.assert_allclose(soft_threshold(x, 0.5), [-1.5, 0.0, 0.0, 0.0, 1.0])


def test_lista_at_init_equals_ista_and_trains():
    d, y = _problem(4, n_signals=32)
    dj, yj = jnp.asarray(d, jnp.float32), jnp.asarray(y, jnp.float32)
    params = lista_init(dj, 0.2, n_layers=5)
    np.testing.assert_allclose(lista_apply(params, yj), ista(dj, yj, 0.2, n_iter=5), atol=1e-5)
    target = fista(dj, yj, 0.2, n_iter=500)
    loss = lambda p: jnp.mean((lista_apply(p, yj) - target) ** 2)
    opt = optax.adam(1e-3)
    state = opt.init(params)
    l0 = float(loss(params))

    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s)
        return optax.apply_updates(p, updates), s

    for _ in range(50):
        params, state = step(params, state)
    assert float(loss(params)) < 0.7 * l0


@pytest.mark.parametrize(
    "fn,kwargs,exc,match",
    [
        (ista, dict(alpha=-1.0), ValueError, "`alpha` must be >= 0"),
        (ista, dict(n_iter=0), ValueError, "`n_iter`"),
        (fista, dict(signals=np.ones((2, 5))), ValueError, "n_features=8"),
        (fista, dict(dictionary=np.ones(8)), ValueError, "2-D"),
        (fista, dict(eta=1.0), ValueError, "`eta`"),
        (fista, dict(lipschitz=0.0), ValueError, "`lipschitz`"),
        (ista, dict(signals=np.ones((2, 8), np.int32)), TypeError, "floating"),
        (ista, dict(init=np.zeros((2, 3))), ValueError, "`init`"),
    ],
)
def test_bad_input(fn, kwargs, exc, match):
    args = dict(dictionary=np.ones((8, 16), np.float32), signals=np.ones((2, 8), np.float32),
                alpha=0.1)
    args.update(kwargs)
    d, s, a = args.pop("dictionary"), args.pop("signals"), args.pop("alpha")
    if "init" in args:
        args["init"] = jnp.asarray(args["init"])
    with pytest.raises(exc, match=match):
        fn(jnp.asarray(d), jnp.asarray(s), a, **args)


def test_lista_init_bad_input():
    with pytest.raises(ValueError, match="n_layers"):
        lista_init(jnp.ones((4, 6)), 0.1, 0)
    with pytest.raises(ValueError, match="alpha"):
        lista_init(jnp.ones((4, 6)), -0.1, 2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 2.0))
def test_ista_objective_never_increases(seed, alpha):
    d, y = _problem(seed, n_features=12, n_atoms=20, n_signals=3)
    dj, yj = jnp.asarray(d, jnp.float32), jnp.asarray(y, jnp.float32)
    z = jnp.zeros((3, 20))
    prev = np.asarray(lasso_objective(dj, yj, z, alpha))
    for _ in range(4):  # ISTA is memoryless: warm-started chunks continue the same iteration
        z = ista(dj, yj, alpha, n_iter=5, init=z)
        cur = np.asarray(lasso_objective(dj, yj, z, alpha))
        assert np.all(cur <= prev * (1 + 1e-5) + 1e-6)
        prev = cur


@settings(max_examples=20, deadline=None)
@given(x=st.lists(st.floats(-10, 10), min_size=1, max_size=8), t=st.floats(0, 5))
def test_soft_threshold_shrinks_and_keeps_sign(x, t):
    x = np.asarray(x, np.float32)
    s = np.asarray(soft_threshold(jnp.asarray(x), t))
    assert np.all(np.abs(s) <= np.abs(x))
    assert np.all(s * x >= 0)
    np.testing.assert_allclose(np.abs(x) - np.abs(s), np.minimum(np.abs(x), t), atol=1e-5)


def test_lista_apply_again_compiles_nothing_and_matches_jit():
    """Eager `lista_apply` reuses its compiled layer scan on a second call (it recompiled the scan
    on every call) and agrees bit for bit with the same call under a user's jit."""
    from _compiles import count_compiles

    rng = np.random.default_rng(12)
    d = jnp.asarray(rng.normal(size=(10, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(5, 10)), jnp.float32)
    params = lista_init(d, 0.05, 4)
    first = lista_apply(params, y)
    with count_compiles() as compiled:
        second = lista_apply(params, y)
    assert compiled == []
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(jax.jit(lista_apply)(params, y), first)
