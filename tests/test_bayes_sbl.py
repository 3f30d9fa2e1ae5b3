"""sparsejax.bayes.sbl / kron_sbl against scikit-learn's ARDRegression (float64)."""

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _problems import sparse_regression as _problem
from sklearn.linear_model import ARDRegression

from sparsejax.bayes import kron_sbl, sbl


@pytest.mark.parametrize("n, d", [(40, 96), (80, 24)])  # Woodbury (n < d) and direct paths
def test_sbl_matches_sklearn(x64, n, d):
    x, y, _ = _problem(n + d, n, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ARDRegression(fit_intercept=False).fit(x, y)
    out = sbl(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(out.coef, ref.coef_, rtol=1e-3, atol=1e-3 * np.abs(ref.coef_).max())
    np.testing.assert_array_equal(np.asarray(out.keep), ref.lambda_ < 1e4)
    np.testing.assert_array_equal(np.asarray(out.coef) == 0, ref.coef_ == 0)
    assert int(out.n_iter) == ref.n_iter_
    np.testing.assert_allclose(out.alpha, ref.alpha_, rtol=1e-3)


def test_sbl_batched_equals_loop_and_recovers_support(x64):
    x, _, _ = _problem(0, 40, 64)
    rng = np.random.default_rng(1)
    w = np.zeros((3, 64))
    for i in range(3):
        w[i, rng.choice(64, 4, replace=False)] = rng.choice([-2.0, 2.0], 4)
    y = w @ x.T + 0.05 * rng.normal(size=(3, 40))
    fit = jax.jit(partial(sbl, chunk_size=None))  # one vmap; one compilation per input shape
    batched = fit(jnp.asarray(x), jnp.asarray(y))
    assert batched.coef.shape == (3, 64) and batched.n_iter.shape == (3,)
    for i in range(3):
        one = fit(jnp.asarray(x), jnp.asarray(y[i]))
        # batched linear algebra rounds differently; agreement to the convergence tolerance
        # (with very low noise the ARD path is ill-conditioned: sklearn itself then differs)
        np.testing.assert_allclose(batched.coef[i], one.coef, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(batched.keep[i], one.keep)
        np.testing.assert_array_equal(np.abs(np.asarray(one.coef)) > 0.5, w[i] != 0)
    # one design per problem
    per = fit(jnp.broadcast_to(jnp.asarray(x), (3, 40, 64)), jnp.asarray(y))
    np.testing.assert_allclose(per.coef, batched.coef, rtol=0, atol=1e-3)
    # chunks of 2 (the last one padded) in sequence; the default on CPU is chunks of 1
    for chunk_size in (2,):
        other = sbl(jnp.asarray(x), jnp.asarray(y), chunk_size=chunk_size)
        np.testing.assert_allclose(other.coef, batched.coef, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(other.keep, batched.keep)


def test_kron_sbl_equals_sbl_on_the_kronecker_product(x64):
    rng = np.random.default_rng(2)
    for (na, da), (nb, db) in (((12, 4), (10, 5)), ((6, 8), (5, 9))):
        a, b = rng.normal(size=(na, da)), rng.normal(size=(nb, db))
        w = np.zeros((da, db))
        w[0, 1], w[2, 3] = 1.0, -2.0
        y = (a @ w @ b.T).reshape(-1) + 0.1 * rng.normal(size=na * nb)
        ref = sbl(jnp.asarray(np.kron(a, b)), jnp.asarray(y))
        out = kron_sbl(jnp.asarray(a), jnp.asarray(b), jnp.asarray(y))
        np.testing.assert_allclose(out.coef, ref.coef, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out.keep, ref.keep)
        assert int(out.n_iter) == int(ref.n_iter)


def test_sbl_float32_under_jit():
    x, y, w = _problem(3, 40, 64, noise=0.01)
    out = jax.jit(sbl)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    assert out.coef.dtype == jnp.float32
    np.testing.assert_array_equal(np.abs(np.asarray(out.coef)) > 0.3, w != 0)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(prune_threshold=0.0), ValueError, "prune_threshold"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
])
def test_sbl_bad_options(kwargs, err, match):
    x, y, _ = _problem(0, 10, 5)
    with pytest.raises(err, match=match):
        sbl(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), **kwargs)


def test_sbl_bad_input():
    x, y, _ = _problem(0, 10, 5)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    with pytest.raises(TypeError, match="design"):
        sbl(x.astype(jnp.int32), y)
    with pytest.raises(ValueError, match="targets"):
        sbl(x, y[:7])
    with pytest.raises(ValueError, match="design"):
        sbl(x[0], y)
    with pytest.raises(ValueError, match="batch"):
        sbl(jnp.stack([x, x]), jnp.stack([y, y, y]))
    with pytest.raises(ValueError, match="targets"):
        kron_sbl(x, x, y)


def test_sbl_rejects_nan_and_empty_data():
    x, y, _ = _problem(0, 20, 8)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    with pytest.raises(ValueError, match="`targets` must be finite.*1 non-finite"):
        sbl(x, y.at[3].set(jnp.nan))
    with pytest.raises(ValueError, match="`design` must be finite"):
        sbl(x.at[2, 5].set(jnp.inf), y)
    with pytest.raises(ValueError, match="`a` must be finite"):
        kron_sbl(x[:4, :2].at[0, 0].set(jnp.nan), x[:5, :2], y[:20])
    with pytest.raises(ValueError, match="at least one sample"):
        sbl(jnp.zeros((0, 8)), jnp.zeros((0,)))
    with pytest.raises(ValueError, match="at least one sample"):
        sbl(jnp.zeros((5, 0)), jnp.zeros((5,)))


def test_sbl_again_compiles_nothing_and_repeats_exactly():
    """A second call with the same shapes and options reuses the compiled ARD loop (single problem:
    the unchunked path, which `kron_sbl` shares) and the compiled chunked solve (it recompiled both
    on every call)."""
    from _compiles import count_compiles

    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(12, 20)), jnp.float32)
    y = x[:, :2] @ jnp.asarray([1.0, -2.0])
    ys = jnp.stack([y, 2 * y, -y])
    first = [sbl(x, y), sbl(x, ys)]
    with count_compiles() as compiled:
        second = [sbl(x, y), sbl(x, ys)]
    assert compiled == []
    for r1, r2 in zip(first, second):
        for f1, f2 in zip(r1, r2):
            np.testing.assert_array_equal(f2, f1)
