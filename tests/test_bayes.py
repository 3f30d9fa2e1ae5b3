"""sparsejax.bayes pure functions: closed forms against Monte Carlo and hand values, the LRT against
sampled weights, the KL against the per-entry formula, the subspace update's invariants."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from jax import lax

from sparsejax import bayes as B
from sparsejax.training import DropGrowSchedule

KEY = jax.random.key(0)


def _params(key=KEY):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"l1": {"kernel": jax.random.normal(k1, (12, 10)), "bias": jnp.zeros(10)},
            "l2": {"kernel": jax.random.normal(k2, (10, 6)), "bias": jax.random.normal(k3, (6,))}}


def _posterior(key=KEY, sparsity=0.6):
    k_init, k_rho = jax.random.split(key)
    post = B.init_posterior(k_init, _params(key), sparsity)
    # random rho on the active entries so the scores differ
    rho = jax.tree.map(lambda r, m: None if m is None else jnp.where(
        m, jax.random.uniform(k_rho, r.shape, minval=-4.0, maxval=-1.0), 0.0),
        post.rho, post.mask, is_leaf=lambda x: x is None)
    return post._replace(rho=rho)


# ---------------------------------------------------------------- expected_abs / snr_mean_abs


_EXPECTED_ABS, _SNR = jax.jit(B.expected_abs), jax.jit(B.snr_mean_abs)  # not op by op


def test_expected_abs_and_snr_hand_values():
    sigma = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(_EXPECTED_ABS(jnp.zeros(3), sigma), sigma * math.sqrt(2 / math.pi),
                               rtol=1e-6)
    snr0 = math.sqrt(2 / math.pi) / math.sqrt(1 - 2 / math.pi)
    np.testing.assert_allclose(_SNR(jnp.zeros(3), sigma), snr0, rtol=1e-5)
    # sigma = 0: |mu| and a deterministic weight's infinite SNR (0 for mu = sigma = 0)
    np.testing.assert_allclose(_EXPECTED_ABS(jnp.array([-3.0, 0.0]), jnp.zeros(2)), [3.0, 0.0])
    assert np.asarray(_SNR(jnp.array([-3.0, 0.0]), jnp.zeros(2))).tolist() == [np.inf, 0.0]
    # |mu| >> sigma: E|theta| -> |mu|, std|theta| -> sigma, no cancellation in float32
    np.testing.assert_allclose(_SNR(jnp.array([1e4, -50.0]), jnp.array([1.0, 0.01])),
                               [1e4, 5e3], rtol=1e-5)


def test_expected_abs_matches_folded_normal_formula():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=200) * 2
    sigma = rng.uniform(0.05, 3.0, size=200)
    # folded normal: sigma sqrt(2/pi) exp(-mu^2 / 2 sigma^2) + mu (1 - 2 Phi(-mu / sigma))
    phi = scipy.special.ndtr(-mu / sigma)  # the standard normal CDF, float64
    ref = sigma * np.sqrt(2 / np.pi) * np.exp(-mu**2 / (2 * sigma**2)) + mu * (1 - 2 * phi)
    np.testing.assert_allclose(_EXPECTED_ABS(jnp.asarray(mu, jnp.float32),
                                              jnp.asarray(sigma, jnp.float32)), ref,
                               rtol=2e-5, atol=1e-6)


def test_expected_abs_and_snr_against_monte_carlo():
    mu = jnp.array([0.0, 0.3, -1.0, 2.5])
    sigma = jnp.array([1.0, 0.5, 1.5, 1.0])
    theta = jax.jit(lambda: jnp.abs(mu + sigma * jax.random.normal(KEY, (400_000, 4))))()
    theta = np.asarray(theta, np.float64)
    mean, std = theta.mean(0), theta.std(0)
    # standard errors: std / sqrt(N) ~ 2e-3; 5 sigma tolerance
    np.testing.assert_allclose(_EXPECTED_ABS(mu, sigma), mean, atol=5 * 1.5 / 632)
    np.testing.assert_allclose(_SNR(mu, sigma), mean / std, rtol=1e-2)


def test_expected_abs_rejects_integers_and_negative_sigma():
    with pytest.raises(TypeError, match="mu"):
        B.expected_abs(jnp.arange(3), jnp.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        B.snr_mean_abs(jnp.zeros(2), jnp.array([1.0, -0.5]))


# ---------------------------------------------------------------- LRT


_LRT = jax.jit(B.linear_lrt)  # one program per call pattern, not an eager op-by-op pass
_LRT_SAMPLES = jax.jit(jax.vmap(B.linear_lrt, in_axes=(0, None, None, None, None, None)))


def _lrt_problem(shape=(6, 5), batch=4, sparsity=0.5, key=KEY):
    ks = jax.random.split(key, 5)
    x = jax.random.normal(ks[0], (batch, shape[0]))
    mask = jax.random.uniform(ks[1], shape) > sparsity
    mu = jax.random.normal(ks[2], shape)
    sigma = jax.random.uniform(ks[3], shape, minval=0.1, maxval=1.0)
    bias = jax.random.normal(ks[4], shape[-1:])
    return x, mu, sigma, mask, bias


def test_linear_lrt_moments_match_sampled_weights():
    x, mu, sigma, mask, bias = _lrt_problem()
    n = 10_000
    keys = jax.random.split(jax.random.key(1), n)
    lrt = np.asarray(_LRT_SAMPLES(keys, x, mu, sigma, mask, bias), np.float64)
    # the reference in float64 numpy: weights sampled directly, and the exact moments
    x, mu, sigma, mask, bias = (np.asarray(a, np.float64) for a in (x, mu, sigma, mask, bias))
    mask = mask.astype(bool)
    rng = np.random.default_rng(2)
    w = np.where(mask, mu + sigma * rng.standard_normal((n, *mu.shape)), 0.0)
    direct = np.einsum("bi,nio->nbo", x, w) + bias
    exact_mean = x @ np.where(mask, mu, 0) + bias
    exact_var = (x**2) @ np.where(mask, sigma**2, 0) + 1e-8
    for samples in (lrt, direct):
        se = np.sqrt(exact_var / n)
        assert float(np.max(np.abs(samples.mean(0) - exact_mean) / se)) < 5.0
        np.testing.assert_allclose(samples.var(0), exact_var, rtol=5 * math.sqrt(2 / n))
    # entries of mu / sigma outside the mask play no part
    junk = _LRT(keys[0], x, np.where(mask, mu, 99.0), np.where(mask, sigma, 99.0), mask, bias)
    np.testing.assert_allclose(junk, lrt[0], rtol=1e-5)
    # key=None: the mean-weights output
    np.testing.assert_allclose(_LRT(None, x, mu, sigma, mask, bias), exact_mean, rtol=1e-5)


def test_conv_lrt_moments_match_sampled_weights():
    ks = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(ks[0], (1, 5, 5, 2))
    shape = (3, 3, 2, 3)
    mask = jax.random.uniform(ks[1], shape) > 0.5
    mu = jax.random.normal(ks[2], shape) * 0.5
    sigma = jax.random.uniform(ks[3], shape, minval=0.1, maxval=0.6)
    n = 1500

    def conv(inputs, kernel):
        return lax.conv_general_dilated(inputs, kernel, (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    @jax.jit
    def moments(x, mu, sigma, mask):
        """Direct samples (weights drawn, then convolved), LRT samples, the exact moments and the
        mean-weights output: one compiled program."""
        w = jnp.where(mask, mu + sigma * jax.random.normal(jax.random.key(4), (n, *shape)), 0.0)
        direct = jax.vmap(lambda k: conv(x, k))(w)
        keys = jax.random.split(jax.random.key(5), n)
        lrt = jax.vmap(lambda k: B.conv_lrt(k, x, mu, sigma, mask, strides=2))(keys)
        exact_mean = conv(x, jnp.where(mask, mu, 0))
        exact_var = conv(x**2, jnp.where(mask, sigma**2, 0)) + 1e-8
        return direct, lrt, exact_mean, exact_var, B.conv_lrt(None, x, mu, sigma, mask, strides=2)

    direct, lrt, exact_mean, exact_var, mean_out = map(np.asarray, moments(x, mu, sigma, mask))
    assert lrt.shape == direct.shape == (n, 1, 3, 3, 3)
    for samples in (direct, lrt):  # within 5 standard errors of the exact moments
        assert float(np.max(np.abs(samples.mean(0) - exact_mean) / np.sqrt(exact_var / n))) < 5
        np.testing.assert_allclose(samples.var(0), exact_var, rtol=5 * math.sqrt(2 / n))
    np.testing.assert_allclose(mean_out, exact_mean, rtol=1e-5, atol=1e-5)


def test_lrt_gradients():
    x, mu, sigma, mask, bias = _lrt_problem()
    rho = jnp.log(jnp.expm1(sigma))

    def loss(mu, rho):
        out = B.linear_lrt(jax.random.key(7), x, mu, B.sigma_of(rho, mask), mask, bias)
        return jnp.sum(jnp.sin(out))

    g_mu, g_rho = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.where(mask, mu, 0), rho)
    assert float(jnp.max(jnp.abs(jnp.where(mask, 0, g_rho)))) == 0.0
    assert float(jnp.min(jnp.abs(jnp.where(mask, g_rho, 1.0)))) > 0.0
    # d/dmu is the dense gradient with respect to the effective weight mu * M (the growth signal)
    sig = B.sigma_of(rho, mask)

    def plain(w):
        mean = x @ w + bias
        std = jnp.sqrt((x**2) @ sig**2 + 1e-8)
        return jnp.sum(jnp.sin(mean + std * jax.random.normal(jax.random.key(7), mean.shape)))

    np.testing.assert_allclose(g_mu, jax.grad(plain)(jnp.where(mask, mu, 0)), rtol=1e-5, atol=1e-6)
    assert float(jnp.min(jnp.abs(jnp.where(mask, 1.0, g_mu)))) > 0.0


def test_lrt_bad_input():
    x, mu, sigma, mask, _ = _lrt_problem()
    with pytest.raises(TypeError, match="mask"):
        B.linear_lrt(KEY, x, mu, sigma, mask.astype(jnp.float32))
    with pytest.raises(ValueError, match="same shape"):
        B.linear_lrt(KEY, x, mu, sigma[:, :2], mask)
    with pytest.raises(ValueError, match="n_in"):
        B.linear_lrt(KEY, x[:, :3], mu, sigma, mask)
    with pytest.raises(TypeError, match="x"):
        B.linear_lrt(KEY, x.astype(jnp.int32), mu, sigma, mask)
    with pytest.raises(ValueError, match="sigma"):
        B.linear_lrt(KEY, x, mu, -sigma, mask)


# ---------------------------------------------------------------- posterior, KL, ELBO


def test_init_posterior():
    params = _params()
    post = B.init_posterior(KEY, params, 0.7, rho_init=-4.0)
    for name in ("l1", "l2"):
        m = post.mask[name]["kernel"]
        assert int(m.sum()) == round(m.size * 0.3)
        np.testing.assert_array_equal(post.mu[name]["kernel"],
                                      jnp.where(m, params[name]["kernel"], 0))
        np.testing.assert_array_equal(post.rho[name]["kernel"], jnp.where(m, -4.0, 0.0))
        assert post.rho[name]["bias"] is None and post.mask[name]["bias"] is None
        np.testing.assert_array_equal(post.mu[name]["bias"], params[name]["bias"])
    erk = B.init_posterior(KEY, params, 0.7, allocation="erk")
    total = sum(int(m.sum()) for m in jax.tree.leaves(erk.mask))
    assert abs(total - 0.3 * (120 + 60)) <= 2
    assert B.init_posterior(KEY, params, 0.0).mask["l1"]["kernel"].all()


@pytest.mark.parametrize("bad, err, match", [
    (dict(sparsity=1.5), ValueError, "sparsity"),
    (dict(sparsity=-0.1), ValueError, "sparsity"),
    (dict(sparsity=0.5, allocation="global"), ValueError, "allocation"),
])
def test_init_posterior_bad_input(bad, err, match):
    with pytest.raises(err, match=match):
        B.init_posterior(KEY, _params(), **bad)


_KL = jax.jit(B.kl_divergence, static_argnums=1)  # one program per prior, not op by op


def test_kl_divergence_closed_form_over_active_entries():
    post = _posterior()
    # junk outside the mask must not count
    junk = post._replace(
        mu=jax.tree.map(lambda x, m: x if m is None else np.where(m, x, 5.0), post.mu, post.mask,
                        is_leaf=lambda x: x is None),
        rho=jax.tree.map(lambda x, m: None if m is None else np.where(m, x, 3.0), post.rho,
                         post.mask, is_leaf=lambda x: x is None))
    s0 = 0.7
    ref = 0.0
    for name in ("l1", "l2"):
        m = np.asarray(post.mask[name]["kernel"])
        mu = np.asarray(post.mu[name]["kernel"], np.float64)[m]
        s = np.log1p(np.exp(np.asarray(post.rho[name]["kernel"], np.float64)[m]))
        ref += np.sum(np.log(s0 / s) + (s**2 + mu**2) / (2 * s0**2) - 0.5)
    np.testing.assert_allclose(_KL(post, s0), ref, rtol=1e-5)
    np.testing.assert_allclose(_KL(junk, s0), ref, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda v: B.kl_divergence(v._replace(mask=post.mask), s0)))(
        junk._replace(mask=None))
    for name in ("l1", "l2"):
        m = np.asarray(post.mask[name]["kernel"])
        for g in (grads.mu[name]["kernel"], grads.rho[name]["kernel"]):
            g = np.asarray(g)
            assert np.all(g[~m] == 0.0) and np.all(g[m] != 0.0)
        assert float(np.max(np.abs(grads.mu[name]["bias"]))) == 0.0
    with pytest.raises(ValueError, match="prior_sigma"):
        B.kl_divergence(post, -1.0)


def test_kl_of_prior_is_zero():
    post = _posterior()
    s0 = float(jax.nn.softplus(-2.0))
    prior_like = post._replace(
        mu=jax.tree.map(jnp.zeros_like, post.mu),
        rho=jax.tree.map(lambda r, m: None if m is None else jnp.where(m, -2.0, 0.0), post.rho,
                         post.mask, is_leaf=lambda x: x is None))
    assert abs(float(_KL(prior_like, s0))) < 1e-4


def test_sample_weights():
    post = _posterior()
    keys = jax.random.split(KEY, 20_000)
    draws = jax.vmap(lambda k: B.sample_weights(k, post))(keys)
    m = post.mask["l1"]["kernel"]
    w = draws["l1"]["kernel"]
    assert float(jnp.max(jnp.abs(jnp.where(m, 0, w)))) == 0.0
    sigma = B.sigma_of(post.rho["l1"]["kernel"], m)
    np.testing.assert_allclose(w.mean(0), post.mu["l1"]["kernel"], atol=5 * 0.27 / 141)
    np.testing.assert_allclose(w.std(0), sigma, rtol=0.05, atol=1e-6)
    np.testing.assert_array_equal(draws["l2"]["bias"][0], post.mu["l2"]["bias"])


def test_elbo_warmup():
    assert float(B.kl_weight(0, 10)) == 0.0
    assert float(B.kl_weight(5, 10)) == 0.5
    assert float(B.kl_weight(50, 10)) == 1.0
    assert float(B.kl_weight(3, 0)) == 1.0
    np.testing.assert_allclose(B.elbo(jnp.float32(-0.5), 100.0, num_data=50, step=5,
                                      warmup_steps=10), -0.5 - 0.5 * 100 / 50)
    with pytest.raises(ValueError, match="num_data"):
        B.elbo(jnp.float32(0.0), 1.0, num_data=0)


def test_posterior_structure_errors():
    post = _posterior()
    with pytest.raises(TypeError, match="Posterior"):
        B.kl_divergence((post.mu, post.rho, post.mask))
    with pytest.raises(ValueError, match="mask"):
        B.kl_divergence(post._replace(mask=None))
    bad = post._replace(rho={"l1": post.rho["l1"]})
    with pytest.raises(ValueError, match="rho"):
        B.sample_weights(KEY, bad)
    wrong = post._replace(rho=jax.tree.map(lambda r: r[:2], post.rho))
    with pytest.raises(ValueError, match="same shape"):
        B.kl_divergence(wrong)


# ---------------------------------------------------------------- subspace update


def _check_update(post, new, grads, frac, criterion="SNR_mean_abs"):
    """The drop/grow invariants of one update, leaf by leaf, against numpy."""
    scores = B.removal_scores(post, criterion)
    for name in ("l1", "l2"):
        old_m = np.asarray(post.mask[name]["kernel"])
        new_m = np.asarray(new.mask[name]["kernel"])
        nnz = old_m.sum()
        n = min(int(np.floor(np.float32(nnz) * np.float32(frac))), old_m.size - nnz)
        assert new_m.sum() == nnz  # nnz constant per leaf
        dropped, grown = old_m & ~new_m, new_m & ~old_m
        kept = old_m & new_m
        assert dropped.sum() == grown.sum() == n
        s = np.asarray(scores[name]["kernel"])
        if n:
            assert s[dropped].max() <= s[kept].min()  # the lowest-score ones are dropped
            g = np.abs(np.asarray(grads[name]["kernel"]))
            assert g[grown].min() >= g[~old_m & ~grown].max()  # the highest |grad| ones grow
        mu, rho = np.asarray(new.mu[name]["kernel"]), np.asarray(new.rho[name]["kernel"])
        assert (mu[~new_m] == 0).all() and (rho[~new_m] == 0).all()
        assert (mu[grown] == 0).all()
        mean_rho = np.asarray(post.rho[name]["kernel"])[kept].mean()
        np.testing.assert_allclose(rho[grown], mean_rho, rtol=1e-5)
        np.testing.assert_array_equal(mu[kept], np.asarray(post.mu[name]["kernel"])[kept])
        np.testing.assert_array_equal(rho[kept], np.asarray(post.rho[name]["kernel"])[kept])
        np.testing.assert_array_equal(new.mu[name]["bias"], post.mu[name]["bias"])


@pytest.fixture(scope="module")
def jitted_update():
    traces = []

    @jax.jit
    def update(post, grads, step):
        traces.append(1)
        return B.subspace_update(post, grads, step, end_step=100, update_every=10)

    update.traces = traces
    return update


def test_subspace_update_drops_lowest_grows_highest(jitted_update):
    post = _posterior()
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape), post.mu)
    for step in (10, 20, 90):
        new = jitted_update(post, grads, step)
        _check_update(post, new, grads, DropGrowSchedule.create(update_every=1, end_step=100, drop_fraction=0.3, begin_step=0).fraction(step))
    for step in (0, 5, 100, 110):  # not an update step: unchanged
        new = jitted_update(post, grads, step)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(post)):
            np.testing.assert_array_equal(a, b)
    assert len(jitted_update.traces) == 1  # one compiled function, lax.cond on the step


@pytest.mark.parametrize("criterion", ["mean", "snr", "E_mean_abs",
                                       lambda mu, sigma: -jnp.abs(mu)])
def test_subspace_update_criteria(criterion):
    post = _posterior()
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape), post.mu)
    new = B.subspace_update(post, grads, 10, end_step=100, update_every=10, criterion=criterion)
    _check_update(post, new, grads, DropGrowSchedule.create(update_every=1, end_step=100, drop_fraction=0.3, begin_step=0).fraction(10), criterion)


def test_removal_score_names_are_the_references():
    """Each name computes what the reference's ``--drop_criteria`` of that name computes
    (rigl_torch/RigL.py::_rigl_step, float64 transcription)."""
    post = _posterior()
    mu = np.asarray(post.mu["l1"]["kernel"], np.float64)
    m = np.asarray(post.mask["l1"]["kernel"])
    sigma = np.log1p(np.exp(np.asarray(post.rho["l1"]["kernel"], np.float64))) * m
    erf = np.vectorize(math.erf)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_mean_abs = mu * erf(mu / sigma / np.sqrt(2)) + 2 * sigma * np.exp(
            -mu**2 / (2 * sigma**2)) / np.sqrt(2 * np.pi)
        expected = {"mean": np.abs(mu), "E_mean_abs": e_mean_abs, "snr": np.abs(mu) / sigma,
                    "SNR_mean_abs": e_mean_abs / np.sqrt(sigma**2 + mu**2 - e_mean_abs**2)}
    assert sorted(B.CRITERIA) == sorted(expected)
    for name, ref in expected.items():
        ours = np.asarray(B.removal_scores(post, name)["l1"]["kernel"])
        np.testing.assert_allclose(ours[m], ref[m], rtol=2e-4, err_msg=name)
        assert B.removal_scores(post, name)["l1"]["bias"] is None


def test_subspace_update_random_growth():
    post = _posterior()
    new = B.subspace_update(post, None, 10, end_step=100, update_every=10, grow="random",
                            key=jax.random.key(3))
    other = B.subspace_update(post, None, 10, end_step=100, update_every=10, grow="random",
                              key=jax.random.key(4))
    m_old = post.mask["l1"]["kernel"]
    for n in (new, other):
        assert int(n.mask["l1"]["kernel"].sum()) == int(m_old.sum())
    assert bool(jnp.any(new.mask["l1"]["kernel"] != other.mask["l1"]["kernel"]))


@pytest.fixture(scope="module")
def update_with_fraction():
    return jax.jit(lambda post, grads, frac: B.subspace_update(
        post, grads, 10, end_step=1_000_000, update_every=10, drop_fraction=frac))


@settings(max_examples=20, deadline=None)
@given(sparsity=st.floats(0.0, 1.0), frac=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_subspace_update_keeps_nnz(update_with_fraction, sparsity, frac, seed):
    key = jax.random.key(seed)
    post = _posterior(key, sparsity)
    grads = jax.tree.map(lambda x: jax.random.normal(key, x.shape), post.mu)
    new = update_with_fraction(post, grads, jnp.float32(frac))
    for name in ("l1", "l2"):
        a, b = post.mask[name]["kernel"], new.mask[name]["kernel"]
        assert int(a.sum()) == int(b.sum())
        assert float(jnp.max(jnp.abs(jnp.where(b, 0, new.mu[name]["kernel"])))) == 0.0
        assert float(jnp.max(jnp.abs(jnp.where(b, 0, new.rho[name]["kernel"])))) == 0.0


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(criterion="magnitude"), ValueError, "criterion"),
    (dict(grow="saliency"), ValueError, "grow"),
    (dict(grow="random"), ValueError, "key"),
    (dict(drop_fraction=1.5), ValueError, "drop_fraction"),
    (dict(update_every=0), ValueError, "update_every"),
])
def test_subspace_update_bad_input(kwargs, err, match):
    post = _posterior()
    grads = jax.tree.map(jnp.zeros_like, post.mu)
    with pytest.raises(err, match=match):
        B.subspace_update(post, grads, 10, **{"end_step": 100, **kwargs})


def test_subspace_update_grads_must_mirror():
    post = _posterior()
    with pytest.raises(ValueError, match="grads"):
        B.subspace_update(post, {"l1": post.mu["l1"]}, 10, end_step=100)
    bad = jax.tree.map(lambda x: x[:1], post.mu)
    with pytest.raises(ValueError, match="grads"):
        B.subspace_update(post, bad, 10, end_step=100)


# ---------------------------------------------------------------- metrics


def test_metrics_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 5, size=500)
    conf, pred = probs.max(-1), probs.argmax(-1)
    ece = 0.0
    edges = np.linspace(0, 1, 16)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs((pred[inb] == labels[inb]).mean() - conf[inb].mean())
    p, y = jnp.asarray(probs, jnp.float32), jnp.asarray(labels)
    np.testing.assert_allclose(B.expected_calibration_error(p, y), ece, rtol=1e-4)
    np.testing.assert_allclose(B.accuracy(p, y), (pred == labels).mean())
    np.testing.assert_allclose(B.nll(p, y), -np.log(probs[np.arange(500), labels]).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(B.predictive_entropy(p), -(probs * np.log(probs)).sum(-1),
                               rtol=1e-4)
    np.testing.assert_allclose(B.predictive_entropy(jnp.full((3, 4), 0.25)), math.log(4),
                               rtol=1e-6)
    with pytest.raises(TypeError, match="labels"):
        B.accuracy(p, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="labels"):
        B.nll(p, y[:3])


def test_metrics_reject_out_of_range_labels_and_logits():
    probs = jax.nn.softmax(jax.random.normal(KEY, (6, 4)))
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    for fn in (B.nll, B.accuracy, B.expected_calibration_error):
        with pytest.raises(ValueError, match=r"`labels` must be class indices in \[0, 3\].*-1"):
            fn(probs, labels.at[2].set(-1))
        with pytest.raises(ValueError, match="`labels` must be class indices.*4"):
            fn(probs, labels.at[0].set(4))
    logits = jax.random.normal(KEY, (6, 4)) * 3
    with pytest.raises(ValueError, match="`probs` must be probabilities.*softmax"):
        B.expected_calibration_error(logits, labels)
    with pytest.raises(ValueError, match="`probs` must be probabilities"):
        B.predictive_entropy(jnp.full((2, 4), 0.5))  # in [0, 1] but rows sum to 2
    # under jit nothing is checked (documented): the values are what they are
    assert np.isfinite(float(jax.jit(B.nll)(probs, labels)))


def test_predict_and_training_flops():
    post = B.init_posterior(KEY, _params(), 0.9)
    x = jnp.ones((3, 12))

    def fn(k, xb):
        return B.linear_lrt(k, xb, post.mu["l1"]["kernel"],
                            B.sigma_of(post.rho["l1"]["kernel"], post.mask["l1"]["kernel"]),
                            post.mask["l1"]["kernel"])

    keys = jax.random.split(KEY, 7)
    np.testing.assert_allclose(B.predict(fn, KEY, x, samples=7),
                               jnp.mean(jnp.stack([fn(k, x) for k in keys]), 0), rtol=1e-5)
    flops = B.training_flops(post, 128)
    assert flops["dense"] == 12 * 128 * (120 + 60)
    assert flops["sparse"] == 12 * 128 * (12 + 6)
    np.testing.assert_allclose(flops["ratio"], 0.1)
    with pytest.raises(ValueError, match="samples"):
        B.predict(fn, KEY, x, samples=0)
